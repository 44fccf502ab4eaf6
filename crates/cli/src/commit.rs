//! `veritrace commit`: the Merkle root of an activation trace stored as safetensors.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use veritrace_commit::{Dtype, HasherId, TraceCommitment, TraceCommitter};
use veritrace_model::{write_trace_with, Setup, Trace};
use veritrace_protocol::{Message, OutputRule, Prover, Statement, PROTOCOL_VERSION};

use crate::engine::load_model;
use crate::prove::{parse_tokens, VerbInputError};
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

    /// External prover: the model the trace claims to come from (a preset, minilm, or a
    /// checkpoint directory). With it, `commit` checks the trace against the model (layers,
    /// hidden size, token count, dtype) and writes the statement with the trace: --out
    /// RUN/ gets RUN/trace.safetensors (F32, the statement in its metadata) and
    /// RUN/commitment.json. The statement's model digest is the engine-independent digest
    /// (specs/model-digest.md): the model is read, never run.
    #[arg(long, requires = "out")]
    pub model: Option<String>,

    /// With --model: the input token ids, comma-separated.
    #[arg(long, requires = "model", conflicts_with = "text")]
    pub prompt: Option<String>,

    /// With --model: the input as text, tokenized with the checkpoint's tokenizer.json and
    /// bound in the statement (specs/protocol.md §3.4).
    #[arg(long, requires = "model")]
    pub text: Option<String>,

    /// With --text: the text went through the checkpoint's chat template.
    #[arg(long, requires = "text")]
    pub chat: bool,

    /// With --model: the generated token ids, comma-separated (a decoder; none for an encoder).
    #[arg(long, requires = "model", value_name = "IDS")]
    pub output_tokens: Option<String>,

    /// With --model: the engine the prover ran (for example "transformers 5.25.0, torch 2.15.0,
    /// cpu, eager"), bound in the statement beside the setup; `calibrate` records the engines
    /// of the traces it calibrates from. At most 128 printable ASCII bytes.
    #[arg(long, requires = "model")]
    pub engine: Option<String>,

    /// With --model: the numeric setup the prover claims (canonical string).
    #[arg(long, requires = "model", default_value = "f32/attn=eager")]
    pub setup: String,

    /// With --model: the output directory (created; an existing trace.safetensors or
    /// commitment.json there is refused, never overwritten).
    #[arg(long, requires = "model")]
    pub out: Option<PathBuf>,
    /// With --model: `sublayer` commits the trace file's sub-layer values too (`context.<l>` and
    /// `cell.<l>`, F32, in the decoder's row layout: specs/protocol.md §3.5; the Python
    /// package's `capture(..., sublayers=True)` and `save_trace(..., sublayers=...)` write
    /// them), so that a verifier can check its cells with `verify --layer-check freivalds`;
    /// `sublayer-by-head` commits the same tensors with each key-value head's keys and values
    /// in leaves of their own, for challenges that draw heads (`challenge --attention-heads`).
    /// The values are committed in the setup's activation type (a bf16 setup's as bf16, half
    /// the bytes); a value that type does not hold exactly is an error.
    #[arg(long, requires = "model", default_value = "hidden", value_parser = ["hidden", "sublayer", "sublayer-by-head"])]
    pub trace_level: String,
}

/// Accepts exactly the names of [`HasherId::ALL`] (and lists them in `--help` and in errors).
fn hasher_parser() -> impl TypedValueParser<Value = HasherId> {
    PossibleValuesParser::new(HasherId::ALL.map(HasherId::name))
        .try_map(|name| name.parse::<HasherId>())
}

/// Cells hashed together at most (their digests are what a group holds: 2 MiB).
const CELLS_PER_GROUP: u64 = 1 << 16;

/// Commits to every layer of a loaded trace in groups of whole layers (bounded memory: one
/// group's leaf digests, at most 65,536 cells unless one layer has more, plus O(log n) tree
/// nodes), the cells of a group hashed in parallel: a group spans enough layers to give every
/// thread cells even when a layer has few. Returns the commitment.
pub fn commit_file(trace: &TraceFile, hasher: HasherId) -> anyhow::Result<TraceCommitment> {
    let mut committer = TraceCommitter::new(hasher, *trace.geometry())?;
    let per = u64::from(trace.geometry().chunks_per_layer()).max(1);
    let group = (CELLS_PER_GROUP / per).max(1) as usize;
    let layers = trace.layers();
    for (g, chunk) in layers.chunks(group).enumerate() {
        committer.push_layers(chunk).with_context(|| {
            format!(
                "committing layers h.{}..h.{}",
                g * group,
                g * group + chunk.len() - 1
            )
        })?;
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
    if let Some(model) = &args.model {
        return commit_external(args, model, out);
    }
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

/// A trace layer's stored elements as f32: F32 as stored, F16 and BF16 widened (exactly).
fn layer_f32(bytes: &[u8], dtype: Dtype, layer: usize) -> Result<Vec<f32>, VerbInputError> {
    let out: Vec<f32> = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(VerbInputError::Argument(format!(
                "the trace is {other}: a model's hidden states are floating point (F32, F16 or \
                 BF16)"
            )))
        }
    };
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        return Err(VerbInputError::Argument(format!(
            "h.{layer} holds a non-finite value at element {i}"
        )));
    }
    Ok(out)
}

/// `veritrace commit TRACE --model M ... --out RUN/`: an external prover's trace, checked
/// against the model and committed under its statement.
fn commit_external(
    args: &CommitArgs,
    model_spec: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let run_dir = args
        .out
        .as_ref()
        .ok_or_else(|| VerbInputError::Argument("--model needs --out RUN/".into()))?;
    let trace_path = run_dir.join("trace.safetensors");
    let commitment_path = run_dir.join("commitment.json");
    for p in [&trace_path, &commitment_path] {
        if p.exists() {
            return Err(VerbInputError::Argument(format!(
                "{} exists; commit writes a fresh run directory and overwrites nothing",
                p.display()
            ))
            .into());
        }
    }
    let file = TraceFile::open(&args.trace, args.chunk)?;
    let model = load_model(model_spec)?;
    let setup: Setup = args.setup.parse()?;
    model.check_setup(&setup)?;
    let (input, input_text) = match (&args.prompt, &args.text) {
        (Some(p), _) => (parse_tokens(p)?, None),
        (None, Some(text)) => {
            let tokenizer = model.tokenizer().ok_or_else(|| {
                VerbInputError::Argument(format!(
                    "--text: model {model_spec:?} has no tokenizer.json; give token ids with \
                     --prompt"
                ))
            })?;
            let (tokens, binding) = tokenizer.input_text(text, args.chat)?;
            (tokens, Some(binding))
        }
        (None, None) => {
            return Err(VerbInputError::Argument(
                "--model needs the input: --prompt IDS or --text TEXT".into(),
            )
            .into())
        }
    };
    let output = match &args.output_tokens {
        Some(s) if !s.trim().is_empty() => parse_tokens(s)?,
        _ => Vec::new(),
    };
    if model.is_encoder() && !output.is_empty() {
        return Err(VerbInputError::Argument(format!(
            "model {model_spec:?} is an encoder: it generates no tokens, so --output-tokens \
             must be empty"
        ))
        .into());
    }
    let vocab = model.vocab_size();
    if let Some((p, t)) = input
        .iter()
        .chain(&output)
        .enumerate()
        .find(|(_, &t)| t as usize >= vocab)
    {
        return Err(VerbInputError::Argument(format!(
            "token {t} at position {p} is not below the model's vocabulary size {vocab}"
        ))
        .into());
    }
    // Token ids the importer carried over (`token_ids`) must be the statement's.
    if let Some(ids) = trace_token_ids(&file)? {
        let claimed: Vec<i64> = input.iter().chain(&output).map(|&t| i64::from(t)).collect();
        if ids != claimed {
            let at = ids
                .iter()
                .zip(&claimed)
                .position(|(a, b)| a != b)
                .unwrap_or(ids.len().min(claimed.len()));
            return Err(VerbInputError::Argument(format!(
                "the trace's token_ids ({} ids) disagree with the statement's tokens ({} ids) \
                 from position {at}",
                ids.len(),
                claimed.len()
            ))
            .into());
        }
    }
    // The trace against the model: layers, width, tokens.
    let g = *file.geometry();
    let mismatch = |what: &str, trace: String, model: String| -> anyhow::Error {
        VerbInputError::Argument(format!(
            "the trace does not fit model {model_spec:?}: {what} {trace} in the trace, {model} \
             for the model and the statement"
        ))
        .into()
    };
    if g.layers as usize != model.num_layers() + 1 {
        return Err(mismatch(
            "hidden states",
            g.layers.to_string(),
            format!(
                "{} (h.0 .. h.{})",
                model.num_layers() + 1,
                model.num_layers()
            ),
        ));
    }
    if g.hidden as usize != model.hidden_size() {
        return Err(mismatch(
            "hidden size",
            g.hidden.to_string(),
            model.hidden_size().to_string(),
        ));
    }
    if g.tokens as usize != input.len() + output.len() {
        return Err(mismatch(
            "token rows",
            g.tokens.to_string(),
            format!(
                "{} ({} input + {} output)",
                input.len() + output.len(),
                input.len(),
                output.len()
            ),
        ));
    }
    let layers = file
        .layers()
        .iter()
        .enumerate()
        .map(|(l, bytes)| layer_f32(bytes, g.dtype, l))
        .collect::<Result<Vec<_>, _>>()?;
    let widened = g.dtype != Dtype::F32;
    let trace = Trace {
        tokens: g.tokens as usize,
        hidden: g.hidden as usize,
        layers,
        keys: Vec::new(),
    };
    let trace_level = match args.trace_level.as_str() {
        "hidden" => veritrace_protocol::TraceLevel::Hidden,
        level => match model.decoder() {
            Some(d) if level == "sublayer-by-head" => d.sublayer_layout().by_head_level()?,
            Some(d) => d.sublayer_layout().trace_level()?,
            None => {
                return Err(VerbInputError::Argument(format!(
                    "--trace-level {level}: model {model_spec:?} is not a Llama-style decoder \
                     (sub-layer values are defined for those only)"
                ))
                .into())
            }
        },
    };
    let statement = Statement {
        // sub-layer values in the setup's activation type (a bf16 engine's are bf16 values)
        trace_level: trace_level.with_dtype(setup.precision.dtype()),
        version: PROTOCOL_VERSION,
        model_digest: model.digest(),
        setup: setup.to_bytes(),
        input_tokens: input,
        output_tokens: output,
        geometry: trace.geometry(args.chunk)?,
        hasher: args.hasher,
        dependency: model.dependency(),
        output_rule: OutputRule::Greedy,
        input_text,
        engine: args.engine.clone(),
    };
    statement.validate()?;
    // The sub-layer values, read and checked (F32, the statement's widths, finite) before
    // anything is written.
    let sublayers = veritrace_model::sublayer::read_sublayers(&args.trace, &statement)?;
    let sub_trace = sublayers.as_ref().map(|(context, cell)| {
        let f = |layers: &Vec<Vec<u8>>| -> Vec<Vec<f32>> {
            layers
                .iter()
                .map(|l| {
                    l.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                })
                .collect()
        };
        veritrace_model::sublayer::SubLayerTrace {
            context: f(context),
            cell: f(cell),
        }
    });
    // the committed parts, in the statement's sub-layer dtype (a value it does not hold is an
    // error here, before anything is written)
    let parts = sublayers
        .map(|(context, cell)| veritrace_model::sublayer::prover_parts(&statement, context, cell))
        .transpose()?;
    // The trace and the commitment are written into a staging directory that becomes the run
    // directory in one rename: a run directory never holds a trace without its commitment, and
    // a directory that holds anything is never written into (nothing is overwritten).
    let nothing = |_: &str| false;
    let set = veritrace_model::files::OutputDir::stage(run_dir, &nothing)?;
    write_trace_with(
        &set.path().join("trace.safetensors"),
        &trace,
        Some(&statement),
        sub_trace.as_ref(),
    )?;
    let mut prover = Prover::new(statement, trace.layer_bytes())?;
    if let Some(parts) = parts {
        prover = prover.with_sublayer_parts(parts)?;
    }
    let commitment = prover.commit()?;
    set.write("commitment.json", (commitment.to_json() + "\n").as_bytes())?;
    // the hidden tree's leaf digests, so that `open` reads only the cells it opens
    set.write(
        "trace.leaves",
        &veritrace_commit::encode_leaves(prover.tree()),
    )?;
    set.commit(&nothing)?;
    writeln!(
        out,
        "root {}\ntrace {}{}\ncommitment {}\nmodel {} ({})\ninput tokens {}, output tokens {}",
        commitment.root,
        trace_path.display(),
        if widened {
            format!(" ({} widened to F32 exactly)", g.dtype)
        } else {
            String::new()
        },
        commitment_path.display(),
        commitment.statement.model_digest,
        model.architecture(),
        commitment.statement.input_tokens.len(),
        commitment.statement.output_tokens.len(),
    )?;
    Ok(())
}

/// The `token_ids` tensor of a trace file (I64 or I32, one dimension), if it has one, read from
/// the file as [`TraceFile`] mapped it (no second read).
fn trace_token_ids(file: &TraceFile) -> anyhow::Result<Option<Vec<i64>>> {
    let path = file.path();
    let st = safetensors::SafeTensors::deserialize(file.bytes())
        .map_err(|e| VerbInputError::Argument(format!("{}: {e}", path.display())))?;
    let Ok(view) = st.tensor("token_ids") else {
        return Ok(None);
    };
    let data = view.data();
    let ids = match view.dtype() {
        safetensors::Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        safetensors::Dtype::I32 => data
            .chunks_exact(4)
            .map(|c| i64::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))))
            .collect(),
        other => {
            return Err(VerbInputError::Argument(format!(
                "{}: token_ids has dtype {other:?} (I64 or I32)",
                path.display()
            ))
            .into())
        }
    };
    Ok(Some(ids))
}
