//! Hostile bytes never panic a decoder: arbitrary input and mutations of valid encodings of
//! every message give an error or a message that re-encodes to the same bytes.

use proptest::prelude::*;
use veritrace_commit::{CellId, Digest, Dtype, HasherId, TraceGeometry};
use veritrace_protocol::tolerance::{Metric, ToleranceViolation};
use veritrace_protocol::toy::ToyEngine;
use veritrace_protocol::{
    Challenge, Commitment, Dependency, InputText, Message, Opening, OutputRule, Prover,
    RejectReason, Statement, Verdict, PROTOCOL_VERSION,
};

fn statement() -> Statement {
    Statement {
        trace_level: veritrace_protocol::TraceLevel::Hidden,
        version: PROTOCOL_VERSION,
        model_digest: Digest([3; 32]),
        setup: b"toy".to_vec(),
        input_tokens: vec![1, 2, 3, 4],
        output_tokens: vec![5, 6],
        geometry: TraceGeometry::new(2, 6, 2, 2, Dtype::F32).unwrap(),
        hasher: HasherId::Blake3,
        dependency: Dependency::Window { size: 2 },
        output_rule: OutputRule::Sampled {
            seed: Digest([4; 32]),
        },
        input_text: Some(InputText {
            tokenizer: Digest([5; 32]),
            chat: false,
            text: "four tokens, é".into(),
        }),
        engine: Some("an engine 1.0".into()),
    }
}

fn samples() -> Vec<(u8, Vec<u8>)> {
    let s = statement();
    let mut p = Prover::new(s.clone(), ToyEngine::default().trace_bytes(&s).unwrap()).unwrap();
    let commitment = p.commit().unwrap();
    let challenge = Challenge {
        round: 0,
        cells: vec![CellId { layer: 1, chunk: 1 }],
        attention: None,
    };
    let opening = p.open(&challenge).unwrap();
    let verdict = Verdict::Reject(RejectReason::Tolerance {
        cell: CellId { layer: 1, chunk: 2 },
        violation: ToleranceViolation::Exceeded {
            metric: Metric::MaxAbs,
            value: 1.5,
            threshold: 0.5,
        },
    });
    vec![
        (1, s.to_bytes()),
        (2, commitment.to_bytes()),
        (3, challenge.to_bytes()),
        (4, opening.to_bytes()),
        (5, verdict.to_bytes()),
        (5, Verdict::Accept.to_bytes()),
    ]
}

/// Decodes `bytes` as every message kind; whatever decodes must re-encode to the same bytes
/// (one encoding per message).
fn decode_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    macro_rules! try_kind {
        ($t:ty) => {
            if let Ok(m) = <$t>::from_bytes(bytes) {
                prop_assert_eq!(m.to_bytes(), bytes.to_vec());
                // the streamed envelope is the same bytes, and to_bytes sizes its buffer exactly
                let mut streamed = Vec::new();
                m.write_bytes_to(&mut streamed).unwrap();
                prop_assert_eq!(&streamed, &bytes.to_vec());
                prop_assert_eq!(m.to_bytes().capacity(), bytes.len());
            }
        };
    }
    try_kind!(Statement);
    try_kind!(Commitment);
    try_kind!(Challenge);
    try_kind!(Opening);
    try_kind!(Verdict);
    if let Ok(s) = std::str::from_utf8(bytes) {
        let _ = Statement::from_json(s);
        let _ = Opening::from_json(s);
        let _ = Verdict::from_json(s);
    }
    Ok(())
}

#[test]
fn valid_messages_round_trip() {
    for (_, bytes) in samples() {
        decode_all(&bytes).unwrap();
    }
    let s = statement();
    assert_eq!(Statement::from_bytes(&s.to_bytes()).unwrap(), s);
    assert_eq!(Statement::from_json(&s.to_json()).unwrap(), s);
    // a message of one kind is not accepted as another
    assert!(Commitment::from_bytes(&s.to_bytes()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200), kind in 1u8..6) {
        let mut framed = b"VTPM\x01".to_vec();
        framed.push(kind);
        framed.extend_from_slice(&bytes);
        decode_all(&bytes)?;
        decode_all(&framed)?;
    }

    #[test]
    fn mutated_encodings(
        which in 0usize..6,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let (_, mut bytes) = samples().swap_remove(which);
        for (i, v) in edits {
            let p = i.index(bytes.len());
            bytes[p] = v;
        }
        decode_all(&bytes)?;
        decode_all(&bytes[..cut.index(bytes.len() + 1)])?;
    }
}

/// An overlong varint (0x80 0x00 for 0) decodes in postcard but is refused here.
#[test]
fn overlong_varints_are_refused() {
    let c = Challenge {
        round: 0,
        cells: vec![CellId { layer: 0, chunk: 0 }],
        attention: None,
    };
    let bytes = c.to_bytes();
    assert_eq!(bytes[6], 0, "round 0 is the first payload byte");
    let mut overlong = bytes[..6].to_vec();
    overlong.extend_from_slice(&[0x80, 0x00]);
    overlong.extend_from_slice(&bytes[7..]);
    assert!(Challenge::from_bytes(&overlong).is_err());
    assert_eq!(Challenge::from_bytes(&bytes).unwrap(), c);
}
