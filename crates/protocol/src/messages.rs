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
    /// The roots of the two sub-layer traces, present exactly when the statement's
    /// [`crate::TraceLevel`] is `SubLayer` (specs/protocol.md §3.5). JSON may omit it (none).
    #[serde(default)]
    pub sublayer_roots: Option<SubLayerRoots>,
}

/// The Merkle roots of a statement's two sub-layer traces ([`crate::TraceLevel::SubLayer`]),
/// each over its trace's cells, layer-major, with the statement's hasher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SubLayerRoots {
    /// Root of the context trace ([`crate::SubLayerPart::Context`]).
    pub context: Digest,
    /// Root of the cell trace ([`crate::SubLayerPart::Cell`]).
    pub cell: Digest,
}

impl SubLayerRoots {
    /// The root of `part`.
    pub fn get(&self, part: crate::SubLayerPart) -> &Digest {
        match part {
            crate::SubLayerPart::Context => &self.context,
            crate::SubLayerPart::Cell => &self.cell,
        }
    }
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
        let sublayer = !matches!(self.statement.trace_level, crate::TraceLevel::Hidden);
        match &self.sublayer_roots {
            None if sublayer => {
                return Err(ProtocolError::InvalidStatement(
                    "the statement commits sub-layer values but the commitment has no \
                     sub-layer roots"
                        .into(),
                ))
            }
            Some(_) if !sublayer => {
                return Err(ProtocolError::InvalidStatement(
                    "the commitment has sub-layer roots but its statement commits hidden \
                     states only"
                        .into(),
                ))
            }
            Some(roots) => {
                for part in crate::SubLayerPart::ALL {
                    if !veritrace_commit::Hasher::is_canonical(
                        &self.statement.hasher,
                        roots.get(part),
                    ) {
                        return Err(ProtocolError::InvalidStatement(format!(
                            "the {} sub-layer root is not a canonical {} digest",
                            part.name(),
                            self.statement.hasher
                        )));
                    }
                }
            }
            None => {}
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
    /// Non-interactive mode: the session's proof-of-work nonce, the same in every round (0 when
    /// none is required). Always 0 in interactive mode. It precedes the cells (envelope
    /// version 4), so a streaming verifier knows the round's challenge before the first cell.
    pub pow_nonce: u64,
    /// Opened cells, ascending leaf order.
    pub cells: Vec<OpenedCell>,
    /// Batch proof of all opened cells against the root.
    pub proof: BatchProof,
    /// The sub-layer cells of the challenge ([`crate::Statement::sublayer_ranges`]), present
    /// exactly when the statement's [`crate::TraceLevel`] is `SubLayer`. JSON may omit it.
    #[serde(default)]
    pub sublayers: Option<SubLayerOpening>,
}

/// The sub-layer part of an [`Opening`] (specs/protocol.md §4.3): for each sub-layer trace,
/// its required cells (sub-layer coordinates, ascending leaf order, f32 little-endian) and one
/// batch proof against its root in [`Commitment::sublayer_roots`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubLayerOpening {
    /// Cells of the context trace.
    pub context: Vec<OpenedCell>,
    /// Batch proof of `context` against the context root.
    pub context_proof: BatchProof,
    /// Cells of the cell trace.
    pub cell: Vec<OpenedCell>,
    /// Batch proof of `cell` against the cell root.
    pub cell_proof: BatchProof,
}

impl SubLayerOpening {
    /// The opened cells and the proof of `part`.
    pub fn get(&self, part: crate::SubLayerPart) -> (&[OpenedCell], &BatchProof) {
        match part {
            crate::SubLayerPart::Context => (&self.context, &self.context_proof),
            crate::SubLayerPart::Cell => (&self.cell, &self.cell_proof),
        }
    }
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
    /// The algebraic check of a challenged cell's sub-layer values failed: a linear map's
    /// Freivalds check, or a nonlinear part recomputed from the opened values
    /// ([`crate::Recompute::check_sublayers`]).
    #[error("algebraic check of cell (layer {}, chunk {}) failed: {detail}", cell.layer, cell.chunk)]
    AlgebraicCheck {
        /// The challenged cell (hidden-trace coordinates).
        cell: CellId,
        /// Which check and by how much.
        detail: String,
    },
}

impl RejectReason {
    /// Every reason's [`RejectReason::name`], in declaration order.
    pub const NAMES: [&'static str; 12] = [
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
        "AlgebraicCheck",
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
            RejectReason::AlgebraicCheck { .. } => "AlgebraicCheck",
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
