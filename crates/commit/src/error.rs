//! The crate's one error type.

use thiserror::Error;

/// Every way a commitment, a proof or an encoding can be refused.
///
/// Verification and decoding never panic on hostile input: each failure is one of these variants,
/// with enough context to say what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CommitError {
    /// A Merkle tree needs at least one leaf.
    #[error("a Merkle tree needs at least one leaf")]
    EmptyTree,
    /// The tree size exceeds [`crate::MAX_TREE_SIZE`].
    #[error("tree size {size} exceeds the limit of {max} leaves")]
    TreeTooLarge {
        /// The size asked for.
        size: u64,
        /// The largest size accepted.
        max: u64,
    },
    /// A proof must open at least one leaf.
    #[error("no leaf indices were given")]
    NoIndices,
    /// A leaf index is not below the tree size.
    #[error("leaf index {index} is out of range for a tree of {size} leaves")]
    IndexOutOfRange {
        /// The offending index.
        index: u64,
        /// The tree size from the verifier's statement.
        size: u64,
    },
    /// The same leaf index was given twice.
    #[error("leaf index {index} was given more than once")]
    DuplicateIndex {
        /// The repeated index.
        index: u64,
    },
    /// The proof does not carry exactly the number of sibling hashes the verifier's own geometry
    /// requires.
    #[error("proof carries {got} sibling hashes, the tree shape requires {expected}")]
    WrongSiblingCount {
        /// What the verifier computed from the tree size and the indices.
        expected: u64,
        /// What the proof carried.
        got: u64,
    },
    /// A digest that is not a valid output of the hasher (for Poseidon: not a canonical field
    /// element below the BN254 scalar modulus).
    #[error("digest at position {position} is not a canonical {hasher} digest")]
    NonCanonicalDigest {
        /// Position of the digest in the proof's sibling list (0 for a lone root).
        position: u64,
        /// The hasher's name.
        hasher: &'static str,
    },
    /// An opened leaf digest that is not a canonical output of the hasher (Poseidon: at or above
    /// the modulus). Verifiers that hash the leaf data themselves never produce one.
    #[error("leaf digest at index {index} is not a canonical {hasher} digest")]
    NonCanonicalLeaf {
        /// The leaf index.
        index: u64,
        /// The hasher's name.
        hasher: &'static str,
    },
    /// The recomputed root differs from the committed root.
    #[error("recomputed root {computed} does not match the committed root {expected}")]
    RootMismatch {
        /// The root the verifier holds.
        expected: crate::Digest,
        /// The root recomputed from the proof.
        computed: crate::Digest,
    },
    /// The trace geometry is invalid (zero or absurd sizes, overflow).
    #[error("invalid trace geometry: {0}")]
    InvalidGeometry(String),
    /// A cell reference lies outside the geometry.
    #[error("cell (layer {layer}, chunk {chunk}) lies outside the trace geometry")]
    CellOutOfRange {
        /// Layer index.
        layer: u32,
        /// Chunk index.
        chunk: u32,
    },
    /// A byte buffer has the wrong length for what it should hold.
    #[error("{what}: expected {expected} bytes, got {got}")]
    WrongLength {
        /// What the buffer is.
        what: &'static str,
        /// The length the geometry requires.
        expected: u64,
        /// The length given.
        got: u64,
    },
    /// A string that should hold hex digits holds something else.
    #[error("invalid hex: {0}")]
    InvalidHex(String),
    /// A hasher name or code that this crate does not know.
    #[error("unknown hasher {0:?} (expected blake3, sha256 or poseidon)")]
    UnknownHasher(String),
    /// A dtype name or code that this crate does not know.
    #[error("unknown or unsupported dtype {0:?} (expected f32, f16, bf16 or i8)")]
    UnknownDtype(String),
    /// A streaming committer was pushed more layers than its geometry has, or finished early.
    #[error("streaming builder: {0}")]
    Streaming(String),
    /// The input ended before the structure being decoded did.
    #[error("truncated input: needed {needed} more bytes at offset {offset}")]
    Truncated {
        /// Offset at which the read was attempted.
        offset: u64,
        /// Bytes that were missing.
        needed: u64,
    },
    /// Bytes remain after a complete structure was decoded.
    #[error("{count} trailing bytes after the encoded value")]
    TrailingBytes {
        /// How many bytes were left over.
        count: u64,
    },
    /// The encoding does not start with the expected magic bytes.
    #[error("bad magic: expected {expected:?}")]
    BadMagic {
        /// The magic the decoder expected.
        expected: &'static str,
    },
    /// The encoding's version is not one this decoder reads.
    #[error("unsupported encoding version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The version found.
        found: u8,
        /// The version supported.
        supported: u8,
    },
    /// A length or count in an encoding exceeds the decoder's limit.
    #[error("{what} of {value} exceeds the limit of {max}")]
    LimitExceeded {
        /// Which quantity.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        max: u64,
    },
}

impl CommitError {
    /// Whether the error is the input's fault (bad input: a front end exits 2) rather than a
    /// failure of this side (exit 1).
    ///
    /// Every variant is about what the caller handed in: a geometry, a proof, indices, an
    /// encoding, a hasher or dtype name, or data that does not fit its geometry (a streaming
    /// committer fed the wrong number of layers). This crate does no I/O of its own and has no
    /// engine, so every error is bad input; the match is exhaustive so that a new variant must
    /// be classified here.
    pub fn is_input(&self) -> bool {
        match self {
            CommitError::EmptyTree
            | CommitError::TreeTooLarge { .. }
            | CommitError::NoIndices
            | CommitError::IndexOutOfRange { .. }
            | CommitError::DuplicateIndex { .. }
            | CommitError::WrongSiblingCount { .. }
            | CommitError::NonCanonicalDigest { .. }
            | CommitError::NonCanonicalLeaf { .. }
            | CommitError::RootMismatch { .. }
            | CommitError::InvalidGeometry(_)
            | CommitError::CellOutOfRange { .. }
            | CommitError::WrongLength { .. }
            | CommitError::InvalidHex(_)
            | CommitError::UnknownHasher(_)
            | CommitError::UnknownDtype(_)
            | CommitError::Streaming(_)
            | CommitError::Truncated { .. }
            | CommitError::TrailingBytes { .. }
            | CommitError::BadMagic { .. }
            | CommitError::UnsupportedVersion { .. }
            | CommitError::LimitExceeded { .. } => true,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = CommitError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_commit_error_is_input() {
        assert!(CommitError::EmptyTree.is_input());
        assert!(CommitError::Streaming("early".into()).is_input());
        assert!(CommitError::LimitExceeded {
            what: "x",
            value: 2,
            max: 1
        }
        .is_input());
    }
}
