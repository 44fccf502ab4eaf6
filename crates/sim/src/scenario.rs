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
//! directions beside the margin gradient, default 4; a decoder only).

use serde::{Deserialize, Deserializer, Serialize};
use veritrace_model::{Device, Setup};
use veritrace_protocol::calibration::CalibrationMethod;
use veritrace_protocol::tolerance::Metric;
use veritrace_protocol::{Mode, SamplingStrategy};

pub use crate::adversary::{Adversary, AdversaryKind};
use crate::SimError;

/// The embedded default scenario (`simulations/default.toml`).
pub const DEFAULT_SCENARIO: &str = include_str!("../../../simulations/default.toml");

/// Largest accepted trial count, prompt count and token count (absurd sizes are refused).
pub const MAX_TRIALS: u64 = 100_000_000;

/// Largest accepted prompt pool (`prompts.count`, or an adversary's `prompts`).
pub const MAX_PROMPTS: u32 = 10_000;

/// Largest accepted count of calibration or held-out honest runs.
pub const MAX_HONEST_RUNS: u32 = 1_000_000;

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
}

fn one() -> u32 {
    1
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
        if self.prompts.is_some_and(|p| p == 0 || p > MAX_PROMPTS) {
            return bad(format!("prompts must be in 1..={MAX_PROMPTS}"));
        }
        if self.trials.is_some_and(|t| t == 0 || t > MAX_TRIALS) {
            return bad(format!("trials must be in 1..={MAX_TRIALS}"));
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
    pub fn read(path: &std::path::Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml(&text)
    }

    /// Checks sizes and every adversary.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::Scenario(m));
        if self.trials == 0 || self.trials > MAX_TRIALS {
            return bad(format!(
                "trials {} must be in 1..={MAX_TRIALS}",
                self.trials
            ));
        }
        let p = &self.prompts;
        if p.count == 0
            || p.count > MAX_PROMPTS
            || p.tokens == 0
            || p.tokens > 65_536
            || p.output > 65_536
        {
            return bad("prompts: count in 1..=10000, tokens in 1..=65536, output <= 65536".into());
        }
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
        if q.chunk == 0 || q.samples == 0 || q.rounds == 0 || q.rounds > 64 || q.pow_bits > 30 {
            return bad("protocol: chunk, samples >= 1; rounds in 1..=64; pow_bits <= 30".into());
        }
        let t = &self.tolerance;
        let fpr_ok = t.target_fpr > 0.0 && t.target_fpr < 1.0;
        let confidence_ok = t.confidence > 0.0 && t.confidence < 1.0;
        if !(fpr_ok && confidence_ok && t.margin.is_finite() && t.margin >= 1.0) {
            return bad("tolerance: target_fpr and confidence in (0, 1), margin >= 1".into());
        }
        if t.calibration_prompts > MAX_HONEST_RUNS || t.holdout_prompts > MAX_HONEST_RUNS {
            return bad(format!(
                "tolerance: calibration_prompts and holdout_prompts at most {MAX_HONEST_RUNS}"
            ));
        }
        if t.metric == Metric::NoiseScore {
            return bad("tolerance: metric must be rel_l2 or max_abs".into());
        }
        if t.honest.is_empty() || t.calibration_prompts == 0 || t.holdout_prompts == 0 {
            return bad(
                "tolerance: at least one honest setup, calibration and holdout prompt".into(),
            );
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
