//! Drawn openings with the tiny decoder (issue 16, specs/protocol.md §4.4): a statement that
//! commits its sub-layer values by head, challenges that draw heads and context chunks, and the
//! keyed verifier checking exactly what the draw opened. Honest runs pass drawn and whole; a
//! one-head forgery is caught exactly when its head is drawn; drawn openings are smaller.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use veritrace_commit::{CellId, Digest, HasherId};
use veritrace_model::freivalds::{VerifierKey, VerifierSecret};
use veritrace_model::sublayer::KeyedVerifier;
use veritrace_model::{LlamaModel, Setup};
use veritrace_protocol::tolerance::TolerancePolicy;
use veritrace_protocol::{
    check_opening_drawn, AttentionDraw, AttentionSample, Challenge, ChallengeParams, LayerCheck,
    Message, Mode, Prover, RejectReason, SamplingStrategy, Statement, Step, TraceLevel, Verdict,
    Verifier, VerifierConfig, VerifierLimits,
};

const CHUNK: u32 = 4;

fn prompt() -> Vec<u32> {
    (0..19u32).map(|i| (5 + 29 * i * i + 3 * i) % 512).collect()
}

/// The tiny decoder's run at the by-head level, and its layer bytes and sub-layer parts
/// (`cheat` edits the cell trace's per-layer bytes before they are split and committed).
fn by_head(model: &LlamaModel, cheat: impl Fn(&mut Vec<Vec<u8>>)) -> (Statement, Prover<Vec<u8>>) {
    by_head_in(model, &Setup::F32_EAGER, cheat)
}

/// [`by_head`] of a run of `setup`, its sub-layer values committed in the setup's type.
fn by_head_in(
    model: &LlamaModel,
    setup: &Setup,
    cheat: impl Fn(&mut Vec<Vec<u8>>),
) -> (Statement, Prover<Vec<u8>>) {
    let (mut statement, trace, sub) = model
        .prove_run_sublayers(setup, &prompt(), 4, CHUNK, HasherId::Blake3)
        .unwrap();
    let layout = model.sublayer_layout();
    statement.trace_level = layout
        .by_head_level()
        .unwrap()
        .with_dtype(setup.precision.dtype());
    let (context, mut cell) = sub.bytes();
    cheat(&mut cell);
    let parts = veritrace_model::sublayer::prover_parts(&statement, context, cell).unwrap();
    let prover = Prover::new(statement.clone(), trace.layer_bytes())
        .unwrap()
        .with_sublayer_parts(parts)
        .unwrap();
    (statement, prover)
}

fn config(method: LayerCheck, attention: Option<AttentionSample>) -> VerifierConfig {
    VerifierConfig {
        mode: Mode::Interactive,
        params: ChallengeParams {
            samples: 6,
            strategy: SamplingStrategy::Uniform,
            pow_bits: 0,
            attention,
        },
        rounds: 1,
        tolerance: TolerancePolicy::Exact,
        method,
    }
}

#[test]
fn honest_by_head_sessions_pass_drawn_and_whole() {
    let model = LlamaModel::preset("tiny").unwrap();
    let key = VerifierKey::build(&VerifierSecret::from_bytes([9; 32]), &model, 2).unwrap();
    let (statement, _) = by_head(&model, |_| {});
    assert!(matches!(
        statement.trace_level,
        TraceLevel::SubLayerByHead {
            heads: 4,
            kv_heads: 2,
            kv: 64,
            context: 128,
            ..
        }
    ));
    let mut cases = vec![(LayerCheck::Freivalds, None), (LayerCheck::Recompute, None)];
    for (heads, chunks) in [(1, 1), (2, 0), (4, 9)] {
        cases.push((
            LayerCheck::Freivalds,
            Some(AttentionSample { heads, chunks }),
        ));
    }
    for (method, attention) in cases {
        for seed in 0..2 {
            let (_, mut p) = by_head(&model, |_| {});
            let mut rng = ChaCha20Rng::from_seed([seed; 32]);
            let mut v = Verifier::new(
                config(method, attention),
                KeyedVerifier::exact(&model, &key),
            )
            .unwrap();
            let mut step = v.receive_commitment(p.commit().unwrap(), &mut rng);
            let verdict = loop {
                step = match step {
                    Step::Decided(v) => break v,
                    Step::Challenge(c) => v.receive_opening(&p.open(&c).unwrap(), &mut rng),
                    Step::AwaitOpening => unreachable!("interactive"),
                };
            };
            assert_eq!(verdict, Verdict::Accept, "{method:?} {attention:?} {seed}");
        }
    }
}

#[test]
fn a_one_head_forgery_is_caught_exactly_where_drawn() {
    let model = LlamaModel::preset("tiny").unwrap();
    let key = VerifierKey::build(&VerifierSecret::from_bytes([9; 32]), &model, 2).unwrap();
    let layout = model.sublayer_layout();
    let (q, n, width) = (layout.q, layout.head_dim(), layout.cell_width());
    // query head 1's attention output one ulp up in every row of every layer: below the
    // output projection's Freivalds bound, so only its attention recompute can see it
    let forge = |cell: &mut Vec<Vec<u8>>| {
        for layer in cell.iter_mut() {
            for row in layer.chunks_exact_mut(4 * width) {
                for i in q + n..q + 2 * n {
                    let b = &mut row[4 * i..4 * i + 4];
                    let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    b.copy_from_slice(&x.next_up().to_le_bytes());
                }
            }
        }
    };
    let (statement, mut p) = by_head(&model, forge);
    let commitment = p.commit().unwrap();
    let verifier = KeyedVerifier::exact(&model, &key);
    let g = statement.geometry;
    let (trials, mut caught) = (240u32, 0u32);
    for i in 0..trials {
        // cells above layer 0
        let cell = g
            .cell_at(
                u64::from(g.chunks_per_layer())
                    + u64::from(i) % (g.num_cells() - u64::from(g.chunks_per_layer())),
            )
            .unwrap();
        let mut seed = [0u8; 32];
        seed[..4].copy_from_slice(&i.to_le_bytes());
        let challenge = Challenge {
            round: 0,
            cells: vec![cell],
            attention: Some(AttentionDraw {
                heads: 1,
                chunks: 1,
                seed: Digest(seed),
            }),
        };
        let draw = challenge.attention.unwrap().cell(&statement, cell).unwrap();
        let o = p
            .open_drawn(0, &challenge.cells, challenge.attention.as_ref(), 0)
            .unwrap();
        let verdict = check_opening_drawn(
            &commitment,
            &challenge,
            &o,
            &TolerancePolicy::Exact,
            LayerCheck::Freivalds,
            &verifier,
            &VerifierLimits::default(),
        );
        assert_eq!(
            verdict.is_err(),
            draw.heads == [1],
            "{cell:?} {draw:?} {verdict:?}"
        );
        if let Err(reason) = verdict {
            assert!(
                matches!(&reason, RejectReason::AlgebraicCheck { detail, .. } if detail.contains("attn")),
                "{reason:?}"
            );
            caught += 1;
        }
    }
    // one head of four drawn per cell: 25%, within five standard deviations
    let (e, sd) = (
        f64::from(trials) / 4.0,
        (f64::from(trials) * 0.25 * 0.75).sqrt(),
    );
    assert!(
        (f64::from(caught) - e).abs() < 5.0 * sd,
        "caught {caught} of {trials}"
    );
    // the whole check catches it in every cell
    let cell = CellId { layer: 2, chunk: 3 };
    let whole = Challenge {
        round: 0,
        cells: vec![cell],
        attention: None,
    };
    let o = p.open_cells(0, &whole.cells, 0).unwrap();
    assert!(check_opening_drawn(
        &commitment,
        &whole,
        &o,
        &TolerancePolicy::Exact,
        LayerCheck::Freivalds,
        &verifier,
        &VerifierLimits::default(),
    )
    .is_err());
}

#[test]
fn drawn_openings_are_smaller_than_whole_ones() {
    let model = LlamaModel::preset("tiny").unwrap();
    let (statement, mut p) = by_head(&model, |_| {});
    p.commit().unwrap();
    let g = statement.geometry;
    // the last cell of the last layer: the whole context before it
    let cell = g.cell_at(g.num_cells() - 1).unwrap();
    let whole = p.open_cells(0, &[cell], 0).unwrap().to_bytes().len();
    let draw = AttentionDraw {
        heads: 1,
        chunks: 1,
        seed: Digest([4; 32]),
    };
    let drawn = p
        .open_drawn(0, &[cell], Some(&draw), 0)
        .unwrap()
        .to_bytes()
        .len();
    // tiny, 23 tokens in 6 chunks: the drawn opening holds 2 of 6 chunks' inputs and norms
    // and 1 head of 2's keys and values over the context; both hold the cell's own sub-layer
    // rows (1544 elements per row, most of either opening at this size)
    let layout = model.sublayer_layout();
    let (d, n, c) = (layout.hidden, layout.head_dim(), CHUNK as usize);
    let rows = |chunks: usize| 4 * chunks * c;
    // hidden inputs and norms of 4 chunks, and 1 key-value head's rows of 4 chunks, not opened
    let saved = rows(4) * (2 * d + 2 * n);
    // (less a few more proof siblings for the scattered cells)
    assert!(
        whole > drawn && (whole - drawn) as f64 > 0.95 * saved as f64,
        "drawn {drawn} bytes, whole {whole}, {saved} not opened"
    );
}

/// The byte model of a drawn opening ([`veritrace_model::cost::CellBytes::drawn`]) is the
/// opened values' bytes exactly, for one drawn head (one key-value head read) and any number
/// of earlier chunks; the whole opening's is `opened`. For an f32 run and a bf16 one, whose
/// sub-layer values are committed as bf16 (2 bytes each).
#[test]
fn the_byte_model_of_drawn_openings_is_exact() {
    for (setup, value_bytes) in [
        (Setup::F32_EAGER, 4),
        ("bf16/attn=eager".parse().unwrap(), 2),
    ] {
        byte_model_is_exact(&setup, value_bytes);
    }
}

fn byte_model_is_exact(setup: &Setup, value_bytes: usize) {
    use veritrace_model::cost::sampled_verifier_cell_bytes;
    use veritrace_model::freivalds::AttentionSampling;
    let model = LlamaModel::preset("tiny").unwrap();
    let (statement, mut p) = by_head_in(&model, setup, |_| {});
    p.commit().unwrap();
    let g = statement.geometry;
    let values = |o: &veritrace_protocol::Opening| -> usize {
        let sub = o.sublayers.as_ref().unwrap();
        o.cells
            .iter()
            .chain(&sub.context)
            .chain(&sub.kv)
            .chain(&sub.cell)
            .map(|c| c.data.len())
            .sum()
    };
    for layer in 1..g.layers {
        for chunk in 0..g.chunks_per_layer() {
            let cell = CellId { layer, chunk };
            let rows = g.cell_rows(cell).unwrap();
            let (r, ctx) = (u64::from(rows.end - rows.start), u64::from(rows.end));
            for chunks in [0u32, 1, 2, 9] {
                let draw = AttentionDraw {
                    heads: 1,
                    chunks,
                    seed: Digest([chunk as u8; 32]),
                };
                let o = p.open_drawn(0, &[cell], Some(&draw), 0).unwrap();
                let drawn = draw.cell(&statement, cell).unwrap();
                let sampling = AttentionSampling {
                    heads: Some(1),
                    context_rows: Some(drawn.chunks.len() as u32 * CHUNK),
                };
                let b = sampled_verifier_cell_bytes(model.config(), r, ctx, &sampling, value_bytes);
                assert_eq!(values(&o) as f64, b.drawn, "{cell:?} {chunks}");
            }
            let whole = p.open_cells(0, &[cell], 0).unwrap();
            let full = AttentionSampling::FULL;
            let b = sampled_verifier_cell_bytes(model.config(), r, ctx, &full, value_bytes);
            assert_eq!(values(&whole) as f64, b.opened, "{cell:?}");
        }
    }
}

/// Drawn openings under a sliding window (Mistral's): the draw's earlier chunks are those the
/// window reads, every honest cell passes drawn, and a prover of int8 weights claiming f32 is
/// rejected.
#[test]
fn sliding_window_cells_pass_drawn_and_cheats_fail() {
    let mut c = veritrace_model::ModelConfig::tiny();
    c.family = veritrace_model::Family::Mistral;
    c.sliding_window = Some(5);
    let model = LlamaModel::new(c).unwrap();
    let key = VerifierKey::build(&VerifierSecret::from_bytes([6; 32]), &model, 2).unwrap();
    let verifier = KeyedVerifier::exact(&model, &key);
    let run = |setup: &str| -> Vec<bool> {
        let (mut statement, trace, sub) = model
            .prove_run_sublayers(
                &setup.parse().unwrap(),
                &prompt(),
                4,
                CHUNK,
                HasherId::Blake3,
            )
            .unwrap();
        statement.setup = Setup::F32_EAGER.to_bytes();
        statement.trace_level = model.sublayer_layout().by_head_level().unwrap();
        let parts = sub.parts(&statement).unwrap();
        let mut p = Prover::new(statement.clone(), trace.layer_bytes())
            .unwrap()
            .with_sublayer_parts(parts)
            .unwrap();
        let commitment = p.commit().unwrap();
        let g = statement.geometry;
        let mut passed = Vec::new();
        for i in u64::from(g.chunks_per_layer())..g.num_cells() {
            let cell = g.cell_at(i).unwrap();
            for chunks in [1, 9] {
                let challenge = Challenge {
                    round: 0,
                    cells: vec![cell],
                    attention: Some(AttentionDraw {
                        heads: 1,
                        chunks,
                        seed: Digest([i as u8; 32]),
                    }),
                };
                let drawn = challenge.attention.unwrap().cell(&statement, cell).unwrap();
                // the window reads rows a − 4 .. e: the chunks before the cell's it touches
                let a = cell.chunk * CHUNK;
                let first = a.saturating_sub(4) / CHUNK;
                assert!(drawn.chunks.iter().all(|&m| m >= first && m < cell.chunk));
                let o = p
                    .open_drawn(0, &challenge.cells, challenge.attention.as_ref(), 0)
                    .unwrap();
                passed.push(
                    check_opening_drawn(
                        &commitment,
                        &challenge,
                        &o,
                        &TolerancePolicy::Exact,
                        LayerCheck::Freivalds,
                        &verifier,
                        &VerifierLimits::default(),
                    )
                    .is_ok(),
                );
            }
        }
        passed
    };
    assert!(run("f32/attn=eager").iter().all(|&ok| ok));
    let cheat = run("f32/attn=eager/quant=int8-channel");
    assert!(cheat.iter().all(|&ok| !ok), "{cheat:?}");
}
