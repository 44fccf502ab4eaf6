//! The fingerprint study: which numeric-setup changes leave a trace a verifier can see.
//!
//! The study reproduces the table of the reference post ("How a bug of AI hardware may become a
//! feature for AI governance"): some changes are **invariant** (bitwise identical results),
//! some are **detectable only by bitwise re-execution on identical hardware**, and some stand
//! **out of cross-hardware noise**. Other hardware is not available here, so its noise is
//! stood in for by *honest variants*: setups that differ from the reference only in reduction
//! order (split-K, batch shape, KV-cache decode order; [`Setup::same_algorithm`]), which is what
//! other hardware changes.
//!
//! # Method ([`run_study`])
//!
//! 1. Every prompt `p = 0..prompts` ([`Engine::prompt`], `tokens` ids long) is traced once under
//!    the reference and once under every setup of the plan, in row tiles of `chunk` rows.
//! 2. For every pair of runs `(a, b)` (the reference is run 0, then the plan's setups in order;
//!    `b` is the *first* of the pair) and every layer `l = 0..=L` (`h_0` = embeddings): the
//!    max-abs difference `max_i |a_i − b_i|` and the relative L2 distance `‖a − b‖₂ / ‖b‖₂`
//!    (computed in f64; if `‖b‖₂ = 0` the absolute `‖a − b‖₂`), kept as the maximum and the
//!    mean over prompts, with the number of prompts on which the layer is not bitwise equal.
//! 3. **Noise floor** of layer `l`: the largest relative L2 distance from the reference of any
//!    honest variant on any prompt — the worst honest cross-hardware deviation observed.
//! 4. **SNR** of setup `s` at layer `l`: `mean_p relL2(s, ref)_l / floor_l` — the typical
//!    signal over the worst honest noise, a conservative ratio. An honest variant is divided by
//!    the floor of the *other* honest variants (those with another setup string that are not
//!    bitwise equal to the reference), so it is not divided by itself; when no other honest
//!    variant differs from the reference it falls back to the full floor, which it then sets
//!    itself (so it reads at most 1: one noise source cannot be judged against another). A
//!    **zero floor** (every honest variant is bitwise equal
//!    to the reference at that layer, e.g. `h_0`, which is an exact copy of embedding rows) gives
//!    SNR 0 where the setup is also equal there and **infinity** where it differs: any deviation
//!    at a layer that honest hardware reproduces exactly is detectable. Infinity is written
//!    `"inf"` in JSON.
//! 5. **Class** of each setup against the reference: [`Class::Invariant`] if bitwise identical
//!    on every layer of every prompt; otherwise [`Class::CrossHardware`] if its maximum SNR over
//!    layers reaches the threshold, else [`Class::IdenticalHardware`].
//!
//! The default threshold is [`DEFAULT_THRESHOLD`] = 3: the post reports algorithm changes at
//! signal-to-noise ratios of roughly 3 to 80 against cross-hardware noise, so 3 is the lowest
//! ratio at which it calls a change detectable across hardware, while honest reduction-order
//! variants sit near 1 by construction.
//!
//! # Setups file
//!
//! One canonical setup string ([`crate::setup`]) per line; `#` starts a comment (whole line or
//! trailing); blank lines are ignored. The first setup is the reference, the others are the
//! setups studied against it (repeating the reference re-runs it: a reproducibility check).
//! [`parse_setups`] refuses a bad line with its 1-based line number.

use std::fmt;
use std::fmt::Write as _;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::setup::Order;
use crate::{Engine, ModelError, Quant, QuantScheme, Rounding, Setup};

/// Default SNR threshold between [`Class::IdenticalHardware`] and [`Class::CrossHardware`]
/// (see the [module docs](self) for why 3).
pub const DEFAULT_THRESHOLD: f64 = 3.0;

/// Default number of prompts of [`StudyPlan::default_for`].
pub const DEFAULT_PROMPTS: usize = 8;

/// Default prompt length in tokens of [`StudyPlan::default_for`].
pub const DEFAULT_TOKENS: usize = 64;

/// Default chunk (row tile) size of [`StudyPlan::default_for`]: at least 16 rows so that tiled
/// attention with blocks of 16 sees several key blocks.
pub const DEFAULT_CHUNK: usize = 16;

/// Largest number of prompts a plan may ask for.
pub const MAX_PROMPTS: usize = 1 << 20;

/// Largest prompt length a plan may ask for.
pub const MAX_TOKENS: usize = 1 << 16;

/// Every way the study refuses a plan or a setups file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FingerprintError {
    /// A line of a setups file is not a canonical setup string.
    #[error("setups file line {line}: {reason}")]
    SetupLine {
        /// 1-based line number.
        line: usize,
        /// Why the line was refused.
        reason: String,
    },
    /// A setups file holds no setup at all.
    #[error("the setups file holds no setup (the first one is the reference)")]
    NoSetups,
    /// The plan has no setup that differs from the reference only in reduction order, so there
    /// is no noise floor to measure against.
    #[error(
        "no honest variant of the reference {reference}: add a setup that differs from it only in \
         reduction order (splitk=N, batch=N or order=decode)"
    )]
    NoHonestVariant {
        /// The reference setup.
        reference: String,
    },
    /// A plan parameter is out of range.
    #[error("invalid study plan: {0}")]
    InvalidPlan(String),
    /// An engine returned a trace that does not fit its own geometry or holds non-finite values.
    #[error("engine output under {setup}: {reason}")]
    EngineOutput {
        /// The setup that was run.
        setup: String,
        /// What is wrong with the trace.
        reason: String,
    },
    /// The engine refused a setup or a prompt.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl FingerprintError {
    /// Whether the error is the input's fault (a setups file, a plan, a refused model input):
    /// exit code 2. An engine's bad output and engine failures are not.
    pub fn is_input(&self) -> bool {
        match self {
            FingerprintError::EngineOutput { .. } => false,
            FingerprintError::Model(m) => m.is_input(),
            _ => true,
        }
    }
}

/// What a study runs: a reference, the setups compared with it, and the workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyPlan {
    /// The reference setup.
    pub reference: Setup,
    /// The setups studied against the reference, in report order. Those that differ from the
    /// reference only in reduction order are the honest variants that set the noise floor.
    pub setups: Vec<Setup>,
    /// Number of prompts (prompt `p` is [`Engine::prompt`]`(p, tokens)`, or `inputs[p]`).
    pub prompts: usize,
    /// Tokens per prompt (with `inputs`, the longest of them).
    pub tokens: usize,
    /// Explicit prompts (for example text through the checkpoint's tokenizer), used instead of
    /// the engine's seeded prompts when not empty: then `prompts` is their number.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Vec<u32>>,
    /// Row tile (chunk) size every trace is computed in.
    pub chunk: usize,
    /// SNR at or above which a change counts as detectable across hardware.
    pub threshold: f64,
}

impl StudyPlan {
    /// The default plan for `engine`: [`DEFAULT_PROMPTS`] prompts of [`DEFAULT_TOKENS`] tokens,
    /// chunk [`DEFAULT_CHUNK`], threshold [`DEFAULT_THRESHOLD`], and
    /// [`StudyPlan::default_setups`] against `f32/attn=eager`, less the setups the engine
    /// refuses ([`Engine::check_setup`]; for example `order=decode` on an encoder).
    pub fn default_for(engine: &dyn Engine) -> StudyPlan {
        StudyPlan::default_with_tokens(engine, DEFAULT_TOKENS)
    }

    /// [`StudyPlan::default_for`] with prompts of `tokens` tokens (the window and top-k sizes
    /// follow the prompt length).
    pub fn default_with_tokens(engine: &dyn Engine, tokens: usize) -> StudyPlan {
        let mut setups = StudyPlan::default_setups(&Setup::F32_EAGER, engine.num_layers(), tokens);
        setups.retain(|s| engine.check_setup(s).is_ok());
        StudyPlan {
            reference: Setup::F32_EAGER,
            setups,
            prompts: DEFAULT_PROMPTS,
            tokens,
            inputs: Vec::new(),
            chunk: DEFAULT_CHUNK,
            threshold: DEFAULT_THRESHOLD,
        }
    }

    /// The default setups against `reference` for a model of `layers` layers and prompts of
    /// `tokens` tokens, each a change of one axis of the reference:
    ///
    /// * a re-run of the reference (reproducibility);
    /// * honest variants: `splitk=2`, `splitk=4`, `batch=2`, `batch=4`, `order=decode`;
    /// * precision `bf16`, `f16`; attention `tiled:16`, `tiled:64`, `window:W`, `topk:K` with
    ///   `W = K = max(1, tokens / 4)` (so they cut real keys);
    /// * every quantization scheme with both roundings (8 setups);
    /// * structure: skip of the middle layer `max(1, layers / 2)` and reuse of the later layer
    ///   `max(2, 3·layers / 4)` (each left out where the model has no such layer).
    pub fn default_setups(reference: &Setup, layers: usize, tokens: usize) -> Vec<Setup> {
        let r = *reference;
        let cut = (tokens / 4).max(1);
        let mut v = vec![
            r,
            Setup { split_k: 2, ..r },
            Setup { split_k: 4, ..r },
            Setup { batch: 2, ..r },
            Setup { batch: 4, ..r },
            Setup {
                order: Order::Decode,
                ..r
            },
            Setup {
                precision: crate::Precision::Bf16,
                ..r
            },
            Setup {
                precision: crate::Precision::F16,
                ..r
            },
            Setup {
                attention: crate::Attention::Tiled { block: 16 },
                ..r
            },
            Setup {
                attention: crate::Attention::Tiled { block: 64 },
                ..r
            },
            Setup {
                attention: crate::Attention::Window { size: cut },
                ..r
            },
            Setup {
                attention: crate::Attention::TopK { k: cut },
                ..r
            },
        ];
        for scheme in QuantScheme::ALL {
            for rounding in [Rounding::Nearest, Rounding::Mse] {
                v.push(Setup {
                    quant: Some(Quant { scheme, rounding }),
                    ..r
                });
            }
        }
        let skip = (layers / 2).max(1);
        if layers >= 1 && r.reuse != Some(skip) {
            v.push(Setup {
                skip: Some(skip),
                ..r
            });
        }
        let reuse = (3 * layers / 4).max(2);
        if reuse <= layers && reuse != skip && r.skip != Some(reuse) {
            v.push(Setup {
                reuse: Some(reuse),
                ..r
            });
        }
        // A reference that already varies an axis turns some of these into repeats.
        let mut seen = Vec::new();
        v.retain(|s| {
            if *s == r {
                return true;
            }
            let new = !seen.contains(s);
            seen.push(*s);
            new
        });
        v
    }

    /// A plan with the defaults of [`StudyPlan::default_for`] but the reference and setups of a
    /// setups file ([`parse_setups`]).
    pub fn from_setups_file(text: &str) -> Result<StudyPlan, FingerprintError> {
        let (reference, setups) = parse_setups(text)?;
        Ok(StudyPlan {
            reference,
            setups,
            prompts: DEFAULT_PROMPTS,
            tokens: DEFAULT_TOKENS,
            inputs: Vec::new(),
            chunk: DEFAULT_CHUNK,
            threshold: DEFAULT_THRESHOLD,
        })
    }

    /// Indices into [`StudyPlan::setups`] of the honest variants: setups other than the
    /// reference that differ from it only in reduction order.
    pub fn honest_variants(&self) -> Vec<usize> {
        self.setups
            .iter()
            .enumerate()
            .filter(|(_, s)| **s != self.reference && s.same_algorithm(&self.reference))
            .map(|(i, _)| i)
            .collect()
    }

    /// Checks the parameters' ranges and that there is at least one honest variant.
    pub fn validate(&self) -> Result<(), FingerprintError> {
        let bad = |m: String| Err(FingerprintError::InvalidPlan(m));
        if !(1..=MAX_PROMPTS).contains(&self.prompts) {
            return bad(format!(
                "{} prompts (must be between 1 and {MAX_PROMPTS})",
                self.prompts
            ));
        }
        if !(1..=MAX_TOKENS).contains(&self.tokens) {
            return bad(format!(
                "{} tokens per prompt (must be between 1 and {MAX_TOKENS})",
                self.tokens
            ));
        }
        if !self.inputs.is_empty() {
            let longest = self.inputs.iter().map(Vec::len).max().unwrap_or(0);
            if self.inputs.len() != self.prompts
                || self.inputs.iter().any(Vec::is_empty)
                || longest != self.tokens
            {
                return bad(format!(
                    "{} explicit prompts (longest {longest} tokens) with prompts = {} and \
                     tokens = {}: prompts must be their number, tokens the longest, none empty",
                    self.inputs.len(),
                    self.prompts,
                    self.tokens
                ));
            }
        }
        if !(1..=MAX_TOKENS).contains(&self.chunk) {
            return bad(format!(
                "chunk {} (must be between 1 and {MAX_TOKENS})",
                self.chunk
            ));
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return bad(format!(
                "threshold {} (must be a positive number)",
                self.threshold
            ));
        }
        if self.setups.is_empty() {
            return bad("no setups to compare with the reference".into());
        }
        self.reference.validate()?;
        for s in &self.setups {
            s.validate()?;
        }
        if self.honest_variants().is_empty() {
            return Err(FingerprintError::NoHonestVariant {
                reference: self.reference.to_string(),
            });
        }
        Ok(())
    }
}

/// Parses a setups file (see the [module docs](self)): returns the reference (the first setup)
/// and the setups after it.
pub fn parse_setups(text: &str) -> Result<(Setup, Vec<Setup>), FingerprintError> {
    let mut all = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let setup = line
            .parse::<Setup>()
            .map_err(|e| FingerprintError::SetupLine {
                line: i + 1,
                reason: match e {
                    ModelError::UnsupportedSetup(m) => m,
                    other => other.to_string(),
                },
            })?;
        all.push(setup);
    }
    let mut it = all.into_iter();
    let reference = it.next().ok_or(FingerprintError::NoSetups)?;
    Ok((reference, it.collect()))
}

/// Writes a setups file: an optional comment block, then the reference and the setups, one
/// canonical string per line. [`parse_setups`] reads it back.
pub fn format_setups(comment: &str, reference: &Setup, setups: &[Setup]) -> String {
    let mut s = String::new();
    for line in comment.lines() {
        if line.is_empty() {
            s.push_str("#\n");
        } else {
            let _ = writeln!(s, "# {line}");
        }
    }
    let _ = writeln!(s, "{reference}");
    for setup in setups {
        let _ = writeln!(s, "{setup}");
    }
    s
}

/// How a setup differs from the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SetupKind {
    /// The reference itself, run again.
    Rerun,
    /// Only the reduction order differs (an honest variant).
    ReductionOrder,
    /// Precision, attention algorithm or quantization differs.
    Algorithm,
    /// A layer is skipped or reused (the model's structure differs).
    Structural,
}

impl SetupKind {
    /// How `setup` differs from `reference`.
    pub fn of(setup: &Setup, reference: &Setup) -> SetupKind {
        if setup.skip != reference.skip || setup.reuse != reference.reuse {
            SetupKind::Structural
        } else if !setup.same_algorithm(reference) {
            SetupKind::Algorithm
        } else if setup != reference {
            SetupKind::ReductionOrder
        } else {
            SetupKind::Rerun
        }
    }

    /// Name used in reports (`rerun`, `reduction-order`, `algorithm`, `structural`).
    pub fn name(self) -> &'static str {
        match self {
            SetupKind::Rerun => "rerun",
            SetupKind::ReductionOrder => "reduction-order",
            SetupKind::Algorithm => "algorithm",
            SetupKind::Structural => "structural",
        }
    }
}

/// Where a setup change falls in the post's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// Bitwise identical to the reference on every layer of every prompt: not detectable.
    Invariant,
    /// Differs, but its SNR stays below the threshold at every layer: detectable only by
    /// bitwise re-execution on identical hardware.
    IdenticalHardware,
    /// Its SNR reaches the threshold at some layer: stands out of cross-hardware noise.
    CrossHardware,
}

impl Class {
    /// Name used in reports (`invariant`, `identical-hardware`, `cross-hardware`).
    pub fn name(self) -> &'static str {
        match self {
            Class::Invariant => "invariant",
            Class::IdenticalHardware => "identical-hardware",
            Class::CrossHardware => "cross-hardware",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A signal-to-noise ratio: finite and non-negative, or `+∞` (a difference over a zero noise
/// floor). JSON: a number, or the string `"inf"`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Snr(pub f64);

impl Snr {
    /// `distance / floor`: 0 when both are 0, `+∞` when only the floor is.
    pub fn ratio(distance: f64, floor: f64) -> Snr {
        if floor > 0.0 {
            Snr(distance / floor)
        } else if distance > 0.0 {
            Snr(f64::INFINITY)
        } else {
            Snr(0.0)
        }
    }
}

impl fmt::Display for Snr {
    /// `inf`, `0`, three significant digits below 1000, else scientific.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v.is_infinite() {
            f.write_str("inf")
        } else if v == 0.0 {
            f.write_str("0")
        } else if v < 0.01 {
            write!(f, "{v:.1e}")
        } else if v < 10.0 {
            write!(f, "{v:.2}")
        } else if v < 1000.0 {
            write!(f, "{v:.1}")
        } else {
            write!(f, "{v:.2e}")
        }
    }
}

impl Serialize for Snr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_infinite() {
            s.serialize_str("inf")
        } else {
            s.serialize_f64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Snr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(f64),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Number(v) if v.is_finite() && v >= 0.0 => Ok(Snr(v)),
            Repr::Text(t) if t == "inf" => Ok(Snr(f64::INFINITY)),
            _ => Err(serde::de::Error::custom(
                "an SNR is a non-negative number or \"inf\"",
            )),
        }
    }
}

/// Distances between two runs at one layer, over all prompts.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LayerStats {
    /// Largest max-abs difference over prompts.
    pub max_abs_max: f64,
    /// Mean over prompts of the max-abs difference.
    pub max_abs_mean: f64,
    /// Largest relative L2 distance `‖a − b‖₂ / ‖b‖₂` over prompts.
    pub rel_l2_max: f64,
    /// Mean over prompts of the relative L2 distance.
    pub rel_l2_mean: f64,
    /// Prompts on which the layer is not bitwise equal.
    pub differing_prompts: usize,
}

/// Distances between two runs, per layer. Runs are numbered 0 (the reference) then `i + 1` for
/// setup `i` of the plan; `first < second`, and relative distances divide by the first's norm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairStats {
    /// The first run (the denominator of relative distances).
    pub first: usize,
    /// The second run.
    pub second: usize,
    /// One entry per layer `0..=L`.
    pub layers: Vec<LayerStats>,
}

/// One setup's result against the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetupResult {
    /// The setup.
    pub setup: Setup,
    /// How it differs from the reference.
    pub kind: SetupKind,
    /// Where it falls in the post's table.
    pub class: Class,
    /// SNR against the reference per layer `0..=L` (see the [module docs](self)).
    pub snr: Vec<Snr>,
    /// Largest SNR over layers.
    pub max_snr: Snr,
    /// The first layer with the largest SNR (`None` when every SNR is 0).
    pub max_snr_layer: Option<usize>,
    /// The first layer that is not bitwise equal to the reference on some prompt.
    pub first_differing_layer: Option<usize>,
    /// Mean over prompts of the relative L2 distance from the reference at the last layer.
    pub last_rel_l2: f64,
    /// Largest max-abs difference from the reference at the last layer over prompts.
    pub last_max_abs: f64,
    /// The run with another setup string (the reference included) whose fingerprint is closest
    /// to this setup's: how unique its fingerprint is within the study.
    pub nearest: Option<Nearest>,
}

/// The closest other setup of a study to a given one: the smallest, over runs with another setup
/// string, of the largest per-layer SNR of the pair (mean relative L2 distance of the pair over
/// the noise floor).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Nearest {
    /// The other setup.
    pub setup: Setup,
    /// Largest SNR over layers of the pair.
    pub max_snr: Snr,
    /// Whether the two are bitwise identical on every layer of every prompt.
    pub identical: bool,
}

/// The outcome of [`run_study`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyReport {
    /// [`Engine::name`] of the model studied.
    pub engine: String,
    /// Its number of layers `L` (per-layer vectors have `L + 1` entries).
    pub num_layers: usize,
    /// The plan that was run.
    pub plan: StudyPlan,
    /// Indices into the plan's setups of the honest variants.
    pub honest: Vec<usize>,
    /// Noise floor per layer: the largest relative L2 distance from the reference of any honest
    /// variant on any prompt.
    pub noise_floor: Vec<f64>,
    /// One result per setup of the plan, in plan order.
    pub results: Vec<SetupResult>,
    /// Every pair of runs (run 0 = the reference, run `i + 1` = setup `i`).
    pub pairs: Vec<PairStats>,
}

/// Running sums of one pair at one layer.
#[derive(Clone, Copy, Default)]
struct Acc {
    max_abs_max: f64,
    max_abs_sum: f64,
    rel_max: f64,
    rel_sum: f64,
    differing: usize,
}

/// `(max-abs, relative L2, bitwise equal)` of `a` against `b`.
fn distance(a: &[f32], b: &[f32]) -> (f64, f64, bool) {
    let (mut max_abs, mut diff2, mut norm2, mut equal) = (0f64, 0f64, 0f64, true);
    for (&x, &y) in a.iter().zip(b) {
        equal &= x.to_bits() == y.to_bits();
        let d = f64::from(x) - f64::from(y);
        max_abs = max_abs.max(d.abs());
        diff2 += d * d;
        norm2 += f64::from(y) * f64::from(y);
    }
    let rel = if norm2 > 0.0 {
        (diff2 / norm2).sqrt()
    } else {
        diff2.sqrt()
    };
    (max_abs, rel, equal && a.len() == b.len())
}

/// Runs the study of `plan` on `engine`, calling `progress(done, total)` after each trace
/// (`total = prompts · (setups + 1)`).
///
/// # Errors
/// [`FingerprintError`] if the plan is invalid (no honest variant included), the engine refuses
/// a setup ([`Engine::check_setup`], checked for every setup before anything runs) or a prompt,
/// or a trace does not fit the engine's geometry or holds non-finite values.
pub fn run_study(
    engine: &dyn Engine,
    plan: &StudyPlan,
    mut progress: impl FnMut(usize, usize),
) -> Result<StudyReport, FingerprintError> {
    plan.validate()?;
    let runs: Vec<Setup> = std::iter::once(plan.reference)
        .chain(plan.setups.iter().copied())
        .collect();
    for setup in &runs {
        engine.check_setup(setup)?;
    }
    let n = runs.len();
    let layers = engine.num_layers() + 1;
    let width = engine.hidden_size();
    let pair_index = |i: usize, j: usize| i * n - i * (i + 1) / 2 + (j - i - 1);
    let mut acc = vec![vec![Acc::default(); layers]; n * (n - 1) / 2];
    let total = plan.prompts * n;
    let mut done = 0;
    for p in 0..plan.prompts {
        let tokens = match plan.inputs.get(p) {
            Some(t) => t.clone(),
            None => engine.prompt(p as u64, plan.tokens),
        };
        if plan.inputs.is_empty() && tokens.len() != plan.tokens {
            return Err(FingerprintError::EngineOutput {
                setup: plan.reference.to_string(),
                reason: format!(
                    "prompt {p} has {} tokens, {} asked for",
                    tokens.len(),
                    plan.tokens
                ),
            });
        }
        let mut traces = Vec::with_capacity(n);
        for setup in &runs {
            let trace = engine.trace(setup, &tokens, plan.chunk)?;
            let out = |reason: String| FingerprintError::EngineOutput {
                setup: setup.to_string(),
                reason,
            };
            if trace.layers.len() != layers {
                return Err(out(format!(
                    "{} hidden states, the engine has {layers}",
                    trace.layers.len()
                )));
            }
            for (l, h) in trace.layers.iter().enumerate() {
                if h.len() != plan.tokens * width {
                    return Err(out(format!(
                        "layer {l} holds {} values, expected {} tokens x {width}",
                        h.len(),
                        plan.tokens
                    )));
                }
                if let Some(i) = h.iter().position(|v| !v.is_finite()) {
                    return Err(out(format!(
                        "layer {l} holds a non-finite value at element {i} (prompt {p})"
                    )));
                }
            }
            traces.push(trace);
            done += 1;
            progress(done, total);
        }
        for i in 0..n {
            for j in i + 1..n {
                let pair = &mut acc[pair_index(i, j)];
                for (l, a) in pair.iter_mut().enumerate() {
                    let (max_abs, rel, equal) =
                        distance(&traces[j].layers[l], &traces[i].layers[l]);
                    a.max_abs_max = a.max_abs_max.max(max_abs);
                    a.max_abs_sum += max_abs;
                    a.rel_max = a.rel_max.max(rel);
                    a.rel_sum += rel;
                    a.differing += usize::from(!equal);
                }
            }
        }
    }
    let prompts = plan.prompts as f64;
    let mut pairs = Vec::with_capacity(acc.len());
    for i in 0..n {
        for j in i + 1..n {
            pairs.push(PairStats {
                first: i,
                second: j,
                layers: acc[pair_index(i, j)]
                    .iter()
                    .map(|a| LayerStats {
                        max_abs_max: a.max_abs_max,
                        max_abs_mean: a.max_abs_sum / prompts,
                        rel_l2_max: a.rel_max,
                        rel_l2_mean: a.rel_sum / prompts,
                        differing_prompts: a.differing,
                    })
                    .collect(),
            });
        }
    }
    // Pair (reference, setup i) is pair index pair_index(0, i + 1) = i.
    let vs_ref = |i: usize| &pairs[i].layers;
    let honest = plan.honest_variants();
    let floor_of = |members: &mut dyn Iterator<Item = usize>| -> Vec<f64> {
        let mut f = vec![0f64; layers];
        for h in members {
            for (fl, s) in f.iter_mut().zip(vs_ref(h)) {
                *fl = fl.max(s.rel_l2_max);
            }
        }
        f
    };
    let noise_floor = floor_of(&mut honest.iter().copied());
    let results = plan
        .setups
        .iter()
        .enumerate()
        .map(|(i, setup)| {
            let kind = SetupKind::of(setup, &plan.reference);
            let floor = if honest.contains(&i) {
                let mut others = honest
                    .iter()
                    .copied()
                    .filter(|&h| {
                        plan.setups[h] != *setup
                            && vs_ref(h).iter().any(|s| s.differing_prompts > 0)
                    })
                    .peekable();
                if others.peek().is_some() {
                    floor_of(&mut others)
                } else {
                    noise_floor.clone()
                }
            } else {
                noise_floor.clone()
            };
            let stats = vs_ref(i);
            let snr: Vec<Snr> = stats
                .iter()
                .zip(&floor)
                .map(|(s, &f)| Snr::ratio(s.rel_l2_mean, f))
                .collect();
            let max_snr = snr
                .iter()
                .copied()
                .fold(Snr(0.0), |m, s| if s.0 > m.0 { s } else { m });
            let max_snr_layer = if max_snr.0 > 0.0 {
                snr.iter().position(|s| s.0 == max_snr.0)
            } else {
                None
            };
            let first_differing_layer = stats.iter().position(|s| s.differing_prompts > 0);
            let class = if first_differing_layer.is_none() {
                Class::Invariant
            } else if max_snr.0 >= plan.threshold {
                Class::CrossHardware
            } else {
                Class::IdenticalHardware
            };
            let last = stats.last().copied().unwrap_or_default();
            let nearest = (0..n)
                .filter(|&r| runs[r] != *setup)
                .map(|r| {
                    let pair = &pairs[pair_index(r.min(i + 1), r.max(i + 1))].layers;
                    let max_snr = pair
                        .iter()
                        .zip(&noise_floor)
                        .map(|(s, &f)| Snr::ratio(s.rel_l2_mean, f))
                        .fold(Snr(0.0), |m, s| if s.0 > m.0 { s } else { m });
                    Nearest {
                        setup: runs[r],
                        max_snr,
                        identical: pair.iter().all(|s| s.differing_prompts == 0),
                    }
                })
                .fold(None::<Nearest>, |best, c| match best {
                    Some(b) if b.max_snr.0 <= c.max_snr.0 => Some(b),
                    _ => Some(c),
                });
            SetupResult {
                setup: *setup,
                kind,
                class,
                snr,
                max_snr,
                max_snr_layer,
                first_differing_layer,
                last_rel_l2: last.rel_l2_mean,
                last_max_abs: last.max_abs_max,
                nearest,
            }
        })
        .collect();
    Ok(StudyReport {
        engine: engine.name(),
        num_layers: layers - 1,
        plan: plan.clone(),
        honest,
        noise_floor,
        results,
        pairs,
    })
}

/// A distance in scientific notation with three significant digits (`0` for zero).
fn sci(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else {
        format!("{v:.2e}")
    }
}

fn layer_or_dash(l: Option<usize>) -> String {
    l.map_or_else(|| "–".into(), |l| l.to_string())
}

impl StudyReport {
    /// The result of `setup`, if the plan studied it (the first one when it appears twice).
    pub fn result(&self, setup: &Setup) -> Option<&SetupResult> {
        self.results.iter().find(|r| r.setup == *setup)
    }

    /// The distances of runs `first` and `second` (0 = the reference, `i + 1` = setup `i`), in
    /// either order.
    pub fn pair(&self, first: usize, second: usize) -> Option<&PairStats> {
        let (a, b) = (first.min(second), first.max(second));
        self.pairs.iter().find(|p| p.first == a && p.second == b)
    }

    /// The report as markdown: the classification table, the noise floor and the per-layer SNR
    /// matrix.
    pub fn to_markdown(&self) -> String {
        let p = &self.plan;
        let mut s = String::new();
        let _ = writeln!(s, "# Fingerprint study: {}\n", self.engine);
        let honest: Vec<String> = self
            .honest
            .iter()
            .map(|&i| format!("`{}`", p.setups[i]))
            .collect();
        let _ = writeln!(
            s,
            "Reference `{}`; {} prompts × {} tokens, chunk {}; SNR threshold {}. Noise floor: \
             the largest relative L2 distance from the reference of the honest variants {} \
             (reduction order only: the stand-in for other hardware). SNR = mean relative L2 \
             distance from the reference / noise floor (an honest variant is divided by the \
             other honest variants' floor); `inf` = a difference where every honest variant is \
             bitwise equal to the reference.\n",
            p.reference,
            p.prompts,
            p.tokens,
            p.chunk,
            p.threshold,
            honest.join(", ")
        );
        let _ = writeln!(
            s,
            "| setup | kind | class | max SNR | at layer | last-layer rel L2 | last-layer max-abs | first differing layer |"
        );
        let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|");
        for r in &self.results {
            let _ = writeln!(
                s,
                "| `{}` | {} | {} | {} | {} | {} | {} | {} |",
                r.setup,
                r.kind.name(),
                r.class,
                r.max_snr,
                layer_or_dash(r.max_snr_layer),
                sci(r.last_rel_l2),
                sci(r.last_max_abs),
                layer_or_dash(r.first_differing_layer)
            );
        }
        let _ = writeln!(
            s,
            "\n## Uniqueness: the nearest other setup\n\nFor each setup, the other setup of the \
             study whose traces are closest to it (largest per-layer SNR of the pair, mean \
             relative L2 of the pair / noise floor, smallest over the others).\n\n\
             | setup | nearest other setup | max SNR of the pair | bitwise identical |\n\
             |---|---|---:|---|"
        );
        for r in &self.results {
            if let Some(nb) = &r.nearest {
                let _ = writeln!(
                    s,
                    "| `{}` | `{}` | {} | {} |",
                    r.setup,
                    nb.setup,
                    nb.max_snr,
                    if nb.identical { "yes" } else { "no" }
                );
            }
        }
        let layers = 0..=self.num_layers;
        let header: Vec<String> = layers.clone().map(|l| format!("h{l}")).collect();
        let rule: Vec<&str> = layers.clone().map(|_| "---:").collect();
        let _ = writeln!(
            s,
            "\n## Noise floor per layer (relative L2)\n\n| | {} |\n|---|{}|",
            header.join(" | "),
            rule.join("|")
        );
        let floor: Vec<String> = self.noise_floor.iter().map(|&v| sci(v)).collect();
        let _ = writeln!(s, "| floor | {} |", floor.join(" | "));
        let _ = writeln!(
            s,
            "\n## SNR per layer\n\n| setup | {} |\n|---|{}|",
            header.join(" | "),
            rule.join("|")
        );
        for r in &self.results {
            let row: Vec<String> = r.snr.iter().map(|v| v.to_string()).collect();
            let _ = writeln!(s, "| `{}` | {} |", r.setup, row.join(" | "));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snr_ratio_handles_a_zero_floor() {
        assert_eq!(Snr::ratio(0.0, 0.0), Snr(0.0));
        assert_eq!(Snr::ratio(1e-9, 0.0), Snr(f64::INFINITY));
        assert_eq!(Snr::ratio(2.0, 4.0), Snr(0.5));
        assert_eq!(
            serde_json::to_string(&Snr(f64::INFINITY)).unwrap(),
            "\"inf\""
        );
        assert_eq!(
            serde_json::from_str::<Snr>("\"inf\"").unwrap().0,
            f64::INFINITY
        );
        assert_eq!(serde_json::from_str::<Snr>("2.5").unwrap(), Snr(2.5));
        assert!(serde_json::from_str::<Snr>("-1").is_err());
        assert!(serde_json::from_str::<Snr>("\"nan\"").is_err());
    }

    #[test]
    fn distance_is_relative_to_the_second_argument() {
        let (m, r, eq) = distance(&[1.0, 2.0], &[1.0, 2.0]);
        assert_eq!((m, r, eq), (0.0, 0.0, true));
        let (m, r, eq) = distance(&[0.0, 4.0], &[0.0, 3.0]);
        assert_eq!((m, r, eq), (1.0, 1.0 / 3.0, false));
        // -0.0 and 0.0 differ in bits but not in value.
        let (m, _, eq) = distance(&[-0.0], &[0.0]);
        assert_eq!((m, eq), (0.0, false));
    }

    #[test]
    fn pair_indices_enumerate_the_upper_triangle() {
        let n = 5;
        let pair_index = |i: usize, j: usize| i * n - i * (i + 1) / 2 + (j - i - 1);
        let mut k = 0;
        for i in 0..n {
            for j in i + 1..n {
                assert_eq!(pair_index(i, j), k);
                k += 1;
            }
        }
    }
}
