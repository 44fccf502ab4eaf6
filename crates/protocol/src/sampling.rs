//! Sampling the challenged cells from a 32-byte seed, exactly and portably.
//!
//! # Random source
//! `ChaCha20Rng::from_seed(seed)` (rand_chacha): the ChaCha20 block function (RFC 8439, 20
//! rounds) keyed by `seed`, nonce 0, block counter from 0; its keystream is read as consecutive
//! little-endian `u64` words. (For the all-zero seed the first word is `0x903df1a0ade0b876`,
//! the first 8 bytes of RFC 8439's keystream test vector; a test pins it.)
//!
//! # `uniform(n)`: a uniform integer in `0..n`
//! Draw `x` (a `u64`, or for [`SamplingStrategy::CostWeighted`] a `u128` made of two words, the
//! first one low); accept if `x < n · floor((2^b − 1) / n)` (b = 64 or 128) and return `x mod n`,
//! otherwise draw again (rejection, so there is no modulo bias). Note the `2^b − 1`: for `n` a
//! power of two the last `n` values are rejected too.
//!
//! # Strategies (N cells, k samples, L layers, C chunks per layer)
//! `k ≥ N` selects every cell, for every strategy (no randomness is drawn); `k = 0` is an error.
//!
//! * [`SamplingStrategy::Uniform`]: Robert Floyd's algorithm over leaf indices: for
//!   `j = N − k, …, N − 1`: `t = uniform(j + 1)`; insert `t` unless already chosen, else insert `j`.
//!   Every k-subset is equally likely; exactly k draws of `uniform`.
//! * [`SamplingStrategy::Stratified`]: each layer gets `q = floor(k / L)` cells; the
//!   `r = k mod L` layers that get one more are chosen by Floyd over `0..L` (drawn first). Then,
//!   for layers `0..L` in order, its cells are chosen by Floyd over its `C` chunks (a layer asked
//!   for more than `C` cells gets all `C`). With `k ≥ L` every layer is checked; with `k < L`,
//!   `q = 0` and this is k distinct layers, one cell each.
//! * [`SamplingStrategy::CostWeighted`]: k successive draws without replacement, each cell chosen
//!   with probability proportional to its integer recompute-cost weight among the cells not yet
//!   chosen: `x = uniform(W)` where `W` is the remaining total weight, and the cell is the first
//!   (in leaf order) whose cumulative weight exceeds `x`. Weights: `w(0, j) = rows(j)` for the
//!   embedding layer; `w(l, j) = rows(j) · (6·hidden + ctx(l, j))` for `l ≥ 1`, where `ctx` is
//!   the number of input rows the dependency rule gives (dense FLOPs per row are about
//!   `24·hidden²` and attention FLOPs about `4·hidden·ctx`, so this is cost in units of
//!   `4·hidden`). Expensive cells, whose skipping would save a cheater most, are checked most.
//!   It keeps one weight per cell, so it is refused above [`MAX_WEIGHTED_CELLS`] cells (a
//!   statement is the prover's, and must not be able to exhaust the verifier's memory).
//!
//! The result is always sorted by leaf index (layer, then chunk).

use std::collections::BTreeSet;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use veritrace_commit::CellId;

use crate::{ProtocolError, Result, Statement};

/// Largest trace (in cells) that [`SamplingStrategy::CostWeighted`] samples when `k < N`
/// (2^24: 256 MiB of weights and as much again for the Fenwick tree).
pub const MAX_WEIGHTED_CELLS: u64 = 1 << 24;

/// How the verifier spreads its k samples over the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SamplingStrategy {
    /// Uniform over all cells, without replacement.
    #[default]
    Uniform,
    /// At least one cell per layer, the rest spread evenly.
    Stratified,
    /// Proportional to recompute cost, without replacement.
    CostWeighted,
}

impl SamplingStrategy {
    /// Code absorbed into the transcript.
    pub fn code(self) -> u8 {
        match self {
            SamplingStrategy::Uniform => 1,
            SamplingStrategy::Stratified => 2,
            SamplingStrategy::CostWeighted => 3,
        }
    }
}

fn uniform_u64(rng: &mut ChaCha20Rng, n: u64) -> u64 {
    debug_assert!(n > 0);
    let zone = (u64::MAX / n) * n;
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % n;
        }
    }
}

fn uniform_u128(rng: &mut ChaCha20Rng, n: u128) -> u128 {
    debug_assert!(n > 0);
    let zone = (u128::MAX / n) * n;
    loop {
        let lo = rng.next_u64() as u128;
        let hi = rng.next_u64() as u128;
        let x = lo | (hi << 64);
        if x < zone {
            return x % n;
        }
    }
}

/// Floyd's algorithm: k distinct values of `0..n`, uniformly.
pub(crate) fn floyd(rng: &mut ChaCha20Rng, n: u64, k: u64) -> BTreeSet<u64> {
    let mut chosen = BTreeSet::new();
    for j in n - k..n {
        let t = uniform_u64(rng, j + 1);
        if !chosen.insert(t) {
            chosen.insert(j);
        }
    }
    chosen
}

/// The integer recompute-cost weight of a cell (see the [module docs](self)).
pub fn cost_weight(statement: &Statement, cell: CellId) -> Result<u128> {
    let rows = statement.geometry.cell_rows(cell)?;
    let n = u128::from(rows.end - rows.start);
    Ok(match statement.input_rows(cell)? {
        None => n,
        Some(ctx) => {
            n * (6 * u128::from(statement.geometry.hidden) + u128::from(ctx.end - ctx.start))
        }
    })
}

/// Samples `k` distinct cells from `seed` with `strategy`; sorted by leaf index.
pub fn sample_cells(
    statement: &Statement,
    k: u32,
    strategy: SamplingStrategy,
    seed: [u8; 32],
) -> Result<Vec<CellId>> {
    let g = &statement.geometry;
    g.validate()?;
    let n = g.num_cells();
    if k == 0 {
        return Err(ProtocolError::InvalidParameter(
            "at least one cell must be sampled".into(),
        ));
    }
    let k64 = u64::from(k);
    if k64 >= n {
        return (0..n).map(|i| Ok(g.cell_at(i)?)).collect();
    }
    let mut rng = ChaCha20Rng::from_seed(seed);
    let indices: BTreeSet<u64> = match strategy {
        SamplingStrategy::Uniform => floyd(&mut rng, n, k64),
        SamplingStrategy::Stratified => {
            let layers = u64::from(g.layers);
            let per = u64::from(g.chunks_per_layer());
            let extra = floyd(&mut rng, layers, k64 % layers);
            let mut out = BTreeSet::new();
            for layer in 0..layers {
                let want = (k64 / layers + u64::from(extra.contains(&layer))).min(per);
                out.extend(
                    floyd(&mut rng, per, want)
                        .into_iter()
                        .map(|c| layer * per + c),
                );
            }
            out
        }
        SamplingStrategy::CostWeighted => {
            if n > MAX_WEIGHTED_CELLS {
                return Err(ProtocolError::InvalidParameter(format!(
                    "cost-weighted sampling is limited to {MAX_WEIGHTED_CELLS} cells; the trace has {n}"
                )));
            }
            let mut weights: Vec<u128> = (0..n)
                .map(|i| cost_weight(statement, g.cell_at(i)?))
                .collect::<Result<_>>()?;
            let mut fenwick = Fenwick::new(&weights);
            let mut out = BTreeSet::new();
            for _ in 0..k {
                let x = uniform_u128(&mut rng, fenwick.total());
                let i = fenwick.find(x);
                fenwick.sub(i, weights[i]);
                weights[i] = 0;
                out.insert(i as u64);
            }
            out
        }
    };
    indices.into_iter().map(|i| Ok(g.cell_at(i)?)).collect()
}

/// A Fenwick (binary indexed) tree over non-negative weights: prefix sums and "first index whose
/// cumulative weight exceeds x" in O(log n).
struct Fenwick {
    tree: Vec<u128>,
}

impl Fenwick {
    fn new(weights: &[u128]) -> Self {
        let mut tree = vec![0u128; weights.len() + 1];
        for (i, &w) in weights.iter().enumerate() {
            let mut j = i + 1;
            while j < tree.len() {
                tree[j] += w;
                j += j & j.wrapping_neg();
            }
        }
        Fenwick { tree }
    }

    fn total(&self) -> u128 {
        let mut s = 0;
        let mut j = self.tree.len() - 1;
        while j > 0 {
            s += self.tree[j];
            j &= j - 1;
        }
        s
    }

    fn sub(&mut self, i: usize, w: u128) {
        let mut j = i + 1;
        while j < self.tree.len() {
            self.tree[j] -= w;
            j += j & j.wrapping_neg();
        }
    }

    /// The smallest index i with prefix_sum(0..=i) > x (x < total).
    fn find(&self, mut x: u128) -> usize {
        let n = self.tree.len() - 1;
        let mut pos = 0usize;
        let mut step = n.next_power_of_two();
        while step > 0 {
            let next = pos + step;
            if next <= n && self.tree[next] <= x {
                pos = next;
                x -= self.tree[next];
            }
            step >>= 1;
        }
        pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::tests::statement;
    use crate::Dependency;

    #[test]
    fn chacha20_keystream_is_rfc8439() {
        // RFC 8439 §2.4.2 / RFC 7539 A.1 test vector #1: key = 0, nonce = 0, counter = 0,
        // keystream starts 76 b8 e0 ad a0 f1 3d 90.
        let mut rng = ChaCha20Rng::from_seed([0; 32]);
        assert_eq!(rng.next_u64(), 0x903d_f1a0_ade0_b876);
    }

    #[test]
    fn strategies_give_k_distinct_sorted_cells() {
        let s = statement(Dependency::Causal); // 3 layers x 4 chunks
        for strategy in [
            SamplingStrategy::Uniform,
            SamplingStrategy::Stratified,
            SamplingStrategy::CostWeighted,
        ] {
            for k in 3..=12 {
                for seed in 0..20u8 {
                    let cells = sample_cells(&s, k, strategy, [seed; 32]).unwrap();
                    assert_eq!(cells.len(), k as usize, "{strategy:?} k={k}");
                    assert!(cells.windows(2).all(|w| w[0] < w[1]));
                    if strategy == SamplingStrategy::Stratified {
                        for layer in 0..3 {
                            assert!(cells.iter().any(|c| c.layer == layer));
                        }
                    }
                }
            }
        }
        // k >= N: every cell; k = 0: an error; stratified with k < L: k distinct layers
        for strategy in [SamplingStrategy::Uniform, SamplingStrategy::CostWeighted] {
            assert_eq!(sample_cells(&s, 13, strategy, [0; 32]).unwrap().len(), 12);
        }
        assert!(sample_cells(&s, 0, SamplingStrategy::Uniform, [0; 32]).is_err());
        for seed in 0..10u8 {
            let two = sample_cells(&s, 2, SamplingStrategy::Stratified, [seed; 32]).unwrap();
            assert_eq!(two.len(), 2);
            assert_ne!(two[0].layer, two[1].layer);
        }
    }

    #[test]
    fn uniform_is_uniform_and_weighted_follows_cost() {
        let s = statement(Dependency::Causal);
        let mut uni = [0u32; 12];
        let mut wtd = [0u32; 12];
        let trials = 6000u32;
        for t in 0..trials {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&t.to_le_bytes());
            for c in sample_cells(&s, 1, SamplingStrategy::Uniform, seed).unwrap() {
                uni[s.geometry.cell_index(c).unwrap() as usize] += 1;
            }
            for c in sample_cells(&s, 1, SamplingStrategy::CostWeighted, seed).unwrap() {
                wtd[s.geometry.cell_index(c).unwrap() as usize] += 1;
            }
        }
        let expect = f64::from(trials) / 12.0;
        for &c in &uni {
            assert!(
                (f64::from(c) - expect).abs() < 5.0 * expect.sqrt(),
                "{uni:?}"
            );
        }
        let weights: Vec<f64> = (0..12)
            .map(|i| cost_weight(&s, s.geometry.cell_at(i).unwrap()).unwrap() as f64)
            .collect();
        let total: f64 = weights.iter().sum();
        for (i, &c) in wtd.iter().enumerate() {
            let e = f64::from(trials) * weights[i] / total;
            assert!(
                (f64::from(c) - e).abs() < 5.0 * e.sqrt() + 2.0,
                "cell {i}: {c} vs {e}"
            );
        }
    }

    #[test]
    fn fenwick_find() {
        let w = [3u128, 0, 5, 1];
        let f = Fenwick::new(&w);
        assert_eq!(f.total(), 9);
        let picks: Vec<usize> = (0..9).map(|x| f.find(x)).collect();
        assert_eq!(picks, [0, 0, 0, 2, 2, 2, 2, 2, 3]);
    }
}
