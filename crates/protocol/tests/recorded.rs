//! Offline checking of recorded sessions ([`verify_recorded`]) gives the verdict of the live
//! state machine ([`Verifier`]) on the same messages, honest or tampered, in both modes.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use veritrace_commit::{Digest, Dtype, HasherId, TraceGeometry};
use veritrace_protocol::tolerance::TolerancePolicy;
use veritrace_protocol::toy::ToyEngine;
use veritrace_protocol::transcript::{check_pow, find_pow_nonce};
use veritrace_protocol::{
    verify_recorded, verify_recorded_with_limits, Challenge, ChallengeParams, Commitment,
    Dependency, Mode, Opening, OutputRule, ProtocolError, Prover, RejectReason, SamplingStrategy,
    Statement, Step, Verdict, Verifier, VerifierConfig, VerifierLimits, PROTOCOL_VERSION,
};

fn statement(dep: Dependency, layers: u32, n_in: usize, n_out: usize, chunk: u32) -> Statement {
    let input: Vec<u32> = (0..n_in as u32).map(|i| 3 + 7 * i).collect();
    let output = ToyEngine::default()
        .generate(dep, layers, 4, &input, n_out)
        .unwrap();
    Statement {
        trace_level: veritrace_protocol::TraceLevel::Hidden,
        version: PROTOCOL_VERSION,
        model_digest: Digest([0xab; 32]),
        setup: b"toy/f32".to_vec(),
        geometry: TraceGeometry::new(layers, (n_in + n_out) as u32, 4, chunk, Dtype::F32).unwrap(),
        input_tokens: input,
        output_tokens: output,
        hasher: HasherId::Blake3,
        dependency: dep,
        output_rule: OutputRule::Greedy,
        input_text: None,
        engine: None,
    }
}

fn config(
    mode: Mode,
    samples: u32,
    strategy: SamplingStrategy,
    pow_bits: u8,
    rounds: u32,
) -> VerifierConfig {
    VerifierConfig {
        method: veritrace_protocol::LayerCheck::Recompute,
        mode,
        params: ChallengeParams {
            samples,
            strategy,
            pow_bits,
            attention: None,
        },
        rounds,
        tolerance: TolerancePolicy::Exact,
    }
}

/// An honest session: the commitment, the challenges (interactive: drawn by a live verifier
/// keyed by `rng_seed`) and the openings.
fn honest(
    s: &Statement,
    cfg: &VerifierConfig,
    rng_seed: [u8; 32],
) -> (Commitment, Vec<Challenge>, Vec<Opening>) {
    let engine = ToyEngine::default();
    let mut prover = Prover::new(s.clone(), engine.trace_bytes(s).unwrap()).unwrap();
    let commitment = prover.commit().unwrap();
    let mut challenges = Vec::new();
    let mut openings = Vec::new();
    match cfg.mode {
        Mode::Interactive => {
            let mut rng = ChaCha20Rng::from_seed(rng_seed);
            let mut v = Verifier::new(cfg.clone(), engine).unwrap();
            let mut step = v.receive_commitment(commitment.clone(), &mut rng);
            while let Step::Challenge(c) = step {
                let o = prover.open(&c).unwrap();
                challenges.push(c);
                step = v.receive_opening(&o, &mut rng);
                openings.push(o);
            }
            assert_eq!(step, Step::Decided(Verdict::Accept));
        }
        Mode::NonInteractive => {
            for _ in 0..cfg.rounds {
                let (c, o) = prover.open_non_interactive(&cfg.params).unwrap();
                challenges.push(c);
                openings.push(o);
            }
        }
    }
    (commitment, challenges, openings)
}

/// The live state machine's verdict on these openings (interactive: keyed as in `honest`).
fn live(
    cfg: &VerifierConfig,
    rng_seed: [u8; 32],
    commitment: &Commitment,
    openings: &[Opening],
) -> Verdict {
    let mut rng = ChaCha20Rng::from_seed(rng_seed);
    let mut v = Verifier::new(cfg.clone(), ToyEngine::default()).unwrap();
    let mut step = v.receive_commitment(commitment.clone(), &mut rng);
    for o in openings {
        if let Step::Decided(v) = step {
            return v;
        }
        step = v.receive_opening(o, &mut rng);
    }
    match step {
        Step::Decided(v) => v,
        _ => Verdict::Reject(RejectReason::OutOfOrder {
            state: v.state().name().to_string(),
            message: format!(
                "end of the recorded session: {} of {} rounds answered",
                openings.len(),
                cfg.rounds
            ),
        }),
    }
}

fn recorded(
    cfg: &VerifierConfig,
    c: &Commitment,
    challenges: &[Challenge],
    openings: &[Opening],
) -> Verdict {
    let recorded = match cfg.mode {
        Mode::Interactive => Some(challenges),
        Mode::NonInteractive => None,
    };
    verify_recorded(c, cfg, recorded, openings, &ToyEngine::default(), None).unwrap()
}

/// One tampering of a session's openings, chosen by `r`.
fn tamper(openings: &mut [Opening], r: &mut ChaCha20Rng) -> &'static str {
    let i = (r.next_u32() as usize) % openings.len();
    let o = &mut openings[i];
    match r.next_u32() % 7 {
        0 => {
            let cell = (r.next_u32() as usize) % o.cells.len();
            let data = &mut o.cells[cell].data;
            let b = (r.next_u32() as usize) % data.len();
            data[b] ^= 1 << (r.next_u32() % 8);
            "flip a bit"
        }
        1 => {
            let cell = (r.next_u32() as usize) % o.cells.len();
            o.cells.remove(cell);
            "drop a cell"
        }
        2 => {
            o.round += 1;
            "change the round"
        }
        3 => {
            o.pow_nonce += 1;
            "change the nonce"
        }
        4 => {
            if let Some(d) = o.proof.siblings.first_mut() {
                d.0[0] ^= 1;
            }
            "change the proof"
        }
        5 => {
            if o.cells.len() > 1 {
                o.cells.swap(0, 1);
            }
            "swap cells"
        }
        _ => {
            let cell = (r.next_u32() as usize) % o.cells.len();
            o.cells[cell].data.pop();
            "shorten a cell"
        }
    }
}

#[test]
fn recorded_sessions_get_the_live_verdict() {
    let mut r = ChaCha20Rng::from_seed([7; 32]);
    let deps = [
        Dependency::Causal,
        Dependency::Window { size: 3 },
        Dependency::Causal,
    ];
    let strategies = [
        SamplingStrategy::Uniform,
        SamplingStrategy::Stratified,
        SamplingStrategy::CostWeighted,
    ];
    let mut rejected = 0;
    for case in 0..36u32 {
        let dep = deps[(case % 3) as usize];
        let strategy = strategies[((case / 3) % 3) as usize];
        let mode = if case % 2 == 0 {
            Mode::Interactive
        } else {
            Mode::NonInteractive
        };
        let pow_bits = if mode == Mode::NonInteractive {
            (case % 4) as u8
        } else {
            0
        };
        let s = statement(dep, 3, 5, 3, 2);
        let cfg = config(mode, 1 + case % 5, strategy, pow_bits, 1 + case % 3);
        let seed = [case as u8; 32];
        let (c, challenges, openings) = honest(&s, &cfg, seed);
        assert_eq!(
            recorded(&cfg, &c, &challenges, &openings),
            Verdict::Accept,
            "case {case}"
        );
        assert_eq!(live(&cfg, seed, &c, &openings), Verdict::Accept);
        for _ in 0..6 {
            let mut bad = openings.clone();
            let what = tamper(&mut bad, &mut r);
            let want = live(&cfg, seed, &c, &bad);
            let got = recorded(&cfg, &c, &challenges, &bad);
            assert_eq!(got, want, "case {case}: {what}");
            if !got.is_accept() {
                rejected += 1;
            }
        }
        // fewer openings than rounds: the live verifier is still waiting
        if cfg.rounds > 1 {
            let n = openings.len() - 1;
            let got = recorded(&cfg, &c, &challenges[..n], &openings[..n]);
            assert_eq!(got, live(&cfg, seed, &c, &openings[..n]));
            assert_eq!(got.name(), "OutOfOrder", "{got:?}");
        }
    }
    assert!(rejected > 150, "{rejected}");
}

#[test]
fn interactive_nonzero_nonce_is_bad_proof_of_work() {
    let s = statement(Dependency::Causal, 3, 5, 3, 2);
    let cfg = config(Mode::Interactive, 3, SamplingStrategy::Uniform, 0, 2);
    let (c, challenges, mut openings) = honest(&s, &cfg, [1; 32]);
    openings[1].pow_nonce = 5;
    let want = Verdict::Reject(RejectReason::BadProofOfWork {
        pow_bits: 0,
        nonce: 5,
    });
    assert_eq!(recorded(&cfg, &c, &challenges, &openings), want);
    assert_eq!(live(&cfg, [1; 32], &c, &openings), want);
}

#[test]
fn non_interactive_rounds_share_one_nonce() {
    let s = statement(Dependency::Causal, 3, 5, 3, 2);
    let cfg = config(Mode::NonInteractive, 3, SamplingStrategy::Uniform, 3, 3);
    let (c, challenges, mut openings) = honest(&s, &cfg, [0; 32]);
    let nonce = find_pow_nonce(&c, &cfg.params).unwrap();
    let other = (nonce + 1..)
        .find(|&n| check_pow(&c, &cfg.params, n).unwrap())
        .unwrap();
    openings[2].pow_nonce = other;
    let want = Verdict::Reject(RejectReason::BadProofOfWork {
        pow_bits: 3,
        nonce: other,
    });
    assert_eq!(recorded(&cfg, &c, &challenges, &openings), want);
    assert_eq!(live(&cfg, [0; 32], &c, &openings), want);
}

#[test]
fn inconsistent_records_are_bad_input() {
    let s = statement(Dependency::Causal, 3, 5, 3, 2);
    let engine = ToyEngine::default();
    let cfg = config(Mode::Interactive, 3, SamplingStrategy::Uniform, 0, 2);
    let (c, challenges, openings) = honest(&s, &cfg, [2; 32]);
    let input = |e: ProtocolError| assert!(e.is_input(), "{e}");
    // no challenges, too few challenges, a challenge out of place, an invalid one
    input(verify_recorded(&c, &cfg, None, &openings, &engine, None).unwrap_err());
    input(verify_recorded(&c, &cfg, Some(&challenges[..1]), &openings, &engine, None).unwrap_err());
    let mut swapped = challenges.clone();
    swapped.swap(0, 1);
    input(verify_recorded(&c, &cfg, Some(&swapped), &openings, &engine, None).unwrap_err());
    let mut empty = challenges.clone();
    empty[0].cells.clear();
    input(verify_recorded(&c, &cfg, Some(&empty), &openings, &engine, None).unwrap_err());
    // more openings than rounds
    let one = config(Mode::Interactive, 3, SamplingStrategy::Uniform, 0, 1);
    input(verify_recorded(&c, &one, Some(&challenges), &openings, &engine, None).unwrap_err());
    // challenges given in non-interactive mode; samples = 0 with proof of work
    let ni = config(Mode::NonInteractive, 3, SamplingStrategy::Uniform, 0, 2);
    input(verify_recorded(&c, &ni, Some(&challenges), &openings, &engine, None).unwrap_err());
    let zero = config(Mode::NonInteractive, 0, SamplingStrategy::Uniform, 6, 2);
    input(verify_recorded(&c, &zero, None, &openings, &engine, None).unwrap_err());
    // a recorded challenge above the sample limit
    let limits = VerifierLimits {
        max_samples: 3,
        ..VerifierLimits::default()
    };
    let mut long = challenges.clone();
    long[0].cells = (0..4).map(|i| s.geometry.cell_at(i).unwrap()).collect();
    let e = verify_recorded_with_limits(&c, &cfg, &limits, Some(&long), &openings, &engine, None)
        .unwrap_err();
    assert!(matches!(e, ProtocolError::LimitExceeded { .. }), "{e}");
    // an expected statement that differs
    let mut other = s.clone();
    other.setup = b"other".to_vec();
    let v = verify_recorded(
        &c,
        &cfg,
        Some(&challenges),
        &openings,
        &engine,
        Some(&other),
    )
    .unwrap();
    assert_eq!(v.name(), "GeometryMismatch");
    let v = verify_recorded(&c, &cfg, Some(&challenges), &openings, &engine, Some(&s)).unwrap();
    assert_eq!(v, Verdict::Accept);
}
