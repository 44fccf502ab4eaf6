//! The by-head sub-layer level and drawn openings (issue 16, specs/protocol.md §3.5, §4.4,
//! §11.4) with the toy engine: honest sessions pass whole and drawn, a drawn opening holds
//! exactly the cells its draw names, a forged head is caught at the drawn rate, and malformed
//! drawn openings are typed rejections, never panics.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use veritrace_commit::{CellId, Digest, Dtype, HasherId, TraceGeometry};
use veritrace_protocol::tolerance::TolerancePolicy;
use veritrace_protocol::toy::ToyEngine;
use veritrace_protocol::transcript::derive_challenge;
use veritrace_protocol::{
    check_opening_drawn, AttentionDraw, AttentionSample, Challenge, ChallengeParams, Commitment,
    Dependency, LayerCheck, Message, Mode, Opening, OutputRule, Prover, RejectReason,
    SamplingStrategy, Statement, Step, SubLayerPart, TraceLevel, Verdict, Verifier, VerifierConfig,
    VerifierLimits, PROTOCOL_VERSION,
};

const HIDDEN: u32 = 4;
const HEADS: u32 = 4;
const TOKENS: u32 = 24;
const CHUNK: u32 = 3;

fn level() -> TraceLevel {
    ToyEngine::by_head_level(HIDDEN, HEADS).unwrap()
}

fn statement(dep: Dependency, level: TraceLevel) -> Statement {
    let n_out = 5;
    let input: Vec<u32> = (0..TOKENS - n_out as u32).map(|i| 3 + 7 * i).collect();
    let output = ToyEngine::default()
        .generate(dep, 4, HIDDEN as usize, &input, n_out)
        .unwrap();
    Statement {
        version: PROTOCOL_VERSION,
        model_digest: Digest([0xab; 32]),
        setup: b"toy/f32".to_vec(),
        geometry: TraceGeometry::new(4, TOKENS, HIDDEN, CHUNK, Dtype::F32).unwrap(),
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

fn prover(s: &Statement) -> Prover<Vec<u8>> {
    let engine = ToyEngine::default();
    let p = Prover::new(s.clone(), engine.trace_bytes(s).unwrap()).unwrap();
    let (context, kv, cell) = engine.sublayer_bytes_by_head(s).unwrap();
    p.with_sublayers_by_head(context, kv, cell).unwrap()
}

fn config(method: LayerCheck, mode: Mode, attention: Option<AttentionSample>) -> VerifierConfig {
    VerifierConfig {
        mode,
        params: ChallengeParams {
            samples: 5,
            strategy: SamplingStrategy::Uniform,
            pow_bits: 0,
            attention,
        },
        rounds: 2,
        tolerance: TolerancePolicy::Exact,
        method,
    }
}

fn session(mut prover: Prover<Vec<u8>>, cfg: &VerifierConfig, seed: u8) -> Verdict {
    let mut rng = ChaCha20Rng::from_seed([seed; 32]);
    let mut v = Verifier::new(cfg.clone(), ToyEngine::default()).unwrap();
    let mut step = v.receive_commitment(prover.commit().unwrap(), &mut rng);
    loop {
        step = match step {
            Step::Decided(verdict) => return verdict,
            Step::Challenge(c) => {
                assert_eq!(
                    c.attention.map(|a| (a.heads, a.chunks)),
                    cfg.params.attention.map(|a| (a.heads, a.chunks))
                );
                v.receive_opening(&prover.open(&c).unwrap(), &mut rng)
            }
            Step::AwaitOpening => {
                let (c, o) = prover.open_non_interactive(&cfg.params).unwrap();
                assert_eq!(c.attention.is_some(), cfg.params.attention.is_some());
                v.receive_opening(&o, &mut rng)
            }
        };
    }
}

#[test]
fn honest_by_head_sessions_pass_whole_and_drawn() {
    for dep in [Dependency::Causal, Dependency::Window { size: 7 }] {
        let s = statement(dep, level());
        let mut cases = vec![
            (LayerCheck::Recompute, None),
            (LayerCheck::Freivalds, None),
            (LayerCheck::Both, None),
        ];
        for (heads, chunks) in [(1, 0), (1, 2), (2, 1), (4, 99)] {
            cases.push((
                LayerCheck::Freivalds,
                Some(AttentionSample { heads, chunks }),
            ));
        }
        for (method, attention) in cases {
            for mode in [Mode::Interactive, Mode::NonInteractive] {
                for seed in 0..3 {
                    let verdict = session(prover(&s), &config(method, mode, attention), seed);
                    assert_eq!(
                        verdict,
                        Verdict::Accept,
                        "{dep:?} {method:?} {attention:?} {mode:?} {seed}"
                    );
                }
            }
        }
    }
}

/// The draw of one cell, pinned (specs/protocol.md §4.4 and §16; an independent ChaCha20 in
/// Python reproduces it): ChaCha20 keyed by the
/// seed on the stream of the cell's leaf index, heads first, then the earlier chunks.
#[test]
fn a_cell_draw_is_a_known_answer() {
    let s = statement(Dependency::Causal, level());
    let draw = AttentionDraw {
        heads: 2,
        chunks: 3,
        seed: Digest([7; 32]),
    };
    let cell = CellId { layer: 2, chunk: 6 };
    let d = draw.cell(&s, cell).unwrap();
    assert_eq!(
        (d.heads.clone(), d.chunks.clone()),
        (vec![0, 2], vec![0, 2, 5])
    );
    assert_eq!(d.checked_chunks(6).collect::<Vec<_>>(), vec![0, 2, 5, 6]);
    // every part at or above its size: everything, without a draw
    let all = AttentionDraw {
        heads: 9,
        chunks: 9,
        ..draw
    };
    let d = all.cell(&s, cell).unwrap();
    assert_eq!((d.heads, d.chunks), (vec![0, 1, 2, 3], (0..6).collect()));
    // another cell, another stream; layer 0 and other levels have no draw
    assert_ne!(
        draw.cell(&s, CellId { layer: 2, chunk: 7 }).unwrap().chunks,
        vec![0, 2, 5]
    );
    assert!(draw.cell(&s, CellId { layer: 0, chunk: 6 }).is_err());
    let hidden = statement(Dependency::Causal, TraceLevel::Hidden);
    assert!(draw.cell(&hidden, cell).is_err());
}

/// Draws are uniform over heads and over earlier chunks.
#[test]
fn cell_draws_are_uniform() {
    let s = statement(Dependency::Causal, level());
    let cell = CellId { layer: 1, chunk: 7 };
    let (mut heads, mut chunks) = ([0u32; 4], [0u32; 7]);
    let n = 4000;
    for i in 0..n {
        let mut seed = [0u8; 32];
        seed[..4].copy_from_slice(&(i as u32).to_le_bytes());
        let d = AttentionDraw {
            heads: 1,
            chunks: 2,
            seed: Digest(seed),
        }
        .cell(&s, cell)
        .unwrap();
        heads[d.heads[0] as usize] += 1;
        for c in d.chunks {
            chunks[c as usize] += 1;
        }
    }
    // expected n/4 and 2n/7; five standard deviations
    for h in heads {
        let (e, sd) = (n as f64 / 4.0, (n as f64 * 0.25 * 0.75).sqrt());
        assert!((f64::from(h) - e).abs() < 5.0 * sd, "{heads:?}");
    }
    for c in chunks {
        let p = 2.0 / 7.0;
        let (e, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
        assert!((f64::from(c) - e).abs() < 5.0 * sd, "{chunks:?}");
    }
}

fn cells(o: &[veritrace_protocol::OpenedCell]) -> Vec<(u32, u32)> {
    o.iter().map(|c| (c.cell.layer, c.cell.chunk)).collect()
}

#[test]
fn a_drawn_opening_holds_exactly_the_drawn_cells() {
    let s = statement(Dependency::Causal, level());
    let mut p = prover(&s);
    let commitment = p.commit().unwrap();
    let cell = CellId { layer: 2, chunk: 6 };
    let draw = AttentionDraw {
        heads: 1,
        chunks: 2,
        seed: Digest([3; 32]),
    };
    let d = draw.cell(&s, cell).unwrap();
    let challenge = Challenge {
        round: 0,
        cells: vec![cell],
        attention: Some(draw),
    };
    let o = p.open(&challenge).unwrap();
    let checked: Vec<u32> = d.checked_chunks(6).collect();
    // hidden: the cell and the checked chunks of the layer below
    let mut want: Vec<(u32, u32)> = checked.iter().map(|&m| (1, m)).collect();
    want.push((2, 6));
    assert_eq!(cells(&o.cells), want);
    let sub = o.sublayers.as_ref().unwrap();
    assert_eq!(
        cells(&sub.context),
        checked.iter().map(|&m| (1, m)).collect::<Vec<_>>()
    );
    assert_eq!(cells(&sub.cell), vec![(1, 6)]);
    // key-value: the drawn head's whole context, the others' checked chunks
    let mut kv = Vec::new();
    for h in 0..HEADS {
        if d.heads.contains(&h) {
            kv.extend((0..=6).map(|m| (HEADS + h, m)));
        } else {
            kv.extend(checked.iter().map(|&m| (HEADS + h, m)));
        }
    }
    assert_eq!(cells(&sub.kv), kv);
    let limits = VerifierLimits::default();
    let judge = |o: &Opening| {
        check_opening_drawn(
            &commitment,
            &challenge,
            o,
            &TolerancePolicy::Exact,
            LayerCheck::Freivalds,
            &ToyEngine::default(),
            &limits,
        )
    };
    assert_eq!(judge(&o), Ok(()));
    // the whole opening of the same cell is larger, and is not this challenge's opening
    let whole = p.open_cells(0, &[cell], 0).unwrap();
    assert!(whole.to_bytes().len() > o.to_bytes().len());
    assert!(matches!(
        judge(&whole),
        Err(RejectReason::UnexpectedCell { .. })
    ));
}

/// A prover whose attention is wrong in one head, everything else consistent with its own
/// (forged) trace: caught by a cell exactly when its draw holds that head.
fn forged(s: &Statement, head: usize) -> Prover<Vec<u8>> {
    let (hidden, w, t) = (HIDDEN as usize, (HIDDEN / HEADS) as usize, TOKENS as usize);
    let engine = ToyEngine::default();
    let tokens: Vec<u32> = (0..TOKENS).map(|p| s.token(p).unwrap()).collect();
    let mut x = engine.embed_tokens(hidden, &tokens, 0..TOKENS);
    let mut trace = vec![x.clone()];
    let (mut context, mut kv, mut cell) = (Vec::new(), Vec::new(), Vec::new());
    let b = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    for l in 1..4 {
        let c: Vec<f32> = x.iter().map(|v| 0.5 * v).collect();
        let mut m = Vec::with_capacity(t * hidden);
        for p in 0..t {
            for i in 0..hidden {
                let sum: f32 = (0..=p).fold(0f32, |acc, q| acc + c[q * hidden + i]);
                m.push(sum / (p + 1) as f32);
            }
            m[p * hidden + head * w] += 1.0;
        }
        let y: Vec<f32> = (0..t * hidden)
            .map(|i| x[i] + m[i] + 0.1 * l as f32)
            .collect();
        context.push(b(&c));
        for h in 0..HEADS as usize {
            let rows: Vec<f32> = c
                .chunks_exact(hidden)
                .flat_map(|r| r[h * w..(h + 1) * w].to_vec())
                .collect();
            kv.push(b(&rows));
        }
        cell.push(b(&m));
        trace.push(y.clone());
        x = y;
    }
    // (the statement's output tokens are the honest run's: only layers 1 and 2 are challenged
    // below, whose checks do not read them)
    Prover::new(s.clone(), trace.iter().map(|l| b(l)).collect())
        .unwrap()
        .with_sublayers_by_head(context, kv, cell)
        .unwrap()
}

#[test]
fn a_forged_head_is_caught_at_the_drawn_rate() {
    // single cells of layer 1 or 2 (layer 3's output tokens would also catch the forgery)
    let s = statement(Dependency::Causal, level());
    let mut p = forged(&s, 2);
    let commitment = p.commit().unwrap();
    let limits = VerifierLimits::default();
    let n = 800u32;
    for heads in [1u32, 2, 3] {
        let mut caught = 0u32;
        for i in 0..n {
            let cell = CellId {
                layer: 1 + i % 2,
                chunk: i % 8,
            };
            let mut seed = [heads as u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            let challenge = Challenge {
                round: 0,
                cells: vec![cell],
                attention: Some(AttentionDraw {
                    heads,
                    chunks: 1,
                    seed: Digest(seed),
                }),
            };
            let drawn = challenge.attention.unwrap().cell(&s, cell).unwrap();
            let o = p
                .open_drawn(0, &challenge.cells, challenge.attention.as_ref(), 0)
                .unwrap();
            let verdict = check_opening_drawn(
                &commitment,
                &challenge,
                &o,
                &TolerancePolicy::Exact,
                LayerCheck::Freivalds,
                &ToyEngine::default(),
                &limits,
            );
            // caught exactly when the forged head is drawn
            assert_eq!(
                verdict.is_err(),
                drawn.heads.contains(&2),
                "{cell:?} {drawn:?} {verdict:?}"
            );
            if let Err(reason) = verdict {
                assert!(
                    matches!(reason, RejectReason::AlgebraicCheck { .. }),
                    "{reason:?}"
                );
                caught += 1;
            }
        }
        let p_stated = f64::from(heads) / f64::from(HEADS);
        let sd = (f64::from(n) * p_stated * (1.0 - p_stated)).sqrt();
        assert!(
            (f64::from(caught) - f64::from(n) * p_stated).abs() < 5.0 * sd,
            "{heads} heads: caught {caught} of {n}, stated {p_stated}"
        );
    }
    // the whole check catches it in every cell above layer 0
    let c = Challenge {
        round: 0,
        cells: vec![CellId { layer: 1, chunk: 0 }],
        attention: None,
    };
    let o = p.open_cells(0, &c.cells, 0).unwrap();
    assert!(matches!(
        check_opening_drawn(
            &commitment,
            &c,
            &o,
            &TolerancePolicy::Exact,
            LayerCheck::Freivalds,
            &ToyEngine::default(),
            &limits
        ),
        Err(RejectReason::AlgebraicCheck { .. })
    ));
}

#[test]
fn malformed_drawn_openings_are_typed_rejections() {
    let s = statement(Dependency::Causal, level());
    let mut p = prover(&s);
    let commitment = p.commit().unwrap();
    let challenge = Challenge {
        round: 0,
        cells: vec![CellId { layer: 1, chunk: 2 }, CellId { layer: 3, chunk: 7 }],
        attention: Some(AttentionDraw {
            heads: 1,
            chunks: 1,
            seed: Digest([5; 32]),
        }),
    };
    let o = p.open(&challenge).unwrap();
    let limits = VerifierLimits::default();
    let judge = |c: &Commitment, ch: &Challenge, o: &Opening, method| {
        check_opening_drawn(
            c,
            ch,
            o,
            &TolerancePolicy::Exact,
            method,
            &ToyEngine::default(),
            &limits,
        )
    };
    let name = |r: Result<(), RejectReason>| -> String {
        format!("{:?}", r.unwrap_err())
            .split([' ', '{', '('])
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        judge(&commitment, &challenge, &o, LayerCheck::Freivalds),
        Ok(())
    );
    // a drawn opening cannot be recomputed
    for method in [LayerCheck::Recompute, LayerCheck::Both] {
        assert_eq!(
            name(judge(&commitment, &challenge, &o, method)),
            "GeometryMismatch"
        );
    }
    let cfg = config(
        LayerCheck::Both,
        Mode::Interactive,
        Some(AttentionSample {
            heads: 1,
            chunks: 1,
        }),
    );
    assert!(Verifier::new(cfg, ToyEngine::default()).is_err());
    let cfg = config(
        LayerCheck::Freivalds,
        Mode::Interactive,
        Some(AttentionSample {
            heads: 0,
            chunks: 1,
        }),
    );
    assert!(Verifier::new(cfg, ToyEngine::default()).is_err());
    // a missing, an extra and a foreign key-value cell
    fn kv(o: &mut Opening) -> &mut Vec<veritrace_protocol::OpenedCell> {
        &mut o.sublayers.as_mut().unwrap().kv
    }
    let mut t = o.clone();
    kv(&mut t).remove(3);
    assert_eq!(
        name(judge(&commitment, &challenge, &t, LayerCheck::Freivalds)),
        "MissingCell"
    );
    let mut t = o.clone();
    let mut extra = kv(&mut t)[0].clone();
    extra.cell.chunk = 7;
    kv(&mut t).insert(1, extra);
    assert!(matches!(
        name(judge(&commitment, &challenge, &t, LayerCheck::Freivalds)).as_str(),
        "UnexpectedCell" | "MissingCell"
    ));
    // a wrong length, reported at its hidden layer; a changed value under the proof
    let mut t = o.clone();
    let victim = kv(&mut t).len() - 1;
    kv(&mut t)[victim].data.pop();
    let r = judge(&commitment, &challenge, &t, LayerCheck::Freivalds).unwrap_err();
    assert!(
        matches!(
            r,
            RejectReason::WrongCellLength {
                cell: CellId { layer: 3, .. },
                ..
            }
        ),
        "{r:?}"
    );
    let mut t = o.clone();
    kv(&mut t)[2].data[0] ^= 1;
    assert_eq!(
        name(judge(&commitment, &challenge, &t, LayerCheck::Freivalds)),
        "BadProof"
    );
    let mut t = o.clone();
    t.sublayers.as_mut().unwrap().kv_proof.siblings.pop();
    assert_eq!(
        name(judge(&commitment, &challenge, &t, LayerCheck::Freivalds)),
        "BadProof"
    );
    // the challenge's draw decides the opening: another seed's opening is refused
    let other = Challenge {
        attention: Some(AttentionDraw {
            seed: Digest([6; 32]),
            ..challenge.attention.unwrap()
        }),
        ..challenge.clone()
    };
    let o2 = p
        .open_drawn(0, &other.cells, other.attention.as_ref(), 0)
        .unwrap();
    assert_ne!(o2, o);
    assert!(judge(&commitment, &challenge, &o2, LayerCheck::Freivalds).is_err());

    // a draw on a statement that does not commit by head
    let sub = statement(
        Dependency::Causal,
        TraceLevel::SubLayer {
            context: HIDDEN,
            cell: HIDDEN,
            dtype: Dtype::F32,
        },
    );
    let engine = ToyEngine::default();
    let (context, cell) = engine.sublayer_bytes(&sub).unwrap();
    let mut ps = Prover::new(sub.clone(), engine.trace_bytes(&sub).unwrap())
        .unwrap()
        .with_sublayers(context, cell)
        .unwrap();
    let cs = ps.commit().unwrap();
    assert!(ps.open(&challenge).is_err());
    let whole = ps.open_cells(0, &challenge.cells, 0).unwrap();
    assert_eq!(
        name(judge(&cs, &challenge, &whole, LayerCheck::Freivalds)),
        "GeometryMismatch"
    );
    // key-value cells in an opening of a statement without them
    let plain = Challenge {
        attention: None,
        ..challenge.clone()
    };
    let mut t = whole.clone();
    t.sublayers.as_mut().unwrap().kv = o.sublayers.as_ref().unwrap().kv.clone();
    assert_eq!(
        name(judge(&cs, &plain, &t, LayerCheck::Freivalds)),
        "UnexpectedCell"
    );
    let mut t = whole.clone();
    t.sublayers.as_mut().unwrap().kv_proof = o.sublayers.as_ref().unwrap().kv_proof.clone();
    assert_eq!(
        name(judge(&cs, &plain, &t, LayerCheck::Freivalds)),
        "BadProof"
    );
    // a verifier sampling attention refuses a statement that does not commit by head
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    let mut v = Verifier::new(
        config(
            LayerCheck::Freivalds,
            Mode::Interactive,
            Some(AttentionSample {
                heads: 1,
                chunks: 1,
            }),
        ),
        ToyEngine::default(),
    )
    .unwrap();
    assert!(matches!(
        v.receive_commitment(cs, &mut rng),
        Step::Decided(Verdict::Reject(RejectReason::GeometryMismatch { .. }))
    ));
}

#[test]
fn by_head_statements_are_validated_and_a_claim_of_many_heads_costs_nothing() {
    let mut s = statement(Dependency::Causal, level());
    for (heads, kv_heads) in [(0, 1), (3, 2), (4, 0)] {
        s.trace_level = TraceLevel::SubLayerByHead {
            context: HIDDEN,
            cell: HIDDEN,
            heads,
            kv_heads,
            kv: 1,
            dtype: Dtype::F32,
        };
        assert!(s.validate().is_err(), "{heads} over {kv_heads}");
    }
    // (L − 1)·g layers beyond a u32
    s.trace_level = TraceLevel::SubLayerByHead {
        context: HIDDEN,
        cell: HIDDEN,
        heads: u32::MAX,
        kv_heads: u32::MAX,
        kv: 1,
        dtype: Dtype::F32,
    };
    assert!(s.validate().is_err());
    // 2^28 key-value heads: refused by the opening-size limit before any run is listed
    s.trace_level = TraceLevel::SubLayerByHead {
        context: HIDDEN,
        cell: HIDDEN,
        heads: 1 << 28,
        kv_heads: 1 << 28,
        kv: 1,
        dtype: Dtype::F32,
    };
    s.geometry = TraceGeometry::new(2, TOKENS, HIDDEN, CHUNK, Dtype::F32).unwrap();
    s.validate().unwrap();
    let commitment = Commitment {
        statement: s.clone(),
        root: Digest([1; 32]),
        sublayer_roots: Some(veritrace_protocol::SubLayerRoots {
            context: Digest([2; 32]),
            cell: Digest([3; 32]),
            kv: Some(Digest([4; 32])),
        }),
    };
    commitment.validate().unwrap();
    let challenge = Challenge {
        round: 0,
        cells: vec![CellId { layer: 1, chunk: 0 }],
        attention: None,
    };
    let o = Opening {
        round: 0,
        cells: Vec::new(),
        proof: Default::default(),
        pow_nonce: 0,
        sublayers: None,
    };
    let r = check_opening_drawn(
        &commitment,
        &challenge,
        &o,
        &TolerancePolicy::Exact,
        LayerCheck::Freivalds,
        &ToyEngine::default(),
        &VerifierLimits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&r, RejectReason::GeometryMismatch { detail } if detail.contains("limit")),
        "{r:?}"
    );
    // 2^31 query heads over one key-value head, committed and opened whole: the verifier never
    // lists the claimed heads (the engine refuses the level it does not have)
    let mut big = statement(Dependency::Causal, level());
    big.trace_level = TraceLevel::SubLayerByHead {
        context: HIDDEN,
        cell: HIDDEN,
        heads: 1 << 31,
        kv_heads: 1,
        kv: 2,
        dtype: Dtype::F32,
    };
    let zeros = |layers: usize, width: u32| vec![vec![0u8; (TOKENS * width * 4) as usize]; layers];
    let mut pb = Prover::new(big.clone(), ToyEngine::default().trace_bytes(&big).unwrap())
        .unwrap()
        .with_sublayers_by_head(zeros(3, HIDDEN), zeros(3, 2), zeros(3, HIDDEN))
        .unwrap();
    let cb = pb.commit().unwrap();
    let whole = Challenge {
        round: 0,
        cells: vec![CellId { layer: 2, chunk: 3 }],
        attention: None,
    };
    let ob = pb.open(&whole).unwrap();
    let r = check_opening_drawn(
        &cb,
        &whole,
        &ob,
        &TolerancePolicy::Exact,
        LayerCheck::Freivalds,
        &ToyEngine::default(),
        &VerifierLimits::default(),
    )
    .unwrap_err();
    assert!(matches!(r, RejectReason::RecomputeFailed { .. }), "{r:?}");
    // a commitment whose key-value root is missing, or present at another level
    let mut c = commitment.clone();
    c.sublayer_roots.as_mut().unwrap().kv = None;
    assert!(c.validate().is_err());
    let mut c = commitment;
    c.statement.trace_level = TraceLevel::SubLayer {
        context: HIDDEN,
        cell: HIDDEN,
        dtype: Dtype::F32,
    };
    assert!(c.validate().is_err());
}

#[test]
fn non_interactive_draws_come_from_the_transcript() {
    let s = statement(Dependency::Causal, level());
    let mut p = prover(&s);
    let commitment = p.commit().unwrap();
    let mut params = ChallengeParams {
        samples: 4,
        strategy: SamplingStrategy::Uniform,
        pow_bits: 0,
        attention: None,
    };
    let plain = derive_challenge(&commitment, 0, &params, 0).unwrap();
    assert_eq!(plain.attention, None);
    params.attention = Some(AttentionSample {
        heads: 1,
        chunks: 2,
    });
    let a = derive_challenge(&commitment, 0, &params, 0).unwrap();
    let b = derive_challenge(&commitment, 1, &params, 0).unwrap();
    let draw = a.attention.unwrap();
    assert_eq!((draw.heads, draw.chunks), (1, 2));
    // the sample is absorbed (row 13a): the cells' seed differs too; rounds differ
    assert_ne!(a.cells, plain.cells);
    assert_ne!(a.attention.unwrap().seed, b.attention.unwrap().seed);
    // the prover's non-interactive opening is the drawn one, and a recorded session passes
    let cfg = config(
        LayerCheck::Freivalds,
        Mode::NonInteractive,
        params.attention,
    );
    let mut params2 = cfg.params;
    params2.samples = 5;
    assert_eq!(params2, cfg.params);
    let (c0, o0) = p.open_non_interactive(&cfg.params).unwrap();
    let (_, o1) = p.open_non_interactive(&cfg.params).unwrap();
    assert!(c0.attention.is_some());
    let verdict = veritrace_protocol::verify_recorded(
        &commitment,
        &cfg,
        None,
        &[o0.clone(), o1.clone()],
        &ToyEngine::default(),
        None,
    )
    .unwrap();
    assert_eq!(verdict, Verdict::Accept);
    // an interactive record whose draws disagree with the configuration is bad input
    let icfg = config(LayerCheck::Freivalds, Mode::Interactive, None);
    assert!(veritrace_protocol::verify_recorded(
        &commitment,
        &icfg,
        Some(&[c0.clone(), c0]),
        &[o0, o1],
        &ToyEngine::default(),
        None,
    )
    .is_err());
}

#[test]
fn messages_with_draws_round_trip() {
    let s = statement(Dependency::Causal, level());
    let mut p = prover(&s);
    let commitment = p.commit().unwrap();
    assert!(commitment.sublayer_roots.unwrap().kv.is_some());
    let challenge = Challenge {
        round: 0,
        cells: vec![CellId { layer: 2, chunk: 5 }],
        attention: Some(AttentionDraw {
            heads: 2,
            chunks: 1,
            seed: Digest([9; 32]),
        }),
    };
    let o = p.open(&challenge).unwrap();
    assert_eq!(
        Commitment::from_bytes(&commitment.to_bytes()).unwrap(),
        commitment
    );
    assert_eq!(
        Challenge::from_bytes(&challenge.to_bytes()).unwrap(),
        challenge
    );
    assert_eq!(Opening::from_bytes(&o.to_bytes()).unwrap(), o);
    let json = serde_json::to_string(&challenge).unwrap();
    assert_eq!(serde_json::from_str::<Challenge>(&json).unwrap(), challenge);
    // a challenge drawing no head is invalid
    let mut bad = challenge;
    bad.attention.as_mut().unwrap().heads = 0;
    assert!(Challenge::from_bytes(&bad.to_bytes()).is_err());
    assert_eq!(
        SubLayerPart::ALL.len(),
        3,
        "context, cell and key-value parts"
    );
}
