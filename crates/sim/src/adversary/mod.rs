//! Adversaries as data: [`Adversary`] is one enum whose variants carry exactly the parameters
//! their kind takes, tagged by `kind` in scenario files. Each kind lives in its own module,
//! which owns everything the engine does differently for it: validation, the prover run (what
//! the prover computes and commits), the trial (a protocol session by default), the prediction
//! beside the measured detection, the security against grinding, the report's note, whether
//! fast mode can sample it, and the mode and proof of work of its sessions.
//!
//! The engine reaches a kind only through `Adversary::behaviour`, one exhaustive `match`: a
//! new kind is a new variant, a new module and a new arm there, and the compiler points at it.

mod corridor;
mod equivocation;
mod grinding;
mod head_cheat;
mod honest;
mod late_commitment;
mod model_swap;
mod other_hardware;
mod partial;
mod setup;
mod weight_perturbation;

use std::collections::BTreeSet;

use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use veritrace_commit::CellId;
use veritrace_model::{Setup, Trace};
use veritrace_protocol::soundness::detection_probability;
use veritrace_protocol::{Mode, Statement};

use crate::engine::{Outcome, ProverRun, Simulation, Tally};
use crate::model::SimModel;
use crate::SimError;

pub use corridor::{Corridor, CorridorProbe, CORRIDOR_SCALES};
pub use equivocation::Equivocation;
pub use grinding::{grinding_detection, Grinding};
pub use head_cheat::HeadCheat;
pub use honest::Honest;
pub use late_commitment::LateCommitment;
pub use model_swap::ModelSwap;
pub use other_hardware::OtherHardware;
pub use partial::Partial;
pub use setup::SetupSwap;
pub use weight_perturbation::WeightPerturbation;

/// An adversary: its kind and the parameters that kind takes (scenario files write it as a
/// table tagged by `kind`, the parameters beside it; a parameter the kind does not take is
/// refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Adversary {
    /// Runs the claimed setup.
    Honest(Honest),
    /// Runs a reduction-order variant of the claimed setup (honest, other hardware).
    OtherHardware(OtherHardware),
    /// Runs a cheaper setup for the whole trace.
    Setup(SetupSwap),
    /// Runs a cheaper model of the same shape.
    ModelSwap(ModelSwap),
    /// Runs a cheaper setup on a fraction of the cells.
    Partial(Partial),
    /// Opens values other than the committed ones on a fraction of the cells.
    Equivocation(Equivocation),
    /// Tries to get a challenge before committing, and to commit twice.
    LateCommitment(LateCommitment),
    /// Grinds the non-interactive challenge.
    Grinding(Grinding),
    /// Keeps every cell inside the tolerance and steers its first output token.
    Corridor(Corridor),
    /// One weight matrix perturbed at the scale of a quantization's error (issue 16).
    WeightPerturbation(WeightPerturbation),
    /// The attention output of some heads one ulp off: a probe of the sampled attention check.
    HeadCheat(HeadCheat),
}

/// Adversary kinds (an [`Adversary`] without its parameters), as results record them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdversaryKind {
    /// Runs the claimed setup.
    Honest,
    /// Runs a reduction-order variant of the claimed setup (honest, other hardware).
    OtherHardware,
    /// Runs a cheaper setup for the whole trace.
    Setup,
    /// Runs a cheaper model of the same shape.
    ModelSwap,
    /// Runs a cheaper setup on a fraction of the cells.
    Partial,
    /// Opens values other than the committed ones on a fraction of the cells.
    Equivocation,
    /// Tries to get a challenge before committing, and to commit twice.
    LateCommitment,
    /// Grinds the non-interactive challenge.
    Grinding,
    /// Keeps every cell inside the tolerance and steers its first output token.
    Corridor,
    /// Perturbs one weight matrix (issue 16).
    WeightPerturbation,
    /// Commits a wrong attention output in some heads (issue 16, the sampled check).
    HeadCheat,
}

impl AdversaryKind {
    /// The name scenario files and reports use (`other-hardware`, …).
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

impl Adversary {
    /// What the engine does for this kind: the one place that matches on the variant.
    pub(crate) fn behaviour(&self) -> &dyn Behaviour {
        match self {
            Adversary::Honest(a) => a,
            Adversary::OtherHardware(a) => a,
            Adversary::Setup(a) => a,
            Adversary::ModelSwap(a) => a,
            Adversary::Partial(a) => a,
            Adversary::Equivocation(a) => a,
            Adversary::LateCommitment(a) => a,
            Adversary::Grinding(a) => a,
            Adversary::Corridor(a) => a,
            Adversary::WeightPerturbation(a) => a,
            Adversary::HeadCheat(a) => a,
        }
    }

    /// The kind, without parameters.
    pub fn kind(&self) -> AdversaryKind {
        self.behaviour().kind()
    }

    /// The default report label: the kind, then its parameters (`setup`, `f=`, `2^budget`,
    /// `pow=`).
    pub fn label(&self) -> String {
        let mut s = self.kind().name();
        s.push_str(&self.behaviour().label_params());
        s
    }

    /// The setup run, for the kinds that take one (on the whole trace or on the cheated cells).
    pub fn setup(&self) -> Option<&Setup> {
        self.behaviour().setup()
    }

    /// The fraction of cells cheated, for the kinds that take one.
    pub fn fraction(&self) -> Option<f64> {
        self.behaviour().fraction()
    }

    /// Sets the fraction of cells cheated where the kind takes one; `false` (and no change)
    /// where it does not.
    pub fn set_fraction(&mut self, fraction: f64) -> bool {
        match self.behaviour().with_fraction(fraction) {
            Some(a) => {
                *self = a;
                true
            }
            None => false,
        }
    }
}

/// What every kind's prover commits to, before the engine measures its bad cells.
pub(crate) struct Committed {
    /// The statement (always claiming the reference setup and model).
    pub statement: Statement,
    /// The committed trace.
    pub trace: Trace,
    /// The prover's compute cost.
    pub cost: f64,
    /// Cells whose opened bytes an equivocating prover alters.
    pub equivocate: BTreeSet<CellId>,
    /// What a corridor prover's probe found on this prompt.
    pub corridor: Option<CorridorProbe>,
    /// How the prover computed each cell: the source of its sub-layer values, when the
    /// scenario's layer check needs them.
    pub plan: CellPlan,
}

/// How a prover computed the cells of layers ≥ 1 of its committed trace, each from the
/// committed rows below: the source of its sub-layer values (issue 16), captured per cell as
/// it computes them ([`veritrace_model::LlamaModel::recompute_cell_sublayers`]).
#[derive(Debug, Clone)]
pub(crate) enum CellPlan {
    /// The reference setup on the claimed model (honest runs, equivocation, the corridor:
    /// their altered values are not a computation, so their sub-layer values are honest).
    Reference,
    /// One setup on the claimed model for every cell.
    Setup(Setup),
    /// The reference setup on another model (the model swap); its rows are fitted to the
    /// claimed model's widths (zero-padded or cut).
    Model(SimModel),
    /// The reference, with the committed attention output of the first `n` query heads one
    /// unit in the last place off in every cell of layers ≥ 1 ([`HeadCheat`]).
    WrongHeads(usize),
    /// `cheap` on the `cheat` cells, the reference elsewhere.
    Mixed {
        /// The cells computed under `cheap`.
        cheat: BTreeSet<CellId>,
        /// The cheaper setup.
        cheap: Setup,
    },
}

impl Committed {
    /// A prover that opens what it committed, every cell computed under the reference.
    pub fn plain(statement: Statement, trace: Trace, cost: f64) -> Self {
        Committed {
            statement,
            trace,
            cost,
            equivocate: BTreeSet::new(),
            corridor: None,
            plan: CellPlan::Reference,
        }
    }

    /// The same, with the cells computed as `plan` says.
    pub fn with_plan(mut self, plan: CellPlan) -> Self {
        self.plan = plan;
        self
    }
}

/// What one adversary's trials share: the geometry of the challenge and the sessions' mode and
/// proof of work.
pub(crate) struct Plan {
    /// Cells per trace.
    pub cells: u64,
    /// Cells challenged per round (`min(samples, cells)`).
    pub k: u64,
    /// Rounds per session.
    pub rounds: u32,
    /// The mode of this adversary's sessions.
    pub mode: Mode,
    /// The proof-of-work bits of this adversary's sessions.
    pub pow_bits: u8,
    /// Whether challenges draw openings (`protocol.context_chunks`, specs/protocol.md §4.4):
    /// a challenged bad cell is then caught with its own probability
    /// ([`crate::engine::Weakness`]).
    pub drawn: bool,
}

impl Plan {
    /// The hypergeometric probability that a session catches a trace with `bad` bad cells
    /// (some round challenges one of them).
    pub fn detection(&self, bad: u64) -> Result<f64, SimError> {
        let miss = 1.0 - detection_probability(self.cells, bad, self.k)?;
        Ok(1.0 - miss.powi(self.rounds as i32))
    }

    /// The probability that one round misses `run`'s bad cells: the hypergeometric law on them
    /// with whole openings; with drawn openings `E_S[Π_{c ∈ S} e_c]` over the uniform
    /// `k`-subsets `S`, `e_c` a bad cell's escape probability under its draw (1 for the other
    /// cells; the draws of the cells are independent). `None` with drawn openings whose
    /// escapes are not exact ([`crate::engine::DrawnCells::exact`]).
    pub fn round_miss(&self, run: &ProverRun) -> Result<Option<f64>, SimError> {
        match &run.drawn {
            None => Ok(Some(
                1.0 - detection_probability(self.cells, run.bad.len() as u64, self.k)?,
            )),
            Some(d) if !d.exact => Ok(None),
            Some(d) => Ok(Some(
                weight_perturbation::expected_product(&d.escapes()?, self.cells, self.k)
                    .clamp(0.0, 1.0),
            )),
        }
    }

    /// The probability that a session catches `run` (some round catches a bad cell): with whole
    /// openings [`Plan::detection`] of its bad cells, with drawn ones from
    /// [`Plan::round_miss`] (`None` where that has none).
    pub fn run_detection(&self, run: &ProverRun) -> Result<Option<f64>, SimError> {
        if run.drawn.is_none() {
            return self.detection(run.bad.len() as u64).map(Some);
        }
        Ok(self
            .round_miss(run)?
            .map(|miss| 1.0 - miss.powi(self.rounds as i32)))
    }

    /// The mean over `runs` of [`Plan::run_detection`] (`None` if a run has none).
    pub fn mean_run_detection(&self, runs: &[ProverRun]) -> Result<Option<f64>, SimError> {
        let mut sum = 0.0;
        for r in runs {
            match self.run_detection(r)? {
                Some(p) => sum += p,
                None => return Ok(None),
            }
        }
        Ok(Some(sum / runs.len() as f64))
    }

    /// The mean over `runs` of [`Plan::detection`] of `bad(run)` bad cells.
    pub fn mean_detection(
        &self,
        runs: &[ProverRun],
        bad: impl Fn(&ProverRun) -> u64,
    ) -> Result<f64, SimError> {
        let mut sum = 0.0;
        for r in runs {
            sum += self.detection(bad(r))?;
        }
        Ok(sum / runs.len() as f64)
    }
}

/// A predicted detection probability.
pub(crate) struct Prediction {
    /// The probability.
    pub value: f64,
    /// `true`: a lower bound rather than an expectation.
    pub lower_bound: bool,
}

impl Prediction {
    /// An expectation.
    pub fn expected(value: f64) -> Self {
        Prediction {
            value,
            lower_bound: false,
        }
    }
}

/// What the engine does differently for each kind, implemented by each kind's parameters.
pub(crate) trait Behaviour: Sync {
    /// The kind.
    fn kind(&self) -> AdversaryKind;

    /// The parameters in the default label, each after a space (empty without any).
    fn label_params(&self) -> String {
        String::new()
    }

    /// Checks the parameters against the claimed setup; the message names the problem.
    fn check(&self, _reference: &Setup) -> Result<(), String> {
        Ok(())
    }

    /// Checks that the scenario's model can play this adversary.
    fn check_model(&self, _model: &SimModel) -> Result<(), String> {
        Ok(())
    }

    /// In non-interactive mode, whether every trial on one prompt repeats that prompt's
    /// challenge (its sessions reuse the prompt's commitment).
    fn repeats_challenges(&self) -> bool {
        true
    }

    /// Whether fast mode can run its trials: sampled from per-cell outcomes
    /// ([`crate::fast::detections`]), or from [`Behaviour::fast_detection`]'s per-run
    /// probabilities where it gives them.
    fn fast_sampled(&self) -> bool {
        true
    }

    /// Whether its trials draw challenges (and so cost the verifier the opened cells' checks);
    /// late commitment's draw none.
    fn draws_challenges(&self) -> bool {
        true
    }

    /// Fast mode for an adversary whose trial is not one challenge against fixed bad cells
    /// (grinding draws many challenges, late commitment none): each prover run's probability
    /// that a trial on it is detected, from which fast mode draws its trials
    /// ([`crate::fast::bernoulli_detections`]). `None` (the default): trials are sampled from
    /// per-cell outcomes.
    fn fast_detection(
        &self,
        _sim: &Simulation,
        _plan: &Plan,
        _runs: &[ProverRun],
    ) -> Result<Option<Vec<f64>>, SimError> {
        Ok(None)
    }

    /// The mode of its sessions, given the scenario's.
    fn mode(&self, scenario: Mode) -> Mode {
        scenario
    }

    /// The proof-of-work bits of its sessions, given the scenario's.
    fn pow_bits(&self, scenario: u8) -> u8 {
        scenario
    }

    /// The setup run, where the kind takes one.
    fn setup(&self) -> Option<&Setup> {
        None
    }

    /// The fraction of cells cheated, where the kind takes one.
    fn fraction(&self) -> Option<f64> {
        None
    }

    /// The same adversary with another fraction, where the kind takes one.
    fn with_fraction(&self, _fraction: f64) -> Option<Adversary> {
        None
    }

    /// The prover's run on `prompt` (prompt `pi`, adversary index `ai` of the scenario).
    fn commit(
        &self,
        sim: &Simulation,
        ai: u64,
        pi: u64,
        prompt: &[u32],
    ) -> Result<Committed, SimError>;

    /// Trial `t` against `run`, `rng` being the trial's stream (after it drew the prompt).
    fn trial(
        &self,
        sim: &Simulation,
        plan: &Plan,
        run: &ProverRun,
        _t: u64,
        rng: &mut ChaCha20Rng,
    ) -> Result<Outcome, SimError> {
        sim.session(run, plan.mode, plan.pow_bits, rng)
    }

    /// The predicted detection probability (default: the hypergeometric law on the bad cells,
    /// averaged over the prompt pool; with drawn openings, each challenged bad cell caught with
    /// its draw's probability, [`Plan::run_detection`]).
    fn prediction(
        &self,
        _sim: &Simulation,
        plan: &Plan,
        runs: &[ProverRun],
    ) -> Result<Option<Prediction>, SimError> {
        Ok(plan.mean_run_detection(runs)?.map(Prediction::expected))
    }

    /// Security bits against grinding.
    fn security_bits(&self, _plan: &Plan, _runs: &[ProverRun]) -> Result<Option<f64>, SimError> {
        Ok(None)
    }

    /// A remark for the report, given the totals of the trials' outcomes.
    fn note(&self, _plan: &Plan, _outcomes: &Tally) -> Option<String> {
        None
    }
}

/// Fraction checks shared by the kinds that cheat on a fraction of the cells.
fn check_fraction(fraction: f64) -> Result<(), String> {
    if fraction > 0.0 && fraction <= 1.0 {
        Ok(())
    } else {
        Err("needs a fraction in (0, 1]".into())
    }
}

/// A cheaper setup must differ from the reference in more than reduction order.
fn check_cheaper(setup: &Setup, reference: &Setup) -> Result<(), String> {
    if setup.same_algorithm(reference) {
        Err(format!(
            "{setup} differs from the reference only in reduction order"
        ))
    } else {
        Ok(())
    }
}
