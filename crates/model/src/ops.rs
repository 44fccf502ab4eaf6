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
