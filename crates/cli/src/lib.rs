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

/// The exit code an error of a verb should end the process with: [`EXIT_INPUT`] if the input
/// was refused (a trace file, a commitment-layer error, a protocol error other than an engine
/// failure such as an invalid parameter, a model argument, a setups file or study plan),
/// [`EXIT_FAILURE`] otherwise.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    use veritrace_model::{FingerprintError, ModelError};
    let protocol_input = error
        .downcast_ref::<veritrace_protocol::ProtocolError>()
        .is_some_and(|e| !matches!(e, veritrace_protocol::ProtocolError::Engine(_)));
    let model_input = |e: &ModelError| !matches!(e, ModelError::Candle(_) | ModelError::Cuda(_));
    let study_input = error
        .downcast_ref::<FingerprintError>()
        .is_some_and(|e| match e {
            FingerprintError::EngineOutput { .. } => false,
            FingerprintError::Model(m) => model_input(m),
            _ => true,
        });
    let engine_input = error
        .downcast_ref::<engine::EngineLoadError>()
        .is_some_and(|e| match e {
            engine::EngineLoadError::Model { error, .. } => model_input(error),
            _ => true,
        });
    let sim_input = error
        .downcast_ref::<veritrace_sim::SimError>()
        .is_some_and(|e| match e {
            veritrace_sim::SimError::Scenario(_) | veritrace_sim::SimError::Io { .. } => true,
            veritrace_sim::SimError::Model(m) => model_input(m),
            _ => false,
        });
    if error.downcast_ref::<verify::Rejected>().is_some() {
        return EXIT_FAILURE;
    }
    let model_error_input = error.downcast_ref::<ModelError>().is_some_and(model_input);
    if protocol_input
        || model_error_input
        || error.downcast_ref::<prove::VerbInputError>().is_some()
        || sim_input
        || study_input
        || engine_input
        || error.downcast_ref::<trace_file::TraceFileError>().is_some()
        || error
            .downcast_ref::<fingerprint::FingerprintInputError>()
            .is_some()
        || error.downcast_ref::<report::ReportInputError>().is_some()
        || error
            .downcast_ref::<veritrace_commit::CommitError>()
            .is_some()
    {
        EXIT_INPUT
    } else {
        EXIT_FAILURE
    }
}

/// Writes `text` to `path` atomically: into a fresh temporary file beside it (a unique name, so
/// no file of the user's is touched), flushed, then renamed over `path`. An interrupted write
/// leaves the old file intact.
///
/// # Errors
/// The directory cannot be written, or the rename fails.
pub fn write_file_atomic(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".veritrace-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    // A temporary file is created private (0600); the result is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
