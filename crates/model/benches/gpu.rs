//! GPU benchmarks of the `cuda` feature (`cargo bench -p veritrace-model --features cuda
//! --bench gpu`). Times are GPU times from CUDA events (criterion's `iter_custom`), so the
//! ratios compare kernels, not launch jitter. Without a CUDA driver the benchmark prints why
//! and measures nothing.
//!
//! * `gpu_commit/small_2048`: the small decoder's forward over 2048 tokens, alone and with
//!   every layer's cells hashed on the device (BLAKE3 and SHA-256, chunk 16): the overhead of
//!   committing on the device is the ratio of the two.
//! * `gpu_leaf_hash`: leaf hashing of a 2048 × 4096 f32 layer (32 MiB), throughput in bytes;
//!   the report divides it by the GPU's memory bandwidth.
//! * `gpu_attention/2048x8x64`: eager and tiled attention on the small decoder's shapes
//!   (causal, 2048 tokens, 8 heads of 64), to set beside PyTorch's
//!   `scaled_dot_product_attention` (benches/sdpa.py) on the same shapes.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use veritrace_commit::HasherId;
use veritrace_model::cuda::{bench, driver_present, Gpu, GpuLlama, RunOptions};
use veritrace_model::{seeded_prompt, Device, LlamaModel, Setup};

fn gpu() -> Option<std::sync::Arc<Gpu>> {
    if !driver_present() {
        eprintln!("gpu benchmarks: no CUDA driver on this machine; nothing measured");
        return None;
    }
    match Gpu::open(Device::Cuda(0)) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("gpu benchmarks: {e}; nothing measured");
            None
        }
    }
}

fn ms(d: f64) -> Duration {
    Duration::from_secs_f64(d / 1e3)
}

fn commit(c: &mut Criterion) {
    let Some(gpu) = gpu() else { return };
    let m = LlamaModel::preset("small").unwrap();
    let tokens = seeded_prompt(m.config().vocab_size, 0, 2048);
    let g = GpuLlama::new(gpu, &m, &Setup::F32_EAGER).unwrap();
    let mut group = c.benchmark_group("gpu_commit/small_2048");
    group.sample_size(10);
    for (name, commit) in [
        ("forward", None),
        ("forward+blake3", Some((HasherId::Blake3, 16))),
        ("forward+sha256", Some((HasherId::Sha256, 16))),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = 0.0;
                for _ in 0..iters {
                    let opts = RunOptions {
                        download: false,
                        commit,
                    };
                    total += g.run_ms(&tokens, opts).unwrap().1;
                }
                ms(total)
            })
        });
    }
    group.finish();
}

fn leaf_hash(c: &mut Criterion) {
    let Some(gpu) = gpu() else { return };
    let (tokens, hidden, chunk) = (2048u32, 4096u32, 16u32);
    let mut group = c.benchmark_group("gpu_leaf_hash/2048x4096_f32");
    group.throughput(Throughput::Bytes(u64::from(tokens) * u64::from(hidden) * 4));
    for hasher in [HasherId::Blake3, HasherId::Sha256] {
        group.bench_function(hasher.name(), |b| {
            b.iter_custom(|iters| {
                ms(
                    bench::hash_layer_ms(&gpu, tokens, hidden, chunk, hasher, iters as usize)
                        .unwrap()
                        * iters as f64,
                )
            })
        });
    }
    group.finish();
}

fn attention(c: &mut Criterion) {
    let Some(gpu) = gpu() else { return };
    let mut group = c.benchmark_group("gpu_attention/2048x8x64");
    for s in ["f32/attn=eager", "f32/attn=tiled:64", "f32/attn=tiled:128"] {
        let setup: Setup = s.parse().unwrap();
        group.bench_function(s, |b| {
            b.iter_custom(|iters| {
                ms(
                    bench::attention_ms(&gpu, 2048, 8, 64, &setup, iters as usize).unwrap()
                        * iters as f64,
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, commit, leaf_hash, attention);
criterion_main!(benches);
