//! `other-hardware`: an honest prover on other hardware, running a reduction-order variant of
//! the claimed setup.

use serde::{Deserialize, Serialize};
use veritrace_model::Setup;

use super::{AdversaryKind, Behaviour, Committed};
use crate::engine::Simulation;
use crate::SimError;

/// An honest prover on other hardware.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtherHardware {
    /// The setup run: the reference up to reduction order.
    pub setup: Setup,
}

impl Behaviour for OtherHardware {
    fn kind(&self) -> AdversaryKind {
        AdversaryKind::OtherHardware
    }

    fn label_params(&self) -> String {
        format!(" {}", self.setup)
    }

    fn setup(&self) -> Option<&Setup> {
        Some(&self.setup)
    }

    fn check(&self, reference: &Setup) -> Result<(), String> {
        if self.setup.same_algorithm(reference) {
            Ok(())
        } else {
            Err(format!(
                "{} is not a reduction-order variant of the reference {reference}",
                self.setup
            ))
        }
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

/// `setup` over the whole trace of `prompt` on the claimed model, with its cost.
pub(crate) fn whole_trace(
    sim: &Simulation,
    setup: &Setup,
    prompt: &[u32],
) -> Result<Committed, SimError> {
    let reference = sim.scenario().reference;
    let (s, t) = sim.run_setup(sim.model(), setup, prompt)?;
    let c = sim.model().forward_cost(setup, &reference, t.tokens as u32);
    Ok(Committed::plain(s, t, c).with_plan(super::CellPlan::Setup(*setup)))
}
