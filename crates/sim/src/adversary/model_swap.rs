//! `model-swap`: a cheaper model of the same shape (a quarter of the MLP width, another seed),
//! claiming the scenario's model.

use serde::{Deserialize, Serialize};

use super::{AdversaryKind, Behaviour, Committed};
use crate::engine::Simulation;
use crate::model::SimModel;
use crate::SimError;

/// A prover that runs a cheaper model of the same shape (no parameters).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSwap {}

impl Behaviour for ModelSwap {
    fn kind(&self) -> AdversaryKind {
        AdversaryKind::ModelSwap
    }

    fn check_model(&self, model: &SimModel) -> Result<(), String> {
        if model.is_encoder() {
            Err("model-swap needs a seeded decoder (tiny, small)".into())
        } else {
            Ok(())
        }
    }

    fn commit(
        &self,
        sim: &Simulation,
        _ai: u64,
        _pi: u64,
        prompt: &[u32],
    ) -> Result<Committed, SimError> {
        let reference = sim.scenario().reference;
        let swap = sim.swap_model()?;
        let (s, t) = sim.run_setup(&swap, &reference, prompt)?;
        let c = swap.forward_cost(&reference, &reference, t.tokens as u32);
        Ok(Committed::plain(s, t, c).with_plan(super::CellPlan::Model(swap)))
    }
}
