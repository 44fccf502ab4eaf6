//! Turning a `--model` argument into an [`Engine`]: [`load_engine`] is the one place every verb
//! that runs a model goes through, and the one place to extend when a new loader exists.

use std::path::{Path, PathBuf};

use thiserror::Error;
use veritrace_model::{minilm_dir, BertModel, Engine, LlamaModel, ModelConfig, ModelError};
use veritrace_sim::SimModel;

/// The built-in presets [`load_engine`] accepts by name.
pub const PRESETS: [&str; 2] = ["tiny", "small"];

/// The name [`load_engine`] accepts for the installed all-MiniLM-L6-v2
/// ([`veritrace_model::minilm_dir`]).
pub const MINILM: &str = "minilm";

/// Every way [`load_engine`] refuses a model argument.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EngineLoadError {
    /// The argument names a path that holds no checkpoint a loader reads.
    #[error(
        "model {spec:?}: not a checkpoint directory (expected config.json with \
         model.safetensors or model.safetensors.index.json: a Llama-style checkpoint, or a BERT \
         one whose config.json says \"model_type\": \"bert\")"
    )]
    PathNotSupported {
        /// The argument.
        spec: String,
    },
    /// The argument is neither a preset, `minilm`, nor a path.
    #[error(
        "unknown model {spec:?}: give a built-in seeded Llama-style preset (tiny, small), minilm \
         (all-MiniLM-L6-v2, installed by scripts/install-minilm.sh), or a checkpoint directory \
         (Llama-style, or BERT)"
    )]
    Unknown {
        /// The argument.
        spec: String,
    },
    /// `minilm` was asked for but is not installed.
    #[error(
        "model \"minilm\": all-MiniLM-L6-v2 is not installed (looked in ${env} if set, else \
         models/all-MiniLM-L6-v2 under the workspace root, for {files}); run \
         `bash scripts/install-minilm.sh`",
        env = veritrace_model::MINILM_ENV,
        files = veritrace_model::MODEL_FILES.join(", ")
    )]
    MiniLmNotInstalled,
    /// The argument names a BERT encoder, but the verb needs a decoder (it generates tokens).
    #[error(
        "model {spec:?} is a BERT encoder; this command needs a Llama-style decoder (a preset \
         tiny or small, or a Llama-style checkpoint directory)"
    )]
    NotADecoder {
        /// The argument.
        spec: String,
    },
    /// A loader accepted the argument but failed to build the model.
    /// (Not a `#[source]`: the message already holds it, and the CLI prints the chain.)
    #[error("model {spec:?}: {error}")]
    Model {
        /// The argument.
        spec: String,
        /// What the model crate said.
        error: ModelError,
    },
}

/// Whether `spec` reads as a filesystem path rather than a preset name.
fn looks_like_path(spec: &str) -> bool {
    spec.contains(['/', '\\']) || spec.starts_with('.') || Path::new(spec).exists()
}

/// What a `--model` argument names, before anything is loaded.
enum Spec<'a> {
    /// A built-in seeded preset.
    Preset(&'a str),
    /// A Llama-style checkpoint directory.
    Llama(&'a Path),
    /// A BERT checkpoint directory (the installed MiniLM included).
    Bert(PathBuf),
}

/// Resolves `spec` without loading weights: a preset, `minilm`, or a directory whose
/// `config.json` has `"model_type": "bert"` (BERT) or not (Llama-style).
fn resolve(spec: &str) -> Result<Spec<'_>, EngineLoadError> {
    if PRESETS.contains(&spec) {
        return Ok(Spec::Preset(spec));
    }
    if spec == MINILM {
        return minilm_dir()
            .map(Spec::Bert)
            .ok_or(EngineLoadError::MiniLmNotInstalled);
    }
    if !looks_like_path(spec) {
        return Err(EngineLoadError::Unknown {
            spec: spec.to_string(),
        });
    }
    let path = Path::new(spec);
    let config = path.join("config.json");
    if !config.is_file() {
        return Err(EngineLoadError::PathNotSupported {
            spec: spec.to_string(),
        });
    }
    let model_type = std::fs::read(&config)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|v| v.get("model_type")?.as_str().map(str::to_string));
    if model_type.as_deref() == Some("bert") {
        Ok(Spec::Bert(path.to_path_buf()))
    } else {
        Ok(Spec::Llama(path))
    }
}

/// The decoder a `--model` argument names: a preset of [`PRESETS`] (seeded weights) or a
/// Llama-style checkpoint directory ([`LlamaModel::load`]), for the verbs that generate tokens.
///
/// # Errors
/// [`EngineLoadError`]: an unknown name, a path that is not a checkpoint directory, a BERT
/// encoder ([`EngineLoadError::NotADecoder`]), or a model that fails to load.
pub fn load_llama(spec: &str) -> Result<LlamaModel, EngineLoadError> {
    let model_err = |error| EngineLoadError::Model {
        spec: spec.to_string(),
        error,
    };
    match resolve(spec) {
        Ok(Spec::Preset(name)) => ModelConfig::preset(name)
            .and_then(LlamaModel::new)
            .map_err(model_err),
        Ok(Spec::Llama(path)) => LlamaModel::load(path).map_err(model_err),
        Ok(Spec::Bert(_)) | Err(EngineLoadError::MiniLmNotInstalled) => {
            Err(EngineLoadError::NotADecoder {
                spec: spec.to_string(),
            })
        }
        Err(e) => Err(e),
    }
}

/// The model a `--model` argument names, as the simulator and the protocol verbs hold it: a
/// decoder as [`load_llama`] reads it, `minilm` (the installed all-MiniLM-L6-v2,
/// [`veritrace_model::minilm_dir`]), or a BERT checkpoint directory (`config.json` with
/// `"model_type": "bert"`, read by [`BertModel::load`]).
///
/// # Errors
/// [`EngineLoadError`]: an unknown name, a path that is not a checkpoint directory, `minilm`
/// when it is not installed, or a model that fails to load.
pub fn load_model(spec: &str) -> Result<SimModel, EngineLoadError> {
    match resolve(spec)? {
        Spec::Bert(dir) => {
            BertModel::load(&dir)
                .map(SimModel::Bert)
                .map_err(|error| EngineLoadError::Model {
                    spec: spec.to_string(),
                    error,
                })
        }
        Spec::Preset(_) | Spec::Llama(_) => load_llama(spec).map(SimModel::Llama),
    }
}

/// The engine a `--model` argument names ([`load_model`]), for the verbs that only trace.
///
/// # Errors
/// As [`load_model`].
pub fn load_engine(spec: &str) -> Result<Box<dyn Engine>, EngineLoadError> {
    Ok(match load_model(spec)? {
        SimModel::Llama(m) => Box::new(m),
        SimModel::Bert(m) => Box::new(m),
    })
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
        // A BERT config goes to the encoder's loader (here: no weights file), and the decoder
        // verbs refuse it by name.
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type": "bert", "vocab_size": 50}"#,
        )
        .unwrap();
        let spec = dir.path().to_str().unwrap();
        assert!(matches!(
            load_engine(spec),
            Err(EngineLoadError::Model { .. })
        ));
        assert!(matches!(
            load_llama(spec),
            Err(EngineLoadError::NotADecoder { .. })
        ));
    }

    #[test]
    fn minilm_loads_when_installed_and_is_not_a_decoder() {
        match veritrace_model::minilm_dir() {
            Some(dir) => {
                let e = load_engine(MINILM).unwrap();
                assert_eq!((e.num_layers(), e.hidden_size()), (6, 384));
                assert!(e.name().starts_with("bert L=6 d=384"), "{}", e.name());
                // The installed directory loads the same model by path.
                let by_path = load_engine(dir.to_str().unwrap()).unwrap();
                assert_eq!(by_path.name(), e.name());
            }
            None => {
                let err = load_engine(MINILM).err().unwrap();
                assert!(matches!(err, EngineLoadError::MiniLmNotInstalled));
                assert!(err.to_string().contains("scripts/install-minilm.sh"));
            }
        }
        assert!(matches!(
            load_llama(MINILM),
            Err(EngineLoadError::NotADecoder { .. })
        ));
    }
}
