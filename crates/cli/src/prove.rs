//! The protocol over files, so that two parties can run it: `veritrace prove` (model + setup +
//! prompt → trace + commitment), `veritrace challenge` (the verifier's random cells),
//! `veritrace open` (the prover's opening) and `veritrace verify` (the verdict; see
//! [`crate::verify`]).
//!
//! ```text
//! prover:   veritrace prove --model tiny --prompt 1,2,3 --output 8 --out run/
//!             → run/trace.safetensors (statement in its metadata), run/commitment.json
//! verifier: veritrace challenge run/commitment.json --samples 4 --out challenge.vtpm
//! prover:   veritrace open run/trace.safetensors --challenge challenge.vtpm --out opening.vtpm
//! verifier: veritrace verify --commitment run/commitment.json --challenge challenge.vtpm \
//!             --opening opening.vtpm --model tiny        (exit 0 accept, 1 reject)
//! ```
//!
//! `--model` may also name an encoder (`minilm`, a BERT checkpoint directory): `prove` then
//! encodes the prompt and generates nothing, and `verify` recomputes a challenged cell from every
//! row of the layer below (the statement's bidirectional dependency).
//!
//! Non-interactive (Fiat-Shamir): `veritrace open TRACE --non-interactive --samples K
//! --pow-bits P --rounds R --out DIR` writes `opening-<r>.vtpm` for each round (each challenge is
//! derived from the transcript of the commitment and the proof-of-work nonce), and
//! `veritrace verify --non-interactive --samples K --pow-bits P --opening DIR/opening-0.vtpm …`
//! derives the same challenges. Challenges and openings are written in the binary envelope
//! (`--format json`: JSON); every message file is read in either form.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use rand_core::{OsRng, RngCore};
use thiserror::Error;
use veritrace_commit::HasherId;
use veritrace_model::files::{self, OutputDir};
use veritrace_model::{map_trace_with, write_trace_with, Setup};
use veritrace_protocol::sampling::sample_cells;
use veritrace_protocol::transcript::{derive_challenge, find_pow_nonce};
use veritrace_protocol::{
    Challenge, ChallengeParams, Commitment, Message, Prover, SamplingStrategy, Statement,
};

use crate::engine::load_model;

/// A refused file or argument of the protocol verbs (exit 2).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum VerbInputError {
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A message file does not hold the expected message.
    #[error("{path}: not a valid {what}: {reason}")]
    Message {
        /// The file.
        path: String,
        /// The expected message.
        what: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// An argument is malformed.
    #[error("{0}")]
    Argument(String),
}

/// Reads a message file, in the binary envelope (it starts with the `VTPM` magic) or JSON: a
/// regular file of at most
/// [`veritrace_model::files::max_message_bytes`] (4 GiB unless `VERITRACE_MAX_MESSAGE_BYTES`
/// says otherwise), checked before it is read.
pub fn read_message<M: Message>(path: &Path) -> Result<M, VerbInputError> {
    read_message_limited(path, files::max_message_bytes())
}

/// [`read_message`] under an explicit byte limit (`verify --limits`).
pub fn read_message_limited<M: Message>(path: &Path, limit: u64) -> Result<M, VerbInputError> {
    // mapped, not read: an opening as large as the cells it opens is decoded from file pages
    let bytes = files::map_limited(
        path,
        limit,
        "a protocol message",
        "raise max_message_bytes (verify --limits) or VERITRACE_MAX_MESSAGE_BYTES",
    )
    .map_err(|e| VerbInputError::File {
        path: path.display().to_string(),
        reason: e.reason(),
    })?;
    if bytes.starts_with(veritrace_protocol::encoding::MESSAGE_MAGIC) {
        // the strict binary envelope (specs/protocol.md), under the same byte limit
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        return M::from_bytes_with_limit(&bytes, limit).map_err(|e| VerbInputError::Message {
            path: path.display().to_string(),
            what: M::NAME,
            reason: e.to_string(),
        });
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| VerbInputError::Message {
        path: path.display().to_string(),
        what: M::NAME,
        reason: format!("not UTF-8 JSON: {e}"),
    })?;
    M::from_json(text).map_err(|e| VerbInputError::Message {
        path: path.display().to_string(),
        what: M::NAME,
        reason: e.to_string(),
    })
}

/// Writes a message as JSON, atomically ([`veritrace_model::files::write_atomic`]: a unique
/// temporary file beside it, synced, renamed).
pub fn write_message<M: Message>(path: &Path, message: &M) -> anyhow::Result<()> {
    write_message_as(path, message, MessageFormat::Json)
}

/// How `challenge` and `open` write their messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageFormat {
    /// The strict binary envelope (specs/protocol.md §6.2): cell bytes as they are, the default.
    Binary,
    /// JSON (cell bytes in hex: twice the size), for people.
    Json,
}

impl MessageFormat {
    /// The bytes of `message` in this format.
    pub fn encode<M: Message>(self, message: &M) -> Vec<u8> {
        match self {
            MessageFormat::Binary => message.to_bytes(),
            MessageFormat::Json => (message.to_json() + "\n").into_bytes(),
        }
    }

    /// Writes `message` in this format to `w`; the binary envelope as it is serialized, with no
    /// copy of it held ([`Message::write_bytes_to`]).
    ///
    /// # Errors
    /// The writer's error.
    pub fn write_to<M: Message>(
        self,
        message: &M,
        w: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        match self {
            MessageFormat::Binary => message.write_bytes_to(w),
            MessageFormat::Json => w.write_all((message.to_json() + "\n").as_bytes()),
        }
    }

    /// The extension of the files `open --non-interactive` writes (`vtpm` or `json`).
    pub fn extension(self) -> &'static str {
        match self {
            MessageFormat::Binary => "vtpm",
            MessageFormat::Json => "json",
        }
    }
}

/// Writes a message in `format`, atomically (as [`write_message`]).
pub fn write_message_as<M: Message>(
    path: &Path,
    message: &M,
    format: MessageFormat,
) -> anyhow::Result<()> {
    files::write_atomic_with(path, |w| format.write_to(message, w))?;
    Ok(())
}

/// The files of a `prove` run directory: a later `prove` into the same directory replaces
/// exactly these, and refuses a directory holding anything else.
pub fn run_dir_file(name: &str) -> bool {
    matches!(
        name,
        "trace.safetensors" | "commitment.json" | "trace.leaves"
    )
}

/// The files `open --non-interactive` writes into its directory (`opening-<r>.vtpm`, or
/// `opening-<r>.json` with `--format json`).
pub fn opening_file(name: &str) -> bool {
    name.strip_prefix("opening-")
        .and_then(|r| r.strip_suffix(".vtpm").or_else(|| r.strip_suffix(".json")))
        .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
}

/// Parses a sampling strategy name (`uniform`, `stratified`, `cost-weighted`).
pub fn parse_strategy(s: &str) -> Result<SamplingStrategy, VerbInputError> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        VerbInputError::Argument(format!(
            "--strategy {s:?} (known: uniform, stratified, cost-weighted)"
        ))
    })
}

pub(crate) fn parse_tokens(s: &str) -> Result<Vec<u32>, VerbInputError> {
    let tokens: Result<Vec<u32>, _> = s.split(',').map(|t| t.trim().parse::<u32>()).collect();
    match tokens {
        Ok(t) if !t.is_empty() => Ok(t),
        _ => Err(VerbInputError::Argument(format!(
            "--prompt {s:?} is not a comma-separated list of token ids"
        ))),
    }
}

/// Arguments of `veritrace prove`.
#[derive(Debug, Args)]
pub struct ProveArgs {
    /// Model: a decoder (a preset tiny or small, or a Llama-style checkpoint directory), which
    /// generates --output tokens after the prompt, or an encoder (minilm, or a BERT checkpoint
    /// directory), which encodes the prompt.
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// Device the prover runs the model on: `cpu`, or `cuda`/`cuda:N` (a build with
    /// `--features cuda`). A verifier recomputes on the CPU, so a GPU trace is accepted within
    /// the tolerance of the verifier's policy, not bitwise.
    #[arg(long, value_name = "cpu|cuda[:N]", default_value = "cpu")]
    pub device: veritrace_model::Device,
    /// Numeric setup (canonical string).
    #[arg(long, default_value = "f32/attn=eager")]
    pub setup: String,
    /// Prompt token ids, comma-separated. Default: a seeded prompt (--prompt-seed, --prompt-tokens).
    #[arg(long, conflicts_with = "text")]
    pub prompt: Option<String>,
    /// Prompt text, tokenized with the checkpoint's tokenizer.json (special tokens added, as
    /// transformers' `tokenizer(text)` does). The statement binds the text and the tokenizer's
    /// digest (specs/protocol.md §3.4), so a verifier re-tokenizes it and rejects other tokens.
    #[arg(long)]
    pub text: Option<String>,
    /// With --text: wrap the text as one user message in the checkpoint's chat template (with
    /// the generation prompt) before tokenizing; the template is bound in the tokenizer digest.
    #[arg(long, requires = "text")]
    pub chat: bool,
    /// Seed of the default prompt.
    #[arg(long, default_value_t = 0)]
    pub prompt_seed: u64,
    /// Length of the default prompt.
    #[arg(long, default_value_t = 16)]
    pub prompt_tokens: usize,
    /// Tokens to generate (greedy; a decoder only). Default: 8 for a decoder, 0 for an encoder.
    #[arg(long)]
    pub output: Option<usize>,
    /// Token rows per cell.
    #[arg(long, default_value_t = 8)]
    pub chunk: u32,
    /// Hasher of the commitment (blake3, sha256, poseidon).
    #[arg(long, default_value = "blake3")]
    pub hasher: String,
    /// What the commitment covers: `hidden` (the hidden states) or `sublayer` (also every
    /// layer's sub-layer values — the inputs and outputs of its linear maps — so that a
    /// verifier can check challenged cells with Freivalds: `verify --layer-check freivalds`;
    /// specs/protocol.md §3.5). `sublayer-by-head` commits the same values with each key-value
    /// head's keys and values in leaves of their own, so that a challenge can draw heads and
    /// context chunks and the opening holds only those (`challenge --attention-heads`,
    /// specs/protocol.md §4.4). Both need a Llama-style decoder, run by the CPU engine or, with
    /// `--device cuda:N`, the GPU's (its own kernels' values, checked like any engine's); the
    /// trace file then also holds the tensors `context.<l>` and `cell.<l>`.
    #[arg(long, default_value = "hidden", value_parser = ["hidden", "sublayer", "sublayer-by-head"])]
    pub trace_level: String,
    /// Output directory: trace.safetensors and commitment.json.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `veritrace prove`.
///
/// # Errors
/// Refused arguments, models or setups exit 2; anything else 1.
pub fn prove(args: &ProveArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let sublayer = args.trace_level != "hidden";
    // a sub-layer trace needs the decoder itself (its layout and capture, on the CPU engine
    // or the GPU's)
    let decoder = if sublayer {
        Some(std::sync::Arc::new(crate::keygen::load_decoder(
            &args.model,
        )?))
    } else {
        None
    };
    let model: std::sync::Arc<dyn veritrace_model::Model> = match &decoder {
        Some(d) => d.clone(),
        None => load_model(&args.model)?,
    };
    let setup: Setup = args.setup.parse()?;
    let hasher: HasherId = args
        .hasher
        .parse()
        .map_err(|_| VerbInputError::Argument(format!("--hasher {:?}", args.hasher)))?;
    let output = match (model.is_encoder(), args.output) {
        (false, n) => n.unwrap_or(8),
        (true, None | Some(0)) => 0,
        (true, Some(_)) => {
            return Err(VerbInputError::Argument(format!(
                "model {:?} is an encoder: it generates no tokens, so --output must be 0",
                args.model
            ))
            .into())
        }
    };
    if args.prompt_tokens == 0 || args.prompt_tokens > 1 << 16 || output > 1 << 16 {
        return Err(VerbInputError::Argument(
            "--prompt-tokens must be in 1..=65536 and --output at most 65536".into(),
        )
        .into());
    }
    let (prompt, input_text) = match (&args.prompt, &args.text) {
        (Some(p), _) => (parse_tokens(p)?, None),
        (None, Some(text)) => {
            let tokenizer = model.tokenizer().ok_or_else(|| {
                VerbInputError::Argument(format!(
                    "--text: model {:?} has no tokenizer.json; give token ids with --prompt",
                    args.model
                ))
            })?;
            let (tokens, binding) = tokenizer.input_text(text, args.chat)?;
            (tokens, Some(binding))
        }
        (None, None) => (model.prompt(args.prompt_seed, args.prompt_tokens), None),
    };
    let runner = veritrace_model::Runner::new(args.device)?;
    let (statement, trace, leaves, sub) = match &decoder {
        Some(d) => {
            let (mut s, t, sub) =
                runner.llama_prove_run_sublayers(d, &setup, &prompt, output, args.chunk, hasher)?;
            if args.trace_level == "sublayer-by-head" {
                s.trace_level = d
                    .sublayer_layout()
                    .by_head_level()?
                    .with_dtype(setup.precision.dtype());
            }
            (s, t, None, Some(sub))
        }
        None => {
            let (s, t, leaves) =
                model.prove_committed(&runner, &setup, &prompt, output, args.chunk, hasher)?;
            (s, t, leaves, None)
        }
    };
    let mut statement = statement;
    statement.input_text = input_text;
    // The trace and its commitment are written into a staging directory and put in place
    // together: a run directory never pairs a trace with another run's commitment.
    let set = OutputDir::stage(&args.out, &run_dir_file)?;
    let trace_path = args.out.join("trace.safetensors");
    write_trace_with(
        &set.path().join("trace.safetensors"),
        &trace,
        Some(&statement),
        sub.as_ref(),
    )?;
    // On a GPU the cells were hashed on the device as each layer finished.
    let mut prover = match leaves {
        Some(leaves) => Prover::with_leaves(statement, trace.layer_bytes(), leaves)?,
        None => Prover::new(statement, trace.layer_bytes())?,
    };
    if let Some(sub) = &sub {
        let parts = sub.parts(prover.statement())?;
        prover = prover.with_sublayer_parts(parts)?;
    }
    let commitment = prover.commit()?;
    let commitment_path = args.out.join("commitment.json");
    set.write("commitment.json", (commitment.to_json() + "\n").as_bytes())?;
    // the hidden tree's leaf digests, so that `open` reads only the cells it opens
    set.write(
        "trace.leaves",
        &veritrace_commit::encode_leaves(prover.tree()),
    )?;
    set.commit(&run_dir_file)?;
    writeln!(
        out,
        "root {}\ntrace {}\ncommitment {}\noutput tokens {:?}",
        commitment.root,
        trace_path.display(),
        commitment_path.display(),
        commitment.statement.output_tokens
    )?;
    if let Some(r) = &commitment.sublayer_roots {
        writeln!(
            out,
            "sub-layer roots: context {}, cell {}{} ({} bytes of sub-layer values)",
            r.context,
            r.cell,
            r.kv.map_or(String::new(), |kv| format!(", key-value {kv}")),
            sub.as_ref().map_or(0, |s| s.byte_len())
        )?;
    }
    if commitment.statement.input_text.is_some() {
        writeln!(
            out,
            "input tokens {:?} (from the text)",
            commitment.statement.input_tokens
        )?;
    }
    Ok(())
}

/// Arguments of `veritrace challenge`.
#[derive(Debug, Args)]
pub struct ChallengeArgs {
    /// The prover's commitment (JSON).
    pub commitment: PathBuf,
    /// Cells to challenge (k).
    #[arg(long)]
    pub samples: u32,
    /// Sampling strategy (uniform, stratified, cost-weighted).
    #[arg(long, default_value = "uniform")]
    pub strategy: String,
    /// Round index.
    #[arg(long, default_value_t = 0)]
    pub round: u32,
    /// 32-byte sampling seed in hex (default: fresh operating-system randomness, which is what
    /// soundness needs; a fixed seed is for reproducible tests only).
    #[arg(long)]
    pub seed: Option<String>,
    /// Where to write the challenge.
    #[arg(long)]
    pub out: PathBuf,
    /// The challenge's format: the binary envelope or JSON (`verify` and `open` read either).
    #[arg(long, value_enum, default_value = "binary")]
    pub format: MessageFormat,
    /// The verifier's limits (as `verify --limits`): a commitment claiming more is refused
    /// before any cell is drawn.
    #[arg(long, value_name = "JSON|FILE")]
    pub limits: Option<String>,
    /// Draw N query heads per challenged cell (a statement committed with `--trace-level
    /// sublayer-by-head`): the opening then holds only their keys and values over the context
    /// and the provenance of --context-chunks earlier chunks, and is checked with `verify
    /// --layer-check freivalds` (specs/protocol.md §4.4). A prover whose attention is wrong in
    /// b of H heads escapes one cell with probability C(H-b, N)/C(H, N).
    #[arg(long, value_name = "N")]
    pub attention_heads: Option<u32>,
    /// With --attention-heads: earlier context chunks per cell whose provenance is opened and
    /// checked (the cell's own always is).
    #[arg(long, value_name = "M", requires = "attention_heads")]
    pub context_chunks: Option<u32>,
}

/// The attention sample of `--attention-heads N --context-chunks M` (none without
/// `--attention-heads`; `--context-chunks` defaults to 1).
pub(crate) fn attention_sample(
    heads: Option<u32>,
    chunks: Option<u32>,
) -> Result<Option<veritrace_protocol::AttentionSample>, VerbInputError> {
    match (heads, chunks) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(VerbInputError::Argument(
            "--context-chunks needs --attention-heads".into(),
        )),
        (Some(0), _) => Err(VerbInputError::Argument(
            "--attention-heads must be at least 1 (0 checks no attention)".into(),
        )),
        (Some(heads), chunks) => Ok(Some(veritrace_protocol::AttentionSample {
            heads,
            chunks: chunks.unwrap_or(1),
        })),
    }
}

/// Refuses an attention sample for a statement that does not commit by head.
pub(crate) fn check_attention_level(
    statement: &Statement,
    sample: Option<veritrace_protocol::AttentionSample>,
) -> Result<(), VerbInputError> {
    if sample.is_some() && statement.trace_level.heads().is_none() {
        return Err(VerbInputError::Argument(
            "--attention-heads draws heads per cell, and the commitment's statement does not \
             commit its sub-layer values by head (prove with --trace-level sublayer-by-head)"
                .into(),
        ));
    }
    Ok(())
}

/// Runs `veritrace challenge`: draws the cells after (and independently of) the commitment.
///
/// # Errors
/// Refused files or arguments exit 2.
pub fn challenge(args: &ChallengeArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let limits = crate::verify::parse_limits(args.limits.as_deref())?;
    let commitment: Commitment = read_message_limited(&args.commitment, limits.max_message_bytes)?;
    commitment.validate()?;
    limits.check_statement(&commitment.statement)?;
    limits.check_samples(args.samples.into())?;
    let strategy = parse_strategy(&args.strategy)?;
    let seed = match &args.seed {
        Some(hex_seed) => {
            let bytes = hex::decode(hex_seed)
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| {
                    VerbInputError::Argument("--seed must be 64 hex digits (32 bytes)".into())
                })?;
            let mut s = [0u8; 32];
            s.copy_from_slice(&bytes);
            s
        }
        None => {
            let mut s = [0u8; 32];
            OsRng.fill_bytes(&mut s);
            s
        }
    };
    if args.samples == 0 {
        return Err(VerbInputError::Argument("--samples must be at least 1".into()).into());
    }
    let sample = attention_sample(args.attention_heads, args.context_chunks)?;
    check_attention_level(&commitment.statement, sample)?;
    files::refuse_same_file(&args.out, &[&args.commitment])?;
    let cells = sample_cells(&commitment.statement, args.samples, strategy, seed)?;
    // the draw's seed: fresh, or with --seed its ChaCha20 stream 1 (the cells use stream 0)
    let attention = sample.map(|a| {
        let mut draw_seed = [0u8; 32];
        match &args.seed {
            Some(_) => {
                use rand_core::SeedableRng;
                let mut rng = rand_chacha::ChaCha20Rng::from_seed(seed);
                rng.set_stream(1);
                rng.fill_bytes(&mut draw_seed);
            }
            None => OsRng.fill_bytes(&mut draw_seed),
        }
        a.with_seed(draw_seed)
    });
    let c = Challenge {
        round: args.round,
        cells,
        attention,
    };
    write_message_as(&args.out, &c, args.format)?;
    writeln!(out, "challenged {} cells: {:?}", c.cells.len(), c.cells)?;
    if let Some(a) = &c.attention {
        writeln!(
            out,
            "attention draw: {} heads and {} earlier chunks per cell, seed {}",
            a.heads, a.chunks, a.seed
        )?;
    }
    Ok(())
}

/// Arguments of `veritrace open`.
#[derive(Debug, Args)]
pub struct OpenArgs {
    /// The prover's trace file (written by `veritrace prove`, statement in its metadata).
    pub trace: PathBuf,
    /// The verifier's challenge (interactive).
    #[arg(long, conflicts_with = "non_interactive")]
    pub challenge: Option<PathBuf>,
    /// Derive the challenges from the transcript (Fiat-Shamir) instead.
    #[arg(long)]
    pub non_interactive: bool,
    /// Non-interactive: cells per round.
    #[arg(long)]
    pub samples: Option<u32>,
    /// Non-interactive: sampling strategy.
    #[arg(long, default_value = "uniform")]
    pub strategy: String,
    /// Non-interactive: proof-of-work bits.
    #[arg(long, default_value_t = 0)]
    pub pow_bits: u8,
    /// Non-interactive: rounds.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Non-interactive: draw N query heads per challenged cell (as `challenge
    /// --attention-heads`; the draw comes from the transcript).
    #[arg(long, value_name = "N", requires = "non_interactive")]
    pub attention_heads: Option<u32>,
    /// Non-interactive, with --attention-heads: earlier context chunks per cell.
    #[arg(long, value_name = "M", requires = "attention_heads")]
    pub context_chunks: Option<u32>,
    /// Interactive: the opening file (`-`: standard output, written as it is encoded, for
    /// `veritrace verify --opening -`); non-interactive: a directory for `opening-<r>.vtpm`
    /// (`opening-<r>.json` with `--format json`).
    #[arg(long)]
    pub out: PathBuf,
    /// The openings' format: the binary envelope (cell bytes as they are) or JSON (hex, twice
    /// the size; for people). `verify` reads either.
    #[arg(long, value_enum, default_value = "binary")]
    pub format: MessageFormat,
    /// The trace's leaf digests (written by `prove` as `trace.leaves` beside the trace; that
    /// file is used by default where it exists): the tree is rebuilt from them and only the
    /// opened cells are read, each checked against its leaf.
    #[arg(long, conflicts_with = "rehash")]
    pub leaves: Option<PathBuf>,
    /// Hash every cell of the trace again instead of reading the leaf digests.
    #[arg(long)]
    pub rehash: bool,
}

/// The leaf-digest file `open` reads for `args`: `--leaves`, else `trace.leaves` beside a trace
/// named `trace.safetensors` (any `<stem>.safetensors` gives `<stem>.leaves`) where it exists;
/// none with `--rehash`.
fn leaves_file(args: &OpenArgs) -> Option<PathBuf> {
    if args.rehash {
        return None;
    }
    if let Some(p) = &args.leaves {
        return Some(p.clone());
    }
    let beside = args.trace.with_extension("leaves");
    beside.is_file().then_some(beside)
}

/// With the leaf digests (`leaves`: that file and the trace's path): checks every opened hidden cell's values finite and its
/// bytes hashing to its leaf (the trace and the leaf file disagree otherwise, and the opening
/// would fail at the verifier). Without: nothing to do, `map_trace` scanned every value and the
/// tree was built from the cells themselves.
fn check_opened<L: AsRef<[u8]> + Sync>(
    prover: &Prover<L>,
    opening: &veritrace_protocol::Opening,
    leaves: Option<(&Path, &Path)>,
) -> anyhow::Result<()> {
    let Some((path, trace)) = leaves else {
        return Ok(());
    };
    let st = prover.statement();
    let g = &st.geometry;
    for opened in &opening.cells {
        let (l, c) = (opened.cell.layer, opened.cell.chunk);
        if let Some(i) = opened
            .data
            .chunks_exact(4)
            .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
        {
            return Err(VerbInputError::File {
                path: trace.display().to_string(),
                reason: format!("cell (layer {l}, chunk {c}) holds a non-finite value at {i}"),
            }
            .into());
        }
        let leaf = g.hash_cell(&st.hasher, opened.cell, &opened.data)?;
        if prover.tree().leaf(g.cell_index(opened.cell)?) != Some(leaf) {
            return Err(VerbInputError::File {
                path: path.display().to_string(),
                reason: format!(
                    "the trace's cell (layer {l}, chunk {c}) does not hash to its leaf here: \
                     the trace and its leaf digests disagree (run `veritrace prove` again, or \
                     pass --rehash to hash the trace as it is)"
                ),
            }
            .into());
        }
    }
    Ok(())
}

/// Runs `veritrace open`.
///
/// # Errors
/// Refused files or arguments exit 2.
pub fn open(args: &OpenArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut inputs: Vec<&Path> = vec![&args.trace];
    if let Some(c) = &args.challenge {
        inputs.push(c);
    }
    let to_stdout = args.out.as_os_str() == "-";
    if to_stdout && args.non_interactive {
        return Err(VerbInputError::Argument(
            "--out - writes one interactive opening; --non-interactive writes a directory".into(),
        )
        .into());
    }
    if !to_stdout {
        files::refuse_same_file(&args.out, &inputs)?;
    }
    let params = match (&args.challenge, args.non_interactive) {
        (Some(_), false) => None,
        (None, true) => {
            let samples = args.samples.ok_or_else(|| {
                VerbInputError::Argument("--non-interactive needs --samples".into())
            })?;
            if args.rounds == 0 || args.rounds > 64 {
                return Err(VerbInputError::Argument("--rounds must be in 1..=64".into()).into());
            }
            Some(ChallengeParams {
                samples,
                strategy: parse_strategy(&args.strategy)?,
                pow_bits: args.pow_bits,
                attention: attention_sample(args.attention_heads, args.context_chunks)?,
            })
        }
        _ => {
            return Err(VerbInputError::Argument(
                "give either --challenge FILE or --non-interactive".into(),
            )
            .into())
        }
    };
    let leaves_path = leaves_file(args);
    // Mapped in place: the prover copies out only what it opens. With the leaf digests it
    // reads nothing else either (no value scan, no hashing of unopened cells).
    let (mapped, statement) = map_trace_with(&args.trace, leaves_path.is_none())?;
    let statement = statement.ok_or_else(|| VerbInputError::File {
        path: args.trace.display().to_string(),
        reason: "the trace file holds no statement (write it with `veritrace prove`)".into(),
    })?;
    if let Some(p) = &params {
        check_attention_level(&statement, p.attention)?;
    }
    let sublayers = veritrace_model::sublayer::read_sublayers(&args.trace, &statement)?
        .map(|(context, cell)| veritrace_model::sublayer::prover_parts(&statement, context, cell))
        .transpose()?;
    let leaves = match &leaves_path {
        None => None,
        Some(path) => Some((path.as_path(), read_leaves(path, &statement)?)),
    };
    // With the leaf digests and a hidden-state trace, the cells each opening reads are read
    // from the file into otherwise untouched anonymous memory (positioned reads, no mapping of
    // the trace's values), once the challenges are known: the prover's memory is then the bytes
    // it opens, held twice (read, and copied into the opening).
    let tree = leaves.as_ref().map(|(_, t)| t);
    // Where the leaf digests give the commitment without the trace (a hidden-state trace), the
    // cells the openings need are read into anonymous memory once the challenges are known;
    // otherwise one prover over the mapping is built (its trees hashed) once.
    enum Source<'a> {
        Mapped(Box<Prover<&'a [u8]>>),
        Read(&'a veritrace_commit::MerkleTree),
    }
    let mut read_layers = Vec::new();
    let mut source = match (tree, &sublayers) {
        (Some(tree), None) => {
            read_layers = anonymous_layers(&statement)?;
            Source::Read(tree)
        }
        _ => Source::Mapped(Box::new(prover_over(
            &statement,
            mapped.layers(),
            tree,
            &sublayers,
        )?)),
    };
    let commitment = match &mut source {
        Source::Mapped(prover) => prover.commit()?,
        Source::Read(tree) => Commitment {
            statement: statement.clone(),
            root: tree.root(),
            sublayer_roots: None,
        },
    };
    // (round, challenge, proof-of-work nonce) of each opening
    let rounds: Vec<(u32, Challenge, u64)> = match (&args.challenge, &params) {
        (Some(path), _) => {
            let c: Challenge = read_message(path)?;
            c.validate()?;
            check_attention_level(
                &statement,
                c.attention.map(|a| veritrace_protocol::AttentionSample {
                    heads: a.heads,
                    chunks: a.chunks,
                }),
            )?;
            vec![(c.round, c, 0)]
        }
        (None, Some(params)) => {
            let nonce = find_pow_nonce(&commitment, params)?;
            (0..args.rounds)
                .map(|r| Ok((r, derive_challenge(&commitment, r, params, nonce)?, nonce)))
                .collect::<anyhow::Result<_>>()?
        }
        (None, None) => {
            return Err(VerbInputError::Argument(
                "give either --challenge FILE or --non-interactive".into(),
            )
            .into())
        }
    };
    let prover = match source {
        Source::Mapped(prover) => *prover,
        Source::Read(tree) => {
            read_opened_cells(&args.trace, &mapped, &statement, &rounds, &mut read_layers)?;
            let layers = read_layers.iter().map(|m| &m[..]).collect();
            prover_over(&statement, layers, Some(tree), &sublayers)?
        }
    };
    let leaves_check = leaves.as_ref().map(|(p, _)| (*p, args.trace.as_path()));
    if params.is_none() {
        let (round, c, nonce) = &rounds[0];
        let opening = prover.open_drawn(*round, &c.cells, c.attention.as_ref(), *nonce)?;
        check_opened(&prover, &opening, leaves_check)?;
        if to_stdout {
            // the opening is the output: no line about it
            let mut w = std::io::BufWriter::with_capacity(1 << 16, out);
            args.format.write_to(&opening, &mut w)?;
            w.flush()?;
            return Ok(());
        }
        write_message_as(&args.out, &opening, args.format)?;
        writeln!(
            out,
            "opened {} cells for round {round}",
            opening.cells.len()
        )?;
        return Ok(());
    }
    // Every round's opening appears together, replacing a previous set (and nothing else: a
    // directory holding other files is refused).
    let set = OutputDir::stage(&args.out, &opening_file)?;
    let mut lines = Vec::with_capacity(rounds.len());
    for (round, c, nonce) in &rounds {
        let opening = prover.open_drawn(*round, &c.cells, c.attention.as_ref(), *nonce)?;
        check_opened(&prover, &opening, leaves_check)?;
        set.write_with(
            &format!("opening-{round}.{}", args.format.extension()),
            |w| args.format.write_to(&opening, w),
        )?;
        lines.push(format!(
            "round {round}: {} cells challenged, nonce {nonce}",
            c.cells.len()
        ));
    }
    set.commit(&opening_file)?;
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// A prover of `statement` over `layers`: its tree rebuilt from the leaf digests where given,
/// else hashed from the layers; with the sub-layer traces where the statement has them.
fn prover_over<'a>(
    statement: &Statement,
    layers: Vec<&'a [u8]>,
    leaves: Option<&veritrace_commit::MerkleTree>,
    sublayers: &'a Option<
        Vec<(
            veritrace_protocol::SubLayerPart,
            veritrace_model::sublayer::LayerBytes,
        )>,
    >,
) -> anyhow::Result<Prover<&'a [u8]>> {
    let mut prover = match leaves {
        Some(tree) => Prover::with_leaves(statement.clone(), layers, tree.leaves().to_vec())?,
        None => Prover::new(statement.clone(), layers)?,
    };
    if let Some(parts) = sublayers {
        prover = prover.with_sublayer_parts(
            parts
                .iter()
                .map(|(part, layers)| (*part, layers.iter().map(Vec::as_slice).collect()))
                .collect(),
        )?;
    }
    Ok(prover)
}

/// The leaf-digest file at `path`, checked against the trace's statement (its hasher and
/// number of cells); its own root is checked by [`veritrace_commit::decode_leaves`].
fn read_leaves(path: &Path, statement: &Statement) -> anyhow::Result<veritrace_commit::MerkleTree> {
    // 32 bytes per cell, plus the header: a bound from the statement's own size
    let limit = 50 + 32 * statement.geometry.num_cells();
    let bytes = files::read_limited(
        path,
        limit,
        "a leaf-digest file",
        "pass --rehash to hash the trace instead",
    )?;
    let tree = veritrace_commit::decode_leaves(&bytes).map_err(|e| VerbInputError::File {
        path: path.display().to_string(),
        reason: format!("not a leaf-digest file of this trace: {e}"),
    })?;
    if tree.hasher() != statement.hasher || tree.size() != statement.geometry.num_cells() {
        return Err(VerbInputError::File {
            path: path.display().to_string(),
            reason: format!(
                "{} {} leaves, but the trace's statement commits {} cells with {} (run \
                 `veritrace prove` again, or pass --rehash)",
                tree.size(),
                tree.hasher().name(),
                statement.geometry.num_cells(),
                statement.hasher.name()
            ),
        }
        .into());
    }
    Ok(tree)
}

/// One zero-filled anonymous mapping per layer of `statement`'s trace: pages the kernel only
/// backs with memory once written, so the cells never read cost nothing.
fn anonymous_layers(statement: &Statement) -> anyhow::Result<Vec<memmap2::MmapMut>> {
    let len = statement.geometry.layer_byte_len();
    (0..statement.geometry.layers)
        .map(|_| memmap2::MmapMut::map_anon(len).map_err(anyhow::Error::from))
        .collect()
}

/// Reads every cell the openings of `rounds` hold (the challenged cells and their inputs) from
/// the trace file at `path` into `layers`, by positioned reads at the offsets of `mapped`'s
/// layers.
fn read_opened_cells(
    path: &Path,
    mapped: &veritrace_model::trace_file::TraceFile,
    statement: &Statement,
    rounds: &[(u32, Challenge, u64)],
    layers: &mut [memmap2::MmapMut],
) -> anyhow::Result<()> {
    let g = &statement.geometry;
    let mut cells = std::collections::BTreeSet::new();
    for (_, c, _) in rounds {
        let runs = statement.opening_ranges_drawn(&c.cells, c.attention.as_ref())?;
        cells.extend(runs.iter().flat_map(veritrace_protocol::CellRange::cells));
    }
    let (file, _) = files::open_regular(path)?;
    let io = |source| VerbInputError::File {
        path: path.display().to_string(),
        reason: format!("reading the opened cells: {source}"),
    };
    for cell in cells {
        let range = g.cell_byte_range(cell)?;
        let base = mapped
            .layer_offset(cell.layer)
            .ok_or_else(|| anyhow::anyhow!("layer {} is not in the trace", cell.layer))?;
        let at = (base + range.start) as u64;
        read_exact_at(&file, &mut layers[cell.layer as usize][range], at).map_err(io)?;
    }
    Ok(())
}

/// `buf.len()` bytes of `file` from offset `at` (positioned reads: the file's cursor is not
/// used).
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, at)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = file;
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(buf)
    }
}
