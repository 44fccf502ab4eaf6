//! The batch-invariant kernels (`kernels=invariant`, issue 17) in the decoder: the whole
//! forward equals, bit for bit, the per-cell recompute of every cell at every chunk size, the
//! same forward on any thread count, and generation with a KV cache; the values are those of
//! the candle kernels up to rounding; setups the kernels do not implement are refused.

use veritrace_model::{CellInputs, Family, Kernels, LlamaModel, ModelConfig, Setup};

fn setup(s: &str) -> Setup {
    s.parse().expect("setup")
}

fn tokens(n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (5 + 31 * i * i + 7 * i) % vocab)
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every cell of every layer recomputed alone, at several chunk sizes, equals the forward's
/// rows of one trace (computed once, as one block of all rows).
fn cells_equal_the_forward(model: &LlamaModel, setup: &Setup, n: usize) {
    let c = model.config();
    let d = c.hidden_size;
    let toks = tokens(n, c.vocab_size as u32);
    let trace = model.trace(setup, &toks, 16).expect("trace");
    // the chunk is not the compute tile: another tile gives the same trace
    let other = model.trace(setup, &toks, 5).expect("trace");
    assert_eq!(trace.layers.len(), other.layers.len());
    for (a, b) in trace.layers.iter().zip(&other.layers) {
        assert_eq!(
            bits(a),
            bits(b),
            "{setup}: the trace depends on the chunk size"
        );
    }
    for tile in [1usize, 3, 8, 16, 64] {
        for chunk in 0..n.div_ceil(tile) {
            let e = ((chunk + 1) * tile).min(n);
            let rows = chunk * tile..e;
            let got = model
                .recompute_cell(setup, tile, 0, chunk, CellInputs::Tokens(&toks[..e]))
                .expect("layer 0");
            assert_eq!(bits(&got), bits(&trace.layers[0][rows.start * d..e * d]));
            for l in 1..=c.num_layers {
                let h_in = &trace.layers[l - 1][..e * d];
                let got = model
                    .recompute_cell(setup, tile, l, chunk, CellInputs::Hidden(h_in))
                    .expect("cell");
                assert_eq!(
                    bits(&got),
                    bits(&trace.layers[l][rows.start * d..e * d]),
                    "{setup}: layer {l}, chunk {chunk} of {tile}"
                );
            }
        }
    }
}

#[test]
fn every_cell_at_every_chunk_size_is_the_forward_bitwise() {
    let tiny = LlamaModel::preset("tiny").expect("tiny");
    for s in [
        "f32/attn=eager/kernels=invariant",
        "f32/attn=window:7/kernels=invariant",
        "f32/attn=eager/quant=int8-channel/kernels=invariant",
        "f32/attn=eager/skip=2/kernels=invariant",
        "bf16/attn=eager/kernels=invariant",
        "f16/attn=window:7/kernels=invariant",
        "bf16/attn=eager/quant=int8-channel/kernels=invariant",
    ] {
        cells_equal_the_forward(&tiny, &setup(s), 37);
    }
    let small = LlamaModel::preset("small").expect("small");
    cells_equal_the_forward(&small, &setup("f32/attn=eager/kernels=invariant"), 70);
    cells_equal_the_forward(&small, &setup("bf16/attn=eager/kernels=invariant"), 40);
    // Qwen2 (query, key and value biases) and Mistral (the model's own sliding window)
    let mut c = ModelConfig::tiny();
    c.family = Family::Qwen2;
    c.num_layers = 2;
    cells_equal_the_forward(
        &LlamaModel::new(c).expect("qwen2"),
        &setup("f32/attn=eager/kernels=invariant"),
        29,
    );
    let mut c = ModelConfig::tiny();
    c.family = Family::Mistral;
    c.sliding_window = Some(5);
    c.num_layers = 2;
    cells_equal_the_forward(
        &LlamaModel::new(c).expect("mistral"),
        &setup("f32/attn=eager/kernels=invariant"),
        29,
    );
}

#[test]
fn the_forward_is_the_same_on_any_thread_count() {
    let model = LlamaModel::preset("small").expect("small");
    let toks = tokens(150, 2048);
    for s in [
        "f32/attn=eager/kernels=invariant",
        "bf16/attn=eager/kernels=invariant",
    ] {
        let s = setup(s);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool")
                .install(|| model.trace(&s, &toks, 16).expect("trace"))
        };
        let one = run(1);
        for threads in [2, 3] {
            let t = run(threads);
            for (a, b) in one.layers.iter().zip(&t.layers) {
                assert_eq!(bits(a), bits(b), "{s}: {threads} threads");
            }
        }
    }
}

#[test]
fn generation_with_a_kv_cache_is_greedy_on_the_full_forward() {
    let model = LlamaModel::preset("tiny").expect("tiny");
    let d = model.config().hidden_size;
    for s in [
        "f32/attn=eager/kernels=invariant",
        "f32/attn=window:6/kernels=invariant",
        "bf16/attn=eager/kernels=invariant",
        "f16/attn=eager/kernels=invariant",
    ] {
        let s = setup(s);
        let prompt = tokens(21, 512);
        let out = model.generate(&s, &prompt, 12, 8).expect("generate");
        assert_eq!(out.len(), 12);
        // each generated token is the argmax of the full forward's last row before it
        let mut seq = prompt.clone();
        seq.extend(&out);
        let trace = model.trace(&s, &seq, 8).expect("trace");
        let last = trace.layers.last().expect("layers");
        for (i, &t) in out.iter().enumerate() {
            let p = prompt.len() - 1 + i;
            let want = model
                .next_token_from_row(&s, &last[p * d..(p + 1) * d])
                .expect("token");
            assert_eq!(t, want, "{s}: token {i}");
        }
    }
}

#[test]
fn the_values_are_the_candle_kernels_up_to_rounding() {
    let model = LlamaModel::preset("small").expect("small");
    let toks = tokens(48, 2048);
    let a = model
        .trace(&setup("f32/attn=eager"), &toks, 16)
        .expect("candle");
    let b = model
        .trace(&setup("f32/attn=eager/kernels=invariant"), &toks, 16)
        .expect("invariant");
    for (l, (x, y)) in a.layers.iter().zip(&b.layers).enumerate() {
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let dev = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(dev <= 1e-4 * scale, "layer {l}: {dev} against {scale}");
        if l > 0 {
            // another reduction order: not bitwise (else this test checks nothing)
            assert_ne!(bits(x), bits(y), "layer {l}");
        }
    }
}

/// Under bf16 and f16 the invariant kernels store every value in that precision (each
/// operation computed in f32 and rounded once): every stored value is representable, and the
/// values are candle's of the same precision (which rounds after each elementary operation)
/// up to that precision's rounding, far closer to them than to the f32 forward's
/// deviation-free values would allow for a wrong precision.
#[test]
fn bf16_and_f16_store_their_precision_and_are_the_candle_kernels_up_to_rounding() {
    let model = LlamaModel::preset("small").expect("small");
    let toks = tokens(48, 2048);
    let rel = |x: &[f32], y: &[f32]| {
        let num: f64 = x.iter().zip(y).map(|(a, b)| f64::from(a - b).powi(2)).sum();
        let den: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
        (num / den).sqrt()
    };
    let f32_trace = model
        .trace(&setup("f32/attn=eager/kernels=invariant"), &toks, 16)
        .expect("f32");
    for (p, unit) in [("bf16", 2f64.powi(-8)), ("f16", 2f64.powi(-11))] {
        let inv = model
            .trace(
                &setup(&format!("{p}/attn=eager/kernels=invariant")),
                &toks,
                16,
            )
            .expect("invariant");
        let candle = model
            .trace(&setup(&format!("{p}/attn=eager")), &toks, 16)
            .expect("candle");
        for (l, ((x, y), f)) in inv
            .layers
            .iter()
            .zip(&candle.layers)
            .zip(&f32_trace.layers)
            .enumerate()
        {
            for v in x {
                let stored = if p == "bf16" {
                    half::bf16::from_f32(*v).to_f32()
                } else {
                    half::f16::from_f32(*v).to_f32()
                };
                assert_eq!(v.to_bits(), stored.to_bits(), "{p} layer {l}: {v}");
            }
            // both are the f32 forward up to a few units of the precision's rounding per
            // layer, and within that of each other
            let (to_candle, to_f32) = (rel(y, x), rel(f, x));
            assert!(to_candle < 8.0 * unit, "{p} layer {l}: {to_candle}");
            assert!(to_f32 < 8.0 * unit, "{p} layer {l}: {to_f32}");
            if l > 0 {
                // rounded: not the f32 values (else this test checks nothing)
                assert!(to_f32 > 0.0, "{p} layer {l}");
            }
        }
    }
}

#[test]
fn setups_the_kernels_do_not_implement_are_refused() {
    let s = setup("f32/attn=eager/kernels=invariant");
    assert_eq!(s.kernels, Kernels::Invariant);
    assert_eq!(s.to_string(), "f32/attn=eager/kernels=invariant");
    for bad in [
        "f32/attn=tiled:16/kernels=invariant",
        "f32/attn=topk:4/kernels=invariant",
        "f32/attn=eager/splitk=2/kernels=invariant",
        "f32/attn=eager/batch=2/kernels=invariant",
        "f32/attn=eager/kernels=candle",
        "f32/attn=eager/kernels=fast",
        "f32/kernels=invariant/attn=eager",
    ] {
        assert!(bad.parse::<Setup>().is_err(), "{bad} parsed");
    }
}

/// The sub-layer values under the invariant kernels: a cell's capture equals the whole
/// forward's at every chunk size, and the algebraic check (Freivalds on the linear maps, the
/// nonlinear parts recomputed by the same kernels) passes an honest cell bitwise and fails an
/// int8 forward claimed as f32.
#[test]
fn the_algebraic_check_runs_on_the_invariant_kernels() {
    use veritrace_model::freivalds::{check_cell, CellClaim, VerifierKey, VerifierSecret};
    use veritrace_model::SubLayers;
    let model = LlamaModel::preset("small").expect("small");
    let c = model.config().clone();
    let d = c.hidden_size;
    let s = setup("f32/attn=eager/kernels=invariant");
    let key = VerifierKey::build(&VerifierSecret::from_bytes([9; 32]), &model, 1).expect("key");
    let n = 45;
    let toks = tokens(n, 2048);
    let (trace, sub) = model.trace_sublayers(&s, &toks, 16).expect("trace");
    let rows = |x: &[f32], w: usize, a: usize, b: usize| x[a * w..b * w].to_vec();
    let layout = veritrace_model::sublayer::SubLayerLayout::of(&c);
    let claim_of = |sub: &SubLayers, lo: usize, e: usize| layout.rows(sub, 0..e, lo..e).unwrap();
    for tile in [4usize, 16] {
        for (layer, chunk) in [(1usize, 0usize), (3, 1), (8, (n - 1) / tile)] {
            let (lo, e) = (chunk * tile, ((chunk + 1) * tile).min(n));
            let h_in = rows(&trace.layers[layer - 1], d, 0, e);
            let (out, cell) = model
                .recompute_cell_sublayers(&s, tile, layer, chunk, &h_in)
                .expect("cell capture");
            assert_eq!(bits(&out), bits(&trace.layers[layer][lo * d..e * d]));
            let whole = claim_of(&sub[layer - 1], lo, e);
            assert_eq!(
                bits(&cell.attn),
                bits(&whole.attn),
                "layer {layer} chunk {chunk}"
            );
            assert_eq!(bits(&cell.down), bits(&whole.down));
            let context = SubLayers {
                normed: whole.normed.clone(),
                k: whole.k.clone(),
                v: whole.v.clone(),
                ..SubLayers::default()
            };
            let h_out = rows(&trace.layers[layer], d, lo, e);
            let claim = CellClaim {
                h_in: &h_in,
                h_out: &h_out,
                context: &context,
                cell: &whole,
            };
            let check =
                check_cell(&key, &model, &s, tile, layer, chunk, &claim, 0.0).expect("check");
            assert!(
                check.passed,
                "layer {layer} chunk {chunk} of {tile}: {check:?}"
            );
        }
    }
    // an int8 forward's values claimed under the f32 setup fail
    let int8 = setup("f32/attn=eager/quant=int8-channel/kernels=invariant");
    let (bad_trace, bad_sub) = model.trace_sublayers(&int8, &toks, 16).expect("int8");
    let (layer, chunk, tile) = (3usize, 1usize, 16usize);
    let (lo, e) = (chunk * tile, (chunk + 1) * tile);
    let h_in = rows(&bad_trace.layers[layer - 1], d, 0, e);
    let h_out = rows(&bad_trace.layers[layer], d, lo, e);
    let whole = claim_of(&bad_sub[layer - 1], lo, e);
    let context = SubLayers {
        normed: whole.normed.clone(),
        k: whole.k.clone(),
        v: whole.v.clone(),
        ..SubLayers::default()
    };
    let claim = CellClaim {
        h_in: &h_in,
        h_out: &h_out,
        context: &context,
        cell: &whole,
    };
    let check = check_cell(&key, &model, &s, tile, layer, chunk, &claim, 0.0).expect("check");
    assert!(!check.passed);
}

/// Freivalds keys of a setup's own weights (`VerifierKey::for_setup`: the same secret vectors,
/// `v` and `u` of the weights as the setup prepares them, outputs rounded at its precision): an
/// honest bf16 cell (the invariant kernels and candle's), an f16 cell and an int8 cell pass
/// with their setup's key; the checkpoint's f32 key refuses those setups with a typed error;
/// a bf16 forward of int8 weights claimed as bf16 fails; and the derived key still encodes as
/// the checkpoint's.
#[test]
fn keys_of_a_setups_weights_check_its_cells() {
    use veritrace_model::freivalds::{
        check_cell, CellClaim, FreivaldsError, VerifierKey, VerifierSecret,
    };
    use veritrace_model::SubLayers;
    let model = LlamaModel::preset("tiny").expect("tiny");
    let c = model.config().clone();
    let d = c.hidden_size;
    let key = VerifierKey::build(&VerifierSecret::from_bytes([7; 32]), &model, 2).expect("key");
    let n = 29;
    let toks = tokens(n, c.vocab_size as u32);
    let layout = veritrace_model::sublayer::SubLayerLayout::of(&c);
    let (layer, tile) = (3usize, 8usize);
    let chunk = (n - 1) / tile;
    let (lo, e) = (chunk * tile, n);
    // the claim of cell (layer, chunk) from a forward under `run`, checked as `claimed`
    let check = |run: &Setup, claimed: &Setup, key: &VerifierKey| {
        let (trace, sub) = model.trace_sublayers(run, &toks, tile).expect("trace");
        let whole = layout.rows(&sub[layer - 1], 0..e, lo..e).unwrap();
        let context = SubLayers {
            normed: whole.normed.clone(),
            k: whole.k.clone(),
            v: whole.v.clone(),
            ..SubLayers::default()
        };
        let h_in = trace.layers[layer - 1][..e * d].to_vec();
        let h_out = trace.layers[layer][lo * d..e * d].to_vec();
        let claim = CellClaim {
            h_in: &h_in,
            h_out: &h_out,
            context: &context,
            cell: &whole,
        };
        check_cell(key, &model, claimed, tile, layer, chunk, &claim, 0.0)
    };
    for s in [
        "bf16/attn=eager/kernels=invariant",
        "bf16/attn=eager",
        "f16/attn=eager/kernels=invariant",
        "f32/attn=eager/quant=int8-channel/kernels=invariant",
    ] {
        let s = setup(s);
        let derived = key.for_setup(&model, &s).expect("derived key");
        assert_ne!(derived.weights(), "f32", "{s}");
        let got = check(&s, &s, &derived).expect("check");
        assert!(got.passed, "{s}: {got:?}");
        // the checkpoint's key does not hold these weights
        assert!(
            matches!(check(&s, &s, &key), Err(FreivaldsError::Unsupported(_))),
            "{s}"
        );
        // a derived key is still written as the checkpoint's key
        assert_eq!(derived.to_bytes(), key.to_bytes());
    }
    // int4 weights run in bf16, claimed as plain bf16: the products are not the bf16 weights'
    // (int8's error is within the bf16 outputs' rounding term of the rigorous bound)
    let bf16 = setup("bf16/attn=eager/kernels=invariant");
    let derived = key.for_setup(&model, &bf16).expect("derived key");
    let worst = |c: &veritrace_model::freivalds::CellCheck| {
        c.linear
            .iter()
            .map(|(_, l)| l.worst_ratio)
            .fold(0f64, f64::max)
    };
    let honest = check(&bf16, &bf16, &derived).expect("check");
    for q in ["int8-channel", "int4-g32"] {
        let got = check(
            &setup(&format!("bf16/attn=eager/quant={q}/kernels=invariant")),
            &bf16,
            &derived,
        )
        .expect("check");
        // int8: above the honest cell's worst ratio (0.25 here, the bf16 outputs' rounding)
        // but inside the bound (0.61); int4: far outside it (8.6)
        assert!(worst(&got) > worst(&honest), "{q}: {got:?}");
        assert_eq!(got.passed, q == "int8-channel", "{q}: {got:?}");
    }
    // the f32 setup's derived key is the key itself
    assert_eq!(
        key.for_setup(&model, &setup("f32/attn=eager"))
            .expect("f32"),
        key
    );
}
