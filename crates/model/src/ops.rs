//! The setup-aware CPU ops layer every architecture ([`crate::llama`], [`crate::bert`]) computes
//! through, the counterpart of `cuda/ops.rs`, so that each rule is written once: the linear
//! product with the setup's batch and split-K, the softmax with f32 statistics, the attention
//! kinds (eager, tiled online softmax, window, top-k: [`attend`]) over one [`Visibility`]
//! (causal, bidirectional, padding, window), the prepared-weights cache ([`WeightCache`],
//! [`prepare_weight`]), the reused-layer update and the tile check.

use candle_core::{DType, Tensor, D};

use crate::{Precision, Result, Setup};

/// The candle dtype of a precision.
pub(crate) fn dtype_of(p: Precision) -> DType {
    match p {
        Precision::F32 => DType::F32,
        Precision::Bf16 => DType::BF16,
        Precision::F16 => DType::F16,
    }
}

/// `x · Wᵀ` for `x: [r, in]`, `w: [out, in]` in `dtype`, with the setup's batch and split-K.
///
/// * batch `b`: the rows are stacked `b` times (the other prompts of the batch) into one
///   `[b·r, in]` matmul and the first `r` output rows kept;
/// * split-K `s`: the inner dimension is cut into `s` contiguous slices of `⌈in / s⌉` (the last
///   one shorter); each slice's product is computed in f32 from the (exactly widened) operands,
///   the partial sums are added in slice order in f32, and the total is rounded once to
///   `dtype`, as a split-K kernel with f32 accumulators.
pub(crate) fn matmul_t(x: &Tensor, w: &Tensor, setup: &Setup, dtype: DType) -> Result<Tensor> {
    let r = x.dim(0)?;
    let x = if setup.batch > 1 {
        Tensor::cat(&vec![x; setup.batch], 0)?
    } else {
        x.clone()
    };
    let inner = w.dim(1)?;
    let y = if setup.split_k > 1 && inner > 1 {
        let part = inner.div_ceil(setup.split_k);
        let mut acc: Option<Tensor> = None;
        let mut start = 0;
        while start < inner {
            let len = part.min(inner - start);
            // Operands widened to f32 (exactly), so each partial product is an f32
            // accumulator as in a split-K kernel, not a 16-bit rounded result.
            let xs = x
                .narrow(1, start, len)?
                .to_dtype(DType::F32)?
                .contiguous()?;
            let ws = w
                .narrow(1, start, len)?
                .to_dtype(DType::F32)?
                .contiguous()?;
            let p = xs.matmul(&ws.t()?)?;
            acc = Some(match acc {
                None => p,
                Some(a) => a.add(&p)?,
            });
            start += len;
        }
        acc.expect("inner > 1").to_dtype(dtype)?
    } else {
        x.matmul(&w.t()?)?
    };
    if setup.batch > 1 {
        Ok(y.narrow(0, 0, r)?)
    } else {
        Ok(y)
    }
}

/// Softmax of f32 `scores` over the last dimension (f32 statistics), the probabilities rounded
/// to `dtype`, times `v`.
pub(crate) fn softmax_times_v(scores: &Tensor, v: &Tensor, dtype: DType) -> Result<Tensor> {
    let max = scores.max_keepdim(D::Minus1)?;
    let exp = scores.broadcast_sub(&max)?.exp()?;
    let probs = exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)?;
    Ok(probs.to_dtype(dtype)?.matmul(v)?)
}

/// Top-k attention's selection rule, applied in place to every row of `scores` (rows of
/// `row_len` masked, scaled f32 scores): when a row has more than `keep` finite scores, the
/// threshold is the `keep`-th largest of them in the total order of f32 (`-0 < +0`), and every
/// score `s < threshold` (IEEE comparison) becomes `-inf`; ties with the threshold are all kept
/// and a row with at most `keep` finite scores is left as it is.
///
/// This is the reference the decoder and the encoder run on the CPU and that the GPU kernel
/// `vt_attn_topk` (kernels/attention.cu) reproduces bit for bit. `keep = 0` or `row_len = 0`
/// leaves `scores` unchanged (setups validate `keep >= 1`).
pub fn topk_mask(scores: &mut [f32], row_len: usize, keep: usize) {
    if keep == 0 || row_len == 0 {
        return;
    }
    let mut sorted = Vec::with_capacity(row_len);
    for row in scores.chunks_mut(row_len) {
        sorted.clear();
        sorted.extend(row.iter().copied().filter(|s| s.is_finite()));
        if sorted.len() > keep {
            sorted.sort_unstable_by(|a, b| b.total_cmp(a));
            let threshold = sorted[keep - 1];
            for s in row.iter_mut() {
                if *s < threshold {
                    *s = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// The prepared weights of one numeric setup, built once per (precision, quantization) and
/// shared by clones of a model: each architecture's weight type `W` in one cache.
pub(crate) struct WeightCache<W>(
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<WeightKey, std::sync::Arc<W>>>>,
);

/// Cache key of [`WeightCache`]: what changes prepared weights.
pub(crate) type WeightKey = (Precision, Option<crate::Quant>);

impl<W> Default for WeightCache<W> {
    fn default() -> Self {
        WeightCache(Default::default())
    }
}

impl<W> Clone for WeightCache<W> {
    fn clone(&self) -> Self {
        WeightCache(std::sync::Arc::clone(&self.0))
    }
}

impl<W> std::fmt::Debug for WeightCache<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "WeightCache({n} setups)")
    }
}

impl<W> WeightCache<W> {
    /// The weights of `setup`, made by `make` on first use.
    pub(crate) fn get_or_prepare(
        &self,
        setup: &Setup,
        make: impl FnOnce() -> Result<W>,
    ) -> Result<std::sync::Arc<W>> {
        let key = (setup.precision, setup.quant);
        let mut cache = self.0.lock().map_err(|_| {
            crate::ModelError::InvalidArgument("the weight cache is poisoned".into())
        })?;
        if let Some(w) = cache.get(&key) {
            return Ok(std::sync::Arc::clone(w));
        }
        let w = std::sync::Arc::new(make()?);
        cache.insert(key, std::sync::Arc::clone(&w));
        Ok(w)
    }
}

/// A linear weight under `setup`: quantized and dequantized when the setup quantizes (and
/// `quantize` is set: biases and the LM head never are), then in the setup's dtype.
pub(crate) fn prepare_weight(t: &Tensor, setup: &Setup, quantize: bool) -> Result<Tensor> {
    let t = match (quantize, setup.quant) {
        (true, Some(q)) => {
            let (rows, cols) = t.dims2()?;
            let values = t.flatten_all()?.to_vec1::<f32>()?;
            let deq = crate::quant::quantize_dequantize(&values, rows, cols, q)?;
            Tensor::from_vec(deq, (rows, cols), &candle_core::Device::Cpu)?
        }
        _ => t.clone(),
    };
    Ok(t.to_dtype(dtype_of(setup.precision))?)
}

/// The reused layer's output `h_l = h_{l−1} + (h_{l−1} − h_{l−2})`, computed in `dtype`.
pub(crate) fn reuse_update(prev: &[f32], prev2: &[f32], dtype: DType) -> Result<Vec<f32>> {
    let cpu = &candle_core::Device::Cpu;
    let a = Tensor::from_slice(prev, prev.len(), cpu)?.to_dtype(dtype)?;
    let b = Tensor::from_slice(prev2, prev2.len(), cpu)?.to_dtype(dtype)?;
    Ok(a.add(&a.sub(&b)?)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// A tensor's values as f32, row-major (for the invariant kernels' packed layers).
pub(crate) fn f32_values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// A linear layer's weight `[out, in]` packed for the invariant kernels, in 16 bits where
/// every value is a bfloat16 or a binary16 (a bf16 or f16 setup's weights, a bf16
/// checkpoint's: [`crate::invariant::PackedMatrix::compact`], bitwise the same products).
pub(crate) fn pack_weight(t: &Tensor) -> Result<crate::invariant::PackedMatrix> {
    let (out, inp) = t.dims2()?;
    crate::invariant::PackedMatrix::new(&f32_values(t)?, out, inp)
        .map(crate::invariant::PackedMatrix::compact)
        .ok_or_else(|| {
            crate::ModelError::InvalidArgument(format!("a weight of {out} x {inp} does not pack"))
        })
}

/// Refuses a chunk (compute tile) size outside `1..=65536` rows.
pub(crate) fn check_tile(tile: usize) -> Result<()> {
    if tile == 0 || tile > 1 << 16 {
        return Err(crate::ModelError::InvalidArgument(format!(
            "the chunk size {tile} must be between 1 and 65536 rows"
        )));
    }
    Ok(())
}

/// Which keys a query sees: the one visibility mask every architecture's attention goes
/// through.
///
/// * causal (decoders): query `p` sees keys `k ≤ p` with `p − k < window`;
/// * bidirectional (encoders): query `p` sees the keys the per-key mask shows (padding hidden)
///   with `|p − k| < window`; a query whose window holds no visible key (only a padding
///   position can be one) sees every visible key instead, so that no row is all `−∞`.
///
/// `window` is `usize::MAX` for none: the shorter of the model's own window (Mistral) and the
/// setup's `window:W`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Visibility<'a> {
    /// Causal (true) or bidirectional.
    pub causal: bool,
    /// Per-key visibility over all keys `0..e` (bidirectional; `None`: every key).
    pub keys: Option<&'a [bool]>,
    /// The window, `usize::MAX` for none.
    pub window: usize,
}

impl Visibility<'_> {
    fn key_visible(&self, k: usize) -> bool {
        self.keys.is_none_or(|v| v.get(k) == Some(&true))
    }

    /// Whether query `p` sees key `k` under the window alone (and the per-key mask).
    fn in_window(&self, p: usize, k: usize) -> bool {
        if self.causal {
            k <= p && p - k < self.window
        } else {
            self.key_visible(k) && p.abs_diff(k) < self.window
        }
    }

    /// The bidirectional fallback: whether query `p` sees no visible key of `0..e` within the
    /// window, and so sees every visible key instead.
    pub(crate) fn falls_back(&self, p: usize, e: usize) -> bool {
        !self.causal && self.window != usize::MAX && !(0..e).any(|k| self.in_window(p, k))
    }

    /// Whether query `p` sees key `k`, given [`Visibility::falls_back`] for `p`.
    pub(crate) fn sees(&self, p: usize, k: usize, fallback: bool) -> bool {
        if fallback {
            self.key_visible(k)
        } else {
            self.in_window(p, k)
        }
    }

    /// The additive f32 mask `[tq, len]` of queries `q0..q0 + tq` over keys `k0..k0 + len`
    /// out of `e` keys: `0` where the query sees the key, `−∞` elsewhere.
    pub(crate) fn mask(
        &self,
        q0: usize,
        tq: usize,
        k0: usize,
        len: usize,
        e: usize,
    ) -> Result<Tensor> {
        let mut values = Vec::with_capacity(tq * len);
        for p in q0..q0 + tq {
            let fallback = self.falls_back(p, e);
            values.extend((k0..k0 + len).map(|k| {
                if self.sees(p, k, fallback) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            }));
        }
        Ok(Tensor::from_vec(
            values,
            (tq, len),
            &candle_core::Device::Cpu,
        )?)
    }
}

/// What [`attend`] computes: the setup's attention kind over a visibility, in a dtype.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionRule<'a> {
    /// The setup's attention (eager, tiled, window, top-k).
    pub attention: crate::Attention,
    /// Which keys each query sees.
    pub visibility: Visibility<'a>,
    /// The setup's dtype (probabilities are rounded to it for the product with `v`).
    pub dtype: DType,
}

/// Attention of queries `q: [heads, tq, hd]` at positions `q0..` over keys and values
/// `k, v: [heads, e, hd]` at positions `0..e` under `rule` (attention kind, visibility, dtype);
/// returns `[heads, tq, hd]` in the rule's dtype. `scores_of` gives the scaled f32 scores of the queries
/// against a block of keys (each architecture's own product); masks, the softmax and its
/// statistics are f32; probabilities are rounded to `dtype` for the product with `v`.
///
/// * eager and window: one softmax over every key, masked;
/// * top-k: the masked scores through [`topk_mask`], then the softmax;
/// * tiled: online softmax over key blocks of `block` in order, from the first block a query
///   can see (0, or the start of the earliest window) to the last (the tile's last query,
///   causally; every key, bidirectionally), skipping blocks whose keys the per-key mask hides
///   from every query. Where a block can hide every key from some query (a causal window),
///   the exponent subtracts 0 instead of that query's −∞ maximum, so the block adds exactly 0.
pub(crate) fn attend(
    rule: &AttentionRule<'_>,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    q0: usize,
    scores_of: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    use crate::Attention;
    let (attention, visibility, dtype) = (rule.attention, &rule.visibility, rule.dtype);
    let (heads, tq, _) = q.dims3()?;
    let e = k.dim(1)?;
    match attention {
        Attention::Eager | Attention::Window { .. } => {
            let scores = scores_of(k)?.broadcast_add(&visibility.mask(q0, tq, 0, e, e)?)?;
            softmax_times_v(&scores, v, dtype)
        }
        Attention::TopK { k: keep } => {
            let scores = scores_of(k)?.broadcast_add(&visibility.mask(q0, tq, 0, e, e)?)?;
            let mut values = scores.flatten_all()?.to_vec1::<f32>()?;
            topk_mask(&mut values, e, keep);
            let scores = Tensor::from_vec(values, (heads, tq, e), &candle_core::Device::Cpu)?;
            softmax_times_v(&scores, v, dtype)
        }
        Attention::Tiled { block } => {
            let windowed = visibility.causal && visibility.window != usize::MAX;
            let (mut k0, end) = if visibility.causal {
                let first = q0.saturating_sub(visibility.window.saturating_sub(1));
                (
                    if windowed { first / block * block } else { 0 },
                    e.min(q0 + tq),
                )
            } else {
                (0, e)
            };
            let mut state: Option<(Tensor, Tensor, Tensor)> = None; // (m, s, o)
            while k0 < end {
                let len = block.min(e - k0);
                if !(k0..k0 + len).any(|key| visibility.key_visible(key)) {
                    k0 += len;
                    continue;
                }
                let kb = k.narrow(1, k0, len)?;
                let vb = v.narrow(1, k0, len)?;
                let s = scores_of(&kb)?.broadcast_add(&visibility.mask(q0, tq, k0, len, e)?)?;
                let bmax = s.max_keepdim(D::Minus1)?;
                // what the exponents subtract: the running maximum, or 0 where it is −∞
                let shift = |m: &Tensor| -> Result<Tensor> {
                    if windowed {
                        finite_or_zero(m)
                    } else {
                        Ok(m.clone())
                    }
                };
                state = Some(match state {
                    None => {
                        let p = s.broadcast_sub(&shift(&bmax)?)?.exp()?;
                        let sum = p.sum_keepdim(D::Minus1)?;
                        let o = p.to_dtype(dtype)?.matmul(&vb)?.to_dtype(DType::F32)?;
                        (bmax, sum, o)
                    }
                    Some((m, sum, o)) => {
                        let m_new = m.maximum(&bmax)?;
                        let m_sub = shift(&m_new)?;
                        let corr = m.sub(&m_sub)?.exp()?;
                        let p = s.broadcast_sub(&m_sub)?.exp()?;
                        let sum = sum.mul(&corr)?.add(&p.sum_keepdim(D::Minus1)?)?;
                        let pv = p.to_dtype(dtype)?.matmul(&vb)?.to_dtype(DType::F32)?;
                        let o = o.broadcast_mul(&corr)?.add(&pv)?;
                        (m_new, sum, o)
                    }
                });
                k0 += len;
            }
            let (_, sum, o) = state.ok_or_else(|| {
                crate::ModelError::InvalidArgument("the attention mask hides every key".into())
            })?;
            Ok(o.broadcast_div(&sum)?.to_dtype(dtype)?)
        }
    }
}

/// `m` with every non-finite element (a maximum over keys that are all masked, −∞) replaced by
/// 0; finite elements unchanged.
fn finite_or_zero(m: &Tensor) -> Result<Tensor> {
    let finite = m.ge(f64::from(f32::MIN))?;
    Ok(finite.where_cond(m, &m.zeros_like()?)?)
}
