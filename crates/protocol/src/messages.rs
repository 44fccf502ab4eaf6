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
    /// Root of the key-value trace ([`crate::SubLayerPart::Kv`]), present exactly when the
    /// statement's level is [`crate::TraceLevel::SubLayerByHead`]. JSON may omit it (none).
    #[serde(default)]
    pub kv: Option<Digest>,
}

impl SubLayerRoots {
    /// The root of `part` (`None`: a key-value root the commitment does not have).
    pub fn get(&self, part: crate::SubLayerPart) -> Option<&Digest> {
        match part {
            crate::SubLayerPart::Context => Some(&self.context),
            crate::SubLayerPart::Cell => Some(&self.cell),
            crate::SubLayerPart::Kv => self.kv.as_ref(),
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
                let by_head = matches!(
                    self.statement.trace_level,
                    crate::TraceLevel::SubLayerByHead { .. }
                );
                if roots.kv.is_some() != by_head {
                    return Err(ProtocolError::InvalidStatement(
                        "a commitment has a key-value root exactly when its statement commits \
                         sub-layer values by head"
                            .into(),
                    ));
                }
                for &part in self.statement.trace_level.parts() {
                    let Some(root) = roots.get(part) else {
                        continue;
                    };
                    if !veritrace_commit::Hasher::is_canonical(&self.statement.hasher, root) {
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
    /// The attention draw (specs/protocol.md §4.4): present when the verifier samples the
    /// attention of each challenged cell, so that the opening holds only the drawn heads'
    /// keys and values over the context and the drawn context chunks' provenance. Only for a
    /// [`crate::TraceLevel::SubLayerByHead`] statement. JSON may omit it (none).
    #[serde(default)]
    pub attention: Option<AttentionDraw>,
}

/// A challenge's attention draw (specs/protocol.md §4.4): how many query heads and earlier
/// context chunks each challenged cell of a layer `l ≥ 1` samples, and the seed they are
/// drawn from ([`AttentionDraw::cell`]). Interactive: the seed is the verifier's fresh
/// randomness; non-interactive: it is squeezed from the round's transcript after the cells'
/// seed (specs/protocol.md §7.2, row 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttentionDraw {
    /// Query heads per cell (at least 1; at or above the statement's `H`: every head).
    pub heads: u32,
    /// Context chunks before the cell's own per cell (0: the cell's own only; at or above the
    /// chunks there are: every one).
    pub chunks: u32,
    /// The draw's seed.
    pub seed: Digest,
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
        if self.attention.is_some_and(|a| a.heads == 0) {
            return Err(ProtocolError::InvalidParameter(
                "an attention draw samples at least one head".into(),
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
    /// Cells of the key-value trace ([`crate::TraceLevel::SubLayerByHead`]; empty otherwise).
    /// JSON may omit it (none).
    #[serde(default)]
    pub kv: Vec<OpenedCell>,
    /// Batch proof of `kv` against the key-value root (no siblings when `kv` is empty). JSON
    /// may omit it.
    #[serde(default)]
    pub kv_proof: BatchProof,
}

impl SubLayerOpening {
    /// The opened cells and the proof of `part`.
    pub fn get(&self, part: crate::SubLayerPart) -> (&[OpenedCell], &BatchProof) {
        match part {
            crate::SubLayerPart::Context => (&self.context, &self.context_proof),
            crate::SubLayerPart::Cell => (&self.cell, &self.cell_proof),
            crate::SubLayerPart::Kv => (&self.kv, &self.kv_proof),
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
