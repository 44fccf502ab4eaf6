//! Turning a `--model` argument into a model: [`load_model`] is the one place every verb that
//! runs a model goes through; it calls [`veritrace_model::load`] (where a new architecture is
//! registered) and turns its refusals into messages about the argument.

use std::path::Path;

use thiserror::Error;
use veritrace_model::ModelError;
pub use veritrace_model::{MINILM, PRESETS};
use veritrace_sim::SimModel;

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

impl EngineLoadError {
    /// Whether the error is the input's fault (exit code 2): every variant is, except a model
    /// that failed to build for a reason of the engine's own ([`ModelError::is_input`]).
    pub fn is_input(&self) -> bool {
        match self {
            EngineLoadError::Model { error, .. } => error.is_input(),
            _ => true,
        }
    }
}

/// Whether `spec` reads as a filesystem path rather than a preset name.
fn looks_like_path(spec: &str) -> bool {
    spec.contains(['/', '\\']) || spec.starts_with('.') || Path::new(spec).exists()
}

/// The model a `--model` argument names ([`veritrace_model::load`], the one loader every verb
/// and the simulator use): a preset of [`PRESETS`] (seeded weights), [`MINILM`] (the installed
/// all-MiniLM-L6-v2), or a checkpoint directory of a registered architecture
/// ([`veritrace_model::ARCHITECTURES`]: Llama, Qwen2, Mistral, BERT).
///
/// # Errors
/// [`EngineLoadError`]: an unknown name, a path that is not a checkpoint directory, `minilm`
/// when it is not installed, or a model that fails to load.
pub fn load_model(spec: &str) -> Result<SimModel, EngineLoadError> {
    let key = cache_key(spec);
    if let Some(key) = &key {
        let mut cache = MODELS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = cache.iter().position(|(k, _)| k == key) {
            // most recently used last
            let entry = cache.remove(i);
            let model = entry.1.clone();
            cache.push(entry);
            return Ok(model);
        }
    }
    let model = load_uncached(spec)?;
    if let Some(key) = key {
        let mut cache = MODELS.lock().unwrap_or_else(|p| p.into_inner());
        // another thread may have loaded the same model meanwhile: every caller shares one
        if let Some((_, m)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(m.clone());
        }
        if cache.len() >= MAX_CACHED_MODELS {
            // the least recently used goes
            cache.remove(0);
        }
        cache.push((key, model.clone()));
    }
    Ok(model)
}

/// At most this many models stay loaded in a process (the Python package calls one verb after
/// another in one process; the binary loads one model per run); beyond it the least recently
/// used is dropped.
const MAX_CACHED_MODELS: usize = 4;

/// What identifies a loaded model: the argument, and for a directory the length and
/// modification time of every file in it (a checkpoint rewritten in place is loaded again).
type CacheKey = (
    String,
    Vec<(std::path::PathBuf, u64, Option<std::time::SystemTime>)>,
);

static MODELS: std::sync::LazyLock<std::sync::Mutex<Vec<(CacheKey, SimModel)>>> =
    std::sync::LazyLock::new(Default::default);

/// The cache key of `spec`: presets by name; a checkpoint directory by its files' lengths and
/// modification times; `None` (never cached) when the directory cannot be listed.
fn cache_key(spec: &str) -> Option<CacheKey> {
    let dir = match spec {
        s if PRESETS.contains(&s) => return Some((s.to_string(), Vec::new())),
        MINILM => veritrace_model::minilm_dir()?,
        s => std::path::PathBuf::from(s),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).ok()? {
        let entry = entry.ok()?;
        let meta = entry.metadata().ok()?;
        if meta.is_file() {
            files.push((entry.path(), meta.len(), meta.modified().ok()));
        }
    }
    files.sort();
    Some((spec.to_string(), files))
}

fn load_uncached(spec: &str) -> Result<SimModel, EngineLoadError> {
    veritrace_model::load(spec).map_err(|error| match error {
        ModelError::UnknownModel { .. } if looks_like_path(spec) => {
            EngineLoadError::PathNotSupported {
                spec: spec.to_string(),
            }
        }
        ModelError::UnknownModel { .. } => EngineLoadError::Unknown {
            spec: spec.to_string(),
        },
        ModelError::MiniLmNotInstalled => EngineLoadError::MiniLmNotInstalled,
        error => EngineLoadError::Model {
            spec: spec.to_string(),
            error,
        },
    })
}

/// The engine a `--model` argument names ([`load_model`]), for the verbs that only trace.
///
/// # Errors
/// As [`load_model`].
pub fn load_engine(spec: &str) -> Result<SimModel, EngineLoadError> {
    load_model(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use veritrace_model::LlamaModel;

    #[test]
    fn loaded_models_are_reused_until_their_files_change() {
        let a = load_model("tiny").unwrap();
        let b = load_model("tiny").unwrap();
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        let dir = tempfile::tempdir().unwrap();
        LlamaModel::preset("tiny")
            .unwrap()
            .save(dir.path())
            .unwrap();
        let spec = dir.path().to_str().unwrap();
        let first = load_model(spec).unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &load_model(spec).unwrap()));
        // another model written over the same directory is loaded anew
        LlamaModel::preset("small")
            .unwrap()
            .save(dir.path())
            .unwrap();
        let second = load_model(spec).unwrap();
        assert!(!std::sync::Arc::ptr_eq(&first, &second));
        assert_ne!(first.digest(), second.digest());
    }

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
        let loaded = load_model(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(loaded.digest(), preset.digest());
        // A directory whose config.json is not a Llama config is a model error.
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        assert!(matches!(
            load_model(dir.path().to_str().unwrap()),
            Err(EngineLoadError::Model { .. })
        ));
        // A BERT config goes to the encoder's loader (here: no weights file).
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
        // An unknown model_type is refused by name.
        std::fs::write(dir.path().join("config.json"), r#"{"model_type": "gemma"}"#).unwrap();
        match load_model(spec) {
            Err(EngineLoadError::Model { error, .. }) => {
                assert!(error.to_string().contains("gemma"), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn minilm_loads_when_installed_and_is_an_encoder() {
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
        if let Ok(m) = load_model(MINILM) {
            assert!(m.is_encoder());
        }
    }
}
