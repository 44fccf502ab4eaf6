//! Inclusion and batch proofs, and their verification against the verifier's own geometry.
//!
//! # Which siblings a proof carries
//! Work level by level in the view of [`crate::tree`]. Start with the set `K_0` of opened leaf
//! positions (sorted, distinct) at level 0 of width `w_0 = n`. At level `h`, walk `K_h` in
//! ascending order; for a known position `i`:
//!
//! * if `i` is even and `i + 1` is also known, the parent needs nothing;
//! * if `i` is even and `i + 1 = w_h` (no partner), the node is carried up and needs nothing;
//! * otherwise the sibling `i XOR 1` is **appended** to the proof.
//!
//! `K_{h+1} = { i / 2 : i ∈ K_h }`, `w_{h+1} = ceil(w_h / 2)`; stop when `w_h = 1`. The proof is
//! the appended siblings in that order: bottom level first, left to right within a level.
//!
//! For a single index this is exactly the RFC 6962 audit path `PATH(m, D[n])` (leaf's sibling
//! first, root's child last), so a one-index [`BatchProof`] *is* an RFC 6962 inclusion proof. For
//! several indices a sibling shared by two openings is sent once, and one that can be computed
//! from opened leaves is not sent at all: a run of `r` contiguous leaves needs at most two
//! siblings per level.
//!
//! # What the verifier trusts
//! [`verify_batch`] takes the root, the tree size and the leaf indices from the caller (the
//! verifier's own statement), never from the proof. The proof is only a list of digests; its
//! length must equal the count the verifier derives with [`sibling_count`], each digest must be
//! canonical for the hasher, and the recomputed root must equal the committed root.

use serde::{Deserialize, Serialize};

use crate::codec::{Reader, Writer};
use crate::tree::{check_size, parent_width};
use crate::{CommitError, Digest, Hasher, MerkleTree, Result};

/// Magic bytes of the binary proof encoding.
pub const PROOF_MAGIC: &str = "VTBP";
/// Version of the binary proof encoding.
pub const PROOF_VERSION: u8 = 1;
/// Largest number of siblings [`BatchProof::from_bytes`] accepts (2^24: 512 MiB of digests).
/// A verifier that knows the tree size and the indices should decode with
/// [`BatchProof::from_bytes_with_limit`] and the limit [`sibling_count`] gives, so a hostile
/// proof cannot make it read more than the proof it expects.
pub const MAX_PROOF_SIBLINGS: u64 = 1 << 24;

/// A Merkle proof for one or more leaves: the sibling digests in the order of the
/// [module docs](self). It holds nothing the verifier should trust about positions or sizes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BatchProof {
    /// Sibling digests, bottom level first, left to right within a level.
    pub siblings: Vec<Digest>,
}

/// Sorts `indices`, and checks they are non-empty, distinct and below `size`.
fn checked_sorted(size: u64, indices: &mut [u64]) -> Result<()> {
    check_size(size)?;
    if indices.is_empty() {
        return Err(CommitError::NoIndices);
    }
    indices.sort_unstable();
    for w in indices.windows(2) {
        if w[0] == w[1] {
            return Err(CommitError::DuplicateIndex { index: w[0] });
        }
    }
    let last = *indices.last().expect("non-empty");
    if last >= size {
        return Err(CommitError::IndexOutOfRange { index: last, size });
    }
    Ok(())
}

/// Walks the levels of the module docs. `visit(level, sibling_position)` is called for each
/// sibling the proof must carry, in proof order. Indices must be sorted, distinct and in range.
fn walk(size: u64, sorted: &[u64], mut visit: impl FnMut(usize, u64)) {
    let mut known: Vec<u64> = sorted.to_vec();
    let mut width = size;
    let mut level = 0usize;
    while width > 1 {
        let mut next = Vec::with_capacity(known.len());
        let mut i = 0;
        while i < known.len() {
            let p = known[i];
            if p.is_multiple_of(2) && known.get(i + 1) == Some(&(p + 1)) {
                i += 2;
            } else {
                if !(p.is_multiple_of(2) && p + 1 == width) {
                    visit(level, p ^ 1);
                }
                i += 1;
            }
            next.push(p / 2);
        }
        known = next;
        width = parent_width(width);
        level += 1;
    }
}

/// The number of siblings a proof for `indices` in a tree of `size` leaves must carry.
pub fn sibling_count(size: u64, indices: &[u64]) -> Result<u64> {
    let mut sorted = indices.to_vec();
    checked_sorted(size, &mut sorted)?;
    let mut n = 0u64;
    walk(size, &sorted, |_, _| n += 1);
    Ok(n)
}

impl MerkleTree {
    /// A batch proof for the leaves at `indices` (any order; must be distinct and in range).
    pub fn prove(&self, indices: &[u64]) -> Result<BatchProof> {
        let mut sorted = indices.to_vec();
        checked_sorted(self.size(), &mut sorted)?;
        let mut siblings = Vec::new();
        walk(self.size(), &sorted, |level, pos| {
            siblings.push(self.node(level, pos).expect("sibling lies inside the tree"));
        });
        Ok(BatchProof { siblings })
    }

    /// An inclusion proof for one leaf: the RFC 6962 audit path.
    pub fn prove_inclusion(&self, index: u64) -> Result<BatchProof> {
        self.prove(&[index])
    }
}

/// Recomputes the root from opened leaves `(index, leaf digest)` and a proof, with the tree size
/// from the verifier's statement. Checks everything [`verify_batch`] checks except the final
/// comparison with a root.
pub fn compute_root<H: Hasher + ?Sized>(
    hasher: &H,
    size: u64,
    leaves: &[(u64, Digest)],
    proof: &BatchProof,
) -> Result<Digest> {
    let mut known: Vec<(u64, Digest)> = leaves.to_vec();
    known.sort_unstable_by_key(|&(i, _)| i);
    let mut sorted: Vec<u64> = known.iter().map(|&(i, _)| i).collect();
    checked_sorted(size, &mut sorted)?;
    let expected = sibling_count(size, &sorted)?;
    let got = proof.siblings.len() as u64;
    if got != expected {
        return Err(CommitError::WrongSiblingCount { expected, got });
    }
    if let Some(&(index, _)) = known.iter().find(|(_, d)| !hasher.is_canonical(d)) {
        return Err(CommitError::NonCanonicalLeaf {
            index,
            hasher: hasher.id().name(),
        });
    }
    if let Some(position) = proof.siblings.iter().position(|d| !hasher.is_canonical(d)) {
        return Err(CommitError::NonCanonicalDigest {
            position: position as u64,
            hasher: hasher.id().name(),
        });
    }
    let mut sibs = proof.siblings.iter();
    let mut width = size;
    while width > 1 {
        let mut next = Vec::with_capacity(known.len());
        let mut i = 0;
        while i < known.len() {
            let (p, d) = known[i];
            let parent = if p.is_multiple_of(2) && known.get(i + 1).map(|k| k.0) == Some(p + 1) {
                i += 1;
                hasher.hash_node(&d, &known[i].1)
            } else if p.is_multiple_of(2) && p + 1 == width {
                d
            } else {
                let s = sibs
                    .next()
                    .ok_or(CommitError::WrongSiblingCount { expected, got })?;
                if p.is_multiple_of(2) {
                    hasher.hash_node(&d, s)
                } else {
                    hasher.hash_node(s, &d)
                }
            };
            i += 1;
            next.push((p / 2, parent));
        }
        known = next;
        width = parent_width(width);
    }
    Ok(known[0].1)
}

/// Verifies that the leaves `(index, leaf digest)` are in the tree of `size` leaves with `root`.
///
/// `root`, `size` and the indices come from the verifier's own statement. Rejects an empty index
/// set, duplicate or out-of-range indices, a proof with the wrong number of siblings (too few,
/// too many, trailing), non-canonical digests, and a root mismatch, each with its own error.
pub fn verify_batch<H: Hasher + ?Sized>(
    hasher: &H,
    root: &Digest,
    size: u64,
    leaves: &[(u64, Digest)],
    proof: &BatchProof,
) -> Result<()> {
    let computed = compute_root(hasher, size, leaves, proof)?;
    if computed != *root {
        return Err(CommitError::RootMismatch {
            expected: *root,
            computed,
        });
    }
    Ok(())
}

/// Verifies an RFC 6962 inclusion proof (audit path) for one leaf.
pub fn verify_inclusion<H: Hasher + ?Sized>(
    hasher: &H,
    root: &Digest,
    size: u64,
    index: u64,
    leaf: &Digest,
    proof: &BatchProof,
) -> Result<()> {
    verify_batch(hasher, root, size, &[(index, *leaf)], proof)
}

impl BatchProof {
    /// Compact binary encoding: `"VTBP" ‖ version (u8 = 1) ‖ count (u32 LE) ‖ count × 32 bytes`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(PROOF_MAGIC.as_bytes()).u8(PROOF_VERSION);
        w.u32(u32::try_from(self.siblings.len()).expect("proof sizes are bounded by tree depth"));
        for s in &self.siblings {
            w.digest(s);
        }
        w.into_bytes()
    }

    /// Strict decoding with the default limit [`MAX_PROOF_SIBLINGS`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_bytes_with_limit(bytes, MAX_PROOF_SIBLINGS)
    }

    /// Strict decoding: wrong magic or version, a count above `max_siblings`, truncation and
    /// trailing bytes are errors. Never panics.
    pub fn from_bytes_with_limit(bytes: &[u8], max_siblings: u64) -> Result<Self> {
        let mut r = Reader::new(bytes);
        r.magic(PROOF_MAGIC)?;
        r.version(PROOF_VERSION)?;
        let n = r.count("proof sibling count", max_siblings, 32)?;
        let siblings = (0..n).map(|_| r.digest()).collect::<Result<Vec<_>>>()?;
        r.finish()?;
        Ok(BatchProof { siblings })
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        9 + 32 * self.siblings.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HasherId;

    fn tree(n: u64) -> MerkleTree {
        let data: Vec<[u8; 8]> = (0..n).map(|i| i.to_le_bytes()).collect();
        MerkleTree::from_leaf_data(HasherId::Blake3, &data).unwrap()
    }

    #[test]
    fn every_subset_verifies_in_small_trees() {
        for n in 1..=9u64 {
            let t = tree(n);
            for mask in 1u32..(1 << n) {
                let idx: Vec<u64> = (0..n).filter(|i| mask >> i & 1 == 1).collect();
                let proof = t.prove(&idx).unwrap();
                let leaves: Vec<_> = idx.iter().map(|&i| (i, t.leaf(i).unwrap())).collect();
                verify_batch(&HasherId::Blake3, &t.root(), n, &leaves, &proof).unwrap();
                assert_eq!(proof.siblings.len() as u64, sibling_count(n, &idx).unwrap());
            }
        }
    }

    #[test]
    fn bad_inputs_get_typed_errors() {
        let t = tree(10);
        let root = t.root();
        let h = HasherId::Blake3;
        let p = t.prove(&[3, 4]).unwrap();
        let l3 = (3, t.leaf(3).unwrap());
        let l4 = (4, t.leaf(4).unwrap());
        assert_eq!(
            verify_batch(&h, &root, 10, &[], &p),
            Err(CommitError::NoIndices)
        );
        assert_eq!(
            verify_batch(&h, &root, 10, &[l3, l3], &p),
            Err(CommitError::DuplicateIndex { index: 3 })
        );
        assert_eq!(
            verify_batch(&h, &root, 10, &[l3, (10, l4.1)], &p),
            Err(CommitError::IndexOutOfRange {
                index: 10,
                size: 10
            })
        );
        assert_eq!(
            verify_batch(&h, &root, 0, &[l3], &p),
            Err(CommitError::EmptyTree)
        );
        let mut long = p.clone();
        long.siblings.push(Digest::default());
        assert!(matches!(
            verify_batch(&h, &root, 10, &[l3, l4], &long),
            Err(CommitError::WrongSiblingCount { .. })
        ));
        let mut short = p.clone();
        short.siblings.pop();
        assert!(matches!(
            verify_batch(&h, &root, 10, &[l3, l4], &short),
            Err(CommitError::WrongSiblingCount { .. })
        ));
        // The size comes from the verifier: where the shape differs, the proof fails.
        assert!(verify_batch(&h, &root, 5, &[l3, l4], &p).is_err());
        verify_batch(&h, &root, 10, &[l4, l3], &p).unwrap();
    }

    #[test]
    fn binary_encoding_is_strict() {
        let p = tree(100).prove(&[1, 50, 99]).unwrap();
        let bytes = p.to_bytes();
        assert_eq!(bytes.len(), p.encoded_len());
        assert_eq!(BatchProof::from_bytes(&bytes).unwrap(), p);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            BatchProof::from_bytes(&trailing),
            Err(CommitError::TrailingBytes { count: 1 })
        ));
        assert!(matches!(
            BatchProof::from_bytes(&bytes[..bytes.len() - 1]),
            Err(CommitError::Truncated { .. })
        ));
        assert!(matches!(
            BatchProof::from_bytes_with_limit(&bytes, 2),
            Err(CommitError::LimitExceeded { .. })
        ));
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<BatchProof>(&json).unwrap(), p);
    }
}
