//! Openings read as they arrive ([`OpeningReader`], [`verify_recorded_streams`],
//! [`Verifier::receive_opening_stream`]) are judged exactly as decoded openings are: the same
//! verdict on honest and tampered sessions in both modes, at both trace levels, and the same
//! refusal of malformed bytes, including a malformed opening after the session is decided.

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use veritrace_commit::{Digest, Dtype, HasherId, TraceGeometry};
use veritrace_protocol::encoding::{MAX_MESSAGE_BYTES, MESSAGE_VERSION};
use veritrace_protocol::stream::OpeningReader;
use veritrace_protocol::tolerance::TolerancePolicy;
use veritrace_protocol::toy::ToyEngine;
use veritrace_protocol::{
    verify_recorded_streams, verify_recorded_with_limits, Challenge, ChallengeParams, Commitment,
    Dependency, LayerCheck, Message, Mode, Opening, OutputRule, ProtocolError, Prover,
    SamplingStrategy, Statement, Step, TraceLevel, Verdict, Verifier, VerifierConfig,
    VerifierLimits, PROTOCOL_VERSION,
};

const HIDDEN: u32 = 4;

fn statement(dependency: Dependency, level: TraceLevel, layers: u32, chunk: u32) -> Statement {
    let n_out = if dependency == Dependency::Bidirectional {
        0
    } else {
        4
    };
    let input: Vec<u32> = (0..13 - n_out as u32).map(|i| 5 + 11 * i).collect();
    let output = ToyEngine::default()
        .generate(dependency, layers, HIDDEN as usize, &input, n_out)
        .unwrap();
    Statement {
        version: PROTOCOL_VERSION,
        model_digest: Digest([0xcd; 32]),
        setup: b"toy/f32".to_vec(),
        geometry: TraceGeometry::new(layers, 13, HIDDEN, chunk, Dtype::F32).unwrap(),
        input_tokens: input,
        output_tokens: output,
        hasher: HasherId::Blake3,
        dependency,
        output_rule: OutputRule::Greedy,
        input_text: None,
        engine: None,
        trace_level: level,
    }
}

/// A recorded session: the commitment, the challenges (interactive) and the openings of a
/// prover whose trace may be cheated on before the commitment.
struct Session {
    config: VerifierConfig,
    commitment: Commitment,
    challenges: Vec<Challenge>,
    openings: Vec<Opening>,
}

fn session(case: u64, cheat: bool) -> Session {
    let mut r = ChaCha20Rng::seed_from_u64(case);
    let dependency = match case % 3 {
        0 => Dependency::Causal,
        1 => Dependency::Bidirectional,
        _ => Dependency::Window { size: 4 },
    };
    let level = if case % 4 == 3 {
        TraceLevel::SubLayer {
            context: HIDDEN,
            cell: HIDDEN,
            dtype: Dtype::F32,
        }
    } else {
        TraceLevel::Hidden
    };
    let s = statement(
        dependency,
        level,
        2 + (case % 5) as u32,
        1 + (case % 3) as u32,
    );
    let engine = ToyEngine::default();
    let mut trace = engine.trace_bytes(&s).unwrap();
    if cheat {
        let l = (r.next_u32() as usize) % trace.len();
        let i = (r.next_u32() as usize) % (trace[l].len() / 4) * 4;
        let v = if r.next_u32() % 2 == 0 { f32::NAN } else { 0.5 };
        trace[l][i..i + 4].copy_from_slice(&v.to_le_bytes());
    }
    let mut prover = Prover::new(s.clone(), trace).unwrap();
    let method = if level == TraceLevel::Hidden {
        LayerCheck::Recompute
    } else {
        let (context, cell) = engine.sublayer_bytes(&s).unwrap();
        prover = prover.with_sublayers(context, cell).unwrap();
        LayerCheck::Both
    };
    let mode = if case.is_multiple_of(2) {
        Mode::Interactive
    } else {
        Mode::NonInteractive
    };
    let config = VerifierConfig {
        method,
        mode,
        params: ChallengeParams {
            samples: 1 + (case % 4) as u32,
            strategy: SamplingStrategy::Uniform,
            pow_bits: 0,
            attention: None,
        },
        rounds: 1 + (case % 3) as u32,
        tolerance: TolerancePolicy::Exact,
    };
    let commitment = prover.commit().unwrap();
    let mut challenges = Vec::new();
    let mut openings = Vec::new();
    for round in 0..config.rounds {
        match mode {
            Mode::Interactive => {
                let mut seed = [0u8; 32];
                r.fill_bytes(&mut seed);
                let cells = veritrace_protocol::sampling::sample_cells(
                    &s,
                    config.params.samples,
                    SamplingStrategy::Uniform,
                    seed,
                )
                .unwrap();
                let challenge = Challenge {
                    round,
                    cells,
                    attention: None,
                };
                openings.push(prover.open(&challenge).unwrap());
                challenges.push(challenge);
            }
            Mode::NonInteractive => {
                let (_, o) = prover.open_non_interactive(&config.params).unwrap();
                openings.push(o);
            }
        }
    }
    Session {
        config,
        commitment,
        challenges,
        openings,
    }
}

/// The verdict on the decoded openings and on their bytes read as streams (`Err` when the
/// bytes do not decode).
fn both(
    s: &Session,
    bytes: &[Vec<u8>],
) -> (
    Result<Verdict, ProtocolError>,
    Result<Verdict, ProtocolError>,
) {
    let recorded = (s.config.mode == Mode::Interactive).then_some(&s.challenges[..]);
    let limits = VerifierLimits::default();
    let engine = ToyEngine::default();
    let decoded = bytes
        .iter()
        .map(|b| Opening::from_bytes(b))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|openings| {
            verify_recorded_with_limits(
                &s.commitment,
                &s.config,
                &limits,
                recorded,
                &openings,
                &engine,
                None,
            )
        });
    let streamed = bytes
        .iter()
        .map(|b| OpeningReader::new(&b[..], MAX_MESSAGE_BYTES))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|readers| {
            verify_recorded_streams(
                &s.commitment,
                &s.config,
                &limits,
                recorded,
                readers,
                &engine,
                None,
            )
        });
    (decoded, streamed)
}

fn same(decoded: Result<Verdict, ProtocolError>, streamed: Result<Verdict, ProtocolError>) {
    match (decoded, streamed) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(ProtocolError::Decode { .. }), Err(ProtocolError::Decode { .. })) => {}
        (a, b) => panic!("decoded: {a:?}\nstreamed: {b:?}"),
    }
}

#[test]
fn honest_and_cheating_sessions_get_the_same_verdict_streamed() {
    let mut outcomes = [0usize; 2];
    for case in 0..120 {
        for cheat in [false, true] {
            let s = session(case, cheat);
            let bytes: Vec<Vec<u8>> = s.openings.iter().map(|o| o.to_bytes()).collect();
            let (decoded, streamed) = both(&s, &bytes);
            if !cheat {
                assert_eq!(decoded.as_ref().ok(), Some(&Verdict::Accept), "case {case}");
            }
            outcomes[usize::from(matches!(decoded, Ok(Verdict::Accept)))] += 1;
            same(decoded, streamed);
        }
    }
    // cheats are caught in some sessions and missed in others (a sampled cell)
    assert!(outcomes[0] > 10 && outcomes[1] > 130, "{outcomes:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any change of the openings' bytes: the same verdict, or both refuse the bytes.
    #[test]
    fn changed_bytes_get_the_same_verdict_streamed(
        case in 0u64..60,
        cheat: bool,
        edits in proptest::collection::vec((any::<u16>(), 0u8..5, any::<u8>()), 1..4),
    ) {
        let s = session(case, cheat);
        let mut bytes: Vec<Vec<u8>> = s.openings.iter().map(|o| o.to_bytes()).collect();
        for (at, op, value) in edits {
            let which = usize::from(value) % bytes.len();
            let b = &mut bytes[which];
            if b.is_empty() {
                // an earlier edit truncated this opening to nothing
                b.push(value);
                continue;
            }
            let at = usize::from(at) % b.len();
            match op {
                0 => b[at] ^= value | 1,
                1 => { b.remove(at); }
                2 => b.insert(at, value),
                3 => b.truncate(at),
                _ => b.push(value),
            }
        }
        let (decoded, streamed) = both(&s, &bytes);
        same(decoded, streamed);
    }
}

#[test]
fn a_malformed_opening_after_the_decision_is_still_refused() {
    // round 0 is rejected (a cell's byte changed); round 1's bytes are truncated
    let s = (0..)
        .map(|case| session(case, false))
        .find(|s| s.openings.len() >= 2 && s.config.method == LayerCheck::Recompute)
        .unwrap();
    let mut bytes: Vec<Vec<u8>> = s.openings.iter().map(|o| o.to_bytes()).collect();
    let mut first = s.openings[0].clone();
    first.cells[0].data[0] ^= 1;
    bytes[0] = first.to_bytes();
    let (decoded, streamed) = both(&s, &bytes);
    assert!(matches!(decoded, Ok(Verdict::Reject(_))), "{decoded:?}");
    same(decoded, streamed);
    let last = bytes.len() - 1;
    bytes[last].pop();
    let (decoded, streamed) = both(&s, &bytes);
    assert!(matches!(decoded, Err(ProtocolError::Decode { .. })));
    same(decoded, streamed);
}

#[test]
fn the_live_verifier_reads_openings_as_streams() {
    for case in 0..24 {
        let s = session(case, case % 5 == 0);
        let mut by_stream = Verifier::new(s.config.clone(), ToyEngine::default()).unwrap();
        let mut decoded = Verifier::new(s.config.clone(), ToyEngine::default()).unwrap();
        let mut rng_a = ChaCha20Rng::seed_from_u64(case);
        let mut rng_b = ChaCha20Rng::seed_from_u64(case);
        let mut a = by_stream.receive_commitment(s.commitment.clone(), &mut rng_a);
        let b = decoded.receive_commitment(s.commitment.clone(), &mut rng_b);
        assert_eq!(a, b);
        // the live verifier draws its own challenges: answer them with an honest toy prover
        let engine = ToyEngine::default();
        let statement = &s.commitment.statement;
        let mut prover =
            Prover::new(statement.clone(), engine.trace_bytes(statement).unwrap()).unwrap();
        if statement.trace_level != TraceLevel::Hidden {
            let (context, cell) = engine.sublayer_bytes(statement).unwrap();
            prover = prover.with_sublayers(context, cell).unwrap();
        }
        prover.commit().unwrap();
        while !matches!(a, Step::Decided(_)) {
            let opening = match &a {
                Step::Challenge(c) => prover.open(c).unwrap(),
                _ => prover.open_non_interactive(&s.config.params).unwrap().1,
            };
            let bytes = opening.to_bytes();
            a = by_stream
                .receive_opening_stream(
                    OpeningReader::new(&bytes[..], MAX_MESSAGE_BYTES).unwrap(),
                    &mut rng_a,
                )
                .unwrap();
            let b = decoded.receive_opening(&opening, &mut rng_b);
            assert_eq!(a, b);
        }
        // a malformed opening leaves the state as it was
        let state = by_stream.state().clone();
        let junk = [b"VTPM".as_slice(), &[MESSAGE_VERSION, 4, 0, 0, 9, 1]].concat();
        let e = by_stream
            .receive_opening_stream(
                OpeningReader::new(&junk[..], MAX_MESSAGE_BYTES).unwrap(),
                &mut rng_a,
            )
            .unwrap_err();
        assert!(matches!(e, ProtocolError::Decode { .. }), "{e}");
        assert_eq!(by_stream.state(), &state);
    }
}

#[test]
fn the_reader_refuses_what_the_decoder_refuses() {
    let s = session(0, false);
    let bytes = s.openings[0].to_bytes();
    // a size limit below the message
    for limit in [0, 5, 6, bytes.len() / 2, bytes.len() - 1] {
        let r = OpeningReader::new(&bytes[..], limit).and_then(|r| r.into_opening());
        assert!(r.is_err(), "limit {limit}");
        assert!(Opening::from_bytes_with_limit(&bytes, limit).is_err());
    }
    let r = OpeningReader::new(&bytes[..], bytes.len()).and_then(|r| r.into_opening());
    assert_eq!(r.unwrap(), s.openings[0]);
    // an overlong varint (round 0 as 0x80 0x00)
    let overlong = [&bytes[..6], &[0x80, 0x00], &bytes[7..]].concat();
    assert!(Opening::from_bytes(&overlong).is_err());
    let e = OpeningReader::new(&overlong[..], MAX_MESSAGE_BYTES).unwrap_err();
    assert!(e.to_string().contains("canonical"), "{e}");
    // the previous envelope version (its nonce after the proof) is named
    let mut v3 = bytes.clone();
    v3[4] = 3;
    let e = OpeningReader::new(&v3[..], MAX_MESSAGE_BYTES).unwrap_err();
    assert!(e.to_string().contains("envelope version 3"), "{e}");
    // a cell claiming 2^40 bytes, with a few behind it, allocates what arrives and fails
    let huge = [
        b"VTPM".as_slice(),
        &[MESSAGE_VERSION, 4, 0, 0, 1, 0, 0],
        &[0x80, 0x80, 0x80, 0x80, 0x80, 0x20],
        &[1, 2, 3],
    ]
    .concat();
    let mut r = OpeningReader::new(&huge[..], usize::MAX).unwrap();
    let e = r.next_cell().unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    // a reader that fails part way
    struct Failing<'a>(&'a [u8]);
    impl std::io::Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::Error::other("the connection dropped"));
            }
            let n = buf.len().min(self.0.len()).min(7);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let cut = &bytes[..bytes.len() / 2];
    let e = OpeningReader::new(Failing(cut), MAX_MESSAGE_BYTES)
        .and_then(|r| r.into_opening())
        .unwrap_err();
    assert!(e.to_string().contains("connection dropped"), "{e}");
    // the cells come one at a time, then the tail
    let mut r = OpeningReader::new(&bytes[..], MAX_MESSAGE_BYTES).unwrap();
    assert_eq!(r.round(), 0);
    assert_eq!(r.cell_count(), s.openings[0].cells.len() as u64);
    let first = r.next_cell().unwrap().unwrap();
    assert_eq!(first, s.openings[0].cells[0]);
    let tail = r.finish().unwrap();
    assert_eq!(tail.proof, s.openings[0].proof);
}
