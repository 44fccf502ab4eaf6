//! # veritrace-model
//!
//! The inference engine behind veritrace's provers and verifiers: a built-in Llama-style decoder
//! on candle-core (CPU) whose weights are generated from a seed, so every command works with no
//! download; trace capture (hidden states `h_0 … h_L`); and single-cell recompute that is
//! bit-for-bit identical to the same rows of a full forward.
//!
//! * [`ModelConfig`] (presets `tiny` and `small`) and [`LlamaModel`]: the decoder, its seeded
//!   weights ([`llama`] documents the rule) and its [`LlamaModel::digest`]; [`preset_cache`]
//!   keeps the presets' weights in a file so that a process need not draw them again.
//! * [`Setup`]: the numeric setup, with a canonical string form
//!   (`bf16/attn=tiled:64/quant=int8-channel/splitk=4`; [`setup`] has the grammar): precision
//!   f32/bf16/f16, eager / tiled online-softmax / sliding-window / top-k attention, int8 and
//!   int4 weight quantization with two rounding methods ([`quant`]), split-K, batch and
//!   KV-cache decode reduction orders, and the structural changes skip and reuse.
//! * [`Capture`]: optional attention-key capture beside the hidden states.
//! * [`trace_file`]: the one reader of the safetensors trace format (memory-mapped, validated,
//!   header size limited); [`files`]: reading inputs (regular files only, sizes checked before
//!   reading) and writing outputs atomically (single files and whole output sets).
//! * [`Trace`]: a captured trace; [`write_trace`] / [`read_trace`] store it as safetensors in
//!   the format `veritrace commit` reads, with the statement as metadata.
//! * [`BertModel`]: a BERT encoder loaded from real weights — all-MiniLM-L6-v2, found by
//!   [`minilm_dir`] once `scripts/install-minilm.sh` has installed it — with its
//!   [`BertTokenizer`] and [`BertModel::digest`] ([`bert`] documents both). It runs every
//!   setup but the decode order, with the decoder's arithmetic rules.
//! * [`freivalds`]: verifier keys (secret `r`, `v = rᵀW` per linear weight of a decoder, a strict
//!   encoding) and Freivalds checks of claimed linear outputs against a floating-point rounding
//!   bound, with the false-accept probability of a given deviation (`specs/freivalds.md`).
//! * [`LlamaModel`] and [`BertModel`] implement [`veritrace_protocol::Recompute`], so a
//!   [`veritrace_protocol::Verifier`] can check a prover that ran either, and [`Engine`], so
//!   the fingerprint study ([`fingerprint`]) runs on either.
//!
//! ## Shape-invariant arithmetic
//!
//! candle's CPU gemm picks its kernel and blocking by matrix shape, so rows computed alone can
//! differ in the last bits from the same rows inside a larger matmul. Every layer is therefore
//! computed in fixed row tiles of the chunk size `c` (see [`llama`] and [`bert`]): a full forward is exactly
//! the concatenation of per-cell computations, and exact (bitwise) verification works on
//! identical hardware.

#![deny(missing_docs)]
// Only the `cuda` module (driver calls and kernel launches through cudarc) may use `unsafe`.
#![deny(unsafe_code)]

mod arch;
pub mod bert;
pub mod cost;
#[cfg(feature = "cuda")]
pub mod cuda;
mod device;
pub mod digest;
pub mod engine;
pub mod files;
pub mod fingerprint;
pub mod freivalds;
pub mod invariant;
pub mod kernels;
pub mod llama;
mod ops;
pub mod preset_cache;
pub mod quant;
mod recompute;
pub use recompute::RecomputeOn;
pub mod setup;
pub mod sublayer;
mod tokenizer;
mod trace;
pub mod trace_file;

pub use arch::{load, Architecture, Model, ARCHITECTURES, MINILM, PRESETS};
pub use bert::{minilm_dir, BertConfig, BertModel, MINILM_ENV, MODEL_FILES};
pub use device::{list_devices, CommittedRun, Device, DeviceInfo, Runner, GPU_MAX_TILE};
pub use engine::{bert_prompt, seeded_prompt, Engine, OnDevice};
pub use fingerprint::{run_study, Class, FingerprintError, StudyPlan, StudyReport};
pub use llama::{
    Capture, CellInputs, Family, HfLlamaConfig, LlamaModel, ModelConfig, NamedTensor, Nonlinear,
    SubLayers,
};
pub use ops::topk_mask;
pub use setup::{
    Attention, Kernels, Order, Precision, Quant, QuantScheme, Rounding, Setup, MAX_SETUP_PARAM,
};
pub use tokenizer::{BertTokenizer, Encoded, TextTokenizer, TOKENIZER_DIGEST_LABEL};
pub use trace::{
    map_trace, map_trace_with, read_trace, write_trace, write_trace_with, Trace,
    STATEMENT_METADATA_KEY,
};

use thiserror::Error;

/// Every way the model crate refuses a request. Bad input never panics.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelError {
    /// No preset has this name.
    #[error("unknown model preset {0:?} (known: tiny, small)")]
    UnknownPreset(String),
    /// [`load`]: the name is no preset, not `minilm`, and no directory with a `config.json`.
    #[error(
        "model {spec:?}: not a built-in model (tiny, small, minilm) nor a checkpoint directory \
         (config.json with model.safetensors or model.safetensors.index.json)"
    )]
    UnknownModel {
        /// The name given.
        spec: String,
    },
    /// [`load`]: `minilm` was asked for but all-MiniLM-L6-v2 is not installed.
    #[error(
        "model \"minilm\": all-MiniLM-L6-v2 is not installed (looked in ${env} if set, else \
         models/all-MiniLM-L6-v2 under the workspace root); run \
         `bash scripts/install-minilm.sh`",
        env = MINILM_ENV
    )]
    MiniLmNotInstalled,
    /// A configuration is inconsistent (zero sizes, heads not dividing the width, …).
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    /// A setup this version cannot run, or setup bytes that are not a canonical setup string.
    #[error("unsupported numeric setup: {0}")]
    UnsupportedSetup(String),
    /// A token id is not below the vocabulary size.
    #[error("token {token} at position {position} is not below the vocabulary size {vocab}")]
    TokenOutOfRange {
        /// Position in the sequence.
        position: usize,
        /// The token id.
        token: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// An input has the wrong length.
    #[error("{what}: expected {expected}, got {got}")]
    WrongLength {
        /// Which input.
        what: &'static str,
        /// Expected length (elements, rows or tokens, as `what` says).
        expected: String,
        /// Length given.
        got: usize,
    },
    /// An input holds NaN or an infinity.
    #[error("{what} holds a non-finite value at element {index}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Index of the first non-finite element.
        index: usize,
    },
    /// A parameter is outside its domain (chunk size 0, empty prompt, layer out of range, …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The tensor library failed.
    #[error("candle: {0}")]
    Candle(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A model checkpoint (config.json, safetensors weights) is malformed or does not fit the
    /// architecture.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file or directory.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A weights file is malformed (not safetensors, a tensor of another dtype).
    #[error("weights file {path}: {reason}")]
    WeightsFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A weights file lacks a tensor the model needs.
    #[error("weights file {path} has no tensor {name}")]
    MissingTensor {
        /// The file.
        path: String,
        /// The tensor's name (with the prefix the file uses).
        name: String,
    },
    /// A weight tensor has another shape than the configuration gives it.
    #[error("tensor {name} has shape {got:?}, the configuration needs {expected:?}")]
    TensorShape {
        /// The tensor's canonical name.
        name: String,
        /// The shape the configuration gives.
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },
    /// A weight tensor holds NaN or an infinity.
    #[error("tensor {name} holds a non-finite value at element {index}")]
    NonFiniteWeight {
        /// The tensor's canonical name.
        name: String,
        /// Index of the first non-finite element.
        index: usize,
    },
    /// A sequence is longer than the model's positions.
    #[error("{tokens} tokens exceed the model's {max} positions")]
    SequenceTooLong {
        /// Tokens in the sequence.
        tokens: usize,
        /// The model's `max_position_embeddings`.
        max: usize,
    },
    /// The tokenizer could not be loaded or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A device other than the CPU was asked for and cannot be used: the `cuda` feature is off,
    /// no CUDA driver is installed, or the ordinal names no GPU.
    #[error("device {device}: {reason}")]
    DeviceUnavailable {
        /// The device asked for (`cuda:0`, …).
        device: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A setup that the device's kernels do not implement (it runs on the CPU).
    #[error("setup {setup} is not implemented on {device}: {reason}")]
    UnsupportedOnDevice {
        /// The setup's canonical string.
        setup: String,
        /// The device.
        device: String,
        /// What is missing.
        reason: String,
    },
    /// A kernel did not compile with NVRTC; `log` is NVRTC's log.
    #[error("kernel {name} did not compile ({reason}):\n{log}")]
    KernelCompile {
        /// The kernel file.
        name: String,
        /// NVRTC's error code.
        reason: String,
        /// NVRTC's compilation log.
        log: String,
    },
    /// The CUDA driver, cuBLAS or a kernel launch failed.
    #[error("cuda: {0}")]
    Cuda(String),
    /// An input file was refused (not a regular file, too large) or an output could not be
    /// written.
    #[error(transparent)]
    File(#[from] files::FileError),
    /// A trace file is malformed or does not hold a model trace.
    #[error("trace file {path}: {reason}")]
    TraceFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl ModelError {
    /// Whether the error is the input's fault (a refused checkpoint, trace file, setup, argument,
    /// token sequence, tokenizer file, device request…): exit code 2. Engine failures (candle,
    /// CUDA, a kernel that does not compile) and output write failures are not.
    pub fn is_input(&self) -> bool {
        match self {
            ModelError::Candle(_) | ModelError::Cuda(_) | ModelError::KernelCompile { .. } => false,
            ModelError::File(e) => e.is_input(),
            _ => true,
        }
    }
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        ModelError::Candle(e.to_string())
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Reads a checkpoint or configuration file through [`files::read_limited`]: one that cannot be
/// read is [`ModelError::Io`] (as before there were limits), a refused one (not a regular file,
/// too large) [`ModelError::File`].
pub(crate) fn read_model_file(
    path: &std::path::Path,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>> {
    files::read_limited(path, limit, what, "").map_err(|e| match e {
        files::FileError::Read { source, .. } => ModelError::Io {
            path: path.display().to_string(),
            source,
        },
        other => other.into(),
    })
}

/// Index of the first non-finite value, if any.
pub(crate) fn first_non_finite(values: &[f32]) -> Option<usize> {
    // One pass without a short cut (the compiler vectorizes the fold, eight lanes wide where
    // the CPU has AVX2); only input holding a non-finite value is searched again element by
    // element.
    #[cfg(target_arch = "x86_64")]
    let clean = if std::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: the CPU supports AVX2, checked on the line above.
        unsafe {
            all_finite_avx2(values)
        }
    } else {
        all_finite(values)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let clean = all_finite(values);
    if clean {
        return None;
    }
    values.iter().position(|v| !v.is_finite())
}

/// Whether every value is finite: one branch-free pass, the largest magnitude's bits below
/// those of infinity (`0x7f80_0000`; NaNs lie above it).
#[inline(always)]
fn all_finite(values: &[f32]) -> bool {
    values
        .iter()
        .fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff))
        < 0x7f80_0000
}

/// [`all_finite`] compiled with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn all_finite_avx2(values: &[f32]) -> bool {
    all_finite(values)
}

#[cfg(test)]
mod finite_tests {
    use super::first_non_finite;

    #[test]
    fn first_non_finite_finds_the_first_at_any_position() {
        assert_eq!(first_non_finite(&[]), None);
        for len in [1usize, 63, 64, 65, 200] {
            let clean: Vec<f32> = (0..len).map(|i| i as f32 - 3.5).collect();
            assert_eq!(first_non_finite(&clean), None, "len {len}");
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                for at in [0, len / 2, len - 1] {
                    let mut v = clean.clone();
                    v[at] = bad;
                    // a second one later must not be reported first
                    if at + 1 < len {
                        v[len - 1] = f32::NAN;
                    }
                    assert_eq!(first_non_finite(&v), Some(at), "len {len} at {at}");
                }
            }
        }
    }
}
