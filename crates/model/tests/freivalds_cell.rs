//! A challenged cell checked from its sub-layer values ([`check_cell`], issue 16): an honest
//! prover on this engine passes bitwise at every layer and chunk; a prover whose weights are
//! int8-quantized fails the linear checks; a changed attention output, context key, context
//! norm input or output row fails the check that covers it; bad input is a typed error.

use veritrace_model::freivalds::{
    check_cell, CellCheck, CellClaim, FreivaldsError, Matrix, VerifierKey, VerifierSecret,
};
use veritrace_model::{LlamaModel, Setup, SubLayers, Trace};

const TILE: usize = 8;
const N: usize = 21;

fn prompt() -> Vec<u32> {
    (0..N as u32)
        .map(|i| (7 + 37 * i * i + 11 * i) % 512)
        .collect()
}

struct Fixture {
    model: LlamaModel,
    key: VerifierKey,
    f32: Setup,
}

fn fixture() -> Fixture {
    let model = LlamaModel::preset("tiny").unwrap();
    let key = VerifierKey::build(&VerifierSecret::from_bytes([5; 32]), &model, 2).unwrap();
    Fixture {
        model,
        key,
        f32: "f32/attn=eager".parse().unwrap(),
    }
}

fn rows(x: &[f32], w: usize, a: usize, b: usize) -> Vec<f32> {
    x[a * w..b * w].to_vec()
}

/// The claim of cell (layer, chunk) from a prover's capture.
fn claim_parts(
    model: &LlamaModel,
    trace: &Trace,
    sub: &[SubLayers],
    layer: usize,
    chunk: usize,
) -> (Vec<f32>, Vec<f32>, SubLayers, SubLayers) {
    let d = model.config().hidden_size;
    let layout = veritrace_model::sublayer::SubLayerLayout::of(model.config());
    let s = &sub[layer - 1];
    let (lo, e) = (chunk * TILE, ((chunk + 1) * TILE).min(N));
    let context = layout.rows(s, 0..e, 0..0).expect("context rows");
    let cell = layout.rows(s, 0..0, lo..e).expect("cell rows");
    (
        rows(&trace.layers[layer - 1], d, 0, e),
        rows(&trace.layers[layer], d, lo, e),
        context,
        cell,
    )
}

fn check(
    f: &Fixture,
    layer: usize,
    chunk: usize,
    parts: &(Vec<f32>, Vec<f32>, SubLayers, SubLayers),
) -> CellCheck {
    let claim = CellClaim {
        h_in: &parts.0,
        h_out: &parts.1,
        context: &parts.2,
        cell: &parts.3,
    };
    check_cell(&f.key, &f.model, &f.f32, TILE, layer, chunk, &claim, 0.0).unwrap()
}

#[test]
fn an_honest_cell_passes_bitwise_everywhere() {
    let f = fixture();
    let (trace, sub) = f.model.trace_sublayers(&f.f32, &prompt(), TILE).unwrap();
    for layer in 1..=f.model.config().num_layers {
        for chunk in 0..3 {
            let parts = claim_parts(&f.model, &trace, &sub, layer, chunk);
            let r = check(&f, layer, chunk, &parts);
            assert!(r.passed, "layer {layer} chunk {chunk}: {r:?}");
            assert!(r.nonlinear.iter().all(|&(_, d)| d == 0.0), "{r:?}");
            assert_eq!(r.linear.len(), 7);
        }
    }
}

#[test]
fn cheaper_weights_and_changed_values_fail() {
    let f = fixture();
    let (trace, sub) = f.model.trace_sublayers(&f.f32, &prompt(), TILE).unwrap();
    let (layer, chunk) = (2, 2);
    // int8-quantized weights: the linear maps do not match the key's f32 weights
    let int8: Setup = "f32/attn=eager/quant=int8-channel".parse().unwrap();
    let (t8, s8) = f.model.trace_sublayers(&int8, &prompt(), TILE).unwrap();
    let r = check(
        &f,
        layer,
        chunk,
        &claim_parts(&f.model, &t8, &s8, layer, chunk),
    );
    assert!(!r.passed);
    assert!(r.linear.iter().all(|(_, l)| !l.passed), "{r:?}");

    let honest = claim_parts(&f.model, &trace, &sub, layer, chunk);
    // an attention output changed: the output projection still checks, the attention does not
    let mut p = honest.clone();
    p.3.attn[5] += 1e-3;
    let r = check(&f, layer, chunk, &p);
    assert!(!r.passed);
    assert!(
        r.nonlinear.iter().any(|&(w, d)| w == "attn" && d > 0.0),
        "{r:?}"
    );
    // a key of an earlier position changed: its Freivalds check fails
    let mut p = honest.clone();
    p.2.k[3] += 1e-2;
    let r = check(&f, layer, chunk, &p);
    assert!(!r.passed);
    assert!(
        r.linear.iter().any(|(m, l)| *m == Matrix::K && !l.passed),
        "{r:?}"
    );
    // a context row's normed input changed (and its k, v made consistent with it would still
    // fail the norm recompute): the norm check fails
    let mut p = honest.clone();
    p.2.normed[1] += 1e-3;
    let r = check(&f, layer, chunk, &p);
    assert!(
        r.nonlinear.iter().any(|&(w, d)| w == "normed" && d > 0.0),
        "{r:?}"
    );
    assert!(!r.passed);
    // an output row changed
    let mut p = honest.clone();
    p.1[0] += 1e-4;
    let r = check(&f, layer, chunk, &p);
    assert!(
        r.nonlinear.iter().any(|&(w, d)| w == "h_out" && d > 0.0),
        "{r:?}"
    );
    assert!(!r.passed);
}

#[test]
fn bad_claims_are_typed_errors() {
    let f = fixture();
    let (trace, sub) = f.model.trace_sublayers(&f.f32, &prompt(), TILE).unwrap();
    let honest = claim_parts(&f.model, &trace, &sub, 1, 1);
    let run = |p: &(Vec<f32>, Vec<f32>, SubLayers, SubLayers), setup: &Setup, chunk: usize| {
        let claim = CellClaim {
            h_in: &p.0,
            h_out: &p.1,
            context: &p.2,
            cell: &p.3,
        };
        check_cell(&f.key, &f.model, setup, TILE, 1, chunk, &claim, 0.0)
    };
    let bf16: Setup = "bf16/attn=eager".parse().unwrap();
    assert!(matches!(
        run(&honest, &bf16, 1),
        Err(FreivaldsError::Unsupported(_))
    ));
    assert!(
        run(&honest, &f.f32, 0).is_err(),
        "rows that do not end in chunk 0"
    );
    let mut p = honest.clone();
    p.1[2] = f32::NAN;
    assert!(matches!(
        run(&p, &f.f32, 1),
        Err(FreivaldsError::NonFinite { .. })
    ));
    let mut p = honest.clone();
    p.3.attn.pop();
    assert!(run(&p, &f.f32, 1).is_err());
    let mut p = honest;
    p.2.k[0] = f32::INFINITY;
    assert!(matches!(
        run(&p, &f.f32, 1),
        Err(FreivaldsError::NonFinite { .. })
    ));
    // a key of another model
    let other = LlamaModel::preset("small").unwrap();
    let other_key = VerifierKey::build(&VerifierSecret::from_bytes([5; 32]), &other, 1).unwrap();
    let p = claim_parts(&f.model, &trace, &sub, 1, 1);
    let claim = CellClaim {
        h_in: &p.0,
        h_out: &p.1,
        context: &p.2,
        cell: &p.3,
    };
    assert!(matches!(
        check_cell(&other_key, &f.model, &f.f32, TILE, 1, 1, &claim, 0.0),
        Err(FreivaldsError::ModelMismatch { .. })
    ));
}
