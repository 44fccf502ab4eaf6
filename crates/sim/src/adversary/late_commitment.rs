//! `late-commitment`: an honest trace, but the prover asks to be challenged before committing,
//! then tries to commit twice. The protocol's API refuses both; a trial is detected when it
//! does.

use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use veritrace_commit::CellId;
use veritrace_protocol::{Step, Verifier};

use super::honest::honest_run;
use super::{AdversaryKind, Behaviour, Committed, Plan, Prediction};
use crate::engine::{Outcome, ProverRun, Simulation, Tally};
use crate::SimError;

/// A prover that tries to be challenged before committing (no parameters).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LateCommitment {}

impl Behaviour for LateCommitment {
    fn kind(&self) -> AdversaryKind {
        AdversaryKind::LateCommitment
    }

    /// Its trials draw no challenge.
    fn repeats_challenges(&self) -> bool {
        false
    }

    fn draws_challenges(&self) -> bool {
        false
    }

    /// Per run, the outcome of one end-to-end trial (0 or 1): the trial draws no challenge and
    /// the API's refusal does not depend on the trial's random stream, so every trial on a run
    /// has that outcome.
    fn fast_detection(
        &self,
        sim: &Simulation,
        plan: &Plan,
        runs: &[ProverRun],
    ) -> Result<Option<Vec<f64>>, SimError> {
        runs.iter()
            .enumerate()
            .map(|(i, r)| {
                let mut rng = crate::engine::stream(
                    "veritrace/sim/late-commitment/fast/v1",
                    sim.scenario().seed,
                    i as u64,
                    0,
                );
                let out = self.trial(sim, plan, r, 0, &mut rng)?;
                Ok(if out.accepted { 0.0 } else { 1.0 })
            })
            .collect::<Result<Vec<_>, SimError>>()
            .map(Some)
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

    /// Asks for a challenge by opening before any commitment, then commits twice.
    fn trial(
        &self,
        sim: &Simulation,
        plan: &Plan,
        run: &ProverRun,
        _t: u64,
        rng: &mut ChaCha20Rng,
    ) -> Result<Outcome, SimError> {
        let cfg = sim.verifier_config(plan.mode, plan.pow_bits);
        let mut prover = run.prover()?;
        let mut verifier = Verifier::new(cfg, sim.verifier_model())?;
        let early = prover.open_cells(0, &[CellId { layer: 0, chunk: 0 }], 0)?;
        let verdict = match verifier.receive_opening(&early, rng) {
            Step::Decided(v) => v,
            other => {
                return Err(SimError::Engine(format!(
                    "the verifier accepted an opening before any commitment: {other:?}"
                )))
            }
        };
        prover.commit()?;
        let second = prover.commit();
        let note = format!(
            "refused by the API: the verifier answers an opening before a commitment with {}; \
             a second commitment gets {}",
            verdict.name(),
            match &second {
                Err(e) => e.to_string(),
                Ok(_) => "accepted (a bug)".into(),
            }
        );
        let refused = !verdict.is_accept() && second.is_err();
        Ok(Outcome {
            accepted: !refused,
            reason: Some("late-commitment-refused".into()),
            bytes: 0,
            verifier_cost: 0.0,
            note: Some(note),
        })
    }

    /// None: detection is the API's refusal, not a sampling law.
    fn prediction(
        &self,
        _sim: &Simulation,
        _plan: &Plan,
        _runs: &[ProverRun],
    ) -> Result<Option<Prediction>, SimError> {
        Ok(None)
    }

    /// How the API refused (from the first trial).
    fn note(&self, _plan: &Plan, outcomes: &Tally) -> Option<String> {
        outcomes.first_note.clone()
    }
}
