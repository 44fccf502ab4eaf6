//! Turning a `--model` argument into an [`Engine`]: [`load_engine`] is the one place every verb
//! that runs a model goes through, and the one place to extend when a new loader exists.

use std::path::Path;

use thiserror::Error;
use veritrace_model::{Engine, LlamaModel, ModelConfig, ModelError};

/// The built-in presets [`load_engine`] accepts by name.
pub const PRESETS: [&str; 2] = ["tiny", "small"];

/// Every way [`load_engine`] refuses a model argument.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EngineLoadError {
    /// The argument names a path, and no loader reads models from paths yet.
    #[error(
        "model {spec:?}: loading a model from a path is not supported yet; the loaders that \
         exist are the built-in seeded Llama-style presets: tiny, small"
    )]
    PathNotSupported {
        /// The argument.
        spec: String,
    },
    /// The argument is neither a preset nor a path.
    #[error(
        "unknown model {spec:?}: the loaders that exist are the built-in seeded Llama-style \
         presets: tiny, small (loading from a path is not supported yet)"
    )]
    Unknown {
        /// The argument.
        spec: String,
    },
    /// A loader accepted the argument but failed to build the model.
    #[error("model {spec:?}: {source}")]
    Model {
        /// The argument.
        spec: String,
        /// What the model crate said.
        #[source]
        source: ModelError,
    },
}

/// Whether `spec` reads as a filesystem path rather than a preset name.
fn looks_like_path(spec: &str) -> bool {
    spec.contains(['/', '\\']) || spec.starts_with('.') || Path::new(spec).exists()
}

/// The engine a `--model` argument names: a preset of [`PRESETS`] (the seeded
/// [`LlamaModel`]). Paths are refused until a loader for them exists.
///
/// # Errors
/// [`EngineLoadError`]: a path, an unknown name, or a model that fails to build.
pub fn load_engine(spec: &str) -> Result<Box<dyn Engine>, EngineLoadError> {
    if PRESETS.contains(&spec) {
        let model = ModelConfig::preset(spec)
            .and_then(LlamaModel::new)
            .map_err(|source| EngineLoadError::Model {
                spec: spec.to_string(),
                source,
            })?;
        return Ok(Box::new(model));
    }
    let spec = spec.to_string();
    if looks_like_path(&spec) {
        Err(EngineLoadError::PathNotSupported { spec })
    } else {
        Err(EngineLoadError::Unknown { spec })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_load_and_other_names_are_refused() {
        let tiny = load_engine("tiny").unwrap();
        assert_eq!(tiny.num_layers(), 4);
        assert!(matches!(
            load_engine("huge"),
            Err(EngineLoadError::Unknown { .. })
        ));
        for path in ["./model", "models/llama", "/"] {
            assert!(matches!(
                load_engine(path),
                Err(EngineLoadError::PathNotSupported { .. })
            ));
        }
    }
}
