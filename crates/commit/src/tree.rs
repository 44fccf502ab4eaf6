//! Merkle trees of RFC 6962 shape, built in memory (in parallel) or streamed in O(log n) memory.
//!
//! # Shape
//! RFC 6962 §2.1 defines the hash of `n` leaves recursively: for `n > 1` split at `k`, the largest
//! power of two below `n`, and hash `node(MTH(D[0:k]), MTH(D[k:n]))`. Equivalently, level by level:
//! level 0 holds the `n` leaf digests; level `h+1` pairs positions `2j, 2j+1` of level `h` into
//! `node(L[2j], L[2j+1])`, and a last position without a partner is carried up **unchanged**.
//! The root is the single entry of the top level. No leaf is ever duplicated, so the tree of
//! `[1..6]` and the tree of `[1..6, 5, 6]` differ (the shape behind CVE-2012-2459 cannot collide).

use rayon::prelude::*;

use crate::{CommitError, Digest, Hasher, HasherId, Result, MAX_TREE_SIZE};

/// Level width below which nodes are hashed on the calling thread.
const PAR_THRESHOLD: usize = 1 << 12;

/// A Merkle tree held in memory with every level, so proofs are read off directly.
///
/// Memory: about `2n` digests (64 bytes per leaf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    hasher: HasherId,
    levels: Vec<Vec<Digest>>,
}

/// Width of the level above one of width `w`.
pub(crate) fn parent_width(w: u64) -> u64 {
    w.div_ceil(2)
}

pub(crate) fn check_size(size: u64) -> Result<()> {
    if size == 0 {
        return Err(CommitError::EmptyTree);
    }
    if size > MAX_TREE_SIZE {
        return Err(CommitError::TreeTooLarge {
            size,
            max: MAX_TREE_SIZE,
        });
    }
    Ok(())
}

fn next_level(hasher: HasherId, level: &[Digest]) -> Vec<Digest> {
    let pair = |c: &[Digest]| match c {
        [l, r] => hasher.hash_node(l, r),
        [single] => *single,
        _ => unreachable!("chunks(2) yields one or two items"),
    };
    if level.len() >= PAR_THRESHOLD {
        level.par_chunks(2).map(pair).collect()
    } else {
        level.chunks(2).map(pair).collect()
    }
}

impl MerkleTree {
    /// Builds the tree over already-hashed leaves.
    pub fn from_leaf_digests(hasher: HasherId, leaves: Vec<Digest>) -> Result<Self> {
        check_size(leaves.len() as u64)?;
        let mut levels = vec![leaves];
        while let Some(top) = levels.last().filter(|l| l.len() > 1) {
            let next = next_level(hasher, top);
            levels.push(next);
        }
        Ok(MerkleTree { hasher, levels })
    }

    /// Hashes raw leaf data with the hasher's leaf function (in parallel) and builds the tree.
    pub fn from_leaf_data<T: AsRef<[u8]> + Sync>(hasher: HasherId, data: &[T]) -> Result<Self> {
        check_size(data.len() as u64)?;
        let leaves = data
            .par_iter()
            .map(|d| hasher.hash_leaf(&[d.as_ref()]))
            .collect();
        Self::from_leaf_digests(hasher, leaves)
    }

    /// The hasher the tree was built with.
    pub fn hasher(&self) -> HasherId {
        self.hasher
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels[0].len() as u64
    }

    /// The root digest.
    pub fn root(&self) -> Digest {
        self.levels.last().expect("a tree has at least one level")[0]
    }

    /// Leaf digest at `index`, if in range.
    pub fn leaf(&self, index: u64) -> Option<Digest> {
        self.levels[0].get(usize::try_from(index).ok()?).copied()
    }

    /// All leaf digests in order.
    pub fn leaves(&self) -> &[Digest] {
        &self.levels[0]
    }

    /// Node at `(level, position)` in the level-by-level view of the module docs.
    pub fn node(&self, level: usize, position: u64) -> Option<Digest> {
        self.levels
            .get(level)?
            .get(usize::try_from(position).ok()?)
            .copied()
    }
}

/// Builds a root from leaves pushed one at a time, holding O(log n) digests.
///
/// It keeps a stack of the roots of complete subtrees of decreasing height (the binary
/// representation of the count so far); `finish` folds them right to left, which is exactly
/// RFC 6962's split. A prover that hashes each layer as inference produces it never holds the
/// whole trace.
#[derive(Debug, Clone)]
pub struct StreamingBuilder {
    hasher: HasherId,
    stack: Vec<(u32, Digest)>,
    count: u64,
}

impl StreamingBuilder {
    /// An empty builder.
    pub fn new(hasher: HasherId) -> Self {
        StreamingBuilder {
            hasher,
            stack: Vec::with_capacity(64),
            count: 0,
        }
    }

    /// Leaves pushed so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether no leaf was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Digests currently held (at most one per bit of the count).
    pub fn held(&self) -> usize {
        self.stack.len()
    }

    /// Pushes a leaf given by its data (hashed with the leaf function).
    pub fn push_leaf(&mut self, parts: &[&[u8]]) -> Result<()> {
        let d = self.hasher.hash_leaf(parts);
        self.push_digest(d)
    }

    /// Pushes an already-hashed leaf.
    pub fn push_digest(&mut self, leaf: Digest) -> Result<()> {
        if self.count >= MAX_TREE_SIZE {
            return Err(CommitError::TreeTooLarge {
                size: self.count + 1,
                max: MAX_TREE_SIZE,
            });
        }
        let mut cur = (0u32, leaf);
        while let Some(&(h, left)) = self.stack.last() {
            if h != cur.0 {
                break;
            }
            self.stack.pop();
            cur = (h + 1, self.hasher.hash_node(&left, &cur.1));
        }
        self.stack.push(cur);
        self.count += 1;
        Ok(())
    }

    /// The root of all leaves pushed; fails if none was.
    pub fn finish(self) -> Result<Digest> {
        let mut it = self.stack.into_iter().rev();
        let mut acc = it.next().ok_or(CommitError::EmptyTree)?.1;
        for (_, left) in it {
            acc = self.hasher.hash_node(&left, &acc);
        }
        Ok(acc)
    }
}

/// The root of a sequence of leaf digests (sequential, O(log n) extra memory).
pub fn root_of(hasher: HasherId, leaves: &[Digest]) -> Result<Digest> {
    let mut b = StreamingBuilder::new(hasher);
    for l in leaves {
        b.push_digest(*l)?;
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962 §2.1 recursion, written directly, as an independent oracle.
    fn mth(h: HasherId, d: &[Digest]) -> Digest {
        if d.len() == 1 {
            return d[0];
        }
        let k = 1usize << (usize::BITS - 1 - (d.len() - 1).leading_zeros());
        h.hash_node(&mth(h, &d[..k]), &mth(h, &d[k..]))
    }

    fn leaves(n: usize) -> Vec<Digest> {
        (0..n)
            .map(|i| HasherId::Sha256.hash_leaf(&[&(i as u64).to_le_bytes()]))
            .collect()
    }

    #[test]
    fn level_view_equals_rfc_recursion_and_streaming() {
        for n in 1..=70 {
            let l = leaves(n);
            let tree = MerkleTree::from_leaf_digests(HasherId::Sha256, l.clone()).unwrap();
            assert_eq!(tree.root(), mth(HasherId::Sha256, &l), "n = {n}");
            assert_eq!(
                root_of(HasherId::Sha256, &l).unwrap(),
                tree.root(),
                "n = {n}"
            );
        }
    }

    #[test]
    fn parallel_levels_match_sequential() {
        let n = 3 * PAR_THRESHOLD + 5;
        let l = leaves(n);
        let tree = MerkleTree::from_leaf_digests(HasherId::Blake3, l.clone()).unwrap();
        assert_eq!(tree.root(), root_of(HasherId::Blake3, &l).unwrap());
    }

    #[test]
    fn streaming_memory_is_logarithmic() {
        let mut b = StreamingBuilder::new(HasherId::Blake3);
        let mut most = 0;
        for i in 0u64..5000 {
            b.push_leaf(&[&i.to_le_bytes()]).unwrap();
            most = most.max(b.held());
        }
        assert!(most <= 13, "held {most} digests for 5000 leaves");
    }

    #[test]
    fn empty_is_an_error() {
        assert_eq!(
            MerkleTree::from_leaf_digests(HasherId::Blake3, vec![]),
            Err(CommitError::EmptyTree)
        );
        assert_eq!(
            StreamingBuilder::new(HasherId::Blake3).finish(),
            Err(CommitError::EmptyTree)
        );
    }
}
