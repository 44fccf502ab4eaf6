//! BERT encoders — all-MiniLM-L6-v2 in particular — loaded from real weights, on candle-core
//! (CPU, f32).
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
//! [`BertModel::digest`] is BLAKE3 over: the ASCII label `veritrace/model/bert/v1`; the config
//! as JSON (u64 length LE, then the bytes of `serde_json::to_vec(&config)`, fields in
//! [`BertConfig`]'s declaration order); then, for each tensor in the canonical order above, the
//! canonical (unprefixed) name (u64 length LE, UTF-8), the rank (u64 LE), each dimension (u64 LE)
//! and the elements as f32 little-endian. It names the arithmetic, not the file: the same weights
//! with or without the `bert.` prefix, or with other unused tensors, have the same digest.
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
//! the layer below is bitwise the same as those rows of the full forward. The embeddings are
//! computed per tile too (sums in plain f32, then LayerNorm on a `[c, d]` tile).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor, D};
use safetensors::tensor::Dtype as StDtype;
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use veritrace_commit::Digest;

use crate::{first_non_finite, CellInputs, ModelError, NamedTensor, Result, Setup};

/// Label at the start of the digest input.
const DIGEST_LABEL: &[u8] = b"veritrace/model/bert/v1";

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

impl BertConfig {
    /// Reads and validates a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let config: BertConfig = serde_json::from_str(&text).map_err(|e| {
            ModelError::InvalidConfig(format!("{}: not a BERT config: {e}", path.display()))
        })?;
        config.validate()?;
        Ok(config)
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
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
            if v > 1 << 20 {
                return bad(format!("{name} = {v} exceeds 2^20"));
            }
        }
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

/// A BERT encoder: configuration and weights (CPU, f32).
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
}

fn digest_of(config: &BertConfig, tensors: &[NamedTensor]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(DIGEST_LABEL);
    let json = serde_json::to_vec(config).expect("a config serializes");
    h.update(&(json.len() as u64).to_le_bytes());
    h.update(&json);
    for (name, shape, data) in tensors {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&(shape.len() as u64).to_le_bytes());
        for &dim in shape {
            h.update(&(dim as u64).to_le_bytes());
        }
        let mut bytes = Vec::with_capacity(data.len() * 4);
        for v in data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        h.update(&bytes);
    }
    Digest(*h.finalize().as_bytes())
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
        let bytes = std::fs::read(&path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let tensors = read_tensors(&path, &bytes, &config)?;
        drop(bytes);
        Self::from_tensors(config, tensors)
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
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The model digest (see the [module docs](self)).
    pub fn digest(&self) -> Digest {
        self.digest
    }

    fn check_setup(setup: &Setup) -> Result<()> {
        if *setup != Setup::F32_EAGER {
            return Err(ModelError::UnsupportedSetup(format!(
                "{setup} (the BERT encoder runs only {})",
                Setup::F32_EAGER
            )));
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
    fn check_mask(mask: &[u32], n: usize) -> Result<()> {
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
        Self::check_setup(setup)?;
        self.check_tokens(tokens)?;
        Self::check_mask(mask, tokens.len())?;
        check_tile(tile)?;
        let n = tokens.len();
        let tiles = n.div_ceil(tile);
        let key_mask = key_mask(mask, tiles * tile)?;
        let mut layers = Vec::with_capacity(self.config.num_hidden_layers + 1);
        layers.push(self.embed_tiles(tokens, tile, 0..tiles)?);
        for l in 0..self.config.num_hidden_layers {
            let x = layers.last().expect("non-empty");
            let y = self.layer_tiles(l, x, n, tile, &key_mask, 0..tiles)?;
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
    /// is attended. Bitwise identical to those rows of [`BertModel::trace`].
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
        Self::check_setup(setup)?;
        check_tile(tile)?;
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
                self.embed_tiles(t, tile, chunk..chunk + 1)
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
                let key_mask = key_mask(mask, tiles * tile)?;
                self.layer_tiles(l - 1, h, n, tile, &key_mask, chunk..chunk + 1)
            }
        }
    }

    /// `x · Wᵀ + b` for `x: [rows, in]`, `w: [out, in]`, `b: [out]`.
    fn linear(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&w.t()?)?.broadcast_add(b)?)
    }

    /// Two-pass LayerNorm over the last dimension (see the [module docs](self)).
    fn layer_norm(&self, x: &Tensor, gain: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let std = var.affine(1.0, self.config.layer_norm_eps)?.sqrt()?;
        Ok(centered
            .broadcast_div(&std)?
            .broadcast_mul(gain)?
            .broadcast_add(bias)?)
    }

    /// `[rows, hidden]` to `[heads, rows, hd]`, contiguous.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, _) = x.dims2()?;
        let c = &self.config;
        Ok(x.reshape((rows, c.num_attention_heads, c.head_dim()))?
            .transpose(0, 1)?
            .contiguous()?)
    }

    /// Eager multi-head attention of `q: [heads, c, hd]` over `k, v: [heads, e, hd]` with the
    /// additive key mask `mask: [1, e]`; returns the context `[c, hidden]`.
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (heads, rows, hd) = q.dims3()?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = q.matmul(&k.t()?)?.affine(scale, 0.0)?;
        let scores = scores.broadcast_add(mask)?;
        let max = scores.max_keepdim(D::Minus1)?;
        let exp = scores.broadcast_sub(&max)?.exp()?;
        let probs = exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)?;
        Ok(probs
            .matmul(v)?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((rows, heads * hd))?)
    }

    /// The embedding rows (layer 0) of tiles `out` of `tokens` (truncated at the sequence end):
    /// `(word + type 0) + position` in plain f32, then LayerNorm on each zero-padded `[tile,
    /// hidden]` tile.
    fn embed_tiles(
        &self,
        tokens: &[u32],
        tile: usize,
        out: std::ops::Range<usize>,
    ) -> Result<Vec<f32>> {
        let d = self.config.hidden_size;
        let n = tokens.len();
        let ty = &self.token_type[..d];
        let mut result = Vec::with_capacity((out.end - out.start) * tile * d);
        for t in out {
            let mut rows = vec![0f32; tile * d];
            let lo = (t * tile).min(n);
            let hi = ((t + 1) * tile).min(n);
            for p in lo..hi {
                let w = &self.word[tokens[p] as usize * d..][..d];
                let pos = &self.position[p * d..][..d];
                let row = &mut rows[(p - lo) * d..][..d];
                for i in 0..d {
                    row[i] = (w[i] + ty[i]) + pos[i];
                }
            }
            let x = Tensor::from_vec(rows, (tile, d), &Device::Cpu)?;
            let h = self.layer_norm(&x, &self.emb_ln_g, &self.emb_ln_b)?;
            let h = h.narrow(0, 0, hi - lo)?.flatten_all()?.to_vec1::<f32>()?;
            result.extend_from_slice(&h);
        }
        Ok(result)
    }

    /// Runs encoder layer `l` (0-based) over input rows `x` (`n` rows) in tiles of `tile` rows
    /// and returns the output rows of tiles `out` (truncated at `n`). Reads every input tile;
    /// each is a fresh `[tile, hidden]` tensor, zero-padded past `n`.
    fn layer_tiles(
        &self,
        l: usize,
        x: &[f32],
        n: usize,
        tile: usize,
        key_mask: &Tensor,
        out: std::ops::Range<usize>,
    ) -> Result<Vec<f32>> {
        let d = self.config.hidden_size;
        let w = &self.layers[l];
        let tiles = n.div_ceil(tile);
        let tile_tensor = |t: usize| -> Result<Tensor> {
            let mut rows = vec![0f32; tile * d];
            let lo = (t * tile).min(n);
            let hi = ((t + 1) * tile).min(n);
            rows[..(hi - lo) * d].copy_from_slice(&x[lo * d..hi * d]);
            Ok(Tensor::from_vec(rows, (tile, d), &Device::Cpu)?)
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
            let ctx = self.attention(&q, &k, &v, key_mask)?;
            let a = self.linear(&ctx, &w.wo, &w.bo)?.add(&xj)?;
            let a = self.layer_norm(&a, &w.attn_ln_g, &w.attn_ln_b)?;
            // 3. MLP
            let m = self.linear(&a, &w.wi, &w.bi)?.gelu_erf()?;
            let h = self.linear(&m, &w.wo2, &w.bo2)?.add(&a)?;
            let h = self.layer_norm(&h, &w.out_ln_g, &w.out_ln_b)?;
            let rows = tile.min(n.saturating_sub(j * tile));
            let h = h.narrow(0, 0, rows)?.flatten_all()?.to_vec1::<f32>()?;
            result.extend_from_slice(&h);
        }
        Ok(result)
    }
}

/// The additive key mask `[1, keys]` in f32: `0` where `mask` is 1, `−∞` where it is 0 and for
/// the padding keys past `mask.len()`.
fn key_mask(mask: &[u32], keys: usize) -> Result<Tensor> {
    let values: Vec<f32> = (0..keys)
        .map(|k| {
            if mask.get(k) == Some(&1) {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    Ok(Tensor::from_vec(values, (1, keys), &Device::Cpu)?)
}

fn check_tile(tile: usize) -> Result<()> {
    if tile == 0 || tile > 1 << 16 {
        return Err(ModelError::InvalidArgument(format!(
            "the chunk size {tile} must be between 1 and 65536 rows"
        )));
    }
    Ok(())
}
