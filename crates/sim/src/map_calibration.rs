//! Per-map Freivalds bound scales through the tolerance calibration of
//! [`veritrace_protocol::calibration`] (specs/freivalds.md §4).
//!
//! # The unit of evidence
//!
//! An honest run `r` gives, for every linear map `m` of every layer (`M = 7L` maps), its worst
//! ratio `R_{r,m} = max |v·x − r·y| / B` over the run's rows and the key's repetitions
//! ([`veritrace_model::freivalds::layer_map_ratios`]). A row of map `m` in any later session
//! passes when its ratio is at most the map's scale `s_m`, so an honest session is falsely
//! rejected by a Freivalds check only if some checked map of the run has `R_{r,m} > s_m`.
//!
//! This is the tolerance calibration's setting with maps in the place of layers: one sample
//! `R_{r,m}` per run and map, runs independent and identically distributed (fresh prompts,
//! the honest variations in rotation, and, in the simulator, a fresh key per run). Each map is
//! given to [`calibrate_runs`] as a "layer" with one cell, so the calibration's statements
//! carry over unchanged:
//!
//! - a session checking `c` cells checks at most `7c` maps, and by the union bound over
//!   checked maps and, separately, over the `M` maps it rejects an honest run with
//!   probability at most `min(7c, M) · α` when every `P(R_m > s_m) ≤ α`; for a target `τ`,
//!   `α = τ / min(7c, M)`;
//! - `s_m` is an upper confidence bound on the `(1 − α)`-quantile of `R_m`, jointly over the
//!   maps at confidence `γ` (Bonferroni), either the distribution-free order statistic or the
//!   fitted exponential tail (fewer runs, its tail assumption checked per map);
//! - then `s_m = min(1, t_m)`: a scale above 1 would be looser than the rigorous bound, which
//!   no honest f32 arithmetic exceeds.
//!
//! The rounding floor of the calibration is that of a one-element f32 cell, `2^−24`: far below
//! any measured honest ratio (10⁻⁴ to 10⁻² on the shipped models), it only keeps a scale from
//! being 0 when every run of a map was exact.
//!
//! Held-out runs ([`map_holdout`]) test the scales directly: the count of runs with some map
//! above its scale, with a one-sided Clopper–Pearson upper bound on the session false-alarm
//! rate that holds for any `k` and any sampling.
//!
//! # Keys
//!
//! The ratio depends on the secret vectors. When each run draws its own key, independently of
//! the run, the scales bound the ratio of an honest run under any key drawn the same way: the
//! verifier's own key and every per-trial key of the weight-perturbation adversary. A
//! calibration with one fixed key (`veritrace keygen --calibrate-bound`) holds for that key.

use veritrace_commit::Digest;
use veritrace_commit::Dtype;
use veritrace_model::freivalds::{MapBounds, MapCalibration, Matrix, NONLINEAR_PARTS};
use veritrace_protocol::calibration::{
    calibrate_runs, CalibrationMethod, HonestRun, LayerEvidence, RunCalibration,
    RunCalibrationConfig,
};
use veritrace_protocol::tolerance::{FprEstimate, Metric};
use veritrace_protocol::ProtocolError;

use crate::SimError;

/// One honest run's worst ratio per linear map: `ratios[l − 1][i]` for layer `l`'s map
/// [`Matrix::LAYER`]`[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MapRun {
    /// The honest variation that produced it (a setup string).
    pub variation: String,
    /// Per layer, per map.
    pub ratios: Vec<[f64; 7]>,
    /// Per layer, the run's worst relative deviation of each nonlinear part
    /// ([`veritrace_model::freivalds::NONLINEAR_PARTS`],
    /// [`veritrace_model::freivalds::run_nonlinear_deviations`]), where the nonlinear
    /// tolerances are calibrated with the scales (another engine's runs); `None` otherwise.
    pub nonlinear: Option<Vec<[f64; 4]>>,
}

impl MapRun {
    /// The run as the tolerance calibration's [`HonestRun`]: map `m = 7(l − 1) + i` as layer
    /// `m` with one cell, its worst ratio (one element, RMS 0: the floor is `2^−24`); with
    /// nonlinear deviations, part `p` of layer `l` as layer `7L + 4(l − 1) + p` likewise.
    pub fn as_honest_run(&self) -> HonestRun {
        let mut run = HonestRun::new(self.variation.clone());
        let parts = self.nonlinear.iter().flatten().flatten();
        for (m, &r) in self.ratios.iter().flatten().chain(parts).enumerate() {
            run.layers.insert(
                m as u32,
                LayerEvidence {
                    deviations: vec![r],
                    elements: 1,
                    min_rms: 0.0,
                },
            );
        }
        run
    }

    /// Checks per cell of a layer: the 7 maps, and the 4 nonlinear parts where present.
    fn checks_per_cell(&self) -> u32 {
        if self.nonlinear.is_some() {
            11
        } else {
            7
        }
    }
}

/// Parameters of [`calibrate_map_bounds`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapCalibrationConfig {
    /// Target session false-alarm rate `τ ∈ (0, 1)` of the Freivalds checks.
    pub target_session_fpr: f64,
    /// Joint confidence `γ ∈ (0, 1)` of the per-map bounds.
    pub confidence: f64,
    /// Safety factor `≥ 1` on each map's bound.
    pub margin: f64,
    /// The order statistic or the fitted exponential tail.
    pub method: CalibrationMethod,
    /// Cells challenged per round, `k`.
    pub samples: u32,
    /// Rounds per session.
    pub rounds: u32,
}

impl MapCalibrationConfig {
    /// The tolerance calibration's config with maps as layers: `7k` checks per round (each
    /// cell checks the seven maps of its layer).
    pub fn run_config(&self) -> RunCalibrationConfig {
        self.run_config_with(7)
    }

    /// [`MapCalibrationConfig::run_config`] with `checks` per cell (11 when the four nonlinear
    /// parts are calibrated with the maps).
    pub fn run_config_with(&self, checks: u32) -> RunCalibrationConfig {
        RunCalibrationConfig {
            metric: Metric::RelL2,
            target_session_fpr: self.target_session_fpr,
            samples: self.samples.saturating_mul(checks),
            rounds: self.rounds,
            confidence: self.confidence,
            margin: self.margin,
            rounding_dtype: Dtype::F32,
            method: self.method,
        }
    }

    /// Runs the calibration needs for `layers` decoder layers (`7 · layers` maps).
    pub fn runs_needed(&self, layers: usize) -> u64 {
        self.run_config().runs_needed(7 * layers as u64)
    }

    /// Runs needed with the nonlinear tolerances calibrated too (`11 · layers` checks).
    pub fn runs_needed_with_nonlinear(&self, layers: usize) -> u64 {
        self.run_config_with(11).runs_needed(11 * layers as u64)
    }
}

/// Per-map scales from honest runs, with everything behind them.
#[derive(Debug, Clone, PartialEq)]
pub struct MapCalibrationResult {
    /// The scales a verifier loads.
    pub bounds: MapBounds,
    /// The calibration, map `7(l − 1) + i` in the place of layer `l`.
    pub calibration: RunCalibration,
    /// The held-out runs' evidence, where there were any.
    pub holdout: Option<FprEstimate>,
}

impl MapCalibrationResult {
    /// The number of maps whose scale came from the fitted tail (the others from the order
    /// statistic or the rounding floor).
    pub fn tail_maps(&self) -> usize {
        self.calibration
            .per_layer
            .values()
            .filter(|t| {
                t.source == veritrace_protocol::calibration::ThresholdSource::ExponentialTail
            })
            .count()
    }

    /// The smallest and largest scale.
    pub fn scale_range(&self) -> (f64, f64) {
        self.bounds
            .scales
            .iter()
            .flatten()
            .fold((f64::INFINITY, 0f64), |(lo, hi), &s| (lo.min(s), hi.max(s)))
    }
}

fn check_shapes(
    runs: &[MapRun],
    layers: usize,
    nonlinear: bool,
    what: &str,
) -> Result<(), SimError> {
    for (i, r) in runs.iter().enumerate() {
        if r.ratios.len() != layers {
            return Err(SimError::Scenario(format!(
                "{what} run {i} ({}) has {} layers of map ratios, expected {layers}",
                r.variation,
                r.ratios.len()
            )));
        }
        if r.nonlinear.as_ref().map(Vec::len) != nonlinear.then_some(layers) {
            return Err(SimError::Scenario(format!(
                "{what} run {i} ({}): {} nonlinear deviations, expected {}",
                r.variation,
                r.nonlinear
                    .as_ref()
                    .map_or("no".to_string(), |n| format!("{} layers of", n.len())),
                if nonlinear {
                    format!("{layers} layers of them")
                } else {
                    "none (as the first run)".to_string()
                }
            )));
        }
    }
    Ok(())
}

/// Per-map scales for the model of `digest` and a key of `weights`
/// ([`veritrace_model::freivalds::VerifierKey::weights`])
/// from `runs` (independent honest runs), tested on `held` (more of them, not used for the
/// scales). See the module documentation for what the
/// scales claim.
///
/// # Errors
/// [`SimError::Scenario`] for runs of different layer counts or with non-finite ratios, an
/// invalid config, or too few runs for the target (the message says how many are needed).
pub fn calibrate_map_bounds(
    digest: Digest,
    weights: &str,
    runs: &[MapRun],
    held: &[MapRun],
    config: &MapCalibrationConfig,
) -> Result<MapCalibrationResult, SimError> {
    let layers = runs
        .first()
        .map(|r| r.ratios.len())
        .ok_or_else(|| SimError::Scenario("no honest runs for the per-map calibration".into()))?;
    if layers == 0 {
        return Err(SimError::Scenario(
            "the per-map calibration's runs have no layers".into(),
        ));
    }
    let nonlinear = runs.first().is_some_and(|r| r.nonlinear.is_some());
    check_shapes(runs, layers, nonlinear, "calibration")?;
    check_shapes(held, layers, nonlinear, "held-out")?;
    let honest: Vec<HonestRun> = runs.iter().map(MapRun::as_honest_run).collect();
    let checks = runs.first().map_or(7, MapRun::checks_per_cell);
    let run_config = config.run_config_with(checks);
    let calibration = calibrate_runs(&honest, &run_config).map_err(|e| match e {
        ProtocolError::InsufficientEvidence {
            needed,
            have,
            reason,
        } => SimError::Scenario(format!(
            "per-map Freivalds scales: {have} honest runs, {needed} needed ({reason}; the \
             \"layers\" here are the {} linear maps{})",
            7 * layers,
            if nonlinear {
                format!(" and {} nonlinear parts", 4 * layers)
            } else {
                String::new()
            }
        )),
        e => SimError::Scenario(format!("per-map Freivalds scales: {e}")),
    })?;
    let mut scales = vec![[1f64; 7]; layers];
    let mut tolerances = vec![[0f64; 4]; layers];
    for (&m, t) in &calibration.per_layer {
        let m = m as usize;
        if m < 7 * layers {
            scales[m / 7][m % 7] = t.threshold.min(1.0);
        } else if let Some(row) = tolerances.get_mut((m - 7 * layers) / 4) {
            row[(m - 7 * layers) % 4] = t.threshold;
        }
    }
    let mut bounds = MapBounds {
        weights: weights.to_string(),
        model_digest: digest.to_hex(),
        runs: u32::try_from(runs.len()).unwrap_or(u32::MAX),
        margin: config.margin,
        scales,
        nonlinear: nonlinear.then_some(tolerances),
        calibration: Some(MapCalibration {
            method: config.method.to_string(),
            target_session_fpr: config.target_session_fpr,
            confidence: config.confidence,
            claimed_bound: format!(
                "with confidence >= {}, an honest run of the calibrated variations is falsely \
                 rejected by a Freivalds check{} in at most {} of sessions checking {} cells x \
                 {} round(s) (any sampling strategy): per map{}, P(the run's worst ratio > its \
                 scale) <= alpha = {:.3e}{}",
                config.confidence,
                if nonlinear {
                    " or a nonlinear part's comparison"
                } else {
                    ""
                },
                config.target_session_fpr,
                if config.samples == u32::MAX {
                    "any number of".to_string()
                } else {
                    format!("k = {}", config.samples)
                },
                config.rounds,
                if nonlinear {
                    " (and per nonlinear part, its worst deviation against its tolerance)"
                } else {
                    ""
                },
                calibration.cell_alpha,
                match config.method {
                    CalibrationMethod::OrderStatistic => "",
                    CalibrationMethod::ExponentialTail =>
                        ", assuming each map's tail above its fitted base is no heavier than \
                         exponential (checked per map at 1%)",
                }
            ),
            holdout_runs: held.len() as u64,
            holdout_exceeding: 0,
        }),
    };
    let holdout = map_holdout(&bounds, held, config.confidence)?;
    if let (Some(c), Some(h)) = (&mut bounds.calibration, &holdout) {
        c.holdout_exceeding = h.exceedances;
    }
    Ok(MapCalibrationResult {
        bounds,
        calibration,
        holdout,
    })
}

/// Held-out runs against given scales: how many had some map above its scale, with the
/// Clopper–Pearson interval at `confidence` (`None` for no runs).
///
/// # Errors
/// [`SimError::Scenario`] for runs whose layer count differs from the scales'.
pub fn map_holdout(
    bounds: &MapBounds,
    held: &[MapRun],
    confidence: f64,
) -> Result<Option<FprEstimate>, SimError> {
    if held.is_empty() {
        return Ok(None);
    }
    check_shapes(
        held,
        bounds.scales.len(),
        bounds.nonlinear.is_some(),
        "held-out",
    )?;
    let over = held
        .iter()
        .filter(|r| {
            let map_over = r.ratios.iter().enumerate().any(|(l, rr)| {
                rr.iter()
                    .zip(Matrix::LAYER)
                    .any(|(&x, m)| x > bounds.scale(l + 1, m))
            });
            let part_over = r.nonlinear.iter().flatten().enumerate().any(|(l, dev)| {
                dev.iter().zip(NONLINEAR_PARTS).any(|(&x, part)| {
                    bounds
                        .tolerance(l + 1, part)
                        .is_some_and(|t| x.is_nan() || x > t)
                })
            });
            map_over || part_over
        })
        .count() as u64;
    Ok(Some(FprEstimate::new(over, held.len() as u64, confidence)?))
}

/// Per map, the largest ratio over `runs`: `worst[l − 1][i]` for layer `l`'s map
/// [`Matrix::LAYER`]`[i]` (for reports; empty for no runs).
pub fn worst_ratios(runs: &[MapRun]) -> Vec<[f64; 7]> {
    let mut out: Vec<[f64; 7]> = Vec::new();
    for r in runs {
        if out.len() < r.ratios.len() {
            out.resize(r.ratios.len(), [0.0; 7]);
        }
        for (w, row) in out.iter_mut().zip(&r.ratios) {
            for (a, &b) in w.iter_mut().zip(row) {
                *a = a.max(b);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    /// `n` runs of `layers` layers whose ratios are `base_m · (1 + |N(0, 1)|/10)`:
    /// map-specific scales with a tail lighter than exponential (as maxima of sums of
    /// rounding errors are), which the fitted tail's check accepts.
    fn runs(n: usize, layers: usize, seed: u8) -> Vec<MapRun> {
        let mut rng = ChaCha20Rng::from_seed([seed; 32]);
        (0..n)
            .map(|i| MapRun {
                nonlinear: None,
                variation: format!("v{}", i % 3),
                ratios: (0..layers)
                    .map(|l| {
                        let mut row = [0f64; 7];
                        for (j, x) in row.iter_mut().enumerate() {
                            let u = (f64::from(rng.next_u32()) + 0.5) / 4_294_967_296.0;
                            let v = f64::from(rng.next_u32()) / 4_294_967_296.0;
                            let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
                            let base = 1e-4 * (1 + j + 7 * l) as f64;
                            *x = base * (1.0 + z.abs() / 10.0);
                        }
                        row
                    })
                    .collect(),
            })
            .collect()
    }

    fn config(method: CalibrationMethod) -> MapCalibrationConfig {
        MapCalibrationConfig {
            target_session_fpr: 0.01,
            confidence: 0.95,
            margin: 1.0,
            method,
            samples: 4,
            rounds: 1,
        }
    }

    #[test]
    fn each_map_gets_its_own_scale_above_its_own_noise() {
        let cal = runs(600, 2, 1);
        let held = runs(400, 2, 2);
        let c = config(CalibrationMethod::ExponentialTail);
        let r = calibrate_map_bounds(Digest([7; 32]), "f32", &cal, &held, &c).unwrap();
        assert_eq!(r.bounds.scales.len(), 2);
        assert_eq!(r.calibration.layers, 14);
        let worst = worst_ratios(&cal);
        for l in 1..=2 {
            for (i, m) in Matrix::LAYER.into_iter().enumerate() {
                let s = r.bounds.scale(l, m);
                let base = 1e-4 * (1 + i + 7 * (l - 1)) as f64;
                // the tail's quantile sits past the bulk of the map's own ratios and below
                // the next map's base, far from the loosest map's scale
                assert!(s > base * 1.3, "L{l} {m:?}: {s}");
                assert!(s < base * 3.0, "L{l} {m:?}: {s}");
                assert!(worst[l - 1][i] <= base * 3.0);
            }
        }
        assert!(r.tail_maps() > 10, "{}", r.tail_maps());
        let h = r.holdout.unwrap();
        assert_eq!(h.samples, 400);
        assert!(h.upper < 0.05, "{h:?}");
        // map_holdout agrees with the calibration's own held-out count
        assert_eq!(map_holdout(&r.bounds, &held, 0.95).unwrap().unwrap(), h);
        let mc = r.bounds.calibration.as_ref().unwrap();
        assert_eq!(mc.method, "exponential-tail");
        assert_eq!(r.bounds.exceed_bound(), 0.01);
        assert!(
            mc.claimed_bound.contains("per map") && mc.claimed_bound.contains("k = 4 cells"),
            "{}",
            mc.claimed_bound
        );
    }

    /// Runs with nonlinear deviations `1e-3 · (1 + p) · (1 + |N|/10)` per part `p`.
    fn with_nonlinear(mut runs: Vec<MapRun>, seed: u8) -> Vec<MapRun> {
        let mut rng = ChaCha20Rng::from_seed([seed; 32]);
        for r in &mut runs {
            let parts = r
                .ratios
                .iter()
                .map(|_| {
                    let mut row = [0f64; 4];
                    for (p, x) in row.iter_mut().enumerate() {
                        let u = (f64::from(rng.next_u32()) + 0.5) / 4_294_967_296.0;
                        let v = f64::from(rng.next_u32()) / 4_294_967_296.0;
                        let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
                        *x = 1e-3 * (1 + p) as f64 * (1.0 + z.abs() / 10.0);
                    }
                    row
                })
                .collect();
            r.nonlinear = Some(parts);
        }
        runs
    }

    #[test]
    fn nonlinear_tolerances_are_calibrated_with_the_scales_under_one_claim() {
        let cal = with_nonlinear(runs(800, 2, 5), 6);
        let held = with_nonlinear(runs(300, 2, 7), 8);
        let c = config(CalibrationMethod::ExponentialTail);
        let r = calibrate_map_bounds(Digest([7; 32]), "f32", &cal, &held, &c).unwrap();
        // 7 maps and 4 parts per layer under one union bound
        assert_eq!(r.calibration.layers, 22);
        let t = r.bounds.nonlinear.as_ref().unwrap();
        assert_eq!(t.len(), 2);
        for l in 1..=2 {
            for (p, part) in NONLINEAR_PARTS.into_iter().enumerate() {
                let tol = r.bounds.tolerance(l, part).unwrap();
                let base = 1e-3 * (1 + p) as f64;
                assert!(tol > base * 1.3 && tol < base * 3.0, "L{l} {part}: {tol}");
            }
        }
        let mc = r.bounds.calibration.as_ref().unwrap();
        assert!(
            mc.claimed_bound.contains("nonlinear"),
            "{}",
            mc.claimed_bound
        );
        assert_eq!(r.holdout.unwrap().exceedances, 0);
        // a held-out run over one part's tolerance is counted; one without nonlinear
        // deviations where the calibration had them is refused
        let mut over = held[0].clone();
        over.nonlinear.as_mut().unwrap()[1][2] = 1.0;
        let h = map_holdout(&r.bounds, &[over], 0.95).unwrap().unwrap();
        assert_eq!(h.exceedances, 1);
        let bare = runs(1, 2, 9);
        assert!(map_holdout(&r.bounds, &bare, 0.95).is_err());
        let mut mixed = cal.clone();
        mixed[3].nonlinear = None;
        assert!(calibrate_map_bounds(Digest([7; 32]), "f32", &mixed, &[], &c).is_err());
        // runs needed: more checks per layer
        assert!(c.runs_needed_with_nonlinear(2) >= c.runs_needed(2));
    }

    #[test]
    fn scales_follow_the_maps_and_an_exceeding_run_is_counted() {
        let cal = runs(600, 1, 3);
        let c = config(CalibrationMethod::ExponentialTail);
        let r = calibrate_map_bounds(Digest([7; 32]), "f32", &cal, &[], &c).unwrap();
        assert!(r.holdout.is_none());
        let s = r.bounds.scales[0];
        // seven distinct bases: the scales are ordered as the maps' noise
        assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");
        // a held-out run with one map just above its scale exceeds; one just below does not
        let mut hot = cal[0].clone();
        hot.ratios[0] = [0.0; 7];
        hot.ratios[0][4] = s[4] * 1.0001;
        let mut cool = hot.clone();
        cool.ratios[0][4] = s[4];
        let h = map_holdout(&r.bounds, &[hot, cool], 0.95).unwrap().unwrap();
        assert_eq!((h.exceedances, h.samples), (1, 2));
    }

    #[test]
    fn too_few_runs_say_how_many_are_needed() {
        let c = config(CalibrationMethod::OrderStatistic);
        let needed = c.runs_needed(2);
        assert!(needed > 1000, "{needed}");
        let e =
            calibrate_map_bounds(Digest([7; 32]), "f32", &runs(200, 2, 4), &[], &c).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&needed.to_string()), "{msg}");
        assert!(msg.contains("14 linear maps"), "{msg}");
        // the tail needs 500
        let t = config(CalibrationMethod::ExponentialTail);
        assert_eq!(t.runs_needed(2), 500);
        assert!(calibrate_map_bounds(Digest([7; 32]), "f32", &runs(499, 2, 4), &[], &t).is_err());
    }

    #[test]
    fn malformed_runs_are_refused() {
        let c = config(CalibrationMethod::ExponentialTail);
        assert!(calibrate_map_bounds(Digest([7; 32]), "f32", &[], &[], &c).is_err());
        let mut cal = runs(600, 2, 5);
        let held = runs(3, 1, 6);
        assert!(calibrate_map_bounds(Digest([7; 32]), "f32", &cal, &held, &c).is_err());
        cal[10].ratios.pop();
        assert!(calibrate_map_bounds(Digest([7; 32]), "f32", &cal, &[], &c).is_err());
        let mut nan = runs(600, 2, 5);
        nan[3].ratios[1][2] = f64::NAN;
        assert!(calibrate_map_bounds(Digest([7; 32]), "f32", &nan, &[], &c).is_err());
        let bad = MapCalibrationConfig {
            target_session_fpr: 1.5,
            ..c
        };
        assert!(calibrate_map_bounds(Digest([7; 32]), "f32", &runs(600, 2, 5), &[], &bad).is_err());
    }
}
