//! `setup`: a cheaper setup (quantization, attention, precision, skipped or reused layer) over
//! the whole trace, claiming the reference.

use serde::{Deserialize, Serialize};
use veritrace_model::Setup;

use super::other_hardware::whole_trace;
use super::{check_cheaper, AdversaryKind, Behaviour, Committed};
use crate::engine::Simulation;
use crate::SimError;

/// A prover that runs a cheaper setup for the whole trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupSwap {
    /// The setup run (differing from the reference in more than reduction order).
    pub setup: Setup,
}

impl Behaviour for SetupSwap {
    fn kind(&self) -> AdversaryKind {
        AdversaryKind::Setup
    }

    fn label_params(&self) -> String {
        format!(" {}", self.setup)
    }

    fn setup(&self) -> Option<&Setup> {
        Some(&self.setup)
    }

    fn check(&self, reference: &Setup) -> Result<(), String> {
        check_cheaper(&self.setup, reference)
    }

    fn commit(
        &self,
        sim: &Simulation,
        _ai: u64,
        _pi: u64,
        prompt: &[u32],
    ) -> Result<Committed, SimError> {
        whole_trace(sim, &self.setup, prompt)
    }
}
