//! Freivalds checks of the decoder's linear maps with a floating-point bound
//! (`specs/freivalds.md`).
//!
//! A verifier who holds a secret random vector `r ∈ ℝ^out` and the precomputed `v = rᵀW` checks
//! a claimed product `y = W x` (one token row) in `O(in + out)` work by comparing `v·x` with
//! `r·y`, instead of recomputing `W x` in `O(in · out)`. The claimed `y` was computed in f32, so
//! the two sides differ by rounding even for an honest prover; [`check_linear`] accepts a row
//! when the difference is within a rigorous bound on that rounding (below), and a wrong weight
//! matrix `W'` (another quantization, a perturbed matrix, another model) leaves a deviation
//! `e = y − W x` that the check catches with the probability [`false_accept_probability`]
//! states.
//!
//! # Verifier key
//!
//! [`VerifierKey::build`] derives, from a 32-byte verifier secret (drawn by the verifier from
//! the operating system's randomness, never from public data) and a [`LlamaModel`], for every
//! linear weight `W ∈ ℝ^{out × in}` (per layer `l = 1..=L`: q, k, v, o, gate, up, down; then
//! the LM head) and every repetition `k < t`:
//!
//! * the seed `s = BLAKE3("veritrace/freivalds/r/v1" ‖ secret ‖ model digest ‖ u32le(l) ‖
//!   u8(matrix id) ‖ u32le(k))` (the LM head has `l = L` and id 7; the ids are those of
//!   [`Matrix::id`]);
//! * `r ∈ ℝ^out`, Gaussian, from `rand_chacha::ChaCha20Rng::from_seed(s)` by Box–Muller: for
//!   each pair, `a = next_u64() >> 11`, `b = next_u64() >> 11`, `u₁ = (a + 0.5) · 2⁻⁵³`,
//!   `u₂ = b · 2⁻⁵³`, `ρ = sqrt(−2 ln u₁)`, then `ρ cos(2π u₂)` and `ρ sin(2π u₂)` in that
//!   order (the last pair's second value dropped when `out` is odd); `ln`, `cos`, `sin` are
//!   those of the `libm` crate (a port of musl's, the same on every platform), `sqrt` is
//!   IEEE's;
//! * `v_j = Σ_i r_i W_ij` and `u_j = Σ_i |r_i| |W_ij|`, each summed in f64 over `i = 0..out`
//!   in ascending order, from the weights as the f32 setup computes with them.
//!
//! The key binds the model digest and `BLAKE3("veritrace/freivalds/secret/v1" ‖ secret)`, a
//! commitment that matches a key to its secret without revealing it. The key itself holds `r`
//! and must stay secret: a prover who knows `r` and `v` can forge outputs that pass.
//! Decoders with q/k/v biases (Qwen2) are checked with [`check_linear_biased`]: the bias is
//! public, so the verifier adds `r·b` to `v·x` (the key itself does not depend on it).
//!
//! # The bound
//!
//! Let `ŷ = fl₃₂(W x)` be one row computed with f32 accumulation of length `n = in` in any
//! summation order (blocked, split-K, FMA or not). Higham's bound for inner products
//! (*Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3.1) gives
//! `|ŷ_i − (W x)_i| ≤ γ_n Σ_j |W_ij| |x_j|` with `γ_n = n u / (1 − n u)`, `u = 2⁻²⁴`. Hence
//!
//! ```text
//! |r·ŷ − v·x| = |Σ_i r_i (ŷ_i − (W x)_i)| ≤ γ_n Σ_i |r_i| Σ_j |W_ij||x_j| = γ_n (u·|x|)
//! ```
//!
//! with the key's `u = |r|ᵀ|W|`. [`check_linear`] adds `2⁻²⁴ · |r|·|y|` (one more rounding of
//! the output to f32, for an engine whose accumulator is wider than its output) and the
//! verifier's own f64 error `ε = 2 (γ⁽⁶⁴⁾_n + γ⁽⁶⁴⁾_out) (u·|x| + |r|·|y|)` with
//! `γ⁽⁶⁴⁾_m = m 2⁻⁵³ / (1 − m 2⁻⁵³)` (the rounding of `v`, `u`, `v·x`, `r·y` and of the bound
//! itself, with a factor 2 for second-order terms):
//!
//! ```text
//! B = γ_n (u·|x|) + 2⁻²⁴ (|r|·|y|) + ε
//! ```
//!
//! A row passes repetition `k` when `|v·x − r·y| ≤ B`; a check passes when every row passes
//! every repetition. The bound is a worst case: honest deviations are typically 10⁻³ to 10⁻⁴
//! of it, and a wrong weight whose deviation stays well below `B` is not caught.
//!
//! # False accepts
//!
//! For a deviation `e = y − W x`, `r·e ~ N(0, ‖e‖²)` for Gaussian `r`, so one repetition
//! accepts with probability `P(|r·e| ≤ B) = erf(B / (√2 ‖e‖))` (taking `B` as fixed), and
//! `t` independent repetitions with its `t`-th power ([`false_accept_probability`]).

use std::fmt;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use thiserror::Error;
use veritrace_commit::Digest;

use crate::{LlamaModel, ModelError, SubLayers};

/// The unit roundoff of f32, `2⁻²⁴`.
pub const U_F32: f64 = 1.0 / 16_777_216.0;

/// The unit roundoff of f64, `2⁻⁵³`.
pub const U_F64: f64 = 1.0 / 9_007_199_254_740_992.0;

/// The first bytes of an encoded [`VerifierKey`].
pub const MAGIC: [u8; 8] = *b"VTFVKEY\0";

/// The encoding version [`VerifierKey::to_bytes`] writes and [`VerifierKey::from_bytes`] reads.
pub const VERSION: u32 = 1;

/// Bytes of a verifier secret.
pub const SECRET_LEN: usize = 32;

/// The most repetitions a key may hold.
pub const MAX_REPETITIONS: u32 = 64;

/// The largest dimension a key may declare (the model configuration's sanity bound, 2²⁰).
pub const MAX_DIM: u32 = 1 << 20;

/// The largest encoded key [`VerifierKey::from_bytes`] accepts (16 GiB).
pub const MAX_KEY_BYTES: u64 = 1 << 34;

/// Bytes of the encoded header: magic, version, model digest, secret commitment, six
/// dimensions and the repetitions.
pub const HEADER_LEN: usize = 8 + 4 + 32 + 32 + 7 * 4;

const SEED_DOMAIN: &[u8] = b"veritrace/freivalds/r/v1";
const COMMIT_DOMAIN: &[u8] = b"veritrace/freivalds/secret/v1";

/// Every way building, decoding or using a verifier key fails. Never a panic.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FreivaldsError {
    /// The model could not provide its weights.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The model has a feature keys do not cover (a missing or misshapen weight).
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// An argument is outside its domain (repetitions, layer, rows).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An input has the wrong length.
    #[error("{what}: expected {expected} elements, got {got}")]
    WrongLength {
        /// Which input.
        what: &'static str,
        /// Expected elements.
        expected: u64,
        /// Elements given.
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
    /// Encoded key bytes are malformed.
    #[error("verifier key: {0}")]
    Encoding(String),
    /// The key belongs to another model.
    #[error("verifier key is for model {key}, not {model}")]
    ModelMismatch {
        /// The key's model digest.
        key: Digest,
        /// The model's digest.
        model: Digest,
    },
}

impl FreivaldsError {
    /// Whether the error is the input's fault (exit code 2): all but a failure of the tensor
    /// library while reading the model's weights.
    pub fn is_input(&self) -> bool {
        match self {
            FreivaldsError::Model(e) => e.is_input(),
            _ => true,
        }
    }
}

/// Shorthand for results of this module.
pub type Result<T, E = FreivaldsError> = std::result::Result<T, E>;

/// A 32-byte verifier secret. Its `Debug` form shows only its commitment.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierSecret([u8; SECRET_LEN]);

impl VerifierSecret {
    /// The secret of these bytes (drawn by the verifier from the operating system's randomness).
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        VerifierSecret(bytes)
    }

    /// The secret's bytes.
    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// `BLAKE3("veritrace/freivalds/secret/v1" ‖ secret)`: matches a key to its secret without
    /// revealing it.
    pub fn commitment(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(COMMIT_DOMAIN);
        h.update(&self.0);
        *h.finalize().as_bytes()
    }
}

impl fmt::Debug for VerifierSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VerifierSecret(commitment {})",
            blake3::Hash::from(self.commitment()).to_hex()
        )
    }
}

/// A linear map of the decoder (in scenario files: `q`, `k`, `v`, `o`, `gate`, `up`, `down`,
/// `lm-head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Matrix {
    /// Query projection `[heads · hd, hidden]`.
    Q,
    /// Key projection `[kv_heads · hd, hidden]`.
    K,
    /// Value projection `[kv_heads · hd, hidden]`.
    V,
    /// Output projection `[hidden, heads · hd]`.
    O,
    /// MLP gate `[mlp, hidden]`.
    Gate,
    /// MLP up `[mlp, hidden]`.
    Up,
    /// MLP down `[hidden, mlp]`.
    Down,
    /// The LM head `[vocab, hidden]` (addressed with layer `L`).
    LmHead,
}

impl Matrix {
    /// The seven linear maps of one transformer layer, in key order.
    pub const LAYER: [Matrix; 7] = [
        Matrix::Q,
        Matrix::K,
        Matrix::V,
        Matrix::O,
        Matrix::Gate,
        Matrix::Up,
        Matrix::Down,
    ];

    /// This map's bias among a layer's query, key and value biases (`[q, k, v]`, as
    /// [`LlamaModel::qkv_biases`] gives them); `None` for the other maps or without biases.
    pub fn bias(self, biases: Option<&[Vec<f32>; 3]>) -> Option<&[f32]> {
        let b = biases?;
        match self {
            Matrix::Q => Some(&b[0]),
            Matrix::K => Some(&b[1]),
            Matrix::V => Some(&b[2]),
            _ => None,
        }
    }

    /// The name in scenario files (`q`, …, `down`, `lm-head`).
    pub fn name(self) -> &'static str {
        match self {
            Matrix::Q => "q",
            Matrix::K => "k",
            Matrix::V => "v",
            Matrix::O => "o",
            Matrix::Gate => "gate",
            Matrix::Up => "up",
            Matrix::Down => "down",
            Matrix::LmHead => "lm-head",
        }
    }

    /// The id in the seed derivation: 0 q, 1 k, 2 v, 3 o, 4 gate, 5 up, 6 down, 7 LM head.
    pub fn id(self) -> u8 {
        match self {
            Matrix::Q => 0,
            Matrix::K => 1,
            Matrix::V => 2,
            Matrix::O => 3,
            Matrix::Gate => 4,
            Matrix::Up => 5,
            Matrix::Down => 6,
            Matrix::LmHead => 7,
        }
    }

    /// The Hugging Face tensor name of this map in layer `layer` (1-based; ignored for the LM
    /// head).
    pub fn tensor_name(self, layer: usize) -> String {
        let i = layer.saturating_sub(1);
        let p = |s: &str| format!("model.layers.{i}.{s}.weight");
        match self {
            Matrix::Q => p("self_attn.q_proj"),
            Matrix::K => p("self_attn.k_proj"),
            Matrix::V => p("self_attn.v_proj"),
            Matrix::O => p("self_attn.o_proj"),
            Matrix::Gate => p("mlp.gate_proj"),
            Matrix::Up => p("mlp.up_proj"),
            Matrix::Down => p("mlp.down_proj"),
            Matrix::LmHead => "lm_head.weight".into(),
        }
    }
}

/// The shapes a key covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDims {
    /// Transformer layers `L`.
    pub layers: u32,
    /// Hidden size.
    pub hidden: u32,
    /// Query width `heads · hd`.
    pub q_out: u32,
    /// Key/value width `kv_heads · hd`.
    pub kv_out: u32,
    /// MLP width.
    pub mlp: u32,
    /// Vocabulary size (LM head rows).
    pub vocab: u32,
}

impl KeyDims {
    /// `(out, in)` of `matrix`.
    pub fn shape(&self, matrix: Matrix) -> (usize, usize) {
        let (d, q, kv, m, v) = (
            self.hidden as usize,
            self.q_out as usize,
            self.kv_out as usize,
            self.mlp as usize,
            self.vocab as usize,
        );
        match matrix {
            Matrix::Q => (q, d),
            Matrix::K | Matrix::V => (kv, d),
            Matrix::O => (d, q),
            Matrix::Gate | Matrix::Up => (m, d),
            Matrix::Down => (d, m),
            Matrix::LmHead => (v, d),
        }
    }

    fn of(model: &LlamaModel) -> Result<Self> {
        let c = model.config();
        let u = |x: usize| {
            u32::try_from(x)
                .ok()
                .filter(|&x| (1..=MAX_DIM).contains(&x))
                .ok_or_else(|| FreivaldsError::InvalidArgument(format!("dimension {x}")))
        };
        Ok(KeyDims {
            layers: u(c.num_layers)?,
            hidden: u(c.hidden_size)?,
            q_out: u(c.num_heads * c.head_dim())?,
            kv_out: u(c.num_kv_heads * c.head_dim())?,
            mlp: u(c.intermediate_size)?,
            vocab: u(c.vocab_size)?,
        })
    }

    /// Every (layer, matrix) in key order: layers `1..=L` × [`Matrix::LAYER`], then
    /// `(L, LmHead)`.
    fn order(&self) -> impl Iterator<Item = (usize, Matrix)> + '_ {
        (1..=self.layers as usize)
            .flat_map(|l| Matrix::LAYER.into_iter().map(move |m| (l, m)))
            .chain(std::iter::once((self.layers as usize, Matrix::LmHead)))
    }

    /// Encoded bytes of the vectors for `t` repetitions, checked.
    fn body_len(&self, t: u32) -> Option<u64> {
        let mut total: u64 = 0;
        for (_, m) in self.order() {
            let (out, inp) = self.shape(m);
            let per = (out as u64).checked_add((inp as u64).checked_mul(2)?)?;
            total = total.checked_add(per.checked_mul(8)?.checked_mul(u64::from(t))?)?;
        }
        Some(total)
    }
}

/// One matrix's vectors for every repetition: `r` (`t · out`), `v = rᵀW` and `u = |r|ᵀ|W|`
/// (`t · in` each), repetition-major.
#[derive(Debug, Clone, PartialEq)]
struct MatrixKey {
    r: Vec<f64>,
    v: Vec<f64>,
    u: Vec<f64>,
}

/// A verifier key: secret vectors and their products with every linear weight of one model
/// (see the [module docs](self)). Keep it secret.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifierKey {
    model_digest: Digest,
    secret_commitment: [u8; 32],
    dims: KeyDims,
    repetitions: u32,
    /// In [`KeyDims::order`].
    matrices: Vec<MatrixKey>,
    /// For a key derived for a setup's weights ([`VerifierKey::for_setup`]): those weights'
    /// `v` and `u` (the same `r`). Never encoded: [`VerifierKey::to_bytes`] writes the
    /// checkpoint's.
    derived: Option<Box<DerivedWeights>>,
}

/// The weights of a setup other than the checkpoint's f32 ones, in a derived key.
#[derive(Debug, Clone, PartialEq)]
struct DerivedWeights {
    /// The setup's precision (the outputs' rounding unit).
    precision: crate::Precision,
    /// The setup's quantization.
    quant: Option<crate::Quant>,
    /// Per matrix in [`KeyDims::order`]: `v` and `u` of the prepared weights.
    vu: Vec<(Vec<f64>, Vec<f64>)>,
}

/// The seed of `r` for (layer, matrix, repetition) (see the [module docs](self)).
fn seed(
    secret: &VerifierSecret,
    digest: &Digest,
    layer: u32,
    matrix: Matrix,
    rep: u32,
) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(SEED_DOMAIN);
    h.update(secret.as_bytes());
    h.update(digest.as_bytes());
    h.update(&layer.to_le_bytes());
    h.update(&[matrix.id()]);
    h.update(&rep.to_le_bytes());
    *h.finalize().as_bytes()
}

/// `out` Gaussian values from `seed` by Box–Muller (see the [module docs](self)).
fn gaussian(seed: [u8; 32], out: usize) -> Vec<f64> {
    let mut rng = ChaCha20Rng::from_seed(seed);
    let mut r = Vec::with_capacity(out + 1);
    while r.len() < out {
        let a = (rng.next_u64() >> 11) as f64;
        let b = (rng.next_u64() >> 11) as f64;
        let u1 = (a + 0.5) * U_F64;
        let u2 = b * U_F64;
        let rho = (-2.0 * libm::log(u1)).sqrt();
        let angle = 2.0 * std::f64::consts::PI * u2;
        r.push(rho * libm::cos(angle));
        r.push(rho * libm::sin(angle));
    }
    r.truncate(out);
    r
}

/// `r`, `v = rᵀW`, `u = |r|ᵀ|W|` of one repetition for `w` (`[out, in]` row-major).
fn derive(seed: [u8; 32], w: &[f32], out: usize, inp: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let r = gaussian(seed, out);
    let (v, u) = products(&r, w, inp);
    (r, v, u)
}

/// `v = rᵀW` and `u = |r|ᵀ|W|` in f64, summed over the rows of `W` (`[r.len(), inp]`) in
/// ascending order.
fn products(r: &[f64], w: &[f32], inp: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; inp];
    let mut u = vec![0f64; inp];
    for (ri, row) in r.iter().zip(w.chunks_exact(inp)) {
        let ai = ri.abs();
        for ((vj, uj), &wij) in v.iter_mut().zip(u.iter_mut()).zip(row) {
            let wij = f64::from(wij);
            *vj += ri * wij;
            *uj += ai * wij.abs();
        }
    }
    (v, u)
}

/// `γ_n = n u / (1 − n u)` for unit roundoff `unit` (infinite when `n u ≥ 1`).
pub fn gamma(n: usize, unit: f64) -> f64 {
    let nu = n as f64 * unit;
    if nu >= 1.0 {
        f64::INFINITY
    } else {
        nu / (1.0 - nu)
    }
}

impl VerifierKey {
    /// Derives the key of `model` from `secret` with `repetitions` independent vectors per
    /// matrix (see the [module docs](self)).
    ///
    /// # Errors
    /// [`FreivaldsError::InvalidArgument`] for `repetitions` outside `1..=`[`MAX_REPETITIONS`];
    /// [`FreivaldsError::Unsupported`] for a model whose weights are missing or misshapen.
    pub fn build(secret: &VerifierSecret, model: &LlamaModel, repetitions: u32) -> Result<Self> {
        if !(1..=MAX_REPETITIONS).contains(&repetitions) {
            return Err(FreivaldsError::InvalidArgument(format!(
                "repetitions {repetitions} must be between 1 and {MAX_REPETITIONS}"
            )));
        }
        let dims = KeyDims::of(model)?;
        let digest = model.digest();
        let tensors: std::collections::HashMap<String, Vec<f32>> = model
            .named_tensors()?
            .into_iter()
            .map(|(name, _, data)| (name, data))
            .collect();
        let mut matrices = Vec::new();
        for (layer, m) in dims.order() {
            let (out, inp) = dims.shape(m);
            let name = m.tensor_name(layer);
            let w = tensors
                .get(&name)
                .filter(|w| w.len() == out * inp)
                .ok_or_else(|| {
                    FreivaldsError::Unsupported(format!("tensor {name} missing or misshapen"))
                })?;
            let mut mk = MatrixKey {
                r: Vec::with_capacity(out * repetitions as usize),
                v: Vec::with_capacity(inp * repetitions as usize),
                u: Vec::with_capacity(inp * repetitions as usize),
            };
            for k in 0..repetitions {
                let (r, v, u) = derive(seed(secret, &digest, layer as u32, m, k), w, out, inp);
                mk.r.extend(r);
                mk.v.extend(v);
                mk.u.extend(u);
            }
            matrices.push(mk);
        }
        Ok(VerifierKey {
            model_digest: digest,
            secret_commitment: secret.commitment(),
            dims,
            repetitions,
            matrices,
            derived: None,
        })
    }

    /// The model digest the key was built for.
    pub fn model_digest(&self) -> Digest {
        self.model_digest
    }

    /// The commitment to the secret ([`VerifierSecret::commitment`]).
    pub fn secret_commitment(&self) -> [u8; 32] {
        self.secret_commitment
    }

    /// Whether the key was built from `secret`.
    pub fn matches_secret(&self, secret: &VerifierSecret) -> bool {
        self.secret_commitment == secret.commitment()
    }

    /// The shapes the key covers.
    pub fn dims(&self) -> KeyDims {
        self.dims
    }

    /// Repetitions `t` per matrix.
    pub fn repetitions(&self) -> u32 {
        self.repetitions
    }

    /// Refuses a model other than the key's.
    ///
    /// # Errors
    /// [`FreivaldsError::ModelMismatch`].
    pub fn check_model(&self, digest: &Digest) -> Result<()> {
        if *digest != self.model_digest {
            return Err(FreivaldsError::ModelMismatch {
                key: self.model_digest,
                model: *digest,
            });
        }
        Ok(())
    }

    /// The key of `setup`'s weights: the same secret vectors `r`, with `v = rᵀW'` and
    /// `u = |r|ᵀ|W'|` recomputed (in f64, in the same order as [`VerifierKey::build`]) for the
    /// weights `W'` as `setup` prepares them: rounded to its precision (bf16, f16) and
    /// quantized and dequantized (`quant=...`). The checks then compare a claimed `y` with
    /// `W' x`, and the bound's output rounding is at the setup's precision (specs/freivalds.md
    /// §2). For an unquantized f32 setup, the key itself. Built in memory only:
    /// [`VerifierKey::to_bytes`] still writes the checkpoint's key, from which this one is
    /// derived again (about the cost of [`VerifierKey::build`]).
    ///
    /// # Errors
    /// A model of another digest; a setup the model cannot prepare.
    pub fn for_setup(&self, model: &LlamaModel, setup: &crate::Setup) -> Result<Self> {
        self.check_model(&model.digest())?;
        let mut base = self.clone();
        base.derived = None;
        if setup.precision == crate::Precision::F32 && setup.quant.is_none() {
            return Ok(base);
        }
        let t = self.repetitions as usize;
        let mut vu = Vec::with_capacity(self.matrices.len());
        for ((layer, m), mk) in self.dims.order().zip(&self.matrices) {
            let (out, inp) = self.dims.shape(m);
            let w = model.prepared_matrix(setup, layer, m)?;
            if w.len() != out * inp {
                return Err(FreivaldsError::Unsupported(format!(
                    "{m:?} of layer {layer}: {} prepared weights for [{out}, {inp}]",
                    w.len()
                )));
            }
            let (mut v, mut u) = (Vec::with_capacity(t * inp), Vec::with_capacity(t * inp));
            for k in 0..t {
                let (vk, uk) = products(&mk.r[k * out..(k + 1) * out], &w, inp);
                v.extend(vk);
                u.extend(uk);
            }
            vu.push((v, u));
        }
        base.derived = Some(Box::new(DerivedWeights {
            precision: setup.precision,
            quant: setup.quant,
            vu,
        }));
        Ok(base)
    }

    /// Refuses a `setup` whose weights are not the ones this key holds (the checkpoint's f32
    /// weights, or the setup's a [`VerifierKey::for_setup`] key was derived for).
    ///
    /// # Errors
    /// [`FreivaldsError::Unsupported`], saying which weights the key holds.
    pub fn check_setup(&self, setup: &crate::Setup) -> Result<()> {
        let (precision, quant) = match &self.derived {
            None => (crate::Precision::F32, None),
            Some(d) => (d.precision, d.quant),
        };
        if setup.precision == precision && setup.quant == quant {
            return Ok(());
        }
        Err(FreivaldsError::Unsupported(format!(
            "setup {setup}: this key holds the {} weights; derive one for the setup's \
             (VerifierKey::for_setup)",
            self.weights()
        )))
    }

    /// Which weights the key holds: `f32` (the checkpoint's), or the precision and
    /// quantization of the setup it was derived for.
    pub fn weights(&self) -> String {
        match &self.derived {
            None => "f32".into(),
            Some(d) => match d.quant {
                None => d.precision.name().to_string(),
                Some(q) => format!("{}/quant={q}", d.precision.name()),
            },
        }
    }

    /// The factor on `|r|·|y|` for each rounding of an output the key's checks allow:
    /// `2⁻²⁴` for f32 weights; `u / (1 − u)` with the derived setup's unit roundoff `u`
    /// otherwise (`|fl(ŷ) − ŷ| ≤ u|ŷ| ≤ u/(1 − u)·|fl(ŷ)|`: the bound reads the rounded
    /// output, and at bf16's `u = 2⁻⁸` the difference is not negligible).
    pub fn output_unit(&self) -> f64 {
        let u = match self.derived.as_ref().map(|d| d.precision) {
            None | Some(crate::Precision::F32) => return U_F32,
            Some(crate::Precision::Bf16) => (-8f64).exp2(),
            Some(crate::Precision::F16) => (-11f64).exp2(),
        };
        u / (1.0 - u)
    }

    /// Matrix `index`'s `r`, `v` and `u` for every repetition (`v`, `u` of the derived
    /// weights where there are some).
    fn vectors(&self, index: usize) -> (&[f64], &[f64], &[f64]) {
        let mk = &self.matrices[index];
        match self.derived.as_ref().and_then(|d| d.vu.get(index)) {
            Some((v, u)) => (&mk.r, v, u),
            None => (&mk.r, &mk.v, &mk.u),
        }
    }
    /// The seed of the sampled attention check ([`AttentionSampling::draw`]) of cell
    /// `(layer, chunk)` of the session whose statement encodes to `statement`:
    /// `BLAKE3("veritrace/freivalds/attention-sample/v1" ‖ BLAKE3(r) ‖ BLAKE3(statement) ‖
    /// u32le(layer) ‖ u32le(chunk))`, where `r` is the key's first secret vector (layer 1's
    /// query map, first repetition, as f64 little-endian). The prover, who does not hold the
    /// key, cannot predict which heads and rows a cell's check covers, at commitment or after;
    /// the same key and statement always draw the same sample (an auditor with the key
    /// re-derives it).
    pub fn sample_seed(&self, statement: &[u8], layer: u32, chunk: u32) -> [u8; 32] {
        let mut secret = blake3::Hasher::new();
        if let Some(m) = self.matrices.first() {
            for x in &m.r {
                secret.update(&x.to_le_bytes());
            }
        }
        let mut h = blake3::Hasher::new();
        h.update(SAMPLE_DOMAIN);
        h.update(secret.finalize().as_bytes());
        h.update(blake3::hash(statement).as_bytes());
        h.update(&layer.to_le_bytes());
        h.update(&chunk.to_le_bytes());
        *h.finalize().as_bytes()
    }

    /// Bytes of [`VerifierKey::to_bytes`].
    pub fn encoded_len(&self) -> u64 {
        HEADER_LEN as u64 + self.dims.body_len(self.repetitions).unwrap_or(u64::MAX)
    }

    /// The key's one encoding (little-endian): [`MAGIC`], u32 [`VERSION`], the model digest
    /// (32 bytes), the secret commitment (32 bytes), u32 `L`, `hidden`, `q_out`, `kv_out`,
    /// `mlp`, `vocab`, `t`; then for each (layer, matrix) in key order (layers `1..=L` × q, k,
    /// v, o, gate, up, down, then the LM head) and each repetition: `r` (`out` f64), `v` (`in`
    /// f64), `u` (`in` f64).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(usize::try_from(self.encoded_len()).unwrap_or(0));
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(self.model_digest.as_bytes());
        b.extend_from_slice(&self.secret_commitment);
        let d = &self.dims;
        for x in [
            d.layers,
            d.hidden,
            d.q_out,
            d.kv_out,
            d.mlp,
            d.vocab,
            self.repetitions,
        ] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        for ((_, m), mk) in self.dims.order().zip(&self.matrices) {
            let (out, inp) = self.dims.shape(m);
            for k in 0..self.repetitions as usize {
                for x in mk.r[k * out..(k + 1) * out]
                    .iter()
                    .chain(&mk.v[k * inp..(k + 1) * inp])
                    .chain(&mk.u[k * inp..(k + 1) * inp])
                {
                    b.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        b
    }

    /// Decodes [`VerifierKey::to_bytes`], refusing anything else: another magic or version,
    /// a dimension outside `1..=`[`MAX_DIM`], repetitions outside `1..=`[`MAX_REPETITIONS`], a
    /// length other than the one the header declares (checked before any allocation, and at
    /// most [`MAX_KEY_BYTES`]), a non-finite value, or a `u` that is negative or `−0`.
    ///
    /// # Errors
    /// [`FreivaldsError::Encoding`] naming the first problem.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |m: String| Err(FreivaldsError::Encoding(m));
        if bytes.len() < HEADER_LEN {
            return bad(format!(
                "{} bytes is shorter than the {HEADER_LEN}-byte header",
                bytes.len()
            ));
        }
        if bytes[..8] != MAGIC {
            return bad("not a verifier key (wrong magic)".into());
        }
        let u32_at = |at: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&bytes[at..at + 4]);
            u32::from_le_bytes(a)
        };
        let version = u32_at(8);
        if version != VERSION {
            return bad(format!("version {version}, this build reads {VERSION}"));
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&bytes[12..44]);
        let mut commitment = [0u8; 32];
        commitment.copy_from_slice(&bytes[44..76]);
        let f: Vec<u32> = (0..7).map(|i| u32_at(76 + 4 * i)).collect();
        let names = ["layers", "hidden", "q_out", "kv_out", "mlp", "vocab"];
        for (name, &x) in names.iter().zip(&f) {
            if !(1..=MAX_DIM).contains(&x) {
                return bad(format!("{name} = {x} is outside 1..={MAX_DIM}"));
            }
        }
        let t = f[6];
        if !(1..=MAX_REPETITIONS).contains(&t) {
            return bad(format!("repetitions {t} is outside 1..={MAX_REPETITIONS}"));
        }
        let dims = KeyDims {
            layers: f[0],
            hidden: f[1],
            q_out: f[2],
            kv_out: f[3],
            mlp: f[4],
            vocab: f[5],
        };
        let expected = dims
            .body_len(t)
            .and_then(|b| b.checked_add(HEADER_LEN as u64))
            .filter(|&n| n <= MAX_KEY_BYTES);
        let Some(expected) = expected else {
            return bad(format!(
                "the declared dimensions need more than {MAX_KEY_BYTES} bytes"
            ));
        };
        if bytes.len() as u64 != expected {
            return bad(format!(
                "{} bytes, the header declares {expected}",
                bytes.len()
            ));
        }
        let mut at = HEADER_LEN;
        let mut read = |n: usize, what: &str, nonneg: bool| -> Result<Vec<f64>> {
            let mut out = Vec::with_capacity(n);
            for c in bytes[at..at + 8 * n].chunks_exact(8) {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                let x = f64::from_le_bytes(a);
                if !x.is_finite() || (nonneg && !(x.is_sign_positive())) {
                    return Err(FreivaldsError::Encoding(format!(
                        "{what} value at byte {} is {x:?}",
                        at + 8 * out.len()
                    )));
                }
                out.push(x);
            }
            at += 8 * n;
            Ok(out)
        };
        let mut matrices = Vec::new();
        for (_, m) in dims.order() {
            let (out, inp) = dims.shape(m);
            let mut mk = MatrixKey {
                r: Vec::with_capacity(out * t as usize),
                v: Vec::with_capacity(inp * t as usize),
                u: Vec::with_capacity(inp * t as usize),
            };
            for _ in 0..t {
                mk.r.extend(read(out, "r", false)?);
                mk.v.extend(read(inp, "v", false)?);
                mk.u.extend(read(inp, "u", true)?);
            }
            matrices.push(mk);
        }
        Ok(VerifierKey {
            model_digest: Digest(digest),
            secret_commitment: commitment,
            dims,
            repetitions: t,
            matrices,
            derived: None,
        })
    }

    fn matrix(&self, layer: usize, matrix: Matrix) -> Result<(&[f64], &[f64], &[f64])> {
        let l = self.dims.layers as usize;
        let index = match matrix {
            Matrix::LmHead if layer == l => 7 * l,
            Matrix::LmHead => {
                return Err(FreivaldsError::InvalidArgument(format!(
                    "the LM head is addressed with layer {l}, got {layer}"
                )))
            }
            m if (1..=l).contains(&layer) => 7 * (layer - 1) + m.id() as usize,
            _ => {
                return Err(FreivaldsError::InvalidArgument(format!(
                    "layer {layer} is outside 1..={l}"
                )))
            }
        };
        Ok(self.vectors(index))
    }
}

/// The result of [`check_linear`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearCheck {
    /// Whether every row passed every repetition (`worst_ratio ≤ 1`).
    pub passed: bool,
    /// The largest `|v·x − r·y| / B` over rows and repetitions (0 when both are 0, infinite
    /// for a non-zero deviation against a zero bound).
    pub worst_ratio: f64,
    /// The row of the worst ratio.
    pub worst_row: usize,
    /// The repetition of the worst ratio.
    pub worst_repetition: usize,
    /// `|v·x − r·y|` there.
    pub deviation: f64,
    /// `B` there.
    pub bound: f64,
}

/// Checks claimed outputs `y` (`rows × out`, row-major f32) of `matrix` in layer `layer` (1-based;
/// the LM head with layer `L`) on inputs `x` (`rows × in`) against `key`: for every row and
/// repetition, `|v·x − r·y|` against `B = γ_n (u·|x|) + 2⁻²⁴ (|r|·|y|) + ε` (the [module
/// docs](self) derive it), all in f64.
///
/// # Errors
/// [`FreivaldsError::InvalidArgument`] for `rows = 0` or a layer the key does not have;
/// [`FreivaldsError::WrongLength`] for `x` or `y` of another length;
/// [`FreivaldsError::NonFinite`] for NaN or infinite inputs.
pub fn check_linear(
    key: &VerifierKey,
    layer: usize,
    matrix: Matrix,
    x: &[f32],
    y: &[f32],
    rows: usize,
) -> Result<LinearCheck> {
    check_linear_biased(key, layer, matrix, x, y, rows, None)
}

/// [`check_linear`] of a map with a bias, `y = W x + b` (Qwen2's q, k and v projections): the
/// verifier compares `v·x + r·b` with `r·y`, and the bound gains one more f32 rounding of the
/// output (the bias add: `2⁻²⁴ (|r|·|y|)`) and its own f64 error on `r·b`
/// (`2 γ⁽⁶⁴⁾_out (|r|·|b|)`). `bias = None` is [`check_linear`]. Fails as [`check_linear`] does,
/// or for a bias of the wrong length or non-finite.
#[allow(clippy::too_many_arguments)]
pub fn check_linear_biased(
    key: &VerifierKey,
    layer: usize,
    matrix: Matrix,
    x: &[f32],
    y: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
) -> Result<LinearCheck> {
    Ok(worst_of(
        &linear_terms(key, layer, matrix, x, y, rows, bias)?,
        key.repetitions as usize,
    ))
}

/// The [`LinearCheck`] of one map's terms (index `p·t + k`, as [`linear_terms`] orders them).
fn worst_of(terms: &[(f64, f64)], t: usize) -> LinearCheck {
    let mut worst = LinearCheck {
        passed: true,
        worst_ratio: 0.0,
        worst_row: 0,
        worst_repetition: 0,
        deviation: 0.0,
        bound: 0.0,
    };
    for (i, &(deviation, bound)) in terms.iter().enumerate() {
        let ratio = if deviation == 0.0 {
            0.0
        } else if bound > 0.0 {
            deviation / bound
        } else {
            f64::INFINITY
        };
        if i == 0 || ratio > worst.worst_ratio {
            worst = LinearCheck {
                passed: true,
                worst_ratio: ratio,
                worst_row: i / t.max(1),
                worst_repetition: i % t.max(1),
                deviation,
                bound,
            };
        }
    }
    worst.passed = worst.worst_ratio <= 1.0;
    worst
}

/// One map's part of a [`check_linear_shared`]: `(matrix, y, bias)`, its claimed outputs and
/// its bias if it has one.
pub type MapClaim<'a> = (Matrix, &'a [f32], Option<&'a [f32]>);

/// [`check_linear_biased`] of several maps that read the same input rows `x` (the key and
/// value projections of the attention-normed rows; the gate and up projections of the MLP's
/// input), each given as `(matrix, y, bias)`: the same checks, bitwise, with `x` read once for
/// all of them (the check is bound by reading the claimed rows, so this saves a pass over `x`
/// per further map). Fails as `check_linear_biased` of the maps in order would, and for maps
/// of different input widths.
pub fn check_linear_shared(
    key: &VerifierKey,
    layer: usize,
    x: &[f32],
    rows: usize,
    maps: &[MapClaim<'_>],
) -> Result<Vec<LinearCheck>> {
    let t = key.repetitions as usize;
    Ok(shared_terms(key, layer, x, rows, maps)?
        .iter()
        .map(|terms| worst_of(terms, t))
        .collect())
}

/// The terms [`check_linear`] compares, for every row `p` and repetition `k` in that order
/// (index `p·t + k`): `(|v·x − r·y|, B)`. A caller predicting a wrong weight's detection takes
/// the bounds from here and `‖e‖` from the true product (`erf(B / (√2 ‖e‖))` per term,
/// [`false_accept_probability`]). With a `bias`, the terms of [`check_linear_biased`]. Fails as
/// [`check_linear_biased`] does.
pub fn linear_terms(
    key: &VerifierKey,
    layer: usize,
    matrix: Matrix,
    x: &[f32],
    y: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
) -> Result<Vec<(f64, f64)>> {
    let mut terms = shared_terms(key, layer, x, rows, &[(matrix, y, bias)])?;
    Ok(terms.pop().unwrap_or_default())
}

/// One map's key, shapes and bias terms in [`shared_terms`].
struct MapTerms<'a> {
    /// The key's `r`, `v` and `u`, every repetition.
    mk: (&'a [f64], &'a [f64], &'a [f64]),
    out: usize,
    y: &'a [f32],
    /// Per repetition: `r·b` and `|r|·|b|` (0 without a bias).
    rb: Vec<(f64, f64)>,
    /// 2 with a bias (one more rounding of each output), else 1.
    outputs_rounded: f64,
    /// `γ⁽⁶⁴⁾_out`, the f64 rounding of the sums over the outputs.
    gamma_out: f64,
}

impl<'a> MapTerms<'a> {
    /// Repetition `k`'s `v` and `u` (each `inp` long).
    fn key_row(&self, k: usize, inp: usize) -> (&'a [f64], &'a [f64]) {
        let (_, v, u) = self.mk;
        (&v[k * inp..(k + 1) * inp], &u[k * inp..(k + 1) * inp])
    }
}

/// [`linear_terms`] of every map in `maps` (`(matrix, y, bias)`, all of input width `in`) on
/// the same input rows `x`, one vector of terms per map: each row of `x` is read once for all
/// maps (two maps' sums in one pass, [`dots_pair`]), and every sum is bitwise the one
/// [`linear_terms`] of the map alone computes. Errors as `linear_terms` of the maps in order.
fn shared_terms(
    key: &VerifierKey,
    layer: usize,
    x: &[f32],
    rows: usize,
    maps: &[MapClaim<'_>],
) -> Result<Vec<Vec<(f64, f64)>>> {
    let t = key.repetitions as usize;
    let mut inp = None;
    let mut parts = Vec::with_capacity(maps.len());
    for &(matrix, y, bias) in maps {
        let mk = key.matrix(layer, matrix)?;
        let (out, width) = key.dims.shape(matrix);
        if *inp.get_or_insert(width) != width {
            return Err(FreivaldsError::InvalidArgument(format!(
                "{matrix:?} reads inputs of width {width}, not {}",
                inp.unwrap_or(0)
            )));
        }
        if let Some(b) = bias {
            if b.len() != out {
                return Err(FreivaldsError::WrongLength {
                    what: "bias",
                    expected: out as u64,
                    got: b.len(),
                });
            }
            if let Some(index) = crate::first_non_finite(b) {
                return Err(FreivaldsError::NonFinite {
                    what: "bias",
                    index,
                });
            }
        }
        if rows == 0 {
            return Err(FreivaldsError::InvalidArgument(
                "rows must be at least 1".into(),
            ));
        }
        for (what, data, w) in [("x", x, width), ("y", y, out)] {
            let expected = (rows as u64).saturating_mul(w as u64);
            if data.len() as u64 != expected {
                return Err(FreivaldsError::WrongLength {
                    what,
                    expected,
                    got: data.len(),
                });
            }
        }
        let rb = (0..t)
            .map(|k| match bias {
                Some(b) => dots_abs(&mk.0[k * out..(k + 1) * out], b),
                None => (0.0, 0.0),
            })
            .collect();
        parts.push(MapTerms {
            mk,
            out,
            y,
            rb,
            outputs_rounded: if bias.is_some() { 2.0 } else { 1.0 },
            gamma_out: gamma(out, U_F64),
        });
    }
    let Some(inp) = inp else {
        return Ok(Vec::new());
    };
    // Finiteness is read off the sums below instead of a scan of its own: with finite keys,
    // `Σ|u|·|x|` (f64, of f32 values: no overflow) is finite exactly when every `x` is, as is
    // `Σ|r|·|y|` for `y` (a zero key entry times ±∞ or NaN is NaN). The first non-finite sum
    // sends the caller the first non-finite element of `x`, else of that map's `y`, as a scan
    // would.
    let non_finite = |y: &[f32]| -> FreivaldsError {
        match crate::first_non_finite(x) {
            Some(index) => FreivaldsError::NonFinite { what: "x", index },
            None => FreivaldsError::NonFinite {
                what: "y",
                index: crate::first_non_finite(y).unwrap_or(0),
            },
        }
    };
    let (gamma_n, gamma_in) = (gamma(inp, U_F32), gamma(inp, U_F64));
    // each output rounded to the key's setup precision (f32 accumulation in any order)
    let unit_out = key.output_unit();
    let mut terms: Vec<Vec<(f64, f64)>> =
        parts.iter().map(|_| Vec::with_capacity(rows * t)).collect();
    let mut sums = vec![(0f64, 0f64); parts.len()];
    for (p, xr) in x.chunks_exact(inp).enumerate() {
        for k in 0..t {
            // the maps' sums over this row, two maps per pass over it
            for (pair, out) in parts.chunks(2).zip(sums.chunks_mut(2)) {
                match pair {
                    [a, b] => {
                        let ((va, ua), (vb, ub)) = (a.key_row(k, inp), b.key_row(k, inp));
                        (out[0], out[1]) = dots_pair([va, ua, vb, ub], xr);
                    }
                    [a] => {
                        let (va, ua) = a.key_row(k, inp);
                        out[0] = dots(va, ua, xr);
                    }
                    _ => {}
                }
            }
            for ((m, &(vx, ux)), terms) in parts.iter().zip(&sums).zip(terms.iter_mut()) {
                let (rbk, arbk) = m.rb[k];
                let r = &m.mk.0[k * m.out..(k + 1) * m.out];
                let yr = &m.y[p * m.out..(p + 1) * m.out];
                let (ry, ary) = dots_abs(r, yr);
                if !(ux.is_finite() && ary.is_finite()) {
                    return Err(non_finite(m.y));
                }
                let eps = 2.0 * (gamma_in + m.gamma_out);
                let deviation = (vx + rbk - ry).abs();
                let bound = gamma_n * ux
                    + m.outputs_rounded * unit_out * ary
                    + eps * (ux + ary)
                    + 2.0 * m.gamma_out * arbk;
                terms.push((deviation, bound));
            }
        }
    }
    Ok(terms)
}

/// `(Σ aᵢ·xᵢ, Σ bᵢ·|xᵢ|)` in f64 with sixteen interleaved accumulators per sum (element `i`
/// into lane `i mod 16`, so the loop vectorizes and sixteen independent add chains hide the add
/// latency), then the fixed pairwise reduction [`reduce`]. The summation order is fixed by the
/// lengths alone; the verifier's rounding term of the bound (`γ⁽⁶⁴⁾` over the length) holds for
/// any order. On x86-64 CPUs with AVX2 the same loop runs four lanes wide in four registers per
/// sum: no multiply is fused with its add (Rust never contracts floating-point operations), so
/// the sums are bitwise those of the baseline build.
fn dots(a: &[f64], b: &[f64], x: &[f32]) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: the CPU supports AVX2, checked on the line above.
        return unsafe { dots_avx2(a, b, x) };
    }
    dots_lanes(a, b, x)
}

/// The sixteen accumulator lanes held in four AVX2 registers (lanes 0–3, 4–7, 8–11, 12–15),
/// in order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn lanes_of(s: [std::arch::x86_64::__m256d; 4]) -> [f64; LANES] {
    use std::arch::x86_64::_mm256_storeu_pd;
    let mut out = [0f64; LANES];
    for (i, v) in s.into_iter().enumerate() {
        #[allow(unsafe_code)]
        // SAFETY: `out` holds 16 f64; store `i` writes four of them at offset 4·i ≤ 12.
        unsafe {
            _mm256_storeu_pd(out.as_mut_ptr().add(4 * i), v)
        };
    }
    out
}

/// [`dots`] of two pairs of vectors over the same `x`, `[a₁, b₁, a₂, b₂]`:
/// `(dots(a₁, b₁, x), dots(a₂, b₂, x))`, bitwise, with `x` read and widened once (AVX-512,
/// whose 32 registers hold the four sums' sixteen lanes each, two per sum; without it, two
/// calls of [`dots`]).
fn dots_pair(k: [&[f64]; 4], x: &[f32]) -> ((f64, f64), (f64, f64)) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        #[allow(unsafe_code)]
        // SAFETY: the CPU supports AVX-512F, checked on the line above.
        return unsafe { dots_pair_avx512(k, x) };
    }
    (dots(k[0], k[1], x), dots(k[2], k[3], x))
}

/// [`dots_pair`] with AVX-512 intrinsics: lanes `0..8` and `8..16` of each sum's
/// accumulators in two registers, each lane's multiply and add as in [`dots_lanes`] (no fused
/// multiply-add), so the sums are bitwise the same.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dots_pair_avx512(k: [&[f64]; 4], x: &[f32]) -> ((f64, f64), (f64, f64)) {
    use std::arch::x86_64::{
        __m512d, _mm256_loadu_ps, _mm512_abs_pd, _mm512_add_pd, _mm512_cvtps_pd, _mm512_loadu_pd,
        _mm512_mul_pd, _mm512_setzero_pd, _mm512_storeu_pd,
    };
    let n = x.len() / LANES * LANES;
    if k.iter().any(|v| v.len() < x.len()) {
        return (dots(k[0], k[1], x), dots(k[2], k[3], x));
    }
    // acc[s][h]: sum s (a₁·x, b₁·|x|, a₂·x, b₂·|x|), lanes 8h..8h + 8
    let mut acc = [[_mm512_setzero_pd(); 2]; 4];
    for c in (0..n).step_by(LANES) {
        for h in 0..2 {
            #[allow(unsafe_code)]
            // SAFETY: c + 8h + 8 ≤ n ≤ x.len() ≤ every k[s].len() (checked above), so each
            // unaligned load of eight f32 or eight f64 at c + 8h stays inside its slice.
            unsafe {
                let xs = _mm512_cvtps_pd(_mm256_loadu_ps(x.as_ptr().add(c + 8 * h)));
                let ax = _mm512_abs_pd(xs);
                for (s, a) in acc.iter_mut().enumerate() {
                    let w = _mm512_loadu_pd(k[s].as_ptr().add(c + 8 * h));
                    let term = _mm512_mul_pd(w, if s % 2 == 0 { xs } else { ax });
                    a[h] = _mm512_add_pd(a[h], term);
                }
            }
        }
    }
    let lanes = |a: [__m512d; 2]| -> [f64; LANES] {
        let mut out = [0f64; LANES];
        #[allow(unsafe_code)]
        // SAFETY: `out` holds 16 f64; the stores write eight each at offsets 0 and 8.
        unsafe {
            _mm512_storeu_pd(out.as_mut_ptr(), a[0]);
            _mm512_storeu_pd(out.as_mut_ptr().add(8), a[1]);
        }
        out
    };
    let mut r = acc.map(|a| reduce(&lanes(a)));
    for i in n..x.len() {
        let xi = f64::from(x[i]);
        r[0] += k[0][i] * xi;
        r[1] += k[1][i] * xi.abs();
        r[2] += k[2][i] * xi;
        r[3] += k[3][i] * xi.abs();
    }
    ((r[0], r[1]), (r[2], r[3]))
}

/// [`dots`] with AVX2 intrinsics: lanes `4j..4j + 4` of the accumulators in register `j`, each
/// lane's multiply and add as in [`dots_lanes`] (no fused multiply-add), so the sums are
/// bitwise the same.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dots_avx2(a: &[f64], b: &[f64], x: &[f32]) -> (f64, f64) {
    use std::arch::x86_64::{
        _mm256_add_pd, _mm256_andnot_pd, _mm256_cvtps_pd, _mm256_loadu_pd, _mm256_mul_pd,
        _mm256_set1_pd, _mm256_setzero_pd, _mm_loadu_ps,
    };
    let n = x.len() / LANES * LANES;
    let (a16, b16, x16) = (&a[..n], &b[..n], &x[..n]);
    let sign = _mm256_set1_pd(-0.0);
    let mut s = [_mm256_setzero_pd(); 4];
    let mut t = [_mm256_setzero_pd(); 4];
    for ((ac, bc), xc) in a16
        .chunks_exact(LANES)
        .zip(b16.chunks_exact(LANES))
        .zip(x16.chunks_exact(LANES))
    {
        for j in 0..4 {
            #[allow(unsafe_code)]
            // SAFETY: each chunk holds exactly LANES = 16 elements, so the unaligned loads of
            // four f64 and of four f32 at offset 4·j ≤ 12 stay inside it.
            unsafe {
                let xj = _mm256_cvtps_pd(_mm_loadu_ps(xc.as_ptr().add(4 * j)));
                s[j] = _mm256_add_pd(
                    s[j],
                    _mm256_mul_pd(_mm256_loadu_pd(ac.as_ptr().add(4 * j)), xj),
                );
                let axj = _mm256_andnot_pd(sign, xj);
                t[j] = _mm256_add_pd(
                    t[j],
                    _mm256_mul_pd(_mm256_loadu_pd(bc.as_ptr().add(4 * j)), axj),
                );
            }
        }
    }
    let (mut vs, mut vt) = (reduce(&lanes_of(s)), reduce(&lanes_of(t)));
    for i in n..x.len() {
        let xi = f64::from(x[i]);
        vs += a[i] * xi;
        vt += b[i] * xi.abs();
    }
    (vs, vt)
}

/// The loop of [`dots`] for any target (the reference the AVX2 copy equals bitwise).
fn dots_lanes(a: &[f64], b: &[f64], x: &[f32]) -> (f64, f64) {
    let (mut s, mut t) = ([0f64; LANES], [0f64; LANES]);
    let n = x.len() / LANES * LANES;
    for ((ac, bc), xc) in a[..n]
        .chunks_exact(LANES)
        .zip(b[..n].chunks_exact(LANES))
        .zip(x[..n].chunks_exact(LANES))
    {
        for i in 0..LANES {
            let xi = f64::from(xc[i]);
            s[i] += ac[i] * xi;
            t[i] += bc[i] * xi.abs();
        }
    }
    let (mut vs, mut vt) = (reduce(&s), reduce(&t));
    for i in n..x.len() {
        let xi = f64::from(x[i]);
        vs += a[i] * xi;
        vt += b[i] * xi.abs();
    }
    (vs, vt)
}

/// Accumulators per sum in [`dots`] and [`dots_abs`] (independent chains, so the loops
/// vectorize and pipeline: sixteen hide the four-cycle add latency at two adds per cycle).
const LANES: usize = 16;

/// The pairwise sum of the accumulators, in a fixed order: adjacent pairs, then pairs of
/// those, and so on (`((s₀+s₁)+(s₂+s₃))+…`).
#[inline(always)]
fn reduce(s: &[f64; LANES]) -> f64 {
    let p = |i: usize| (s[i] + s[i + 1]) + (s[i + 2] + s[i + 3]);
    (p(0) + p(4)) + (p(8) + p(12))
}

/// `(Σ rᵢ·yᵢ, Σ |rᵢ|·|yᵢ|)`, accumulated as [`dots`] (and as it, four lanes wide in four
/// registers with AVX2, bitwise the same sums).
fn dots_abs(r: &[f64], y: &[f32]) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: the CPU supports AVX2, checked on the line above.
        return unsafe { dots_abs_avx2(r, y) };
    }
    dots_abs_lanes(r, y)
}

/// [`dots_abs`] with AVX2 intrinsics, laid out as [`dots_avx2`] (bitwise [`dots_abs_lanes`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dots_abs_avx2(r: &[f64], y: &[f32]) -> (f64, f64) {
    use std::arch::x86_64::{
        _mm256_add_pd, _mm256_andnot_pd, _mm256_cvtps_pd, _mm256_loadu_pd, _mm256_mul_pd,
        _mm256_set1_pd, _mm256_setzero_pd, _mm_loadu_ps,
    };
    let n = y.len() / LANES * LANES;
    let (r16, y16) = (&r[..n], &y[..n]);
    let sign = _mm256_set1_pd(-0.0);
    let mut s = [_mm256_setzero_pd(); 4];
    let mut t = [_mm256_setzero_pd(); 4];
    for (rc, yc) in r16.chunks_exact(LANES).zip(y16.chunks_exact(LANES)) {
        for j in 0..4 {
            #[allow(unsafe_code)]
            // SAFETY: each chunk holds exactly LANES = 16 elements, so the unaligned loads of
            // four f64 and of four f32 at offset 4·j ≤ 12 stay inside it.
            unsafe {
                let yj = _mm256_cvtps_pd(_mm_loadu_ps(yc.as_ptr().add(4 * j)));
                let rj = _mm256_loadu_pd(rc.as_ptr().add(4 * j));
                s[j] = _mm256_add_pd(s[j], _mm256_mul_pd(rj, yj));
                let (arj, ayj) = (_mm256_andnot_pd(sign, rj), _mm256_andnot_pd(sign, yj));
                t[j] = _mm256_add_pd(t[j], _mm256_mul_pd(arj, ayj));
            }
        }
    }
    let (mut vs, mut vt) = (reduce(&lanes_of(s)), reduce(&lanes_of(t)));
    for i in n..y.len() {
        let yi = f64::from(y[i]);
        vs += r[i] * yi;
        vt += r[i].abs() * yi.abs();
    }
    (vs, vt)
}

/// The loop of [`dots_abs`] for any target (the reference the AVX2 copy equals bitwise).
fn dots_abs_lanes(r: &[f64], y: &[f32]) -> (f64, f64) {
    let (mut s, mut t) = ([0f64; LANES], [0f64; LANES]);
    let n = y.len() / LANES * LANES;
    for (rc, yc) in r[..n].chunks_exact(LANES).zip(y[..n].chunks_exact(LANES)) {
        for i in 0..LANES {
            let yi = f64::from(yc[i]);
            s[i] += rc[i] * yi;
            t[i] += rc[i].abs() * yi.abs();
        }
    }
    let (mut vs, mut vt) = (reduce(&s), reduce(&t));
    for i in n..y.len() {
        let yi = f64::from(y[i]);
        vs += r[i] * yi;
        vt += r[i].abs() * yi.abs();
    }
    (vs, vt)
}

/// What a verifier is given to check one challenged decoder cell from its sub-layer values
/// ([`check_cell`]): the opened rows of the layer below, the cell's output rows, the context's
/// key-projection inputs and outputs, and the cell's own sub-layer rows.
#[derive(Debug, Clone, Copy)]
pub struct CellClaim<'a> {
    /// Rows `0..e` of `h_{layer−1}` (row-major `[e, hidden]`), `e` the cell's last row + 1.
    pub h_in: &'a [f32],
    /// The cell's rows of `h_layer`.
    pub h_out: &'a [f32],
    /// Rows `0..e` of `normed`, `k` and `v` (its other fields are not read).
    pub context: &'a SubLayers,
    /// The cell's rows of `q`, `attn`, `o`, `mlp_in`, `gate`, `up`, `act` and `down` (its
    /// `normed`, `k`, `v` are not read: they are the last rows of `context`).
    pub cell: &'a SubLayers,
}

/// The result of [`check_cell`].
#[derive(Debug, Clone, PartialEq)]
pub struct CellCheck {
    /// Each linear map's Freivalds check (q, o, gate, up, down on the cell's rows; k, v on
    /// every context row).
    pub linear: Vec<(Matrix, LinearCheck)>,
    /// Each recomputed nonlinear part against the claim: the relative L∞ deviation
    /// `max |claimed − recomputed| / max |recomputed|` of `normed` (every context row), `attn`,
    /// `mlp_in`, `act` and `h_out` (the cell's rows).
    pub nonlinear: Vec<(&'static str, f64)>,
    /// Every linear check passed and every nonlinear deviation is within the tolerance.
    pub passed: bool,
}

/// How much of a challenged cell's attention the verifier checks (specs/freivalds.md §7): the
/// sampled attention check, a verifier option for long contexts and many heads, where the
/// attention over the context and the provenance of the context's keys and values are most of
/// a cell's check (at Llama-3-70B shapes, 90% of it). `None` checks all of a part (the default,
/// [`AttentionSampling::FULL`]).
///
/// Per cell, the verifier draws (from [`VerifierKey::sample_seed`], which the prover cannot
/// compute) `heads` distinct query heads, whose attention it recomputes and compares, and
/// `context_rows` distinct rows before the cell, whose attention norms and key and value
/// projections it checks (the cell's own rows are always checked). Everything else in the
/// cell is checked as before: q, o, gate, up, down by Freivalds, the norms, SwiGLU and
/// residuals by recompute. A claim whose attention output is wrong in `b` of the `H` heads is
/// caught by the cell with probability `1 − C(H−b, s)/C(H, s)`; one whose context provenance
/// fails at `b` of the cell's `c` earlier rows with `1 − C(c−b, s')/C(c, s')`
/// ([`veritrace_protocol::soundness::miss_probability`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct AttentionSampling {
    /// Query heads checked per cell (at least 1); `None` or at least the head count: every head.
    pub heads: Option<u32>,
    /// Rows before the cell whose provenance is checked per cell (0 allowed: the cell's own
    /// rows only); `None` or at least the rows there are: every row.
    pub context_rows: Option<u32>,
}

/// The domain of [`VerifierKey::sample_seed`].
const SAMPLE_DOMAIN: &[u8] = b"veritrace/freivalds/attention-sample/v1";

impl AttentionSampling {
    /// Every head and every context row: the full check.
    pub const FULL: Self = Self {
        heads: None,
        context_rows: None,
    };

    /// Whether nothing is sampled.
    pub fn is_full(&self) -> bool {
        self.heads.is_none() && self.context_rows.is_none()
    }

    /// Refuses a sample of zero heads (a check of no attention at all).
    ///
    /// # Errors
    /// [`FreivaldsError::InvalidArgument`] for `heads = Some(0)`.
    pub fn validate(&self) -> Result<()> {
        if self.heads == Some(0) {
            return Err(FreivaldsError::InvalidArgument(
                "a sampled attention check needs at least 1 head (0 checks no attention)".into(),
            ));
        }
        Ok(())
    }

    /// The heads and context rows of one cell of a model with `num_heads` query heads whose
    /// first row is `first_row` (the rows before it are the context sampled), drawn from
    /// `seed` with ChaCha20: first the heads, then the rows, each by Floyd's algorithm
    /// ([`veritrace_protocol::sampling::distinct_indices`]). A part sampled at or above its
    /// size is checked whole (`None`).
    pub fn draw(&self, seed: [u8; 32], num_heads: usize, first_row: usize) -> CellSample {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut pick = |want: Option<u32>, n: usize| -> Option<Vec<usize>> {
            let k = want? as usize;
            if k >= n {
                return None;
            }
            let set = veritrace_protocol::sampling::distinct_indices(&mut rng, n as u64, k as u64);
            Some(set.into_iter().map(|i| i as usize).collect())
        };
        let heads = pick(self.heads, num_heads);
        let context_rows = pick(self.context_rows, first_row);
        CellSample {
            heads,
            context_rows,
        }
    }
}

impl fmt::Display for AttentionSampling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |x: Option<u32>| x.map_or("all".to_string(), |n| n.to_string());
        write!(
            f,
            "heads {}, context rows {}",
            part(self.heads),
            part(self.context_rows)
        )
    }
}

/// The parts of one cell a sampled attention check covers ([`AttentionSampling::draw`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CellSample {
    /// Query heads whose attention is recomputed and compared, ascending; `None`: every head.
    pub heads: Option<Vec<usize>>,
    /// Rows before the cell whose attention norm and key and value projections are checked,
    /// ascending; `None`: every row. The cell's own rows are always checked.
    pub context_rows: Option<Vec<usize>>,
}

impl CellSample {
    /// Every head and every row: the full check.
    pub fn full() -> Self {
        Self::default()
    }
}

fn rel_linf(claimed: &[f32], recomputed: &[f32]) -> f64 {
    // the common case of an honest prover on this engine: bit for bit the same values
    if claimed.len() == recomputed.len() && same_and_finite(claimed, recomputed) {
        return 0.0;
    }
    if claimed.len() != recomputed.len() {
        return f64::INFINITY;
    }
    max_diff(claimed, recomputed) / max_abs(recomputed).max(f64::MIN_POSITIVE)
}

/// `max |v|` over `x` in f64 (0 for none).
fn max_abs(x: &[f32]) -> f64 {
    x.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())))
}

/// `max |a − b|` in f64; NaN propagates (a NaN claim is never within a tolerance).
fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
        .fold(0f64, nan_max)
}

/// The larger of two deviations, NaN if either is.
fn nan_max(m: f64, x: f64) -> f64 {
    if m.is_nan() || x.is_nan() {
        f64::NAN
    } else {
        m.max(x)
    }
}

/// [`rel_linf`] of `claimed` (`rows` rows of `width`) against rows the verifier recomputes
/// `block` rows at a time (`recompute(a..b)` gives rows `a..b`), compared as they come instead
/// of after a whole recomputed copy is written: the same value as `rel_linf` of the whole. While
/// every block so far is bitwise the claim, nothing but the comparison runs; from the first
/// block that differs, the scale takes in the earlier rows from the claim (equal to the
/// recomputed rows there) and each later block's, so a hostile claim costs at most one more
/// pass over the values than an honest one.
fn rel_linf_by_rows<E>(
    claimed: &[f32],
    width: usize,
    block: usize,
    mut recompute: impl FnMut(std::ops::Range<usize>) -> std::result::Result<Vec<f32>, E>,
) -> std::result::Result<f64, E> {
    let rows = claimed.len() / width.max(1);
    let (mut diff, mut scale) = (0f64, None::<f64>);
    for start in (0..rows).step_by(block.max(1)) {
        let end = (start + block.max(1)).min(rows);
        let got = recompute(start..end)?;
        let want = &claimed[start * width..end * width];
        if got.len() != want.len() {
            return Ok(f64::INFINITY);
        }
        if scale.is_none() && same_and_finite(want, &got) {
            continue;
        }
        let s = scale.get_or_insert_with(|| max_abs(&claimed[..start * width]));
        *s = s.max(max_abs(&got));
        diff = nan_max(diff, max_diff(want, &got));
    }
    Ok(scale.map_or(0.0, |s| diff / s.max(f64::MIN_POSITIVE)))
}

/// Rows of the context's attention norms recomputed and compared at a time in
/// [`check_sublayer_values`] (16 rows of 512: 32 KiB, in the first-level cache).
const NORM_BLOCK_ROWS: usize = 16;

/// Whether `a` and `b` (of one length) hold the same bits and every value is finite: one pass
/// over both, vectorized (AVX2 where the CPU has it), stopping at the first block that
/// differs.
fn same_and_finite(a: &[f32], b: &[f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: the CPU supports AVX2, checked on the line above.
        return unsafe { same_and_finite_avx2(a, b) };
    }
    same_and_finite_any(a, b)
}

/// [`same_and_finite`] compiled with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn same_and_finite_avx2(a: &[f32], b: &[f32]) -> bool {
    same_and_finite_any(a, b)
}

/// The loop of [`same_and_finite`]: per block, the OR over elements of `bits(a) ^ bits(b)`
/// and the largest magnitude's bits of `a` (non-finite from `0x7f80_0000`, infinity's), without
/// a branch per element.
#[inline(always)]
fn same_and_finite_any(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.chunks(1024).zip(b.chunks(1024)).all(|(ca, cb)| {
            let (diff, largest) = ca.iter().zip(cb).fold((0u32, 0u32), |(d, m), (x, y)| {
                let (x, y) = (x.to_bits(), y.to_bits());
                (d | (x ^ y), m.max(x & 0x7fff_ffff))
            });
            diff == 0 && largest < 0x7f80_0000
        })
}

/// Checks challenged cell `(layer, chunk)` (tile `tile`) of a prover that claims `setup` from
/// its sub-layer values (issue 16): every linear map with Freivalds ([`check_linear`]: the
/// cell's q, o, gate, up and down rows, and the key and value rows of every context position,
/// whose provenance the attention relies on), and the nonlinear parts recomputed by the
/// verifier's engine: the attention norms of every context row
/// ([`LlamaModel::attention_norms`]), and the cell's attention over the claimed keys and values,
/// residual adds, MLP norm and SwiGLU ([`LlamaModel::recompute_nonlinear`]). Attention is thus
/// checked at every challenged position, not only the last one.
///
/// The nonlinear parts pass when their relative L∞ deviation is at most `tolerance` (0: bitwise,
/// for a prover on this engine; a prover on other hardware needs a calibrated tolerance). The
/// linear checks hold for the weights the key holds: the claimed setup's precision and
/// quantization must be the key's ([`VerifierKey::for_setup`] derives it).
///
/// # Errors
/// A key of another model or of other weights than the setup's, claims of the wrong lengths
/// or non-finite, a cell out of range.
// The cell's coordinates are separate arguments, as in `LlamaModel::recompute_cell`.
#[allow(clippy::too_many_arguments)]
pub fn check_cell(
    key: &VerifierKey,
    model: &LlamaModel,
    setup: &crate::Setup,
    tile: usize,
    layer: usize,
    chunk: usize,
    claim: &CellClaim<'_>,
    tolerance: f64,
) -> Result<CellCheck> {
    check_cell_sampled(
        key,
        model,
        setup,
        (tile, layer, chunk),
        claim,
        tolerance,
        &CellSample::full(),
    )
}

/// [`check_cell`] with a sampled attention check ([`AttentionSampling`]): only `sample`'s
/// heads are recomputed and compared in `attn`, and only `sample`'s context rows (and the
/// cell's own) have their attention norms and key and value projections checked. A full
/// sample is [`check_cell`] exactly.
///
/// # Errors
/// As [`check_cell`]; also sampled heads or rows that are not distinct, ascending and in
/// range (heads below the head count, rows before the cell).
pub fn check_cell_sampled(
    key: &VerifierKey,
    model: &LlamaModel,
    setup: &crate::Setup,
    (tile, layer, chunk): (usize, usize, usize),
    claim: &CellClaim<'_>,
    tolerance: f64,
    sample: &CellSample,
) -> Result<CellCheck> {
    let d = model.config().hidden_size;
    let (mut check, h_out) = check_sublayer_values(
        key,
        model,
        setup,
        tile,
        layer,
        chunk,
        claim.h_in,
        claim.context,
        claim.cell,
        tolerance,
        sample,
    )?;
    if claim.h_out.len() != h_out.len() {
        return Err(FreivaldsError::WrongLength {
            what: "h_out",
            expected: h_out.len() as u64,
            got: claim.h_out.len(),
        });
    }
    debug_assert_eq!(h_out.len() % d, 0);
    if let Some(index) = crate::first_non_finite(claim.h_out) {
        return Err(FreivaldsError::NonFinite {
            what: "h_out",
            index,
        });
    }
    let dev = rel_linf(claim.h_out, &h_out);
    check.passed &= dev <= tolerance;
    check.nonlinear.push(("h_out", dev));
    Ok(check)
}

/// The part of [`check_cell`] that does not read the claimed output rows: every linear map's
/// Freivalds check and every nonlinear part recomputed from the claimed sub-layer values
/// (`normed` of every context row, `attn`, `mlp_in`, `act`), within `tolerance`. Returns the
/// check (without an `h_out` entry) and the cell's output rows of `h_layer` derived from the
/// claimed values, `(h_in + o) + down`, for the caller to compare with the opened output (the
/// protocol's [`veritrace_protocol::Recompute::check_sublayers`] does so under the verifier's
/// tolerance policy). With a sampled `sample` ([`check_cell_sampled`]), only its heads and
/// context rows are checked. Fails as [`check_cell_sampled`] does.
#[allow(clippy::too_many_arguments)]
pub fn check_sublayer_values(
    key: &VerifierKey,
    model: &LlamaModel,
    setup: &crate::Setup,
    tile: usize,
    layer: usize,
    chunk: usize,
    h_in: &[f32],
    context: &SubLayers,
    cell: &SubLayers,
    tolerance: f64,
    sample: &CellSample,
) -> Result<(CellCheck, Vec<f32>)> {
    check_key_and_tolerance(key, model, setup, tolerance)?;
    let c = model.config();
    let d = c.hidden_size;
    if h_in.is_empty() || !h_in.len().is_multiple_of(d) {
        return Err(FreivaldsError::WrongLength {
            what: "h_in",
            expected: d as u64,
            got: h_in.len(),
        });
    }
    let e = h_in.len() / d;
    let lo = cell_start(tile, chunk, e)?;
    let rows = e - lo;
    if context.normed.len() != e * d {
        return Err(FreivaldsError::WrongLength {
            what: "context normed",
            expected: (e * d) as u64,
            got: context.normed.len(),
        });
    }
    if let Some(rs) = &sample.context_rows {
        if rs.windows(2).any(|w| w[0] >= w[1]) || rs.last().is_some_and(|&r| r >= lo) {
            return Err(FreivaldsError::InvalidArgument(format!(
                "sampled context rows are not distinct ascending rows before the cell's first \
                 row {lo}"
            )));
        }
    }
    let kvd = c.num_kv_heads * c.head_dim();
    for (what, x) in [("context k", &context.k), ("context v", &context.v)] {
        if x.len() != e * kvd {
            return Err(FreivaldsError::WrongLength {
                what,
                expected: (e * kvd) as u64,
                got: x.len(),
            });
        }
    }
    if sample.heads.is_none() && sample.context_rows.is_none() {
        return check_rows(
            (key, model, setup),
            (tile, layer, chunk, e),
            ContextRows {
                normed: &context.normed,
                h_in,
                k: &context.k,
                v: &context.v,
                row_of: None,
            },
            crate::llama::ContextKeys::Dense {
                k: &context.k,
                v: &context.v,
            },
            cell,
            tolerance,
            None,
        );
    }
    // sampled: the sample's rows and the cell's gathered (each row's check and norm is its own,
    // so a gathered row is checked bitwise as in place), and the keys and values of the
    // key-value heads the sampled query heads read
    let groups = kv_groups_of(c, sample.heads.as_deref())?;
    let before: Vec<usize> = match &sample.context_rows {
        Some(rs) => rs.clone(),
        None => (0..lo).collect(),
    };
    let take = |x: &[f32], w: usize| -> Vec<f32> {
        let mut out = Vec::with_capacity((before.len() + rows) * w);
        for r in before.iter().copied().chain(lo..e) {
            out.extend_from_slice(&x[r * w..(r + 1) * w]);
        }
        out
    };
    let (hd, nkv) = (c.head_dim(), c.num_kv_heads);
    let drawn = DrawnContext {
        rows: e,
        h_in: take(h_in, d),
        normed: take(&context.normed, d),
        k: take(&context.k, kvd),
        v: take(&context.v, kvd),
        k_heads: crate::llama::head_columns(&context.k, e, nkv, hd, &groups),
        v_heads: crate::llama::head_columns(&context.v, e, nkv, hd, &groups),
        groups,
        before,
    };
    check_drawn_values(
        key,
        model,
        setup,
        (tile, layer, chunk),
        &drawn,
        cell,
        tolerance,
        sample.heads.as_deref(),
    )
}

/// The context values a sampled cell check reads (specs/freivalds.md §7, §7.1), and nothing
/// else: what a drawn opening holds (specs/protocol.md §4.4). Its size follows the sample, not
/// the context: the checked rows' inputs, norms, keys and values, and the keys and values of
/// the sampled query heads' key-value heads over the context.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrawnContext {
    /// `e`: the context is rows `0..e`, the cell's rows end at `e`.
    pub rows: usize,
    /// The checked rows before the cell, ascending. The cell's own rows `chunk·tile..e` are
    /// checked too and follow them in every gathered array below.
    pub before: Vec<usize>,
    /// The layer's input `h_{layer−1}` at the checked rows, then the cell's rows:
    /// `[before.len() + cell rows, hidden]`.
    pub h_in: Vec<f32>,
    /// The claimed attention norms of the same rows, same shape.
    pub normed: Vec<f32>,
    /// The claimed key projections of the same rows, every key-value head:
    /// `[before.len() + cell rows, kv_heads·hd]`.
    pub k: Vec<f32>,
    /// The claimed value projections of the same rows, same shape.
    pub v: Vec<f32>,
    /// The key-value heads the attention reads: those of the sampled query heads, ascending
    /// (every key-value head without a head sample).
    pub groups: Vec<usize>,
    /// Their claimed key projections at every row `0..e`: `[e, groups.len()·hd]`, the heads'
    /// columns side by side. At a checked row they must equal `k`'s columns bitwise.
    pub k_heads: Vec<f32>,
    /// Their claimed value projections, same shape.
    pub v_heads: Vec<f32>,
}

/// [`check_sublayer_values`] of a sampled cell from only the values its sample reads
/// ([`DrawnContext`]): the result is bitwise that of `check_sublayer_values` on the dense
/// rows `0..e` with `sample = CellSample { heads, context_rows: Some(context.before) }`, and
/// the memory it touches follows the sample, not the context. `heads`: the sampled query heads
/// (distinct, ascending; their key-value heads must be `context.groups`), or `None` for every
/// head (then `context.groups` is every key-value head).
///
/// # Errors
/// As [`check_sublayer_values`]; also gathered arrays of the wrong lengths, checked rows that
/// are not distinct, ascending and before the cell, and keys or values at a checked row that
/// differ from the same heads' in `k_heads` / `v_heads` (the attention would read keys whose
/// projection was not checked).
#[allow(clippy::too_many_arguments)]
pub fn check_drawn_values(
    key: &VerifierKey,
    model: &LlamaModel,
    setup: &crate::Setup,
    (tile, layer, chunk): (usize, usize, usize),
    context: &DrawnContext,
    cell: &SubLayers,
    tolerance: f64,
    heads: Option<&[usize]>,
) -> Result<(CellCheck, Vec<f32>)> {
    check_key_and_tolerance(key, model, setup, tolerance)?;
    let c = model.config();
    let (d, hd, nkv) = (c.hidden_size, c.head_dim(), c.num_kv_heads);
    let kvd = nkv * hd;
    let e = context.rows;
    let lo = cell_start(tile, chunk, e)?;
    let before = &context.before;
    if before.windows(2).any(|w| w[0] >= w[1]) || before.last().is_some_and(|&r| r >= lo) {
        return Err(FreivaldsError::InvalidArgument(format!(
            "sampled context rows are not distinct ascending rows before the cell's first row \
             {lo}"
        )));
    }
    let want_groups = kv_groups_of(c, heads)?;
    if context.groups != want_groups {
        return Err(FreivaldsError::InvalidArgument(format!(
            "key-value heads {:?} are not {want_groups:?}, those the sampled heads read",
            context.groups
        )));
    }
    let n = before.len() + (e - lo);
    let width = context.groups.len() * hd;
    for (what, got, want) in [
        ("h_in", context.h_in.len(), n * d),
        ("context normed", context.normed.len(), n * d),
        ("context k", context.k.len(), n * kvd),
        ("context v", context.v.len(), n * kvd),
        ("drawn heads' k", context.k_heads.len(), e * width),
        ("drawn heads' v", context.v_heads.len(), e * width),
    ] {
        if got != want {
            return Err(FreivaldsError::WrongLength {
                what,
                expected: want as u64,
                got,
            });
        }
    }
    // the attention reads every row's keys and values of the drawn key-value heads, of which
    // only the checked rows' are summed (and so scanned) by the Freivalds checks: scanned here
    for (what, x) in [
        ("drawn heads' k", &context.k_heads),
        ("drawn heads' v", &context.v_heads),
    ] {
        if let Some(index) = crate::first_non_finite(x) {
            return Err(FreivaldsError::NonFinite { what, index });
        }
    }
    // at a checked row, the drawn heads' keys and values are the checked ones
    let all: Vec<usize> = before.iter().copied().chain(lo..e).collect();
    for (what, gathered, heads_of) in [
        ("k", &context.k, &context.k_heads),
        ("v", &context.v, &context.v_heads),
    ] {
        for (i, &r) in all.iter().enumerate() {
            for (j, &g) in context.groups.iter().enumerate() {
                let a = &gathered[i * kvd + g * hd..i * kvd + (g + 1) * hd];
                let b = &heads_of[r * width + j * hd..r * width + (j + 1) * hd];
                if a.iter().zip(b).any(|(x, y)| x.to_bits() != y.to_bits()) {
                    return Err(FreivaldsError::InvalidArgument(format!(
                        "row {r}'s {what} of key-value head {g} differs from the drawn heads' \
                         {what}"
                    )));
                }
            }
        }
    }
    let kv = match heads {
        Some(_) => crate::llama::ContextKeys::Heads {
            groups: &context.groups,
            k: &context.k_heads,
            v: &context.v_heads,
        },
        None => crate::llama::ContextKeys::Dense {
            k: &context.k_heads,
            v: &context.v_heads,
        },
    };
    check_rows(
        (key, model, setup),
        (tile, layer, chunk, e),
        ContextRows {
            normed: &context.normed,
            h_in: &context.h_in,
            k: &context.k,
            v: &context.v,
            row_of: Some(&all),
        },
        kv,
        cell,
        tolerance,
        heads,
    )
}

/// That `key` is of `model` and of the weights `setup` runs ([`VerifierKey::for_setup`]
/// derives them), and `tolerance` is finite and non-negative.
fn check_key_and_tolerance(
    key: &VerifierKey,
    model: &LlamaModel,
    setup: &crate::Setup,
    tolerance: f64,
) -> Result<()> {
    key.check_model(&model.digest())?;
    key.check_setup(setup)?;
    if !(tolerance.is_finite() && tolerance >= 0.0) {
        return Err(FreivaldsError::InvalidArgument(format!(
            "tolerance {tolerance} must be finite and >= 0"
        )));
    }
    Ok(())
}

/// The first row `chunk·tile` of the cell whose input rows are `0..e`, when `e` ends inside
/// that chunk.
fn cell_start(tile: usize, chunk: usize, e: usize) -> Result<usize> {
    chunk
        .checked_mul(tile)
        .filter(|&lo| lo < e && e <= lo.saturating_add(tile))
        .ok_or_else(|| {
            FreivaldsError::InvalidArgument(format!(
                "{e} input rows do not end inside chunk {chunk} of size {tile}"
            ))
        })
}

/// The key-value heads sampled query heads `heads` read (every one for `None`), after
/// checking the heads are distinct, ascending and in range.
fn kv_groups_of(c: &crate::ModelConfig, heads: Option<&[usize]>) -> Result<Vec<usize>> {
    let nkv = c.num_kv_heads;
    match heads {
        Some(hs) => {
            crate::llama::check_sampled_heads(hs, c.num_heads)
                .map_err(FreivaldsError::InvalidArgument)?;
            Ok(crate::llama::kv_groups(hs, c.num_heads / nkv.max(1)))
        }
        None => Ok((0..nkv).collect()),
    }
}

/// The rows whose provenance [`check_rows`] checks: every row `0..e` (`row_of: None`) or the
/// rows `row_of` gathered (the cell's rows last), each array's rows in that order.
struct ContextRows<'a> {
    normed: &'a [f32],
    h_in: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    row_of: Option<&'a [usize]>,
}

/// The common part of [`check_sublayer_values`] and [`check_drawn_values`], lengths of the
/// context checked by the caller: the Freivalds checks of the cell's maps and of the checked
/// rows' keys and values, the checked rows' attention norms, and the cell's nonlinear parts
/// over the keys and values `kv`.
#[allow(clippy::too_many_arguments)]
fn check_rows(
    (key, model, setup): (&VerifierKey, &LlamaModel, &crate::Setup),
    (tile, layer, chunk, e): (usize, usize, usize, usize),
    ctx: ContextRows<'_>,
    kv: crate::llama::ContextKeys<'_>,
    cell: &SubLayers,
    tolerance: f64,
    heads: Option<&[usize]>,
) -> Result<(CellCheck, Vec<f32>)> {
    let c = model.config();
    let d = c.hidden_size;
    let lo = chunk * tile;
    let rows = e - lo;
    let n = ctx.normed.len() / d;
    // the cell's rows are the last `rows` of the checked ones
    let (cell_normed, h_cell) = (&ctx.normed[(n - rows) * d..], &ctx.h_in[(n - rows) * d..]);
    let biases = model.qkv_biases(layer)?;
    let bias = |m: Matrix| m.bias(biases.as_ref());
    // maps that read the same rows are checked together (one pass over the rows for both)
    let one = |m: Matrix, x: &[f32], y: &[f32], n: usize| -> Result<(Matrix, LinearCheck)> {
        Ok((m, check_linear_biased(key, layer, m, x, y, n, bias(m))?))
    };
    let two = |ma: Matrix, mb: Matrix, x: &[f32], ya: &[f32], yb: &[f32], n: usize| {
        check_linear_shared(key, layer, x, n, &[(ma, ya, bias(ma)), (mb, yb, bias(mb))])
            .map(|c| [(ma, c[0]), (mb, c[1])])
    };
    let mut linear = Vec::with_capacity(7);
    linear.push(one(Matrix::Q, cell_normed, &cell.q, rows)?);
    linear.extend(two(Matrix::K, Matrix::V, ctx.normed, ctx.k, ctx.v, n)?);
    linear.push(one(Matrix::O, &cell.attn, &cell.o, rows)?);
    linear.extend(two(
        Matrix::Gate,
        Matrix::Up,
        &cell.mlp_in,
        &cell.gate,
        &cell.up,
        rows,
    )?);
    linear.push(one(Matrix::Down, &cell.act, &cell.down, rows)?);
    // the checked rows' attention norms, recomputed a block of rows at a time and compared with
    // the claim as they come (rows are normed alone, so blocks are bitwise the whole); each
    // block's input rows are scanned for finiteness just before (then in cache)
    let normed_dev = rel_linf_by_rows(ctx.normed, d, NORM_BLOCK_ROWS, |r| {
        let block = &ctx.h_in[r.start * d..r.end * d];
        model
            .attention_norms(setup, tile, layer, block)
            .map_err(|err| match err {
                ModelError::NonFinite { what, index } => {
                    // the index in h_in of the row the block's index falls in
                    let at = r.start + index / d;
                    let row = ctx.row_of.map_or(at, |all| all[at]);
                    ModelError::NonFinite {
                        what,
                        index: row * d + index % d,
                    }
                }
                other => other,
            })
    })?;
    // every input is finite by now: the Freivalds sums read the checked keys and values and
    // the cell's linear outputs (a non-finite one is an error above), the attention norms read
    // h_in, and the caller has scanned the keys and values the attention reads
    let nl = model.nonlinear_of(
        setup,
        (tile, layer, chunk, e),
        h_cell,
        kv,
        cell,
        false,
        heads,
    )?;
    for (what, claimed, width) in [
        ("attn", &cell.attn, c.num_heads * c.head_dim()),
        ("mlp_in", &cell.mlp_in, d),
        ("act", &cell.act, c.intermediate_size),
    ] {
        if claimed.len() != rows * width {
            return Err(FreivaldsError::WrongLength {
                what,
                expected: (rows * width) as u64,
                got: claimed.len(),
            });
        }
    }
    let attn_dev = match heads {
        None => rel_linf(&cell.attn, &nl.attn),
        Some(hs) => rel_linf(
            &crate::llama::head_columns(&cell.attn, rows, c.num_heads, c.head_dim(), hs),
            &nl.attn,
        ),
    };
    let nonlinear = vec![
        ("normed", normed_dev),
        ("attn", attn_dev),
        ("mlp_in", rel_linf(&cell.mlp_in, &nl.mlp_in)),
        ("act", rel_linf(&cell.act, &nl.act)),
    ];
    let passed =
        linear.iter().all(|(_, l)| l.passed) && nonlinear.iter().all(|&(_, dev)| dev <= tolerance);
    Ok((
        CellCheck {
            linear,
            nonlinear,
            passed,
        },
        nl.h_out,
    ))
}

/// The probability that `t` independent repetitions with Gaussian `r` all accept a deviation
/// `e` of norm `e_norm` under bound `bound`: `erf(bound / (√2 ‖e‖))^t` (`r·e ~ N(0, ‖e‖²)`).
/// `1` for `e_norm = 0` or `t = 0` (nothing to detect, or no check); NaN for a negative or NaN
/// argument.
pub fn false_accept_probability(bound: f64, e_norm: f64, t: u32) -> f64 {
    if bound.is_nan() || e_norm.is_nan() || bound < 0.0 || e_norm < 0.0 {
        return f64::NAN;
    }
    if e_norm == 0.0 || t == 0 {
        return 1.0;
    }
    let one = libm::erf(bound / (std::f64::consts::SQRT_2 * e_norm));
    one.powf(f64::from(t))
}

/// A copy of `model` whose weight `matrix` of layer `layer` (1-based) is moved a `factor` of
/// the way to its `quant` quantize-dequantize: `W' = W + factor · (Q(W) − W)`. At `factor = 1`
/// the matrix carries exactly that quantization's error (the other matrices are unchanged); a
/// smaller factor scales the error down. The weight-perturbation adversary of the simulator
/// runs it while claiming `model` (issue 16).
///
/// # Errors
/// A layer out of range, the LM head (not a layer's matrix), a factor that is not finite and
/// positive, or a matrix the quantizer refuses.
pub fn perturbed_model(
    model: &LlamaModel,
    layer: usize,
    matrix: Matrix,
    quant: crate::setup::Quant,
    factor: f64,
) -> Result<LlamaModel> {
    let c = model.config();
    if layer == 0 || layer > c.num_layers || matrix == Matrix::LmHead {
        return Err(FreivaldsError::InvalidArgument(format!(
            "layer {layer} matrix {matrix:?}: a perturbation targets one of the 7 matrices of a \
             layer 1..={}",
            c.num_layers
        )));
    }
    if !(factor.is_finite() && factor > 0.0) {
        return Err(FreivaldsError::InvalidArgument(format!(
            "factor {factor} must be finite and > 0"
        )));
    }
    let name = matrix.tensor_name(layer);
    let mut tensors = model.named_tensors()?;
    let (_, shape, w) = tensors
        .iter_mut()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| FreivaldsError::Unsupported(format!("tensor {name} is missing")))?;
    let (rows, cols) = (shape[0], shape[1]);
    let q = crate::quant::quantize_dequantize(w, rows, cols, quant)?;
    for (x, qx) in w.iter_mut().zip(q) {
        *x = (f64::from(*x) + factor * (f64::from(qx) - f64::from(*x))) as f32;
    }
    Ok(LlamaModel::from_tensors(c.clone(), tensors)?)
}

/// The weight `matrix` of layer `layer` (1-based; the LM head ignores it) of `model`, row-major
/// f32 `[out, in]`, as the f32 setup computes with it.
pub fn matrix_weights(model: &LlamaModel, layer: usize, matrix: Matrix) -> Result<Vec<f32>> {
    let name = matrix.tensor_name(layer);
    model
        .named_tensors()?
        .into_iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, w)| w)
        .ok_or_else(|| FreivaldsError::Unsupported(format!("tensor {name} is missing")))
}

/// The probability over the key's secret vectors that [`check_linear`] accepts claimed outputs
/// `y` of inputs `x` (`rows` rows) when the true weight is `w` (row-major `[out, in]`, e.g.
/// from [`matrix_weights`]): `Π_{p, k} erf(B_{p,k} / (√2 ‖e_p‖))` over rows `p` and
/// repetitions `k`, with `e_p = y_p − W x_p` computed in f64 and each bound `B_{p,k}` taken as
/// fixed at the value `key` gives ([`false_accept_probability`] per term), `e_p` net of the
/// map's `bias` where it has one. 1 when every
/// `e_p = 0`. With `bound_scale = s` the bound used is `s·B` (a calibrated bound; 1: the
/// rigorous one). Fails as [`check_linear`] does, or for a `w` of the wrong length.
#[allow(clippy::too_many_arguments)]
pub fn accept_probability(
    key: &VerifierKey,
    w: &[f32],
    layer: usize,
    matrix: Matrix,
    x: &[f32],
    y: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    bound_scale: f64,
) -> Result<f64> {
    let (out, inp) = key.dims.shape(matrix);
    if w.len() != out * inp {
        return Err(FreivaldsError::WrongLength {
            what: "weight",
            expected: (out * inp) as u64,
            got: w.len(),
        });
    }
    let terms = linear_terms(key, layer, matrix, x, y, rows, bias)?;
    let t = key.repetitions as usize;
    let mut p = 1.0f64;
    for (row, (xr, yr)) in x.chunks_exact(inp).zip(y.chunks_exact(out)).enumerate() {
        let e2: f64 = w
            .chunks_exact(inp)
            .zip(yr)
            .enumerate()
            .map(|(i, (wr, &yi))| {
                let wx: f64 = wr
                    .iter()
                    .zip(xr)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                let b = bias.map_or(0.0, |b| f64::from(b[i]));
                let e = f64::from(yi) - wx - b;
                e * e
            })
            .sum();
        let norm = e2.sqrt();
        for &(_, bound) in &terms[row * t..(row + 1) * t] {
            p *= false_accept_probability(bound * bound_scale, norm, 1);
        }
    }
    Ok(p)
}

/// A layer's seven linear maps with their captured inputs and outputs, `(matrix, x, y)`, in key
/// order.
pub fn linear_maps(s: &SubLayers) -> [(Matrix, &[f32], &[f32]); 7] {
    [
        (Matrix::Q, &s.normed, &s.q),
        (Matrix::K, &s.normed, &s.k),
        (Matrix::V, &s.normed, &s.v),
        (Matrix::O, &s.attn, &s.o),
        (Matrix::Gate, &s.mlp_in, &s.gate),
        (Matrix::Up, &s.mlp_in, &s.up),
        (Matrix::Down, &s.act, &s.down),
    ]
}

/// The worst ratio `|v·x − r·y| / B` over every linear map of every layer and every token row
/// of one honest run: `model` under `setup` on `tokens` (tile `tile`), its own sub-layer values
/// checked against `key` (`B` the rigorous bound of [`check_linear`]). Over `N` independent
/// honest runs (fresh prompts; the reduction-order variants a verifier must accept), the
/// largest of these, times a margin, is a calibrated bound scale (`KeyedVerifier::bound_scale`):
/// a further honest run exchangeable with them exceeds their maximum with probability at most
/// `1 / (N + 1)`.
///
/// # Errors
/// A key of another model, a setup the capture refuses (skipped or reused layers).
pub fn honest_worst_ratio(
    key: &VerifierKey,
    model: &LlamaModel,
    setup: &crate::Setup,
    tokens: &[u32],
    tile: usize,
) -> Result<f64> {
    Ok(honest_map_ratios(key, model, setup, tokens, tile)?
        .iter()
        .flatten()
        .fold(0f64, |m, &r| m.max(r)))
}

/// [`honest_worst_ratio`] per linear map: `ratios[l − 1][i]` is the worst `|v·x − r·y| / B` of
/// layer `l`'s map [`Matrix::LAYER`]`[i]` over every token row of one honest run.
///
/// # Errors
/// As [`honest_worst_ratio`].
pub fn honest_map_ratios(
    key: &VerifierKey,
    model: &LlamaModel,
    setup: &crate::Setup,
    tokens: &[u32],
    tile: usize,
) -> Result<Vec<[f64; 7]>> {
    key.check_model(&model.digest())?;
    let (_, sub) = model.trace_sublayers(setup, tokens, tile)?;
    let n = tokens.len();
    sub.iter()
        .enumerate()
        .map(|(i, s)| layer_map_ratios(key, model, i + 1, s, n))
        .collect()
}

/// The worst `|v·x − r·y| / B` of each linear map of layer `layer` (1-based) over the `rows`
/// token rows of its sub-layer values `s`, in [`Matrix::LAYER`] order: one layer of
/// [`honest_map_ratios`], for sub-layer values captured elsewhere (a simulated prover's
/// committed values, another engine's capture).
///
/// # Errors
/// A key of another model, a layer outside the key, values of the wrong lengths.
pub fn layer_map_ratios(
    key: &VerifierKey,
    model: &LlamaModel,
    layer: usize,
    s: &SubLayers,
    rows: usize,
) -> Result<[f64; 7]> {
    key.check_model(&model.digest())?;
    let biases = model.qkv_biases(layer)?;
    let mut row = [0f64; 7];
    for (slot, (matrix, x, y)) in row.iter_mut().zip(linear_maps(s)) {
        let bias = matrix.bias(biases.as_ref());
        *slot = check_linear_biased(key, layer, matrix, x, y, rows, bias)?.worst_ratio;
    }
    Ok(row)
}

/// One honest run's worst relative L∞ deviation per layer and nonlinear part
/// ([`NONLINEAR_PARTS`]), over every cell of the run: `out[l − 1][p]`. Each cell `(l, j)` of
/// `tile` rows is checked as a verifier checks it ([`check_sublayer_values`], every head and
/// context row), from the run's hidden states `layers` (`h_0 … h_L`, row-major `[n, hidden]`)
/// and sub-layer values `sub` (layers `1..=L`, as [`LlamaModel::trace_sublayers`] gives them or
/// another engine's capture). The evidence for calibrating [`MapBounds::nonlinear`] on
/// another engine's runs, whose nonlinear arithmetic differs from this engine's.
///
/// # Errors
/// A key of another model or weights than `setup`'s, values of the wrong lengths or
/// non-finite, fewer hidden layers than sub-layer layers.
pub fn run_nonlinear_deviations(
    key: &VerifierKey,
    model: &LlamaModel,
    setup: &crate::Setup,
    tile: usize,
    layers: &[Vec<f32>],
    sub: &[SubLayers],
) -> Result<Vec<[f64; 4]>> {
    let c = model.config();
    let d = c.hidden_size;
    let first = layers.first().map_or(0, |h| h.len() / d.max(1));
    if tile == 0 || first == 0 || layers.len() <= sub.len() {
        return Err(FreivaldsError::InvalidArgument(format!(
            "{} hidden layers of {first} rows, {} sub-layer layers, tile {tile}",
            layers.len(),
            sub.len()
        )));
    }
    let layout = crate::sublayer::SubLayerLayout::of(c);
    let mut out = Vec::with_capacity(sub.len());
    for (i, s) in sub.iter().enumerate() {
        let layer = i + 1;
        let mut worst = [0f64; 4];
        for chunk in 0..first.div_ceil(tile) {
            let (lo, e) = (chunk * tile, ((chunk + 1) * tile).min(first));
            let h_in = layers[layer - 1]
                .get(..e * d)
                .ok_or(FreivaldsError::WrongLength {
                    what: "hidden rows",
                    expected: (e * d) as u64,
                    got: layers[layer - 1].len(),
                })?;
            let context = layout.rows(s, 0..e, 0..0)?;
            let cell = layout.rows(s, 0..0, lo..e)?;
            let (check, _) = check_sublayer_values(
                key,
                model,
                setup,
                tile,
                layer,
                chunk,
                h_in,
                &context,
                &cell,
                0.0,
                &CellSample::full(),
            )?;
            for (w, (_, dev)) in worst.iter_mut().zip(&check.nonlinear) {
                *w = nan_max(*w, *dev);
            }
        }
        out.push(worst);
    }
    Ok(out)
}

/// Calibrated Freivalds bound scales, one per linear map of each layer (the file `veritrace
/// keygen --calibrate-bound N --bound-file F` writes and `verify --freivalds-bounds F` reads).
///
/// From `N` independent honest runs ([`honest_map_ratios`]), map `m`'s scale is
/// `s_m = min(1, margin · max_i r_{i,m})`: a row of map `m` passes when `|v·x − r·y| ≤ s_m·B`.
/// A further honest run exchangeable with the `N` exceeds map `m`'s largest ratio with
/// probability at most `1/(N + 1)` (its rank among `N + 1` exchangeable values is uniform), so
/// it exceeds some map's with probability at most `M/(N + 1)` over the `M` maps
/// ([`MapBounds::exceed_bound`]; the margin only lowers it). A map's scale follows its own
/// honest noise, so maps far quieter than the noisiest get a tighter bound than the single
/// scale of [`honest_worst_ratio`], and a wrong weight in them is caught at a smaller
/// deviation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapBounds {
    /// The digest of the model whose key was calibrated (hex).
    pub model_digest: String,
    /// Independent honest runs behind the scales, `N ≥ 1`.
    pub runs: u32,
    /// The factor on each map's largest honest ratio, `≥ 1`.
    pub margin: f64,
    /// `scales[l − 1][i]`: the scale of layer `l`'s map [`Matrix::LAYER`]`[i]`, in `(0, 1]`.
    pub scales: Vec<[f64; 7]>,
    /// How the scales were obtained when not as `margin` times each map's largest ratio: a
    /// calibration through the tolerance machinery of issue 7 (an order statistic or a fitted
    /// tail per map, `veritrace_sim::map_calibration`), with the false-alarm rate it claims.
    /// Absent in files of the plain maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<MapCalibration>,
    /// The weights the scales were calibrated with ([`VerifierKey::weights`]: `f32`, or a
    /// derived key's `bf16`, `f16`, `f32/quant=…`); absent in files written before it: `f32`.
    #[serde(default = "f32_weights", skip_serializing_if = "is_f32_weights")]
    pub weights: String,
    /// Calibrated tolerances of the nonlinear parts the check recomputes, from the same honest
    /// runs: `nonlinear[l − 1][p]` bounds the relative L∞ deviation of layer `l`'s part
    /// [`NONLINEAR_PARTS`]`[p]`, in place of one `--sublayer-tolerance` (absent: that one
    /// tolerance applies). Calibrated with the scales, so the file's claim covers both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonlinear: Option<Vec<[f64; 4]>>,
}

/// The nonlinear parts of a cell's check, in the order of [`MapBounds::nonlinear`] and of
/// [`CellCheck::nonlinear`] (before its `h_out`, which the protocol's tolerance policy judges).
pub const NONLINEAR_PARTS: [&str; 4] = ["normed", "attn", "mlp_in", "act"];

/// Per layer and entry, the largest value over `runs` (each `layers` rows of `W`), refusing
/// runs of another layer count and non-finite or negative values (`what` names them).
fn largest<const W: usize>(
    runs: &[Vec<[f64; W]>],
    layers: usize,
    what: &str,
) -> Result<Vec<[f64; W]>> {
    let bad = |m: String| FreivaldsError::InvalidArgument(m);
    let mut worst = vec![[0f64; W]; layers];
    for run in runs {
        if run.len() != layers {
            return Err(bad(format!(
                "calibration runs of different layer counts ({} and {layers}, {what}s)",
                run.len()
            )));
        }
        for (w, r) in worst.iter_mut().zip(run) {
            for (a, &b) in w.iter_mut().zip(r) {
                if !(b.is_finite() && b >= 0.0) {
                    return Err(bad(format!("a {what} of {b}")));
                }
                *a = a.max(b);
            }
        }
    }
    Ok(worst)
}

fn f32_weights() -> String {
    "f32".into()
}

fn is_f32_weights(w: &String) -> bool {
    w == "f32"
}

/// What a per-map calibration through the tolerance machinery claims (recorded in a
/// [`MapBounds`] file; the statistics are in `veritrace_protocol::calibration`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapCalibration {
    /// `order-statistic` or `exponential-tail`.
    pub method: String,
    /// The session false-alarm rate `τ` the scales are set for (over every map a session
    /// checks).
    pub target_session_fpr: f64,
    /// The joint confidence `γ` of the per-map bounds.
    pub confidence: f64,
    /// The bound in words, as the calibration states it.
    pub claimed_bound: String,
    /// Held-out honest runs the scales were tested on (0: none).
    #[serde(default)]
    pub holdout_runs: u64,
    /// Of them, runs with some map above its scale.
    #[serde(default)]
    pub holdout_exceeding: u64,
}

impl MapBounds {
    /// The scales from `runs` (each [`honest_map_ratios`] of one honest run of the model of
    /// `digest`) with `margin`.
    ///
    /// # Errors
    /// [`FreivaldsError::InvalidArgument`] for no runs, runs of different layer counts, a
    /// margin below 1 or not finite, a non-finite ratio, or a map with no deviation in any run
    /// (its scale would be 0: more runs, or longer ones, are needed).
    pub fn calibrate(digest: Digest, runs: &[Vec<[f64; 7]>], margin: f64) -> Result<Self> {
        let bad = |m: String| FreivaldsError::InvalidArgument(m);
        let first = runs
            .first()
            .ok_or_else(|| bad("no calibration runs".into()))?;
        if !(margin.is_finite() && margin >= 1.0) {
            return Err(bad(format!("margin {margin} must be finite and >= 1")));
        }
        let worst = largest(runs, first.len(), "ratio")?;
        let mut scales = Vec::with_capacity(worst.len());
        for (l, w) in worst.iter().enumerate() {
            let mut row = [0f64; 7];
            for (i, (slot, &m)) in row.iter_mut().zip(w).enumerate() {
                if m == 0.0 {
                    return Err(bad(format!(
                        "layer {} map {:?} showed no deviation in {} runs: more or longer runs \
                         are needed",
                        l + 1,
                        Matrix::LAYER[i],
                        runs.len()
                    )));
                }
                *slot = (margin * m).min(1.0);
            }
            scales.push(row);
        }
        Ok(MapBounds {
            model_digest: digest.to_hex(),
            runs: u32::try_from(runs.len()).unwrap_or(u32::MAX),
            margin,
            scales,
            calibration: None,
            weights: f32_weights(),
            nonlinear: None,
        })
    }

    /// Sets the nonlinear tolerances from `runs` (each [`run_nonlinear_deviations`] of one
    /// honest run, the runs of [`MapBounds::calibrate`]) as `margin` times each part's largest
    /// deviation (0 where every run agreed bit for bit: then that part must agree bitwise).
    ///
    /// # Errors
    /// [`FreivaldsError::InvalidArgument`] for runs of other counts or layer counts than the
    /// scales', or a non-finite or negative deviation.
    pub fn set_nonlinear(&mut self, runs: &[Vec<[f64; 4]>], margin: f64) -> Result<()> {
        let bad = |m: String| FreivaldsError::InvalidArgument(m);
        if runs.len() != self.runs as usize || !(margin.is_finite() && margin >= 1.0) {
            return Err(bad(format!(
                "{} runs of nonlinear deviations for {} runs of scales (margin {margin} >= 1)",
                runs.len(),
                self.runs
            )));
        }
        let mut worst = largest(runs, self.scales.len(), "nonlinear deviation")?;
        for w in &mut worst {
            w.iter_mut().for_each(|x| *x *= margin);
        }
        self.nonlinear = Some(worst);
        Ok(())
    }

    /// The tolerance of nonlinear part `part` ([`NONLINEAR_PARTS`]) of `layer` (`1..=L`), where
    /// the file has them.
    pub fn tolerance(&self, layer: usize, part: &str) -> Option<f64> {
        let p = NONLINEAR_PARTS.iter().position(|&x| x == part)?;
        let row = self.nonlinear.as_ref()?.get(layer.checked_sub(1)?)?;
        Some(row[p])
    }

    /// The bound on the probability that a further honest run exchangeable with the
    /// calibration runs exceeds some map's scale (or some nonlinear part's tolerance, where
    /// the file has them): `min(1, M / (N + 1))`, `M` the maps and parts, for scales from the
    /// largest ratios; the calibrated session rate `τ` (at its confidence) for scales from
    /// [`MapBounds::calibration`].
    pub fn exceed_bound(&self) -> f64 {
        if let Some(c) = &self.calibration {
            return c.target_session_fpr;
        }
        let parts = if self.nonlinear.is_some() { 11 } else { 7 };
        let checks = (self.scales.len() * parts) as f64;
        (checks / (f64::from(self.runs) + 1.0)).min(1.0)
    }

    /// Checks the file against `key`: the same model, one row of scales per layer, every scale
    /// in `(0, 1]`, `runs ≥ 1`, `margin ≥ 1`.
    ///
    /// # Errors
    /// [`FreivaldsError::ModelMismatch`] or [`FreivaldsError::InvalidArgument`].
    pub fn validate(&self, key: &VerifierKey) -> Result<()> {
        let bad = |m: String| FreivaldsError::InvalidArgument(format!("bound file: {m}"));
        if self.weights != key.weights() {
            return Err(bad(format!(
                "scales calibrated with the {} weights, checked with a key of the {} weights",
                self.weights,
                key.weights()
            )));
        }
        let digest =
            Digest::from_hex(&self.model_digest).map_err(|e| bad(format!("model_digest: {e}")))?;
        if digest != key.model_digest() {
            return Err(FreivaldsError::ModelMismatch {
                key: key.model_digest(),
                model: digest,
            });
        }
        if self.scales.len() != key.dims().layers as usize {
            return Err(bad(format!(
                "{} layers of scales for a key of {} layers",
                self.scales.len(),
                key.dims().layers
            )));
        }
        if self.runs == 0 || !(self.margin.is_finite() && self.margin >= 1.0) {
            return Err(bad(format!(
                "runs {} must be >= 1 and margin {} finite and >= 1",
                self.runs, self.margin
            )));
        }
        if let Some(c) = &self.calibration {
            let unit = |x: f64| x > 0.0 && x < 1.0;
            if !["order-statistic", "exponential-tail"].contains(&c.method.as_str())
                || !unit(c.target_session_fpr)
                || !unit(c.confidence)
                || c.holdout_exceeding > c.holdout_runs
            {
                return Err(bad(format!(
                    "calibration: method {:?} (order-statistic or exponential-tail), target \
                     {} and confidence {} in (0, 1), {} of {} held-out runs exceeding",
                    c.method,
                    c.target_session_fpr,
                    c.confidence,
                    c.holdout_exceeding,
                    c.holdout_runs
                )));
            }
        }
        if let Some(t) = &self.nonlinear {
            if t.len() != self.scales.len() {
                return Err(bad(format!(
                    "{} layers of nonlinear tolerances for {} layers of scales",
                    t.len(),
                    self.scales.len()
                )));
            }
            for (l, row) in t.iter().enumerate() {
                for (p, &x) in row.iter().enumerate() {
                    if !(x.is_finite() && x >= 0.0) {
                        return Err(bad(format!(
                            "layer {} {}: tolerance {x} is not finite and >= 0",
                            l + 1,
                            NONLINEAR_PARTS[p]
                        )));
                    }
                }
            }
        }
        for (l, row) in self.scales.iter().enumerate() {
            for (i, &s) in row.iter().enumerate() {
                if !(s.is_finite() && s > 0.0 && s <= 1.0) {
                    return Err(bad(format!(
                        "layer {} map {:?}: scale {s} is not in (0, 1]",
                        l + 1,
                        Matrix::LAYER[i]
                    )));
                }
            }
        }
        Ok(())
    }

    /// The scale of `matrix` in `layer` (`1..=L`); 1 (the rigorous bound) outside the file's
    /// layers or for the LM head.
    pub fn scale(&self, layer: usize, matrix: Matrix) -> f64 {
        let i = Matrix::LAYER.iter().position(|&m| m == matrix);
        match (layer.checked_sub(1).and_then(|l| self.scales.get(l)), i) {
            (Some(row), Some(i)) => row[i],
            _ => 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ModelConfig, Quant, QuantScheme, Rounding, Setup};
    use candle_core::{DType, Device, Tensor};
    use proptest::prelude::*;
    use rand_core::{RngCore, SeedableRng};

    fn secret(b: u8) -> VerifierSecret {
        VerifierSecret::from_bytes([b; 32])
    }

    /// Seeded Gaussian-ish f32 rows (uniform in ±1, the scale of normed activations).
    fn inputs(seed: u64, rows: usize, width: usize) -> Vec<f32> {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8] = 0xF1;
        let mut rng = ChaCha20Rng::from_seed(key);
        (0..rows * width)
            .map(|_| ((rng.next_u32() >> 8) as f32 / 8_388_608.0) - 1.0)
            .collect()
    }

    /// `x · Wᵀ` exactly as the f32 forward computes a linear map ([`crate::ops::matmul_t`]).
    fn engine_matmul(x: &[f32], rows: usize, w: &[f32], out: usize, inp: usize) -> Vec<f32> {
        let xt = Tensor::from_slice(x, (rows, inp), &Device::Cpu).unwrap();
        let wt = Tensor::from_slice(w, (out, inp), &Device::Cpu).unwrap();
        crate::ops::matmul_t(&xt, &wt, &Setup::F32_EAGER, DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    fn weights(model: &LlamaModel) -> std::collections::HashMap<String, Vec<f32>> {
        model
            .named_tensors()
            .unwrap()
            .into_iter()
            .map(|(n, _, d)| (n, d))
            .collect()
    }

    fn all_matrices(dims: &KeyDims) -> Vec<(usize, Matrix)> {
        dims.order().collect()
    }

    #[test]
    fn the_fast_comparison_finds_every_difference_and_every_non_finite_value() {
        let a: Vec<f32> = (0..3000).map(|i| i as f32 * 0.37 - 500.0).collect();
        assert!(same_and_finite(&a, &a));
        assert!(same_and_finite(&[], &[]));
        assert!(!same_and_finite(&a, &a[1..]));
        for at in [0, 7, 1023, 1024, 2999] {
            let mut b = a.clone();
            b[at] = f32::from_bits(b[at].to_bits() ^ 1);
            assert!(!same_and_finite(&a, &b), "a flipped bit at {at}");
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut c = a.clone();
                c[at] = bad;
                assert!(!same_and_finite(&c, &c), "{bad} at {at}");
                assert!(rel_linf(&c, &a).is_nan() || rel_linf(&c, &a).is_infinite());
            }
        }
        // signed zeros differ in bits but not in value: the slow path says 0
        assert!(!same_and_finite(&[0.0], &[-0.0]));
        assert_eq!(rel_linf(&[0.0, 1.0], &[-0.0, 1.0]), 0.0);
        assert_eq!(same_and_finite_any(&a, &a), same_and_finite(&a, &a));
    }

    #[test]
    fn the_deviation_by_blocks_is_the_deviation_of_the_whole() {
        let (rows, width) = (37usize, 9usize);
        let truth: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
            .collect();
        let by_blocks = |claim: &[f32], block: usize| {
            rel_linf_by_rows(claim, width, block, |r| {
                Ok::<_, ()>(truth[r.start * width..r.end * width].to_vec())
            })
            .unwrap()
        };
        let same = |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        let mut claims = vec![truth.clone()];
        for at in [0, 5, 17 * width + 3, rows * width - 1] {
            for v in [f32::NAN, f32::INFINITY, 1e6, -0.0] {
                let mut c = truth.clone();
                c[at] = v;
                claims.push(c);
            }
            let mut c = truth.clone();
            c[at] = f32::from_bits(c[at].to_bits() ^ 1);
            claims.push(c);
        }
        // the largest value in an early, equal block sets the scale of a late difference
        let mut c = truth.clone();
        c[rows * width - 2] += 0.5;
        claims.push(c);
        for claim in &claims {
            for block in [1, 2, 5, 16, 37, 100] {
                let (whole, blocks) = (rel_linf(claim, &truth), by_blocks(claim, block));
                assert!(same(whole, blocks), "block {block}: {whole} vs {blocks}");
            }
        }
        // a recompute of another length is never within a tolerance; its error is passed on
        let short = rel_linf_by_rows(&truth, width, 4, |r| {
            Ok::<_, ()>(vec![0f32; (r.end - r.start) * width - 1])
        });
        assert_eq!(short, Ok(f64::INFINITY));
        assert_eq!(rel_linf_by_rows(&truth, width, 4, |_| Err("no")), Err("no"));
    }

    #[test]
    fn wide_dots_are_bitwise_the_baseline_sums() {
        // every length around the lane count and a few long ones, mixed signs and magnitudes
        for len in (0..70).chain([511, 512, 1376, 4097]) {
            let x: Vec<f32> = inputs(len as u64 + 1, 1, len)
                .iter()
                .enumerate()
                .map(|(i, v)| v * (1 + (i % 7)) as f32 * 1e3)
                .collect();
            let a: Vec<f64> = (0..len)
                .map(|i| ((i * 37 % 101) as f64 - 50.0) / 7.0)
                .collect();
            let b: Vec<f64> = a.iter().map(|v| v.abs() * 1.000_1).collect();
            let (s, t) = dots(&a, &b, &x);
            let (s0, t0) = dots_lanes(&a, &b, &x);
            assert_eq!(
                (s.to_bits(), t.to_bits()),
                (s0.to_bits(), t0.to_bits()),
                "len {len}"
            );
            let b2: Vec<f64> = b.iter().rev().copied().collect();
            let a2: Vec<f64> = a.iter().map(|v| -v * 0.5).collect();
            let pair = dots_pair([&a, &b, &a2, &b2], &x);
            let alone = (dots_lanes(&a, &b, &x), dots_lanes(&a2, &b2, &x));
            let bits = |((s, t), (u, v)): ((f64, f64), (f64, f64))| {
                [s.to_bits(), t.to_bits(), u.to_bits(), v.to_bits()]
            };
            assert_eq!(bits(pair), bits(alone), "pair, len {len}");
            let (s, t) = dots_abs(&a, &x);
            let (s0, t0) = dots_abs_lanes(&a, &x);
            assert_eq!(
                (s.to_bits(), t.to_bits()),
                (s0.to_bits(), t0.to_bits()),
                "len {len}"
            );
        }
    }

    #[test]
    fn maps_checked_together_are_the_maps_checked_alone() {
        let model = LlamaModel::preset("tiny").unwrap();
        let key = VerifierKey::build(&secret(3), &model, 2).unwrap();
        let w = weights(&model);
        let rows = 5;
        for (a, b) in [(Matrix::K, Matrix::V), (Matrix::Gate, Matrix::Up)] {
            let (inp, _) = (key.dims().shape(a).1, ());
            let x = inputs(9, rows, inp);
            let product = |m: Matrix| {
                let (out, inp) = key.dims().shape(m);
                engine_matmul(&x, rows, &w[&m.tensor_name(2)], out, inp)
            };
            let (mut ya, yb) = (product(a), product(b));
            // one honest map beside one moved output, and a bias on one of them
            ya[3] += 0.25;
            let bias: Vec<f32> = (0..key.dims().shape(b).0)
                .map(|i| i as f32 * 1e-3)
                .collect();
            let yb_biased: Vec<f32> = yb
                .chunks_exact(bias.len())
                .flat_map(|r| r.iter().zip(&bias).map(|(y, c)| y + c).collect::<Vec<_>>())
                .collect();
            let together = check_linear_shared(
                &key,
                2,
                &x,
                rows,
                &[(a, &ya, None), (b, &yb_biased, Some(&bias))],
            )
            .unwrap();
            let alone = [
                check_linear_biased(&key, 2, a, &x, &ya, rows, None).unwrap(),
                check_linear_biased(&key, 2, b, &x, &yb_biased, rows, Some(&bias)).unwrap(),
            ];
            assert_eq!(together, alone, "{a:?} and {b:?}");
            assert!(!together[0].passed && together[1].passed);
        }
        // maps of different input widths are not checked together; errors are the maps' own
        let x = inputs(1, 1, key.dims().shape(Matrix::Q).1);
        let y = vec![0f32; key.dims().shape(Matrix::Q).0];
        let down = vec![0f32; key.dims().shape(Matrix::Down).0];
        assert!(matches!(
            check_linear_shared(
                &key,
                1,
                &x,
                1,
                &[(Matrix::Q, &y, None), (Matrix::Down, &down, None)]
            ),
            Err(FreivaldsError::InvalidArgument(_))
        ));
        let mut bad = y.clone();
        bad[2] = f32::NAN;
        assert!(matches!(
            check_linear_shared(
                &key,
                1,
                &x,
                1,
                &[
                    (Matrix::Q, &y, None),
                    (Matrix::K, &bad[..key.dims().shape(Matrix::K).0], None)
                ]
            ),
            Err(FreivaldsError::NonFinite {
                what: "y",
                index: 2
            })
        ));
        assert!(check_linear_shared(&key, 1, &x, 1, &[]).unwrap().is_empty());
    }

    #[test]
    fn per_map_bounds_catch_what_the_rigorous_bound_misses() {
        use crate::Engine;
        let model = LlamaModel::preset("tiny").unwrap();
        let key = VerifierKey::build(&secret(9), &model, 1).unwrap();
        let setup: Setup = "f32/attn=eager".parse().unwrap();
        let ratios = |i: u64| {
            let tokens = Engine::prompt(&model, i, 12);
            honest_map_ratios(&key, &model, &setup, &tokens, 8).unwrap()
        };
        let runs: Vec<_> = (0..8).map(ratios).collect();
        let bounds = MapBounds::calibrate(model.digest(), &runs, 2.0).unwrap();
        bounds.validate(&key).unwrap();
        assert_eq!(bounds.scales.len(), 4);
        assert_eq!(
            bounds.exceed_bound(),
            1.0,
            "28 maps over 8 runs bound nothing"
        );
        // the single scale is the noisiest map's: every per-map scale is at most it
        let single = 2.0 * runs.iter().flatten().flatten().fold(0f64, |m, &r| m.max(r));
        assert!(bounds
            .scales
            .iter()
            .flatten()
            .all(|&s| s <= single.min(1.0)));
        // held-out honest runs pass every map's scale
        for i in 100..104 {
            for (row, scales) in ratios(i).iter().zip(&bounds.scales) {
                for (r, s) in row.iter().zip(scales) {
                    assert!(r <= s, "held-out run {i}: ratio {r} over scale {s}");
                }
            }
        }
        // an output of layer 2's down projection moved until its per-map bound catches it: the
        // single calibrated scale (and the rigorous bound) would still pass it
        let tokens = Engine::prompt(&model, 7, 12);
        let (_, sub) = model.trace_sublayers(&setup, &tokens, 8).unwrap();
        let (matrix, x, y) = linear_maps(&sub[1])[6];
        assert_eq!(matrix, Matrix::Down);
        let scale = bounds.scale(2, matrix);
        let caught = (0..60)
            .map(|e| 1e-9 * 1.5f64.powi(e))
            .find_map(|eps| {
                let mut moved = y.to_vec();
                moved[3] += (eps * f64::from(moved[3].abs().max(1e-3))) as f32;
                let c = check_linear(&key, 2, matrix, x, &moved, tokens.len()).unwrap();
                (c.worst_ratio > scale).then_some(c.worst_ratio)
            })
            .expect("a large enough change is caught");
        // (on tiny: the quiet MLP maps' scales are 2-4x below the single one)
        assert!(
            caught <= single.min(1.0),
            "first caught at ratio {caught}: the single scale {single} would catch it too"
        );
        // the scale lookup: outside the file's maps, the rigorous bound
        assert_eq!(bounds.scale(0, Matrix::Q), 1.0);
        assert_eq!(bounds.scale(5, Matrix::Q), 1.0);
        assert_eq!(bounds.scale(1, Matrix::LmHead), 1.0);
        // refusals
        assert!(MapBounds::calibrate(model.digest(), &[], 2.0).is_err());
        assert!(MapBounds::calibrate(model.digest(), &runs, 0.5).is_err());
        let mut zero = runs.clone();
        for run in &mut zero {
            run[0][0] = 0.0;
        }
        assert!(MapBounds::calibrate(model.digest(), &zero, 2.0).is_err());
        assert!(MapBounds::calibrate(model.digest(), &[runs[0].clone(), vec![]], 2.0).is_err());
        let other =
            VerifierKey::build(&secret(9), &LlamaModel::preset("small").unwrap(), 1).unwrap();
        assert!(matches!(
            bounds.validate(&other),
            Err(FreivaldsError::ModelMismatch { .. })
        ));
        let mut bad = bounds.clone();
        bad.scales[1][2] = 0.0;
        assert!(bad.validate(&key).is_err());
        bad.scales[1][2] = f64::NAN;
        assert!(bad.validate(&key).is_err());
        let mut bad = bounds.clone();
        bad.scales.pop();
        assert!(bad.validate(&key).is_err());
    }

    #[test]
    fn known_answer_tiny() {
        let model = LlamaModel::preset("tiny").unwrap();
        let key = VerifierKey::build(&secret(7), &model, 2).unwrap();
        let bytes = key.to_bytes();
        assert_eq!(bytes.len() as u64, key.encoded_len());
        assert!(key.matches_secret(&secret(7)));
        assert!(!key.matches_secret(&secret(8)));
        assert_eq!(
            blake3::hash(&bytes).to_hex().as_str(),
            "f947f1652d216f06effd5afa3519cd51e2d8290c6260a58f16afa4ba4ba515ab",
            "encoded tiny key ({} bytes)",
            bytes.len()
        );
    }

    #[test]
    fn honest_outputs_pass_every_matrix_of_tiny() {
        let model = LlamaModel::preset("tiny").unwrap();
        let key = VerifierKey::build(&secret(1), &model, 4).unwrap();
        let w = weights(&model);
        let rows = 8;
        let mut worst: f64 = 0.0;
        for (i, (layer, m)) in all_matrices(&key.dims()).into_iter().enumerate() {
            let (out, inp) = key.dims().shape(m);
            let x = inputs(i as u64, rows, inp);
            let y = engine_matmul(&x, rows, &w[&m.tensor_name(layer)], out, inp);
            let c = check_linear(&key, layer, m, &x, &y, rows).unwrap();
            assert!(c.passed, "{layer} {m:?}: {c:?}");
            worst = worst.max(c.worst_ratio);
        }
        eprintln!("honest worst ratio over tiny: {worst:.3e}");
        assert!(worst < 0.05, "{worst}");
    }

    /// The (input, output) rows of every linear map of a layer, as the forward captured them.
    use super::linear_maps as captured;

    #[test]
    fn forward_captures_pass_and_quantized_forwards_fail() {
        let model = LlamaModel::preset("tiny").unwrap();
        let key = VerifierKey::build(&secret(6), &model, 2).unwrap();
        let tokens: Vec<u32> = (0..21u32).map(|i| (i * 37 + 5) % 512).collect();
        let mut worst: f64 = 0.0;
        for setup in [
            "f32/attn=eager",
            "f32/attn=tiled:4",
            "f32/attn=eager/splitk=4",
            "f32/attn=eager/batch=2",
        ] {
            let setup: Setup = setup.parse().unwrap();
            let (_, sub) = model.trace_sublayers(&setup, &tokens, 8).unwrap();
            for (l, s) in sub.iter().enumerate() {
                for (m, x, y) in captured(s) {
                    let c = check_linear(&key, l + 1, m, x, y, tokens.len()).unwrap();
                    assert!(c.passed, "{setup} layer {} {m:?}: {c:?}", l + 1);
                    worst = worst.max(c.worst_ratio);
                }
            }
        }
        eprintln!("honest forward captures, worst ratio {worst:.3e}");
        assert!(worst < 0.05, "{worst}");
        for setup in [
            "f32/attn=eager/quant=int8-tensor",
            "f32/attn=eager/quant=int8-channel:mse",
            "f32/attn=eager/quant=int4-g32",
            "bf16/attn=eager",
        ] {
            let setup: Setup = setup.parse().unwrap();
            let (_, sub) = model.trace_sublayers(&setup, &tokens, 8).unwrap();
            for (l, s) in sub.iter().enumerate() {
                for (m, x, y) in captured(s) {
                    let c = check_linear(&key, l + 1, m, x, y, tokens.len()).unwrap();
                    assert!(!c.passed, "{setup} layer {} {m:?}: {c:?}", l + 1);
                }
            }
        }
    }

    /// Checks `y` computed with `wrong` weights in place of `matrix`'s.
    fn check_with(
        key: &VerifierKey,
        layer: usize,
        m: Matrix,
        wrong: &[f32],
        rows: usize,
        seed: u64,
    ) -> LinearCheck {
        let (out, inp) = key.dims().shape(m);
        let x = inputs(seed, rows, inp);
        let y = engine_matmul(&x, rows, wrong, out, inp);
        check_linear(key, layer, m, &x, &y, rows).unwrap()
    }

    #[test]
    fn wrong_weights_fail() {
        let model = LlamaModel::preset("tiny").unwrap();
        let key = VerifierKey::build(&secret(2), &model, 4).unwrap();
        let w = weights(&model);
        let other = LlamaModel::new(ModelConfig {
            seed: 1,
            ..ModelConfig::tiny()
        })
        .unwrap();
        let wo = weights(&other);
        let rows = 8;
        let quants = [
            Quant {
                scheme: QuantScheme::Int8Tensor,
                rounding: Rounding::Nearest,
            },
            Quant {
                scheme: QuantScheme::Int8Channel,
                rounding: Rounding::Nearest,
            },
            Quant {
                scheme: QuantScheme::Int4Group { group: 32 },
                rounding: Rounding::Nearest,
            },
        ];
        for (i, (layer, m)) in all_matrices(&key.dims()).into_iter().enumerate() {
            let (out, inp) = key.dims().shape(m);
            let name = m.tensor_name(layer);
            let honest = &w[&name];
            let seed = 100 + i as u64;
            let mut cases: Vec<(String, Vec<f32>)> = quants
                .iter()
                .map(|q| {
                    (
                        q.to_string(),
                        crate::quant::quantize_dequantize(honest, out, inp, *q).unwrap(),
                    )
                })
                .collect();
            cases.push(("other model".into(), wo[&name].clone()));
            // Relative noise 1e-3 on every weight: beyond the bound for in = 128 (ratios 1.1 to
            // 3.5); for down (in = 344, a bound 2.7x larger) it stays below it (ratios 0.5 to
            // 0.7), and 4e-3 is caught.
            let xi = inputs(seed + 7, out, inp);
            let level = if m == Matrix::Down { 4e-3 } else { 1e-3 };
            let noise: Vec<f32> = honest
                .iter()
                .zip(&xi)
                .map(|(&a, &e)| a * (1.0 + level * e))
                .collect();
            cases.push((format!("noise {level:e}"), noise));
            for (what, wrong) in cases {
                let c = check_with(&key, layer, m, &wrong, rows, seed);
                assert!(!c.passed, "{what} passed for {layer} {m:?}: {c:?}");
            }
            if m == Matrix::Down {
                let noise: Vec<f32> = honest
                    .iter()
                    .zip(&xi)
                    .map(|(&a, &e)| a * (1.0 + 1e-3 * e))
                    .collect();
                let c = check_with(&key, layer, m, &noise, rows, seed);
                assert!(c.passed && c.worst_ratio > 0.3, "{c:?}");
            }
        }
    }

    #[test]
    fn one_weight_scaled() {
        let model = LlamaModel::preset("tiny").unwrap();
        let key = VerifierKey::build(&secret(3), &model, 4).unwrap();
        let w = weights(&model);
        let (layer, m) = (2, Matrix::Q);
        let honest = &w[&m.tensor_name(layer)];
        let big = (0..honest.len())
            .max_by(|&a, &b| honest[a].abs().total_cmp(&honest[b].abs()))
            .unwrap();
        let rows = 8;
        // The largest weight scaled by 1.01 changes one output by ~0.2 of the bound (not
        // caught); doubled, by ~20 times the bound.
        for (factor, detected) in [(1.01f32, false), (2.0, true)] {
            let mut wrong = honest.clone();
            wrong[big] *= factor;
            let c = check_with(&key, layer, m, &wrong, rows, 9);
            eprintln!("one weight x{factor}: {c:?}");
            assert_eq!(!c.passed, detected, "x{factor}: {c:?}");
        }
    }

    #[test]
    fn measured_false_accepts_match_the_prediction() {
        let model = LlamaModel::preset("tiny").unwrap();
        let w = weights(&model);
        let (layer, m) = (1usize, Matrix::Q);
        let dims = KeyDims::of(&model).unwrap();
        let (out, inp) = dims.shape(m);
        let honest = &w[&m.tensor_name(layer)];
        let x = inputs(5, 1, inp);
        let xi = inputs(6, out, inp);
        let digest = model.digest();
        // The deviation of weights with relative noise delta, exactly (f64).
        let perturbed = |delta: f32| -> (Vec<f32>, f64) {
            let wp: Vec<f32> = honest
                .iter()
                .zip(&xi)
                .map(|(&a, &e)| a * (1.0 + delta * e))
                .collect();
            let y = engine_matmul(&x, 1, &wp, out, inp);
            let e2: f64 = (0..out)
                .map(|i| {
                    let exact: f64 = (0..inp)
                        .map(|j| f64::from(honest[i * inp + j]) * f64::from(x[j]))
                        .sum();
                    (f64::from(y[i]) - exact).powi(2)
                })
                .sum();
            (y, e2.sqrt())
        };
        let bound_of = |s: &VerifierSecret, y: &[f32]| -> (f64, f64) {
            let (r, v, u) = derive(seed(s, &digest, layer as u32, m, 0), honest, out, inp);
            let vx: f64 = v.iter().zip(&x).map(|(a, &b)| a * f64::from(b)).sum();
            let ux: f64 = u.iter().zip(&x).map(|(a, &b)| a * f64::from(b).abs()).sum();
            let ry: f64 = r.iter().zip(y).map(|(a, &b)| a * f64::from(b)).sum();
            let ary: f64 = r
                .iter()
                .zip(y)
                .map(|(a, &b)| a.abs() * f64::from(b).abs())
                .sum();
            let eps = 2.0 * (gamma(inp, U_F64) + gamma(out, U_F64));
            (
                (vx - ry).abs(),
                gamma(inp, U_F32) * ux + U_F32 * ary + eps * (ux + ary),
            )
        };
        let secrets: Vec<VerifierSecret> = (0..400u32)
            .map(|i| {
                let mut b = [0u8; 32];
                b[..4].copy_from_slice(&i.to_le_bytes());
                b[31] = 0x5E;
                VerifierSecret::from_bytes(b)
            })
            .collect();
        // Tune delta so that the mean predicted false accept is about 0.3.
        let (y0, e0) = perturbed(1e-3);
        let b0: f64 = secrets[..20]
            .iter()
            .map(|s| bound_of(s, &y0).1)
            .sum::<f64>()
            / 20.0;
        // erf(z) = 0.3 at z = 0.2725
        let delta = 1e-3 * (b0 / (std::f64::consts::SQRT_2 * 0.2725 * e0)) as f32;
        let (y, e_norm) = perturbed(delta);
        let mut accepted = 0usize;
        let mut predicted = 0.0;
        for s in &secrets {
            let (dev, b) = bound_of(s, &y);
            if dev <= b {
                accepted += 1;
            }
            predicted += false_accept_probability(b, e_norm, 1);
        }
        let n = secrets.len() as f64;
        let p = predicted / n;
        let sigma = (n * p * (1.0 - p)).sqrt();
        eprintln!(
            "delta {delta:.3e}: accepted {accepted}/400, predicted {:.1} (p {p:.3})",
            n * p
        );
        assert!((0.2..0.4).contains(&p), "{p}");
        assert!(
            (accepted as f64 - n * p).abs() <= 5.0 * sigma,
            "{accepted} vs {}",
            n * p
        );
        // And the check itself agrees with the direct computation for one secret.
        let key = VerifierKey::build(&secrets[0], &model, 1).unwrap();
        let c = check_linear(&key, layer, m, &x, &y, 1).unwrap();
        let (dev, b) = bound_of(&secrets[0], &y);
        // (to the verifier's own f64 rounding: the check sums in four interleaved lanes)
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1e-300);
        assert!(
            close(c.deviation, dev) && close(c.bound, b),
            "{:?} vs {:?}",
            (c.deviation, c.bound),
            (dev, b)
        );
    }

    #[test]
    fn false_accept_formula() {
        assert_eq!(false_accept_probability(1.0, 0.0, 3), 1.0);
        assert_eq!(false_accept_probability(1.0, 2.0, 0), 1.0);
        assert!(false_accept_probability(-1.0, 1.0, 1).is_nan());
        assert!(false_accept_probability(1.0, f64::NAN, 1).is_nan());
        // erf(1/√2) = 0.682689492...
        let p = false_accept_probability(1.0, 1.0, 1);
        assert!((p - 0.682_689_492_137_086).abs() < 1e-12, "{p}");
        assert!((false_accept_probability(1.0, 1.0, 3) - p.powi(3)).abs() < 1e-12);
        assert_eq!(false_accept_probability(0.0, 1.0, 1), 0.0);
    }

    #[test]
    fn bad_input_is_refused() {
        let model = LlamaModel::preset("tiny").unwrap();
        assert!(VerifierKey::build(&secret(1), &model, 0).is_err());
        assert!(VerifierKey::build(&secret(1), &model, MAX_REPETITIONS + 1).is_err());
        let key = VerifierKey::build(&secret(1), &model, 1).unwrap();
        let (out, inp) = key.dims().shape(Matrix::Q);
        let x = vec![0.5f32; inp];
        let y = vec![0.0f32; out];
        for (layer, m) in [(0, Matrix::Q), (5, Matrix::Q), (1, Matrix::LmHead)] {
            let e = check_linear(&key, layer, m, &x, &y, 1).unwrap_err();
            assert!(matches!(e, FreivaldsError::InvalidArgument(_)), "{e}");
        }
        assert!(matches!(
            check_linear(&key, 1, Matrix::Q, &x, &y, 0),
            Err(FreivaldsError::InvalidArgument(_))
        ));
        assert!(matches!(
            check_linear(&key, 1, Matrix::Q, &x[1..], &y, 1),
            Err(FreivaldsError::WrongLength { what: "x", .. })
        ));
        assert!(matches!(
            check_linear(&key, 1, Matrix::Q, &x, &y, 2),
            Err(FreivaldsError::WrongLength { .. })
        ));
        let mut nan = y.clone();
        nan[3] = f32::NAN;
        assert!(matches!(
            check_linear(&key, 1, Matrix::Q, &x, &nan, 1),
            Err(FreivaldsError::NonFinite {
                what: "y",
                index: 3
            })
        ));
        // Over several rows the first non-finite element of x is named before any of y's, as
        // a scan of x then y would: infinities too, and a zero x beside them.
        let (x3, mut y3) = (vec![0.0f32; 3 * inp], vec![0.0f32; 3 * out]);
        y3[out + 7] = f32::INFINITY;
        assert!(matches!(
            check_linear(&key, 1, Matrix::Q, &x3, &y3, 3),
            Err(FreivaldsError::NonFinite { what: "y", index }) if index == out + 7
        ));
        let mut x3 = x3;
        x3[2 * inp + 1] = f32::NEG_INFINITY;
        assert!(matches!(
            check_linear(&key, 1, Matrix::Q, &x3, &y3, 3),
            Err(FreivaldsError::NonFinite { what: "x", index }) if index == 2 * inp + 1
        ));
        // x = 0, y = 0 has deviation 0 and passes; x = 0, y != 0 fails with an infinite ratio.
        let z = vec![0.0f32; inp];
        assert!(check_linear(&key, 1, Matrix::Q, &z, &y, 1).unwrap().passed);
        let mut y1 = y.clone();
        y1[0] = 1.0;
        let c = check_linear(&key, 1, Matrix::Q, &z, &y1, 1).unwrap();
        assert!(!c.passed);
        // The LM head is layer L.
        let (vo, vi) = key.dims().shape(Matrix::LmHead);
        assert!(check_linear(&key, 4, Matrix::LmHead, &vec![0.0; vi], &vec![0.0; vo], 1).is_ok());
        // Another model's digest.
        let other = LlamaModel::new(ModelConfig {
            seed: 1,
            ..ModelConfig::tiny()
        })
        .unwrap();
        assert!(key.check_model(&model.digest()).is_ok());
        assert!(matches!(
            key.check_model(&other.digest()),
            Err(FreivaldsError::ModelMismatch { .. })
        ));
    }

    #[test]
    fn strict_decoding() {
        let model = LlamaModel::preset("tiny").unwrap();
        let key = VerifierKey::build(&secret(4), &model, 1).unwrap();
        let bytes = key.to_bytes();
        assert_eq!(VerifierKey::from_bytes(&bytes).unwrap(), key);
        let refused = |b: &[u8]| VerifierKey::from_bytes(b).unwrap_err().is_input();
        assert!(refused(&bytes[..bytes.len() - 1]));
        assert!(refused(&[bytes.as_slice(), &[0]].concat()));
        let mut b = bytes.clone();
        b[0] ^= 1;
        assert!(refused(&b));
        let mut b = bytes.clone();
        b[8] = 2;
        assert!(refused(&b));
        // A NaN r value, a negative u value, a -0 u value.
        let mut b = bytes.clone();
        b[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&f64::NAN.to_le_bytes());
        assert!(refused(&b));
        let (out, inp) = key.dims().shape(Matrix::Q);
        let u0 = HEADER_LEN + 8 * (out + inp);
        for bad in [-1.0f64, -0.0] {
            let mut b = bytes.clone();
            b[u0..u0 + 8].copy_from_slice(&bad.to_le_bytes());
            assert!(refused(&b), "{bad}");
        }
        // Huge declared dimensions are refused before allocation.
        let mut b = bytes[..HEADER_LEN].to_vec();
        for i in 0..6 {
            b[76 + 4 * i..80 + 4 * i].copy_from_slice(&MAX_DIM.to_le_bytes());
        }
        b[100..104].copy_from_slice(&MAX_REPETITIONS.to_le_bytes());
        assert!(refused(&b));
        for (at, v) in [
            (76usize, 0u32),
            (80, MAX_DIM + 1),
            (100, 0),
            (100, MAX_REPETITIONS + 1),
        ] {
            let mut b = bytes.clone();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            assert!(refused(&b), "{at} {v}");
        }
    }

    /// A key of small arbitrary dimensions and values (not derived from a model).
    fn arb_key() -> impl Strategy<Value = VerifierKey> {
        (
            (1u32..3, 1u32..4, 1u32..4, 1u32..4, 1u32..4, 1u32..4),
            1u32..3,
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<u64>(),
        )
            .prop_map(|((l, h, q, kv, m, v), t, dg, cm, s)| {
                let dims = KeyDims {
                    layers: l,
                    hidden: h,
                    q_out: q,
                    kv_out: kv,
                    mlp: m,
                    vocab: v,
                };
                let mut rng = ChaCha20Rng::seed_from_u64(s);
                let mut f = |n: usize, nonneg: bool| -> Vec<f64> {
                    (0..n)
                        .map(|_| {
                            let x = (rng.next_u64() >> 11) as f64 * U_F64 * 4.0 - 2.0;
                            if nonneg {
                                x.abs()
                            } else {
                                x
                            }
                        })
                        .collect()
                };
                let matrices = dims
                    .order()
                    .map(|(_, mx)| {
                        let (o, i) = dims.shape(mx);
                        let t = t as usize;
                        MatrixKey {
                            r: f(o * t, false),
                            v: f(i * t, false),
                            u: f(i * t, true),
                        }
                    })
                    .collect();
                VerifierKey {
                    model_digest: Digest(dg),
                    secret_commitment: cm,
                    dims,
                    repetitions: t,
                    matrices,
                    derived: None,
                }
            })
    }

    proptest! {
        #[test]
        fn round_trip(key in arb_key()) {
            let bytes = key.to_bytes();
            prop_assert_eq!(bytes.len() as u64, key.encoded_len());
            let back = VerifierKey::from_bytes(&bytes).unwrap();
            prop_assert_eq!(back.to_bytes(), bytes);
            prop_assert_eq!(back, key);
        }

        #[test]
        fn mutated_bytes_never_panic(
            key in arb_key(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in proptest::option::of(any::<usize>()),
        ) {
            let mut bytes = key.to_bytes();
            for (at, b) in edits {
                let n = bytes.len();
                bytes[at % n] ^= b | 1;
            }
            if let Some(c) = cut {
                bytes.truncate(c % (bytes.len() + 1));
            }
            // Any accepted encoding is the one encoding of what it decodes to.
            if let Ok(k) = VerifierKey::from_bytes(&bytes) {
                prop_assert_eq!(k.to_bytes(), bytes);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut b = bytes.clone();
            let _ = VerifierKey::from_bytes(&b);
            if b.len() >= 8 {
                b[..8].copy_from_slice(&MAGIC);
            }
            if b.len() >= 12 {
                b[8..12].copy_from_slice(&VERSION.to_le_bytes());
            }
            let _ = VerifierKey::from_bytes(&b);
        }
    }
}
