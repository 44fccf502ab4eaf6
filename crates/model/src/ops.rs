//! Arithmetic the decoder ([`crate::llama`]) and the encoder ([`crate::bert`]) share under a
//! numeric setup, so that one rule is written once: the linear product with the setup's batch
//! and split-K, and the softmax with f32 statistics.

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
