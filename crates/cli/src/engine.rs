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
    /// The argument names a path that holds no checkpoint a loader reads.
    #[error(
        "model {spec:?}: not a checkpoint directory (expected config.json with \
         model.safetensors or model.safetensors.index.json: a Llama-style checkpoint)"
    )]
    PathNotSupported {
        /// The argument.
        spec: String,
    },
    /// The argument is neither a preset nor a path.
    #[error(
        "unknown model {spec:?}: give a built-in seeded Llama-style preset (tiny, small) or a \
         Llama-style checkpoint directory"
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

/// The decoder a `--model` argument names: a preset of [`PRESETS`] (seeded weights) or a
/// Llama-style checkpoint directory ([`LlamaModel::load`]).
///
/// # Errors
/// [`EngineLoadError`]: an unknown name, a path that is not a checkpoint directory, or a
/// model that fails to load.
pub fn load_llama(spec: &str) -> Result<LlamaModel, EngineLoadError> {
    let model_err = |source| EngineLoadError::Model {
        spec: spec.to_string(),
        source,
    };
    if PRESETS.contains(&spec) {
        return ModelConfig::preset(spec)
            .and_then(LlamaModel::new)
            .map_err(model_err);
    }
    let path = Path::new(spec);
    if !looks_like_path(spec) {
        return Err(EngineLoadError::Unknown {
            spec: spec.to_string(),
        });
    }
    if !path.join("config.json").is_file() {
        return Err(EngineLoadError::PathNotSupported {
            spec: spec.to_string(),
        });
    }
    LlamaModel::load(path).map_err(model_err)
}

/// The engine a `--model` argument names (see [`load_llama`]).
///
/// # Errors
/// As [`load_llama`].
pub fn load_engine(spec: &str) -> Result<Box<dyn Engine>, EngineLoadError> {
    Ok(Box::new(load_llama(spec)?))
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
        // A saved checkpoint directory loads, with the preset's digest.
        let dir = tempfile::tempdir().unwrap();
        let preset = LlamaModel::preset("tiny").unwrap();
        preset.save(dir.path()).unwrap();
        let loaded = load_llama(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(loaded.digest(), preset.digest());
        // A directory whose config.json is not a Llama config is a model error.
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        assert!(matches!(
            load_llama(dir.path().to_str().unwrap()),
            Err(EngineLoadError::Model { .. })
        ));
    }
}
