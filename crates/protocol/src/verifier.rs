//! The verifier's side: the [`Recompute`] trait it asks for cell outputs, the opening check,
//! and the state machine over rounds.
//!
//! ```text
//!                       interactive: draw challenge r from own randomness
//! AwaitCommitment ──commitment──▶ Challenged(r) ──opening r──▶ Challenged(r + 1) … ──▶ Decided
//!                 non-interactive:  AwaitOpening(r) ──opening r──▶ AwaitOpening(r + 1) … ──▶ Decided
//! ```
//!
//! Any message in a state that does not expect it (a second commitment, in particular one that
//! follows a challenge; an opening before the commitment; an opening for another round) decides
//! the session with [`RejectReason::OutOfOrder`]. `Decided` is final.

use std::ops::Range;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use veritrace_commit::{verify_batch, CellId, Dtype, Hasher};

use crate::encoding::Message;
use crate::sampling::sample_cells;
use crate::tolerance::{decode_values, TolerancePolicy};
use crate::transcript::{challenge_seed, check_pow, ChallengeParams};
use crate::{
    Challenge, Commitment, Opening, ProtocolError, RejectReason, Result, Statement, Verdict,
};

/// What an embedding verifier implements: recompute cells under the statement's numeric setup.
///
/// All byte buffers hold little-endian elements of the statement's dtype, row-major, `hidden`
/// elements per row. The protocol never interprets the setup: the implementation reads
/// `statement.setup` and must refuse (with [`ProtocolError::Engine`]) a setup it cannot run.
pub trait Recompute {
    /// Layer 0: the embeddings of the statement's tokens at positions `rows`.
    fn embed(&self, statement: &Statement, rows: Range<u32>) -> Result<Vec<u8>>;

    /// Layer `layer ≥ 1`: output rows `rows`, given the rows `input_rows` of layer `layer − 1`
    /// (`inputs` holds exactly those rows; which rows is given by the statement's
    /// [`crate::Dependency`]).
    fn layer(
        &self,
        statement: &Statement,
        layer: u32,
        rows: Range<u32>,
        input_rows: Range<u32>,
        inputs: &[u8],
    ) -> Result<Vec<u8>>;

    /// The token predicted at `position` from that position's last-layer row, under the
    /// statement's [`crate::OutputRule`].
    fn next_token(&self, statement: &Statement, position: u32, last_row: &[u8]) -> Result<u32>;

    /// Statement-level checks made once per opening, before any cell: with text input
    /// ([`Statement::input_text`]), that the input tokens are what the engine's tokenizer
    /// (of the same digest) gives for the text. An engine without a tokenizer accepts a
    /// statement without text and refuses one with text ([`no_text_input`]). Required, so
    /// that a wrapper cannot silently skip the check of the engine it wraps.
    fn check_input(&self, statement: &Statement) -> Result<()>;
}

/// [`Recompute::check_input`] of an engine that has no tokenizer: a statement without text
/// passes, one with text is refused (its tokens cannot be checked).
pub fn no_text_input(statement: &Statement) -> Result<()> {
    match &statement.input_text {
        None => Ok(()),
        Some(_) => Err(ProtocolError::Engine(
            "the statement gives text input, and this engine has no tokenizer to check its \
             tokens"
                .into(),
        )),
    }
}

/// Whether challenges come from the verifier (interactive) or from the transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The verifier draws each challenge from its own randomness after the commitment.
    Interactive,
    /// Fiat-Shamir: challenges derive from the transcript (with proof of work if
    /// `pow_bits > 0`).
    NonInteractive,
}

/// The verifier's policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifierConfig {
    /// Interactive or non-interactive.
    pub mode: Mode,
    /// Per-round challenge parameters (k, strategy, proof-of-work bits).
    pub params: ChallengeParams,
    /// Number of rounds, at least 1.
    pub rounds: u32,
    /// How recomputed cells are compared with opened ones.
    pub tolerance: TolerancePolicy,
}

/// The verifier's state.
#[derive(Debug, Clone, PartialEq)]
pub enum VerifierState {
    /// Nothing received yet.
    AwaitCommitment,
    /// Interactive: the challenge of round `challenge.round` was sent.
    Challenged {
        /// The outstanding challenge.
        challenge: Challenge,
    },
    /// Non-interactive: awaiting the opening of round `round`.
    AwaitOpening {
        /// The round expected.
        round: u32,
        /// The session's proof-of-work nonce, fixed by the opening of round 0; later rounds
        /// must carry the same one.
        nonce: Option<u64>,
    },
    /// Final.
    Decided(Verdict),
}

impl VerifierState {
    /// Short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            VerifierState::AwaitCommitment => "await-commitment",
            VerifierState::Challenged { .. } => "challenged",
            VerifierState::AwaitOpening { .. } => "await-opening",
            VerifierState::Decided(_) => "decided",
        }
    }
}

/// What the verifier does after a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send this challenge to the prover (interactive).
    Challenge(Challenge),
    /// Wait for the opening of the next round (non-interactive).
    AwaitOpening,
    /// The session is decided.
    Decided(Verdict),
}

/// Deliberate verifier defects, settable only with the `fault-injection` feature, so that the
/// model checker and tests can show they catch each one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Accept openings without checking the batch Merkle proof.
    pub skip_proof_check: bool,
    /// Derive non-interactive challenges from a transcript without the root.
    pub skip_root_binding: bool,
}

/// A verifier session.
#[derive(Debug)]
pub struct Verifier<R> {
    config: VerifierConfig,
    recompute: R,
    state: VerifierState,
    commitment: Option<Commitment>,
    expected: Option<Statement>,
    faults: Faults,
}

impl<R: Recompute> Verifier<R> {
    /// A new session. Fails on an invalid policy (zero rounds or samples, invalid tolerance,
    /// proof of work above [`crate::transcript::MAX_POW_BITS`]).
    pub fn new(config: VerifierConfig, recompute: R) -> Result<Self> {
        if config.rounds == 0 || config.params.samples == 0 {
            return Err(ProtocolError::InvalidParameter(
                "a verifier needs at least one round and one sample".into(),
            ));
        }
        if config.params.pow_bits > crate::transcript::MAX_POW_BITS {
            return Err(ProtocolError::InvalidParameter(format!(
                "pow_bits {} exceeds {}",
                config.params.pow_bits,
                crate::transcript::MAX_POW_BITS
            )));
        }
        config.tolerance.validate()?;
        Ok(Verifier {
            config,
            recompute,
            state: VerifierState::AwaitCommitment,
            commitment: None,
            expected: None,
            faults: Faults::default(),
        })
    }

    /// Requires the commitment's statement to equal `statement` (the model, setup, tokens and
    /// geometry the verifier asked for); a commitment under any other statement is rejected with
    /// [`RejectReason::GeometryMismatch`] naming the first differing field. Without it the
    /// verifier checks the prover's own claim, whatever it is.
    pub fn expect_statement(&mut self, statement: Statement) {
        self.expected = Some(statement);
    }

    /// Injects deliberate defects (testing the tests; never in a real verifier).
    #[cfg(feature = "fault-injection")]
    pub fn inject_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// The current state.
    pub fn state(&self) -> &VerifierState {
        &self.state
    }

    /// The verdict, once decided.
    pub fn verdict(&self) -> Option<&Verdict> {
        match &self.state {
            VerifierState::Decided(v) => Some(v),
            _ => None,
        }
    }

    /// The commitment received, if any.
    pub fn commitment(&self) -> Option<&Commitment> {
        self.commitment.as_ref()
    }

    /// The policy.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    fn decide(&mut self, verdict: Verdict) -> Step {
        self.state = VerifierState::Decided(verdict.clone());
        Step::Decided(verdict)
    }

    fn out_of_order(&mut self, message: &str) -> Step {
        if let VerifierState::Decided(v) = &self.state {
            return Step::Decided(v.clone());
        }
        let reason = RejectReason::OutOfOrder {
            state: self.state.name().to_string(),
            message: message.to_string(),
        };
        self.decide(Verdict::Reject(reason))
    }

    /// Receives the commitment. Interactive: draws and returns round 0's challenge from `rng`
    /// (randomness drawn only now, after the root is fixed).
    pub fn receive_commitment<G: RngCore + CryptoRng>(
        &mut self,
        commitment: Commitment,
        rng: &mut G,
    ) -> Step {
        if self.state != VerifierState::AwaitCommitment {
            return self.out_of_order("commitment");
        }
        if let Err(e) = commitment.validate() {
            return self.decide(Verdict::Reject(RejectReason::GeometryMismatch {
                detail: e.to_string(),
            }));
        }
        if let Some(field) = self
            .expected
            .as_ref()
            .and_then(|e| e.first_difference(&commitment.statement))
        {
            return self.decide(Verdict::Reject(RejectReason::GeometryMismatch {
                detail: format!(
                    "the statement's {field} differs from the one the verifier expects"
                ),
            }));
        }
        self.commitment = Some(commitment);
        self.next_round(0, None, rng)
    }

    fn next_round<G: RngCore + CryptoRng>(
        &mut self,
        round: u32,
        nonce: Option<u64>,
        rng: &mut G,
    ) -> Step {
        if round == self.config.rounds {
            return self.decide(Verdict::Accept);
        }
        match self.config.mode {
            Mode::NonInteractive => {
                self.state = VerifierState::AwaitOpening { round, nonce };
                Step::AwaitOpening
            }
            Mode::Interactive => {
                let statement = &self.commitment.as_ref().expect("committed").statement;
                let mut seed = [0u8; 32];
                rng.fill_bytes(&mut seed);
                let p = self.config.params;
                match sample_cells(statement, p.samples, p.strategy, seed) {
                    Ok(cells) => {
                        let challenge = Challenge { round, cells };
                        self.state = VerifierState::Challenged {
                            challenge: challenge.clone(),
                        };
                        Step::Challenge(challenge)
                    }
                    Err(e) => self.decide(Verdict::Reject(RejectReason::GeometryMismatch {
                        detail: e.to_string(),
                    })),
                }
            }
        }
    }

    /// Receives the opening of the current round, checks it, and either decides or moves to the
    /// next round (returning its challenge in interactive mode).
    pub fn receive_opening<G: RngCore + CryptoRng>(
        &mut self,
        opening: &Opening,
        rng: &mut G,
    ) -> Step {
        let commitment = match (&self.state, &self.commitment) {
            (VerifierState::Challenged { .. } | VerifierState::AwaitOpening { .. }, Some(c)) => {
                c.clone()
            }
            _ => return self.out_of_order("opening"),
        };
        let cells = match &self.state {
            VerifierState::Challenged { challenge } if challenge.round == opening.round => {
                // interactive openings carry no proof of work: exactly one valid encoding
                if opening.pow_nonce != 0 {
                    return self.decide(Verdict::Reject(RejectReason::BadProofOfWork {
                        pow_bits: 0,
                        nonce: opening.pow_nonce,
                    }));
                }
                challenge.cells.clone()
            }
            VerifierState::AwaitOpening { round, nonce } if *round == opening.round => {
                let p = self.config.params;
                let pow_ok = match nonce {
                    // later rounds repeat the nonce checked in round 0
                    Some(n) => *n == opening.pow_nonce,
                    None => matches!(check_pow(&commitment, &p, opening.pow_nonce), Ok(true)),
                };
                if !pow_ok {
                    return self.decide(Verdict::Reject(RejectReason::BadProofOfWork {
                        pow_bits: p.pow_bits,
                        nonce: opening.pow_nonce,
                    }));
                }
                #[cfg(feature = "fault-injection")]
                let seed = if self.faults.skip_root_binding {
                    crate::transcript::challenge_seed_without_root(
                        &commitment.statement,
                        opening.round,
                        &p,
                        opening.pow_nonce,
                    )
                } else {
                    challenge_seed(&commitment, opening.round, &p, opening.pow_nonce)
                };
                #[cfg(not(feature = "fault-injection"))]
                let seed = challenge_seed(&commitment, opening.round, &p, opening.pow_nonce);
                match sample_cells(&commitment.statement, p.samples, p.strategy, seed) {
                    Ok(cells) => cells,
                    Err(e) => {
                        return self.decide(Verdict::Reject(RejectReason::GeometryMismatch {
                            detail: e.to_string(),
                        }))
                    }
                }
            }
            _ => return self.out_of_order("opening for another round"),
        };
        match check_opening_inner(
            &commitment,
            &cells,
            opening,
            &self.config.tolerance,
            &self.recompute,
            self.faults,
        ) {
            Ok(()) => {
                let nonce = match self.config.mode {
                    Mode::NonInteractive => Some(opening.pow_nonce),
                    Mode::Interactive => None,
                };
                self.next_round(opening.round + 1, nonce, rng)
            }
            Err(reason) => self.decide(Verdict::Reject(reason)),
        }
    }
}

/// Checks one opening of the challenged cells `challenged` against a commitment — the
/// verification algorithm of `specs/protocol.md`:
///
/// 0. With text input, the input tokens must be the text's tokenization
///    ([`Recompute::check_input`]).
/// 1. The opened cells must be exactly [`Statement::opening_cells`] of the challenge, in order.
/// 2. Each cell's data must have its shape's byte length.
/// 3. Leaf digests are computed from the data; the batch proof must open them under the root
///    with the tree size and indices from the statement.
/// 4. No opened value may be NaN or infinite.
/// 5. Each challenged cell is recomputed (layer 0 from the tokens; layer `l` from the opened
///    input rows of layer `l − 1`) and compared under the tolerance policy.
/// 6. For challenged cells of the last layer, each row that predicts an output token must give
///    that token.
pub fn check_opening<R: Recompute + ?Sized>(
    commitment: &Commitment,
    challenged: &[CellId],
    opening: &Opening,
    tolerance: &TolerancePolicy,
    recompute: &R,
) -> std::result::Result<(), RejectReason> {
    check_opening_inner(
        commitment,
        challenged,
        opening,
        tolerance,
        recompute,
        Faults::default(),
    )
}

fn check_opening_inner<R: Recompute + ?Sized>(
    commitment: &Commitment,
    challenged: &[CellId],
    opening: &Opening,
    tolerance: &TolerancePolicy,
    recompute: &R,
    faults: Faults,
) -> std::result::Result<(), RejectReason> {
    let statement = &commitment.statement;
    let g = &statement.geometry;
    let bad_statement = |e: ProtocolError| RejectReason::GeometryMismatch {
        detail: e.to_string(),
    };
    let required = statement.opening_cells(challenged).map_err(bad_statement)?;

    // 0. the input tokens are the statement's text, tokenized (when it has text)
    recompute.check_input(statement).map_err(bad_statement)?;

    // 1. exactly the required cells, in order
    let opened: Vec<CellId> = opening.cells.iter().map(|oc| oc.cell).collect();
    if opened != required {
        let i = opened
            .iter()
            .zip(&required)
            .take_while(|(a, b)| a == b)
            .count();
        return Err(match (opened.get(i), required.get(i)) {
            (Some(got), Some(want)) if required.contains(got) => {
                RejectReason::MissingCell { cell: *want }
            }
            (Some(got), _) => RejectReason::UnexpectedCell { cell: *got },
            (None, want) => RejectReason::MissingCell {
                cell: *want.unwrap_or(&required[0]),
            },
        });
    }

    // 2-3. lengths, leaves, batch proof
    let mut leaves = Vec::with_capacity(required.len());
    for oc in &opening.cells {
        let range = g
            .cell_byte_range(oc.cell)
            .map_err(|e| bad_statement(e.into()))?;
        if oc.data.len() != range.len() {
            return Err(RejectReason::WrongCellLength {
                cell: oc.cell,
                expected: range.len() as u64,
                got: oc.data.len() as u64,
            });
        }
        let leaf = g
            .hash_cell(&statement.hasher, oc.cell, &oc.data)
            .map_err(|e| bad_statement(e.into()))?;
        let index = g.cell_index(oc.cell).map_err(|e| bad_statement(e.into()))?;
        leaves.push((index, leaf));
    }
    if !faults.skip_proof_check {
        verify_batch(
            &statement.hasher,
            &commitment.root,
            g.num_cells(),
            &leaves,
            &opening.proof,
        )
        .map_err(|e| RejectReason::BadProof {
            detail: e.to_string(),
        })?;
    }
    debug_assert!(statement.hasher.is_canonical(&commitment.root));

    // 4. non-finite values are rejected before any comparison
    for oc in &opening.cells {
        if let Some(index) = first_non_finite(g.dtype, &oc.data) {
            return Err(RejectReason::NonFinite {
                cell: oc.cell,
                index,
            });
        }
    }

    // 5-6. recompute and compare
    let row_len = g.row_byte_len();
    for &cell in challenged {
        let rows = g.cell_rows(cell).map_err(|e| bad_statement(e.into()))?;
        let failed = |e: ProtocolError| RejectReason::RecomputeFailed {
            cell,
            detail: e.to_string(),
        };
        let recomputed = match statement.input_rows(cell).map_err(bad_statement)? {
            None => recompute.embed(statement, rows.clone()).map_err(failed)?,
            Some(input_rows) => {
                let inputs = gather_rows(commitment, opening, cell.layer - 1, input_rows.clone());
                recompute
                    .layer(statement, cell.layer, rows.clone(), input_rows, &inputs)
                    .map_err(failed)?
            }
        };
        let claimed = &opening.cells[required.binary_search(&cell).expect("required")].data;
        if recomputed.len() != claimed.len() {
            return Err(failed(ProtocolError::Engine(format!(
                "the engine returned {} bytes for a cell of {} bytes",
                recomputed.len(),
                claimed.len()
            ))));
        }
        tolerance
            .check(cell.layer, g.dtype, claimed, &recomputed)
            .map_err(failed)?
            .map_err(|violation| RejectReason::Tolerance { cell, violation })?;

        if cell.layer + 1 == g.layers {
            for (i, position) in rows.clone().enumerate() {
                let Some(claimed_token) = statement.predicted_output(position) else {
                    continue;
                };
                let row = &claimed[i * row_len..(i + 1) * row_len];
                let token = recompute
                    .next_token(statement, position, row)
                    .map_err(failed)?;
                if token != claimed_token {
                    return Err(RejectReason::OutputTokenMismatch {
                        position,
                        claimed: claimed_token,
                        recomputed: token,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Concatenates rows `rows` of `layer` from the opened cells (all present: checked before).
fn gather_rows(
    commitment: &Commitment,
    opening: &Opening,
    layer: u32,
    rows: Range<u32>,
) -> Vec<u8> {
    let g = &commitment.statement.geometry;
    let row_len = g.row_byte_len();
    let mut out = Vec::with_capacity((rows.end - rows.start) as usize * row_len);
    for oc in opening.cells.iter().filter(|oc| oc.cell.layer == layer) {
        let cell_rows = g.cell_rows(oc.cell).expect("opened cells are in range");
        let lo = rows.start.max(cell_rows.start);
        let hi = rows.end.min(cell_rows.end);
        if lo < hi {
            let a = (lo - cell_rows.start) as usize * row_len;
            let b = (hi - cell_rows.start) as usize * row_len;
            out.extend_from_slice(&oc.data[a..b]);
        }
    }
    out
}

fn first_non_finite(dtype: Dtype, data: &[u8]) -> Option<u64> {
    if dtype == Dtype::I8 {
        return None;
    }
    decode_values(dtype, data)
        .ok()?
        .iter()
        .position(|v| !v.is_finite())
        .map(|i| i as u64)
}
