//! Fuzz target `trace_header`: the trace-file reader ([`parse_trace_bytes`], what
//! `veritrace commit` and `open` run on a file's bytes) on arbitrary bytes and on mutations of a
//! valid trace (flipped bytes, a rewritten header length, truncation). It must never panic,
//! and each call's peak allocation must stay within a small multiple of the input (the header
//! limit bounds what a declared header can cost).
//!
//! Run by `cargo test` for `VERITRACE_FUZZ_SECONDS` seconds (default 5) with bolero's random
//! engine; `cargo bolero test trace_header -p veritrace-model` runs it under a coverage-guided
//! fuzzer where one is installed.

use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use veritrace_model::trace_file::parse_trace_bytes;

#[path = "../../../tests/common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{fuzz_time, peak_of};

/// A valid three-layer trace with a statement-sized metadata entry and an extra tensor.
fn seed_trace() -> Vec<u8> {
    let a: Vec<u8> = (0..48).collect();
    let b: Vec<u8> = (48..96).collect();
    let c: Vec<u8> = (96..144).collect();
    let ids: Vec<u8> = (0..24).collect();
    let views = vec![
        ("h.0", TensorView::new(Dtype::F32, vec![3, 4], &a).unwrap()),
        ("h.1", TensorView::new(Dtype::F32, vec![3, 4], &b).unwrap()),
        ("h.2", TensorView::new(Dtype::F32, vec![3, 4], &c).unwrap()),
        (
            "token_ids",
            TensorView::new(Dtype::I64, vec![3], &ids).unwrap(),
        ),
    ];
    let meta = std::collections::HashMap::from([(
        "veritrace.statement".to_string(),
        "{\"version\":1}".to_string(),
    )]);
    safetensors::serialize(views, Some(meta)).unwrap()
}

/// Allocation allowed for parsing `len` bytes: the parsed header (a JSON value and the tensor
/// list, a few dozen bytes per input byte at worst) plus a constant.
fn budget(len: usize) -> usize {
    64 * len + (1 << 20)
}

fn check(bytes: &[u8], chunk: u32) {
    let (_, peak) = peak_of(|| parse_trace_bytes(Path::new("fuzz.safetensors"), bytes, chunk));
    assert!(
        peak <= budget(bytes.len()),
        "{peak} bytes allocated to parse {} bytes",
        bytes.len()
    );
}

#[test]
fn trace_header() {
    let seed = seed_trace();
    let (parsed, _) = peak_of(|| parse_trace_bytes(Path::new("seed"), &seed, 2));
    assert_eq!(parsed.unwrap().0.layers, 3, "the seed is a valid trace");
    bolero::check!()
        .with_test_time(fuzz_time())
        .for_each(|data: &[u8]| {
            let chunk = 1 + u32::from(data.first().copied().unwrap_or(0) % 4);
            // Arbitrary bytes.
            check(data, chunk);
            // The seed with bytes flipped at positions the input chooses.
            let mut b = seed.clone();
            for op in data.chunks_exact(3) {
                let at = usize::from(u16::from_le_bytes([op[0], op[1]])) % b.len();
                b[at] ^= op[2] | 1;
            }
            check(&b, chunk);
            // A rewritten header length, then truncation.
            if data.len() >= 9 {
                let mut h = seed.clone();
                h[..8].copy_from_slice(&data[1..9]);
                check(&h, chunk);
                let cut = usize::from(data[0]) % seed.len();
                check(&seed[..cut], chunk);
            }
        });
}
