//! Committing whole activation traces: all at once (cells hashed in parallel) or layer by layer
//! as inference produces them (O(log n) tree memory).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::codec::{Reader, Writer};
use crate::{
    CellId, CommitError, Digest, Dtype, Hasher, HasherId, MerkleTree, Result, StreamingBuilder,
    TraceGeometry,
};

/// What a prover publishes about a committed trace: the root, the hasher and the geometry.
///
/// Deserialization checks the geometry and that the root is canonical for the hasher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawCommitment")]
pub struct TraceCommitment {
    /// Merkle root over all cells in layer-major order.
    pub root: Digest,
    /// Hasher used for leaves and nodes.
    pub hasher: HasherId,
    /// Shape of the trace and its cells.
    pub geometry: TraceGeometry,
}

#[derive(Deserialize)]
struct RawCommitment {
    root: Digest,
    hasher: HasherId,
    geometry: TraceGeometry,
}

impl TryFrom<RawCommitment> for TraceCommitment {
    type Error = CommitError;
    fn try_from(r: RawCommitment) -> Result<Self> {
        if !r.hasher.is_canonical(&r.root) {
            return Err(CommitError::NonCanonicalDigest {
                position: 0,
                hasher: r.hasher.name(),
            });
        }
        Ok(TraceCommitment {
            root: r.root,
            hasher: r.hasher,
            geometry: r.geometry,
        })
    }
}

/// Magic bytes of the binary trace-commitment encoding.
pub const COMMITMENT_MAGIC: &str = "VTTC";
/// Version of the binary trace-commitment encoding.
pub const COMMITMENT_VERSION: u8 = 1;
/// Length of the binary trace-commitment encoding.
pub const COMMITMENT_LEN: usize = 4 + 1 + 1 + 4 * 4 + 1 + 32;

impl TraceCommitment {
    /// Compact binary encoding (55 bytes): `"VTTC" ‖ version (u8 = 1) ‖ hasher code (u8) ‖
    /// layers ‖ tokens ‖ hidden ‖ chunk (each u32 LE) ‖ dtype code (u8) ‖ root (32 bytes)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let g = &self.geometry;
        let mut w = Writer::new();
        w.bytes(COMMITMENT_MAGIC.as_bytes())
            .u8(COMMITMENT_VERSION)
            .u8(self.hasher.code())
            .u32(g.layers)
            .u32(g.tokens)
            .u32(g.hidden)
            .u32(g.chunk)
            .u8(g.dtype.code())
            .digest(&self.root);
        w.into_bytes()
    }

    /// Strict decoding: magic, version, known hasher and dtype codes, a valid geometry, exact
    /// length. Never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        r.magic(COMMITMENT_MAGIC)?;
        r.version(COMMITMENT_VERSION)?;
        let hasher = HasherId::from_code(r.u8()?)?;
        let (layers, tokens, hidden, chunk) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
        let dtype = Dtype::from_code(r.u8()?)?;
        let root = r.digest()?;
        r.finish()?;
        let geometry = TraceGeometry::new(layers, tokens, hidden, chunk, dtype)?;
        if !hasher.is_canonical(&root) {
            return Err(CommitError::NonCanonicalDigest {
                position: 0,
                hasher: hasher.name(),
            });
        }
        Ok(TraceCommitment {
            root,
            hasher,
            geometry,
        })
    }
}

fn check_layer(geometry: &TraceGeometry, bytes: &[u8]) -> Result<()> {
    let expected = geometry.layer_byte_len();
    if bytes.len() != expected {
        return Err(CommitError::WrongLength {
            what: "layer",
            expected: expected as u64,
            got: bytes.len() as u64,
        });
    }
    Ok(())
}

/// Leaf digests of every cell of one layer, hashed in parallel.
pub fn layer_leaves(
    hasher: HasherId,
    geometry: &TraceGeometry,
    layer: u32,
    bytes: &[u8],
) -> Result<Vec<Digest>> {
    geometry.validate()?;
    check_layer(geometry, bytes)?;
    (0..geometry.chunks_per_layer())
        .into_par_iter()
        .map(|chunk| {
            let cell = CellId { layer, chunk };
            let range = geometry.cell_byte_range(cell)?;
            geometry.hash_cell(&hasher, cell, &bytes[range])
        })
        .collect()
}

/// Commits a whole trace held in memory: `layers[l]` holds layer `l`'s little-endian elements,
/// row-major `[tokens, hidden]`. All cells are hashed in parallel on the current rayon pool.
pub fn commit_trace(
    hasher: HasherId,
    geometry: &TraceGeometry,
    layers: &[&[u8]],
) -> Result<MerkleTree> {
    geometry.validate()?;
    if layers.len() != geometry.layers as usize {
        return Err(CommitError::InvalidGeometry(format!(
            "geometry has {} layers but {} were given",
            geometry.layers,
            layers.len()
        )));
    }
    for l in layers {
        check_layer(geometry, l)?;
    }
    let per = geometry.chunks_per_layer();
    let leaves = (0..geometry.num_cells())
        .into_par_iter()
        .map(|i| {
            let cell = CellId {
                layer: (i / u64::from(per)) as u32,
                chunk: (i % u64::from(per)) as u32,
            };
            let range = geometry.cell_byte_range(cell)?;
            geometry.hash_cell(&hasher, cell, &layers[cell.layer as usize][range])
        })
        .collect::<Result<Vec<_>>>()?;
    MerkleTree::from_leaf_digests(hasher, leaves)
}

/// Commits a trace layer by layer, holding one layer's leaf digests and O(log n) tree nodes.
///
/// Layers must be pushed in order `0, 1, …, layers − 1`; [`TraceCommitter::finish`] fails until
/// all were. The root equals [`commit_trace`]'s.
#[derive(Debug, Clone)]
pub struct TraceCommitter {
    hasher: HasherId,
    geometry: TraceGeometry,
    builder: StreamingBuilder,
    next_layer: u32,
}

impl TraceCommitter {
    /// A committer for a trace of the given geometry.
    pub fn new(hasher: HasherId, geometry: TraceGeometry) -> Result<Self> {
        geometry.validate()?;
        Ok(TraceCommitter {
            hasher,
            geometry,
            builder: StreamingBuilder::new(hasher),
            next_layer: 0,
        })
    }

    /// Index of the next layer expected.
    pub fn next_layer(&self) -> u32 {
        self.next_layer
    }

    /// Hashes the next layer's cells (in parallel) and folds them into the tree
    /// ([`TraceCommitter::push_layers`] with one layer).
    pub fn push_layer(&mut self, bytes: &[u8]) -> Result<()> {
        self.push_layers(&[bytes])
    }

    /// Hashes the cells of the next `layers.len()` layers all in parallel (threads split layers
    /// as well as cells, so a trace of few cells per layer scales too) and folds them into the
    /// tree in order: the same tree as pushing them one by one with
    /// [`TraceCommitter::push_layer`]. Holds the leaf digests of these layers only.
    pub fn push_layers(&mut self, layers: &[&[u8]]) -> Result<()> {
        let remaining = self.geometry.layers - self.next_layer;
        if layers.len() as u64 > u64::from(remaining) {
            return Err(CommitError::Streaming(format!(
                "{} layers pushed with {remaining} of {} left",
                layers.len(),
                self.geometry.layers
            )));
        }
        for bytes in layers {
            check_layer(&self.geometry, bytes)?;
        }
        let per = self.geometry.chunks_per_layer();
        let first = self.next_layer;
        let geometry = self.geometry;
        let hasher = self.hasher;
        let digests = (0..layers.len() as u64 * u64::from(per))
            .into_par_iter()
            .map(|i| {
                let (l, chunk) = ((i / u64::from(per)) as u32, (i % u64::from(per)) as u32);
                let cell = CellId {
                    layer: first + l,
                    chunk,
                };
                let range = geometry.cell_byte_range(cell)?;
                geometry.hash_cell(&hasher, cell, &layers[l as usize][range])
            })
            .collect::<Result<Vec<_>>>()?;
        for d in digests {
            self.builder.push_digest(d)?;
        }
        self.next_layer += layers.len() as u32;
        Ok(())
    }

    /// The commitment, once every layer was pushed.
    pub fn finish(self) -> Result<TraceCommitment> {
        if self.next_layer != self.geometry.layers {
            return Err(CommitError::Streaming(format!(
                "{} of {} layers were pushed",
                self.next_layer, self.geometry.layers
            )));
        }
        Ok(TraceCommitment {
            root: self.builder.finish()?,
            hasher: self.hasher,
            geometry: self.geometry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Dtype;

    #[test]
    fn streaming_equals_in_memory() {
        let g = TraceGeometry::new(3, 13, 5, 4, Dtype::F16).unwrap();
        let layers: Vec<Vec<u8>> = (0..3)
            .map(|l| (0..g.layer_byte_len()).map(|i| (i * 7 + l) as u8).collect())
            .collect();
        let refs: Vec<&[u8]> = layers.iter().map(|l| l.as_slice()).collect();
        for h in [HasherId::Blake3, HasherId::Sha256] {
            let tree = commit_trace(h, &g, &refs).unwrap();
            let mut c = TraceCommitter::new(h, g).unwrap();
            assert!(c.clone().finish().is_err());
            for l in &refs {
                c.push_layer(l).unwrap();
            }
            assert!(c.clone().push_layer(refs[0]).is_err());
            assert!(c.clone().push_layers(&refs[..1]).is_err());
            assert_eq!(c.finish().unwrap().root, tree.root());
            assert_eq!(tree.size(), 12);
            // several layers at once, in any grouping, and on any thread count
            for groups in [&[3usize][..], &[1, 2], &[2, 1], &[0, 1, 1, 1]] {
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut c = TraceCommitter::new(h, g).unwrap();
                    let mut at = 0;
                    for &n in groups {
                        pool.install(|| c.push_layers(&refs[at..at + n])).unwrap();
                        at += n;
                    }
                    assert_eq!(c.finish().unwrap().root, tree.root(), "{groups:?}");
                }
            }
            let mut c = TraceCommitter::new(h, g).unwrap();
            let short = &refs[0][..refs[0].len() - 1];
            assert!(c.push_layers(&[refs[0], short]).is_err());
        }
    }

    #[test]
    fn commitment_binary_encoding() {
        let c = TraceCommitment {
            root: Digest([5; 32]),
            hasher: HasherId::Sha256,
            geometry: TraceGeometry::new(7, 100, 64, 16, Dtype::Bf16).unwrap(),
        };
        let bytes = c.to_bytes();
        assert_eq!(bytes.len(), COMMITMENT_LEN);
        assert_eq!(TraceCommitment::from_bytes(&bytes).unwrap(), c);
        assert!(TraceCommitment::from_bytes(&bytes[..54]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(TraceCommitment::from_bytes(&long).is_err());
        let mut zero_chunk = bytes.clone();
        zero_chunk[18..22].fill(0);
        assert!(matches!(
            TraceCommitment::from_bytes(&zero_chunk),
            Err(CommitError::InvalidGeometry(_))
        ));
        let mut bad_hasher = bytes;
        bad_hasher[5] = 9;
        assert!(matches!(
            TraceCommitment::from_bytes(&bad_hasher),
            Err(CommitError::UnknownHasher(_))
        ));
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<TraceCommitment>(&json).unwrap(), c);
    }

    #[test]
    fn wrong_inputs_are_errors() {
        let g = TraceGeometry::new(2, 4, 2, 2, Dtype::F32).unwrap();
        let layer = vec![0u8; g.layer_byte_len()];
        assert!(commit_trace(HasherId::Blake3, &g, &[&layer]).is_err());
        assert!(commit_trace(HasherId::Blake3, &g, &[&layer, &layer[1..]]).is_err());
        assert!(commit_trace(HasherId::Blake3, &g, &[&layer, &layer]).is_ok());
    }
}
