//! Numeric setups on the synthetic BERT encoder (so these tests always run): every supported
//! setup runs finite and deterministic and recomputes cell by cell bit for bit (with and
//! without an attention mask); a window or top-k covering every key is bitwise eager; tiled
//! attention is eager up to rounding in f32; `order=decode` is refused; 16-bit traces hold
//! 16-bit values; honest reduction-order changes stay near the reference while precision and
//! quantization move further; skip and reuse follow their definitions; the encoder is an
//! [`Engine`].

mod synthetic_bert;

use std::path::PathBuf;

use synthetic_bert::{model, tokens};
use veritrace_model::{BertModel, CellInputs, Engine, ModelError, Setup, Trace};

const CHUNK: usize = 8;

fn setup(s: &str) -> Setup {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// One setup of every kind the encoder runs.
const SETUPS: [&str; 26] = [
    "f32/attn=eager",
    "bf16/attn=eager",
    "f16/attn=eager",
    "f32/attn=tiled:4",
    "bf16/attn=tiled:8",
    "f16/attn=tiled:3",
    "f32/attn=window:6",
    "bf16/attn=window:3",
    "f32/attn=topk:5",
    "f16/attn=topk:2",
    "f32/attn=eager/quant=int8-tensor",
    "f32/attn=eager/quant=int8-tensor:mse",
    "f32/attn=eager/quant=int8-channel",
    "f32/attn=eager/quant=int8-channel:mse",
    "f32/attn=eager/quant=int4-g32",
    "f32/attn=eager/quant=int4-g128:mse",
    "f32/attn=eager/splitk=4",
    "bf16/attn=eager/splitk=3",
    "f32/attn=eager/batch=3",
    "f32/attn=eager/skip=1",
    "f32/attn=eager/reuse=2",
    "f16/attn=tiled:4/quant=int4-g32:mse/splitk=2/batch=2/skip=2",
    "f32/attn=eager/kernels=invariant",
    "f32/attn=window:6/kernels=invariant",
    "f32/attn=eager/quant=int8-channel/kernels=invariant",
    "f32/attn=window:3/reuse=2/kernels=invariant",
];

fn bits(t: &Trace) -> Vec<Vec<u32>> {
    t.layers
        .iter()
        .map(|l| l.iter().map(|v| v.to_bits()).collect())
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
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

/// The synthetic model under `tag`, removed when dropped.
struct Synthetic {
    model: BertModel,
    dir: PathBuf,
}

impl Drop for Synthetic {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn synthetic(tag: &str) -> Synthetic {
    let (model, dir) = model(&format!("setups-{tag}"));
    Synthetic { model, dir }
}

#[test]
fn every_setup_runs_finite_and_deterministic() {
    let m = synthetic("determinism");
    let t = tokens(21);
    for s in SETUPS {
        let a = m.model.trace(&setup(s), &t, CHUNK).unwrap();
        assert_eq!(a.layers.len(), 3, "{s}");
        assert!(
            a.layers.iter().flatten().all(|v| v.is_finite()),
            "{s}: non-finite values"
        );
        // A fresh load (fresh weight cache) and a clone (shared cache) give the same bits.
        let fresh = BertModel::load(&m.dir).unwrap();
        assert_eq!(
            bits(&a),
            bits(&fresh.trace(&setup(s), &t, CHUNK).unwrap()),
            "{s}"
        );
        let clone = m.model.clone();
        assert_eq!(
            bits(&a),
            bits(&clone.trace(&setup(s), &t, CHUNK).unwrap()),
            "{s}"
        );
    }
}

/// Recomputes every cell of `trace` alone under `s` (with `mask`) and checks it bit for bit.
fn check_every_cell(m: &BertModel, s: &str, t: &[u32], mask: &[u32], trace: &Trace) {
    let st = setup(s);
    let n = t.len();
    let d = trace.hidden;
    for l in 0..trace.layers.len() {
        for j in 0..n.div_ceil(CHUNK) {
            let end = ((j + 1) * CHUNK).min(n);
            let inputs = if l == 0 {
                CellInputs::Tokens(t)
            } else {
                CellInputs::Hidden(&trace.layers[l - 1])
            };
            let got = m.recompute_cell_masked(&st, CHUNK, l, j, inputs, mask);
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

#[test]
fn every_setup_recomputes_every_cell_bit_identically() {
    let m = synthetic("cells");
    let n = 21; // the last chunk is partial
    let t = tokens(n);
    let all = vec![1; n];
    // Masked positions at both ends: the first key block of tiled:4 is hidden from every query
    // and the windows of the masked positions hold no visible key.
    let mut masked = all.clone();
    masked[..5].fill(0);
    masked[17..].fill(0);
    for s in SETUPS {
        let trace = m.model.trace(&setup(s), &t, CHUNK).unwrap();
        check_every_cell(&m.model, s, &t, &all, &trace);
        let trace = m.model.trace_masked(&setup(s), &t, &masked, CHUNK).unwrap();
        assert!(
            trace.layers.iter().flatten().all(|v| v.is_finite()),
            "{s}: non-finite values under a mask"
        );
        check_every_cell(&m.model, s, &t, &masked, &trace);
    }
}

#[test]
fn windows_and_top_k_covering_every_key_equal_eager_exactly() {
    let m = synthetic("cover");
    let t = tokens(19);
    let eager = m.model.trace(&Setup::F32_EAGER, &t, CHUNK).unwrap();
    // 19 real keys: two positions are at most 18 apart, so window:19 covers every key of every
    // real query (the padding rows of the last tile differ, but they are not part of the trace).
    for s in [
        "f32/attn=window:19",
        "f32/attn=window:24",
        "f32/attn=window:1000",
        "f32/attn=topk:19",
        "f32/attn=topk:1000",
    ] {
        let tr = m.model.trace(&setup(s), &t, CHUNK).unwrap();
        assert_eq!(bits(&tr), bits(&eager), "{s}");
    }
    // Also at 16 bits.
    let bf16 = m.model.trace(&setup("bf16/attn=eager"), &t, CHUNK).unwrap();
    for s in ["bf16/attn=window:19", "bf16/attn=topk:19"] {
        let tr = m.model.trace(&setup(s), &t, CHUNK).unwrap();
        assert_eq!(bits(&tr), bits(&bf16), "{s}");
    }
    // Narrower ones change the result.
    for s in [
        "f32/attn=window:18",
        "f32/attn=window:4",
        "f32/attn=topk:18",
        "f32/attn=topk:3",
    ] {
        let tr = m.model.trace(&setup(s), &t, CHUNK).unwrap();
        assert!(max_layer_diff(&tr, &eager) > 0.0, "{s}");
    }
    for s in ["f32/attn=window:4", "f32/attn=topk:3"] {
        let tr = m.model.trace(&setup(s), &t, CHUNK).unwrap();
        assert!(max_layer_diff(&tr, &eager) > 1e-3, "{s}");
    }
}

#[test]
fn tiled_attention_is_eager_up_to_rounding_in_f32() {
    let m = synthetic("tiled");
    let t = tokens(37);
    let eager = m.model.trace(&Setup::F32_EAGER, &t, CHUNK).unwrap();
    let mut mask = vec![1; 37];
    mask[..9].fill(0);
    let eager_masked = m
        .model
        .trace_masked(&Setup::F32_EAGER, &t, &mask, CHUNK)
        .unwrap();
    for block in [1, 3, 8, 64] {
        let s = setup(&format!("f32/attn=tiled:{block}"));
        let tr = m.model.trace(&s, &t, CHUNK).unwrap();
        let diff = max_layer_diff(&tr, &eager);
        assert!(diff < 1e-4, "tiled:{block}: {diff}");
        assert_eq!(tr.layers[0], eager.layers[0], "embeddings");
        let tr = m.model.trace_masked(&s, &t, &mask, CHUNK).unwrap();
        let diff = max_layer_diff(&tr, &eager_masked);
        assert!(diff < 1e-4, "masked tiled:{block}: {diff}");
    }
}

#[test]
fn decode_order_is_refused() {
    let m = synthetic("decode");
    let t = tokens(10);
    let trace = m.model.trace(&Setup::F32_EAGER, &t, CHUNK).unwrap();
    for s in [
        "f32/attn=eager/order=decode",
        "bf16/attn=tiled:4/order=decode",
    ] {
        let st = setup(s);
        let refused = |r: Result<_, ModelError>| match r {
            Err(ModelError::UnsupportedSetup(msg)) => {
                assert!(
                    msg.contains("order=decode") && msg.contains("encoder"),
                    "{msg}"
                )
            }
            other => panic!("{s}: {other:?}"),
        };
        refused(m.model.trace(&st, &t, CHUNK).map(|_| ()));
        refused(
            m.model
                .recompute_cell(&st, CHUNK, 1, 0, CellInputs::Hidden(&trace.layers[0]))
                .map(|_| ()),
        );
        refused(
            m.model
                .recompute_cell(&st, CHUNK, 0, 0, CellInputs::Tokens(&t))
                .map(|_| ()),
        );
        refused(Engine::check_setup(&m.model, &st));
    }
    // Layers the model does not have.
    for s in ["f32/attn=eager/skip=3", "f32/attn=eager/reuse=3"] {
        assert!(matches!(
            m.model.trace(&setup(s), &t, CHUNK),
            Err(ModelError::UnsupportedSetup(_))
        ));
    }
}

#[test]
fn sixteen_bit_traces_hold_sixteen_bit_values() {
    let m = synthetic("sixteen");
    let t = tokens(21);
    for s in [
        "bf16/attn=eager",
        "bf16/attn=tiled:4/quant=int8-channel/splitk=2",
        "bf16/attn=eager/reuse=2",
    ] {
        let tr = m.model.trace(&setup(s), &t, CHUNK).unwrap();
        assert!(
            tr.layers
                .iter()
                .flatten()
                .all(|v| half::bf16::from_f32(*v).to_f32() == *v),
            "{s}"
        );
    }
    for s in ["f16/attn=eager", "f16/attn=topk:4/batch=2"] {
        let tr = m.model.trace(&setup(s), &t, CHUNK).unwrap();
        assert!(
            tr.layers
                .iter()
                .flatten()
                .all(|v| half::f16::from_f32(*v).to_f32() == *v),
            "{s}"
        );
    }
}

#[test]
fn reduction_order_stays_near_the_reference_while_precision_and_quantization_move() {
    let m = synthetic("scale");
    let t = tokens(24);
    let reference = m.model.trace(&Setup::F32_EAGER, &t, CHUNK).unwrap();
    for s in [
        "f32/attn=eager/splitk=2",
        "f32/attn=eager/splitk=7",
        "f32/attn=eager/batch=2",
    ] {
        let tr = m.model.trace(&setup(s), &t, CHUNK).unwrap();
        let diff = max_layer_diff(&tr, &reference);
        assert!(diff < 1e-4, "{s}: {diff}");
        assert_eq!(tr.layers[0], reference.layers[0], "{s}: embeddings");
    }
    let diff = |s: &str| max_layer_diff(&m.model.trace(&setup(s), &t, CHUNK).unwrap(), &reference);
    let (bf16, f16) = (diff("bf16/attn=eager"), diff("f16/attn=eager"));
    let (int8, int4) = (
        diff("f32/attn=eager/quant=int8-channel"),
        diff("f32/attn=eager/quant=int4-g32"),
    );
    assert!(bf16 > 1e-3 && bf16 < 0.5, "bf16: {bf16}");
    assert!(f16 > 1e-5 && f16 < bf16, "f16 {f16} vs bf16 {bf16}");
    assert!(int8 > 1e-5 && int8 < int4, "int8 {int8} vs int4 {int4}");
    // Quantization leaves the embeddings alone; 16-bit precision rounds them.
    let q = m
        .model
        .trace(&setup("f32/attn=eager/quant=int4-g32"), &t, CHUNK)
        .unwrap();
    assert_eq!(q.layers[0], reference.layers[0]);
    let b = m.model.trace(&setup("bf16/attn=eager"), &t, CHUNK).unwrap();
    assert_ne!(b.layers[0], reference.layers[0]);
    // The two rounding methods at the same width are different computations.
    let mse = m
        .model
        .trace(&setup("f32/attn=eager/quant=int4-g32:mse"), &t, CHUNK)
        .unwrap();
    assert!(max_layer_diff(&q, &mse) > 1e-4);
}

#[test]
fn skip_and_reuse_follow_their_definitions() {
    let m = synthetic("structure");
    let t = tokens(16);
    let reference = m.model.trace(&Setup::F32_EAGER, &t, CHUNK).unwrap();
    let skip = m
        .model
        .trace(&setup("f32/attn=eager/skip=2"), &t, CHUNK)
        .unwrap();
    assert_eq!(skip.layers[2], skip.layers[1]);
    assert_eq!(skip.layers[1], reference.layers[1]);
    let skip1 = m
        .model
        .trace(&setup("f32/attn=eager/skip=1"), &t, CHUNK)
        .unwrap();
    assert_eq!(skip1.layers[1], reference.layers[0]);
    assert_ne!(skip1.layers[2], reference.layers[2]);
    let reuse = m
        .model
        .trace(&setup("f32/attn=eager/reuse=2"), &t, CHUNK)
        .unwrap();
    assert_eq!(reuse.layers[1], reference.layers[1]);
    for (i, v) in reuse.layers[2].iter().enumerate() {
        let (a, b) = (reuse.layers[1][i], reuse.layers[0][i]);
        assert_eq!(v.to_bits(), (a + (a - b)).to_bits());
    }
}

#[test]
fn the_encoder_is_an_engine() {
    let m = synthetic("engine");
    let e: &dyn Engine = &m.model;
    assert!(e
        .name()
        .starts_with("bert L=2 d=24 heads=3 vocab=50 digest="));
    assert_eq!(
        (e.num_layers(), e.hidden_size(), e.vocab_size()),
        (2, 24, 50)
    );
    // Not BERT's vocabulary: the default seeded rule.
    let p = e.prompt(3, 30);
    assert_eq!(p, veritrace_model::seeded_prompt(50, 3, 30));
    let s = setup("bf16/attn=tiled:4/quant=int8-channel");
    assert_eq!(
        bits(&e.trace(&s, &p, CHUNK).unwrap()),
        bits(&m.model.trace(&s, &p, CHUNK).unwrap())
    );
    assert!(e.check_setup(&s).is_ok());
    // The default study plan leaves out the decode order the encoder refuses.
    let plan = veritrace_model::StudyPlan::default_with_tokens(e, 32);
    assert!(plan
        .setups
        .iter()
        .all(|s| s.order == veritrace_model::Order::Prefill));
    assert!(!plan.honest_variants().is_empty());
    assert!(plan.setups.iter().any(|s| s.reuse == Some(2)));
}

#[test]
fn a_study_runs_on_the_encoder() {
    let m = synthetic("study");
    let mut plan = veritrace_model::StudyPlan::default_with_tokens(&m.model, 24);
    plan.prompts = 2;
    plan.chunk = CHUNK;
    let report = veritrace_model::run_study(&m.model, &plan, |_, _| {}).unwrap();
    let class = |s: &str| report.result(&setup(s)).unwrap().class;
    use veritrace_model::Class;
    assert_eq!(class("f32/attn=eager"), Class::Invariant);
    assert_eq!(class("f32/attn=eager/quant=int4-g32"), Class::CrossHardware);
    assert_eq!(class("f32/attn=eager/skip=1"), Class::CrossHardware);
    // A plan holding a setup the encoder refuses is refused before anything runs.
    plan.setups.push(setup("f32/attn=eager/order=decode"));
    assert!(matches!(
        veritrace_model::run_study(&m.model, &plan, |_, _| panic!("ran")),
        Err(veritrace_model::FingerprintError::Model(
            ModelError::UnsupportedSetup(_)
        ))
    ));
}
