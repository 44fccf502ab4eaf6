//! `veritrace fingerprint`: which numeric-setup changes a recomputing verifier can see — the
//! reference post's table of invariant / identical-hardware / cross-hardware changes, measured
//! on a model (a front for [`veritrace_model::fingerprint`]).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use thiserror::Error;
use veritrace_model::fingerprint::{
    parse_setups, DEFAULT_CHUNK, DEFAULT_PROMPTS, DEFAULT_THRESHOLD, DEFAULT_TOKENS,
};
use veritrace_model::{run_study, Device, Engine, OnDevice, Runner, StudyPlan, StudyReport};

use crate::engine::load_engine;

/// Extra `--help` text of `veritrace fingerprint`.
pub const AFTER_HELP: &str = "\
Each of --prompts seeded prompts of --tokens tokens is traced under the reference and every
setup, in row tiles of --chunk rows. The noise floor of a layer is the largest relative L2
distance ||a - b|| / ||b|| from the reference of any honest variant (a setup that differs from the
reference only in reduction order: splitk, batch, order=decode, the stand-in for other
hardware). SNR = mean relative L2 distance from the reference / noise floor. Classes:
invariant (bitwise identical on every prompt), identical-hardware (differs, max SNR below
--threshold), cross-hardware (max SNR at or above --threshold).

Setups file: one canonical setup string per line (e.g. bf16/attn=tiled:64/quant=int8-channel),
'#' comments, blank lines ignored; the first setup is the reference. Without --setups the
default plan is used (simulations/setups/default.txt holds it for the tiny model), less the
setups the model refuses (an encoder such as minilm has no order=decode); a setups file with
such a setup is refused. Prompts of an encoder with BERT's vocabulary are [CLS] ... [SEP]
around seeded ordinary WordPieces.

Exit status: 0 on success, 2 when the command line, the model or the setups are refused,
1 otherwise.";

/// Arguments of `veritrace fingerprint`.
#[derive(Debug, Clone, Args)]
pub struct FingerprintArgs {
    /// Model: a built-in Llama-style preset (tiny, small), minilm (the installed
    /// all-MiniLM-L6-v2 encoder), or a checkpoint directory (Llama-style or BERT).
    #[arg(long, value_name = "tiny|small|minilm|PATH", default_value = "tiny")]
    pub model: String,

    /// Setups file (the first setup is the reference); default: the built-in default plan.
    #[arg(long, value_name = "FILE")]
    pub setups: Option<PathBuf>,

    /// Number of prompts.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PROMPTS)]
    pub prompts: usize,

    /// A prompt as text (repeat for several), tokenized with the checkpoint's tokenizer.json
    /// instead of the seeded prompts: the study runs over these texts, --prompts and --tokens
    /// then follow from them.
    #[arg(long, value_name = "TEXT")]
    pub text: Vec<String>,

    /// With --text: wrap each text as one user message in the checkpoint's chat template.
    #[arg(long, requires = "text")]
    pub chat: bool,

    /// Tokens per prompt.
    #[arg(long, value_name = "T", default_value_t = DEFAULT_TOKENS)]
    pub tokens: usize,

    /// Row tile (chunk) size of every trace.
    #[arg(long, value_name = "C", default_value_t = DEFAULT_CHUNK)]
    pub chunk: usize,

    /// SNR at or above which a change counts as detectable across hardware.
    #[arg(long, value_name = "X", default_value_t = DEFAULT_THRESHOLD,
          allow_negative_numbers = true)]
    pub threshold: f64,

    /// Print the report as one JSON object instead of markdown.
    #[arg(long)]
    pub json: bool,

    /// Also write fingerprint.md and fingerprint.json into this directory (created if needed).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
    /// Device every setup of the study runs on: `cpu`, or `cuda`/`cuda:N` (a build with
    /// `--features cuda`). On a GPU the study measures that GPU's own honest noise floor
    /// (split-K, batch) and how far each swapped kernel stands out of it; setups the GPU
    /// kernels do not implement (top-k, decode order) are left out of the default plan.
    #[arg(long, value_name = "cpu|cuda[:N]", default_value = "cpu")]
    pub device: Device,
}

/// Input refused by `veritrace fingerprint` before the study runs (the binary exits 2).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FingerprintInputError {
    /// The setups file could not be read.
    #[error("setups file {path}: {source}")]
    ReadSetups {
        /// The file.
        path: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

/// The plan the arguments describe, for `engine`.
///
/// # Errors
/// [`FingerprintInputError`] if the setups file cannot be read, a
/// [`veritrace_model::FingerprintError`] if it or a parameter is refused.
pub fn plan_from_args(args: &FingerprintArgs, engine: &dyn Engine) -> anyhow::Result<StudyPlan> {
    let inputs = text_inputs(args, engine)?;
    let tokens = inputs.iter().map(Vec::len).max().unwrap_or(args.tokens);
    let mut plan = match &args.setups {
        Some(path) => {
            let text = veritrace_model::files::read_text(path, "a setups file").map_err(|e| {
                FingerprintInputError::ReadSetups {
                    path: path.display().to_string(),
                    source: e.into_io(),
                }
            })?;
            let (reference, setups) =
                parse_setups(&text).with_context(|| path.display().to_string())?;
            StudyPlan {
                reference,
                setups,
                ..StudyPlan::default_with_tokens(engine, tokens)
            }
        }
        None => StudyPlan::default_with_tokens(engine, tokens),
    };
    plan.prompts = if inputs.is_empty() {
        args.prompts
    } else {
        inputs.len()
    };
    plan.inputs = inputs;
    plan.chunk = args.chunk;
    plan.threshold = args.threshold;
    plan.validate()?;
    Ok(plan)
}

/// The token ids of `--text` (with the chat template under `--chat`), through the model's
/// tokenizer; empty without `--text`. A model without a tokenizer, or a text it cannot encode,
/// is refused (exit 2).
fn text_inputs(args: &FingerprintArgs, engine: &dyn Engine) -> anyhow::Result<Vec<Vec<u32>>> {
    if args.text.is_empty() {
        return Ok(Vec::new());
    }
    let tokenizer = engine.tokenizer().ok_or_else(|| {
        crate::prove::VerbInputError::Argument(format!(
            "--text: model {:?} has no tokenizer.json",
            args.model
        ))
    })?;
    Ok(args
        .text
        .iter()
        .map(|t| tokenizer.encode(t, args.chat))
        .collect::<Result<Vec<_>, _>>()?)
}

/// A progress bar of `total` traces on stderr, hidden when `quiet` or stderr is not a terminal.
fn progress_bar(total: usize, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "fingerprint [{elapsed_precise}] {wide_bar} {pos}/{len} traces (eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// The files `fingerprint --out DIR` writes (a later study replaces exactly these).
pub fn study_file(name: &str) -> bool {
    matches!(name, "fingerprint.md" | "fingerprint.json")
}

/// Writes `fingerprint.md` and `fingerprint.json` into `dir`, as one set
/// ([`veritrace_model::files::OutputDir`]).
pub fn write_outputs(dir: &Path, report: &StudyReport) -> anyhow::Result<()> {
    let set = veritrace_model::files::OutputDir::stage(dir, &study_file)?;
    set.write("fingerprint.md", report.to_markdown().as_bytes())?;
    let mut text = serde_json::to_string_pretty(report)?;
    text.push('\n');
    set.write("fingerprint.json", text.as_bytes())?;
    set.commit(&study_file)?;
    Ok(())
}

/// Runs `veritrace fingerprint`, writing the report (markdown, or JSON with `--json`) to `out`.
///
/// # Errors
/// Input errors ([`crate::engine::EngineLoadError`], [`FingerprintInputError`],
/// [`veritrace_model::FingerprintError`] other than an engine failure) make the binary exit 2;
/// anything else (an engine failure, an unwritable output) exits 1.
pub fn run(args: &FingerprintArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let model = load_engine(&args.model)?;
    let runner = Runner::new(args.device)?;
    let on_device = OnDevice {
        engine: model.as_ref(),
        runner: &runner,
    };
    let engine: &dyn Engine = if args.device == Device::Cpu {
        model.as_ref()
    } else {
        &on_device
    };
    let plan = plan_from_args(args, engine)?;
    let bar = progress_bar(plan.prompts * (plan.setups.len() + 1), args.quiet);
    let report = run_study(engine, &plan, |done, _| bar.set_position(done as u64));
    bar.finish_and_clear();
    let report = report?;
    if let Some(dir) = &args.out {
        write_outputs(dir, &report)?;
    }
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        write!(out, "{}", report.to_markdown())?;
    }
    out.flush()?;
    Ok(())
}
