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
