//! Scenario files (TOML): what to simulate.
//!
//! ```toml
//! name = "default"
//! model = "tiny"            # a preset (tiny, small) or a Llama checkpoint directory
//! seed = 1
//! trials = 200              # protocol trials per adversary
//! reference = "f32/attn=eager"   # the setup every prover claims
//!
//! [prompts]
//! count = 4                 # prompts in the pool the trials draw from
//! tokens = 16               # prompt length (with `text`: the longest tokenization accepted)
//! output = 8                # generated tokens
//! # text = ["The first prompt.", "The second."]  # optional: the pool as text, tokenized by
//! #                         # the checkpoint's tokenizer.json (count = the number of texts);
//! #                         # statements bind each text (specs/protocol.md §3.4)
//! # chat = false            # with text: wrap each in the checkpoint's chat template
//!
//! [protocol]
//! chunk = 8                 # token rows per cell
//! samples = 4               # k, cells challenged per round
//! mode = "interactive"      # or "non-interactive"
//! strategy = "uniform"      # or "stratified", "cost-weighted"
//! pow_bits = 0
//! rounds = 1
//! layer_check = "recompute" # or "freivalds", "both": provers commit sub-layer values and the
//!                           # verifier checks layers >= 1 with a secret Freivalds key
//!                           # (specs/protocol.md §11.4; a decoder only)
//! sublayer_tolerance = 0.0  # freivalds/both: relative L-inf tolerance of the nonlinear parts
//! freivalds_repetitions = 2 # freivalds/both: secret vectors per weight matrix (1 to 64)
//! freivalds_bound_scale = 1.0 # freivalds/both: the bound as s·B, s in (0, 1]; 1 rigorous,
//!                           # less from `veritrace keygen --calibrate-bound N`
//! freivalds_bounds = "scale" # or "calibrated": a scale per linear map, calibrated on the
//!                           # [tolerance] section's honest runs (its method, target_fpr,
//!                           # confidence, margin) and tested on its held-out runs
//! attention_heads = 2       # freivalds/both: query heads whose attention each cell's check
//!                           # recomputes (sampled from the key's secret; default: all)
//! context_rows = 16         # freivalds/both: earlier rows whose k/v provenance each cell's
//!                           # check covers (sampled; default: all; specs/freivalds.md §7)
//! # context_chunks = 1      # freivalds only, with attention_heads and without context_rows:
//!                           # drawn openings (specs/protocol.md §4.4): provers commit by head,
//!                           # each challenge draws attention_heads query heads and
//!                           # context_chunks earlier chunks per challenged cell (a seed from
//!                           # the verifier's randomness, sent with the challenge), the opening
//!                           # holds only those, and the check covers exactly them
//!
//! [tolerance]
//! metric = "rel_l2"         # or "max_abs"
//! target_fpr = 0.01         # per session, on honest other-hardware provers
//! confidence = 0.95         # joint confidence of the per-layer bounds (default 0.95)
//! margin = 1.0              # safety factor on the order statistic (default 1: none)
//! method = "order-statistic" # or "exponential-tail": a fitted tail, fewer runs (§12.3)
//! exact = false             # true: bitwise comparison (identical hardware), no calibration
//! honest = ["f32/attn=eager/splitk=2", "f32/attn=eager/order=decode"]
//! calibration_prompts = 2000  # independent honest runs (fresh prompts, variations in
//!                             # rotation); too few for the target is refused with the count
//!                             # needed (specs/protocol.md §12.3)
//! holdout_prompts = 500       # more honest runs, held out to measure the session rate
//!
//! [[adversary]]
//! kind = "honest"
//! [[adversary]]
//! kind = "setup"            # runs another setup and claims the reference
//! setup = "f32/attn=eager/quant=int4-g32"
//! name = "int4"             # optional: the label in reports (default: kind and parameters)
//! # prompts = 3200          # optional: this adversary's prompt pool (its independent runs)
//! # trials = 16000          # optional: this adversary's trials
//! ```
//!
//! Adversary kinds, each with exactly the keys it takes beside `kind` and the optional `name`
//! (any other key is refused; [`crate::adversary`] implements them): `honest`;
//! `other-hardware` (`setup` differing only in reduction order); `setup` (a cheaper `setup`:
//! quantization, attention, precision, skipped or reused layer); `model-swap` (a cheaper model
//! of the same shape: a quarter of the MLP width, another seed); `partial` (`setup` on a
//! `fraction` of the cells of layers ≥ 1, honest elsewhere); `equivocation` (commits the honest
//! trace, opens a `fraction` of cells altered); `late-commitment` (tries to be challenged
//! before committing, and to commit twice); `grinding` (`partial` in non-interactive mode,
//! trying `2^budget_bits` proof-of-work nonces for a challenge that misses its bad cells, with
//! optional `pow_bits` of proof of work, default the protocol's); `corridor` (keeps every cell
//! within the calibrated thresholds and steers the first generated token: optional `budget`,
//! the fraction of each threshold used, default 0.99, and `directions`, random candidate
//! directions beside the margin gradient, default 4; a decoder only); `weight-perturbation`
//! (one weight `matrix`, `q` `k` `v` `o` `gate` `up` or `down`, of `layer` moved a `factor` of
//! the way to its `quant` quantization, e.g. `int8-channel`, everything else honest; each trial's
//! verifier draws its own Freivalds key, and with `layer_check = "freivalds"` the prediction is
//! the stated false-accept probability; a decoder only); `head-cheat` (the attention output of
//! the first `heads` query heads one ulp off in every cell of layers >= 1, everything else
//! honest: a probe of the sampled attention check, caught per challenged cell only where a
//! sampled head is one of them; needs `layer_check` `freivalds` or `both`; a decoder only).
//!
//! Every count and size has a documented upper bound (the `MAX_*` constants of this module),
//! refused at validation with a [`SimError::Scenario`] naming the field, the value and the
//! limit; the bounds that depend on the model (cells per trace, honest cells kept) are checked
//! by [`crate::Simulation::new`] once it is loaded, and the end-to-end trial count by
//! [`crate::Simulation::run_with`].

use serde::{Deserialize, Deserializer, Serialize};
use veritrace_model::{Device, Setup};
use veritrace_protocol::calibration::CalibrationMethod;
use veritrace_protocol::tolerance::Metric;
use veritrace_protocol::{LayerCheck, Mode, SamplingStrategy};

pub use crate::adversary::{Adversary, AdversaryKind};
use crate::SimError;

/// The embedded default scenario (`simulations/default.toml`).
pub const DEFAULT_SCENARIO: &str = include_str!("../../../simulations/default.toml");

/// Largest accepted trial count per adversary (`trials`, or an adversary's `trials`): 10^8
/// fast trials take minutes and, aggregated as they run, constant memory; more would only
/// narrow an interval already far below any other error of the simulation.
pub const MAX_TRIALS: u64 = 100_000_000;

/// Largest trial count per adversary that runs end to end (every trial a full session with
/// the real verifier, milliseconds each): 10^6 sessions are hours on two cores already; larger
/// counts belong to fast mode ([`crate::fast`]). Checked when a simulation runs, since the
/// scenario does not say which engine runs it.
pub const MAX_END_TO_END_TRIALS: u64 = 1_000_000;

/// Largest accepted prompt pool (`prompts.count`, or an adversary's `prompts`): every prompt
/// of the pool is one prover run held in memory (its trace) for the adversary's whole run.
pub const MAX_PROMPTS: u32 = 10_000;

/// Largest accepted count of calibration or held-out honest runs (each of
/// `tolerance.calibration_prompts` and `tolerance.holdout_prompts`): every run is one
/// inference and its per-cell deviations are kept; 10^6 runs support a session false-positive
/// target near 10^-6 and take hours on the smallest model.
pub const MAX_HONEST_RUNS: u32 = 1_000_000;

/// Largest accepted prompt length (`prompts.tokens`): beyond any supported model's positions.
pub const MAX_PROMPT_TOKENS: u32 = 65_536;

/// Largest accepted count of generated tokens (`prompts.output`): beyond any supported
/// model's positions.
pub const MAX_OUTPUT_TOKENS: u32 = 65_536;

/// Largest accepted cell height (`protocol.chunk`): a cell never has more rows than the
/// longest accepted sequence, prompt and output.
pub const MAX_CHUNK: u32 = MAX_PROMPT_TOKENS + MAX_OUTPUT_TOKENS;

/// Largest accepted `k` (`protocol.samples`, cells challenged per round): every trial draws
/// and checks `k` cells per round, and the verifier recomputes them; 65,536 cells exceed the
/// cells of any trace the simulator runs (larger `k` would only open every cell).
pub const MAX_SAMPLES: u32 = 65_536;

/// Largest accepted round count (`protocol.rounds`): the miss probability falls geometrically
/// per round, and 64 rounds of even one cell exceed any useful confidence.
pub const MAX_ROUNDS: u32 = 64;

/// Largest accepted proof-of-work difficulty (`protocol.pow_bits`, and a grinding adversary's
/// `pow_bits`): the honest prover's expected work doubles per bit, and 2^30 hashes per
/// session are already seconds of work per trial.
pub const MAX_POW_BITS: u8 = 30;

/// Largest accepted grinding budget (a grinding adversary's `budget_bits`): each of its trials
/// tries up to `2^budget_bits` commitments, and 2^30 already cost minutes per trial.
pub const MAX_BUDGET_BITS: u32 = 30;

/// Largest accepted count of random directions a corridor adversary tries beside the margin
/// gradient (`directions`): each is a forward pass per layer and prompt.
pub const MAX_DIRECTIONS: u32 = 64;

/// Largest accepted count of honest setups (`tolerance.honest`): calibration runs rotate
/// through them, and no study needs more variations than this.
pub const MAX_HONEST_SETUPS: usize = 64;

/// Largest accepted count of adversaries (`[[adversary]]` tables): each runs its whole prompt
/// pool and trials in turn; the shipped scenarios have at most 16.
pub const MAX_ADVERSARIES: usize = 256;

/// Largest accepted length in bytes of a label: the scenario's `name` and every adversary's
/// `name` (they appear in reports, table cells and plot legends).
pub const MAX_NAME_BYTES: usize = 256;

/// Largest accepted length in bytes of the `model` value (a preset or a checkpoint directory;
/// the longest path Linux accepts is 4,096 bytes).
pub const MAX_MODEL_BYTES: usize = 4_096;

/// Largest accepted scenario text (TOML) in bytes, checked before parsing and, by
/// [`Scenario::read`], before reading: the longest useful scenario is a pool of texts, and
/// 16 MiB hold thousands of long prompts.
pub const MAX_SCENARIO_BYTES: usize = 16 << 20;

/// Largest count of cells of one prover's trace, `(layers + 1) · ⌈(tokens + output) / chunk⌉`
/// (checked once the model is loaded, [`crate::Simulation::new`]): every cell of every run of
/// the pool is checked and its deviation kept; the shipped scenarios have a few dozen.
pub const MAX_CELLS_PER_TRACE: u64 = 1 << 20;

/// Largest count of honest cells kept by calibration, `(calibration_prompts + holdout_prompts)
/// · cells per trace` (checked once the model is loaded): each is an `f64` deviation kept for
/// the thresholds and the report's ROC curves, 2^25 of them about 256 MiB; the shipped
/// scenarios keep under 10^5.
pub const MAX_HONEST_CELLS: u64 = 1 << 25;

/// A count outside `min..=max` as a typed error naming the field, the value and the limit.
fn out_of_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), SimError> {
    if value < min {
        Err(SimError::Scenario(format!(
            "{field} = {value} is below the minimum {min}"
        )))
    } else if value > max {
        Err(SimError::Scenario(format!(
            "{field} = {value} exceeds the limit {max}"
        )))
    } else {
        Ok(())
    }
}

/// A scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name, used in reports.
    pub name: String,
    /// Model: `tiny`, `small`, or a Llama checkpoint directory.
    pub model: String,
    /// Seed of everything random (prompts, cheated cells, challenges).
    pub seed: u64,
    /// Trials per adversary.
    pub trials: u64,
    /// The setup every prover claims.
    pub reference: Setup,
    /// The prompt pool.
    pub prompts: Prompts,
    /// Protocol parameters.
    pub protocol: ProtocolParams,
    /// Tolerance calibration.
    pub tolerance: ToleranceParams,
    /// The device every prover runs on (`cpu`, `cuda`, `cuda:N`; default `cpu`). With the
    /// verifier on another device, every honest run is an honest other-hardware run and the
    /// tolerance is calibrated on that cross-device noise floor.
    #[serde(default, skip_serializing_if = "is_cpu")]
    pub prover_device: Device,
    /// The device the verifier recomputes cells on (default `cpu`, the reference arithmetic).
    #[serde(default, skip_serializing_if = "is_cpu")]
    pub verifier_device: Device,
    /// The adversaries.
    #[serde(rename = "adversary")]
    pub adversaries: Vec<AdversarySpec>,
}

fn is_cpu(d: &Device) -> bool {
    *d == Device::Cpu
}

/// The prompt pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompts {
    /// Prompts the trials draw from (each prover's trace is computed once per prompt).
    pub count: u32,
    /// Prompt length in tokens (seeded prompts); with `text`, the longest tokenization
    /// accepted.
    pub tokens: u32,
    /// Generated tokens.
    pub output: u32,
    /// The pool as text (optional): prompt `i < count` is `text[i]` through the checkpoint's
    /// tokenizer, bound in its statements; `count` must equal the number of texts. Calibration
    /// and hold-out runs, which need thousands of fresh prompts, stay seeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text: Vec<String>,
    /// With `text`: wrap each text as one user message in the checkpoint's chat template.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chat: bool,
}

/// Protocol parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolParams {
    /// Token rows per cell.
    pub chunk: u32,
    /// Cells challenged per round, `k`.
    pub samples: u32,
    /// Interactive or non-interactive.
    pub mode: Mode,
    /// Sampling strategy.
    #[serde(default)]
    pub strategy: SamplingStrategy,
    /// Proof-of-work bits (non-interactive mode).
    #[serde(default)]
    pub pow_bits: u8,
    /// Rounds.
    #[serde(default = "one")]
    pub rounds: u32,
    /// How the verifier checks challenged cells of layers ≥ 1 (specs/protocol.md §11.4):
    /// `recompute` (the default), `freivalds` or `both`. With `freivalds` or `both` every
    /// prover commits at the sub-layer trace level (each cell's sub-layer values as it computed
    /// them, from its committed inputs), and the verifier holds a Freivalds key built from a
    /// secret derived from the scenario seed, which no adversary reads. Llama-style decoders
    /// only.
    #[serde(default, skip_serializing_if = "is_recompute")]
    pub layer_check: LayerCheck,
    /// With `freivalds` or `both`: the relative L∞ tolerance of the nonlinear parts the
    /// verifier recomputes from the opened sub-layer values (default 0: bitwise).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sublayer_tolerance: f64,
    /// With `freivalds` or `both`: secret vectors per weight matrix in the verifier's key
    /// (1 to 64, default 2).
    #[serde(default = "two", skip_serializing_if = "is_two")]
    pub freivalds_repetitions: u32,
    /// With `freivalds` or `both`: the Freivalds bound as a multiple `s` of the rigorous
    /// rounding bound (default 1; a calibrated `s < 1` from honest runs, `veritrace keygen
    /// --calibrate-bound`, catches deviations `1/s` times smaller).
    #[serde(default = "unit_scale", skip_serializing_if = "is_unit")]
    pub freivalds_bound_scale: f64,
    /// With `freivalds` or `both`: `scale` (the default: `freivalds_bound_scale` for every
    /// map) or `calibrated`: one scale per linear map of each layer, calibrated on the
    /// `[tolerance]` section's honest calibration runs with its method, target rate,
    /// confidence and margin, and tested on its held-out runs
    /// ([`crate::map_calibration`]; each run draws its own key).
    #[serde(default, skip_serializing_if = "is_single_scale")]
    pub freivalds_bounds: FreivaldsBounds,
    /// With `freivalds` or `both`: the query heads whose attention each challenged cell's
    /// check recomputes and compares, drawn per cell from the verifier's key
    /// ([`veritrace_model::freivalds::AttentionSampling`]; default: every head). With
    /// `context_chunks`: the query heads each challenge draws per challenged cell instead (a
    /// public draw, specs/protocol.md §4.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_heads: Option<u32>,
    /// With `freivalds` or `both`: the rows before each challenged cell whose attention norm
    /// and key and value projections its check covers, drawn per cell (default: every row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_rows: Option<u32>,
    /// With `freivalds` and `attention_heads` (and without `context_rows`): drawn openings
    /// (specs/protocol.md §4.4). Every prover commits its sub-layer values by head
    /// ([`veritrace_protocol::TraceLevel::SubLayerByHead`]), each challenge carries an
    /// attention draw of `attention_heads` query heads and `context_chunks` context chunks
    /// before the cell's own per challenged cell (its seed from the verifier's randomness, as
    /// the cells'), the prover opens only what the draw names and the verifier checks exactly
    /// that, with a key that samples nothing itself. Default: whole openings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_chunks: Option<u32>,
}

impl ProtocolParams {
    /// The verifier's sampled attention check from its key (`attention_heads`,
    /// `context_rows`); with drawn openings (`context_chunks`) the key samples nothing
    /// ([`veritrace_model::freivalds::AttentionSampling::FULL`]): the challenge's public draw
    /// says what the opening holds, and the check covers all of it.
    pub fn attention_sampling(&self) -> veritrace_model::freivalds::AttentionSampling {
        if self.context_chunks.is_some() {
            return veritrace_model::freivalds::AttentionSampling::FULL;
        }
        veritrace_model::freivalds::AttentionSampling {
            heads: self.attention_heads,
            context_rows: self.context_rows,
        }
    }

    /// The attention sample of every challenge with drawn openings (`attention_heads` heads and
    /// `context_chunks` earlier chunks per challenged cell, specs/protocol.md §4.4); `None`
    /// without `context_chunks` (whole openings).
    pub fn attention_sample(&self) -> Option<veritrace_protocol::AttentionSample> {
        let chunks = self.context_chunks?;
        Some(veritrace_protocol::AttentionSample {
            heads: self.attention_heads.unwrap_or(u32::MAX),
            chunks,
        })
    }

    /// What one challenged cell's check covers, for the verifier's cost model
    /// ([`veritrace_model::cost::sampled_verifier_cell_flops`]): the key's sample, or with
    /// drawn openings the drawn heads and the rows of the drawn chunks (`context_chunks`
    /// chunks of `chunk` rows, capped there by the rows before the cell).
    pub fn cost_sampling(&self) -> veritrace_model::freivalds::AttentionSampling {
        match self.context_chunks {
            None => self.attention_sampling(),
            Some(c) => veritrace_model::freivalds::AttentionSampling {
                heads: self.attention_heads,
                context_rows: Some(c.saturating_mul(self.chunk)),
            },
        }
    }
}

/// How the simulated verifier sets its Freivalds bounds (`protocol.freivalds_bounds`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FreivaldsBounds {
    /// One scale for every map: `protocol.freivalds_bound_scale`.
    #[default]
    Scale,
    /// One scale per map from honest runs ([`crate::map_calibration`]).
    Calibrated,
}

fn is_single_scale(x: &FreivaldsBounds) -> bool {
    *x == FreivaldsBounds::Scale
}

fn unit_scale() -> f64 {
    1.0
}

fn is_unit(x: &f64) -> bool {
    *x == 1.0
}

fn one() -> u32 {
    1
}

fn two() -> u32 {
    2
}

fn is_two(x: &u32) -> bool {
    *x == 2
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn is_recompute(x: &LayerCheck) -> bool {
    *x == LayerCheck::Recompute
}

/// Tolerance calibration on honest other-hardware runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToleranceParams {
    /// Deviation metric (`rel_l2` or `max_abs`).
    pub metric: Metric,
    /// `true`: the verifier compares bitwise (re-execution on identical hardware); no
    /// calibration, and the held-out rate counts honest cells that differ at all.
    #[serde(default)]
    pub exact: bool,
    /// Target false-positive rate per session of an honest other-hardware prover.
    pub target_fpr: f64,
    /// Safety factor on the calibrated order statistic (≥ 1; 1 = none, the order statistic
    /// is already an upper confidence bound).
    #[serde(default = "unit")]
    pub margin: f64,
    /// Joint confidence of the per-layer bounds (default 0.95).
    #[serde(default = "confidence95")]
    pub confidence: f64,
    /// How thresholds are obtained: `order-statistic` (distribution-free, the default) or
    /// `exponential-tail` (a fitted tail, checked per layer; specs/protocol.md §12.3).
    #[serde(default)]
    pub method: CalibrationMethod,
    /// Setups that stand in for other hardware (reduction-order changes of the reference).
    pub honest: Vec<Setup>,
    /// Independent honest runs that calibrate the thresholds, each a fresh prompt under one
    /// honest setup (in rotation).
    pub calibration_prompts: u32,
    /// Independent honest runs held out, on which the session false-positive rate is measured.
    pub holdout_prompts: u32,
}

fn unit() -> f64 {
    1.0
}

fn confidence95() -> f64 {
    0.95
}

/// One adversary of a scenario: a `[[adversary]]` table, its `kind` and that kind's
/// parameters side by side, with an optional `name`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdversarySpec {
    /// The adversary: kind and parameters.
    #[serde(flatten)]
    pub adversary: Adversary,
    /// Label in reports (default: kind and parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// This adversary's prompt pool, overriding `prompts.count`: its independent prover runs,
    /// the sample size of its rate (e.g. 3,200 honest runs for a false-positive bound near
    /// 1e-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<u32>,
    /// This adversary's trials, overriding `trials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trials: Option<u64>,
}

impl<'de> Deserialize<'de> for AdversarySpec {
    /// The table's keys other than `name` make the [`Adversary`], tagged by `kind`: a key its
    /// kind does not take is refused by name. Keys set to null (reports written before
    /// adversaries were tagged data listed every parameter, null where unused) are absent.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        use serde_json::Value;
        let mut table = serde_json::Map::<String, Value>::deserialize(d)?;
        table.retain(|_, v| !v.is_null());
        let name = match table.remove("name") {
            None => None,
            Some(Value::String(n)) => Some(n),
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "adversary name: expected a string, found {other}"
                )))
            }
        };
        let count = |key: &str, table: &mut serde_json::Map<String, Value>| match table.remove(key)
        {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                D::Error::custom(format!(
                    "adversary {key}: expected a non-negative integer, found {v}"
                ))
            }),
        };
        let prompts = count("prompts", &mut table)?
            .map(|p| {
                u32::try_from(p)
                    .map_err(|_| D::Error::custom(format!("adversary prompts {p} is too large")))
            })
            .transpose()?;
        let trials = count("trials", &mut table)?;
        let kind = table
            .get("kind")
            .and_then(Value::as_str)
            .map(str::to_string);
        let adversary = Adversary::deserialize(Value::Object(table)).map_err(|e| {
            D::Error::custom(match &kind {
                Some(k) => format!("adversary kind \"{k}\": {e}"),
                None => format!("adversary: {e}"),
            })
        })?;
        Ok(AdversarySpec {
            adversary,
            name,
            prompts,
            trials,
        })
    }
}

impl AdversarySpec {
    /// The report label: the name, or the kind and its parameters.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => self.adversary.label(),
        }
    }

    fn check(&self, reference: &Setup) -> Result<(), SimError> {
        let bad = |m: String| {
            Err(SimError::Scenario(format!(
                "adversary {}: {m}",
                self.label()
            )))
        };
        if let Some(name) = &self.name {
            out_of_range("adversary name bytes", name.len(), 1, MAX_NAME_BYTES)?;
        }
        if let Some(p) = self.prompts {
            out_of_range("prompts", p, 1, MAX_PROMPTS).or_else(|e| bad(e.to_string()))?;
        }
        if let Some(t) = self.trials {
            out_of_range("trials", t, 1, MAX_TRIALS).or_else(|e| bad(e.to_string()))?;
        }
        self.adversary
            .behaviour()
            .check(reference)
            .map_err(|m| SimError::Scenario(format!("adversary {}: {m}", self.label())))
    }
}

impl Scenario {
    /// The prompt pool of adversary `a`: its `prompts`, else `prompts.count`.
    pub fn pool_of(&self, a: &AdversarySpec) -> u32 {
        a.prompts.unwrap_or(self.prompts.count)
    }

    /// The trials of adversary `a`: its `trials`, else the scenario's.
    pub fn trials_of(&self, a: &AdversarySpec) -> u64 {
        a.trials.unwrap_or(self.trials)
    }

    /// The first prompt index after every adversary's pool: calibration prompts start here,
    /// so no calibration run shares a prompt with an adversary's run.
    pub fn pools_end(&self) -> u32 {
        self.adversaries
            .iter()
            .map(|a| self.pool_of(a))
            .fold(self.prompts.count, u32::max)
    }

    /// Parses a scenario from TOML and validates it.
    pub fn from_toml(text: &str) -> Result<Self, SimError> {
        if text.len() > MAX_SCENARIO_BYTES {
            return Err(SimError::Scenario(format!(
                "scenario text of {} bytes exceeds the limit {MAX_SCENARIO_BYTES}",
                text.len()
            )));
        }
        let s: Scenario =
            toml::from_str(text).map_err(|e| SimError::Scenario(format!("TOML: {e}")))?;
        s.validate()?;
        Ok(s)
    }

    /// The embedded default scenario.
    pub fn default_scenario() -> Self {
        Self::from_toml(DEFAULT_SCENARIO).expect("the embedded default scenario is valid")
    }

    /// Reads a scenario file.
    ///
    /// Only a regular file is read, checked before it is opened (a FIFO or a device could block
    /// or never end: [`veritrace_model::files::open_regular`]), and only when it holds at most
    /// [`MAX_SCENARIO_BYTES`]: a larger one is refused before reading.
    pub fn read(path: &std::path::Path) -> Result<Self, SimError> {
        let text = veritrace_model::files::read_text_limited(
            path,
            MAX_SCENARIO_BYTES as u64,
            "a scenario",
            "",
        )
        .map_err(|e| SimError::Io {
            path: path.display().to_string(),
            reason: e.reason(),
        })?;
        Self::from_toml(&text)
    }

    /// Checks sizes and every adversary.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::Scenario(m));
        out_of_range("name bytes", self.name.len(), 0, MAX_NAME_BYTES)?;
        out_of_range("model bytes", self.model.len(), 1, MAX_MODEL_BYTES)?;
        out_of_range("trials", self.trials, 1, MAX_TRIALS)?;
        let p = &self.prompts;
        out_of_range("prompts.count", p.count, 1, MAX_PROMPTS)?;
        out_of_range("prompts.tokens", p.tokens, 1, MAX_PROMPT_TOKENS)?;
        out_of_range("prompts.output", p.output, 0, MAX_OUTPUT_TOKENS)?;
        if p.chat && p.text.is_empty() {
            return bad("prompts: chat = true needs text".into());
        }
        if !p.text.is_empty() {
            if p.text.len() != p.count as usize {
                return bad(format!(
                    "prompts: count {} must equal the number of texts ({})",
                    p.count,
                    p.text.len()
                ));
            }
            if let Some((i, _)) =
                p.text.iter().enumerate().find(|(_, t)| {
                    t.is_empty() || t.len() > veritrace_protocol::MAX_INPUT_TEXT_BYTES
                })
            {
                return bad(format!(
                    "prompts: text {i} must have 1 to {} bytes",
                    veritrace_protocol::MAX_INPUT_TEXT_BYTES
                ));
            }
            if let Some(a) = self
                .adversaries
                .iter()
                .find(|a| a.prompts.is_some_and(|n| n > p.count))
            {
                return bad(format!(
                    "adversary {:?}: its {} prompts exceed the {} texts of the pool",
                    a.label(),
                    a.prompts.unwrap_or(0),
                    p.count
                ));
            }
        }
        let q = &self.protocol;
        out_of_range("protocol.chunk", q.chunk, 1, MAX_CHUNK)?;
        out_of_range("protocol.samples", q.samples, 1, MAX_SAMPLES)?;
        out_of_range("protocol.rounds", q.rounds, 1, MAX_ROUNDS)?;
        out_of_range("protocol.pow_bits", q.pow_bits, 0, MAX_POW_BITS)?;
        out_of_range(
            "protocol.freivalds_repetitions",
            q.freivalds_repetitions,
            1,
            veritrace_model::freivalds::MAX_REPETITIONS,
        )?;
        if !(q.sublayer_tolerance.is_finite() && q.sublayer_tolerance >= 0.0) {
            return bad("protocol.sublayer_tolerance must be finite and >= 0".into());
        }
        if !(q.freivalds_bound_scale.is_finite()
            && q.freivalds_bound_scale > 0.0
            && q.freivalds_bound_scale <= 1.0)
        {
            return bad("protocol.freivalds_bound_scale must be in (0, 1]".into());
        }
        if let Some(chunks) = q.context_chunks {
            if q.context_rows.is_some() {
                return bad(format!(
                    "protocol.context_chunks = {chunks} draws the openings' context chunks \
                     (specs/protocol.md §4.4) and context_rows samples the key's check of whole \
                     openings: give one of them"
                ));
            }
            if q.attention_heads.is_none() {
                return bad(format!(
                    "protocol.context_chunks = {chunks} draws openings (specs/protocol.md §4.4) \
                     and needs attention_heads, the query heads each challenged cell draws"
                ));
            }
            if q.layer_check != LayerCheck::Freivalds {
                return bad(format!(
                    "protocol.context_chunks = {chunks} draws openings (specs/protocol.md §4.4), \
                     which cannot be recomputed: it needs layer_check = \"freivalds\", not \
                     {:?}",
                    q.layer_check.name()
                ));
            }
        }
        if q.attention_heads.is_some() || q.context_rows.is_some() {
            if !q.layer_check.checks_sublayers() {
                return bad(
                    "protocol.attention_heads and context_rows sample the Freivalds check's \
                     attention: they need layer_check freivalds or both"
                        .into(),
                );
            }
            if q.attention_heads == Some(0) {
                return bad("protocol.attention_heads must be at least 1".into());
            }
        }
        if q.freivalds_bounds == FreivaldsBounds::Calibrated {
            if !q.layer_check.checks_sublayers() {
                return bad(
                    "protocol.freivalds_bounds = \"calibrated\" needs layer_check freivalds or \
                     both"
                        .into(),
                );
            }
            if q.freivalds_bound_scale != 1.0 {
                return bad(
                    "protocol.freivalds_bounds = \"calibrated\" sets a scale per map: leave \
                     freivalds_bound_scale out"
                        .into(),
                );
            }
        }
        let t = &self.tolerance;
        let fpr_ok = t.target_fpr > 0.0 && t.target_fpr < 1.0;
        let confidence_ok = t.confidence > 0.0 && t.confidence < 1.0;
        if !(fpr_ok && confidence_ok && t.margin.is_finite() && t.margin >= 1.0) {
            return bad("tolerance: target_fpr and confidence in (0, 1), margin >= 1".into());
        }
        out_of_range(
            "tolerance.calibration_prompts",
            t.calibration_prompts,
            1,
            MAX_HONEST_RUNS,
        )?;
        out_of_range(
            "tolerance.holdout_prompts",
            t.holdout_prompts,
            1,
            MAX_HONEST_RUNS,
        )?;
        out_of_range(
            "tolerance.honest setups",
            t.honest.len(),
            1,
            MAX_HONEST_SETUPS,
        )?;
        if t.metric == Metric::NoiseScore {
            return bad("tolerance: metric must be rel_l2 or max_abs".into());
        }
        for h in &t.honest {
            if !h.same_algorithm(&self.reference) {
                return bad(format!(
                    "tolerance: {h} is not a reduction-order variant of {}",
                    self.reference
                ));
            }
        }
        if self.adversaries.is_empty() {
            return bad("no adversary".into());
        }
        out_of_range("adversaries", self.adversaries.len(), 1, MAX_ADVERSARIES)?;
        // A non-interactive challenge is a function of the commitment: trials that reuse a
        // prompt's commitment repeat the same challenge and are not independent.
        let repeats = self.protocol.mode == Mode::NonInteractive
            && self.adversaries.iter().any(|a| {
                a.adversary.behaviour().repeats_challenges()
                    && u64::from(self.pool_of(a)) < self.trials_of(a)
            });
        if repeats {
            return bad(format!(
                "non-interactive mode with {} prompts for {} trials: the challenge is a function \
                 of the commitment, so trials on one prompt repeat it; use at least as many \
                 prompts as trials, or interactive mode (grinding adversaries run \
                 non-interactive regardless)",
                p.count, self.trials
            ));
        }
        for a in &self.adversaries {
            a.check(&self.reference)?;
        }
        Ok(())
    }
}
