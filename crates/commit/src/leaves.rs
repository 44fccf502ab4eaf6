//! A committed tree's leaf digests in a file of their own (issue 17): a prover that keeps them
//! beside its trace rebuilds the tree from `32·n` bytes instead of re-hashing every cell, so
//! answering a challenge reads only the cells it opens.
//!
//! # Encoding (version 1, little-endian)
//!
//! | field | bytes |
//! |---|---|
//! | magic `VTLEAVES` | 8 |
//! | version (1) | 1 |
//! | hasher code ([`HasherId::code`]) | 1 |
//! | leaf count `n` (`1 ≤ n ≤` [`MAX_TREE_SIZE`]) | 8 |
//! | root of the tree over the leaves | 32 |
//! | the `n` leaf digests, in leaf order | `32·n` |
//!
//! Decoding is strict: the exact length, a known hasher, canonical digests for the hasher, and
//! the recorded root equal to the root rebuilt from the leaves (so a truncated, padded or
//! altered file is refused, never half-read).

use crate::codec::{Reader, Writer};
use crate::{CommitError, Hasher, HasherId, MerkleTree, Result, DIGEST_LEN, MAX_TREE_SIZE};

/// The magic that opens a leaf-digest file.
pub const LEAVES_MAGIC: &str = "VTLEAVES";
/// The encoding version this build writes and reads.
pub const LEAVES_VERSION: u8 = 1;

/// The leaf-digest file of `tree` (see the [module docs](self)).
pub fn encode_leaves(tree: &MerkleTree) -> Vec<u8> {
    let leaves = tree.leaves();
    let mut w = Writer::new();
    w.bytes(LEAVES_MAGIC.as_bytes())
        .u8(LEAVES_VERSION)
        .u8(tree.hasher().code())
        .u64(leaves.len() as u64)
        .digest(&tree.root());
    for leaf in leaves {
        w.digest(leaf);
    }
    w.into_bytes()
}

/// The tree a leaf-digest file records, rebuilt from its leaves and checked against its root.
///
/// # Errors
/// A wrong magic or version, an unknown hasher, a count of 0 or above [`MAX_TREE_SIZE`], a
/// length that is not exactly the count's, a non-canonical digest, or a recorded root the
/// leaves do not give ([`CommitError::RootMismatch`]).
pub fn decode_leaves(bytes: &[u8]) -> Result<MerkleTree> {
    let mut r = Reader::new(bytes);
    r.magic(LEAVES_MAGIC)?;
    r.version(LEAVES_VERSION)?;
    let hasher = HasherId::from_code(r.u8()?)?;
    let n = r.u64()?;
    if n == 0 {
        return Err(CommitError::EmptyTree);
    }
    if n > MAX_TREE_SIZE {
        return Err(CommitError::TreeTooLarge {
            size: n,
            max: MAX_TREE_SIZE,
        });
    }
    let root = r.digest()?;
    let need = n.saturating_mul(DIGEST_LEN as u64);
    if need > r.remaining() as u64 {
        return Err(CommitError::Truncated {
            offset: (bytes.len() - r.remaining()) as u64,
            needed: need - r.remaining() as u64,
        });
    }
    let mut leaves = Vec::with_capacity(n as usize);
    for index in 0..n {
        let leaf = r.digest()?;
        if !hasher.is_canonical(&leaf) {
            return Err(CommitError::NonCanonicalLeaf {
                index,
                hasher: hasher.name(),
            });
        }
        leaves.push(leaf);
    }
    r.finish()?;
    let tree = MerkleTree::from_leaf_digests(hasher, leaves)?;
    if tree.root() != root {
        return Err(CommitError::RootMismatch {
            expected: root,
            computed: tree.root(),
        });
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tree(hasher: HasherId, n: usize) -> MerkleTree {
        let data: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 1 + i % 7]).collect();
        MerkleTree::from_leaf_data(hasher, &data).expect("tree")
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let t = tree(HasherId::Blake3, 3);
        let bytes = encode_leaves(&t);
        assert_eq!(bytes.len(), 8 + 1 + 1 + 8 + 32 + 3 * 32);
        // magic, version 1, blake3's code, count 3
        let mut header = b"VTLEAVES".to_vec();
        header.extend([1, HasherId::Blake3.code()]);
        header.extend(3u64.to_le_bytes());
        assert_eq!(&bytes[..18], &header[..]);
        assert_eq!(&bytes[18..50], t.root().as_bytes());
        assert_eq!(&bytes[50..82], t.leaves()[0].as_bytes());
        assert_eq!(decode_leaves(&bytes).expect("decodes"), t);
    }

    #[test]
    fn bad_files_are_refused() {
        let bytes = encode_leaves(&tree(HasherId::Sha256, 5));
        assert!(matches!(
            decode_leaves(&bytes[..bytes.len() - 1]),
            Err(CommitError::Truncated { .. })
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode_leaves(&long),
            Err(CommitError::TrailingBytes { .. })
        ));
        let mut zero = bytes.clone();
        zero[10..18].copy_from_slice(&0u64.to_le_bytes());
        assert!(matches!(decode_leaves(&zero), Err(CommitError::EmptyTree)));
        let mut huge = bytes.clone();
        huge[10..18].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode_leaves(&huge),
            Err(CommitError::TreeTooLarge { .. })
        ));
        let mut big = bytes.clone();
        big[10..18].copy_from_slice(&(1u64 << 39).to_le_bytes());
        assert!(matches!(
            decode_leaves(&big),
            Err(CommitError::Truncated { .. })
        ));
        // another hasher's reading of the same leaves gives another root
        let mut other = bytes.clone();
        other[9] = HasherId::Blake3.code();
        assert!(matches!(
            decode_leaves(&other),
            Err(CommitError::RootMismatch { .. })
        ));
        assert!(decode_leaves(b"").is_err());
    }

    proptest! {
        #[test]
        fn every_tree_round_trips_and_every_flipped_byte_is_refused(
            n in 1usize..40,
            hasher in prop::sample::select(vec![HasherId::Blake3, HasherId::Sha256]),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let t = tree(hasher, n);
            let bytes = encode_leaves(&t);
            prop_assert_eq!(&decode_leaves(&bytes).expect("decodes"), &t);
            let mut bad = bytes.clone();
            bad[at.index(bytes.len())] ^= 1 << bit;
            prop_assert!(decode_leaves(&bad).is_err());
        }
    }
}
