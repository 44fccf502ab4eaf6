//! Captured traces and their safetensors form.
//!
//! A trace file holds one F32 tensor `h.<l>` of shape `[tokens, hidden]` per hidden state
//! `l = 0..=L` (the format `veritrace commit` reads) and, optionally, the statement it was
//! committed under as JSON in the safetensors metadata under [`STATEMENT_METADATA_KEY`].

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype as StDtype, TensorView};
use safetensors::SafeTensors;
use veritrace_commit::{Dtype, TraceGeometry};
use veritrace_protocol::{Message, Statement};

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
}

impl Trace {
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
    trace.check()?;
    let bytes = trace.layer_bytes();
    let names: Vec<String> = (0..bytes.len()).map(|l| format!("h.{l}")).collect();
    let views = names
        .iter()
        .zip(&bytes)
        .map(|(name, b)| {
            TensorView::new(StDtype::F32, vec![trace.tokens, trace.hidden], b)
                .map(|v| (name.as_str(), v))
                .map_err(|e| ModelError::TraceFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata =
        statement.map(|s| HashMap::from([(STATEMENT_METADATA_KEY.to_string(), s.to_json())]));
    safetensors::serialize_to_file(views, metadata, path).map_err(|e| ModelError::TraceFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Reads a trace written by [`write_trace`] (or any F32 trace file of that format) and the
/// statement in its metadata, if any. Refuses missing or mis-shaped layers, other dtypes,
/// non-finite values and a malformed statement with a typed error.
pub fn read_trace(path: &Path) -> Result<(Trace, Option<Statement>)> {
    let file = path.display().to_string();
    let bad = |reason: String| ModelError::TraceFile {
        path: file.clone(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: file.clone(),
        source,
    })?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let count = st.names().iter().filter(|n| n.starts_with("h.")).count();
    if count == 0 {
        return Err(bad("no h.* layer tensors".into()));
    }
    let mut layers = Vec::with_capacity(count);
    let mut shape: Option<Vec<usize>> = None;
    for l in 0..count {
        let name = format!("h.{l}");
        let view = st
            .tensor(&name)
            .map_err(|_| bad(format!("layer {name} is missing ({count} h.* tensors)")))?;
        if view.dtype() != StDtype::F32 {
            return Err(bad(format!("{name} is {:?}, not F32", view.dtype())));
        }
        if view.shape().len() != 2 || view.shape().contains(&0) {
            return Err(bad(format!(
                "{name} has shape {:?}, not [tokens, hidden]",
                view.shape()
            )));
        }
        match &shape {
            Some(s) if s.as_slice() != view.shape() => {
                return Err(bad(format!(
                    "{name} has shape {:?} but h.0 has {s:?}",
                    view.shape()
                )))
            }
            Some(_) => {}
            None => shape = Some(view.shape().to_vec()),
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(index) = first_non_finite(&values) {
            return Err(ModelError::NonFinite {
                what: "trace file layer",
                index,
            });
        }
        layers.push(values);
    }
    let shape = shape.expect("at least one layer");
    let statement = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATEMENT_METADATA_KEY))
        .map(|json| {
            Statement::from_json(json)
                .map_err(|e| bad(format!("the statement in the metadata is invalid: {e}")))
        })
        .transpose()?;
    Ok((
        Trace {
            tokens: shape[0],
            hidden: shape[1],
            layers,
        },
        statement,
    ))
}
