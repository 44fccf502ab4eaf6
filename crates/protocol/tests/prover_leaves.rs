//! `Prover::with_leaves` (cells hashed elsewhere, e.g. on a GPU) gives the same tree, commitment
//! and openings as `Prover::new`, and refuses wrong counts and lengths.

use veritrace_commit::{layer_leaves, CellId, Digest, Dtype, HasherId, TraceGeometry};
use veritrace_protocol::toy::ToyEngine;
use veritrace_protocol::{
    Challenge, Dependency, OutputRule, ProtocolError, Prover, Statement, PROTOCOL_VERSION,
};

fn statement(hasher: HasherId) -> Statement {
    Statement {
        trace_level: veritrace_protocol::TraceLevel::Hidden,
        version: PROTOCOL_VERSION,
        model_digest: Digest([3; 32]),
        setup: b"toy".to_vec(),
        input_tokens: vec![1, 2, 3, 4],
        output_tokens: vec![5, 6, 7],
        geometry: TraceGeometry::new(3, 7, 3, 2, Dtype::F32).unwrap(),
        hasher,
        dependency: Dependency::Causal,
        output_rule: OutputRule::Greedy,
        input_text: None,
        engine: None,
    }
}

fn leaves(s: &Statement, layers: &[Vec<u8>]) -> Vec<Digest> {
    layers
        .iter()
        .enumerate()
        .flat_map(|(l, b)| layer_leaves(s.hasher, &s.geometry, l as u32, b).unwrap())
        .collect()
}

#[test]
fn precomputed_leaves_give_the_same_commitment_and_openings() {
    for hasher in [HasherId::Blake3, HasherId::Sha256, HasherId::Poseidon] {
        let s = statement(hasher);
        let layers = ToyEngine::default().trace_bytes(&s).unwrap();
        let mut a = Prover::new(s.clone(), layers.clone()).unwrap();
        let mut b = Prover::with_leaves(s.clone(), layers.clone(), leaves(&s, &layers)).unwrap();
        assert_eq!(a.commit().unwrap(), b.commit().unwrap(), "{hasher:?}");
        let challenge = Challenge {
            round: 0,
            cells: vec![CellId { layer: 0, chunk: 3 }, CellId { layer: 2, chunk: 1 }],
            attention: None,
        };
        assert_eq!(a.open(&challenge).unwrap(), b.open(&challenge).unwrap());
    }
}

#[test]
fn wrong_counts_and_lengths_are_refused() {
    let s = statement(HasherId::Blake3);
    let layers = ToyEngine::default().trace_bytes(&s).unwrap();
    let mut good = leaves(&s, &layers);
    let mut short = good.clone();
    short.pop();
    assert!(matches!(
        Prover::with_leaves(s.clone(), layers.clone(), short),
        Err(ProtocolError::Commit(_))
    ));
    assert!(Prover::with_leaves(s.clone(), layers[..2].to_vec(), good.clone()).is_err());
    let mut cut = layers.clone();
    cut[1].pop();
    assert!(Prover::with_leaves(s.clone(), cut, good.clone()).is_err());
    good.push(Digest([0; 32]));
    assert!(Prover::with_leaves(s, layers, good).is_err());
}
