//! Commitment benchmarks (criterion). Run: `cargo bench --bench commit`; then
//! `python3 benches/report.py` turns criterion's estimates into the ratios in BENCHMARKS.md.
//!
//! * `commit_64mib`: committing a 64 MiB f32 trace (8 layers x 512 tokens x 4096 hidden, chunks
//!   of 64 tokens = 64 cells of 1 MiB) with BLAKE3 on a one- and a two-thread rayon pool, next to
//!   plain `blake3::hash` of the same bytes (one thread) in the same run.
//! * `node`: one internal node per hasher.
//! * `leaf_64kib`: one 64 KiB leaf per hasher (criterion reports bytes per second).
//! * `proof`: building and verifying a batch proof for 64 contiguous and 64 random leaves of a
//!   2^20-leaf tree.
//! * `commit_one_cell_per_layer`: the streaming committer (what `veritrace commit` runs) on a
//!   64 MiB trace of one cell per layer (16 layers x 512 tokens x 2048 hidden, chunk 512), layer
//!   by layer (`push_layer`: threads split cells within a layer only, so one thread works) against
//!   all layers at once (`push_layers`: threads split layers too), on one and two threads.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use veritrace::commit::{
    commit_trace, verify_batch, Digest, Dtype, Hasher, HasherId, MerkleTree, TraceCommitter,
    TraceGeometry,
};

fn trace_bytes(len: usize) -> Vec<u8> {
    // xorshift64: incompressible-looking, deterministic
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool")
}

fn commit_64mib(c: &mut Criterion) {
    let g = TraceGeometry::new(8, 512, 4096, 64, Dtype::F32).unwrap();
    let bytes = trace_bytes(g.layer_byte_len() * g.layers as usize);
    let layers: Vec<&[u8]> = bytes.chunks(g.layer_byte_len()).collect();
    let mut group = c.benchmark_group("commit_64mib");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.sample_size(20);
    group.bench_function("blake3_hash_1t", |b| {
        b.iter(|| blake3::hash(black_box(&bytes)))
    });
    for threads in [1, 2] {
        let p = pool(threads);
        group.bench_function(
            BenchmarkId::new("commit_blake3", format!("{threads}t")),
            |b| {
                b.iter(|| {
                    p.install(|| commit_trace(HasherId::Blake3, &g, black_box(&layers)).unwrap())
                })
            },
        );
    }
    let p = pool(1);
    group.bench_function("commit_sha256/1t", |b| {
        b.iter(|| p.install(|| commit_trace(HasherId::Sha256, &g, black_box(&layers)).unwrap()))
    });
    group.finish();
}

fn node(c: &mut Criterion) {
    let l = Digest([0x11; 32]);
    let r = Digest([0x22; 32]);
    let mut group = c.benchmark_group("node");
    for h in HasherId::ALL {
        group.bench_function(h.name(), |b| {
            b.iter(|| h.hash_node(black_box(&l), black_box(&r)))
        });
    }
    group.finish();
}

fn leaf(c: &mut Criterion) {
    let data = trace_bytes(64 << 10);
    let mut group = c.benchmark_group("leaf_64kib");
    group.throughput(Throughput::Bytes(data.len() as u64));
    for h in HasherId::ALL {
        if h == HasherId::Poseidon {
            group.sample_size(10);
        }
        group.bench_function(h.name(), |b| b.iter(|| h.hash_leaf(&[black_box(&data)])));
    }
    group.finish();
}

fn proof(c: &mut Criterion) {
    let n = 1u64 << 20;
    let leaves: Vec<Digest> = (0..n)
        .map(|i| HasherId::Blake3.hash_leaf(&[&i.to_le_bytes()]))
        .collect();
    let tree = MerkleTree::from_leaf_digests(HasherId::Blake3, leaves).unwrap();
    let contiguous: Vec<u64> = (400_000..400_064).collect();
    let mut x = 12345u64;
    let mut random: Vec<u64> = (0..64)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        })
        .collect();
    random.sort_unstable();
    random.dedup();
    let mut group = c.benchmark_group("proof_2e20");
    for (name, idx) in [("contiguous64", &contiguous), ("random64", &random)] {
        let p = tree.prove(idx).unwrap();
        let opened: Vec<(u64, Digest)> = idx.iter().map(|&i| (i, tree.leaf(i).unwrap())).collect();
        group.bench_function(format!("prove/{name}"), |b| {
            b.iter(|| tree.prove(black_box(idx)))
        });
        group.bench_function(format!("verify/{name}"), |b| {
            b.iter(|| verify_batch(&HasherId::Blake3, &tree.root(), n, black_box(&opened), &p))
        });
    }
    group.finish();
}

fn commit_one_cell_per_layer(c: &mut Criterion) {
    let g = TraceGeometry::new(16, 512, 2048, 512, Dtype::F32).unwrap();
    let bytes = trace_bytes(g.layer_byte_len() * g.layers as usize);
    let layers: Vec<&[u8]> = bytes.chunks(g.layer_byte_len()).collect();
    let mut group = c.benchmark_group("commit_one_cell_per_layer");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.sample_size(10);
    for threads in [1, 2] {
        let p = pool(threads);
        group.bench_function(BenchmarkId::new("push_layer", format!("{threads}t")), |b| {
            b.iter(|| {
                p.install(|| {
                    let mut c = TraceCommitter::new(HasherId::Blake3, g).unwrap();
                    for l in &layers {
                        c.push_layer(black_box(l)).unwrap();
                    }
                    c.finish().unwrap()
                })
            })
        });
        group.bench_function(
            BenchmarkId::new("push_layers", format!("{threads}t")),
            |b| {
                b.iter(|| {
                    p.install(|| {
                        let mut c = TraceCommitter::new(HasherId::Blake3, g).unwrap();
                        c.push_layers(black_box(&layers)).unwrap();
                        c.finish().unwrap()
                    })
                })
            },
        );
    }
    group.finish();
}

criterion_group!(
    benches,
    commit_64mib,
    node,
    leaf,
    proof,
    commit_one_cell_per_layer
);
criterion_main!(benches);
