//! Canonical cell encoding: what a trace leaf binds.
//!
//! A trace holds hidden states `h_0 … h_{L-1}` (layer 0 = embeddings), each `[tokens, hidden]`.
//! A *cell* is `(layer, chunk)`: the token rows `chunk·c … min((chunk+1)·c, tokens)` of one layer,
//! with chunk size `c`. Cells are ordered layer-major, so cell `(l, j)` is leaf
//! `l · ceil(tokens / c) + j` of the Merkle tree.
//!
//! The leaf data of a cell is the fixed 35-byte header below followed by the cell's elements in
//! row-major order, each element little-endian:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 17 | ASCII `veritrace/cell/v1` (domain label with version) |
//! | 17 | 4 | layer, u32 LE |
//! | 21 | 4 | chunk, u32 LE |
//! | 25 | 1 | dtype code: 1 = f32, 2 = f16, 3 = bf16, 4 = i8 |
//! | 26 | 1 | number of dimensions, always 2 |
//! | 27 | 4 | rows in this cell, u32 LE |
//! | 31 | 4 | columns (hidden size), u32 LE |
//! | 35 | rows·cols·size | elements |
//!
//! Position, dtype and shape are all bound, so a committed cell cannot be moved to another
//! position or reinterpreted as another dtype or shape. The hasher then applies its leaf function
//! (for BLAKE3 and SHA-256 that prepends the 0x00 leaf prefix).

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{CommitError, Digest, Hasher, Result, MAX_TREE_SIZE};

/// Domain label (with version) at the start of every cell's leaf data.
pub const CELL_DOMAIN: &[u8; 17] = b"veritrace/cell/v1";
/// Length of the cell header that precedes the element bytes.
pub const CELL_HEADER_LEN: usize = 35;

/// Element type of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// IEEE-754 binary32.
    F32,
    /// IEEE-754 binary16.
    F16,
    /// bfloat16.
    Bf16,
    /// Signed 8-bit integer.
    I8,
}

impl Dtype {
    /// All dtypes, in code order.
    pub const ALL: [Dtype; 4] = [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::I8];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::I8 => 1,
        }
    }

    /// Code in the cell header.
    pub fn code(self) -> u8 {
        match self {
            Dtype::F32 => 1,
            Dtype::F16 => 2,
            Dtype::Bf16 => 3,
            Dtype::I8 => 4,
        }
    }

    /// The dtype with the given header code.
    pub fn from_code(code: u8) -> Result<Self> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.code() == code)
            .ok_or_else(|| CommitError::UnknownDtype(format!("code {code}")))
    }

    /// Lowercase name: `f32`, `f16`, `bf16`, `i8`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
            Dtype::I8 => "i8",
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dtype {
    type Err = CommitError;
    fn from_str(s: &str) -> Result<Self> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| CommitError::UnknownDtype(s.to_string()))
    }
}

/// A cell's position: layer and token chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CellId {
    /// Layer index (0 = embeddings).
    pub layer: u32,
    /// Token chunk index within the layer.
    pub chunk: u32,
}

/// Largest byte length of one layer (1 TiB), fixed so that a geometry's validity does not
/// depend on the platform.
pub const MAX_LAYER_BYTES: u64 = 1 << 40;

/// Shape of a trace and how it is cut into cells.
///
/// Deserialization (JSON or binary) goes through [`TraceGeometry::validate`], so a decoded
/// geometry is always valid; code that builds one field by field should call it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawGeometry")]
pub struct TraceGeometry {
    /// Number of hidden states in the trace (embeddings plus one per transformer layer).
    pub layers: u32,
    /// Token rows per layer.
    pub tokens: u32,
    /// Hidden size (columns per row).
    pub hidden: u32,
    /// Token rows per cell (the last cell of a layer may have fewer).
    pub chunk: u32,
    /// Element type.
    pub dtype: Dtype,
}

/// The unvalidated serde form of [`TraceGeometry`].
#[derive(Deserialize)]
struct RawGeometry {
    layers: u32,
    tokens: u32,
    hidden: u32,
    chunk: u32,
    dtype: Dtype,
}

impl TryFrom<RawGeometry> for TraceGeometry {
    type Error = CommitError;
    fn try_from(r: RawGeometry) -> Result<Self> {
        TraceGeometry::new(r.layers, r.tokens, r.hidden, r.chunk, r.dtype)
    }
}

impl TraceGeometry {
    /// A validated geometry.
    pub fn new(layers: u32, tokens: u32, hidden: u32, chunk: u32, dtype: Dtype) -> Result<Self> {
        let g = TraceGeometry {
            layers,
            tokens,
            hidden,
            chunk,
            dtype,
        };
        g.validate()?;
        Ok(g)
    }

    /// Checks that every size is positive, that a layer is at most [`MAX_LAYER_BYTES`], and that
    /// the number of cells is at most [`MAX_TREE_SIZE`]. Every other method assumes a valid
    /// geometry.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("layers", self.layers),
            ("tokens", self.tokens),
            ("hidden", self.hidden),
            ("chunk", self.chunk),
        ] {
            if v == 0 {
                return Err(CommitError::InvalidGeometry(format!(
                    "{name} must be at least 1"
                )));
            }
        }
        u64::from(self.tokens)
            .checked_mul(u64::from(self.hidden))
            .and_then(|x| x.checked_mul(self.dtype.size() as u64))
            .filter(|&b| b <= MAX_LAYER_BYTES)
            .ok_or_else(|| {
                CommitError::InvalidGeometry(format!(
                    "a layer of {} x {} {} elements exceeds {} bytes",
                    self.tokens, self.hidden, self.dtype, MAX_LAYER_BYTES
                ))
            })?;
        let cells = self.num_cells();
        if cells > MAX_TREE_SIZE {
            return Err(CommitError::TreeTooLarge {
                size: cells,
                max: MAX_TREE_SIZE,
            });
        }
        Ok(())
    }

    /// Cells per layer: `ceil(tokens / chunk)`.
    pub fn chunks_per_layer(&self) -> u32 {
        self.tokens.div_ceil(self.chunk.max(1))
    }

    /// Total number of cells (leaves of the tree).
    pub fn num_cells(&self) -> u64 {
        u64::from(self.layers) * u64::from(self.chunks_per_layer())
    }

    /// Bytes of one layer, `tokens · hidden · size`.
    pub fn layer_byte_len(&self) -> usize {
        self.tokens as usize * self.hidden as usize * self.dtype.size()
    }

    /// Bytes of one token row.
    pub fn row_byte_len(&self) -> usize {
        self.hidden as usize * self.dtype.size()
    }

    fn check(&self, cell: CellId) -> Result<()> {
        if cell.layer >= self.layers || cell.chunk >= self.chunks_per_layer() {
            return Err(CommitError::CellOutOfRange {
                layer: cell.layer,
                chunk: cell.chunk,
            });
        }
        Ok(())
    }

    /// The leaf index of a cell (layer-major order).
    pub fn cell_index(&self, cell: CellId) -> Result<u64> {
        self.check(cell)?;
        Ok(u64::from(cell.layer) * u64::from(self.chunks_per_layer()) + u64::from(cell.chunk))
    }

    /// The cell at a leaf index.
    pub fn cell_at(&self, index: u64) -> Result<CellId> {
        if index >= self.num_cells() {
            return Err(CommitError::IndexOutOfRange {
                index,
                size: self.num_cells(),
            });
        }
        let per = u64::from(self.chunks_per_layer());
        Ok(CellId {
            layer: (index / per) as u32,
            chunk: (index % per) as u32,
        })
    }

    /// The token rows a cell covers.
    pub fn cell_rows(&self, cell: CellId) -> Result<Range<u32>> {
        self.check(cell)?;
        let start = cell.chunk * self.chunk;
        Ok(start..self.tokens.min(start.saturating_add(self.chunk)))
    }

    /// The byte range of a cell's elements within its layer's buffer.
    pub fn cell_byte_range(&self, cell: CellId) -> Result<Range<usize>> {
        let rows = self.cell_rows(cell)?;
        let row = self.row_byte_len();
        Ok(rows.start as usize * row..rows.end as usize * row)
    }

    /// The 35-byte header of a cell's leaf data (see the [module docs](self)).
    pub fn cell_header(&self, cell: CellId) -> Result<[u8; CELL_HEADER_LEN]> {
        let rows = self.cell_rows(cell)?;
        let mut h = [0u8; CELL_HEADER_LEN];
        h[..17].copy_from_slice(CELL_DOMAIN);
        h[17..21].copy_from_slice(&cell.layer.to_le_bytes());
        h[21..25].copy_from_slice(&cell.chunk.to_le_bytes());
        h[25] = self.dtype.code();
        h[26] = 2;
        h[27..31].copy_from_slice(&(rows.end - rows.start).to_le_bytes());
        h[31..35].copy_from_slice(&self.hidden.to_le_bytes());
        Ok(h)
    }

    /// The leaf digest of a cell from its element bytes (little-endian, row-major). Fails if the
    /// cell is outside the geometry or `elements` has the wrong length.
    pub fn hash_cell<H: Hasher + ?Sized>(
        &self,
        hasher: &H,
        cell: CellId,
        elements: &[u8],
    ) -> Result<Digest> {
        let header = self.cell_header(cell)?;
        let range = self.cell_byte_range(cell)?;
        if elements.len() != range.len() {
            return Err(CommitError::WrongLength {
                what: "cell elements",
                expected: range.len() as u64,
                got: elements.len() as u64,
            });
        }
        Ok(hasher.hash_leaf(&[&header, elements]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HasherId;

    fn g() -> TraceGeometry {
        TraceGeometry::new(3, 10, 4, 4, Dtype::F32).unwrap()
    }

    #[test]
    fn geometry_arithmetic() {
        let g = g();
        assert_eq!(g.chunks_per_layer(), 3);
        assert_eq!(g.num_cells(), 9);
        let last = CellId { layer: 2, chunk: 2 };
        assert_eq!(g.cell_index(last).unwrap(), 8);
        assert_eq!(g.cell_at(8).unwrap(), last);
        assert_eq!(g.cell_rows(last).unwrap(), 8..10);
        assert_eq!(g.cell_byte_range(last).unwrap(), 128..160);
        assert!(g.cell_at(9).is_err());
        assert!(g.cell_index(CellId { layer: 3, chunk: 0 }).is_err());
        assert!(g.cell_index(CellId { layer: 0, chunk: 3 }).is_err());
    }

    #[test]
    fn absurd_geometry_is_refused() {
        assert!(TraceGeometry::new(0, 1, 1, 1, Dtype::F32).is_err());
        assert!(TraceGeometry::new(1, 1, 1, 0, Dtype::F32).is_err());
        assert!(TraceGeometry::new(u32::MAX, u32::MAX, 1, 1, Dtype::I8).is_err());
        assert!(TraceGeometry::new(1, u32::MAX, u32::MAX, 1 << 20, Dtype::F32).is_err());
    }

    #[test]
    fn header_layout() {
        let h = g().cell_header(CellId { layer: 2, chunk: 2 }).unwrap();
        assert_eq!(&h[..17], b"veritrace/cell/v1");
        assert_eq!(h[17..21], [2, 0, 0, 0]);
        assert_eq!(h[21..25], [2, 0, 0, 0]);
        assert_eq!(h[25], 1);
        assert_eq!(h[26], 2);
        assert_eq!(h[27..31], [2, 0, 0, 0]);
        assert_eq!(h[31..35], [4, 0, 0, 0]);
    }

    #[test]
    fn position_dtype_and_shape_are_bound() {
        let bytes = [7u8; 64];
        let g = g();
        let a = g
            .hash_cell(&HasherId::Blake3, CellId { layer: 0, chunk: 0 }, &bytes)
            .unwrap();
        let moved = g
            .hash_cell(&HasherId::Blake3, CellId { layer: 1, chunk: 0 }, &bytes)
            .unwrap();
        assert_ne!(a, moved);
        let mut g16 = g;
        g16.dtype = Dtype::F16;
        g16.hidden = 8;
        let reinterpreted = g16
            .hash_cell(&HasherId::Blake3, CellId { layer: 0, chunk: 0 }, &bytes)
            .unwrap();
        assert_ne!(a, reinterpreted);
        assert!(matches!(
            g.hash_cell(
                &HasherId::Blake3,
                CellId { layer: 0, chunk: 0 },
                &bytes[..60]
            ),
            Err(CommitError::WrongLength { .. })
        ));
    }

    #[test]
    fn dtype_names_and_codes() {
        for d in Dtype::ALL {
            assert_eq!(d.name().parse::<Dtype>().unwrap(), d);
            assert_eq!(Dtype::from_code(d.code()).unwrap(), d);
        }
        assert!("f64".parse::<Dtype>().is_err());
    }
}
