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

/// How a verifier checks one challenged decoder cell (issue 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMethod {
    /// Recompute the cell: every linear map of its rows, the keys and values of its context
    /// from the opened rows of the layer below, and the attention.
    Recompute,
    /// Check each linear map with Freivalds (`repetitions` secret vectors per weight matrix):
    /// per row and repetition, `v·x` (`in` multiply-adds), `r·y` (`out`) and the rounding bound
    /// `u·|x|` (`in`); the context's key and value projections are checked the same way (their
    /// provenance), and only the nonlinear parts are recomputed (norms, rotary embedding,
    /// attention, SwiGLU, residual adds).
    Freivalds {
        /// Independent secret vectors per weight matrix.
        repetitions: u32,
    },
}

/// Floating-point operations (a multiply-add counts 2) a verifier spends on one challenged
/// decoder cell of `rows` rows whose attention reads `context` rows (the cell's own included;
/// the context of its last row), split by kind.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct VerifierFlops {
    /// The cell's own linear maps (q, o, gate, up, down; recomputed, or Freivalds-checked).
    pub linear: f64,
    /// The key and value projections of the context rows (recomputed, or Freivalds-checked).
    pub context: f64,
    /// Attention of the cell's rows over the context (the same for both methods).
    pub attention: f64,
    /// Norms, rotary embedding, SwiGLU and residual adds (about `12·d + 4·m` per cell row and
    /// `4·d` per context row for its norm).
    pub nonlinear: f64,
}

impl VerifierFlops {
    /// The total.
    pub fn total(&self) -> f64 {
        self.linear + self.context + self.attention + self.nonlinear
    }
}

/// The verifier's FLOPs for one challenged cell (see [`VerifierFlops`]) of a decoder with
/// `config`'s shapes: width `d`, query width `q = n_q·h`, key/value width `k = n_kv·h`, MLP
/// width `m`. With `r` rows, `c` context rows and `t` repetitions:
///
/// ```text
/// Recompute:  linear    = r · (2·d·q + 2·q·d + 3·2·d·m)
///             context   = c · 2·2·d·k
/// Freivalds:  linear    = r · t · [(3·d + 2·q) + (3·q + 2·d) + 2·(3·d + 2·m) + (3·m + 2·d)]
///             context   = c · t · 2·(3·d + 2·k)
/// both:       attention = r · 4·q·c (scores and values, the causal average folded into c)
///             nonlinear = r · (12·d + 4·m) + c · 4·d
/// ```
///
/// Freivalds turns each map's `2·in·out` into `t·(3·in + 2·out)`: at `d = 8192` the linear part
/// drops by three orders of magnitude and attention, which no algebraic check of a linear map
/// covers, dominates.
pub fn verifier_cell_flops(
    config: &ModelConfig,
    rows: u64,
    context: u64,
    method: CheckMethod,
) -> VerifierFlops {
    let (d, h) = (config.hidden_size as f64, config.head_dim() as f64);
    let (q, k, m) = (
        config.num_heads as f64 * h,
        config.num_kv_heads as f64 * h,
        config.intermediate_size as f64,
    );
    let (r, c) = (rows as f64, context as f64);
    let attention = r * 4.0 * q * c;
    let nonlinear = r * (12.0 * d + 4.0 * m) + c * 4.0 * d;
    let (linear, context) = match method {
        CheckMethod::Recompute => (
            r * (2.0 * d * q + 2.0 * q * d + 6.0 * d * m),
            c * 4.0 * d * k,
        ),
        CheckMethod::Freivalds { repetitions } => {
            let t = f64::from(repetitions);
            (
                r * t
                    * ((3.0 * d + 2.0 * q)
                        + (3.0 * q + 2.0 * d)
                        + 2.0 * (3.0 * d + 2.0 * m)
                        + (3.0 * m + 2.0 * d)),
                c * t * 2.0 * (3.0 * d + 2.0 * k),
            )
        }
    };
    VerifierFlops {
        linear,
        context,
        attention,
        nonlinear,
    }
}

/// [`verifier_cell_flops`] of the Freivalds check under a sampled attention check
/// ([`crate::freivalds::AttentionSampling`], specs/freivalds.md §7): of the `n_q` query heads,
/// `s_h = min(heads, n_q)` are recomputed, and of the `c − r` rows before the cell,
/// `s_c = min(context_rows, c − r)` have their provenance checked besides the cell's own `r`:
///
/// ```text
/// attention = r · 4·(s_h·h)·c          (the sampled heads over the whole context)
/// context   = (r + s_c) · t · 2·(3·d + 2·k)
/// nonlinear = r · (12·d + 4·m) + (r + s_c) · 4·d
/// ```
///
/// The linear part is [`verifier_cell_flops`]'s. A full sampling is that function's
/// Freivalds figure exactly.
pub fn sampled_verifier_cell_flops(
    config: &ModelConfig,
    rows: u64,
    context: u64,
    repetitions: u32,
    sampling: &crate::freivalds::AttentionSampling,
) -> VerifierFlops {
    let full = verifier_cell_flops(
        config,
        rows,
        context,
        CheckMethod::Freivalds { repetitions },
    );
    let (d, h) = (config.hidden_size as f64, config.head_dim() as f64);
    let k = config.num_kv_heads as f64 * h;
    let heads = sampling
        .heads
        .map_or(config.num_heads, |s| (s as usize).min(config.num_heads)) as f64;
    let earlier = context.saturating_sub(rows);
    let checked = (rows
        + sampling
            .context_rows
            .map_or(earlier, |s| u64::from(s).min(earlier))) as f64;
    let (r, c, t) = (rows as f64, context as f64, f64::from(repetitions));
    VerifierFlops {
        linear: full.linear,
        context: checked * t * 2.0 * (3.0 * d + 2.0 * k),
        attention: r * 4.0 * heads * h * c,
        nonlinear: r * (12.0 * d + 4.0 * config.intermediate_size as f64) + checked * 4.0 * d,
    }
}

/// The shapes of Llama-3-70B (width 8192, 80 layers, 64 query heads over 8 key-value heads of
/// 128, MLP 28672, vocabulary 128256; Meta's `config.json` for `Meta-Llama-3-70B`), for cost
/// projections only: no such model is built or run here.
pub fn llama3_70b_shapes() -> ModelConfig {
    ModelConfig {
        vocab_size: 128_256,
        hidden_size: 8192,
        num_layers: 80,
        num_heads: 64,
        num_kv_heads: 8,
        intermediate_size: 28_672,
        rope_theta: 500_000.0,
        rms_norm_eps: 1e-5,
        ..ModelConfig::small()
    }
}

/// Bytes of claimed values one challenged decoder cell involves (hidden states f32, sub-layer
/// values of the statement's dtype), for the Freivalds check under `sampling`
/// ([`sampled_verifier_cell_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CellBytes {
    /// What the check reads: the checked rows' inputs and norms, the sampled key-value heads'
    /// keys and values over the whole context (the other heads' only on checked rows), the
    /// cell's own sub-layer and output rows.
    pub read: f64,
    /// What a whole opening holds (specs/protocol.md §4.3): every context row's input and
    /// context sub-layer row (normed, k, v), whatever is sampled, and the cell's rows. The
    /// verifier hashes all of it against the commitment.
    pub opened: f64,
    /// What a drawn opening holds (specs/protocol.md §4.4, a statement committed by head, the
    /// sampled rows whole chunks): exactly what the check reads, `read` (the checked rows'
    /// inputs, norms and every head's keys and values, the drawn heads' keys and values over
    /// the context, the cell's rows), when the drawn heads read `min(s_h, n_kv)` key-value
    /// heads (always for one head; otherwise at most that). Tested against the prover's
    /// openings (crates/model/tests/drawn_openings.rs).
    pub drawn: f64,
}

/// [`CellBytes`] of a cell of `rows` rows over `context` rows (its own included) with the
/// sampled attention check `sampling`, sub-layer values of `b` bytes each (`value_bytes`: 4
/// for f32, 2 for bf16 or f16; the hidden states are f32): with `s_h` sampled heads reading
/// `g = min(s_h, n_kv)` key-value heads (at most) and `r + s_c` checked rows,
///
/// ```text
/// read   = 4·(r + s_c + r)·d + b·[ (r + s_c)·d + c·2·g·h + (r + s_c)·2·(k − g·h) + r·(2·q + 3·d + 3·m) ]
/// opened = 4·(c + r)·d       + b·[ c·(d + 2·k) + r·(2·q + 3·d + 3·m) ]
/// ```
///
/// (`q`, `k`: query and key-value widths; the hidden rows are the checked rows' inputs, or
/// every context row's, and the cell's output rows; the cell's sub-layer rows are q, attn, o,
/// mlp_in, gate, up, act and down).
pub fn sampled_verifier_cell_bytes(
    config: &ModelConfig,
    rows: u64,
    context: u64,
    sampling: &crate::freivalds::AttentionSampling,
    value_bytes: usize,
) -> CellBytes {
    let (d, h) = (config.hidden_size as f64, config.head_dim() as f64);
    let (q, k, m) = (
        config.num_heads as f64 * h,
        config.num_kv_heads as f64 * h,
        config.intermediate_size as f64,
    );
    let heads = sampling
        .heads
        .map_or(config.num_heads, |s| (s as usize).min(config.num_heads));
    let groups = heads.min(config.num_kv_heads) as f64;
    let earlier = context.saturating_sub(rows);
    let checked = (rows
        + sampling
            .context_rows
            .map_or(earlier, |s| u64::from(s).min(earlier))) as f64;
    let (r, c, b) = (rows as f64, context as f64, value_bytes as f64);
    let cell = r * (2.0 * q + 3.0 * d + 3.0 * m);
    let read = 4.0 * (checked + r) * d
        + b * (checked * d + c * 2.0 * groups * h + checked * 2.0 * (k - groups * h) + cell);
    CellBytes {
        read,
        opened: 4.0 * (c + r) * d + b * (c * (d + 2.0 * k) + cell),
        drawn: read,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_everything_costs_the_full_check_and_sampling_less_costs_less() {
        use crate::freivalds::AttentionSampling;
        let c = ModelConfig::small();
        let full = verifier_cell_flops(&c, 16, 128, CheckMethod::Freivalds { repetitions: 2 });
        for all in [
            AttentionSampling::FULL,
            AttentionSampling {
                heads: Some(8),
                context_rows: Some(112),
            },
            AttentionSampling {
                heads: Some(99),
                context_rows: Some(1000),
            },
        ] {
            let s = sampled_verifier_cell_flops(&c, 16, 128, 2, &all);
            assert!(
                (s.total() - full.total()).abs() <= 1e-9 * full.total(),
                "{all:?}"
            );
        }
        let one = sampled_verifier_cell_flops(
            &c,
            16,
            128,
            2,
            &AttentionSampling {
                heads: Some(1),
                context_rows: Some(16),
            },
        );
        assert_eq!(one.linear, full.linear);
        assert!((one.attention - full.attention / 8.0).abs() <= 1e-9 * full.attention);
        assert!((one.context - full.context * 32.0 / 128.0).abs() <= 1e-9 * full.context);
    }

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

    #[test]
    fn freivalds_turns_quadratic_linear_work_into_linear_work() {
        let c = ModelConfig::small();
        let rec = verifier_cell_flops(&c, 16, 128, CheckMethod::Recompute);
        let fr = verifier_cell_flops(&c, 16, 128, CheckMethod::Freivalds { repetitions: 2 });
        assert_eq!(rec.attention, fr.attention);
        assert_eq!(rec.nonlinear, fr.nonlinear);
        assert!(fr.linear * 10.0 < rec.linear, "{fr:?} vs {rec:?}");
        assert!(fr.total() < rec.total());
        // By hand for one row, no context, one repetition, d = q = k = 1, m = 1:
        let unit = ModelConfig {
            hidden_size: 1,
            num_heads: 1,
            num_kv_heads: 1,
            intermediate_size: 1,
            ..ModelConfig::tiny()
        };
        if unit.head_dim() == 1 {
            let f = verifier_cell_flops(&unit, 1, 0, CheckMethod::Freivalds { repetitions: 1 });
            assert_eq!(f.linear, 5.0 + 5.0 + 10.0 + 5.0);
            let r = verifier_cell_flops(&unit, 1, 0, CheckMethod::Recompute);
            assert_eq!(r.linear, 2.0 + 2.0 + 6.0);
        }
    }
}
