//! The built-in Llama-style decoder, on candle-core (CPU).
//!
//! # Architecture
//!
//! ```text
//! h_0 = embed(tokens)                                   (embedding rows, copied exactly)
//! for l in 1..=L:
//!     a   = h_{l-1} + Wo · attn(rope(Wq · n), rope(Wk · n), Wv · n),  n = rmsnorm(h_{l-1}; g_attn)
//!     h_l = a + Wdown · (silu(Wgate · m) ⊙ (Wup · m)),                m = rmsnorm(a; g_mlp)
//! logits(p) = Wlm · rmsnorm(h_L[p]; g_final);   next token = argmax (lowest index on ties)
//! ```
//!
//! * `rmsnorm(x; g)_i = x_i · (mean_j x_j² + ε)^{-1/2} · g_i`.
//! * Causal multi-head attention with `n_heads` query heads of size `hd = hidden / n_heads` and
//!   `n_kv_heads` key/value heads (grouped KV: query head `h` reads kv head
//!   `h / (n_heads / n_kv_heads)`); scores `q·k / sqrt(hd)`, a causal mask of `0` / `−∞` in f32,
//!   softmax `exp(s − max) / Σ exp(s − max)`.
//! * Rotary positions (Llama / "rotate half" convention): for position `p` and `i < hd/2`,
//!   `θ_i = p · base^{−2i/hd}` computed in f64, then `cos θ_i`, `sin θ_i` rounded to f32;
//!   `x' = x ⊙ cos + rotate_half(x) ⊙ sin` with `rotate_half(x) = (−x[hd/2..], x[..hd/2])`.
//! * `silu(x) = x / (1 + e^{−x})`.
//!
//! Linear weights are stored `[out, in]` (the PyTorch / Hugging Face convention) and applied as
//! `x · Wᵀ`.
//!
//! # Seeded weights
//!
//! The weights of a [`ModelConfig`] are a function of its fields alone. A ChaCha20 stream
//! (`rand_chacha::ChaCha20Rng::from_seed(k)`, where `k` is the 32-byte key holding
//! `seed` as u64 little-endian followed by 24 zero bytes) is consumed in the tensor order below,
//! each tensor row-major, one `next_u32()` per element. With `u = next_u32() >> 8` (24 bits) and
//! `r = (u + 0.5) / 2²⁴ · 2 − 1` (in f64, uniform in (−1, 1)):
//!
//! * norm gains (`*_layernorm`, `model.norm`): `1 + 0.1 · r`;
//! * the embedding: `r`;
//! * every linear weight `[out, in]` (and the LM head): `r / sqrt(in)` (uniform in `±1/sqrt(fan_in)`);
//!
//! each rounded once to f32. Tensor order (Hugging Face Llama names, `i` = layer `0..L`):
//! `model.embed_tokens.weight [vocab, hidden]`; for each layer
//! `model.layers.{i}.input_layernorm.weight [hidden]`,
//! `self_attn.q_proj.weight [n_heads·hd, hidden]`, `self_attn.k_proj.weight [n_kv_heads·hd, hidden]`,
//! `self_attn.v_proj.weight [n_kv_heads·hd, hidden]`, `self_attn.o_proj.weight [hidden, n_heads·hd]`,
//! `post_attention_layernorm.weight [hidden]`, `mlp.gate_proj.weight [mlp, hidden]`,
//! `mlp.up_proj.weight [mlp, hidden]`, `mlp.down_proj.weight [hidden, mlp]`;
//! then `model.norm.weight [hidden]` and `lm_head.weight [vocab, hidden]`.
//!
//! # Checkpoints
//!
//! Besides seeded presets, a Hugging Face Llama-style directory (`config.json` plus
//! `model.safetensors` or an indexed set of shards; F32/F16/BF16) loads with
//! [`LlamaModel::load`], and [`LlamaModel::save`] writes any model in that form, so the
//! built-in presets can be run by other tools (PyTorch, vLLM) and their traces compared.
//!
//! # Model digest
//!
//! [`LlamaModel::digest`] is the engine-independent digest of [`crate::digest`] and
//! `specs/model-digest.md`: architecture `llama`, the fields of [`ModelConfig::digest_fields`]
//! (the arithmetic hyperparameters are part of the model; the seed is not, it acts through the
//! weights), and every tensor above by name. A seeded preset and the checkpoint
//! [`LlamaModel::save`] writes of it have the same digest, and so does any copy of the
//! checkpoint in another float storage type that holds the same values.
//!
//! # Shape-invariant tiles
//!
//! Every layer is computed in tiles of `c` token rows (`c` = the trace's chunk size), the last
//! one padded with zero rows to a full `c` rows. Tile `j` covers positions `jc..(j+1)c`:
//!
//! 1. for every tile `t ≤ j`: `n_t = rmsnorm(x_t)`, `k_t = rope(n_t · Wkᵀ)`, `v_t = n_t · Wvᵀ`,
//!    each its own `[c, ·]` matmul;
//! 2. `q_j = rope(n_j · Wqᵀ)`; attention of `q_j` over the concatenated `k_0..k_j`, `v_0..v_j`
//!    (keys `0..(j+1)c`, masked causally);
//! 3. output projection, residual, MLP and residual on the tile's `c` rows.
//!
//! A full forward runs exactly these operations, with exactly these shapes, for every tile, and
//! [`LlamaModel::recompute_cell`] runs them for one tile; so a cell recomputed alone is bitwise
//! the same as those rows of the full forward. Padding makes every matmul shape independent of
//! the sequence length (masked keys get probability exactly 0), so the row of position `p` is a
//! function of tokens `0..=p` only: greedy generation, which extends the sequence token by
//! token, predicts from the very rows the final trace holds.
//!
//! The chunk size is therefore part of the arithmetic: on an x86-64 CPU a chunk of 1 row (gemv
//! path) gives traces that differ from chunks of 4, 8 or 24 rows by ~1e-6, while those agree
//! bitwise there. A statement binds the chunk size in its geometry, so prover and verifier use
//! the same one.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use veritrace_commit::Digest;

use crate::invariant::{self as inv, PackedMatrix};
use crate::setup::{Kernels, Order};
use crate::{first_non_finite, Attention, ModelError, Result, Setup};

/// A weight tensor: name, shape and row-major f32 elements.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// The fields of a Hugging Face `LlamaConfig` (`config.json`) this decoder reads.
///
/// [`HfLlamaConfig::read`] is strict, because loading the wrong model silently is the worst
/// outcome a verifier can have: `model_type` must be a [`Family`] (`llama` when absent) and
/// `architectures` that family's (`LlamaForCausalLM`, `Qwen2ForCausalLM`,
/// `MistralForCausalLM`); every field must be one this decoder computes ([`COMPUTED_FIELDS`]) or one
/// that does not change the forward pass ([`INERT_FIELDS`]); rope parameters are read from
/// `rope_theta`/`rope_scaling` (transformers 4) or `rope_parameters` (transformers 5), which
/// must agree where both are given, and only the default and `llama3` rope types are computed;
/// a `sliding_window` outside Mistral, biases outside Qwen2's q/k/v, an activation other than SiLU, `pretraining_tp` other than 1 or
/// a head size other than `hidden / heads` are refused, naming the field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfLlamaConfig {
    /// `llama` (absent in files written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (default: as many as query heads).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// MLP width.
    pub intermediate_size: usize,
    /// Rotary base (default 10000; transformers 5 writes it in `rope_parameters`).
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// RMSNorm epsilon (default 1e-6).
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// Whether the LM head shares the embedding (default false).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Activation (must be `silu`).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Explicit head size, if given (must equal `hidden_size / num_attention_heads`).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Rope scaling (transformers 4): absent, null, or a `default` or `llama3` rope type.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Rope parameters (transformers 5): `rope_type` (`default` or `llama3`), `rope_theta`,
    /// and the llama3 scaling fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    /// Attention biases (must be absent or false).
    #[serde(default)]
    pub attention_bias: bool,
    /// MLP biases (must be absent or false).
    #[serde(default)]
    pub mlp_bias: bool,
    /// Mistral's sliding window (absent or null: full causal attention). Refused for Llama;
    /// unused (and dropped by [`HfLlamaConfig::parse`]) for Qwen2, whose window only
    /// `use_sliding_window` turns on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
}

/// The `config.json` fields whose values [`HfLlamaConfig`] reads and checks.
pub const COMPUTED_FIELDS: &[&str] = &[
    "model_type",
    "architectures",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "rope_theta",
    "rms_norm_eps",
    "tie_word_embeddings",
    "hidden_act",
    "head_dim",
    "rope_scaling",
    "rope_parameters",
    "attention_bias",
    "mlp_bias",
    "sliding_window",
    "pretraining_tp",
];

/// Qwen2's own `config.json` fields, checked in [`HfLlamaConfig::parse`]: `use_sliding_window`
/// must be false and `layer_types` all `full_attention` (then `sliding_window` and
/// `max_window_layers` are unused).
pub const QWEN2_FIELDS: &[&str] = &["use_sliding_window", "layer_types", "max_window_layers"];

/// `config.json` fields that do not change a forward pass (token ids of special tokens,
/// training-time settings such as dropout and initialization, cache use, file metadata):
/// accepted and ignored. Any field in neither list is refused.
pub const INERT_FIELDS: &[&str] = &[
    "_name_or_path",
    "_commit_hash",
    "_attn_implementation_autoset",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "max_position_embeddings",
    "initializer_range",
    "use_cache",
    "attention_dropout",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "tokenizer_class",
];

/// The rope theta and scaling a rope object gives (`rope_scaling` or `rope_parameters`):
/// `(rope_type, theta, scaling)`.
fn parse_rope(
    field: &str,
    v: &serde_json::Value,
) -> Result<(String, Option<f64>, Option<Llama3RopeScaling>)> {
    let bad = |m: String| Err(ModelError::InvalidConfig(format!("{field}: {m}")));
    let Some(o) = v.as_object() else {
        return bad(format!("expected an object, got {v}"));
    };
    // transformers 4 wrote `type` before `rope_type`.
    let rope_type = match (o.get("rope_type"), o.get("type")) {
        (Some(a), Some(b)) if a != b => {
            return bad(format!("rope_type {a} and type {b} differ"));
        }
        (Some(t), _) | (None, Some(t)) => match t.as_str() {
            Some(t) => t.to_string(),
            None => return bad(format!("rope_type {t} is not a string")),
        },
        (None, None) => "default".to_string(),
    };
    let theta = match o.get("rope_theta") {
        None => None,
        Some(t) => match t.as_f64() {
            Some(t) => Some(t),
            None => return bad(format!("rope_theta {t} is not a number")),
        },
    };
    let num = |k: &str| -> Result<f64> {
        o.get(k).and_then(|x| x.as_f64()).ok_or_else(|| {
            ModelError::InvalidConfig(format!("{field}: llama3 rope scaling needs a number {k}"))
        })
    };
    let (allowed, scaling): (&[&str], _) = match rope_type.as_str() {
        "default" => (&["rope_type", "type", "rope_theta"], None),
        "llama3" => {
            let s = Llama3RopeScaling {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: {
                    let x = num("original_max_position_embeddings")?;
                    if !(x >= 1.0 && x.fract() == 0.0 && x < 1e15) {
                        return bad(format!("original_max_position_embeddings {x}"));
                    }
                    x as u64
                },
            };
            s.validate()?;
            (
                &[
                    "rope_type",
                    "type",
                    "rope_theta",
                    "factor",
                    "low_freq_factor",
                    "high_freq_factor",
                    "original_max_position_embeddings",
                ],
                Some(s),
            )
        }
        other => {
            return bad(format!(
                "rope type {other:?} is not computed by this decoder (default and llama3 are)"
            ))
        }
    };
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return bad(format!(
            "field {k:?} is not understood for rope type {rope_type:?} (it may change the \
             computation)"
        ));
    }
    Ok((rope_type, theta, scaling))
}

/// The `rope_scaling` object of a Llama-3 scaling, as transformers 4 writes it.
fn llama3_value(s: Llama3RopeScaling) -> serde_json::Value {
    let mut v = serde_json::to_value(s).expect("plain numbers");
    v["rope_type"] = "llama3".into();
    v
}

/// A checkpoint's `config.json` as JSON: [`ModelError::Io`] when it cannot be read,
/// [`ModelError::Checkpoint`] when it is not JSON.
pub(crate) fn read_config_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = crate::read_model_file(path, crate::files::MAX_TEXT_BYTES, "a config.json")?;
    serde_json::from_slice(&bytes).map_err(|e| ModelError::Checkpoint {
        path: path.display().to_string(),
        reason: format!("not JSON: {e}"),
    })
}

/// The refusal of the first `config.json` field of `map` that `allowed` does not accept, for
/// the `loader` it names (a field nobody listed may change the computation).
pub(crate) fn unknown_field(
    map: &serde_json::Map<String, serde_json::Value>,
    loader: &str,
    allowed: impl Fn(&str) -> bool,
) -> Option<String> {
    map.keys().find(|k| !allowed(k.as_str())).map(|k| {
        format!(
            "config field {k:?} is not understood by the {loader} loader; it may change the \
             computation, so the checkpoint is refused rather than loaded as something else"
        )
    })
}

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}

impl HfLlamaConfig {
    /// Reads, checks (see [`HfLlamaConfig`]) and parses `config.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let value = read_config_json(path)?;
        Self::parse(&value).map_err(|e| match e {
            ModelError::InvalidConfig(m) => {
                ModelError::InvalidConfig(format!("{}: {m}", path.display()))
            }
            other => other,
        })
    }

    /// Checks and parses a `config.json` value (see [`HfLlamaConfig`]); refusals are
    /// [`ModelError::InvalidConfig`], naming the field.
    pub fn parse(value: &serde_json::Value) -> Result<Self> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        let Some(map) = value.as_object() else {
            return bad("not a JSON object".into());
        };
        let family = match map.get("model_type") {
            None => Family::Llama,
            Some(t) => match t.as_str().and_then(Family::from_model_type) {
                Some(f) => f,
                None => {
                    return bad(format!(
                        "model_type {t} is not supported by the decoder loader (supported: \
                         llama, qwen2, mistral; bert through the BERT loader)"
                    ))
                }
            },
        };
        let qwen2 = family == Family::Qwen2;
        if let Some(a) = map.get("architectures") {
            let ok = a.as_array().is_some_and(|a| {
                a.iter().all(|x| {
                    x.as_str()
                        .is_some_and(|x| family.architectures().contains(&x))
                })
            });
            if !ok {
                return bad(format!(
                    "architectures {a} is not supported for model_type {} (expected {})",
                    family.name(),
                    family.architectures()[0]
                ));
            }
        }
        if qwen2 {
            // Qwen2's sliding window applies only to layers marked sliding_attention, which
            // use_sliding_window turns on: refused; its sliding_window value is then unused.
            if let Some(u) = map
                .get("use_sliding_window")
                .filter(|u| u.as_bool() != Some(false))
            {
                return bad(format!(
                    "use_sliding_window {u}: sliding-window attention is not supported"
                ));
            }
            if let Some(t) = map.get("layer_types") {
                let full = t
                    .as_array()
                    .is_some_and(|a| a.iter().all(|x| x.as_str() == Some("full_attention")));
                if !full {
                    return bad(format!(
                        "layer_types {t}: only full_attention layers are computed"
                    ));
                }
            }
            // Llama's attention_bias would add an output-projection bias too; Qwen2 has only
            // the q/k/v biases (false, as veritrace writes it, is accepted).
            if let Some(b) = map
                .get("attention_bias")
                .filter(|b| b.as_bool() != Some(false))
            {
                return bad(format!(
                    "attention_bias {b}: a Qwen2 checkpoint has only its implied q/k/v biases"
                ));
            }
        }
        let allowed = |k: &str| {
            COMPUTED_FIELDS.contains(&k)
                || INERT_FIELDS.contains(&k)
                || (qwen2 && QWEN2_FIELDS.contains(&k))
        };
        if let Some(m) = unknown_field(map, "Llama", allowed) {
            return bad(m);
        }
        match map.get("sliding_window").filter(|w| !w.is_null()) {
            Some(w) if family == Family::Llama => {
                return bad(format!(
                    "sliding_window {w}: a Llama checkpoint has no sliding window (Mistral's \
                     is computed under model_type mistral)"
                ));
            }
            Some(w) if family == Family::Mistral && w.as_u64().is_none_or(|w| w < 1) => {
                return bad(format!(
                    "sliding_window {w} must be a positive integer or null"
                ));
            }
            _ => {}
        }
        if let Some(tp) = map.get("pretraining_tp").filter(|t| t.as_u64() != Some(1)) {
            return bad(format!("pretraining_tp {tp} (only 1)"));
        }
        let mut hf: HfLlamaConfig = serde_json::from_value(value.clone())
            .map_err(|e| ModelError::InvalidConfig(format!("not a Llama config: {e}")))?;
        // Rope: the top-level theta, rope_scaling (transformers 4) and rope_parameters
        // (transformers 5) must agree.
        let top_theta = map.get("rope_theta").and_then(|t| t.as_f64());
        let mut theta = top_theta;
        let mut scaling: Option<(String, Option<Llama3RopeScaling>)> = None;
        for field in ["rope_scaling", "rope_parameters"] {
            let Some(v) = map.get(field).filter(|v| !v.is_null()) else {
                continue;
            };
            let (rope_type, t, s) = parse_rope(field, v)?;
            if let Some(t) = t {
                if theta.is_some_and(|x| x != t) {
                    return bad(format!(
                        "{field}.rope_theta {t} differs from the rope_theta given elsewhere ({})",
                        theta.unwrap_or_default()
                    ));
                }
                theta = Some(t);
            }
            if let Some((prev_type, prev)) = &scaling {
                if *prev_type != rope_type || *prev != s {
                    return bad(format!(
                        "rope_scaling and rope_parameters describe different rope types \
                         ({prev_type} and {rope_type})"
                    ));
                }
            }
            scaling = Some((rope_type, s));
        }
        hf.rope_theta = theta.unwrap_or_else(default_rope_theta);
        hf.rope_scaling = scaling.and_then(|(_, s)| s).map(llama3_value);
        hf.rope_parameters = None;
        if qwen2 {
            hf.sliding_window = None;
        }
        Ok(hf)
    }

    /// The decoder configuration (seed 0), refusing what this decoder does not compute.
    pub fn to_config(&self) -> Result<ModelConfig> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        if self.hidden_act != "silu" {
            return bad(format!("hidden_act {:?} (only silu)", self.hidden_act));
        }
        let family = match self.model_type.as_deref() {
            None => Family::Llama,
            Some(t) => Family::from_model_type(t).ok_or_else(|| {
                ModelError::InvalidConfig(format!("model_type {t:?} (llama, qwen2 or mistral)"))
            })?,
        };
        // After `parse`, `rope_scaling` holds the llama3 object (`llama3_value`) or nothing.
        let rope_scaling = match self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            None => None,
            Some(v) => parse_rope("rope_scaling", v)?.2,
        };
        if self.rope_parameters.is_some() {
            return bad("rope_parameters: read the config with HfLlamaConfig::parse".into());
        }
        if self.attention_bias || self.mlp_bias {
            return bad(
                "attention_bias / mlp_bias: biases are not supported by the Llama \
                        loader"
                    .into(),
            );
        }
        let config = ModelConfig {
            family,
            sliding_window: self.sliding_window,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            intermediate_size: self.intermediate_size,
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            seed: 0,
            rope_scaling,
        };
        config.validate()?;
        if let Some(hd) = self.head_dim {
            if hd != config.head_dim() {
                return bad(format!(
                    "head_dim {hd} differs from hidden_size / num_attention_heads = {}",
                    config.head_dim()
                ));
            }
        }
        Ok(config)
    }

    /// The Hugging Face form of a decoder configuration (untied head, no biases).
    pub fn from_config(c: &ModelConfig) -> Self {
        HfLlamaConfig {
            model_type: Some(c.architecture().into()),
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            num_hidden_layers: c.num_layers,
            num_attention_heads: c.num_heads,
            num_key_value_heads: Some(c.num_kv_heads),
            intermediate_size: c.intermediate_size,
            rope_theta: c.rope_theta,
            rms_norm_eps: c.rms_norm_eps,
            tie_word_embeddings: false,
            hidden_act: "silu".into(),
            head_dim: Some(c.head_dim()),
            rope_scaling: c.rope_scaling.map(llama3_value),
            rope_parameters: None,
            attention_bias: false,
            mlp_bias: false,
            sliding_window: c.sliding_window,
        }
    }
}

/// The safetensors files of a checkpoint directory: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json` (each once, sorted).
fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let bytes = crate::files::read_limited(
        &index,
        crate::files::MAX_TEXT_BYTES,
        "a safetensors index",
        "",
    )
    .map_err(|e| match e {
        crate::files::FileError::Read { .. } => ModelError::Checkpoint {
            path: dir.display().to_string(),
            reason: "neither model.safetensors nor model.safetensors.index.json is there".into(),
        },
        other => other.into(),
    })?;
    let bad = |reason: String| ModelError::Checkpoint {
        path: index.display().to_string(),
        reason,
    };
    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map object".into()))?;
    let mut files: Vec<String> = map
        .values()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad("a weight_map value is not a file name".into()))
        })
        .collect::<Result<_>>()?;
    files.sort();
    files.dedup();
    files
        .into_iter()
        .map(|f| {
            if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                Err(bad(format!("shard name {f:?} leaves the directory")))
            } else {
                Ok(dir.join(f))
            }
        })
        .collect()
}

/// Every tensor of a safetensors file, converted to f32 (F32, F16 and BF16 are accepted).
fn read_safetensors(path: &Path) -> Result<Vec<NamedTensor>> {
    let file = path.display().to_string();
    let bad = |reason: String| ModelError::Checkpoint {
        path: file.clone(),
        reason,
    };
    let bytes = crate::read_model_file(path, u64::MAX, "weights")?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => return Err(bad(format!("tensor {name} has dtype {other:?}"))),
        };
        out.push((name, view.shape().to_vec(), values));
    }
    Ok(out)
}

/// Hyperparameters of the decoder (and the seed of its weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream (hidden size).
    pub hidden_size: usize,
    /// Number of transformer layers `L` (a trace has `L + 1` hidden states).
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped KV); must divide `num_heads`.
    pub num_kv_heads: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Rotary base.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Seed of the weight stream (see the [module docs](self)).
    pub seed: u64,
    /// Llama-3 rope scaling, if the checkpoint has it (absent from the digest input when
    /// `None`, so models without it keep their digests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// The decoder family (`model_type`): Llama, Qwen2 (query/key/value biases) or Mistral
    /// (an optional sliding window). Absent from serialized Llama configurations.
    #[serde(default, skip_serializing_if = "Family::is_llama")]
    pub family: Family,
    /// Mistral's sliding window `W`: query `p` attends to keys `p − W + 1 ..= p` (transformers'
    /// `sliding_window_overlay`, `kv > q − W`). `None`: full causal attention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
}

/// The decoder families veritrace computes, named by their Hugging Face `model_type`. They
/// share one forward pass (pre-norm RMSNorm, rotary attention with grouped KV, SwiGLU MLP) and
/// differ in what the family adds: Qwen2 biases its query, key and value projections, Mistral
/// may restrict attention to a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// `llama`: no biases, full causal attention.
    #[default]
    Llama,
    /// `qwen2`: biases on the query, key and value projections.
    Qwen2,
    /// `mistral`: Llama's layers with an optional sliding window.
    Mistral,
}

impl Family {
    /// The `model_type` (and model-digest architecture) name.
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Mistral => "mistral",
        }
    }

    /// The family of a `model_type` (`None` when it is not a decoder family veritrace computes).
    pub fn from_model_type(t: &str) -> Option<Self> {
        match t {
            "llama" => Some(Family::Llama),
            "qwen2" => Some(Family::Qwen2),
            "mistral" => Some(Family::Mistral),
            _ => None,
        }
    }

    /// The `architectures` entries of a checkpoint of this family.
    fn architectures(self) -> [&'static str; 2] {
        match self {
            Family::Llama => ["LlamaForCausalLM", "LlamaModel"],
            Family::Qwen2 => ["Qwen2ForCausalLM", "Qwen2Model"],
            Family::Mistral => ["MistralForCausalLM", "MistralModel"],
        }
    }

    fn is_llama(&self) -> bool {
        *self == Family::Llama
    }
}

/// Llama-3 frequency-dependent rope scaling (`rope_type = "llama3"` in a Hugging Face config),
/// as transformers' `_compute_llama3_parameters` computes it: with wavelength
/// `λ_i = 2π / f_i` of the base inverse frequency `f_i = θ^(−2i/d)`, `L` the original context
/// and `s` the factor, frequencies with `λ_i > L / low_freq_factor` become `f_i / s`, those with
/// `λ_i < L / high_freq_factor` stay, and those between are interpolated,
/// `(1 − a) f_i / s + a f_i` with `a = (L / λ_i − low_freq_factor) / (high_freq_factor −
/// low_freq_factor)`. Angles are not rescaled (attention factor 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Llama3RopeScaling {
    /// `factor` `s > 0`.
    pub factor: f64,
    /// `low_freq_factor`.
    pub low_freq_factor: f64,
    /// `high_freq_factor` (greater than `low_freq_factor`).
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings` `L`.
    pub original_max_position_embeddings: u64,
}

impl Llama3RopeScaling {
    /// Refuses non-finite or non-positive values, `high_freq_factor <= low_freq_factor`, and
    /// an original context of 0.
    pub fn validate(&self) -> Result<()> {
        let ok = |x: f64| x.is_finite() && x > 0.0;
        if !(ok(self.factor) && ok(self.low_freq_factor) && ok(self.high_freq_factor))
            || self.high_freq_factor <= self.low_freq_factor
            || self.original_max_position_embeddings == 0
        {
            return Err(ModelError::InvalidConfig(format!(
                "rope scaling (llama3): factor, low_freq_factor < high_freq_factor and \
                 original_max_position_embeddings must be positive and finite, got {self:?}"
            )));
        }
        Ok(())
    }

    /// Scales one base inverse frequency.
    pub fn scale(&self, inv_freq: f64) -> f64 {
        let old = self.original_max_position_embeddings as f64;
        let low_wavelen = old / self.low_freq_factor;
        let high_wavelen = old / self.high_freq_factor;
        let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
        if wavelen < high_wavelen {
            inv_freq
        } else if wavelen > low_wavelen {
            inv_freq / self.factor
        } else {
            let a = (old / wavelen - self.low_freq_factor)
                / (self.high_freq_factor - self.low_freq_factor);
            (1.0 - a) * inv_freq / self.factor + a * inv_freq
        }
    }
}

impl ModelConfig {
    /// `tiny`: 4 layers × 128 wide, 4 query heads over 2 kv heads (head size 32), MLP 344,
    /// vocabulary 512, seed 0.
    pub fn tiny() -> Self {
        ModelConfig {
            vocab_size: 512,
            hidden_size: 128,
            num_layers: 4,
            num_heads: 4,
            num_kv_heads: 2,
            intermediate_size: 344,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            seed: 0,
            rope_scaling: None,
            family: Family::Llama,
            sliding_window: None,
        }
    }

    /// `small`: 8 layers × 512 wide, 8 query heads over 4 kv heads (head size 64), MLP 1376,
    /// vocabulary 2048, seed 0.
    pub fn small() -> Self {
        ModelConfig {
            vocab_size: 2048,
            hidden_size: 512,
            num_layers: 8,
            num_heads: 8,
            num_kv_heads: 4,
            intermediate_size: 1376,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            seed: 0,
            rope_scaling: None,
            family: Family::Llama,
            sliding_window: None,
        }
    }

    /// The preset with this name (`tiny` or `small`).
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "small" => Ok(Self::small()),
            other => Err(ModelError::UnknownPreset(other.to_string())),
        }
    }

    /// Head size `hidden / num_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads.max(1)
    }

    /// The architecture's name in the model digest: the family's `model_type`.
    pub fn architecture(&self) -> &'static str {
        self.family.name()
    }

    /// Whether the query, key and value projections carry biases (Qwen2).
    pub fn qkv_bias(&self) -> bool {
        self.family == Family::Qwen2
    }

    /// The attention window of the model itself (Mistral's `sliding_window`), `usize::MAX`
    /// for full causal attention.
    pub fn window(&self) -> usize {
        self.sliding_window.unwrap_or(usize::MAX)
    }

    /// Which rows of layer `l − 1` a cell of layer `l` depends on: a sliding window of
    /// `sliding_window` positions, or causal attention.
    pub fn dependency(&self) -> veritrace_protocol::Dependency {
        match self.sliding_window {
            Some(w) => veritrace_protocol::Dependency::Window {
                size: u32::try_from(w).unwrap_or(u32::MAX),
            },
            None => veritrace_protocol::Dependency::Causal,
        }
    }

    /// Tensors per layer: 9, and 3 more (the q/k/v biases) for Qwen2.
    fn tensors_per_layer(&self) -> usize {
        if self.qkv_bias() {
            12
        } else {
            9
        }
    }

    /// The config fields of the model digest, in `specs/model-digest.md`'s order:
    /// `vocab_size`, `hidden_size`, `num_hidden_layers`, `num_attention_heads`,
    /// `num_key_value_heads`, `intermediate_size` (integers), `rope_theta`, `rms_norm_eps`
    /// (floats), `rope_type` (`default` or `llama3`) and, for `llama3`, `factor`,
    /// `low_freq_factor`, `high_freq_factor` (floats) and `original_max_position_embeddings`;
    /// for Mistral, `sliding_window` last (0 for none).
    pub fn digest_fields(&self) -> Vec<(&'static str, crate::digest::FieldValue)> {
        use crate::digest::FieldValue::{Float, Int, Str};
        let mut f = vec![
            ("vocab_size", Int(self.vocab_size as u64)),
            ("hidden_size", Int(self.hidden_size as u64)),
            ("num_hidden_layers", Int(self.num_layers as u64)),
            ("num_attention_heads", Int(self.num_heads as u64)),
            ("num_key_value_heads", Int(self.num_kv_heads as u64)),
            ("intermediate_size", Int(self.intermediate_size as u64)),
            ("rope_theta", Float(self.rope_theta)),
            ("rms_norm_eps", Float(self.rms_norm_eps)),
        ];
        match &self.rope_scaling {
            None => f.push(("rope_type", Str("default".into()))),
            Some(s) => f.extend([
                ("rope_type", Str("llama3".into())),
                ("factor", Float(s.factor)),
                ("low_freq_factor", Float(s.low_freq_factor)),
                ("high_freq_factor", Float(s.high_freq_factor)),
                (
                    "original_max_position_embeddings",
                    Int(s.original_max_position_embeddings),
                ),
            ]),
        }
        if self.family == Family::Mistral {
            f.push((
                "sliding_window",
                Int(self.sliding_window.unwrap_or(0) as u64),
            ));
        }
        f
    }

    /// The rotary inverse frequencies `f_i = θ^(−2i/d)`, `i < d/2` (`d` the head size), with
    /// the Llama-3 scaling applied where the configuration has it. Position `p` rotates pair `i`
    /// by the angle `p · f_i` (computed in f64; the CPU and CUDA engines share this).
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let hd = self.head_dim();
        (0..hd / 2)
            .map(|i| {
                let f = self.rope_theta.powf(-((2 * i) as f64) / hd as f64);
                match &self.rope_scaling {
                    None => f,
                    Some(s) => s.scale(f),
                }
            })
            .collect()
    }

    /// Checks that every size is positive, that the heads divide the width into even head sizes,
    /// that the kv heads divide the query heads, and that the constants are finite and positive.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        check_sizes(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("intermediate_size", self.intermediate_size),
        ])?;
        if !self.hidden_size.is_multiple_of(self.num_heads) || !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "{} heads do not split width {} into even head sizes",
                self.num_heads, self.hidden_size
            ));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "{} kv heads do not divide {} query heads",
                self.num_kv_heads, self.num_heads
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return bad(format!("rope_theta {} must exceed 1", self.rope_theta));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad(format!(
                "rms_norm_eps {} must be positive",
                self.rms_norm_eps
            ));
        }
        if let Some(s) = &self.rope_scaling {
            s.validate()?;
        }
        if let Some(w) = self.sliding_window {
            if self.family != Family::Mistral {
                return bad(format!(
                    "sliding_window {w}: only the mistral family has a sliding window"
                ));
            }
            check_sizes(&[("sliding_window", w)])?;
        }
        Ok(())
    }
}

/// Checks that every named size is between 1 and 2^20 (a configuration's sanity bound).
pub(crate) fn check_sizes(sizes: &[(&str, usize)]) -> Result<()> {
    for &(name, v) in sizes {
        if v == 0 {
            return Err(ModelError::InvalidConfig(format!(
                "{name} must be at least 1"
            )));
        }
        if v > 1 << 20 {
            return Err(ModelError::InvalidConfig(format!(
                "{name} = {v} exceeds 2^20"
            )));
        }
    }
    Ok(())
}

/// What a cell is recomputed from: the rows of the layer below that it depends on. For the
/// decoder ([`LlamaModel::recompute_cell`]) those are rows `0..e`, where `e` is the cell's end;
/// for the bidirectional encoder ([`crate::BertModel::recompute_cell`]) every row `0..T`.
#[derive(Debug, Clone, Copy)]
pub enum CellInputs<'a> {
    /// Layer 0: the token ids of those positions.
    Tokens(&'a [u32]),
    /// Layer `l ≥ 1`: those rows of `h_{l−1}`, row-major f32 (`rows · hidden` elements).
    Hidden(&'a [f32]),
}

/// One transformer layer's weights.
#[derive(Debug, Clone)]
struct Layer {
    attn_norm: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    mlp_norm: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    /// Query, key and value biases (Qwen2), `None` for Llama.
    b_qkv: Option<[Tensor; 3]>,
}

/// The decoder: configuration and weights (CPU tensors).
#[derive(Debug, Clone)]
pub struct LlamaModel {
    config: ModelConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    final_norm: Tensor,
    lm_head: Tensor,
    digest: Digest,
    /// Weights prepared per (precision, quantization), shared by clones.
    prepared: WeightCache,
    /// Rotary cosines and sines per position (`half` of each, f32, positions `0..len`), grown
    /// on demand and shared by clones: every table is cut from it, so a position's angles are
    /// computed once, by the one formula of [`Arith::rope_tables`].
    rope: RopeCache,
    /// The checkpoint's tokenizer, when it has a `tokenizer.json` (text input).
    tokenizer: Option<Arc<crate::TextTokenizer>>,
}

/// Kind of a seeded tensor (which scale rule applies).
#[derive(Clone, Copy)]
enum Init {
    Gain,
    Embedding,
    Linear,
}

/// Names, shapes and init rules in the documented order.
fn tensor_specs(c: &ModelConfig) -> Vec<(String, Vec<usize>, Init)> {
    let (d, hd, m, v) = (
        c.hidden_size,
        c.head_dim(),
        c.intermediate_size,
        c.vocab_size,
    );
    let mut specs = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![v, d],
        Init::Embedding,
    )];
    for i in 0..c.num_layers {
        let p = |s: &str| format!("model.layers.{i}.{s}.weight");
        specs.extend([
            (p("input_layernorm"), vec![d], Init::Gain),
            (
                p("self_attn.q_proj"),
                vec![c.num_heads * hd, d],
                Init::Linear,
            ),
            (
                p("self_attn.k_proj"),
                vec![c.num_kv_heads * hd, d],
                Init::Linear,
            ),
            (
                p("self_attn.v_proj"),
                vec![c.num_kv_heads * hd, d],
                Init::Linear,
            ),
            (
                p("self_attn.o_proj"),
                vec![d, c.num_heads * hd],
                Init::Linear,
            ),
            (p("post_attention_layernorm"), vec![d], Init::Gain),
            (p("mlp.gate_proj"), vec![m, d], Init::Linear),
            (p("mlp.up_proj"), vec![m, d], Init::Linear),
            (p("mlp.down_proj"), vec![d, m], Init::Linear),
        ]);
        if c.qkv_bias() {
            let b = |s: &str| format!("model.layers.{i}.self_attn.{s}.bias");
            specs.extend([
                (b("q_proj"), vec![c.num_heads * hd], Init::Embedding),
                (b("k_proj"), vec![c.num_kv_heads * hd], Init::Embedding),
                (b("v_proj"), vec![c.num_kv_heads * hd], Init::Embedding),
            ]);
        }
    }
    specs.push(("model.norm.weight".to_string(), vec![d], Init::Gain));
    specs.push(("lm_head.weight".to_string(), vec![v, d], Init::Linear));
    specs
}

/// How many f32 elements the weights of `c` hold, all tensors together.
pub(crate) fn weight_elements(c: &ModelConfig) -> u64 {
    tensor_specs(c)
        .iter()
        .map(|(_, shape, _)| shape.iter().product::<usize>() as u64)
        .sum()
}

/// The seeded weights, `(name, shape, elements)` in the documented order.
fn seeded_weights(c: &ModelConfig) -> Vec<NamedTensor> {
    use rayon::prelude::*;
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&c.seed.to_le_bytes());
    // One ChaCha20 stream over every element in the documented order, one 32-bit word each:
    // each tensor seeks to its first word, so tensors are drawn in parallel and the values are
    // those of drawing them one after another (the preset digests are known answers).
    let specs = tensor_specs(c);
    let mut starts = Vec::with_capacity(specs.len());
    let mut at = 0u128;
    for (_, shape, _) in &specs {
        starts.push(at);
        at += shape.iter().product::<usize>() as u128;
    }
    specs
        .into_par_iter()
        .zip(starts)
        .map(|((name, shape, init), start)| {
            let n: usize = shape.iter().product();
            let fan_in = *shape.last().unwrap_or(&1) as f64;
            let mut rng = ChaCha20Rng::from_seed(key);
            rng.set_word_pos(start);
            let scale = fan_in.sqrt();
            let mut data = Vec::with_capacity(n);
            // the words in blocks through a small buffer (no second copy of the tensor)
            let mut words = [0u8; 4096];
            while data.len() < n {
                let take = (n - data.len()).min(words.len() / 4);
                rng.fill_bytes(&mut words[..take * 4]);
                data.extend(words[..take * 4].chunks_exact(4).map(|w| {
                    let u = f64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]) >> 8);
                    let r = (u + 0.5) / 16_777_216.0 * 2.0 - 1.0;
                    (match init {
                        Init::Gain => 1.0 + 0.1 * r,
                        Init::Embedding => r,
                        Init::Linear => r / scale,
                    }) as f32
                }));
            }
            (name, shape, data)
        })
        .collect()
}

/// Writes `tensors` as one F32 safetensors file at `path` (created or truncated), in the order
/// given: [`LlamaModel::save`]'s `model.safetensors` and the preset cache's files.
pub(crate) fn write_weights(tensors: &[NamedTensor], path: &Path) -> Result<()> {
    let bad = |e: safetensors::SafeTensorError| ModelError::Checkpoint {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    // The elements' little-endian bytes: the values' own bytes on a little-endian machine.
    let bytes: Vec<std::borrow::Cow<'_, [u8]>> = tensors
        .iter()
        .map(|(_, _, d)| {
            if cfg!(target_endian = "little") {
                std::borrow::Cow::Borrowed(bytemuck::cast_slice::<f32, u8>(d))
            } else {
                std::borrow::Cow::Owned(d.iter().flat_map(|v| v.to_le_bytes()).collect())
            }
        })
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map(|v| (name.as_str(), v))
                .map_err(bad)
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, path).map_err(bad)
}

/// The engine-independent digest ([`crate::digest`], `specs/model-digest.md`): architecture
/// `llama`, the fields of [`ModelConfig::digest_fields`], every tensor (the head included when
/// tied). The seed is not a field: it acts only through the weights.
fn digest_of(config: &ModelConfig, tensors: &[NamedTensor]) -> Digest {
    crate::digest::model_digest(config.architecture(), &config.digest_fields(), tensors)
}

impl LlamaModel {
    /// The model of `config` with its seeded weights.
    pub fn new(config: ModelConfig) -> Result<Self> {
        config.validate()?;
        let tensors = seeded_weights(&config);
        Self::from_tensors(config, tensors)
    }

    /// A model from its configuration and its weights, `(name, shape, elements)` with the
    /// Hugging Face Llama names of the [module docs](self), in any order. Every tensor must be
    /// present with its documented shape and finite values; extra tensors are refused.
    pub fn from_tensors(config: ModelConfig, tensors: Vec<NamedTensor>) -> Result<Self> {
        config.validate()?;
        let mut by_name: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> =
            std::collections::HashMap::new();
        for (name, shape, data) in tensors {
            if by_name.insert(name.clone(), (shape, data)).is_some() {
                return Err(ModelError::InvalidConfig(format!(
                    "tensor {name} given twice"
                )));
            }
        }
        // Too few tensors for the layer count (a config claiming 10^6 layers over a small file):
        // name the first missing one from the first layers alone, before building every
        // layer's names. Fewer than 1 + 9k tensors leave one of the first 1 + 9k names missing.
        let per_layer = config.tensors_per_layer();
        let expected = per_layer * config.num_layers + 3;
        if by_name.len() < expected {
            let k = (by_name.len() / per_layer + 1).min(config.num_layers);
            let probe = ModelConfig {
                num_layers: k,
                ..config.clone()
            };
            if let Some((name, _, _)) = tensor_specs(&probe)
                .into_iter()
                .find(|(n, _, _)| !by_name.contains_key(n))
            {
                return Err(ModelError::InvalidConfig(format!(
                    "tensor {name} is missing ({} tensors given, {expected} expected for {} layers)",
                    by_name.len(),
                    config.num_layers
                )));
            }
        }
        let mut ordered = Vec::new();
        for (name, shape, _) in tensor_specs(&config) {
            let (got, data) = by_name
                .remove(&name)
                .ok_or_else(|| ModelError::InvalidConfig(format!("tensor {name} is missing")))?;
            let n: usize = shape.iter().product();
            if got != shape || data.len() != n {
                return Err(ModelError::InvalidConfig(format!(
                    "tensor {name} has shape {got:?} ({} elements), expected {shape:?}",
                    data.len()
                )));
            }
            if let Some(index) = first_non_finite(&data) {
                return Err(ModelError::NonFinite {
                    what: "model weight",
                    index,
                });
            }
            ordered.push((name, shape, data));
        }
        if let Some(extra) = by_name.keys().min() {
            return Err(ModelError::InvalidConfig(format!(
                "unexpected tensor {extra} ({} extra)",
                by_name.len()
            )));
        }
        let digest = digest_of(&config, &ordered);
        let mut it = ordered
            .into_iter()
            .map(|(_, shape, data)| Tensor::from_vec(data, shape, &Device::Cpu));
        let mut next = || -> Result<Tensor> {
            Ok(it
                .next()
                .ok_or_else(|| ModelError::InvalidConfig("tensor list ended early".into()))??)
        };
        let embed = next()?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for _ in 0..config.num_layers {
            layers.push(Layer {
                attn_norm: next()?,
                wq: next()?,
                wk: next()?,
                wv: next()?,
                wo: next()?,
                mlp_norm: next()?,
                w_gate: next()?,
                w_up: next()?,
                w_down: next()?,
                b_qkv: if config.qkv_bias() {
                    Some([next()?, next()?, next()?])
                } else {
                    None
                },
            });
        }
        let final_norm = next()?;
        let lm_head = next()?;
        Ok(LlamaModel {
            config,
            embed,
            layers,
            final_norm,
            lm_head,
            digest,
            prepared: WeightCache::default(),
            rope: RopeCache::default(),
            tokenizer: None,
        })
    }

    /// Loads a Llama-style checkpoint directory: `config.json` (Hugging Face `LlamaConfig`
    /// fields, see [`HfLlamaConfig`]) and the weights in `model.safetensors`, or in the shards
    /// listed by `model.safetensors.index.json`. F32, F16 and BF16 tensors are read (and held
    /// as f32); a missing `lm_head.weight` with `tie_word_embeddings` reuses the embedding.
    /// The model's [`LlamaModel::digest`] covers the configuration (with `seed` 0) and the
    /// weights as loaded.
    pub fn load(dir: &Path) -> Result<Self> {
        let hf = HfLlamaConfig::read(&dir.join("config.json"))?;
        let config = hf.to_config()?;
        let files = checkpoint_files(dir)?;
        let mut tensors = Vec::new();
        for file in &files {
            tensors.extend(read_safetensors(file)?);
        }
        if hf.tie_word_embeddings && !tensors.iter().any(|(n, _, _)| n == "lm_head.weight") {
            if let Some((_, shape, data)) = tensors
                .iter()
                .find(|(n, _, _)| n == "model.embed_tokens.weight")
                .cloned()
            {
                tensors.push(("lm_head.weight".into(), shape, data));
            }
        }
        // Rotary inverse-frequency buffers that some exports carry are derived, not weights.
        tensors.retain(|(n, _, _)| !n.ends_with("rotary_emb.inv_freq"));
        let mut model =
            Self::from_tensors(config, tensors).map_err(|e| ModelError::Checkpoint {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?;
        model.tokenizer = crate::TextTokenizer::from_dir(dir)?.map(Arc::new);
        Ok(model)
    }

    /// The checkpoint's tokenizer (`tokenizer.json`), if it has one; the seeded presets have
    /// none.
    pub fn tokenizer(&self) -> Option<&crate::TextTokenizer> {
        self.tokenizer.as_deref()
    }

    /// Writes the model as a checkpoint directory [`LlamaModel::load`] reads back bit for bit:
    /// `config.json` (Hugging Face field names) and `model.safetensors` (F32, untied head).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| ModelError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let config_path = dir.join("config.json");
        let json = serde_json::to_string_pretty(&HfLlamaConfig::from_config(&self.config))
            .map_err(|e| ModelError::InvalidConfig(e.to_string()))?;
        std::fs::write(&config_path, json).map_err(io(&config_path))?;
        write_weights(&self.named_tensors()?, &dir.join("model.safetensors"))
    }

    /// The model of a named preset (`tiny` or `small`), served from the preset cache when it
    /// holds a copy with the preset's known digest ([`crate::preset_cache`]: the directory of
    /// [`crate::preset_cache::cache_dir`], `VERITRACE_CACHE_DIR=off` for none), else built from
    /// its seed (and then cached). The model is the same either way.
    pub fn preset(name: &str) -> Result<Self> {
        Self::preset_cached(name, crate::preset_cache::cache_dir().as_deref())
    }

    /// [`LlamaModel::preset`] with the cache directory given: `None` builds the seeded weights
    /// and caches nothing. With a directory, a cached file
    /// ([`crate::preset_cache::cache_file`]) is used only if it loads as this preset with
    /// exactly its known digest ([`crate::preset_cache::known_digest`]); anything else (missing,
    /// unreadable, truncated, other values) is ignored, the weights are drawn from the seed and
    /// the file is rewritten atomically. Failing to write the cache is ignored too.
    ///
    /// # Errors
    /// [`ModelError::UnknownPreset`]; never because of the cache.
    pub fn preset_cached(name: &str, cache_dir: Option<&Path>) -> Result<Self> {
        let config = ModelConfig::preset(name)?;
        let (Some(path), Some(known)) = (
            cache_dir.and_then(|dir| crate::preset_cache::cache_file(dir, name)),
            crate::preset_cache::known_digest(name),
        ) else {
            return Self::new(config);
        };
        if let Some(model) = crate::preset_cache::load(&path, &config, known) {
            return Ok(model);
        }
        config.validate()?;
        let tensors = seeded_weights(&config);
        // Written beside the target now, put in place only once the digest is the known one.
        let staged = crate::preset_cache::stage(&path, &tensors);
        let model = Self::from_tensors(config, tensors)?;
        if model.digest == known {
            if let Some(staged) = staged {
                // A cache that cannot be written (read-only, disk full) only costs time.
                let _ = staged.persist(0o644, true);
            }
        }
        Ok(model)
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The model digest (see the [module docs](self)).
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Every weight tensor as `(name, shape, row-major f32 elements)`, in the documented order.
    pub fn named_tensors(&self) -> Result<Vec<NamedTensor>> {
        let mut all = vec![&self.embed];
        for l in &self.layers {
            all.extend([
                &l.attn_norm,
                &l.wq,
                &l.wk,
                &l.wv,
                &l.wo,
                &l.mlp_norm,
                &l.w_gate,
                &l.w_up,
                &l.w_down,
            ]);
            if let Some(b) = &l.b_qkv {
                all.extend(b.iter());
            }
        }
        all.extend([&self.final_norm, &self.lm_head]);
        tensor_specs(&self.config)
            .into_iter()
            .zip(all)
            .map(|((name, shape, _), t)| Ok((name, shape, t.flatten_all()?.to_vec1::<f32>()?)))
            .collect()
    }

    /// Checks that `setup` is valid and fits this model (a skipped or reused layer exists).
    pub(crate) fn check_setup(&self, setup: &Setup) -> Result<()> {
        setup.validate()?;
        let layers = self.config.num_layers;
        for (what, l) in [("skip", setup.skip), ("reuse", setup.reuse)] {
            if let Some(l) = l {
                if l > layers {
                    return Err(ModelError::UnsupportedSetup(format!(
                        "{what}={l}, but the model has {layers} layers"
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if let Some((position, &token)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= self.config.vocab_size)
        {
            return Err(ModelError::TokenOutOfRange {
                position,
                token,
                vocab: self.config.vocab_size,
            });
        }
        Ok(())
    }

    /// The embedding rows (layer 0) of `tokens`, row-major f32, copied exactly from the table.
    pub fn embed_tokens(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let ids = Tensor::from_slice(tokens, tokens.len(), &Device::Cpu)?;
        Ok(self
            .embed
            .embedding(&ids)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// The full trace `h_0 … h_L` of `tokens` under `setup`, computed in tiles of `tile` rows.
    pub fn trace(&self, setup: &Setup, tokens: &[u32], tile: usize) -> Result<crate::Trace> {
        self.trace_with(setup, tokens, tile, Capture::default())
    }

    /// [`LlamaModel::trace`] with optional extra captures (the attention keys of every layer).
    pub fn trace_with(
        &self,
        setup: &Setup,
        tokens: &[u32],
        tile: usize,
        capture: Capture,
    ) -> Result<crate::Trace> {
        self.run(setup, tokens, tile, capture, true, None)
    }

    /// [`LlamaModel::trace`] with the inputs and outputs of every linear map of every layer
    /// ([`SubLayers`], one per layer `1..=L`), for algebraic checks of a layer's linear maps
    /// (issue 16). The hidden states are bitwise those of [`LlamaModel::trace`]: capturing
    /// copies the values the forward computes and changes no arithmetic. A setup that skips or
    /// reuses a layer is refused (that layer computes no linear map).
    pub fn trace_sublayers(
        &self,
        setup: &Setup,
        tokens: &[u32],
        tile: usize,
    ) -> Result<(crate::Trace, Vec<SubLayers>)> {
        if setup.skip.is_some() || setup.reuse.is_some() {
            return Err(ModelError::UnsupportedSetup(format!(
                "{setup}: a skipped or reused layer computes no linear map to capture"
            )));
        }
        let mut sub = Vec::with_capacity(self.config.num_layers);
        let trace = self.run(
            setup,
            tokens,
            tile,
            Capture::default(),
            true,
            Some(&mut sub),
        )?;
        Ok((trace, sub))
    }

    /// The nonlinear parts of cell `(layer, chunk)` (tile `tile`, `layer ≥ 1`) recomputed from
    /// claimed linear outputs, for a verifier that checks the linear maps themselves
    /// algebraically (Freivalds, issue 16) and recomputes only the rest: the attention norm of
    /// the input rows, the attention of the claimed queries over the claimed keys and values of
    /// positions `0..e` (the rotary embedding is applied here), the residual adds, the MLP norm
    /// and SwiGLU. `h_in`, `k`, `v` hold rows `0..e` of `h_{layer−1}` and of the layer's key and
    /// value projections, with `chunk·tile < e ≤ (chunk + 1)·tile`; `cell` holds the cell's
    /// rows of `q`, `o`, `gate`, `up` and `down` (its other fields are not read). Compare the
    /// result with the claimed `normed`, `attn`, `mlp_in`, `act` and `h_l` rows.
    ///
    /// # Errors
    /// A layer or chunk out of range, rows of the wrong length, non-finite values, a setup that
    /// skips or reuses a layer or decodes row by row, or a setup this model refuses.
    #[allow(clippy::too_many_arguments)]
    pub fn recompute_nonlinear(
        &self,
        setup: &Setup,
        tile: usize,
        layer: usize,
        chunk: usize,
        h_in: &[f32],
        k: &[f32],
        v: &[f32],
        cell: &SubLayers,
    ) -> Result<Nonlinear> {
        let d = self.config.hidden_size;
        if !h_in.len().is_multiple_of(d) {
            return Err(ModelError::WrongLength {
                what: "input rows (elements)",
                expected: format!("a multiple of the hidden size {d}"),
                got: h_in.len(),
            });
        }
        let e = h_in.len() / d;
        let cell_rows = &h_in[(chunk.saturating_mul(tile).min(e)) * d..];
        self.nonlinear_of(
            setup,
            (tile, layer, chunk, e),
            cell_rows,
            ContextKeys::Dense { k, v },
            cell,
            true,
            None,
        )
    }

    /// [`LlamaModel::recompute_nonlinear`] of the cell's input rows `h_cell` (rows
    /// `chunk·tile..e` of `h_{layer−1}`) over the context's keys and values `kv`; with
    /// `scan = false` for a caller that has already found every input finite (the algebraic
    /// check: its Freivalds sums read the keys, values and the cell's linear outputs, and the
    /// attention norms read `h_cell`), so the inputs are not scanned again. Lengths and ranges
    /// are checked either way. With `heads` (distinct query heads, ascending), the returned
    /// `attn` holds only those heads' columns side by side (`[rows, heads.len()·hd]`), each
    /// bitwise the full attention's: only those heads' scores, softmax and weighted values are
    /// computed (the invariant kernels also rope only their key-value heads' keys). Keys and
    /// values of only the heads' key-value heads ([`ContextKeys::Heads`]) need `heads`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn nonlinear_of(
        &self,
        setup: &Setup,
        (tile, layer, chunk, e): (usize, usize, usize, usize),
        h_cell: &[f32],
        kv: ContextKeys<'_>,
        cell: &SubLayers,
        scan: bool,
        heads: Option<&[usize]>,
    ) -> Result<Nonlinear> {
        self.check_setup(setup)?;
        crate::ops::check_tile(tile)?;
        if setup.skip.is_some() || setup.reuse.is_some() {
            return Err(ModelError::UnsupportedSetup(format!(
                "{setup}: a skipped or reused layer computes no linear map"
            )));
        }
        let c = &self.config;
        if layer == 0 || layer > c.num_layers {
            return Err(ModelError::InvalidArgument(format!(
                "layer {layer} is not a transformer layer of this model (1..={})",
                c.num_layers
            )));
        }
        let (d, hd) = (c.hidden_size, c.head_dim());
        let (qd, m) = (c.num_heads * hd, c.intermediate_size);
        let start = chunk
            .checked_mul(tile)
            .ok_or_else(|| ModelError::InvalidArgument("chunk index overflows".into()))?;
        if e <= start || e > start.saturating_add(tile) {
            return Err(ModelError::WrongLength {
                what: "input rows",
                expected: format!(
                    "rows 0..e with {start} < e <= {} for chunk {chunk} of size {tile}",
                    start + tile
                ),
                got: e,
            });
        }
        let rows = e - start;
        if let Some(hs) = heads {
            check_sampled_heads(hs, c.num_heads).map_err(ModelError::InvalidArgument)?;
        }
        let (k, v, kv_width) = match kv {
            ContextKeys::Dense { k, v } => (k, v, c.num_kv_heads * hd),
            ContextKeys::Heads { groups, k, v } => {
                let want = heads.map(|hs| kv_groups(hs, c.num_heads / c.num_kv_heads.max(1)));
                if want.as_deref() != Some(groups) {
                    return Err(ModelError::InvalidArgument(format!(
                        "key-value heads {groups:?} are not those the sampled query heads {:?} \
                         read",
                        heads.unwrap_or(&[])
                    )));
                }
                (k, v, groups.len() * hd)
            }
        };
        for (what, got, want) in [
            ("input rows (elements)", h_cell.len(), rows * d),
            ("key rows (elements)", k.len(), e * kv_width),
            ("value rows (elements)", v.len(), e * kv_width),
            ("query rows (elements)", cell.q.len(), rows * qd),
            ("output-projection rows (elements)", cell.o.len(), rows * d),
            ("gate rows (elements)", cell.gate.len(), rows * m),
            ("up rows (elements)", cell.up.len(), rows * m),
            ("down rows (elements)", cell.down.len(), rows * d),
        ] {
            if got != want {
                return Err(ModelError::WrongLength {
                    what,
                    expected: want.to_string(),
                    got,
                });
            }
        }
        for (what, x) in [
            ("input rows", h_cell),
            ("key rows", k),
            ("value rows", v),
            ("query rows", &cell.q[..]),
            ("output-projection rows", &cell.o[..]),
            ("gate rows", &cell.gate[..]),
            ("up rows", &cell.up[..]),
            ("down rows", &cell.down[..]),
        ] {
            if !scan {
                break;
            }
            if let Some(index) = first_non_finite(x) {
                return Err(ModelError::NonFinite { what, index });
            }
        }
        let arith = self.arith(setup)?;
        if setup.kernels == Kernels::Invariant {
            return arith.inv_nonlinear(layer - 1, h_cell, start, kv, cell, heads);
        }
        let (blk, _) = arith.blocks(tile, 0..e);
        if blk != tile {
            return Err(ModelError::UnsupportedSetup(format!(
                "{setup} computes in blocks of {blk} rows, not the tile {tile}"
            )));
        }
        arith.nonlinear_block(layer - 1, chunk, blk, e, h_cell, kv, cell, heads)
    }
    /// The attention norms `RMSNorm(h_{layer−1})` of rows `0..e` of the layer's input (`h_in`,
    /// row-major `[e, hidden]`), all rows in one pass (the norm is row by row, so this is bitwise
    /// the forward's tiles of `tile` rows): the `normed` rows [`LlamaModel::trace_sublayers`]
    /// records. A verifier checks the claimed
    /// inputs of the context's key and value projections with it (their provenance).
    ///
    /// # Errors
    /// A layer out of range, rows of the wrong length or non-finite, a setup this model refuses.
    pub fn attention_norms(
        &self,
        setup: &Setup,
        tile: usize,
        layer: usize,
        h_in: &[f32],
    ) -> Result<Vec<f32>> {
        self.check_setup(setup)?;
        crate::ops::check_tile(tile)?;
        let d = self.config.hidden_size;
        if layer == 0 || layer > self.config.num_layers {
            return Err(ModelError::InvalidArgument(format!(
                "layer {layer} is not a transformer layer of this model (1..={})",
                self.config.num_layers
            )));
        }
        if h_in.is_empty() || !h_in.len().is_multiple_of(d) {
            return Err(ModelError::WrongLength {
                what: "input rows (elements)",
                expected: format!("a positive multiple of the hidden size {d}"),
                got: h_in.len(),
            });
        }
        if let Some(index) = first_non_finite(h_in) {
            return Err(ModelError::NonFinite {
                what: "input rows",
                index,
            });
        }
        let e = h_in.len() / d;
        let arith = self.arith(setup)?;
        if setup.kernels == Kernels::Invariant {
            let p = arith.packed(layer - 1)?;
            let eps = self.config.rms_norm_eps as f32;
            return Ok(arith.st(inv::rms_norm_rows(h_in, d, &p.attn_norm, eps)));
        }
        let w = &arith.w.layers[layer - 1];
        // RMSNorm is row by row (each row's mean of squares summed alone), so all rows at once
        // are bitwise the forward's block-by-block rows
        let x = arith.cast(&Tensor::from_slice(h_in, (e, d), &Device::Cpu)?)?;
        let out = arith
            .rms_norm(&x, &w.attn_norm)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(out)
    }

    /// The same forward as [`LlamaModel::trace`] with no trace kept: each hidden state is
    /// dropped once the layers that read it are done, and only `h_L` is returned (row-major
    /// f32 `[tokens, hidden]`, bitwise the trace's last layer). The baseline against which the
    /// cost of capturing a trace is measured.
    pub fn forward(&self, setup: &Setup, tokens: &[u32], tile: usize) -> Result<Vec<f32>> {
        let mut t = self.run(setup, tokens, tile, Capture::default(), false, None)?;
        Ok(t.layers.pop().unwrap_or_default())
    }

    fn run(
        &self,
        setup: &Setup,
        tokens: &[u32],
        tile: usize,
        capture: Capture,
        keep: bool,
        mut sublayers: Option<&mut Vec<SubLayers>>,
    ) -> Result<crate::Trace> {
        self.check_setup(setup)?;
        if tokens.is_empty() {
            return Err(ModelError::InvalidArgument("no tokens to run".into()));
        }
        crate::ops::check_tile(tile)?;
        if setup.kernels == Kernels::Invariant {
            return self.run_invariant(setup, tokens, capture, keep, sublayers);
        }
        let n = tokens.len();
        let arith = self.arith(setup)?;
        let (blk, blocks) = arith.blocks(tile, 0..n);
        let mut layers = Vec::with_capacity(self.config.num_layers + 1);
        let mut keys = Vec::new();
        layers.push(self.embed_rows(&arith, tokens)?);
        for l in 1..=self.config.num_layers {
            let x = &layers[l - 1];
            let (y, k) = if setup.skip == Some(l) || setup.reuse == Some(l) {
                // The layer is not computed; its keys are what it would have attended with.
                let y = if setup.skip == Some(l) {
                    x.clone()
                } else {
                    arith.reuse_update(x, &layers[l - 2])?
                };
                let k = if capture.keys {
                    Some(arith.keys_of(l - 1, x, n, blk, blocks.end)?)
                } else {
                    None
                };
                (y, k)
            } else {
                let mut sub = sublayers.as_ref().map(|_| SubLayers::default());
                let out = arith.layer_blocks(
                    l - 1,
                    x,
                    n,
                    blk,
                    blocks.clone(),
                    capture.keys,
                    sub.as_mut(),
                )?;
                if let (Some(all), Some(sub)) = (sublayers.as_deref_mut(), sub) {
                    all.push(sub);
                }
                out
            };
            layers.push(y);
            keys.extend(k);
            if !keep && l >= 2 {
                // h_{l-2} is read by nothing after layer l (a reuse reads two layers back).
                layers[l - 2] = Vec::new();
            }
        }
        Ok(crate::Trace {
            tokens: n,
            hidden: self.config.hidden_size,
            layers,
            keys,
        })
    }

    /// The query, key and value biases of layer `layer` (1-based), f32, for a family that has
    /// them (Qwen2); `None` otherwise. A layer out of range is an error.
    pub fn qkv_biases(&self, layer: usize) -> Result<Option<[Vec<f32>; 3]>> {
        let l = layer
            .checked_sub(1)
            .and_then(|i| self.layers.get(i))
            .ok_or_else(|| {
                ModelError::InvalidArgument(format!(
                    "layer {layer} is not a transformer layer of this model (1..={})",
                    self.config.num_layers
                ))
            })?;
        let Some([q, k, v]) = &l.b_qkv else {
            return Ok(None);
        };
        let f = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        Ok(Some([f(q)?, f(k)?, f(v)?]))
    }

    /// [`LlamaModel::recompute_cell`] of a cell of layer `layer ≥ 1` from the rows `0..e` of
    /// `h_{layer−1}` (`h_in`), with the cell's sub-layer values ([`SubLayers`], every field over
    /// the cell's rows `chunk·tile .. e`) captured as the forward computes them: what a prover
    /// that computes this cell under `setup` from these rows commits at the sub-layer trace
    /// level (issue 16). Bitwise the values [`LlamaModel::trace_sublayers`] captures for those
    /// rows when the rows below are the forward's. A layer that `setup` skips computes no
    /// linear map: its rows are `h_in`'s and its sub-layer values all zero (what a skipping
    /// prover has to commit unless it computes the layer); a reused layer is refused.
    pub fn recompute_cell_sublayers(
        &self,
        setup: &Setup,
        tile: usize,
        layer: usize,
        chunk: usize,
        h_in: &[f32],
    ) -> Result<(Vec<f32>, SubLayers)> {
        if layer == 0 {
            return Err(ModelError::InvalidArgument(
                "layer 0 (the embeddings) has no sub-layer values".into(),
            ));
        }
        if setup.skip == Some(layer) || setup.reuse == Some(layer) {
            // validated (and a reuse refused) by the plain recompute
            let rows = self.recompute_cell(setup, tile, layer, chunk, CellInputs::Hidden(h_in))?;
            let d = self.config.hidden_size;
            let (start, e) = (chunk * tile, h_in.len() / d);
            let c = &self.config;
            let (hd, r) = (c.head_dim(), e - start);
            let z = |w: usize| vec![0f32; r * w];
            let sub = SubLayers {
                normed: z(d),
                q: z(c.num_heads * hd),
                k: z(c.num_kv_heads * hd),
                v: z(c.num_kv_heads * hd),
                attn: z(c.num_heads * hd),
                o: z(d),
                mlp_in: z(d),
                gate: z(c.intermediate_size),
                up: z(c.intermediate_size),
                act: z(c.intermediate_size),
                down: z(d),
            };
            return Ok((rows, sub));
        }
        // the checks of `recompute_cell`, then the same layer routine with the capture on
        let (start, e) =
            self.check_cell_inputs(setup, tile, layer, chunk, &CellInputs::Hidden(h_in))?;
        if let Some(index) = first_non_finite(h_in) {
            return Err(ModelError::NonFinite {
                what: "input rows",
                index,
            });
        }
        let arith = self.arith(setup)?;
        let mut sub = SubLayers::default();
        if setup.kernels == Kernels::Invariant {
            let d = self.config.hidden_size;
            let mut cache = KvRows::default();
            arith.inv_kv(layer - 1, &h_in[..start * d], 0, &mut cache)?;
            let rows = arith.inv_layer(
                layer - 1,
                &h_in[start * d..],
                start,
                &mut cache,
                Some(&mut sub),
            )?;
            return Ok((rows, sub));
        }
        let (blk, blocks) = arith.blocks(tile, start..e);
        let (rows, _) =
            arith.layer_blocks(layer - 1, h_in, e, blk, blocks, false, Some(&mut sub))?;
        Ok((rows, sub))
    }

    /// The layers `1..=L` over new rows at positions `r0..` by the invariant kernels, from their
    /// layer-0 rows `h0`, with one KV cache per layer (rows `0..r0` on entry, extended): every
    /// layer's new rows, `h0` first. Skipped and reused layers as in the candle path (a skipped
    /// or reused layer's cache holds the keys it would have attended with).
    fn inv_rows(
        &self,
        arith: &Arith<'_>,
        h0: Vec<f32>,
        r0: usize,
        caches: &mut [KvRows],
        mut subs: Option<&mut Vec<SubLayers>>,
    ) -> Result<Vec<Vec<f32>>> {
        let setup = arith.setup;
        let mut layers = Vec::with_capacity(self.config.num_layers + 1);
        layers.push(h0);
        for l in 1..=self.config.num_layers {
            let x = &layers[l - 1];
            let y = if setup.skip == Some(l) || setup.reuse == Some(l) {
                arith.inv_kv(l - 1, x, r0, &mut caches[l - 1])?;
                if setup.skip == Some(l) {
                    x.clone()
                } else {
                    arith.reuse_update(x, &layers[l - 2])?
                }
            } else {
                let mut sub = subs.as_ref().map(|_| SubLayers::default());
                let y = arith.inv_layer(l - 1, x, r0, &mut caches[l - 1], sub.as_mut())?;
                if let (Some(all), Some(sub)) = (subs.as_deref_mut(), sub) {
                    all.push(sub);
                }
                y
            };
            layers.push(y);
        }
        Ok(layers)
    }

    /// [`LlamaModel::run`] under `kernels=invariant`: every layer over all rows at once.
    fn run_invariant(
        &self,
        setup: &Setup,
        tokens: &[u32],
        capture: Capture,
        keep: bool,
        sublayers: Option<&mut Vec<SubLayers>>,
    ) -> Result<crate::Trace> {
        let arith = self.arith(setup)?;
        let mut caches = vec![KvRows::default(); self.config.num_layers];
        let h0 = self.embed_rows(&arith, tokens)?;
        let mut layers = self.inv_rows(&arith, h0, 0, &mut caches, sublayers)?;
        let keys = if capture.keys {
            caches.into_iter().map(|c| c.k).collect()
        } else {
            Vec::new()
        };
        if !keep {
            let last = layers.pop().unwrap_or_default();
            layers = vec![Vec::new(); self.config.num_layers];
            layers.push(last);
        }
        Ok(crate::Trace {
            tokens: tokens.len(),
            hidden: self.config.hidden_size,
            layers,
            keys,
        })
    }

    /// [`LlamaModel::generate`] under `kernels=invariant`: the prompt in one pass, then each
    /// token as one row per layer over the KV caches.
    fn generate_invariant(&self, setup: &Setup, prompt: &[u32], n_out: usize) -> Result<Vec<u32>> {
        let arith = self.arith(setup)?;
        let d = self.config.hidden_size;
        let mut caches = vec![KvRows::default(); self.config.num_layers];
        let layers = self.inv_rows(
            &arith,
            self.embed_rows(&arith, prompt)?,
            0,
            &mut caches,
            None,
        )?;
        let mut last = layers
            .last()
            .map(|h| h[h.len() - d..].to_vec())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(n_out);
        for i in 0..n_out {
            let t = self.next_token_from_row(setup, &last)?;
            out.push(t);
            if i + 1 == n_out {
                break;
            }
            let h0 = self.embed_rows(&arith, &[t])?;
            let rows = self.inv_rows(&arith, h0, prompt.len() + i, &mut caches, None)?;
            last = rows.last().cloned().unwrap_or_default();
        }
        Ok(out)
    }

    /// The checks every single-cell computation makes before any arithmetic: the setup runs on
    /// this model, the tile is valid, the layer exists, and `inputs` hold rows `0..e` (whole
    /// rows of the hidden size) with `chunk·tile < e ≤ (chunk + 1)·tile`. Returns
    /// `(chunk·tile, e)`.
    fn check_cell_inputs(
        &self,
        setup: &Setup,
        tile: usize,
        layer: usize,
        chunk: usize,
        inputs: &CellInputs<'_>,
    ) -> Result<(usize, usize)> {
        self.check_setup(setup)?;
        crate::ops::check_tile(tile)?;
        if layer > self.config.num_layers {
            return Err(ModelError::InvalidArgument(format!(
                "layer {layer} is beyond the model's {} layers",
                self.config.num_layers
            )));
        }
        let d = self.config.hidden_size;
        let start = chunk
            .checked_mul(tile)
            .ok_or_else(|| ModelError::InvalidArgument("chunk index overflows".into()))?;
        let rows = match inputs {
            CellInputs::Tokens(t) => t.len(),
            CellInputs::Hidden(h) => {
                if !h.len().is_multiple_of(d) {
                    return Err(ModelError::WrongLength {
                        what: "input rows (elements)",
                        expected: format!("a multiple of the hidden size {d}"),
                        got: h.len(),
                    });
                }
                h.len() / d
            }
        };
        if rows <= start || rows > start.saturating_add(tile) {
            return Err(ModelError::WrongLength {
                what: "input rows",
                expected: format!(
                    "rows 0..e with {start} < e <= {} for chunk {chunk} of size {tile}",
                    start + tile
                ),
                got: rows,
            });
        }
        Ok((start, rows))
    }

    /// Recomputes the cell `(layer, chunk)` with chunk size `tile`: the rows
    /// `chunk·tile .. e` of `h_layer`, from the rows `0..e` of the layer below (or, for layer 0,
    /// the tokens of positions `0..e`), where `e = inputs' row count` must satisfy
    /// `chunk·tile < e ≤ (chunk + 1)·tile`. Bitwise identical to those rows of
    /// [`LlamaModel::trace`] of any sequence that starts with these positions. A layer that
    /// `setup` reuses cannot be recomputed from one layer's rows and is refused.
    pub fn recompute_cell(
        &self,
        setup: &Setup,
        tile: usize,
        layer: usize,
        chunk: usize,
        inputs: CellInputs<'_>,
    ) -> Result<Vec<f32>> {
        let (start, rows) = self.check_cell_inputs(setup, tile, layer, chunk, &inputs)?;
        let d = self.config.hidden_size;
        let arith = self.arith(setup)?;
        match (layer, inputs) {
            (0, CellInputs::Tokens(t)) => self.embed_rows(&arith, &t[start..]),
            (0, CellInputs::Hidden(_)) => Err(ModelError::InvalidArgument(
                "layer 0 is recomputed from tokens, not hidden rows".into(),
            )),
            (_, CellInputs::Tokens(_)) => Err(ModelError::InvalidArgument(format!(
                "layer {layer} is recomputed from the rows of layer {}, not tokens",
                layer - 1
            ))),
            (l, CellInputs::Hidden(h)) => {
                if let Some(index) = first_non_finite(h) {
                    return Err(ModelError::NonFinite {
                        what: "input rows",
                        index,
                    });
                }
                if setup.skip == Some(l) {
                    return Ok(h[start * d..].to_vec());
                }
                if setup.reuse == Some(l) {
                    return Err(ModelError::UnsupportedSetup(format!(
                        "{setup}: layer {l} reuses layer {}'s update and cannot be recomputed \
                         from the rows of one layer",
                        l - 1
                    )));
                }
                if setup.kernels == Kernels::Invariant {
                    // the context's keys and values, then the cell's rows over them
                    let mut cache = KvRows::default();
                    arith.inv_kv(l - 1, &h[..start * d], 0, &mut cache)?;
                    return arith.inv_layer(l - 1, &h[start * d..], start, &mut cache, None);
                }
                let (blk, blocks) = arith.blocks(tile, start..rows);
                Ok(arith
                    .layer_blocks(l - 1, h, rows, blk, blocks, false, None)?
                    .0)
            }
        }
    }

    /// The logits of one last-layer row: final RMSNorm, LM head (a `[1, hidden]` matmul, the
    /// same shape wherever it is called), as f32.
    pub fn logits_from_row(&self, setup: &Setup, row: &[f32]) -> Result<Vec<f32>> {
        self.check_setup(setup)?;
        let d = self.config.hidden_size;
        if row.len() != d {
            return Err(ModelError::WrongLength {
                what: "last-layer row",
                expected: d.to_string(),
                got: row.len(),
            });
        }
        if let Some(index) = first_non_finite(row) {
            return Err(ModelError::NonFinite {
                what: "last-layer row",
                index,
            });
        }
        let arith = self.arith(setup)?;
        let x = arith.cast(&Tensor::from_slice(row, (1, d), &Device::Cpu)?)?;
        let n = arith.rms_norm(&x, &self.final_norm)?;
        Ok(arith
            .linear(&n, &arith.w.lm_head)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// Whether `claimed` is a greedy prediction from `row` (a last-layer row) that `setup`'s
    /// rounding cannot tell from the argmax `top` of [`LlamaModel::logits_from_row`]:
    /// `z_top − z_claimed ≤ B_top + B_claimed` (always true for `claimed = top`), with
    ///
    /// `B_j = 2 · (u·|z_j| + (3u + 2γ_d)·a_j) · (1 + 2^−10)`, `a_j = Σ_i |W_ji|·|n_i|`,
    ///
    /// `W` the LM head as the setup prepares it, `n` the final norm of `row` (computed here in
    /// f64), `u` the setup precision's unit roundoff and `γ_d = d·2^−24 / (1 − d·2^−24)` the
    /// bound of a length-`d` f32 accumulation in any order. Each of the two engines (the
    /// prover's, this one) computes `n` with a relative error of at most `2u + γ_d/2` per
    /// element (the norm's f32 statistics, the product rounded to the precision, its gain
    /// possibly rounded too: `3u` in all), accumulates `W n` in f32 (`γ_d · a_j`) and rounds
    /// the logit to the precision (`u·|z_j|`); two such engines differ on logit `j` by at
    /// most `B_j` (the factor `1 + 2^−10` covers the second-order terms). So a prover whose
    /// greedy choice differs from this argmax only by such rounding passes.
    ///
    /// # Errors
    /// As [`LlamaModel::logits_from_row`]; a `claimed` outside the vocabulary.
    pub fn token_within_rounding(&self, setup: &Setup, row: &[f32], claimed: u32) -> Result<bool> {
        let z = self.logits_from_row(setup, row)?;
        let c = claimed as usize;
        if c >= z.len() {
            return Err(ModelError::InvalidArgument(format!(
                "token {claimed} is outside the vocabulary of {}",
                z.len()
            )));
        }
        let top = greedy(&z)?;
        if top == c {
            return Ok(true);
        }
        let d = self.config.hidden_size;
        // the final norm in f64 (the same formula the engines round)
        let gain = self.final_norm.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let ms = row.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (ms + self.config.rms_norm_eps).sqrt();
        let n: Vec<f64> = row
            .iter()
            .zip(&gain)
            .map(|(&x, &g)| (f64::from(x) * inv * f64::from(g)).abs())
            .collect();
        let arith = self.arith(setup)?;
        let a = |j: usize| -> Result<f64> {
            let w = arith
                .w
                .lm_head
                .narrow(0, j, 1)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            Ok(w.iter()
                .zip(&n)
                .map(|(&w, &n)| f64::from(w).abs() * n)
                .sum())
        };
        let u = match setup.precision {
            crate::Precision::F32 => (-24f64).exp2(),
            crate::Precision::Bf16 => (-8f64).exp2(),
            crate::Precision::F16 => (-11f64).exp2(),
        };
        let du = d as f64 * (-24f64).exp2();
        let gamma = du / (1.0 - du);
        let bound = |j: usize| -> Result<f64> {
            Ok(2.0
                * (u * f64::from(z[j]).abs() + (3.0 * u + 2.0 * gamma) * a(j)?)
                * (1.0 + (-10f64).exp2()))
        };
        let gap = f64::from(z[top]) - f64::from(z[c]);
        Ok(gap <= bound(top)? + bound(c)?)
    }

    /// The weight `matrix` of layer `layer` (1-based; the LM head ignores it) as `setup`
    /// prepares it (rounded to its precision, quantized and dequantized), widened exactly to
    /// f32, row-major `[out, in]`: what a Freivalds key of that setup's weights is built from.
    pub(crate) fn prepared_matrix(
        &self,
        setup: &Setup,
        layer: usize,
        matrix: crate::freivalds::Matrix,
    ) -> Result<Vec<f32>> {
        use crate::freivalds::Matrix;
        let w = self.weights_for(setup)?;
        let l = |layer: usize| {
            layer
                .checked_sub(1)
                .and_then(|i| w.layers.get(i))
                .ok_or_else(|| ModelError::InvalidArgument(format!("no layer {layer}")))
        };
        let t = match matrix {
            Matrix::Q => &l(layer)?.wq,
            Matrix::K => &l(layer)?.wk,
            Matrix::V => &l(layer)?.wv,
            Matrix::O => &l(layer)?.wo,
            Matrix::Gate => &l(layer)?.w_gate,
            Matrix::Up => &l(layer)?.w_up,
            Matrix::Down => &l(layer)?.w_down,
            Matrix::LmHead => &w.lm_head,
        };
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// The greedy next token from one last-layer row: the argmax of
    /// [`LlamaModel::logits_from_row`], the lowest index on ties.
    pub fn next_token_from_row(&self, setup: &Setup, row: &[f32]) -> Result<u32> {
        Ok(greedy(&self.logits_from_row(setup, row)?)? as u32)
    }

    /// Greedy generation: appends `n_out` tokens to `prompt`, each predicted by
    /// [`LlamaModel::next_token_from_row`] from the last row of a forward over the sequence so
    /// far. Because of the padded tiles, those rows are bitwise the rows of the final trace.
    /// Under `kernels=invariant` each new token costs one row per layer over a KV cache (the
    /// rows are bitwise those of the full forward by the kernels' invariance).
    pub fn generate(
        &self,
        setup: &Setup,
        prompt: &[u32],
        n_out: usize,
        tile: usize,
    ) -> Result<Vec<u32>> {
        self.check_setup(setup)?;
        if prompt.is_empty() {
            return Err(ModelError::InvalidArgument("the prompt is empty".into()));
        }
        self.check_tokens(prompt)?;
        crate::ops::check_tile(tile)?;
        if setup.kernels == Kernels::Invariant {
            return self.generate_invariant(setup, prompt, n_out);
        }
        let mut seq = prompt.to_vec();
        let d = self.config.hidden_size;
        for _ in 0..n_out {
            let p = seq.len() - 1;
            let trace = self.trace(setup, &seq, tile)?;
            let last = trace.layers.last().expect("layers");
            let t = self.next_token_from_row(setup, &last[p * d..(p + 1) * d])?;
            seq.push(t);
        }
        Ok(seq.split_off(prompt.len()))
    }

    /// Layer 0 under a setup: the embedding rows rounded to the setup's precision, as f32.
    fn embed_rows(&self, arith: &Arith<'_>, tokens: &[u32]) -> Result<Vec<f32>> {
        let rows = self.embed_tokens(tokens)?;
        if arith.dtype == DType::F32 || rows.is_empty() {
            return Ok(rows);
        }
        let n = rows.len();
        let t = Tensor::from_vec(rows, n, &Device::Cpu)?;
        Ok(t.to_dtype(arith.dtype)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?)
    }

    /// The weights of `setup` (precision and quantization applied), built once and cached.
    fn weights_for(&self, setup: &Setup) -> Result<Arc<Weights>> {
        self.prepared.get_or_prepare(setup, || {
            let prep = |t: &Tensor, quantize: bool| crate::ops::prepare_weight(t, setup, quantize);
            let layers = self
                .layers
                .iter()
                .map(|l| {
                    Ok(Layer {
                        attn_norm: l.attn_norm.clone(),
                        wq: prep(&l.wq, true)?,
                        wk: prep(&l.wk, true)?,
                        wv: prep(&l.wv, true)?,
                        wo: prep(&l.wo, true)?,
                        mlp_norm: l.mlp_norm.clone(),
                        w_gate: prep(&l.w_gate, true)?,
                        w_up: prep(&l.w_up, true)?,
                        w_down: prep(&l.w_down, true)?,
                        b_qkv: match &l.b_qkv {
                            // Biases are added in the setup's precision, never quantized.
                            Some([q, k, v]) => {
                                Some([prep(q, false)?, prep(k, false)?, prep(v, false)?])
                            }
                            None => None,
                        },
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let packed = layers.iter().map(|_| std::sync::OnceLock::new()).collect();
            Ok(Weights {
                layers,
                lm_head: prep(&self.lm_head, false)?,
                packed,
            })
        })
    }

    fn arith(&self, setup: &Setup) -> Result<Arith<'_>> {
        Ok(Arith {
            model: self,
            setup: *setup,
            dtype: dtype_of(setup.precision),
            w: self.weights_for(setup)?,
        })
    }
}

/// The inputs and outputs of the linear maps of one decoder layer over the traced rows, each
/// row-major f32 `[tokens, width]` (values computed in the setup's dtype, widened exactly):
/// what a verifier needs to check each linear map `y = W x (+ b)` on its own (Freivalds) and to
/// recompute only the nonlinear parts (norms, rotary embedding, attention, SiLU, residual adds).
///
/// For layer `l` with input `h_{l−1}`: `normed = RMSNorm(h_{l−1})`; `q`, `k`, `v` its
/// projections (with Qwen2's biases, before the rotary embedding and the head split);
/// `attn` the attention output (input of the output projection); `o = attn W_o^T`;
/// `mlp_in = RMSNorm(h_{l−1} + o)`; `gate`, `up` its projections (`gate` before SiLU);
/// `act = SiLU(gate) ⊙ up`; `down = act W_down^T`; and `h_l = (h_{l−1} + o) + down`, bitwise.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubLayers {
    /// Attention norm output, `[tokens, hidden]`: the input of `q`, `k`, `v`.
    pub normed: Vec<f32>,
    /// Query projection, `[tokens, heads · head_dim]`.
    pub q: Vec<f32>,
    /// Key projection, `[tokens, kv_heads · head_dim]`.
    pub k: Vec<f32>,
    /// Value projection, `[tokens, kv_heads · head_dim]`.
    pub v: Vec<f32>,
    /// Attention output, `[tokens, heads · head_dim]`: the input of the output projection.
    pub attn: Vec<f32>,
    /// Output projection, `[tokens, hidden]`.
    pub o: Vec<f32>,
    /// MLP norm output, `[tokens, hidden]`: the input of `gate` and `up`.
    pub mlp_in: Vec<f32>,
    /// Gate projection before SiLU, `[tokens, intermediate]`.
    pub gate: Vec<f32>,
    /// Up projection, `[tokens, intermediate]`.
    pub up: Vec<f32>,
    /// `SiLU(gate) ⊙ up`, `[tokens, intermediate]`: the input of the down projection.
    pub act: Vec<f32>,
    /// Down projection, `[tokens, hidden]`.
    pub down: Vec<f32>,
}

/// The nonlinear parts of one cell of a decoder layer, recomputed by
/// [`LlamaModel::recompute_nonlinear`] from claimed linear outputs, each row-major f32 over
/// the cell's rows. An honest claim reproduces the captured [`SubLayers`] values and `h_l`
/// bit for bit (same engine, same setup).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Nonlinear {
    /// `RMSNorm(h_{l−1})`, `[rows, hidden]`.
    pub normed: Vec<f32>,
    /// Attention of the claimed queries over the claimed keys and values of every earlier
    /// position (rotary embedding applied here), `[rows, heads · head_dim]`.
    pub attn: Vec<f32>,
    /// `RMSNorm(h_{l−1} + o)`, `[rows, hidden]`.
    pub mlp_in: Vec<f32>,
    /// `SiLU(gate) ⊙ up`, `[rows, intermediate]`.
    pub act: Vec<f32>,
    /// `(h_{l−1} + o) + down`: the cell's output rows of `h_l`, `[rows, hidden]`.
    pub h_out: Vec<f32>,
}

/// The keys and values (the key and value projections' outputs, before the rotary embedding)
/// of rows `0..e` the cell's attention reads in [`LlamaModel::nonlinear_of`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum ContextKeys<'a> {
    /// Every key-value head: `[e, kv_heads·hd]` each.
    Dense {
        /// The keys.
        k: &'a [f32],
        /// The values.
        v: &'a [f32],
    },
    /// Only key-value heads `groups` (ascending, those the sampled query heads read, in
    /// [`kv_groups`]): `[e, groups.len()·hd]` each, the heads' columns side by side.
    Heads {
        /// The key-value heads held.
        groups: &'a [usize],
        /// Their keys.
        k: &'a [f32],
        /// Their values.
        v: &'a [f32],
    },
}

/// That sampled query heads `hs` are distinct, ascending and below `num_heads`, and not none;
/// else the message saying so.
pub(crate) fn check_sampled_heads(
    hs: &[usize],
    num_heads: usize,
) -> std::result::Result<(), String> {
    if hs.is_empty() || hs.windows(2).any(|w| w[0] >= w[1]) || hs[hs.len() - 1] >= num_heads {
        return Err(format!(
            "sampled heads {hs:?} are not distinct ascending heads of 0..{num_heads}"
        ));
    }
    Ok(())
}

/// The key-value heads query heads `heads` (ascending) read, `rep` query heads per key-value
/// head: ascending, each once.
pub(crate) fn kv_groups(heads: &[usize], rep: usize) -> Vec<usize> {
    let mut groups: Vec<usize> = heads.iter().map(|h| h / rep.max(1)).collect();
    groups.dedup();
    groups
}

/// The columns of heads `heads` (each `hd` wide) of `rows` rows of `width_heads` heads,
/// side by side in each row: `[rows, heads.len()·hd]`.
pub(crate) fn head_columns(
    x: &[f32],
    rows: usize,
    width_heads: usize,
    hd: usize,
    heads: &[usize],
) -> Vec<f32> {
    let width = width_heads * hd;
    let mut out = Vec::with_capacity(rows * heads.len() * hd);
    for row in x.chunks_exact(width).take(rows) {
        for &h in heads {
            out.extend_from_slice(&row[h * hd..(h + 1) * hd]);
        }
    }
    out
}

/// What [`LlamaModel::trace_with`] records besides the hidden states.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capture {
    /// Record each layer's attention keys after the rotary embedding, `[tokens, kv_heads · hd]`
    /// (in [`crate::Trace::keys`], layers `1..=L`).
    pub keys: bool,
}

use crate::ops::dtype_of;

/// The weights one setup computes with: linear weights in the setup's dtype (quantized if the
/// setup says so), norm gains in f32, the LM head in the setup's dtype (never quantized).
#[derive(Debug)]
struct Weights {
    layers: Vec<Layer>,
    lm_head: Tensor,
    /// The same layers packed for the invariant kernels, each built on its first use.
    packed: Vec<std::sync::OnceLock<PackedLayer>>,
}

/// One layer's weights for the invariant kernels ([`crate::invariant`]): the linear maps
/// packed, the norm gains and biases as f32.
#[derive(Debug)]
struct PackedLayer {
    attn_norm: Vec<f32>,
    wq: PackedMatrix,
    wk: PackedMatrix,
    wv: PackedMatrix,
    wo: PackedMatrix,
    mlp_norm: Vec<f32>,
    w_gate: PackedMatrix,
    w_up: PackedMatrix,
    w_down: PackedMatrix,
    b_qkv: Option<[Vec<f32>; 3]>,
}

impl PackedLayer {
    fn of(l: &Layer) -> Result<Self> {
        let (vec, pack) = (crate::ops::f32_values, crate::ops::pack_weight);
        Ok(PackedLayer {
            attn_norm: vec(&l.attn_norm)?,
            wq: pack(&l.wq)?,
            wk: pack(&l.wk)?,
            wv: pack(&l.wv)?,
            wo: pack(&l.wo)?,
            mlp_norm: vec(&l.mlp_norm)?,
            w_gate: pack(&l.w_gate)?,
            w_up: pack(&l.w_up)?,
            w_down: pack(&l.w_down)?,
            b_qkv: match &l.b_qkv {
                Some([q, k, v]) => Some([vec(q)?, vec(k)?, vec(v)?]),
                None => None,
            },
        })
    }
}

/// The KV cache of the invariant kernels for rows `0..rows` of one layer.
#[derive(Debug, Clone, Default)]
struct KvRows {
    /// The roped keys, f32 `[rows, kv·hd]` (what [`Capture::keys`] records).
    k: Vec<f32>,
    /// The keys and the values packed per key-value head as the attention reads them (keys
    /// `[rows, hd]`, values transposed), grown a row at a time: a decoded token's attention
    /// packs nothing.
    heads: Vec<(PackedMatrix, PackedMatrix)>,
}

impl KvRows {
    /// Appends rows of roped keys `k` and values `v` (`[n, kv·hd]` each) of `kv` heads of `hd`.
    fn append(&mut self, k: &[f32], v: &[f32], kv: usize, hd: usize) {
        if self.heads.is_empty() {
            // (this is the only writer: the packing starts with the cache, empty)
            let rows = k.len() / (kv * hd).max(1);
            self.heads = (0..kv)
                .map(|_| {
                    (
                        PackedMatrix::growing_out(hd),
                        PackedMatrix::growing_inp(hd, rows.max(64)),
                    )
                })
                .collect();
        }
        self.k.extend_from_slice(k);
        let width = kv * hd;
        for (kr, vr) in k
            .chunks_exact(width.max(1))
            .zip(v.chunks_exact(width.max(1)))
        {
            for (g, (keys, values)) in self.heads.iter_mut().enumerate() {
                keys.push_out(&kr[g * hd..(g + 1) * hd]);
                values.push_inp(&vr[g * hd..(g + 1) * hd]);
            }
        }
    }
}

/// Query rows per block of the invariant attention: each block attends over the keys up to its
/// last row only (the rows' results do not depend on it; the work does).
const INV_QUERY_BLOCK: usize = 64;

/// The prepared-weights cache shared by clones of a model.
type WeightCache = crate::ops::WeightCache<Weights>;

/// Rotary cosines and sines per position, `[positions, half]` each (see `LlamaModel::rope`).
type RopeCache = Arc<std::sync::RwLock<(Vec<f32>, Vec<f32>)>>;

/// The arithmetic of one setup: the building blocks every layer computation goes through.
struct Arith<'m> {
    model: &'m LlamaModel,
    setup: Setup,
    dtype: DType,
    w: Arc<Weights>,
}

impl Arith<'_> {
    /// The compute granularity for output rows `rows` with chunk size `tile`: blocks of `tile`
    /// rows in prefill (the chunks themselves), single rows in decode order. Returns the block
    /// size and the range of blocks covering `rows`.
    fn blocks(&self, tile: usize, rows: Range<usize>) -> (usize, Range<usize>) {
        match self.setup.order {
            Order::Prefill => (tile, rows.start / tile..rows.end.div_ceil(tile)),
            Order::Decode => (1, rows),
        }
    }

    fn cast(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.to_dtype(self.dtype)?)
    }

    /// `x · Wᵀ` with the setup's batch and split-K ([`crate::ops::matmul_t`]).
    fn linear(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        crate::ops::matmul_t(x, w, &self.setup, self.dtype)
    }

    /// `y + b` with the layer's query (0), key (1) or value (2) bias, in the setup's dtype
    /// (Qwen2); `y` unchanged without biases.
    fn biased(&self, y: Tensor, w: &Layer, which: usize) -> Result<Tensor> {
        Ok(match &w.b_qkv {
            Some(b) => y.broadcast_add(&b[which])?,
            None => y,
        })
    }

    /// RMSNorm with statistics in f32: `x` is converted to f32, normalized and scaled by the
    /// f32 gain, then rounded to the setup's dtype.
    fn rms_norm(&self, x: &Tensor, gain: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = ms
            .affine(1.0, self.model.config.rms_norm_eps)?
            .sqrt()?
            .recip()?;
        Ok(x.broadcast_mul(&inv)?
            .broadcast_mul(gain)?
            .to_dtype(self.dtype)?)
    }

    /// The model's table of rotary cosines and sines, `half = hd / 2` of each per position
    /// (position `p`'s at `p·half..(p + 1)·half`), extended to cover positions `0..end`, held
    /// for reading. Each position's angles are computed once, by one formula, so the values are
    /// bitwise the same at every call.
    fn rope_cache(&self, end: usize) -> std::sync::RwLockReadGuard<'_, (Vec<f32>, Vec<f32>)> {
        let c = &self.model.config;
        let half = c.head_dim() / 2;
        let cached = |t: &(Vec<f32>, Vec<f32>)| t.0.len() >= end * half;
        let need = {
            let t = self.model.rope.read().unwrap_or_else(|p| p.into_inner());
            !cached(&t)
        };
        if need {
            let mut t = self.model.rope.write().unwrap_or_else(|p| p.into_inner());
            if !cached(&t) {
                let inv_freq = c.rope_inv_freq();
                debug_assert_eq!(inv_freq.len(), half);
                let from = t.0.len() / half.max(1);
                for p in from..end.max(2 * from) {
                    for f in &inv_freq {
                        let a = p as f64 * f;
                        t.0.push(a.cos() as f32);
                        t.1.push(a.sin() as f32);
                    }
                }
            }
        }
        self.model.rope.read().unwrap_or_else(|p| p.into_inner())
    }

    /// `cos` and `sin` tables `[rows, 1, hd]` for positions `start..start + rows`, in the
    /// setup's dtype.
    fn rope_tables(&self, start: usize, rows: usize) -> Result<(Tensor, Tensor)> {
        let hd = self.model.config.head_dim();
        let half = hd / 2;
        let end = start + rows;
        let t = self.rope_cache(end);
        let mut cos = Vec::with_capacity(rows * hd);
        let mut sin = Vec::with_capacity(rows * hd);
        for p in start..end {
            let (c_row, s_row) = (
                &t.0[p * half..(p + 1) * half],
                &t.1[p * half..(p + 1) * half],
            );
            // laid out twice: the two halves of the head
            for _ in 0..2 {
                cos.extend_from_slice(c_row);
                sin.extend_from_slice(s_row);
            }
        }
        drop(t);
        Ok((
            self.cast(&Tensor::from_vec(cos, (rows, 1, hd), &Device::Cpu)?)?,
            self.cast(&Tensor::from_vec(sin, (rows, 1, hd), &Device::Cpu)?)?,
        ))
    }

    /// Rotary positions on `x: [rows, heads, hd]`, returned heads first (`[heads, rows, hd]`,
    /// contiguous). Each element is `x·cos + rot(x)·sin` with `rot(x) = (−x₂, x₁)` over the two
    /// halves of the head, each product and the sum rounded to the dtype. In f32 the loop below
    /// computes exactly that (Rust contracts no multiply-add), bitwise candle's element-wise
    /// ops, without their intermediate tensors and the transposing copy; other dtypes go through
    /// candle.
    fn rope_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (rows, heads, hd) = x.dims3()?;
        if x.dtype() == DType::F32 && cos.dtype() == DType::F32 && sin.dtype() == DType::F32 {
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let (cs, ss) = (
                cos.flatten_all()?.to_vec1::<f32>()?,
                sin.flatten_all()?.to_vec1::<f32>()?,
            );
            if cs.len() != rows * hd || ss.len() != rows * hd {
                return Err(ModelError::InvalidArgument(format!(
                    "rotary tables of {} and {} values for {rows} rows of {hd}",
                    cs.len(),
                    ss.len()
                )));
            }
            let mut out = vec![0f32; xs.len()];
            for r in 0..rows {
                let (c, s) = (&cs[r * hd..(r + 1) * hd], &ss[r * hd..(r + 1) * hd]);
                for h in 0..heads {
                    let x = &xs[(r * heads + h) * hd..(r * heads + h + 1) * hd];
                    rope_row(
                        x,
                        c,
                        s,
                        &mut out[(h * rows + r) * hd..(h * rows + r + 1) * hd],
                    );
                }
            }
            return Ok(Tensor::from_vec(out, (heads, rows, hd), &Device::Cpu)?);
        }
        Ok(Self::rope(x, cos, sin)?.transpose(0, 1)?.contiguous()?)
    }

    /// Rotary positions on `x: [rows, heads, hd]` by candle's element-wise ops (any dtype).
    fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let hd = x.dim(D::Minus1)?;
        let half = hd / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok(x.broadcast_mul(cos)?.add(&rotated.broadcast_mul(sin)?)?)
    }

    /// Block `t` of the input rows (`blk` rows from `t·blk`), zero-padded past `n`, in the
    /// setup's dtype.
    fn block_tensor(&self, x: &[f32], n: usize, blk: usize, t: usize) -> Result<Tensor> {
        self.rows_tensor(x, n, self.model.config.hidden_size, blk, t)
    }

    /// Normalized input, keys `[kv_heads, blk, hd]` (after rope) and values of block `t`.
    fn kv_block(&self, w: &Layer, xt: &Tensor, blk: usize, t: usize) -> Result<[Tensor; 3]> {
        let c = &self.model.config;
        let (hd, nkv) = (c.head_dim(), c.num_kv_heads);
        let nt = self.rms_norm(xt, &w.attn_norm)?;
        let (cos, sin) = self.rope_tables(t * blk, blk)?;
        let k = self
            .biased(self.linear(&nt, &w.wk)?, w, 1)?
            .reshape((blk, nkv, hd))?;
        let k = Self::rope_heads(&k, &cos, &sin)?;
        let v = self
            .biased(self.linear(&nt, &w.wv)?, w, 2)?
            .reshape((blk, nkv, hd))?
            .transpose(0, 1)?
            .contiguous()?;
        Ok([nt, k, v])
    }

    /// Post-rope keys of layer `l` (0-based) for rows `0..n`, as f32 `[n, kv_heads · hd]`:
    /// what a skipped or reused layer would have attended with.
    fn keys_of(
        &self,
        l: usize,
        x: &[f32],
        n: usize,
        blk: usize,
        blocks: usize,
    ) -> Result<Vec<f32>> {
        let w = &self.w.layers[l];
        let mut out =
            Vec::with_capacity(n * self.model.config.num_kv_heads * self.model.config.head_dim());
        for t in 0..blocks {
            let xt = self.block_tensor(x, n, blk, t)?;
            let [_, k, _] = self.kv_block(w, &xt, blk, t)?;
            out.extend(Self::keys_rows(&k, blk.min(n - t * blk))?);
        }
        Ok(out)
    }

    /// Keys `[kv_heads, blk, hd]` as f32 rows `[rows, kv_heads · hd]` (first `rows` rows).
    fn keys_rows(k: &Tensor, rows: usize) -> Result<Vec<f32>> {
        let (nkv, blk, hd) = k.dims3()?;
        Ok(k.transpose(0, 1)?
            .contiguous()?
            .reshape((blk, nkv * hd))?
            .narrow(0, 0, rows)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// `h_l = h_{l−1} + (h_{l−1} − h_{l−2})` in the setup's dtype.
    fn reuse_update(&self, prev: &[f32], prev2: &[f32]) -> Result<Vec<f32>> {
        crate::ops::reuse_update(prev, prev2, self.dtype)
    }

    /// The window a query sees: the model's own (Mistral's sliding window) and the setup's
    /// (`window:W`), the shorter of the two; `usize::MAX` for full causal attention.
    fn window(&self) -> usize {
        let setup = match self.setup.attention {
            Attention::Window { size } => size,
            _ => usize::MAX,
        };
        setup.min(self.model.config.window())
    }

    /// Attention of queries `q: [heads, tq, hd]` at positions `q0..` over keys and values
    /// `[heads, e, hd]` at positions `0..e` ([`crate::ops::attend`], causal within
    /// [`Arith::window`]); returns `[heads, tq, hd]` in the setup's dtype. Scores are computed
    /// in the setup's dtype and converted to f32 before scaling, masking and the softmax;
    /// probabilities are rounded to the dtype for the product with `v`.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, q0: usize) -> Result<Tensor> {
        let hd = q.dim(2)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores_of = |k: &Tensor| -> Result<Tensor> {
            Ok(q.matmul(&k.t()?.contiguous()?)?
                .to_dtype(DType::F32)?
                .affine(scale, 0.0)?)
        };
        let visibility = crate::ops::Visibility {
            causal: true,
            keys: None,
            window: self.window(),
        };
        let rule = crate::ops::AttentionRule {
            attention: self.setup.attention,
            visibility,
            dtype: self.dtype,
        };
        crate::ops::attend(&rule, q, k, v, q0, &scores_of)
    }

    /// Runs transformer layer `l` (0-based) over input rows `x` (`n` rows) in blocks of `blk`
    /// rows and returns the output rows of blocks `out` (truncated at `n`) as f32, and with
    /// `keys` the post-rope keys of rows `0..min(n, out.end·blk)` (f32 `[rows, kv·hd]`).
    /// Reads the input blocks `0..out.end`; every block is a fresh `[blk, hidden]` tensor,
    /// zero-padded past `n`.
    /// Rows `t·blk ..` of the `width`-wide row-major `x` (of `n` rows) as a zero-padded
    /// `[blk, width]` tensor in the setup's dtype.
    fn rows_tensor(
        &self,
        x: &[f32],
        n: usize,
        width: usize,
        blk: usize,
        t: usize,
    ) -> Result<Tensor> {
        let mut rows = vec![0f32; blk * width];
        let lo = (t * blk).min(n);
        let hi = ((t + 1) * blk).min(n);
        rows[..(hi - lo) * width].copy_from_slice(&x[lo * width..hi * width]);
        self.cast(&Tensor::from_vec(rows, (blk, width), &Device::Cpu)?)
    }

    /// Layer `l` (0-based) packed for the invariant kernels: packed on first use, then shared,
    /// each layer on its own (a verifier that recomputes one layer's cells packs that layer).
    fn packed(&self, l: usize) -> Result<&PackedLayer> {
        let slot = self.w.packed.get(l).ok_or_else(|| {
            ModelError::InvalidArgument(format!("layer {l} is not a layer of this model"))
        })?;
        if let Some(p) = slot.get() {
            return Ok(p);
        }
        let built = PackedLayer::of(&self.w.layers[l])?;
        Ok(slot.get_or_init(|| built))
    }

    /// `y` with the layer's query (0), key (1) or value (2) bias added to every row (Qwen2),
    /// then stored ([`Arith::st`]).
    fn inv_biased(&self, p: &PackedLayer, mut y: Vec<f32>, which: usize) -> Vec<f32> {
        if let Some(b) = &p.b_qkv {
            for row in y.chunks_exact_mut(b[which].len().max(1)) {
                for (v, &bias) in row.iter_mut().zip(&b[which]) {
                    *v += bias;
                }
            }
        }
        self.st(y)
    }

    /// Values an invariant operation stores, rounded to the setup's precision
    /// ([`inv::round_to`]; unchanged under f32).
    fn st(&self, mut v: Vec<f32>) -> Vec<f32> {
        inv::round_to(self.setup.precision, &mut v);
        v
    }

    /// Rows `x: [n, heads·hd]` at positions `start..` with the rotary embedding ([`rope_row`],
    /// the cosines and sines read straight from the model's f32 table: the invariant kernels
    /// compute in f32, where [`Arith::rope_tables`]' cast changes nothing).
    fn inv_rope(&self, x: &[f32], heads: usize, start: usize) -> Result<Vec<f32>> {
        let hd = self.model.config.head_dim();
        let half = hd / 2;
        let n = x.len() / (heads * hd).max(1);
        let t = self.rope_cache(start + n);
        // every element is written below
        let mut out = inv::buffer(x.len());
        for (r, (xr, or)) in x
            .chunks_exact(heads * hd)
            .zip(out.chunks_exact_mut(heads * hd))
            .enumerate()
        {
            let p = start + r;
            let (c, s) = (
                &t.0[p * half..(p + 1) * half],
                &t.1[p * half..(p + 1) * half],
            );
            for (xh, oh) in xr.chunks_exact(hd).zip(or.chunks_exact_mut(hd)) {
                rope_row_half(xh, c, s, oh);
            }
        }
        Ok(self.st(out))
    }

    /// The roped keys and the values of input rows `x` (layer `l`, 0-based) at positions
    /// `start..`, appended to `cache`.
    fn inv_kv(&self, l: usize, x: &[f32], start: usize, cache: &mut KvRows) -> Result<()> {
        let c = &self.model.config;
        let p = self.packed(l)?;
        let n = x.len() / c.hidden_size;
        let normed = self.st(inv::rms_norm_rows(
            x,
            c.hidden_size,
            &p.attn_norm,
            c.rms_norm_eps as f32,
        ));
        let (k, v) = self.inv_append_kv(p, &normed, n, start, cache)?;
        for b in [normed, k, v] {
            inv::recycle(b);
        }
        Ok(())
    }

    /// The key and value projections of `n` attention-normed rows at positions `start..`:
    /// appends the roped keys and the values to `cache` and returns both projections as
    /// computed (before the rotary embedding), for a sub-layer capture.
    fn inv_append_kv(
        &self,
        p: &PackedLayer,
        normed: &[f32],
        n: usize,
        start: usize,
        cache: &mut KvRows,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let k = self.inv_biased(p, inv::matmul_t(normed, n, &p.wk), 1);
        let v = self.inv_biased(p, inv::matmul_t(normed, n, &p.wv), 2);
        let c = &self.model.config;
        let roped = self.inv_rope(&k, c.num_kv_heads, start)?;
        cache.append(&roped, &v, c.num_kv_heads, c.head_dim());
        inv::recycle(roped);
        Ok((k, v))
    }

    /// The attention rows of roped queries `q` (`[n, heads·hd]`, positions `r0..r0 + n`) over the
    /// roped keys and the values of rows `0..r0 + n` (`kv`, each `[r0 + n, kv_heads·hd]`), by the
    /// invariant kernels (heads in parallel): `[n, heads·hd]`.
    fn inv_attention(
        &self,
        q: &[f32],
        n: usize,
        r0: usize,
        kv: (&[f32], &[f32]),
    ) -> Result<Vec<f32>> {
        let c = &self.model.config;
        let rep = c.num_heads / c.num_kv_heads;
        let group: Vec<usize> = (0..c.num_heads).map(|h| h / rep).collect();
        self.inv_attend(q, n, r0, kv, c.num_kv_heads, &group)
    }

    /// The attention of [`Arith::inv_attention`] for any set of query heads: `q` holds the
    /// heads' roped queries side by side (`[n, group.len()·hd]`), `kv` the roped keys and the
    /// values of `kv_heads` key-value heads (each `[r0 + n, kv_heads·hd]`), and query head `i`
    /// reads key-value head `group[i]`. Each head's rows are computed alone by the same
    /// kernels, so a head's output is bitwise the same whichever other heads are computed with
    /// it (the sampled attention check computes only the sampled heads).
    fn inv_attend(
        &self,
        q: &[f32],
        n: usize,
        r0: usize,
        kv: (&[f32], &[f32]),
        kv_heads: usize,
        group: &[usize],
    ) -> Result<Vec<f32>> {
        let (keys_in, values_in) = kv;
        use rayon::prelude::*;
        let c = &self.model.config;
        let (hd, nh, nkv) = (c.head_dim(), group.len(), kv_heads);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let e = r0 + n;
        if group.iter().any(|&g| g >= nkv) {
            return Err(ModelError::InvalidArgument(format!(
                "a query head reads a key-value head out of 0..{nkv}"
            )));
        }
        if q.len() != n * qd || keys_in.len() != e * kvd || values_in.len() != e * kvd {
            return Err(ModelError::InvalidArgument(format!(
                "attention of {} query elements over {} key and {} value elements for rows \
                 {r0}..{e}",
                q.len(),
                keys_in.len(),
                values_in.len()
            )));
        }
        // each key-value head packed once for the query heads that share it; each query block
        // reads the prefix up to its last row
        let pack = |g: usize| -> Result<(PackedMatrix, PackedMatrix)> {
            let keys = PackedMatrix::new_strided(keys_in, e, hd, kvd, g * hd).ok_or_else(|| {
                ModelError::InvalidArgument(format!("{} key elements", keys_in.len()))
            })?;
            let values = PackedMatrix::from_transposed_strided(values_in, hd, e, kvd, g * hd)
                .ok_or_else(|| {
                    ModelError::InvalidArgument(format!("{} value elements", values_in.len()))
                })?;
            Ok((keys, values))
        };
        let packed: Vec<(PackedMatrix, PackedMatrix)> = if inv::parallel(nkv * e * hd) {
            (0..nkv).into_par_iter().map(pack).collect::<Result<_>>()?
        } else {
            (0..nkv).map(pack).collect::<Result<_>>()?
        };
        self.inv_attend_packed(q, n, r0, &packed, group)
    }

    /// The attention of [`Arith::inv_attend`] over keys and values already packed per
    /// key-value head (`packed[g]`: keys as `[e′, hd]`, values transposed, `e′ ≥ r0 + n`, only
    /// the first `r0 + n` rows read): the packing a KV cache keeps
    /// ([`KvRows::heads`]) or one made for this call.
    fn inv_attend_packed(
        &self,
        q: &[f32],
        n: usize,
        r0: usize,
        packed: &[(PackedMatrix, PackedMatrix)],
        group: &[usize],
    ) -> Result<Vec<f32>> {
        use rayon::prelude::*;
        let hd = self.model.config.head_dim();
        let (nh, qd, e) = (group.len(), group.len() * hd, r0 + n);
        if q.len() != n * qd
            || group.iter().any(|&g| {
                packed
                    .get(g)
                    .is_none_or(|(k, v)| k.out() < e || v.inp() < e)
            })
        {
            return Err(ModelError::InvalidArgument(format!(
                "attention of {} query elements for rows {r0}..{e} over {} packed key-value heads",
                q.len(),
                packed.len()
            )));
        }
        let window = self.window();
        let column = |x: &[f32], rows: usize, width: usize, at: usize| -> Vec<f32> {
            let mut out = Vec::with_capacity(rows * hd);
            for r in 0..rows {
                out.extend_from_slice(&x[r * width + at..r * width + at + hd]);
            }
            out
        };
        let head = |h: usize| -> Result<Vec<f32>> {
            let (keys, values) = &packed[group[h]];
            let qh = column(q, n, qd, h * hd);
            let mut out = Vec::with_capacity(n * hd);
            for b0 in (0..n).step_by(INV_QUERY_BLOCK) {
                let b1 = (b0 + INV_QUERY_BLOCK).min(n);
                out.extend(inv::attend_packed(
                    &qh[b0 * hd..b1 * hd],
                    keys,
                    values,
                    r0 + b0,
                    b1 - b0,
                    r0 + b1,
                    window,
                ));
            }
            Ok(out)
        };
        let heads: Vec<Vec<f32>> = if inv::parallel(nh * n * e * hd) {
            (0..nh).into_par_iter().map(head).collect::<Result<_>>()?
        } else {
            (0..nh).map(head).collect::<Result<_>>()?
        };
        // the heads side by side in each row (by rows on the pool: a serial copy here would
        // hold the second thread back)
        // every element is written below
        let mut attn = inv::buffer(n * qd);
        let gather = |(r, row): (usize, &mut [f32])| {
            for (h, out) in heads.iter().enumerate() {
                row[h * hd..(h + 1) * hd].copy_from_slice(&out[r * hd..(r + 1) * hd]);
            }
        };
        if inv::parallel(n * qd) {
            attn.par_chunks_mut(qd).enumerate().for_each(gather);
        } else {
            attn.chunks_mut(qd).enumerate().for_each(gather);
        }
        Ok(self.st(attn))
    }

    /// One transformer layer (`l`, 0-based) by the invariant kernels over the new input rows
    /// `x` at positions `r0..r0 + n`, with `cache` holding the roped keys and values of rows
    /// `0..r0`: appends the new rows' keys and values to the cache and returns their output
    /// rows; with `sub`, appends the rows' sub-layer values to it (the same vectors the layer
    /// computes, copied). Each row is bitwise the same whatever `r0`, `n` and the thread count
    /// are (see [`crate::invariant`]).
    fn inv_layer(
        &self,
        l: usize,
        x: &[f32],
        r0: usize,
        cache: &mut KvRows,
        sub: Option<&mut SubLayers>,
    ) -> Result<Vec<f32>> {
        let c = &self.model.config;
        let (d, nh, nkv) = (c.hidden_size, c.num_heads, c.num_kv_heads);
        let kvd = nkv * c.head_dim();
        let eps = c.rms_norm_eps as f32;
        let p = self.packed(l)?;
        let n = x.len() / d;
        let packed_rows = cache.heads.first().map_or(0, |(_, values)| values.inp());
        if cache.k.len() != r0 * kvd || packed_rows != r0 {
            return Err(ModelError::InvalidArgument(format!(
                "a key-value cache of {} rows for new rows at {r0}",
                cache.k.len() / kvd.max(1)
            )));
        }
        let normed = self.st(inv::rms_norm_rows(x, d, &p.attn_norm, eps));
        let q_lin = self.inv_biased(p, inv::matmul_t(&normed, n, &p.wq), 0);
        let q = self.inv_rope(&q_lin, nh, r0)?;
        let (k_lin, v_lin) = self.inv_append_kv(p, &normed, n, r0, cache)?;
        let group: Vec<usize> = (0..nh).map(|h| h / (nh / nkv).max(1)).collect();
        let attn = self.inv_attend_packed(&q, n, r0, &cache.heads, &group)?;
        let o = self.st(inv::matmul_t(&attn, n, &p.wo));
        let a = self.st(inv::add(x, &o));
        let mlp_in = self.st(inv::rms_norm_rows(&a, d, &p.mlp_norm, eps));
        let gate = self.st(inv::matmul_t(&mlp_in, n, &p.w_gate));
        let up = self.st(inv::matmul_t(&mlp_in, n, &p.w_up));
        let act = self.st(inv::swiglu(&gate, &up));
        let down = self.st(inv::matmul_t(&act, n, &p.w_down));
        let h = self.st(inv::add(&a, &down));
        if let Some(sub) = sub {
            sub.normed.extend_from_slice(&normed);
            sub.q.extend_from_slice(&q_lin);
            sub.k.extend_from_slice(&k_lin);
            sub.v.extend_from_slice(&v_lin);
            sub.attn.extend_from_slice(&attn);
            sub.o.extend_from_slice(&o);
            sub.mlp_in.extend_from_slice(&mlp_in);
            sub.gate.extend_from_slice(&gate);
            sub.up.extend_from_slice(&up);
            sub.act.extend_from_slice(&act);
            sub.down.extend_from_slice(&down);
        }
        // the intermediates' buffers serve the next layer's (the same shapes)
        for v in [
            normed, q_lin, q, k_lin, v_lin, attn, o, a, mlp_in, gate, up, act, down,
        ] {
            inv::recycle(v);
        }
        Ok(h)
    }

    /// [`LlamaModel::recompute_nonlinear`] by the invariant kernels: the cell's rows `r0..e`
    /// of `h_in` (`x`), the claimed key and value projections of rows `0..e` and the cell's
    /// claimed sub-layer values; the same operations as [`Arith::inv_layer`] with the claimed
    /// vectors in place of the products.
    #[allow(clippy::too_many_arguments)]
    fn inv_nonlinear(
        &self,
        l: usize,
        x: &[f32],
        r0: usize,
        kv: ContextKeys<'_>,
        cell: &SubLayers,
        heads: Option<&[usize]>,
    ) -> Result<Nonlinear> {
        let c = &self.model.config;
        let (d, nh, nkv, hd) = (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim());
        let eps = c.rms_norm_eps as f32;
        let p = self.packed(l)?;
        let n = x.len() / d;
        let normed = self.st(inv::rms_norm_rows(x, d, &p.attn_norm, eps));
        let attn = match (heads, kv) {
            (None, ContextKeys::Dense { k: k_lin, v: v_lin }) => {
                let q = self.inv_rope(&cell.q, nh, r0)?;
                let keys = self.inv_rope(k_lin, nkv, 0)?;
                self.inv_attention(&q, n, r0, (&keys, v_lin))?
            }
            (None, ContextKeys::Heads { .. }) => {
                return Err(ModelError::InvalidArgument(
                    "keys and values of some heads need the sampled query heads".into(),
                ))
            }
            (Some(hs), kv) => {
                // only the sampled heads and the key-value heads they read: the rotary
                // embedding and each head's attention are per head, so each is bitwise the
                // full computation's
                let rep = nh / nkv;
                let groups = kv_groups(hs, rep);
                let group: Vec<usize> = hs
                    .iter()
                    .map(|h| groups.iter().position(|&g| g == h / rep).unwrap_or(0))
                    .collect();
                use std::borrow::Cow;
                let (keys, values): (Cow<'_, [f32]>, Cow<'_, [f32]>) = match kv {
                    ContextKeys::Dense { k: k_lin, v: v_lin } => {
                        let e = k_lin.len() / (nkv * hd).max(1);
                        (
                            head_columns(k_lin, e, nkv, hd, &groups).into(),
                            head_columns(v_lin, e, nkv, hd, &groups).into(),
                        )
                    }
                    // already the heads' columns: no copy of the context
                    ContextKeys::Heads { k, v, .. } => (k.into(), v.into()),
                };
                let q = self.inv_rope(&head_columns(&cell.q, n, nh, hd, hs), hs.len(), r0)?;
                let keys = self.inv_rope(&keys, groups.len(), 0)?;
                self.inv_attend(&q, n, r0, (&keys, &values), groups.len(), &group)?
            }
        };
        let a = self.st(inv::add(x, &cell.o));
        let mlp_in = self.st(inv::rms_norm_rows(&a, d, &p.mlp_norm, eps));
        let act = self.st(inv::swiglu(&cell.gate, &cell.up));
        let h_out = self.st(inv::add(&a, &cell.down));
        Ok(Nonlinear {
            normed,
            attn,
            mlp_in,
            act,
            h_out,
        })
    }

    /// The context's keys and values for the attention of [`Arith::nonlinear_block`]: the
    /// claimed rows `0..e` of the key and value projections (f32 `[e, kv·hd]`), zero rows up to
    /// `span` (the forward's padded last block), the keys roped at positions `0..span`, each
    /// key/value head repeated for its query heads. Returns `(k, v)` as `[heads, span, hd]`,
    /// the key tensor a transposed view of a contiguous `[heads, hd, span]` (the layout the
    /// score product reads, so no further copy is made). One pass in f32: bitwise
    /// [`Arith::context_heads_by_ops`] (the same rotary formula, [`rope_row`], and copies).
    /// `(nkv, rep)`: the key-value heads `k_lin` and `v_lin` hold and the query heads per each
    /// (the model's, or some key-value heads' columns with `rep = 1`: the rotary embedding is
    /// the same for every head, so each head is bitwise the same either way).
    #[allow(clippy::too_many_arguments)]
    fn context_heads(
        &self,
        k_lin: &[f32],
        v_lin: &[f32],
        e: usize,
        span: usize,
        cos_all: &Tensor,
        sin_all: &Tensor,
        (nkv, rep): (usize, usize),
    ) -> Result<(Tensor, Tensor)> {
        let hd = self.model.config.head_dim();
        let nh = nkv * rep;
        let kvd = nkv * hd;
        let (cs, ss) = (
            cos_all.flatten_all()?.to_vec1::<f32>()?,
            sin_all.flatten_all()?.to_vec1::<f32>()?,
        );
        if k_lin.len() < e * kvd || v_lin.len() < e * kvd || cs.len() != span * hd {
            return Err(ModelError::InvalidArgument(format!(
                "context of {} key and {} value elements for {e} rows of {kvd}",
                k_lin.len(),
                v_lin.len()
            )));
        }
        // roped keys `[span, kv, hd]` (zero rows past e), then each head's transpose
        let zeros = vec![0f32; hd];
        let mut roped = vec![0f32; span * kvd];
        for r in 0..span {
            let (cr, sr) = (&cs[r * hd..(r + 1) * hd], &ss[r * hd..(r + 1) * hd]);
            for g in 0..nkv {
                let at = (r * nkv + g) * hd;
                let kx = if r < e {
                    &k_lin[at..at + hd]
                } else {
                    &zeros[..]
                };
                rope_row(kx, cr, sr, &mut roped[at..at + hd]);
            }
        }
        // each key/value head once, then repeated for its query heads; the keys transposed in
        // blocks of rows (so the reads stay in cache lines)
        const BLOCK: usize = 16;
        let mut kt = vec![0f32; nh * hd * span];
        let mut vs = Vec::with_capacity(nh * span * hd);
        let mut head_v = Vec::with_capacity(span * hd);
        for g in 0..nkv {
            let first = g * rep;
            let head = &mut kt[first * hd * span..(first + 1) * hd * span];
            for r0 in (0..span).step_by(BLOCK) {
                for i in 0..hd {
                    for r in r0..(r0 + BLOCK).min(span) {
                        head[i * span + r] = roped[(r * nkv + g) * hd + i];
                    }
                }
            }
            for h in first + 1..first + rep {
                kt.copy_within(first * hd * span..(first + 1) * hd * span, h * hd * span);
            }
            head_v.clear();
            for r in 0..span {
                let at = (r * nkv + g) * hd;
                head_v.extend_from_slice(if r < e {
                    &v_lin[at..at + hd]
                } else {
                    &zeros[..]
                });
            }
            for _ in 0..rep {
                vs.extend_from_slice(&head_v);
            }
        }
        let cpu = &Device::Cpu;
        Ok((
            Tensor::from_vec(kt, (nh, hd, span), cpu)?.t()?,
            Tensor::from_vec(vs, (nh, span, hd), cpu)?,
        ))
    }

    /// [`Arith::context_heads`] by candle's ops, in the setup's dtype (any dtype): the
    /// forward's padding, rotary embedding and grouped-query expansion.
    #[allow(clippy::too_many_arguments)]
    fn context_heads_by_ops(
        &self,
        k_lin: &[f32],
        v_lin: &[f32],
        e: usize,
        span: usize,
        cos_all: &Tensor,
        sin_all: &Tensor,
        (nkv, rep): (usize, usize),
    ) -> Result<(Tensor, Tensor)> {
        let hd = self.model.config.head_dim();
        let nh = nkv * rep;
        let k = self
            .rows_tensor(k_lin, e, nkv * hd, span, 0)?
            .reshape((span, nkv, hd))?;
        let k = Self::rope_heads(&k, cos_all, sin_all)?;
        let v = self
            .rows_tensor(v_lin, e, nkv * hd, span, 0)?
            .reshape((span, nkv, hd))?
            .transpose(0, 1)?
            .contiguous()?;
        let (k, v) = if rep == 1 {
            (k, v)
        } else {
            (
                k.unsqueeze(1)?
                    .expand((nkv, rep, span, hd))?
                    .reshape((nh, span, hd))?,
                v.unsqueeze(1)?
                    .expand((nkv, rep, span, hd))?
                    .reshape((nh, span, hd))?,
            )
        };
        Ok((k, v))
    }

    /// The nonlinear parts of block `j` of layer `l` (0-based) recomputed from claimed linear
    /// outputs: see [`LlamaModel::recompute_nonlinear`]. `e` rows of context (`h_in`, `k`, `v`
    /// hold rows `0..e`), the block's rows in `cell`.
    #[allow(clippy::too_many_arguments)]
    fn nonlinear_block(
        &self,
        l: usize,
        j: usize,
        blk: usize,
        e: usize,
        h_cell: &[f32],
        kv: ContextKeys<'_>,
        cell: &SubLayers,
        heads: Option<&[usize]>,
    ) -> Result<Nonlinear> {
        let c = &self.model.config;
        let (d, hd) = (c.hidden_size, c.head_dim());
        let (nh, m) = (c.num_heads, c.intermediate_size);
        let w = &self.w.layers[l];
        let rows = e - j * blk;
        let local = |x: &[f32], width: usize| self.rows_tensor(x, rows, width, blk, 0);
        // attention norm of the block's input rows
        let xt = local(h_cell, d)?;
        let normed = self.rms_norm(&xt, &w.attn_norm)?;
        // One rotary table for positions 0..(j + 1)·blk, cut per block: each position's angles
        // are computed by the same formula as the forward's per-block tables (bitwise).
        let span = (j + 1) * blk;
        let (cos_all, sin_all) = self.rope_tables(0, span)?;
        // queries (claimed), roped at the block's positions
        let (cos, sin) = (
            cos_all.narrow(0, j * blk, blk)?,
            sin_all.narrow(0, j * blk, blk)?,
        );
        let q = local(&cell.q, nh * hd)?.reshape((blk, nh, hd))?;
        let q = Self::rope_heads(&q, &cos, &sin)?;
        // keys and values of blocks 0..=j (claimed, zero rows after e as the forward's padded
        // block), all roped at once: the rotary embedding is element-wise, so this is bitwise
        // the forward's block-by-block result laid end to end
        let nkv = c.num_kv_heads;
        let (k_lin, v_lin, shape) = match kv {
            ContextKeys::Dense { k, v } => (k, v, (nkv, nh / nkv.max(1))),
            ContextKeys::Heads { groups, k, v } => (k, v, (groups.len(), 1)),
        };
        let (k, v) = if self.dtype == DType::F32 {
            self.context_heads(k_lin, v_lin, e, span, &cos_all, &sin_all, shape)?
        } else {
            self.context_heads_by_ops(k_lin, v_lin, e, span, &cos_all, &sin_all, shape)?
        };
        // with sampled heads, only theirs: each head's scores, softmax and weighted values are
        // its own slice of the batched products (the same shapes per head), so bitwise the
        // full attention's columns (tested: crates/model/tests/attention_sampling.rs)
        let (q, k, v, width) = match heads {
            None if matches!(kv, ContextKeys::Heads { .. }) => {
                return Err(ModelError::InvalidArgument(
                    "keys and values of some heads need the sampled query heads".into(),
                ))
            }
            None => (q, k, v, nh),
            Some(hs) => {
                let ids: Vec<u32> = hs.iter().map(|&h| h as u32).collect();
                let ids = Tensor::from_vec(ids, hs.len(), &Device::Cpu)?;
                // the key-value tensors' head of each sampled query head: the query head
                // itself (every head expanded), or its key-value head's place among those held
                let kv_ids = match kv {
                    ContextKeys::Dense { .. } => ids.clone(),
                    ContextKeys::Heads { groups, .. } => {
                        let rep = nh / nkv.max(1);
                        let at: Vec<u32> = hs
                            .iter()
                            .map(|h| groups.iter().position(|&g| g == h / rep).unwrap_or(0) as u32)
                            .collect();
                        Tensor::from_vec(at, hs.len(), &Device::Cpu)?
                    }
                };
                // the keys may be a transposed view of a contiguous `[heads, hd, span]` (the
                // layout the score product reads): select in that layout, keep the view
                let pick = |t: &Tensor, ids: &Tensor| -> Result<Tensor> {
                    if t.is_contiguous() {
                        Ok(t.index_select(ids, 0)?)
                    } else {
                        Ok(t.t()?.contiguous()?.index_select(ids, 0)?.t()?)
                    }
                };
                (
                    pick(&q, &ids)?,
                    pick(&k, &kv_ids)?,
                    pick(&v, &kv_ids)?,
                    hs.len(),
                )
            }
        };
        let attn = self
            .attend(&q, &k, &v, j * blk)?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((blk, width * hd))?;
        // residual, MLP norm, SwiGLU and the second residual from the claimed projections
        let a = xt.add(&local(&cell.o, d)?)?;
        let mlp_in = self.rms_norm(&a, &w.mlp_norm)?;
        let act = local(&cell.gate, m)?.silu()?.mul(&local(&cell.up, m)?)?;
        let h = a.add(&local(&cell.down, d)?)?;
        let f = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.narrow(0, 0, rows)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        Ok(Nonlinear {
            normed: f(&normed)?,
            attn: f(&attn)?,
            mlp_in: f(&mlp_in)?,
            act: f(&act)?,
            h_out: f(&h)?,
        })
    }

    // The one layer routine of the forward and of cell recompute; the capture options are
    // separate arguments so that the common path passes plain `false`/`None`.
    #[allow(clippy::too_many_arguments)]
    fn layer_blocks(
        &self,
        l: usize,
        x: &[f32],
        n: usize,
        blk: usize,
        out: Range<usize>,
        keys_wanted: bool,
        mut sub: Option<&mut SubLayers>,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let c = &self.model.config;
        let (d, hd) = (c.hidden_size, c.head_dim());
        let (nh, nkv) = (c.num_heads, c.num_kv_heads);
        let w = &self.w.layers[l];

        // 1. normalized inputs, keys and values of every block up to the last output block
        let mut xs = Vec::with_capacity(out.end);
        let mut normed = Vec::with_capacity(out.end);
        let mut keys = Vec::with_capacity(out.end);
        let mut values = Vec::with_capacity(out.end);
        for t in 0..out.end {
            let xt = self.block_tensor(x, n, blk, t)?;
            let [nt, k, v] = self.kv_block(w, &xt, blk, t)?;
            xs.push(xt);
            normed.push(nt);
            keys.push(k);
            values.push(v);
        }
        let captured = if keys_wanted {
            let mut all = Vec::with_capacity(n * nkv * hd);
            for (t, k) in keys.iter().enumerate() {
                all.extend(Self::keys_rows(k, blk.min(n.saturating_sub(t * blk)))?);
            }
            Some(all)
        } else {
            None
        };

        let rep = nh / nkv;
        let mut result = Vec::with_capacity((out.end - out.start) * blk * d);
        for j in out {
            let e = (j + 1) * blk;
            // 2. attention of the block's queries over keys 0..e
            let (cos, sin) = self.rope_tables(j * blk, blk)?;
            let q_lin = self.biased(self.linear(&normed[j], &w.wq)?, w, 0)?;
            let q = q_lin.reshape((blk, nh, hd))?;
            let q = Self::rope_heads(&q, &cos, &sin)?;
            let k = Tensor::cat(&keys[..=j], 1)?; // [nkv, e, hd]
            let v = Tensor::cat(&values[..=j], 1)?;
            let (k, v) = if rep == 1 {
                (k, v)
            } else {
                (
                    k.unsqueeze(1)?
                        .expand((nkv, rep, e, hd))?
                        .reshape((nh, e, hd))?,
                    v.unsqueeze(1)?
                        .expand((nkv, rep, e, hd))?
                        .reshape((nh, e, hd))?,
                )
            };
            let attn = self
                .attend(&q, &k, &v, j * blk)?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((blk, nh * hd))?;
            let o = self.linear(&attn, &w.wo)?;
            let a = xs[j].add(&o)?;
            // 3. SwiGLU MLP
            let m = self.rms_norm(&a, &w.mlp_norm)?;
            let gate_lin = self.linear(&m, &w.w_gate)?;
            let gate = gate_lin.silu()?;
            let up = self.linear(&m, &w.w_up)?;
            let act = gate.mul(&up)?;
            let down = self.linear(&act, &w.w_down)?;
            let h = a.add(&down)?;
            let rows = blk.min(n.saturating_sub(j * blk));
            if let Some(sub) = sub.as_deref_mut() {
                // The same tensors the forward computed (k and v again through the same calls,
                // before the rotary embedding and the head split): copies, no new arithmetic.
                let k_lin = self.biased(self.linear(&normed[j], &w.wk)?, w, 1)?;
                let v_lin = self.biased(self.linear(&normed[j], &w.wv)?, w, 2)?;
                let f = |t: &Tensor| -> Result<Vec<f32>> {
                    Ok(t.narrow(0, 0, rows)?
                        .to_dtype(DType::F32)?
                        .flatten_all()?
                        .to_vec1::<f32>()?)
                };
                sub.normed.extend(f(&normed[j])?);
                sub.q.extend(f(&q_lin)?);
                sub.k.extend(f(&k_lin)?);
                sub.v.extend(f(&v_lin)?);
                sub.attn.extend(f(&attn)?);
                sub.o.extend(f(&o)?);
                sub.mlp_in.extend(f(&m)?);
                sub.gate.extend(f(&gate_lin)?);
                sub.up.extend(f(&up)?);
                sub.act.extend(f(&act)?);
                sub.down.extend(f(&down)?);
            }
            let h = h
                .narrow(0, 0, rows)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            result.extend_from_slice(&h);
        }
        Ok((result, captured))
    }
}

/// The Llama family's entry in [`crate::ARCHITECTURES`]: `llama` (or no `model_type`), `qwen2`
/// and `mistral` checkpoints, read by [`LlamaModel::load`].
pub const ARCHITECTURE: crate::Architecture = crate::Architecture {
    model_types: &["", "llama", "qwen2", "mistral"],
    load: |dir| Ok(Arc::new(LlamaModel::load(dir)?)),
};

impl crate::Model for LlamaModel {
    fn digest(&self) -> Digest {
        LlamaModel::digest(self)
    }

    fn decoder(&self) -> Option<&LlamaModel> {
        Some(self)
    }

    fn architecture(&self) -> &'static str {
        self.config.architecture()
    }

    fn is_encoder(&self) -> bool {
        false
    }

    fn dependency(&self) -> veritrace_protocol::Dependency {
        self.config.dependency()
    }

    /// Uniform ids below the vocabulary: `next_u32() mod vocab`.
    fn sim_prompt(&self, _key: u64, len: usize, next_u32: &mut dyn FnMut() -> u32) -> Vec<u32> {
        let vocab = self.config.vocab_size as u32;
        (0..len).map(|_| next_u32() % vocab).collect()
    }

    fn prove_committed(
        &self,
        runner: &crate::Runner,
        setup: &Setup,
        prompt: &[u32],
        output: usize,
        chunk: u32,
        hasher: veritrace_commit::HasherId,
    ) -> Result<crate::CommittedRun> {
        runner.llama_prove_run_committed(self, setup, prompt, output, chunk, hasher)
    }

    fn prove_on(
        &self,
        runner: &crate::Runner,
        setup: &Setup,
        prompt: &[u32],
        output: usize,
        chunk: u32,
        hasher: veritrace_commit::HasherId,
    ) -> Result<(veritrace_protocol::Statement, crate::Trace)> {
        runner.llama_prove_run(self, setup, prompt, output, chunk, hasher)
    }

    fn input_rows(&self, n: usize, chunk: usize, j: usize) -> Range<usize> {
        0..((j + 1) * chunk).min(n)
    }

    fn recompute_cell_on(
        &self,
        runner: &crate::Runner,
        setup: &Setup,
        chunk: usize,
        layer: usize,
        j: usize,
        inputs: CellInputs<'_>,
    ) -> Result<Vec<f32>> {
        runner.llama_recompute_cell(self, setup, chunk, layer, j, inputs)
    }

    fn recompute_on<'a>(
        &'a self,
        runner: &'a crate::Runner,
    ) -> Box<dyn veritrace_protocol::Recompute + 'a> {
        Box::new(crate::RecomputeOn {
            model: self,
            runner,
        })
    }

    fn final_norm_gain(&self) -> Option<Vec<f32>> {
        self.final_norm
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .ok()
    }

    fn logits_from_row(&self, setup: &Setup, row: &[f32]) -> Result<Vec<f32>> {
        LlamaModel::logits_from_row(self, setup, row)
    }

    /// The configuration with a quarter of the MLP width and the next seed, seeded weights.
    fn swap_model(&self) -> Result<Arc<dyn crate::Model>> {
        let c = &self.config;
        Ok(Arc::new(LlamaModel::new(ModelConfig {
            intermediate_size: c.intermediate_size.div_ceil(4),
            seed: c.seed.wrapping_add(1),
            ..c.clone()
        })?))
    }

    fn cell_cost(
        &self,
        setup: &Setup,
        reference: &Setup,
        layer: u32,
        rows: Range<u32>,
        _n: u32,
    ) -> f64 {
        crate::cost::cell_cost(&self.config, setup, reference, layer, rows)
    }
}

/// One head's rotary embedding in f32: `out = x·cos + rot(x)·sin` element by element, with
/// `rot(x) = (−x₂, x₁)` over the head's two halves; each product and the sum rounded to f32
/// (no fused multiply-add), so bitwise candle's element-wise `mul`, `neg` and `add`.
fn rope_row(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        out[i] = x[i] * cos[i] + (-x[i + half]) * sin[i];
    }
    for i in half..x.len() {
        out[i] = x[i] * cos[i] + x[i - half] * sin[i];
    }
}

/// The argmax of `logits`, the lowest index on ties; a NaN logit is an error.
fn greedy(logits: &[f32]) -> Result<usize> {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v.is_nan() {
            return Err(ModelError::NonFinite {
                what: "logits",
                index: i,
            });
        }
        if v > logits[best] {
            best = i;
        }
    }
    Ok(best)
}

/// [`rope_row`] with the tables' halves given once (`cos = [c, c]`, `sin = [s, s]`, as
/// [`Arith::rope_tables`] lays them out): the same operations, so the same bits. Head sizes
/// are even ([`ModelConfig::validate`]).
fn rope_row_half(x: &[f32], c: &[f32], s: &[f32], out: &mut [f32]) {
    let half = c.len();
    let (x1, x2) = x.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    for i in 0..half {
        o1[i] = x1[i] * c[i] + (-x2[i]) * s[i];
        o2[i] = x2[i] * c[i] + x1[i] * s[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in ±1 with a few exact zeros and negative zeros (the sign of zero is what a
    /// careless rewrite of the rotary embedding gets wrong).
    fn values(seed: u32, n: usize) -> Vec<f32> {
        (0..n as u32)
            .map(|i| match (i ^ seed).wrapping_mul(0x9E37_79B9) >> 20 {
                0..=40 => 0.0,
                41..=80 => -0.0,
                h => h as f32 / 2048.0 - 1.0,
            })
            .collect()
    }

    #[test]
    fn the_half_table_rotary_row_is_the_full_table_one_bitwise() {
        for hd in [2usize, 8, 64, 128] {
            let (x, c, sn) = (values(1, hd), values(2, hd / 2), values(3, hd / 2));
            let (cos, sin) = ([&c[..], &c[..]].concat(), [&sn[..], &sn[..]].concat());
            let (mut full, mut half) = (vec![0f32; hd], vec![1f32; hd]);
            rope_row(&x, &cos, &sin, &mut full);
            rope_row_half(&x, &c, &sn, &mut half);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&full), bits(&half), "head size {hd}");
        }
    }

    #[test]
    fn f32_rope_is_bitwise_candles_ops() {
        let model = LlamaModel::preset("small").expect("preset");
        let setup: Setup = "f32/attn=eager".parse().expect("setup");
        let arith = model.arith(&setup).expect("arith");
        let c = model.config();
        let (rows, heads, hd) = (19, c.num_heads, c.head_dim());
        let x = Tensor::from_vec(
            values(3, rows * heads * hd),
            (rows, heads, hd),
            &Device::Cpu,
        )
        .expect("x");
        let (cos, sin) = arith.rope_tables(40, rows).expect("tables");
        let fast = Arith::rope_heads(&x, &cos, &sin).expect("fast");
        let ops = Arith::rope(&x, &cos, &sin)
            .and_then(|t| Ok(t.transpose(0, 1)?.contiguous()?))
            .expect("ops");
        let bits = |t: &Tensor| -> Vec<u32> {
            let v = t.flatten_all().and_then(|t| t.to_vec1::<f32>());
            v.expect("values").iter().map(|v| v.to_bits()).collect()
        };
        assert_eq!(fast.dims(), ops.dims());
        assert_eq!(bits(&fast), bits(&ops));
    }

    #[test]
    fn context_heads_are_bitwise_the_ops_path() {
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("values")
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        for (preset, tile) in [("tiny", 8usize), ("small", 16)] {
            let model = LlamaModel::preset(preset).expect("preset");
            let setup: Setup = "f32/attn=eager".parse().expect("setup");
            let arith = model.arith(&setup).expect("arith");
            let c = model.config();
            let kvd = c.num_kv_heads * c.head_dim();
            let shape = (c.num_kv_heads, c.num_heads / c.num_kv_heads);
            // a full last block and a partial one (zero rows up to the span)
            for e in [3 * tile, 3 * tile - 5, 1] {
                let span = e.div_ceil(tile) * tile;
                let (k, v) = (values(1, e * kvd), values(2, e * kvd));
                let (cos, sin) = arith.rope_tables(0, span).expect("tables");
                let (k1, v1) = arith
                    .context_heads(&k, &v, e, span, &cos, &sin, shape)
                    .expect("one pass");
                let (k2, v2) = arith
                    .context_heads_by_ops(&k, &v, e, span, &cos, &sin, shape)
                    .expect("ops");
                assert_eq!(k1.dims(), k2.dims(), "{preset} e {e}");
                assert_eq!(bits(&k1), bits(&k2), "{preset} e {e}: keys");
                assert_eq!(bits(&v1), bits(&v2), "{preset} e {e}: values");
                // and the layout the score product reads is contiguous already
                assert!(k1.t().expect("t").is_contiguous());
            }
        }
    }
}
