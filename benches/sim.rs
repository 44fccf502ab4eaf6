//! Simulator benchmarks: fast-mode protocol trials per second on one thread for a 32-layer ×
//! 64-chunk trace (2048 cells) with k = 16 and 5% bad cells (target ≥ 1,000,000 trials/s).
//! The end-to-end default scenario's throughput is reported by `veritrace simulate` itself
//! (its timing line), see BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use veritrace_sim::fast::{detections, CellOutcomes};

fn fast_mode(c: &mut Criterion) {
    let cells = 32 * 64;
    let bad: Vec<bool> = (0..cells).map(|i| (i * 7919) % 100 < 5).collect();
    let runs = [CellOutcomes { bad }];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let trials = 1u64 << 18;
    let mut g = c.benchmark_group("sim_fast");
    g.sample_size(20);
    g.throughput(Throughput::Elements(trials));
    g.bench_function("32x64_k16_1thread", |b| {
        b.iter(|| pool.install(|| black_box(detections(&runs, 16, 1, trials, 1, 0))))
    });
    g.finish();
}

criterion_group!(benches, fast_mode);
criterion_main!(benches);
