//! Captured traces and their safetensors form.
//!
//! A trace file holds one F32 tensor `h.<l>` of shape `[tokens, hidden]` per hidden state
//! `l = 0..=L` (the format `veritrace commit` reads) and, optionally, the statement it was
//! committed under as JSON in the safetensors metadata under [`STATEMENT_METADATA_KEY`].
//! Captured attention keys, when present, are F32 tensors `k.<l>` of shape
//! `[tokens, kv_heads · head_dim]` for `l = 1..=L`; `veritrace commit` reads only `h.*`.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype as StDtype, TensorView};
use safetensors::SafeTensors;
use veritrace_commit::{Dtype, TraceGeometry};
use veritrace_protocol::{Message, Statement};

use crate::trace_file::{TraceFile, TraceFileError};
use crate::{first_non_finite, ModelError, Result};

/// Metadata key under which a trace file stores its statement (JSON).
pub const STATEMENT_METADATA_KEY: &str = "veritrace.statement";

/// The hidden states of one forward pass: `layers[l]` is `h_l`, row-major f32
/// `[tokens, hidden]`; `h_0` is the embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Token rows per layer.
    pub tokens: usize,
    /// Hidden size.
    pub hidden: usize,
    /// `h_0 … h_L`.
    pub layers: Vec<Vec<f32>>,
    /// Optional attention keys of layers `1..=L` after the rotary embedding, row-major f32
    /// `[tokens, kv_heads · head_dim]` each; empty when not captured. Not part of the
    /// committed trace.
    pub keys: Vec<Vec<f32>>,
}

impl Trace {
    /// The largest per-layer relative L∞ deviation of `self` from `reference`:
    /// `max_l max_i |a_i − b_i| / max_i |b_i|` over the layers `h_0 … h_L` (the denominator
    /// floored at 1e-30), in f64. The measure of cross-device agreement (GPU vs CPU); infinite
    /// when the two traces differ in shape or hold a non-finite value.
    pub fn max_rel_linf(&self, reference: &Trace) -> f64 {
        let same_shape = self.layers.len() == reference.layers.len()
            && self
                .layers
                .iter()
                .zip(&reference.layers)
                .all(|(a, b)| a.len() == b.len());
        if !same_shape {
            return f64::INFINITY;
        }
        let mut worst = 0f64;
        for (a, b) in self.layers.iter().zip(&reference.layers) {
            let scale = b
                .iter()
                .fold(0f64, |m, v| m.max(f64::from(v.abs())))
                .max(1e-30);
            let diff = a
                .iter()
                .zip(b)
                .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
                .fold(0f64, |m, d| if d.is_nan() || d > m { d } else { m });
            let d = diff / scale;
            worst = if d.is_nan() {
                f64::INFINITY
            } else {
                worst.max(d)
            };
        }
        worst
    }

    /// Whether the two traces hold the same hidden states bit for bit (same shape, every f32
    /// identical in its bits): reproducibility within one setup on one device.
    pub fn bitwise_eq(&self, other: &Trace) -> bool {
        self.layers.len() == other.layers.len()
            && self.layers.iter().zip(&other.layers).all(|(a, b)| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            })
    }

    /// Row `position` of layer `layer`, if both exist.
    pub fn row(&self, layer: usize, position: usize) -> Option<&[f32]> {
        if position >= self.tokens {
            return None;
        }
        self.layers
            .get(layer)?
            .get(position * self.hidden..(position + 1) * self.hidden)
    }

    /// Each layer as little-endian bytes (what a [`veritrace_protocol::Prover`] holds and what
    /// `veritrace_commit::commit_trace` commits).
    pub fn layer_bytes(&self) -> Vec<Vec<u8>> {
        self.layers
            .iter()
            .map(|l| l.iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect()
    }

    /// The trace's geometry with cells of `chunk` token rows.
    pub fn geometry(&self, chunk: u32) -> Result<TraceGeometry> {
        let u = |v: usize, what: &str| {
            u32::try_from(v)
                .map_err(|_| ModelError::InvalidArgument(format!("{what} {v} exceeds u32")))
        };
        TraceGeometry::new(
            u(self.layers.len(), "layer count")?,
            u(self.tokens, "token count")?,
            u(self.hidden, "hidden size")?,
            chunk,
            Dtype::F32,
        )
        .map_err(|e| ModelError::InvalidArgument(e.to_string()))
    }

    fn check(&self) -> Result<()> {
        if self.layers.is_empty() || self.tokens == 0 || self.hidden == 0 {
            return Err(ModelError::InvalidArgument(
                "a trace needs at least one layer, token and column".into(),
            ));
        }
        if !self.keys.is_empty() && self.keys.len() + 1 != self.layers.len() {
            return Err(ModelError::WrongLength {
                what: "captured key layers",
                expected: format!("0 or {}", self.layers.len() - 1),
                got: self.keys.len(),
            });
        }
        for k in &self.keys {
            if k.is_empty() || !k.len().is_multiple_of(self.tokens) {
                return Err(ModelError::WrongLength {
                    what: "captured keys (elements)",
                    expected: format!("a positive multiple of {} tokens", self.tokens),
                    got: k.len(),
                });
            }
        }
        for l in &self.layers {
            if l.len() != self.tokens * self.hidden {
                return Err(ModelError::WrongLength {
                    what: "trace layer (elements)",
                    expected: (self.tokens * self.hidden).to_string(),
                    got: l.len(),
                });
            }
        }
        Ok(())
    }
}

/// Writes `trace` to `path` as safetensors (`h.0 … h.L`, F32 `[tokens, hidden]`), with
/// `statement` as JSON under [`STATEMENT_METADATA_KEY`] when given.
pub fn write_trace(path: &Path, trace: &Trace, statement: Option<&Statement>) -> Result<()> {
    write_trace_with(path, trace, statement, None)
}

/// [`write_trace`] with the run's sub-layer traces (issue 16) as the F32 tensors
/// `context.<l>` `[tokens, context width]` and `cell.<l>` `[tokens, cell width]` for hidden
/// layers `l = 1 … L` (read back by [`crate::sublayer::read_sublayers`]).
pub fn write_trace_with(
    path: &Path,
    trace: &Trace,
    statement: Option<&Statement>,
    sublayers: Option<&crate::sublayer::SubLayerTrace>,
) -> Result<()> {
    trace.check()?;
    let bytes = trace.layer_bytes();
    let f32_bytes = |v: &Vec<f32>| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let key_bytes: Vec<Vec<u8>> = trace.keys.iter().map(f32_bytes).collect();
    let empty = crate::sublayer::SubLayerTrace::default();
    let sub = sublayers.unwrap_or(&empty);
    if sub.context.len() != sub.cell.len()
        || (!sub.context.is_empty() && sub.context.len() + 1 != bytes.len())
    {
        return Err(ModelError::WrongLength {
            what: "sub-layer traces",
            expected: format!("{} context and cell layers", bytes.len().saturating_sub(1)),
            got: sub.context.len(),
        });
    }
    let sub_bytes: Vec<Vec<u8>> = sub.context.iter().chain(&sub.cell).map(f32_bytes).collect();
    let n_sub = sub.context.len();
    let names: Vec<String> = (0..bytes.len())
        .map(|l| format!("h.{l}"))
        .chain((1..=key_bytes.len()).map(|l| format!("k.{l}")))
        .chain((1..=n_sub).map(|l| format!("context.{l}")))
        .chain((1..=n_sub).map(|l| format!("cell.{l}")))
        .collect();
    let width = |v: &Vec<f32>| v.len() / trace.tokens.max(1);
    let shapes = std::iter::repeat_n(vec![trace.tokens, trace.hidden], bytes.len())
        .chain(trace.keys.iter().map(|k| vec![trace.tokens, width(k)]))
        .chain(
            sub.context
                .iter()
                .chain(&sub.cell)
                .map(|v| vec![trace.tokens, width(v)]),
        );
    let views = names
        .iter()
        .zip(bytes.iter().chain(&key_bytes).chain(&sub_bytes))
        .zip(shapes)
        .map(|((name, b), shape)| {
            TensorView::new(StDtype::F32, shape, b)
                .map(|v| (name.as_str(), v))
                .map_err(|e| ModelError::TraceFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata =
        statement.map(|s| HashMap::from([(STATEMENT_METADATA_KEY.to_string(), s.to_json())]));
    // Into a unique temporary file beside the target, synced, then renamed over it: an
    // interrupted write leaves any old trace intact and touches no other file (and a device or
    // FIFO at the path is refused, never replaced).
    let io = |e: crate::files::FileError| match e {
        crate::files::FileError::Write { source, .. } => ModelError::Io {
            path: path.display().to_string(),
            source,
        },
        other => other.into(),
    };
    let tmp = crate::files::TempOutput::beside(path).map_err(io)?;
    safetensors::serialize_to_file(views, metadata, tmp.path()).map_err(|e| {
        ModelError::TraceFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    })?;
    tmp.persist(0o644, true).map_err(io)
}

/// Reads a trace written by [`write_trace`] (or any F32 trace file of that format) and the
/// statement in its metadata, if any, through the one reader of the format
/// ([`crate::trace_file::TraceFile`]: regular file, header limit, offsets checked, layers
/// contiguous and of one shape). Refuses other dtypes, mis-shaped key tensors, non-finite values
/// and a malformed statement with a typed error.
pub fn read_trace(path: &Path) -> Result<(Trace, Option<Statement>)> {
    // the file's checks (dtype, finite values, the statement) are `map_trace`'s
    let (mapped, statement) = map_trace(path)?;
    let file = path.display().to_string();
    let bad = |reason: String| ModelError::TraceFile {
        path: file.clone(),
        reason,
    };
    let g = *mapped.geometry();
    let (tokens, hidden) = (g.tokens as usize, g.hidden as usize);
    let layers: Vec<Vec<f32>> = (0..g.layers)
        .map(|l| le_f32(mapped.layer(l).expect("validated layer")))
        .collect();
    let st = SafeTensors::deserialize(mapped.bytes()).map_err(|e| bad(e.to_string()))?;
    let count = layers.len();
    let key_count = st.names().iter().filter(|n| n.starts_with("k.")).count();
    let mut keys = Vec::with_capacity(key_count);
    if key_count != 0 && key_count + 1 != count {
        return Err(bad(format!(
            "{key_count} k.* key tensors for {count} hidden states (expected {})",
            count - 1
        )));
    }
    for l in 1..=key_count {
        let name = format!("k.{l}");
        let view = st
            .tensor(&name)
            .map_err(|_| bad(format!("key tensor {name} is missing")))?;
        if view.dtype() != StDtype::F32
            || view.shape().len() != 2
            || view.shape()[0] != tokens
            || view.shape()[1] == 0
        {
            return Err(bad(format!(
                "{name} is {:?} {:?}, not F32 [{tokens}, width]",
                view.dtype(),
                view.shape(),
            )));
        }
        let values = le_f32(view.data());
        if let Some(index) = first_non_finite(&values) {
            return Err(ModelError::NonFinite {
                what: "trace file keys",
                index,
            });
        }
        keys.push(values);
    }
    Ok((
        Trace {
            tokens,
            hidden,
            layers,
            keys,
        },
        statement,
    ))
}

/// A prover's trace file mapped in place, for answering challenges without decoding it: the
/// statement from its metadata and the file mapping, whose layers
/// ([`crate::trace_file::TraceFile::layers`]) are the committed bytes. Checks what
/// [`read_trace`] checks (F32 layers, every value finite, a valid statement if any) while
/// holding no copy of the layers, so a prover's memory is the mapping (file pages the kernel
/// may drop) plus what it opens.
pub fn map_trace(path: &Path) -> Result<(crate::trace_file::TraceFile, Option<Statement>)> {
    map_trace_with(path, true)
}

/// [`map_trace`], with the scan of every value for finiteness only where `scan_values`: a
/// prover that rebuilds its tree from stored leaf digests reads no cell it does not open (and
/// checks the cells it opens itself), so its memory is the bytes it opens.
pub fn map_trace_with(
    path: &Path,
    scan_values: bool,
) -> Result<(crate::trace_file::TraceFile, Option<Statement>)> {
    let file = path.display().to_string();
    let bad = |reason: String| ModelError::TraceFile {
        path: file.clone(),
        reason,
    };
    let mapped = TraceFile::open(path, 1).map_err(|e| match e {
        TraceFileError::Io { source, .. } => ModelError::Io {
            path: file.clone(),
            source,
        },
        other => bad(other.to_string()),
    })?;
    let g = *mapped.geometry();
    if g.dtype != Dtype::F32 {
        return Err(bad(format!(
            "the layers are {:?}, not F32 (a prover's trace is F32; `veritrace commit` reads \
             the other dtypes)",
            g.dtype
        )));
    }
    for l in (0..g.layers).filter(|_| scan_values) {
        let bytes = mapped.layer(l).expect("validated layer");
        // in blocks, so no decoded copy of the layer is held
        for (b, block) in bytes.chunks(1 << 16).enumerate() {
            if let Some(index) = first_non_finite(&le_f32(block)) {
                return Err(ModelError::NonFinite {
                    what: "trace file layer",
                    index: b * (1 << 14) + index,
                });
            }
        }
    }
    let (_, metadata) =
        SafeTensors::read_metadata(mapped.bytes()).map_err(|e| bad(e.to_string()))?;
    let statement = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATEMENT_METADATA_KEY))
        .map(|json| {
            Statement::from_json(json)
                .map_err(|e| bad(format!("the statement in the metadata is invalid: {e}")))
        })
        .transpose()?;
    Ok((mapped, statement))
}

fn le_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(layers: Vec<Vec<f32>>) -> Trace {
        Trace {
            tokens: 1,
            hidden: layers[0].len(),
            layers,
            keys: Vec::new(),
        }
    }

    #[test]
    fn a_mapped_trace_holds_the_written_bytes_and_refuses_what_read_trace_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let layers: Vec<Vec<f32>> = (0..3)
            .map(|l| (0..40_000).map(|i| (i * 3 + l) as f32 / 7.0).collect())
            .collect();
        let t = Trace {
            tokens: 100,
            hidden: 400,
            layers: layers.clone(),
            keys: Vec::new(),
        };
        write_trace(&path, &t, None).unwrap();
        let (mapped, statement) = map_trace(&path).unwrap();
        assert!(statement.is_none());
        for (l, bytes) in mapped.layers().iter().enumerate() {
            let values: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            assert_eq!(values, layers[l]);
        }
        // a NaN past the first block is reported at its index within its layer, as read_trace
        let mut bad = t.clone();
        bad.layers[2][20_001] = f32::NAN;
        write_trace(&path, &bad, None).unwrap();
        assert!(matches!(
            map_trace(&path),
            Err(ModelError::NonFinite { index: 20_001, .. })
        ));
        assert!(matches!(
            read_trace(&path),
            Err(ModelError::NonFinite { index: 20_001, .. })
        ));
        assert!(map_trace(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn relative_linf_is_the_worst_layer_over_its_own_scale() {
        let a = trace(vec![vec![1.0, -2.0], vec![3.0, 4.0]]);
        assert_eq!(a.max_rel_linf(&a), 0.0);
        // layer 0: 0.5 / 2; layer 1: 0.5 / 4.5
        let b = trace(vec![vec![1.5, -2.0], vec![3.0, 4.5]]);
        assert_eq!(a.max_rel_linf(&b), 0.25);
        assert_eq!(b.max_rel_linf(&a), 0.25);
        // Differences in shape, and non-finite values, are infinitely far.
        assert_eq!(a.max_rel_linf(&trace(vec![vec![1.0, -2.0]])), f64::INFINITY);
        assert_eq!(
            a.max_rel_linf(&trace(vec![vec![1.0, -2.0], vec![3.0]])),
            f64::INFINITY
        );
        let nan = trace(vec![vec![1.0, f32::NAN], vec![3.0, 4.0]]);
        assert_eq!(nan.max_rel_linf(&a), f64::INFINITY);
        assert_eq!(a.max_rel_linf(&nan), f64::INFINITY);
    }

    #[test]
    fn bitwise_equality_sees_every_bit() {
        let a = trace(vec![vec![0.0, 1.0]]);
        assert!(a.bitwise_eq(&a.clone()));
        assert!(!a.bitwise_eq(&trace(vec![vec![-0.0, 1.0]])));
        assert!(!a.bitwise_eq(&trace(vec![vec![0.0, 1.0], vec![0.0, 1.0]])));
        assert!(!a.bitwise_eq(&trace(vec![vec![0.0]])));
    }
}
