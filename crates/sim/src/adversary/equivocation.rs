//! `equivocation`: commits the honest trace and opens a fraction of its cells altered.

use serde::{Deserialize, Serialize};
use veritrace_commit::CellId;

use super::honest::honest_run;
use super::{check_fraction, Adversary, AdversaryKind, Behaviour, Committed, Plan, Prediction};
use crate::engine::{ProverRun, Simulation, Tally};
use crate::SimError;

/// A prover that opens values other than the committed ones on a fraction of the cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Equivocation {
    /// Fraction of all cells whose opening is altered, in (0, 1].
    pub fraction: f64,
}

impl Behaviour for Equivocation {
    fn kind(&self) -> AdversaryKind {
        AdversaryKind::Equivocation
    }

    fn label_params(&self) -> String {
        format!(" f={}", self.fraction)
    }

    fn check(&self, _reference: &veritrace_model::Setup) -> Result<(), String> {
        check_fraction(self.fraction)
    }

    fn fraction(&self) -> Option<f64> {
        Some(self.fraction)
    }

    fn with_fraction(&self, fraction: f64) -> Option<Adversary> {
        Some(Adversary::Equivocation(Equivocation { fraction }))
    }

    fn commit(
        &self,
        sim: &Simulation,
        ai: u64,
        pi: u64,
        prompt: &[u32],
    ) -> Result<Committed, SimError> {
        let mut run = honest_run(sim, prompt)?;
        let g = run.statement.geometry;
        let cells: Vec<CellId> = (0..g.num_cells())
            .map(|i| g.cell_at(i).expect("in range"))
            .collect();
        run.equivocate = sim.pick(&cells, self.fraction, ai, pi);
        Ok(run)
    }

    /// A lower bound: the hypergeometric law on the altered cells, while the input cells of
    /// every challenged cell are opened too.
    fn prediction(
        &self,
        _sim: &Simulation,
        plan: &Plan,
        runs: &[ProverRun],
    ) -> Result<Option<Prediction>, SimError> {
        let p = plan.mean_detection(runs, |r| r.equivocate.len() as u64)?;
        Ok(Some(Prediction {
            value: p,
            lower_bound: true,
        }))
    }

    fn note(&self, _plan: &Plan, _outcomes: &Tally) -> Option<String> {
        Some(
            "prediction is a lower bound: the input cells of challenged cells are opened too"
                .into(),
        )
    }
}
