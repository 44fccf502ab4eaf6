//! # veritrace-commit
//!
//! The cryptographic core of veritrace: a prover commits to the activation trace of an
//! inference with one Merkle root, and later opens sampled cells with proofs a verifier checks
//! against that root.
//!
//! * [`Digest`]: 32-byte hash values, hex in serde.
//! * [`Hasher`]: domain-separated leaf and node functions; [`Blake3`] (default), [`Sha256`]
//!   (RFC 6962 exactly) and [`Poseidon`] (BN254, circom-compatible, for SNARK-facing use).
//! * [`TraceGeometry`] and [`CellId`]: the canonical cell encoding a leaf binds (position,
//!   dtype, shape, little-endian elements); see [`cell`].
//! * [`MerkleTree`] (RFC 6962 shape, parallel leaf hashing) and [`StreamingBuilder`]
//!   (O(log n) memory); [`commit_trace`] and [`TraceCommitter`] for whole traces.
//! * [`BatchProof`]: inclusion and batch proofs; [`verify_batch`] takes root, size and indices
//!   from the verifier, never from the proof.
//! * [`codec`]: the strict binary reader and writer behind the compact encodings.
//!
//! The normative byte layouts and test vectors are in `specs/commitment.md`.
//!
//! ```
//! use veritrace_commit::{commit_trace, verify_batch, CellId, Dtype, HasherId, TraceGeometry};
//!
//! // Two layers of 8 tokens x 4 hidden f32, cut into chunks of 4 tokens: 4 cells.
//! let geometry = TraceGeometry::new(2, 8, 4, 4, Dtype::F32)?;
//! let layer = vec![0u8; geometry.layer_byte_len()];
//! let tree = commit_trace(HasherId::Blake3, &geometry, &[&layer, &layer])?;
//!
//! // Open cell (layer 1, chunk 0) and check it against the root.
//! let cell = CellId { layer: 1, chunk: 0 };
//! let index = geometry.cell_index(cell)?;
//! let proof = tree.prove(&[index])?;
//! let leaf = geometry.hash_cell(&HasherId::Blake3, cell, &layer[geometry.cell_byte_range(cell)?])?;
//! verify_batch(&HasherId::Blake3, &tree.root(), geometry.num_cells(), &[(index, leaf)], &proof)?;
//! # Ok::<(), veritrace_commit::CommitError>(())
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod cell;
pub mod codec;
mod digest;
mod error;
pub mod hasher;
pub mod leaves;
pub mod poseidon;
pub mod proof;
pub mod trace;
pub mod tree;

pub use cell::{CellId, Dtype, TraceGeometry, CELL_DOMAIN, CELL_HEADER_LEN};
pub use digest::{Digest, DIGEST_LEN};
pub use error::{CommitError, Result};
pub use hasher::{Blake3, Hasher, HasherId, Sha256, LEAF_PREFIX, NODE_PREFIX};
pub use leaves::{decode_leaves, encode_leaves};
pub use poseidon::Poseidon;
pub use proof::{compute_root, sibling_count, verify_batch, verify_inclusion, BatchProof};
pub use trace::{commit_trace, layer_leaves, TraceCommitment, TraceCommitter};
pub use tree::{root_of, MerkleTree, StreamingBuilder};

/// Largest number of leaves a tree may have (2^40): bounds proof depth at 40 levels.
pub const MAX_TREE_SIZE: u64 = 1 << 40;
