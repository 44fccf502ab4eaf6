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
    /// A claim of the input exceeds one of the verifier's resource limits
    /// ([`crate::VerifierLimits`]); refused before any allocation of the claimed size.
    #[error("{what} of {claimed} exceeds the verifier's limit of {limit}")]
    LimitExceeded {
        /// Which quantity (`layers`, `tokens`, `opening cells`, …).
        what: &'static str,
        /// The verifier's limit.
        limit: u64,
        /// What the input claims (or needs).
        claimed: u64,
    },
}

impl ProtocolError {
    /// Whether the error is the input's fault (bad input: a front end exits 2) rather than a
    /// failure on this side (exit 1).
    ///
    /// Everything but [`ProtocolError::Engine`] is input: invalid parameters, messages out of
    /// order, invalid statements, malformed messages, commitment-layer errors (each
    /// [`CommitError::is_input`]), insufficient evidence for a requested bound, and claims above
    /// the verifier's limits. `Engine` is the prover's trace source or the verifier's engine
    /// failing (an I/O error, an engine that cannot run), which the input did not cause. An
    /// engine that *refuses* an input (a setup it cannot run, text it cannot tokenize) inside a
    /// verification becomes a [`crate::RejectReason`], not an error, so it never reaches this.
    pub fn is_input(&self) -> bool {
        match self {
            ProtocolError::InvalidParameter(_)
            | ProtocolError::OutOfOrder { .. }
            | ProtocolError::InvalidStatement(_)
            | ProtocolError::Decode { .. }
            | ProtocolError::InsufficientEvidence { .. }
            | ProtocolError::LimitExceeded { .. } => true,
            ProtocolError::Commit(e) => e.is_input(),
            ProtocolError::Engine(_) => false,
        }
    }
}

impl From<std::convert::Infallible> for ProtocolError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;
