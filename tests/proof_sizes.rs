//! The batch-proof size bound the protocol relies on: a causal-attention opening is a contiguous
//! run of leaves, and 64 contiguous leaves of a 2^20-leaf tree need at most 2·log2(n) = 40
//! siblings (64 separate inclusion proofs: 1280).

use veritrace::commit::sibling_count;

#[test]
fn sixty_four_contiguous_leaves_of_a_2e20_tree() {
    let n = 1u64 << 20;
    let mut worst = 0;
    // every alignment of the run relative to the tree's levels, and the right edge
    for start in (0..4096).chain(n - 4096..n - 63) {
        let idx: Vec<u64> = (start..start + 64).collect();
        worst = worst.max(sibling_count(n, &idx).unwrap());
    }
    assert!(worst <= 40, "worst case {worst} siblings");
    // and the bound is not vacuous: misaligned runs do need more than one path's worth
    assert!(worst > 20);
}

#[test]
fn contiguous_runs_in_ragged_trees() {
    for n in [1_000_003u64, (1 << 20) + 1, 3 * (1 << 18) + 7] {
        let depth = 64 - (n - 1).leading_zeros() as u64;
        for start in (0..n - 64).step_by(9973) {
            let idx: Vec<u64> = (start..start + 64).collect();
            assert!(
                sibling_count(n, &idx).unwrap() <= 2 * depth,
                "n {n} start {start}"
            );
        }
    }
}
