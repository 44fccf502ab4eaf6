//! Calibration from independent honest runs: per-layer thresholds that are upper confidence
//! bounds on a quantile of honest deviation, a session false-positive bound derived from them,
//! held-out evidence, and the calibrated policy file a verifier loads.
//!
//! # The unit of evidence
//!
//! Cells of one run are not independent: they share a prompt, a trace and an engine, so a run
//! whose reduction order happens to diverge early diverges in many of its cells. The unit of
//! evidence here is therefore an *honest run* (one prompt under one honest variation: another
//! split-K count, batch shape, decode order, device or engine), and runs are assumed
//! independent and identically distributed (fresh prompts, variations drawn in a fixed
//! rotation). From each run `r` and layer `l` we keep the *worst* cell,
//!
//! `M_{r,l} = max_j dev(cell (l, j) of run r)`,
//!
//! one sample per run and layer. A threshold that bounds a quantile of `M_l` bounds the same
//! quantile of any single cell of layer `l` (a cell never deviates more than its layer's worst
//! cell), whichever cell a sampling strategy picks.
//!
//! # From the target session rate to a per-cell rate
//!
//! A session checks `c = k · rounds` cells of a trace with `L` layers (counting the embeddings
//! as layer 0). It rejects an honest prover only if a checked cell exceeds its layer's
//! threshold `t_l`. If `P(M_l > t_l) ≤ α` for every layer then, by the union bound over the
//! checked cells and, separately, over the layers,
//!
//! `P(session rejects an honest run) ≤ min(c, L) · α`,
//!
//! with no assumption on how cells of a run depend on each other or on the sampling strategy.
//! For a target session rate `τ` the per-cell rate is `α = τ / min(c, L)`.
//!
//! # The threshold: a distribution-free upper confidence bound
//!
//! Let `q = 1 − α` and `ξ_l` the `q`-quantile of `M_l`. With `n` runs sorted ascending,
//! `M_(1) ≤ … ≤ M_(n)`, the order statistic `M_(ρ)` satisfies, for every distribution
//! (continuous or not),
//!
//! `P(M_(ρ) ≥ ξ_l) ≥ P(Bin(n, q) ≤ ρ − 1) = I_α(n − ρ + 1, ρ)`.
//!
//! `ρ` is the smallest rank whose right-hand side reaches the per-layer confidence
//! `γ_l = 1 − (1 − γ)/L` (Bonferroni: all `L` bounds hold together with probability `≥ γ`).
//! Such a rank exists only when `P(Bin(n, q) ≤ n − 1) = 1 − q^n ≥ γ_l`, i.e. with at least
//!
//! `n_min = ⌈ln(1 − γ_l) / ln(1 − α)⌉`
//!
//! runs; with fewer, [`calibrate_runs`] refuses with [`ProtocolError::InsufficientEvidence`]
//! and says how many are needed, rather than print a bound the data cannot support. The
//! threshold is `t_l = max(s · M_(ρ), f_l)` with the safety margin `s ≥ 1` and the rounding
//! floor `f_l` below. Then, with confidence at least `γ`, every `P(M_l > t_l) ≤ α` and the
//! session rate is at most `τ`: the *claimed bound* recorded in the policy.
//!
//! # The rounding floor: a threshold is never 0
//!
//! A layer whose honest samples are all bit-exact (embeddings, or one-layer recomputes that
//! round to the same 16-bit values) would get `M_(ρ) = 0`, and any honest difference there,
//! however small, would fail. The floor is the smallest difference the claimed precision can
//! show at the layer's magnitude: *one element of a cell off by one unit roundoff `u` of the
//! cell's RMS magnitude* (`u = 2^−24` for f32, `2^−11` for f16, `2^−8` for bf16; an i8 trace
//! counts one integer step). For the relative-L2 metric this is `f_l = u / √n_l` with `n_l` the
//! largest cell's element count (for i8, `1 / (√n_l · rms_l)`); for max-abs it is `u · rms_l`
//! with `rms_l` the smallest nonzero cell RMS seen in layer `l` (for i8, 1). Each layer records
//! whether its threshold came from the floor ([`ThresholdSource::RoundingFloor`]). The floor is
//! far below the deviations of algorithm changes (for bf16 cells of 512 elements, about
//! `1.7e-4` against `2e-3` and more for tiled attention or int8 weights).
//!
//! # Or: a fitted exponential tail (peaks over threshold)
//!
//! The order statistic needs `n_min ≈ ln(1/(1 − γ_l))/α` runs, 23,024 for `τ = 10^−3`, `k = 8`,
//! `L = 5`, and ten times that for `τ = 10^−4`. [`CalibrationMethod::ExponentialTail`] reaches
//! small `α` from fewer runs under a stated and checked assumption: *above the
//! `(n − m)`-th order statistic `u = M_(n−m)`, the excess `M_l − u` is exponential with some
//! scale `σ`, or lighter* (the Gumbel domain of attraction, where maxima of sums of rounding
//! errors fall). With `m = min(1000, max(50, ⌈n/10⌉))` excesses
//! `y_i = M_(n−m+i) − u`:
//!
//! - `p_u = P(M_l > u)` is `Beta(m + 1, n − m)`-distributed for any continuous law, so its
//!   upper bound `p_U` at confidence `γ' = 1 − (1 − γ_l)/2` is the Clopper–Pearson bound
//!   with `m` successes in `n`;
//! - `m · σ̂ = Σ y_i ~ σ · Gamma(m, 1)`, so `σ_U = m σ̂ / g` with `g` the `(1 − γ')`-quantile
//!   of `Gamma(m, 1)` bounds `σ` at confidence `γ'`;
//! - both hold together with probability `≥ γ_l`, and then
//!   `P(M_l > u + σ_U ln(p_U/α)) = p_u e^{−σ_U ln(p_U/α)/σ} ≤ α`: the threshold is
//!   `t_l = max(s · (u + σ_U ln(p_U/α)), f_l)`.
//!
//! What the bound needs is a tail *no heavier* than exponential (a lighter one, such as the
//! Gaussian-like tail of a sum of rounding errors, only makes it conservative far enough out:
//! a lighter tail of the same mean can exceed the exponential within about two mean excesses
//! of the base, and the extrapolation reaches `ln(p_U/α)` of them, 6 to 9 in the shipped
//! calibrations). That is checked
//! per layer, one-sided, with the squared coefficient of variation of the excesses,
//! `V = s²/ȳ²` (Greenwood's statistic up to an affine map): 1 for an exponential,
//! `1/(1 − 2ξ) > 1` for a generalized Pareto tail of shape `ξ > 0`, below 1 for lighter
//! tails. `V` is scale-free, so its null distribution depends on `m` alone; the critical value
//! is its 99% point under the exponential, by Monte Carlo ([`TAIL_CHECK_DRAWS`] samples of `m`
//! exponentials from a ChaCha20 stream seeded by `m`: deterministic). A layer that fails the
//! check falls back to the order statistic when the runs suffice for
//! it, and the calibration is refused with the runs needed otherwise. The extrapolation is
//! limited to `α ≥ 1/(100 n)` (at most a hundred times past the data's own resolution), so
//! the method needs `n ≥ max(500, ⌈1/(100 α)⌉)` runs. Held-out and unseen runs then test the
//! thresholds directly.
//!
//! # Held-out evidence
//!
//! [`holdout_evidence`] applies the thresholds to runs not used for calibration. A run *could*
//! be falsely rejected when any of its cells exceeds; the count of such runs among `n` gives a
//! one-sided Clopper–Pearson upper bound on the session false-positive rate that holds for any
//! `k` and any sampling strategy. For uniform sampling it also reports the expected session
//! rate, the mean over runs of `1 − (C(N − e, k)/C(N, k))^rounds` with `e` exceeding cells
//! among `N`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use veritrace_commit::Dtype;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::sampling::floyd;
use crate::soundness::detection_probability;
use crate::tolerance::{
    regularized_incomplete_beta, Deviation, FprEstimate, Metric, PerLayer, ThresholdPolicy,
    TolerancePolicy, ToleranceViolation,
};
use crate::{ProtocolError, Result};

/// The `format` string of a calibrated policy file ([`CalibratedPolicy`]).
pub const POLICY_FORMAT: &str = "veritrace/calibrated-policy/v1";

/// Largest number of honest runs accepted in one calibration (absurd sizes are refused).
pub const MAX_RUNS: u64 = 10_000_000;

/// The unit roundoff `u = 2^−p` of a dtype's significand (`p` = 24 for f32, 11 for f16, 8 for
/// bf16), or 1 for i8 (one integer step, an absolute unit).
pub fn unit_roundoff(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::F32 => (-24f64).exp2(),
        Dtype::F16 => (-11f64).exp2(),
        Dtype::Bf16 => (-8f64).exp2(),
        Dtype::I8 => 1.0,
    }
}

/// What one layer of one honest run contributed: each cell's deviation and the magnitudes the
/// rounding floor needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerEvidence {
    /// The metric's value for every cell of the layer (finite, `≥ 0`).
    pub deviations: Vec<f64>,
    /// The largest element count of a cell of the layer.
    pub elements: u64,
    /// The smallest nonzero RMS of the recomputed values of a cell of the layer (0 when every
    /// cell is all zeros).
    pub min_rms: f64,
}

impl LayerEvidence {
    /// The layer's worst cell, `M_{r,l}` (0 for a layer without cells).
    pub fn max(&self) -> f64 {
        self.deviations.iter().copied().fold(0.0, f64::max)
    }
}

/// One independent honest run: which honest variation produced it, and per layer its cells'
/// deviations from the verifier's recompute under the claimed setup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HonestRun {
    /// The honest variation (a setup string, an engine name, a trace file).
    pub variation: String,
    /// Per layer (0 = embeddings).
    pub layers: BTreeMap<u32, LayerEvidence>,
}

impl HonestRun {
    /// An empty run of `variation`.
    pub fn new(variation: impl Into<String>) -> Self {
        HonestRun {
            variation: variation.into(),
            layers: BTreeMap::new(),
        }
    }

    /// Adds one cell of `layer`: the values the honest prover committed (`claimed`) and the
    /// verifier's recompute under the claimed setup. Refuses (the [`ToleranceViolation`] of
    /// [`Deviation::between`]) cells of unequal lengths or with non-finite values: an honest
    /// run with NaN in it is no evidence of honest noise.
    pub fn add_cell(
        &mut self,
        layer: u32,
        metric: Metric,
        claimed: &[f32],
        recomputed: &[f32],
    ) -> std::result::Result<(), ToleranceViolation> {
        let d = Deviation::between(claimed, recomputed, None)?;
        // Deviation::between accepts only max_abs and rel_l2 without a floor; noise_score is
        // refused by the calibration config, so unwrap_or is never reached for valid configs.
        let value = d.get(metric).unwrap_or(d.rel_l2);
        let n = recomputed.len() as u64;
        let rms = if n == 0 {
            0.0
        } else {
            (recomputed
                .iter()
                .map(|&r| f64::from(r) * f64::from(r))
                .sum::<f64>()
                / n as f64)
                .sqrt()
        };
        let e = self.layers.entry(layer).or_insert(LayerEvidence {
            deviations: Vec::new(),
            elements: 0,
            min_rms: 0.0,
        });
        e.deviations.push(value);
        e.elements = e.elements.max(n);
        if rms > 0.0 && (e.min_rms == 0.0 || rms < e.min_rms) {
            e.min_rms = rms;
        }
        Ok(())
    }

    /// Cells in the run.
    pub fn cells(&self) -> u64 {
        self.layers
            .values()
            .map(|l| l.deviations.len() as u64)
            .sum()
    }
}

/// How a calibration turns runs into thresholds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CalibrationMethod {
    /// The distribution-free upper confidence bound of the module documentation: an order
    /// statistic of per-run layer maxima, its rank from the binomial distribution.
    #[default]
    OrderStatistic,
    /// A fitted exponential tail above the `(n − m)`-th order statistic, with upper confidence
    /// bounds on its scale and on the tail's probability, checked per layer against a heavier
    /// tail (module documentation).
    ExponentialTail,
}

impl std::fmt::Display for CalibrationMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CalibrationMethod::OrderStatistic => "order-statistic",
            CalibrationMethod::ExponentialTail => "exponential-tail",
        })
    }
}

impl std::str::FromStr for CalibrationMethod {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "order-statistic" => Ok(CalibrationMethod::OrderStatistic),
            "exponential-tail" => Ok(CalibrationMethod::ExponentialTail),
            other => Err(ProtocolError::InvalidParameter(format!(
                "calibration method {other:?}: expected order-statistic or exponential-tail"
            ))),
        }
    }
}

/// Where a layer's threshold came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThresholdSource {
    /// `s · M_(ρ)`, the margin times the order statistic.
    OrderStatistic,
    /// The rounding floor `f_l`, larger than the statistical bound (for instance every honest
    /// sample of the layer was bit-exact).
    RoundingFloor,
    /// `s · (u + σ_U ln(p_U/α))`, the margin times the fitted exponential tail's quantile.
    ExponentialTail,
}

/// Parameters of [`calibrate_runs`] (unknown fields are refused when deserializing).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunCalibrationConfig {
    /// The metric of the deviations (`rel_l2` or `max_abs`).
    pub metric: Metric,
    /// Target false-positive rate per session, `τ ∈ (0, 1)`.
    pub target_session_fpr: f64,
    /// Cells challenged per round, `k ≥ 1`.
    pub samples: u32,
    /// Rounds per session, `≥ 1`.
    pub rounds: u32,
    /// Joint confidence `γ ∈ (0, 1)` of all layers' bounds (e.g. 0.95).
    pub confidence: f64,
    /// Safety factor `s ≥ 1` on the order statistic (1 = none: the bound already holds).
    pub margin: f64,
    /// The claimed precision, whose unit roundoff sets the rounding floor.
    pub rounding_dtype: Dtype,
    /// How thresholds are obtained (absent in a file: the order statistic).
    #[serde(default)]
    pub method: CalibrationMethod,
}

impl RunCalibrationConfig {
    /// Refuses `τ` or `γ` outside `(0, 1)`, `s < 1` or non-finite, `k` or rounds of 0, and the
    /// `noise_score` metric (its floors are themselves calibrated; use `rel_l2`).
    pub fn validate(&self) -> Result<()> {
        let unit = |what: &str, x: f64| {
            if x > 0.0 && x < 1.0 {
                Ok(())
            } else {
                Err(ProtocolError::InvalidParameter(format!(
                    "{what} must be in (0, 1), got {x}"
                )))
            }
        };
        unit("target_session_fpr", self.target_session_fpr)?;
        unit("confidence", self.confidence)?;
        if !(self.margin.is_finite() && self.margin >= 1.0) {
            return Err(ProtocolError::InvalidParameter(format!(
                "margin must be finite and >= 1, got {}",
                self.margin
            )));
        }
        if self.samples == 0 || self.rounds == 0 {
            return Err(ProtocolError::InvalidParameter(
                "samples (k) and rounds must be >= 1".into(),
            ));
        }
        if self.metric == Metric::NoiseScore {
            return Err(ProtocolError::InvalidParameter(
                "metric: calibration takes rel_l2 or max_abs, not noise_score".into(),
            ));
        }
        Ok(())
    }

    /// Cells checked per session, `c = k · rounds`.
    pub fn checks(&self) -> u64 {
        u64::from(self.samples) * u64::from(self.rounds)
    }

    /// The per-cell rate `α = τ / min(c, L)` for `layers = L`.
    pub fn cell_alpha(&self, layers: u64) -> f64 {
        self.target_session_fpr / self.checks().min(layers.max(1)) as f64
    }

    /// The per-layer confidence `γ_l = 1 − (1 − γ)/L`.
    pub fn layer_confidence(&self, layers: u64) -> f64 {
        1.0 - (1.0 - self.confidence) / layers.max(1) as f64
    }

    /// The runs the method needs for `layers = L`: [`runs_needed`] for the order statistic,
    /// `max(500, ⌈1/(100 α)⌉)` for the fitted tail (its fewest excesses, and its limit on
    /// extrapolation).
    pub fn runs_needed(&self, layers: u64) -> u64 {
        let alpha = self.cell_alpha(layers);
        match self.method {
            CalibrationMethod::OrderStatistic => runs_needed(alpha, self.layer_confidence(layers)),
            CalibrationMethod::ExponentialTail => tail_runs_needed(alpha),
        }
    }
}

/// Fewest excesses of a fitted tail.
pub const TAIL_MIN_EXCESSES: u64 = 50;

/// Share of the runs whose excesses a fitted tail uses (`m = max(50, ⌈n/10⌉)`).
pub const TAIL_FRACTION: f64 = 0.1;

/// A fitted tail extrapolates to at most `α = 1/(TAIL_MAX_EXTRAPOLATION · n)`.
pub const TAIL_MAX_EXTRAPOLATION: f64 = 100.0;

/// Most excesses a fitted tail uses (with many runs, the base moves further into the tail).
pub const TAIL_MAX_EXCESSES: u64 = 1000;

/// Monte Carlo samples behind the tail check's critical value.
pub const TAIL_CHECK_DRAWS: usize = 4000;

/// The squared coefficient of variation `s²/ȳ²` of `y` (population variance).
fn squared_cv(y: &[f64]) -> f64 {
    let m = y.len() as f64;
    let mean = y.iter().sum::<f64>() / m;
    let var = y.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / m;
    var / (mean * mean)
}

/// The 99% point of the squared coefficient of variation of `m` independent exponentials:
/// the [`TAIL_CHECK_DRAWS`]-sample Monte Carlo quantile, from a ChaCha20 stream seeded by `m`
/// (the same value on every machine; computed once per `m` and process).
pub fn tail_check_critical(m: u64) -> f64 {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<BTreeMap<u64, f64>>> =
        std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(&c) = cache.lock().ok().as_ref().and_then(|c| c.get(&m)) {
        return c;
    }
    let c = compute_tail_check_critical(m);
    if let Ok(mut cache) = cache.lock() {
        cache.insert(m, c);
    }
    c
}

fn compute_tail_check_critical(m: u64) -> f64 {
    let mut rng = ChaCha20Rng::seed_from_u64(0x7461_696c ^ m);
    let mut y = vec![0.0; m as usize];
    let mut stats: Vec<f64> = (0..TAIL_CHECK_DRAWS)
        .map(|_| {
            for v in y.iter_mut() {
                // 53 random bits in (0, 1], then an exponential by inversion.
                let u = ((rand_core::RngCore::next_u64(&mut rng) >> 11) + 1) as f64
                    / (1u64 << 53) as f64;
                *v = -u.ln();
            }
            squared_cv(&y)
        })
        .collect();
    stats.sort_by(f64::total_cmp);
    stats[(TAIL_CHECK_DRAWS as f64 * 0.99).ceil() as usize - 1]
}

/// Runs a fitted tail needs for a per-cell rate `α`: `max(TAIL_MIN_EXCESSES / TAIL_FRACTION,
/// ⌈1/(TAIL_MAX_EXTRAPOLATION · α)⌉)`.
pub fn tail_runs_needed(alpha: f64) -> u64 {
    let min = (TAIL_MIN_EXCESSES as f64 / TAIL_FRACTION).ceil() as u64;
    let extrapolation = (1.0 / (TAIL_MAX_EXTRAPOLATION * alpha)).ceil();
    if extrapolation.is_finite() && extrapolation < u64::MAX as f64 {
        min.max(extrapolation as u64)
    } else {
        u64::MAX
    }
}

/// The regularized lower incomplete gamma function `P(a, x)` (the CDF of `Gamma(a, 1)` at
/// `x`) by its power series `P(a, x) = e^{−x} x^a / Γ(a + 1) · Σ_{j≥0} x^j / ((a + 1)…(a + j))`
/// (Numerical Recipes, 3rd ed., §6.2), used here for `x < a + 1`; by the continued fraction of
/// `Q = 1 − P` otherwise.
pub fn regularized_lower_gamma(a: f64, x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return 0.0;
    }
    if x.is_infinite() {
        return 1.0;
    }
    let ln_front = a * x.ln() - x - crate::tolerance::ln_gamma(a);
    if x < a + 1.0 {
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1_000_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        (sum.ln() + ln_front).exp().min(1.0)
    } else {
        // Lentz's method for the continued fraction of Q(a, x).
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1_000_000u64 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (1.0 - (ln_front.exp() * h)).clamp(0.0, 1.0)
    }
}

/// The `q`-quantile of `Gamma(a, 1)`, by bisection on [`regularized_lower_gamma`].
pub fn gamma_quantile(a: f64, q: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, a + 50.0 * a.sqrt() + 100.0);
    for _ in 0..2000 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if regularized_lower_gamma(a, mid) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// A layer's fitted exponential tail (module documentation, "a fitted exponential tail").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailFit {
    /// Excesses `m` used.
    pub excesses: u64,
    /// The base `u = M_(n−m)`.
    pub base: f64,
    /// The scale's estimate `σ̂`, the mean excess.
    pub scale: f64,
    /// Its upper confidence bound `σ_U`.
    pub scale_upper: f64,
    /// The upper confidence bound `p_U` on `P(M_l > u)`.
    pub tail_probability_upper: f64,
    /// The bound on the `(1 − α)` quantile, `u + σ_U ln(p_U/α)`.
    pub quantile: f64,
    /// The squared coefficient of variation `V = s²/ȳ²` of the excesses (1 for an exponential,
    /// above 1 for a heavier tail; 0 when every excess is 0).
    pub cv2: f64,
    /// Its 99% point under the exponential for this `m` ([`tail_check_critical`]).
    pub cv2_critical: f64,
    /// Whether `V ≤ cv2_critical`: a heavier-than-exponential tail is not detected at 1% (and,
    /// when every excess is 0, whether the base is 0 too: every run bit-exact).
    pub fits: bool,
}

/// Fits the exponential tail to `sorted` (ascending per-run maxima, `n ≥` [`tail_runs_needed`])
/// for the rate `alpha` at confidence `layer_confidence`.
pub fn fit_exponential_tail(sorted: &[f64], alpha: f64, layer_confidence: f64) -> Result<TailFit> {
    let n = sorted.len() as u64;
    let m = TAIL_MIN_EXCESSES
        .max((TAIL_FRACTION * n as f64).ceil() as u64)
        .min(TAIL_MAX_EXCESSES);
    if n <= m {
        return Err(ProtocolError::InsufficientEvidence {
            needed: tail_runs_needed(alpha),
            have: n,
            reason: "a fitted tail needs more runs than excesses".into(),
        });
    }
    let base = sorted[(n - m - 1) as usize];
    let excess: Vec<f64> = sorted[(n - m) as usize..]
        .iter()
        .map(|&x| x - base)
        .collect();
    let scale = excess.iter().sum::<f64>() / m as f64;
    let gamma_half = 1.0 - (1.0 - layer_confidence) / 2.0;
    let p_upper = crate::tolerance::clopper_pearson_upper(m, n, gamma_half)?;
    let g = gamma_quantile(m as f64, 1.0 - gamma_half);
    let scale_upper = m as f64 * scale / g;
    let cv2_critical = tail_check_critical(m);
    let (cv2, fits) = if scale == 0.0 {
        // Every excess 0: bit-exact throughout when the base is 0, an atom otherwise.
        (0.0, base == 0.0)
    } else {
        let v = squared_cv(&excess);
        (v, v <= cv2_critical)
    };
    let quantile = base + scale_upper * (p_upper / alpha).ln().max(0.0);
    Ok(TailFit {
        excesses: m,
        base,
        scale,
        scale_upper,
        tail_probability_upper: p_upper,
        quantile,
        cv2,
        cv2_critical,
        fits,
    })
}

/// Runs needed for a `γ_l` upper confidence bound on the `(1 − α)` quantile from order
/// statistics: `n_min = ⌈ln(1 − γ_l) / ln(1 − α)⌉`, the smallest `n` with `1 − (1 − α)^n ≥ γ_l`.
///
/// Saturates at `u64::MAX` where `n` does not fit (a rate `α` so small that no number of runs
/// could support it: a caller then reports insufficient evidence), and takes at most a few
/// dozen steps whatever `α` is.
pub fn runs_needed(alpha: f64, layer_confidence: f64) -> u64 {
    let n = ((1.0 - layer_confidence).ln() / (-alpha).ln_1p()).ceil();
    if n.is_nan() || n >= u64::MAX as f64 {
        return u64::MAX;
    }
    // Guard the rounding of the logarithms: step to the exact smallest n (the estimate is
    // within a step or two of it; the steps are bounded, so no argument can loop).
    let mut n = n.max(1.0) as u64;
    let ok = |n: u64| 1.0 - (n as f64 * (-alpha).ln_1p()).exp() >= layer_confidence;
    for _ in 0..64 {
        if n > 1 && ok(n - 1) {
            n -= 1;
        } else {
            break;
        }
    }
    for _ in 0..64 {
        if ok(n) {
            return n;
        }
        match n.checked_add(1) {
            Some(next) => n = next,
            None => return u64::MAX,
        }
    }
    if ok(n) {
        n
    } else {
        u64::MAX
    }
}

/// `P(Bin(n, 1 − α) ≤ j) = I_α(n − j, j + 1)` for `j < n` (1 for `j ≥ n`).
fn binomial_cdf_q(n: u64, alpha: f64, j: u64) -> f64 {
    if j >= n {
        return 1.0;
    }
    regularized_incomplete_beta((n - j) as f64, (j + 1) as f64, alpha)
}

/// The 1-based rank `ρ` of the order statistic that is a `γ_l` upper confidence bound on the
/// `(1 − α)` quantile of `n` samples: the smallest `ρ ≤ n` with
/// `P(Bin(n, 1 − α) ≤ ρ − 1) ≥ γ_l`; `None` when even `ρ = n` falls short (too few samples,
/// see [`runs_needed`]).
pub fn ucb_rank(n: u64, alpha: f64, layer_confidence: f64) -> Option<u64> {
    if n == 0 || binomial_cdf_q(n, alpha, n - 1) < layer_confidence {
        return None;
    }
    // The CDF increases with j: binary search for the smallest j with CDF(j) >= γ_l.
    let (mut lo, mut hi) = (0u64, n - 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if binomial_cdf_q(n, alpha, mid) >= layer_confidence {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo + 1)
}

/// One layer's calibration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerThreshold {
    /// Runs (samples `M_{r,l}`) behind it.
    pub runs: u64,
    /// Runs whose worst cell of this layer was bit-exact (deviation 0).
    pub exact_runs: u64,
    /// The 1-based rank `ρ` of the order statistic (under the fitted tail, when the runs are
    /// too few for any rank: `n`).
    pub rank: u64,
    /// `M_(ρ)`, the distribution-free upper confidence bound on the quantile (under the fitted
    /// tail, when the runs are too few for it: the sample maximum, which is no such bound).
    pub order_statistic: f64,
    /// The rounding floor `f_l`.
    pub rounding_floor: f64,
    /// The threshold `t_l = max(s · M_(ρ), f_l) > 0`.
    pub threshold: f64,
    /// Which bound it is.
    pub source: ThresholdSource,
    /// The fitted tail, under [`CalibrationMethod::ExponentialTail`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<TailFit>,
}

/// Runs of one honest variation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariationCount {
    /// The variation.
    pub variation: String,
    /// Its runs.
    pub runs: u64,
}

/// A calibration from honest runs: the thresholds and everything behind them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunCalibration {
    /// The method.
    pub method: CalibrationMethod,
    /// The parameters.
    pub config: RunCalibrationConfig,
    /// Layers `L` (the embeddings included).
    pub layers: u64,
    /// The per-cell rate `α = τ / min(k · rounds, L)`.
    pub cell_alpha: f64,
    /// The per-layer confidence `γ_l = 1 − (1 − γ)/L`.
    pub layer_confidence: f64,
    /// Runs the calibration used.
    pub runs: u64,
    /// The runs `n_min` the target needs.
    pub runs_needed: u64,
    /// The honest variations pooled, with their runs.
    pub variations: Vec<VariationCount>,
    /// Per layer.
    pub per_layer: BTreeMap<u32, LayerThreshold>,
    /// The bound the calibration supports, in words.
    pub claimed_bound: String,
}

impl RunCalibration {
    /// The thresholds, an override for every layer (the default is the loosest, used only by
    /// layers beyond the calibrated ones, which a verifier refuses anyway).
    pub fn thresholds(&self) -> PerLayer {
        let overrides: BTreeMap<u32, f64> = self
            .per_layer
            .iter()
            .map(|(&l, t)| (l, t.threshold))
            .collect();
        let default = overrides.values().copied().fold(0.0, f64::max);
        PerLayer { default, overrides }
    }

    /// The threshold policy the verifier applies.
    pub fn policy(&self) -> ThresholdPolicy {
        ThresholdPolicy::new(self.config.metric, self.thresholds())
    }

    /// Layers whose threshold came from the rounding floor.
    pub fn floored_layers(&self) -> Vec<u32> {
        self.per_layer
            .iter()
            .filter(|(_, t)| t.source == ThresholdSource::RoundingFloor)
            .map(|(&l, _)| l)
            .collect()
    }
}

/// Checks that `runs` is a non-empty set of runs over the same layers `0..L` with finite,
/// non-negative deviations, and returns `L`.
fn validate_runs(runs: &[HonestRun]) -> Result<u64> {
    let Some(first) = runs.first() else {
        return Err(ProtocolError::InvalidParameter("no honest runs".into()));
    };
    if runs.len() as u64 > MAX_RUNS {
        return Err(ProtocolError::InvalidParameter(format!(
            "{} honest runs, more than the {MAX_RUNS} accepted",
            runs.len()
        )));
    }
    let layers: Vec<u32> = first.layers.keys().copied().collect();
    if layers.is_empty() || layers.iter().enumerate().any(|(i, &l)| l as usize != i) {
        return Err(ProtocolError::InvalidParameter(format!(
            "run 0 ({}): layers must be 0..L without gaps, got {layers:?}",
            first.variation
        )));
    }
    for (i, r) in runs.iter().enumerate() {
        if !r.layers.keys().copied().eq(layers.iter().copied()) {
            return Err(ProtocolError::InvalidParameter(format!(
                "run {i} ({}) has layers {:?}, run 0 has {layers:?}",
                r.variation,
                r.layers.keys().collect::<Vec<_>>()
            )));
        }
        for (l, e) in &r.layers {
            if e.deviations.is_empty() {
                return Err(ProtocolError::InvalidParameter(format!(
                    "run {i} ({}): layer {l} has no cells",
                    r.variation
                )));
            }
            if let Some(x) = e.deviations.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
                return Err(ProtocolError::InvalidParameter(format!(
                    "run {i} ({}): layer {l} has a deviation {x} (must be finite and >= 0)",
                    r.variation
                )));
            }
            if !(e.min_rms.is_finite() && e.min_rms >= 0.0) {
                return Err(ProtocolError::InvalidParameter(format!(
                    "run {i} ({}): layer {l} has an RMS {}",
                    r.variation, e.min_rms
                )));
            }
        }
    }
    Ok(layers.len() as u64)
}

/// The variations of `runs` with their run counts, in order of first appearance.
fn variation_counts(runs: &[HonestRun]) -> Vec<VariationCount> {
    let mut out: Vec<VariationCount> = Vec::new();
    for r in runs {
        match out.iter_mut().find(|v| v.variation == r.variation) {
            Some(v) => v.runs += 1,
            None => out.push(VariationCount {
                variation: r.variation.clone(),
                runs: 1,
            }),
        }
    }
    out
}

/// The rounding floor of a layer over `runs` (see the module documentation).
fn rounding_floor(runs: &[HonestRun], layer: u32, metric: Metric, dtype: Dtype) -> f64 {
    let u = unit_roundoff(dtype);
    let elements = runs
        .iter()
        .map(|r| r.layers[&layer].elements)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let rms = runs
        .iter()
        .map(|r| r.layers[&layer].min_rms)
        .filter(|&x| x > 0.0)
        .fold(f64::INFINITY, f64::min);
    let rms = if rms.is_finite() { rms } else { 1.0 };
    match (metric, dtype) {
        (Metric::MaxAbs, Dtype::I8) => 1.0,
        (Metric::MaxAbs, _) => u * rms,
        (_, Dtype::I8) => 1.0 / (elements.sqrt() * rms),
        (_, _) => u / elements.sqrt(),
    }
}

/// Calibrates per-layer thresholds on independent honest runs (see the module documentation
/// for the statistics and the bound it claims).
///
/// Errors: [`ProtocolError::InvalidParameter`] for an invalid config or malformed runs (no
/// runs, layers with gaps or differing between runs, a layer without cells, a NaN, infinite
/// or negative deviation); [`ProtocolError::InsufficientEvidence`] when the runs are fewer
/// than the target needs (the error says how many).
pub fn calibrate_runs(runs: &[HonestRun], config: &RunCalibrationConfig) -> Result<RunCalibration> {
    config.validate()?;
    let layers = validate_runs(runs)?;
    let alpha = config.cell_alpha(layers);
    let gamma_l = config.layer_confidence(layers);
    let n = runs.len() as u64;
    let needed = config.runs_needed(layers);
    let insufficient = |needed: u64, why: String| ProtocolError::InsufficientEvidence {
        needed,
        have: n,
        reason: format!(
            "a session false-positive rate of {:e} at {} confidence with k = {} x {} round(s) \
             over {layers} layers needs per-cell alpha = {alpha:.3e} at per-layer confidence \
             {gamma_l} ({}){why}",
            config.target_session_fpr,
            config.confidence,
            config.samples,
            config.rounds,
            config.method
        ),
    };
    if n < needed {
        return Err(insufficient(needed, String::new()));
    }
    let order_needed = runs_needed(alpha, gamma_l);
    // The order statistic's rank, where the runs reach it (always under that method).
    let rank = ucb_rank(n, alpha, gamma_l);
    if config.method == CalibrationMethod::OrderStatistic && rank.is_none() {
        return Err(insufficient(
            needed.max(n + 1),
            ": no order statistic reaches the confidence".into(),
        ));
    }
    let mut per_layer = BTreeMap::new();
    for l in 0..layers as u32 {
        let mut maxima: Vec<f64> = runs.iter().map(|r| r.layers[&l].max()).collect();
        maxima.sort_by(f64::total_cmp);
        let floor = rounding_floor(runs, l, config.metric, config.rounding_dtype);
        let order_statistic = rank.map_or(maxima[maxima.len() - 1], |r| maxima[(r - 1) as usize]);
        let (bound, source, tail) = match config.method {
            CalibrationMethod::OrderStatistic => {
                (order_statistic, ThresholdSource::OrderStatistic, None)
            }
            CalibrationMethod::ExponentialTail => {
                let fit = fit_exponential_tail(&maxima, alpha, gamma_l)?;
                if fit.fits {
                    (fit.quantile, ThresholdSource::ExponentialTail, Some(fit))
                } else if rank.is_some() {
                    (order_statistic, ThresholdSource::OrderStatistic, Some(fit))
                } else {
                    return Err(insufficient(
                        order_needed,
                        format!(
                            ": layer {l}'s excesses over the top {} runs have a tail heavier \
                             than exponential (squared coefficient of variation {:.3} > {:.3}, \
                             its 1% point), and the distribution-free order statistic needs \
                             {order_needed} runs",
                            fit.excesses, fit.cv2, fit.cv2_critical
                        ),
                    ));
                }
            }
        };
        let scaled = config.margin * bound;
        let (threshold, source) = if scaled >= floor {
            (scaled, source)
        } else {
            (floor, ThresholdSource::RoundingFloor)
        };
        per_layer.insert(
            l,
            LayerThreshold {
                runs: n,
                exact_runs: maxima.iter().filter(|&&x| x == 0.0).count() as u64,
                rank: rank.unwrap_or(n),
                order_statistic,
                rounding_floor: floor,
                threshold,
                source,
                tail,
            },
        );
    }
    let assumption = match config.method {
        CalibrationMethod::OrderStatistic => String::new(),
        CalibrationMethod::ExponentialTail => {
            ", assuming each layer's tail above its fitted base is no heavier than exponential \
             (checked per layer at 1%)"
                .into()
        }
    };
    Ok(RunCalibration {
        method: config.method,
        config: *config,
        layers,
        cell_alpha: alpha,
        layer_confidence: gamma_l,
        runs: n,
        runs_needed: needed,
        variations: variation_counts(runs),
        per_layer,
        claimed_bound: format!(
            "with confidence >= {}, an honest run of the calibrated variations is falsely \
             rejected in at most {} of sessions checking k = {} cells x {} round(s) (any \
             sampling strategy): per layer, P(worst cell > t_l) <= alpha = {alpha:.3e}{assumption}",
            config.confidence, config.target_session_fpr, config.samples, config.rounds
        ),
    })
}

/// What held-out honest runs measured under calibrated thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldoutEvidence {
    /// Held-out runs, each one independent honest session.
    pub runs: u64,
    /// The held-out variations, with their runs.
    pub variations: Vec<VariationCount>,
    /// Runs with at least one cell over its threshold (a session *could* reject them), with
    /// a one-sided Clopper–Pearson interval: its upper bound bounds the session
    /// false-positive rate for any `k` and sampling strategy.
    pub runs_with_exceedance: FprEstimate,
    /// The expected session false-positive rate under uniform sampling of `k` cells per round:
    /// the mean over runs of `1 − (C(N − e, k)/C(N, k))^rounds`.
    pub expected_session_fpr: f64,
    /// One session per run, `k` cells per round drawn uniformly (ChaCha20 seeded by the run's
    /// index), rejected when a drawn cell is over its threshold: falsely rejected sessions
    /// among independent sessions, with one-sided Clopper–Pearson bounds.
    #[serde(default)]
    pub sessions_rejected: Option<FprEstimate>,
    /// Per layer: cells over the threshold among the held-out cells (cells of one run are
    /// not independent: a description, not a bound).
    pub cells_over: BTreeMap<u32, (u64, u64)>,
    /// The largest ratio of a held-out deviation to its layer's threshold (below 1: every
    /// cell passed; `f64::MAX` when a cell differs over a threshold of 0, exact mode).
    pub worst_ratio: f64,
}

/// Applies `thresholds` to held-out honest `runs`, `samples` cells per round over `rounds`
/// rounds, with Clopper–Pearson bounds at `confidence`.
pub fn holdout_evidence(
    thresholds: &PerLayer,
    runs: &[HonestRun],
    samples: u32,
    rounds: u32,
    confidence: f64,
) -> Result<HoldoutEvidence> {
    validate_runs(runs)?;
    let mut with_exceedance = 0u64;
    let mut expected = 0.0;
    let mut cells_over: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let mut worst_ratio = 0.0f64;
    let mut sessions_rejected = 0u64;
    for (index, r) in runs.iter().enumerate() {
        let mut over = 0u64;
        let mut cells_over_flags: Vec<bool> = Vec::new();
        for (&l, e) in &r.layers {
            let t = thresholds.get(l);
            let k = e.deviations.iter().filter(|&&x| x > t).count() as u64;
            cells_over_flags.extend(e.deviations.iter().map(|&x| x > t));
            for &x in &e.deviations {
                // Finite, so that JSON keeps it: f64::MAX for a difference over a 0 threshold.
                let ratio = if t > 0.0 {
                    (x / t).min(f64::MAX)
                } else if x > 0.0 {
                    f64::MAX
                } else {
                    0.0
                };
                worst_ratio = worst_ratio.max(ratio);
            }
            let c = cells_over.entry(l).or_insert((0, 0));
            c.0 += k;
            c.1 += e.deviations.len() as u64;
            over += k;
        }
        if over > 0 {
            // One session: `samples` distinct cells per round, uniformly, from a stream keyed
            // by the run's index.
            let n = cells_over_flags.len() as u64;
            let mut rng = ChaCha20Rng::seed_from_u64(0x7665_7269_7472_6163 ^ index as u64);
            let hit = (0..rounds).any(|_| {
                floyd(&mut rng, n, u64::from(samples).min(n))
                    .into_iter()
                    .any(|c| cells_over_flags[c as usize])
            });
            sessions_rejected += u64::from(hit);
            with_exceedance += 1;
            let n = r.cells();
            let k = u64::from(samples).min(n);
            let miss = 1.0 - detection_probability(n, over, k)?;
            expected += 1.0 - miss.powi(rounds as i32);
        }
    }
    let n = runs.len() as u64;
    Ok(HoldoutEvidence {
        runs: n,
        variations: variation_counts(runs),
        runs_with_exceedance: FprEstimate::new(with_exceedance, n, confidence)?,
        expected_session_fpr: expected / n as f64,
        sessions_rejected: Some(FprEstimate::new(sessions_rejected, n, confidence)?),
        cells_over,
        worst_ratio,
    })
}

/// A calibrated policy file: what `veritrace calibrate` and `veritrace simulate` write and
/// `veritrace verify --tolerance FILE` reads. `policy` is what the verifier applies;
/// `calibration` and `holdout` are the evidence behind it. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibratedPolicy {
    /// Always [`POLICY_FORMAT`].
    pub format: String,
    /// The claimed setup the thresholds are for (a setup string).
    pub setup: String,
    /// The model (a preset name, a directory, or a digest) the runs came from.
    pub model: String,
    /// The threshold policy.
    pub policy: ThresholdPolicy,
    /// How the thresholds were obtained.
    pub calibration: RunCalibration,
    /// Held-out evidence, if runs were held out.
    pub holdout: Option<HoldoutEvidence>,
    /// Evidence from honest variations *not* used in calibration (other split-K counts, batch
    /// shapes, engines), one entry per variation: whether the thresholds generalize.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unseen: Vec<HoldoutEvidence>,
}

impl CalibratedPolicy {
    /// The file for a calibration and its held-out evidence.
    pub fn new(
        setup: impl Into<String>,
        model: impl Into<String>,
        calibration: RunCalibration,
        holdout: Option<HoldoutEvidence>,
    ) -> Self {
        CalibratedPolicy {
            format: POLICY_FORMAT.into(),
            setup: setup.into(),
            model: model.into(),
            policy: calibration.policy(),
            calibration,
            holdout,
            unseen: Vec::new(),
        }
    }

    /// Refuses a file that is not self-consistent, naming the field: a wrong `format`; an
    /// invalid `policy` (negative, NaN or infinite thresholds); an invalid
    /// `calibration.config` (target rate outside (0, 1), …); a layer of `0..calibration.layers`
    /// missing from `policy.thresholds.overrides` or from `calibration.per_layer`, or an extra
    /// one; a threshold of 0; and thresholds that differ from the calibration's.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ProtocolError::InvalidParameter(m));
        if self.format != POLICY_FORMAT {
            return bad(format!(
                "format: expected {POLICY_FORMAT:?}, got {:?}",
                self.format
            ));
        }
        self.policy
            .validate()
            .map_err(|e| ProtocolError::InvalidParameter(format!("policy: {e}")))?;
        self.calibration
            .config
            .validate()
            .map_err(|e| ProtocolError::InvalidParameter(format!("calibration.config: {e}")))?;
        if self.policy.metric != self.calibration.config.metric {
            return bad(format!(
                "policy.metric {} differs from calibration.config.metric {}",
                self.policy.metric, self.calibration.config.metric
            ));
        }
        let layers = self.calibration.layers;
        if layers == 0 || layers > u64::from(u32::MAX) {
            return bad(format!("calibration.layers: {layers} is not a layer count"));
        }
        let o = &self.policy.thresholds.overrides;
        for l in 0..layers as u32 {
            let Some(&t) = o.get(&l) else {
                return bad(format!(
                    "policy.thresholds.overrides: layer {l} is missing (the calibration has \
                     layers 0..{layers})"
                ));
            };
            let Some(c) = self.calibration.per_layer.get(&l) else {
                return bad(format!("calibration.per_layer: layer {l} is missing"));
            };
            if t <= 0.0 {
                return bad(format!(
                    "policy.thresholds.overrides: layer {l} has threshold {t}; a calibrated \
                     threshold is never 0"
                ));
            }
            if t != c.threshold {
                return bad(format!(
                    "policy.thresholds.overrides: layer {l} has {t}, the calibration says {}",
                    c.threshold
                ));
            }
        }
        if let Some(l) = o
            .keys()
            .chain(self.calibration.per_layer.keys())
            .find(|&&l| u64::from(l) >= layers)
        {
            return bad(format!(
                "layer {l} is beyond the calibrated layers 0..{layers}"
            ));
        }
        Ok(())
    }

    /// The verifier's policy, after [`CalibratedPolicy::validate`].
    pub fn tolerance(&self) -> Result<TolerancePolicy> {
        self.validate()?;
        Ok(TolerancePolicy::Threshold(self.policy.clone()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_needed_saturates_instead_of_overflowing() {
        // A per-cell rate of 1e-300 needs about 3e300 runs: no u64 holds it.
        assert_eq!(runs_needed(1e-300, 0.95), u64::MAX);
        assert_eq!(runs_needed(f64::MIN_POSITIVE, 0.999), u64::MAX);
        // Ordinary rates are exact: the smallest n with 1 - (1 - a)^n >= c.
        let n = runs_needed(0.01, 0.95);
        assert_eq!(n, 299);
        assert!(1.0 - 0.99f64.powi(298) < 0.95 && 1.0 - 0.99f64.powi(299) >= 0.95);
    }

    use super::*;

    #[test]
    fn runs_needed_is_the_smallest_sufficient_n() {
        // 1 - 0.999^n >= 0.95 <=> n >= ln(0.05)/ln(0.999) = 2994.2
        assert_eq!(runs_needed(1e-3, 0.95), 2995);
        // 1 - 0.99^n >= 0.99 <=> n >= 458.2
        assert_eq!(runs_needed(1e-2, 0.99), 459);
        // specs/protocol.md §12.3: tau = 1e-2, k = 8, L = 5 and 7; tau = 1e-3, L = 5.
        assert_eq!(runs_needed(0.002, 0.99), 2301);
        assert_eq!(runs_needed(0.01 / 7.0, 1.0 - 0.05 / 7.0), 3457);
        assert_eq!(runs_needed(0.0002, 0.99), 23024);
    }
}
