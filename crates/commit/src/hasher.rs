//! Domain-separated hash functions for leaves and internal nodes.
//!
//! Every hasher has two functions, and a leaf can never be confused with an internal node:
//!
//! | hasher | leaf(d) | node(l, r) |
//! |---|---|---|
//! | [`Blake3`] | `BLAKE3(0x00 ‖ d)` | `BLAKE3(0x01 ‖ l ‖ r)` |
//! | [`Sha256`] | `SHA-256(0x00 ‖ d)` (RFC 6962 §2.1) | `SHA-256(0x01 ‖ l ‖ r)` |
//! | [`Poseidon`] | sponge chain over Poseidon t=13 (see [`crate::poseidon`]) | circom `Poseidon([l, r])` (t=3) |
//!
//! For the byte-oriented hashers the one-byte prefix separates the two domains, exactly as in
//! RFC 6962. For Poseidon, leaves and nodes use permutations of different widths (13 and 3), which
//! have different round constants and MDS matrices; see [`crate::poseidon`] for why that separates
//! them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::{CommitError, Digest};

/// Prefix byte of a leaf preimage (RFC 6962 §2.1).
pub const LEAF_PREFIX: u8 = 0x00;
/// Prefix byte of an internal node preimage (RFC 6962 §2.1).
pub const NODE_PREFIX: u8 = 0x01;

/// A pair of domain-separated hash functions: one for leaves, one for internal nodes.
///
/// Implementations must guarantee that no leaf digest equals a node digest except by a collision
/// of the underlying primitive.
pub trait Hasher: Send + Sync {
    /// Which hasher this is (used in statements and encodings).
    fn id(&self) -> HasherId;

    /// Hashes a leaf whose data is the concatenation of `parts` (given in pieces so that a cell's
    /// header and its element bytes need not be copied into one buffer).
    fn hash_leaf(&self, parts: &[&[u8]]) -> Digest;

    /// Hashes an internal node from its left and right children.
    fn hash_node(&self, left: &Digest, right: &Digest) -> Digest;

    /// Whether `digest` is a value this hasher can output. Verifiers call it on every digest a
    /// proof supplies, so that a proof has exactly one encoding. Always true for BLAKE3 and
    /// SHA-256; for Poseidon, true iff the big-endian value is below the BN254 scalar modulus.
    fn is_canonical(&self, digest: &Digest) -> bool {
        let _ = digest;
        true
    }
}

/// BLAKE3 with RFC 6962-style prefixes; the default hasher for bulk activation data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Blake3;

impl Hasher for Blake3 {
    fn id(&self) -> HasherId {
        HasherId::Blake3
    }

    fn hash_leaf(&self, parts: &[&[u8]]) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(&[LEAF_PREFIX]);
        for p in parts {
            h.update(p);
        }
        Digest(*h.finalize().as_bytes())
    }

    fn hash_node(&self, left: &Digest, right: &Digest) -> Digest {
        let mut buf = [0u8; 65];
        buf[0] = NODE_PREFIX;
        buf[1..33].copy_from_slice(&left.0);
        buf[33..].copy_from_slice(&right.0);
        Digest(*blake3::hash(&buf).as_bytes())
    }
}

/// SHA-256 laid out exactly as RFC 6962 §2.1: leaf = SHA-256(0x00 ‖ d), node = SHA-256(0x01 ‖ l ‖ r).
///
/// With raw leaf data this reproduces Certificate Transparency tree heads bit for bit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sha256;

impl Hasher for Sha256 {
    fn id(&self) -> HasherId {
        HasherId::Sha256
    }

    fn hash_leaf(&self, parts: &[&[u8]]) -> Digest {
        let mut h = sha2::Sha256::new();
        h.update([LEAF_PREFIX]);
        for p in parts {
            h.update(p);
        }
        Digest(h.finalize().into())
    }

    fn hash_node(&self, left: &Digest, right: &Digest) -> Digest {
        let mut h = sha2::Sha256::new();
        h.update([NODE_PREFIX]);
        h.update(left.0);
        h.update(right.0);
        Digest(h.finalize().into())
    }
}

pub use crate::poseidon::Poseidon;

/// The hashers this crate knows, as a plain value for statements, files and the CLI.
///
/// It implements [`Hasher`] itself by dispatching to [`Blake3`], [`Sha256`] or [`Poseidon`].
/// Names (serde, [`FromStr`], [`fmt::Display`]): `blake3`, `sha256`, `poseidon`. Codes in binary
/// encodings: 1, 2, 3.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HasherId {
    /// [`Blake3`], the default.
    #[default]
    Blake3,
    /// [`Sha256`] (RFC 6962).
    Sha256,
    /// [`Poseidon`] over BN254, circom-compatible.
    Poseidon,
}

impl HasherId {
    /// All hashers, in code order.
    pub const ALL: [HasherId; 3] = [HasherId::Blake3, HasherId::Sha256, HasherId::Poseidon];

    /// The hasher's name.
    pub fn name(self) -> &'static str {
        match self {
            HasherId::Blake3 => "blake3",
            HasherId::Sha256 => "sha256",
            HasherId::Poseidon => "poseidon",
        }
    }

    /// The hasher's one-byte code in binary encodings.
    pub fn code(self) -> u8 {
        match self {
            HasherId::Blake3 => 1,
            HasherId::Sha256 => 2,
            HasherId::Poseidon => 3,
        }
    }

    /// The hasher with the given code.
    pub fn from_code(code: u8) -> Result<Self, CommitError> {
        HasherId::ALL
            .into_iter()
            .find(|h| h.code() == code)
            .ok_or_else(|| CommitError::UnknownHasher(format!("code {code}")))
    }
}

impl fmt::Display for HasherId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HasherId {
    type Err = CommitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HasherId::ALL
            .into_iter()
            .find(|h| h.name() == s)
            .ok_or_else(|| CommitError::UnknownHasher(s.to_string()))
    }
}

impl Hasher for HasherId {
    fn id(&self) -> HasherId {
        *self
    }

    fn hash_leaf(&self, parts: &[&[u8]]) -> Digest {
        match self {
            HasherId::Blake3 => Blake3.hash_leaf(parts),
            HasherId::Sha256 => Sha256.hash_leaf(parts),
            HasherId::Poseidon => Poseidon.hash_leaf(parts),
        }
    }

    fn hash_node(&self, left: &Digest, right: &Digest) -> Digest {
        match self {
            HasherId::Blake3 => Blake3.hash_node(left, right),
            HasherId::Sha256 => Sha256.hash_node(left, right),
            HasherId::Poseidon => Poseidon.hash_node(left, right),
        }
    }

    fn is_canonical(&self, digest: &Digest) -> bool {
        match self {
            HasherId::Blake3 => Blake3.is_canonical(digest),
            HasherId::Sha256 => Sha256.is_canonical(digest),
            HasherId::Poseidon => Poseidon.is_canonical(digest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962 leaf hashes of the Certificate Transparency test inputs "" and "00".
    #[test]
    fn rfc6962_leaf_hashes() {
        assert_eq!(
            Sha256.hash_leaf(&[]).to_hex(),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_eq!(
            Sha256.hash_leaf(&[&[0x00]]).to_hex(),
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"
        );
    }

    #[test]
    fn parts_are_concatenated() {
        for h in HasherId::ALL {
            assert_eq!(h.hash_leaf(&[b"ab", b"cd"]), h.hash_leaf(&[b"abcd"]), "{h}");
            assert_eq!(
                h.hash_leaf(&[b"", b"abcd", b""]),
                h.hash_leaf(&[b"abcd"]),
                "{h}"
            );
        }
    }

    #[test]
    fn leaf_and_node_domains_differ() {
        let l = Digest([7; 32]);
        let r = Digest([9; 32]);
        for h in HasherId::ALL {
            let node = h.hash_node(&l, &r);
            let as_leaf = h.hash_leaf(&[&l.0, &r.0]);
            assert_ne!(node, as_leaf, "{h}");
        }
    }

    #[test]
    fn names_and_codes_round_trip() {
        for h in HasherId::ALL {
            assert_eq!(h.name().parse::<HasherId>().unwrap(), h);
            assert_eq!(HasherId::from_code(h.code()).unwrap(), h);
            let json = serde_json::to_string(&h).unwrap();
            assert_eq!(json, format!("\"{}\"", h.name()));
        }
        assert!("md5".parse::<HasherId>().is_err());
        assert!(HasherId::from_code(0).is_err());
    }
}
