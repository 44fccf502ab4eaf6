//! End-to-end protocol rounds with the deterministic toy engine, in both modes: honest provers
//! are accepted; every kind of tampered opening is rejected with the right reason; every field
//! of the statement (and the root) changes the challenge (the "Frozen Heart" class).

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use veritrace::commit::{CellId, Digest, Dtype, HasherId, TraceGeometry};
use veritrace::protocol::tolerance::{Metric, PerLayer, ThresholdPolicy, TolerancePolicy};
use veritrace::protocol::toy::ToyEngine;
use veritrace::protocol::transcript::{
    challenge_seed, check_pow, derive_challenge, find_pow_nonce,
};
use veritrace::protocol::{
    ChallengeParams, Commitment, Dependency, Message, Mode, Opening, OutputRule, ProtocolError,
    Prover, RejectReason, SamplingStrategy, Statement, Step, Verdict, Verifier, VerifierConfig,
    VerifierState, PROTOCOL_VERSION,
};

const HIDDEN: u32 = 4;

/// A statement whose output tokens really follow from the honest toy engine.
fn statement(
    dep: Dependency,
    layers: u32,
    n_in: usize,
    n_out: usize,
    chunk: u32,
    hasher: HasherId,
) -> Statement {
    statement_by(
        ToyEngine::default(),
        dep,
        layers,
        n_in,
        n_out,
        chunk,
        hasher,
    )
}

/// A statement whose output tokens follow from `engine` (a cheater claims what its run gave).
fn statement_by(
    engine: ToyEngine,
    dep: Dependency,
    layers: u32,
    n_in: usize,
    n_out: usize,
    chunk: u32,
    hasher: HasherId,
) -> Statement {
    let input: Vec<u32> = (0..n_in as u32).map(|i| 3 + 7 * i).collect();
    let output = engine
        .generate(dep, layers, HIDDEN as usize, &input, n_out)
        .unwrap();
    Statement {
        trace_level: veritrace_protocol::TraceLevel::Hidden,
        version: PROTOCOL_VERSION,
        model_digest: Digest([0xab; 32]),
        setup: b"toy/f32".to_vec(),
        geometry: TraceGeometry::new(layers, (n_in + n_out) as u32, HIDDEN, chunk, Dtype::F32)
            .unwrap(),
        input_tokens: input,
        output_tokens: output,
        hasher,
        dependency: dep,
        output_rule: OutputRule::Greedy,
        input_text: None,
        engine: None,
    }
}

fn prover(s: &Statement, engine: ToyEngine) -> Prover<Vec<u8>> {
    Prover::new(s.clone(), engine.trace_bytes(s).unwrap()).unwrap()
}

fn config(
    mode: Mode,
    samples: u32,
    strategy: SamplingStrategy,
    pow_bits: u8,
    rounds: u32,
) -> VerifierConfig {
    VerifierConfig {
        method: veritrace_protocol::LayerCheck::Recompute,
        mode,
        params: ChallengeParams {
            samples,
            strategy,
            pow_bits,
            attention: None,
        },
        rounds,
        tolerance: TolerancePolicy::Exact,
    }
}

/// Runs a whole session; `tamper` may change each opening before it is sent.
fn run(
    s: &Statement,
    mut p: Prover<Vec<u8>>,
    cfg: VerifierConfig,
    mut tamper: impl FnMut(&mut Opening),
) -> Verdict {
    let mut rng = ChaCha20Rng::from_seed([42; 32]);
    let mut v = Verifier::new(cfg.clone(), ToyEngine::default()).unwrap();
    let commitment = p.commit().unwrap();
    assert_eq!(&commitment.statement, s);
    let mut step = v.receive_commitment(commitment, &mut rng);
    loop {
        let mut opening = match step {
            Step::Decided(verdict) => return verdict,
            Step::Challenge(c) => p.open(&c).unwrap(),
            Step::AwaitOpening => p.open_non_interactive(&cfg.params).unwrap().1,
        };
        tamper(&mut opening);
        // every opening survives its binary and JSON forms
        assert_eq!(Opening::from_bytes(&opening.to_bytes()).unwrap(), opening);
        step = v.receive_opening(&opening, &mut rng);
    }
}

fn reject(v: Verdict) -> RejectReason {
    match v {
        Verdict::Reject(r) => r,
        Verdict::Accept => panic!("expected a rejection"),
    }
}

#[test]
fn honest_provers_are_accepted_in_both_modes() {
    let strategies = [
        SamplingStrategy::Uniform,
        SamplingStrategy::Stratified,
        SamplingStrategy::CostWeighted,
    ];
    for dep in [Dependency::Causal, Dependency::Window { size: 3 }] {
        for hasher in [HasherId::Blake3, HasherId::Sha256] {
            let s = statement(dep, 4, 7, 5, 3, hasher);
            for strategy in strategies {
                for (mode, pow) in [
                    (Mode::Interactive, 0),
                    (Mode::NonInteractive, 0),
                    (Mode::NonInteractive, 6),
                ] {
                    let v = run(
                        &s,
                        prover(&s, ToyEngine::default()),
                        config(mode, 4, strategy, pow, 3),
                        |_| {},
                    );
                    assert_eq!(
                        v,
                        Verdict::Accept,
                        "{dep:?} {hasher} {strategy:?} {mode:?} pow {pow}"
                    );
                }
            }
        }
    }
    // an encoder: bidirectional attention, no output tokens; every cell challenged
    let s = statement(Dependency::Bidirectional, 3, 10, 0, 4, HasherId::Blake3);
    let all = s.geometry.num_cells() as u32;
    let v = run(
        &s,
        prover(&s, ToyEngine::default()),
        config(Mode::Interactive, all, SamplingStrategy::Uniform, 0, 1),
        |_| {},
    );
    assert_eq!(v, Verdict::Accept);
}

fn base() -> (Statement, VerifierConfig) {
    let s = statement(Dependency::Causal, 3, 6, 4, 2, HasherId::Blake3);
    let all = s.geometry.num_cells() as u32;
    (
        s,
        config(Mode::Interactive, all, SamplingStrategy::Uniform, 0, 1),
    )
}

#[test]
fn tampered_openings_are_rejected_with_the_right_reason() {
    let (s, cfg) = base();
    let honest = || prover(&s, ToyEngine::default());

    // a flipped bit in an opened cell: the leaf no longer matches the root (equivocation)
    let r = reject(run(&s, honest(), cfg.clone(), |o| o.cells[3].data[0] ^= 1));
    assert!(matches!(r, RejectReason::BadProof { .. }), "{r}");
    // a tampered sibling (open fewer cells, so the proof has siblings)
    let few = config(Mode::Interactive, 2, SamplingStrategy::Uniform, 0, 1);
    let r = reject(run(&s, honest(), few, |o| o.proof.siblings[0].0[5] ^= 1));
    assert!(matches!(r, RejectReason::BadProof { .. }), "{r}");
    // a sibling too many
    let r = reject(run(&s, honest(), cfg.clone(), |o| {
        o.proof.siblings.push(Digest([0; 32]))
    }));
    assert!(matches!(r, RejectReason::BadProof { .. }), "{r}");
    // a dropped cell
    let r = reject(run(&s, honest(), cfg.clone(), |o| {
        o.cells.remove(2);
    }));
    assert!(
        matches!(r, RejectReason::MissingCell { cell } if cell == s.geometry.cell_at(2).unwrap()),
        "{r}"
    );
    // a cell not asked for (past the end of the required list)
    let r = reject(run(&s, honest(), cfg.clone(), |o| {
        let mut extra = o.cells[0].clone();
        extra.cell = CellId { layer: 2, chunk: 9 };
        o.cells.push(extra);
    }));
    assert!(matches!(r, RejectReason::UnexpectedCell { .. }), "{r}");
    // two cells swapped
    let r = reject(run(&s, honest(), cfg.clone(), |o| o.cells.swap(0, 1)));
    assert!(matches!(r, RejectReason::MissingCell { .. }), "{r}");
    // a truncated cell
    let r = reject(run(&s, honest(), cfg.clone(), |o| {
        o.cells[1].data.pop();
    }));
    assert!(matches!(r, RejectReason::WrongCellLength { .. }), "{r}");
    // an opening for another round
    let r = reject(run(&s, honest(), cfg.clone(), |o| o.round = 1));
    assert!(matches!(r, RejectReason::OutOfOrder { .. }), "{r}");
}

#[test]
fn a_trace_from_another_setup_fails_tolerance() {
    let (_, cfg) = base();
    let cheap = ToyEngine { perturb: 1e-3 };
    let s = statement_by(cheap, Dependency::Causal, 3, 6, 4, 2, HasherId::Blake3);
    // commits honestly to the trace of a perturbed engine, with the tokens that run produced:
    // proofs and tokens pass, recompute does not
    let r = reject(run(&s, prover(&s, cheap), cfg.clone(), |_| {}));
    assert!(
        matches!(r, RejectReason::Tolerance { cell, .. } if cell.layer == 1),
        "{r}"
    );
    // under a threshold policy that tolerates 1e-2 it passes, and a 1e-1 change does not
    let mut loose = cfg;
    loose.tolerance = TolerancePolicy::Threshold(ThresholdPolicy::new(
        Metric::MaxAbs,
        PerLayer::uniform(0.01),
    ));
    let v = run(&s, prover(&s, cheap), loose.clone(), |_| {});
    assert_eq!(v, Verdict::Accept);
    let worse = ToyEngine { perturb: 1e-1 };
    let s = statement_by(worse, Dependency::Causal, 3, 6, 4, 2, HasherId::Blake3);
    let r = reject(run(&s, prover(&s, worse), loose, |_| {}));
    assert!(matches!(r, RejectReason::Tolerance { .. }), "{r}");
}

#[test]
fn non_finite_values_are_rejected_before_comparison() {
    let (s, cfg) = base();
    let mut layers = ToyEngine::default().trace_bytes(&s).unwrap();
    let row = s.geometry.row_byte_len();
    layers[1][row + 4..row + 8].copy_from_slice(&f32::NAN.to_le_bytes()); // cell (1, 0), element 5
    let p = Prover::new(s.clone(), layers).unwrap();
    let r = reject(run(&s, p, cfg, |_| {}));
    assert!(
        matches!(
            r,
            RejectReason::NonFinite {
                cell: CellId { layer: 1, chunk: 0 },
                index: 5
            }
        ),
        "{r}"
    );
}

#[test]
fn wrong_output_tokens_are_rejected() {
    let (mut s, cfg) = base();
    s.output_tokens[2] ^= 1;
    // the prover's trace is the honest one for these (wrong) tokens
    let r = reject(run(&s, prover(&s, ToyEngine::default()), cfg, |_| {}));
    assert!(
        matches!(
            r,
            RejectReason::OutputTokenMismatch { .. } | RejectReason::Tolerance { .. }
        ),
        "{r}"
    );
}

#[test]
fn messages_out_of_order() {
    let (s, cfg) = base();
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    // a prover commits once, before any challenge
    let mut p = prover(&s, ToyEngine::default());
    let c = p.commit().unwrap();
    assert!(matches!(p.commit(), Err(ProtocolError::OutOfOrder { .. })));
    // opening before the commitment
    let mut v = Verifier::new(cfg.clone(), ToyEngine::default()).unwrap();
    let stray = prover(&s, ToyEngine::default())
        .open_cells(0, &[CellId { layer: 0, chunk: 0 }], 0)
        .unwrap();
    assert!(matches!(
        v.receive_opening(&stray, &mut rng),
        Step::Decided(Verdict::Reject(RejectReason::OutOfOrder { .. }))
    ));
    // a commitment after the challenge
    let mut v = Verifier::new(cfg.clone(), ToyEngine::default()).unwrap();
    let Step::Challenge(ch) = v.receive_commitment(c.clone(), &mut rng) else {
        panic!("challenge")
    };
    assert!(matches!(
        v.receive_commitment(c.clone(), &mut rng),
        Step::Decided(Verdict::Reject(RejectReason::OutOfOrder { .. }))
    ));
    // decided is final: a correct opening does not revive it
    let opening = p.open(&ch).unwrap();
    assert!(matches!(
        v.receive_opening(&opening, &mut rng),
        Step::Decided(Verdict::Reject(_))
    ));
    assert!(matches!(
        v.state(),
        VerifierState::Decided(Verdict::Reject(_))
    ));
    // the prover refuses a challenge for a round it is not at
    assert!(matches!(p.open(&ch), Err(ProtocolError::OutOfOrder { .. })));
}

#[test]
fn non_interactive_proof_of_work_is_checked() {
    let (s, _) = base();
    let cfg = config(Mode::NonInteractive, 3, SamplingStrategy::Uniform, 8, 1);
    let v = run(&s, prover(&s, ToyEngine::default()), cfg.clone(), |_| {});
    assert_eq!(v, Verdict::Accept);
    let r = reject(run(
        &s,
        prover(&s, ToyEngine::default()),
        cfg.clone(),
        |o| o.pow_nonce += 1,
    ));
    assert!(
        matches!(r, RejectReason::BadProofOfWork { pow_bits: 8, .. }),
        "{r}"
    );
    // the honest nonce is the smallest that works, and the derived challenge is what was opened
    let mut p = prover(&s, ToyEngine::default());
    let c = p.commit().unwrap();
    let (challenge, opening) = p.open_non_interactive(&cfg.params).unwrap();
    assert_eq!(opening.pow_nonce, find_pow_nonce(&c, &cfg.params).unwrap());
    assert_eq!(
        derive_challenge(&c, 0, &cfg.params, opening.pow_nonce).unwrap(),
        challenge
    );
}

/// The proof of work is per session: every round repeats round 0's nonce, so a prover cannot
/// grind each round separately. A later round with another nonce, even one that meets the
/// difficulty, is refused.
#[test]
fn later_rounds_must_repeat_the_session_nonce() {
    let (s, _) = base();
    let cfg = config(Mode::NonInteractive, 2, SamplingStrategy::Uniform, 4, 3);
    let mut p = prover(&s, ToyEngine::default());
    let c = p.commit().unwrap();
    let nonce = find_pow_nonce(&c, &cfg.params).unwrap();
    let other = (nonce + 1..)
        .find(|&n| check_pow(&c, &cfg.params, n).unwrap())
        .unwrap();
    let mut rng = ChaCha20Rng::from_seed([3; 32]);
    let mut v = Verifier::new(cfg.clone(), ToyEngine::default()).unwrap();
    assert_eq!(
        v.receive_commitment(c.clone(), &mut rng),
        Step::AwaitOpening
    );
    let (_, o0) = p.open_non_interactive(&cfg.params).unwrap();
    assert_eq!(o0.pow_nonce, nonce);
    assert_eq!(v.receive_opening(&o0, &mut rng), Step::AwaitOpening);
    // round 1 answered under another valid nonce: its challenge would differ, and it is refused
    let ch = derive_challenge(&c, 1, &cfg.params, other).unwrap();
    let o1 = p.open_cells(1, &ch.cells, other).unwrap();
    let r = reject(match v.receive_opening(&o1, &mut rng) {
        Step::Decided(v) => v,
        other => panic!("{other:?}"),
    });
    assert!(
        matches!(r, RejectReason::BadProofOfWork { nonce, .. } if nonce == other),
        "{r}"
    );
}

/// Every leaf value of the statement's JSON form, and the root, changes the challenge seed. The
/// test walks the JSON, so a field added to the statement later but left out of the transcript
/// fails it.
#[test]
fn every_statement_field_changes_the_challenge() {
    let (s, _) = base();
    let mut with_text = s.clone();
    with_text.input_text = Some(veritrace::protocol::InputText {
        tokenizer: Digest([9; 32]),
        chat: false,
        text: "text".into(),
    });
    with_text.engine = Some("an engine".into());
    // and the sub-layer level, so that its widths and roots are mutated too
    with_text.trace_level = veritrace_protocol::TraceLevel::SubLayer {
        context: 5,
        cell: 7,
        dtype: Dtype::F32,
    };
    // a text binding and its absence give different transcripts
    let params = ChallengeParams {
        samples: 3,
        strategy: SamplingStrategy::Uniform,
        pow_bits: 0,
        attention: None,
    };
    let root = Digest([7; 32]);
    let commit = |statement: Statement| Commitment {
        sublayer_roots: (statement.trace_level != veritrace_protocol::TraceLevel::Hidden)
            .then_some(veritrace_protocol::SubLayerRoots {
                context: Digest([8; 32]),
                cell: Digest([9; 32]),
                kv: statement.trace_level.heads().map(|_| Digest([10; 32])),
            }),
        statement,
        root,
    };
    assert_ne!(
        challenge_seed(&commit(with_text.clone()), 0, &params, 0),
        challenge_seed(&commit(s.clone()), 0, &params, 0),
        "input text is not bound"
    );
    // and the by-head level, so that its head counts and key-value root are mutated too
    let mut by_head = with_text.clone();
    by_head.trace_level = veritrace_protocol::TraceLevel::SubLayerByHead {
        context: 5,
        cell: 7,
        heads: 4,
        kv_heads: 2,
        kv: 6,
        dtype: Dtype::F32,
    };
    for c in [commit(with_text), commit(by_head)] {
        let params = ChallengeParams {
            samples: 3,
            strategy: SamplingStrategy::Uniform,
            pow_bits: 0,
            attention: None,
        };
        let seed = challenge_seed(&c, 0, &params, 0);

        fn leaves(v: &serde_json::Value, path: Vec<String>, out: &mut Vec<Vec<String>>) {
            match v {
                serde_json::Value::Object(m) => m.iter().for_each(|(k, x)| {
                    let mut p = path.clone();
                    p.push(k.clone());
                    leaves(x, p, out)
                }),
                serde_json::Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| {
                    let mut p = path.clone();
                    p.push(i.to_string());
                    leaves(x, p, out)
                }),
                _ => out.push(path),
            }
        }
        let json = serde_json::to_value(&c).unwrap();
        let mut paths = Vec::new();
        leaves(&json, vec![], &mut paths);
        let mut checked = 0;
        for path in &paths {
            let mut mutated = json.clone();
            let mut slot = &mut mutated;
            for k in path {
                slot = match slot {
                    serde_json::Value::Object(m) => m.get_mut(k).unwrap(),
                    serde_json::Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
                    _ => unreachable!(),
                };
            }
            // change the value to another valid one of the same kind
            *slot = match slot.clone() {
                serde_json::Value::Number(n) => serde_json::json!(n.as_u64().unwrap() + 1),
                serde_json::Value::String(x) if x.len() == 64 => {
                    serde_json::json!(format!(
                        "{}{}",
                        &x[..63],
                        if x.ends_with('0') { '1' } else { '0' }
                    ))
                }
                serde_json::Value::String(x) if x == "blake3" => serde_json::json!("sha256"),
                serde_json::Value::String(x) if x == "f32" => serde_json::json!("bf16"),
                serde_json::Value::String(x) if x == "causal" => serde_json::json!("bidirectional"),
                serde_json::Value::String(x) if x == "greedy" => {
                    serde_json::json!({"sampled": {"seed": "00".repeat(32)}})
                }
                serde_json::Value::String(x) => serde_json::json!(format!("{x}00")),
                serde_json::Value::Bool(b) => serde_json::json!(!b),
                // an absent optional root (the key-value root below the by-head level)
                serde_json::Value::Null => continue,
                other => panic!("unexpected leaf {other} at {path:?}"),
            };
            let Ok(m) = serde_json::from_value::<Commitment>(mutated) else {
                panic!("mutation at {path:?} gave an undecodable commitment");
            };
            assert_ne!(
                challenge_seed(&m, 0, &params, 0),
                seed,
                "field {path:?} is not bound"
            );
            checked += 1;
        }
        // version, model digest, setup, 6 input + 4 output tokens, 5 geometry fields, hasher,
        // dependency, output rule, the text's tokenizer, chat flag and text, the engine, root
        assert!(checked >= 25, "only {checked} fields checked");
    }
}

/// A verifier that knows what it asked for rejects a commitment under another statement.
#[test]
fn the_verifier_can_require_its_own_statement() {
    let (s, cfg) = base();
    let mut rng = ChaCha20Rng::from_seed([5; 32]);
    let mut other = s.clone();
    other.setup = b"toy/int4".to_vec();
    let mut p = prover(&other, ToyEngine::default());
    let mut v = Verifier::new(cfg.clone(), ToyEngine::default()).unwrap();
    v.expect_statement(s.clone());
    let r = reject(match v.receive_commitment(p.commit().unwrap(), &mut rng) {
        Step::Decided(v) => v,
        other => panic!("{other:?}"),
    });
    assert!(
        matches!(&r, RejectReason::GeometryMismatch { detail } if detail.contains("setup")),
        "{r}"
    );
    // the same statement passes on to the challenge
    let mut p = prover(&s, ToyEngine::default());
    let mut v = Verifier::new(cfg, ToyEngine::default()).unwrap();
    v.expect_statement(s);
    assert!(matches!(
        v.receive_commitment(p.commit().unwrap(), &mut rng),
        Step::Challenge(_)
    ));
}
