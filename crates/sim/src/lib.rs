//! # veritrace-sim
//!
//! Adversarial provers, end to end: every trial runs real inference (the model crate), a real
//! commitment and opening (the protocol crate's prover) and the real verifier (challenge, Merkle
//! check, recompute under the claimed setup, tolerance), and records the verdict. The simulator
//! measures, per adversary, the detection probability with a 95% Wilson interval beside the
//! hypergeometric prediction, the honest false-positive rate, the adversary's compute saving,
//! and the verifier's cost.
//!
//! * [`Scenario`]: what to run (TOML; [`scenario`] documents the format and the adversaries).
//! * [`Adversary`]: one enum of the adversary kinds and their parameters; [`adversary`] has a
//!   module per kind with everything the engine does differently for it.
//! * [`Simulation`]: calibrates the tolerance on honest other-hardware runs, then runs trials
//!   in parallel, deterministically for a seed.
//! * [`fast`]: fast mode, protocol trials sampled from per-cell outcomes measured end to end.
//! * [`SimReport`]: results, as JSON, CSV ([`report::csv`]) or a markdown table
//!   ([`report::markdown`]).
//! * [`analysis`]: ROC curves of the tolerance test and detection against `k` beside the
//!   hypergeometric law, from reports and sweeps (what `veritrace report` plots).

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod adversary;
pub mod analysis;
pub mod calibration;
pub use veritrace_model::cost;
pub mod engine;
pub mod fast;
pub mod map_calibration;
pub mod model;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod sweep;

pub use adversary::{
    Adversary, AdversaryKind, Equivocation, Grinding, Honest, LateCommitment, ModelSwap,
    OtherHardware, Partial, SetupSwap,
};
pub use engine::{
    AdversaryResult, CalibrationSummary, CorridorResult, EngineMode, ProverRun, SimReport,
    Simulation,
};
pub use model::{load_model, KeyedCheck, SimModel, SimVerifier};
pub use scenario::{AdversarySpec, Scenario, DEFAULT_SCENARIO};

use thiserror::Error;

/// Every way a simulation fails.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SimError {
    /// The scenario is malformed or inconsistent.
    #[error("scenario: {0}")]
    Scenario(String),
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The model refused (bad checkpoint, unsupported setup, …).
    #[error("model: {0}")]
    Model(#[from] veritrace_model::ModelError),
    /// The protocol crate refused (parameters, messages).
    #[error("protocol: {0}")]
    Protocol(#[from] veritrace_protocol::ProtocolError),
    /// The trace geometry refused a cell.
    #[error("commitment: {0}")]
    Commit(#[from] veritrace_commit::CommitError),
    /// Something the engine should never see.
    #[error("engine: {0}")]
    Engine(String),
}

impl SimError {
    /// Whether the error is the input's fault (the CLI's exit code 2): a refused scenario, a
    /// file that could not be read or written, or a model error other than a failure of the
    /// tensor library or the GPU (a bad checkpoint, an unsupported setup, an unknown preset,
    /// …). Protocol, commitment and engine errors inside a simulation are the simulator's own
    /// failures (exit code 1).
    pub fn is_input(&self) -> bool {
        match self {
            SimError::Scenario(_) | SimError::Io { .. } => true,
            SimError::Model(m) => m.is_input(),
            SimError::Protocol(_) | SimError::Commit(_) | SimError::Engine(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veritrace_model::ModelError;

    #[test]
    fn is_input_keeps_the_cli_classification() {
        assert!(SimError::Scenario("x".into()).is_input());
        assert!(SimError::Io {
            path: "p".into(),
            reason: "r".into()
        }
        .is_input());
        assert!(SimError::Model(ModelError::UnknownPreset("huge".into())).is_input());
        assert!(SimError::Model(ModelError::UnsupportedSetup("x".into())).is_input());
        assert!(!SimError::Model(ModelError::Candle("oom".into())).is_input());
        assert!(!SimError::Model(ModelError::Cuda("driver".into())).is_input());
        assert!(!SimError::Engine("bug".into()).is_input());
    }
}
