//! `veritrace commit`: the Merkle root of an activation trace stored as safetensors.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use veritrace_commit::{HasherId, TraceCommitment, TraceCommitter};

use crate::trace_file::TraceFile;

/// Default number of token rows per cell.
pub const DEFAULT_CHUNK: u32 = 32;

/// Arguments of `veritrace commit`.
#[derive(Debug, Clone, Args)]
pub struct CommitArgs {
    /// The trace: a safetensors file with one [tokens, hidden] tensor per layer, named h.0
    /// (embeddings), h.1, …, h.L, all of one dtype (F32, F16, BF16 or I8) and one shape.
    #[arg(value_name = "TRACE.safetensors")]
    pub trace: PathBuf,

    /// Hash function for leaves and internal nodes.
    #[arg(long, default_value = "blake3", value_parser = hasher_parser())]
    pub hasher: HasherId,

    /// Token rows per cell (the unit a verifier samples); the last cell of a layer may be shorter.
    #[arg(long, value_name = "TOKENS", default_value_t = DEFAULT_CHUNK,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub chunk: u32,

    /// Print one JSON object (root, hasher, geometry, cells, file) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Accepts exactly the names of [`HasherId::ALL`] (and lists them in `--help` and in errors).
fn hasher_parser() -> impl TypedValueParser<Value = HasherId> {
    PossibleValuesParser::new(HasherId::ALL.map(HasherId::name))
        .try_map(|name| name.parse::<HasherId>())
}

/// Commits to every layer of a loaded trace, layer by layer (bounded memory: one layer's leaf
/// digests plus O(log n) tree nodes), and returns the commitment.
pub fn commit_file(trace: &TraceFile, hasher: HasherId) -> anyhow::Result<TraceCommitment> {
    let mut committer = TraceCommitter::new(hasher, *trace.geometry())?;
    for (layer, bytes) in trace.layers().into_iter().enumerate() {
        committer
            .push_layer(bytes)
            .with_context(|| format!("committing layer h.{layer}"))?;
    }
    Ok(committer.finish()?)
}

/// The commitment as one JSON object:
/// `{"root", "hasher", "geometry": {"layers", "tokens", "hidden", "chunk", "dtype"}, "cells", "file"}`.
pub fn to_json(commitment: &TraceCommitment, file: &Path) -> serde_json::Value {
    let g = &commitment.geometry;
    serde_json::json!({
        "root": commitment.root.to_hex(),
        "hasher": commitment.hasher.name(),
        "geometry": {
            "layers": g.layers,
            "tokens": g.tokens,
            "hidden": g.hidden,
            "chunk": g.chunk,
            "dtype": g.dtype.name(),
        },
        "cells": g.num_cells(),
        "file": file.to_string_lossy(),
    })
}

/// The commitment as aligned human-readable lines.
pub fn to_text(commitment: &TraceCommitment, file: &Path) -> String {
    let g = &commitment.geometry;
    format!(
        "root      {}\n\
         hasher    {}\n\
         geometry  {} layers x {} tokens x {} hidden, chunk {} tokens, dtype {}\n\
         cells     {} ({} per layer)\n\
         file      {}\n",
        commitment.root.to_hex(),
        commitment.hasher,
        g.layers,
        g.tokens,
        g.hidden,
        g.chunk,
        g.dtype,
        g.num_cells(),
        g.chunks_per_layer(),
        file.display(),
    )
}

/// Runs `veritrace commit`: loads and validates the trace, commits to it, and writes the result
/// (text or JSON) to `out`.
pub fn run(args: &CommitArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let trace = TraceFile::open(&args.trace, args.chunk)?;
    let commitment = commit_file(&trace, args.hasher)?;
    let text = if args.json {
        format!("{}\n", to_json(&commitment, trace.path()))
    } else {
        to_text(&commitment, trace.path())
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing the result to standard output")?;
    Ok(())
}
