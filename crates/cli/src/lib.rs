//! # veritrace-cli
//!
//! The logic behind the `veritrace` command line, one module per verb, so that the binary's
//! `main.rs` stays a thin clap front.
//!
//! * [`trace_file`]: loading and validating activation traces stored as safetensors (shared by
//!   every verb that reads a trace).
//! * [`calibrate`]: `veritrace calibrate`, thresholds from independent honest runs, written as a
//!   calibrated policy file.
//! * [`commit`]: `veritrace commit`, which prints the Merkle root of a trace.
//! * [`engine`]: [`engine::load_engine`], turning a `--model` argument into a model.
//! * [`fingerprint`]: `veritrace fingerprint`, the study of which setup changes a recomputing
//!   verifier can see (invariant / identical hardware / across hardware).
//! * [`simulate`]: `veritrace simulate`, adversarial provers end to end against the real
//!   verifier (the main job).
//! * [`sweep`]: `veritrace sweep` (grids over k, chunk, cheat fraction, tolerance; shards for
//!   array jobs) and `veritrace merge`.
//! * [`report`]: `veritrace report`, plots of results as SVG and PNG.
//! * [`devices`]: `veritrace devices`, the `--device` values this build and machine can run.
//! * [`prove`]: `veritrace prove`, `challenge` and `open`, the protocol over files; and
//!   [`verify`]: `veritrace verify` (exit 0 accept, 1 reject).
//! * [`keygen`]: `veritrace keygen`, a Freivalds verifier key for a decoder from a verifier
//!   secret (size and build time printed).
//! * [`soundness`]: `veritrace soundness`, the soundness calculator (miss probability, security
//!   bits against grinding, samples needed).
//!
//! Exit codes of the binary: 0 on success, [`EXIT_INPUT`] (2) when the input or the command line
//! was refused, [`EXIT_FAILURE`] (1) for any other failure (for example, stdout closed).

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod app;
pub mod calibrate;
pub mod commit;
pub mod devices;
pub mod digest;
pub mod engine;
pub mod fingerprint;
pub mod import;
pub mod keygen;
pub mod prove;
pub mod report;
pub mod simulate;
pub mod soundness;
pub mod sweep;
pub mod trace_file;
pub mod verify;

/// Exit code when the command line or the input (a trace file, …) was refused.
pub const EXIT_INPUT: u8 = 2;

/// Exit code for failures that are not the input's fault.
pub const EXIT_FAILURE: u8 = 1;

/// The exit code an error of a verb should end the process with, by one rule: 0 accept / ok
/// (no error), [`EXIT_FAILURE`] (1) for a rejection ([`verify::Rejected`]) or a failure of
/// veritrace's own side, [`EXIT_INPUT`] (2) when the input or the command line was refused.
/// Each crate's error type says which it is (`is_input()`); the errors of this crate's verbs
/// that are only ever about the input ([`prove::VerbInputError`], the trace, fingerprint and
/// report input errors) are always 2.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<verify::Rejected>().is_some() {
        return EXIT_FAILURE;
    }
    macro_rules! classify {
        ($($t:ty => $rule:expr),* $(,)?) => {
            $(
                if let Some(e) = error.downcast_ref::<$t>() {
                    let rule: fn(&$t) -> bool = $rule;
                    return if rule(e) { EXIT_INPUT } else { EXIT_FAILURE };
                }
            )*
        };
    }
    classify!(
        veritrace_protocol::ProtocolError => |e| e.is_input(),
        veritrace_commit::CommitError => |e| e.is_input(),
        veritrace_model::ModelError => |e| e.is_input(),
        veritrace_model::FingerprintError => |e| e.is_input(),
        veritrace_model::files::FileError => |e| e.is_input(),
        veritrace_model::freivalds::FreivaldsError => |e| e.is_input(),
        veritrace_sim::SimError => |e| e.is_input(),
        engine::EngineLoadError => |e| e.is_input(),
        prove::VerbInputError => |_| true,
        trace_file::TraceFileError => |_| true,
        fingerprint::FingerprintInputError => |_| true,
        report::ReportInputError => |_| true,
        keygen::KeygenInputError => |_| true,
    );
    EXIT_FAILURE
}
