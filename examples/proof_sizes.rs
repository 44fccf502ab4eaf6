//! Prints how many sibling hashes batch proofs carry compared with separate inclusion proofs,
//! for the openings the protocol makes (contiguous runs of leaves) and for random leaves.
//! These are exact counts from the tree shape (no timing): `cargo run --release --example proof_sizes`.

use veritrace::commit::sibling_count;

fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

fn main() {
    let n = 1u64 << 20;
    let depth = 20u64;
    println!(
        "tree of 2^20 leaves (depth {depth}); a single inclusion proof carries {depth} siblings\n"
    );
    println!("| opened leaves | batch siblings (mean) | max | 64 single proofs | ratio |");
    println!("|---|---|---|---|---|");
    let trials = 2000;
    let mut seed = 0x5eed_u64;
    for (name, contiguous) in [("64 contiguous", true), ("64 random", false)] {
        let (mut sum, mut max) = (0u64, 0u64);
        for _ in 0..trials {
            let idx: Vec<u64> = if contiguous {
                let s = lcg(&mut seed) % (n - 64);
                (s..s + 64).collect()
            } else {
                let mut v: Vec<u64> = (0..64).map(|_| lcg(&mut seed) % n).collect();
                v.sort_unstable();
                v.dedup();
                v
            };
            let c = sibling_count(n, &idx).expect("valid indices");
            sum += c;
            max = max.max(c);
        }
        let mean = sum as f64 / trials as f64;
        let singles = 64 * depth;
        println!(
            "| {name} | {mean:.1} | {max} | {singles} | {:.3} |",
            mean / singles as f64
        );
    }
}
