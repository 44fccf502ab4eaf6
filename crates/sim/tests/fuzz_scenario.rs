//! Fuzz target `scenario`: the scenario parser and its validation ([`Scenario::from_toml`],
//! [`Scenario::validate`]) on arbitrary bytes and on mutations of every scenario shipped in
//! `simulations/`. Nothing may panic, and parsing must allocate within a small multiple of its
//! input. (Validation refuses the sizes a run could not finish: a test per bound lives in
//! `tests/bounds.rs`.)
//!
//! Run by `cargo test` for `VERITRACE_FUZZ_SECONDS` seconds (default 5) with bolero's random
//! engine; `cargo bolero test scenario -p veritrace-sim` runs it under a coverage-guided fuzzer
//! where one is installed.

use veritrace_sim::Scenario;

#[path = "../../../tests/common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{fuzz_time, peak_of};

fn seeds() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../simulations");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    out.sort();
    assert!(out.len() >= 3, "the shipped scenarios are the seeds");
    out
}

fn mutate(seed: &[u8], data: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for op in data.chunks_exact(4) {
        if b.is_empty() {
            break;
        }
        let at = usize::from(u16::from_le_bytes([op[0], op[1]])) % b.len();
        match op[2] % 4 {
            // A digit made larger: numbers grow towards the bounds and past them.
            0 => b.insert(at, b'0' + op[3] % 10),
            1 => b[at] = op[3],
            2 => b.truncate(at),
            _ => b
                .splice(at..at, b"99999999999".iter().copied())
                .for_each(drop),
        }
    }
    b
}

fn check(bytes: &[u8]) {
    let (_, peak) = peak_of(|| {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return;
        };
        if let Ok(s) = Scenario::from_toml(text) {
            let _ = s.validate();
        }
    });
    assert!(
        peak <= 64 * bytes.len() + (1 << 20),
        "{peak} bytes allocated to parse a {}-byte scenario",
        bytes.len()
    );
}

#[test]
fn scenario() {
    let seeds = seeds();
    bolero::check!()
        .with_test_time(fuzz_time())
        .for_each(|data: &[u8]| {
            check(data);
            let pick = usize::from(data.first().copied().unwrap_or(0)) % seeds.len();
            check(&mutate(&seeds[pick], data));
        });
}
