//! `honest`: runs the claimed setup on the claimed model.

use serde::{Deserialize, Serialize};

use super::{AdversaryKind, Behaviour, Committed};
use crate::engine::Simulation;
use crate::SimError;

/// An honest prover (no parameters).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Honest {}

/// The honest run of `prompt`: the reference setup on the claimed model, at the cost of one
/// full forward.
pub(crate) fn honest_run(sim: &Simulation, prompt: &[u32]) -> Result<Committed, SimError> {
    let reference = sim.scenario().reference;
    let (s, t) = sim.run_setup(sim.model(), &reference, prompt)?;
    let c = sim
        .model()
        .forward_cost(&reference, &reference, t.tokens as u32);
    Ok(Committed::plain(s, t, c))
}

impl Behaviour for Honest {
    fn kind(&self) -> AdversaryKind {
        AdversaryKind::Honest
    }

    fn commit(
        &self,
        sim: &Simulation,
        _ai: u64,
        _pi: u64,
        prompt: &[u32],
    ) -> Result<Committed, SimError> {
        honest_run(sim, prompt)
    }
}
