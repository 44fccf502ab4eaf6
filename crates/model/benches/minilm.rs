//! all-MiniLM-L6-v2 forward over 128 tokens (criterion): our tiled, trace-capturing forward
//! (`BertModel::trace`, chunks of 128 and of 16 rows) against candle-transformers' `BertModel`
//! forward on the same input, in the same run. Target: ours (chunk 128) within 1.25x.
//!
//! Then one traced forward per numeric setup (`minilm_setups_128`), for tokens per second.
//!
//! Run: `cargo bench -p veritrace-model --bench minilm`. Skips (runs nothing) when the model is
//! not installed (`bash scripts/install-minilm.sh`).

use std::hint::black_box;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert as ct;
use criterion::Criterion;
use veritrace_model::{minilm_dir, BertModel, Setup};

const TOKENS: usize = 128;

fn bench(c: &mut Criterion, dir: &Path) {
    let ours = BertModel::load(dir).expect("load MiniLM");
    let config: ct::Config = serde_json::from_str(
        &std::fs::read_to_string(dir.join("config.json")).expect("config.json"),
    )
    .expect("candle-transformers config");
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("model.safetensors");
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
        .expect("var builder");
    let theirs = ct::BertModel::load(vb, &config).expect("candle-transformers BertModel");
    // [CLS] 126 word pieces [SEP]
    let tokens: Vec<u32> = std::iter::once(101)
        .chain((0..TOKENS as u32 - 2).map(|i| 1000 + (i * 7919) % 29000))
        .chain(std::iter::once(102))
        .collect();
    let ids = Tensor::new(tokens.as_slice(), &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("ids");
    let types = ids.zeros_like().expect("types");

    let mut g = c.benchmark_group("minilm_forward_128");
    g.sample_size(30);
    g.bench_function("candle_transformers", |b| {
        b.iter(|| {
            black_box(
                theirs
                    .forward(black_box(&ids), &types, None)
                    .and_then(|h| h.flatten_all()?.to_vec1::<f32>())
                    .expect("forward"),
            )
        })
    });
    for chunk in [128, 16] {
        g.bench_function(format!("veritrace_trace_chunk{chunk}"), |b| {
            b.iter(|| {
                black_box(
                    ours.trace(&Setup::F32_EAGER, black_box(&tokens), chunk)
                        .expect("trace"),
                )
            })
        });
    }
    g.finish();

    // Throughput per numeric setup (chunk 128: one tile per layer, as in the comparison above).
    let mut g = c.benchmark_group("minilm_setups_128");
    g.sample_size(10);
    for s in SETUPS {
        let setup: Setup = s.parse().expect("setup");
        ours.trace(&setup, &tokens, TOKENS).expect("prepare"); // weights prepared once, untimed
        g.bench_function(s.replace('/', "_"), |b| {
            b.iter(|| {
                black_box(
                    ours.trace(&setup, black_box(&tokens), TOKENS)
                        .expect("trace"),
                )
            })
        });
    }
    g.finish();
}

/// The setups whose MiniLM throughput BENCHMARKS.md reports.
const SETUPS: [&str; 10] = [
    "f32/attn=eager",
    "bf16/attn=eager",
    "f16/attn=eager",
    "f32/attn=tiled:16",
    "f32/attn=window:16",
    "f32/attn=topk:16",
    "f32/attn=eager/quant=int8-channel",
    "f32/attn=eager/quant=int4-g32:mse",
    "f32/attn=eager/splitk=4",
    "f32/attn=eager/batch=4",
];

fn main() {
    let Some(dir) = minilm_dir() else {
        eprintln!(
            "skipping the MiniLM benchmark: MiniLM not installed; run scripts/install-minilm.sh"
        );
        return;
    };
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &dir);
    c.final_summary();
}
