//! Compute cost model: FLOPs of the decoder per cell, weighted by operand width.
//!
//! For a layer of the decoder of [`crate::llama`] with width `d`, head size `h`,
//! `n_q` query heads, `n_kv` key/value heads and MLP width `m`, one token row costs
//!
//! ```text
//! linear(row)    = 2·d·(n_q·h) + 2·2·d·(n_kv·h) + 2·(n_q·h)·d + 3·2·d·m
//! attention(row) = 2·n_q·h·c_s + 2·n_q·h·c_v
//! ```
//!
//! FLOPs, where `c_s` is the number of keys the row scores (its causal context `p + 1`, or the
//! window `min(W, p + 1)` of the setup or of the model) and `c_v` the number it sums values over (`c_s`, or `min(K, c_s)` for
//! top-k). *Cost* weights linear FLOPs by the weight operand's width relative to the claimed
//! setup's precision (int8 = 8 bits, int4 = 4, bf16/f16 = 16, f32 = 32) and attention FLOPs by the
//! activation width: a memory-bound approximation of inference cost, not a timing. A skipped or
//! reused layer costs nothing; reduction-order changes cost the same as the reference.

use crate::{Attention, ModelConfig, QuantScheme, Setup};

/// Cost of one row at position `p` of a layer under `setup`, relative widths against
/// `reference` (in FLOP-equivalents).
pub fn row_cost(config: &ModelConfig, setup: &Setup, reference: &Setup, p: u64) -> f64 {
    let (d, h) = (config.hidden_size as f64, config.head_dim() as f64);
    let (nq, nkv, m) = (
        config.num_heads as f64,
        config.num_kv_heads as f64,
        config.intermediate_size as f64,
    );
    let linear = 2.0 * d * nq * h + 4.0 * d * nkv * h + 2.0 * nq * h * d + 6.0 * d * m;
    // the model's own window (Mistral) bounds the context first
    let ctx = (p + 1).min(config.window() as u64) as f64;
    let (cs, cv) = match setup.attention {
        Attention::Window { size } => (ctx.min(size as f64), ctx.min(size as f64)),
        Attention::TopK { k } => (ctx, ctx.min(k as f64)),
        _ => (ctx, ctx),
    };
    let attention = 2.0 * nq * h * (cs + cv);
    let ref_bits = f64::from(reference.precision.bytes() as u32 * 8);
    let act_bits = f64::from(setup.precision.bytes() as u32 * 8);
    let weight_bits = match setup.quant {
        Some(q) => match q.scheme {
            QuantScheme::Int8Tensor | QuantScheme::Int8Channel => 8.0,
            QuantScheme::Int4Group { .. } => 4.0,
        },
        None => act_bits,
    };
    linear * weight_bits / ref_bits + attention * act_bits / ref_bits
}

/// Cost of layer `layer` (1-based) for rows `rows` under `setup` (0 for a skipped or reused
/// layer; layer 0, the embedding lookup, costs nothing).
pub fn cell_cost(
    config: &ModelConfig,
    setup: &Setup,
    reference: &Setup,
    layer: u32,
    rows: std::ops::Range<u32>,
) -> f64 {
    let l = layer as usize;
    if layer == 0 || setup.skip == Some(l) || setup.reuse == Some(l) {
        return 0.0;
    }
    rows.map(|p| row_cost(config, setup, reference, u64::from(p)))
        .sum()
}

/// Cost of a whole forward of `tokens` rows under `setup`.
pub fn forward_cost(config: &ModelConfig, setup: &Setup, reference: &Setup, tokens: u32) -> f64 {
    (1..=config.num_layers as u32)
        .map(|l| cell_cost(config, setup, reference, l, 0..tokens))
        .sum()
}

/// Cost of rows `rows` of encoder layer `layer` (1-based; 0 costs nothing) under `setup`, for a
/// BERT layer of width `d` and MLP width `m` over `n` rows in all: per row
/// `linear = 2·d·3d + 2·d·d + 2·2·d·m` (q, k, v, output projection, the two MLP matmuls) and
/// `attention = 2·d·c_s + 2·d·c_v` with `c_s = n` (or the `2W − 1` positions of a window),
/// `c_v = c_s` (or `min(K, c_s)` for top-k); widths weighted as in [`row_cost`].
pub fn encoder_cell_cost(
    d: usize,
    m: usize,
    setup: &Setup,
    reference: &Setup,
    layer: u32,
    rows: std::ops::Range<u32>,
    n: u32,
) -> f64 {
    let l = layer as usize;
    if layer == 0 || setup.skip == Some(l) || setup.reuse == Some(l) {
        return 0.0;
    }
    let (d, m, nf) = (d as f64, m as f64, f64::from(n));
    let linear = 6.0 * d * d + 2.0 * d * d + 4.0 * d * m;
    let (cs, cv) = match setup.attention {
        Attention::Window { size } => {
            let w = (2.0 * size as f64 - 1.0).min(nf);
            (w, w)
        }
        Attention::TopK { k } => (nf, nf.min(k as f64)),
        _ => (nf, nf),
    };
    let attention = 2.0 * d * (cs + cv);
    let ref_bits = f64::from(reference.precision.bytes() as u32 * 8);
    let act_bits = f64::from(setup.precision.bytes() as u32 * 8);
    let weight_bits = match setup.quant {
        Some(q) => match q.scheme {
            QuantScheme::Int8Tensor | QuantScheme::Int8Channel => 8.0,
            QuantScheme::Int4Group { .. } => 4.0,
        },
        None => act_bits,
    };
    let per_row = linear * weight_bits / ref_bits + attention * act_bits / ref_bits;
    per_row * f64::from(rows.end.saturating_sub(rows.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheaper_setups_cost_less_and_reduction_order_costs_the_same() {
        let c = ModelConfig::tiny();
        let r = Setup::F32_EAGER;
        let cost = |s: &str| forward_cost(&c, &s.parse().unwrap(), &r, 64);
        let base = cost("f32/attn=eager");
        assert!(base > 0.0);
        assert_eq!(cost("f32/attn=eager/splitk=4/order=decode"), base);
        assert!(cost("bf16/attn=eager") < base);
        assert!(cost("f32/attn=eager/quant=int4-g32") < cost("f32/attn=eager/quant=int8-channel"));
        assert!(cost("f32/attn=window:8") < base);
        assert!(cost("f32/attn=topk:8") < base);
        let skip = cost("f32/attn=eager/skip=2");
        assert!((skip - base * 3.0 / 4.0).abs() < 1e-6 * base);
    }
}
