//! The end-to-end engine: every trial runs the real prover (its commitment, its opening), the
//! real verifier (challenge, Merkle check, recompute under the claimed setup, tolerance), and
//! records the verdict.
//!
//! Provers' traces are computed once per (adversary, prompt) and reused across trials: inference
//! is deterministic, so a trial differs from another on the same prompt only in its challenge
//! (and, for grinding, in the nonces tried). Trial `t` of adversary `a` draws its prompt and its
//! verifier randomness from ChaCha20 keyed by `BLAKE3("veritrace/sim/trial/v1" ‖ seed ‖ a ‖ t)`,
//! so results do not depend on the thread count.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use veritrace_commit::{CellId, HasherId};
use veritrace_model::freivalds::{
    layer_map_ratios, MapBounds, Matrix, VerifierKey, VerifierSecret,
};
use veritrace_model::sublayer::{SubLayerLayout, SubLayerTrace};
use veritrace_model::{CellInputs, LlamaModel, Runner, Setup, SubLayers, Trace};
use veritrace_protocol::calibration::{
    calibrate_runs, holdout_evidence, CalibratedPolicy, HoldoutEvidence, HonestRun, RunCalibration,
    RunCalibrationConfig,
};
use veritrace_protocol::sampling::CellDraw;
use veritrace_protocol::soundness::miss_probability;
use veritrace_protocol::tolerance::{Deviation, FprEstimate, Metric, PerLayer, TolerancePolicy};
use veritrace_protocol::{
    check_opening_by, check_opening_drawn, AttentionDraw, AttentionSample, Challenge,
    ChallengeParams, Commitment, LayerCheck, Message, Mode, ProtocolError, Prover, Statement, Step,
    Verdict, Verifier, VerifierConfig, VerifierLimits,
};

use crate::adversary::{Adversary, AdversaryKind, CellPlan, CorridorProbe, Plan, CORRIDOR_SCALES};
use crate::calibration::{rounding_dtype, HonestRunPlan, Recomputer};
use crate::fast::{self, CellOutcomes};
use crate::map_calibration::{calibrate_map_bounds, worst_ratios, MapCalibrationConfig, MapRun};
use crate::model::{KeyedCheck, SimModel, SimVerifier};
use crate::scenario::{AdversarySpec, FreivaldsBounds, Scenario, MAX_END_TO_END_TRIALS};
use crate::stats::wilson;
use crate::SimError;

/// A prover's run: the statement it sends (always claiming the reference setup and model), its
/// trace, which cells the verifier's check rejects, and its compute cost.
#[derive(Debug, Clone)]
pub struct ProverRun {
    /// The statement claimed.
    pub statement: Statement,
    /// The committed trace.
    pub trace: Trace,
    /// Cells whose single-cell check (the verifier's own) fails. With drawn openings
    /// (`protocol.context_chunks`), the cells whose whole check (every head and chunk) fails:
    /// those a challenge can catch, each with the probability [`ProverRun::drawn`] gives.
    pub bad: BTreeSet<CellId>,
    /// Per layer, the deviation (the tolerance metric) of each committed cell from its reference
    /// recompute from the committed inputs.
    pub deviations: BTreeMap<u32, Vec<f64>>,
    /// The prover's compute cost (see [`crate::cost`]).
    pub cost: f64,
    /// Cells whose opened bytes an equivocating prover alters.
    pub equivocate: BTreeSet<CellId>,
    /// What a corridor prover's probe found on this prompt.
    pub corridor: Option<CorridorProbe>,
    /// With the scenario's `layer_check` `freivalds` or `both`: the sub-layer values the prover
    /// commits beside its trace (each cell's, as it computed the cell).
    pub sublayers: Option<SubLayerTrace>,
    /// With drawn openings (`protocol.context_chunks`): what of each bad cell's check fails,
    /// so which draws catch it.
    pub drawn: Option<DrawnCells>,
}

/// With drawn openings (specs/protocol.md §4.4): what of a bad cell's check fails, so what a
/// challenge's attention draw must pick to catch the cell. Measured through the protocol
/// ([`Prover::open_drawn`], [`check_opening_drawn`]) one part at a time: the cell under a draw
/// of each single head (and no earlier chunk), then of one passing head and each single earlier
/// chunk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Weakness {
    /// Caught whatever the draw: every head's draw catches it (a part every draw checks fails:
    /// the cell's own rows or its output; or every head's attention), or a layer-0 cell.
    pub always: bool,
    /// The query heads whose draw catches the cell (its attention check fails), ascending.
    pub heads: Vec<u32>,
    /// The context chunks before the cell's own whose draw catches it (their provenance check
    /// fails), ascending.
    pub chunks: Vec<u32>,
    /// The context chunks before the cell's own, which the draw picks from.
    pub earlier: u32,
}

impl Weakness {
    /// The probability that a challenge of the cell escapes its check, over a draw of `sample`
    /// from `heads` query heads: `C(H − b, s_h)/C(H, s_h) · C(n − b', s_c)/C(n, s_c)` with `b`
    /// failing heads and `b'` failing chunks of the `n` earlier ones (0 when `always`).
    pub fn escape(&self, heads: u32, sample: AttentionSample) -> Result<f64, SimError> {
        if self.always {
            return Ok(0.0);
        }
        let miss = |n: u32, b: usize, s: u32| {
            miss_probability(u64::from(n), b as u64, u64::from(s.min(n)))
        };
        Ok(miss(heads, self.heads.len(), sample.heads)?
            * miss(self.earlier, self.chunks.len(), sample.chunks)?)
    }

    /// Whether the cell's draw `draw` catches it.
    pub fn caught_by(&self, draw: &CellDraw) -> bool {
        self.always
            || draw.heads.iter().any(|h| self.heads.contains(h))
            || draw.chunks.iter().any(|c| self.chunks.contains(c))
    }
}

/// With drawn openings: every bad cell's [`Weakness`], and what the challenges draw.
#[derive(Debug, Clone, PartialEq)]
pub struct DrawnCells {
    /// Per bad cell ([`ProverRun::bad`]), what a draw must pick to catch it.
    pub cells: BTreeMap<CellId, Weakness>,
    /// The statement's query heads `H`.
    pub heads: u32,
    /// What each challenge draws per challenged cell.
    pub sample: AttentionSample,
    /// Whether a cell's check fails exactly when its draw picks one of its failing parts, so
    /// that [`DrawnCells::escapes`] are its probabilities: every part judged on its own (the
    /// Freivalds ratios per row, the nonlinear parts bitwise: `sublayer_tolerance = 0` and no
    /// calibrated nonlinear tolerance), and every bad cell failing under some single part.
    /// Otherwise (a relative tolerance's scale spans the rows checked together) no prediction
    /// is made from them.
    pub exact: bool,
}

impl DrawnCells {
    /// Per bad cell, the probability that a challenge of it escapes ([`Weakness::escape`]).
    pub fn escapes(&self) -> Result<Vec<f64>, SimError> {
        self.cells
            .values()
            .map(|w| w.escape(self.heads, self.sample))
            .collect()
    }

    /// Whether a challenge with the cells `cells` and the attention draw `draw` catches one of
    /// them, on `statement`.
    pub fn catches(
        &self,
        statement: &Statement,
        cells: &[CellId],
        draw: Option<&AttentionDraw>,
    ) -> Result<bool, SimError> {
        for cell in cells {
            let Some(w) = self.cells.get(cell) else {
                continue;
            };
            let caught = match draw {
                // a whole opening checks everything
                None => true,
                Some(_) if cell.layer == 0 => true,
                Some(d) => w.caught_by(&d.cell(statement, *cell)?),
            };
            if caught {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl ProverRun {
    /// An honest prover holding this run's trace (and its sub-layer traces, when there are).
    pub fn prover(&self) -> Result<Prover<Vec<u8>>, SimError> {
        self.prover_with(self.trace.layer_bytes())
    }

    /// The same over other trace layers (a grinding prover's re-randomized trace).
    pub(crate) fn prover_with(&self, layers: Vec<Vec<u8>>) -> Result<Prover<Vec<u8>>, SimError> {
        let prover = Prover::new(self.statement.clone(), layers)?;
        Ok(match &self.sublayers {
            Some(sub) => {
                // the sub-layer layout's bytes, split into the statement's parts (by head at
                // the by-head level)
                prover.with_sublayer_parts(sub.parts(&self.statement)?)?
            }
            None => prover,
        })
    }
}

/// Fits sub-layer values of a model of layout `from` to layout `to` (a swapped model's rows
/// in the claimed model's widths): each field's rows zero-padded or cut to the claimed width.
fn fit(sub: &SubLayers, from: &SubLayerLayout, to: &SubLayerLayout) -> SubLayers {
    if from == to {
        return sub.clone();
    }
    let f = |v: &Vec<f32>, a: usize, b: usize| -> Vec<f32> {
        let rows = v.len() / a.max(1);
        let mut out = vec![0f32; rows * b];
        for r in 0..rows {
            let w = a.min(b);
            out[r * b..r * b + w].copy_from_slice(&v[r * a..r * a + w]);
        }
        out
    };
    SubLayers {
        normed: f(&sub.normed, from.hidden, to.hidden),
        q: f(&sub.q, from.q, to.q),
        k: f(&sub.k, from.kv, to.kv),
        v: f(&sub.v, from.kv, to.kv),
        attn: f(&sub.attn, from.q, to.q),
        o: f(&sub.o, from.hidden, to.hidden),
        mlp_in: f(&sub.mlp_in, from.hidden, to.hidden),
        gate: f(&sub.gate, from.mlp, to.mlp),
        up: f(&sub.up, from.mlp, to.mlp),
        act: f(&sub.act, from.mlp, to.mlp),
        down: f(&sub.down, from.hidden, to.hidden),
    }
}

/// What corridor provers achieved across the prompt pool, beside the honest false-positive
/// rate at the same threshold scales ([`crate::adversary::Corridor`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorridorResult {
    /// Threshold scales `s` (multiples of the calibrated thresholds).
    pub scales: Vec<f64>,
    /// Prompts (independent prover runs) probed.
    pub prompts: u64,
    /// Per scale, prompts whose first generated token flipped with every layer perturbed.
    pub flips_all_layers: Vec<u64>,
    /// Per scale, one-sided 95% Clopper-Pearson bounds of that flip rate over the prompts.
    pub flip_bounds: Vec<(f64, f64)>,
    /// Per layer and scale, prompts whose first token flipped with that layer alone perturbed.
    pub flips_per_layer: BTreeMap<u32, Vec<u64>>,
    /// Held-out honest runs the false-positive rates are measured on.
    pub honest_runs: u64,
    /// Per scale, held-out honest runs with a cell over `s · t_l` (a session could reject them).
    pub honest_over: Vec<u64>,
    /// Per scale, the one-sided 95% Clopper-Pearson upper bound of that rate.
    pub honest_fpr_upper: Vec<f64>,
    /// Prompts whose committed trace (scale 1) flipped the first token.
    pub committed_flips: u64,
}

/// What calibration produced and what the held-out honest runs measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationSummary {
    /// Metric of the thresholds.
    pub metric: Metric,
    /// `true`: bitwise comparison (no calibration; a held-out run "exceeds" when any of its
    /// cells differs at all).
    pub exact: bool,
    /// Per-layer thresholds (0 everywhere in exact mode).
    pub thresholds: PerLayer,
    /// The calibration from independent honest runs
    /// ([`veritrace_protocol::calibration`]); `None` in exact mode.
    pub calibration: Option<RunCalibration>,
    /// The thresholds on held-out independent honest runs.
    pub holdout: HoldoutEvidence,
    /// The held-out honest samples per layer, every cell of every held-out run (for ROC
    /// curves; cells of one run are not independent).
    pub holdout_samples: BTreeMap<u32, Vec<f64>>,
}

/// One adversary's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdversaryResult {
    /// Report label.
    pub label: String,
    /// Kind.
    pub kind: AdversaryKind,
    /// Trials run.
    pub trials: u64,
    /// Trials that ended in a rejection.
    pub detected: u64,
    /// `detected / trials`.
    pub detection: f64,
    /// 95% Wilson interval of the detection probability over the trials: it reflects the
    /// challenge randomness only, since trials resample the `runs` prover runs of the pool.
    pub wilson95: (f64, f64),
    /// Independent prover runs (prompts) the trials were drawn from: the sample size behind
    /// the rate.
    #[serde(default)]
    pub runs: u64,
    /// One-sided 95% lower and upper bounds on the detection probability over the `runs`
    /// independent runs ([`crate::stats::bounds_over_runs`]).
    #[serde(default)]
    pub run_bounds: (f64, f64),
    /// Hypergeometric prediction from the bad-cell counts (mean over the prompt pool), if the
    /// kind has one.
    pub predicted: Option<f64>,
    /// `true` when [`AdversaryResult::predicted`] is a lower bound rather than an expectation
    /// (equivocation: the input cells of challenged cells are opened too).
    #[serde(default)]
    pub predicted_is_lower_bound: bool,
    /// Mean number of cells whose check fails, and the cells per trace.
    pub bad_cells: f64,
    /// Per layer, the tolerance metric of every committed cell of the prompt pool against its
    /// reference recompute (for ROC curves against the honest held-out samples).
    pub deviations: BTreeMap<u32, Vec<f64>>,
    /// Cells per trace.
    pub cells: u64,
    /// Compute saved against the honest prover, `1 − cost / honest cost`.
    pub saving: f64,
    /// Verifier recompute cost as a fraction of one full forward (mean per trial).
    pub verifier_cost: f64,
    /// Bytes of openings received per trial (mean).
    pub bytes_opened: f64,
    /// Security bits against grinding (grinding adversaries).
    pub security_bits: Option<f64>,
    /// Rejection reasons and their counts.
    pub reasons: BTreeMap<String, u64>,
    /// A remark (e.g. how the API refused a late commitment).
    pub note: Option<String>,
    /// Corridor provers: token flips against threshold scale, beside the honest
    /// false-positive rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corridor: Option<CorridorResult>,
}

/// Which engine ran the trials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineMode {
    /// Every trial runs the real prover and verifier.
    EndToEnd,
    /// Trials sampled from per-cell outcomes of end-to-end runs ([`crate::fast`]); grinding
    /// from each run's exact per-trial law (`E[h^N]`), late commitment from one end-to-end
    /// trial per run (its outcome draws on no randomness). Weight-perturbation trials (a fresh
    /// verifier key each) still run end to end. With drawn openings (`protocol.context_chunks`)
    /// a trial on a run is detected with the run's exact law (each challenged bad cell escapes
    /// with its draw's probability, [`Weakness::escape`]); an equivocator's trials
    /// there run end to end (its opened cells depend on the draw).
    Fast,
}

/// A simulation's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimReport {
    /// The engine.
    pub engine: EngineMode,
    /// The scenario run.
    pub scenario: Scenario,
    /// Tolerance calibration.
    pub calibration: CalibrationSummary,
    /// Per adversary.
    pub adversaries: Vec<AdversaryResult>,
    /// With `protocol.freivalds_bounds = "calibrated"`: the per-map scales and the evidence
    /// behind them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freivalds_bounds: Option<MapBoundsSummary>,
}

/// Per-map Freivalds scales calibrated on honest runs ([`crate::map_calibration`]) and what
/// held-out runs measured under them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapBoundsSummary {
    /// The scales the verifier applied.
    pub bounds: MapBounds,
    /// The calibration, map `7(l − 1) + i` in the place of layer `l`.
    pub calibration: RunCalibration,
    /// Held-out runs with some map above its scale (`None` without held-out runs).
    pub holdout: Option<FprEstimate>,
    /// Per map, the largest held-out ratio `|v·x − r·y| / B` (`[l − 1][i]`).
    pub holdout_worst: Vec<[f64; 7]>,
    /// Maps whose scale came from the fitted tail.
    pub tail_maps: usize,
}

/// Keyed ChaCha20 stream for a labelled purpose.
pub(crate) fn stream(label: &str, seed: u64, a: u64, b: u64) -> ChaCha20Rng {
    let mut h = blake3::Hasher::new();
    h.update(label.as_bytes());
    h.update(&seed.to_le_bytes());
    h.update(&a.to_le_bytes());
    h.update(&b.to_le_bytes());
    ChaCha20Rng::from_seed(*h.finalize().as_bytes())
}

/// The simulation's model and everything derived from the scenario.
pub struct Simulation {
    scenario: Scenario,
    model: SimModel,
    /// The provers' device (the scenario's `prover_device`).
    prover: Arc<Runner>,
    /// The verifier's device (the scenario's `verifier_device`).
    verifier: Arc<Runner>,
    policy: TolerancePolicy,
    calibration: CalibrationSummary,
    /// The held-out honest runs (for false-positive rates at other threshold scales).
    held_runs: Vec<HonestRun>,
    /// With `prompts.text`: each text's tokens and the statement's binding of them.
    texts: Vec<(Vec<u32>, veritrace_protocol::InputText)>,
    /// With `protocol.layer_check` `freivalds` or `both`: the verifier's Freivalds key, from a
    /// secret derived from the scenario seed.
    key: Option<Arc<VerifierKey>>,
    /// With `protocol.freivalds_bounds = "calibrated"`: the per-map scales and their evidence.
    map_bounds: Option<(Arc<MapBounds>, MapBoundsSummary)>,
}

impl Simulation {
    /// Loads the model, and calibrates the tolerance on honest other-hardware runs.
    pub fn new(scenario: Scenario) -> Result<Self, SimError> {
        scenario.validate()?;
        let model = crate::model::load_model(&scenario.model)?;
        if model.is_encoder() && scenario.prompts.output != 0 {
            return Err(SimError::Scenario(format!(
                "model {}: an encoder generates no tokens; set prompts.output = 0",
                scenario.model
            )));
        }
        for a in &scenario.adversaries {
            a.adversary
                .behaviour()
                .check_model(&model)
                .map_err(|m| SimError::Scenario(format!("adversary {}: {m}", a.label())))?;
        }
        Self::check_cells(&scenario, &model)?;
        let key = Self::verifier_key(&scenario, &model)?;
        let texts = Self::tokenize_texts(&scenario, &model)?;
        let prover = Arc::new(Runner::new(scenario.prover_device)?);
        let verifier = if scenario.verifier_device == scenario.prover_device {
            prover.clone()
        } else {
            Arc::new(Runner::new(scenario.verifier_device)?)
        };
        let mut sim = Simulation {
            scenario,
            model,
            prover,
            verifier,
            policy: TolerancePolicy::Exact,
            calibration: CalibrationSummary {
                metric: Metric::RelL2,
                exact: true,
                thresholds: PerLayer::uniform(0.0),
                calibration: None,
                holdout: HoldoutEvidence {
                    runs: 0,
                    variations: Vec::new(),
                    runs_with_exceedance: FprEstimate::new(0, 1, 0.95)?,
                    expected_session_fpr: 0.0,
                    sessions_rejected: None,
                    cells_over: BTreeMap::new(),
                    worst_ratio: 0.0,
                },
                holdout_samples: BTreeMap::new(),
            },
            held_runs: Vec::new(),
            texts,
            key,
            map_bounds: None,
        };
        sim.calibrate()?;
        if sim.scenario.protocol.freivalds_bounds == FreivaldsBounds::Calibrated {
            sim.calibrate_map_bounds()?;
        }
        Ok(sim)
    }

    /// With `protocol.layer_check` `freivalds` or `both`: the verifier's key of the model, from
    /// the secret `BLAKE3("veritrace/sim/verifier-secret/v1" ‖ seed)`-keyed ChaCha20's first 32
    /// bytes (the simulated verifier's own; no adversary reads it). A model that is not a
    /// Llama-style decoder is a scenario error.
    fn verifier_key(
        scenario: &Scenario,
        model: &SimModel,
    ) -> Result<Option<Arc<VerifierKey>>, SimError> {
        let p = &scenario.protocol;
        if !p.layer_check.checks_sublayers() {
            return Ok(None);
        }
        let decoder = model.decoder().ok_or_else(|| {
            SimError::Scenario(format!(
                "protocol.layer_check = {:?}: the sub-layer trace and Freivalds keys cover \
                 Llama-style decoders, and model {} is not one",
                p.layer_check.name(),
                scenario.model
            ))
        })?;
        let mut rng = stream("veritrace/sim/verifier-secret/v1", scenario.seed, 0, 0);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let key = VerifierKey::build(
            &VerifierSecret::from_bytes(secret),
            decoder,
            p.freivalds_repetitions,
        )
        .and_then(|k| k.for_setup(decoder, &scenario.reference))
        .map_err(|e| SimError::Scenario(format!("the verifier's Freivalds key: {e}")))?;
        Ok(Some(Arc::new(key)))
    }

    /// The cells of one trace and the honest cells calibration keeps, against
    /// [`MAX_CELLS_PER_TRACE`](crate::scenario::MAX_CELLS_PER_TRACE) and
    /// [`MAX_HONEST_CELLS`](crate::scenario::MAX_HONEST_CELLS), in checked arithmetic, before
    /// any run.
    fn check_cells(scenario: &Scenario, model: &SimModel) -> Result<(), SimError> {
        use crate::scenario::{MAX_CELLS_PER_TRACE, MAX_HONEST_CELLS};
        let p = &scenario.prompts;
        let rows = u64::from(p.tokens) + u64::from(p.output);
        let chunks = rows.div_ceil(u64::from(scenario.protocol.chunk.max(1)));
        let cells = (model.num_layers() as u64)
            .checked_add(1)
            .and_then(|l| l.checked_mul(chunks))
            .unwrap_or(u64::MAX);
        if cells > MAX_CELLS_PER_TRACE {
            return Err(SimError::Scenario(format!(
                "cells per trace = {cells} ({} layers x {chunks} chunks of prompts.tokens + \
                 prompts.output = {rows} rows) exceeds the limit {MAX_CELLS_PER_TRACE}; raise \
                 protocol.chunk",
                model.num_layers() + 1
            )));
        }
        let t = &scenario.tolerance;
        let runs = u64::from(t.calibration_prompts) + u64::from(t.holdout_prompts);
        let honest = runs.saturating_mul(cells);
        if honest > MAX_HONEST_CELLS {
            return Err(SimError::Scenario(format!(
                "honest cells = {honest} ({runs} calibration and holdout runs x {cells} cells) \
                 exceeds the limit {MAX_HONEST_CELLS}; lower tolerance.calibration_prompts or \
                 tolerance.holdout_prompts, or raise protocol.chunk"
            )));
        }
        Ok(())
    }

    /// The scenario's `prompts.text` through the checkpoint's tokenizer (with its chat template
    /// when `prompts.chat`): refused when the model has no tokenizer, a text cannot be encoded,
    /// or gives more than `prompts.tokens` tokens.
    fn tokenize_texts(
        scenario: &Scenario,
        model: &SimModel,
    ) -> Result<Vec<(Vec<u32>, veritrace_protocol::InputText)>, SimError> {
        let p = &scenario.prompts;
        if p.text.is_empty() {
            return Ok(Vec::new());
        }
        let tokenizer = model.tokenizer().ok_or_else(|| {
            SimError::Scenario(format!(
                "prompts.text: model {} has no tokenizer.json",
                scenario.model
            ))
        })?;
        p.text
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let (tokens, binding) = tokenizer
                    .input_text(text, p.chat)
                    .map_err(|e| SimError::Scenario(format!("prompts.text {i}: {e}")))?;
                if tokens.len() > p.tokens as usize {
                    return Err(SimError::Scenario(format!(
                        "prompts.text {i} gives {} tokens, more than prompts.tokens = {}",
                        tokens.len(),
                        p.tokens
                    )));
                }
                Ok((tokens, binding))
            })
            .collect()
    }

    /// The scenario.
    pub(crate) fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// The model.
    pub fn model(&self) -> &SimModel {
        &self.model
    }

    /// The tolerance policy the verifier uses.
    pub fn policy(&self) -> &TolerancePolicy {
        &self.policy
    }

    /// Prompt `index` of the scenario: for a decoder, `next_u32 mod vocab` of the keyed stream
    /// `("veritrace/sim/prompt/v1", seed, index)`; for an encoder, a `[CLS] … [SEP]` sequence
    /// ([`veritrace_model::bert_prompt`]) keyed by that stream's first `u64`.
    /// With `prompts.text`, prompt `index < count` is that text's tokens.
    pub fn prompt(&self, index: u64) -> Vec<u32> {
        if let Some((tokens, _)) = usize::try_from(index).ok().and_then(|i| self.texts.get(i)) {
            return tokens.clone();
        }
        crate::calibration::prompt(
            &self.model,
            self.scenario.seed,
            index,
            self.scenario.prompts.tokens as usize,
        )
    }

    /// The verifier's recompute of cells under the claimed setup.
    pub(crate) fn recomputer(&self) -> Recomputer<'_> {
        Recomputer {
            model: &self.model,
            runner: &self.verifier,
            reference: &self.scenario.reference,
            chunk: self.scenario.protocol.chunk as usize,
        }
    }

    /// The provers' device.
    pub(crate) fn prover_runner(&self) -> &Runner {
        &self.prover
    }

    /// The corridor summary of an adversary's runs, when they carry probes.
    fn corridor_result(&self, runs: &[ProverRun]) -> Result<Option<CorridorResult>, SimError> {
        let probes: Vec<&CorridorProbe> = runs.iter().filter_map(|r| r.corridor.as_ref()).collect();
        if probes.is_empty() {
            return Ok(None);
        }
        let scales = CORRIDOR_SCALES.to_vec();
        let n = probes.len() as u64;
        let count =
            |f: &dyn Fn(&CorridorProbe) -> bool| probes.iter().filter(|p| f(p)).count() as u64;
        let flips_all_layers: Vec<u64> = (0..scales.len())
            .map(|i| count(&|p| p.all_layers[i]))
            .collect();
        let flip_bounds = flips_all_layers
            .iter()
            .map(|&k| crate::stats::bounds_over_runs(k as f64, n, 0.95))
            .collect();
        let mut flips_per_layer: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for &l in probes[0].per_layer.keys() {
            flips_per_layer.insert(
                l,
                (0..scales.len())
                    .map(|i| count(&|p| p.per_layer.get(&l).is_some_and(|v| v[i])))
                    .collect(),
            );
        }
        let thresholds = &self.calibration.thresholds;
        let mut honest_over = Vec::new();
        let mut honest_fpr_upper = Vec::new();
        let h = self.held_runs.len() as u64;
        for &s in &scales {
            let over = self
                .held_runs
                .iter()
                .filter(|r| {
                    r.layers
                        .iter()
                        .any(|(l, e)| e.deviations.iter().any(|&x| x > s * thresholds.get(*l)))
                })
                .count() as u64;
            honest_over.push(over);
            honest_fpr_upper.push(if h == 0 {
                1.0
            } else {
                FprEstimate::new(over, h, 0.95)?.upper
            });
        }
        Ok(Some(CorridorResult {
            scales,
            prompts: n,
            flips_all_layers,
            flip_bounds,
            flips_per_layer,
            honest_runs: h,
            honest_over,
            honest_fpr_upper,
            committed_flips: count(&|p| p.committed_flip),
        }))
    }

    /// The calibrated policy file (`veritrace calibrate`'s format) of a calibrated tolerance;
    /// `None` in exact mode.
    pub fn policy_file(&self) -> Option<CalibratedPolicy> {
        let c = self.calibration.calibration.clone()?;
        Some(CalibratedPolicy::new(
            self.scenario.reference.to_string(),
            self.scenario.model.clone(),
            c,
            Some(self.calibration.holdout.clone()),
        ))
    }

    /// Calibrates the tolerance on `tolerance.calibration_prompts` independent honest runs
    /// (each a fresh prompt under one of the honest variations, in rotation) and measures it on
    /// `tolerance.holdout_prompts` more ([`veritrace_protocol::calibration`]). Prompts are
    /// numbered after the adversaries' pool, calibration first.
    fn calibrate(&mut self) -> Result<(), SimError> {
        let t = self.scenario.tolerance.clone();
        let p = self.scenario.protocol;
        let base = u64::from(self.scenario.pools_end());
        let cal = base..base + u64::from(t.calibration_prompts);
        let hold = cal.end..cal.end + u64::from(t.holdout_prompts);
        let plan = HonestRunPlan {
            recompute: self.recomputer(),
            prover: &self.prover,
            honest: &t.honest,
            output: self.scenario.prompts.output as usize,
            metric: t.metric,
        };
        let config = RunCalibrationConfig {
            metric: t.metric,
            target_session_fpr: t.target_fpr,
            samples: p.samples,
            rounds: p.rounds,
            confidence: t.confidence,
            margin: t.margin,
            rounding_dtype: rounding_dtype(&self.scenario.reference),
            method: t.method,
        };
        let layers = self.model.num_layers() as u64 + 1;
        let needed = config.runs_needed(layers);
        if !t.exact && u64::from(t.calibration_prompts) < needed {
            // Refused before any run: the evidence could not support the target.
            return Err(SimError::Scenario(format!(
                "tolerance.calibration_prompts = {}: {needed} independent honest runs are \
                 needed for a session false-positive rate of {:e} at {} confidence with k = {} x {} \
                 round(s) over {layers} layers (per-cell alpha {:.3e}, method {}, \
                 specs/protocol.md §12.3); raise calibration_prompts, or target_fpr",
                t.calibration_prompts,
                t.target_fpr,
                t.confidence,
                p.samples,
                p.rounds,
                config.cell_alpha(layers),
                t.method
            )));
        }
        let prompt = |i: u64| self.prompt(i);
        let held = plan.runs(hold, &prompt, &|| {})?;
        let (policy, thresholds, calibration) = if t.exact {
            // Identical hardware: bitwise comparison; any honest difference is a false alarm.
            (TolerancePolicy::Exact, PerLayer::uniform(0.0), None)
        } else {
            let runs = plan.runs(cal, &prompt, &|| {})?;
            let c = calibrate_runs(&runs, &config).map_err(|e| match e {
                ProtocolError::InsufficientEvidence {
                    needed,
                    have,
                    reason,
                } => SimError::Scenario(format!(
                    "tolerance.calibration_prompts = {have}: {needed} independent honest \
                         runs are needed ({reason}); raise calibration_prompts, or the \
                         target_fpr"
                )),
                e => e.into(),
            })?;
            (
                TolerancePolicy::Threshold(c.policy()),
                c.thresholds(),
                Some(c),
            )
        };
        let holdout = holdout_evidence(&thresholds, &held, p.samples, p.rounds, t.confidence)?;
        let mut holdout_samples: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        for r in &held {
            for (l, e) in &r.layers {
                holdout_samples.entry(*l).or_default().extend(&e.deviations);
            }
        }
        self.policy = policy;
        self.held_runs = held;
        self.calibration = CalibrationSummary {
            metric: t.metric,
            exact: t.exact,
            thresholds,
            calibration,
            holdout,
            holdout_samples,
        };
        Ok(())
    }

    /// The verifier's Freivalds check with `key`: the scenario's tolerance of the nonlinear
    /// parts and its bounds (the per-map scales where calibrated).
    fn keyed_check(&self, key: Arc<VerifierKey>) -> KeyedCheck {
        let p = &self.scenario.protocol;
        KeyedCheck {
            key,
            tolerance: p.sublayer_tolerance,
            bound_scale: p.freivalds_bound_scale,
            map_bounds: self.map_bounds.as_ref().map(|(b, _)| b.clone()),
            sampling: p.attention_sampling(),
        }
    }

    /// The Freivalds bound scale the verifier applies to `matrix` of `layer`.
    pub(crate) fn freivalds_scale(&self, layer: usize, matrix: Matrix) -> f64 {
        self.map_bounds
            .as_ref()
            .map_or(self.scenario.protocol.freivalds_bound_scale, |(b, _)| {
                b.scale(layer, matrix)
            })
    }

    /// Per-map Freivalds scales (`protocol.freivalds_bounds = "calibrated"`): every
    /// `tolerance.calibration_prompts` run's worst ratio per map, through
    /// [`crate::map_calibration::calibrate_map_bounds`] with the tolerance section's method,
    /// target, confidence and margin, tested on the `tolerance.holdout_prompts` runs. The runs
    /// are the tolerance calibration's (the same prompts and honest variations in rotation),
    /// each under a key of its own.
    fn calibrate_map_bounds(&mut self) -> Result<(), SimError> {
        let t = &self.scenario.tolerance;
        let p = self.scenario.protocol;
        let config = MapCalibrationConfig {
            target_session_fpr: t.target_fpr,
            confidence: t.confidence,
            margin: t.margin,
            method: t.method,
            samples: p.samples,
            rounds: p.rounds,
        };
        let layers = self.model.num_layers();
        let needed = config.runs_needed(layers);
        if u64::from(t.calibration_prompts) < needed {
            // Refused before any run.
            return Err(SimError::Scenario(format!(
                "protocol.freivalds_bounds = \"calibrated\": {needed} independent honest runs \
                 are needed for per-map scales over {} maps at a session false-positive rate \
                 of {:e} ({}), tolerance.calibration_prompts is {}",
                7 * layers,
                t.target_fpr,
                t.method,
                t.calibration_prompts
            )));
        }
        let base = u64::from(self.scenario.pools_end());
        let cal = base..base + u64::from(t.calibration_prompts);
        let hold = cal.end..cal.end + u64::from(t.holdout_prompts);
        let runs = crate::calibration::par_runs(cal, &|i| self.map_run(i))?;
        let held = crate::calibration::par_runs(hold, &|i| self.map_run(i))?;
        let weights = self
            .key
            .as_ref()
            .map_or_else(|| "f32".into(), |k| k.weights());
        let r = calibrate_map_bounds(self.model.digest(), &weights, &runs, &held, &config)?;
        let summary = MapBoundsSummary {
            tail_maps: r.tail_maps(),
            bounds: r.bounds.clone(),
            calibration: r.calibration,
            holdout: r.holdout,
            holdout_worst: worst_ratios(&held),
        };
        self.map_bounds = Some((Arc::new(r.bounds), summary));
        Ok(())
    }

    /// Honest run `i` of the per-map calibration: prompt `i` under the honest variation
    /// `tolerance.honest[i mod h]`, its sub-layer values as the prover commits them, checked
    /// under a key of its own (secret from the stream `("veritrace/sim/map-key/v1", seed, i)`,
    /// the scenario's repetitions).
    fn map_run(&self, i: u64) -> Result<MapRun, SimError> {
        let decoder = self.model.decoder().ok_or_else(|| {
            SimError::Scenario("per-map Freivalds scales need a Llama-style decoder".into())
        })?;
        let honest = &self.scenario.tolerance.honest;
        if honest.is_empty() {
            return Err(SimError::Scenario(
                "per-map Freivalds scales need tolerance.honest variations".into(),
            ));
        }
        let setup = honest[(i % honest.len() as u64) as usize];
        let (_, trace) = self.model.prove_on(
            &self.prover,
            &setup,
            &self.prompt(i),
            self.scenario.prompts.output as usize,
            self.scenario.protocol.chunk,
            HasherId::Blake3,
        )?;
        let sub = self.sublayer_trace(&trace, &CellPlan::Setup(setup))?;
        let mut secret = [0u8; 32];
        stream("veritrace/sim/map-key/v1", self.scenario.seed, i, 0).fill_bytes(&mut secret);
        let key = VerifierKey::build(
            &VerifierSecret::from_bytes(secret),
            decoder,
            self.scenario.protocol.freivalds_repetitions,
        )
        .and_then(|k| k.for_setup(decoder, &self.scenario.reference))
        .map_err(|e| SimError::Scenario(format!("a calibration key: {e}")))?;
        let layout = decoder.sublayer_layout();
        let ratios = sub
            .context
            .iter()
            .zip(&sub.cell)
            .enumerate()
            .map(|(li, (context, cell))| -> Result<[f64; 7], SimError> {
                let c = layout.unpack_context(context)?;
                let s = SubLayers {
                    normed: c.normed,
                    k: c.k,
                    v: c.v,
                    ..layout.unpack_cell(cell)?
                };
                layer_map_ratios(&key, decoder, li + 1, &s, trace.tokens)
                    .map_err(|e| SimError::Scenario(format!("per-map calibration: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(MapRun {
            nonlinear: None,
            variation: setup.to_string(),
            ratios,
        })
    }

    /// Runs `setup` on `model` over `prompt` and returns the statement claiming the reference
    /// setup and the claimed model, with the trace.
    pub(crate) fn run_setup(
        &self,
        model: &SimModel,
        setup: &Setup,
        prompt: &[u32],
    ) -> Result<(Statement, Trace), SimError> {
        let p = &self.scenario.protocol;
        let (mut statement, trace) = model.prove_on(
            &self.prover,
            setup,
            prompt,
            self.scenario.prompts.output as usize,
            p.chunk,
            HasherId::Blake3,
        )?;
        statement.setup = self.scenario.reference.to_bytes();
        statement.model_digest = self.model.digest();
        if self.key.is_some() {
            // every prover commits at the sub-layer level, in the claimed model's layout (by
            // head with drawn openings), as f32 whatever its setup: the values are exact in
            // either, and an adversary's values need not be the claimed setup's type
            if let Some(d) = self.model.decoder() {
                let layout = d.sublayer_layout();
                statement.trace_level = if self.drawn() {
                    layout.by_head_level()?
                } else {
                    layout.trace_level()?
                };
            }
        }
        // a prompt from the scenario's text carries its binding (checked by the verifier)
        statement.input_text = self
            .texts
            .iter()
            .find(|(tokens, _)| tokens.as_slice() == prompt)
            .map(|(_, binding)| binding.clone());
        Ok((statement, trace))
    }

    /// The verifier's model: cells recomputed on the scenario's `verifier_device`.
    pub(crate) fn verifier_model(&self) -> SimVerifier {
        SimVerifier {
            model: self.model.clone(),
            runner: self.verifier.clone(),
            keyed: self.key.clone().map(|k| self.keyed_check(k)),
        }
    }

    /// A cheaper model of the same shape ([`veritrace_model::Model::swap_model`]).
    pub fn swap_model(&self) -> Result<SimModel, SimError> {
        Ok(self.model.swap_model()?)
    }

    /// `⌈f · n⌉` distinct cells drawn from `cells`, keyed by the scenario seed.
    pub(crate) fn pick(
        &self,
        cells: &[CellId],
        fraction: f64,
        a: u64,
        prompt: u64,
    ) -> BTreeSet<CellId> {
        let want = ((fraction * cells.len() as f64).ceil() as usize).min(cells.len());
        let mut rng = stream("veritrace/sim/cheat/v1", self.scenario.seed, a, prompt);
        let mut pool = cells.to_vec();
        // Partial Fisher-Yates.
        for i in 0..want {
            let j = i + (rng.next_u64() % (pool.len() - i) as u64) as usize;
            pool.swap(i, j);
        }
        pool.into_iter().take(want).collect()
    }

    /// The prover run of adversary `a` (index `ai`) on prompt `pi`.
    pub fn prover_run(&self, a: &Adversary, ai: u64, pi: u64) -> Result<ProverRun, SimError> {
        let prompt = self.prompt(pi);
        let committed = a.behaviour().commit(self, ai, pi, &prompt)?;
        let (statement, trace) = (committed.statement, committed.trace);
        let sublayers = match self.key {
            Some(_) => Some(self.sublayer_trace(&trace, &committed.plan)?),
            None => None,
        };
        let deviations = self.trace_deviations(&statement, &trace)?;
        let mut run = ProverRun {
            statement,
            trace,
            bad: BTreeSet::new(),
            deviations,
            cost: committed.cost,
            equivocate: committed.equivocate,
            corridor: committed.corridor,
            sublayers,
            drawn: None,
        };
        (run.bad, run.drawn) = self.bad_cells(&run)?;
        Ok(run)
    }

    /// The sub-layer traces of a committed trace whose cells were computed as `plan` says:
    /// every cell of layers ≥ 1 recomputed from the committed rows below under its model and
    /// setup, with its sub-layer values captured ([`LlamaModel::recompute_cell_sublayers`]),
    /// packed in the claimed model's layout.
    pub(crate) fn sublayer_trace(
        &self,
        trace: &Trace,
        plan: &CellPlan,
    ) -> Result<SubLayerTrace, SimError> {
        let claimed = self.model.decoder().ok_or_else(|| {
            SimError::Scenario("the sub-layer trace needs a Llama-style decoder".into())
        })?;
        let layout = claimed.sublayer_layout();
        let reference = self.scenario.reference;
        let chunk = self.scenario.protocol.chunk as usize;
        let (n, d) = (trace.tokens, trace.hidden);
        let cells: Vec<(usize, usize)> = (1..trace.layers.len())
            .flat_map(|l| (0..n.div_ceil(chunk)).map(move |j| (l, j)))
            .collect();
        let packed: Vec<(Vec<f32>, Vec<f32>)> = cells
            .par_iter()
            .map(|&(l, j)| -> Result<(Vec<f32>, Vec<f32>), SimError> {
                let cell = CellId {
                    layer: l as u32,
                    chunk: j as u32,
                };
                let (model, setup): (&LlamaModel, Setup) = match plan {
                    CellPlan::Reference | CellPlan::WrongHeads(_) => (claimed, reference),
                    CellPlan::Setup(s) => (claimed, *s),
                    CellPlan::Model(m) => (
                        m.decoder().ok_or_else(|| {
                            SimError::Scenario("a swapped model that is not a decoder".into())
                        })?,
                        reference,
                    ),
                    CellPlan::Mixed { cheat, cheap } => (
                        claimed,
                        if cheat.contains(&cell) {
                            *cheap
                        } else {
                            reference
                        },
                    ),
                };
                let e = ((j + 1) * chunk).min(n);
                let (_, sub) = model.recompute_cell_sublayers(
                    &setup,
                    chunk,
                    l,
                    j,
                    &trace.layers[l - 1][..e * d],
                )?;
                let mut sub = fit(&sub, &model.sublayer_layout(), &layout);
                if let CellPlan::WrongHeads(heads) = plan {
                    // one ulp off in the first `heads` heads' attention output, every row
                    let hd = claimed.config().head_dim();
                    let width = claimed.config().num_heads * hd;
                    for row in sub.attn.chunks_exact_mut(width.max(1)) {
                        for v in &mut row[..heads * hd] {
                            *v = f32::from_bits(v.to_bits() ^ 1);
                        }
                    }
                }
                Ok(layout.pack(&sub)?)
            })
            .collect::<Result<_, _>>()?;
        let mut out = SubLayerTrace::default();
        let per = n.div_ceil(chunk);
        for (i, (context, cell)) in packed.into_iter().enumerate() {
            if i % per == 0 {
                out.context
                    .push(Vec::with_capacity(n * layout.context_width()));
                out.cell.push(Vec::with_capacity(n * layout.cell_width()));
            }
            out.context.last_mut().expect("pushed").extend(context);
            out.cell.last_mut().expect("pushed").extend(cell);
        }
        Ok(out)
    }

    /// Rebuilds a trace layer by layer: cells in `cheat` under `cheap`, the others under the
    /// reference, each from the committed rows of the layer below. Returns it with its cost.
    pub(crate) fn mixed_trace(
        &self,
        honest: &Trace,
        cheat: &BTreeSet<CellId>,
        cheap: &Setup,
    ) -> Result<(Trace, f64), SimError> {
        let reference = self.scenario.reference;
        let chunk = self.scenario.protocol.chunk as usize;
        let d = honest.hidden;
        let n = honest.tokens;
        let mut t = honest.clone();
        let mut cost = 0.0;
        for l in 1..t.layers.len() {
            let mut layer = Vec::with_capacity(n * d);
            for j in 0..n.div_ceil(chunk) {
                let end = ((j + 1) * chunk).min(n);
                let cell = CellId {
                    layer: l as u32,
                    chunk: j as u32,
                };
                let setup = if cheat.contains(&cell) {
                    cheap
                } else {
                    &reference
                };
                let inputs = self.model.input_rows(n, chunk, j);
                let rows = self.model.recompute_cell_on(
                    &self.prover,
                    setup,
                    chunk,
                    l,
                    j,
                    CellInputs::Hidden(&t.layers[l - 1][..inputs.end * d]),
                )?;
                cost += self.model.cell_cost(
                    setup,
                    &reference,
                    l as u32,
                    (j * chunk) as u32..end as u32,
                    n as u32,
                );
                layer.extend(rows);
            }
            t.layers[l] = layer;
        }
        Ok((t, cost))
    }

    /// Per layer, the tolerance metric of every cell of `trace` against its reference recompute
    /// from the committed inputs (a cell whose values cannot be compared, e.g. non-finite,
    /// counts as `f64::MAX`).
    fn trace_deviations(
        &self,
        statement: &Statement,
        trace: &Trace,
    ) -> Result<BTreeMap<u32, Vec<f64>>, SimError> {
        let chunk = self.scenario.protocol.chunk as usize;
        let metric = self.scenario.tolerance.metric;
        let recompute = self.recomputer();
        let cells: Vec<(usize, usize)> = (0..trace.layers.len())
            .flat_map(|l| (0..trace.tokens.div_ceil(chunk)).map(move |j| (l, j)))
            .collect();
        let values: Vec<(u32, f64)> = cells
            .par_iter()
            .map(|&(l, j)| -> Result<(u32, f64), SimError> {
                let (claimed, recomputed) = recompute.cell_pair(statement, trace, l, j)?;
                let v = Deviation::between(&claimed, &recomputed, None)
                    .ok()
                    .and_then(|d| d.get(metric))
                    .unwrap_or(f64::MAX);
                Ok((l as u32, v))
            })
            .collect::<Result<_, _>>()?;
        let mut out: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        for (l, v) in values {
            out.entry(l).or_default().push(v);
        }
        Ok(out)
    }

    /// Cells whose single-cell check by the verifier's own [`check_opening_by`] fails (its
    /// layer check and tolerance; with drawn openings, the whole opening of the cell, every
    /// head and chunk), and with drawn openings what of each one's check fails
    /// ([`Simulation::weakness`]).
    fn bad_cells(
        &self,
        run: &ProverRun,
    ) -> Result<(BTreeSet<CellId>, Option<DrawnCells>), SimError> {
        let mut prover = run.prover()?;
        let commitment = prover.commit()?;
        let verifier = self.verifier_model();
        let bad = self.whole_bad_cells(run, &prover, &commitment, &verifier)?;
        let Some(sample) = self.scenario.protocol.attention_sample() else {
            return Ok((bad, None));
        };
        let Some((heads, _)) = run.statement.trace_level.heads() else {
            return Err(SimError::Engine(
                "drawn openings of a statement not committed by head".into(),
            ));
        };
        let found: Vec<(CellId, Weakness, bool)> = bad
            .iter()
            .copied()
            .collect::<Vec<_>>()
            .par_iter()
            .map(|&cell| {
                let (w, explained) =
                    self.weakness(&run.statement, &prover, &commitment, &verifier, cell, heads)?;
                Ok((cell, w, explained))
            })
            .collect::<Result<_, SimError>>()?;
        let p = &self.scenario.protocol;
        let bitwise = p.sublayer_tolerance == 0.0
            && self.map_bounds.as_ref().is_none_or(|(b, _)| {
                b.nonlinear
                    .as_ref()
                    .is_none_or(|n| n.iter().flatten().all(|&t| t == 0.0))
            });
        let exact = bitwise && found.iter().all(|(_, _, explained)| *explained);
        let drawn = DrawnCells {
            cells: found.into_iter().map(|(c, w, _)| (c, w)).collect(),
            heads,
            sample,
            exact,
        };
        Ok((bad, Some(drawn)))
    }

    /// With drawn openings, what of bad cell `cell`'s check fails ([`Weakness`]), measured
    /// through the protocol: the cell challenged under a draw of each single query head and no
    /// earlier chunk, then (when some head passes, so that nothing every draw checks fails)
    /// under a passing head and each single earlier chunk. Also whether some part was found
    /// failing (a cell whose whole check fails and no single part's does is not explained by
    /// its parts).
    fn weakness(
        &self,
        statement: &Statement,
        prover: &Prover<Vec<u8>>,
        commitment: &Commitment,
        verifier: &SimVerifier,
        cell: CellId,
        heads: u32,
    ) -> Result<(Weakness, bool), SimError> {
        let Some(rows) = statement.input_rows(cell)? else {
            // layer 0: recomputed, whatever the draw
            return Ok((
                Weakness {
                    always: true,
                    ..Weakness::default()
                },
                true,
            ));
        };
        let first = rows.start / statement.geometry.chunk;
        let earlier = cell.chunk - first;
        let caught = |draw: AttentionDraw| -> Result<bool, SimError> {
            let challenge = Challenge {
                round: 0,
                cells: vec![cell],
                attention: Some(draw),
            };
            let opening = prover.open_drawn(0, &challenge.cells, Some(&draw), 0)?;
            Ok(check_opening_drawn(
                commitment,
                &challenge,
                &opening,
                &self.policy,
                LayerCheck::Freivalds,
                verifier,
                &VerifierLimits::default(),
            )
            .is_err())
        };
        let mut failing = Vec::new();
        for h in 0..heads {
            if caught(draw_of(statement, cell, &[h], &[])?)? {
                failing.push(h);
            }
        }
        let Some(good) = (0..heads).find(|h| !failing.contains(h)) else {
            return Ok((
                Weakness {
                    always: true,
                    heads: failing,
                    chunks: Vec::new(),
                    earlier,
                },
                true,
            ));
        };
        let mut chunks = Vec::new();
        for m in first..cell.chunk {
            if caught(draw_of(statement, cell, &[good], &[m])?)? {
                chunks.push(m);
            }
        }
        let explained = !failing.is_empty() || !chunks.is_empty();
        Ok((
            Weakness {
                always: false,
                heads: failing,
                chunks,
                earlier,
            },
            explained,
        ))
    }

    /// Whether the scenario draws openings (`protocol.context_chunks`).
    pub(crate) fn drawn(&self) -> bool {
        self.key.is_some() && self.scenario.protocol.context_chunks.is_some()
    }

    /// Cells whose whole single-cell check fails.
    fn whole_bad_cells(
        &self,
        run: &ProverRun,
        prover: &Prover<Vec<u8>>,
        commitment: &Commitment,
        verifier: &SimVerifier,
    ) -> Result<BTreeSet<CellId>, SimError> {
        let statement = &run.statement;
        let method = self.scenario.protocol.layer_check;
        let g = statement.geometry;
        let cells: Vec<CellId> = (0..g.num_cells())
            .map(|i| g.cell_at(i).expect("in range"))
            .collect();
        let bad: Vec<Option<CellId>> = cells
            .par_iter()
            .map(|&cell| -> Result<Option<CellId>, SimError> {
                let opening = prover.open_cells(0, &[cell], 0)?;
                Ok(check_opening_by(
                    commitment,
                    &[cell],
                    &opening,
                    &self.policy,
                    method,
                    verifier,
                    &VerifierLimits::default(),
                )
                .err()
                .map(|_| cell))
            })
            .collect::<Result<_, _>>()?;
        Ok(bad.into_iter().flatten().collect())
    }

    pub(crate) fn verifier_config(&self, mode: Mode, pow_bits: u8) -> VerifierConfig {
        let p = &self.scenario.protocol;
        VerifierConfig {
            method: p.layer_check,
            mode,
            params: ChallengeParams {
                samples: p.samples,
                strategy: p.strategy,
                pow_bits,
                // drawn openings: every challenge carries an attention draw, its seed from the
                // verifier's randomness (the trial's stream) like the cells'
                attention: if self.drawn() {
                    p.attention_sample()
                } else {
                    None
                },
            },
            rounds: p.rounds,
            tolerance: self.policy.clone(),
        }
    }

    /// Runs every adversary's trials end to end; `progress` is called once per finished trial.
    pub fn run(&self, progress: &(dyn Fn() + Sync)) -> Result<SimReport, SimError> {
        self.run_with(EngineMode::EndToEnd, progress)
    }

    /// Runs every adversary's trials with `engine`; `progress` is called once per finished
    /// end-to-end trial, and once per adversary's batch of fast trials. An adversary whose
    /// trials run end to end (every adversary in [`EngineMode::EndToEnd`]; in fast mode, one
    /// whose trials fast mode cannot draw: weight perturbation, and equivocation under drawn
    /// openings) with more than
    /// [`MAX_END_TO_END_TRIALS`] trials is refused
    /// ([`SimError::Scenario`]) before any trial runs.
    pub fn run_with(
        &self,
        engine: EngineMode,
        progress: &(dyn Fn() + Sync),
    ) -> Result<SimReport, SimError> {
        // Refused before any trial: end-to-end trials are sessions, far costlier than fast ones.
        for a in &self.scenario.adversaries {
            let fast = engine == EngineMode::Fast && self.fast_sampled(&a.adversary);
            let trials = self.scenario.trials_of(a);
            if !fast && trials > MAX_END_TO_END_TRIALS {
                return Err(SimError::Scenario(format!(
                    "adversary {}: trials = {trials} exceeds the limit {MAX_END_TO_END_TRIALS} \
                     of trials run end to end (fast mode runs up to {})",
                    a.label(),
                    crate::scenario::MAX_TRIALS
                )));
            }
        }
        let mut results = Vec::new();
        for (ai, a) in self.scenario.adversaries.iter().enumerate() {
            let fast = engine == EngineMode::Fast && self.fast_sampled(&a.adversary);
            results.push(self.run_adversary(a, ai as u64, fast, progress)?);
        }
        Ok(SimReport {
            engine,
            scenario: self.scenario.clone(),
            calibration: self.calibration.clone(),
            adversaries: results,
            freivalds_bounds: self.map_bounds.as_ref().map(|(_, s)| s.clone()),
        })
    }

    /// Whether fast mode draws `adversary`'s trials ([`crate::adversary::Behaviour::fast_sampled`]),
    /// except an equivocator's under drawn openings: the cells its opening holds, and so whether
    /// it touches an altered one, depend on each challenge's draw of context chunks, which
    /// neither its per-cell outcomes nor a per-run law capture; it runs end to end.
    fn fast_sampled(&self, adversary: &Adversary) -> bool {
        adversary.behaviour().fast_sampled()
            && !(self.drawn() && matches!(adversary, Adversary::Equivocation(_)))
    }

    /// The per-cell outcomes fast mode samples from: the bad cells, or for an equivocating
    /// prover the cells whose opening (the cell and its inputs) touches an altered cell.
    pub fn cell_outcomes(&self, run: &ProverRun) -> Result<CellOutcomes, SimError> {
        let g = run.statement.geometry;
        let mut bad = vec![false; g.num_cells() as usize];
        for i in 0..g.num_cells() {
            let cell = g.cell_at(i)?;
            bad[i as usize] = if run.equivocate.is_empty() {
                run.bad.contains(&cell)
            } else {
                run.statement
                    .opening_cells(&[cell])?
                    .iter()
                    .any(|c| run.equivocate.contains(c))
            };
        }
        Ok(CellOutcomes { bad })
    }

    fn run_adversary(
        &self,
        spec: &AdversarySpec,
        ai: u64,
        fast: bool,
        progress: &(dyn Fn() + Sync),
    ) -> Result<AdversaryResult, SimError> {
        let a = spec.adversary.behaviour();
        let pool = u64::from(self.scenario.pool_of(spec));
        let trials = self.scenario.trials_of(spec);
        let runs: Vec<ProverRun> = (0..pool)
            .into_par_iter()
            .map(|pi| self.prover_run(&spec.adversary, ai, pi))
            .collect::<Result<_, _>>()?;
        let reference = self.scenario.reference;
        let honest_cost =
            self.model
                .forward_cost(&reference, &reference, runs[0].trace.tokens as u32);
        let cells = runs[0].statement.geometry.num_cells();
        let k = u64::from(self.scenario.protocol.samples).min(cells);
        let rounds = self.scenario.protocol.rounds;
        let plan = Plan {
            cells,
            k,
            rounds,
            mode: a.mode(self.scenario.protocol.mode),
            pow_bits: a.pow_bits(self.scenario.protocol.pow_bits),
            drawn: self.drawn(),
        };
        // Per run of the pool: (trials detected, trials run) on it.
        let mut per_run: Vec<(u64, u64)> = vec![(0, 0); runs.len()];
        // Running totals of the outcomes, in trial order: memory is independent of the trials.
        let mut tally = Tally::default();
        if fast {
            let (detected, tallies) = match a.fast_detection(self, &plan, &runs)? {
                Some(probs) => fast::bernoulli_detections(&probs, trials, self.scenario.seed, ai),
                // drawn openings: a challenged bad cell is caught with its own draw's
                // probability, the draws of the cells independent, so a trial on a run is
                // detected with that run's exact law (`Plan::run_detection`)
                None if plan.drawn => {
                    let probs = runs
                        .iter()
                        .map(|r| {
                            plan.run_detection(r)?.ok_or_else(|| {
                                SimError::Scenario(format!(
                                    "adversary {}: fast mode under drawn openings needs each bad \
                                     cell's exact escape probability, which a relative \
                                     nonlinear tolerance (sublayer_tolerance > 0 or calibrated \
                                     ones) does not give: run it end to end",
                                    spec.label()
                                ))
                            })
                        })
                        .collect::<Result<Vec<f64>, SimError>>()?;
                    fast::bernoulli_detections(&probs, trials, self.scenario.seed, ai)
                }
                None => {
                    let profiles: Vec<CellOutcomes> = runs
                        .iter()
                        .map(|r| self.cell_outcomes(r))
                        .collect::<Result<_, _>>()?;
                    fast::detections(&profiles, k, rounds, trials, self.scenario.seed, ai)
                }
            };
            per_run = tallies;
            progress();
            // Mean verifier cost of k uniform cells per round, per run, averaged (none for an
            // adversary whose trials open no cell: late commitment).
            let mut cost = 0.0;
            if a.draws_challenges() {
                for r in &runs {
                    let g = r.statement.geometry;
                    let mut all = 0.0;
                    for i in 0..g.num_cells() {
                        all += self.recompute_cost(&r.statement, &[g.cell_at(i)?])?;
                    }
                    cost += all / g.num_cells() as f64 * k as f64 * f64::from(rounds);
                }
            }
            let cost = cost / runs.len() as f64;
            tally.add_fast(trials, detected, cost);
        } else {
            // Trials run in parallel a chunk at a time, each chunk's outcomes added in trial
            // order: the totals do not depend on the thread count, and only one chunk of
            // outcomes is held at once.
            let mut start = 0;
            while start < trials {
                let end = trials.min(start.saturating_add(fast::BLOCK));
                let tagged: Vec<(usize, Outcome)> = (start..end)
                    .into_par_iter()
                    .map(|t| {
                        let mut rng = stream("veritrace/sim/trial/v1", self.scenario.seed, ai, t);
                        let ri = (rng.next_u64() % pool) as usize;
                        let out = a.trial(self, &plan, &runs[ri], t, &mut rng);
                        progress();
                        out.map(|o| (ri, o))
                    })
                    .collect::<Result<_, _>>()?;
                for (ri, o) in tagged {
                    per_run[ri].0 += u64::from(!o.accepted);
                    per_run[ri].1 += 1;
                    tally.add(o);
                }
                start = end;
            }
        }
        let (runs_sampled, run_bounds) = over_runs(&per_run);
        let Tally {
            trials,
            detected,
            reasons,
            bytes,
            verifier_cost,
            ..
        } = tally.clone();
        let bad_cells = runs.iter().map(|r| r.bad.len() as f64).sum::<f64>() / runs.len() as f64;
        let prediction = a.prediction(self, &plan, &runs)?;
        let security_bits = a.security_bits(&plan, &runs)?;
        let cost = runs.iter().map(|r| r.cost).sum::<f64>() / runs.len() as f64;
        let n = trials.max(1) as f64;
        let note = a.note(&plan, &tally);
        Ok(AdversaryResult {
            label: spec.label(),
            kind: spec.adversary.kind(),
            trials,
            detected,
            detection: detected as f64 / n,
            wilson95: wilson(detected, trials, 1.959_963_984_540_054),
            runs: runs_sampled,
            run_bounds,
            predicted: prediction.as_ref().map(|p| p.value),
            predicted_is_lower_bound: prediction.is_some_and(|p| p.lower_bound),
            bad_cells,
            deviations: {
                let mut d: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
                for r in &runs {
                    for (l, v) in &r.deviations {
                        d.entry(*l).or_default().extend(v);
                    }
                }
                d
            },
            cells,
            saving: 1.0 - cost / honest_cost,
            verifier_cost: verifier_cost / n / honest_cost,
            bytes_opened: bytes / n,
            security_bits,
            reasons,
            note,
            corridor: self.corridor_result(&runs)?,
        })
    }

    /// One protocol session between `run`'s prover and a fresh verifier.
    pub(crate) fn session(
        &self,
        run: &ProverRun,
        mode: Mode,
        pow_bits: u8,
        rng: &mut ChaCha20Rng,
    ) -> Result<Outcome, SimError> {
        self.session_by(run, mode, pow_bits, rng, self.verifier_model())
    }

    /// The verifier's key (with the layer check `freivalds` or `both`).
    pub(crate) fn key(&self) -> Option<&Arc<VerifierKey>> {
        self.key.as_ref()
    }

    /// The verifier's engine with a key built from `secret` instead of the scenario's (a
    /// verifier of its own: the weight-perturbation adversary draws one per trial, so that its
    /// detection rate is over the secret vectors, as the stated probability is).
    pub(crate) fn verifier_with_secret(&self, secret: [u8; 32]) -> Result<SimVerifier, SimError> {
        let decoder = self.model.decoder().ok_or_else(|| {
            SimError::Scenario("a Freivalds key needs a Llama-style decoder".into())
        })?;
        let key = VerifierKey::build(
            &VerifierSecret::from_bytes(secret),
            decoder,
            self.scenario.protocol.freivalds_repetitions,
        )
        .and_then(|k| k.for_setup(decoder, &self.scenario.reference))
        .map_err(|e| SimError::Scenario(format!("the verifier's Freivalds key: {e}")))?;
        let mut v = self.verifier_model();
        v.keyed = Some(self.keyed_check(Arc::new(key)));
        Ok(v)
    }

    /// [`Simulation::session`] against the verifier engine `verifier`.
    pub(crate) fn session_by(
        &self,
        run: &ProverRun,
        mode: Mode,
        pow_bits: u8,
        rng: &mut ChaCha20Rng,
        verifier: SimVerifier,
    ) -> Result<Outcome, SimError> {
        let cfg = self.verifier_config(mode, pow_bits);
        let mut prover = run.prover()?;
        let mut verifier = Verifier::new(cfg.clone(), verifier)?;
        verifier.expect_statement(run.statement.clone());
        let mut step = verifier.receive_commitment(prover.commit()?, rng);
        let (mut bytes, mut cost) = (0u64, 0.0);
        loop {
            let (challenged, mut opening) = match step {
                Step::Decided(v) => return Ok(Outcome::of(v, bytes, cost)),
                Step::Challenge(c) => (c.cells.clone(), prover.open(&c)?),
                Step::AwaitOpening => {
                    let (c, o) = prover.open_non_interactive(&cfg.params)?;
                    (c.cells, o)
                }
            };
            for cell in &mut opening.cells {
                if run.equivocate.contains(&cell.cell) {
                    if let Some(b) = cell.data.first_mut() {
                        *b ^= 1;
                    }
                }
            }
            bytes += opening.to_bytes().len() as u64;
            cost += self.recompute_cost(&run.statement, &challenged)?;
            step = verifier.receive_opening(&opening, rng);
        }
    }

    /// The verifier's cost of checking `cells` (see [`crate::cost`]): the recompute cost of
    /// each cell; with the layer check `freivalds`, a cell of a layer ≥ 1 costs its recompute
    /// cost times the ratio of the verifier's FLOPs by Freivalds to those by recompute
    /// ([`veritrace_model::cost::verifier_cell_flops`]: the same rows and context; under a
    /// sampled attention check [`veritrace_model::cost::sampled_verifier_cell_flops`]), and
    /// with `both` the sum of the two.
    pub(crate) fn recompute_cost(
        &self,
        statement: &Statement,
        cells: &[CellId],
    ) -> Result<f64, SimError> {
        use veritrace_model::cost::{verifier_cell_flops, CheckMethod};
        let r = self.scenario.reference;
        let p = &self.scenario.protocol;
        let mut c = 0.0;
        for &cell in cells {
            let rows = statement.geometry.cell_rows(cell)?;
            let recompute = self.model.cell_cost(
                &r,
                &r,
                cell.layer,
                rows.clone(),
                statement.sequence_len() as u32,
            );
            let decoder = self.model.decoder().filter(|_| cell.layer >= 1);
            c += match (p.layer_check, decoder) {
                (LayerCheck::Recompute, _) | (_, None) => recompute,
                (method, Some(d)) => {
                    let context = statement
                        .input_rows(cell)?
                        .map_or(0, |i| u64::from(i.end - i.start));
                    let n = u64::from(rows.end - rows.start);
                    let flops = |m| verifier_cell_flops(d.config(), n, context, m).total();
                    let check = veritrace_model::cost::sampled_verifier_cell_flops(
                        d.config(),
                        n,
                        context,
                        p.freivalds_repetitions,
                        &p.cost_sampling(),
                    )
                    .total();
                    let ratio = check / flops(CheckMethod::Recompute);
                    match method {
                        LayerCheck::Both => recompute * (1.0 + ratio),
                        _ => recompute * ratio,
                    }
                }
            };
        }
        Ok(c)
    }
}

/// An attention draw whose draw for `cell` is exactly `heads` and `chunks` (one head or
/// chunk each, or none: a sample of that many), by trying seeds in turn; an engine error when
/// none of the first 2^22 seeds gives it.
fn draw_of(
    statement: &Statement,
    cell: CellId,
    heads: &[u32],
    chunks: &[u32],
) -> Result<AttentionDraw, SimError> {
    let want = CellDraw {
        heads: heads.to_vec(),
        chunks: chunks.to_vec(),
    };
    for i in 0u64..1 << 22 {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&i.to_le_bytes());
        let draw = AttentionDraw {
            heads: heads.len() as u32,
            chunks: chunks.len() as u32,
            seed: veritrace_commit::Digest(seed),
        };
        if draw.cell(statement, cell)? == want {
            return Ok(draw);
        }
    }
    Err(SimError::Engine(format!(
        "no attention draw of heads {heads:?} and chunks {chunks:?} for {cell:?}"
    )))
}

/// The runs that got trials and the one-sided 95% bounds over them, from per-run tallies
/// `(detected, trials)`: each run's detection estimate `p̂_r`, summed to `Σ p̂_r` effective
/// detections among the runs ([`crate::stats::bounds_over_runs`]).
fn over_runs(per_run: &[(u64, u64)]) -> (u64, (f64, f64)) {
    let used: Vec<f64> = per_run
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|&(d, n)| d as f64 / n as f64)
        .collect();
    let n = used.len() as u64;
    (
        n,
        crate::stats::bounds_over_runs(used.iter().sum(), n, 0.95),
    )
}

/// Running totals of trial outcomes, added in trial order (so the sums, and the report, do not
/// depend on the thread count): what a report needs of the trials, in memory independent of
/// their number.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    /// Trials added.
    pub trials: u64,
    /// Trials that ended in a rejection.
    pub detected: u64,
    /// Rejection reasons (or other outcome labels) and their counts.
    pub reasons: BTreeMap<String, u64>,
    /// Sum of the bytes of openings received, as `f64` added trial by trial.
    pub bytes: f64,
    /// Sum of the verifier's recompute costs, added trial by trial.
    pub verifier_cost: f64,
    /// The first trial's remark.
    pub first_note: Option<String>,
}

impl Tally {
    /// Adds one trial's outcome.
    pub(crate) fn add(&mut self, o: Outcome) {
        if self.trials == 0 {
            self.first_note = o.note;
        }
        self.trials += 1;
        self.detected += u64::from(!o.accepted);
        if let Some(r) = o.reason {
            *self.reasons.entry(r).or_insert(0) += 1;
        }
        self.bytes += o.bytes as f64;
        self.verifier_cost += o.verifier_cost;
    }

    /// Adds `trials` fast-mode trials of which `detected` were rejected, each with the verifier
    /// cost `cost` and no opening bytes (adding 0 bytes changes no total): the totals the same
    /// trials added one by one give
    /// (`detected` rejections labelled `fast-mode-detection`). The cost is added trial by trial,
    /// in constant memory, so that the mean is bit for bit the mean of the per-trial costs.
    pub(crate) fn add_fast(&mut self, trials: u64, detected: u64, cost: f64) {
        self.trials += trials;
        self.detected += detected;
        if detected > 0 {
            *self
                .reasons
                .entry("fast-mode-detection".to_string())
                .or_insert(0) += detected;
        }
        for _ in 0..trials {
            self.verifier_cost += cost;
        }
    }
}

/// The result of one trial.
pub(crate) struct Outcome {
    /// The verifier accepted.
    pub accepted: bool,
    /// Why it rejected (or another label of the outcome).
    pub reason: Option<String>,
    /// Bytes of openings received.
    pub bytes: u64,
    /// The verifier's recompute cost.
    pub verifier_cost: f64,
    /// A remark.
    pub note: Option<String>,
}

impl Outcome {
    /// The outcome of a session the verifier decided with `v`.
    pub(crate) fn of(v: Verdict, bytes: u64, verifier_cost: f64) -> Self {
        Outcome {
            accepted: v.is_accept(),
            reason: match &v {
                Verdict::Accept => None,
                Verdict::Reject(r) => Some(r.name().to_string()),
            },
            bytes,
            verifier_cost,
            note: None,
        }
    }
}

#[cfg(test)]
mod tally_tests {
    use super::*;

    /// The fast totals are bit for bit those of the same trials added one by one, as the
    /// engine recorded them before it aggregated as it went.
    #[test]
    fn fast_totals_equal_per_trial_totals() {
        for (trials, detected, cost) in
            [(1u64, 0u64, 0.1f64), (1000, 417, 0.1), (12_345, 3, 1.7e-3)]
        {
            let mut fast = Tally::default();
            fast.add_fast(trials, detected, cost);
            let mut one_by_one = Tally::default();
            for i in 0..trials {
                one_by_one.add(Outcome {
                    accepted: i >= detected,
                    reason: (i < detected).then(|| "fast-mode-detection".to_string()),
                    bytes: 0,
                    verifier_cost: cost,
                    note: None,
                });
            }
            assert_eq!(fast.trials, one_by_one.trials);
            assert_eq!(fast.detected, one_by_one.detected);
            assert_eq!(fast.reasons, one_by_one.reasons);
            assert_eq!(fast.bytes.to_bits(), one_by_one.bytes.to_bits());
            assert_eq!(
                fast.verifier_cost.to_bits(),
                one_by_one.verifier_cost.to_bits()
            );
            // The sum the report divided before: `outcomes.iter().map(..).sum::<f64>()`.
            let old: f64 = (0..trials).map(|_| cost).sum();
            assert_eq!(fast.verifier_cost.to_bits(), old.to_bits());
        }
    }
}
