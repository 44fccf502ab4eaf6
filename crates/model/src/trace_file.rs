//! Loading activation traces stored as safetensors.
//!
//! # File format
//!
//! A trace file is an ordinary [safetensors](https://github.com/huggingface/safetensors) file
//! holding one tensor per hidden state, named `h.<layer>`:
//!
//! * `h.0` is the embeddings, `h.1` … `h.L` the outputs of the transformer layers; the indices
//!   must run contiguously from 0, written in plain decimal (`h.7`, not `h.07` or `h.+7`);
//! * every `h.*` tensor is 2-D, `[tokens, hidden]`, with no zero-sized dimension, and all of them
//!   have the same shape and the same dtype, one of `F32`, `F16`, `BF16` or `I8`;
//! * every tensor whose name does not start with `h.` (attention keys, metadata tensors, …) is
//!   ignored, and so is the optional `__metadata__` header entry.
//!
//! Elements are used exactly as stored (safetensors stores them little-endian, row-major), so the
//! bytes that are committed are the bytes in the file: no element is ever converted.
//!
//! The file is memory-mapped, so a trace larger than memory can be committed; the mapping must
//! not be truncated by another process while it is in use.
//!
//! # Limits
//! Only a regular file is opened ([`crate::files::open_regular`]: a FIFO or a device is refused
//! before it is opened). The JSON header is parsed only if its length field is at most
//! [`crate::files::max_header_bytes`] (16 MiB by default, `VERITRACE_MAX_HEADER_BYTES`), checked
//! before a byte of it is read, so a hostile header costs no more than that limit.
//!
//! This is the one reader of the format: [`crate::read_trace`] (the prover's F32 traces, with
//! the statement in the metadata) maps and validates a file through [`TraceFile::open`] too.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, SafeTensorError, TensorInfo};
use safetensors::SafeTensors;
use thiserror::Error;
use veritrace_commit::{CommitError, Dtype, TraceGeometry};

use crate::files::{max_header_bytes, open_regular, FileError};

/// Prefix of the names of layer tensors (`h.0`, `h.1`, …).
pub const LAYER_PREFIX: &str = "h.";

/// The safetensors dtypes a trace may use, as safetensors names them.
pub const SUPPORTED_DTYPES: &str = "F32, F16, BF16, I8";

/// Every way a trace file can be refused.
///
/// Each message names the file or the tensor at fault and says what was expected.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TraceFileError {
    /// The safetensors header is larger than the limit: refused before it is parsed.
    #[error(
        "{} is not a valid safetensors file: its header length field says {len} bytes, more \
         than the {limit}-byte header limit (set VERITRACE_MAX_HEADER_BYTES to raise it)",
        path.display()
    )]
    HeaderTooLarge {
        /// The file.
        path: PathBuf,
        /// The header length the file declares.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The file could not be opened, inspected or mapped.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is not a regular file (a directory, a device, …).
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file is not a well-formed safetensors file.
    #[error("{} is not a valid safetensors file: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What the parser found wrong.
        reason: String,
    },
    /// The file holds no tensor named `h.<layer>`.
    #[error(
        "{} holds no layer tensors (expected tensors named h.0, h.1, …; found {found})",
        path.display()
    )]
    NoLayers {
        /// The file.
        path: PathBuf,
        /// A short description of the tensors that were found instead.
        found: String,
    },
    /// A tensor name starts with `h.` but what follows is not a canonical decimal layer index.
    #[error(
        "tensor {name:?} is not a valid layer name: {reason} (layer tensors are named h.0, h.1, \
         … with a plain decimal index)"
    )]
    BadLayerName {
        /// The tensor name.
        name: String,
        /// Why the index was refused.
        reason: &'static str,
    },
    /// Layer indices do not run contiguously from 0.
    #[error(
        "layer tensor {missing} is missing: the file has layers up to h.{last}, and layers must \
         be numbered h.0, h.1, … without gaps"
    )]
    MissingLayer {
        /// Name of the first missing tensor, e.g. `h.1`.
        missing: String,
        /// Highest layer index present.
        last: u32,
    },
    /// A layer tensor does not have exactly two dimensions.
    #[error("tensor {name} has shape {shape:?}; layer tensors must be 2-D [tokens, hidden]")]
    NotTwoDimensional {
        /// The tensor name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A layer tensor has a zero-sized dimension.
    #[error(
        "tensor {name} has shape {shape:?}; a trace needs at least one token and one hidden unit"
    )]
    ZeroSized {
        /// The tensor name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A layer tensor's dimension exceeds what a trace geometry can describe (u32).
    #[error(
        "tensor {name} has shape {shape:?}; each dimension must be at most {}",
        u32::MAX
    )]
    TooLarge {
        /// The tensor name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A layer tensor's dtype is not one a trace may use.
    #[error(
        "tensor {name} has dtype {dtype}, which is not supported (supported: {SUPPORTED_DTYPES})"
    )]
    UnsupportedDtype {
        /// The tensor name.
        name: String,
        /// The dtype as safetensors names it.
        dtype: String,
    },
    /// A layer tensor's shape differs from that of `h.0`.
    #[error("tensor {name} has shape {shape:?} but h.0 has shape {expected:?}; all layers must have the same shape")]
    ShapeMismatch {
        /// The tensor name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The shape of `h.0`.
        expected: Vec<usize>,
    },
    /// A layer tensor's dtype differs from that of `h.0`.
    #[error("tensor {name} has dtype {dtype} but h.0 has dtype {expected}; all layers must have the same dtype")]
    DtypeMismatch {
        /// The tensor name.
        name: String,
        /// Its dtype.
        dtype: String,
        /// The dtype of `h.0`.
        expected: String,
    },
    /// The chunk size (token rows per cell) is zero.
    #[error("the chunk size must be at least 1 token")]
    InvalidChunk,
    /// The trace's geometry was refused by the commitment layer (e.g. too many cells).
    #[error("{}", path.display())]
    Geometry {
        /// The file.
        path: PathBuf,
        /// Why the geometry was refused.
        #[source]
        source: CommitError,
    },
}

/// A validated trace file, memory-mapped: its geometry and one byte slice per layer.
#[derive(Debug)]
pub struct TraceFile {
    path: PathBuf,
    map: Mmap,
    geometry: TraceGeometry,
    layers: Vec<Range<usize>>,
}

impl TraceFile {
    /// Maps and validates the trace at `path`, cut into cells of `chunk` token rows.
    ///
    /// Fails with a [`TraceFileError`] naming the problem if the file cannot be read, is not
    /// safetensors, or does not follow the [format](self) (missing layers, mismatched shapes or
    /// dtypes, unsupported dtypes, …). Never panics, whatever the file holds.
    pub fn open(path: impl AsRef<Path>, chunk: u32) -> Result<Self, TraceFileError> {
        let path = path.as_ref().to_path_buf();
        if chunk == 0 {
            return Err(TraceFileError::InvalidChunk);
        }
        let io = |source| TraceFileError::Io {
            path: path.clone(),
            source,
        };
        let (file, _) = open_regular(&path).map_err(|e| match e {
            FileError::NotAFile { path, .. } => TraceFileError::NotAFile { path },
            other => io(other.into_io()),
        })?;
        let map = map_file(&file).map_err(io)?;
        let (geometry, layers) = parse(&path, &map, chunk)?;
        Ok(TraceFile {
            path,
            map,
            geometry,
            layers,
        })
    }

    /// The path the trace was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The trace's geometry (layers, tokens, hidden size, chunk size, dtype).
    pub fn geometry(&self) -> &TraceGeometry {
        &self.geometry
    }

    /// The raw little-endian bytes of layer `layer` (row-major `[tokens, hidden]`), or `None` if
    /// the trace has no such layer.
    pub fn layer(&self, layer: u32) -> Option<&[u8]> {
        let range = self.layers.get(usize::try_from(layer).ok()?)?;
        self.map.get(range.clone())
    }

    /// The whole mapped file (for the tensors other than `h.*`, such as `token_ids`).
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The byte offset of layer `layer`'s values in the file (for positioned reads of a few
    /// cells without touching the mapping), or `None` if the trace has no such layer.
    pub fn layer_offset(&self, layer: u32) -> Option<usize> {
        Some(self.layers.get(usize::try_from(layer).ok()?)?.start)
    }

    /// The raw bytes of every layer, in order `h.0, h.1, …`.
    pub fn layers(&self) -> Vec<&[u8]> {
        self.layers.iter().map(|r| &self.map[r.clone()]).collect()
    }
}

/// Loads and validates the trace at `path`: its geometry (cut into cells of `chunk` token rows)
/// and the file it maps, from which [`TraceFile::layers`] gives the per-layer byte slices.
///
/// Shorthand for [`TraceFile::open`].
pub fn load_trace(path: impl AsRef<Path>, chunk: u32) -> Result<TraceFile, TraceFileError> {
    TraceFile::open(path, chunk)
}

#[allow(unsafe_code)]
pub(crate) fn map_file(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the mapping is read-only and only ever read through byte slices. The one hazard of
    // mapping a file is another process truncating or rewriting it while it is mapped; the module
    // documentation states that the file must not be changed while in use, as for any mmap-based
    // safetensors reader.
    unsafe { Mmap::map(file) }
}

/// Validates the bytes of a trace file (what [`TraceFile::open`] does after mapping it): its
/// geometry with cells of `chunk` rows and the byte range of each layer in `bytes`. `path` only
/// names the file in errors. Never panics and never allocates more than the header limit plus
/// the parsed tensor list, whatever `bytes` holds (the fuzz target `trace_header` checks this).
///
/// # Errors
/// As [`TraceFile::open`].
pub fn parse_trace_bytes(
    path: &Path,
    bytes: &[u8],
    chunk: u32,
) -> Result<(TraceGeometry, Vec<Range<usize>>), TraceFileError> {
    if chunk == 0 {
        return Err(TraceFileError::InvalidChunk);
    }
    parse(path, bytes, chunk)
}

/// Maps a safetensors dtype to a trace dtype, if a trace may use it.
pub fn trace_dtype(dtype: StDtype) -> Option<Dtype> {
    match dtype {
        StDtype::F32 => Some(Dtype::F32),
        StDtype::F16 => Some(Dtype::F16),
        StDtype::BF16 => Some(Dtype::Bf16),
        StDtype::I8 => Some(Dtype::I8),
        _ => None,
    }
}

/// Parses the layer index of a tensor name: `Ok(None)` if the name is not a layer name (does not
/// start with `h.`), `Ok(Some(index))` for a canonical `h.<decimal>`, an error otherwise.
pub fn layer_index(name: &str) -> Result<Option<u32>, TraceFileError> {
    let Some(digits) = name.strip_prefix(LAYER_PREFIX) else {
        return Ok(None);
    };
    let bad = |reason| TraceFileError::BadLayerName {
        name: name.to_string(),
        reason,
    };
    if digits.is_empty() {
        return Err(bad("the layer index is empty"));
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the layer index is not a decimal integer"));
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return Err(bad(
            "the layer index has a leading zero, which would make two names for one layer",
        ));
    }
    digits
        .parse::<u32>()
        .map(Some)
        .map_err(|_| bad("the layer index is too large"))
}

/// Checks the declared data ranges against the file length before safetensors sees the header:
/// with absurd offsets (near `usize::MAX`) its own end-of-buffer check could overflow.
fn precheck_offsets(path: &Path, bytes: &[u8]) -> Result<(), TraceFileError> {
    let malformed = |reason: String| TraceFileError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(malformed(format!(
            "the file is {} bytes long, shorter than the 8-byte header length",
            bytes.len()
        )));
    };
    let mut n = [0u8; 8];
    n.copy_from_slice(len_bytes);
    let n = u64::from_le_bytes(n);
    let available = bytes.len() as u64 - 8;
    let limit = max_header_bytes();
    if n > limit {
        return Err(TraceFileError::HeaderTooLarge {
            path: path.to_path_buf(),
            len: n,
            limit,
        });
    }
    if n > available {
        return Err(malformed(format!(
            "the header length field says {n} bytes but only {available} follow (truncated file?)"
        )));
    }
    let header = &bytes[8..8 + n as usize];
    // Anything unparsable here is left for safetensors to describe.
    let Ok(serde_json::Value::Object(entries)) = serde_json::from_slice(header) else {
        return Ok(());
    };
    let data_len = available - n;
    for (name, entry) in &entries {
        let end = entry
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(serde_json::Value::as_u64);
        if let Some(end) = end {
            if end > data_len {
                return Err(malformed(format!(
                    "tensor {name:?} ends at data offset {end} but the data section is only \
                     {data_len} bytes (truncated file?)"
                )));
            }
        }
    }
    Ok(())
}

fn describe_others(names: &[&String]) -> String {
    if names.is_empty() {
        return "no tensors at all".to_string();
    }
    let mut shown: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    shown.sort_unstable();
    let more = shown.len().saturating_sub(5);
    shown.truncate(5);
    let list = shown
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if more > 0 {
        format!("{} tensors: {list} and {more} more", names.len())
    } else {
        format!("{} other tensor(s): {list}", names.len())
    }
}

fn parse(
    path: &Path,
    bytes: &[u8],
    chunk: u32,
) -> Result<(TraceGeometry, Vec<Range<usize>>), TraceFileError> {
    precheck_offsets(path, bytes)?;
    let (header_len, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|e| TraceFileError::Malformed {
            path: path.to_path_buf(),
            reason: describe_safetensors_error(&e),
        })?;
    let data_start = 8 + header_len;
    let tensors = metadata.tensors();

    let mut layers: BTreeMap<u32, (&String, &TensorInfo)> = BTreeMap::new();
    let mut others = Vec::new();
    for (name, info) in &tensors {
        match layer_index(name)? {
            Some(index) => {
                // Canonical names make indices unique, so no two tensors can claim one layer.
                layers.insert(index, (name, *info));
            }
            None => others.push(name),
        }
    }
    let (Some((_, &(first_name, first))), Some((&last, _))) =
        (layers.first_key_value(), layers.last_key_value())
    else {
        return Err(TraceFileError::NoLayers {
            path: path.to_path_buf(),
            found: describe_others(&others),
        });
    };
    if let Some(missing) = (0..=last)
        .zip(layers.keys())
        .find(|(want, &have)| *want != have)
    {
        return Err(TraceFileError::MissingLayer {
            missing: format!("{LAYER_PREFIX}{}", missing.0),
            last,
        });
    }
    // Keys are distinct, sorted and contiguous up to `last`, so they are exactly 0..=last.

    let dtype = trace_dtype(first.dtype).ok_or_else(|| TraceFileError::UnsupportedDtype {
        name: first_name.clone(),
        dtype: first.dtype.to_string(),
    })?;
    let mut ranges = Vec::with_capacity(layers.len());
    for (name, info) in layers.values() {
        let name = name.to_string();
        if trace_dtype(info.dtype).is_none() {
            return Err(TraceFileError::UnsupportedDtype {
                name,
                dtype: info.dtype.to_string(),
            });
        }
        if info.dtype != first.dtype {
            return Err(TraceFileError::DtypeMismatch {
                name,
                dtype: info.dtype.to_string(),
                expected: first.dtype.to_string(),
            });
        }
        if info.shape.len() != 2 {
            return Err(TraceFileError::NotTwoDimensional {
                name,
                shape: info.shape.clone(),
            });
        }
        if info.shape != first.shape {
            return Err(TraceFileError::ShapeMismatch {
                name,
                shape: info.shape.clone(),
                expected: first.shape.clone(),
            });
        }
        if info.shape.contains(&0) {
            return Err(TraceFileError::ZeroSized {
                name,
                shape: info.shape.clone(),
            });
        }
        if info.shape.iter().any(|&d| u32::try_from(d).is_err()) {
            return Err(TraceFileError::TooLarge {
                name,
                shape: info.shape.clone(),
            });
        }
        let (start, end) = info.data_offsets;
        ranges.push(data_start + start..data_start + end);
    }
    let geometry = TraceGeometry::new(
        last + 1,
        first.shape[0] as u32,
        first.shape[1] as u32,
        chunk,
        dtype,
    )
    .map_err(|source| TraceFileError::Geometry {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((geometry, ranges))
}

fn describe_safetensors_error(e: &SafeTensorError) -> String {
    match e {
        SafeTensorError::HeaderTooSmall => "the file is too short to hold a header".to_string(),
        SafeTensorError::InvalidHeaderLength => {
            "the header length field points past the end of the file (truncated file?)".to_string()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "the tensors' data does not exactly fill the rest of the file (truncated or padded?)"
                .to_string()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    #[test]
    fn layer_names() {
        assert_eq!(layer_index("h.0").unwrap(), Some(0));
        assert_eq!(layer_index("h.42").unwrap(), Some(42));
        assert_eq!(layer_index("h.4294967295").unwrap(), Some(u32::MAX));
        assert_eq!(layer_index("k.0").unwrap(), None);
        assert_eq!(layer_index("h").unwrap(), None);
        assert_eq!(layer_index("H.0").unwrap(), None);
        for bad in [
            "h.",
            "h.01",
            "h.x",
            "h.-1",
            "h.+1",
            "h.1.k",
            "h.4294967296",
            "h.١",
        ] {
            assert!(layer_index(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn open_gives_geometry_and_layer_bytes() {
        let dir = std::env::temp_dir().join(format!("veritrace-cli-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.safetensors");
        let a: Vec<u8> = (0..24).collect();
        let b: Vec<u8> = (100..124).collect();
        let views = vec![
            (
                "h.1",
                TensorView::new(StDtype::BF16, vec![3, 4], &b).unwrap(),
            ),
            (
                "h.0",
                TensorView::new(StDtype::BF16, vec![3, 4], &a).unwrap(),
            ),
        ];
        safetensors::serialize_to_file(views, None, &path).unwrap();
        let t = load_trace(&path, 2).unwrap();
        assert_eq!(
            *t.geometry(),
            TraceGeometry::new(2, 3, 4, 2, Dtype::Bf16).unwrap()
        );
        assert_eq!(t.layers(), vec![&a[..], &b[..]]);
        assert_eq!(t.layer(1), Some(&b[..]));
        assert_eq!(t.layer(2), None);
        assert_eq!(t.path(), path);
        assert!(matches!(
            TraceFile::open(&path, 0),
            Err(TraceFileError::InvalidChunk)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
