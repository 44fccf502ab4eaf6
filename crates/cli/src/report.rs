//! `veritrace report RESULTS... --out DIR`: plots of simulation, sweep and fingerprint results,
//! each as SVG and PNG, with an `index.md` listing them.
//!
//! Inputs are recognised by their shape, not their name:
//!
//! * a [`SimReport`] (`report.json` of `veritrace simulate --out`): ROC curves per layer for each
//!   adversary whose cells deviate from the reference ([`roc`]), and detection against the
//!   adversary's compute saving;
//! * a [`SweepResult`] (`veritrace sweep --out` / `veritrace merge --out`) whose grid has a `k`
//!   axis: detection against k per adversary with 95% bounds over the independent prover runs
//!   and the hypergeometric
//!   prediction ([`k_panels`]);
//! * a fingerprint [`StudyReport`] (`fingerprint.json` of `veritrace fingerprint --out`): a
//!   heatmap of the per-layer SNR of every setup, on a log colour scale.
//!
//! Text is set in a subset of DejaVu Sans embedded in the binary (`assets/`, with its license),
//! registered with plotters' `ab_glyph` font backend, so rendering reads no system font.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clap::Args;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use thiserror::Error;
use veritrace_model::StudyReport;
use veritrace_sim::sweep::{Axis, SweepResult};
use veritrace_sim::{EngineMode, SimReport};

// The analysis (ROC curves, detection against k) lives in the sim crate
// ([`veritrace_sim::analysis`]); re-exported for the callers of this module.
use veritrace_sim::analysis::interval;
pub use veritrace_sim::analysis::{
    k_panels, roc, roc_curves, roc_of_interest, KPanel, KPoint, KSeries, Roc,
};

/// Extra help of `veritrace report`.
pub const AFTER_HELP: &str = "\
Inputs are recognised by shape: report.json of `veritrace simulate --out` (ROC curves per layer
and adversary; detection against compute saving), the JSON of `veritrace sweep --out` or
`veritrace merge --out` with a k axis (detection against k beside the hypergeometric prediction),
fingerprint.json of `veritrace fingerprint --out` (per-layer SNR heatmap). Every plot is written
as SVG and PNG into --out, with index.md listing them. Fonts are embedded: no system font is read.

Exit status: 0 on success, 2 when an input is unreadable, unrecognised or malformed, or holds
nothing to plot, 1 otherwise.";

/// Arguments of `veritrace report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Result files (JSON): simulate's report.json, a sweep output, fingerprint.json.
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// Directory to write the plots and index.md into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
}

/// Inputs `veritrace report` refuses (the binary exits 2).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReportInputError {
    /// The file could not be read.
    #[error("{path}: cannot read: {reason}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The file is not one of the result shapes `veritrace report` knows.
    #[error(
        "{path}: not a veritrace result ({reason}); expected report.json of `veritrace simulate`, \
         the JSON of `veritrace sweep` or fingerprint.json of `veritrace fingerprint`"
    )]
    Unrecognised {
        /// The file.
        path: String,
        /// Why it was not recognised.
        reason: String,
    },
    /// The file has the shape of a known result but does not parse as one.
    #[error("{path}: looks like {kind} but does not parse: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// What it looked like.
        kind: &'static str,
        /// The parse error.
        reason: String,
    },
    /// None of the inputs holds anything to plot.
    #[error("nothing to plot: {0}")]
    NothingToPlot(String),
    /// A count or value the plots are sized or looped by is out of its documented range
    /// (see the `MAX_*` constants of this module), or the figure it gives would be too large.
    #[error("{path}: {what} = {value} is out of range (limit {limit})")]
    OutOfRange {
        /// The file.
        path: String,
        /// The field (or the figure dimension) refused.
        what: String,
        /// Its value, as given.
        value: String,
        /// The documented limit.
        limit: String,
    },
}

/// Largest result file read, in bytes (checked before reading): the shipped results are a few
/// megabytes; a simulation report holds every honest held-out cell, and a million cells of JSON
/// are tens of megabytes.
pub const MAX_RESULT_BYTES: u64 = 256 << 20;

/// Largest layer count of a fingerprint study's heatmap (`num_layers`; the heatmap has
/// `num_layers + 1` columns of 74 pixels): keeps its width under [`MAX_IMAGE_SIDE`]; models
/// have at most about 130 layers.
pub const MAX_HEATMAP_LAYERS: usize = 200;

/// Largest setup count of a fingerprint study's heatmap (rows of 22 pixels): keeps its height
/// under [`MAX_IMAGE_SIDE`].
pub const MAX_HEATMAP_SETUPS: usize = 700;

/// Largest layer count of one adversary's ROC curves, or of a report's held-out samples (one
/// curve and one legend line per layer).
pub const MAX_ROC_LAYERS: usize = 1_024;

/// Largest count of series in one figure: adversaries of a simulation report or of a sweep
/// point (one legend line, colour and 18 pixels of height each); the scenario's own limit
/// ([`veritrace_sim::scenario::MAX_ADVERSARIES`]).
pub const MAX_SERIES: usize = veritrace_sim::scenario::MAX_ADVERSARIES;

/// Largest `k` on a detection-vs-k axis (the scenario's limit,
/// [`veritrace_sim::scenario::MAX_SAMPLES`]); smaller than 1 is refused too (log axis).
pub const MAX_K: f64 = veritrace_sim::scenario::MAX_SAMPLES as f64;

/// Largest round count behind a hypergeometric curve (the scenario's limit,
/// [`veritrace_sim::scenario::MAX_ROUNDS`]).
pub const MAX_ROUNDS: u32 = veritrace_sim::scenario::MAX_ROUNDS;

/// Largest point count of a sweep ([`veritrace_sim::sweep::MAX_POINTS`]).
pub const MAX_SWEEP_POINTS: usize = veritrace_sim::sweep::MAX_POINTS;

/// Largest count of detection-vs-k panels of one sweep (one figure each: the combinations of
/// the other axes' values).
pub const MAX_PANELS: usize = 256;

/// Largest count of threshold scales of a corridor result (points of its figure).
pub const MAX_CORRIDOR_SCALES: usize = 256;

/// Largest absolute value of a plotted rate, saving or scale, so that axis ranges and their
/// padding stay finite.
pub const MAX_PLOTTED_MAGNITUDE: f64 = 1e12;

/// Largest side of a figure, in pixels (plotters draws in `i32` coordinates; 16,384 is far
/// beyond any readable plot).
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// Largest figure, in pixels: its RGB raster (3 bytes a pixel) stays under 200 MB.
pub const MAX_IMAGE_PIXELS: u64 = 1 << 26;

/// Failures of `veritrace report` that are not the input's fault (the binary exits 1).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The embedded font could not be registered.
    #[error("the embedded font could not be registered")]
    Font,
    /// A plot could not be drawn.
    #[error("drawing {plot}: {reason}")]
    Render {
        /// The plot's file stem.
        plot: String,
        /// What went wrong.
        reason: String,
    },
    /// An output could not be written.
    #[error("{path}: {reason}")]
    Write {
        /// The file or directory.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// A result file, recognised by its shape.
#[derive(Debug, Clone)]
pub enum ResultFile {
    /// `veritrace simulate`'s report.
    Simulation(Box<SimReport>),
    /// `veritrace sweep`'s (or `merge`'s) result.
    Sweep(Box<SweepResult>),
    /// `veritrace fingerprint`'s study.
    Fingerprint(Box<StudyReport>),
}

impl ResultFile {
    /// What the file is, in words.
    pub fn describe(&self) -> String {
        match self {
            ResultFile::Simulation(r) => format!(
                "simulation report, scenario {:?}, {} adversaries ({})",
                r.scenario.name,
                r.adversaries.len(),
                engine_name(r.engine)
            ),
            ResultFile::Sweep(s) => format!(
                "sweep of scenario {:?} over {}, {} points ({})",
                s.scenario.name,
                s.grid
                    .axes
                    .iter()
                    .map(|(a, v)| format!("{} ({} values)", axis_name(*a), v.len()))
                    .collect::<Vec<_>>()
                    .join(" x "),
                s.points.len(),
                engine_name(s.engine)
            ),
            ResultFile::Fingerprint(f) => format!(
                "fingerprint study of {}, {} setups against {}",
                f.engine,
                f.results.len(),
                f.plan.reference
            ),
        }
    }
}

/// Recognises `text` (the contents of the file `name`) by its shape and parses it.
///
/// # Errors
/// [`ReportInputError::Unrecognised`] for anything that is not JSON or has none of the known
/// shapes, [`ReportInputError::Malformed`] when it has one but does not parse as it,
/// [`ReportInputError::OutOfRange`] when a count the plots are sized by exceeds its limit
/// ([`check_sizes`]).
pub fn recognise(name: &str, text: &str) -> Result<ResultFile, ReportInputError> {
    let unrecognised = |reason: String| ReportInputError::Unrecognised {
        path: name.to_string(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| unrecognised(format!("not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(unrecognised("not a JSON object".into()));
    };
    let has = |keys: &[&str]| keys.iter().all(|k| object.contains_key(*k));
    let malformed = |kind: &'static str, e: serde_json::Error| ReportInputError::Malformed {
        path: name.to_string(),
        kind,
        reason: e.to_string(),
    };
    let file = if has(&["grid", "points", "scenario"]) {
        serde_json::from_value(value)
            .map(|s| ResultFile::Sweep(Box::new(s)))
            .map_err(|e| malformed("a sweep result", e))
    } else if has(&["calibration", "adversaries", "scenario"]) {
        serde_json::from_value(value)
            .map(|s| ResultFile::Simulation(Box::new(s)))
            .map_err(|e| malformed("a simulation report", e))
    } else if has(&["plan", "noise_floor", "results"]) {
        serde_json::from_value(value)
            .map(|s| ResultFile::Fingerprint(Box::new(s)))
            .map_err(|e| malformed("a fingerprint study", e))
    } else {
        Err(unrecognised(
            "an object without the fields of a simulation report (scenario, calibration, \
             adversaries), a sweep (scenario, grid, points) or a fingerprint study (plan, \
             noise_floor, results)"
                .into(),
        ))
    }?;
    check_sizes(name, &file)?;
    Ok(file)
}

/// Reads and recognises a result file.
///
/// # Errors
/// [`ReportInputError`] if it cannot be read (not a regular file, over [`MAX_RESULT_BYTES`])
/// or is not a known result within the limits ([`recognise`]).
pub fn load(path: &Path) -> Result<ResultFile, ReportInputError> {
    let name = path.display().to_string();
    let read = |reason: String| ReportInputError::Read {
        path: name.clone(),
        reason,
    };
    // One reader for every input file: a regular file only (checked before it is opened), its
    // size checked before reading.
    let text =
        veritrace_model::files::read_text_limited(path, MAX_RESULT_BYTES, "a result file", "")
            .map_err(|e| match e {
                veritrace_model::files::FileError::TooLarge { size, .. } => {
                    out_of_range(&name, "file bytes", size, MAX_RESULT_BYTES)
                }
                other => read(other.reason()),
            })?;
    recognise(&name, &text)
}

fn out_of_range(
    path: &str,
    what: &str,
    value: impl std::fmt::Display,
    limit: impl std::fmt::Display,
) -> ReportInputError {
    ReportInputError::OutOfRange {
        path: path.to_string(),
        what: what.to_string(),
        value: value.to_string(),
        limit: limit.to_string(),
    }
}

/// Checks every count and value of `file` that the plots are sized or looped by against its
/// documented limit (the `MAX_*` constants), and the size of every figure it gives, before
/// anything is drawn.
///
/// # Errors
/// [`ReportInputError::OutOfRange`] naming the first field out of range.
pub fn check_sizes(name: &str, file: &ResultFile) -> Result<(), ReportInputError> {
    let count = |what: &str, n: usize, max: usize| {
        if n > max {
            Err(out_of_range(name, what, n, max))
        } else {
            Ok(())
        }
    };
    let value = |what: &str, v: f64, lo: f64, hi: f64| {
        if v.is_finite() && v >= lo && v <= hi {
            Ok(())
        } else {
            Err(out_of_range(name, what, v, format!("{lo} to {hi}")))
        }
    };
    let m = MAX_PLOTTED_MAGNITUDE;
    let adversaries = |r: &SimReport| -> Result<(), ReportInputError> {
        count("adversaries", r.adversaries.len(), MAX_SERIES)?;
        count(
            "calibration.holdout_samples layers",
            r.calibration.holdout_samples.len(),
            MAX_ROC_LAYERS,
        )?;
        count(
            "scenario.protocol.rounds",
            r.scenario.protocol.rounds as usize,
            MAX_ROUNDS as usize,
        )?;
        for a in &r.adversaries {
            count(
                "adversary deviations layers",
                a.deviations.len(),
                MAX_ROC_LAYERS,
            )?;
            value("adversary saving", a.saving, -m, m)?;
            value("adversary detection", a.detection, -m, m)?;
            let (lo, hi) = interval(a);
            value("adversary interval", lo, -m, m)?;
            value("adversary interval", hi, -m, m)?;
            if let Some(c) = &a.corridor {
                count("corridor scales", c.scales.len(), MAX_CORRIDOR_SCALES)?;
                for &x in &c.scales {
                    value("corridor scale", x, 1.0 / m, m)?;
                }
                let n = c.scales.len();
                for (what, len) in [
                    ("corridor flips_all_layers", c.flips_all_layers.len()),
                    ("corridor flip_bounds", c.flip_bounds.len()),
                    ("corridor honest_over", c.honest_over.len()),
                    ("corridor honest_fpr_upper", c.honest_fpr_upper.len()),
                ] {
                    if len != n {
                        return Err(out_of_range(
                            name,
                            &format!("{what} length"),
                            len,
                            format!("{n}, one per scale"),
                        ));
                    }
                }
                for &(lo, hi) in &c.flip_bounds {
                    value("corridor flip bound", lo, -m, m)?;
                    value("corridor flip bound", hi, -m, m)?;
                }
                for &u in &c.honest_fpr_upper {
                    value("corridor honest_fpr_upper", u, -m, m)?;
                }
            }
        }
        Ok(())
    };
    match file {
        ResultFile::Simulation(r) => adversaries(r),
        ResultFile::Sweep(s) => {
            count("points", s.points.len(), MAX_SWEEP_POINTS)?;
            let mut panels = std::collections::BTreeSet::new();
            for p in &s.points {
                adversaries(&p.report)?;
                if let Some(&k) = p.values.get(&Axis::K) {
                    value("k", k, 1.0, MAX_K)?;
                }
                panels.insert(
                    p.values
                        .iter()
                        .filter(|(a, _)| **a != Axis::K)
                        .map(|(a, v)| (*a, v.to_bits()))
                        .collect::<Vec<_>>(),
                );
                count("detection-vs-k panels", panels.len(), MAX_PANELS)?;
            }
            Ok(())
        }
        ResultFile::Fingerprint(f) => {
            count("num_layers", f.num_layers, MAX_HEATMAP_LAYERS)?;
            count("setups", f.results.len(), MAX_HEATMAP_SETUPS)?;
            let (w, h) = heatmap_size(f.results.len(), f.num_layers)
                .ok_or_else(|| out_of_range(name, "heatmap size", "overflow", MAX_IMAGE_SIDE))?;
            check_image(name, "heatmap", w, h)
        }
    }
}

/// A figure's size against [`MAX_IMAGE_SIDE`] and [`MAX_IMAGE_PIXELS`].
fn check_image(name: &str, what: &str, w: u32, h: u32) -> Result<(), ReportInputError> {
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
        return Err(out_of_range(
            name,
            &format!("{what} size in pixels"),
            format!("{w} x {h}"),
            format!("{MAX_IMAGE_SIDE} a side"),
        ));
    }
    let pixels = u64::from(w) * u64::from(h);
    if pixels > MAX_IMAGE_PIXELS {
        return Err(out_of_range(
            name,
            &format!("{what} pixels"),
            pixels,
            MAX_IMAGE_PIXELS,
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Drawing.

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(ReportError::Font)
    }
}

/// Tableau 10.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Viridis, ten anchors.
const VIRIDIS: [(u8, u8, u8); 10] = [
    (68, 1, 84),
    (72, 40, 120),
    (62, 74, 137),
    (49, 104, 142),
    (38, 130, 142),
    (31, 158, 137),
    (53, 183, 121),
    (109, 205, 89),
    (180, 222, 44),
    (253, 231, 37),
];

fn viridis(t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (VIRIDIS.len() - 1) as f64;
    let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
    let f = x - i as f64;
    let mix = |a: u8, b: u8| (f64::from(a) + f * (f64::from(b) - f64::from(a))).round() as u8;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn text_style(size: f64, color: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&color).pos(Pos::new(h, v))
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Truncates `s` to `max` characters, ending in `…` when cut.
fn fit(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// A marker of shape `shape % 4` (circle, triangle, square, cross) at pixel `at`.
fn marker<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    at: (i32, i32),
    shape: usize,
    color: RGBColor,
    filled: bool,
) -> Result<(), String> {
    let style = if filled {
        color.filled()
    } else {
        color.stroke_width(1)
    };
    let (x, y) = at;
    match shape % 4 {
        0 => root.draw(&Circle::new(at, 4, style)),
        1 => root.draw(&TriangleMarker::new(at, 5, style)),
        2 => root.draw(&Rectangle::new([(x - 4, y - 4), (x + 4, y + 4)], style)),
        _ => root.draw(&Cross::new(at, 4, color.stroke_width(2))),
    }
    .map_err(err)
}

/// A vertical error bar with caps between pixels `top` and `bottom` at column `x`.
fn error_bar<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    x: i32,
    top: i32,
    bottom: i32,
    color: RGBColor,
) -> Result<(), String> {
    let s = color.stroke_width(1);
    root.draw(&PathElement::new(vec![(x, top), (x, bottom)], s))
        .map_err(err)?;
    for y in [top, bottom] {
        root.draw(&PathElement::new(vec![(x - 3, y), (x + 3, y)], s))
            .map_err(err)?;
    }
    Ok(())
}

/// One line of a legend.
struct LegendEntry {
    text: String,
    color: RGBColor,
    shape: Option<usize>,
    line: Option<bool>,
}

/// `text` cut (ending in `…`) to fit in `max` pixels in `style`.
fn fit_px<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &str,
    style: &TextStyle,
    max: u32,
) -> String {
    let fits = |t: &str| {
        area.estimate_text_size(t, style)
            .map(|(w, _)| w <= max)
            .unwrap_or(true)
    };
    if fits(text) {
        return text.to_string();
    }
    // Cut in the middle: labels differ as often at their end (pow=0, pow=8) as at their start.
    let chars: Vec<char> = text.chars().collect();
    for n in (2..chars.len()).rev() {
        let head: String = chars[..n.div_ceil(2)].iter().collect();
        let tail: String = chars[chars.len() - n / 2..].iter().collect();
        let t = format!("{head}…{tail}");
        if fits(&t) {
            return t;
        }
    }
    "…".to_string()
}

/// A chart caption fitted to the width of `area`.
fn caption<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, title: &str, size: f64) -> String {
    let (w, _) = area.dim_in_pixel();
    let style = text_style(size, BLACK, HPos::Center, VPos::Top);
    fit_px(area, title, &style, w.saturating_sub(24))
}

/// A legend in its own area: a title, then one line per entry (a line sample, solid or dashed,
/// and a marker, then the text).
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    entries: &[LegendEntry],
) -> Result<(), String> {
    let (w, _) = area.dim_in_pixel();
    let head = text_style(13.0, BLACK, HPos::Left, VPos::Center);
    area.draw(&Text::new(
        fit_px(area, title, &head, w.saturating_sub(12)),
        (6, 50),
        head.clone(),
    ))
    .map_err(err)?;
    let body = text_style(12.0, BLACK, HPos::Left, VPos::Center);
    for (i, e) in entries.iter().enumerate() {
        let y = 72 + 18 * i as i32;
        match e.line {
            Some(false) => area
                .draw(&PathElement::new(
                    vec![(8, y), (34, y)],
                    e.color.stroke_width(2),
                ))
                .map_err(err)?,
            Some(true) => {
                for x in [8, 19, 30] {
                    area.draw(&PathElement::new(
                        vec![(x, y), (x + 6, y)],
                        e.color.stroke_width(2),
                    ))
                    .map_err(err)?;
                }
            }
            None => {}
        }
        if let Some(shape) = e.shape {
            marker(area, (21, y), shape, e.color, true)?;
        }
        area.draw(&Text::new(
            fit_px(area, &e.text, &body, w.saturating_sub(48)),
            (40, y),
            body.clone(),
        ))
        .map_err(err)?;
    }
    Ok(())
}

/// Something drawn into a rectangle of pixels, whatever the backend.
trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws onto `root` (already filled white).
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let failed = |e: std::io::Error| ReportError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    // The one atomic writer: a unique temporary file, synced, renamed (no user's file touched).
    veritrace_model::files::write_atomic(path, bytes).map_err(|e| match e {
        veritrace_model::files::FileError::Write { source, .. } => failed(source),
        other => failed(std::io::Error::other(other.to_string())),
    })
}

/// Writes `fig` as `DIR/STEM.svg` and `DIR/STEM.png`.
fn render<F: Figure>(fig: &F, dir: &Path, stem: &str) -> Result<(), ReportError> {
    let failed = |reason: String| ReportError::Render {
        plot: stem.to_string(),
        reason,
    };
    let size = fig.size();
    let (w, h) = size;
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE || u64::from(w) * u64::from(h) > MAX_IMAGE_PIXELS {
        // Inputs are checked against the limits before drawing: this is a bug.
        return Err(failed(format!(
            "figure of {w} x {h} pixels exceeds the limits"
        )));
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(err).map_err(failed)?;
        fig.draw(&root).map_err(failed)?;
        root.present().map_err(err).map_err(failed)?;
    }
    write_file(&dir.join(format!("{stem}.svg")), svg.as_bytes())?;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        root.fill(&WHITE).map_err(err).map_err(failed)?;
        fig.draw(&root).map_err(failed)?;
        root.present().map_err(err).map_err(failed)?;
    }
    let png = encode_png(&rgb, w, h).map_err(failed)?;
    write_file(&dir.join(format!("{stem}.png")), &png)
}

/// Encodes an RGB buffer as PNG at the best compression: indexed colour when the image has at
/// most 256 colours (plots mostly do), else 8-bit RGB.
fn encode_png(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>, String> {
    let mut palette: Vec<[u8; 3]> = Vec::new();
    let mut lookup: std::collections::HashMap<[u8; 3], u8> = std::collections::HashMap::new();
    let mut indices = Vec::with_capacity(rgb.len() / 3);
    for px in rgb.chunks_exact(3) {
        let c = [px[0], px[1], px[2]];
        let i = match lookup.get(&c) {
            Some(&i) => i,
            None if palette.len() < 256 => {
                let i = palette.len() as u8;
                palette.push(c);
                lookup.insert(c, i);
                i
            }
            None => {
                palette.clear();
                break;
            }
        };
        indices.push(i);
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Best);
        enc.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
        let data: &[u8] = if palette.is_empty() {
            enc.set_color(png::ColorType::Rgb);
            rgb
        } else {
            enc.set_color(png::ColorType::Indexed);
            enc.set_palette(palette.concat());
            &indices
        };
        let mut writer = enc.write_header().map_err(err)?;
        writer.write_image_data(data).map_err(err)?;
        writer.finish().map_err(err)?;
    }
    Ok(out)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn engine_name(e: EngineMode) -> &'static str {
    match e {
        EngineMode::EndToEnd => "end to end",
        EngineMode::Fast => "fast mode",
    }
}

fn axis_name(a: Axis) -> &'static str {
    match a {
        Axis::K => "k",
        Axis::Chunk => "chunk",
        Axis::Fraction => "fraction",
        Axis::Tolerance => "tolerance",
    }
}

const LEGEND_W: u32 = 360;

/// Width of a legend column whose longest line has `chars` characters (12 px text).
fn legend_width(chars: usize) -> u32 {
    (56 + 7 * chars as u32).clamp(300, 560)
}

/// Detection against k.
struct KFigure<'a> {
    title: String,
    subtitle: String,
    panel: &'a KPanel,
}

impl KFigure<'_> {
    fn legend_w(&self) -> u32 {
        legend_width(
            self.panel
                .series
                .iter()
                .map(|s| s.label.chars().count())
                .max()
                .unwrap_or(0),
        )
    }
}

impl Figure for KFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let rows = self.panel.series.len() as u32 + 2;
        (580 + self.legend_w(), 520.max(100 + 18 * rows))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let (w, _) = root.dim_in_pixel();
        let (left, right) = root.split_horizontally(w - self.legend_w());
        let ks: Vec<f64> = self
            .panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.k))
            .collect();
        let kmin = ks.iter().copied().fold(f64::INFINITY, f64::min).max(1.0);
        let kmax = ks.iter().copied().fold(0.0, f64::max).max(kmin);
        let mut keys: Vec<f64> = ks.clone();
        keys.sort_by(f64::total_cmp);
        keys.dedup();
        let mut chart = ChartBuilder::on(&left)
            .caption(caption(&left, &self.title, 17.0), (FAMILY, 17))
            .margin(12)
            .x_label_area_size(46)
            .y_label_area_size(56)
            .build_cartesian_2d(
                ((kmin / 1.25)..(kmax * 1.25))
                    .log_scale()
                    .with_key_points(keys),
                -0.02f64..1.04f64,
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(format!("k, cells challenged per round ({})", self.subtitle))
            .y_desc("detection probability")
            .x_label_formatter(&|k| format!("{k}"))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .max_light_lines(0)
            .bold_line_style(RGBColor(228, 228, 228).stroke_width(1))
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 14))
            .draw()
            .map_err(err)?;
        let mut entries = Vec::new();
        for (i, s) in self.panel.series.iter().enumerate() {
            let c = color(i);
            let shape = i / PALETTE.len();
            if !s.analytic.is_empty() {
                chart
                    .draw_series(DashedLineSeries::new(
                        s.analytic.iter().copied(),
                        6,
                        4,
                        c.mix(0.8).stroke_width(1),
                    ))
                    .map_err(err)?;
            }
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().map(|p| (p.k, p.detection)),
                    c.stroke_width(2),
                ))
                .map_err(err)?;
            for p in &s.points {
                let (x, top) = chart.backend_coord(&(p.k, p.wilson95.1));
                let (_, bottom) = chart.backend_coord(&(p.k, p.wilson95.0));
                error_bar(root, x, top, bottom, c)?;
                marker(
                    root,
                    chart.backend_coord(&(p.k, p.detection)),
                    shape,
                    c,
                    true,
                )?;
            }
            entries.push(LegendEntry {
                text: s.label.clone(),
                color: c,
                shape: Some(shape),
                line: Some(false),
            });
        }
        let mut all = vec![LegendEntry {
            text: "measured, 95% bounds over runs".into(),
            color: BLACK,
            shape: Some(0),
            line: Some(false),
        }];
        all.push(LegendEntry {
            text: "hypergeometric prediction".into(),
            color: BLACK,
            shape: None,
            line: Some(true),
        });
        all.extend(entries);
        legend(&right, "adversary", &all)
    }
}

/// ROC curves of one adversary, one per layer.
struct RocFigure {
    title: String,
    curves: Vec<Roc>,
    metric: String,
}

impl Figure for RocFigure {
    fn size(&self) -> (u32, u32) {
        (860, 500)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let (w, _) = root.dim_in_pixel();
        let (left, right) = root.split_horizontally(w - LEGEND_W);
        let mut chart = ChartBuilder::on(&left)
            .caption(caption(&left, &self.title, 16.0), (FAMILY, 16))
            .margin(12)
            .x_label_area_size(46)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.01f64..1.01f64, -0.01f64..1.02f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("false-positive rate (honest held-out cells above the threshold)")
            .y_desc("true-positive rate (adversary cells above it)")
            .x_label_formatter(&|x| format!("{x:.1}"))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .max_light_lines(0)
            .bold_line_style(RGBColor(228, 228, 228).stroke_width(1))
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 13))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                5,
                5,
                RGBColor(160, 160, 160).stroke_width(1),
            ))
            .map_err(err)?;
        let mut entries = vec![LegendEntry {
            text: "calibrated threshold".into(),
            color: BLACK,
            shape: Some(0),
            line: None,
        }];
        for (i, r) in self.curves.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(LineSeries::new(r.points.iter().copied(), c.stroke_width(2)))
                .map_err(err)?;
            let at = chart.backend_coord(&r.at_threshold);
            marker(root, at, 0, c, true)?;
            root.draw(&Circle::new(at, 5, BLACK.stroke_width(1)))
                .map_err(err)?;
            entries.push(LegendEntry {
                text: format!(
                    "h{}: AUC {:.3}; at threshold FPR {:.3}, TPR {:.3}",
                    r.layer, r.auc, r.at_threshold.0, r.at_threshold.1
                ),
                color: c,
                shape: None,
                line: Some(false),
            });
        }
        legend(
            &right,
            &format!("layer ({} threshold test)", self.metric),
            &entries,
        )
    }
}

/// Detection against compute saving, one labelled point per adversary.
struct SavingFigure {
    title: String,
    points: Vec<(String, f64, f64, (f64, f64))>,
}

impl SavingFigure {
    fn entry(i: usize, label: &str, detection: f64) -> String {
        format!("{}: {label} ({})", i + 1, pct(detection))
    }

    fn legend_w(&self) -> u32 {
        legend_width(
            self.points
                .iter()
                .enumerate()
                .map(|(i, p)| Self::entry(i, &p.0, p.2).chars().count())
                .max()
                .unwrap_or(0),
        )
    }
}

impl Figure for SavingFigure {
    fn size(&self) -> (u32, u32) {
        (
            580 + self.legend_w(),
            520.max(100 + 18 * (self.points.len() as u32 + 1)),
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let (w, _) = root.dim_in_pixel();
        let (left, right) = root.split_horizontally(w - self.legend_w());
        let xs = self.points.iter().map(|p| p.1);
        let x0 = xs.clone().fold(0.0, f64::min);
        let x1 = xs.fold(0.0, f64::max);
        let pad = ((x1 - x0) * 0.08).max(0.02);
        let mut chart = ChartBuilder::on(&left)
            .caption(caption(&left, &self.title, 16.0), (FAMILY, 16))
            .margin(12)
            .x_label_area_size(46)
            .y_label_area_size(56)
            .build_cartesian_2d((x0 - pad)..(x1 + pad), -0.04f64..1.06f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("compute saving of the adversary (1 − cost / honest cost)")
            .y_desc("detection probability")
            .x_label_formatter(&|x| format!("{:.0}%", 100.0 * x))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .max_light_lines(0)
            .bold_line_style(RGBColor(228, 228, 228).stroke_width(1))
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 14))
            .draw()
            .map_err(err)?;
        let mut entries = vec![LegendEntry {
            text: "measured, 95% bounds over runs".into(),
            color: BLACK,
            shape: Some(0),
            line: None,
        }];
        // Points that fall on one spot share one label ("1,2,3").
        let mut clusters: Vec<((i32, i32), Vec<usize>)> = Vec::new();
        for (i, (label, saving, detection, (lo, hi))) in self.points.iter().enumerate() {
            let c = color(i);
            let shape = i / PALETTE.len();
            let (x, top) = chart.backend_coord(&(*saving, *hi));
            let (_, bottom) = chart.backend_coord(&(*saving, *lo));
            error_bar(root, x, top, bottom, c)?;
            let at = chart.backend_coord(&(*saving, *detection));
            marker(root, at, shape, c, true)?;
            match clusters
                .iter_mut()
                .find(|(p, _)| (p.0 - at.0).abs() <= 8 && (p.1 - at.1).abs() <= 8)
            {
                Some((_, members)) => members.push(i),
                None => clusters.push((at, vec![i])),
            }
            entries.push(LegendEntry {
                text: Self::entry(i, label, *detection),
                color: c,
                shape: Some(shape),
                line: None,
            });
        }
        for (n, (at, members)) in clusters.iter().enumerate() {
            // Labels alternate sides so that neighbouring clusters stay readable.
            let (dx, h) = if n % 2 == 0 {
                (7, HPos::Left)
            } else {
                (-7, HPos::Right)
            };
            let ink = match members.as_slice() {
                [one] => color(*one),
                _ => RGBColor(60, 60, 60),
            };
            let text = members
                .iter()
                .map(|i| (i + 1).to_string())
                .collect::<Vec<_>>()
                .join(",");
            root.draw(&Text::new(
                text,
                (at.0 + dx, at.1 - 8),
                text_style(11.0, ink, h, VPos::Center),
            ))
            .map_err(err)?;
        }
        legend(&right, "adversary", &entries)
    }
}

/// A corridor prover's trade-off: the token-flip rate against the threshold scale, beside the
/// honest false-positive rate at the same scale.
struct CorridorFigure {
    title: String,
    result: veritrace_sim::CorridorResult,
}

impl Figure for CorridorFigure {
    fn size(&self) -> (u32, u32) {
        (880, 520)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let (w, _) = root.dim_in_pixel();
        let (left, right) = root.split_horizontally(w - 300);
        let c = &self.result;
        let x0 = c
            .scales
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .log2();
        let x1 = c.scales.iter().copied().fold(0.0, f64::max).log2();
        let mut chart = ChartBuilder::on(&left)
            .caption(caption(&left, &self.title, 16.0), (FAMILY, 16))
            .margin(12)
            .x_label_area_size(46)
            .y_label_area_size(56)
            .build_cartesian_2d((x0 - 0.5)..(x1 + 0.5), -0.04f64..1.06f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("threshold scale s (multiples of the calibrated thresholds, log2)")
            .y_desc("rate")
            .x_label_formatter(&|x| format!("{}", x.exp2()))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .max_light_lines(0)
            .bold_line_style(RGBColor(228, 228, 228).stroke_width(1))
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 14))
            .draw()
            .map_err(err)?;
        let flips: Vec<(f64, f64)> = c
            .scales
            .iter()
            .zip(&c.flips_all_layers)
            .map(|(s, &k)| (s.log2(), k as f64 / c.prompts.max(1) as f64))
            .collect();
        let fpr: Vec<(f64, f64)> = c
            .scales
            .iter()
            .zip(&c.honest_over)
            .map(|(s, &k)| (s.log2(), k as f64 / c.honest_runs.max(1) as f64))
            .collect();
        let (red, blue) = (color(1), color(0));
        chart
            .draw_series(LineSeries::new(flips.iter().copied(), red.stroke_width(2)))
            .map_err(err)?;
        for (i, &(x, y)) in flips.iter().enumerate() {
            let (lo, hi) = c.flip_bounds[i];
            let (px, top) = chart.backend_coord(&(x, hi));
            let (_, bottom) = chart.backend_coord(&(x, lo));
            error_bar(root, px, top, bottom, red)?;
            marker(root, chart.backend_coord(&(x, y)), 0, red, true)?;
        }
        chart
            .draw_series(LineSeries::new(fpr.iter().copied(), blue.stroke_width(2)))
            .map_err(err)?;
        for (i, &(x, y)) in fpr.iter().enumerate() {
            let (px, top) = chart.backend_coord(&(x, c.honest_fpr_upper[i]));
            let (_, bottom) = chart.backend_coord(&(x, y));
            error_bar(root, px, top, bottom, blue)?;
            marker(root, chart.backend_coord(&(x, y)), 1, blue, true)?;
        }
        let entries = vec![
            LegendEntry {
                text: format!("token flipped ({} prompts)", c.prompts),
                color: red,
                shape: Some(0),
                line: None,
            },
            LegendEntry {
                text: format!("honest over s x t ({} runs)", c.honest_runs),
                color: blue,
                shape: Some(1),
                line: None,
            },
        ];
        legend(&right, "corridor prover vs honest", &entries)
    }
}

/// Per-layer SNR of every setup of a fingerprint study.
struct HeatmapFigure {
    title: String,
    rows: Vec<(String, String, Vec<f64>)>,
    layers: usize,
    threshold: f64,
}

const ROW_H: i32 = 22;
const CELL_W: i32 = 74;
const LABEL_W: i32 = 270;
const TOP: i32 = 64;

impl HeatmapFigure {
    fn bar_height(&self) -> i32 {
        (ROW_H * self.rows.len() as i32 - 60).max(200)
    }

    fn range(&self) -> (f64, f64) {
        let logs = self
            .rows
            .iter()
            .flat_map(|r| r.2.iter())
            .filter(|v| v.is_finite() && **v > 0.0)
            .map(|v| v.log10());
        let lo = logs.clone().fold(f64::INFINITY, f64::min);
        let hi = logs.fold(f64::NEG_INFINITY, f64::max);
        if lo.is_finite() && hi.is_finite() {
            let (lo, hi) = (lo.floor(), hi.ceil());
            (lo, if hi > lo { hi } else { lo + 1.0 })
        } else {
            (-1.0, 1.0)
        }
    }
}

fn snr_text(v: f64) -> String {
    veritrace_model::fingerprint::Snr(v).to_string()
}

/// The size of the heatmap of `rows` setups over `num_layers + 1` columns, in checked
/// arithmetic; `None` when it does not fit in `i32` pixels.
fn heatmap_size(rows: usize, num_layers: usize) -> Option<(u32, u32)> {
    let layers = i32::try_from(num_layers.checked_add(1)?).ok()?;
    let rows = i32::try_from(rows).ok()?;
    let grid_w = CELL_W.checked_mul(layers)?;
    let w = LABEL_W.checked_add(grid_w)?.checked_add(140 + 170)?;
    let grid_h = ROW_H.checked_mul(rows)?;
    let bar = (grid_h - 60).max(200);
    let h = TOP.checked_add(grid_h.max(bar + 60))?.checked_add(16)?;
    Some((u32::try_from(w).ok()?, u32::try_from(h).ok()?))
}

impl Figure for HeatmapFigure {
    fn size(&self) -> (u32, u32) {
        // Checked by `check_sizes` when the study was loaded.
        heatmap_size(self.rows.len(), self.layers.saturating_sub(1)).unwrap_or((1, 1))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let (lo, hi) = self.range();
        let grey = RGBColor(225, 225, 225);
        let inf = RGBColor(120, 0, 30);
        let fill = |v: f64| -> RGBColor {
            if v.is_infinite() {
                inf
            } else if v > 0.0 {
                viridis((v.log10() - lo) / (hi - lo))
            } else {
                grey
            }
        };
        root.draw(&Text::new(
            self.title.clone(),
            (12, 22),
            text_style(16.0, BLACK, HPos::Left, VPos::Center),
        ))
        .map_err(err)?;
        let x0 = LABEL_W;
        for l in 0..self.layers {
            root.draw(&Text::new(
                format!("h{l}"),
                (x0 + CELL_W * l as i32 + CELL_W / 2, TOP - 12),
                text_style(13.0, BLACK, HPos::Center, VPos::Center),
            ))
            .map_err(err)?;
        }
        let grid_right = x0 + CELL_W * self.layers as i32;
        for (r, (setup, class, snr)) in self.rows.iter().enumerate() {
            let y = TOP + ROW_H * r as i32;
            root.draw(&Text::new(
                fit(setup, 38),
                (x0 - 8, y + ROW_H / 2),
                text_style(12.0, BLACK, HPos::Right, VPos::Center),
            ))
            .map_err(err)?;
            for (l, &v) in snr.iter().enumerate().take(self.layers) {
                let cx = x0 + CELL_W * l as i32;
                let c = fill(v);
                root.draw(&Rectangle::new(
                    [(cx, y), (cx + CELL_W - 1, y + ROW_H - 1)],
                    c.filled(),
                ))
                .map_err(err)?;
                let luminance =
                    0.299 * f64::from(c.0) + 0.587 * f64::from(c.1) + 0.114 * f64::from(c.2);
                let ink = if luminance > 140.0 { BLACK } else { WHITE };
                root.draw(&Text::new(
                    snr_text(v),
                    (cx + CELL_W / 2, y + ROW_H / 2),
                    text_style(11.0, ink, HPos::Center, VPos::Center),
                ))
                .map_err(err)?;
            }
            root.draw(&Text::new(
                class.clone(),
                (grid_right + 8, y + ROW_H / 2),
                text_style(11.0, RGBColor(60, 60, 60), HPos::Left, VPos::Center),
            ))
            .map_err(err)?;
        }
        // Colour bar: log10 SNR from lo (bottom) to hi (top), integer decades labelled.
        let bx = grid_right + 140;
        let (by0, by1) = (TOP, TOP + self.bar_height());
        let steps = (by1 - by0).max(1);
        for s in 0..steps {
            let t = 1.0 - f64::from(s) / f64::from(steps);
            root.draw(&Rectangle::new(
                [(bx, by0 + s), (bx + 18, by0 + s + 1)],
                viridis(t).filled(),
            ))
            .map_err(err)?;
        }
        root.draw(&Rectangle::new(
            [(bx, by0), (bx + 18, by1)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;
        let y_of = |d: f64| by1 - ((d - lo) / (hi - lo) * f64::from(by1 - by0)).round() as i32;
        let decades = (hi - lo).round() as i32;
        let every = (decades / 8).max(1);
        for d in (0..=decades).step_by(every as usize) {
            let v = lo + f64::from(d);
            let y = y_of(v);
            root.draw(&PathElement::new(
                vec![(bx + 18, y), (bx + 23, y)],
                BLACK.stroke_width(1),
            ))
            .map_err(err)?;
            root.draw(&Text::new(
                format!("1e{}", v as i32),
                (bx + 26, y),
                text_style(11.0, BLACK, HPos::Left, VPos::Center),
            ))
            .map_err(err)?;
        }
        if self.threshold > 0.0 && self.threshold.is_finite() {
            let t = self.threshold.log10();
            if t >= lo && t <= hi {
                let y = y_of(t);
                root.draw(&PathElement::new(
                    vec![(bx, y), (bx + 60, y)],
                    RGBColor(200, 0, 0).stroke_width(2),
                ))
                .map_err(err)?;
                root.draw(&Text::new(
                    format!("threshold {}", self.threshold),
                    (bx + 64, y),
                    text_style(11.0, RGBColor(200, 0, 0), HPos::Left, VPos::Center),
                ))
                .map_err(err)?;
            }
        }
        root.draw(&Text::new(
            "SNR (log scale)",
            (bx - 4, TOP - 12),
            text_style(12.0, BLACK, HPos::Left, VPos::Center),
        ))
        .map_err(err)?;
        for (i, (c, label)) in [(grey, "0: bitwise equal"), (inf, "inf: floor 0")]
            .iter()
            .enumerate()
        {
            let y = by1 + 16 + 20 * i as i32;
            root.draw(&Rectangle::new([(bx, y), (bx + 18, y + 14)], c.filled()))
                .map_err(err)?;
            root.draw(&Text::new(
                *label,
                (bx + 24, y + 7),
                text_style(11.0, BLACK, HPos::Left, VPos::Center),
            ))
            .map_err(err)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The verb.

fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let t: String = out
        .trim_matches(|c| c == '-' || c == '.')
        .chars()
        .take(60)
        .collect();
    let t = t.trim_end_matches('-').to_string();
    if t.is_empty() {
        "result".into()
    } else {
        t
    }
}

/// The file-name tag of an input: its stem, or its folder's name for `report.json` and
/// `fingerprint.json`.
fn tag_of(path: &Path) -> String {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let folder = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|s| s.to_str());
    match (stem, folder) {
        ("report" | "fingerprint", Some(f)) => slug(f),
        _ => slug(stem),
    }
}

/// What `veritrace report` wrote.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// File stems of the plots, each written as `.svg` and `.png`.
    pub plots: Vec<String>,
    /// The index, in markdown.
    pub index: String,
}

/// Renders every plot of `inputs` (paths with their parsed results) into `dir` and writes
/// `dir/index.md`.
///
/// # Errors
/// [`ReportInputError::NothingToPlot`] when no input holds anything to plot,
/// [`ReportInputError::OutOfRange`] when one exceeds a limit ([`check_sizes`]); [`ReportError`]
/// when drawing or writing fails.
pub fn render_all(inputs: &[(PathBuf, ResultFile)], dir: &Path) -> anyhow::Result<Written> {
    // Results built in memory are held to the limits `load` applies, before anything is drawn.
    for (path, result) in inputs {
        check_sizes(&path.display().to_string(), result)?;
    }
    register_font()?;
    std::fs::create_dir_all(dir).map_err(|e| ReportError::Write {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut written = Written::default();
    let mut index = String::from("# Plots\n\nWritten by `veritrace report`");
    let _ = writeln!(
        index,
        " from:\n\n{}",
        inputs
            .iter()
            .map(|(p, r)| format!("- `{}`: {}", p.display(), r.describe()))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let _ = writeln!(index, "\nEach plot is an SVG and a PNG of the same name.\n");
    let mut used: BTreeMap<String, usize> = BTreeMap::new();
    let mut skipped = Vec::new();
    for (path, result) in inputs {
        let base = tag_of(path);
        let n = used.entry(base.clone()).or_insert(0);
        *n += 1;
        let tag = if *n == 1 { base } else { format!("{base}-{n}") };
        let mut plot = |index: &mut String, stem: String, index_text: String| {
            written.plots.push(stem.clone());
            let _ = writeln!(
                index,
                "{index_text}\n\n![{stem}]({stem}.svg) ([PNG]({stem}.png))\n"
            );
        };
        match result {
            ResultFile::Sweep(s) => {
                let panels = k_panels(s);
                if panels.is_empty() {
                    skipped.push(format!(
                        "`{}`: its grid has no k axis, so there is no detection-vs-k plot",
                        path.display()
                    ));
                }
                for panel in &panels {
                    let mut stem = format!("{tag}-detection-vs-k");
                    let mut fixed = String::new();
                    for (a, v) in &panel.fixed {
                        stem.push_str(&format!("-{}-{}", axis_name(*a), slug(&v.to_string())));
                        fixed.push_str(&format!(", {} = {v}", axis_name(*a)));
                    }
                    let sc = &s.scenario;
                    let fig = KFigure {
                        title: format!("Detection vs k: scenario {}{fixed}", sc.name),
                        subtitle: format!(
                            "{} trials per point, {}",
                            sc.trials,
                            engine_name(s.engine)
                        ),
                        panel,
                    };
                    render(&fig, dir, &stem)?;
                    let dense = panel.series.iter().filter(|s| s.dense).count();
                    let with = panel
                        .series
                        .iter()
                        .filter(|s| !s.analytic.is_empty())
                        .count();
                    plot(
                        &mut index,
                        stem,
                        format!(
                            "## Detection vs k: `{}`{fixed}\n\nMeasured detection rate per \
                             adversary (solid, markers; bars: one-sided 95% bounds over the independent prover runs; {} trials \
                             per point, {}) against the hypergeometric prediction (dashed) for \
                             the {with} adversaries with one: {dense} dense over every integer k \
                             (`1 − (1 − P_hyp(N, b, k))^rounds` from the cells N and mean bad \
                             cells b, matching the engine's prediction at every grid k), the \
                             others joining the engine's predictions at the grid's k. Log k \
                             axis.",
                            path.display(),
                            sc.trials,
                            engine_name(s.engine)
                        ),
                    );
                }
            }
            ResultFile::Simulation(r) => {
                let sc = &r.scenario;
                let header = format!(
                    "scenario {}, k = {} x {} round(s), {} trials ({})",
                    sc.name,
                    sc.protocol.samples,
                    sc.protocol.rounds,
                    sc.trials,
                    engine_name(r.engine)
                );
                if r.adversaries.is_empty() {
                    skipped.push(format!("`{}`: no adversary", path.display()));
                    continue;
                }
                let stem = format!("{tag}-detection-vs-saving");
                let fig = SavingFigure {
                    title: format!(
                        "Detection vs compute saving: {} (k = {}, {} trials, {})",
                        sc.name,
                        sc.protocol.samples,
                        sc.trials,
                        engine_name(r.engine)
                    ),
                    points: r
                        .adversaries
                        .iter()
                        .map(|a| (a.label.clone(), a.saving, a.detection, interval(a)))
                        .collect(),
                };
                render(&fig, dir, &stem)?;
                plot(
                    &mut index,
                    stem,
                    format!(
                        "## Detection vs compute saving: `{}`\n\n{header}. One numbered point \
                         per adversary (the legend names them): its compute saving against the \
                         honest prover and its detection rate with one-sided 95% bounds over the independent prover runs.",
                        path.display()
                    ),
                );
                for (ai, a) in r.adversaries.iter().enumerate() {
                    let Some(c) = &a.corridor else { continue };
                    let stem = format!("{tag}-corridor-{:02}", ai + 1);
                    let fig = CorridorFigure {
                        title: format!("Tolerance corridor: {} ({})", a.label, sc.name),
                        result: c.clone(),
                    };
                    render(&fig, dir, &stem)?;
                    plot(
                        &mut index,
                        stem,
                        format!(
                            "## Tolerance corridor: `{}` in `{}`\n\n{header}. The rate at which a \
                             prover that keeps every cell within s times the calibrated thresholds \
                             flips the first generated token (undetectable by sampling), beside \
                             the rate of held-out honest runs with a cell over s times the \
                             thresholds (which a session could reject): the trade-off a \
                             protocol designer picks the threshold from.",
                            a.label,
                            path.display()
                        ),
                    );
                }
                let metric = format!("{:?}", r.calibration.metric);
                let mut table = String::from(
                    "| adversary | layer | AUC | threshold | FPR at it | TPR at it |\n\
                     |---|---|---|---|---|---|\n",
                );
                let mut figures = Vec::new();
                for (ai, a) in r.adversaries.iter().enumerate() {
                    if !roc_of_interest(a.kind) {
                        continue;
                    }
                    let curves = roc_curves(r, ai);
                    if curves.is_empty() {
                        continue;
                    }
                    for c in &curves {
                        let _ = writeln!(
                            table,
                            "| {} | h{} | {:.4} | {:.3e} | {:.4} | {:.4} |",
                            a.label,
                            c.layer,
                            c.auc,
                            c.threshold,
                            c.at_threshold.0,
                            c.at_threshold.1
                        );
                    }
                    let stem = format!("{tag}-roc-{:02}-{}", ai + 1, slug(&a.label));
                    let fig = RocFigure {
                        title: format!("ROC per layer: {} ({})", a.label, sc.name),
                        metric: metric.clone(),
                        curves,
                    };
                    figures.push((stem, a.label.clone(), fig));
                }
                if figures.is_empty() {
                    skipped.push(format!(
                        "`{}`: no cheating adversary with per-layer deviations and honest \
                         held-out samples, so no ROC curve",
                        path.display()
                    ));
                    continue;
                }
                let _ = writeln!(
                    index,
                    "## ROC curves per layer: `{}`\n\n{header}. For each layer, a threshold \
                     swept over every value: false-positive rate = fraction of the honest \
                     held-out cells (calibration.holdout_samples) above it, true-positive rate = \
                     fraction of the adversary's cells (deviations: every committed cell of the \
                     prompt pool) above it; cells that cannot be compared count as above every \
                     threshold. Circled: the calibrated {metric} threshold. Honest, \
                     other-hardware, equivocation and late-commitment provers have no ROC (the \
                     tolerance test is not what catches them). The verifier recomputes each cell \
                     from the prover's committed inputs, so the cells of a layer that an \
                     adversary computed exactly as the reference (deviation 0) sit below the \
                     honest other-hardware noise: such layers read an AUC near 0, not 0.5, and \
                     only the cheated cells push the true-positive rate up.\n\n{table}",
                    path.display()
                );
                for (stem, label, fig) in figures {
                    render(&fig, dir, &stem)?;
                    plot(&mut index, stem, format!("### ROC: {label}"));
                }
            }
            ResultFile::Fingerprint(f) => {
                let stem = format!("{tag}-snr-heatmap");
                let fig = HeatmapFigure {
                    title: format!(
                        "Per-layer SNR against {} ({}; prompts: {} of {} tokens)",
                        f.plan.reference, f.engine, f.plan.prompts, f.plan.tokens
                    ),
                    rows: f
                        .results
                        .iter()
                        .map(|r| {
                            (
                                r.setup.to_string(),
                                r.class.name().to_string(),
                                r.snr.iter().map(|s| s.0).collect(),
                            )
                        })
                        .collect(),
                    layers: f.num_layers.saturating_add(1),
                    threshold: f.plan.threshold,
                };
                if fig.rows.is_empty() {
                    skipped.push(format!("`{}`: no setup", path.display()));
                    continue;
                }
                render(&fig, dir, &stem)?;
                plot(
                    &mut index,
                    stem,
                    format!(
                        "## Fingerprint SNR: `{}`\n\nSetups (rows) by layer (columns, h0 = \
                         embeddings): mean relative L2 distance from the reference over the \
                         honest noise floor, on a log colour scale; grey: bitwise equal (0), \
                         dark red: a difference over a zero floor (inf). The class of each \
                         setup is on the right; the red tick on the colour bar is the \
                         cross-hardware threshold.",
                        path.display()
                    ),
                );
            }
        }
    }
    if !skipped.is_empty() {
        let _ = writeln!(index, "## Not plotted\n\n- {}", skipped.join("\n- "));
    }
    if written.plots.is_empty() {
        return Err(ReportInputError::NothingToPlot(skipped.join("; ")).into());
    }
    write_file(&dir.join("index.md"), index.as_bytes())?;
    written.index = index;
    Ok(written)
}

/// Runs `veritrace report`: reads every input, renders the plots into `--out`, and prints the
/// files written.
///
/// # Errors
/// A refused input ([`ReportInputError`]) makes the binary exit 2; anything else exits 1.
pub fn run(args: &ReportArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let inputs = args
        .results
        .iter()
        .map(|p| load(p).map(|r| (p.clone(), r)))
        .collect::<Result<Vec<_>, _>>()?;
    let written = render_all(&inputs, &args.out)?;
    for stem in &written.plots {
        writeln!(out, "{}", args.out.join(format!("{stem}.svg")).display())?;
        writeln!(out, "{}", args.out.join(format!("{stem}.png")).display())?;
    }
    writeln!(out, "{}", args.out.join("index.md").display())?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_shapes_are_refused() {
        for text in ["", "[1, 2]", "{\"a\": 1}", "not json"] {
            assert!(matches!(
                recognise("x.json", text),
                Err(ReportInputError::Unrecognised { .. })
            ));
        }
        assert!(matches!(
            recognise("x.json", "{\"grid\": 1, \"points\": [], \"scenario\": {}}"),
            Err(ReportInputError::Malformed { .. })
        ));
    }

    #[test]
    fn slugs_and_tags() {
        assert_eq!(
            slug("setup f32/attn=eager/quant=int4-g32"),
            "setup-f32-attn-eager-quant-int4-g32"
        );
        assert_eq!(slug("///"), "result");
        assert_eq!(tag_of(Path::new("a/default/report.json")), "default");
        assert_eq!(tag_of(Path::new("a/sweep-k.json")), "sweep-k");
    }

    fn shipped(name: &str) -> serde_json::Value {
        let path = format!(
            "{}/../../simulations/results/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[track_caller]
    fn out_of_range_names(value: &serde_json::Value, needle: &str) {
        match recognise("x.json", &value.to_string()) {
            Err(e @ ReportInputError::OutOfRange { .. }) => {
                assert!(e.to_string().contains(needle), "{e}")
            }
            other => panic!("{needle}: {other:?}"),
        }
    }

    #[test]
    fn sweep_sizes_are_bounded() {
        let sweep = shipped("default-sweep-k.json");
        assert!(recognise("x.json", &sweep.to_string()).is_ok());
        // k values off the log axis's range.
        for k in [1e9, 0.5, 0.0] {
            let mut s = sweep.clone();
            s["points"][0]["values"]["k"] = serde_json::json!(k);
            out_of_range_names(&s, "k = ");
        }
        // Too many series (adversaries) in one figure.
        let mut s = sweep.clone();
        let a = s["points"][0]["report"]["adversaries"][0].clone();
        s["points"][0]["report"]["adversaries"] = serde_json::Value::Array(vec![a; MAX_SERIES + 1]);
        out_of_range_names(&s, "adversaries = 257");
        // Rounds beyond the law's exponent.
        let mut s = sweep.clone();
        s["points"][0]["report"]["scenario"]["protocol"]["rounds"] = serde_json::json!(u32::MAX);
        out_of_range_names(&s, "scenario.protocol.rounds");
        // Too many panels: one per value of another axis.
        let mut s = sweep.clone();
        let mut point = s["points"][0].clone();
        point["report"]["adversaries"] = serde_json::json!([]);
        point["report"]["calibration"]["holdout_samples"] = serde_json::json!({});
        let points: Vec<serde_json::Value> = (0..=MAX_PANELS)
            .map(|i| {
                let mut p = point.clone();
                p["index"] = serde_json::json!(i);
                p["values"] = serde_json::json!({"k": 1.0, "fraction": 1.0 / (i + 2) as f64});
                p
            })
            .collect();
        s["points"] = serde_json::Value::Array(points);
        out_of_range_names(&s, "detection-vs-k panels");
    }

    #[test]
    fn report_sizes_are_bounded() {
        let report = shipped("corridor/report.json");
        assert!(recognise("x.json", &report.to_string()).is_ok());
        let corridor = report["adversaries"]
            .as_array()
            .unwrap()
            .iter()
            .position(|a| !a["corridor"].is_null())
            .unwrap();
        // Per-scale vectors shorter than the scales (drawing indexed them).
        let mut r = report.clone();
        r["adversaries"][corridor]["corridor"]["flip_bounds"] = serde_json::json!([]);
        out_of_range_names(&r, "corridor flip_bounds length");
        let mut r = report.clone();
        r["adversaries"][corridor]["corridor"]["scales"][0] = serde_json::json!(0.0);
        out_of_range_names(&r, "corridor scale");
        // A saving whose axis padding would overflow.
        let mut r = report.clone();
        r["adversaries"][0]["saving"] = serde_json::json!(1e308);
        out_of_range_names(&r, "adversary saving");
        // Too many layers of ROC curves.
        let mut r = report.clone();
        let layers: serde_json::Map<String, serde_json::Value> = (0..=MAX_ROC_LAYERS)
            .map(|l| (l.to_string(), serde_json::json!([0.5])))
            .collect();
        r["adversaries"][0]["deviations"] = serde_json::Value::Object(layers);
        out_of_range_names(&r, "adversary deviations layers");
    }
}
