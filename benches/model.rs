//! Model engine benchmarks (issue 4's performance targets), each measured side by side in one
//! run so ratios cancel machine noise:
//!
//! * `model_capture/<preset>`: a forward that keeps no trace (`forward`), the same forward
//!   keeping every hidden state (`trace`), and with attention keys too (`trace_keys`);
//!   target: capture adds at most 5%.
//! * `model_cell/<preset>`: one full traced forward against recomputing one cell of the middle
//!   layer (first and last chunk); target: a cell costs at most 1.5x of its layer's share of
//!   the forward (`forward / L`).
//! * `model_setups/tiny`: one traced forward of 128 tokens per numeric setup, for tokens per
//!   second.
//! * `invariant/small_512`: the forward of `small` over 512 tokens under `kernels=invariant` on
//!   a one- and a two-thread rayon pool (issue 17's thread-scaling target: two threads at least
//!   1.6x one), beside candle's kernels on one thread; and generating 64 tokens after 128 with
//!   the KV cache beside one forward of 192 tokens (one thread).
//!
//! `python3 benches/report.py` turns the results into BENCHMARKS.md's tables.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use veritrace_model::{Capture, CellInputs, LlamaModel, Setup};

const TOKENS: usize = 128;
const CHUNK: usize = 16;

fn prompt(vocab: usize) -> Vec<u32> {
    (0..TOKENS as u32)
        .map(|i| (7 + 37 * i * i + 11 * i) % vocab as u32)
        .collect()
}

fn capture(c: &mut Criterion) {
    for preset in ["tiny", "small"] {
        let model = LlamaModel::preset(preset).unwrap();
        let tokens = prompt(model.config().vocab_size);
        let setup = Setup::F32_EAGER;
        let mut g = c.benchmark_group(format!("model_capture/{preset}"));
        g.sample_size(if preset == "tiny" { 30 } else { 10 });
        g.bench_function("forward", |b| {
            b.iter(|| black_box(model.forward(&setup, &tokens, CHUNK).unwrap()))
        });
        g.bench_function("trace", |b| {
            b.iter(|| black_box(model.trace(&setup, &tokens, CHUNK).unwrap()))
        });
        g.bench_function("trace_keys", |b| {
            b.iter(|| {
                black_box(
                    model
                        .trace_with(&setup, &tokens, CHUNK, Capture { keys: true })
                        .unwrap(),
                )
            })
        });
        g.finish();
    }
}

fn cell(c: &mut Criterion) {
    for preset in ["tiny", "small"] {
        let model = LlamaModel::preset(preset).unwrap();
        let tokens = prompt(model.config().vocab_size);
        let setup = Setup::F32_EAGER;
        let trace = model.trace(&setup, &tokens, CHUNK).unwrap();
        let layer = model.config().num_layers / 2;
        let d = trace.hidden;
        let mut g = c.benchmark_group(format!("model_cell/{preset}"));
        g.sample_size(if preset == "tiny" { 30 } else { 10 });
        g.bench_function("forward", |b| {
            b.iter(|| black_box(model.forward(&setup, &tokens, CHUNK).unwrap()))
        });
        for (name, chunk) in [("first", 0), ("last", TOKENS / CHUNK - 1)] {
            let end = (chunk + 1) * CHUNK;
            let inputs = &trace.layers[layer - 1][..end * d];
            g.bench_function(BenchmarkId::new("cell", name), |b| {
                b.iter(|| {
                    black_box(
                        model
                            .recompute_cell(&setup, CHUNK, layer, chunk, CellInputs::Hidden(inputs))
                            .unwrap(),
                    )
                })
            });
        }
        g.finish();
    }
}

/// The setups whose throughput BENCHMARKS.md reports.
pub const SETUPS: [&str; 12] = [
    "f32/attn=eager",
    "bf16/attn=eager",
    "f16/attn=eager",
    "f32/attn=tiled:16",
    "f32/attn=window:32",
    "f32/attn=topk:16",
    "f32/attn=eager/quant=int8-channel",
    "f32/attn=eager/quant=int4-g32:mse",
    "f32/attn=eager/splitk=4",
    "f32/attn=eager/batch=4",
    "f32/attn=eager/order=decode",
    "f32/attn=eager/skip=2",
];

fn setups(c: &mut Criterion) {
    let model = LlamaModel::preset("tiny").unwrap();
    let tokens = prompt(model.config().vocab_size);
    let mut g = c.benchmark_group("model_setups/tiny");
    g.sample_size(20);
    for s in SETUPS {
        let setup: Setup = s.parse().unwrap();
        // Weights are prepared once per setup, outside the timing.
        model.trace(&setup, &tokens, CHUNK).unwrap();
        g.bench_function(s.replace('/', "_"), |b| {
            b.iter(|| black_box(model.trace(&setup, &tokens, CHUNK).unwrap()))
        });
    }
    g.finish();
}

fn invariant(c: &mut Criterion) {
    let model = LlamaModel::preset("small").unwrap();
    let vocab = model.config().vocab_size as u32;
    let tokens = |n: usize| -> Vec<u32> {
        (0..n as u32)
            .map(|i| (7 + 37 * i * i + 11 * i) % vocab)
            .collect()
    };
    let inv: Setup = "f32/attn=eager/kernels=invariant".parse().unwrap();
    let pool = |t: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap()
    };
    let t512 = tokens(512);
    let mut g = c.benchmark_group("invariant/small_512");
    g.sample_size(10);
    for threads in [1usize, 2] {
        let p = pool(threads);
        g.bench_function(BenchmarkId::new("forward", format!("{threads}t")), |b| {
            b.iter(|| p.install(|| black_box(model.forward(&inv, &t512, CHUNK).unwrap())))
        });
    }
    let p = pool(1);
    g.bench_function("candle_forward/1t", |b| {
        b.iter(|| p.install(|| black_box(model.forward(&Setup::F32_EAGER, &t512, 16).unwrap())))
    });
    g.finish();
    let mut g = c.benchmark_group("invariant/generation");
    g.sample_size(10);
    let (prompt, full) = (tokens(128), tokens(192));
    g.bench_function("generate_64_after_128/1t", |b| {
        b.iter(|| p.install(|| black_box(model.generate(&inv, &prompt, 64, CHUNK).unwrap())))
    });
    g.bench_function("forward_192/1t", |b| {
        b.iter(|| p.install(|| black_box(model.forward(&inv, &full, CHUNK).unwrap())))
    });
    g.finish();
}

criterion_group!(benches, capture, cell, setups, invariant);
criterion_main!(benches);
