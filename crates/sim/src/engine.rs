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
use veritrace_model::{CellInputs, Runner, Setup, Trace};
use veritrace_protocol::soundness::{
    detection_probability, grinding_security_bits, log2_miss_probability,
};
use veritrace_protocol::tolerance::{
    calibrate, measure_fpr, regularized_incomplete_beta, CalibrationConfig, Deviation, FprReport,
    Metric, PerLayer, TolerancePolicy,
};
use veritrace_protocol::transcript::{check_pow, derive_challenge};
use veritrace_protocol::{
    check_opening, ChallengeParams, Commitment, Message, Mode, Prover, Statement, Step, Verdict,
    Verifier, VerifierConfig,
};

use crate::fast::{self, CellOutcomes};
use crate::model::{SimModel, SimVerifier};
use crate::scenario::{AdversaryKind, AdversarySpec, Scenario};
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
    /// Cells whose single-cell check (the verifier's own) fails.
    pub bad: BTreeSet<CellId>,
    /// Per layer, the deviation (the tolerance metric) of each committed cell from its reference
    /// recompute from the committed inputs.
    pub deviations: BTreeMap<u32, Vec<f64>>,
    /// The prover's compute cost (see [`crate::cost`]).
    pub cost: f64,
    /// Cells whose opened bytes an equivocating prover alters.
    pub equivocate: BTreeSet<CellId>,
}

/// What calibration produced and what the held-out prompts measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationSummary {
    /// Metric of the thresholds.
    pub metric: Metric,
    /// Per-cell target false-positive rate `α = 1 − (1 − target)^(1/(k·rounds))`.
    pub cell_alpha: f64,
    /// Per-layer thresholds.
    pub thresholds: PerLayer,
    /// Honest samples used per layer.
    pub samples_per_layer: u64,
    /// Per-cell false-positive rate on held-out honest other-hardware runs.
    pub holdout: FprReport,
    /// The session false-positive rate those cells imply, `1 − (1 − fpr)^(k·rounds)`.
    pub holdout_session_fpr: f64,
    /// The held-out honest samples per layer (for ROC curves).
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
    /// 95% Wilson interval of the detection probability.
    pub wilson95: (f64, f64),
    /// Hypergeometric prediction from the bad-cell counts (mean over the prompt pool), if the
    /// kind has one.
    pub predicted: Option<f64>,
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
}

/// Which engine ran the trials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineMode {
    /// Every trial runs the real prover and verifier.
    EndToEnd,
    /// Trials sampled from per-cell outcomes of end-to-end runs ([`crate::fast`]); grinding and
    /// late-commitment adversaries still run end to end.
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
}

/// Keyed ChaCha20 stream for a labelled purpose.
fn stream(label: &str, seed: u64, a: u64, b: u64) -> ChaCha20Rng {
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
}

impl Simulation {
    /// Loads the model, and calibrates the tolerance on honest other-hardware runs.
    pub fn new(scenario: Scenario) -> Result<Self, SimError> {
        scenario.validate()?;
        let model = SimModel::load(&scenario.model)?;
        if model.is_encoder() {
            if scenario.prompts.output != 0 {
                return Err(SimError::Scenario(format!(
                    "model {}: an encoder generates no tokens; set prompts.output = 0",
                    scenario.model
                )));
            }
            if let Some(a) = scenario
                .adversaries
                .iter()
                .find(|a| a.kind == AdversaryKind::ModelSwap)
            {
                return Err(SimError::Scenario(format!(
                    "adversary {}: model-swap needs a seeded decoder (tiny, small)",
                    a.label()
                )));
            }
        }
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
                cell_alpha: 0.0,
                thresholds: PerLayer::uniform(0.0),
                samples_per_layer: 0,
                holdout: FprReport {
                    layers: BTreeMap::new(),
                    overall: veritrace_protocol::tolerance::FprEstimate::new(0, 1, 0.95)?,
                },
                holdout_session_fpr: 0.0,
                holdout_samples: BTreeMap::new(),
            },
        };
        sim.calibrate()?;
        Ok(sim)
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
    pub fn prompt(&self, index: u64) -> Vec<u32> {
        let mut rng = stream("veritrace/sim/prompt/v1", self.scenario.seed, index, 0);
        let key = if self.model.is_encoder() {
            rng.next_u64()
        } else {
            0
        };
        self.model
            .prompt(key, self.scenario.prompts.tokens as usize, || {
                rng.next_u32()
            })
    }

    fn checks_per_session(&self) -> f64 {
        f64::from(self.scenario.protocol.samples) * f64::from(self.scenario.protocol.rounds)
    }

    /// Per-layer deviation samples of `setup`'s traces against reference recompute.
    fn deviation_samples(
        &self,
        setup: &Setup,
        prompts: std::ops::Range<u64>,
    ) -> Result<BTreeMap<u32, Vec<f64>>, SimError> {
        let metric = self.scenario.tolerance.metric;
        let per_prompt: Vec<BTreeMap<u32, Vec<f64>>> = prompts
            .into_par_iter()
            .map(|i| -> Result<_, SimError> {
                let (statement, trace) = self.run_setup(&self.model, setup, &self.prompt(i))?;
                let chunk = self.scenario.protocol.chunk as usize;
                let mut out: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
                for l in 0..trace.layers.len() {
                    for j in 0..trace.tokens.div_ceil(chunk) {
                        let (claimed, recomputed) = self.cell_pair(&statement, &trace, l, j)?;
                        let dev = Deviation::between(&claimed, &recomputed, None)
                            .map_err(|v| SimError::Engine(format!("honest cell: {v:?}")))?;
                        let v = dev.get(metric).unwrap_or(0.0);
                        out.entry(l as u32).or_default().push(v);
                    }
                }
                Ok(out)
            })
            .collect::<Result<_, _>>()?;
        let mut merged: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        for m in per_prompt {
            for (l, v) in m {
                merged.entry(l).or_default().extend(v);
            }
        }
        Ok(merged)
    }

    /// The committed rows of cell `(l, j)` and their reference recompute from the committed
    /// inputs.
    fn cell_pair(
        &self,
        statement: &Statement,
        trace: &Trace,
        l: usize,
        j: usize,
    ) -> Result<(Vec<f32>, Vec<f32>), SimError> {
        let chunk = self.scenario.protocol.chunk as usize;
        let d = trace.hidden;
        let end = ((j + 1) * chunk).min(trace.tokens);
        let claimed = trace.layers[l][j * chunk * d..end * d].to_vec();
        let inputs = self.model.input_rows(trace.tokens, chunk, j);
        let recomputed = if l == 0 {
            let tokens: Vec<u32> = statement
                .input_tokens
                .iter()
                .chain(&statement.output_tokens)
                .copied()
                .take(inputs.end)
                .collect();
            self.model.recompute_cell_on(
                &self.verifier,
                &self.scenario.reference,
                chunk,
                0,
                j,
                CellInputs::Tokens(&tokens),
            )?
        } else {
            self.model.recompute_cell_on(
                &self.verifier,
                &self.scenario.reference,
                chunk,
                l,
                j,
                CellInputs::Hidden(&trace.layers[l - 1][..inputs.end * d]),
            )?
        };
        Ok((claimed, recomputed))
    }

    fn calibrate(&mut self) -> Result<(), SimError> {
        let t = self.scenario.tolerance.clone();
        let base = u64::from(self.scenario.prompts.count);
        let cal = base..base + u64::from(t.calibration_prompts);
        let hold = cal.end..cal.end + u64::from(t.holdout_prompts);
        let mut samples: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        let mut held: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        for h in &t.honest {
            for (l, v) in self.deviation_samples(h, cal.clone())? {
                samples.entry(l).or_default().extend(v);
            }
            for (l, v) in self.deviation_samples(h, hold.clone())? {
                held.entry(l).or_default().extend(v);
            }
        }
        let checks = self.checks_per_session();
        let alpha = 1.0 - (1.0 - t.target_fpr).powf(1.0 / checks);
        let config = CalibrationConfig {
            alpha,
            margin: t.margin,
            confidence: 0.95,
        };
        let thresholds = if t.exact {
            // Identical hardware: bitwise comparison; any honest difference is a false alarm.
            self.policy = TolerancePolicy::Exact;
            PerLayer::uniform(0.0)
        } else {
            let calibration = calibrate(&samples, &config)?;
            self.policy = calibration.policy(t.metric, None)?;
            calibration.thresholds()
        };
        let holdout = measure_fpr(&thresholds, &held, 0.95)?;
        let session = 1.0 - (1.0 - holdout.overall.rate).powf(checks);
        self.calibration = CalibrationSummary {
            metric: t.metric,
            cell_alpha: alpha,
            thresholds,
            samples_per_layer: samples.values().map(|v| v.len() as u64).min().unwrap_or(0),
            holdout,
            holdout_session_fpr: session,
            holdout_samples: held,
        };
        Ok(())
    }

    /// Runs `setup` on `model` over `prompt` and returns the statement claiming the reference
    /// setup and the claimed model, with the trace.
    fn run_setup(
        &self,
        model: &SimModel,
        setup: &Setup,
        prompt: &[u32],
    ) -> Result<(Statement, Trace), SimError> {
        let p = &self.scenario.protocol;
        let (mut statement, trace) = model.prove_run_on(
            &self.prover,
            setup,
            prompt,
            self.scenario.prompts.output as usize,
            p.chunk,
            HasherId::Blake3,
        )?;
        statement.setup = self.scenario.reference.to_bytes();
        statement.model_digest = self.model.digest();
        Ok((statement, trace))
    }

    /// The verifier's model: cells recomputed on the scenario's `verifier_device`.
    fn verifier_model(&self) -> SimVerifier {
        SimVerifier {
            model: self.model.clone(),
            runner: self.verifier.clone(),
        }
    }

    /// A cheaper model of the same shape ([`SimModel::swap_model`]).
    pub fn swap_model(&self) -> Result<SimModel, SimError> {
        self.model.swap_model()
    }

    /// `⌈f · n⌉` distinct cells drawn from `cells`, keyed by the scenario seed.
    fn pick(&self, cells: &[CellId], fraction: f64, a: u64, prompt: u64) -> BTreeSet<CellId> {
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
    pub fn prover_run(&self, a: &AdversarySpec, ai: u64, pi: u64) -> Result<ProverRun, SimError> {
        let prompt = self.prompt(pi);
        let reference = self.scenario.reference;
        let (statement, trace, cost, equivocate) = match a.kind {
            AdversaryKind::Honest | AdversaryKind::LateCommitment => {
                let (s, t) = self.run_setup(&self.model, &reference, &prompt)?;
                let c = self
                    .model
                    .forward_cost(&reference, &reference, t.tokens as u32);
                (s, t, c, BTreeSet::new())
            }
            AdversaryKind::OtherHardware | AdversaryKind::Setup => {
                let setup = a.setup.expect("validated");
                let (s, t) = self.run_setup(&self.model, &setup, &prompt)?;
                let c = self.model.forward_cost(&setup, &reference, t.tokens as u32);
                (s, t, c, BTreeSet::new())
            }
            AdversaryKind::ModelSwap => {
                let swap = self.swap_model()?;
                let (s, t) = self.run_setup(&swap, &reference, &prompt)?;
                let c = swap.forward_cost(&reference, &reference, t.tokens as u32);
                (s, t, c, BTreeSet::new())
            }
            AdversaryKind::Partial | AdversaryKind::Grinding => {
                let cheap = a.setup.expect("validated");
                let (s, honest) = self.run_setup(&self.model, &reference, &prompt)?;
                let g = s.geometry;
                let cells: Vec<CellId> = (1..g.layers)
                    .flat_map(|layer| {
                        (0..g.chunks_per_layer()).map(move |chunk| CellId { layer, chunk })
                    })
                    .collect();
                let mut cheat = self.pick(&cells, a.fraction.expect("validated"), ai, pi);
                let last = g.layers - 1;
                if a.kind == AdversaryKind::Grinding && !cheat.iter().any(|c| c.layer == last) {
                    // A grinder keeps one cheated cell in the last layer, where altering it to
                    // re-randomize the root changes no other cell's recompute.
                    let swap_out = *cheat.iter().next().expect("at least one cheated cell");
                    cheat.remove(&swap_out);
                    let mut rng = stream("veritrace/sim/grind-cell/v1", self.scenario.seed, ai, pi);
                    let chunk = (rng.next_u64() % u64::from(g.chunks_per_layer())) as u32;
                    cheat.insert(CellId { layer: last, chunk });
                }
                let (t, c) = self.mixed_trace(&honest, &cheat, &cheap)?;
                (s, t, c, BTreeSet::new())
            }
            AdversaryKind::Equivocation => {
                let (s, t) = self.run_setup(&self.model, &reference, &prompt)?;
                let g = s.geometry;
                let cells: Vec<CellId> = (0..g.num_cells())
                    .map(|i| g.cell_at(i).expect("in range"))
                    .collect();
                let e = self.pick(&cells, a.fraction.expect("validated"), ai, pi);
                let c = self
                    .model
                    .forward_cost(&reference, &reference, t.tokens as u32);
                (s, t, c, e)
            }
        };
        let bad = self.bad_cells(&statement, &trace)?;
        let deviations = self.trace_deviations(&statement, &trace)?;
        Ok(ProverRun {
            statement,
            trace,
            bad,
            deviations,
            cost,
            equivocate,
        })
    }

    /// Rebuilds a trace layer by layer: cells in `cheat` under `cheap`, the others under the
    /// reference, each from the committed rows of the layer below. Returns it with its cost.
    fn mixed_trace(
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
        let cells: Vec<(usize, usize)> = (0..trace.layers.len())
            .flat_map(|l| (0..trace.tokens.div_ceil(chunk)).map(move |j| (l, j)))
            .collect();
        let values: Vec<(u32, f64)> = cells
            .par_iter()
            .map(|&(l, j)| -> Result<(u32, f64), SimError> {
                let (claimed, recomputed) = self.cell_pair(statement, trace, l, j)?;
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

    /// Cells whose single-cell check by the verifier's own [`check_opening`] fails.
    fn bad_cells(
        &self,
        statement: &Statement,
        trace: &Trace,
    ) -> Result<BTreeSet<CellId>, SimError> {
        let prover = Prover::new(statement.clone(), trace.layer_bytes())?;
        let commitment = Commitment {
            statement: statement.clone(),
            root: prover.tree().root(),
        };
        let g = statement.geometry;
        let cells: Vec<CellId> = (0..g.num_cells())
            .map(|i| g.cell_at(i).expect("in range"))
            .collect();
        let bad: Vec<Option<CellId>> = cells
            .par_iter()
            .map(|&cell| -> Result<Option<CellId>, SimError> {
                let opening = prover.open_cells(0, &[cell], 0)?;
                Ok(
                    check_opening(&commitment, &[cell], &opening, &self.policy, &self.model)
                        .err()
                        .map(|_| cell),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(bad.into_iter().flatten().collect())
    }

    fn verifier_config(&self, mode: Mode, pow_bits: u8) -> VerifierConfig {
        let p = &self.scenario.protocol;
        VerifierConfig {
            mode,
            params: ChallengeParams {
                samples: p.samples,
                strategy: p.strategy,
                pow_bits,
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
    /// end-to-end trial, and once per adversary's batch of fast trials.
    pub fn run_with(
        &self,
        engine: EngineMode,
        progress: &(dyn Fn() + Sync),
    ) -> Result<SimReport, SimError> {
        let mut results = Vec::new();
        for (ai, a) in self.scenario.adversaries.iter().enumerate() {
            let fast = engine == EngineMode::Fast
                && !matches!(
                    a.kind,
                    AdversaryKind::LateCommitment | AdversaryKind::Grinding
                );
            results.push(self.run_adversary(a, ai as u64, fast, progress)?);
        }
        Ok(SimReport {
            engine,
            scenario: self.scenario.clone(),
            calibration: self.calibration.clone(),
            adversaries: results,
        })
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
        a: &AdversarySpec,
        ai: u64,
        fast: bool,
        progress: &(dyn Fn() + Sync),
    ) -> Result<AdversaryResult, SimError> {
        let pool = u64::from(self.scenario.prompts.count);
        let runs: Vec<ProverRun> = (0..pool)
            .into_par_iter()
            .map(|pi| self.prover_run(a, ai, pi))
            .collect::<Result<_, _>>()?;
        let reference = self.scenario.reference;
        let honest_cost =
            self.model
                .forward_cost(&reference, &reference, runs[0].trace.tokens as u32);
        let cells = runs[0].statement.geometry.num_cells();
        let k = u64::from(self.scenario.protocol.samples).min(cells);
        let rounds = self.scenario.protocol.rounds;
        let pow_bits = a.pow_bits.unwrap_or(self.scenario.protocol.pow_bits);
        let mode = if a.kind == AdversaryKind::Grinding {
            Mode::NonInteractive
        } else {
            self.scenario.protocol.mode
        };
        let outcomes: Vec<Outcome> = if fast {
            let profiles: Vec<CellOutcomes> = runs
                .iter()
                .map(|r| self.cell_outcomes(r))
                .collect::<Result<_, _>>()?;
            let detected = fast::detections(
                &profiles,
                k,
                rounds,
                self.scenario.trials,
                self.scenario.seed,
                ai,
            );
            progress();
            // Mean verifier cost of k uniform cells per round, per run, averaged.
            let mut cost = 0.0;
            for r in &runs {
                let g = r.statement.geometry;
                let mut all = 0.0;
                for i in 0..g.num_cells() {
                    all += self.recompute_cost(&r.statement, &[g.cell_at(i)?])?;
                }
                cost += all / g.num_cells() as f64 * k as f64 * f64::from(rounds);
            }
            let cost = cost / runs.len() as f64;
            (0..self.scenario.trials)
                .map(|i| Outcome {
                    accepted: i >= detected,
                    reason: (i < detected).then(|| "fast-mode-detection".to_string()),
                    bytes: 0,
                    verifier_cost: cost,
                    note: None,
                })
                .collect()
        } else {
            (0..self.scenario.trials)
                .into_par_iter()
                .map(|t| {
                    let mut rng = stream("veritrace/sim/trial/v1", self.scenario.seed, ai, t);
                    let run = &runs[(rng.next_u64() % pool) as usize];
                    let out = match a.kind {
                        AdversaryKind::LateCommitment => self.late_commitment(run, &mut rng),
                        AdversaryKind::Grinding => {
                            self.grinding(run, a.budget_bits.expect("validated"), pow_bits, t)
                        }
                        _ => self.session(run, mode, pow_bits, &mut rng),
                    };
                    progress();
                    out
                })
                .collect::<Result<_, _>>()?
        };
        let trials = outcomes.len() as u64;
        let detected = outcomes.iter().filter(|o| !o.accepted).count() as u64;
        let mut reasons = BTreeMap::new();
        for o in &outcomes {
            if let Some(r) = &o.reason {
                *reasons.entry(r.clone()).or_insert(0) += 1;
            }
        }
        let bad_cells = runs.iter().map(|r| r.bad.len() as f64).sum::<f64>() / runs.len() as f64;
        let predict = |b: u64| -> Result<f64, SimError> {
            let miss = 1.0 - detection_probability(cells, b, k)?;
            Ok(1.0 - miss.powi(rounds as i32))
        };
        let predicted = match a.kind {
            AdversaryKind::LateCommitment => None,
            AdversaryKind::Equivocation => {
                let mut sum = 0.0;
                for r in &runs {
                    sum += predict(r.equivocate.len() as u64)?;
                }
                Some(sum / runs.len() as f64) // a lower bound: input cells are opened too
            }
            AdversaryKind::Grinding => {
                let (g, p) = (a.budget_bits.expect("validated"), pow_bits);
                let mut sum = 0.0;
                for r in &runs {
                    sum += grinding_detection(predict(r.bad.len() as u64)?, g, p);
                }
                Some(sum / runs.len() as f64)
            }
            _ => {
                let mut sum = 0.0;
                for r in &runs {
                    sum += predict(r.bad.len() as u64)?;
                }
                Some(sum / runs.len() as f64)
            }
        };
        let security_bits = if a.kind == AdversaryKind::Grinding {
            let b = runs.iter().map(|r| r.bad.len() as u64).min().unwrap_or(0);
            let log2_miss = f64::from(rounds) * log2_miss_probability(cells, b, k)?;
            Some(grinding_security_bits(
                log2_miss,
                f64::from(a.budget_bits.expect("validated")),
                f64::from(pow_bits),
            )?)
        } else {
            None
        };
        let cost = runs.iter().map(|r| r.cost).sum::<f64>() / runs.len() as f64;
        let n = trials.max(1) as f64;
        let note = match a.kind {
            AdversaryKind::LateCommitment => outcomes.first().and_then(|o| o.note.clone()),
            AdversaryKind::Equivocation => Some(
                "prediction is a lower bound: the input cells of challenged cells are opened too"
                    .into(),
            ),
            AdversaryKind::Grinding => Some(format!(
                "non-interactive, pow {pow_bits} bits, 2^{} hash evaluations per trial (roots re-randomized through a bad cell); the prediction is E[h^N] over the number N of complete attempts the budget allows",
                a.budget_bits.unwrap_or(0)
            )),
            _ => None,
        };
        Ok(AdversaryResult {
            label: a.label(),
            kind: a.kind,
            trials,
            detected,
            detection: detected as f64 / n,
            wilson95: wilson(detected, trials, 1.959_963_984_540_054),
            predicted,
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
            verifier_cost: outcomes.iter().map(|o| o.verifier_cost).sum::<f64>() / n / honest_cost,
            bytes_opened: outcomes.iter().map(|o| o.bytes as f64).sum::<f64>() / n,
            security_bits,
            reasons,
            note,
        })
    }

    /// One protocol session between `run`'s prover and a fresh verifier.
    fn session(
        &self,
        run: &ProverRun,
        mode: Mode,
        pow_bits: u8,
        rng: &mut ChaCha20Rng,
    ) -> Result<Outcome, SimError> {
        let cfg = self.verifier_config(mode, pow_bits);
        let mut prover = Prover::new(run.statement.clone(), run.trace.layer_bytes())?;
        let mut verifier = Verifier::new(cfg.clone(), self.verifier_model())?;
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

    fn recompute_cost(&self, statement: &Statement, cells: &[CellId]) -> Result<f64, SimError> {
        let r = self.scenario.reference;
        let mut c = 0.0;
        for &cell in cells {
            let rows = statement.geometry.cell_rows(cell)?;
            c += self
                .model
                .cell_cost(&r, &r, cell.layer, rows, statement.sequence_len() as u32);
        }
        Ok(c)
    }

    /// A prover that asks to be challenged before committing, then tries to commit twice.
    fn late_commitment(&self, run: &ProverRun, rng: &mut ChaCha20Rng) -> Result<Outcome, SimError> {
        let cfg =
            self.verifier_config(self.scenario.protocol.mode, self.scenario.protocol.pow_bits);
        let mut prover = Prover::new(run.statement.clone(), run.trace.layer_bytes())?;
        let mut verifier = Verifier::new(cfg, self.verifier_model())?;
        let early = prover.open_cells(0, &[CellId { layer: 0, chunk: 0 }], 0)?;
        let verdict = match verifier.receive_opening(&early, rng) {
            Step::Decided(v) => v,
            other => {
                return Err(SimError::Engine(format!(
                    "the verifier accepted an opening before any commitment: {other:?}"
                )))
            }
        };
        prover.commit()?;
        let second = prover.commit();
        let note = format!(
            "refused by the API: the verifier answers an opening before a commitment with {}; \
             a second commitment gets {}",
            verdict.name(),
            match &second {
                Err(e) => e.to_string(),
                Ok(_) => "accepted (a bug)".into(),
            }
        );
        let refused = !verdict.is_accept() && second.is_err();
        Ok(Outcome {
            accepted: !refused,
            reason: Some("late-commitment-refused".into()),
            bytes: 0,
            verifier_cost: 0.0,
            note: Some(note),
        })
    }

    /// Grinding against the non-interactive challenge with a budget of `2^g` hash evaluations.
    ///
    /// The prover re-randomizes its commitment by altering the lowest mantissa bytes of the
    /// first elements of one bad cell (one of the last layer if it has any, so no other cell's recompute
    /// reads it): a new root each attempt, costing one evaluation, then the proof-of-work search
    /// for that root (`2^pow_bits` evaluations expected). An attempt whose challenges, in every
    /// round, miss all bad cells is submitted; when the budget runs out the last complete attempt
    /// is. The real verifier decides either way.
    fn grinding(
        &self,
        run: &ProverRun,
        budget_bits: u32,
        pow_bits: u8,
        t: u64,
    ) -> Result<Outcome, SimError> {
        let cfg = self.verifier_config(Mode::NonInteractive, pow_bits);
        let g = run.statement.geometry;
        let target = run.bad.iter().rev().max_by_key(|c| c.layer).copied();
        let base = run.trace.layer_bytes();
        let budget = 1u64 << budget_bits;
        let mut spent = 0u64;
        let mut last: Option<(Prover<Vec<u8>>, Commitment, u64)> = None;
        let mut rng = stream("veritrace/sim/grind/v1", self.scenario.seed, t, 0);
        while spent < budget {
            let mut layers = base.clone();
            if let Some(cell) = target {
                // Every attempt, the first included (so that trials on one prompt start from
                // different roots), alters the lowest mantissa byte of the cell's first three
                // elements: relative changes below 2^-15, 2^24 distinct roots.
                let rows = g.cell_rows(cell)?;
                let at = rows.start as usize * g.hidden as usize * 4;
                let r = rng.next_u32().to_le_bytes();
                for e in 0..3usize.min(g.hidden as usize) {
                    layers[cell.layer as usize][at + 4 * e] ^= r[e].max(1);
                }
            }
            let mut prover = Prover::new(run.statement.clone(), layers)?;
            let commitment = prover.commit()?;
            spent += 1;
            let mut nonce = None;
            for candidate in 0u64.. {
                if spent >= budget && candidate > 0 {
                    break;
                }
                spent += 1;
                if check_pow(&commitment, &cfg.params, candidate)? {
                    nonce = Some(candidate);
                    break;
                }
            }
            let Some(nonce) = nonce else { break };
            let mut misses = true;
            for round in 0..cfg.rounds {
                let c = derive_challenge(&commitment, round, &cfg.params, nonce)?;
                if c.cells.iter().any(|cell| run.bad.contains(cell)) {
                    misses = false;
                    break;
                }
            }
            last = Some((prover, commitment, nonce));
            if misses || target.is_none() {
                break;
            }
        }
        let Some((prover, commitment, nonce)) = last else {
            return Ok(Outcome {
                accepted: false,
                reason: Some("budget-below-one-proof-of-work".into()),
                bytes: 0,
                verifier_cost: 0.0,
                note: None,
            });
        };
        let mut verifier = Verifier::new(cfg.clone(), self.verifier_model())?;
        verifier.expect_statement(run.statement.clone());
        let mut unused = ChaCha20Rng::from_seed([0; 32]); // non-interactive: never drawn from
        let mut step = verifier.receive_commitment(commitment.clone(), &mut unused);
        let (mut bytes, mut cost) = (0u64, 0.0);
        let mut round = 0;
        loop {
            match step {
                Step::Decided(v) => return Ok(Outcome::of(v, bytes, cost)),
                Step::AwaitOpening => {
                    let c = derive_challenge(&commitment, round, &cfg.params, nonce)?;
                    let opening = prover.open_cells(round, &c.cells, nonce)?;
                    bytes += opening.to_bytes().len() as u64;
                    cost += self.recompute_cost(&run.statement, &c.cells)?;
                    step = verifier.receive_opening(&opening, &mut unused);
                    round += 1;
                }
                Step::Challenge(_) => {
                    return Err(SimError::Engine("interactive step in grinding".into()))
                }
            }
        }
    }
}

/// Detection probability of a grinder (the law the grinding adversary follows): with `2^g`
/// evaluations, each attempt costing one root and a proof-of-work search that succeeds with
/// probability `q = 2^−p` per evaluation, the number `N` of complete attempts satisfies
/// `P(N ≥ n) = P(Bin(2^g − n, q) ≥ n) = I_q(n, 2^g − 2n + 1)`; each attempt is caught with
/// probability `h` (every round hits a bad cell), and the grinder is caught when all its
/// attempts are, or when none completes: `E[h^N] = 1 − (1 − h) Σ_{n≥1} P(N ≥ n) h^{n−1}`.
pub fn grinding_detection(h: f64, budget_bits: u32, pow_bits: u8) -> f64 {
    let budget = (1u64 << budget_bits) as f64;
    let q = (-(f64::from(pow_bits)) * std::f64::consts::LN_2).exp();
    let mut sum = 0.0;
    let mut h_pow = 1.0; // h^(n-1)
    let mut n = 1.0f64;
    while n <= 1e7 {
        let m = budget - n; // evaluations left for the n proof-of-work searches
        if m < n {
            break;
        }
        let tail = regularized_incomplete_beta(n, m - n + 1.0, q);
        if tail < 1e-16 || h_pow < 1e-300 {
            break;
        }
        sum += tail * h_pow;
        h_pow *= h;
        n += 1.0;
    }
    (1.0 - (1.0 - h) * sum).clamp(0.0, 1.0)
}

/// The result of one trial.
struct Outcome {
    accepted: bool,
    reason: Option<String>,
    bytes: u64,
    verifier_cost: f64,
    note: Option<String>,
}

impl Outcome {
    fn of(v: Verdict, bytes: u64, verifier_cost: f64) -> Self {
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
