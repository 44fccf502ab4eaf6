//! Sub-layer capture (issue 16's trace level, model side): [`LlamaModel::trace_sublayers`]
//! leaves the hidden states bitwise unchanged, and what it records is what the forward
//! computed: every linear map's output is its input times the weight (to f32 rounding), the
//! residual adds reproduce `h_l` bit for bit, and `act = SiLU(gate) ⊙ up`.

use std::collections::HashMap;

use veritrace_model::{LlamaModel, ModelError, Nonlinear, Setup, SubLayers};

fn prompt(n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (7 + 37 * i * i + 11 * i) % 512)
        .collect()
}

/// `max_i |y_i − (x W^T)_i| / max_i |(x W^T)_i|` over all rows, computed in f64.
fn linear_error(x: &[f32], w: &[f32], y: &[f32], inp: usize, out: usize) -> f64 {
    let rows = x.len() / inp;
    assert_eq!(y.len(), rows * out);
    let (mut worst, mut scale) = (0f64, 0f64);
    for r in 0..rows {
        for o in 0..out {
            let exact: f64 = (0..inp)
                .map(|i| f64::from(x[r * inp + i]) * f64::from(w[o * inp + i]))
                .sum();
            worst = worst.max((f64::from(y[r * out + o]) - exact).abs());
            scale = scale.max(exact.abs());
        }
    }
    worst / scale.max(1e-30)
}

fn check_layer(
    i: usize,
    s: &SubLayers,
    w: &HashMap<String, Vec<f32>>,
    h_in: &[f32],
    h_out: &[f32],
    dims: (usize, usize, usize, usize),
) {
    let (d, qd, kvd, m) = dims;
    let p = |name: &str| &w[&format!("model.layers.{i}.{name}.weight")];
    for (what, x, wt, y, inp, out) in [
        ("q", &s.normed, p("self_attn.q_proj"), &s.q, d, qd),
        ("k", &s.normed, p("self_attn.k_proj"), &s.k, d, kvd),
        ("v", &s.normed, p("self_attn.v_proj"), &s.v, d, kvd),
        ("o", &s.attn, p("self_attn.o_proj"), &s.o, qd, d),
        ("gate", &s.mlp_in, p("mlp.gate_proj"), &s.gate, d, m),
        ("up", &s.mlp_in, p("mlp.up_proj"), &s.up, d, m),
        ("down", &s.act, p("mlp.down_proj"), &s.down, m, d),
    ] {
        let e = linear_error(x, wt, y, inp, out);
        // f32 accumulation over at most a few hundred terms: far below 1e-5 of the scale.
        assert!(e < 1e-5, "layer {i} {what}: relative error {e:e}");
    }
    // The residual adds, in f32 as the forward does them: bitwise.
    for (j, &h) in h_out.iter().enumerate() {
        let a = h_in[j] + s.o[j];
        assert_eq!(
            (a + s.down[j]).to_bits(),
            h.to_bits(),
            "layer {i} row element {j}"
        );
    }
    // SwiGLU: act = SiLU(gate) * up, to f32 rounding of the activation.
    for ((&g, &u), &a) in s.gate.iter().zip(&s.up).zip(&s.act) {
        let want = f64::from(g) / (1.0 + (-f64::from(g)).exp()) * f64::from(u);
        assert!(
            (f64::from(a) - want).abs() <= 1e-5 * want.abs().max(1e-3),
            "layer {i}: act {a} vs {want}"
        );
    }
}

#[test]
fn sublayer_capture_is_what_the_forward_computed() {
    let model = LlamaModel::preset("tiny").unwrap();
    let c = model.config().clone();
    let (d, hd) = (c.hidden_size, c.head_dim());
    let dims = (
        d,
        c.num_heads * hd,
        c.num_kv_heads * hd,
        c.intermediate_size,
    );
    let weights: HashMap<String, Vec<f32>> = model
        .named_tensors()
        .unwrap()
        .into_iter()
        .map(|(name, _, v)| (name, v))
        .collect();
    let setup: Setup = "f32/attn=eager".parse().unwrap();
    // 21 tokens in tiles of 8: the last tile is partial.
    let tokens = prompt(21);
    let plain = model.trace(&setup, &tokens, 8).unwrap();
    let (trace, sub) = model.trace_sublayers(&setup, &tokens, 8).unwrap();
    assert!(
        trace.bitwise_eq(&plain),
        "capture changed the hidden states"
    );
    assert_eq!(sub.len(), c.num_layers);
    for (i, s) in sub.iter().enumerate() {
        assert_eq!(s.normed.len(), 21 * d);
        assert_eq!(s.act.len(), 21 * c.intermediate_size);
        check_layer(i, s, &weights, &trace.layers[i], &trace.layers[i + 1], dims);
    }
    // Tiled attention too: the capture is the same shape and the adds still reproduce h_l.
    let tiled: Setup = "f32/attn=tiled:4".parse().unwrap();
    let (t2, s2) = model.trace_sublayers(&tiled, &tokens, 8).unwrap();
    assert!(t2.bitwise_eq(&model.trace(&tiled, &tokens, 8).unwrap()));
    for (i, s) in s2.iter().enumerate() {
        check_layer(i, s, &weights, &t2.layers[i], &t2.layers[i + 1], dims);
    }
}

#[test]
fn sublayer_capture_refuses_skipped_and_reused_layers() {
    let model = LlamaModel::preset("tiny").unwrap();
    for s in ["f32/attn=eager/skip=1", "f32/attn=eager/reuse=2"] {
        let setup: Setup = s.parse().unwrap();
        let e = model.trace_sublayers(&setup, &prompt(5), 8).unwrap_err();
        assert!(matches!(e, ModelError::UnsupportedSetup(_)), "{s}: {e}");
    }
}

/// Rows `lo..hi` of a `width`-wide row-major vector.
fn rows(x: &[f32], width: usize, lo: usize, hi: usize) -> Vec<f32> {
    x[lo * width..hi * width].to_vec()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn nonlinear_parts_recompute_bitwise_from_claimed_linear_outputs() {
    let model = LlamaModel::preset("tiny").unwrap();
    let c = model.config().clone();
    let (d, hd) = (c.hidden_size, c.head_dim());
    let (qd, kvd, m) = (c.num_heads * hd, c.num_kv_heads * hd, c.intermediate_size);
    let tokens = prompt(21);
    let tile = 8;
    for setup in ["f32/attn=eager", "f32/attn=tiled:4", "bf16/attn=eager"] {
        let setup: Setup = setup.parse().unwrap();
        let (trace, sub) = model.trace_sublayers(&setup, &tokens, tile).unwrap();
        for layer in 1..=c.num_layers {
            let s = &sub[layer - 1];
            for chunk in 0..3 {
                let (lo, e) = (chunk * tile, ((chunk + 1) * tile).min(21));
                let cell = SubLayers {
                    q: rows(&s.q, qd, lo, e),
                    o: rows(&s.o, d, lo, e),
                    gate: rows(&s.gate, m, lo, e),
                    up: rows(&s.up, m, lo, e),
                    down: rows(&s.down, d, lo, e),
                    ..SubLayers::default()
                };
                let h_in = rows(&trace.layers[layer - 1], d, 0, e);
                let (k, v) = (rows(&s.k, kvd, 0, e), rows(&s.v, kvd, 0, e));
                let got: Nonlinear = model
                    .recompute_nonlinear(&setup, tile, layer, chunk, &h_in, &k, &v, &cell)
                    .unwrap();
                let want = Nonlinear {
                    normed: rows(&s.normed, d, lo, e),
                    attn: rows(&s.attn, qd, lo, e),
                    mlp_in: rows(&s.mlp_in, d, lo, e),
                    act: rows(&s.act, m, lo, e),
                    h_out: rows(&trace.layers[layer], d, lo, e),
                };
                for (what, g, w) in [
                    ("normed", &got.normed, &want.normed),
                    ("attn", &got.attn, &want.attn),
                    ("mlp_in", &got.mlp_in, &want.mlp_in),
                    ("act", &got.act, &want.act),
                    ("h_out", &got.h_out, &want.h_out),
                ] {
                    assert_eq!(
                        bits(g),
                        bits(w),
                        "{setup} layer {layer} chunk {chunk}: {what}"
                    );
                }
                // A key of an earlier position changed: the attention no longer matches.
                if chunk > 0 {
                    let mut k2 = k.clone();
                    k2[3] += 0.25;
                    let bad = model
                        .recompute_nonlinear(&setup, tile, layer, chunk, &h_in, &k2, &v, &cell)
                        .unwrap();
                    assert_ne!(bits(&bad.attn), bits(&want.attn));
                }
            }
        }
    }
}

#[test]
fn nonlinear_recompute_refuses_bad_input_with_typed_errors() {
    let model = LlamaModel::preset("tiny").unwrap();
    let c = model.config().clone();
    let setup: Setup = "f32/attn=eager".parse().unwrap();
    let (trace, sub) = model.trace_sublayers(&setup, &prompt(8), 8).unwrap();
    let s = &sub[0];
    let h = &trace.layers[0];
    let ok = |cell: &SubLayers, h: &[f32], k: &[f32]| {
        model.recompute_nonlinear(&setup, 8, 1, 0, h, k, &s.v, cell)
    };
    assert!(ok(s, h, &s.k).is_ok());
    // wrong lengths
    let mut short = s.clone();
    short.q.pop();
    assert!(matches!(
        ok(&short, h, &s.k),
        Err(ModelError::WrongLength { .. })
    ));
    assert!(matches!(
        ok(s, &h[..h.len() - 1], &s.k),
        Err(ModelError::WrongLength { .. })
    ));
    // NaN
    let mut nan = s.k.clone();
    nan[0] = f32::NAN;
    assert!(matches!(ok(s, h, &nan), Err(ModelError::NonFinite { .. })));
    // layer 0 and beyond the model, a chunk the rows do not reach
    for layer in [0, c.num_layers + 1] {
        assert!(model
            .recompute_nonlinear(&setup, 8, layer, 0, h, &s.k, &s.v, s)
            .is_err());
    }
    assert!(model
        .recompute_nonlinear(&setup, 8, 1, 1, h, &s.k, &s.v, s)
        .is_err());
    // row-by-row decode order computes in blocks of one row
    let decode: Setup = "f32/attn=eager/order=decode".parse().unwrap();
    assert!(matches!(
        model.recompute_nonlinear(&decode, 8, 1, 0, h, &s.k, &s.v, s),
        Err(ModelError::UnsupportedSetup(_))
    ));
}
