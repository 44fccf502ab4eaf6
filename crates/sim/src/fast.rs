//! Fast mode: protocol trials sampled from per-cell outcomes measured end to end.
//!
//! An end-to-end run of a prover gives, for every cell, whether the verifier's check of that cell
//! fails ([`crate::ProverRun::bad`]; for an equivocating prover, whether opening the cell touches
//! an altered cell). A protocol round then rejects exactly when its challenge contains such a
//! cell, so a trial needs only a challenge draw and set lookups — no inference, no hashing —
//! and millions of trials per second fit sweeps over `k` and rounds.
//!
//! Challenges are uniform `k`-subsets of the `N` cells drawn with Floyd's algorithm (the same
//! distribution as [`veritrace_protocol::sampling`]'s uniform strategy, not the same stream). Trials
//! are cut into blocks of [`BLOCK`]; block `b` draws from ChaCha8 keyed by
//! `BLAKE3("veritrace/sim/fast/v1" ‖ seed ‖ adversary ‖ b)`, so results do not depend on the
//! thread count.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use rayon::prelude::*;

/// Trials per independently seeded block.
pub const BLOCK: u64 = 1 << 14;

/// The per-cell outcomes of one prover run: `bad[i]` for leaf index `i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellOutcomes {
    /// Whether a challenge containing cell `i` is rejected.
    pub bad: Vec<bool>,
}

/// A uniform `k`-subset of `0..n` (Floyd's algorithm), into `out` (cleared first; unsorted).
/// `k ≥ n` gives every index.
pub fn floyd<R: RngCore>(rng: &mut R, n: u64, k: u64, out: &mut Vec<u64>) {
    out.clear();
    if k >= n {
        out.extend(0..n);
        return;
    }
    for j in n - k..n {
        // Uniform in 0..=j by rejection (no modulo bias).
        let bound = j + 1;
        let zone = u64::MAX - (u64::MAX % bound);
        let t = loop {
            let x = rng.next_u64();
            if x < zone {
                break x % bound;
            }
        };
        if out.contains(&t) {
            out.push(j);
        } else {
            out.push(t);
        }
    }
}

fn block_rng(domain: &[u8], seed: u64, adversary: u64, block: u64) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(domain);
    h.update(&seed.to_le_bytes());
    h.update(&adversary.to_le_bytes());
    h.update(&block.to_le_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// `trials` trials cut into blocks of [`BLOCK`], each block drawing from [`block_rng`] under
/// `domain` on the rayon pool: `trial(rng)` gives the run a trial drew and whether it was
/// detected. Returns the detections and per run `(detected, trials)`, summed over blocks, so
/// the result does not depend on the thread count.
fn tally_blocks<S: Default>(
    runs: usize,
    trials: u64,
    domain: &[u8],
    seed: u64,
    adversary: u64,
    trial: impl Fn(&mut ChaCha8Rng, &mut S) -> (usize, bool) + Sync,
) -> (u64, Vec<(u64, u64)>) {
    if runs == 0 || trials == 0 {
        return (0, vec![(0, 0); runs]);
    }
    let add = |mut a: Vec<(u64, u64)>, b: Vec<(u64, u64)>| {
        for (x, (d, n)) in a.iter_mut().zip(b) {
            x.0 += d;
            x.1 += n;
        }
        a
    };
    let per_run = (0..trials.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let mut rng = block_rng(domain, seed, adversary, b);
            let mut scratch = S::default();
            let mut tally = vec![(0u64, 0u64); runs];
            for _ in 0..BLOCK.min(trials - b * BLOCK) {
                let (ri, hit) = trial(&mut rng, &mut scratch);
                tally[ri].0 += u64::from(hit);
                tally[ri].1 += 1;
            }
            tally
        })
        .reduce(|| vec![(0, 0); runs], add);
    (per_run.iter().map(|t| t.0).sum(), per_run)
}

/// Runs `trials` fast trials of `rounds` rounds of `k` cells each against prover runs drawn
/// uniformly from `runs`; returns how many were rejected, and per run `(rejected, trials)`
/// (the tallies the interval over independent runs is computed from). Memory is one tally per
/// run and worker, whatever the trial count.
pub fn detections(
    runs: &[CellOutcomes],
    k: u64,
    rounds: u32,
    trials: u64,
    seed: u64,
    adversary: u64,
) -> (u64, Vec<(u64, u64)>) {
    tally_blocks(
        runs.len(),
        trials,
        b"veritrace/sim/fast/v1",
        seed,
        adversary,
        |rng, cells: &mut Vec<u64>| {
            let ri = (rng.next_u64() % runs.len() as u64) as usize;
            let run = &runs[ri];
            let n = run.bad.len() as u64;
            for _ in 0..rounds {
                floyd(rng, n, k, cells);
                if cells.iter().any(|&c| run.bad[c as usize]) {
                    return (ri, true);
                }
            }
            (ri, false)
        },
    )
}

/// Runs `trials` fast trials against prover runs drawn uniformly, trial on run `i` detected with
/// probability `probs[i]` (an adversary's per-run law: grinding's, late commitment's);
/// returns what [`detections`] returns. Blocks are seeded as there (domain
/// `veritrace/sim/fast/bernoulli/v1`), so the result does not depend on the thread count.
pub fn bernoulli_detections(
    probs: &[f64],
    trials: u64,
    seed: u64,
    adversary: u64,
) -> (u64, Vec<(u64, u64)>) {
    tally_blocks(
        probs.len(),
        trials,
        b"veritrace/sim/fast/bernoulli/v1",
        seed,
        adversary,
        |rng, _: &mut ()| {
            let ri = (rng.next_u64() % probs.len() as u64) as usize;
            // uniform in [0, 1) from 53 bits; detected when below the probability
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            (ri, u < probs[ri])
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floyd_gives_distinct_uniform_subsets() {
        let mut rng = ChaCha8Rng::from_seed([1; 32]);
        let mut out = Vec::new();
        let mut counts = [0u32; 10];
        for _ in 0..20_000 {
            floyd(&mut rng, 10, 3, &mut out);
            let mut s = out.clone();
            s.sort();
            s.dedup();
            assert_eq!(s.len(), 3);
            for &i in &out {
                counts[i as usize] += 1;
            }
        }
        // Each index appears with probability 3/10: 6000 expected, sd ~65.
        for c in counts {
            assert!((5700..6300).contains(&c), "{counts:?}");
        }
        floyd(&mut rng, 4, 9, &mut out);
        assert_eq!(out, vec![0, 1, 2, 3]);
    }

    #[test]
    fn detection_rate_matches_the_hypergeometric_law_and_is_thread_independent() {
        // N = 100 cells, 5 bad, k = 10: P(detect) = 1 - C(95,10)/C(100,10) = 0.4162.
        let mut bad = vec![false; 100];
        for i in [3, 17, 42, 77, 99] {
            bad[i] = true;
        }
        let runs = [CellOutcomes { bad }];
        let trials = 200_000;
        let (d, per_run) = detections(&runs, 10, 1, trials, 9, 0);
        assert_eq!(per_run, vec![(d, trials)]);
        let p = d as f64 / trials as f64;
        assert!((p - 0.41625).abs() < 0.005, "{p}");
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| detections(&runs, 10, 1, trials, 9, 0));
        assert_eq!(one, (d, per_run));
    }

    #[test]
    fn bernoulli_trials_follow_their_probabilities_on_any_thread_count() {
        let probs = [0.0, 1.0, 0.25];
        let trials = 300_000;
        let (d, per_run) = bernoulli_detections(&probs, trials, 4, 1);
        assert_eq!(per_run.iter().map(|t| t.1).sum::<u64>(), trials);
        assert_eq!(per_run.iter().map(|t| t.0).sum::<u64>(), d);
        assert_eq!(per_run[0].0, 0);
        assert_eq!(per_run[1].0, per_run[1].1);
        let p = per_run[2].0 as f64 / per_run[2].1 as f64;
        assert!((p - 0.25).abs() < 0.006, "{p}");
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| bernoulli_detections(&probs, trials, 4, 1));
        assert_eq!(one, (d, per_run));
        assert_eq!(bernoulli_detections(&[], 10, 0, 0), (0, vec![]));
    }
}
