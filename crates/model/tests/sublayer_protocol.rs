//! Whole protocol sessions at the sub-layer trace level (issue 16) with the tiny decoder: the
//! prover commits its sub-layer values, and a verifier holding a secret key checks challenged
//! cells by Freivalds and nonlinear recompute ([`KeyedVerifier`]), by recompute, or both.
//! Honest provers pass every method; provers that ran another setup while claiming f32 eager
//! are caught by the algebraic check alone; bad keys and statements are typed failures.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use veritrace_commit::{CellId, HasherId};
use veritrace_model::freivalds::{AttentionSampling, VerifierKey, VerifierSecret};
use veritrace_model::sublayer::{KeyedVerifier, SubLayerLayout, SubLayerTrace};
use veritrace_model::{LlamaModel, Setup};
use veritrace_protocol::tolerance::TolerancePolicy;
use veritrace_protocol::{
    check_opening_by, Challenge, ChallengeParams, LayerCheck, Mode, Prover, RejectReason,
    SamplingStrategy, Statement, Step, TraceLevel, Verdict, Verifier, VerifierConfig,
    VerifierLimits,
};

const CHUNK: u32 = 8;

fn prompt() -> Vec<u32> {
    (0..19u32).map(|i| (5 + 29 * i * i + 3 * i) % 512).collect()
}

fn config(method: LayerCheck, samples: u32) -> VerifierConfig {
    VerifierConfig {
        mode: Mode::Interactive,
        params: ChallengeParams {
            samples,
            strategy: SamplingStrategy::Uniform,
            pow_bits: 0,
            attention: None,
        },
        rounds: 1,
        tolerance: TolerancePolicy::Exact,
        method,
    }
}

fn prover(
    statement: &Statement,
    trace: &veritrace_model::Trace,
    sub: &SubLayerTrace,
) -> Prover<Vec<u8>> {
    Prover::new(statement.clone(), trace.layer_bytes())
        .unwrap()
        .with_sublayer_parts(sub.parts(statement).unwrap())
        .unwrap()
}

fn session(
    verifier: KeyedVerifier<'_>,
    mut prover: Prover<Vec<u8>>,
    cfg: VerifierConfig,
    seed: u8,
) -> Verdict {
    let mut rng = ChaCha20Rng::from_seed([seed; 32]);
    let mut v = Verifier::new(cfg, verifier).unwrap();
    let mut step = v.receive_commitment(prover.commit().unwrap(), &mut rng);
    loop {
        let opening = match step {
            Step::Decided(v) => return v,
            Step::Challenge(c) => prover.open(&c).unwrap(),
            Step::AwaitOpening => unreachable!("interactive"),
        };
        step = v.receive_opening(&opening, &mut rng);
    }
}

/// Every cell above layer 0 of a run of `run_setup` over `tokens` (4 generated, cells of
/// `chunk` rows) whose statement claims `claimed`, each opened and checked alone by `kv` under
/// `policy`, in cell order.
#[allow(clippy::too_many_arguments)]
fn each_cell_checked(
    model: &LlamaModel,
    kv: &KeyedVerifier<'_>,
    run_setup: &Setup,
    claimed: &Setup,
    tokens: &[u32],
    chunk: u32,
    policy: &TolerancePolicy,
) -> Vec<Result<(), RejectReason>> {
    let (mut statement, trace, sub) = model
        .prove_run_sublayers(run_setup, tokens, 4, chunk, HasherId::Blake3)
        .unwrap();
    statement.setup = claimed.to_bytes();
    let mut p = prover(&statement, &trace, &sub);
    let c = p.commit().unwrap();
    let g = statement.geometry;
    (u64::from(g.chunks_per_layer())..g.num_cells())
        .map(|i| {
            let cells = [g.cell_at(i).unwrap()];
            let o = p.open_cells(0, &cells, 0).unwrap();
            check_opening_by(
                &c,
                &cells,
                &o,
                policy,
                LayerCheck::Freivalds,
                kv,
                &VerifierLimits::default(),
            )
        })
        .collect()
}

struct Fixture {
    model: LlamaModel,
    key: VerifierKey,
}

fn fixture() -> Fixture {
    let model = LlamaModel::preset("tiny").unwrap();
    let key = VerifierKey::build(&VerifierSecret::from_bytes([9; 32]), &model, 2).unwrap();
    Fixture { model, key }
}

#[test]
fn layouts_pack_and_unpack() {
    let f = fixture();
    let layout = f.model.sublayer_layout();
    // tiny: d 128, 4 heads of 32 over 2 kv heads, MLP 344
    assert_eq!(
        layout,
        SubLayerLayout {
            hidden: 128,
            q: 128,
            kv: 64,
            mlp: 344,
            heads: 4,
            kv_heads: 2,
        }
    );
    assert_eq!(layout.context_width(), 256);
    assert_eq!(layout.cell_width(), 2 * 128 + 3 * 128 + 3 * 344);
    let tokens = prompt();
    let (_, sub) = f
        .model
        .trace_sublayers(&Setup::F32_EAGER, &tokens, CHUNK as usize)
        .unwrap();
    let (ctx, cell) = layout.pack(&sub[1]).unwrap();
    assert_eq!(ctx.len(), tokens.len() * 256);
    let back = layout.unpack_context(&ctx).unwrap();
    assert_eq!(
        (back.normed, back.k, back.v),
        (sub[1].normed.clone(), sub[1].k.clone(), sub[1].v.clone())
    );
    let back = layout.unpack_cell(&cell).unwrap();
    assert_eq!(back.down, sub[1].down);
    assert_eq!(back.gate, sub[1].gate);
    assert_eq!(back.attn, sub[1].attn);
    assert!(layout.unpack_cell(&cell[1..]).is_err());
}

#[test]
fn honest_sublayer_runs_pass_every_method() {
    let f = fixture();
    let (statement, trace, sub) = f
        .model
        .prove_run_sublayers(&Setup::F32_EAGER, &prompt(), 5, CHUNK, HasherId::Blake3)
        .unwrap();
    assert_eq!(
        statement.trace_level,
        f.model.sublayer_layout().trace_level().unwrap()
    );
    // the hidden trace is the plain run's, bit for bit
    let (plain, plain_trace) = f
        .model
        .prove_run(&Setup::F32_EAGER, &prompt(), 5, CHUNK, HasherId::Blake3)
        .unwrap();
    assert_eq!(plain_trace.layers, trace.layers);
    assert_eq!(plain.output_tokens, statement.output_tokens);
    let kv = KeyedVerifier::exact(&f.model, &f.key);
    for method in [
        LayerCheck::Freivalds,
        LayerCheck::Both,
        LayerCheck::Recompute,
    ] {
        for seed in 0..3 {
            let v = session(
                kv,
                prover(&statement, &trace, &sub),
                config(method, 6),
                seed,
            );
            assert_eq!(v, Verdict::Accept, "{method:?} seed {seed}");
        }
    }
    // every cell of every layer, checked by Freivalds alone
    let mut p = prover(&statement, &trace, &sub);
    let c = p.commit().unwrap();
    let g = statement.geometry;
    let all: Vec<CellId> = (0..g.num_cells()).map(|i| g.cell_at(i).unwrap()).collect();
    let o = p
        .open(&Challenge {
            round: 0,
            cells: all.clone(),
            attention: None,
        })
        .unwrap();
    check_opening_by(
        &c,
        &all,
        &o,
        &TolerancePolicy::Exact,
        LayerCheck::Freivalds,
        &kv,
        &VerifierLimits::default(),
    )
    .unwrap();
}

/// A prover that ran `setup` but claims f32 eager, committing the sub-layer values of its own
/// run: a verifier that only checks algebraically rejects every challenged cell above layer 0.
#[test]
fn other_setups_fail_the_algebraic_check() {
    let f = fixture();
    let kv = KeyedVerifier::exact(&f.model, &f.key);
    let honest = Setup::F32_EAGER;
    for cheat in [
        "f32/attn=eager/quant=int8-tensor",
        "f32/attn=eager/quant=int4-g32",
        "bf16/attn=eager",
        "f32/attn=tiled:16",
    ] {
        let setup: Setup = cheat.parse().unwrap();
        let (mut statement, trace, sub) = f
            .model
            .prove_run_sublayers(&setup, &prompt(), 5, CHUNK, HasherId::Blake3)
            .unwrap();
        statement.setup = honest.to_bytes();
        let mut p = prover(&statement, &trace, &sub);
        let c = p.commit().unwrap();
        let g = statement.geometry;
        for layer in 1..g.layers {
            for chunk in 0..g.chunks_per_layer() {
                let cells = [CellId { layer, chunk }];
                let o = p.open_cells(0, &cells, 0).unwrap();
                let r = check_opening_by(
                    &c,
                    &cells,
                    &o,
                    &TolerancePolicy::Exact,
                    LayerCheck::Freivalds,
                    &kv,
                    &VerifierLimits::default(),
                );
                assert!(
                    matches!(
                        r,
                        Err(RejectReason::AlgebraicCheck { .. } | RejectReason::Tolerance { .. })
                    ),
                    "{cheat} cell ({layer}, {chunk}): {r:?}"
                );
            }
        }
    }
}

#[test]
fn keys_and_statements_the_check_cannot_use_are_typed_failures() {
    let f = fixture();
    let (statement, trace, sub) = f
        .model
        .prove_run_sublayers(&Setup::F32_EAGER, &prompt(), 3, CHUNK, HasherId::Blake3)
        .unwrap();
    let cells = [CellId { layer: 2, chunk: 1 }];
    let run = |verifier: &KeyedVerifier<'_>, statement: &Statement| {
        let mut p = prover(statement, &trace, &sub);
        let c = p.commit().unwrap();
        let o = p.open_cells(0, &cells, 0).unwrap();
        check_opening_by(
            &c,
            &cells,
            &o,
            &TolerancePolicy::Exact,
            LayerCheck::Freivalds,
            verifier,
            &VerifierLimits::default(),
        )
    };
    // a key of another model
    let small = LlamaModel::preset("small").unwrap();
    let other = VerifierKey::build(&VerifierSecret::from_bytes([9; 32]), &small, 1).unwrap();
    let r = run(&KeyedVerifier::exact(&f.model, &other), &statement);
    assert!(
        matches!(&r, Err(RejectReason::RecomputeFailed { detail, .. }) if detail.contains("verifier key is for model")),
        "{r:?}"
    );
    // widths that are not this decoder's
    let mut wide = statement.clone();
    wide.trace_level = TraceLevel::SubLayer {
        context: 256,
        cell: 1000,
        dtype: veritrace_commit::Dtype::F32,
    };
    let mut p = Prover::new(wide.clone(), trace.layer_bytes()).unwrap();
    assert!(p.commit().is_err(), "sub-layer traces are required");
    let kv = KeyedVerifier::exact(&f.model, &f.key);
    let zeros = |w: usize| vec![vec![0u8; 4 * w * statement.geometry.tokens as usize]; 4];
    let mut p = Prover::new(wide.clone(), trace.layer_bytes())
        .unwrap()
        .with_sublayers(zeros(256), zeros(1000))
        .unwrap();
    let c = p.commit().unwrap();
    let o = p.open_cells(0, &cells, 0).unwrap();
    let r = check_opening_by(
        &c,
        &cells,
        &o,
        &TolerancePolicy::Exact,
        LayerCheck::Freivalds,
        &kv,
        &VerifierLimits::default(),
    );
    assert!(
        matches!(&r, Err(RejectReason::RecomputeFailed { detail, .. }) if detail.contains("sub-layer rows")),
        "{r:?}"
    );
    // a negative tolerance is refused by the check, typed
    let r = run(
        &KeyedVerifier {
            model: &f.model,
            key: &f.key,
            tolerance: -1.0,
            bound_scale: 1.0,
            map_bounds: None,
            sampling: AttentionSampling::FULL,
        },
        &statement,
    );
    assert!(
        matches!(r, Err(RejectReason::RecomputeFailed { .. })),
        "{r:?}"
    );
    // the same session passes with the right key
    assert_eq!(run(&kv, &statement), Ok(()));
}

/// A cell's sub-layer values recomputed alone from the rows below equal the forward's capture,
/// bit for bit, under every setup a simulated prover runs; a skipped layer's are zero.
#[test]
fn per_cell_capture_equals_the_forward() {
    let f = fixture();
    let tokens = prompt();
    let n = tokens.len();
    let c = CHUNK as usize;
    for setup in [
        "f32/attn=eager",
        "f32/attn=eager/quant=int8-channel",
        "f32/attn=eager/quant=int4-g32",
        "bf16/attn=eager",
        "f32/attn=tiled:8",
        "f32/attn=topk:8",
        "f32/attn=eager/splitk=4",
        "f32/attn=eager/batch=4",
    ] {
        let setup: Setup = setup.parse().unwrap();
        let (trace, sub) = f.model.trace_sublayers(&setup, &tokens, c).unwrap();
        let layout = f.model.sublayer_layout();
        for l in 1..trace.layers.len() {
            let (ctx, cell) = layout.pack(&sub[l - 1]).unwrap();
            for j in 0..n.div_ceil(c) {
                let e = ((j + 1) * c).min(n);
                let d = trace.hidden;
                let (rows, got) = f
                    .model
                    .recompute_cell_sublayers(&setup, c, l, j, &trace.layers[l - 1][..e * d])
                    .unwrap();
                assert_eq!(
                    rows,
                    trace.layers[l][j * c * d..e * d],
                    "{setup} rows ({l}, {j})"
                );
                let (gc, gy) = layout.pack(&got).unwrap();
                let w = (layout.context_width(), layout.cell_width());
                assert_eq!(gc, ctx[j * c * w.0..e * w.0], "{setup} context ({l}, {j})");
                assert_eq!(gy, cell[j * c * w.1..e * w.1], "{setup} cell ({l}, {j})");
            }
        }
    }
    let skip: Setup = "f32/attn=eager/skip=2".parse().unwrap();
    let trace = f.model.trace(&skip, &tokens, c).unwrap();
    let (rows, sub) = f
        .model
        .recompute_cell_sublayers(&skip, c, 2, 1, &trace.layers[1][..16 * trace.hidden])
        .unwrap();
    assert_eq!(rows, trace.layers[2][8 * trace.hidden..16 * trace.hidden]);
    assert!(sub.down.iter().chain(&sub.q).all(|&x| x == 0.0));
    assert_eq!(sub.q.len(), 8 * 128);
    assert!(f
        .model
        .recompute_cell_sublayers(&Setup::F32_EAGER, c, 0, 0, &[])
        .is_err());
}

/// The weight-perturbation adversary's model: at factor 1 the matrix is its quantization, the
/// others untouched; bad arguments are typed errors; the stated acceptance probability is 1 for
/// the honest values and falls with the factor.
#[test]
fn perturbed_models_and_their_acceptance_probability() {
    use veritrace_model::freivalds::{accept_probability, matrix_weights, perturbed_model, Matrix};
    let f = fixture();
    let quant: veritrace_model::setup::Quant = "int8-channel".parse().unwrap();
    let p = perturbed_model(&f.model, 2, Matrix::Down, quant, 1.0).unwrap();
    let w = matrix_weights(&f.model, 2, Matrix::Down).unwrap();
    let wp = matrix_weights(&p, 2, Matrix::Down).unwrap();
    let c = f.model.config();
    let q =
        veritrace_model::quant::quantize_dequantize(&w, c.hidden_size, c.intermediate_size, quant)
            .unwrap();
    assert_eq!(wp, q);
    assert_eq!(
        matrix_weights(&p, 2, Matrix::Up).unwrap(),
        matrix_weights(&f.model, 2, Matrix::Up).unwrap()
    );
    assert_eq!(
        matrix_weights(&p, 1, Matrix::Down).unwrap(),
        matrix_weights(&f.model, 1, Matrix::Down).unwrap()
    );
    for (layer, m, factor) in [
        (0, Matrix::Down, 1.0),
        (5, Matrix::Q, 1.0),
        (1, Matrix::LmHead, 1.0),
        (1, Matrix::Q, 0.0),
        (1, Matrix::Q, f64::NAN),
    ] {
        assert!(perturbed_model(&f.model, layer, m, quant, factor).is_err());
    }
    // acceptance of the down projection's rows: 1 when honest, lower with the factor
    let tokens = prompt();
    let accept = |model: &LlamaModel| {
        let (_, sub) = model
            .trace_sublayers(&Setup::F32_EAGER, &tokens, CHUNK as usize)
            .unwrap();
        let s = &sub[1];
        accept_probability(
            &f.key,
            &w,
            2,
            Matrix::Down,
            &s.act[..8 * 344],
            &s.down[..8 * 128],
            8,
            None,
            1.0,
        )
        .unwrap()
    };
    assert!(accept(&f.model) > 1.0 - 1e-12);
    let full = accept(&p);
    let small = accept(&perturbed_model(&f.model, 2, Matrix::Down, quant, 0.2).unwrap());
    assert!(full < small, "{full} < {small}");
    assert!(full < 1e-6, "{full}");
    assert!(accept_probability(
        &f.key,
        &w[1..],
        2,
        Matrix::Down,
        &[0.0; 344],
        &[0.0; 128],
        1,
        None,
        1.0
    )
    .is_err());
}

/// The calibration of the Freivalds bound: honest runs (the reference and its reduction-order
/// variants) stay orders of magnitude below the rigorous bound, a quantized run far above it;
/// a verifier with a bound scale between them passes the honest and rejects the quantized.
#[test]
fn honest_ratios_calibrate_the_bound() {
    use veritrace_model::freivalds::honest_worst_ratio;
    let f = fixture();
    let tokens = prompt();
    let mut worst = 0f64;
    for s in [
        "f32/attn=eager",
        "f32/attn=eager/splitk=4",
        "f32/attn=eager/batch=2",
    ] {
        let r = honest_worst_ratio(&f.key, &f.model, &s.parse().unwrap(), &tokens, 8).unwrap();
        assert!(r < 1e-2, "{s}: {r}");
        worst = worst.max(r);
    }
    let int8: Setup = "f32/attn=eager/quant=int8-channel".parse().unwrap();
    assert!(honest_worst_ratio(&f.key, &f.model, &int8, &tokens, 8).unwrap() > 1.0);
    let skip: Setup = "f32/attn=eager/skip=1".parse().unwrap();
    assert!(honest_worst_ratio(&f.key, &f.model, &skip, &tokens, 8).is_err());
    // a verifier at twice the honest worst: honest runs pass, a bad scale is refused
    let (statement, trace, sub) = f
        .model
        .prove_run_sublayers(&Setup::F32_EAGER, &tokens, 3, CHUNK, HasherId::Blake3)
        .unwrap();
    let mut p = prover(&statement, &trace, &sub);
    let c = p.commit().unwrap();
    let cells = [CellId { layer: 3, chunk: 2 }];
    let o = p.open_cells(0, &cells, 0).unwrap();
    let with = |bound_scale: f64| {
        let kv = KeyedVerifier {
            model: &f.model,
            key: &f.key,
            tolerance: 0.0,
            bound_scale,
            map_bounds: None,
            sampling: AttentionSampling::FULL,
        };
        check_opening_by(
            &c,
            &cells,
            &o,
            &TolerancePolicy::Exact,
            LayerCheck::Freivalds,
            &kv,
            &VerifierLimits::default(),
        )
    };
    assert_eq!(with(2.0 * worst), Ok(()));
    assert!(matches!(
        with(0.0),
        Err(RejectReason::RecomputeFailed { .. })
    ));
    assert!(matches!(
        with(f64::NAN),
        Err(RejectReason::RecomputeFailed { .. })
    ));
}

/// A Qwen2 decoder (query, key and value biases): its key builds, an honest sub-layer session
/// passes the Freivalds check with the biases added on the verifier's side, int8 weights fail,
/// and a bias of the wrong length is a typed error.
#[test]
fn qwen2_biases_are_checked() {
    use veritrace_model::freivalds::{check_linear_biased, FreivaldsError, Matrix};
    let mut c = veritrace_model::ModelConfig::tiny();
    c.family = veritrace_model::Family::Qwen2;
    c.num_layers = 2;
    let model = LlamaModel::new(c).unwrap();
    let key = VerifierKey::build(&VerifierSecret::from_bytes([4; 32]), &model, 2).unwrap();
    let kv = KeyedVerifier::exact(&model, &key);
    let run = |setup: &str| {
        let (mut statement, trace, sub) = model
            .prove_run_sublayers(
                &setup.parse().unwrap(),
                &prompt(),
                3,
                CHUNK,
                HasherId::Blake3,
            )
            .unwrap();
        statement.setup = Setup::F32_EAGER.to_bytes();
        let mut p = prover(&statement, &trace, &sub);
        let c = p.commit().unwrap();
        let g = statement.geometry;
        let cells: Vec<CellId> = (u64::from(g.chunks_per_layer())..g.num_cells())
            .map(|i| g.cell_at(i).unwrap())
            .collect();
        let o = p.open_cells(0, &cells, 0).unwrap();
        check_opening_by(
            &c,
            &cells,
            &o,
            &TolerancePolicy::Exact,
            LayerCheck::Freivalds,
            &kv,
            &VerifierLimits::default(),
        )
    };
    assert_eq!(run("f32/attn=eager"), Ok(()));
    assert!(matches!(
        run("f32/attn=eager/quant=int8-channel"),
        Err(RejectReason::AlgebraicCheck { .. })
    ));
    // the bias matters: without it the honest q rows fail
    let (_, sub) = model
        .trace_sublayers(&Setup::F32_EAGER, &prompt(), CHUNK as usize)
        .unwrap();
    let b = model.qkv_biases(1).unwrap().unwrap();
    let n = prompt().len();
    let with = check_linear_biased(
        &key,
        1,
        Matrix::Q,
        &sub[0].normed,
        &sub[0].q,
        n,
        Some(&b[0]),
    )
    .unwrap();
    let without =
        check_linear_biased(&key, 1, Matrix::Q, &sub[0].normed, &sub[0].q, n, None).unwrap();
    assert!(with.passed && !without.passed, "{with:?} {without:?}");
    assert!(matches!(
        check_linear_biased(
            &key,
            1,
            Matrix::Q,
            &sub[0].normed,
            &sub[0].q,
            n,
            Some(&b[0][1..])
        ),
        Err(FreivaldsError::WrongLength { .. })
    ));
    assert!(LlamaModel::preset("tiny")
        .unwrap()
        .qkv_biases(1)
        .unwrap()
        .is_none());
    assert!(model.qkv_biases(3).is_err());
}

/// A Mistral decoder (sliding window of 5 positions, cells of 4 rows): the opening holds only
/// each cell's window, the rows before it are zero-padded by the verifier, and every cell of
/// an honest sub-layer run passes bitwise; int8 weights and tiled attention fail.
#[test]
fn sliding_window_statements_are_checked() {
    let mut c = veritrace_model::ModelConfig::tiny();
    c.family = veritrace_model::Family::Mistral;
    c.sliding_window = Some(5);
    let model = LlamaModel::new(c).unwrap();
    assert_eq!(
        model.config().dependency(),
        veritrace_protocol::Dependency::Window { size: 5 }
    );
    let key = VerifierKey::build(&VerifierSecret::from_bytes([6; 32]), &model, 2).unwrap();
    let kv = KeyedVerifier::exact(&model, &key);
    let run = |setup: &str| {
        each_cell_checked(
            &model,
            &kv,
            &setup.parse().unwrap(),
            &Setup::F32_EAGER,
            &prompt(),
            4,
            &TolerancePolicy::Exact,
        )
    };
    for (i, r) in run("f32/attn=eager").into_iter().enumerate() {
        assert_eq!(r, Ok(()), "cell {i}");
    }
    for cheat in ["f32/attn=eager/quant=int8-channel", "f32/attn=tiled:4"] {
        let rejected = run(cheat).iter().filter(|r| r.is_err()).count();
        assert!(rejected > 0, "{cheat}");
    }
}

/// The sampled attention check in sessions (specs/freivalds.md §7): one head and two earlier
/// rows per cell, drawn from the key and the statement. Honest runs pass every cell (also
/// under a sliding window, where the rows drawn are those of the window); provers whose
/// weights or attention algorithm differ are still rejected at every cell above layer 0, since
/// their deviation is in every head and every row's linear maps.
#[test]
fn sampled_attention_checks_sessions() {
    let f = fixture();
    let sampling = AttentionSampling {
        heads: Some(1),
        context_rows: Some(2),
    };
    let kv = KeyedVerifier {
        model: &f.model,
        key: &f.key,
        tolerance: 0.0,
        bound_scale: 1.0,
        map_bounds: None,
        sampling,
    };
    let every_cell = |model: &LlamaModel, kv: &KeyedVerifier<'_>, setup: &str, chunk: u32| {
        each_cell_checked(
            model,
            kv,
            &setup.parse().unwrap(),
            &Setup::F32_EAGER,
            &prompt(),
            chunk,
            &TolerancePolicy::Exact,
        )
    };
    for (i, r) in every_cell(&f.model, &kv, "f32/attn=eager", CHUNK)
        .into_iter()
        .enumerate()
    {
        assert_eq!(r, Ok(()), "cell {i}");
    }
    let (statement, trace, sub) = f
        .model
        .prove_run_sublayers(&Setup::F32_EAGER, &prompt(), 5, CHUNK, HasherId::Blake3)
        .unwrap();
    for seed in 0..3 {
        let v = session(
            kv,
            prover(&statement, &trace, &sub),
            config(LayerCheck::Freivalds, 6),
            seed,
        );
        assert_eq!(v, Verdict::Accept, "seed {seed}");
    }
    for cheat in ["f32/attn=eager/quant=int8-tensor", "f32/attn=tiled:16"] {
        for (i, r) in every_cell(&f.model, &kv, cheat, CHUNK)
            .into_iter()
            .enumerate()
        {
            assert!(
                matches!(
                    r,
                    Err(RejectReason::AlgebraicCheck { .. } | RejectReason::Tolerance { .. })
                ),
                "{cheat} cell {i}: {r:?}"
            );
        }
    }
    // a sliding window of 5 positions, cells of 4 rows
    let mut c = veritrace_model::ModelConfig::tiny();
    c.family = veritrace_model::Family::Mistral;
    c.sliding_window = Some(5);
    let model = LlamaModel::new(c).unwrap();
    let key = VerifierKey::build(&VerifierSecret::from_bytes([6; 32]), &model, 2).unwrap();
    let kv = KeyedVerifier {
        model: &model,
        key: &key,
        ..kv
    };
    for (i, r) in every_cell(&model, &kv, "f32/attn=eager", 4)
        .into_iter()
        .enumerate()
    {
        assert_eq!(r, Ok(()), "window cell {i}");
    }
    let rejected = every_cell(&model, &kv, "f32/attn=eager/quant=int8-channel", 4)
        .iter()
        .filter(|r| r.is_err())
        .count();
    assert!(rejected > 0);
}

/// Nonlinear tolerances calibrated with the bound scales (`MapBounds::nonlinear`): a prover on
/// other kernels (candle's bf16, claiming the invariant kernels' bf16) passes every Freivalds
/// check but its nonlinear parts differ from the verifier's recompute; tolerances calibrated
/// on such runs (`run_nonlinear_deviations`, twice the largest) accept a held-out run of it at
/// every cell, with the verifier's own tolerance at 0 (the file's take precedence), while
/// without them the same cells are rejected.
#[test]
fn calibrated_nonlinear_tolerances_accept_another_kernels_runs() {
    use veritrace_model::freivalds::{
        honest_map_ratios, run_nonlinear_deviations, MapBounds, NONLINEAR_PARTS,
    };
    let f = fixture();
    let claimed: Setup = "bf16/attn=eager/kernels=invariant".parse().unwrap();
    let prover_setup: Setup = "bf16/attn=eager".parse().unwrap();
    let key = f.key.for_setup(&f.model, &claimed).unwrap();
    let tokens = |i: u64| veritrace_model::Engine::prompt(&f.model, i, 19);
    let runs = 6u64;
    let ratios: Vec<_> = (0..runs)
        .map(|i| honest_map_ratios(&key, &f.model, &prover_setup, &tokens(i), 8).unwrap())
        .collect();
    let deviations: Vec<_> = (0..runs)
        .map(|i| {
            let (trace, sub) = f
                .model
                .trace_sublayers(&prover_setup, &tokens(i), 8)
                .unwrap();
            run_nonlinear_deviations(&key, &f.model, &claimed, 8, &trace.layers, &sub).unwrap()
        })
        .collect();
    // the verifier's own runs agree bitwise in every part
    let (trace, sub) = f.model.trace_sublayers(&claimed, &tokens(0), 8).unwrap();
    let own = run_nonlinear_deviations(&key, &f.model, &claimed, 8, &trace.layers, &sub).unwrap();
    assert!(own.iter().flatten().all(|&d| d == 0.0), "{own:?}");
    // the other kernels' runs do not (their attention, norms and SwiGLU round differently)
    assert!(
        deviations.iter().flatten().flatten().any(|&d| d > 0.0),
        "{deviations:?}"
    );
    let mut bounds = MapBounds::calibrate(f.model.digest(), &ratios, 2.0).unwrap();
    bounds.weights = key.weights();
    bounds.set_nonlinear(&deviations, 2.0).unwrap();
    bounds.validate(&key).unwrap();
    assert!(bounds.tolerance(1, "attn").is_some());
    assert_eq!(bounds.tolerance(0, "attn"), None);
    assert_eq!(bounds.tolerance(1, "h_out"), None);
    // a held-out run of the other kernels, every cell above layer 0
    let cells_of = |bounds: Option<&MapBounds>| {
        let kv = KeyedVerifier {
            model: &f.model,
            key: &key,
            tolerance: 0.0,
            bound_scale: 1.0,
            map_bounds: bounds,
            sampling: AttentionSampling::FULL,
        };
        each_cell_checked(
            &f.model,
            &kv,
            &prover_setup,
            &claimed,
            &tokens(77),
            CHUNK,
            &TolerancePolicy::Threshold(veritrace_protocol::tolerance::ThresholdPolicy::new(
                veritrace_protocol::tolerance::Metric::RelL2,
                veritrace_protocol::tolerance::PerLayer::uniform(1e-1),
            )),
        )
    };
    for (i, r) in cells_of(Some(&bounds)).into_iter().enumerate() {
        assert_eq!(r, Ok(()), "cell {i} under the calibrated tolerances");
    }
    let mut plain = bounds.clone();
    plain.nonlinear = None;
    let rejected = cells_of(Some(&plain))
        .iter()
        .filter(|r| matches!(r, Err(RejectReason::AlgebraicCheck { .. })))
        .count();
    assert!(rejected > 0, "tolerance 0 rejects the other kernels' cells");
    // a file whose tolerances do not fit is refused
    let mut bad = bounds.clone();
    bad.nonlinear.as_mut().unwrap()[0][1] = -1.0;
    assert!(bad.validate(&key).is_err());
    let mut bad = bounds.clone();
    bad.nonlinear.as_mut().unwrap().pop();
    assert!(bad.validate(&key).is_err());
    assert!(bounds.clone().set_nonlinear(&deviations[1..], 2.0).is_err());
    assert_eq!(NONLINEAR_PARTS.len(), 4);
}

/// A half-precision run commits its sub-layer values in its own type (specs/protocol.md §3.5):
/// half the bytes of f32, each value exact, at both levels, and its sessions pass the keyed
/// check bitwise. A value the type does not hold is refused by the prover, never rounded; the
/// same run committed as f32 is the same check.
#[test]
fn half_precision_runs_commit_their_sublayer_values_in_their_type() {
    use veritrace_commit::Dtype;
    let f = fixture();
    for (name, dtype) in [
        ("bf16/attn=eager", Dtype::Bf16),
        ("f16/attn=eager", Dtype::F16),
        ("bf16/attn=eager/kernels=invariant", Dtype::Bf16),
    ] {
        let setup: Setup = name.parse().unwrap();
        let (statement, trace, sub) = f
            .model
            .prove_run_sublayers(&setup, &prompt(), 4, CHUNK, HasherId::Blake3)
            .unwrap();
        let layout = f.model.sublayer_layout();
        assert_eq!(
            statement.trace_level,
            layout.trace_level().unwrap().with_dtype(dtype),
            "{name}"
        );
        let key = f.key.for_setup(&f.model, &setup).unwrap();
        let kv = KeyedVerifier::exact(&f.model, &key);
        let mut by_head = statement.clone();
        by_head.trace_level = layout.by_head_level().unwrap().with_dtype(dtype);
        let mut as_f32 = statement.clone();
        as_f32.trace_level = layout.trace_level().unwrap();
        for s in [&statement, &by_head, &as_f32] {
            let parts = sub.parts(s).unwrap();
            let committed: usize = parts.iter().flat_map(|(_, l)| l).map(Vec::len).sum();
            let expected = if s.trace_level.dtype() == Some(Dtype::F32) {
                sub.byte_len()
            } else {
                sub.byte_len() / 2
            };
            assert_eq!(committed, expected, "{name} {:?}", s.trace_level);
            let mut p = prover(s, &trace, &sub);
            let c = p.commit().unwrap();
            let g = s.geometry;
            let all: Vec<CellId> = (0..g.num_cells()).map(|i| g.cell_at(i).unwrap()).collect();
            let o = p.open_cells(0, &all, 0).unwrap();
            let checked = check_opening_by(
                &c,
                &all,
                &o,
                &TolerancePolicy::Exact,
                LayerCheck::Freivalds,
                &kv,
                &VerifierLimits::default(),
            );
            assert_eq!(checked, Ok(()), "{name} {:?}", s.trace_level);
            for seed in 0..2 {
                let v = session(
                    kv,
                    prover(s, &trace, &sub),
                    config(LayerCheck::Freivalds, 6),
                    seed,
                );
                assert_eq!(v, Verdict::Accept, "{name} seed {seed}");
            }
        }
        // one value off the type's grid: refused, naming it
        let mut off = sub.clone();
        off.cell[1][7] = f32::from_bits(off.cell[1][7].to_bits() ^ 1);
        let e = off.parts(&statement).unwrap_err().to_string();
        assert!(e.contains("does not hold exactly"), "{e}");
        assert!(off.parts(&as_f32).is_ok(), "f32 holds every value");
    }
}
