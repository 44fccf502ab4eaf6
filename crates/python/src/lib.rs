//! The `veritrace` Python package's native module (`veritrace._veritrace`, built with maturin as
//! an abi3 wheel). It exposes one function, `run`: a `veritrace` command line run in-process
//! through the same parser and verbs as the binary ([`veritrace_cli::app`]), returning the exit
//! code, standard output and error message. The Python layer (`python/veritrace/`) builds the
//! command lines, reads the JSON results, and adds what only Python can do: capturing a
//! transformers model's hidden states with forward hooks. The crates stay the logic.

use pyo3::prelude::*;

/// Runs the `veritrace` command line `args` (without the program name) in this process,
/// releasing the GIL while it runs. Returns `(exit_code, stdout, error)`: 0 on success, 1 for a
/// failure or a rejecting verdict, 2 when the input was refused; `error` is the message the
/// binary would print after `error: `.
#[pyfunction]
fn run(py: Python<'_>, args: Vec<String>) -> (u8, String, String) {
    let argv: Vec<String> = std::iter::once("veritrace".to_string())
        .chain(args)
        .collect();
    py.detach(|| veritrace_cli::app::run_command_line(&argv))
}

/// The version of the crates this module was built from.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The native module.
#[pymodule]
fn _veritrace(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    Ok(())
}
