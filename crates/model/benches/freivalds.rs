//! Freivalds checks against recompute (criterion), on the `small` preset (hidden 512, MLP 1376):
//! for one token row of layer 1, checking all seven linear maps (q, k, v, o, gate, up, down)
//! with [`check_linear`] given their inputs and claimed outputs, against recomputing them (the
//! seven one-row matmuls `x · Wᵀ` on candle's CPU, as the f32 forward computes them), in the
//! same run; then the time to build the whole model's verifier key (t = 1 and t = 4), whose
//! encoded size is printed.
//!
//! `freivalds_small_cell`: a whole challenged cell of `small` (layer 4, the last 16-row chunk of
//! 128 tokens, f32 eager): recomputing it as today's verifier does
//! ([`LlamaModel::recompute_cell`] from the 128 opened rows of the layer below) against checking
//! it from its sub-layer values with [`check_cell`] (issue 16): Freivalds on the cell's q, o,
//! gate, up and down rows and on the key and value rows of all 128 context positions, the
//! context rows' attention norms recomputed by the engine, and the nonlinear parts recomputed
//! ([`LlamaModel::recompute_nonlinear`]: rotary embedding, attention, SwiGLU, residuals) and
//! compared bitwise.
//!
//! `freivalds_small_cell_invariant`: the same under `kernels=invariant` (issue 17): the recompute
//! and the check's nonlinear parts on the batch-invariant kernels.
//!
//! `sublayer_prover_cost`: what the sub-layer trace level would cost a prover on `small` (128
//! tokens, tile 16, f32 eager): the traced forward with and without the sub-layer capture, and
//! committing (BLAKE3 Merkle tree) the hidden-state trace against the sub-layer values laid out
//! as one `[tokens, width]` layer per decoder layer; the bytes per token of each are printed.
//!
//! `verifier_cost_model`: one cell recomputed on `small` and on MiniLM beside the FLOPs the
//! verifier cost model counts for each (a check of the model before it projects 70B shapes).
//!
//! Run: `cargo bench -p veritrace-model --bench freivalds`.

use std::collections::HashMap;
use std::hint::black_box;

use candle_core::{Device, Tensor};
use criterion::Criterion;
use veritrace_model::freivalds::{
    check_cell, check_cell_sampled, check_linear, AttentionSampling, CellClaim, Matrix,
    VerifierKey, VerifierSecret,
};
use veritrace_model::{CellInputs, LlamaModel, Setup, SubLayers};

/// Deterministic inputs in ±1 (the scale of normed activations).
fn inputs(seed: u32, n: usize) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = (i ^ seed.rotate_left(16)).wrapping_mul(0x9E37_79B9);
            (h >> 8) as f32 / 8_388_608.0 - 1.0
        })
        .collect()
}

/// One linear map of the layer: its id, weight tensor, input row (as a tensor and as f32) and
/// claimed (honest) output.
struct Map {
    matrix: Matrix,
    w: Tensor,
    xt: Tensor,
    x: Vec<f32>,
    y: Vec<f32>,
}

fn bench(c: &mut Criterion) {
    let model = LlamaModel::preset("small").expect("small");
    let secret = VerifierSecret::from_bytes([0x42; 32]);
    let key = VerifierKey::build(&secret, &model, 1).expect("key");
    let weights: HashMap<String, Vec<f32>> = model
        .named_tensors()
        .expect("weights")
        .into_iter()
        .map(|(n, _, d)| (n, d))
        .collect();
    let layer = 1;
    // Per map: the weight tensor, the input row, its claimed (honest) output.
    let maps: Vec<Map> = Matrix::LAYER
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            let (out, inp) = key.dims().shape(m);
            let w = Tensor::from_slice(&weights[&m.tensor_name(layer)], (out, inp), &Device::Cpu)
                .expect("w");
            let x = inputs(i as u32, inp);
            let xt = Tensor::from_slice(&x, (1, inp), &Device::Cpu).expect("x");
            let y = xt
                .matmul(&w.t().expect("t"))
                .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
                .expect("y");
            Map {
                matrix: m,
                w,
                xt,
                x,
                y,
            }
        })
        .collect();
    for m in &maps {
        let check = check_linear(&key, layer, m.matrix, &m.x, &m.y, 1).expect("check");
        assert!(check.passed, "{:?}: {check:?}", m.matrix);
    }

    let mut g = c.benchmark_group("freivalds_small_layer_row");
    g.bench_function("freivalds_7_maps_t1", |b| {
        b.iter(|| {
            for m in &maps {
                black_box(
                    check_linear(&key, layer, m.matrix, black_box(&m.x), black_box(&m.y), 1)
                        .expect("check"),
                );
            }
        })
    });
    g.bench_function("recompute_7_maps", |b| {
        b.iter(|| {
            for m in &maps {
                black_box(
                    black_box(&m.xt)
                        .matmul(&m.w.t().expect("t"))
                        .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
                        .expect("matmul"),
                );
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("freivalds_small_key_build");
    g.sample_size(10);
    for t in [1u32, 4] {
        let key = VerifierKey::build(&secret, &model, t).expect("key");
        eprintln!(
            "small verifier key, t = {t}: {} bytes ({:.2} MiB)",
            key.to_bytes().len(),
            key.to_bytes().len() as f64 / (1 << 20) as f64
        );
        g.bench_function(format!("build_t{t}"), |b| {
            b.iter(|| black_box(VerifierKey::build(&secret, &model, t).expect("key")))
        });
    }
    g.finish();
}

fn cell(c: &mut Criterion) {
    cell_under(c, "f32/attn=eager", "freivalds_small_cell");
    cell_under(
        c,
        "f32/attn=eager/kernels=invariant",
        "freivalds_small_cell_invariant",
    );
}

/// The whole-cell comparison under one setup: candle's kernels, or the batch-invariant ones
/// (issue 17), whose recompute and whose nonlinear parts run on the same kernels.
fn cell_under(c: &mut Criterion, setup: &str, group: &str) {
    let model = LlamaModel::preset("small").expect("small");
    let cfg = model.config().clone();
    let d = cfg.hidden_size;
    let setup: Setup = setup.parse().expect("setup");
    let secret = VerifierSecret::from_bytes([0x42; 32]);
    let key = VerifierKey::build(&secret, &model, 1).expect("key");
    let (n, tile, layer, chunk) = (128usize, 16usize, 4usize, 7usize);
    let tokens: Vec<u32> = (0..n as u32)
        .map(|i| (7 + 37 * i * i + 11 * i) % 2048)
        .collect();
    let (trace, sub) = model.trace_sublayers(&setup, &tokens, tile).expect("trace");
    let s = &sub[layer - 1];
    let (lo, e) = (chunk * tile, n);
    let rows = |x: &[f32], w: usize, a: usize, b: usize| x[a * w..b * w].to_vec();
    let h_in = rows(&trace.layers[layer - 1], d, 0, e);
    let claim = veritrace_model::sublayer::SubLayerLayout::of(model.config())
        .rows(s, 0..e, lo..e)
        .expect("claim rows");
    let h_out = rows(&trace.layers[layer], d, lo, e);
    let context = SubLayers {
        normed: claim.normed.clone(),
        k: claim.k.clone(),
        v: claim.v.clone(),
        ..SubLayers::default()
    };
    let check = || {
        let c = CellClaim {
            h_in: &h_in,
            h_out: &h_out,
            context: &context,
            cell: &claim,
        };
        check_cell(&key, &model, &setup, tile, layer, chunk, &c, 0.0)
            .expect("check")
            .passed
    };
    assert!(check(), "the honest cell passes");
    let recompute = || {
        model
            .recompute_cell(&setup, tile, layer, chunk, CellInputs::Hidden(&h_in))
            .expect("recompute")
    };
    assert_eq!(recompute(), h_out, "recompute reproduces the cell");
    let mut g = c.benchmark_group(group);
    g.sample_size(20);
    g.bench_function("recompute_cell", |b| b.iter(|| black_box(recompute())));
    g.bench_function("check_cell_t1", |b| b.iter(|| black_box(check())));
    // the sampled attention check (specs/freivalds.md §7): one of the 8 heads and 16 of the
    // 112 rows before the cell, one fixed draw
    let sample = AttentionSampling {
        heads: Some(1),
        context_rows: Some(16),
    }
    .draw([7; 32], cfg.num_heads, lo);
    let sampled = || {
        let c = CellClaim {
            h_in: &h_in,
            h_out: &h_out,
            context: &context,
            cell: &claim,
        };
        check_cell_sampled(&key, &model, &setup, (tile, layer, chunk), &c, 0.0, &sample)
            .expect("sampled check")
            .passed
    };
    assert!(sampled(), "the honest cell passes the sampled check");
    g.bench_function("check_cell_sampled_h1_c16_t1", |b| {
        b.iter(|| black_box(sampled()))
    });
    g.bench_function("nonlinear_only", |b| {
        b.iter(|| {
            black_box(
                model
                    .recompute_nonlinear(
                        &setup, tile, layer, chunk, &h_in, &claim.k, &claim.v, &claim,
                    )
                    .expect("nonlinear"),
            )
        })
    });
    // the two other parts of `check_cell`: the seven maps' Freivalds checks (the context's key
    // and value rows, the cell's q, o, gate, up, down) and the context's attention norms
    g.bench_function("linear_only", |b| {
        b.iter(|| {
            let lo = chunk * tile;
            for (matrix, x, y, n) in [
                (Matrix::Q, &claim.normed[lo * d..], &claim.q[..], e - lo),
                (Matrix::K, &claim.normed[..], &claim.k[..], e),
                (Matrix::V, &claim.normed[..], &claim.v[..], e),
                (Matrix::O, &claim.attn[..], &claim.o[..], e - lo),
                (Matrix::Gate, &claim.mlp_in[..], &claim.gate[..], e - lo),
                (Matrix::Up, &claim.mlp_in[..], &claim.up[..], e - lo),
                (Matrix::Down, &claim.act[..], &claim.down[..], e - lo),
            ] {
                black_box(check_linear(&key, layer, matrix, x, y, n).expect("linear"));
            }
        })
    });
    g.bench_function("norms_only", |b| {
        b.iter(|| {
            black_box(
                model
                    .attention_norms(&setup, tile, layer, &h_in)
                    .expect("norms"),
            )
        })
    });
    g.finish();
}

fn prover_cost(c: &mut Criterion) {
    use veritrace_commit::{commit_trace, Dtype, HasherId, TraceGeometry};
    let model = LlamaModel::preset("small").expect("small");
    let setup: Setup = "f32/attn=eager".parse().expect("setup");
    let (n, tile) = (128usize, 16usize);
    let tokens: Vec<u32> = (0..n as u32)
        .map(|i| (7 + 37 * i * i + 11 * i) % 2048)
        .collect();
    let (trace, sub) = model.trace_sublayers(&setup, &tokens, tile).expect("trace");
    let as_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let hidden: Vec<Vec<u8>> = trace.layers.iter().map(|l| as_bytes(l)).collect();
    // one row per token: normed, q, k, v, attn, o, mlp_in, gate, up, act, down
    let width = |s: &SubLayers| {
        [
            &s.normed, &s.q, &s.k, &s.v, &s.attn, &s.o, &s.mlp_in, &s.gate, &s.up, &s.act, &s.down,
        ]
        .iter()
        .map(|p| p.len() / n)
        .sum::<usize>()
    };
    let w = width(&sub[0]);
    let sub_bytes: Vec<Vec<u8>> = sub
        .iter()
        .map(|s| {
            let parts = [
                &s.normed, &s.q, &s.k, &s.v, &s.attn, &s.o, &s.mlp_in, &s.gate, &s.up, &s.act,
                &s.down,
            ];
            let mut row_major = Vec::with_capacity(n * w * 4);
            for t in 0..n {
                for p in parts {
                    let pw = p.len() / n;
                    row_major.extend(p[t * pw..(t + 1) * pw].iter().flat_map(|x| x.to_le_bytes()));
                }
            }
            row_major
        })
        .collect();
    let d = model.config().hidden_size;
    let g_hidden = TraceGeometry::new(
        hidden.len() as u32,
        n as u32,
        d as u32,
        tile as u32,
        Dtype::F32,
    )
    .expect("geometry");
    let g_sub = TraceGeometry::new(
        sub.len() as u32,
        n as u32,
        w as u32,
        tile as u32,
        Dtype::F32,
    )
    .expect("geometry");
    eprintln!(
        "small, {n} tokens: hidden trace {} bytes per token ({} layers x {d} f32), sub-layer \
         values {} bytes per token ({} layers x {w} f32), {:.1}x",
        hidden.len() * d * 4,
        hidden.len(),
        sub.len() * w * 4,
        sub.len(),
        (sub.len() * w) as f64 / (hidden.len() * d) as f64
    );
    let mut g = c.benchmark_group("sublayer_prover_cost");
    g.sample_size(10);
    g.bench_function("trace", |b| {
        b.iter(|| black_box(model.trace(&setup, &tokens, tile).expect("trace")))
    });
    g.bench_function("trace_sublayers", |b| {
        b.iter(|| black_box(model.trace_sublayers(&setup, &tokens, tile).expect("trace")))
    });
    let h_refs: Vec<&[u8]> = hidden.iter().map(Vec::as_slice).collect();
    let s_refs: Vec<&[u8]> = sub_bytes.iter().map(Vec::as_slice).collect();
    g.bench_function("commit_hidden", |b| {
        b.iter(|| black_box(commit_trace(HasherId::Blake3, &g_hidden, &h_refs).expect("commit")))
    });
    g.bench_function("commit_sublayers", |b| {
        b.iter(|| black_box(commit_trace(HasherId::Blake3, &g_sub, &s_refs).expect("commit")))
    });
    // the protocol's provers of both levels over the same run (hidden tree included): the
    // sub-layer level's two trees, the by-head level's three (the key-value trace split by head,
    // specs/protocol.md §3.5), each from the layout `SubLayerTrace::bytes` gives
    let prompt: Vec<u32> = tokens[..120].to_vec();
    let (statement, run, packed) = model
        .prove_run_sublayers(&setup, &prompt, 8, tile as u32, HasherId::Blake3)
        .expect("run");
    let mut by_head = statement.clone();
    by_head.trace_level = model
        .sublayer_layout()
        .by_head_level()
        .expect("level")
        .with_dtype(setup.precision.dtype());
    // a run's prover of statement `s` (its sub-layer parts split and narrowed as `s` says)
    let prover_of = |s: &veritrace_protocol::Statement,
                     run: &veritrace_model::Trace,
                     packed: &veritrace_model::sublayer::SubLayerTrace| {
        veritrace_protocol::Prover::new(s.clone(), run.layer_bytes())
            .expect("prover")
            .with_sublayer_parts(packed.parts(s).expect("parts"))
            .expect("parts")
    };
    let prover = |s: &veritrace_protocol::Statement| prover_of(s, &run, &packed);
    g.bench_function("prover_sublayer_level", |b| {
        b.iter(|| black_box(prover(&statement)))
    });
    g.bench_function("prover_by_head_level", |b| {
        b.iter(|| black_box(prover(&by_head)))
    });
    // a bf16 run's prover, its sub-layer values committed as bf16 (specs/protocol.md §3.5:
    // narrowed, then hashed) and the same values committed as f32
    let bf16: Setup = "bf16/attn=eager/kernels=invariant".parse().expect("setup");
    let (half, run16, packed16) = model
        .prove_run_sublayers(&bf16, &prompt, 8, tile as u32, HasherId::Blake3)
        .expect("run");
    let mut as_f32 = half.clone();
    as_f32.trace_level = model.sublayer_layout().trace_level().expect("level");
    let prover16 = |s: &veritrace_protocol::Statement| {
        prover_of(s, &run16, &packed16).commit().expect("commits")
    };
    eprintln!(
        "bf16 run: sub-layer values committed as {:?}: {} bytes per token; as f32: {}",
        half.trace_level.dtype(),
        packed16.byte_len() / 2 / prompt.len().saturating_add(8),
        packed16.byte_len() / prompt.len().saturating_add(8),
    );
    g.bench_function("commit_bf16_run_sublayers_as_bf16", |b| {
        b.iter(|| black_box(prover16(&half)))
    });
    g.bench_function("commit_bf16_run_sublayers_as_f32", |b| {
        b.iter(|| black_box(prover16(&as_f32)))
    });
    g.finish();
}

/// `verifier_cost_model`: one challenged cell recomputed on `small` and on MiniLM (when it is
/// installed, `bash scripts/install-minilm.sh`), each printed with the FLOPs the verifier cost
/// model counts for it (`cost::verifier_cell_flops` for the decoder; for the encoder the same
/// terms with its shapes: q and output projections and the MLP on the cell's rows, keys and
/// values of every row, attention over every row), so that one effective rate can be checked
/// against both measured times before the model projects larger shapes.
fn cost_model(c: &mut Criterion) {
    use veritrace_model::cost::{verifier_cell_flops, CheckMethod};
    let setup: Setup = "f32/attn=eager".parse().expect("setup");
    let (n, tile, chunk) = (128usize, 16usize, 7usize);
    let mut g = c.benchmark_group("verifier_cost_model");
    g.sample_size(20);
    let small = LlamaModel::preset("small").expect("small");
    let tokens: Vec<u32> = (0..n as u32)
        .map(|i| (7 + 37 * i * i + 11 * i) % 2048)
        .collect();
    let trace = small.trace(&setup, &tokens, tile).expect("trace");
    let d = small.config().hidden_size;
    let h_in = trace.layers[3][..n * d].to_vec();
    let flops = verifier_cell_flops(
        small.config(),
        tile as u64,
        n as u64,
        CheckMethod::Recompute,
    )
    .total();
    println!("cost model: small, layer 4, rows 112..128 of 128: {flops:.4e} FLOPs");
    g.bench_function("small_recompute_cell", |b| {
        b.iter(|| {
            black_box(
                small
                    .recompute_cell(&setup, tile, 4, chunk, CellInputs::Hidden(&h_in))
                    .expect("recompute"),
            )
        })
    });
    match veritrace_model::minilm_dir() {
        None => println!(
            "cost model: MiniLM is not installed (bash scripts/install-minilm.sh): skipped"
        ),
        Some(dir) => {
            let bert = veritrace_model::BertModel::load(&dir).expect("MiniLM");
            let cfg = bert.config();
            let (bd, m) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
            let tokens = veritrace_model::bert_prompt(cfg.vocab_size, 0, n);
            let trace = bert.trace(&setup, &tokens, tile).expect("trace");
            let h = trace.layers[2].clone();
            let (r, ctx) = (tile as f64, n as f64);
            let flops = r * (2.0 * bd * bd + 2.0 * bd * bd + 4.0 * bd * m)
                + ctx * 4.0 * bd * bd
                + r * 4.0 * bd * ctx;
            println!("cost model: MiniLM, layer 3, rows 112..128 of 128: {flops:.4e} FLOPs");
            g.bench_function("minilm_recompute_cell", |b| {
                b.iter(|| {
                    black_box(
                        bert.recompute_cell(&setup, tile, 3, chunk, CellInputs::Hidden(&h))
                            .expect("recompute"),
                    )
                })
            });
        }
    }
    g.finish();
}

/// One challenged cell of `small` checked end to end through the protocol
/// (`check_opening_drawn`: leaf hashing, batch proofs, the check): a whole opening recomputed, a
/// whole opening checked by Freivalds, and a drawn opening (specs/protocol.md §4.4: one query
/// head of 8, one earlier chunk of 7) checked by Freivalds. The last 16-row cell of layer 4 of
/// a 128-token run committed by head. Prints the openings' sizes once.
fn opening(c: &mut Criterion) {
    use veritrace_commit::{CellId, Digest, HasherId};
    use veritrace_model::sublayer::KeyedVerifier;
    use veritrace_protocol::tolerance::TolerancePolicy;
    use veritrace_protocol::{
        check_opening_drawn, AttentionDraw, Challenge, LayerCheck, Message, Prover, VerifierLimits,
    };
    let model = LlamaModel::preset("small").expect("small");
    let key = VerifierKey::build(&VerifierSecret::from_bytes([0x42; 32]), &model, 1).expect("key");
    let prompt: Vec<u32> = (0..120u32)
        .map(|i| (7 + 37 * i * i + 11 * i) % 2048)
        .collect();
    let (mut statement, trace, sub) = model
        .prove_run_sublayers(&Setup::F32_EAGER, &prompt, 8, 16, HasherId::Blake3)
        .expect("run");
    statement.trace_level = model.sublayer_layout().by_head_level().expect("level");
    let parts = sub.parts(&statement).expect("parts");
    let mut prover = Prover::new(statement.clone(), trace.layer_bytes())
        .expect("prover")
        .with_sublayer_parts(parts)
        .expect("parts");
    let commitment = prover.commit().expect("commit");
    let cells = vec![CellId { layer: 4, chunk: 7 }];
    let whole = Challenge {
        round: 0,
        cells: cells.clone(),
        attention: None,
    };
    let drawn = Challenge {
        attention: Some(AttentionDraw {
            heads: 1,
            chunks: 1,
            seed: Digest([7; 32]),
        }),
        ..whole.clone()
    };
    let open = |ch: &Challenge| {
        prover
            .open_drawn(0, &ch.cells, ch.attention.as_ref(), 0)
            .expect("open")
    };
    let (whole_opening, drawn_opening) = (open(&whole), open(&drawn));
    let engine = KeyedVerifier {
        model: &model,
        key: &key,
        tolerance: 0.0,
        bound_scale: 1.0,
        map_bounds: None,
        sampling: AttentionSampling::FULL,
    };
    let limits = VerifierLimits::default();
    let check = |ch: &Challenge, o: &veritrace_protocol::Opening, method| {
        check_opening_drawn(
            &commitment,
            ch,
            o,
            &TolerancePolicy::Exact,
            method,
            &engine,
            &limits,
        )
    };
    for (ch, o, m) in [
        (&whole, &whole_opening, LayerCheck::Recompute),
        (&whole, &whole_opening, LayerCheck::Freivalds),
        (&drawn, &drawn_opening, LayerCheck::Freivalds),
    ] {
        assert_eq!(check(ch, o, m), Ok(()), "{m:?}");
    }
    println!(
        "verifier_small_opening: whole opening {} bytes, drawn opening {} bytes",
        whole_opening.to_bytes().len(),
        drawn_opening.to_bytes().len()
    );
    let mut g = c.benchmark_group("verifier_small_opening");
    g.sample_size(20);
    g.bench_function("whole_recompute", |b| {
        b.iter(|| black_box(check(&whole, &whole_opening, LayerCheck::Recompute)))
    });
    g.bench_function("whole_freivalds", |b| {
        b.iter(|| black_box(check(&whole, &whole_opening, LayerCheck::Freivalds)))
    });
    g.bench_function("drawn_h1_c1_freivalds", |b| {
        b.iter(|| black_box(check(&drawn, &drawn_opening, LayerCheck::Freivalds)))
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    cell(&mut c);
    opening(&mut c);
    cost_model(&mut c);
    prover_cost(&mut c);
    c.final_summary();
}
