//! `veritrace digest`: the engine-independent model digest (`specs/model-digest.md`) of a
//! preset or a checkpoint directory, the value a statement's `model_digest` must hold. Another
//! party computes the same value from the checkpoint files alone
//! (`specs/reference/model_digest_ref.py`).

use std::io::Write;

use clap::Args;

use crate::engine::load_model;

/// Arguments of `veritrace digest`.
#[derive(Debug, Args)]
pub struct DigestArgs {
    /// The models: presets (tiny, small), minilm, or checkpoint directories.
    #[arg(required = true)]
    pub models: Vec<String>,
}

/// Prints one line per model, `<64 hex digits>  <model>`, as `b3sum` does.
///
/// # Errors
/// A model that fails to load (exit 2 when the checkpoint or the name is refused).
pub fn run(args: &DigestArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    for spec in &args.models {
        let model = load_model(spec)?;
        writeln!(out, "{}  {spec}", model.digest())?;
    }
    out.flush()?;
    Ok(())
}
