//! The `veritrace` command line as a library: [`Cli`] (the verbs and their arguments) and
//! [`dispatch`], which runs one parsed command writing its standard output to any writer. The
//! binary (`src/main.rs`) and the Python package (`crates/python`) are both thin fronts on it.

use std::io::Write;

use crate::calibrate::{self, CalibrateArgs};
use crate::commit::{self, CommitArgs};
use crate::devices::{self, DevicesArgs};
use crate::digest::{self, DigestArgs};
use crate::fingerprint::{self, FingerprintArgs};
use crate::import::{self, ImportArgs};
use crate::keygen::{self, KeygenArgs};
use crate::prove::{self, ChallengeArgs, OpenArgs, ProveArgs};
use crate::report::{self, ReportArgs};
use crate::simulate::{self, SimulateArgs};
use crate::soundness::{self, SoundnessArgs};
use crate::sweep::{self, MergeArgs, SweepArgs};
use crate::verify::{self, VerifyArgs};
use clap::{Parser, Subcommand};

/// The help text every verb ends with: the trace format and the exit codes.
pub const AFTER_HELP: &str = "\
Trace files are safetensors files holding one tensor per hidden state, named h.0 (embeddings),
h.1, ..., h.L, each of shape [tokens, hidden]; all of one dtype (F32, F16, BF16 or I8) and one
shape. Tensors whose names do not start with \"h.\" are ignored. Elements are committed exactly as
stored (little-endian), never converted.

Exit status: 0 on success, 2 when the command line or the input is refused, 1 otherwise.";

/// Commit to activation traces of an inference so a verifier can sample and recompute cells.
#[derive(Debug, Parser)]
#[command(name = "veritrace", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Simulate adversarial provers end to end against the real verifier (the main job).
    ///
    /// Runs a scenario (TOML; without one, the embedded default on the built-in tiny decoder):
    /// honest and cheating provers run real inference, commit, are challenged and open; the
    /// verifier recomputes under the claimed setup and decides. Prints per adversary the
    /// detection rate with a 95% Wilson interval beside the hypergeometric prediction, the
    /// compute saving, the verifier's cost and the security against grinding.
    #[command(after_help = simulate::AFTER_HELP)]
    Simulate(SimulateArgs),
    /// Sweep a scenario over a grid of k, chunk size, cheat fraction and tolerance; --shard i/n
    /// runs one shard of an array job.
    #[command(after_help = sweep::AFTER_HELP)]
    Sweep(SweepArgs),
    /// Merge the shard outputs of `veritrace sweep` into the result of one full run.
    Merge(MergeArgs),
    /// Prover: run a model on a prompt under a setup; write the trace (with its statement) and
    /// the commitment.
    Prove(ProveArgs),
    /// Verifier: draw a challenge (random cells) for a commitment.
    Challenge(ChallengeArgs),
    /// Prover: open the challenged cells of a trace (or, non-interactive, derive the challenges
    /// from the transcript and open them).
    Open(OpenArgs),
    /// Verifier: check openings against a commitment by recomputing the cells (exit 0 accept,
    /// 1 reject with the reason, 2 bad input).
    Verify(VerifyArgs),
    /// Calibrate per-layer tolerance thresholds from independent honest runs (generated under
    /// honest variations of the claimed setup, or trace files), for a target session
    /// false-positive rate and k; writes a policy file `verify --tolerance` reads.
    #[command(after_help = calibrate::AFTER_HELP)]
    Calibrate(CalibrateArgs),
    /// Print the Merkle root of an activation trace stored as safetensors.
    ///
    /// Each layer h.l is cut into cells of --chunk token rows; cell (l, j) is leaf
    /// l * ceil(tokens / chunk) + j of an RFC 6962-shaped Merkle tree whose leaves bind the cell's
    /// position, dtype, shape and raw little-endian bytes.
    #[command(after_help = AFTER_HELP)]
    Commit(CommitArgs),
    /// Soundness calculator: miss probability and security bits of sampling K of N cells when B
    /// are bad (--bad, --samples), or the samples needed for L bits (--cheat-fraction, --bits).
    ///
    /// Sampling is without replacement (exact hypergeometric). Security is reported interactive
    /// and non-interactive against a grinding budget of 2^G transcript hash evaluations
    /// (--grind-bits), with an optional proof-of-work per attempt (--pow-bits).
    #[command(after_help = soundness::AFTER_HELP)]
    Soundness(SoundnessArgs),
    /// Fingerprint study: which numeric-setup changes (precision, attention, quantization,
    /// skipped layers, ...) stand out of honest reduction-order noise, and which are invariant.
    ///
    /// Prints a markdown table classifying each setup against the reference as invariant,
    /// identical-hardware (detectable only by bitwise re-execution) or cross-hardware (SNR at or
    /// above --threshold against the honest noise floor), then the per-layer SNR matrix.
    #[command(after_help = fingerprint::AFTER_HELP)]
    Fingerprint(FingerprintArgs),
    /// Plot results: detection vs k (sweeps), ROC curves per layer and detection vs compute
    /// saving (simulation reports), per-layer SNR heatmaps (fingerprint studies); SVG and PNG.
    #[command(after_help = report::AFTER_HELP)]
    Report(ReportArgs),
    /// List the devices models can run on (`--device` values): the CPU, and the GPUs of a
    /// build with `--features cuda`, or why there is none.
    Devices(DevicesArgs),
    /// Print the engine-independent model digest (specs/model-digest.md) of presets or
    /// checkpoint directories: the value a statement's model_digest holds, which
    /// specs/reference/model_digest_ref.py computes from the files alone.
    Digest(DigestArgs),
    /// Turn hidden states saved by another engine (transformers' output_hidden_states, as
    /// safetensors or a torch.save dict) into a trace file for `commit --model`: the layers are
    /// checked against the model, and a decoder's post-norm last entry is refused unless its
    /// pre-norm input (`pre_norm`) is given.
    Import(ImportArgs),
    /// Verifier: build a Freivalds verifier key for a decoder (secret random vectors r and
    /// v = r^T W per linear weight; specs/freivalds.md) from a 32-byte secret file, or a new
    /// secret drawn from the OS; prints the key's size and build time. Keep both secret.
    Keygen(KeygenArgs),
}

/// Runs `command`, writing its standard output to `out`.
///
/// # Errors
/// The verb's error; [`crate::exit_code`] maps it to the process exit code.
pub fn dispatch(command: &Command, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut out = out;
    match command {
        Command::Simulate(args) => simulate::run(args, &mut out),
        Command::Sweep(args) => sweep::run(args, &mut out),
        Command::Merge(args) => sweep::merge(args, &mut out),
        Command::Prove(args) => prove::prove(args, &mut out),
        Command::Challenge(args) => prove::challenge(args, &mut out),
        Command::Open(args) => prove::open(args, &mut out),
        Command::Verify(args) => verify::run(args, &mut out),
        Command::Calibrate(args) => calibrate::run(args, &mut out),
        Command::Commit(args) => commit::run(args, &mut out),
        Command::Soundness(args) => soundness::run(args, &mut out),
        Command::Fingerprint(args) => fingerprint::run(args, &mut out),
        Command::Report(args) => report::run(args, &mut out),
        Command::Devices(args) => devices::run(args, &mut out),
        Command::Digest(args) => digest::run(args, &mut out),
        Command::Import(args) => import::run(args, &mut out),
        Command::Keygen(args) => keygen::run(args, &mut out),
    }
}

/// Runs the command line `argv` (`argv[0]` is the program name) as the binary does, with its
/// standard output captured: returns the exit code, the output, and the error message (empty
/// on success). `--help` and `--version` succeed with their text as output.
pub fn run_command_line(argv: &[String]) -> (u8, String, String) {
    use clap::Parser;
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let text = e.render().to_string();
            return if e.use_stderr() {
                (crate::EXIT_INPUT, String::new(), text)
            } else {
                (0, text, String::new())
            };
        }
    };
    let mut out = Vec::new();
    let result = dispatch(&cli.command, &mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    match result {
        Ok(()) => (0, out, String::new()),
        Err(error) => (crate::exit_code(&error), out, format!("{error:#}")),
    }
}
