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
//! # Model digest
//!
//! [`LlamaModel::digest`] is BLAKE3 over: the ASCII label `veritrace/model/llama/v1`; the config
//! as JSON (u64 length LE, then the bytes of `serde_json::to_vec(&config)`, fields in declaration
//! order: the arithmetic hyperparameters are part of the model); then, for each tensor in the
//! order above, the name (u64 length LE, UTF-8), the rank (u64 LE), each dimension (u64 LE) and
//! the elements as f32 little-endian.
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

use candle_core::{Device, Tensor, D};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use veritrace_commit::Digest;

use crate::{first_non_finite, ModelError, Result, Setup};

/// Label at the start of the digest input.
const DIGEST_LABEL: &[u8] = b"veritrace/model/llama/v1";

/// A weight tensor: name, shape and row-major f32 elements.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

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

    /// Checks that every size is positive, that the heads divide the width into even head sizes,
    /// that the kv heads divide the query heads, and that the constants are finite and positive.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("intermediate_size", self.intermediate_size),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
            if v > 1 << 20 {
                return bad(format!("{name} = {v} exceeds 2^20"));
            }
        }
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
        Ok(())
    }
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
    }
    specs.push(("model.norm.weight".to_string(), vec![d], Init::Gain));
    specs.push(("lm_head.weight".to_string(), vec![v, d], Init::Linear));
    specs
}

/// The seeded weights, `(name, shape, elements)` in the documented order.
fn seeded_weights(c: &ModelConfig) -> Vec<NamedTensor> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&c.seed.to_le_bytes());
    let mut rng = ChaCha20Rng::from_seed(key);
    tensor_specs(c)
        .into_iter()
        .map(|(name, shape, init)| {
            let n: usize = shape.iter().product();
            let fan_in = *shape.last().unwrap_or(&1) as f64;
            let data = (0..n)
                .map(|_| {
                    let u = f64::from(rng.next_u32() >> 8);
                    let r = (u + 0.5) / 16_777_216.0 * 2.0 - 1.0;
                    (match init {
                        Init::Gain => 1.0 + 0.1 * r,
                        Init::Embedding => r,
                        Init::Linear => r / fan_in.sqrt(),
                    }) as f32
                })
                .collect();
            (name, shape, data)
        })
        .collect()
}

fn digest_of(config: &ModelConfig, tensors: &[NamedTensor]) -> Digest {
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

impl LlamaModel {
    /// The model of `config` with its seeded weights.
    pub fn new(config: ModelConfig) -> Result<Self> {
        config.validate()?;
        let tensors = seeded_weights(&config);
        let digest = digest_of(&config, &tensors);
        let mut it = tensors
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
        })
    }

    /// The model of a named preset (`tiny` or `small`).
    pub fn preset(name: &str) -> Result<Self> {
        Self::new(ModelConfig::preset(name)?)
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
        }
        all.extend([&self.final_norm, &self.lm_head]);
        tensor_specs(&self.config)
            .into_iter()
            .zip(all)
            .map(|((name, shape, _), t)| Ok((name, shape, t.flatten_all()?.to_vec1::<f32>()?)))
            .collect()
    }

    fn check_setup(setup: &Setup) -> Result<()> {
        if *setup != Setup::F32_EAGER {
            return Err(ModelError::UnsupportedSetup(setup.to_string()));
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
        Self::check_setup(setup)?;
        if tokens.is_empty() {
            return Err(ModelError::InvalidArgument("no tokens to run".into()));
        }
        check_tile(tile)?;
        let n = tokens.len();
        let tiles = n.div_ceil(tile);
        let mut layers = Vec::with_capacity(self.config.num_layers + 1);
        layers.push(self.embed_tokens(tokens)?);
        for l in 0..self.config.num_layers {
            let x = layers.last().expect("non-empty");
            let y = self.layer_tiles(l, x, n, tile, 0..tiles)?;
            layers.push(y);
        }
        Ok(crate::Trace {
            tokens: n,
            hidden: self.config.hidden_size,
            layers,
        })
    }

    /// Recomputes the cell `(layer, chunk)` with chunk size `tile`: the rows
    /// `chunk·tile .. e` of `h_layer`, from the rows `0..e` of the layer below (or, for layer 0,
    /// the tokens of positions `0..e`), where `e = inputs' row count` must satisfy
    /// `chunk·tile < e ≤ (chunk + 1)·tile`. Bitwise identical to those rows of
    /// [`LlamaModel::trace`] of any sequence that starts with these positions.
    pub fn recompute_cell(
        &self,
        setup: &Setup,
        tile: usize,
        layer: usize,
        chunk: usize,
        inputs: CellInputs<'_>,
    ) -> Result<Vec<f32>> {
        Self::check_setup(setup)?;
        check_tile(tile)?;
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
        match (layer, inputs) {
            (0, CellInputs::Tokens(t)) => self.embed_tokens(&t[start..]),
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
                self.layer_tiles(l - 1, h, rows, tile, chunk..chunk + 1)
            }
        }
    }

    /// The greedy next token from one last-layer row: final RMSNorm, LM head (a `[1, hidden]`
    /// matmul, the same shape wherever it is called), argmax with the lowest index on ties.
    pub fn next_token_from_row(&self, setup: &Setup, row: &[f32]) -> Result<u32> {
        Self::check_setup(setup)?;
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
        let x = Tensor::from_slice(row, (1, d), &Device::Cpu)?;
        let n = self.rms_norm(&x, &self.final_norm)?;
        let logits = n
            .matmul(&self.lm_head.t()?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
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
        Ok(best as u32)
    }

    /// Greedy generation: appends `n_out` tokens to `prompt`, each predicted by
    /// [`LlamaModel::next_token_from_row`] from the last row of a tiled forward over the sequence so far.
    /// Because of the padded tiles, those rows are bitwise the rows of the final trace.
    pub fn generate(
        &self,
        setup: &Setup,
        prompt: &[u32],
        n_out: usize,
        tile: usize,
    ) -> Result<Vec<u32>> {
        Self::check_setup(setup)?;
        if prompt.is_empty() {
            return Err(ModelError::InvalidArgument("the prompt is empty".into()));
        }
        self.check_tokens(prompt)?;
        check_tile(tile)?;
        let mut seq = prompt.to_vec();
        let d = self.config.hidden_size;
        for _ in 0..n_out {
            let p = seq.len() - 1;
            // Only the last row's tile matters; run the layers over the tiles up to it.
            let trace = self.trace(setup, &seq, tile)?;
            let last = trace.layers.last().expect("layers");
            let t = self.next_token_from_row(setup, &last[p * d..(p + 1) * d])?;
            seq.push(t);
        }
        Ok(seq.split_off(prompt.len()))
    }

    fn rms_norm(&self, x: &Tensor, gain: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = ms.affine(1.0, self.config.rms_norm_eps)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&inv)?.broadcast_mul(gain)?)
    }

    /// `cos` and `sin` tables `[tile, hd]` for positions `start..start + tile`.
    fn rope_tables(&self, start: usize, tile: usize) -> Result<(Tensor, Tensor)> {
        let hd = self.config.head_dim();
        let half = hd / 2;
        let mut cos = Vec::with_capacity(tile * hd);
        let mut sin = Vec::with_capacity(tile * hd);
        for p in start..start + tile {
            let angles: Vec<f64> = (0..half)
                .map(|i| p as f64 * self.config.rope_theta.powf(-((2 * i) as f64) / hd as f64))
                .collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos() as f32));
                sin.extend(angles.iter().map(|a| a.sin() as f32));
            }
        }
        Ok((
            Tensor::from_vec(cos, (tile, 1, hd), &Device::Cpu)?,
            Tensor::from_vec(sin, (tile, 1, hd), &Device::Cpu)?,
        ))
    }

    /// Rotary positions on `x: [tile, heads, hd]`.
    fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let hd = x.dim(D::Minus1)?;
        let half = hd / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok(x.broadcast_mul(cos)?.add(&rotated.broadcast_mul(sin)?)?)
    }

    /// Runs transformer layer `l` (0-based) over input rows `x` (`n` rows) in tiles of `tile`
    /// rows and returns the output rows of tiles `out` (truncated at `n`). Reads the input tiles
    /// `0..out.end`; every tile is a fresh `[tile, hidden]` tensor, zero-padded past `n`.
    fn layer_tiles(
        &self,
        l: usize,
        x: &[f32],
        n: usize,
        tile: usize,
        out: std::ops::Range<usize>,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let (d, hd) = (c.hidden_size, c.head_dim());
        let (nh, nkv) = (c.num_heads, c.num_kv_heads);
        let w = &self.layers[l];
        let dev = Device::Cpu;

        let tile_tensor = |t: usize| -> Result<Tensor> {
            let mut rows = vec![0f32; tile * d];
            let lo = (t * tile).min(n);
            let hi = ((t + 1) * tile).min(n);
            rows[..(hi - lo) * d].copy_from_slice(&x[lo * d..hi * d]);
            Ok(Tensor::from_vec(rows, (tile, d), &dev)?)
        };

        // 1. normalized inputs, keys and values of every tile up to the last output tile
        let mut xs = Vec::with_capacity(out.end);
        let mut normed = Vec::with_capacity(out.end);
        let mut keys = Vec::with_capacity(out.end);
        let mut values = Vec::with_capacity(out.end);
        for t in 0..out.end {
            let xt = tile_tensor(t)?;
            let nt = self.rms_norm(&xt, &w.attn_norm)?;
            let (cos, sin) = self.rope_tables(t * tile, tile)?;
            let k = nt.matmul(&w.wk.t()?)?.reshape((tile, nkv, hd))?;
            let k = Self::rope(&k, &cos, &sin)?.transpose(0, 1)?.contiguous()?;
            let v = nt
                .matmul(&w.wv.t()?)?
                .reshape((tile, nkv, hd))?
                .transpose(0, 1)?
                .contiguous()?;
            xs.push(xt);
            normed.push(nt);
            keys.push(k);
            values.push(v);
        }

        let scale = 1.0 / (hd as f64).sqrt();
        let rep = nh / nkv;
        let mut result = Vec::with_capacity((out.end - out.start) * tile * d);
        for j in out {
            let e = (j + 1) * tile;
            // 2. attention of the tile's queries over keys 0..e
            let (cos, sin) = self.rope_tables(j * tile, tile)?;
            let q = normed[j].matmul(&w.wq.t()?)?.reshape((tile, nh, hd))?;
            let q = Self::rope(&q, &cos, &sin)?.transpose(0, 1)?.contiguous()?;
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
            let scores = q.matmul(&k.t()?.contiguous()?)?.affine(scale, 0.0)?;
            let mask: Vec<f32> = (0..tile)
                .flat_map(|i| {
                    (0..e).map(move |key| {
                        if key <= j * tile + i {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (tile, e), &dev)?;
            let scores = scores.broadcast_add(&mask)?;
            let max = scores.max_keepdim(D::Minus1)?;
            let exp = scores.broadcast_sub(&max)?.exp()?;
            let probs = exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)?;
            let attn = probs
                .matmul(&v)?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((tile, nh * hd))?;
            let a = xs[j].add(&attn.matmul(&w.wo.t()?)?)?;
            // 3. SwiGLU MLP
            let m = self.rms_norm(&a, &w.mlp_norm)?;
            let gate = m.matmul(&w.w_gate.t()?)?.silu()?;
            let up = m.matmul(&w.w_up.t()?)?;
            let h = a.add(&gate.mul(&up)?.matmul(&w.w_down.t()?)?)?;
            let rows = tile.min(n.saturating_sub(j * tile));
            let h = h.narrow(0, 0, rows)?.flatten_all()?.to_vec1::<f32>()?;
            result.extend_from_slice(&h);
        }
        Ok(result)
    }
}

fn check_tile(tile: usize) -> Result<()> {
    if tile == 0 || tile > 1 << 16 {
        return Err(ModelError::InvalidArgument(format!(
            "the chunk size {tile} must be between 1 and 65536 rows"
        )));
    }
    Ok(())
}
