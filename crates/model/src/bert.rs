//! BERT encoders — all-MiniLM-L6-v2 in particular — loaded from real weights, on candle-core
//! (CPU), under every numeric [`Setup`] that applies to an encoder.
//!
//! # Architecture
//!
//! The Hugging Face `BertModel` encoder (post-LayerNorm), without pooler:
//!
//! ```text
//! h_0[p] = LN_emb((word[tok_p] + type[0]) + pos[p])                    (token type 0 everywhere)
//! for l in 1..=L:                                                       (x = h_{l-1})
//!     q, k, v = x·Wqᵀ + bq,  x·Wkᵀ + bk,  x·Wvᵀ + bv
//!     ctx     = per head: softmax(q·kᵀ · (1/sqrt(hd)) + mask) · v       (bidirectional)
//!     a       = LN_attn((ctx·Woᵀ + bo) + x)
//!     h_l     = LN_out((gelu(a·Wiᵀ + bi)·Wo2ᵀ + bo2) + a)
//! ```
//!
//! * `LN(x; g, b) = (x − μ) / sqrt(mean((x − μ)²) + ε) ⊙ g + b` per row, two passes, f32.
//! * `gelu(x) = x/2 · (1 + erf(x/√2))`, the exact (erf) form that `hidden_act: "gelu"` means.
//! * `hd = hidden / heads`; the mask is additive, in f32: `0` for an attended key, `−∞` for a key
//!   whose attention mask is 0 and for the zero rows that pad the last tile. Every query row sees
//!   at least one real key, so `exp(s − max)` gives masked keys probability exactly 0.
//!
//! Linear weights are stored `[out, in]` (PyTorch convention) and applied as `x · Wᵀ + b`.
//!
//! # Weights
//!
//! [`BertModel::load`] reads `config.json` ([`BertConfig`]) and `model.safetensors` from a
//! directory. Tensor names are the Hugging Face ones, with or without a `bert.` prefix; every
//! tensor below must be present, F32, of exactly its shape and finite (others, such as the
//! pooler, are ignored). Canonical order (`i` = layer `0..L`, `d` = hidden, `m` = intermediate):
//!
//! `embeddings.word_embeddings.weight [vocab, d]`, `embeddings.position_embeddings.weight
//! [max_positions, d]`, `embeddings.token_type_embeddings.weight [type_vocab, d]`,
//! `embeddings.LayerNorm.weight [d]`, `embeddings.LayerNorm.bias [d]`; for each layer, under
//! `encoder.layer.{i}.`: `attention.self.query.weight [d, d]`, `attention.self.query.bias [d]`,
//! the same for `key` and `value`, `attention.output.dense.weight [d, d]`,
//! `attention.output.dense.bias [d]`, `attention.output.LayerNorm.weight [d]`,
//! `attention.output.LayerNorm.bias [d]`, `intermediate.dense.weight [m, d]`,
//! `intermediate.dense.bias [m]`, `output.dense.weight [d, m]`, `output.dense.bias [d]`,
//! `output.LayerNorm.weight [d]`, `output.LayerNorm.bias [d]`.
//!
//! # Model digest
//!
//! [`BertModel::digest`] is the engine-independent digest of [`crate::digest`] and
//! `specs/model-digest.md`: architecture `bert`, the fields of [`BertConfig::digest_fields`],
//! and the canonical tensors above under their canonical (unprefixed) names. It names the
//! arithmetic, not the file: the same weights with or without the `bert.` prefix, in another
//! float storage type, or with other unused tensors, have the same digest.
//!
//! # Shape-invariant tiles
//!
//! As in the [decoder](crate::llama), every layer is computed in tiles of `c` token rows (`c` =
//! the trace's chunk size), the last one padded with zero rows to a full `c` rows, so that every
//! matmul has a shape independent of which cell is computed. Attention is bidirectional, so
//! layer `l` for tile `j` reads every row of `h_{l−1}`:
//!
//! 1. for every tile `t` of the sequence: `k_t = x_t·Wkᵀ + bk`, `v_t = x_t·Wvᵀ + bv`, each its
//!    own `[c, d]` matmul;
//! 2. `q_j = x_j·Wqᵀ + bq`; attention of `q_j` over the concatenated `k_0..k_{n−1}`,
//!    `v_0..v_{n−1}` (keys `0..n·c` of the `n` tiles, padding rows masked);
//! 3. output projection, residual, LayerNorm, MLP, residual and LayerNorm on the tile's `c` rows.
//!
//! A full forward ([`BertModel::trace`]) runs exactly these operations for every tile and
//! [`BertModel::recompute_cell`] runs them for one, so a cell recomputed alone from all rows of
//! the layer below is bitwise the same as those rows of the full forward, under every setup. The
//! embeddings are computed per tile too (sums, then LayerNorm on a `[c, d]` tile).
//!
//! # Numeric setups
//!
//! The encoder runs every [`Setup`] of [`crate::setup`] except `order=decode`, with the same
//! arithmetic rules as the [decoder](crate::llama) (the description above is the `f32/attn=eager`
//! case, whose results these rules leave unchanged):
//!
//! * **precision**: the linear weights and biases and every activation (layer inputs, `q`, `k`,
//!   `v`, the attention context, projections, residual sums, the MLP and its gelu) are in the
//!   setup's dtype; candle computes a 16-bit gelu in f64 and rounds it once. LayerNorm converts
//!   its input to f32, computes the statistics, normalizes and applies its f32 gain and bias in
//!   f32, and rounds the result to the dtype. Attention scores are computed in the dtype and
//!   converted to f32 before the `1/sqrt(hd)` scale; masks (`0` / `−∞`) and the softmax and its
//!   statistics are f32; probabilities are rounded to the dtype for the product with `v`. The
//!   embeddings: every table value is rounded to the dtype and each of the two sums
//!   `(word + type) + position` is rounded to it (as a 16-bit add does), then LayerNorm as above,
//!   so `h_0` holds dtype values. A trace stores every value as f32 (exactly).
//! * **attention** (bidirectional; the key mask of padding and masked positions always applies):
//!   `eager`; `tiled:B`: the online softmax of the decoder over key blocks of `B` keys (running
//!   maximum, sum and output in f32, the output block product from probabilities rounded to the
//!   dtype), where a block whose keys are all masked is skipped (the mask is per key, so every
//!   other block shows every query at least one key); `window:W`: query `p` sees key `k` iff
//!   `|p − k| < W` — a query whose window holds no visible key (only a masked or padding
//!   position can be one) sees every visible key instead, so no row is all `−∞`; `topk:K`:
//!   each query keeps its `K` highest visible scores (every score equal to the `K`-th highest
//!   kept) and masks the rest before the softmax. A window or top-k covering every key is
//!   bitwise `eager`.
//! * **quant**: every linear weight (`query`, `key`, `value`, `attention.output.dense`,
//!   `intermediate.dense`, `output.dense`) is quantized then dequantized with
//!   [`crate::quant::quantize_dequantize`] before the cast to the dtype; embeddings, LayerNorm
//!   parameters and biases are not quantized.
//! * **splitk** and **batch**: in the one linear function, as in the decoder (batch: the tile's
//!   rows stacked `batch` times into one matmul and the first rows kept; split-K: `s`
//!   contiguous slices of the inner dimension, each product in f32 from the exactly widened
//!   operands, summed in slice order in f32 and rounded once to the dtype); the bias is added
//!   after, in the dtype.
//! * **order=decode** is refused ([`ModelError::UnsupportedSetup`]): an encoder has no
//!   token-by-token order.
//! * **skip=l**: `h_l = h_{l−1}`; **reuse=l**: `h_l = h_{l−1} + (h_{l−1} − h_{l−2})` in the dtype.
//!   A reused layer cannot be recomputed from one layer's rows, so
//!   [`BertModel::recompute_cell`] refuses it; a skipped layer's cell is its input's rows.
//!
//! Prepared weights (cast and quantized) are built once per (precision, quantization) and
//! shared by clones of the model.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};
use safetensors::tensor::Dtype as StDtype;
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use veritrace_commit::Digest;

use crate::invariant::{self as inv, PackedMatrix};
use crate::ops::dtype_of;
use crate::setup::Order;
use crate::{
    first_non_finite, Attention, CellInputs, Kernels, ModelError, NamedTensor, Precision, Result,
    Setup,
};

/// Environment variable naming the directory that holds all-MiniLM-L6-v2.
pub const MINILM_ENV: &str = "VERITRACE_MINILM";

/// The files a model directory must hold (what `scripts/install-minilm.sh` installs).
pub const MODEL_FILES: [&str; 3] = ["model.safetensors", "config.json", "tokenizer.json"];

/// The directory of all-MiniLM-L6-v2: `$VERITRACE_MINILM` when that variable is set and not
/// empty, else `models/all-MiniLM-L6-v2` under the workspace root (the directory this crate was
/// built from, two levels above its manifest). `Some` only if every file of [`MODEL_FILES`] is
/// there; `scripts/install-minilm.sh` puts them in the default place.
pub fn minilm_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os(MINILM_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .nth(2)?
            .join("models/all-MiniLM-L6-v2"),
    };
    MODEL_FILES
        .iter()
        .all(|f| dir.join(f).is_file())
        .then_some(dir)
}

fn absolute() -> String {
    "absolute".to_string()
}

/// Hyperparameters of a BERT encoder, read from a Hugging Face `config.json` (other keys are
/// ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Number of encoder layers `L` (a trace has `L + 1` hidden states).
    pub num_hidden_layers: usize,
    /// Attention heads; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Activation of the MLP; only `"gelu"` (the exact, erf form) is supported.
    pub hidden_act: String,
    /// Number of learned positions: the longest sequence the model takes.
    pub max_position_embeddings: usize,
    /// Number of token types (segment embeddings); a trace uses type 0.
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Position embedding type; only `"absolute"` (the default when absent) is supported.
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

/// The `config.json` fields a BERT checkpoint's encoder computation depends on, read by
/// [`BertConfig`] or checked by [`check_fields`].
pub const BERT_COMPUTED_FIELDS: &[&str] = &[
    "model_type",
    "architectures",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "position_embedding_type",
    "is_decoder",
    "add_cross_attention",
];

/// `config.json` fields that do not change the encoder's hidden states (dropout and
/// initialization, task heads' labels, special-token ids, feed-forward chunking over the
/// sequence, which computes each row identically, file metadata): accepted and ignored. Any
/// field in neither list is refused.
pub const BERT_INERT_FIELDS: &[&str] = &[
    "_name_or_path",
    "_commit_hash",
    "attention_probs_dropout_prob",
    "hidden_dropout_prob",
    "classifier_dropout",
    "gradient_checkpointing",
    "initializer_range",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "id2label",
    "label2id",
    "problem_type",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "chunk_size_feed_forward",
    "tokenizer_class",
];

/// Refuses, naming the field, a BERT `config.json` whose `model_type` is not `bert`, whose
/// `architectures` are not BERT classes, that is a decoder or has cross-attention, or that has a
/// field in neither [`BERT_COMPUTED_FIELDS`] nor [`BERT_INERT_FIELDS`].
pub fn check_fields(value: &serde_json::Value) -> std::result::Result<(), String> {
    let Some(map) = value.as_object() else {
        return Err("not a JSON object".into());
    };
    if let Some(t) = map.get("model_type").filter(|t| t.as_str() != Some("bert")) {
        return Err(format!("model_type {t} is not bert"));
    }
    if let Some(a) = map.get("architectures") {
        let ok = a.as_array().is_some_and(|a| {
            a.iter()
                .all(|x| x.as_str().is_some_and(|x| x.starts_with("Bert")))
        });
        if !ok {
            return Err(format!("architectures {a} are not BERT classes"));
        }
    }
    for flag in ["is_decoder", "add_cross_attention"] {
        if let Some(v) = map.get(flag).filter(|v| v.as_bool() != Some(false)) {
            return Err(format!(
                "{flag} {v}: only a bidirectional encoder is computed"
            ));
        }
    }
    match crate::llama::unknown_field(map, "BERT", |k| {
        BERT_COMPUTED_FIELDS.contains(&k) || BERT_INERT_FIELDS.contains(&k)
    }) {
        Some(m) => Err(m),
        None => Ok(()),
    }
}

impl BertConfig {
    /// Reads and validates a Hugging Face `config.json` (strictly: [`check_fields`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::files::read_text(path, "a config.json").map_err(|e| match e {
            crate::files::FileError::Read { source, .. } => ModelError::Io {
                path: path.display().to_string(),
                source,
            },
            other => other.into(),
        })?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::InvalidConfig(format!("{}: not JSON: {e}", path.display())))?;
        check_fields(&value)
            .map_err(|m| ModelError::InvalidConfig(format!("{}: {m}", path.display())))?;
        let config: BertConfig = serde_json::from_value(value).map_err(|e| {
            ModelError::InvalidConfig(format!("{}: not a BERT config: {e}", path.display()))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The config fields of the model digest, in `specs/model-digest.md`'s order:
    /// `vocab_size`, `hidden_size`, `num_hidden_layers`, `num_attention_heads`,
    /// `intermediate_size` (integers), `hidden_act` (string), `max_position_embeddings`,
    /// `type_vocab_size` (integers), `layer_norm_eps` (float), `position_embedding_type`
    /// (string).
    pub fn digest_fields(&self) -> Vec<(&'static str, crate::digest::FieldValue)> {
        use crate::digest::FieldValue::{Float, Int, Str};
        vec![
            ("vocab_size", Int(self.vocab_size as u64)),
            ("hidden_size", Int(self.hidden_size as u64)),
            ("num_hidden_layers", Int(self.num_hidden_layers as u64)),
            ("num_attention_heads", Int(self.num_attention_heads as u64)),
            ("intermediate_size", Int(self.intermediate_size as u64)),
            ("hidden_act", Str(self.hidden_act.clone())),
            (
                "max_position_embeddings",
                Int(self.max_position_embeddings as u64),
            ),
            ("type_vocab_size", Int(self.type_vocab_size as u64)),
            ("layer_norm_eps", Float(self.layer_norm_eps)),
            (
                "position_embedding_type",
                Str(self.position_embedding_type.clone()),
            ),
        ]
    }

    /// Head size `hidden / heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Checks that every size is positive and at most 2^20, that the heads divide the width,
    /// that the activation is exact gelu with absolute positions, and that epsilon is finite and
    /// positive.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        crate::llama::check_sizes(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ])?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "{} heads do not divide width {}",
                self.num_attention_heads, self.hidden_size
            ));
        }
        if self.hidden_act != "gelu" {
            return bad(format!(
                "hidden_act {:?} is not supported (only \"gelu\", the exact erf form)",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return bad(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return bad(format!(
                "layer_norm_eps {} must be positive",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }

    /// Canonical tensor names and shapes, in the digest order of the [module docs](self).
    fn tensor_specs(&self) -> Vec<(String, Vec<usize>)> {
        let (d, m) = (self.hidden_size, self.intermediate_size);
        let mut specs = vec![
            (
                "embeddings.word_embeddings.weight".to_string(),
                vec![self.vocab_size, d],
            ),
            (
                "embeddings.position_embeddings.weight".to_string(),
                vec![self.max_position_embeddings, d],
            ),
            (
                "embeddings.token_type_embeddings.weight".to_string(),
                vec![self.type_vocab_size, d],
            ),
            ("embeddings.LayerNorm.weight".to_string(), vec![d]),
            ("embeddings.LayerNorm.bias".to_string(), vec![d]),
        ];
        for i in 0..self.num_hidden_layers {
            let p = |s: &str| format!("encoder.layer.{i}.{s}");
            for (name, shape) in [
                ("attention.self.query.weight", vec![d, d]),
                ("attention.self.query.bias", vec![d]),
                ("attention.self.key.weight", vec![d, d]),
                ("attention.self.key.bias", vec![d]),
                ("attention.self.value.weight", vec![d, d]),
                ("attention.self.value.bias", vec![d]),
                ("attention.output.dense.weight", vec![d, d]),
                ("attention.output.dense.bias", vec![d]),
                ("attention.output.LayerNorm.weight", vec![d]),
                ("attention.output.LayerNorm.bias", vec![d]),
                ("intermediate.dense.weight", vec![m, d]),
                ("intermediate.dense.bias", vec![m]),
                ("output.dense.weight", vec![d, m]),
                ("output.dense.bias", vec![d]),
                ("output.LayerNorm.weight", vec![d]),
                ("output.LayerNorm.bias", vec![d]),
            ] {
                specs.push((p(name), shape));
            }
        }
        specs
    }
}

/// One encoder layer's weights, in canonical order.
#[derive(Debug, Clone)]
struct Layer {
    wq: Tensor,
    bq: Tensor,
    wk: Tensor,
    bk: Tensor,
    wv: Tensor,
    bv: Tensor,
    wo: Tensor,
    bo: Tensor,
    attn_ln_g: Tensor,
    attn_ln_b: Tensor,
    wi: Tensor,
    bi: Tensor,
    wo2: Tensor,
    bo2: Tensor,
    out_ln_g: Tensor,
    out_ln_b: Tensor,
}

/// A BERT encoder: configuration and weights (CPU; held in f32, prepared per setup).
#[derive(Debug, Clone)]
pub struct BertModel {
    config: BertConfig,
    /// Embedding tables, row-major: gathered row by row in plain f32 (shared, so a clone is
    /// cheap, as it is for the tensors).
    word: Arc<[f32]>,
    position: Arc<[f32]>,
    token_type: Arc<[f32]>,
    emb_ln_g: Tensor,
    emb_ln_b: Tensor,
    layers: Vec<Layer>,
    digest: Digest,
    /// Weights prepared per (precision, quantization), shared by clones.
    prepared: WeightCache,
    /// The checkpoint's tokenizer, when it has a `tokenizer.json` (text input).
    tokenizer: Option<Arc<crate::TextTokenizer>>,
}

/// The engine-independent digest ([`crate::digest`], `specs/model-digest.md`): architecture
/// `bert`, the fields of [`BertConfig::digest_fields`], the canonical tensors.
fn digest_of(config: &BertConfig, tensors: &[NamedTensor]) -> Digest {
    crate::digest::model_digest("bert", &config.digest_fields(), tensors)
}

/// Reads the canonical tensors of `config` from safetensors bytes, checking presence, dtype,
/// shape and finiteness.
fn read_tensors(path: &Path, bytes: &[u8], config: &BertConfig) -> Result<Vec<NamedTensor>> {
    let file = path.display().to_string();
    let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::WeightsFile {
        path: file.clone(),
        reason: e.to_string(),
    })?;
    let prefix = if st.tensor("bert.embeddings.word_embeddings.weight").is_ok() {
        "bert."
    } else {
        ""
    };
    // Too few tensors for the layer count: name the first missing one from the first layers
    // alone, before building every layer's names (fewer than 5 + 16k tensors leave one of the
    // first 5 + 16k names missing).
    let expected = 5 + 16 * config.num_hidden_layers;
    if st.len() < expected {
        let probe = BertConfig {
            num_hidden_layers: (st.len() / 16 + 1).min(config.num_hidden_layers),
            ..config.clone()
        };
        if let Some((name, _)) = probe
            .tensor_specs()
            .into_iter()
            .find(|(name, _)| st.tensor(&format!("{prefix}{name}")).is_err())
        {
            return Err(ModelError::MissingTensor {
                path: file,
                name: format!("{prefix}{name}"),
            });
        }
    }
    config
        .tensor_specs()
        .into_iter()
        .map(|(name, shape)| {
            let view =
                st.tensor(&format!("{prefix}{name}"))
                    .map_err(|_| ModelError::MissingTensor {
                        path: file.clone(),
                        name: format!("{prefix}{name}"),
                    })?;
            if view.dtype() != StDtype::F32 {
                return Err(ModelError::WeightsFile {
                    path: file.clone(),
                    reason: format!("{name} is {:?}, not F32", view.dtype()),
                });
            }
            if view.shape() != shape.as_slice() {
                return Err(ModelError::TensorShape {
                    name,
                    expected: shape,
                    got: view.shape().to_vec(),
                });
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if let Some(index) = first_non_finite(&data) {
                return Err(ModelError::NonFiniteWeight { name, index });
            }
            Ok((name, shape, data))
        })
        .collect()
}

impl BertModel {
    /// Loads `config.json` and `model.safetensors` from `dir` (see the [module docs](self) for
    /// what the weights file must hold). Typed errors for a missing or unreadable file, a
    /// malformed config, a missing tensor, a wrong dtype or shape, and non-finite weights.
    pub fn load(dir: &Path) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let path = dir.join("model.safetensors");
        let bytes = crate::read_model_file(&path, u64::MAX, "weights")?;
        let tensors = read_tensors(&path, &bytes, &config)?;
        drop(bytes);
        let mut model = Self::from_tensors(config, tensors)?;
        model.tokenizer = crate::TextTokenizer::from_dir(dir)?.map(Arc::new);
        Ok(model)
    }

    /// The checkpoint's tokenizer (`tokenizer.json`), if it has one.
    pub fn tokenizer(&self) -> Option<&crate::TextTokenizer> {
        self.tokenizer.as_deref()
    }

    /// The model of `config` with `tensors` in the canonical order (as read by
    /// [`BertModel::load`], already checked).
    fn from_tensors(config: BertConfig, tensors: Vec<NamedTensor>) -> Result<Self> {
        let digest = digest_of(&config, &tensors);
        let mut it = tensors.into_iter().map(|(_, shape, data)| (shape, data));
        let mut raw = || {
            it.next()
                .ok_or_else(|| ModelError::InvalidConfig("tensor list ended early".into()))
        };
        let word = raw()?.1.into();
        let position = raw()?.1.into();
        let token_type = raw()?.1.into();
        let mut next = || -> Result<Tensor> {
            let (shape, data) = raw()?;
            Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
        };
        let emb_ln_g = next()?;
        let emb_ln_b = next()?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for _ in 0..config.num_hidden_layers {
            layers.push(Layer {
                wq: next()?,
                bq: next()?,
                wk: next()?,
                bk: next()?,
                wv: next()?,
                bv: next()?,
                wo: next()?,
                bo: next()?,
                attn_ln_g: next()?,
                attn_ln_b: next()?,
                wi: next()?,
                bi: next()?,
                wo2: next()?,
                bo2: next()?,
                out_ln_g: next()?,
                out_ln_b: next()?,
            });
        }
        Ok(BertModel {
            config,
            word,
            position,
            token_type,
            emb_ln_g,
            emb_ln_b,
            layers,
            digest,
            prepared: WeightCache::default(),
            tokenizer: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The embedding sums `(word + type) + pos` of `tokens` before the embedding LayerNorm,
    /// each addition rounded to `precision` as [`BertModel::trace`] does (for the GPU path,
    /// which runs the LayerNorm on the device).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn embedding_sums(&self, precision: Precision, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        let r = |v: f32| match precision {
            Precision::F32 => v,
            Precision::Bf16 => half::bf16::from_f32(v).to_f32(),
            Precision::F16 => half::f16::from_f32(v).to_f32(),
        };
        let d = self.config.hidden_size;
        let ty = &self.token_type[..d];
        let mut out = Vec::with_capacity(tokens.len() * d);
        for (p, &tok) in tokens.iter().enumerate() {
            let w = &self.word[tok as usize * d..][..d];
            let pos = &self.position[p * d..][..d];
            out.extend((0..d).map(|i| r(r(r(w[i]) + r(ty[i])) + r(pos[i]))));
        }
        Ok(out)
    }

    /// The f32 weights in canonical order after the embedding tables (see the module docs):
    /// the embedding LayerNorm's gain and bias, then each layer's sixteen tensors.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn dense_tensors(&self) -> Result<Vec<Vec<f32>>> {
        let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let mut out = vec![flat(&self.emb_ln_g)?, flat(&self.emb_ln_b)?];
        for l in &self.layers {
            for t in [
                &l.wq,
                &l.bq,
                &l.wk,
                &l.bk,
                &l.wv,
                &l.bv,
                &l.wo,
                &l.bo,
                &l.attn_ln_g,
                &l.attn_ln_b,
                &l.wi,
                &l.bi,
                &l.wo2,
                &l.bo2,
                &l.out_ln_g,
                &l.out_ln_b,
            ] {
                out.push(flat(t)?);
            }
        }
        Ok(out)
    }

    /// The model digest (see the [module docs](self)).
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Checks that `setup` is valid and fits this encoder: not `order=decode` (an encoder has
    /// no token-by-token order), and a skipped or reused layer exists.
    pub fn check_setup(&self, setup: &Setup) -> Result<()> {
        setup.validate()?;
        if setup.order == Order::Decode {
            return Err(ModelError::UnsupportedSetup(format!(
                "{setup}: order=decode does not apply to the BERT encoder (bidirectional \
                 attention has no token-by-token KV-cache order; every row attends to every \
                 key), so only the default prefill order is run"
            )));
        }
        let layers = self.config.num_hidden_layers;
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

    /// Checks a token sequence: at least one token, at most `max_position_embeddings`, every id
    /// below the vocabulary size.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(ModelError::InvalidArgument("no tokens to run".into()));
        }
        if tokens.len() > self.config.max_position_embeddings {
            return Err(ModelError::SequenceTooLong {
                tokens: tokens.len(),
                max: self.config.max_position_embeddings,
            });
        }
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

    /// Checks an attention mask for `n` tokens: `n` entries, each 0 or 1, at least one 1.
    pub(crate) fn check_mask(mask: &[u32], n: usize) -> Result<()> {
        if mask.len() != n {
            return Err(ModelError::WrongLength {
                what: "attention mask",
                expected: n.to_string(),
                got: mask.len(),
            });
        }
        if let Some(i) = mask.iter().position(|&m| m > 1) {
            return Err(ModelError::InvalidArgument(format!(
                "attention mask entry {i} is {}, not 0 or 1",
                mask[i]
            )));
        }
        if !mask.contains(&1) {
            return Err(ModelError::InvalidArgument(
                "the attention mask masks every position".into(),
            ));
        }
        Ok(())
    }

    /// The full trace `h_0 … h_L` of `tokens` (every position attended) under `setup`,
    /// computed in tiles of `tile` rows.
    pub fn trace(&self, setup: &Setup, tokens: &[u32], tile: usize) -> Result<crate::Trace> {
        self.trace_masked(setup, tokens, &vec![1; tokens.len()], tile)
    }

    /// As [`BertModel::trace`], with an attention mask (one entry per token, 1 = attend,
    /// 0 = masked: no position gives a masked key any attention; masked positions still get
    /// rows of their own).
    pub fn trace_masked(
        &self,
        setup: &Setup,
        tokens: &[u32],
        mask: &[u32],
        tile: usize,
    ) -> Result<crate::Trace> {
        self.check_setup(setup)?;
        self.check_tokens(tokens)?;
        Self::check_mask(mask, tokens.len())?;
        crate::ops::check_tile(tile)?;
        let n = tokens.len();
        let tiles = n.div_ceil(tile);
        let invariant = setup.kernels == Kernels::Invariant;
        // the invariant kernels compute all rows at once and pad nothing
        let key_mask = KeyMask::new(mask, if invariant { n } else { tiles * tile })?;
        let arith = self.arith(setup)?;
        let mut layers: Vec<Vec<f32>> = Vec::with_capacity(self.config.num_hidden_layers + 1);
        layers.push(if invariant {
            arith.inv_embed(tokens, 0..n)?
        } else {
            arith.embed_tiles(tokens, tile, 0..tiles)?
        });
        for l in 1..=self.config.num_hidden_layers {
            let x = &layers[l - 1];
            let y = if setup.skip == Some(l) {
                x.clone()
            } else if setup.reuse == Some(l) {
                arith.reuse_update(x, &layers[l - 2])?
            } else if invariant {
                arith.inv_layer(l - 1, x, &key_mask, 0..n)?
            } else {
                arith.layer_tiles(l - 1, x, n, tile, &key_mask, 0..tiles)?
            };
            layers.push(y);
        }
        Ok(crate::Trace {
            tokens: n,
            hidden: self.config.hidden_size,
            layers,
            keys: Vec::new(),
        })
    }

    /// Recomputes the cell `(layer, chunk)` with chunk size `tile`: the rows
    /// `chunk·tile .. min((chunk + 1)·tile, T)` of `h_layer`, from every row of the layer below
    /// (`inputs` = [`CellInputs::Hidden`] with all `T` rows of `h_{layer−1}`) or, for layer 0,
    /// from the whole token sequence ([`CellInputs::Tokens`] with all `T` tokens). Every position
    /// is attended. Bitwise identical to those rows of [`BertModel::trace`] under the same
    /// setup. A layer that `setup` reuses cannot be recomputed from one layer's rows and is
    /// refused; a skipped layer's cell is the input's rows.
    pub fn recompute_cell(
        &self,
        setup: &Setup,
        tile: usize,
        layer: usize,
        chunk: usize,
        inputs: CellInputs<'_>,
    ) -> Result<Vec<f32>> {
        let rows = match inputs {
            CellInputs::Tokens(t) => t.len(),
            CellInputs::Hidden(h) => h.len() / self.config.hidden_size,
        };
        self.recompute_cell_masked(setup, tile, layer, chunk, inputs, &vec![1; rows])
    }

    /// As [`BertModel::recompute_cell`], with the attention mask of [`BertModel::trace_masked`].
    pub fn recompute_cell_masked(
        &self,
        setup: &Setup,
        tile: usize,
        layer: usize,
        chunk: usize,
        inputs: CellInputs<'_>,
        mask: &[u32],
    ) -> Result<Vec<f32>> {
        self.check_setup(setup)?;
        crate::ops::check_tile(tile)?;
        let c = &self.config;
        if layer > c.num_hidden_layers {
            return Err(ModelError::InvalidArgument(format!(
                "layer {layer} is beyond the model's {} layers",
                c.num_hidden_layers
            )));
        }
        let d = c.hidden_size;
        let n = match inputs {
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
        if n == 0 || n > c.max_position_embeddings {
            return Err(ModelError::WrongLength {
                what: "input rows",
                expected: format!("1 to {} rows", c.max_position_embeddings),
                got: n,
            });
        }
        Self::check_mask(mask, n)?;
        let tiles = n.div_ceil(tile);
        if chunk >= tiles {
            return Err(ModelError::InvalidArgument(format!(
                "chunk {chunk} is beyond the {tiles} chunks of {n} rows in tiles of {tile}"
            )));
        }
        match (layer, inputs) {
            (0, CellInputs::Tokens(t)) => {
                self.check_tokens(t)?;
                let arith = self.arith(setup)?;
                if setup.kernels == Kernels::Invariant {
                    return arith.inv_embed(t, chunk * tile..((chunk + 1) * tile).min(n));
                }
                arith.embed_tiles(t, tile, chunk..chunk + 1)
            }
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
                    let lo = chunk * tile;
                    let hi = ((chunk + 1) * tile).min(n);
                    return Ok(h[lo * d..hi * d].to_vec());
                }
                if setup.reuse == Some(l) {
                    return Err(ModelError::UnsupportedSetup(format!(
                        "{setup}: layer {l} reuses layer {}'s update and cannot be recomputed \
                         from the rows of one layer",
                        l - 1
                    )));
                }
                let arith = self.arith(setup)?;
                if setup.kernels == Kernels::Invariant {
                    let rows = chunk * tile..((chunk + 1) * tile).min(n);
                    return arith.inv_layer(l - 1, h, &KeyMask::new(mask, n)?, rows);
                }
                let key_mask = KeyMask::new(mask, tiles * tile)?;
                arith.layer_tiles(l - 1, h, n, tile, &key_mask, chunk..chunk + 1)
            }
        }
    }

    /// The weights of `setup` (precision and quantization applied), built once and cached.
    fn weights_for(&self, setup: &Setup) -> Result<Arc<Weights>> {
        self.prepared.get_or_prepare(setup, || {
            // A linear weight: quantized (if the setup says so), then in the setup's dtype; a
            // bias: never quantized, in the setup's dtype.
            let weight = |t: &Tensor| crate::ops::prepare_weight(t, setup, true);
            let bias = |t: &Tensor| crate::ops::prepare_weight(t, setup, false);
            let layers = self
                .layers
                .iter()
                .map(|l| {
                    Ok(Layer {
                        wq: weight(&l.wq)?,
                        bq: bias(&l.bq)?,
                        wk: weight(&l.wk)?,
                        bk: bias(&l.bk)?,
                        wv: weight(&l.wv)?,
                        bv: bias(&l.bv)?,
                        wo: weight(&l.wo)?,
                        bo: bias(&l.bo)?,
                        attn_ln_g: l.attn_ln_g.clone(),
                        attn_ln_b: l.attn_ln_b.clone(),
                        wi: weight(&l.wi)?,
                        bi: bias(&l.bi)?,
                        wo2: weight(&l.wo2)?,
                        bo2: bias(&l.bo2)?,
                        out_ln_g: l.out_ln_g.clone(),
                        out_ln_b: l.out_ln_b.clone(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let packed = layers.iter().map(|_| std::sync::OnceLock::new()).collect();
            Ok(Weights { layers, packed })
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

/// The weights one setup computes with: linear weights and biases in the setup's dtype (the
/// weights quantized if the setup says so), LayerNorm gains and biases in f32. The embedding
/// tables stay in the model (f32) and are rounded as they are read.
#[derive(Debug)]
struct Weights {
    layers: Vec<Layer>,
    /// The layers packed for the invariant kernels, each on its first use.
    packed: Vec<std::sync::OnceLock<PackedLayer>>,
}

/// One encoder layer's weights for the invariant kernels (`kernels=invariant`): the six linear
/// maps packed ([`PackedMatrix`]), biases and LayerNorm parameters as f32 rows.
#[derive(Debug)]
struct PackedLayer {
    wq: PackedMatrix,
    wk: PackedMatrix,
    wv: PackedMatrix,
    wo: PackedMatrix,
    wi: PackedMatrix,
    wo2: PackedMatrix,
    /// `bq, bk, bv, bo, attn_ln_g, attn_ln_b, bi, bo2, out_ln_g, out_ln_b`.
    vectors: [Vec<f32>; 10],
}

impl PackedLayer {
    fn of(l: &Layer) -> Result<Self> {
        let (vec, pack) = (crate::ops::f32_values, crate::ops::pack_weight);
        Ok(PackedLayer {
            wq: pack(&l.wq)?,
            wk: pack(&l.wk)?,
            wv: pack(&l.wv)?,
            wo: pack(&l.wo)?,
            wi: pack(&l.wi)?,
            wo2: pack(&l.wo2)?,
            vectors: [
                vec(&l.bq)?,
                vec(&l.bk)?,
                vec(&l.bv)?,
                vec(&l.bo)?,
                vec(&l.attn_ln_g)?,
                vec(&l.attn_ln_b)?,
                vec(&l.bi)?,
                vec(&l.bo2)?,
                vec(&l.out_ln_g)?,
                vec(&l.out_ln_b)?,
            ],
        })
    }
}

/// Query rows per block of the invariant attention (the blocks' results are the same rows).
const INV_QUERY_BLOCK: usize = 64;

/// The prepared-weights cache shared by clones of a model.
type WeightCache = crate::ops::WeightCache<Weights>;

/// Which keys a query may attend to: visible where the attention mask is 1, hidden where it
/// is 0 and for the padding keys past its end (the per-key part of [`crate::ops::Visibility`]).
struct KeyMask {
    visible: Vec<bool>,
}

impl KeyMask {
    fn new(mask: &[u32], keys: usize) -> Result<Self> {
        Ok(KeyMask {
            visible: (0..keys).map(|k| mask.get(k) == Some(&1)).collect(),
        })
    }
}

/// The arithmetic of one setup: the building blocks every layer computation goes through.
struct Arith<'m> {
    model: &'m BertModel,
    setup: Setup,
    dtype: DType,
    w: Arc<Weights>,
}

impl Arith<'_> {
    fn cast(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.to_dtype(self.dtype)?)
    }

    /// An f32 value rounded to the setup's precision (to nearest, ties to even), as f32.
    fn round(&self, v: f32) -> f32 {
        match self.setup.precision {
            Precision::F32 => v,
            Precision::Bf16 => half::bf16::from_f32(v).to_f32(),
            Precision::F16 => half::f16::from_f32(v).to_f32(),
        }
    }

    /// `x · Wᵀ + b` for `x: [r, in]`, `w: [out, in]`, `b: [out]`, with the setup's batch and
    /// split-K exactly as in the [decoder](crate::llama) (batch: the rows stacked `batch` times
    /// into one matmul, the first `r` output rows kept; split-K: `s` contiguous slices of the
    /// inner dimension, each product in f32 from the exactly widened operands, summed in slice
    /// order in f32 and rounded once to the dtype); the bias is then added in the dtype.
    fn linear(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(crate::ops::matmul_t(x, w, &self.setup, self.dtype)?.broadcast_add(b)?)
    }

    /// Two-pass LayerNorm over the last dimension with statistics in f32: `x` is converted to
    /// f32, normalized, scaled by the f32 gain and shifted by the f32 bias, then rounded to the
    /// setup's dtype.
    fn layer_norm(&self, x: &Tensor, gain: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let std = var.affine(1.0, self.model.config.layer_norm_eps)?.sqrt()?;
        Ok(centered
            .broadcast_div(&std)?
            .broadcast_mul(gain)?
            .broadcast_add(bias)?
            .to_dtype(self.dtype)?)
    }

    /// `[rows, hidden]` to `[heads, rows, hd]`, contiguous.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, _) = x.dims2()?;
        let c = &self.model.config;
        Ok(x.reshape((rows, c.num_attention_heads, c.head_dim()))?
            .transpose(0, 1)?
            .contiguous()?)
    }

    /// `h_l = h_{l−1} + (h_{l−1} − h_{l−2})` in the setup's dtype.
    fn reuse_update(&self, prev: &[f32], prev2: &[f32]) -> Result<Vec<f32>> {
        crate::ops::reuse_update(prev, prev2, self.dtype)
    }

    /// Multi-head attention of `q: [heads, tq, hd]` (queries at positions `q0..q0 + tq`) over
    /// `k, v: [heads, e, hd]` (keys `0..e`) under the setup's attention
    /// ([`crate::ops::attend`]: bidirectional over the keys `km` shows, within the setup's
    /// window); returns the context `[tq, hidden]` in the setup's dtype. Scores are computed in
    /// the dtype, converted to f32 and scaled by `1/sqrt(hd)`; masks, the softmax and its
    /// statistics are f32; probabilities are rounded to the dtype for the product with `v`.
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        km: &KeyMask,
        q0: usize,
    ) -> Result<Tensor> {
        let (heads, rows, hd) = q.dims3()?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores_of = |k: &Tensor| -> Result<Tensor> {
            Ok(q.matmul(&k.t()?)?
                .to_dtype(DType::F32)?
                .affine(scale, 0.0)?)
        };
        let visibility = crate::ops::Visibility {
            causal: false,
            keys: Some(&km.visible),
            window: match self.setup.attention {
                Attention::Window { size } => size,
                _ => usize::MAX,
            },
        };
        let rule = crate::ops::AttentionRule {
            attention: self.setup.attention,
            visibility,
            dtype: self.dtype,
        };
        let ctx = crate::ops::attend(&rule, q, k, v, q0, &scores_of)?;
        Ok(ctx
            .transpose(0, 1)?
            .contiguous()?
            .reshape((rows, heads * hd))?)
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

    /// The embedding rows `out` of `tokens` by the invariant kernels (`kernels=invariant`, f32):
    /// `(word + type 0) + position`, then [`inv::layer_norm_rows`]. Each row is its own.
    fn inv_embed(&self, tokens: &[u32], out: Range<usize>) -> Result<Vec<f32>> {
        let m = self.model;
        let d = m.config.hidden_size;
        let ty = &m.token_type[..d];
        let mut sums = Vec::with_capacity(out.len() * d);
        // under bf16 or f16 every table value and each sum is rounded, as in the tiles
        let r = |x: f32| {
            let mut v = [x];
            inv::round_to(self.setup.precision, &mut v);
            v[0]
        };
        for p in out {
            let w = &m.word[tokens[p] as usize * d..][..d];
            let pos = &m.position[p * d..][..d];
            sums.extend((0..d).map(|i| r(r(r(w[i]) + r(ty[i])) + r(pos[i]))));
        }
        let vec = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let eps = m.config.layer_norm_eps as f32;
        Ok(self.st(inv::layer_norm_rows(
            &sums,
            d,
            &vec(&m.emb_ln_g)?,
            &vec(&m.emb_ln_b)?,
            eps,
        )))
    }

    /// Encoder layer `l` (0-based) by the invariant kernels: the output rows `out` from every
    /// input row `x` (`[n, hidden]`, the keys and values of all of them). Each output row is
    /// bitwise the same whichever rows are computed with it and on any number of threads (see
    /// [`crate::invariant`]); the same operations as [`Arith::layer_tiles`] in the same order
    /// (bias after the product, then the residual; LayerNorm; the erf GELU), by other kernels
    /// (the GELU's `erf` is [`inv::erf`]'s, not libm's).
    fn inv_layer(&self, l: usize, x: &[f32], km: &KeyMask, out: Range<usize>) -> Result<Vec<f32>> {
        use rayon::prelude::*;
        let c = &self.model.config;
        let (d, heads, hd) = (c.hidden_size, c.num_attention_heads, c.head_dim());
        let eps = c.layer_norm_eps as f32;
        let p = self.packed(l)?;
        let [bq, bk, bv, bo, ln1_g, ln1_b, bi, bo2, ln2_g, ln2_b] = &p.vectors;
        let n = x.len() / d;
        let (r0, m) = (out.start, out.len());
        let xo = &x[r0 * d..out.end * d];
        let linear = |x: &[f32], rows: usize, w: &PackedMatrix, b: &[f32]| {
            let mut y = inv::matmul_t(x, rows, w);
            inv::add_bias(&mut y, b);
            self.st(y)
        };
        let q = linear(xo, m, &p.wq, bq);
        let k = linear(x, n, &p.wk, bk);
        let v = linear(x, n, &p.wv, bv);
        let window = match self.setup.attention {
            Attention::Window { size } => size,
            _ => usize::MAX,
        };
        let vis = crate::ops::Visibility {
            causal: false,
            keys: Some(&km.visible),
            window,
        };
        // which keys each output row sees (the same for every head), worked out once
        let mut row_sees = Vec::with_capacity(m * n);
        for pos in out.clone() {
            let fallback = vis.falls_back(pos, n);
            row_sees.extend((0..n).map(|j| vis.sees(pos, j, fallback)));
        }
        let every_key = row_sees.iter().all(|&v| v);
        let column = |x: &[f32], rows: usize, h: usize| -> Vec<f32> {
            let mut col = Vec::with_capacity(rows * hd);
            for r in 0..rows {
                col.extend_from_slice(&x[r * d + h * hd..][..hd]);
            }
            col
        };
        let head = |h: usize| -> Result<Vec<f32>> {
            let (qh, kh, vh) = (column(&q, m, h), column(&k, n, h), column(&v, n, h));
            let keys = PackedMatrix::new(&kh, n, hd)
                .ok_or_else(|| ModelError::InvalidArgument(format!("{} key elements", kh.len())))?;
            let values = PackedMatrix::from_transposed(&vh, hd, n).ok_or_else(|| {
                ModelError::InvalidArgument(format!("{} value elements", vh.len()))
            })?;
            let mut ctx = Vec::with_capacity(m * hd);
            for b0 in (0..m).step_by(INV_QUERY_BLOCK) {
                let b1 = (b0 + INV_QUERY_BLOCK).min(m);
                ctx.extend(inv::attend_visible(
                    &qh[b0 * hd..b1 * hd],
                    &keys,
                    &values,
                    b1 - b0,
                    n,
                    |i| {
                        if every_key {
                            inv::Seen::Range(0..n)
                        } else {
                            inv::Seen::Mask(&row_sees[(b0 + i) * n..][..n])
                        }
                    },
                ));
            }
            Ok(ctx)
        };
        let per_head: Vec<Vec<f32>> = if inv::parallel(heads * m * n * hd) {
            (0..heads)
                .into_par_iter()
                .map(head)
                .collect::<Result<_>>()?
        } else {
            (0..heads).map(head).collect::<Result<_>>()?
        };
        let mut ctx = vec![0f32; m * d];
        for (h, rows) in per_head.iter().enumerate() {
            for r in 0..m {
                ctx[r * d + h * hd..][..hd].copy_from_slice(&rows[r * hd..][..hd]);
            }
        }
        let ctx = self.st(ctx);
        let a = self.st(inv::add(&linear(&ctx, m, &p.wo, bo), xo));
        let a = self.st(inv::layer_norm_rows(&a, d, ln1_g, ln1_b, eps));
        let mut mid = linear(&a, m, &p.wi, bi);
        inv::gelu(&mut mid);
        let mid = self.st(mid);
        let h = self.st(inv::add(&linear(&mid, m, &p.wo2, bo2), &a));
        Ok(self.st(inv::layer_norm_rows(&h, d, ln2_g, ln2_b, eps)))
    }

    /// Values an invariant operation stores, rounded to the setup's precision
    /// ([`inv::round_to`]; unchanged under f32).
    fn st(&self, mut v: Vec<f32>) -> Vec<f32> {
        inv::round_to(self.setup.precision, &mut v);
        v
    }

    /// The embedding rows (layer 0) of tiles `out` of `tokens` (truncated at the sequence end):
    /// `(word + type 0) + position` with every table value and each sum rounded to the setup's
    /// precision (plain f32 for f32), then LayerNorm on each zero-padded `[tile, hidden]` tile.
    fn embed_tiles(&self, tokens: &[u32], tile: usize, out: Range<usize>) -> Result<Vec<f32>> {
        let m = self.model;
        let d = m.config.hidden_size;
        let n = tokens.len();
        let ty = &m.token_type[..d];
        let mut result = Vec::with_capacity((out.end - out.start) * tile * d);
        for t in out {
            let mut rows = vec![0f32; tile * d];
            let lo = (t * tile).min(n);
            let hi = ((t + 1) * tile).min(n);
            for p in lo..hi {
                let w = &m.word[tokens[p] as usize * d..][..d];
                let pos = &m.position[p * d..][..d];
                let row = &mut rows[(p - lo) * d..][..d];
                for i in 0..d {
                    let wt = self.round(self.round(w[i]) + self.round(ty[i]));
                    row[i] = self.round(wt + self.round(pos[i]));
                }
            }
            let x = Tensor::from_vec(rows, (tile, d), &Device::Cpu)?;
            let h = self.layer_norm(&x, &m.emb_ln_g, &m.emb_ln_b)?;
            let h = h
                .narrow(0, 0, hi - lo)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            result.extend_from_slice(&h);
        }
        Ok(result)
    }

    /// Runs encoder layer `l` (0-based) over input rows `x` (`n` rows) in tiles of `tile` rows
    /// and returns the output rows of tiles `out` (truncated at `n`) as f32. Reads every input
    /// tile; each is a fresh `[tile, hidden]` tensor in the setup's dtype, zero-padded past `n`.
    fn layer_tiles(
        &self,
        l: usize,
        x: &[f32],
        n: usize,
        tile: usize,
        key_mask: &KeyMask,
        out: Range<usize>,
    ) -> Result<Vec<f32>> {
        let d = self.model.config.hidden_size;
        let w = &self.w.layers[l];
        let tiles = n.div_ceil(tile);
        let tile_tensor = |t: usize| -> Result<Tensor> {
            let mut rows = vec![0f32; tile * d];
            let lo = (t * tile).min(n);
            let hi = ((t + 1) * tile).min(n);
            rows[..(hi - lo) * d].copy_from_slice(&x[lo * d..hi * d]);
            self.cast(&Tensor::from_vec(rows, (tile, d), &Device::Cpu)?)
        };

        // 1. keys and values of every tile
        let mut keys = Vec::with_capacity(tiles);
        let mut values = Vec::with_capacity(tiles);
        for t in 0..tiles {
            let xt = tile_tensor(t)?;
            keys.push(self.split_heads(&self.linear(&xt, &w.wk, &w.bk)?)?);
            values.push(self.split_heads(&self.linear(&xt, &w.wv, &w.bv)?)?);
        }
        let k = Tensor::cat(&keys, 1)?; // [heads, tiles·tile, hd]
        let v = Tensor::cat(&values, 1)?;

        let mut result = Vec::with_capacity((out.end - out.start) * tile * d);
        for j in out {
            let xj = tile_tensor(j)?;
            // 2. attention of the tile's queries over every key
            let q = self.split_heads(&self.linear(&xj, &w.wq, &w.bq)?)?;
            let ctx = self.attention(&q, &k, &v, key_mask, j * tile)?;
            let a = self.linear(&ctx, &w.wo, &w.bo)?.add(&xj)?;
            let a = self.layer_norm(&a, &w.attn_ln_g, &w.attn_ln_b)?;
            // 3. MLP
            let m = self.linear(&a, &w.wi, &w.bi)?.gelu_erf()?;
            let h = self.linear(&m, &w.wo2, &w.bo2)?.add(&a)?;
            let h = self.layer_norm(&h, &w.out_ln_g, &w.out_ln_b)?;
            let rows = tile.min(n.saturating_sub(j * tile));
            let h = h
                .narrow(0, 0, rows)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            result.extend_from_slice(&h);
        }
        Ok(result)
    }
}

/// BERT's entry in [`crate::ARCHITECTURES`]: `bert` checkpoints, read by [`BertModel::load`].
pub const ARCHITECTURE: crate::Architecture = crate::Architecture {
    model_types: &["bert"],
    load: |dir| Ok(Arc::new(BertModel::load(dir)?)),
};

/// An encoder generates nothing: `output` must be 0.
fn no_output(output: usize) -> Result<()> {
    if output != 0 {
        return Err(ModelError::InvalidArgument(format!(
            "an encoder generates no tokens; {output} output tokens asked for"
        )));
    }
    Ok(())
}

impl crate::Model for BertModel {
    fn digest(&self) -> Digest {
        BertModel::digest(self)
    }

    fn architecture(&self) -> &'static str {
        "bert"
    }

    fn is_encoder(&self) -> bool {
        true
    }

    fn dependency(&self) -> veritrace_protocol::Dependency {
        veritrace_protocol::Dependency::Bidirectional
    }

    /// A `[CLS] … [SEP]` sequence of ordinary WordPieces keyed by `key`
    /// ([`crate::bert_prompt`]).
    fn sim_prompt(&self, key: u64, len: usize, _next_u32: &mut dyn FnMut() -> u32) -> Vec<u32> {
        crate::bert_prompt(self.config.vocab_size, key, len)
    }

    fn prove_committed(
        &self,
        runner: &crate::Runner,
        setup: &crate::Setup,
        prompt: &[u32],
        output: usize,
        chunk: u32,
        hasher: veritrace_commit::HasherId,
    ) -> Result<crate::CommittedRun> {
        no_output(output)?;
        runner.bert_prove_encode_committed(self, setup, prompt, chunk, hasher)
    }

    fn prove_on(
        &self,
        runner: &crate::Runner,
        setup: &crate::Setup,
        prompt: &[u32],
        output: usize,
        chunk: u32,
        hasher: veritrace_commit::HasherId,
    ) -> Result<(veritrace_protocol::Statement, crate::Trace)> {
        no_output(output)?;
        runner.bert_prove_encode(self, setup, prompt, chunk, hasher)
    }

    fn input_rows(&self, n: usize, _chunk: usize, _j: usize) -> Range<usize> {
        0..n
    }

    fn recompute_cell_on(
        &self,
        runner: &crate::Runner,
        setup: &crate::Setup,
        chunk: usize,
        layer: usize,
        j: usize,
        inputs: crate::CellInputs<'_>,
    ) -> Result<Vec<f32>> {
        runner.bert_recompute_cell(self, setup, chunk, layer, j, inputs)
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
        None
    }

    fn logits_from_row(&self, _setup: &crate::Setup, _row: &[f32]) -> Result<Vec<f32>> {
        Err(ModelError::InvalidArgument(
            "an encoder has no LM head: no logits".into(),
        ))
    }

    fn swap_model(&self) -> Result<Arc<dyn crate::Model>> {
        Err(ModelError::InvalidArgument(
            "model-swap needs a seeded decoder (tiny, small); an encoder has no cheaper variant \
             of its own shape"
                .into(),
        ))
    }

    fn cell_cost(
        &self,
        setup: &crate::Setup,
        reference: &crate::Setup,
        layer: u32,
        rows: Range<u32>,
        n: u32,
    ) -> f64 {
        crate::cost::encoder_cell_cost(
            self.config.hidden_size,
            self.config.intermediate_size,
            setup,
            reference,
            layer,
            rows,
            n,
        )
    }
}
