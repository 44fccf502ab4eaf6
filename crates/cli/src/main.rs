//! `veritrace`: check an inference you did not run.
//!
//! A thin clap front; each verb's logic lives in a module of the `veritrace_cli` library.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use veritrace_cli::app::{dispatch, Cli};

fn main() -> ExitCode {
    // candle sizes each CPU matmul's parallelism from RAYON_NUM_THREADS and, when it is unset,
    // asks std::thread::available_parallelism on every product, which on Linux reads the
    // cgroup CPU quota files each time: 87,000 opens for 400 tiny-decoder runs, 3.6x slower on
    // two threads. Resolve it once, here, before any thread exists (rayon reads the same
    // variable, so its pool size is unchanged).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        if let Ok(n) = std::thread::available_parallelism() {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
    }
    let cli = Cli::parse();
    let result = dispatch(&cli.command, &mut std::io::stdout().lock());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Not eprintln!, which panics if stderr is closed.
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            ExitCode::from(veritrace_cli::exit_code(&error))
        }
    }
}
