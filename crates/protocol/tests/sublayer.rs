//! The sub-layer trace level (issue 16, specs/protocol.md §3.5, §4.3, §11.4) with the toy
//! engine: honest sessions pass under every [`LayerCheck`], and each way a prover can get the
//! sub-layer part wrong is a typed rejection, never a panic.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use veritrace_commit::{CellId, Digest, Dtype, HasherId, TraceGeometry};
use veritrace_protocol::tolerance::TolerancePolicy;
use veritrace_protocol::toy::ToyEngine;
use veritrace_protocol::{
    check_opening_by, AlgebraicCheck, Challenge, ChallengeParams, Commitment, Dependency,
    LayerCheck, Message, Mode, Opening, OutputRule, Prover, Recompute, RejectReason,
    SamplingStrategy, Statement, Step, SubLayerPart, TraceLevel, Verdict, Verifier, VerifierConfig,
    VerifierLimits, PROTOCOL_VERSION,
};

const HIDDEN: u32 = 4;

fn statement(dep: Dependency, level: TraceLevel) -> Statement {
    let n_out = if dep == Dependency::Bidirectional {
        0
    } else {
        5
    };
    let input: Vec<u32> = (0..12 - n_out as u32).map(|i| 3 + 7 * i).collect();
    let output = ToyEngine::default()
        .generate(dep, 4, HIDDEN as usize, &input, n_out)
        .unwrap();
    Statement {
        version: PROTOCOL_VERSION,
        model_digest: Digest([0xab; 32]),
        setup: b"toy/f32".to_vec(),
        geometry: TraceGeometry::new(4, 12, HIDDEN, 3, Dtype::F32).unwrap(),
        input_tokens: input,
        output_tokens: output,
        hasher: HasherId::Blake3,
        dependency: dep,
        output_rule: OutputRule::Greedy,
        input_text: None,
        engine: None,
        trace_level: level,
    }
}

const SUB: TraceLevel = TraceLevel::SubLayer {
    context: HIDDEN,
    cell: HIDDEN,
    dtype: Dtype::F32,
};

fn prover(s: &Statement, engine: ToyEngine) -> Prover<Vec<u8>> {
    let p = Prover::new(s.clone(), engine.trace_bytes(s).unwrap()).unwrap();
    if s.trace_level == TraceLevel::Hidden {
        return p;
    }
    let (context, cell) = engine.sublayer_bytes(s).unwrap();
    p.with_sublayers(context, cell).unwrap()
}

fn config(method: LayerCheck, mode: Mode) -> VerifierConfig {
    VerifierConfig {
        mode,
        params: ChallengeParams {
            samples: 5,
            strategy: SamplingStrategy::Uniform,
            pow_bits: 0,
            attention: None,
        },
        rounds: 2,
        tolerance: TolerancePolicy::Exact,
        method,
    }
}

/// Runs a whole session of `prover` against a fresh verifier.
fn session(mut prover: Prover<Vec<u8>>, cfg: &VerifierConfig, seed: u8) -> Verdict {
    let mut rng = ChaCha20Rng::from_seed([seed; 32]);
    let mut v = Verifier::new(cfg.clone(), ToyEngine::default()).unwrap();
    let mut step = v.receive_commitment(prover.commit().unwrap(), &mut rng);
    loop {
        step = match step {
            Step::Decided(verdict) => return verdict,
            Step::Challenge(c) => v.receive_opening(&prover.open(&c).unwrap(), &mut rng),
            Step::AwaitOpening => {
                let (_, o) = prover.open_non_interactive(&cfg.params).unwrap();
                v.receive_opening(&o, &mut rng)
            }
        };
    }
}

#[test]
fn honest_sublayer_sessions_pass_every_check() {
    for dep in [
        Dependency::Causal,
        Dependency::Bidirectional,
        Dependency::Window { size: 4 },
    ] {
        let s = statement(dep, SUB);
        for method in [
            LayerCheck::Recompute,
            LayerCheck::Freivalds,
            LayerCheck::Both,
        ] {
            for mode in [Mode::Interactive, Mode::NonInteractive] {
                for seed in 0..4 {
                    let verdict = session(
                        prover(&s, ToyEngine::default()),
                        &config(method, mode),
                        seed,
                    );
                    assert_eq!(
                        verdict,
                        Verdict::Accept,
                        "{dep:?} {method:?} {mode:?} {seed}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_cheating_output_is_caught_by_the_algebraic_check_alone() {
    // the toy that perturbs its layer outputs reports the (honest) sub-layer values of its
    // own trace: the output they give differs from its opened cells
    let s = statement(Dependency::Causal, SUB);
    let cheat = ToyEngine { perturb: 1e-3 };
    let cfg = config(LayerCheck::Freivalds, Mode::Interactive);
    let mut caught = 0;
    for seed in 0..8 {
        match session(prover(&s, cheat), &cfg, seed) {
            Verdict::Accept => {}
            Verdict::Reject(RejectReason::Tolerance { .. }) => caught += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(caught >= 6, "caught {caught} of 8");
}

#[test]
fn a_freivalds_verifier_refuses_a_hidden_only_statement() {
    let s = statement(Dependency::Causal, TraceLevel::Hidden);
    let verdict = session(
        prover(&s, ToyEngine::default()),
        &config(LayerCheck::Freivalds, Mode::Interactive),
        1,
    );
    assert!(
        matches!(&verdict, Verdict::Reject(RejectReason::GeometryMismatch { detail }) if detail.contains("hidden states only")),
        "{verdict:?}"
    );
}

#[test]
fn a_sublayer_statement_needs_its_traces_before_the_commitment() {
    let s = statement(Dependency::Causal, SUB);
    let engine = ToyEngine::default();
    let mut p = Prover::new(s.clone(), engine.trace_bytes(&s).unwrap()).unwrap();
    assert!(p.commit().is_err());
    // and a hidden-only statement refuses them; wrong shapes are refused
    let h = statement(Dependency::Causal, TraceLevel::Hidden);
    let (context, cell) = engine.sublayer_bytes(&s).unwrap();
    let p = Prover::new(h.clone(), engine.trace_bytes(&h).unwrap()).unwrap();
    assert!(p.with_sublayers(context.clone(), cell.clone()).is_err());
    let p = Prover::new(s.clone(), engine.trace_bytes(&s).unwrap()).unwrap();
    assert!(p
        .with_sublayers(context[..2].to_vec(), cell.clone())
        .is_err());
    let p = Prover::new(s.clone(), engine.trace_bytes(&s).unwrap()).unwrap();
    let mut short = cell.clone();
    short[0].pop();
    assert!(p.with_sublayers(context, short).is_err());
}

/// An honest commitment and opening of `cells`, to tamper with.
fn opened(s: &Statement, cells: Vec<CellId>) -> (Commitment, Challenge, Opening) {
    let mut p = prover(s, ToyEngine::default());
    let c = p.commit().unwrap();
    let ch = Challenge {
        round: 0,
        cells,
        attention: None,
    };
    let o = p.open(&ch).unwrap();
    (c, ch, o)
}

fn check(
    c: &Commitment,
    ch: &Challenge,
    o: &Opening,
    method: LayerCheck,
) -> Result<(), RejectReason> {
    check_opening_by(
        c,
        &ch.cells,
        o,
        &TolerancePolicy::Exact,
        method,
        &ToyEngine::default(),
        &VerifierLimits::default(),
    )
}

fn cells() -> Vec<CellId> {
    vec![
        CellId { layer: 0, chunk: 1 },
        CellId { layer: 2, chunk: 2 },
        CellId { layer: 3, chunk: 3 },
    ]
}

#[test]
fn the_opening_holds_exactly_the_sublayer_cells_of_the_challenge() {
    let s = statement(Dependency::Causal, SUB);
    let (c, ch, o) = opened(&s, cells());
    let sub = o.sublayers.as_ref().unwrap();
    // context: chunks 0..=2 of sub-layer 1 and 0..=3 of sub-layer 2; cell: (1,2), (2,3)
    let ids = |v: &[veritrace_protocol::OpenedCell]| {
        v.iter()
            .map(|x| (x.cell.layer, x.cell.chunk))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&sub.context),
        vec![(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (2, 3)]
    );
    assert_eq!(ids(&sub.cell), vec![(1, 2), (2, 3)]);
    for method in [
        LayerCheck::Recompute,
        LayerCheck::Freivalds,
        LayerCheck::Both,
    ] {
        check(&c, &ch, &o, method).unwrap();
    }
    // JSON and binary round trips keep the sub-layer parts
    assert_eq!(Opening::from_bytes(&o.to_bytes()).unwrap(), o);
    assert_eq!(Opening::from_json(&o.to_json()).unwrap(), o);
    assert_eq!(Commitment::from_bytes(&c.to_bytes()).unwrap(), c);
    assert_eq!(Commitment::from_json(&c.to_json()).unwrap(), c);
    assert_eq!(Statement::from_bytes(&s.to_bytes()).unwrap(), s);
}

#[test]
fn tampered_sublayer_openings_are_typed_rejections() {
    let s = statement(Dependency::Causal, SUB);
    let (c, ch, o) = opened(&s, cells());
    let name = |r: Result<(), RejectReason>| r.err().map(|e| e.name()).unwrap_or("Accept");

    // no sub-layer part
    let mut t = o.clone();
    t.sublayers = None;
    assert_eq!(
        name(check(&c, &ch, &t, LayerCheck::Freivalds)),
        "GeometryMismatch"
    );
    assert_eq!(
        name(check(&c, &ch, &t, LayerCheck::Recompute)),
        "GeometryMismatch"
    );
    // a sub-layer part for a hidden-only statement
    let h = statement(Dependency::Causal, TraceLevel::Hidden);
    let (hc, hch, ho) = opened(&h, cells());
    let mut t = ho.clone();
    t.sublayers = o.sublayers.clone();
    assert_eq!(
        name(check(&hc, &hch, &t, LayerCheck::Recompute)),
        "GeometryMismatch"
    );
    // a missing and an extra context cell
    let mut t = o.clone();
    t.sublayers.as_mut().unwrap().context.remove(1);
    assert_eq!(
        name(check(&c, &ch, &t, LayerCheck::Freivalds)),
        "MissingCell"
    );
    let mut t = o.clone();
    let mut extra = t.sublayers.as_ref().unwrap().cell[0].clone();
    extra.cell = CellId { layer: 0, chunk: 0 };
    t.sublayers.as_mut().unwrap().cell.insert(0, extra);
    assert_eq!(
        name(check(&c, &ch, &t, LayerCheck::Freivalds)),
        "UnexpectedCell"
    );
    // wrong length, NaN, a changed value under the proof
    fn pick(t: &mut Opening, part: SubLayerPart) -> &mut Vec<u8> {
        let sub = t.sublayers.as_mut().unwrap();
        match part {
            SubLayerPart::Context => &mut sub.context[2].data,
            SubLayerPart::Cell => &mut sub.cell[1].data,
            SubLayerPart::Kv => unreachable!("not committed at this level"),
        }
    }
    for part in [SubLayerPart::Context, SubLayerPart::Cell] {
        let mut t = o.clone();
        pick(&mut t, part).pop();
        assert_eq!(
            name(check(&c, &ch, &t, LayerCheck::Freivalds)),
            "WrongCellLength"
        );
        let mut t = o.clone();
        pick(&mut t, part)[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        // the leaf changed, so the proof fails first
        assert_eq!(name(check(&c, &ch, &t, LayerCheck::Freivalds)), "BadProof");
        let mut t = o.clone();
        pick(&mut t, part)[0] ^= 1;
        assert_eq!(name(check(&c, &ch, &t, LayerCheck::Both)), "BadProof");
    }
}

/// A prover that commits to forged sub-layer values (so that the proofs hold) is caught by the
/// algebraic check, and NaN committed in a sub-layer value is caught before it.
#[test]
fn committed_forgeries_fail_the_algebraic_check() {
    let s = statement(Dependency::Causal, SUB);
    let engine = ToyEngine::default();
    let (context, cell) = engine.sublayer_bytes(&s).unwrap();
    let run = |context: Vec<Vec<u8>>, cell: Vec<Vec<u8>>, method| {
        let mut p = Prover::new(s.clone(), engine.trace_bytes(&s).unwrap())
            .unwrap()
            .with_sublayers(context, cell)
            .unwrap();
        let c = p.commit().unwrap();
        let ch = Challenge {
            round: 0,
            cells: cells(),
            attention: None,
        };
        let o = p.open(&ch).unwrap();
        check(&c, &ch, &o, method)
    };
    // a context value of sub-layer 1 (hidden layer 2) that is not 0.5 x
    let mut bad = context.clone();
    bad[1][0..4].copy_from_slice(&1.25f32.to_le_bytes());
    let r = run(bad.clone(), cell.clone(), LayerCheck::Freivalds);
    assert!(
        matches!(
            r,
            Err(RejectReason::AlgebraicCheck {
                cell: CellId { layer: 2, chunk: 2 },
                ..
            })
        ),
        "{r:?}"
    );
    // a recomputing verifier does not read the sub-layer values
    assert_eq!(run(bad, cell.clone(), LayerCheck::Recompute), Ok(()));
    // a cell value (sub-layer 2, row 9) that is not the mean
    let mut bad = cell.clone();
    let at = 9 * HIDDEN as usize * 4;
    bad[2][at..at + 4].copy_from_slice(&7.5f32.to_le_bytes());
    let r = run(context.clone(), bad, LayerCheck::Both);
    assert!(
        matches!(r, Err(RejectReason::AlgebraicCheck { .. })),
        "{r:?}"
    );
    // NaN committed in a sub-layer value: NonFinite, reported at the hidden layer
    let mut bad = context.clone();
    bad[1][8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    let r = run(bad, cell, LayerCheck::Freivalds);
    assert_eq!(
        r,
        Err(RejectReason::NonFinite {
            cell: CellId { layer: 2, chunk: 0 },
            index: 2
        })
    );
}

/// An engine without an algebraic check (the trait's default) fails the cell, typed.
#[test]
fn an_engine_without_a_key_fails_typed() {
    struct NoKey(ToyEngine);
    impl Recompute for NoKey {
        fn embed(
            &self,
            s: &Statement,
            rows: std::ops::Range<u32>,
        ) -> veritrace_protocol::Result<Vec<u8>> {
            self.0.embed(s, rows)
        }
        fn layer(
            &self,
            s: &Statement,
            layer: u32,
            rows: std::ops::Range<u32>,
            input_rows: std::ops::Range<u32>,
            inputs: &[u8],
        ) -> veritrace_protocol::Result<Vec<u8>> {
            self.0.layer(s, layer, rows, input_rows, inputs)
        }
        fn next_token(&self, s: &Statement, p: u32, row: &[u8]) -> veritrace_protocol::Result<u32> {
            self.0.next_token(s, p, row)
        }
        fn check_input(&self, s: &Statement) -> veritrace_protocol::Result<()> {
            self.0.check_input(s)
        }
    }
    let s = statement(Dependency::Causal, SUB);
    let (c, ch, o) = opened(&s, cells());
    let r = check_opening_by(
        &c,
        &ch.cells,
        &o,
        &TolerancePolicy::Exact,
        LayerCheck::Freivalds,
        &NoKey(ToyEngine::default()),
        &VerifierLimits::default(),
    );
    assert!(
        matches!(r, Err(RejectReason::RecomputeFailed { .. })),
        "{r:?}"
    );
    // the toy's own check returns the output it derived
    let AlgebraicCheck::Output(out) = ToyEngine::default()
        .check_sublayers(
            &s,
            1,
            0..3,
            0..3,
            &ToyEngine::default().trace_bytes(&s).unwrap()[0][..48],
            &ToyEngine::default().sublayer_bytes(&s).unwrap().0[0][..48],
            &ToyEngine::default().sublayer_bytes(&s).unwrap().1[0][..48],
        )
        .unwrap()
    else {
        panic!("honest rows fail");
    };
    assert_eq!(out, ToyEngine::default().trace_bytes(&s).unwrap()[1][..48]);
}

#[test]
fn statements_and_commitments_agree_on_the_level() {
    let s = statement(Dependency::Causal, SUB);
    s.validate().unwrap();
    assert_eq!(
        s.sublayer_geometry(SubLayerPart::Context).unwrap().unwrap(),
        TraceGeometry::new(3, 12, HIDDEN, 3, Dtype::F32).unwrap()
    );
    let mut bad = s.clone();
    bad.trace_level = TraceLevel::SubLayer {
        context: 0,
        cell: 4,
        dtype: Dtype::F32,
    };
    assert!(bad.validate().is_err());
    let mut one = s.clone();
    one.geometry = TraceGeometry::new(1, 12, HIDDEN, 3, Dtype::F32).unwrap();
    assert!(one.validate().is_err(), "no layer above the embeddings");
    let mut p = prover(&s, ToyEngine::default());
    let c = p.commit().unwrap();
    let mut missing = c.clone();
    missing.sublayer_roots = None;
    assert!(Commitment::from_json(&missing.to_json()).is_err());
    let h = statement(Dependency::Causal, TraceLevel::Hidden);
    let mut extra = prover(&h, ToyEngine::default()).commit().unwrap();
    extra.sublayer_roots = c.sublayer_roots;
    assert!(Commitment::from_bytes(&extra.to_bytes()).is_err());
    // the level and the roots change the challenge
    let params = ChallengeParams {
        samples: 4,
        strategy: SamplingStrategy::Uniform,
        pow_bits: 0,
        attention: None,
    };
    let seed = |c: &Commitment| veritrace_protocol::transcript::challenge_seed(c, 0, &params, 0);
    let mut other = c.clone();
    other.sublayer_roots.as_mut().unwrap().cell = Digest([3; 32]);
    assert_ne!(seed(&c), seed(&other));
    let mut other = c.clone();
    other.statement.trace_level = TraceLevel::SubLayer {
        context: 4,
        cell: 5,
        dtype: Dtype::F32,
    };
    assert_ne!(seed(&c), seed(&other));
    // a JSON statement without the field is hidden-only
    let json = h.to_json().replace(",\n  \"trace_level\": \"hidden\"", "");
    assert!(!json.contains("trace_level"), "{json}");
    assert_eq!(Statement::from_json(&json).unwrap(), h);
}

/// A challenge of layer-0 cells only needs no sub-layer cell: both sub-layer parts are empty,
/// with empty proofs, and a proof with siblings for no cells is refused.
#[test]
fn layer_zero_challenges_open_empty_sublayer_parts() {
    let s = statement(Dependency::Causal, SUB);
    let (c, ch, o) = opened(
        &s,
        vec![CellId { layer: 0, chunk: 0 }, CellId { layer: 0, chunk: 3 }],
    );
    let sub = o.sublayers.as_ref().unwrap();
    assert!(sub.context.is_empty() && sub.cell.is_empty());
    assert!(sub.context_proof.siblings.is_empty() && sub.cell_proof.siblings.is_empty());
    for method in [
        LayerCheck::Recompute,
        LayerCheck::Freivalds,
        LayerCheck::Both,
    ] {
        check(&c, &ch, &o, method).unwrap();
    }
    let mut t = o.clone();
    t.sublayers
        .as_mut()
        .unwrap()
        .cell_proof
        .siblings
        .push(Digest([1; 32]));
    assert_eq!(
        check(&c, &ch, &t, LayerCheck::Freivalds)
            .err()
            .map(|r| r.name()),
        Some("BadProof")
    );
}

/// The toy's algebraic check refuses rows outside its input rows (typed, no panic).
#[test]
fn the_toy_check_refuses_rows_outside_its_inputs() {
    let s = statement(Dependency::Causal, SUB);
    let e = ToyEngine::default();
    let zeros = vec![0u8; 3 * HIDDEN as usize * 4];
    assert!(e
        .check_sublayers(&s, 1, 0..3, 3..6, &zeros, &zeros, &zeros)
        .is_err());
    assert!(e
        .check_sublayers(&s, 1, 3..6, 0..3, &zeros, &zeros, &zeros)
        .is_err());
}

#[test]
fn the_sublayer_dtype_is_bound_and_sizes_the_traces() {
    let s = statement(Dependency::Causal, SUB);
    let mut half = s.clone();
    half.trace_level = SUB.with_dtype(Dtype::Bf16);
    half.validate().unwrap();
    assert_eq!(half.trace_level.dtype(), Some(Dtype::Bf16));
    assert_eq!(TraceLevel::Hidden.dtype(), None);
    for part in [SubLayerPart::Context, SubLayerPart::Cell] {
        let g = half.sublayer_geometry(part).unwrap().unwrap();
        assert_eq!(
            g,
            TraceGeometry::new(3, 12, HIDDEN, 3, Dtype::Bf16).unwrap()
        );
        let f = s.sublayer_geometry(part).unwrap().unwrap();
        assert_eq!(2 * g.layer_byte_len(), f.layer_byte_len(), "half the bytes");
    }
    // an integer type is no sub-layer dtype: a typed invalid statement, in JSON and binary
    let mut int8 = s.clone();
    int8.trace_level = SUB.with_dtype(Dtype::I8);
    assert!(matches!(
        int8.validate(),
        Err(veritrace_protocol::ProtocolError::InvalidStatement(m)) if m.contains("i8")
    ));
    assert!(Statement::from_bytes(&int8.to_bytes()).is_err());
    assert!(Statement::from_json(&int8.to_json()).is_err());
    // both encodings round-trip the dtype; a JSON level without it is f32
    assert_eq!(Statement::from_bytes(&half.to_bytes()).unwrap(), half);
    assert_eq!(Statement::from_json(&half.to_json()).unwrap(), half);
    let json = s.to_json();
    let level = json.rfind("\"dtype\"").unwrap();
    assert!(json[..level].contains("\"sub-layer\""), "{json}");
    let cut = json[..level].rfind(',').unwrap();
    let old = format!(
        "{}{}",
        &json[..cut],
        &json[level + "\"dtype\": \"f32\"".len()..]
    );
    assert_eq!(old.matches("\"dtype\"").count(), 1, "{old}");
    assert_eq!(Statement::from_json(&old).unwrap(), s);
    // the dtype changes the challenge (transcript row 10c), for both levels
    let params = ChallengeParams {
        samples: 4,
        strategy: SamplingStrategy::Uniform,
        pow_bits: 0,
        attention: None,
    };
    let c = prover(&s, ToyEngine::default()).commit().unwrap();
    let seed = |c: &Commitment| veritrace_protocol::transcript::challenge_seed(c, 0, &params, 0);
    let mut other = c.clone();
    other.statement.trace_level = SUB.with_dtype(Dtype::Bf16);
    let mut f16 = c.clone();
    f16.statement.trace_level = SUB.with_dtype(Dtype::F16);
    assert_ne!(seed(&c), seed(&other));
    assert_ne!(seed(&other), seed(&f16));
    let by_head = ToyEngine::by_head_level(HIDDEN, 2).unwrap();
    let mut a = c.clone();
    a.statement.trace_level = by_head;
    let mut b = c.clone();
    b.statement.trace_level = by_head.with_dtype(Dtype::Bf16);
    assert_ne!(seed(&a), seed(&b));
    // f32 sub-layer bytes under a bf16 level are the wrong length: a typed refusal
    let engine = ToyEngine::default();
    let (context, cell) = engine.sublayer_bytes(&s).unwrap();
    let p = Prover::new(half.clone(), engine.trace_bytes(&s).unwrap()).unwrap();
    assert!(p.with_sublayers(context, cell).is_err());
}
