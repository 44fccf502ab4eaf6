//! # veritrace
//!
//! Check an inference you did not run. A prover commits to Merkle roots of the activation traces
//! its inference produced; a verifier samples cells of the trace, the prover opens them, and the
//! verifier recomputes those cells under the claimed numeric setup.
//!
//! This facade re-exports the workspace's crates:
//! * [`commit`]: cell encoding, hashers, Merkle trees and proofs (`veritrace-commit`).
//! * [`protocol`]: statement, messages, transcript, prover and verifier (`veritrace-protocol`).

#![deny(missing_docs)]

pub use veritrace_commit as commit;
pub use veritrace_protocol as protocol;
