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
//!   `q = 0` and this is k distinct layers, one cell each. (A layer asked for no cell draws
//!   nothing, so the implementation visits only the layers of the extra set when `k < L`: the
//!   same draws in O(k) rather than O(L), whatever layer count the statement claims.)
//! * [`SamplingStrategy::CostWeighted`]: k successive draws without replacement, each cell chosen
//!   with probability proportional to its integer recompute-cost weight among the cells not yet
//!   chosen: `x = uniform(W)` where `W` is the remaining total weight, and the cell is the first
//!   (in leaf order) whose cumulative weight exceeds `x`. Weights: `w(0, j) = rows(j)` for the
//!   embedding layer; `w(l, j) = rows(j) · (6·hidden + ctx(l, j))` for `l ≥ 1`, where `ctx` is
//!   the number of input rows the dependency rule gives (dense FLOPs per row are about
//!   `24·hidden²` and attention FLOPs about `4·hidden·ctx`, so this is cost in units of
//!   `4·hidden`). Expensive cells, whose skipping would save a cheater most, are checked most.
//!
//!   The implementation keeps no per-cell state (a statement is the prover's, and must not be
//!   able to exhaust the verifier's memory): the cumulative full weight `F(i)` of leaves
//!   `0..i` has a closed form in the geometry and the dependency rule (layers ≥ 1 all weigh
//!   the same; within a layer the chunks are full but for the last), a Fenwick tree over
//!   `B = min(N, 2^16, max(64, 4k))` contiguous blocks of cells holds each block's remaining
//!   weight (the block count changes no draw: only where the search starts), and
//!   inside a block a binary search over the gaps between its removed cells and then over the
//!   cells of a gap (evaluating `F`) finds the cell. That is O(B + k) memory and
//!   O(B + k (log B + log k + log N)) time (plus the upkeep of each block's sorted removals,
//!   O(draws in that block) per draw), for any N up to 2^40; the draws and cells are exactly
//!   those of the direct algorithm above (tests compare the two).
//!
//! The result is always sorted by leaf index (layer, then chunk).

use std::collections::BTreeSet;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use veritrace_commit::CellId;

use crate::{Dependency, ProtocolError, Result, Statement};

/// Formerly the largest trace (in cells) that [`SamplingStrategy::CostWeighted`] sampled when
/// `k < N` (2^24). The sampler is now exact in O(2^16 + k) memory for any trace the commitment
/// layer accepts, so nothing refuses a trace for its size any more; the constant is kept for
/// compatibility and is not used.
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

/// `min(k, n)` distinct values of `0..n`, uniformly among all such sets (Floyd's algorithm:
/// `min(k, n)` bounded draws, each by rejection, so unbiased). Used for cell challenges here
/// and by verifiers that sample parts of a cell (the model crate's sampled attention check).
pub fn distinct_indices(rng: &mut ChaCha20Rng, n: u64, k: u64) -> BTreeSet<u64> {
    floyd(rng, n, k.min(n))
}

/// Floyd's algorithm: k distinct values of `0..n` (`k <= n`), uniformly.
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

/// The drawn part of one challenged cell's attention ([`crate::AttentionDraw::cell`],
/// specs/protocol.md §4.4).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CellDraw {
    /// Query heads whose attention the verifier checks, ascending.
    pub heads: Vec<u32>,
    /// Context chunks before the cell's own whose provenance (norm input, norm, keys and
    /// values of every head) the verifier checks, ascending.
    pub chunks: Vec<u32>,
}

impl CellDraw {
    /// The chunks whose rows are checked: the drawn earlier chunks and the cell's own
    /// (`chunk`, after all of them), ascending.
    pub fn checked_chunks(&self, chunk: u32) -> impl Iterator<Item = u32> + '_ {
        self.chunks.iter().copied().chain(std::iter::once(chunk))
    }

    /// Whether a drawn query head reads key-value head `group`, with `heads` query heads over
    /// `kv_heads` key-value heads (query head `i` reads `i / (heads / kv_heads)`).
    pub fn reads_group(&self, group: u32, heads: u32, kv_heads: u32) -> bool {
        let per = (heads / kv_heads.max(1)).max(1);
        self.heads.iter().any(|&h| h / per == group)
    }
}

impl crate::AttentionDraw {
    /// The draw of challenged cell `cell` (layer `l ≥ 1`) of a
    /// [`crate::TraceLevel::SubLayerByHead`] statement (specs/protocol.md §4.4): ChaCha20 keyed
    /// by the seed, on the stream numbered by the cell's leaf index (so each cell's draw is
    /// independent of the others'), read as in the [module docs](self): first `min(heads, H)`
    /// distinct query heads of `0..H` by Floyd's algorithm (every head, with no draw, when
    /// `heads ≥ H`), then `min(chunks, n)` distinct chunks of the `n` context chunks before
    /// the cell's own, `u / c .. j` for input rows `[u, v)` (every one, with no draw, when
    /// `chunks ≥ n`). Both lists ascending.
    ///
    /// # Errors
    /// A statement that is not by head, a cell outside its geometry or of layer 0.
    pub fn cell(&self, statement: &Statement, cell: CellId) -> Result<CellDraw> {
        let Some((h, _)) = statement.trace_level.heads() else {
            return Err(ProtocolError::InvalidParameter(
                "an attention draw applies to a statement that commits sub-layer values by \
                 head only"
                    .into(),
            ));
        };
        let leaf = statement.geometry.cell_index(cell)?;
        let Some(rows) = statement.input_rows(cell)? else {
            return Err(ProtocolError::InvalidParameter(format!(
                "cell (layer 0, chunk {}) has no attention to draw",
                cell.chunk
            )));
        };
        let first = rows.start / statement.geometry.chunk;
        let mut rng = ChaCha20Rng::from_seed(self.seed.0);
        rng.set_stream(leaf);
        let mut pick = |want: u32, n: u32, offset: u32| -> Vec<u32> {
            if want >= n {
                return (offset..offset + n).collect();
            }
            distinct_indices(&mut rng, u64::from(n), u64::from(want))
                .into_iter()
                .map(|i| offset + i as u32)
                .collect()
        };
        let heads = pick(self.heads, h, 0);
        let chunks = pick(self.chunks, cell.chunk - first, first);
        Ok(CellDraw { heads, chunks })
    }
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
            let q = k64 / layers;
            let mut out = BTreeSet::new();
            let mut take = |rng: &mut ChaCha20Rng, layer: u64| {
                let want = (q + u64::from(extra.contains(&layer))).min(per);
                out.extend(floyd(rng, per, want).into_iter().map(|c| layer * per + c));
            };
            if q == 0 {
                // k < L: only the layers of `extra` get a cell, and a layer with none draws
                // nothing, so visiting just those (in ascending order) draws the same words as
                // visiting every layer, in O(k) rather than O(L).
                for &layer in &extra {
                    take(&mut rng, layer);
                }
            } else {
                // q ≥ 1 means L ≤ k: the loop is bounded by k.
                for layer in 0..layers {
                    take(&mut rng, layer);
                }
            }
            out
        }
        SamplingStrategy::CostWeighted => cost_weighted(statement, k64, &mut rng),
    };
    indices.into_iter().map(|i| Ok(g.cell_at(i)?)).collect()
}

/// The direct cost-weighted algorithm of the specification: one weight per cell, a Fenwick
/// tree over cells. O(N) memory; kept only as the oracle the exact sampler is tested against.
#[cfg(test)]
fn cost_weighted_direct(statement: &Statement, k: u64, rng: &mut ChaCha20Rng) -> BTreeSet<u64> {
    let g = &statement.geometry;
    let mut weights: Vec<u128> = (0..g.num_cells())
        .map(|i| cost_weight(statement, g.cell_at(i).unwrap()).unwrap())
        .collect();
    let mut fenwick = Fenwick::from_fn(weights.len(), |i| weights[i]);
    let mut out = BTreeSet::new();
    for _ in 0..k {
        let x = uniform_u128(rng, fenwick.total());
        let (i, _) = fenwick.find_with_rest(x);
        fenwick.sub(i, weights[i]);
        weights[i] = 0;
        out.insert(i as u64);
    }
    out
}

/// Most blocks of the exact cost-weighted sampler: `B = min(N, 2^16, max(64, 4k))` (a Fenwick
/// tree of `B` 128-bit block weights: 1 MiB at most, and O(k) for small k, so that a claim of
/// many cells costs no more memory than an honest trace sampled with the same k).
const WEIGHTED_BLOCKS: u64 = 1 << 16;

/// The cumulative recompute-cost weight of the cells before a leaf index, in closed form from
/// the geometry and the dependency rule (no per-cell state).
struct CostPrefix {
    /// Chunks per layer C.
    per: u64,
    /// Chunk size c.
    chunk: u64,
    /// Tokens T.
    tokens: u64,
    /// 6 · hidden.
    d6: u128,
    dependency: Dependency,
    /// Weight of one layer ≥ 1 (P1(C)).
    layer_total: u128,
    /// Weight of the last (possibly partial) chunk of a layer ≥ 1.
    last_chunk: u128,
}

impl CostPrefix {
    fn new(statement: &Statement) -> Self {
        let g = &statement.geometry;
        let per = u64::from(g.chunks_per_layer());
        let mut p = CostPrefix {
            per,
            chunk: u64::from(g.chunk),
            tokens: u64::from(g.tokens),
            d6: 6 * u128::from(g.hidden),
            dependency: statement.dependency,
            layer_total: 0,
            last_chunk: 0,
        };
        // the last chunk of a layer ≥ 1 (rows [a, T), possibly partial), as cost_weight gives
        let a = (g.chunks_per_layer() - 1) * g.chunk;
        let ctx = match statement.dependency {
            Dependency::Causal | Dependency::Bidirectional => g.tokens,
            Dependency::Window { size } => g.tokens - a.saturating_sub(size.saturating_sub(1)),
        };
        p.last_chunk = u128::from(g.tokens - a) * (p.d6 + u128::from(ctx));
        p.layer_total = p.full_chunks(per - 1) + p.last_chunk;
        p
    }

    /// Σ over chunks m < j of a layer ≥ 1, for j ≤ C − 1 (all of them full: rows c, rows
    /// `[mc, (m+1)c)`).
    fn full_chunks(&self, j: u64) -> u128 {
        let (c, j) = (u128::from(self.chunk), u128::from(j));
        let rows = j * c;
        let ctx = match self.dependency {
            // Σ c · (m + 1)c
            Dependency::Causal => c * c * j * (j + 1) / 2,
            // Σ c · T
            Dependency::Bidirectional => rows * u128::from(self.tokens),
            // Σ c · ((m + 1)c − max(0, mc − (w − 1)))
            Dependency::Window { size } => {
                let w = u128::from(size.saturating_sub(1));
                let m0 = w / c + 1; // the first m with mc > w
                let clipped = if j > m0 {
                    c * c * (m0 + j - 1) * (j - m0) / 2 - c * w * (j - m0)
                } else {
                    0
                };
                c * c * j * (j + 1) / 2 - clipped
            }
        };
        self.d6 * rows + ctx
    }

    /// Σ of the weights of a layer's chunks m < j (0 ≤ j ≤ C), layer 0 or a layer ≥ 1.
    fn in_layer(&self, first_layer: bool, j: u64) -> u128 {
        if first_layer {
            return u128::from((j * self.chunk).min(self.tokens));
        }
        if j == self.per {
            self.layer_total
        } else {
            self.full_chunks(j)
        }
    }

    /// F(i): Σ of the weights of leaves `0 .. i` (0 ≤ i ≤ N).
    fn before(&self, i: u64) -> u128 {
        let (layer, j) = (i / self.per, i % self.per);
        if layer == 0 {
            self.in_layer(true, j)
        } else {
            u128::from(self.tokens)
                + u128::from(layer - 1) * self.layer_total
                + self.in_layer(false, j)
        }
    }
}

/// The cells removed so far from one block: sorted leaf indices and the prefix sums of their
/// weights (`prefix[t]` = Σ of the first t; `prefix.len() = cells.len() + 1`).
struct BlockRemovals {
    cells: Vec<u64>,
    prefix: Vec<u128>,
}

/// Exact cost-weighted sampling (module docs): the same draws and the same cells as the
/// direct algorithm over one weight per cell, in O(B + k) memory.
///
/// A Fenwick tree over B contiguous blocks of cells holds each block's remaining weight (its
/// full weight from [`CostPrefix`] minus the weights removed from it). A draw `x` finds its block
/// and the residual `x'` in O(log B); inside the block the removed cells split it into gaps,
/// and within a gap the remaining prefix is `F(i + 1) − F(start) − removed-before-gap`, so a
/// binary search over the gaps (O(log k)) and then over the cells of the gap (O(log N)
/// evaluations of the closed form) finds the cell.
fn cost_weighted(statement: &Statement, k: u64, rng: &mut ChaCha20Rng) -> BTreeSet<u64> {
    cost_weighted_in_blocks(statement, k, rng, WEIGHTED_BLOCKS.min((4 * k).max(64)))
}

/// [`cost_weighted`] with at most `max_blocks` blocks (tests use few, to exercise large
/// blocks on small traces).
fn cost_weighted_in_blocks(
    statement: &Statement,
    k: u64,
    rng: &mut ChaCha20Rng,
    max_blocks: u64,
) -> BTreeSet<u64> {
    let n = statement.geometry.num_cells();
    let f = CostPrefix::new(statement);
    let blocks = n.min(max_blocks).max(1);
    let size = n.div_ceil(blocks);
    let blocks = n.div_ceil(size);
    let start = |b: u64| b * size;
    let end = |b: u64| ((b + 1) * size).min(n);
    let mut fenwick = Fenwick::from_fn(blocks as usize, |b| {
        let b = b as u64;
        f.before(end(b)) - f.before(start(b))
    });
    let mut removed: std::collections::BTreeMap<u64, BlockRemovals> = Default::default();
    let mut out = BTreeSet::new();
    for _ in 0..k {
        let x = uniform_u128(rng, fenwick.total());
        let (b, x) = fenwick.find_with_rest(x);
        let b64 = b as u64;
        let (lo, hi) = (start(b64), end(b64));
        let base = f.before(lo);
        let none = BlockRemovals {
            cells: Vec::new(),
            prefix: vec![0],
        };
        let r = removed.get(&b64).unwrap_or(&none);
        let m = r.cells.len();
        let gap_end = |t: usize| if t == m { hi } else { r.cells[t] };
        // the first gap whose end leaves remaining weight above x
        let t = partition_point(0, m as u64 + 1, |t| {
            let t = t as usize;
            f.before(gap_end(t)) - base - r.prefix[t] <= x
        }) as usize;
        let gap_lo = if t == 0 { lo } else { r.cells[t - 1] + 1 };
        let y = x + base + r.prefix[t];
        // the first cell of the gap with F(i + 1) > y
        let i = partition_point(gap_lo, gap_end(t), |i| f.before(i + 1) <= y);
        let w = f.before(i + 1) - f.before(i);
        fenwick.sub(b, w);
        let r = removed.entry(b64).or_insert(none);
        let p = r.cells.partition_point(|&c| c < i);
        r.cells.insert(p, i);
        let before = r.prefix[p];
        r.prefix.insert(p + 1, before + w);
        for s in &mut r.prefix[p + 2..] {
            *s += w;
        }
        out.insert(i);
    }
    out
}

/// The smallest `i` in `lo..hi` with `!pred(i)` (or `hi`), for a predicate true on a prefix.
fn partition_point(mut lo: u64, mut hi: u64, pred: impl Fn(u64) -> bool) -> u64 {
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// A Fenwick (binary indexed) tree over non-negative weights: prefix sums and "first index whose
/// cumulative weight exceeds x" in O(log n).
struct Fenwick {
    tree: Vec<u128>,
}

impl Fenwick {
    /// The tree of weights `weight(0) .. weight(n − 1)`, built in O(n).
    fn from_fn(n: usize, weight: impl Fn(usize) -> u128) -> Self {
        let mut tree = vec![0u128; n + 1];
        for j in 1..=n {
            tree[j] += weight(j - 1);
            let parent = j + (j & j.wrapping_neg());
            if parent <= n {
                tree[parent] += tree[j];
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

    /// The smallest index i with prefix_sum(0..=i) > x (x < total), and x − prefix_sum(0..i).
    fn find_with_rest(&self, mut x: u128) -> (usize, u128) {
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
        (pos, x)
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

    /// A statement of `layers` layers over one token (one cell per layer).
    fn tall(layers: u32, dependency: Dependency) -> Statement {
        let mut s = statement(dependency);
        s.input_tokens = vec![5];
        s.output_tokens = vec![];
        s.geometry =
            veritrace_commit::TraceGeometry::new(layers, 1, 4, 1, veritrace_commit::Dtype::F32)
                .unwrap();
        s
    }

    #[test]
    fn stratified_does_not_loop_over_claimed_layers() {
        let s = tall(u32::MAX, Dependency::Causal);
        let t = std::time::Instant::now();
        for k in [1, 7, 100] {
            let cells = sample_cells(&s, k, SamplingStrategy::Stratified, [3; 32]).unwrap();
            assert_eq!(cells.len(), k as usize);
            assert!(cells.windows(2).all(|w| w[0].layer < w[1].layer));
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            t.elapsed()
        );
    }

    /// A statement of any small geometry (its tokens need not follow from any engine).
    fn geometry(layers: u32, tokens: u32, chunk: u32, hidden: u32, dep: Dependency) -> Statement {
        let mut s = statement(dep);
        s.input_tokens = vec![1; tokens as usize];
        s.output_tokens = vec![];
        s.geometry = veritrace_commit::TraceGeometry::new(
            layers,
            tokens,
            hidden,
            chunk,
            veritrace_commit::Dtype::F32,
        )
        .unwrap();
        s
    }

    fn dependency(code: u32, size: u32) -> Dependency {
        match code % 3 {
            0 => Dependency::Causal,
            1 => Dependency::Bidirectional,
            _ => Dependency::Window { size },
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]

        /// F(i) in closed form is the direct sum of the weights of leaves 0..i.
        #[test]
        fn cost_prefix_is_the_direct_sum(
            layers in 1u32..5, tokens in 1u32..40, chunk in 1u32..9, hidden in 1u32..50,
            dep in 0u32..3, size in 0u32..45,
        ) {
            let s = geometry(layers, tokens, chunk, hidden, dependency(dep, size));
            let f = CostPrefix::new(&s);
            let mut sum = 0u128;
            for i in 0..=s.geometry.num_cells() {
                proptest::prop_assert_eq!(f.before(i), sum, "leaf {}", i);
                if i < s.geometry.num_cells() {
                    sum += cost_weight(&s, s.geometry.cell_at(i).unwrap()).unwrap();
                }
            }
        }

        /// The exact sampler draws the same cells as the direct algorithm (the test oracle),
        /// whatever the geometry, the dependency, k and the seed.
        #[test]
        fn exact_cost_weighted_is_the_direct_algorithm(
            layers in 1u32..6, tokens in 1u32..60, chunk in 1u32..9, hidden in 1u32..20,
            dep in 0u32..3, size in 0u32..70, k in 1u64..400, seed in proptest::prelude::any::<[u8; 32]>(),
        ) {
            let s = geometry(layers, tokens, chunk, hidden, dependency(dep, size));
            let k = k % s.geometry.num_cells().max(1) + 1;
            let mut a = ChaCha20Rng::from_seed(seed);
            let mut b = ChaCha20Rng::from_seed(seed);
            let exact = cost_weighted(&s, k, &mut a);
            let direct = cost_weighted_direct(&s, k, &mut b);
            proptest::prop_assert_eq!(&exact, &direct);
            // and they consumed the same words
            proptest::prop_assert_eq!(a.next_u64(), b.next_u64());
            // with few, large blocks (many removed cells per block) too
            for blocks in [1, 2, 3, 7] {
                let mut a = ChaCha20Rng::from_seed(seed);
                proptest::prop_assert_eq!(&cost_weighted_in_blocks(&s, k, &mut a, blocks), &direct);
            }
        }
    }

    /// The stratified draw before it skipped the layers that get no cell: every layer in turn.
    fn stratified_every_layer(s: &Statement, k: u64, seed: [u8; 32]) -> BTreeSet<u64> {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let layers = u64::from(s.geometry.layers);
        let per = u64::from(s.geometry.chunks_per_layer());
        let extra = floyd(&mut rng, layers, k % layers);
        let mut out = BTreeSet::new();
        for layer in 0..layers {
            let want = (k / layers + u64::from(extra.contains(&layer))).min(per);
            out.extend(
                floyd(&mut rng, per, want)
                    .into_iter()
                    .map(|c| layer * per + c),
            );
        }
        out
    }

    proptest::proptest! {
        /// Skipping the layers without cells draws the same cells as visiting every layer.
        #[test]
        fn stratified_is_unchanged(
            layers in 1u32..40, tokens in 1u32..30, chunk in 1u32..5, k in 1u32..200,
            seed in proptest::prelude::any::<[u8; 32]>(),
        ) {
            let s = geometry(layers, tokens, chunk, 4, Dependency::Causal);
            let n = s.geometry.num_cells();
            let k = (u64::from(k) % n).max(1);
            proptest::prop_assume!(k < n);
            let got: BTreeSet<u64> = sample_cells(&s, k as u32, SamplingStrategy::Stratified, seed)
                .unwrap()
                .into_iter()
                .map(|c| s.geometry.cell_index(c).unwrap())
                .collect();
            proptest::prop_assert_eq!(got, stratified_every_layer(&s, k, seed));
        }
    }

    /// Many blocks (N > 2^16 cells, several cells per block) against the oracle.
    #[test]
    fn exact_cost_weighted_with_many_blocks() {
        for (dep, seed) in [
            (Dependency::Causal, 1u8),
            (Dependency::Window { size: 300 }, 2),
            (Dependency::Bidirectional, 3),
        ] {
            let s = geometry(3, 50_000, 1, 8, dep);
            assert!(s.geometry.num_cells() > 2 * WEIGHTED_BLOCKS);
            let f = CostPrefix::new(&s);
            let mut sum = 0u128;
            for i in 0..s.geometry.num_cells() {
                if i % 997 == 0 {
                    assert_eq!(f.before(i), sum, "leaf {i}");
                }
                sum += cost_weight(&s, s.geometry.cell_at(i).unwrap()).unwrap();
            }
            assert_eq!(f.before(s.geometry.num_cells()), sum);
            for k in [1u64, 50, 3000] {
                let mut a = ChaCha20Rng::from_seed([seed; 32]);
                let mut b = ChaCha20Rng::from_seed([seed; 32]);
                let direct = cost_weighted_direct(&s, k, &mut b);
                assert_eq!(cost_weighted(&s, k, &mut a), direct);
                let mut a = ChaCha20Rng::from_seed([seed; 32]);
                assert_eq!(
                    cost_weighted_in_blocks(&s, k, &mut a, WEIGHTED_BLOCKS),
                    direct
                );
            }
        }
    }

    /// Every strategy on a trace of 2^32 − 1 cells (one token, u32::MAX layers) and on one of
    /// 2^40 cells, in milliseconds: nothing loops over or allocates for the claimed size.
    #[test]
    fn huge_claims_sample_quickly() {
        let tall = tall(u32::MAX, Dependency::Causal);
        let mut wide = geometry(1, 1, 1, 1, Dependency::Causal);
        wide.geometry = veritrace_commit::TraceGeometry::new(
            1 << 8,
            u32::MAX,
            1,
            1,
            veritrace_commit::Dtype::I8,
        )
        .unwrap();
        for s in [&tall, &wide] {
            for strategy in [
                SamplingStrategy::Uniform,
                SamplingStrategy::Stratified,
                SamplingStrategy::CostWeighted,
            ] {
                let t = std::time::Instant::now();
                let cells = sample_cells(s, 64, strategy, [9; 32]).unwrap();
                assert_eq!(cells.len(), 64);
                assert!(
                    t.elapsed() < std::time::Duration::from_secs(1),
                    "{strategy:?}: {:?}",
                    t.elapsed()
                );
            }
        }
    }

    #[test]
    fn fenwick_find() {
        let w = [3u128, 0, 5, 1];
        let f = Fenwick::from_fn(4, |i| w[i]);
        assert_eq!(f.total(), 9);
        let picks: Vec<(usize, u128)> = (0..9).map(|x| f.find_with_rest(x)).collect();
        assert_eq!(
            picks,
            [
                (0, 0),
                (0, 1),
                (0, 2),
                (2, 0),
                (2, 1),
                (2, 2),
                (2, 3),
                (2, 4),
                (3, 0)
            ]
        );
    }
}
