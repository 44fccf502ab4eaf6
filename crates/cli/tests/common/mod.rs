//! Helpers shared by the CLI's end-to-end tests: run the built `veritrace` binary and capture
//! its exit status and output, failing the test if it panicked.

use std::process::Command;

/// What one run of the binary produced.
pub struct Output {
    /// Exit status (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `veritrace ARGS`; asserts it did not panic.
pub fn veritrace(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_veritrace"))
        .args(args)
        .output()
        .unwrap();
    let o = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !o.stderr.contains("panicked"),
        "the binary panicked on {args:?}:\n{}",
        o.stderr
    );
    o
}
