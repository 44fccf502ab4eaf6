//! Parameter sweeps over a scenario, shardable for batch schedulers.
//!
//! A sweep is the cartesian product of axes (`k`, `chunk`, `fraction`, `tolerance`), in the
//! order given, the last axis varying fastest; point `i` is the scenario with that point's
//! values substituted (`k` → `protocol.samples`, `chunk` → `protocol.chunk`, `fraction` → every
//! adversary that takes a fraction, `tolerance` → `tolerance.target_fpr`) and run with the
//! scenario's own seed. A point's result depends only on the scenario and the point, so shard
//! `i/n` (points `p` with `p mod n = i`) computes exactly the points a full run computes, and
//! [`merge`] of all shards equals the full run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{EngineMode, Scenario, SimError, SimReport, Simulation};

/// Largest number of grid points in one sweep.
pub const MAX_POINTS: usize = 100_000;

/// A sweep axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Axis {
    /// Cells challenged per round.
    K,
    /// Token rows per cell.
    Chunk,
    /// Cheat fraction of `partial`, `equivocation` and `grinding` adversaries.
    Fraction,
    /// Target false-positive rate of the tolerance calibration.
    Tolerance,
}

impl Axis {
    fn parse(name: &str) -> Result<Self, SimError> {
        match name {
            "k" => Ok(Axis::K),
            "chunk" => Ok(Axis::Chunk),
            "fraction" => Ok(Axis::Fraction),
            "tolerance" => Ok(Axis::Tolerance),
            _ => Err(SimError::Scenario(format!(
                "unknown sweep axis {name:?} (known: k, chunk, fraction, tolerance)"
            ))),
        }
    }
}

/// The grid: axes with their values, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    /// `(axis, values)`, the last varying fastest.
    pub axes: Vec<(Axis, Vec<f64>)>,
}

impl Grid {
    /// Parses `--grid` arguments of the form `axis=v1,v2,…`. Each axis at most once, at least
    /// one value each, at most [`MAX_POINTS`] points in all.
    pub fn parse(specs: &[String]) -> Result<Self, SimError> {
        let mut axes: Vec<(Axis, Vec<f64>)> = Vec::new();
        for spec in specs {
            let bad = |m: String| SimError::Scenario(format!("--grid {spec:?}: {m}"));
            let (name, values) = spec
                .split_once('=')
                .ok_or_else(|| bad("expected axis=v1,v2,…".into()))?;
            let axis = Axis::parse(name)?;
            if axes.iter().any(|(a, _)| *a == axis) {
                return Err(bad("axis given twice".into()));
            }
            let values: Vec<f64> = values
                .split(',')
                .map(|v| {
                    v.trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| bad(format!("{v:?} is not a number")))
                })
                .collect::<Result<_, _>>()?;
            if values.is_empty() {
                return Err(bad("no values".into()));
            }
            axes.push((axis, values));
        }
        if axes.is_empty() {
            return Err(SimError::Scenario(
                "a sweep needs at least one --grid axis".into(),
            ));
        }
        let grid = Grid { axes };
        if grid.points() > MAX_POINTS {
            return Err(SimError::Scenario(format!(
                "{} grid points exceed {MAX_POINTS}",
                grid.points()
            )));
        }
        Ok(grid)
    }

    /// Number of points.
    pub fn points(&self) -> usize {
        self.axes
            .iter()
            .map(|(_, v)| v.len())
            .try_fold(1usize, |a, n| a.checked_mul(n))
            .unwrap_or(usize::MAX)
    }

    /// The values of point `index`.
    pub fn point(&self, mut index: usize) -> BTreeMap<Axis, f64> {
        let mut out = BTreeMap::new();
        for (axis, values) in self.axes.iter().rev() {
            out.insert(*axis, values[index % values.len()]);
            index /= values.len();
        }
        out
    }
}

/// The scenario of one grid point.
pub fn apply(base: &Scenario, values: &BTreeMap<Axis, f64>) -> Result<Scenario, SimError> {
    let mut s = base.clone();
    let whole = |axis: &str, v: f64| -> Result<u32, SimError> {
        if v >= 1.0 && v <= f64::from(u32::MAX) && v.fract() == 0.0 {
            Ok(v as u32)
        } else {
            Err(SimError::Scenario(format!(
                "{axis} = {v} is not a positive integer"
            )))
        }
    };
    for (&axis, &v) in values {
        match axis {
            Axis::K => s.protocol.samples = whole("k", v)?,
            Axis::Chunk => s.protocol.chunk = whole("chunk", v)?,
            Axis::Tolerance => s.tolerance.target_fpr = v,
            Axis::Fraction => {
                for a in &mut s.adversaries {
                    a.adversary.set_fraction(v);
                }
            }
        }
    }
    s.validate()?;
    Ok(s)
}

/// Shard `i` of `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This shard's index, `< count`.
    pub index: u32,
    /// Number of shards.
    pub count: u32,
}

impl Shard {
    /// The whole sweep as one shard.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `i/n` with `i < n`.
    pub fn parse(s: &str) -> Result<Self, SimError> {
        let bad = || SimError::Scenario(format!("--shard {s:?}: expected i/n with 0 <= i < n"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.parse::<u32>().map_err(|_| bad())?,
            n.parse::<u32>().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// One grid point's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Point index in the grid.
    pub index: usize,
    /// The axis values.
    pub values: BTreeMap<Axis, f64>,
    /// The simulation at this point.
    pub report: SimReport,
}

/// A sweep's (or a shard's) results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepResult {
    /// The base scenario.
    pub scenario: Scenario,
    /// The grid.
    pub grid: Grid,
    /// The engine.
    pub engine: EngineMode,
    /// Points computed, ascending index.
    pub points: Vec<SweepPoint>,
}

/// Runs the points of `shard`; `progress(done, total)` after each point.
pub fn run(
    base: &Scenario,
    grid: &Grid,
    engine: EngineMode,
    shard: Shard,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<SweepResult, SimError> {
    let mine: Vec<usize> = (0..grid.points())
        .filter(|p| p % shard.count as usize == shard.index as usize)
        .collect();
    let mut points = Vec::with_capacity(mine.len());
    for (done, &index) in mine.iter().enumerate() {
        let values = grid.point(index);
        let scenario = apply(base, &values)?;
        let report = Simulation::new(scenario)?.run_with(engine, &|| {})?;
        points.push(SweepPoint {
            index,
            values,
            report,
        });
        progress(done + 1, mine.len());
    }
    Ok(SweepResult {
        scenario: base.clone(),
        grid: grid.clone(),
        engine,
        points,
    })
}

/// Merges shard results into the result of one full run: the same scenario, grid and engine
/// in every part, every point exactly once.
pub fn merge(parts: Vec<SweepResult>) -> Result<SweepResult, SimError> {
    let mut it = parts.into_iter();
    let mut merged = it
        .next()
        .ok_or_else(|| SimError::Scenario("nothing to merge".into()))?;
    for p in it {
        if p.scenario != merged.scenario || p.grid != merged.grid || p.engine != merged.engine {
            return Err(SimError::Scenario(
                "the parts come from different scenarios, grids or engines".into(),
            ));
        }
        merged.points.extend(p.points);
    }
    merged.points.sort_by_key(|p| p.index);
    let total = merged.grid.points();
    for (i, p) in merged.points.iter().enumerate() {
        if p.index != i {
            return Err(SimError::Scenario(if p.index < i {
                format!("point {} appears twice", p.index)
            } else {
                format!("point {i} is missing (of {total})")
            }));
        }
    }
    if merged.points.len() != total {
        return Err(SimError::Scenario(format!(
            "{} of {total} points present",
            merged.points.len()
        )));
    }
    Ok(merged)
}

/// A CSV table of a sweep: one row per point and adversary.
pub fn csv(r: &SweepResult) -> String {
    let axes: Vec<Axis> = r.grid.axes.iter().map(|(a, _)| *a).collect();
    let mut out = String::from("point,");
    for a in &axes {
        out.push_str(&format!(
            "{},",
            serde_json::to_value(a)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        ));
    }
    out.push_str("adversary,trials,detected,detection,wilson_low,wilson_high,runs,runs_low95,runs_high95,predicted,predicted_is_lower_bound,saving,verifier_cost\n");
    for p in &r.points {
        for a in &p.report.adversaries {
            out.push_str(&format!("{},", p.index));
            for axis in &axes {
                out.push_str(&format!("{},", p.values[axis]));
            }
            let label = if a.label.contains([',', '"']) {
                format!("\"{}\"", a.label.replace('"', "\"\""))
            } else {
                a.label.clone()
            };
            out.push_str(&format!(
                "{label},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                a.trials,
                a.detected,
                a.detection,
                a.wilson95.0,
                a.wilson95.1,
                a.runs,
                a.run_bounds.0,
                a.run_bounds.1,
                a.predicted.map(|p| p.to_string()).unwrap_or_default(),
                a.predicted_is_lower_bound,
                a.saving,
                a.verifier_cost
            ));
        }
    }
    out
}
