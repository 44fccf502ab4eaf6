//! End-to-end protocol sessions with the tiny decoder as both the prover's engine and the
//! verifier's [`Recompute`], and the safetensors trace format.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use safetensors::SafeTensors;
use veritrace_commit::{commit_trace, HasherId};
use veritrace_model::{read_trace, write_trace, LlamaModel, Setup, STATEMENT_METADATA_KEY};
use veritrace_protocol::tolerance::TolerancePolicy;
use veritrace_protocol::{
    ChallengeParams, Mode, Prover, RejectReason, SamplingStrategy, Statement, Step, Verdict,
    Verifier, VerifierConfig,
};

const CHUNK: u32 = 8;

fn prompt() -> Vec<u32> {
    (0..24u32).map(|i| (5 + 29 * i * i + 3 * i) % 512).collect()
}

fn config(mode: Mode, samples: u32) -> VerifierConfig {
    VerifierConfig {
        method: veritrace_protocol::LayerCheck::Recompute,
        mode,
        params: ChallengeParams {
            samples,
            strategy: SamplingStrategy::Uniform,
            pow_bits: 0,
            attention: None,
        },
        rounds: 1,
        tolerance: TolerancePolicy::Exact,
    }
}

fn session(
    model: &LlamaModel,
    statement: &Statement,
    layers: Vec<Vec<u8>>,
    cfg: VerifierConfig,
) -> Verdict {
    let mut rng = ChaCha20Rng::from_seed([7; 32]);
    let mut prover = Prover::new(statement.clone(), layers).unwrap();
    let mut verifier = Verifier::new(cfg.clone(), model.clone()).unwrap();
    verifier.expect_statement(statement.clone());
    let mut step = verifier.receive_commitment(prover.commit().unwrap(), &mut rng);
    loop {
        let opening = match step {
            Step::Decided(v) => return v,
            Step::Challenge(c) => prover.open(&c).unwrap(),
            Step::AwaitOpening => prover.open_non_interactive(&cfg.params).unwrap().1,
        };
        step = verifier.receive_opening(&opening, &mut rng);
    }
}

#[test]
fn honest_session_is_accepted_and_a_perturbed_cell_rejected() {
    let model = LlamaModel::preset("tiny").unwrap();
    let (statement, trace) = model
        .prove_run(&Setup::F32_EAGER, &prompt(), 8, CHUNK, HasherId::Blake3)
        .unwrap();
    assert_eq!(statement.geometry.layers, 5);
    assert_eq!(statement.geometry.tokens, 32);
    let cells = statement.geometry.num_cells() as u32;
    // every cell challenged (exact tolerance), in both modes
    for mode in [Mode::Interactive, Mode::NonInteractive] {
        let v = session(&model, &statement, trace.layer_bytes(), config(mode, cells));
        assert_eq!(v, Verdict::Accept, "{mode:?}");
        let v = session(&model, &statement, trace.layer_bytes(), config(mode, 5));
        assert_eq!(v, Verdict::Accept, "{mode:?}, 5 samples");
    }
    // one element of cell (2, 1) nudged by one ulp in the committed trace
    let mut bad = trace.clone();
    let i = (CHUNK as usize + 3) * trace.hidden + 17;
    bad.layers[2][i] = f32::from_bits(bad.layers[2][i].to_bits() + 1);
    for mode in [Mode::Interactive, Mode::NonInteractive] {
        let v = session(&model, &statement, bad.layer_bytes(), config(mode, cells));
        assert!(
            matches!(v, Verdict::Reject(RejectReason::Tolerance { .. })),
            "{mode:?}: {v:?}"
        );
    }
}

#[test]
fn statements_the_engine_cannot_run_are_refused() {
    let model = LlamaModel::preset("tiny").unwrap();
    let (statement, trace) = model
        .prove_run(&Setup::F32_EAGER, &prompt()[..10], 2, 4, HasherId::Blake3)
        .unwrap();
    let cells = statement.geometry.num_cells() as u32;
    let mut other_setup = statement.clone();
    other_setup.setup = b"f32/attn=flash".to_vec();
    let mut other_model = statement.clone();
    other_model.model_digest = LlamaModel::preset("small").unwrap().digest();
    for s in [other_setup, other_model] {
        let v = session(
            &model,
            &s,
            trace.layer_bytes(),
            config(Mode::Interactive, cells),
        );
        assert!(
            matches!(v, Verdict::Reject(RejectReason::RecomputeFailed { .. })),
            "{v:?}"
        );
    }
    // A setup the engine runs, claimed over a trace computed under another one: the
    // recomputed cells differ, so the verifier rejects on the values.
    let mut claimed_bf16 = statement.clone();
    claimed_bf16.setup = b"bf16/attn=eager".to_vec();
    let v = session(
        &model,
        &claimed_bf16,
        trace.layer_bytes(),
        config(Mode::Interactive, cells),
    );
    assert!(matches!(v, Verdict::Reject(_)), "{v:?}");
    assert!(
        !matches!(v, Verdict::Reject(RejectReason::RecomputeFailed { .. })),
        "{v:?}"
    );
}

#[test]
fn safetensors_round_trip_commits_to_the_same_root() {
    let model = LlamaModel::preset("tiny").unwrap();
    let (statement, trace) = model
        .prove_run(&Setup::F32_EAGER, &prompt(), 4, CHUNK, HasherId::Blake3)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("veritrace-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trace.safetensors");
    write_trace(&path, &trace, Some(&statement)).unwrap();

    let (back, back_statement) = read_trace(&path).unwrap();
    assert_eq!(back, trace);
    assert_eq!(back_statement.as_ref(), Some(&statement));

    let g = trace.geometry(CHUNK).unwrap();
    assert_eq!(g, statement.geometry);
    let mem = trace.layer_bytes();
    let mem_refs: Vec<&[u8]> = mem.iter().map(|l| l.as_slice()).collect();
    let root = commit_trace(HasherId::Blake3, &g, &mem_refs)
        .unwrap()
        .root();

    // the file's raw tensor bytes, as `veritrace commit` reads them
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    assert!(meta
        .metadata()
        .as_ref()
        .unwrap()
        .contains_key(STATEMENT_METADATA_KEY));
    let views: Vec<_> = (0..g.layers)
        .map(|l| st.tensor(&format!("h.{l}")).unwrap())
        .collect();
    for v in &views {
        assert_eq!(v.shape(), &[trace.tokens, trace.hidden]);
        assert_eq!(v.dtype(), safetensors::Dtype::F32);
    }
    let file_refs: Vec<&[u8]> = views.iter().map(|v| v.data()).collect();
    let file_root = commit_trace(HasherId::Blake3, &g, &file_refs)
        .unwrap()
        .root();
    assert_eq!(file_root, root);
    let back_bytes = back.layer_bytes();
    let back_refs: Vec<&[u8]> = back_bytes.iter().map(|l| l.as_slice()).collect();
    assert_eq!(
        commit_trace(HasherId::Blake3, &g, &back_refs)
            .unwrap()
            .root(),
        root
    );

    // without a statement; then damaged files give typed errors
    write_trace(&path, &trace, None).unwrap();
    assert_eq!(read_trace(&path).unwrap().1, None);
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    assert!(read_trace(&path).is_err());
    assert!(read_trace(&dir.join("missing.safetensors")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn recompute_trait_refuses_bad_input_with_engine_errors() {
    use veritrace_protocol::{ProtocolError, Recompute};
    let model = LlamaModel::preset("tiny").unwrap();
    let (statement, trace) = model
        .prove_run(
            &Setup::F32_EAGER,
            &prompt()[..12],
            4,
            CHUNK,
            HasherId::Blake3,
        )
        .unwrap();
    let bytes = trace.layer_bytes();
    let row = trace.hidden * 4;
    let engine = |r: veritrace_protocol::Result<Vec<u8>>| {
        assert!(matches!(r, Err(ProtocolError::Engine(_))), "{r:?}");
    };
    // the honest call works and matches the trace
    let ok = model
        .layer(&statement, 2, 8..16, 0..16, &bytes[1][..16 * row])
        .unwrap();
    assert_eq!(ok, bytes[2][8 * row..16 * row]);
    assert_eq!(
        model.embed(&statement, 8..16).unwrap(),
        bytes[0][8 * row..16 * row]
    );
    // wrong lengths, wrong dependency rows, rows that are not one cell, NaN
    engine(model.layer(&statement, 2, 8..16, 0..16, &bytes[1][..16 * row - 4]));
    engine(model.layer(&statement, 2, 8..16, 1..16, &bytes[1][row..16 * row]));
    engine(model.layer(&statement, 2, 4..12, 0..12, &bytes[1][..12 * row]));
    engine(model.embed(&statement, 3..8));
    let mut nan = bytes[1][..16 * row].to_vec();
    nan[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    engine(model.layer(&statement, 2, 8..16, 0..16, &nan));
    assert!(matches!(
        model.next_token(&statement, 11, &bytes[4][..row - 4]),
        Err(ProtocolError::Engine(_))
    ));
}

/// Greedy tokens the precision's rounding cannot separate (specs/protocol.md §11.2): in a tiny
/// decoder whose tokens 0 and 1 share their embedding and LM-head rows (an exact tie at every
/// position) and token 2 has the opposite LM-head row, a statement claiming token 1 where the
/// argmax is 0 is rejected by a bitwise verifier and accepted by one with a threshold policy;
/// token 2 is rejected by both.
#[test]
fn a_greedy_near_tie_passes_a_threshold_verifier_and_a_far_token_does_not() {
    use veritrace_protocol::tolerance::{Metric, PerLayer, ThresholdPolicy};
    let base = LlamaModel::preset("tiny").unwrap();
    let setup = Setup::F32_EAGER;
    let (p0, _) = base
        .prove_run(&setup, &prompt(), 0, CHUNK, HasherId::Blake3)
        .unwrap();
    let d = base.config().hidden_size;
    // the last prompt row's final-norm signs, for an LM-head row 0 that wins there
    let trace = base
        .trace(&setup, &p0.input_tokens, CHUNK as usize)
        .unwrap();
    let last = trace.layers.last().unwrap();
    let row = &last[(p0.input_tokens.len() - 1) * d..][..d];
    let mut tensors = base.named_tensors().unwrap();
    let gain: Vec<f32> = tensors
        .iter()
        .find(|(n, _, _)| n == "model.norm.weight")
        .unwrap()
        .2
        .clone();
    for (name, _, data) in tensors.iter_mut() {
        if name == "model.embed_tokens.weight" {
            let (r0, rest) = data.split_at_mut(d);
            rest[..d].copy_from_slice(r0);
            rest[d..2 * d].copy_from_slice(r0);
        }
        if name == "lm_head.weight" {
            for i in 0..d {
                let w = 0.5 * (row[i] * gain[i]).signum();
                data[i] = w;
                data[d + i] = w;
                data[2 * d + i] = -w;
            }
        }
    }
    let model = LlamaModel::from_tensors(base.config().clone(), tensors).unwrap();
    let (statement, trace) = model
        .prove_run(&setup, &prompt(), 3, CHUNK, HasherId::Blake3)
        .unwrap();
    assert_eq!(statement.output_tokens[0], 0, "token 0 wins the tie");
    let cells = statement.geometry.num_cells() as u32;
    let threshold = |mut c: VerifierConfig| {
        c.tolerance = TolerancePolicy::Threshold(ThresholdPolicy::new(
            Metric::RelL2,
            PerLayer::uniform(1e-6),
        ));
        c
    };
    let claim = |t: u32| {
        let mut s = statement.clone();
        s.output_tokens[0] = t;
        s
    };
    // tokens 0, 1 and 2 share their embedding: the trace is the same for every claim
    let layers = trace.layer_bytes();
    let exact = config(Mode::Interactive, cells);
    assert_eq!(
        session(&model, &claim(0), layers.clone(), exact.clone()),
        Verdict::Accept
    );
    assert_eq!(
        session(&model, &claim(0), layers.clone(), threshold(exact.clone())),
        Verdict::Accept
    );
    let v = session(&model, &claim(1), layers.clone(), exact.clone());
    assert!(
        matches!(
            v,
            Verdict::Reject(RejectReason::OutputTokenMismatch {
                claimed: 1,
                recomputed: 0,
                ..
            })
        ),
        "{v:?}"
    );
    assert_eq!(
        session(&model, &claim(1), layers.clone(), threshold(exact.clone())),
        Verdict::Accept
    );
    for cfg in [exact.clone(), threshold(exact.clone())] {
        let v = session(&model, &claim(2), layers.clone(), cfg);
        assert!(
            matches!(
                v,
                Verdict::Reject(RejectReason::OutputTokenMismatch { claimed: 2, .. })
            ),
            "{v:?}"
        );
    }
    // the rule itself: the tie within any precision's rounding, the opposite row in none
    for s in [
        "f32/attn=eager",
        "bf16/attn=eager",
        "bf16/attn=eager/kernels=invariant",
    ] {
        let s: Setup = s.parse().unwrap();
        assert!(model.token_within_rounding(&s, row, 1).unwrap(), "{s}");
        assert!(!model.token_within_rounding(&s, row, 2).unwrap(), "{s}");
    }
    assert!(model.token_within_rounding(&setup, row, 512).is_err());
}
