//! # veritrace-cli
//!
//! The logic behind the `veritrace` command line, one module per verb, so that the binary's
//! `main.rs` stays a thin clap front.
//!
//! * [`trace_file`]: loading and validating activation traces stored as safetensors (shared by
//!   every verb that reads a trace).
//! * [`commit`]: `veritrace commit`, which prints the Merkle root of a trace.
//! * [`soundness`]: `veritrace soundness`, the soundness calculator (miss probability, security
//!   bits against grinding, samples needed).
//!
//! Exit codes of the binary: 0 on success, [`EXIT_INPUT`] (2) when the input or the command line
//! was refused, [`EXIT_FAILURE`] (1) for any other failure (for example, stdout closed).

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod commit;
pub mod soundness;
pub mod trace_file;

/// Exit code when the command line or the input (a trace file, …) was refused.
pub const EXIT_INPUT: u8 = 2;

/// Exit code for failures that are not the input's fault.
pub const EXIT_FAILURE: u8 = 1;

/// The exit code an error of a verb should end the process with: [`EXIT_INPUT`] if the input
/// was refused (a trace file, a commitment-layer error, or a protocol error other than an
/// engine failure, such as an invalid parameter), [`EXIT_FAILURE`] otherwise.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    let protocol_input = error
        .downcast_ref::<veritrace_protocol::ProtocolError>()
        .is_some_and(|e| !matches!(e, veritrace_protocol::ProtocolError::Engine(_)));
    if protocol_input
        || error.downcast_ref::<trace_file::TraceFileError>().is_some()
        || error
            .downcast_ref::<veritrace_commit::CommitError>()
            .is_some()
    {
        EXIT_INPUT
    } else {
        EXIT_FAILURE
    }
}
