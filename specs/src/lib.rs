//! # veritrace-spec: a stateright model of the protocol that drives the real verifier
//!
//! The normative protocol is in `specs/protocol.md`; this crate model-checks the *implementation*
//! of it. Every transition of the model hands a real message (a [`Commitment`] or an
//! [`Opening`] built by the real [`Prover`], possibly tampered with) to the real
//! [`Verifier`]`<`[`ToyEngine`]`>` of `veritrace-protocol`, and the model's verdicts are the
//! verifier's own. Nothing about the verifier's checks is re-implemented here: the model only
//! enumerates what a prover can send, and in which order, and what the verifier's randomness can
//! be, and then states what must hold of every reachable run.
//!
//! ## The system
//! * **Statement** ([`statement`]): 3 hidden states (h0..h2) x 4 tokens (2 input tokens, 2
//!   output tokens generated greedily by the honest [`ToyEngine`]), hidden size 2, chunk 2:
//!   **6 cells** (layers 0-2 x chunks 0-1), causal attention, f32, BLAKE3. Verifier policy: exact
//!   tolerance, uniform sampling of k cells per round, no proof of work, 1 or 2 rounds.
//! * **Traces** ([`TraceId`]): the honest toy forward pass; for each cell, the honest trace with
//!   that cell perturbed (+1.0 on its first element); the trace of another numeric setup (the
//!   toy engine with `perturb = 1e-3`, consistent from layer 1 on); in non-interactive mode, the
//!   adaptive trace (honest on the cells of the openings predicted without the root, the other
//!   setup's values everywhere else). Their commitments are made by the real [`Prover`].
//! * **Behaviours** ([`Behaviour`], chosen by the first action): `Honest`; `CheatCell(c)` for
//!   each of the 6 cells (commits to the perturbed trace, opens it faithfully); `OtherSetup`;
//!   three equivocators: `EquivocateOpen(c)` (commits honestly, opens `c` with other data),
//!   `EquivocateHide(c)` (commits to the trace perturbed at `c`, opens `c` with the honest data)
//!   and `EquivocateSetup` (commits to the other setup's trace, opens honest values for every
//!   opened cell); `LateCommit` (commits honestly, and once it knows a challenge may send a
//!   second commitment to a trace that cheats outside that challenge); `OpenBeforeCommit`
//!   (an opening first, then honest); `WrongRound` (every opening labelled for the next round);
//!   and, non-interactive only, `Adaptive` (computes every round's challenge with
//!   `transcript::challenge_seed_without_root` *before* committing, commits to the adaptive
//!   trace, then at each round opens either its predicted challenge or the one the real
//!   transcript derives from its root). The prover does not see the verdict: a non-interactive
//!   prover goes on sending after a rejection, which also checks that verdicts are final.
//! * **Verifier randomness** (interactive): the model finds, by running the real
//!   `sampling::sample_cells`, one 32-byte seed per distinct challenge (6 for k = 1, 15 for
//!   k = 2) and offers each as a separate `Deliver(Some(coin))` action whenever a delivery may
//!   start a round (a commitment awaited, or an opening of a round that is not the last), so the
//!   checker explores **every** challenge of every round. The verifier reads the coin through an
//!   `RngCore + CryptoRng` that records whether it was drawn (a coin not drawn is not recorded,
//!   so it does not split states) and panics if the verifier draws where the model offered none.
//! * **State** ([`State`]): the behaviour; the one message in flight (prover to verifier, a
//!   one-slot channel); the log of deliveries (each message with the coin drawn on it and the
//!   verifier's state before it); and a hashable mirror ([`VState`]) of the verifier's state,
//!   whose `Decided` carries the verdict and the [`Reason`] of a rejection. The real verifier is
//!   neither `Clone` nor `Hash`, so each transition rebuilds it by replaying the log into a fresh
//!   [`Verifier`] with the configured [`Faults`] (deterministic: the coins are in the log).
//!   Messages hash through their canonical binary encoding.
//! * **Actions** ([`Action`]): `Choose(behaviour)`, `Send(move)` (the prover puts its next
//!   message in flight), `Deliver(coin)` (the verifier receives it).
//!
//! ## Properties
//! * *always* [`HONEST_NEVER_REJECTED`]: no run of an honest prover is rejected;
//!   *eventually* [`HONEST_ENDS_ACCEPTED`]: every honest run ends accepted (it cannot stall).
//! * *always* [`ACCEPTED_CELLS_SOUND`]: in an accepted run, every cell challenged in every
//!   round (interactive: the challenge the verifier sent; non-interactive: the challenge the
//!   root-bound transcript derives for the bound commitment) is in that round's opening with
//!   bytes equal to the committed trace's bytes *and* to the honest toy forward pass (exact
//!   tolerance: within tolerance means equal).
//! * *always* [`EQUIVOCATION_NEVER_ACCEPTED`]: in an accepted run, every opened cell (challenged
//!   or input) equals the bound commitment's trace.
//! * *always* [`COMMITMENT_PRECEDES_CHALLENGE`]: no accepted run delivered a commitment chosen
//!   after the prover knew a challenge: neither a late commitment (chosen after a challenge was
//!   received or derived), nor an adaptive commitment whose accepted opening is the challenge it
//!   predicted before committing while the root-bound transcript gives another one. (An adaptive
//!   prover whose prediction happens to equal the root-bound challenge is lucky, not informed; the
//!   property does not count it.)
//! * *always* [`VERDICT_FINAL`]: once decided, the verifier's state never changes.
//! * *sometimes* (non-vacuity): [`CHEATING_SOMETIMES_ACCEPTED`] (an accepted run whose committed
//!   trace is not the honest one: a cheater escapes when its cells are not sampled),
//!   [`HONEST_SOMETIMES_ACCEPTED`], [`LATE_COMMITMENT_DELIVERED`], and each modelled rejection:
//!   [`REJECT_OUT_OF_ORDER`] (late commitment, early opening, wrong round), [`REJECT_BAD_PROOF`]
//!   (equivocation), [`REJECT_TOLERANCE`] (cheating trace), and, non-interactive only,
//!   [`REJECT_WRONG_CELLS`] (the adaptive prover opening its predicted challenge).
//!
//! ## The checker is not vacuous
//! The `always` properties are only worth something if a defective verifier breaks them. The
//! verifier's `fault-injection` feature provides two defects, and `tests/model.rs` shows the
//! checker catches each with a concrete counterexample path:
//! * `Faults { skip_proof_check }` (the batch Merkle proof is not verified): the checker finds an
//!   accepted equivocation, breaking [`EQUIVOCATION_NEVER_ACCEPTED`] and
//!   [`ACCEPTED_CELLS_SOUND`], in both modes; e.g. `Choose(EquivocateSetup), Send(Commit),
//!   Deliver, Send(Open), Deliver`: the prover committed to the cheaper setup's trace and opened
//!   honest values, which recompute correctly but are not what it committed to.
//! * `Faults { skip_root_binding }` (non-interactive challenges derived without the root): the
//!   checker finds `Choose(Adaptive), Send(Commit), Deliver, Send(OpenPlanned), Deliver`
//!   accepted, breaking [`COMMITMENT_PRECEDES_CHALLENGE`]: the prover fixed its trace after
//!   computing the challenge. The same defect leaves interactive sessions untouched (same state
//!   counts, every property holds), since their challenges never come from the transcript.
//!
//! The correct verifier satisfies every property in every configuration below.
//!
//! ## State space (pinned in `tests/model.rs`)
//! Breadth-first, 2 threads, complete exploration; unique states of the correct verifier:
//!
//! | mode | rounds | k | coins per round | unique states |
//! |---|---|---|---|---|
//! | interactive | 1 | 1 | 6 | 478 |
//! | interactive | 1 | 2 | 15 | 1117 |
//! | interactive | 2 | 1 | 6 | 2046 |
//! | interactive | 2 | 2 | 15 | 7991 |
//! | non-interactive | 1 | 1 | - | 134 |
//! | non-interactive | 1 | 2 | - | 134 |
//! | non-interactive | 2 | 1 | - | 196 |
//! | non-interactive | 2 | 2 | - | 196 |
//!
//! All eight, plus the fault configurations, check in well under a second in the test profile.
//! The counts change when the model, the prover or the verifier changes what is reachable, and
//! the non-interactive ones also when the transcript or the sampling changes (they decide which
//! cells each commitment is challenged on, hence which cheaters are caught in which round): a
//! changed count means re-reading the discoveries, then re-pinning.
//!
//! ## Not modelled
//! Proof of work (always 0 bits), threshold tolerance policies, other dependency rules and
//! sampling strategies, grinding budgets (the soundness calculator's business), malformed bytes
//! (the protocol crate's property tests), message loss or reordering beyond the one-slot
//! channel, and messages after an interactive rejection (the verifier sends no more challenges).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rand_core::{CryptoRng, RngCore};
use stateright::{Model, Property};
use veritrace_commit::{CellId, Digest, Dtype, HasherId, TraceGeometry};
use veritrace_protocol::sampling::sample_cells;
use veritrace_protocol::tolerance::TolerancePolicy;
use veritrace_protocol::toy::ToyEngine;
use veritrace_protocol::transcript::{challenge_seed_without_root, derive_challenge};
use veritrace_protocol::{
    Challenge, ChallengeParams, Commitment, Dependency, Faults, Message, Mode, Opening, OutputRule,
    Prover, RejectReason, SamplingStrategy, Statement, Verdict, Verifier, VerifierConfig,
    VerifierState, PROTOCOL_VERSION,
};

/// Property: an honest prover is never rejected.
pub const HONEST_NEVER_REJECTED: &str = "honest provers are always accepted";
/// Property (liveness): every honest run ends accepted.
pub const HONEST_ENDS_ACCEPTED: &str = "honest runs end accepted";
/// Property: an accepted run opened every challenged cell as committed and as the honest
/// recompute.
pub const ACCEPTED_CELLS_SOUND: &str =
    "accepted runs opened every challenged cell as committed and as the honest recompute";
/// Property: no run in which an opened cell differs from the committed one is accepted.
pub const EQUIVOCATION_NEVER_ACCEPTED: &str = "equivocation is never accepted";
/// Property: once decided, the verifier's verdict never changes.
pub const VERDICT_FINAL: &str = "a verdict is final";
/// Property: no accepted run bound a commitment chosen after its challenge was known.
pub const COMMITMENT_PRECEDES_CHALLENGE: &str = "a commitment never follows its challenge";
/// Property (non-vacuity): a cheating trace is sometimes accepted (its cells were not sampled).
pub const CHEATING_SOMETIMES_ACCEPTED: &str = "cheating is sometimes accepted";
/// Property (non-vacuity): an honest run is sometimes accepted.
pub const HONEST_SOMETIMES_ACCEPTED: &str = "an honest prover is sometimes accepted";
/// Property (non-vacuity): a late commitment is sometimes delivered.
pub const LATE_COMMITMENT_DELIVERED: &str = "a late commitment is sometimes delivered";
/// Property (non-vacuity): a rejection for a message out of order is reachable.
pub const REJECT_OUT_OF_ORDER: &str = "reject: out of order";
/// Property (non-vacuity): a rejection for a bad Merkle proof is reachable.
pub const REJECT_BAD_PROOF: &str = "reject: bad proof";
/// Property (non-vacuity): a rejection for a cell out of tolerance is reachable.
pub const REJECT_TOLERANCE: &str = "reject: tolerance";
/// Property (non-vacuity, non-interactive only): a rejection for a missing or unexpected cell
/// is reachable.
pub const REJECT_WRONG_CELLS: &str = "reject: missing or unexpected cell";

/// Hidden size of the model's statement.
pub const HIDDEN: u32 = 2;

/// One configuration of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelConfig {
    /// Interactive or non-interactive challenges.
    pub mode: Mode,
    /// Rounds per session.
    pub rounds: u32,
    /// Cells sampled per round (k).
    pub samples: u32,
    /// Defects injected into the verifier.
    pub faults: Faults,
    /// Openings reach the verifier as byte streams of their binary envelope
    /// ([`Verifier::receive_opening_stream`], cells checked as they are read) instead of
    /// decoded ([`Verifier::receive_opening`]).
    pub streamed: bool,
}

impl ModelConfig {
    /// An interactive configuration of the correct verifier.
    pub fn interactive(rounds: u32, samples: u32) -> Self {
        ModelConfig {
            mode: Mode::Interactive,
            rounds,
            samples,
            faults: Faults::default(),
            streamed: false,
        }
    }

    /// A non-interactive configuration of the correct verifier.
    pub fn non_interactive(rounds: u32, samples: u32) -> Self {
        ModelConfig {
            mode: Mode::NonInteractive,
            ..Self::interactive(rounds, samples)
        }
    }

    /// The same configuration with `faults` injected into the verifier.
    pub fn with_faults(self, faults: Faults) -> Self {
        ModelConfig { faults, ..self }
    }

    /// The same configuration with openings delivered as byte streams.
    pub fn streamed(self) -> Self {
        ModelConfig {
            streamed: true,
            ..self
        }
    }
}

/// Which trace a commitment is the root of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceId {
    /// The honest toy forward pass.
    Honest,
    /// The honest trace with one cell perturbed (+1.0 on its first element).
    Perturbed(CellId),
    /// The trace of another numeric setup (the toy engine with `perturb = 1e-3`): every layer
    /// from 1 on differs, consistently with its own inputs.
    OtherSetup,
    /// Non-interactive: honest on the cells of every opening predicted without the root, the
    /// other setup's values everywhere else (honest throughout if the predictions cover all).
    Adaptive,
}

/// What the prover does; chosen once, by the first action of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// Commits to the honest trace and answers every challenge with the real [`Prover`].
    Honest,
    /// Commits to a trace with this cell perturbed and opens it faithfully (the real
    /// [`Prover`] over the cheating trace).
    CheatCell(CellId),
    /// Commits to the trace of another setup (a cheaper engine) and opens it faithfully; only
    /// an all-embedding challenge misses it.
    OtherSetup,
    /// Commits honestly, then opens this cell (when it is opened) with other data.
    EquivocateOpen(CellId),
    /// Commits to a trace with this cell perturbed, then opens this cell (when it is opened)
    /// with the honest data, hiding the cheat.
    EquivocateHide(CellId),
    /// Commits to the trace of another setup, then opens every opened cell with its honest
    /// values (cheap compute committed, honest values recomputed for the opened cells only).
    EquivocateSetup,
    /// Commits honestly; once it knows a challenge, it may send a second commitment, to a trace
    /// that cheats outside that challenge.
    LateCommit,
    /// Sends an opening before any commitment, then goes on honestly.
    OpenBeforeCommit,
    /// Answers every round with an opening labelled for the next round.
    WrongRound,
    /// Non-interactive only: computes every round's challenge with the root left out of the
    /// transcript *before* committing, commits to a trace that cheats (the other setup's values)
    /// on every cell outside the predicted openings, then opens either the predicted challenge
    /// or the one the specification derives from its root.
    Adaptive,
}

impl Behaviour {
    /// The trace of the prover's (first) commitment.
    pub fn committed_trace(self) -> TraceId {
        match self {
            Behaviour::CheatCell(c) | Behaviour::EquivocateHide(c) => TraceId::Perturbed(c),
            Behaviour::OtherSetup | Behaviour::EquivocateSetup => TraceId::OtherSetup,
            Behaviour::Adaptive => TraceId::Adaptive,
            _ => TraceId::Honest,
        }
    }
}

/// What the prover knew of a challenge when it chose the trace of a commitment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Knowledge {
    /// Nothing: the commitment was fixed before any challenge existed.
    Nothing,
    /// It had received (interactive) or derived (non-interactive) this round's challenge.
    Seen(Vec<CellId>),
    /// It had predicted every round's challenge without the root.
    Predicted(Vec<Vec<CellId>>),
}

/// How an opening was produced (for reading counterexamples).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenKind {
    /// By the real prover for its committed trace.
    Faithful,
    /// A cell's data replaced after the proof was built.
    Tampered(CellId),
    /// The honest opening of the first cell, before any commitment.
    Early,
    /// Labelled for another round.
    Relabelled,
    /// The adaptive prover's opening of its predicted challenge.
    Planned,
}

/// A prover message, with what the model knows about how it was made.
#[derive(Clone, PartialEq, Eq)]
pub enum Msg {
    /// A commitment.
    Commit {
        /// The message.
        commitment: Arc<Commitment>,
        /// The trace it commits to.
        trace: TraceId,
        /// What the prover knew of a challenge when it chose the trace.
        knew: Knowledge,
    },
    /// An opening.
    Open {
        /// The message.
        opening: Arc<Opening>,
        /// How it was made.
        kind: OpenKind,
    },
}

impl Hash for Msg {
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self {
            Msg::Commit {
                commitment,
                trace,
                knew,
            } => {
                0u8.hash(h);
                commitment.to_bytes().hash(h);
                trace.hash(h);
                knew.hash(h);
            }
            Msg::Open { opening, kind } => {
                1u8.hash(h);
                opening.to_bytes().hash(h);
                kind.hash(h);
            }
        }
    }
}

fn short(d: &Digest) -> String {
    d.to_hex()[..8].to_string()
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::Commit {
                commitment,
                trace,
                knew,
            } => write!(
                f,
                "Commit {{ root: {}.., trace: {trace:?}, knew: {knew:?} }}",
                short(&commitment.root)
            ),
            Msg::Open { opening, kind } => {
                let cells: Vec<(u32, u32)> = opening
                    .cells
                    .iter()
                    .map(|c| (c.cell.layer, c.cell.chunk))
                    .collect();
                write!(
                    f,
                    "Open {{ round: {}, cells (layer, chunk): {cells:?}, kind: {kind:?} }}",
                    opening.round
                )
            }
        }
    }
}

/// Why the verifier rejected, without the details (which are not hashable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Reason {
    OutOfOrder,
    GeometryMismatch,
    MissingCell,
    UnexpectedCell,
    WrongCellLength,
    BadProof,
    BadProofOfWork,
    NonFinite,
    Tolerance,
    OutputTokenMismatch,
    RecomputeFailed,
    AlgebraicCheck,
}

impl From<&RejectReason> for Reason {
    fn from(r: &RejectReason) -> Self {
        match r {
            RejectReason::OutOfOrder { .. } => Reason::OutOfOrder,
            RejectReason::GeometryMismatch { .. } => Reason::GeometryMismatch,
            RejectReason::MissingCell { .. } => Reason::MissingCell,
            RejectReason::UnexpectedCell { .. } => Reason::UnexpectedCell,
            RejectReason::WrongCellLength { .. } => Reason::WrongCellLength,
            RejectReason::BadProof { .. } => Reason::BadProof,
            RejectReason::BadProofOfWork { .. } => Reason::BadProofOfWork,
            RejectReason::NonFinite { .. } => Reason::NonFinite,
            RejectReason::Tolerance { .. } => Reason::Tolerance,
            RejectReason::OutputTokenMismatch { .. } => Reason::OutputTokenMismatch,
            RejectReason::RecomputeFailed { .. } => Reason::RecomputeFailed,
            RejectReason::AlgebraicCheck { .. } => Reason::AlgebraicCheck,
        }
    }
}

/// The verifier's decision, hashable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Accepted.
    Accept,
    /// Rejected for this reason.
    Reject(Reason),
}

/// A hashable mirror of the real verifier's [`VerifierState`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VState {
    /// Nothing received.
    AwaitCommitment,
    /// Interactive: the challenge of `round` was sent.
    Challenged {
        /// Round.
        round: u32,
        /// Challenged cells.
        cells: Vec<CellId>,
    },
    /// Non-interactive: awaiting the opening of `round`.
    AwaitOpening {
        /// Round.
        round: u32,
    },
    /// Final.
    Decided(Outcome),
}

impl From<&VerifierState> for VState {
    fn from(s: &VerifierState) -> Self {
        match s {
            VerifierState::AwaitCommitment => VState::AwaitCommitment,
            VerifierState::Challenged { challenge } => VState::Challenged {
                round: challenge.round,
                cells: challenge.cells.clone(),
            },
            VerifierState::AwaitOpening { round, .. } => VState::AwaitOpening { round: *round },
            VerifierState::Decided(Verdict::Accept) => VState::Decided(Outcome::Accept),
            VerifierState::Decided(Verdict::Reject(r)) => {
                VState::Decided(Outcome::Reject(r.into()))
            }
        }
    }
}

/// A message the verifier received, the coin it drew on it (interactive, when it drew one)
/// and its state before.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Delivery {
    /// The message.
    pub msg: Msg,
    /// Index of the verifier's coin, if it drew randomness on this message.
    pub coin: Option<u8>,
    /// The verifier's state before the message.
    pub before: VState,
}

/// A state of the model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct State {
    /// The prover's behaviour (`None` before the first action).
    pub behaviour: Option<Behaviour>,
    /// The message sent by the prover and not yet delivered (the channel holds one).
    pub in_flight: Option<Msg>,
    /// Every message delivered to the verifier, in order.
    pub log: Vec<Delivery>,
    /// The real verifier's state after the log.
    pub verifier: VState,
}

impl State {
    /// Whether the verifier accepted.
    pub fn accepted(&self) -> bool {
        self.verifier == VState::Decided(Outcome::Accept)
    }

    /// The rejection reason, if rejected.
    pub fn rejected(&self) -> Option<Reason> {
        match self.verifier {
            VState::Decided(Outcome::Reject(r)) => Some(r),
            _ => None,
        }
    }

    fn sent(&self) -> impl Iterator<Item = &Msg> {
        self.log.iter().map(|d| &d.msg).chain(self.in_flight.iter())
    }

    fn commits_sent(&self) -> usize {
        self.sent()
            .filter(|m| matches!(m, Msg::Commit { .. }))
            .count()
    }

    /// Openings sent in answer to rounds (an opening sent before any commitment answers none).
    fn openings_sent(&self) -> u32 {
        self.sent()
            .filter(|m| matches!(m, Msg::Open { kind, .. } if *kind != OpenKind::Early))
            .count() as u32
    }

    fn early_openings_sent(&self) -> usize {
        self.sent()
            .filter(|m| {
                matches!(
                    m,
                    Msg::Open {
                        kind: OpenKind::Early,
                        ..
                    }
                )
            })
            .count()
    }

    /// The commitment the verifier bound (the one delivered while it awaited a commitment).
    pub fn bound(&self) -> Option<(&Commitment, TraceId, &Knowledge)> {
        self.log.iter().find_map(|d| match (&d.msg, &d.before) {
            (
                Msg::Commit {
                    commitment,
                    trace,
                    knew,
                },
                VState::AwaitCommitment,
            ) => Some((commitment.as_ref(), *trace, knew)),
            _ => None,
        })
    }

    /// Delivered openings with the verifier's state before each.
    pub fn openings(&self) -> impl Iterator<Item = (&Opening, &VState)> {
        self.log.iter().filter_map(|d| match &d.msg {
            Msg::Open { opening, .. } => Some((opening.as_ref(), &d.before)),
            Msg::Commit { .. } => None,
        })
    }
}

/// A prover move (the message follows from the behaviour and what the prover knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Move {
    /// Send the (first) commitment.
    Commit,
    /// Answer the current round.
    Open,
    /// Send an opening before committing.
    OpenEarly,
    /// Send a second commitment, chosen knowing the current challenge.
    LateCommit,
    /// Adaptive: open the challenge predicted without the root.
    OpenPlanned,
}

/// An action of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// The prover picks its behaviour.
    Choose(Behaviour),
    /// The prover puts a message in flight.
    Send(Move),
    /// The verifier receives the message in flight; in interactive mode, with the coin it draws
    /// (index into [`ProtocolModel::coins`]) when the message may start a round.
    Deliver(Option<u8>),
}

/// The verifier's randomness in the model: returns the chosen coin's 32 bytes.
struct CoinRng {
    seed: Option<[u8; 32]>,
    used: bool,
}

impl RngCore for CoinRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let seed = self
            .seed
            .expect("the verifier drew randomness on a delivery the model offered no coin for");
        for (i, d) in dest.iter_mut().enumerate() {
            *d = seed[i % 32];
        }
        self.used = true;
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for CoinRng {}

/// The model: a tiny statement, the traces the prover may commit to, and the verifier's coins.
#[derive(Debug, Clone)]
pub struct ProtocolModel {
    cfg: ModelConfig,
    statement: Statement,
    verifier_config: VerifierConfig,
    cells: Vec<CellId>,
    honest: Vec<Vec<u8>>,
    perturbed: Vec<Vec<Vec<u8>>>,
    other_setup: Vec<Vec<u8>>,
    honest_commitment: Arc<Commitment>,
    perturbed_commitments: Vec<Arc<Commitment>>,
    other_setup_commitment: Arc<Commitment>,
    coins: Vec<[u8; 32]>,
    predicted: Vec<Vec<CellId>>,
    adaptive: Vec<Vec<u8>>,
    adaptive_commitment: Arc<Commitment>,
}

/// The model's statement: 3 layers (h0..h2) x 4 tokens (2 in, 2 out, generated greedily by the
/// honest toy engine), hidden 2, chunk 2 (6 cells), causal, f32, BLAKE3.
pub fn statement() -> Statement {
    let dep = Dependency::Causal;
    let input = vec![3, 10];
    let output = ToyEngine::default()
        .generate(dep, 3, HIDDEN as usize, &input, 2)
        .expect("toy generation");
    Statement {
        trace_level: veritrace_protocol::TraceLevel::Hidden,
        version: PROTOCOL_VERSION,
        model_digest: Digest([0xab; 32]),
        setup: b"toy/f32".to_vec(),
        geometry: TraceGeometry::new(3, 4, HIDDEN, 2, Dtype::F32).expect("geometry"),
        input_tokens: input,
        output_tokens: output,
        hasher: HasherId::Blake3,
        dependency: dep,
        output_rule: OutputRule::Greedy,
        input_text: None,
        engine: None,
    }
}

fn binomial(n: u64, k: u64) -> u64 {
    (0..k).fold(1, |acc, i| acc * (n - i) / (i + 1))
}

/// `data` with 1.0 added to its first f32 element.
fn perturb(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let v = f32::from_le_bytes([data[0], data[1], data[2], data[3]]) + 1.0;
    out[..4].copy_from_slice(&v.to_le_bytes());
    out
}

impl ProtocolModel {
    /// Builds the model: the honest trace, one perturbed trace per cell, their commitments
    /// (made by the real [`Prover`]), and, in interactive mode, one coin per distinct challenge.
    pub fn new(cfg: ModelConfig) -> Self {
        let statement = statement();
        let g = statement.geometry;
        let cells: Vec<CellId> = (0..g.num_cells())
            .map(|i| g.cell_at(i).expect("cell"))
            .collect();
        let honest = ToyEngine::default()
            .trace_bytes(&statement)
            .expect("honest trace");
        let perturbed: Vec<Vec<Vec<u8>>> = cells
            .iter()
            .map(|&c| {
                let mut layers = honest.clone();
                let range = g.cell_byte_range(c).expect("range");
                let changed = perturb(&layers[c.layer as usize][range.clone()]);
                layers[c.layer as usize][range].copy_from_slice(&changed);
                layers
            })
            .collect();
        let commit = |layers: &Vec<Vec<u8>>| {
            let mut p = Prover::new(statement.clone(), layers.clone()).expect("prover");
            Arc::new(p.commit().expect("commit"))
        };
        let other_setup = ToyEngine { perturb: 1e-3 }
            .trace_bytes(&statement)
            .expect("other setup's trace");
        let honest_commitment = commit(&honest);
        let perturbed_commitments = perturbed.iter().map(commit).collect();
        let other_setup_commitment = commit(&other_setup);
        let params = ChallengeParams {
            samples: cfg.samples,
            strategy: SamplingStrategy::Uniform,
            pow_bits: 0,
            attention: None,
        };
        let verifier_config = VerifierConfig {
            method: veritrace_protocol::LayerCheck::Recompute,
            mode: cfg.mode,
            params,
            rounds: cfg.rounds,
            tolerance: TolerancePolicy::Exact,
        };
        let mut coins = Vec::new();
        if cfg.mode == Mode::Interactive {
            let want = binomial(g.num_cells(), u64::from(cfg.samples)) as usize;
            let mut seen = Vec::new();
            for n in 0u32..100_000 {
                let mut seed = [0u8; 32];
                seed[..4].copy_from_slice(&n.to_le_bytes());
                let challenge =
                    sample_cells(&statement, cfg.samples, params.strategy, seed).expect("sample");
                if !seen.contains(&challenge) {
                    seen.push(challenge);
                    coins.push(seed);
                    if coins.len() == want {
                        break;
                    }
                }
            }
            assert_eq!(coins.len(), want, "a coin for every challenge");
            assert!(want <= 256, "coins are indexed by u8");
        }
        let predicted: Vec<Vec<CellId>> = match cfg.mode {
            Mode::NonInteractive => (0..cfg.rounds)
                .map(|r| {
                    let seed = challenge_seed_without_root(&statement, r, &params, 0);
                    sample_cells(&statement, cfg.samples, params.strategy, seed).expect("sample")
                })
                .collect(),
            Mode::Interactive => Vec::new(),
        };
        let mut inside = Vec::new();
        for p in &predicted {
            inside.extend(statement.opening_cells(p).expect("opening cells"));
        }
        let mut adaptive = other_setup.clone();
        for c in &inside {
            let range = g.cell_byte_range(*c).expect("range");
            let l = c.layer as usize;
            adaptive[l][range.clone()].copy_from_slice(&honest[l][range]);
        }
        let adaptive_commitment = commit(&adaptive);
        ProtocolModel {
            cfg,
            statement,
            verifier_config,
            cells,
            honest,
            perturbed,
            other_setup,
            honest_commitment,
            perturbed_commitments,
            other_setup_commitment,
            coins,
            predicted,
            adaptive,
            adaptive_commitment,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The statement every behaviour claims.
    pub fn statement(&self) -> &Statement {
        &self.statement
    }

    /// The verifier's coins (interactive): one 32-byte seed per distinct challenge.
    pub fn coins(&self) -> &[[u8; 32]] {
        &self.coins
    }

    /// Non-interactive: each round's challenge as derived without the root.
    pub fn predicted(&self) -> &[Vec<CellId>] {
        &self.predicted
    }

    /// Non-interactive: the cells on which the adaptive prover's trace cheats (outside every
    /// predicted opening).
    pub fn adaptive_cheats(&self) -> Vec<CellId> {
        self.cells
            .iter()
            .copied()
            .filter(|&c| {
                self.cell_bytes(TraceId::Adaptive, c) != self.cell_bytes(TraceId::Honest, c)
            })
            .collect()
    }

    /// Whether a trace's bytes differ from the honest trace's.
    pub fn cheats(&self, trace: TraceId) -> bool {
        self.layers(trace) != self.honest.as_slice()
    }

    /// Every behaviour the prover may choose.
    pub fn behaviours(&self) -> Vec<Behaviour> {
        let mut out = vec![Behaviour::Honest];
        out.extend(self.cells.iter().map(|&c| Behaviour::CheatCell(c)));
        out.push(Behaviour::OtherSetup);
        out.extend(self.cells.iter().map(|&c| Behaviour::EquivocateOpen(c)));
        out.extend(self.cells.iter().map(|&c| Behaviour::EquivocateHide(c)));
        out.extend([
            Behaviour::EquivocateSetup,
            Behaviour::LateCommit,
            Behaviour::OpenBeforeCommit,
            Behaviour::WrongRound,
        ]);
        if self.cfg.mode == Mode::NonInteractive {
            out.push(Behaviour::Adaptive);
        }
        out
    }

    fn cell_pos(&self, cell: CellId) -> usize {
        self.statement.geometry.cell_index(cell).expect("cell") as usize
    }

    /// The layers of a trace.
    pub fn layers(&self, trace: TraceId) -> &[Vec<u8>] {
        match trace {
            TraceId::Honest => &self.honest,
            TraceId::Perturbed(c) => &self.perturbed[self.cell_pos(c)],
            TraceId::OtherSetup => &self.other_setup,
            TraceId::Adaptive => &self.adaptive,
        }
    }

    /// A cell's bytes in a trace.
    pub fn cell_bytes(&self, trace: TraceId, cell: CellId) -> &[u8] {
        let range = self.statement.geometry.cell_byte_range(cell).expect("cell");
        &self.layers(trace)[cell.layer as usize][range]
    }

    fn commitment(&self, trace: TraceId) -> Arc<Commitment> {
        match trace {
            TraceId::Honest => self.honest_commitment.clone(),
            TraceId::Perturbed(c) => self.perturbed_commitments[self.cell_pos(c)].clone(),
            TraceId::OtherSetup => self.other_setup_commitment.clone(),
            TraceId::Adaptive => self.adaptive_commitment.clone(),
        }
    }

    fn params(&self) -> ChallengeParams {
        self.verifier_config.params
    }

    /// The challenge the specification binds to `commitment` in round `round`
    /// (non-interactive: the root-bound transcript derivation).
    pub fn spec_challenge(
        &self,
        commitment: &Commitment,
        round: u32,
        nonce: u64,
    ) -> Option<Challenge> {
        derive_challenge(commitment, round, &self.params(), nonce).ok()
    }

    fn prover(&self, trace: TraceId) -> Prover<Vec<u8>> {
        Prover::new(self.statement.clone(), self.layers(trace).to_vec()).expect("prover")
    }

    /// Interactive: the challenges the prover received so far, by round.
    fn challenges_received(&self, s: &State) -> Vec<Vec<CellId>> {
        let mut out: Vec<Vec<CellId>> = Vec::new();
        let befores = s
            .log
            .iter()
            .filter(|d| matches!(d.msg, Msg::Open { .. }))
            .map(|d| &d.before)
            .chain(std::iter::once(&s.verifier));
        for v in befores {
            if let VState::Challenged { round, cells } = v {
                if *round as usize == out.len() {
                    out.push(cells.clone());
                }
            }
        }
        out
    }

    /// The challenge of `round` as the prover committed to `trace` knows it.
    fn known_challenge(&self, s: &State, trace: TraceId, round: u32) -> Vec<CellId> {
        match self.cfg.mode {
            Mode::Interactive => self.challenges_received(s)[round as usize].clone(),
            Mode::NonInteractive => {
                self.spec_challenge(&self.commitment(trace), round, 0)
                    .expect("challenge")
                    .cells
            }
        }
    }

    /// The real prover's opening of `round` for `trace`, replaying its state machine.
    fn real_opening(&self, s: &State, trace: TraceId, round: u32) -> Opening {
        let mut p = self.prover(trace);
        p.commit().expect("commit");
        let mut last = None;
        match self.cfg.mode {
            Mode::Interactive => {
                let received = self.challenges_received(s);
                for (r, cells) in received.iter().enumerate().take(round as usize + 1) {
                    let challenge = Challenge {
                        round: r as u32,
                        cells: cells.clone(),
                        attention: None,
                    };
                    last = Some(p.open(&challenge).expect("open"));
                }
            }
            Mode::NonInteractive => {
                for _ in 0..=round {
                    last = Some(p.open_non_interactive(&self.params()).expect("open").1);
                }
            }
        }
        last.expect("a round to answer")
    }

    fn build(&self, s: &State, b: Behaviour, mv: Move) -> Msg {
        let round = s.openings_sent();
        let trace = b.committed_trace();
        match mv {
            Move::Commit => Msg::Commit {
                commitment: self.commitment(trace),
                trace,
                knew: match b {
                    Behaviour::Adaptive => Knowledge::Predicted(self.predicted.clone()),
                    _ => Knowledge::Nothing,
                },
            },
            Move::LateCommit => {
                let known = self.known_challenge(s, trace, round);
                let opened = self.statement.opening_cells(&known).expect("cells");
                let cheat = *self
                    .cells
                    .iter()
                    .find(|c| !opened.contains(c))
                    .expect("a cell outside the opening");
                let late = TraceId::Perturbed(cheat);
                Msg::Commit {
                    commitment: self.commitment(late),
                    trace: late,
                    knew: Knowledge::Seen(known),
                }
            }
            Move::OpenEarly => Msg::Open {
                opening: Arc::new(
                    self.prover(TraceId::Honest)
                        .open_cells(0, &self.cells[..1], 0)
                        .expect("open"),
                ),
                kind: OpenKind::Early,
            },
            Move::OpenPlanned => Msg::Open {
                opening: Arc::new(
                    self.prover(trace)
                        .open_cells(round, &self.predicted[round as usize], 0)
                        .expect("open"),
                ),
                kind: OpenKind::Planned,
            },
            Move::Open => {
                let mut opening = self.real_opening(s, trace, round);
                let mut kind = OpenKind::Faithful;
                let replace = match b {
                    Behaviour::EquivocateOpen(c) => Some((c, perturb(self.cell_bytes(trace, c)))),
                    Behaviour::EquivocateHide(c) => {
                        Some((c, self.cell_bytes(TraceId::Honest, c).to_vec()))
                    }
                    _ => None,
                };
                if let Some((c, data)) = replace {
                    if let Some(oc) = opening.cells.iter_mut().find(|oc| oc.cell == c) {
                        oc.data = data;
                        kind = OpenKind::Tampered(c);
                    }
                }
                if b == Behaviour::EquivocateSetup {
                    for oc in &mut opening.cells {
                        let honest = self.cell_bytes(TraceId::Honest, oc.cell);
                        if oc.data != honest {
                            kind = OpenKind::Tampered(oc.cell);
                            oc.data = honest.to_vec();
                        }
                    }
                }
                if b == Behaviour::WrongRound {
                    opening.round += 1;
                    kind = OpenKind::Relabelled;
                }
                Msg::Open {
                    opening: Arc::new(opening),
                    kind,
                }
            }
        }
    }

    fn prover_moves(&self, s: &State, b: Behaviour, out: &mut Vec<Move>) {
        // The prover does not see the verdict: it goes on after a rejection (in non-interactive
        // mode; an interactive prover waits for challenges that a decided verifier never sends),
        // so the model also checks that a verdict is final.
        if s.in_flight.is_some() {
            return;
        }
        let commits = s.commits_sent();
        let round = s.openings_sent();
        if b == Behaviour::OpenBeforeCommit && s.early_openings_sent() == 0 {
            out.push(Move::OpenEarly);
            return;
        }
        if commits == 0 {
            out.push(Move::Commit);
            return;
        }
        if round >= self.cfg.rounds {
            return;
        }
        let known = match self.cfg.mode {
            Mode::Interactive => {
                matches!(s.verifier, VState::Challenged { round: r, .. } if r == round)
            }
            Mode::NonInteractive => true,
        };
        if !known {
            return;
        }
        match b {
            Behaviour::LateCommit if commits == 1 => out.extend([Move::Open, Move::LateCommit]),
            Behaviour::Adaptive => out.extend([Move::OpenPlanned, Move::Open]),
            _ => out.push(Move::Open),
        }
    }

    /// A fresh real verifier (with the configured faults) that has received `log`.
    pub fn replay(&self, log: &[Delivery]) -> Verifier<ToyEngine> {
        let mut v =
            Verifier::new(self.verifier_config.clone(), ToyEngine::default()).expect("verifier");
        v.inject_faults(self.cfg.faults);
        for d in log {
            let used = self.deliver(&mut v, &d.msg, d.coin);
            debug_assert_eq!(used, d.coin.is_some());
        }
        v
    }

    /// Hands `msg` to the verifier with coin `coin`; returns whether the verifier drew it.
    fn deliver(&self, v: &mut Verifier<ToyEngine>, msg: &Msg, coin: Option<u8>) -> bool {
        let mut rng = CoinRng {
            seed: coin.map(|i| self.coins[i as usize]),
            used: false,
        };
        match msg {
            Msg::Commit { commitment, .. } => {
                v.receive_commitment(commitment.as_ref().clone(), &mut rng);
            }
            Msg::Open { opening, .. } if self.cfg.streamed => {
                // the model's prover only sends well-formed openings: a decoding failure here
                // is a defect of the model or of the reader, never a verdict
                let bytes = opening.to_bytes();
                let reader = veritrace_protocol::stream::OpeningReader::new(
                    &bytes[..],
                    veritrace_protocol::encoding::MAX_MESSAGE_BYTES,
                )
                .expect("the model's openings are valid envelopes");
                v.receive_opening_stream(reader, &mut rng)
                    .expect("the model's openings decode");
            }
            Msg::Open { opening, .. } => {
                v.receive_opening(opening, &mut rng);
            }
        }
        rng.used
    }

    /// Whether delivering the message in flight may make the (interactive) verifier draw a
    /// challenge.
    fn may_draw(&self, s: &State) -> bool {
        if self.cfg.mode != Mode::Interactive {
            return false;
        }
        match (&s.in_flight, &s.verifier) {
            (Some(Msg::Commit { .. }), VState::AwaitCommitment) => true,
            (Some(Msg::Open { .. }), VState::Challenged { round, .. }) => {
                round + 1 < self.cfg.rounds
            }
            _ => false,
        }
    }
}

impl Model for ProtocolModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            behaviour: None,
            in_flight: None,
            log: Vec::new(),
            verifier: VState::AwaitCommitment,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let Some(b) = s.behaviour else {
            actions.extend(self.behaviours().into_iter().map(Action::Choose));
            return;
        };
        let mut moves = Vec::new();
        self.prover_moves(s, b, &mut moves);
        actions.extend(moves.into_iter().map(Action::Send));
        if s.in_flight.is_some() {
            if self.may_draw(s) {
                actions.extend((0..self.coins.len()).map(|i| Action::Deliver(Some(i as u8))));
            } else {
                actions.push(Action::Deliver(None));
            }
        }
    }

    fn next_state(&self, s: &State, action: Action) -> Option<State> {
        let mut next = s.clone();
        match action {
            Action::Choose(b) => next.behaviour = Some(b),
            Action::Send(mv) => {
                let b = s.behaviour.expect("chosen");
                next.in_flight = Some(self.build(s, b, mv));
            }
            Action::Deliver(coin) => {
                let msg = next.in_flight.take().expect("a message in flight");
                let mut v = self.replay(&s.log);
                let before = VState::from(v.state());
                debug_assert_eq!(before, s.verifier);
                let used = self.deliver(&mut v, &msg, coin);
                next.log.push(Delivery {
                    msg,
                    coin: if used { coin } else { None },
                    before,
                });
                next.verifier = VState::from(v.state());
            }
        }
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut p = vec![
            Property::always(HONEST_NEVER_REJECTED, honest_never_rejected),
            Property::eventually(HONEST_ENDS_ACCEPTED, honest_ends_accepted),
            Property::always(ACCEPTED_CELLS_SOUND, accepted_cells_sound),
            Property::always(EQUIVOCATION_NEVER_ACCEPTED, equivocation_never_accepted),
            Property::always(VERDICT_FINAL, verdict_final),
            Property::always(COMMITMENT_PRECEDES_CHALLENGE, commitment_precedes_challenge),
            Property::sometimes(CHEATING_SOMETIMES_ACCEPTED, |m, s: &State| {
                s.accepted() && matches!(s.bound(), Some((_, t, _)) if m.cheats(t))
            }),
            Property::sometimes(HONEST_SOMETIMES_ACCEPTED, |_, s: &State| {
                s.behaviour == Some(Behaviour::Honest) && s.accepted()
            }),
            Property::sometimes(LATE_COMMITMENT_DELIVERED, |_, s: &State| {
                s.log.iter().any(|d| {
                    matches!(
                        d.msg,
                        Msg::Commit {
                            knew: Knowledge::Seen(_),
                            ..
                        }
                    )
                })
            }),
            Property::sometimes(REJECT_OUT_OF_ORDER, |_, s: &State| {
                s.rejected() == Some(Reason::OutOfOrder)
            }),
            Property::sometimes(REJECT_BAD_PROOF, |_, s: &State| {
                s.rejected() == Some(Reason::BadProof)
            }),
            Property::sometimes(REJECT_TOLERANCE, |_, s: &State| {
                s.rejected() == Some(Reason::Tolerance)
            }),
        ];
        if self.cfg.mode == Mode::NonInteractive {
            p.push(Property::sometimes(REJECT_WRONG_CELLS, |_, s: &State| {
                matches!(
                    s.rejected(),
                    Some(Reason::MissingCell | Reason::UnexpectedCell)
                )
            }));
        }
        p
    }
}

fn verdict_final(_: &ProtocolModel, s: &State) -> bool {
    let mut states = s
        .log
        .iter()
        .map(|d| &d.before)
        .chain(std::iter::once(&s.verifier));
    match states.find(|v| matches!(v, VState::Decided(_))) {
        Some(first) => states.all(|v| v == first),
        None => true,
    }
}

fn honest_never_rejected(_: &ProtocolModel, s: &State) -> bool {
    !(s.behaviour == Some(Behaviour::Honest) && s.rejected().is_some())
}

fn honest_ends_accepted(_: &ProtocolModel, s: &State) -> bool {
    match s.behaviour {
        Some(Behaviour::Honest) => s.accepted(),
        Some(_) => true,
        None => false,
    }
}

/// The cells challenged in each accepted round: interactive, the challenge the verifier sent;
/// non-interactive, the challenge the specification binds to the bound commitment. `None` if a
/// round cannot be matched to a challenge (itself a violation).
fn challenged_rounds(m: &ProtocolModel, s: &State) -> Option<Vec<(Vec<CellId>, Opening)>> {
    let (commitment, _, _) = s.bound()?;
    let mut out = Vec::new();
    for (r, (opening, before)) in s.openings().enumerate() {
        let cells = match m.cfg.mode {
            Mode::Interactive => match before {
                VState::Challenged { round, cells } if *round as usize == r => cells.clone(),
                _ => return None,
            },
            Mode::NonInteractive => {
                m.spec_challenge(commitment, r as u32, opening.pow_nonce)?
                    .cells
            }
        };
        out.push((cells, opening.clone()));
    }
    (out.len() == m.cfg.rounds as usize).then_some(out)
}

fn accepted_cells_sound(m: &ProtocolModel, s: &State) -> bool {
    if !s.accepted() {
        return true;
    }
    let (Some((_, trace, _)), Some(rounds)) = (s.bound(), challenged_rounds(m, s)) else {
        return false;
    };
    rounds.iter().all(|(cells, opening)| {
        cells.iter().all(|&cell| {
            opening.cells.iter().any(|oc| {
                oc.cell == cell
                    && oc.data == m.cell_bytes(trace, cell)
                    && oc.data == m.cell_bytes(TraceId::Honest, cell)
            })
        })
    })
}

fn equivocation_never_accepted(m: &ProtocolModel, s: &State) -> bool {
    if !s.accepted() {
        return true;
    }
    let Some((_, trace, _)) = s.bound() else {
        return false;
    };
    s.openings().all(|(opening, _)| {
        opening
            .cells
            .iter()
            .all(|oc| oc.data == m.cell_bytes(trace, oc.cell))
    })
}

fn commitment_precedes_challenge(m: &ProtocolModel, s: &State) -> bool {
    if !s.accepted() {
        return true;
    }
    let Some((bound, _, _)) = s.bound() else {
        return false;
    };
    for d in &s.log {
        let Msg::Commit { knew, .. } = &d.msg else {
            continue;
        };
        match knew {
            Knowledge::Nothing => {}
            // a commitment chosen after a challenge was received or derived, and the run accepted
            Knowledge::Seen(_) => return false,
            // an accepted opening of the predicted challenge that is not the one the transcript
            // binds to the root: the challenge was known before the commitment
            Knowledge::Predicted(predicted) => {
                for (r, (opening, _)) in s.openings().enumerate() {
                    let opened: Vec<CellId> = opening.cells.iter().map(|oc| oc.cell).collect();
                    let planned = m.statement.opening_cells(&predicted[r]).expect("cells");
                    let spec = m
                        .spec_challenge(bound, r as u32, opening.pow_nonce)
                        .map(|c| m.statement.opening_cells(&c.cells).expect("cells"));
                    if opened == planned && spec.as_ref() != Some(&planned) {
                        return false;
                    }
                }
            }
        }
    }
    true
}
