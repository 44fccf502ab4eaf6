//! The protocol's messages: commitment, challenge, opening, verdict.

use serde::{Deserialize, Serialize};
use veritrace_commit::{BatchProof, CellId, Digest};

use crate::encoding::{Message, MessageKind};
use crate::tolerance::ToleranceViolation;
use crate::{ProtocolError, Result, Statement};

/// Prover → verifier: the statement and the Merkle root of the trace it committed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commitment {
    /// What the prover claims.
    pub statement: Statement,
    /// Root over all cells of the trace, layer-major (`specs/commitment.md`).
    pub root: Digest,
}

impl Message for Commitment {
    const KIND: MessageKind = MessageKind::Commitment;
    const NAME: &'static str = "commitment";

    fn validate(&self) -> Result<()> {
        self.statement.validate()?;
        if !veritrace_commit::Hasher::is_canonical(&self.statement.hasher, &self.root) {
            return Err(ProtocolError::InvalidStatement(format!(
                "root is not a canonical {} digest",
                self.statement.hasher
            )));
        }
        Ok(())
    }
}

/// Verifier → prover (interactive), or derived by both (non-interactive): the cells to open in
/// one round, sorted by leaf index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Round index, from 0.
    pub round: u32,
    /// Challenged cells, distinct, ascending leaf order.
    pub cells: Vec<CellId>,
}

impl Message for Challenge {
    const KIND: MessageKind = MessageKind::Challenge;
    const NAME: &'static str = "challenge";

    fn validate(&self) -> Result<()> {
        if self.cells.is_empty() {
            return Err(ProtocolError::InvalidParameter(
                "a challenge names at least one cell".into(),
            ));
        }
        if !self.cells.windows(2).all(|w| w[0] < w[1]) {
            return Err(ProtocolError::InvalidParameter(
                "challenged cells must be distinct and sorted".into(),
            ));
        }
        Ok(())
    }
}

/// One opened cell: its position and its little-endian element bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenedCell {
    /// Which cell.
    pub cell: CellId,
    /// The cell's elements, row-major, little-endian, in the statement's dtype.
    #[serde(with = "crate::encoding::hex_bytes")]
    pub data: Vec<u8>,
}

/// Prover → verifier: the challenged cells and the input cells their recomputation needs
/// ([`Statement::opening_cells`], in that order), with one batch Merkle proof for all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opening {
    /// The round this answers.
    pub round: u32,
    /// Opened cells, ascending leaf order.
    pub cells: Vec<OpenedCell>,
    /// Batch proof of all opened cells against the root.
    pub proof: BatchProof,
    /// Non-interactive mode: the session's proof-of-work nonce, the same in every round (0 when
    /// none is required). Always 0 in interactive mode.
    pub pow_nonce: u64,
}

impl Message for Opening {
    const KIND: MessageKind = MessageKind::Opening;
    const NAME: &'static str = "opening";
}

/// Why a verifier rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "kebab-case")]
pub enum RejectReason {
    /// A message arrived in a state that does not accept it (e.g. a commitment after the
    /// challenge, an opening before any challenge, an opening for another round).
    #[error("{message} arrived out of order (verifier state: {state})")]
    OutOfOrder {
        /// Verifier state.
        state: String,
        /// The message.
        message: String,
    },
    /// The statement is invalid or does not match the verifier's expectations.
    #[error("invalid statement: {detail}")]
    GeometryMismatch {
        /// What was wrong.
        detail: String,
    },
    /// A cell the verifier needs is not in the opening.
    #[error("cell (layer {}, chunk {}) is missing from the opening", cell.layer, cell.chunk)]
    MissingCell {
        /// The missing cell.
        cell: CellId,
    },
    /// The opening holds a cell the verifier did not ask for, or cells out of order.
    #[error("cell (layer {}, chunk {}) was not asked for, or is out of order", cell.layer, cell.chunk)]
    UnexpectedCell {
        /// The cell.
        cell: CellId,
    },
    /// An opened cell's data has the wrong length for its shape and dtype.
    #[error("cell (layer {}, chunk {}) holds {got} bytes, its shape needs {expected}", cell.layer, cell.chunk)]
    WrongCellLength {
        /// The cell.
        cell: CellId,
        /// Bytes required.
        expected: u64,
        /// Bytes given.
        got: u64,
    },
    /// The batch proof does not open these cells under the committed root.
    #[error("bad Merkle proof: {detail}")]
    BadProof {
        /// The commitment layer's error.
        detail: String,
    },
    /// The non-interactive proof of work is missing or wrong.
    #[error("nonce {nonce} does not meet {pow_bits} bits of proof of work")]
    BadProofOfWork {
        /// Bits required.
        pow_bits: u8,
        /// Nonce given.
        nonce: u64,
    },
    /// An opened cell holds NaN or an infinity; it is never compared.
    #[error("cell (layer {}, chunk {}) holds a non-finite value at element {index}", cell.layer, cell.chunk)]
    NonFinite {
        /// The cell.
        cell: CellId,
        /// Element index within the cell.
        index: u64,
    },
    /// The recomputed cell is not within tolerance of the opened one.
    #[error("cell (layer {}, chunk {}): {violation}", cell.layer, cell.chunk)]
    Tolerance {
        /// The cell.
        cell: CellId,
        /// Which metric, value and threshold (or the first differing element in exact mode).
        violation: ToleranceViolation,
    },
    /// An output token does not follow from the opened last-layer row.
    #[error("output token at position {position} is {claimed}, the opened last layer gives {recomputed}")]
    OutputTokenMismatch {
        /// Position whose row predicts the token.
        position: u32,
        /// Token in the statement.
        claimed: u32,
        /// Token the verifier derived.
        recomputed: u32,
    },
    /// The verifier's recompute engine failed on a cell.
    #[error("recomputing cell (layer {}, chunk {}) failed: {detail}", cell.layer, cell.chunk)]
    RecomputeFailed {
        /// The cell.
        cell: CellId,
        /// The engine's message.
        detail: String,
    },
}

impl RejectReason {
    /// Every reason's [`RejectReason::name`], in declaration order.
    pub const NAMES: [&'static str; 11] = [
        "OutOfOrder",
        "GeometryMismatch",
        "MissingCell",
        "UnexpectedCell",
        "WrongCellLength",
        "BadProof",
        "BadProofOfWork",
        "NonFinite",
        "Tolerance",
        "OutputTokenMismatch",
        "RecomputeFailed",
    ];

    /// A stable identifier of the reason (its variant name), for logs, tables and test vectors.
    pub fn name(&self) -> &'static str {
        match self {
            RejectReason::OutOfOrder { .. } => "OutOfOrder",
            RejectReason::GeometryMismatch { .. } => "GeometryMismatch",
            RejectReason::MissingCell { .. } => "MissingCell",
            RejectReason::UnexpectedCell { .. } => "UnexpectedCell",
            RejectReason::WrongCellLength { .. } => "WrongCellLength",
            RejectReason::BadProof { .. } => "BadProof",
            RejectReason::BadProofOfWork { .. } => "BadProofOfWork",
            RejectReason::NonFinite { .. } => "NonFinite",
            RejectReason::Tolerance { .. } => "Tolerance",
            RejectReason::OutputTokenMismatch { .. } => "OutputTokenMismatch",
            RejectReason::RecomputeFailed { .. } => "RecomputeFailed",
        }
    }
}

/// The verifier's decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every challenged cell of every round was opened consistently with the commitment and
    /// recomputed within tolerance.
    Accept,
    /// Rejected, with the reason.
    Reject(RejectReason),
}

impl Verdict {
    /// Whether the verdict accepts.
    pub fn is_accept(&self) -> bool {
        matches!(self, Verdict::Accept)
    }

    /// `"Accept"`, or the [`RejectReason::name`] of a rejection.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Accept => "Accept",
            Verdict::Reject(r) => r.name(),
        }
    }
}

impl Message for Verdict {
    const KIND: MessageKind = MessageKind::Verdict;
    const NAME: &'static str = "verdict";
}
