//! Protocol benchmarks (criterion): for a 32-layer x 64-chunk trace (chunks of 16 tokens of
//! hidden size 64, f32, causal attention; 8 MiB), the cost of
//!
//! * `challenge/k`: deriving a non-interactive challenge (transcript + sampling of k cells);
//! * `open/k`: the prover building the opening (cells and one batch proof);
//! * `verify/k`: the verifier checking it (cells, leaves, batch proof, non-finite scan, tolerance),
//!   with a replay engine that returns the honest rows, so the figure is the protocol's own cost
//!   without any inference.
//!
//! * `hostile/<strategy>`: verifying (non-interactive, k = 16, every limit lifted) a commitment
//!   that claims 2^32 − 1 layers, whose opening is the honest session's, next to
//!   `honest/<strategy>`, the honest session of the same k: the claim must not cost the verifier
//!   more than the honest session (issue 15; memory in BENCHMARKS.md from the protocol crate's
//!   `hostile` test).
//!
//! * `opening_bytes/{decoded,streamed}/k`: a non-interactive session from the opening's binary
//!   envelope: decoded whole (`Opening::from_bytes`) and then checked, against read and checked
//!   cell by cell (`stream::OpeningReader`, `verify_recorded_streams`), with the same replay
//!   engine (issue 17: streaming must not cost the verifier time).
//!
//! Run: `cargo bench --bench protocol`; `python3 benches/report.py` summarizes.

use std::hint::black_box;
use std::ops::Range;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use veritrace::commit::{Digest, Dtype, HasherId, TraceGeometry};
use veritrace::protocol::stream::OpeningReader;
use veritrace::protocol::tolerance::TolerancePolicy;
use veritrace::protocol::transcript::derive_challenge;
use veritrace::protocol::{
    check_opening, verify_recorded_streams, verify_recorded_with_limits, ChallengeParams,
    Commitment, Dependency, Message, Mode, Opening, OutputRule, Prover, Recompute, Result,
    SamplingStrategy, Statement, Verdict, VerifierConfig, VerifierLimits, PROTOCOL_VERSION,
};

/// Returns rows of a stored trace: a verifier engine with zero inference cost.
struct Replay {
    layers: Vec<Vec<u8>>,
    row: usize,
}

impl Replay {
    fn rows(&self, layer: u32, rows: Range<u32>) -> Vec<u8> {
        self.layers[layer as usize][rows.start as usize * self.row..rows.end as usize * self.row]
            .to_vec()
    }
}

impl Recompute for Replay {
    fn check_input(&self, statement: &Statement) -> veritrace::protocol::Result<()> {
        veritrace::protocol::no_text_input(statement)
    }

    fn embed(&self, _: &Statement, rows: Range<u32>) -> Result<Vec<u8>> {
        Ok(self.rows(0, rows))
    }
    fn layer(
        &self,
        _: &Statement,
        layer: u32,
        rows: Range<u32>,
        _: Range<u32>,
        _: &[u8],
    ) -> Result<Vec<u8>> {
        Ok(self.rows(layer, rows))
    }
    fn next_token(&self, _: &Statement, _: u32, _: &[u8]) -> Result<u32> {
        Ok(0)
    }
}

fn setup() -> (Statement, Vec<Vec<u8>>) {
    let geometry = TraceGeometry::new(32, 1024, 64, 16, Dtype::F32).unwrap();
    let statement = Statement {
        trace_level: veritrace_protocol::TraceLevel::Hidden,
        version: PROTOCOL_VERSION,
        model_digest: Digest([1; 32]),
        setup: b"bench".to_vec(),
        input_tokens: (0..1024).collect(),
        output_tokens: vec![],
        geometry,
        hasher: HasherId::Blake3,
        dependency: Dependency::Causal,
        output_rule: OutputRule::Greedy,
        input_text: None,
        engine: None,
    };
    let mut x = 1u32;
    let layers = (0..32)
        .map(|_| {
            (0..geometry.layer_byte_len() / 4)
                .flat_map(|_| {
                    x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                    ((x >> 9) as f32 / 8388608.0).to_le_bytes()
                })
                .collect()
        })
        .collect();
    (statement, layers)
}

/// The honest prover of [`setup`]'s trace, its commitment, and a replay engine of that trace.
fn session() -> (Prover<Vec<u8>>, Commitment, Replay) {
    let (statement, layers) = setup();
    let mut prover = Prover::new(statement, layers.clone()).unwrap();
    let commitment = prover.commit().unwrap();
    let replay = Replay {
        layers,
        row: 64 * 4,
    };
    (prover, commitment, replay)
}

fn protocol(c: &mut Criterion) {
    let (prover, commitment, replay) = session();
    let mut group = c.benchmark_group("protocol_32x64");
    group.sample_size(20);
    for k in [1u32, 4, 16, 64, 256] {
        let params = ChallengeParams {
            samples: k,
            strategy: SamplingStrategy::Uniform,
            pow_bits: 0,
            attention: None,
        };
        group.bench_with_input(BenchmarkId::new("challenge", k), &k, |b, _| {
            b.iter(|| derive_challenge(black_box(&commitment), 0, &params, 0).unwrap())
        });
        let challenge = derive_challenge(&commitment, 0, &params, 0).unwrap();
        group.bench_with_input(BenchmarkId::new("open", k), &k, |b, _| {
            b.iter(|| {
                prover
                    .open_cells(0, black_box(&challenge.cells), 0)
                    .unwrap()
            })
        });
        let opening = prover.open_cells(0, &challenge.cells, 0).unwrap();
        group.bench_with_input(BenchmarkId::new("verify", k), &k, |b, _| {
            b.iter(|| {
                check_opening(
                    &commitment,
                    &challenge.cells,
                    black_box(&opening),
                    &TolerancePolicy::Exact,
                    &replay,
                )
                .unwrap()
            })
        });
        let bytes: usize = opening.cells.iter().map(|c| c.data.len()).sum();
        eprintln!(
            "k = {k}: {} cells opened ({bytes} bytes of {} in the trace), {} siblings",
            opening.cells.len(),
            32 * 1024 * 64 * 4,
            opening.proof.siblings.len()
        );
    }
    group.finish();
}

fn hostile(c: &mut Criterion) {
    let (statement, layers) = setup();
    let commitment = Prover::new(statement.clone(), layers.clone())
        .unwrap()
        .commit()
        .unwrap();
    let replay = Replay {
        layers,
        row: 64 * 4,
    };
    let mut tall = commitment.clone();
    tall.statement.input_tokens = vec![1];
    tall.statement.geometry = TraceGeometry::new(u32::MAX, 1, 64, 1, Dtype::F32).unwrap();
    let mut group = c.benchmark_group("verify_k16");
    group.sample_size(20);
    for strategy in [
        SamplingStrategy::Uniform,
        SamplingStrategy::Stratified,
        SamplingStrategy::CostWeighted,
    ] {
        let params = ChallengeParams {
            samples: 16,
            strategy,
            pow_bits: 0,
            attention: None,
        };
        let config = VerifierConfig {
            method: veritrace_protocol::LayerCheck::Recompute,
            mode: Mode::NonInteractive,
            params,
            rounds: 1,
            tolerance: TolerancePolicy::Exact,
        };
        let mut fresh = Prover::new(statement.clone(), replay.layers.clone()).unwrap();
        fresh.commit().unwrap();
        let (_, opening) = fresh.open_non_interactive(&params).unwrap();
        let name = format!("{strategy:?}").to_lowercase();
        let decide = |c: &Commitment| {
            verify_recorded_with_limits(
                c,
                &config,
                &VerifierLimits::UNLIMITED,
                None,
                std::slice::from_ref(black_box(&opening)),
                &replay,
                None,
            )
            .unwrap()
        };
        assert_eq!(decide(&commitment), Verdict::Accept);
        assert!(matches!(decide(&tall), Verdict::Reject(_)));
        group.bench_function(BenchmarkId::new("honest", &name), |b| {
            b.iter(|| decide(&commitment))
        });
        group.bench_function(BenchmarkId::new("hostile", &name), |b| {
            b.iter(|| decide(&tall))
        });
    }
    group.finish();
}

fn opening_bytes(c: &mut Criterion) {
    let (prover, commitment, replay) = session();
    let limits = VerifierLimits::default();
    let mut group = c.benchmark_group("opening_bytes");
    group.sample_size(20);
    for k in [16u32, 256] {
        let params = ChallengeParams {
            samples: k,
            strategy: SamplingStrategy::Uniform,
            pow_bits: 0,
            attention: None,
        };
        let config = VerifierConfig {
            method: veritrace::protocol::LayerCheck::Recompute,
            mode: Mode::NonInteractive,
            params,
            rounds: 1,
            tolerance: TolerancePolicy::Exact,
        };
        let challenge = derive_challenge(&commitment, 0, &params, 0).unwrap();
        let bytes = prover
            .open_cells(0, &challenge.cells, 0)
            .unwrap()
            .to_bytes();
        group.bench_with_input(BenchmarkId::new("decoded", k), &k, |b, _| {
            b.iter(|| {
                let opening = Opening::from_bytes(black_box(&bytes)).unwrap();
                let v = verify_recorded_with_limits(
                    &commitment,
                    &config,
                    &limits,
                    None,
                    &[opening],
                    &replay,
                    None,
                )
                .unwrap();
                assert_eq!(v, Verdict::Accept);
            })
        });
        group.bench_with_input(BenchmarkId::new("streamed", k), &k, |b, _| {
            b.iter(|| {
                let reader = OpeningReader::new(black_box(&bytes[..]), bytes.len()).unwrap();
                let v = verify_recorded_streams(
                    &commitment,
                    &config,
                    &limits,
                    None,
                    vec![reader],
                    &replay,
                    None,
                )
                .unwrap();
                assert_eq!(v, Verdict::Accept);
            })
        });
        eprintln!("k = {k}: an opening of {} bytes", bytes.len());
    }
    group.finish();
}

criterion_group!(benches, protocol, hostile, opening_bytes);
criterion_main!(benches);
