//! Tolerance policies: how a verifier compares the values a prover opened with the values it
//! recomputed itself, and how the thresholds are calibrated on honest runs.
//!
//! # Why tolerances
//!
//! Within one numeric setup (same hardware type, kernels, precision, batch shape) inference is
//! bitwise reproducible, so [`TolerancePolicy::Exact`] is the right check when the verifier runs
//! on the prover's hardware. Across hardware, an honest prover's values differ from the
//! verifier's by small reduction-order noise, while a change of *algorithm* (another attention
//! kernel, another quantization, a skipped layer) leaves a systematic deviation well above that
//! noise. A [`ThresholdPolicy`] accepts a cell when a deviation metric stays at or below a
//! per-layer threshold, and [`calibrate`] chooses those thresholds from honest cross-hardware
//! samples for a target false-positive rate per checked cell.
//!
//! # Notation
//!
//! For one cell with `n` elements, `c = (c_1 … c_n)` are the values *claimed* (opened) by the
//! prover and `r = (r_1 … r_n)` the values *recomputed* by the verifier. All metrics are computed
//! in `f64` from the decoded values (see [`decode_values`]):
//!
//! * max-abs: `‖c − r‖_∞ = max_i |c_i − r_i|` (0 for an empty cell);
//! * relative L2: `‖c − r‖_2 / max(‖r‖_2, ε)` with `ε =` [`REL_L2_DENOMINATOR_FLOOR`];
//! * noise score: `relative L2 / f_l`, where `f_l > 0` is the honest noise floor of layer `l`
//!   (e.g. the median honest relative L2 across hardware, see [`noise_floors_from_medians`]), so a
//!   threshold of 3.0 means "three times the honest noise".
//!
//! # Order of the checks
//!
//! [`TolerancePolicy::check`] decides a cell in this order, and reports the first failure:
//! 1. the recomputed bytes must be a whole number of elements (otherwise the verifier's own
//!    engine is at fault: a [`ProtocolError`], not a judgement of the prover);
//! 2. equal byte lengths ([`ToleranceViolation::LengthMismatch`]);
//! 3. no NaN or infinity on either side ([`ToleranceViolation::NonFinite`]; non-finite values are
//!    never compared, in any mode);
//! 4. the policy itself: bitwise equality ([`ToleranceViolation::Mismatch`]) or a metric at most
//!    its threshold ([`ToleranceViolation::Exceeded`]).

use std::collections::BTreeMap;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use veritrace_commit::Dtype;

use crate::{ProtocolError, Result};

/// Floor `ε` of the denominator of the relative L2 metric: `f32::MIN_POSITIVE ≈ 1.18e-38`, the
/// smallest normal `f32`.
///
/// When the recomputed values are all zero (or their L2 norm is below `ε`), the relative L2 is
/// `‖c − r‖_2 / ε`: exactly 0 when the claimed values are zero too, and otherwise at least
/// `‖c‖_2 · 8.5e37`, which fails any sensible threshold. The result is always finite: with
/// finite `f32` inputs `‖c − r‖_2 ≤ 2 · 3.4e38 · √n`, so the quotient stays far below
/// `f64::MAX` for any cell that fits in memory.
pub const REL_L2_DENOMINATOR_FLOOR: f64 = f32::MIN_POSITIVE as f64;

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Decodes little-endian element bytes of the given dtype into `f32` values.
///
/// * `F32`: IEEE-754 binary32, 4 bytes each (bit-exact);
/// * `F16`: IEEE-754 binary16, 2 bytes each, widened exactly with `half` (`0x3c00` = 1.0);
/// * `Bf16`: bfloat16, 2 bytes each, widened exactly with `half` (`0x3f80` = 1.0);
/// * `I8`: two's-complement signed bytes, as the integers −128 … 127.
///
/// Every conversion is exact, so NaN and infinities are preserved. Fails with
/// [`ProtocolError::Decode`] when `bytes.len()` is not a multiple of the element size.
pub fn decode_values(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    let size = dtype.size();
    if !bytes.len().is_multiple_of(size) {
        return Err(ProtocolError::Decode {
            what: "cell values",
            reason: format!(
                "{} bytes is not a whole number of {dtype} elements ({size} bytes each)",
                bytes.len()
            ),
        });
    }
    // fixed-size chunks (`as_chunks`) compile to plain vector loads, where `chunks_exact`'s
    // slices kept the decode element by element (a third of a large drawn check's time)
    let values = match dtype {
        Dtype::F32 => bytes
            .as_chunks::<4>()
            .0
            .iter()
            .map(|b| f32::from_le_bytes(*b))
            .collect(),
        Dtype::F16 => bytes
            .as_chunks::<2>()
            .0
            .iter()
            .map(|b| f16::from_bits(u16::from_le_bytes(*b)).to_f32())
            .collect(),
        Dtype::Bf16 => bytes
            .as_chunks::<2>()
            .0
            .iter()
            .map(|b| bf16::from_bits(u16::from_le_bytes(*b)).to_f32())
            .collect(),
        Dtype::I8 => bytes.iter().map(|&b| f32::from(b as i8)).collect(),
    };
    Ok(values)
}

/// Whether one little-endian element (exactly `dtype.size()` bytes) is finite, judged from its
/// bits: the exponent field is all ones exactly for NaN and ±infinity (`I8` is always finite).
fn element_is_finite(dtype: Dtype, b: &[u8]) -> bool {
    match dtype {
        Dtype::F32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 != 0x7f80_0000,
        Dtype::F16 => u16::from_le_bytes([b[0], b[1]]) & 0x7c00 != 0x7c00,
        Dtype::Bf16 => u16::from_le_bytes([b[0], b[1]]) & 0x7f80 != 0x7f80,
        Dtype::I8 => true,
    }
}

/// Index of the first non-finite element of `bytes` (a whole number of elements; a trailing
/// partial element is not read), judged from the bits without decoding: each block of 1024
/// elements is one branch-free pass (the largest magnitude's bits against the all-ones
/// exponent), and only a block holding a non-finite element is searched element by element.
pub(crate) fn first_non_finite_bytes(dtype: Dtype, bytes: &[u8]) -> Option<usize> {
    const BLOCK: usize = 1024;
    let size = dtype.size();
    for (i, block) in bytes.chunks(BLOCK * size).enumerate() {
        let bad = match dtype {
            Dtype::F32 => {
                let largest = block
                    .as_chunks::<4>()
                    .0
                    .iter()
                    .fold(0u32, |m, b| m.max(u32::from_le_bytes(*b) & 0x7fff_ffff));
                largest >= 0x7f80_0000
            }
            Dtype::F16 | Dtype::Bf16 => {
                let largest = block
                    .as_chunks::<2>()
                    .0
                    .iter()
                    .fold(0u16, |m, b| m.max(u16::from_le_bytes(*b) & 0x7fff));
                largest >= if dtype == Dtype::F16 { 0x7c00 } else { 0x7f80 }
            }
            Dtype::I8 => false,
        };
        if bad {
            return block
                .chunks_exact(size)
                .position(|b| !element_is_finite(dtype, b))
                .map(|j| i * BLOCK + j);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// Which of the two value vectors of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The values the prover opened.
    Claimed,
    /// The values the verifier recomputed.
    Recomputed,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Claimed => "claimed",
            Side::Recomputed => "recomputed",
        })
    }
}

/// A deviation metric between claimed values `c` and recomputed values `r` (see the module
/// documentation for the notation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// `‖c − r‖_∞ = max_i |c_i − r_i|`, in the units of the activations.
    MaxAbs,
    /// `‖c − r‖_2 / max(‖r‖_2, ε)` with `ε =` [`REL_L2_DENOMINATOR_FLOOR`]; scale-free.
    RelL2,
    /// `RelL2 / f_l` with `f_l` the honest noise floor of layer `l`: multiples of honest noise.
    NoiseScore,
}

impl Metric {
    /// Lowercase name: `max_abs`, `rel_l2`, `noise_score` (as in JSON).
    pub fn name(self) -> &'static str {
        match self {
            Metric::MaxAbs => "max_abs",
            Metric::RelL2 => "rel_l2",
            Metric::NoiseScore => "noise_score",
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The deviation of claimed values `c` from recomputed values `r`, all metrics computed in `f64`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Deviation {
    /// `‖c − r‖_∞ = max_i |c_i − r_i|` (0 for an empty cell).
    pub max_abs: f64,
    /// `‖c − r‖_2 / max(‖r‖_2, ε)`, `ε =` [`REL_L2_DENOMINATOR_FLOOR`] (0 for an empty cell).
    pub rel_l2: f64,
    /// `rel_l2 / f_l` when the layer's noise floor `f_l > 0` is known, saturated at `f64::MAX`
    /// (it can only overflow for absurdly small floors); `None` otherwise.
    pub noise_score: Option<f64>,
}

impl Deviation {
    /// The deviation of identical values: every metric 0, no noise score.
    pub const ZERO: Deviation = Deviation {
        max_abs: 0.0,
        rel_l2: 0.0,
        noise_score: None,
    };

    /// Computes the deviation of `claimed` from `recomputed`.
    ///
    /// Checks, in order: equal lengths ([`ToleranceViolation::LengthMismatch`], counted in
    /// elements here), then that every value is finite ([`ToleranceViolation::NonFinite`]; the
    /// claimed side is scanned first and the index of its first non-finite value is reported).
    /// Only then are the metrics computed. `noise_floor` is the layer's honest noise floor
    /// `f_l`; the noise score is computed when it is `Some` (a non-positive or non-finite floor
    /// is the caller's error; [`ThresholdPolicy::validate`] refuses such floors).
    pub fn between(
        claimed: &[f32],
        recomputed: &[f32],
        noise_floor: Option<f64>,
    ) -> std::result::Result<Deviation, ToleranceViolation> {
        if claimed.len() != recomputed.len() {
            return Err(ToleranceViolation::LengthMismatch {
                claimed: claimed.len() as u64,
                recomputed: recomputed.len() as u64,
            });
        }
        for (side, values) in [(Side::Claimed, claimed), (Side::Recomputed, recomputed)] {
            if let Some(index) = values.iter().position(|v| !v.is_finite()) {
                return Err(ToleranceViolation::NonFinite {
                    side,
                    index: index as u64,
                });
            }
        }
        Ok(Self::of_finite(claimed, recomputed, noise_floor))
    }

    /// The metrics of two finite slices of equal length.
    fn of_finite(claimed: &[f32], recomputed: &[f32], noise_floor: Option<f64>) -> Deviation {
        let mut max_abs = 0.0f64;
        let mut diff_sq = 0.0f64;
        let mut ref_sq = 0.0f64;
        for (&c, &r) in claimed.iter().zip(recomputed) {
            let (c, r) = (f64::from(c), f64::from(r));
            let d = c - r;
            max_abs = max_abs.max(d.abs());
            diff_sq += d * d;
            ref_sq += r * r;
        }
        let rel_l2 = diff_sq.sqrt() / ref_sq.sqrt().max(REL_L2_DENOMINATOR_FLOOR);
        Deviation {
            max_abs,
            rel_l2,
            noise_score: noise_floor.map(|f| (rel_l2 / f).min(f64::MAX)),
        }
    }

    /// The value of one metric, `None` for [`Metric::NoiseScore`] when no floor was known.
    pub fn get(&self, metric: Metric) -> Option<f64> {
        match metric {
            Metric::MaxAbs => Some(self.max_abs),
            Metric::RelL2 => Some(self.rel_l2),
            Metric::NoiseScore => self.noise_score,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------------------------

/// Why a cell failed its tolerance check: what a verdict carries (the caller adds the cell).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Error)]
#[serde(rename_all = "snake_case")]
pub enum ToleranceViolation {
    /// A NaN or an infinity: never compared, whatever the policy.
    #[error("non-finite {side} value at element {index}")]
    NonFinite {
        /// Which side holds it (the claimed side is scanned first).
        side: Side,
        /// Element index of the first non-finite value on that side.
        index: u64,
    },
    /// The metric exceeded its threshold: `value > threshold`.
    #[error("{metric} = {value:e} exceeds the threshold {threshold:e}")]
    Exceeded {
        /// The policy's metric.
        metric: Metric,
        /// Its value on this cell.
        value: f64,
        /// The threshold of the cell's layer.
        threshold: f64,
    },
    /// The two sides have different lengths: in bytes from [`TolerancePolicy::check`], in
    /// elements from [`Deviation::between`].
    #[error("claimed length {claimed} differs from recomputed length {recomputed}")]
    LengthMismatch {
        /// Length of the claimed values.
        claimed: u64,
        /// Length of the recomputed values.
        recomputed: u64,
    },
    /// Exact mode: the bytes differ; `index` is the first differing element.
    #[error("exact mode: element {index} differs bitwise")]
    Mismatch {
        /// Index of the first element whose bytes differ.
        index: u64,
    },
}

/// A per-layer value: a default plus overrides for some layers.
///
/// Used for thresholds and noise floors. Per-layer values matter because honest cross-hardware
/// noise grows with depth: a rounding difference introduced in an early layer is carried by the
/// residual stream and amplified by every later layer, so deep layers of an honest run deviate
/// far more than shallow ones. One global threshold is then either too loose for the shallow
/// layers (an algorithm swap hides in their slack) or too tight for the deep ones (honest
/// provers are flagged).
///
/// Unknown fields are refused when deserializing, so a misspelt `overrides` cannot silently
/// drop the per-layer values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerLayer {
    /// Value of every layer without an override.
    pub default: f64,
    /// Per-layer overrides, by layer index (0 = embeddings).
    #[serde(default)]
    pub overrides: BTreeMap<u32, f64>,
}

impl PerLayer {
    /// The same value for every layer.
    pub fn uniform(value: f64) -> Self {
        PerLayer {
            default: value,
            overrides: BTreeMap::new(),
        }
    }

    /// This value with an override for `layer`.
    pub fn with(mut self, layer: u32, value: f64) -> Self {
        self.overrides.insert(layer, value);
        self
    }

    /// The value for `layer`: its override if any, else the default.
    pub fn get(&self, layer: u32) -> f64 {
        self.overrides.get(&layer).copied().unwrap_or(self.default)
    }

    /// Every value (default first, then overrides by layer) with the layer it applies to
    /// (`None` for the default).
    fn entries(&self) -> impl Iterator<Item = (Option<u32>, f64)> + '_ {
        std::iter::once((None, self.default))
            .chain(self.overrides.iter().map(|(&l, &v)| (Some(l), v)))
    }
}

/// Refuses a threshold that is negative, NaN or infinite.
fn validate_thresholds(thresholds: &PerLayer) -> Result<()> {
    for (layer, t) in thresholds.entries() {
        if !(t.is_finite() && t >= 0.0) {
            return Err(ProtocolError::InvalidParameter(format!(
                "{} must be finite and >= 0, got {t}",
                entry_name("threshold", layer)
            )));
        }
    }
    Ok(())
}

/// Describes which layer a [`PerLayer`] entry applies to, for error messages.
fn entry_name(what: &str, layer: Option<u32>) -> String {
    match layer {
        None => format!("default {what}"),
        Some(l) => format!("{what} of layer {l}"),
    }
}

/// A threshold policy: accept a cell of layer `l` when `metric(c, r) ≤ t_l`.
///
/// The comparison is inclusive: a value *equal* to the threshold passes, any value strictly
/// above it fails with [`ToleranceViolation::Exceeded`]. A threshold of 0 therefore means
/// "equal values" (equal as numbers: `-0.0` and `0.0` pass, unlike [`TolerancePolicy::Exact`]).
///
/// The thresholds are per layer (see [`PerLayer`] for why that matters: honest noise grows with
/// depth); [`calibrate`] derives them from honest samples. For [`Metric::NoiseScore`] the
/// per-layer noise floors `f_l` are required; for the other metrics they are optional and, when
/// given, only fill in [`Deviation::noise_score`] for reporting. Unknown fields are refused
/// when deserializing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdPolicy {
    /// The metric compared with the thresholds.
    pub metric: Metric,
    /// Threshold `t_l ≥ 0` per layer.
    pub thresholds: PerLayer,
    /// Honest noise floor `f_l > 0` per layer (required for [`Metric::NoiseScore`]).
    #[serde(default)]
    pub noise_floors: Option<PerLayer>,
}

impl ThresholdPolicy {
    /// A policy on `metric` with the given thresholds and no noise floors.
    pub fn new(metric: Metric, thresholds: PerLayer) -> Self {
        ThresholdPolicy {
            metric,
            thresholds,
            noise_floors: None,
        }
    }

    /// A [`Metric::NoiseScore`] policy: thresholds in multiples of each layer's noise floor.
    pub fn noise_score(thresholds: PerLayer, noise_floors: PerLayer) -> Self {
        ThresholdPolicy {
            metric: Metric::NoiseScore,
            thresholds,
            noise_floors: Some(noise_floors),
        }
    }

    /// Refuses ([`ProtocolError::InvalidParameter`]) a threshold that is negative, NaN or
    /// infinite, a noise floor that is not finite and strictly positive, and a
    /// [`Metric::NoiseScore`] policy without noise floors.
    pub fn validate(&self) -> Result<()> {
        validate_thresholds(&self.thresholds)?;
        match &self.noise_floors {
            None if self.metric == Metric::NoiseScore => {
                return Err(ProtocolError::InvalidParameter(
                    "the noise_score metric needs per-layer noise floors".into(),
                ));
            }
            None => {}
            Some(floors) => {
                for (layer, f) in floors.entries() {
                    if !(f.is_finite() && f > 0.0) {
                        return Err(ProtocolError::InvalidParameter(format!(
                            "{} must be finite and > 0, got {f}",
                            entry_name("noise floor", layer)
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Judges decoded values of a cell of `layer`: [`Deviation::between`], then
    /// `metric ≤ t_layer`. Assumes the policy is valid ([`ThresholdPolicy::validate`]); on an
    /// invalid one it fails closed (a NaN or negative threshold rejects every cell).
    pub fn evaluate(
        &self,
        layer: u32,
        claimed: &[f32],
        recomputed: &[f32],
    ) -> std::result::Result<Deviation, ToleranceViolation> {
        let floor = self.noise_floors.as_ref().map(|f| f.get(layer));
        let deviation = Deviation::between(claimed, recomputed, floor)?;
        let threshold = self.thresholds.get(layer);
        // Without a floor the noise score is unknown: fail closed (validate refuses this).
        let value = deviation.get(self.metric).unwrap_or(f64::MAX);
        // Inclusive: equal passes. Written so that a NaN threshold rejects too.
        let within = value <= threshold;
        if !within {
            return Err(ToleranceViolation::Exceeded {
                metric: self.metric,
                value,
                threshold,
            });
        }
        Ok(deviation)
    }

    /// Measures this policy's false-positive rate on held-out honest samples: see
    /// [`measure_fpr`]. The samples are values of this policy's metric.
    pub fn measure_fpr(
        &self,
        samples: &BTreeMap<u32, Vec<f64>>,
        confidence: f64,
    ) -> Result<FprReport> {
        measure_fpr(&self.thresholds, samples, confidence)
    }
}

/// How a verifier compares an opened cell with its recomputation.
///
/// * [`TolerancePolicy::Exact`]: bitwise equality of the raw bytes, for a verifier on the
///   prover's exact setup (inference is bitwise reproducible within one setup). No decoding:
///   `-0.0` and `0.0` differ, and so does any single flipped bit.
/// * [`TolerancePolicy::Threshold`]: a metric at most a per-layer threshold, for cross-hardware
///   verification. Thresholds must be per layer because honest noise grows with depth (see
///   [`PerLayer`]).
///
/// In both modes NaN and infinities are rejected before anything is compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TolerancePolicy {
    /// Bitwise equality of the opened and the recomputed bytes.
    Exact,
    /// A metric at most a per-layer threshold.
    Threshold(ThresholdPolicy),
}

impl TolerancePolicy {
    /// Refuses invalid threshold policies (see [`ThresholdPolicy::validate`]); `Exact` is always
    /// valid.
    pub fn validate(&self) -> Result<()> {
        match self {
            TolerancePolicy::Exact => Ok(()),
            TolerancePolicy::Threshold(p) => p.validate(),
        }
    }

    /// Checks one cell of `layer`: `claimed` are the element bytes the prover opened,
    /// `recomputed` the element bytes the verifier computed, both little-endian `dtype`.
    ///
    /// The outer `Result` is the verifier's own failure ([`ProtocolError::InvalidParameter`]):
    /// an invalid policy (checked with [`TolerancePolicy::validate`] on every call) or
    /// recomputed bytes that are not a whole number of elements. The inner `Result` is the
    /// judgement of the prover: `Ok(deviation)` accepts the cell (`Deviation::ZERO` in exact
    /// mode), `Err(violation)` rejects it. The checks run in this order:
    ///
    /// 1. `claimed.len() == recomputed.len()` in bytes, else
    ///    [`ToleranceViolation::LengthMismatch`] (byte lengths);
    /// 2. every element finite, claimed side first, else [`ToleranceViolation::NonFinite`]
    ///    with the element index (judged on the bits, in both modes);
    /// 3. exact mode: bytes equal, else [`ToleranceViolation::Mismatch`] with the first
    ///    differing element; threshold mode: decode, compute the [`Deviation`], and require
    ///    `metric ≤ t_layer`, else [`ToleranceViolation::Exceeded`].
    pub fn check(
        &self,
        layer: u32,
        dtype: Dtype,
        claimed: &[u8],
        recomputed: &[u8],
    ) -> Result<std::result::Result<Deviation, ToleranceViolation>> {
        self.validate()?;
        let size = dtype.size();
        if !recomputed.len().is_multiple_of(size) {
            return Err(ProtocolError::InvalidParameter(format!(
                "recomputed cell has {} bytes, not a whole number of {dtype} elements",
                recomputed.len()
            )));
        }
        if claimed.len() != recomputed.len() {
            return Ok(Err(ToleranceViolation::LengthMismatch {
                claimed: claimed.len() as u64,
                recomputed: recomputed.len() as u64,
            }));
        }
        for (side, bytes) in [(Side::Claimed, claimed), (Side::Recomputed, recomputed)] {
            if let Some(index) = first_non_finite_bytes(dtype, bytes) {
                return Ok(Err(ToleranceViolation::NonFinite {
                    side,
                    index: index as u64,
                }));
            }
        }
        match self {
            TolerancePolicy::Exact => {
                let differing = claimed
                    .chunks_exact(size)
                    .zip(recomputed.chunks_exact(size))
                    .position(|(c, r)| c != r);
                Ok(match differing {
                    Some(index) => Err(ToleranceViolation::Mismatch {
                        index: index as u64,
                    }),
                    None => Ok(Deviation::ZERO),
                })
            }
            TolerancePolicy::Threshold(p) => {
                let c = decode_values(dtype, claimed)?;
                let r = decode_values(dtype, recomputed)?;
                Ok(p.evaluate(layer, &c, &r))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Calibration
// ---------------------------------------------------------------------------------------------

/// Parameters of [`calibrate`] (unknown fields are refused when deserializing).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationConfig {
    /// Target false-positive rate per checked cell, `α ∈ (0, 1)`.
    pub alpha: f64,
    /// Multiplicative safety margin `s ≥ 1` applied to the order statistic (1 = none).
    pub margin: f64,
    /// Confidence level `γ ∈ (0, 1)` of the Clopper–Pearson bounds reported (e.g. 0.95).
    pub confidence: f64,
}

impl Default for CalibrationConfig {
    /// `α = 1e-3`, no margin (`s = 1`), `γ = 0.95`.
    fn default() -> Self {
        CalibrationConfig {
            alpha: 1e-3,
            margin: 1.0,
            confidence: 0.95,
        }
    }
}

impl CalibrationConfig {
    /// Refuses `α ∉ (0, 1)`, `s < 1` or non-finite, and `γ ∉ (0, 1)`.
    pub fn validate(&self) -> Result<()> {
        check_open_unit("target false-positive rate alpha", self.alpha)?;
        check_open_unit("confidence", self.confidence)?;
        if !(self.margin.is_finite() && self.margin >= 1.0) {
            return Err(ProtocolError::InvalidParameter(format!(
                "safety margin must be finite and >= 1, got {}",
                self.margin
            )));
        }
        Ok(())
    }
}

fn check_open_unit(what: &str, x: f64) -> Result<()> {
    if x > 0.0 && x < 1.0 {
        Ok(())
    } else {
        Err(ProtocolError::InvalidParameter(format!(
            "{what} must be in (0, 1), got {x}"
        )))
    }
}

/// An estimated false-positive rate: `k` exceedances among `n` honest samples, with one-sided
/// Clopper–Pearson bounds at confidence `γ`.
///
/// `upper` is the exact one-sided upper bound: the smallest `p` with `P(Bin(n, p) ≤ k) ≤ 1 − γ`,
/// i.e. the `γ`-quantile of `Beta(k + 1, n − k)` (1 when `k = n`). `lower` is the one-sided lower
/// bound, the `(1 − γ)`-quantile of `Beta(k, n − k + 1)` (0 when `k = 0`). Each holds with
/// probability at least `γ`; together they form a two-sided interval of level `2γ − 1`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FprEstimate {
    /// Samples strictly above their threshold, `k`.
    pub exceedances: u64,
    /// Samples, `n ≥ 1`.
    pub samples: u64,
    /// `k / n`.
    pub rate: f64,
    /// One-sided Clopper–Pearson lower bound at `confidence`.
    pub lower: f64,
    /// One-sided Clopper–Pearson upper bound at `confidence`.
    pub upper: f64,
    /// The confidence level `γ` of both bounds.
    pub confidence: f64,
}

impl FprEstimate {
    /// The estimate for `k` exceedances among `n` samples at confidence `γ`; refuses `n = 0`,
    /// `k > n` and `γ ∉ (0, 1)`.
    pub fn new(exceedances: u64, samples: u64, confidence: f64) -> Result<Self> {
        Ok(FprEstimate {
            exceedances,
            samples,
            rate: exceedances as f64 / samples as f64,
            lower: clopper_pearson_lower(exceedances, samples, confidence)?,
            upper: clopper_pearson_upper(exceedances, samples, confidence)?,
            confidence,
        })
    }
}

/// Calibration of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerCalibration {
    /// 1-based rank `ρ = n − ⌊α n⌋` of the order statistic used.
    pub rank: u64,
    /// The order statistic `x_(ρ)` (the samples sorted ascending).
    pub order_statistic: f64,
    /// The threshold `t_l = s · x_(ρ)`.
    pub threshold: f64,
    /// False-positive rate of `t_l` on the calibration samples themselves (in-sample: at most
    /// `α` by construction, and optimistic; measure held-out samples with [`measure_fpr`]).
    pub fpr: FprEstimate,
}

/// Per-layer thresholds calibrated on honest samples, with their false-positive estimates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The parameters used.
    pub config: CalibrationConfig,
    /// Per calibrated layer.
    pub layers: BTreeMap<u32, LayerCalibration>,
    /// All layers' samples pooled: `Σ k_l` exceedances among `Σ n_l` samples. This is the
    /// false-positive rate per checked cell when checked cells fall on the layers in the same
    /// proportions as the samples; each layer's own rate is in [`Calibration::layers`].
    pub overall: FprEstimate,
}

impl Calibration {
    /// The calibrated thresholds as a [`PerLayer`]: an override per calibrated layer, and as
    /// default (for layers without samples) the largest calibrated threshold, the loosest one.
    /// Replace the default if uncalibrated layers may be noisier than every calibrated one.
    pub fn thresholds(&self) -> PerLayer {
        let overrides: BTreeMap<u32, f64> =
            self.layers.iter().map(|(&l, c)| (l, c.threshold)).collect();
        let default = overrides.values().copied().fold(0.0, f64::max);
        PerLayer { default, overrides }
    }

    /// A validated threshold policy on `metric` (the metric the samples were values of) with
    /// these thresholds.
    pub fn policy(
        &self,
        metric: Metric,
        noise_floors: Option<PerLayer>,
    ) -> Result<TolerancePolicy> {
        let policy = ThresholdPolicy {
            metric,
            thresholds: self.thresholds(),
            noise_floors,
        };
        policy.validate()?;
        Ok(TolerancePolicy::Threshold(policy))
    }
}

/// Per-layer and pooled false-positive rates of thresholds on honest samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FprReport {
    /// Per layer that has samples.
    pub layers: BTreeMap<u32, FprEstimate>,
    /// All samples pooled.
    pub overall: FprEstimate,
}

/// Refuses an empty sample map, a layer without samples, and a sample that is NaN, infinite or
/// negative (deviation metrics are non-negative).
fn validate_samples(samples: &BTreeMap<u32, Vec<f64>>) -> Result<()> {
    if samples.is_empty() {
        return Err(ProtocolError::InvalidParameter(
            "no honest samples (empty layer map)".into(),
        ));
    }
    for (layer, xs) in samples {
        if xs.is_empty() {
            return Err(ProtocolError::InvalidParameter(format!(
                "layer {layer} has no honest samples"
            )));
        }
        if let Some(x) = xs.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
            return Err(ProtocolError::InvalidParameter(format!(
                "layer {layer} has an invalid sample {x} (samples must be finite and >= 0)"
            )));
        }
    }
    Ok(())
}

/// `⌊α n⌋` computed exactly for the `f64` value `α` (`n < 2^53`): the product `α·n` is split
/// into its rounded value `p` and the exact rounding error `e = α·n − p` (one fused
/// multiply-add), so a product that rounds *up* to an integer is not mistaken for it.
fn floor_alpha_n(alpha: f64, n: u64) -> u64 {
    let nf = n as f64;
    let p = alpha * nf;
    let e = alpha.mul_add(nf, -p);
    let mut m = p.floor();
    if m == p && e < 0.0 {
        m -= 1.0;
    }
    m.max(0.0) as u64
}

/// Calibrates per-layer thresholds on honest deviation samples for a target false-positive
/// rate `α` per checked cell.
///
/// `samples[l]` holds the values, on honest runs on *other* hardware than the verifier's, of the
/// metric the policy will use, for cells of layer `l` (for [`Metric::NoiseScore`], already
/// divided by the floors the policy will use). For each layer with `n` samples sorted ascending,
/// `x_(1) ≤ … ≤ x_(n)`, let `m = ⌊α n⌋` and the rank `ρ = n − m = ⌈(1 − α) n⌉`; the threshold is
///
/// `t_l = s · x_(ρ)`,
///
/// with the safety margin `s ≥ 1`. At most `m` samples lie strictly above `x_(ρ)` (ties can make
/// it fewer), and `s ≥ 1` only lowers that count, so the empirical exceedance on the calibration
/// samples is at most `m / n ≤ α` (with `≤`-passes semantics). When `n < 1/α`, `m = 0` and the
/// threshold is the sample maximum. Honest samples that are all 0 (bitwise-identical hardware)
/// give `t_l = 0`, which accepts only equal values.
///
/// Reported per layer and pooled: the in-sample exceedance count and rate with Clopper–Pearson
/// bounds at `config.confidence` ([`FprEstimate`]). The upper bound shows whether `n` suffices:
/// with no exceedances it is `1 − (1 − γ)^{1/n}`, so it is below `α` only for
/// `n > ln(1/(1 − γ)) / α` roughly (about 3,000 samples for `α = 1e-3`, `γ = 0.95`).
///
/// For the rate the thresholds will actually have, measure fresh honest samples with
/// [`measure_fpr`]: for continuous noise the true exceedance probability of `x_(ρ)` is
/// distributed as `Beta(m + 1, n − m)`, of mean `(m + 1)/(n + 1)`, slightly above `m / n`.
///
/// Errors ([`ProtocolError::InvalidParameter`]): invalid `config`
/// ([`CalibrationConfig::validate`]), an empty map, a layer without samples, a NaN, infinite or
/// negative sample, or more than `2^53` samples in a layer.
pub fn calibrate(
    samples: &BTreeMap<u32, Vec<f64>>,
    config: &CalibrationConfig,
) -> Result<Calibration> {
    config.validate()?;
    validate_samples(samples)?;
    let mut layers = BTreeMap::new();
    let (mut total_k, mut total_n) = (0u64, 0u64);
    for (&layer, xs) in samples {
        let n = xs.len() as u64;
        if n > 1 << 53 {
            return Err(ProtocolError::InvalidParameter(format!(
                "layer {layer} has more than 2^53 samples"
            )));
        }
        let mut sorted = xs.clone();
        sorted.sort_by(f64::total_cmp);
        let m = floor_alpha_n(config.alpha, n);
        let rank = n - m; // >= 1 because alpha < 1
        let order_statistic = sorted[(rank - 1) as usize];
        let threshold = config.margin * order_statistic;
        let k = xs.iter().filter(|&&x| x > threshold).count() as u64;
        total_k += k;
        total_n += n;
        layers.insert(
            layer,
            LayerCalibration {
                rank,
                order_statistic,
                threshold,
                fpr: FprEstimate::new(k, n, config.confidence)?,
            },
        );
    }
    Ok(Calibration {
        config: *config,
        layers,
        overall: FprEstimate::new(total_k, total_n, config.confidence)?,
    })
}

/// Measures the false-positive rate of `thresholds` on held-out honest samples: per layer `l`,
/// `k_l = #{x ∈ samples[l] : x > t_l}` (a value equal to the threshold passes) among
/// `n_l = |samples[l]|`, with the same Clopper–Pearson bounds as [`calibrate`] at `confidence`,
/// and all layers pooled. Layers without an override use the default threshold.
///
/// The samples must be values of the policy's metric on honest cells not used for calibration.
/// Errors ([`ProtocolError::InvalidParameter`]): as in [`calibrate`] for the samples, a
/// threshold that is negative, NaN or infinite, and `confidence ∉ (0, 1)`.
pub fn measure_fpr(
    thresholds: &PerLayer,
    samples: &BTreeMap<u32, Vec<f64>>,
    confidence: f64,
) -> Result<FprReport> {
    check_open_unit("confidence", confidence)?;
    validate_thresholds(thresholds)?;
    validate_samples(samples)?;
    let mut layers = BTreeMap::new();
    let (mut total_k, mut total_n) = (0u64, 0u64);
    for (&layer, xs) in samples {
        let t = thresholds.get(layer);
        let k = xs.iter().filter(|&&x| x > t).count() as u64;
        let n = xs.len() as u64;
        total_k += k;
        total_n += n;
        layers.insert(layer, FprEstimate::new(k, n, confidence)?);
    }
    Ok(FprReport {
        layers,
        overall: FprEstimate::new(total_k, total_n, confidence)?,
    })
}

/// Per-layer noise floors `f_l` for [`Metric::NoiseScore`]: the median of each layer's honest
/// relative-L2 samples (for even `n`, the mean of the two middle values). The default, for
/// layers without samples, is the largest median (the most lenient floor).
///
/// Refuses what [`calibrate`] refuses, and a median of 0: a layer whose honest runs are mostly
/// bitwise identical has no noise floor; check it with [`Metric::RelL2`] and threshold 0, or
/// [`TolerancePolicy::Exact`].
pub fn noise_floors_from_medians(rel_l2_samples: &BTreeMap<u32, Vec<f64>>) -> Result<PerLayer> {
    validate_samples(rel_l2_samples)?;
    let mut overrides = BTreeMap::new();
    for (&layer, xs) in rel_l2_samples {
        let mut sorted = xs.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
        };
        if median <= 0.0 {
            return Err(ProtocolError::InvalidParameter(format!(
                "layer {layer}: median honest relative L2 is 0, no noise floor (use exact or a \
                 rel_l2 threshold of 0)"
            )));
        }
        overrides.insert(layer, median);
    }
    let default = overrides.values().copied().fold(0.0, f64::max);
    Ok(PerLayer { default, overrides })
}

// ---------------------------------------------------------------------------------------------
// Clopper–Pearson bounds
// ---------------------------------------------------------------------------------------------

fn check_binomial(k: u64, n: u64, confidence: f64) -> Result<()> {
    if n == 0 {
        return Err(ProtocolError::InvalidParameter(
            "no samples (n = 0) for a confidence bound".into(),
        ));
    }
    if k > n {
        return Err(ProtocolError::InvalidParameter(format!(
            "{k} exceedances among only {n} samples"
        )));
    }
    check_open_unit("confidence", confidence)
}

/// One-sided Clopper–Pearson upper bound at confidence `γ` for a binomial proportion with `k`
/// successes in `n` trials: the `γ`-quantile of `Beta(k + 1, n − k)`, equivalently the `p`
/// solving `P(Bin(n, p) ≤ k) = 1 − γ`; 1 when `k = n`. For `k = 0` it equals
/// `1 − (1 − γ)^{1/n}`. Computed by bisection on [`regularized_incomplete_beta`] to full `f64`
/// resolution.
pub fn clopper_pearson_upper(k: u64, n: u64, confidence: f64) -> Result<f64> {
    check_binomial(k, n, confidence)?;
    if k == n {
        return Ok(1.0);
    }
    Ok(beta_quantile((k + 1) as f64, (n - k) as f64, confidence))
}

/// One-sided Clopper–Pearson lower bound at confidence `γ`: the `(1 − γ)`-quantile of
/// `Beta(k, n − k + 1)`, equivalently the `p` solving `P(Bin(n, p) ≥ k) = 1 − γ`; 0 when
/// `k = 0`.
pub fn clopper_pearson_lower(k: u64, n: u64, confidence: f64) -> Result<f64> {
    check_binomial(k, n, confidence)?;
    if k == 0 {
        return Ok(0.0);
    }
    Ok(beta_quantile(
        k as f64,
        (n - k + 1) as f64,
        1.0 - confidence,
    ))
}

/// The `q`-quantile of `Beta(a, b)`: the `x ∈ [0, 1]` with `I_x(a, b) = q`, by bisection (the
/// regularized incomplete beta is increasing in `x`) until the bracket cannot shrink further.
fn beta_quantile(a: f64, b: f64, q: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..2000 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if regularized_incomplete_beta(a, b, mid) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Natural log of the gamma function for `x > 0`: Lanczos approximation (`g = 671/128`,
/// 14 terms, as in Numerical Recipes, 3rd ed., §6.1), relative error about `1e-15`.
#[allow(clippy::excessive_precision)] // the published coefficients, digit for digit
pub(crate) fn ln_gamma(x: f64) -> f64 {
    const COF: [f64; 14] = [
        57.156_235_665_862_923_5,
        -59.597_960_355_475_491_2,
        14.136_097_974_741_747_1,
        -0.491_913_816_097_620_199,
        0.339_946_499_848_118_887e-4,
        0.465_236_289_270_485_756e-4,
        -0.983_744_753_048_795_646e-4,
        0.158_088_703_224_912_494e-3,
        -0.210_264_441_724_104_883e-3,
        0.217_439_618_115_212_643e-3,
        -0.164_318_106_536_763_890e-3,
        0.844_182_239_838_527_433e-4,
        -0.261_908_384_015_814_087e-4,
        0.368_991_826_595_316_234e-5,
    ];
    let mut y = x;
    let tmp = x + 5.242_187_5;
    let tmp = (x + 0.5) * tmp.ln() - tmp;
    let mut ser = 0.999_999_999_999_997_092;
    for c in COF {
        y += 1.0;
        ser += c / y;
    }
    tmp + (2.506_628_274_631_000_5 * ser / x).ln()
}

/// Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes,
/// 3rd ed., §6.4), converging fast for `x < (a + 1)/(a + b + 2)`.
fn beta_continued_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-16;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0f64;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..1_000_000u32 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function
/// `I_x(a, b) = (1 / B(a, b)) ∫_0^x t^{a−1} (1 − t)^{b−1} dt` for `a, b > 0`, `x ∈ [0, 1]`
/// (0 below, 1 above that range): the CDF of `Beta(a, b)` at `x`. For integer parameters,
/// `I_p(k + 1, n − k) = P(Bin(n, p) ≥ k + 1)`. Computed with the continued fraction on
/// whichever of `I_x(a, b)` and `1 − I_{1−x}(b, a)` converges fast; relative accuracy about
/// `1e-12` or better for parameters up to about `10^6`.
pub fn regularized_incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = a * x.ln() + b * (-x).ln_1p() - (ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b));
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_continued_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_continued_fraction(b, a, 1.0 - x) / b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from Python: `python3 -c "import math; print(repr(math.lgamma(x)))"`.
    #[test]
    fn ln_gamma_matches_libm() {
        for (x, want) in [
            (0.5f64, 0.5723649429247004f64),
            (1.0, 0.0),
            (2.0, 0.0),
            (3.5, 1.2009736023470738),
            (10.0, 12.801827480081467),
            (101.0, 363.73937555556347),
            (10001.0, 82108.92783681434),
            (1e6, 12815504.569147611),
        ] {
            let got = ln_gamma(x);
            let tol = 1e-14 * want.abs().max(1.0);
            assert!(
                (got - want).abs() <= tol,
                "ln_gamma({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn floor_alpha_n_is_exact() {
        assert_eq!(floor_alpha_n(0.01, 10_000), 100);
        assert_eq!(floor_alpha_n(0.29, 100), 28); // 0.29 as f64 is below 0.29
        assert_eq!(floor_alpha_n(0.5, 3), 1);
        assert_eq!(floor_alpha_n(1e-3, 999), 0);
        assert_eq!(floor_alpha_n(0.999_999, 1), 0);
    }

    proptest::proptest! {
        /// The block scan of `first_non_finite_bytes` finds exactly the first element a decode
        /// and an element-by-element test find, for every dtype, at any length (partial blocks,
        /// a trailing partial element) and with non-finite values (NaN, ±infinity, in any
        /// payload) anywhere or nowhere.
        #[test]
        fn the_block_scan_finds_the_first_non_finite_element(
            dtype in proptest::sample::select(vec![Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::I8]),
            mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..9000),
            marks in proptest::collection::vec((proptest::prelude::any::<u16>(), 0u8..3), 0..3),
        ) {
            let size = dtype.size();
            let n = bytes.len() / size;
            // finite values everywhere (exponent below all ones), then the marked elements
            // non-finite
            for e in bytes.chunks_exact_mut(size) {
                match dtype {
                    Dtype::F32 => e[3] &= 0xbf,
                    Dtype::F16 => e[1] &= 0xbb,
                    Dtype::Bf16 => e[1] &= 0xbf,
                    Dtype::I8 => {}
                }
            }
            for &(at, kind) in &marks {
                if n == 0 {
                    break;
                }
                let i = usize::from(at) % n;
                let e = &mut bytes[i * size..(i + 1) * size];
                match dtype {
                    Dtype::F32 => {
                        e[3] |= 0x7f;
                        e[2] |= 0x80;
                        if kind == 0 {
                            e[2] &= 0x80;
                            e[1] = 0;
                            e[0] = 0;
                        } else {
                            e[0] |= 1;
                        }
                    }
                    Dtype::F16 => {
                        e[1] |= 0x7c;
                        if kind == 0 {
                            e[1] &= 0xfc;
                            e[0] = 0;
                        } else {
                            e[0] |= 1;
                        }
                    }
                    Dtype::Bf16 => {
                        e[1] |= 0x7f;
                        e[0] |= 0x80;
                        if kind == 0 {
                            e[0] = 0x80;
                        } else {
                            e[0] |= 1;
                        }
                    }
                    Dtype::I8 => {}
                }
            }
            let want = bytes
                .chunks_exact(size)
                .position(|b| !element_is_finite(dtype, b));
            proptest::prop_assert_eq!(first_non_finite_bytes(dtype, &bytes), want);
            if bytes.len().is_multiple_of(size) {
                let decoded = decode_values(dtype, &bytes).unwrap();
                let by_value = decoded.iter().position(|v| !v.is_finite());
                proptest::prop_assert_eq!(want, by_value);
            }
        }
    }
}
