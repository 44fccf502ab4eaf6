//! The crate's one error type.

use thiserror::Error;
use veritrace_commit::CommitError;

/// Every way a protocol call can be refused: malformed messages, messages out of order, invalid
/// parameters. A verifier's *judgement* of a prover is a [`crate::Verdict`], not an error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A parameter is outside its domain (a probability outside [0, 1], more bad cells than
    /// cells, an empty sample set, k larger than the number of cells, …).
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// A message arrived in a state that does not accept it.
    #[error("{message} is not accepted in state {state}")]
    OutOfOrder {
        /// The state machine's state when the message arrived.
        state: &'static str,
        /// The message or call that was refused.
        message: &'static str,
    },
    /// The statement is inconsistent (e.g. its geometry does not match its token counts).
    #[error("invalid statement: {0}")]
    InvalidStatement(String),
    /// A commitment-layer error (encodings, geometry, proofs).
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// A binary message could not be decoded.
    #[error("malformed {what}: {reason}")]
    Decode {
        /// Which message.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The evidence given cannot support the requested bound (for instance too few honest runs
    /// for a calibration's target false-positive rate): how much is needed instead.
    #[error("insufficient evidence: {have} honest runs given, {needed} needed: {reason}")]
    InsufficientEvidence {
        /// What the bound needs.
        needed: u64,
        /// What was given.
        have: u64,
        /// Which bound, with its parameters.
        reason: String,
    },
    /// The prover's trace source or the verifier's recompute engine failed.
    #[error("{0}")]
    Engine(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;
