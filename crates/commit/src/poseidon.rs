//! Poseidon over the BN254 scalar field, circom-compatible, for SNARK-facing commitments.
//!
//! The permutation and its constants are circomlib's (`poseidon_constants.js`, x^5 S-box, 8 full
//! rounds, 56-68 partial rounds by width), as implemented by the `light-poseidon` crate; the
//! known-answer tests below pin circomlib's published outputs, e.g.
//! `poseidon([1, 2]) = 0x115cc0f5e7d690413df64c6b9662e9cf2a3617f2743245519e19607a4417189a`.
//!
//! # Digests
//! A Poseidon digest is a field element `x < p` written as 32 big-endian bytes, where
//! `p = 21888242871839275222246405745257275088548364400416034343698204186575808495617`.
//! Digests at or above `p` are not canonical and verifiers reject them (no second encoding).
//!
//! # Internal node
//! `node(l, r) = Poseidon_2([l, r])`: circomlib's two-input hash (state width t = 3, capacity
//! element 0), the function circom Merkle circuits already use.
//!
//! # Leaf of any length
//! Leaf data `P` of `n` bytes is absorbed by a chain over the twelve-input hash (t = 13):
//!
//! 1. Split `P` into `m = ceil(n / 31)` pieces of 31 bytes (the last may be shorter) and read each
//!    piece as a big-endian integer `e_i` (31 bytes = 248 bits < p, so no reduction happens).
//! 2. Form the sequence `S = [n, e_1, …, e_m]` and cut it into blocks of 11 elements, padding the
//!    last block with zeros. (`n` fixes where the data ends, so padding is unambiguous.)
//! 3. `acc_0 = TAG`, the big-endian integer of the ASCII bytes `veritrace/poseidon-leaf/v1`;
//!    `acc_{i+1} = Poseidon_12([acc_i, block_i])`; the leaf digest is the last `acc`.
//!
//! Leaves and nodes are domain-separated because they use different permutations (t = 13 vs
//! t = 3, with independent round constants and MDS matrices): a leaf digest equal to a node digest
//! would be a collision between two instances of Poseidon. The tag separates these leaves from any
//! other use of the twelve-input hash.
//!
//! # Cost
//! Poseidon is slow natively. On this project's machines (2-core Zen 4) one `node` costs about
//! 20-25 µs, over a hundred times a BLAKE3 or SHA-256 node, and a leaf costs one t = 13
//! permutation per 341 bytes, so hashing a MiB of leaf data takes about a second, thousands of
//! times slower than BLAKE3. `BENCHMARKS.md` has the figures measured side by side.
//! Use it where a SNARK must open the commitment (its in-circuit cost is a few hundred
//! constraints per permutation), not for bulk traces.

use std::cell::RefCell;

use ark_bn254::Fr;
use ark_ff::{BigInteger, PrimeField};
use light_poseidon::{Poseidon as LightPoseidon, PoseidonHasher};

use crate::{Digest, Hasher, HasherId};

/// Bytes of leaf data per field element.
pub const BYTES_PER_ELEMENT: usize = 31;
/// Field elements absorbed per leaf-chain step (the t = 13 hash takes the accumulator plus these).
pub const ELEMENTS_PER_BLOCK: usize = 11;
/// ASCII domain tag whose big-endian integer starts the leaf chain.
pub const LEAF_TAG: &[u8] = b"veritrace/poseidon-leaf/v1";

thread_local! {
    static NODE_HASH: RefCell<LightPoseidon<Fr>> = RefCell::new(
        LightPoseidon::<Fr>::new_circom(2).expect("light-poseidon supports 2 inputs"),
    );
    static LEAF_HASH: RefCell<LightPoseidon<Fr>> = RefCell::new(
        LightPoseidon::<Fr>::new_circom(ELEMENTS_PER_BLOCK + 1)
            .expect("light-poseidon supports 12 inputs"),
    );
}

/// Poseidon over BN254 with circomlib's parameters; see the [module docs](self) for the leaf and
/// node layouts and their cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Poseidon;

/// Reads a digest as a field element, or `None` if it is not below the modulus.
pub fn digest_to_field(d: &Digest) -> Option<Fr> {
    if !is_canonical_be(&d.0) {
        return None;
    }
    Some(Fr::from_be_bytes_mod_order(&d.0))
}

/// Writes a field element as a 32-byte big-endian digest.
pub fn field_to_digest(x: &Fr) -> Digest {
    let bytes = x.into_bigint().to_bytes_be();
    let mut out = [0u8; 32];
    out[32 - bytes.len()..].copy_from_slice(&bytes);
    Digest(out)
}

fn is_canonical_be(bytes: &[u8; 32]) -> bool {
    let modulus = Fr::MODULUS.to_bytes_be();
    bytes.as_slice() < modulus.as_slice()
}

/// circomlib's Poseidon with two inputs (t = 3).
fn poseidon2(a: Fr, b: Fr) -> Fr {
    NODE_HASH.with(|h| {
        h.borrow_mut()
            .hash(&[a, b])
            .expect("two inputs match the two-input instance")
    })
}

/// The leaf chain of the module docs over the concatenation of `parts`.
fn leaf_chain(parts: &[&[u8]]) -> Fr {
    let data: Vec<u8> = parts.concat();
    let mut seq: Vec<Fr> = Vec::with_capacity(2 + data.len() / BYTES_PER_ELEMENT);
    seq.push(Fr::from(data.len() as u64));
    seq.extend(
        data.chunks(BYTES_PER_ELEMENT)
            .map(Fr::from_be_bytes_mod_order),
    );
    let mut acc = Fr::from_be_bytes_mod_order(LEAF_TAG);
    LEAF_HASH.with(|h| {
        let mut h = h.borrow_mut();
        let mut input = [Fr::from(0u64); ELEMENTS_PER_BLOCK + 1];
        for block in seq.chunks(ELEMENTS_PER_BLOCK) {
            input[0] = acc;
            input[1..].fill(Fr::from(0u64));
            input[1..1 + block.len()].copy_from_slice(block);
            acc = h
                .hash(&input)
                .expect("twelve inputs match the twelve-input instance");
        }
    });
    acc
}

impl Hasher for Poseidon {
    fn id(&self) -> HasherId {
        HasherId::Poseidon
    }

    fn hash_leaf(&self, parts: &[&[u8]]) -> Digest {
        field_to_digest(&leaf_chain(parts))
    }

    /// Non-canonical children (which an honest tree never contains and verifiers reject first)
    /// are reduced modulo p.
    fn hash_node(&self, left: &Digest, right: &Digest) -> Digest {
        let l = Fr::from_be_bytes_mod_order(&left.0);
        let r = Fr::from_be_bytes_mod_order(&right.0);
        field_to_digest(&poseidon2(l, r))
    }

    fn is_canonical(&self, digest: &Digest) -> bool {
        is_canonical_be(&digest.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fe(n: u64) -> Fr {
        Fr::from(n)
    }

    /// circomlib's published Poseidon outputs for inputs [1], [1,2], ..., [1..6] and [0]
    /// (circomlib test/poseidon.js and the PoseidonT2..T7 contracts).
    #[test]
    fn circomlib_known_answers() {
        let vectors: [(&[u64], &str); 7] = [
            (
                &[1],
                "29176100eaa962bdc1fe6c654d6a3c130e96a4d1168b33848b897dc502820133",
            ),
            (
                &[1, 2],
                "115cc0f5e7d690413df64c6b9662e9cf2a3617f2743245519e19607a4417189a",
            ),
            (
                &[1, 2, 3],
                "0e7732d89e6939c0ff03d5e58dab6302f3230e269dc5b968f725df34ab36d732",
            ),
            (
                &[1, 2, 3, 4],
                "299c867db6c1fdd79dcefa40e4510b9837e60ebb1ce0663dbaa525df65250465",
            ),
            (
                &[1, 2, 3, 4, 5],
                "0dab9449e4a1398a15224c0b15a49d598b2174d305a316c918125f8feeb123c0",
            ),
            (
                &[1, 2, 3, 4, 5, 6],
                "2d1a03850084442813c8ebf094dea47538490a68b05f2239134a4cca2f6302e1",
            ),
            (
                &[0],
                "2a09a9fd93c590c26b91effbb2499f07e8f7aa12e2b4940a3aed2411cb65e11c",
            ),
        ];
        for (inputs, want) in vectors {
            let mut h = LightPoseidon::<Fr>::new_circom(inputs.len()).unwrap();
            let xs: Vec<Fr> = inputs.iter().map(|&x| fe(x)).collect();
            assert_eq!(
                field_to_digest(&h.hash(&xs).unwrap()).to_hex(),
                want,
                "{inputs:?}"
            );
        }
    }

    /// Our node function is circomlib's poseidon([l, r]).
    #[test]
    fn node_is_circom_poseidon2() {
        let l = field_to_digest(&fe(1));
        let r = field_to_digest(&fe(2));
        assert_eq!(
            Poseidon.hash_node(&l, &r).to_hex(),
            "115cc0f5e7d690413df64c6b9662e9cf2a3617f2743245519e19607a4417189a"
        );
    }

    #[test]
    fn canonical_boundary() {
        let p_minus_1 = field_to_digest(&(-Fr::from(1u64)));
        assert!(Poseidon.is_canonical(&p_minus_1));
        let mut p = Fr::MODULUS.to_bytes_be();
        assert!(!Poseidon.is_canonical(&Digest(p.clone().try_into().unwrap())));
        p[31] += 1;
        assert!(!Poseidon.is_canonical(&Digest(p.try_into().unwrap())));
        assert!(!Poseidon.is_canonical(&Digest([0xff; 32])));
        assert_eq!(digest_to_field(&Digest([0xff; 32])), None);
        assert_eq!(digest_to_field(&p_minus_1), Some(-Fr::from(1u64)));
    }

    /// Lengths around the 31-byte element and 11-element block boundaries all give distinct
    /// digests, and trailing zero bytes are not absorbed away.
    #[test]
    fn leaf_lengths_distinct() {
        let mut seen = std::collections::HashSet::new();
        for n in [0usize, 1, 30, 31, 32, 309, 310, 311, 340, 341, 342, 700] {
            let zeros = vec![0u8; n];
            assert!(seen.insert(Poseidon.hash_leaf(&[&zeros])), "length {n}");
        }
        assert_ne!(Poseidon.hash_leaf(&[&[1]]), Poseidon.hash_leaf(&[&[1, 0]]));
        assert_ne!(Poseidon.hash_leaf(&[&[1]]), Poseidon.hash_leaf(&[&[0, 1]]));
    }

    /// Pins the leaf layout against an independent evaluation of the documented chain.
    #[test]
    fn leaf_chain_matches_docs() {
        let data: Vec<u8> = (0u8..=99).collect(); // 100 bytes: 4 elements, one block
        let mut h = LightPoseidon::<Fr>::new_circom(12).unwrap();
        let mut input = vec![Fr::from_be_bytes_mod_order(LEAF_TAG), fe(100)];
        for piece in data.chunks(31) {
            input.push(Fr::from_be_bytes_mod_order(piece));
        }
        input.resize(12, fe(0));
        let want = field_to_digest(&h.hash(&input).unwrap());
        assert_eq!(Poseidon.hash_leaf(&[&data[..40], &data[40..]]), want);
    }
}
