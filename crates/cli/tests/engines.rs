//! veritrace against Hugging Face transformers itself: `tests/engines/transformers_checkpoints.py`
//! builds small checkpoints with transformers' `save_pretrained` (Llama with `rope_parameters`,
//! Llama-3 rope scaling, tied embeddings; Qwen2, Mistral with a window, a yarn rope and an unknown
//! field to be refused) and compares `veritrace prove`'s trace and greedy tokens with
//! transformers' own forward and `generate`, and `veritrace digest` with the Python reference.
//!
//! Needs the engines of `scripts/install-engines.sh` (a virtual environment at target/engines,
//! or the Python named by `VERITRACE_ENGINES_PYTHON`); skips with a message when they are absent,
//! and fails instead when `VERITRACE_REQUIRE_ENGINES=1` (CI installs them).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn checkpoints_match_transformers_or_are_refused() {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let python = std::env::var_os("VERITRACE_ENGINES_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/engines/bin/python"));
    let required = std::env::var("VERITRACE_REQUIRE_ENGINES").is_ok_and(|v| v == "1");
    if !python.is_file() {
        assert!(
            !required,
            "VERITRACE_REQUIRE_ENGINES=1 but {} is missing: run scripts/install-engines.sh",
            python.display()
        );
        eprintln!(
            "skipping: no PyTorch/transformers environment at {} (run scripts/install-engines.sh)",
            python.display()
        );
        return;
    }
    let out = Command::new(&python)
        .arg(root.join("tests/engines/transformers_checkpoints.py"))
        .arg(env!("CARGO_BIN_EXE_veritrace"))
        .env("RAYON_NUM_THREADS", "2")
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .output()
        .expect("runs the engines' Python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    if out.status.code() == Some(2) && !required {
        eprintln!("skipping: the engines' Python cannot run the comparison: {stderr}");
        return;
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("transformers_checkpoints: 0 failed"),
        "{stdout}"
    );
}
