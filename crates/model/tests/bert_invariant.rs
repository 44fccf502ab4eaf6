//! The batch-invariant kernels (`kernels=invariant`, issue 17) in the BERT encoder: the trace
//! does not depend on the chunk size or the thread count, every cell recomputed alone at any
//! chunk size is the forward's rows bit for bit (with an attention mask and a window too), and
//! the values are candle's up to rounding (on the synthetic encoder always, and on
//! all-MiniLM-L6-v2 where it is installed).

mod synthetic_bert;

use synthetic_bert::{model, tokens};
use veritrace_model::{BertModel, CellInputs, Setup};

fn setup(s: &str) -> Setup {
    s.parse().expect("setup")
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Largest `|a − b| / max(1, |b|)` over both vectors.
fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f32::max)
}

/// Every cell at chunk sizes 1, 3, 8 and 64 recomputed alone equals the rows of one trace
/// (computed at chunk 16), and the trace at other chunks is the same trace.
fn cells_equal_the_forward(m: &BertModel, s: &Setup, t: &[u32], mask: &[u32]) {
    let n = t.len();
    let trace = m.trace_masked(s, t, mask, 16).expect("trace");
    let d = trace.hidden;
    for other in [1usize, 5, 64] {
        let again = m.trace_masked(s, t, mask, other).expect("trace");
        for (a, b) in trace.layers.iter().zip(&again.layers) {
            assert_eq!(bits(a), bits(b), "{s}: the trace depends on the chunk size");
        }
    }
    for tile in [1usize, 3, 8, 64] {
        for chunk in 0..n.div_ceil(tile) {
            let rows = chunk * tile..((chunk + 1) * tile).min(n);
            for l in 0..trace.layers.len() {
                let inputs = if l == 0 {
                    CellInputs::Tokens(t)
                } else {
                    CellInputs::Hidden(&trace.layers[l - 1])
                };
                let got = m
                    .recompute_cell_masked(s, tile, l, chunk, inputs, mask)
                    .unwrap_or_else(|e| panic!("{s}: ({l}, {chunk}) of {tile}: {e}"));
                assert_eq!(
                    bits(&got),
                    bits(&trace.layers[l][rows.start * d..rows.end * d]),
                    "{s}: layer {l}, chunk {chunk} of {tile}"
                );
            }
        }
    }
}

#[test]
fn every_cell_at_every_chunk_size_is_the_forward_bitwise() {
    let (m, _dir) = model("invariant-cells");
    let n = 23;
    let t = tokens(n);
    let all = vec![1; n];
    let mut masked = all.clone();
    masked[..4].fill(0);
    masked[19..].fill(0);
    for s in [
        "f32/attn=eager/kernels=invariant",
        "f32/attn=window:5/kernels=invariant",
        "f32/attn=eager/quant=int4-g32/kernels=invariant",
        "bf16/attn=eager/kernels=invariant",
        "f16/attn=window:5/kernels=invariant",
    ] {
        cells_equal_the_forward(&m, &setup(s), &t, &all);
        cells_equal_the_forward(&m, &setup(s), &t, &masked);
    }
}

/// (Small: mostly one thread's path; the MiniLM test below splits the work for real.)
#[test]
fn the_trace_is_the_same_on_any_thread_count() {
    let (m, _dir) = model("invariant-threads");
    let t = tokens(37);
    let s = setup("f32/attn=eager/kernels=invariant");
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool")
        .install(|| m.trace(&s, &t, 8))
        .expect("trace");
    for threads in [2, 3] {
        let many = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
            .install(|| m.trace(&s, &t, 8))
            .expect("trace");
        for (a, b) in one.layers.iter().zip(&many.layers) {
            assert_eq!(bits(a), bits(b), "{threads} threads");
        }
    }
}

/// The invariant kernels compute the encoder candle computes, in another order: close, and
/// (over a whole trace) not bitwise the same, so the setup key names a different arithmetic.
fn close_to_candle(m: &BertModel, t: &[u32], what: &str) {
    let inv = m
        .trace(&setup("f32/attn=eager/kernels=invariant"), t, 16)
        .expect("trace");
    let candle = m.trace(&setup("f32/attn=eager"), t, 16).expect("trace");
    let mut differs = false;
    for (l, (a, b)) in inv.layers.iter().zip(&candle.layers).enumerate() {
        let rel = max_rel(a, b);
        assert!(rel < 1e-4, "{what}: layer {l} differs by {rel:e}");
        differs |= bits(a) != bits(b);
    }
    assert!(differs, "{what}: bitwise candle's trace");
}

#[test]
fn the_values_are_the_candle_kernels_up_to_rounding() {
    let (m, _dir) = model("invariant-candle");
    close_to_candle(&m, &tokens(33), "synthetic encoder");
}

/// Under bf16 the encoder's invariant kernels store bf16 values (each operation rounded once)
/// that are candle's bf16 encoder up to bf16 rounding.
#[test]
fn bf16_stores_bf16_and_is_candles_bf16_up_to_rounding() {
    let (m, _dir) = model("invariant-bf16");
    let t = tokens(33);
    let inv = m
        .trace(&setup("bf16/attn=eager/kernels=invariant"), &t, 16)
        .expect("trace");
    let candle = m.trace(&setup("bf16/attn=eager"), &t, 16).expect("trace");
    for (l, (a, b)) in inv.layers.iter().zip(&candle.layers).enumerate() {
        for v in a {
            let stored = half::bf16::from_f32(*v).to_f32();
            assert_eq!(v.to_bits(), stored.to_bits(), "layer {l}: {v}");
        }
        let rel = max_rel(a, b);
        assert!(rel < 0.05, "layer {l} differs by {rel:e}");
    }
}

#[test]
fn minilm_on_the_invariant_kernels_is_minilm_up_to_rounding() {
    let Some(dir) = veritrace_model::minilm_dir() else {
        eprintln!(
            "skipping: all-MiniLM-L6-v2 is not installed (bash scripts/install-minilm.sh, or \
             set VERITRACE_MINILM)"
        );
        return;
    };
    let m = BertModel::load(&dir).expect("MiniLM");
    let t: Vec<u32> = (0..96u32)
        .map(|i| 1000 + (37 * i * i + 11 * i) % 20000)
        .collect();
    close_to_candle(&m, &t, "all-MiniLM-L6-v2");
    let s = setup("f32/attn=eager/kernels=invariant");
    let on = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
            .install(|| m.trace(&s, &t, 16))
            .expect("trace")
    };
    // large enough that products, heads and norms are split across threads
    let trace = on(1);
    for (a, b) in trace.layers.iter().zip(&on(2).layers) {
        assert_eq!(bits(a), bits(b), "MiniLM on two threads");
    }
    let d = trace.hidden;
    let got = m
        .recompute_cell(&s, 16, 6, 2, CellInputs::Hidden(&trace.layers[5]))
        .expect("cell");
    assert_eq!(bits(&got), bits(&trace.layers[6][32 * d..48 * d]));
}
