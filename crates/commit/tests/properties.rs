//! Property tests of commitment soundness (proptest).
//!
//! * honest proofs verify, for every hasher;
//! * any single-bit change to a proof (structured or encoded), a leaf, an index or the root is
//!   rejected;
//! * distinct leaf sequences give distinct roots, including the CVE-2012-2459 shape;
//! * a leaf cannot be opened as an internal node;
//! * batch proofs agree with single proofs;
//! * decoding arbitrary bytes returns an error or a value that re-encodes to the same bytes, and
//!   never panics.

use std::collections::{BTreeSet, HashSet};

use proptest::prelude::*;
use veritrace_commit::{
    commit_trace, sibling_count, verify_batch, verify_inclusion, BatchProof, Digest, Dtype, Hasher,
    HasherId, MerkleTree, TraceGeometry,
};

fn tree_of(hasher: HasherId, n: usize, salt: u8) -> (Vec<Vec<u8>>, MerkleTree) {
    let data: Vec<Vec<u8>> = (0..n)
        .map(|i| vec![salt, (i & 0xff) as u8, (i >> 8) as u8])
        .collect();
    let tree = MerkleTree::from_leaf_data(hasher, &data).unwrap();
    (data, tree)
}

fn flip(d: &Digest, bit: usize) -> Digest {
    let mut out = *d;
    out.0[bit / 8 % 32] ^= 1 << (bit % 8);
    out
}

/// A tree size and a non-empty set of distinct in-range indices.
fn size_and_indices(max: usize) -> impl Strategy<Value = (usize, Vec<u64>)> {
    (1..=max).prop_flat_map(|n| {
        (
            Just(n),
            proptest::collection::btree_set(0..n as u64, 1..=n.min(12))
                .prop_map(|s| s.into_iter().collect::<Vec<_>>()),
        )
    })
}

fn fast_hasher() -> impl Strategy<Value = HasherId> {
    prop_oneof![Just(HasherId::Blake3), Just(HasherId::Sha256)]
}

fn opened(tree: &MerkleTree, idx: &[u64]) -> Vec<(u64, Digest)> {
    idx.iter().map(|&i| (i, tree.leaf(i).unwrap())).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn honest_batch_proofs_verify(h in fast_hasher(), (n, idx) in size_and_indices(300)) {
        let (_, tree) = tree_of(h, n, 1);
        let proof = tree.prove(&idx).unwrap();
        prop_assert_eq!(proof.siblings.len() as u64, sibling_count(n as u64, &idx).unwrap());
        verify_batch(&h, &tree.root(), n as u64, &opened(&tree, &idx), &proof).unwrap();
        let decoded = BatchProof::from_bytes(&proof.to_bytes()).unwrap();
        prop_assert_eq!(decoded, proof);
    }

    #[test]
    fn any_bit_flip_in_a_sibling_leaf_or_root_is_rejected(
        h in fast_hasher(),
        (n, idx) in size_and_indices(200),
        which in any::<prop::sample::Index>(),
        bit in 0usize..256,
    ) {
        let (_, tree) = tree_of(h, n, 2);
        let proof = tree.prove(&idx).unwrap();
        let leaves = opened(&tree, &idx);
        let root = tree.root();
        // a sibling
        if !proof.siblings.is_empty() {
            let mut bad = proof.clone();
            let k = which.index(bad.siblings.len());
            bad.siblings[k] = flip(&bad.siblings[k], bit);
            prop_assert!(verify_batch(&h, &root, n as u64, &leaves, &bad).is_err());
        }
        // a leaf
        let mut bad_leaves = leaves.clone();
        let k = which.index(bad_leaves.len());
        bad_leaves[k].1 = flip(&bad_leaves[k].1, bit);
        prop_assert!(verify_batch(&h, &root, n as u64, &bad_leaves, &proof).is_err());
        // the root
        prop_assert!(verify_batch(&h, &flip(&root, bit), n as u64, &leaves, &proof).is_err());
    }

    #[test]
    fn any_bit_flip_in_an_index_is_rejected(
        h in fast_hasher(),
        (n, idx) in size_and_indices(200),
        which in any::<prop::sample::Index>(),
        bit in 0u32..64,
    ) {
        let (_, tree) = tree_of(h, n, 3);
        let proof = tree.prove(&idx).unwrap();
        let mut leaves = opened(&tree, &idx);
        let k = which.index(leaves.len());
        leaves[k].0 ^= 1u64 << bit;
        prop_assert!(verify_batch(&h, &tree.root(), n as u64, &leaves, &proof).is_err());
    }

    #[test]
    fn any_bit_flip_in_the_encoded_proof_is_rejected(
        h in fast_hasher(),
        (n, idx) in size_and_indices(100),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let (_, tree) = tree_of(h, n, 4);
        let mut bytes = tree.prove(&idx).unwrap().to_bytes();
        let p = pos.index(bytes.len());
        bytes[p] ^= 1 << bit;
        let accepted = BatchProof::from_bytes(&bytes)
            .map(|proof| verify_batch(&h, &tree.root(), n as u64, &opened(&tree, &idx), &proof))
            .is_ok_and(|v| v.is_ok());
        prop_assert!(!accepted);
    }

    #[test]
    fn distinct_leaf_sequences_give_distinct_roots(
        h in fast_hasher(),
        a in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 1..24),
        b in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 1..24),
    ) {
        prop_assume!(a != b);
        let ra = MerkleTree::from_leaf_data(h, &a).unwrap().root();
        let rb = MerkleTree::from_leaf_data(h, &b).unwrap().root();
        prop_assert_ne!(ra, rb);
    }

    /// Appending a copy of the last leaves (the CVE-2012-2459 duplication) changes the root.
    #[test]
    fn duplicated_tail_changes_the_root(h in fast_hasher(), n in 2usize..64, dup in 1usize..4) {
        let (data, tree) = tree_of(h, n, 5);
        let dup = dup.min(n);
        let mut longer = data.clone();
        longer.extend_from_slice(&data[n - dup..]);
        let t2 = MerkleTree::from_leaf_data(h, &longer).unwrap();
        prop_assert_ne!(tree.root(), t2.root());
    }

    /// Treating the level-1 nodes as leaves: a node's preimage `l ‖ r`, offered as leaf data,
    /// never verifies, although the same proof does verify if the node digest itself is accepted
    /// as a leaf digest (so the test exercises the domain separation, not something else).
    #[test]
    fn a_leaf_cannot_be_opened_as_an_internal_node(h in fast_hasher(), n in 2usize..100, j in any::<prop::sample::Index>()) {
        let (_, tree) = tree_of(h, n, 6);
        let width = n.div_ceil(2);
        let pairs = n / 2; // level-1 positions with two children
        let j = j.index(pairs) as u64;
        let level1: Vec<Digest> = (0..width as u64).map(|p| tree.node(1, p).unwrap()).collect();
        let fake = MerkleTree::from_leaf_digests(h, level1).unwrap();
        prop_assert_eq!(fake.root(), tree.root());
        let proof = fake.prove_inclusion(j).unwrap();
        let node = tree.node(1, j).unwrap();
        verify_inclusion(&h, &tree.root(), width as u64, j, &node, &proof).unwrap();
        let l = tree.leaf(2 * j).unwrap();
        let r = tree.leaf(2 * j + 1).unwrap();
        let as_leaf = h.hash_leaf(&[&l.0, &r.0]);
        prop_assert!(verify_inclusion(&h, &tree.root(), width as u64, j, &as_leaf, &proof).is_err());
    }

    #[test]
    fn batch_proofs_agree_with_single_proofs(h in fast_hasher(), (n, idx) in size_and_indices(300)) {
        let (_, tree) = tree_of(h, n, 7);
        let batch = tree.prove(&idx).unwrap();
        let mut union = HashSet::new();
        let mut total = 0;
        for &i in &idx {
            let single = tree.prove_inclusion(i).unwrap();
            verify_inclusion(&h, &tree.root(), n as u64, i, &tree.leaf(i).unwrap(), &single).unwrap();
            prop_assert_eq!(&tree.prove(&[i]).unwrap(), &single);
            total += single.siblings.len();
            union.extend(single.siblings);
        }
        prop_assert!(batch.siblings.len() <= total);
        prop_assert!(batch.siblings.iter().all(|s| union.contains(s)));
        let distinct: HashSet<_> = batch.siblings.iter().collect();
        prop_assert_eq!(distinct.len(), batch.siblings.len(), "a sibling is sent once");
    }

    /// Contiguous runs (what a causal-attention opening asks for) need at most two siblings per
    /// level.
    #[test]
    fn contiguous_runs_are_cheap(n in 1u64..5000, start in any::<prop::sample::Index>(), len in 1u64..70) {
        let s = start.index(n as usize) as u64;
        let idx: Vec<u64> = (s..(s + len).min(n)).collect();
        let depth = 64 - (n - 1).leading_zeros() as u64;
        prop_assert!(sibling_count(n, &idx).unwrap() <= 2 * depth);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(p) = BatchProof::from_bytes(&bytes) {
            prop_assert_eq!(p.to_bytes(), bytes);
        }
    }

    #[test]
    fn decoding_mutated_encodings_never_panics(
        (n, idx) in size_and_indices(50),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let (_, tree) = tree_of(HasherId::Blake3, n, 8);
        let mut bytes = tree.prove(&idx).unwrap().to_bytes();
        for (i, v) in edits {
            let p = i.index(bytes.len());
            bytes[p] = v;
        }
        let _ = BatchProof::from_bytes(&bytes);
        let _ = BatchProof::from_bytes(&bytes[..cut.index(bytes.len() + 1)]);
        let _ = serde_json::from_slice::<BatchProof>(&bytes);
    }

    #[test]
    fn decoding_arbitrary_commitments_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(c) = veritrace_commit::TraceCommitment::from_bytes(&bytes) {
            prop_assert_eq!(c.to_bytes(), bytes);
        }
    }

    #[test]
    fn json_digest_parsing_never_panics(s in ".{0,80}") {
        let _ = serde_json::from_str::<Digest>(&format!("\"{s}\""));
        let _ = s.parse::<Digest>();
    }

    /// A committed cell can be neither moved nor reinterpreted: each cell's digest is distinct
    /// even when every cell holds the same bytes.
    #[test]
    fn cells_are_bound_to_position(layers in 1u32..5, tokens in 1u32..40, hidden in 1u32..8, chunk in 1u32..9) {
        let g = TraceGeometry::new(layers, tokens, hidden, chunk, Dtype::I8).unwrap();
        let layer = vec![0u8; g.layer_byte_len()];
        let refs: Vec<&[u8]> = (0..layers).map(|_| layer.as_slice()).collect();
        let tree = commit_trace(HasherId::Blake3, &g, &refs).unwrap();
        let distinct: BTreeSet<_> = tree.leaves().iter().collect();
        prop_assert_eq!(distinct.len() as u64, g.num_cells());
    }
}

proptest! {
    // Poseidon costs about 20 µs a node and a few hundred µs a leaf: fewer, smaller cases.
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn poseidon_proofs_and_tampering((n, idx) in size_and_indices(24), bit in 0usize..256) {
        let h = HasherId::Poseidon;
        let (_, tree) = tree_of(h, n, 9);
        let proof = tree.prove(&idx).unwrap();
        let leaves = opened(&tree, &idx);
        verify_batch(&h, &tree.root(), n as u64, &leaves, &proof).unwrap();
        if !proof.siblings.is_empty() {
            let mut bad = proof.clone();
            bad.siblings[0] = flip(&bad.siblings[0], bit);
            prop_assert!(verify_batch(&h, &tree.root(), n as u64, &leaves, &bad).is_err());
        }
        prop_assert!(verify_batch(&h, &flip(&tree.root(), bit), n as u64, &leaves, &proof).is_err());
    }
}

/// The exact CVE-2012-2459 example: [1..6] and [1..6, 5, 6].
#[test]
fn cve_2012_2459_shape() {
    for h in HasherId::ALL {
        let a: Vec<[u8; 1]> = (1..=6).map(|i| [i]).collect();
        let mut b = a.clone();
        b.extend([[5], [6]]);
        let ra = MerkleTree::from_leaf_data(h, &a).unwrap().root();
        let rb = MerkleTree::from_leaf_data(h, &b).unwrap().root();
        assert_ne!(ra, rb, "{h}");
    }
}

/// A Poseidon proof whose sibling is the same field element plus the modulus (a second encoding
/// of the same value) is refused as non-canonical rather than silently reduced.
#[test]
fn poseidon_rejects_non_canonical_siblings() {
    use ark_ff::{BigInteger, PrimeField};
    let h = HasherId::Poseidon;
    let (_, tree) = tree_of(h, 4, 10);
    let mut proof = tree.prove(&[0]).unwrap();
    let s = proof.siblings[0];
    // s + p as a 256-bit big-endian integer.
    let p = ark_bn254::Fr::MODULUS.to_bytes_be();
    let mut sum = [0u8; 32];
    let mut carry = 0u16;
    for i in (0..32).rev() {
        let v = u16::from(s.0[i]) + u16::from(p[i]) + carry;
        sum[i] = v as u8;
        carry = v >> 8;
    }
    // s < p < 2^254, so s + p < 2^255 always fits in 32 bytes.
    assert_eq!(carry, 0);
    proof.siblings[0] = Digest(sum);
    assert!(matches!(
        verify_batch(&h, &tree.root(), 4, &[(0, tree.leaf(0).unwrap())], &proof),
        Err(veritrace_commit::CommitError::NonCanonicalDigest { position: 0, .. })
    ));
    assert!(!h.is_canonical(&Digest([0xff; 32])));
}

/// A geometry or commitment decoded from JSON is validated like one built with `new`: no zero
/// sizes, no overflowing layers, no non-canonical Poseidon root.
#[test]
fn deserialized_geometry_is_validated() {
    use veritrace_commit::TraceCommitment;
    let bad = [
        r#"{"layers":1,"tokens":4294967295,"hidden":4294967295,"chunk":1,"dtype":"f32"}"#,
        r#"{"layers":1,"tokens":4,"hidden":4,"chunk":0,"dtype":"f32"}"#,
        r#"{"layers":0,"tokens":4,"hidden":4,"chunk":1,"dtype":"f32"}"#,
    ];
    for json in bad {
        assert!(
            serde_json::from_str::<TraceGeometry>(json).is_err(),
            "{json}"
        );
    }
    let ok = r#"{"layers":2,"tokens":4,"hidden":4,"chunk":3,"dtype":"bf16"}"#;
    let g: TraceGeometry = serde_json::from_str(ok).unwrap();
    assert_eq!(g.chunks_per_layer(), 2);
    let commitment = format!(
        r#"{{"root":"{}","hasher":"poseidon","geometry":{ok}}}"#,
        "ff".repeat(32)
    );
    assert!(serde_json::from_str::<TraceCommitment>(&commitment).is_err());
    let commitment = format!(
        r#"{{"root":"{}","hasher":"blake3","geometry":{ok}}}"#,
        "ff".repeat(32)
    );
    assert!(serde_json::from_str::<TraceCommitment>(&commitment).is_ok());
}

/// A Poseidon leaf digest offered as x + p (the same field element) is refused.
#[test]
fn poseidon_rejects_non_canonical_leaves() {
    let h = HasherId::Poseidon;
    let (_, tree) = tree_of(h, 3, 11);
    let proof = tree.prove(&[1]).unwrap();
    assert!(verify_batch(&h, &tree.root(), 3, &[(1, tree.leaf(1).unwrap())], &proof).is_ok());
    assert!(matches!(
        verify_batch(&h, &tree.root(), 3, &[(1, Digest([0xff; 32]))], &proof),
        Err(veritrace_commit::CommitError::NonCanonicalLeaf { index: 1, .. })
    ));
}
