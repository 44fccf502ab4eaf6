//! Hostile input: what a prover claims must not drive the verifier's time or memory.
//!
//! A counting global allocator tracks, per thread, the bytes live and their peak, so each test
//! measures the peak allocation of exactly the code it calls (tests run on parallel threads).
//!
//! * Claims of 2^32 − 1 layers (one token, chunk 1): every sampling strategy, and the verifier
//!   rejecting an empty or garbage opening, stay under a small allocation bound and return
//!   in milliseconds — with the default limits (refused up front) and with no limits at all.
//! * A statement with tokens at the limit and an opening missing cells: the peak is bounded
//!   by the limit check and the runs of the opening set, not by the claimed opening.
//! * Arbitrary and mutated bytes to every message decoder (binary and JSON): no panic, and a
//!   peak allocation within a small multiple of the input length plus a constant.
//! * `verifier_cost_figures` (run with `--ignored --nocapture`) prints the peak memory and time
//!   of verifying an honest session and hostile ones at the same k.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use veritrace_commit::{BatchProof, CellId, Digest, Dtype, HasherId, TraceGeometry};
use veritrace_protocol::tolerance::TolerancePolicy;
use veritrace_protocol::toy::ToyEngine;
use veritrace_protocol::transcript::derive_challenge;
use veritrace_protocol::{
    check_opening_with_limits, Challenge, ChallengeParams, Commitment, Dependency, Message, Mode,
    OpenedCell, Opening, OutputRule, Prover, RejectReason, SamplingStrategy, Statement, Step,
    Verdict, Verifier, VerifierConfig, VerifierLimits, PROTOCOL_VERSION,
};

// ---------------------------------------------------------------------------------------------
// a per-thread counting allocator

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

struct Counting;

fn track(delta: isize) {
    // `try_with`: the thread-locals may be gone while a thread shuts down
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result, the peak bytes it allocated above what was live when it
/// started (on this thread), and its time.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, Duration) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let t = Instant::now();
    let out = f();
    let time = t.elapsed();
    let peak = PEAK.with(Cell::get) - base;
    (out, peak.max(0) as usize, time)
}

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// statements

fn statement(
    layers: u32,
    n_in: usize,
    n_out: usize,
    hidden: u32,
    chunk: u32,
    dep: Dependency,
) -> Statement {
    let input: Vec<u32> = (0..n_in as u32).map(|i| 3 + 7 * (i % 1000)).collect();
    Statement {
        trace_level: veritrace_protocol::TraceLevel::Hidden,
        version: PROTOCOL_VERSION,
        model_digest: Digest([0xab; 32]),
        setup: b"toy/f32".to_vec(),
        geometry: TraceGeometry::new(layers, (n_in + n_out) as u32, hidden, chunk, Dtype::F32)
            .unwrap(),
        input_tokens: input,
        output_tokens: vec![7; n_out],
        hasher: HasherId::Blake3,
        dependency: dep,
        output_rule: OutputRule::Greedy,
        input_text: None,
        engine: None,
    }
}

/// The 404-byte-class commitment of the issue: 2^32 − 1 layers of one token, chunk 1.
fn tall_commitment() -> Commitment {
    Commitment {
        sublayer_roots: None,
        statement: statement(u32::MAX, 1, 0, 4, 1, Dependency::Causal),
        root: Digest([0x42; 32]),
    }
}

const STRATEGIES: [SamplingStrategy; 3] = [
    SamplingStrategy::Uniform,
    SamplingStrategy::Stratified,
    SamplingStrategy::CostWeighted,
];

fn config(mode: Mode, samples: u32, strategy: SamplingStrategy) -> VerifierConfig {
    VerifierConfig {
        method: veritrace_protocol::LayerCheck::Recompute,
        mode,
        params: ChallengeParams {
            samples,
            strategy,
            pow_bits: 0,
            attention: None,
        },
        rounds: 1,
        tolerance: TolerancePolicy::Exact,
    }
}

/// An opening that has the required cells with the right lengths (zeros) and an empty proof:
/// the most work a prover without the trace can make the verifier do.
fn forged_opening(c: &Commitment, round: u32, cells: &[CellId], nonce: u64) -> Opening {
    let g = &c.statement.geometry;
    Opening {
        sublayers: None,
        round,
        cells: c
            .statement
            .opening_cells(cells)
            .unwrap()
            .into_iter()
            .map(|cell| OpenedCell {
                cell,
                data: vec![0; g.cell_byte_range(cell).unwrap().len()],
            })
            .collect(),
        proof: BatchProof { siblings: vec![] },
        pow_nonce: nonce,
    }
}

fn empty_opening() -> Opening {
    Opening {
        sublayers: None,
        round: 0,
        cells: vec![],
        proof: BatchProof { siblings: vec![] },
        pow_nonce: 0,
    }
}

fn garbage_opening() -> Opening {
    Opening {
        sublayers: None,
        round: 0,
        cells: vec![OpenedCell {
            cell: CellId {
                layer: 77,
                chunk: 0,
            },
            data: vec![1; 16],
        }],
        proof: BatchProof {
            siblings: vec![Digest([3; 32]); 4],
        },
        pow_nonce: 0,
    }
}

/// A non-interactive session on one commitment and opening, to its verdict.
fn verify_ni(c: Commitment, cfg: VerifierConfig, limits: VerifierLimits, o: &Opening) -> Verdict {
    let mut rng = ChaCha20Rng::from_seed([0; 32]);
    let mut v = Verifier::with_limits(cfg, ToyEngine::default(), limits).unwrap();
    match v.receive_commitment(c, &mut rng) {
        Step::Decided(v) => return v,
        Step::AwaitOpening => {}
        Step::Challenge(_) => unreachable!("non-interactive"),
    }
    match v.receive_opening(o, &mut rng) {
        Step::Decided(v) => v,
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// (a) 2^32 − 1 layers

#[test]
fn a_claim_of_four_billion_layers_is_sampled_in_bounded_memory_and_time() {
    let c = tall_commitment();
    for strategy in STRATEGIES {
        for k in [1u32, 64, 1000] {
            let params = ChallengeParams {
                samples: k,
                strategy,
                pow_bits: 0,
                attention: None,
            };
            let (challenge, peak, time) = measure(|| derive_challenge(&c, 0, &params, 0));
            let challenge = challenge.unwrap();
            assert_eq!(challenge.cells.len(), k as usize);
            assert!(peak < 2 * MIB, "{strategy:?} k={k}: {peak} bytes");
            assert!(
                time < Duration::from_secs(1),
                "{strategy:?} k={k}: {time:?}"
            );
        }
    }
}

#[test]
fn a_claim_of_four_billion_layers_is_rejected_in_bounded_memory_and_time() {
    for strategy in STRATEGIES {
        for (limits, opening) in [
            (VerifierLimits::default(), empty_opening()),
            (VerifierLimits::UNLIMITED, empty_opening()),
            (VerifierLimits::UNLIMITED, garbage_opening()),
        ] {
            let c = tall_commitment();
            let cfg = config(Mode::NonInteractive, 64, strategy);
            let (verdict, peak, time) = measure(|| verify_ni(c, cfg, limits, &opening));
            let reason = match verdict {
                Verdict::Reject(r) => r,
                Verdict::Accept => panic!("accepted"),
            };
            if limits == VerifierLimits::default() {
                assert!(
                    matches!(&reason, RejectReason::GeometryMismatch { detail } if detail.contains("limit")),
                    "{reason:?}"
                );
            } else {
                assert!(
                    matches!(
                        reason,
                        RejectReason::MissingCell { .. } | RejectReason::UnexpectedCell { .. }
                    ),
                    "{reason:?}"
                );
            }
            assert!(peak < 2 * MIB, "{strategy:?}: {peak} bytes");
            assert!(time < Duration::from_secs(1), "{strategy:?}: {time:?}");
        }
        // interactive: the challenge is drawn in bounded memory too
        let mut rng = ChaCha20Rng::from_seed([1; 32]);
        let mut v = Verifier::with_limits(
            config(Mode::Interactive, 64, strategy),
            ToyEngine::default(),
            VerifierLimits::UNLIMITED,
        )
        .unwrap();
        let (step, peak, _) = measure(|| v.receive_commitment(tall_commitment(), &mut rng));
        assert!(matches!(step, Step::Challenge(_)), "{step:?}");
        assert!(peak < 2 * MIB, "{strategy:?}: {peak} bytes");
        let (step, peak, _) = measure(|| v.receive_opening(&empty_opening(), &mut rng));
        assert!(
            matches!(step, Step::Decided(Verdict::Reject(_))),
            "{step:?}"
        );
        assert!(peak < 2 * MIB, "{peak} bytes");
    }
}

// ---------------------------------------------------------------------------------------------
// (b) many tokens, an opening missing cells

#[test]
fn many_tokens_and_missing_cells_cost_the_runs_not_the_claim() {
    let tokens = VerifierLimits::DEFAULT.max_tokens as usize;
    for dep in [
        Dependency::Causal,
        Dependency::Bidirectional,
        Dependency::Window { size: 4096 },
    ] {
        let c = Commitment {
            sublayer_roots: None,
            statement: statement(8, tokens, 0, 1024, 1, dep),
            root: Digest([0x42; 32]),
        };
        let message = 4 * tokens; // the statement's token list, which the transcript copies once
        for strategy in STRATEGIES {
            let params = ChallengeParams {
                samples: 256,
                strategy,
                pow_bits: 0,
                attention: None,
            };
            let challenge = derive_challenge(&c, 0, &params, 0).unwrap();
            let required = c.statement.opening_ranges(&challenge.cells).unwrap();
            let needed: u64 = required.iter().map(|r| r.len()).sum();
            assert!(needed > 1 << 19, "{dep:?} {strategy:?}: {needed} cells");
            for opening in [empty_opening(), garbage_opening()] {
                let (checked, peak, time) = measure(|| {
                    check_opening_with_limits(
                        &c,
                        &challenge.cells,
                        &opening,
                        &TolerancePolicy::Exact,
                        &ToyEngine::default(),
                        &VerifierLimits::UNLIMITED,
                    )
                });
                let reason = checked.unwrap_err();
                assert!(
                    matches!(
                        reason,
                        RejectReason::MissingCell { .. } | RejectReason::UnexpectedCell { .. }
                    ),
                    "{reason:?}"
                );
                assert!(
                    peak < MIB,
                    "{dep:?} {strategy:?}: {peak} bytes for {needed} cells"
                );
                assert!(time < Duration::from_millis(500), "{time:?}");
            }
            // the default limits refuse what they cannot afford (here: 2^30 bytes per layer
            // run of 1024-wide f32 rows), before any cell is listed
            let (checked, peak, _) = measure(|| {
                check_opening_with_limits(
                    &c,
                    &challenge.cells,
                    &empty_opening(),
                    &TolerancePolicy::Exact,
                    &ToyEngine::default(),
                    &VerifierLimits::default(),
                )
            });
            match checked.unwrap_err() {
                RejectReason::GeometryMismatch { detail } => {
                    assert!(detail.contains("opening bytes"), "{detail}")
                }
                RejectReason::MissingCell { .. } => {}
                other => panic!("{other:?}"),
            }
            assert!(peak < MIB, "{peak}");
            // the whole session, transcript included: the token list is copied once
            let cfg = config(Mode::NonInteractive, 256, strategy);
            let (_, peak, time) =
                measure(|| verify_ni(c.clone(), cfg, VerifierLimits::UNLIMITED, &empty_opening()));
            assert!(peak < 2 * message + 2 * MIB, "{peak}");
            assert!(time < Duration::from_secs(2), "{time:?}");
        }
    }
    // tokens above the limit: refused at the commitment, whatever the opening
    let c = Commitment {
        sublayer_roots: None,
        statement: statement(2, tokens + 1, 0, 4, 1, Dependency::Causal),
        root: Digest([0x42; 32]),
    };
    let v = verify_ni(
        c,
        config(Mode::NonInteractive, 4, SamplingStrategy::Uniform),
        VerifierLimits::default(),
        &empty_opening(),
    );
    assert!(
        matches!(&v, Verdict::Reject(RejectReason::GeometryMismatch { detail }) if detail.contains("tokens")),
        "{v:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// (c) decoders

fn valid_messages() -> Vec<(&'static str, Vec<u8>, String)> {
    let s = statement(3, 6, 2, 4, 3, Dependency::Window { size: 2 });
    let engine = ToyEngine::default();
    let mut s2 = s.clone();
    s2.output_tokens = engine
        .generate(s.dependency, 3, 4, &s.input_tokens, 2)
        .unwrap();
    let mut p = Prover::new(s2.clone(), engine.trace_bytes(&s2).unwrap()).unwrap();
    let c = p.commit().unwrap();
    let ch = Challenge {
        round: 0,
        cells: vec![CellId { layer: 1, chunk: 1 }, CellId { layer: 2, chunk: 0 }],
        attention: None,
    };
    let o = p.open(&ch).unwrap();
    let v = Verdict::Reject(RejectReason::MissingCell {
        cell: CellId { layer: 1, chunk: 2 },
    });
    vec![
        ("statement", s2.to_bytes(), s2.to_json()),
        ("commitment", c.to_bytes(), c.to_json()),
        ("challenge", ch.to_bytes(), ch.to_json()),
        ("opening", o.to_bytes(), o.to_json()),
        ("verdict", v.to_bytes(), v.to_json()),
    ]
}

/// Decodes `bytes` as every message, binary and (when UTF-8) JSON; returns the peak allocation.
fn decode_all(bytes: &[u8]) -> usize {
    let (_, peak, _) = measure(|| {
        let _ = Statement::from_bytes(bytes);
        let _ = Commitment::from_bytes(bytes);
        let _ = Challenge::from_bytes(bytes);
        let _ = Opening::from_bytes(bytes);
        let _ = Verdict::from_bytes(bytes);
        if let Ok(text) = std::str::from_utf8(bytes) {
            let _ = Statement::from_json(text);
            let _ = Commitment::from_json(text);
            let _ = Challenge::from_json(text);
            let _ = Opening::from_json(text);
            let _ = Verdict::from_json(text);
        }
    });
    peak
}

/// Peak allowed for decoding `len` bytes: serde preallocates at most 1 MiB for a sequence whose
/// length prefix it cannot trust, and decoded values are at most a small multiple of the input.
fn decode_bound(len: usize) -> usize {
    16 * len + 2 * MIB
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_or_balloon(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let peak = decode_all(&bytes);
        prop_assert!(peak <= decode_bound(bytes.len()), "{} bytes: peak {}", bytes.len(), peak);
        // the same bytes behind a valid envelope of each kind
        for kind in 1u8..=5 {
            let mut framed = b"VTPM\x02".to_vec();
            framed.push(kind);
            framed.extend_from_slice(&bytes);
            let peak = decode_all(&framed);
            prop_assert!(peak <= decode_bound(framed.len()), "kind {}: peak {}", kind, peak);
        }
    }

    #[test]
    fn mutated_messages_never_panic_or_balloon(
        which in 0usize..5,
        json in any::<bool>(),
        edits in proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..4), 1..8),
    ) {
        let all = valid_messages();
        let (_, binary, text) = &all[which];
        let mut bytes = if json { text.clone().into_bytes() } else { binary.clone() };
        for (at, value, op) in edits {
            let at = usize::from(at) % (bytes.len() + 1);
            match op {
                0 if at < bytes.len() => bytes[at] = value,
                1 => bytes.insert(at, value),
                2 if at < bytes.len() => { bytes.remove(at); }
                // a huge varint, claiming a length of ~2^63
                _ => bytes.splice(at..at, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).for_each(drop),
            }
        }
        let peak = decode_all(&bytes);
        prop_assert!(peak <= decode_bound(bytes.len()), "{} bytes: peak {}", bytes.len(), peak);
    }
}

#[test]
fn valid_messages_decode() {
    for (name, binary, text) in valid_messages() {
        let peak = decode_all(&binary);
        assert!(peak <= decode_bound(binary.len()), "{name}: {peak}");
        let peak = decode_all(text.as_bytes());
        assert!(peak <= decode_bound(text.len()), "{name}: {peak}");
    }
}

// ---------------------------------------------------------------------------------------------
// figures

/// An honest non-interactive session of the toy engine: commitment and round-0 opening.
fn honest_session(k: u32, strategy: SamplingStrategy) -> (Commitment, Opening) {
    let engine = ToyEngine::default();
    let mut s = statement(8, 120, 8, 64, 4, Dependency::Causal);
    s.output_tokens = engine
        .generate(s.dependency, 8, 64, &s.input_tokens, 8)
        .unwrap();
    let mut p = Prover::new(s.clone(), engine.trace_bytes(&s).unwrap()).unwrap();
    let c = p.commit().unwrap();
    let params = ChallengeParams {
        samples: k,
        strategy,
        pow_bits: 0,
        attention: None,
    };
    let (_, o) = p.open_non_interactive(&params).unwrap();
    (c, o)
}

/// A hostile session: the commitment and a forged opening of exactly the required cells
/// (right lengths, zero data, no proof), the most a prover without a trace can make the
/// verifier check.
fn hostile_session(c: Commitment, k: u32, strategy: SamplingStrategy) -> (Commitment, Opening) {
    let params = ChallengeParams {
        samples: k,
        strategy,
        pow_bits: 0,
        attention: None,
    };
    let ch = derive_challenge(&c, 0, &params, 0).unwrap();
    let o = forged_opening(&c, 0, &ch.cells, 0);
    (c, o)
}

/// An honest non-interactive session with tokens at the limit (2 layers, window 8, hidden 4,
/// chunk 64; no output tokens), the honest counterpart of a claim of that many tokens.
fn honest_long_session(k: u32, strategy: SamplingStrategy) -> (Commitment, Opening) {
    let engine = ToyEngine::default();
    let tokens = VerifierLimits::DEFAULT.max_tokens as usize;
    let s = statement(2, tokens, 0, 4, 64, Dependency::Window { size: 8 });
    let mut p = Prover::new(s.clone(), engine.trace_bytes(&s).unwrap()).unwrap();
    let c = p.commit().unwrap();
    let params = ChallengeParams {
        samples: k,
        strategy,
        pow_bits: 0,
        attention: None,
    };
    let (_, o) = p.open_non_interactive(&params).unwrap();
    (c, o)
}

fn run(
    c: &Commitment,
    o: &Opening,
    k: u32,
    strategy: SamplingStrategy,
    limits: VerifierLimits,
) -> (String, usize, Duration) {
    let cfg = config(Mode::NonInteractive, k, strategy);
    // best of 3 for the time; the peak is deterministic
    let mut best = (String::new(), 0, Duration::MAX);
    for _ in 0..3 {
        let c = c.clone();
        let (v, peak, time) = measure(|| verify_ni(c, cfg.clone(), limits, o));
        if time < best.2 {
            best = (v.name().to_string(), peak, time);
        }
    }
    best
}

#[test]
fn hostile_sessions_cost_about_an_honest_one() {
    figures(false);
}

#[test]
#[ignore = "prints the figures of BENCHMARKS.md; run with --ignored --nocapture"]
fn verifier_cost_figures() {
    figures(true);
}

fn figures(print: bool) {
    let k = 32;
    for strategy in STRATEGIES {
        let (hc, ho) = honest_session(k, strategy);
        let honest = run(&hc, &ho, k, strategy, VerifierLimits::default());
        assert_eq!(honest.0, "Accept");
        let (lc, lo) = honest_long_session(k, strategy);
        let long = run(&lc, &lo, k, strategy, VerifierLimits::default());
        assert_eq!(long.0, "Accept");
        let tall = hostile_session(tall_commitment(), k, strategy);
        let wide = Commitment {
            sublayer_roots: None,
            statement: statement(
                8,
                VerifierLimits::DEFAULT.max_tokens as usize,
                0,
                64,
                4,
                Dependency::Causal,
            ),
            root: Digest([0x42; 32]),
        };
        let rows = [
            (
                "honest (8 layers, 128 tokens, d 64, chunk 4)",
                honest.clone(),
            ),
            (
                "2^32-1 layers, default limits",
                run(&tall.0, &tall.1, k, strategy, VerifierLimits::default()),
            ),
            (
                "2^32-1 layers, no limits, forged opening",
                run(&tall.0, &tall.1, k, strategy, VerifierLimits::UNLIMITED),
            ),
            (
                "2^32-1 layers, no limits, empty opening",
                run(
                    &tall.0,
                    &empty_opening(),
                    k,
                    strategy,
                    VerifierLimits::UNLIMITED,
                ),
            ),
            (
                "2^20 tokens, default limits, empty opening",
                run(
                    &wide,
                    &empty_opening(),
                    k,
                    strategy,
                    VerifierLimits::default(),
                ),
            ),
        ];
        if print {
            let (_, peak, time) = &long;
            println!(
                "{strategy:?} k={k} | honest (2 layers, 2^20 tokens, window 8, d 4, chunk 64) | Accept | peak {:.1} KiB | {:.3} ms",
                *peak as f64 / 1024.0,
                time.as_secs_f64() * 1e3
            );
            let (_, wpeak, wtime) = &rows[4].1;
            println!(
                "{strategy:?} k={k} | 2^20-token claim vs the honest 2^20-token session | peak {:.2}x | time {:.2}x",
                *wpeak as f64 / *peak as f64,
                wtime.as_secs_f64() / time.as_secs_f64()
            );
        }
        // the claim of 2^20 tokens: within 2x of an honest session with as many tokens (both
        // hash the statement's token list into the transcript)
        assert!(rows[4].1 .1 <= 2 * long.1, "{} vs {}", rows[4].1 .1, long.1);
        for (name, (verdict, peak, time)) in &rows {
            if print {
                println!(
                    "{strategy:?} k={k} | {name} | {verdict} | peak {:.1} KiB ({:.2}x honest) | {:.3} ms ({:.2}x honest)",
                    *peak as f64 / 1024.0,
                    *peak as f64 / honest.1 as f64,
                    time.as_secs_f64() * 1e3,
                    time.as_secs_f64() / honest.2.as_secs_f64(),
                );
            }
        }
        // the 2^32-layer claims: within 2x of the honest session's peak
        for (name, (_, peak, _)) in &rows[1..4] {
            assert!(
                *peak <= 2 * honest.1,
                "{strategy:?} {name}: {peak} vs {}",
                honest.1
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the limits themselves

#[test]
fn limits_are_configurable_typed_and_checked_first() {
    // JSON: every field optional, unknown fields refused
    let limits: VerifierLimits = serde_json::from_str("{}").unwrap();
    assert_eq!(limits, VerifierLimits::default());
    let limits: VerifierLimits = serde_json::from_str(r#"{"max_layers": 10}"#).unwrap();
    assert_eq!(limits.max_layers, 10);
    assert_eq!(limits.max_tokens, VerifierLimits::DEFAULT.max_tokens);
    assert!(serde_json::from_str::<VerifierLimits>(r#"{"max_layer": 10}"#).is_err());
    assert_eq!(VerifierLimits::UNLIMITED.message_limit(), usize::MAX);

    // a configured k above the limit is refused when the verifier is built (bad input)
    let small = VerifierLimits {
        max_samples: 8,
        ..VerifierLimits::default()
    };
    let e = Verifier::with_limits(
        config(Mode::NonInteractive, 9, SamplingStrategy::Uniform),
        ToyEngine::default(),
        small,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            veritrace_protocol::ProtocolError::LimitExceeded {
                what: "challenged cells",
                limit: 8,
                claimed: 9
            }
        ),
        "{e}"
    );
    assert!(e.is_input());

    // the opening's size is checked from the runs: cells, then bytes
    let c = Commitment {
        sublayer_roots: None,
        statement: statement(4, 64, 0, 4, 1, Dependency::Bidirectional),
        root: Digest([0x42; 32]),
    };
    let challenged = [CellId { layer: 2, chunk: 5 }];
    for (limits, what) in [
        (
            VerifierLimits {
                max_opening_cells: 64,
                ..VerifierLimits::default()
            },
            "opening cells of 65 exceeds the verifier's limit of 64",
        ),
        (
            VerifierLimits {
                max_opening_bytes: 65 * 16 - 1,
                ..VerifierLimits::default()
            },
            "opening bytes of 1040 exceeds the verifier's limit of 1039",
        ),
        (
            VerifierLimits {
                max_layers: 3,
                ..VerifierLimits::default()
            },
            "layers of 4 exceeds the verifier's limit of 3",
        ),
        (
            VerifierLimits {
                max_cells: 255,
                ..VerifierLimits::default()
            },
            "cells of 256 exceeds the verifier's limit of 255",
        ),
    ] {
        // even a complete, correctly sized opening is not looked at
        let opening = forged_opening(&c, 0, &challenged, 0);
        let reason = check_opening_with_limits(
            &c,
            &challenged,
            &opening,
            &TolerancePolicy::Exact,
            &ToyEngine::default(),
            &limits,
        )
        .unwrap_err();
        match reason {
            RejectReason::GeometryMismatch { detail } => assert!(detail.contains(what), "{detail}"),
            other => panic!("{other:?}"),
        }
    }
    // within the limits the same opening gets to the proof
    let opening = forged_opening(&c, 0, &challenged, 0);
    let reason = check_opening_with_limits(
        &c,
        &challenged,
        &opening,
        &TolerancePolicy::Exact,
        &ToyEngine::default(),
        &VerifierLimits::default(),
    )
    .unwrap_err();
    assert_eq!(reason.name(), "BadProof");
}
