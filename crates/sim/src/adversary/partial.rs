//! `partial`: a cheaper setup on a fraction of the cells of layers ≥ 1, the reference
//! elsewhere; every cell computed from the committed rows of the layer below.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use veritrace_commit::CellId;
use veritrace_model::{Setup, Trace};
use veritrace_protocol::Statement;

use super::{check_cheaper, check_fraction, Adversary, AdversaryKind, Behaviour, Committed};
use crate::engine::Simulation;
use crate::SimError;

/// A prover that runs a cheaper setup on a fraction of the cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partial {
    /// The setup of the cheated cells (differing from the reference in more than reduction
    /// order).
    pub setup: Setup,
    /// Fraction of the cells of layers ≥ 1 cheated, in (0, 1].
    pub fraction: f64,
}

impl Behaviour for Partial {
    fn kind(&self) -> AdversaryKind {
        AdversaryKind::Partial
    }

    fn label_params(&self) -> String {
        format!(" {} f={}", self.setup, self.fraction)
    }

    fn setup(&self) -> Option<&Setup> {
        Some(&self.setup)
    }

    fn check(&self, reference: &Setup) -> Result<(), String> {
        check_cheaper(&self.setup, reference)?;
        check_fraction(self.fraction)
    }

    fn fraction(&self) -> Option<f64> {
        Some(self.fraction)
    }

    fn with_fraction(&self, fraction: f64) -> Option<Adversary> {
        Some(Adversary::Partial(Partial {
            fraction,
            ..self.clone()
        }))
    }

    fn commit(
        &self,
        sim: &Simulation,
        ai: u64,
        pi: u64,
        prompt: &[u32],
    ) -> Result<Committed, SimError> {
        let (s, honest) = honest_trace(sim, prompt)?;
        let cheat = cheated_cells(sim, &s, self.fraction, ai, pi);
        let (t, c) = sim.mixed_trace(&honest, &cheat, &self.setup)?;
        Ok(Committed::plain(s, t, c).with_plan(super::CellPlan::Mixed {
            cheat,
            cheap: self.setup,
        }))
    }
}

/// The honest statement and trace of `prompt` (the reference on the claimed model).
pub(crate) fn honest_trace(
    sim: &Simulation,
    prompt: &[u32],
) -> Result<(Statement, Trace), SimError> {
    let reference = sim.scenario().reference;
    sim.run_setup(sim.model(), &reference, prompt)
}

/// `⌈fraction · n⌉` of the `n` cells of layers ≥ 1 of `statement`'s geometry, drawn for
/// adversary `ai` on prompt `pi`.
pub(crate) fn cheated_cells(
    sim: &Simulation,
    statement: &Statement,
    fraction: f64,
    ai: u64,
    pi: u64,
) -> BTreeSet<CellId> {
    let g = statement.geometry;
    let cells: Vec<CellId> = (1..g.layers)
        .flat_map(|layer| (0..g.chunks_per_layer()).map(move |chunk| CellId { layer, chunk }))
        .collect();
    sim.pick(&cells, fraction, ai, pi)
}
