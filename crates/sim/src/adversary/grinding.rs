//! `grinding`: a `partial` cheat in non-interactive mode, trying `2^budget_bits` hash
//! evaluations (re-randomized roots and their proof-of-work searches) for a challenge that
//! misses its bad cells, with `pow_bits` of proof of work.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use veritrace_commit::CellId;
use veritrace_model::Setup;
use veritrace_protocol::soundness::{grinding_security_bits, log2_miss_probability};
use veritrace_protocol::tolerance::regularized_incomplete_beta;
use veritrace_protocol::transcript::{check_pow, derive_challenge};
use veritrace_protocol::{Commitment, Message, Mode, Prover, Step, Verifier};

use super::partial::{cheated_cells, honest_trace};
use super::{
    check_cheaper, check_fraction, Adversary, AdversaryKind, Behaviour, Committed, Plan, Prediction,
};
use crate::engine::{stream, Outcome, ProverRun, Simulation, Tally};
use crate::SimError;

/// A prover that grinds the non-interactive challenge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grinding {
    /// The setup of the cheated cells (differing from the reference in more than reduction
    /// order).
    pub setup: Setup,
    /// Fraction of the cells of layers ≥ 1 cheated, in (0, 1].
    pub fraction: f64,
    /// log2 of the grinding budget in hash evaluations per trial, at most 30.
    pub budget_bits: u32,
    /// Proof-of-work bits of this adversary's sessions, at most 30 (default: the protocol's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pow_bits: Option<u8>,
}

impl Behaviour for Grinding {
    fn kind(&self) -> AdversaryKind {
        AdversaryKind::Grinding
    }

    fn label_params(&self) -> String {
        let mut s = format!(" {} f={} 2^{}", self.setup, self.fraction, self.budget_bits);
        if let Some(p) = self.pow_bits {
            s.push_str(&format!(" pow={p}"));
        }
        s
    }

    fn setup(&self) -> Option<&Setup> {
        Some(&self.setup)
    }

    fn check(&self, reference: &Setup) -> Result<(), String> {
        check_cheaper(&self.setup, reference)?;
        check_fraction(self.fraction)?;
        if self.budget_bits > crate::scenario::MAX_BUDGET_BITS {
            return Err(format!(
                "budget_bits = {} exceeds the limit {}",
                self.budget_bits,
                crate::scenario::MAX_BUDGET_BITS
            ));
        }
        if let Some(p) = self.pow_bits.filter(|&p| p > crate::scenario::MAX_POW_BITS) {
            return Err(format!(
                "pow_bits = {p} exceeds the limit {}",
                crate::scenario::MAX_POW_BITS
            ));
        }
        Ok(())
    }

    /// Every attempt re-randomizes the root, so trials on one prompt draw other challenges.
    fn repeats_challenges(&self) -> bool {
        false
    }

    /// Per run, the exact law of a trial: `E[h^N]` ([`grinding_detection`]) with `h` the
    /// hypergeometric detection probability of one attempt on the run's bad cells and `N` the
    /// number of complete attempts the budget allows (the proof-of-work searches are
    /// geometric). Trials are independent given the run, so drawing each as a Bernoulli of
    /// this probability is the end-to-end law without running the attempts.
    fn fast_detection(
        &self,
        _sim: &Simulation,
        plan: &Plan,
        runs: &[ProverRun],
    ) -> Result<Option<Vec<f64>>, SimError> {
        runs.iter()
            .map(|r| {
                let h = plan.run_detection(r)?.ok_or_else(|| {
                    SimError::Engine(
                        "no exact law of an attempt for fast mode (drawn openings whose escapes \
                         are not exact)"
                            .into(),
                    )
                })?;
                Ok(grinding_detection(h, self.budget_bits, plan.pow_bits))
            })
            .collect::<Result<Vec<_>, SimError>>()
            .map(Some)
    }

    /// Non-interactive regardless of the scenario: the challenge is a function of the
    /// commitment, which is what it grinds.
    fn mode(&self, _scenario: Mode) -> Mode {
        Mode::NonInteractive
    }

    fn pow_bits(&self, scenario: u8) -> u8 {
        self.pow_bits.unwrap_or(scenario)
    }

    fn fraction(&self) -> Option<f64> {
        Some(self.fraction)
    }

    fn with_fraction(&self, fraction: f64) -> Option<Adversary> {
        Some(Adversary::Grinding(Grinding {
            fraction,
            ..self.clone()
        }))
    }

    /// A `partial` cheat that keeps one cheated cell in the last layer, where altering it to
    /// re-randomize the root changes no other cell's recompute.
    fn commit(
        &self,
        sim: &Simulation,
        ai: u64,
        pi: u64,
        prompt: &[u32],
    ) -> Result<Committed, SimError> {
        let (s, honest) = honest_trace(sim, prompt)?;
        let g = s.geometry;
        let mut cheat = cheated_cells(sim, &s, self.fraction, ai, pi);
        let last = g.layers - 1;
        if !cheat.iter().any(|c| c.layer == last) {
            let swap_out = *cheat.iter().next().expect("at least one cheated cell");
            cheat.remove(&swap_out);
            let mut rng = stream("veritrace/sim/grind-cell/v1", sim.scenario().seed, ai, pi);
            let chunk = (rng.next_u64() % u64::from(g.chunks_per_layer())) as u32;
            cheat.insert(CellId { layer: last, chunk });
        }
        let (t, c) = sim.mixed_trace(&honest, &cheat, &self.setup)?;
        Ok(Committed::plain(s, t, c).with_plan(super::CellPlan::Mixed {
            cheat,
            cheap: self.setup,
        }))
    }

    fn trial(
        &self,
        sim: &Simulation,
        plan: &Plan,
        run: &ProverRun,
        t: u64,
        _rng: &mut ChaCha20Rng,
    ) -> Result<Outcome, SimError> {
        grind(sim, run, self.budget_bits, plan.pow_bits, t)
    }

    /// `E[h^N]` ([`grinding_detection`]) with `h` the hypergeometric law on the bad cells
    /// (with drawn openings, each challenged bad cell caught with its draw's probability:
    /// [`Plan::run_detection`]), averaged over the prompt pool.
    fn prediction(
        &self,
        _sim: &Simulation,
        plan: &Plan,
        runs: &[ProverRun],
    ) -> Result<Option<Prediction>, SimError> {
        let mut sum = 0.0;
        for r in runs {
            let Some(h) = plan.run_detection(r)? else {
                return Ok(None);
            };
            sum += grinding_detection(h, self.budget_bits, plan.pow_bits);
        }
        Ok(Some(Prediction::expected(sum / runs.len() as f64)))
    }

    /// The calculator's security bits for the fewest bad cells of the prompt pool (with drawn
    /// openings, for the run whose attempt is likeliest to escape, [`Plan::round_miss`]).
    fn security_bits(&self, plan: &Plan, runs: &[ProverRun]) -> Result<Option<f64>, SimError> {
        let log2_miss = if plan.drawn {
            let mut worst = f64::NEG_INFINITY;
            for r in runs {
                let Some(miss) = plan.round_miss(r)? else {
                    return Ok(None);
                };
                worst = worst.max(f64::from(plan.rounds) * miss.log2());
            }
            worst
        } else {
            let b = runs.iter().map(|r| r.bad.len() as u64).min().unwrap_or(0);
            f64::from(plan.rounds) * log2_miss_probability(plan.cells, b, plan.k)?
        };
        Ok(Some(grinding_security_bits(
            log2_miss,
            f64::from(self.budget_bits),
            f64::from(plan.pow_bits),
        )?))
    }

    fn note(&self, plan: &Plan, _outcomes: &Tally) -> Option<String> {
        Some(format!(
            "non-interactive, pow {} bits, 2^{} hash evaluations per trial (roots re-randomized through a bad cell); the prediction is E[h^N] over the number N of complete attempts the budget allows",
            plan.pow_bits, self.budget_bits
        ))
    }
}

/// Grinding against the non-interactive challenge with a budget of `2^budget_bits` hash
/// evaluations (trial `t`).
///
/// The prover re-randomizes its commitment by altering the lowest mantissa bytes of the first
/// elements of one bad cell (one of the last layer if it has any, so no other cell's recompute
/// reads it): a new root each attempt, costing one evaluation, then the proof-of-work search
/// for that root (`2^pow_bits` evaluations expected). An attempt whose challenges, in every
/// round, miss all bad cells is submitted; when the budget runs out the last complete attempt
/// is. The real verifier decides either way.
fn grind(
    sim: &Simulation,
    run: &ProverRun,
    budget_bits: u32,
    pow_bits: u8,
    t: u64,
) -> Result<Outcome, SimError> {
    let cfg = sim.verifier_config(Mode::NonInteractive, pow_bits);
    let g = run.statement.geometry;
    let target = run.bad.iter().rev().max_by_key(|c| c.layer).copied();
    let base = run.trace.layer_bytes();
    let budget = 1u64 << budget_bits;
    let mut spent = 0u64;
    let mut last: Option<(Prover<Vec<u8>>, Commitment, u64)> = None;
    let mut rng = stream("veritrace/sim/grind/v1", sim.scenario().seed, t, 0);
    while spent < budget {
        let mut layers = base.clone();
        if let Some(cell) = target {
            // Every attempt, the first included (so that trials on one prompt start from
            // different roots), alters the lowest mantissa byte of the cell's first three
            // elements: relative changes below 2^-15, 2^24 distinct roots.
            let rows = g.cell_rows(cell)?;
            let at = rows.start as usize * g.hidden as usize * 4;
            let r = rng.next_u32().to_le_bytes();
            for e in 0..3usize.min(g.hidden as usize) {
                layers[cell.layer as usize][at + 4 * e] ^= r[e].max(1);
            }
        }
        let mut prover = run.prover_with(layers)?;
        let commitment = prover.commit()?;
        spent += 1;
        let mut nonce = None;
        for candidate in 0u64.. {
            if spent >= budget && candidate > 0 {
                break;
            }
            spent += 1;
            if check_pow(&commitment, &cfg.params, candidate)? {
                nonce = Some(candidate);
                break;
            }
        }
        let Some(nonce) = nonce else { break };
        let mut misses = true;
        for round in 0..cfg.rounds {
            let c = derive_challenge(&commitment, round, &cfg.params, nonce)?;
            let caught = match &run.drawn {
                // with drawn openings the grinder, which knows what it forged, also needs the
                // round's attention draw to miss what of each challenged bad cell fails
                Some(d) => d.catches(&run.statement, &c.cells, c.attention.as_ref())?,
                None => c.cells.iter().any(|cell| run.bad.contains(cell)),
            };
            if caught {
                misses = false;
                break;
            }
        }
        last = Some((prover, commitment, nonce));
        if misses || target.is_none() {
            break;
        }
    }
    let Some((prover, commitment, nonce)) = last else {
        return Ok(Outcome {
            accepted: false,
            reason: Some("budget-below-one-proof-of-work".into()),
            bytes: 0,
            verifier_cost: 0.0,
            note: None,
        });
    };
    let mut verifier = Verifier::new(cfg.clone(), sim.verifier_model())?;
    verifier.expect_statement(run.statement.clone());
    let mut unused = ChaCha20Rng::from_seed([0; 32]); // non-interactive: never drawn from
    let mut step = verifier.receive_commitment(commitment.clone(), &mut unused);
    let (mut bytes, mut cost) = (0u64, 0.0);
    let mut round = 0;
    loop {
        match step {
            Step::Decided(v) => return Ok(Outcome::of(v, bytes, cost)),
            Step::AwaitOpening => {
                let c = derive_challenge(&commitment, round, &cfg.params, nonce)?;
                let opening = prover.open_drawn(round, &c.cells, c.attention.as_ref(), nonce)?;
                bytes += opening.to_bytes().len() as u64;
                cost += sim.recompute_cost(&run.statement, &c.cells)?;
                step = verifier.receive_opening(&opening, &mut unused);
                round += 1;
            }
            Step::Challenge(_) => {
                return Err(SimError::Engine("interactive step in grinding".into()))
            }
        }
    }
}

/// Detection probability of a grinder (the law the grinding adversary follows): with `2^g`
/// evaluations, each attempt costing one root and a proof-of-work search that succeeds with
/// probability `q = 2^−p` per evaluation, the number `N` of complete attempts satisfies
/// `P(N ≥ n) = P(Bin(2^g − n, q) ≥ n) = I_q(n, 2^g − 2n + 1)`; each attempt is caught with
/// probability `h` (every round hits a bad cell), and the grinder is caught when all its
/// attempts are, or when none completes: `E[h^N] = 1 − (1 − h) Σ_{n≥1} P(N ≥ n) h^{n−1}`.
pub fn grinding_detection(h: f64, budget_bits: u32, pow_bits: u8) -> f64 {
    let budget = (1u64 << budget_bits) as f64;
    let q = (-(f64::from(pow_bits)) * std::f64::consts::LN_2).exp();
    let mut sum = 0.0;
    let mut h_pow = 1.0; // h^(n-1)
    let mut n = 1.0f64;
    while n <= 1e7 {
        let m = budget - n; // evaluations left for the n proof-of-work searches
        if m < n {
            break;
        }
        let tail = regularized_incomplete_beta(n, m - n + 1.0, q);
        if tail < 1e-16 || h_pow < 1e-300 {
            break;
        }
        sum += tail * h_pow;
        h_pow *= h;
        n += 1.0;
    }
    (1.0 - (1.0 - h) * sum).clamp(0.0, 1.0)
}
