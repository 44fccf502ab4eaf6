//! `head-cheat`: a probe of the sampled attention check (specs/freivalds.md §7). The prover
//! computes everything under the reference and commits it, except that in every cell of every
//! layer ≥ 1 the attention output of its first `heads` query heads is one unit in the last
//! place off. Nothing downstream changes (the output projection is committed from the true
//! attention: its Freivalds check cannot see one ulp), so only a bitwise recompute of those
//! heads' attention catches a cell: with every head checked, every challenged cell of a layer
//! ≥ 1; with `s` of the `H` heads sampled per cell, a cell with probability
//! `1 − C(H − b, s)/C(H, s)` over the draw. The draw is fixed by the verifier's key and the
//! statement, so for the scenario's key the bad cells are fixed and the prediction is the
//! hypergeometric law on them; the note sets their share beside the stated probability. With
//! drawn openings (`protocol.context_chunks`, specs/protocol.md §4.4) the draw is the
//! challenge's own, fresh per challenge: every cell of a layer ≥ 1 is bad, each challenged one
//! caught with that probability, which the prediction weighs in. Needs the layer check
//! `freivalds` or `both` (a recomputing verifier reads no sub-layer value).

use serde::{Deserialize, Serialize};

use super::honest::honest_run;
use super::{AdversaryKind, Behaviour, CellPlan, Committed, Plan};
use crate::engine::{Simulation, Tally};
use crate::model::SimModel;
use crate::SimError;

/// A prover whose committed attention output is wrong in its first `heads` query heads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadCheat {
    /// Query heads whose attention output is off (the first `heads`, at least 1).
    pub heads: u32,
}

impl Behaviour for HeadCheat {
    fn kind(&self) -> AdversaryKind {
        AdversaryKind::HeadCheat
    }

    fn label_params(&self) -> String {
        format!(" heads={}", self.heads)
    }

    fn check(&self, _reference: &veritrace_model::Setup) -> Result<(), String> {
        if self.heads == 0 {
            return Err("heads must be at least 1".into());
        }
        Ok(())
    }

    fn check_model(&self, model: &SimModel) -> Result<(), String> {
        let Some(d) = model.decoder() else {
            return Err("a head cheat needs a Llama-style decoder".into());
        };
        if self.heads as usize > d.config().num_heads {
            return Err(format!(
                "heads {} is more than the model's {} query heads",
                self.heads,
                d.config().num_heads
            ));
        }
        Ok(())
    }

    fn commit(
        &self,
        sim: &Simulation,
        _ai: u64,
        _pi: u64,
        prompt: &[u32],
    ) -> Result<Committed, SimError> {
        Ok(honest_run(sim, prompt)?.with_plan(CellPlan::WrongHeads(self.heads as usize)))
    }

    fn note(&self, plan: &Plan, _outcomes: &Tally) -> Option<String> {
        if plan.drawn {
            return Some(format!(
                "the attention output of {} query head(s) is one ulp off in every cell of layers \
                 >= 1, nothing else: with drawn openings every such cell is bad, and a challenge \
                 of one is caught only where its draw picks one of those heads (per cell \
                 1 - C(H-b, s)/C(H, s), specs/protocol.md §4.4); the prediction weighs each \
                 challenged bad cell by that probability",
                self.heads
            ));
        }
        Some(format!(
            "the attention output of {} query head(s) is one ulp off in every cell of layers >= \
             1, nothing else: caught only where a sampled head is one of them (per cell \
             1 - C(H-b, s)/C(H, s), specs/freivalds.md §7); the bad cells are those of the \
             scenario's key",
            self.heads
        ))
    }
}
