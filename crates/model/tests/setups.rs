//! Numeric setups on the tiny decoder: every setup runs, is deterministic and recomputes cell by
//! cell bit for bit; limiting cases equal the reference exactly (a window or top-k that covers
//! every key, a skipped layer); honest reduction-order changes stay near the reference while
//! 16-bit precision and int4 quantization move further; key capture round-trips; a prover on a
//! non-reference setup is accepted by the real verifier.

use veritrace_commit::HasherId;
use veritrace_model::{
    read_trace, write_trace, Capture, CellInputs, LlamaModel, ModelError, Setup, Trace,
};

const CHUNK: usize = 8;

fn prompt(n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (7 + 37 * i * i + 11 * i) % 512)
        .collect()
}

fn tiny() -> LlamaModel {
    LlamaModel::preset("tiny").unwrap()
}

fn setup(s: &str) -> Setup {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// One setup of every kind the engine runs.
const SETUPS: [&str; 20] = [
    "f32/attn=eager",
    "bf16/attn=eager",
    "f16/attn=eager",
    "f32/attn=tiled:4",
    "bf16/attn=tiled:8",
    "f32/attn=window:6",
    "f32/attn=topk:5",
    "f32/attn=eager/quant=int8-tensor",
    "f32/attn=eager/quant=int8-tensor:mse",
    "f32/attn=eager/quant=int8-channel",
    "f32/attn=eager/quant=int8-channel:mse",
    "f32/attn=eager/quant=int4-g32",
    "f32/attn=eager/quant=int4-g128:mse",
    "f32/attn=eager/splitk=4",
    "bf16/attn=eager/splitk=3",
    "f32/attn=eager/batch=3",
    "f32/attn=eager/order=decode",
    "f32/attn=eager/skip=2",
    "f32/attn=eager/reuse=3",
    "f16/attn=tiled:4/quant=int4-g32:mse/splitk=2/batch=2/order=decode",
];

fn bits(t: &Trace) -> Vec<Vec<u32>> {
    t.layers
        .iter()
        .map(|l| l.iter().map(|v| v.to_bits()).collect())
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Largest max-abs difference over layers 1..=L.
fn max_layer_diff(a: &Trace, b: &Trace) -> f32 {
    a.layers[1..]
        .iter()
        .zip(&b.layers[1..])
        .map(|(x, y)| max_abs(x, y))
        .fold(0.0, f32::max)
}

#[test]
fn every_setup_runs_finite_and_deterministic() {
    let model = tiny();
    let tokens = prompt(21);
    for s in SETUPS {
        let a = model.trace(&setup(s), &tokens, CHUNK).unwrap();
        assert!(
            a.layers.iter().flatten().all(|v| v.is_finite()),
            "{s}: non-finite values"
        );
        // A fresh model (fresh weight cache) gives the same bits.
        let b = tiny().trace(&setup(s), &tokens, CHUNK).unwrap();
        assert_eq!(bits(&a), bits(&b), "{s}: two runs differ");
    }
}

#[test]
fn every_setup_recomputes_every_cell_bit_identically() {
    let model = tiny();
    let n = 21; // the last chunk is partial
    let tokens = prompt(n);
    for s in SETUPS {
        let st = setup(s);
        let trace = model.trace(&st, &tokens, CHUNK).unwrap();
        let d = trace.hidden;
        for l in 0..trace.layers.len() {
            for j in 0..n.div_ceil(CHUNK) {
                let end = ((j + 1) * CHUNK).min(n);
                let inputs = if l == 0 {
                    CellInputs::Tokens(&tokens[..end])
                } else {
                    CellInputs::Hidden(&trace.layers[l - 1][..end * d])
                };
                let got = model.recompute_cell(&st, CHUNK, l, j, inputs);
                if st.reuse == Some(l) {
                    assert!(
                        matches!(got, Err(ModelError::UnsupportedSetup(_))),
                        "{s}: a reused layer cannot be recomputed from one layer"
                    );
                    continue;
                }
                let got = got.unwrap_or_else(|e| panic!("{s} ({l}, {j}): {e}"));
                let want = &trace.layers[l][j * CHUNK * d..end * d];
                assert_eq!(got.len(), want.len());
                assert!(
                    got.iter()
                        .zip(want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{s}: cell ({l}, {j}) differs by {}",
                    max_abs(&got, want)
                );
            }
        }
    }
}

#[test]
fn windows_and_top_k_covering_every_key_equal_eager_exactly() {
    let model = tiny();
    let tokens = prompt(19);
    let eager = model.trace(&Setup::F32_EAGER, &tokens, CHUNK).unwrap();
    // The last tile is padded to 24 rows, so 24 keys cover every query.
    for s in [
        "f32/attn=window:24",
        "f32/attn=topk:24",
        "f32/attn=window:1000",
    ] {
        let t = model.trace(&setup(s), &tokens, CHUNK).unwrap();
        assert_eq!(bits(&t), bits(&eager), "{s}");
    }
    // Narrower ones change the result.
    for s in ["f32/attn=window:4", "f32/attn=topk:3"] {
        let t = model.trace(&setup(s), &tokens, CHUNK).unwrap();
        assert!(max_layer_diff(&t, &eager) > 1e-3, "{s}");
    }
}

#[test]
fn tiled_attention_is_the_same_function_up_to_rounding() {
    let model = tiny();
    let tokens = prompt(40);
    let eager = model.trace(&Setup::F32_EAGER, &tokens, CHUNK).unwrap();
    for block in [1, 3, 8, 64] {
        let t = model
            .trace(&setup(&format!("f32/attn=tiled:{block}")), &tokens, CHUNK)
            .unwrap();
        let diff = max_layer_diff(&t, &eager);
        assert!(diff < 1e-4, "tiled:{block}: {diff}");
    }
}

#[test]
fn honest_reduction_orders_stay_near_the_reference() {
    let model = tiny();
    let tokens = prompt(24);
    let reference = model.trace(&Setup::F32_EAGER, &tokens, CHUNK).unwrap();
    for s in [
        "f32/attn=eager/splitk=2",
        "f32/attn=eager/splitk=7",
        "f32/attn=eager/batch=2",
        "f32/attn=eager/order=decode",
    ] {
        let t = model.trace(&setup(s), &tokens, CHUNK).unwrap();
        let diff = max_layer_diff(&t, &reference);
        assert!(diff < 1e-4, "{s}: {diff}");
        assert_eq!(t.layers[0], reference.layers[0], "{s}: embeddings");
    }
}

#[test]
fn precision_and_quantization_move_the_trace_by_their_own_scale() {
    let model = tiny();
    let tokens = prompt(24);
    let reference = model.trace(&Setup::F32_EAGER, &tokens, CHUNK).unwrap();
    let diff =
        |s: &str| max_layer_diff(&model.trace(&setup(s), &tokens, CHUNK).unwrap(), &reference);
    let (bf16, f16) = (diff("bf16/attn=eager"), diff("f16/attn=eager"));
    let (int8, int4) = (
        diff("f32/attn=eager/quant=int8-channel"),
        diff("f32/attn=eager/quant=int4-g32"),
    );
    assert!(bf16 > 1e-3 && bf16 < 0.5, "bf16: {bf16}");
    assert!(f16 > 1e-5 && f16 < bf16, "f16 {f16} vs bf16 {bf16}");
    assert!(int8 > 1e-5 && int8 < int4, "int8 {int8} vs int4 {int4}");
    // The two rounding methods at the same width are different computations.
    let rtn = model
        .trace(&setup("f32/attn=eager/quant=int4-g32"), &tokens, CHUNK)
        .unwrap();
    let mse = model
        .trace(&setup("f32/attn=eager/quant=int4-g32:mse"), &tokens, CHUNK)
        .unwrap();
    assert!(max_layer_diff(&rtn, &mse) > 1e-4);
    // 16-bit traces hold 16-bit values.
    let t = model
        .trace(&setup("bf16/attn=eager"), &tokens, CHUNK)
        .unwrap();
    assert!(t
        .layers
        .iter()
        .flatten()
        .all(|v| half::bf16::from_f32(*v).to_f32() == *v));
}

#[test]
fn skip_and_reuse_follow_their_definitions() {
    let model = tiny();
    let tokens = prompt(16);
    let skip = model
        .trace(&setup("f32/attn=eager/skip=2"), &tokens, CHUNK)
        .unwrap();
    assert_eq!(skip.layers[2], skip.layers[1]);
    let reference = model.trace(&Setup::F32_EAGER, &tokens, CHUNK).unwrap();
    assert_eq!(skip.layers[1], reference.layers[1]);
    assert_ne!(skip.layers[4], reference.layers[4]);
    let reuse = model
        .trace(&setup("f32/attn=eager/reuse=3"), &tokens, CHUNK)
        .unwrap();
    for (i, v) in reuse.layers[3].iter().enumerate() {
        let (a, b) = (reuse.layers[2][i], reuse.layers[1][i]);
        assert_eq!(v.to_bits(), (a + (a - b)).to_bits());
    }
    for bad in ["f32/attn=eager/skip=5", "f32/attn=eager/reuse=9"] {
        assert!(matches!(
            model.trace(&setup(bad), &tokens, CHUNK),
            Err(ModelError::UnsupportedSetup(_))
        ));
    }
}

#[test]
fn captured_keys_do_not_change_the_trace_and_round_trip() {
    let model = tiny();
    let tokens = prompt(13);
    let c = model.config().clone();
    let width = c.num_kv_heads * c.head_dim();
    for s in [
        "f32/attn=eager",
        "bf16/attn=tiled:4/order=decode",
        "f32/attn=eager/skip=1",
    ] {
        let st = setup(s);
        let plain = model.trace(&st, &tokens, CHUNK).unwrap();
        let with = model
            .trace_with(&st, &tokens, CHUNK, Capture { keys: true })
            .unwrap();
        assert_eq!(bits(&plain), bits(&with), "{s}");
        assert!(plain.keys.is_empty());
        assert_eq!(with.keys.len(), c.num_layers, "{s}");
        for k in &with.keys {
            assert_eq!(k.len(), tokens.len() * width, "{s}");
            assert!(k.iter().all(|v| v.is_finite()));
        }
        // Keys are per-row: the keys of a prefix are a prefix of the keys.
        let short = model
            .trace_with(&st, &tokens[..5], CHUNK, Capture { keys: true })
            .unwrap();
        assert_eq!(short.keys[1][..], with.keys[1][..5 * width], "{s}");

        let dir = std::env::temp_dir().join(format!("veritrace-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trace.safetensors");
        write_trace(&path, &with, None).unwrap();
        let (back, _) = read_trace(&path).unwrap();
        assert_eq!(back, with, "{s}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn provers_on_other_setups_are_accepted_under_their_own_setup() {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use veritrace_protocol::tolerance::TolerancePolicy;
    use veritrace_protocol::{
        ChallengeParams, Mode, Prover, SamplingStrategy, Step, Verdict, Verifier, VerifierConfig,
    };
    let model = tiny();
    for s in [
        "bf16/attn=tiled:4/quant=int8-channel/splitk=4",
        "f32/attn=topk:3/order=decode",
    ] {
        let (statement, trace) = model
            .prove_run(&setup(s), &prompt(10), 3, 4, HasherId::Blake3)
            .unwrap();
        let cfg = VerifierConfig {
            method: veritrace_protocol::LayerCheck::Recompute,
            mode: Mode::Interactive,
            params: ChallengeParams {
                samples: statement.geometry.num_cells() as u32,
                strategy: SamplingStrategy::Uniform,
                pow_bits: 0,
                attention: None,
            },
            rounds: 1,
            tolerance: TolerancePolicy::Exact,
        };
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let mut prover = Prover::new(statement.clone(), trace.layer_bytes()).unwrap();
        let mut verifier = Verifier::new(cfg, model.clone()).unwrap();
        verifier.expect_statement(statement.clone());
        let mut step = verifier.receive_commitment(prover.commit().unwrap(), &mut rng);
        let verdict = loop {
            match step {
                Step::Decided(v) => break v,
                Step::Challenge(c) => {
                    step = verifier.receive_opening(&prover.open(&c).unwrap(), &mut rng)
                }
                Step::AwaitOpening => unreachable!("interactive"),
            }
        };
        assert_eq!(verdict, Verdict::Accept, "{s}");
    }
}

#[test]
fn forward_without_a_trace_gives_the_traces_last_layer() {
    let model = tiny();
    let tokens = prompt(19);
    for s in [
        "f32/attn=eager",
        "bf16/attn=tiled:4",
        "f32/attn=eager/reuse=3",
    ] {
        let st = setup(s);
        let trace = model.trace(&st, &tokens, CHUNK).unwrap();
        let last = model.forward(&st, &tokens, CHUNK).unwrap();
        assert_eq!(&last, trace.layers.last().unwrap(), "{s}");
    }
}
