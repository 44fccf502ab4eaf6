//! Generates the machine-readable test vectors of `specs/protocol.md`.
//!
//! ```text
//! cargo run --example gen_protocol_vectors > specs/vectors/protocol.json
//! ```
//!
//! Every value is computed by `veritrace-protocol` itself (challenge seeds, proof-of-work nonces,
//! sampled cells, opening sets, encodings, verdicts, soundness figures); `tests/protocol_vectors.rs`
//! recomputes them and checks that every challenge seed appears verbatim in the document. The
//! output is deterministic (object keys sorted).

use serde_json::{json, Value};
use veritrace::commit::{CellId, Digest, Dtype, HasherId, TraceGeometry};
use veritrace::protocol::encoding::{MAX_MESSAGE_BYTES, MESSAGE_MAGIC, MESSAGE_VERSION};
use veritrace::protocol::sampling::{cost_weight, sample_cells};
use veritrace::protocol::soundness::{
    detection_probability, log2_miss_probability, miss_probability, samples_needed,
    soundness_report, SoundnessParams,
};
use veritrace::protocol::tolerance::{Metric, Side, TolerancePolicy, ToleranceViolation};
use veritrace::protocol::toy::ToyEngine;
use veritrace::protocol::transcript::{
    base_transcript, challenge_seed, check_pow, derive_challenge, find_pow_nonce,
    TranscriptProtocol, DOMAIN, MAX_POW_BITS,
};
use veritrace::protocol::{
    check_opening, Challenge, ChallengeParams, Commitment, Dependency, InputText, Message, Mode,
    Opening, OutputRule, Prover, RejectReason, SamplingStrategy, Statement, Step, Verdict,
    Verifier, VerifierConfig, PROTOCOL_VERSION,
};

fn main() {
    let v = vectors();
    println!(
        "{}",
        serde_json::to_string_pretty(&v).expect("a JSON value serializes")
    );
}

// ---------------------------------------------------------------------------------------------
// The fixed statements
// ---------------------------------------------------------------------------------------------

/// Rule for the fixed roots of the statements that are not toy traces.
const ROOT_RULE: &str = "blake3(\"veritrace/protocol/vectors/root/\" || name); for poseidon the first byte is then ANDed with 0x1f (a canonical BN254 element)";

/// Input tokens of the toy statement.
fn toy_input() -> Vec<u32> {
    (0..7u32).map(|i| 3 + 7 * i).collect()
}

/// The three statements of the vectors, with their roots.
fn statements() -> Vec<(&'static str, Commitment)> {
    // 1. A decoder whose trace is the toy engine's: 4 hidden states, 7 + 5 tokens, hidden 4,
    //    chunk 3 (4 chunks per layer, N = 16), f32, BLAKE3, causal, greedy. The root is the real
    //    root of the toy trace, and the output tokens are what the toy engine generates.
    let input = toy_input();
    let output = ToyEngine::default()
        .generate(Dependency::Causal, 4, 4, &input, 5)
        .expect("toy generation");
    let toy = Statement {
        trace_level: veritrace_protocol::TraceLevel::Hidden,
        version: PROTOCOL_VERSION,
        model_digest: Digest([0xab; 32]),
        setup: b"toy/f32".to_vec(),
        input_tokens: input,
        output_tokens: output,
        geometry: TraceGeometry::new(4, 12, 4, 3, Dtype::F32).expect("valid geometry"),
        hasher: HasherId::Blake3,
        dependency: Dependency::Causal,
        output_rule: OutputRule::Greedy,
        input_text: None,
        engine: None,
    };
    let toy_root = toy_prover(&toy).tree().root();

    // 2. Sliding-window decoder: 6 hidden states, 30 + 10 tokens, hidden 8, chunk 4 (10 chunks
    //    per layer, N = 60), bf16, SHA-256, window 6, sampled output with a seed, text input.
    let window = Statement {
        trace_level: veritrace_protocol::TraceLevel::Hidden,
        version: PROTOCOL_VERSION,
        model_digest: Digest(std::array::from_fn(|i| (7 * i + 1) as u8)),
        setup: b"bf16/attn=flash-128/window=6/quant=int8-per-channel".to_vec(),
        input_tokens: (0..30u32).map(|i| (37 * i + 11) % 32_000).collect(),
        output_tokens: (0..10u32).map(|i| (101 * i + 7) % 32_000).collect(),
        geometry: TraceGeometry::new(6, 40, 8, 4, Dtype::Bf16).expect("valid geometry"),
        hasher: HasherId::Sha256,
        dependency: Dependency::Window { size: 6 },
        output_rule: OutputRule::Sampled {
            seed: Digest(std::array::from_fn(|i| (0xf0 - i) as u8)),
        },
        // text input (binary field 10, transcript row 10a), with non-ASCII UTF-8
        input_text: Some(InputText {
            tokenizer: Digest(std::array::from_fn(|i| (0x55 ^ i) as u8)),
            chat: true,
            text: "Déjà vu — forty tokens of text".into(),
        }),
        // an engine claim (binary field 11, transcript row 10b)
        engine: Some("transformers 5.25.0, torch 2.15.0, cpu, eager".into()),
    };

    // 3. An encoder: 3 hidden states, 16 input tokens and no output, hidden 8, chunk 5 (4 chunks
    //    per layer, the last one a single row, N = 12), f16, Poseidon, bidirectional.
    let encoder = Statement {
        trace_level: veritrace_protocol::TraceLevel::Hidden,
        version: PROTOCOL_VERSION,
        model_digest: Digest(std::array::from_fn(|i| (0x30 + 3 * i) as u8)),
        setup: b"f16/attn=eager/encoder".to_vec(),
        input_tokens: (0..16u32).map(|i| 101 + 1000 * i).collect(),
        output_tokens: Vec::new(),
        geometry: TraceGeometry::new(3, 16, 8, 5, Dtype::F16).expect("valid geometry"),
        hasher: HasherId::Poseidon,
        dependency: Dependency::Bidirectional,
        output_rule: OutputRule::Greedy,
        input_text: None,
        engine: None,
    };

    // 4. The toy decoder at the sub-layer trace level (specs/protocol.md §3.5): the same run,
    //    with the toy's context and cell traces (widths 4) committed beside it; the roots are
    //    the real roots (crates/protocol/src/toy.rs).
    let mut sub = toy.clone();
    sub.trace_level = veritrace_protocol::TraceLevel::SubLayer {
        context: 4,
        cell: 4,
        dtype: Dtype::F32,
    };
    let sub_commitment = toy_prover(&sub).commit().expect("commits once");

    // 5. The toy decoder at the by-head level (specs/protocol.md §3.5, §4.4): two "heads" of 2
    //    elements; the three sub-layer roots are the real roots.
    let mut by_head = toy.clone();
    by_head.trace_level = ToyEngine::by_head_level(4, 2).expect("4 over 2 heads");
    let by_head_commitment = toy_prover(&by_head).commit().expect("commits once");

    // 6. The by-head level with bf16 sub-layer values (specs/protocol.md §3.5: the trace-level
    //    row ends with the dtype code): the toy's run and widths, fixed roots (no toy computes
    //    in bf16).
    let mut bf16_by_head = by_head.clone();
    bf16_by_head.trace_level = bf16_by_head.trace_level.with_dtype(Dtype::Bf16);

    vec![
        (
            "toy-causal-blake3",
            Commitment {
                sublayer_roots: None,
                statement: toy,
                root: toy_root,
            },
        ),
        (
            "window-sha256-sampled",
            Commitment {
                sublayer_roots: None,
                root: fixed_root("window-sha256-sampled", HasherId::Sha256),
                statement: window,
            },
        ),
        (
            "encoder-poseidon",
            Commitment {
                sublayer_roots: None,
                root: fixed_root("encoder-poseidon", HasherId::Poseidon),
                statement: encoder,
            },
        ),
        ("toy-sublayer-blake3", sub_commitment),
        ("toy-byhead-blake3", by_head_commitment),
        (
            "byhead-bf16-blake3",
            Commitment {
                sublayer_roots: Some(veritrace_protocol::SubLayerRoots {
                    context: fixed_root("byhead-bf16-blake3/context", HasherId::Blake3),
                    cell: fixed_root("byhead-bf16-blake3/cell", HasherId::Blake3),
                    kv: Some(fixed_root("byhead-bf16-blake3/kv", HasherId::Blake3)),
                }),
                root: fixed_root("byhead-bf16-blake3", HasherId::Blake3),
                statement: bf16_by_head,
            },
        ),
    ]
}

/// See [`ROOT_RULE`].
fn fixed_root(name: &str, hasher: HasherId) -> Digest {
    let mut d =
        *blake3::hash(format!("veritrace/protocol/vectors/root/{name}").as_bytes()).as_bytes();
    if hasher == HasherId::Poseidon {
        d[0] &= 0x1f;
    }
    Digest(d)
}

fn toy_prover(s: &Statement) -> Prover<Vec<u8>> {
    toy_prover_with(s, ToyEngine::default())
}

fn toy_prover_with(s: &Statement, engine: ToyEngine) -> Prover<Vec<u8>> {
    let p =
        Prover::new(s.clone(), engine.trace_bytes(s).expect("toy trace")).expect("valid prover");
    if s.trace_level == veritrace_protocol::TraceLevel::Hidden {
        return p;
    }
    if s.trace_level.heads().is_some() {
        let (context, kv, cell) = engine
            .sublayer_bytes_by_head(s)
            .expect("toy sub-layer traces by head");
        return p
            .with_sublayers_by_head(context, kv, cell)
            .expect("valid sub-layer traces");
    }
    let (context, cell) = engine.sublayer_bytes(s).expect("toy sub-layer traces");
    p.with_sublayers(context, cell)
        .expect("valid sub-layer traces")
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn strategy_name(s: SamplingStrategy) -> &'static str {
    match s {
        SamplingStrategy::Uniform => "uniform",
        SamplingStrategy::Stratified => "stratified",
        SamplingStrategy::CostWeighted => "cost-weighted",
    }
}

fn cells_json(cells: &[CellId]) -> Value {
    Value::Array(cells.iter().map(|c| json!([c.layer, c.chunk])).collect())
}

fn indices_json(s: &Statement, cells: &[CellId]) -> Value {
    Value::Array(
        cells
            .iter()
            .map(|&c| json!(s.geometry.cell_index(c).expect("cell in range")))
            .collect(),
    )
}

fn compact<T: Message>(m: &T) -> String {
    serde_json::to_string(m).expect("messages serialize to JSON")
}

/// Rows 1-10 of the transcript, written out independently of `transcript.rs` (label, bytes).
fn transcript_rows(c: &Commitment) -> Vec<(&'static str, Vec<u8>)> {
    let s = &c.statement;
    let tokens = |t: &[u32]| {
        let mut out = (t.len() as u64).to_le_bytes().to_vec();
        for x in t {
            out.extend(x.to_le_bytes());
        }
        out
    };
    let g = &s.geometry;
    let mut geometry = Vec::new();
    for v in [g.layers, g.tokens, g.hidden, g.chunk] {
        geometry.extend(v.to_le_bytes());
    }
    geometry.push(g.dtype.code());
    let (code, size) = match s.dependency {
        Dependency::Causal => (1u8, 0u32),
        Dependency::Bidirectional => (2, 0),
        Dependency::Window { size } => (3, size),
    };
    let mut dependency = vec![code];
    dependency.extend(size.to_le_bytes());
    let (code, seed) = match s.output_rule {
        OutputRule::Greedy => (1u8, [0u8; 32]),
        OutputRule::Sampled { seed } => (2, seed.0),
    };
    let mut rule = vec![code];
    rule.extend(seed);
    let mut rows = vec![
        ("version", s.version.to_le_bytes().to_vec()),
        ("model-digest", s.model_digest.0.to_vec()),
        ("setup", s.setup.clone()),
        ("input-tokens", tokens(&s.input_tokens)),
        ("output-tokens", tokens(&s.output_tokens)),
        ("geometry", geometry),
        ("hasher", vec![s.hasher.code()]),
        ("dependency", dependency),
        ("output-rule", rule),
    ];
    if let Some(t) = &s.input_text {
        let mut m = t.tokenizer.0.to_vec();
        m.push(u8::from(t.chat));
        m.extend(t.text.as_bytes());
        rows.push(("input-text", m));
    }
    if let Some(e) = &s.engine {
        rows.push(("engine", e.as_bytes().to_vec()));
    }
    match s.trace_level {
        veritrace_protocol::TraceLevel::Hidden => {}
        veritrace_protocol::TraceLevel::SubLayer {
            context,
            cell,
            dtype,
        } => {
            let mut m = context.to_le_bytes().to_vec();
            m.extend(cell.to_le_bytes());
            m.extend((dtype != Dtype::F32).then_some(dtype.code()));
            rows.push(("trace-level", m));
        }
        veritrace_protocol::TraceLevel::SubLayerByHead {
            context,
            cell,
            heads,
            kv_heads,
            kv,
            dtype,
        } => {
            let mut m: Vec<u8> = [context, cell, heads, kv_heads, kv]
                .into_iter()
                .flat_map(u32::to_le_bytes)
                .collect();
            m.extend((dtype != Dtype::F32).then_some(dtype.code()));
            rows.push(("trace-level", m));
        }
    }
    rows.push(("root", c.root.0.to_vec()));
    if let Some(r) = &c.sublayer_roots {
        let mut m = r.context.0.to_vec();
        m.extend(r.cell.0);
        if let Some(kv) = r.kv {
            m.extend(kv.0);
        }
        rows.push(("sublayer-roots", m));
    }
    rows
}

/// Rows 11-14 of the transcript (the session's: parameters and proof-of-work nonce).
fn session_rows(params: &ChallengeParams, nonce: u64) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("samples", u64::from(params.samples).to_le_bytes().to_vec()),
        ("strategy", vec![params.strategy.code()]),
        (
            "pow-bits",
            u64::from(params.pow_bits).to_le_bytes().to_vec(),
        ),
        ("pow-nonce", nonce.to_le_bytes().to_vec()),
    ]
}

/// Row 15 of the transcript (the round's, on a clone of the session transcript).
fn round_row(round: u32) -> (&'static str, Vec<u8>) {
    ("round", u64::from(round).to_le_bytes().to_vec())
}

fn rows_json(rows: &[(&str, Vec<u8>)]) -> Value {
    Value::Array(
        rows.iter()
            .map(|(l, b)| json!({"label": l, "value_hex": hex::encode(b)}))
            .collect(),
    )
}

/// The 32 bytes squeezed under label `pow` for a nonce (what the proof of work tests): rows 0-13,
/// then row 14 (`pow-nonce`), then `pow`. No round: the proof of work is once per session.
fn pow_output(c: &Commitment, params: &ChallengeParams, nonce: u64) -> [u8; 32] {
    let mut t = base_transcript(c);
    t.append_params(params);
    t.append_u64(b"pow-nonce", nonce);
    let mut out = [0u8; 32];
    t.challenge_bytes(b"pow", &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// Sections
// ---------------------------------------------------------------------------------------------

fn vectors() -> Value {
    let commitments = statements();
    let mut top = serde_json::Map::new();
    top.insert("about".into(), about());
    top.insert("constants".into(), constants());
    top.insert("chacha20".into(), chacha20());
    top.insert("statements".into(), statements_json(&commitments));
    top.insert("challenges".into(), challenges(&commitments));
    top.insert("sampling".into(), sampling(&commitments));
    top.insert("attention_draws".into(), attention_draws(&commitments[4]));
    top.insert("opening".into(), opening(&commitments[0].1));
    top.insert("session".into(), session(&commitments[0].1));
    top.insert("verdicts".into(), verdicts());
    top.insert("soundness".into(), soundness());
    Value::Object(top)
}

fn about() -> Value {
    json!({
        "title": "veritrace protocol test vectors",
        "spec": "specs/protocol.md",
        "generator": "cargo run --example gen_protocol_vectors > specs/vectors/protocol.json",
        "checked_by": ["tests/protocol_vectors.rs"],
        "conventions": [
            "All byte strings and digests are lowercase hex without a 0x prefix.",
            "A cell is written [layer, chunk]; its leaf index is layer * chunks_per_layer + chunk.",
            "statement_json, json and *_binary_hex fields are the exact output of the reference implementation (serde_json compact form; VTPM envelope).",
            "challenges[].seed_hex and session.per_round[].seed_hex are the 32-byte challenge seed squeezed under `challenge-seed` after the session's pow_nonce (row 14) and the round (row 15); cells are sample_cells(statement, samples, strategy, seed).",
            "pow_output_hex is the 32-byte value squeezed under `pow` right after row 14 (`pow-nonce`), with no round: the proof of work is once per session. pow_nonce is the smallest nonce whose output has pow_bits leading zero bits (0 when pow_bits = 0, and then no pow output is defined); it depends on the statement, the root and the parameters, not on the round.",
            "transcript_rows list the label and the exact message bytes of rows 1-10 (per statement) and 11-15 (per challenge: samples, strategy, pow-bits, pow-nonce, round) of the transcript in specs/protocol.md section 7.",
            "Opening cases name the RejectReason variant the reference verifier reports (check order of specs/protocol.md section 11); detail strings are informative.",
            "session is one non-interactive session of several rounds run through the reference prover and verifier: one proof-of-work nonce for the whole session, carried by every round's opening (specs/protocol.md sections 8 and 16.5); its cases are rejected by the verifier's state machine (section 10.2)."
        ]
    })
}

fn constants() -> Value {
    json!({
        "protocol_version": PROTOCOL_VERSION,
        "transcript_domain": String::from_utf8(DOMAIN.to_vec()).expect("ASCII"),
        "max_pow_bits": MAX_POW_BITS,
        "message_magic_hex": hex::encode(MESSAGE_MAGIC),
        "message_version": MESSAGE_VERSION,
        "max_message_bytes": MAX_MESSAGE_BYTES,
        "message_kinds": {"statement": 1, "commitment": 2, "challenge": 3, "opening": 4, "verdict": 5},
        "strategy_codes": {"uniform": 1, "stratified": 2, "cost-weighted": 3}
    })
}

fn chacha20() -> Value {
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};
    let mut rows = Vec::new();
    for (name, seed) in [
        ("zero", [0u8; 32]),
        ("counting", std::array::from_fn(|i| i as u8)),
    ] {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let words: Vec<String> = (0..4).map(|_| format!("{:016x}", rng.next_u64())).collect();
        rows.push(
            json!({"name": name, "seed_hex": hex::encode(seed), "first_u64_words_hex": words}),
        );
    }
    json!({
        "note": "ChaCha20Rng::from_seed(seed).next_u64(), four times; each word is the little-endian reading of 8 keystream bytes (the zero-seed keystream starts 76b8e0ada0f13d90, RFC 8439 A.1 test vector 1)",
        "keystreams": rows
    })
}

fn statements_json(commitments: &[(&str, Commitment)]) -> Value {
    let mut out = Vec::new();
    for (name, c) in commitments {
        let s = &c.statement;
        let weights: Vec<u128> = (0..s.geometry.num_cells())
            .map(|i| cost_weight(s, s.geometry.cell_at(i).expect("in range")).expect("weight"))
            .collect();
        let input_cells: Vec<Value> = (0..s.geometry.num_cells())
            .map(|i| {
                let cell = s.geometry.cell_at(i).expect("in range");
                let rows = s.geometry.cell_rows(cell).expect("valid cell");
                let input_rows = s.input_rows(cell).expect("valid cell");
                json!({
                    "cell": [cell.layer, cell.chunk],
                    "rows": [rows.start, rows.end],
                    "input_rows": input_rows.map(|r| [r.start, r.end]),
                    "input_cells": cells_json(&s.input_cells(cell).expect("valid cell")),
                })
            })
            .collect();
        let predictions: Vec<Value> = (0..s.geometry.tokens)
            .filter_map(|p| s.predicted_output(p).map(|t| json!([p, t])))
            .collect();
        out.push(json!({
            "name": name,
            "root_rule": if name.starts_with("toy-") { "the root of the toy engine's trace (crates/protocol/src/toy.rs)" } else { ROOT_RULE },
            "root_hex": c.root.to_hex(),
            "statement_json": compact(s),
            "statement_binary_hex": hex::encode(s.to_bytes()),
            "commitment_json": compact(c),
            "commitment_binary_hex": hex::encode(c.to_bytes()),
            "cells": s.geometry.num_cells(),
            "chunks_per_layer": s.geometry.chunks_per_layer(),
            "cost_weights": weights.iter().map(|w| u64::try_from(*w).expect("small weights")).collect::<Vec<u64>>(),
            "dependencies": input_cells,
            "predicted_outputs": predictions,
            "transcript_rows": rows_json(&transcript_rows(c)),
        }));
    }
    Value::Array(out)
}

/// (statement index, round, samples, strategy, pow bits).
const CHALLENGES: [(usize, u32, u32, SamplingStrategy, u8); 18] = [
    (0, 0, 4, SamplingStrategy::Uniform, 0),
    (0, 1, 4, SamplingStrategy::Uniform, 0),
    (0, 0, 5, SamplingStrategy::Stratified, 0),
    (0, 0, 6, SamplingStrategy::CostWeighted, 0),
    (0, 2, 3, SamplingStrategy::Uniform, 8),
    (0, 0, 16, SamplingStrategy::Uniform, 0),
    (1, 0, 10, SamplingStrategy::Uniform, 0),
    (1, 0, 12, SamplingStrategy::Stratified, 4),
    (1, 1, 9, SamplingStrategy::CostWeighted, 0),
    (1, 3, 7, SamplingStrategy::CostWeighted, 12),
    (2, 0, 3, SamplingStrategy::Stratified, 0),
    (2, 0, 5, SamplingStrategy::CostWeighted, 6),
    (2, 5, 2, SamplingStrategy::Uniform, 0),
    // stratified with k < L: k distinct layers, one cell each
    (0, 0, 3, SamplingStrategy::Stratified, 0),
    (2, 1, 2, SamplingStrategy::Stratified, 5),
    // k >= N: every cell, whatever the strategy and the seed
    (0, 0, 20, SamplingStrategy::Stratified, 0),
    (2, 1, 12, SamplingStrategy::CostWeighted, 0),
    // the sub-layer statement: rows 10c and 10d are absorbed
    (3, 0, 4, SamplingStrategy::Uniform, 0),
];

fn challenges(commitments: &[(&str, Commitment)]) -> Value {
    let mut out = Vec::new();
    for (si, round, samples, strategy, pow_bits) in CHALLENGES {
        let (name, c) = &commitments[si];
        let s = &c.statement;
        let params = ChallengeParams {
            samples,
            strategy,
            pow_bits,
            attention: None,
        };
        let nonce = find_pow_nonce(c, &params).expect("valid parameters");
        let seed = challenge_seed(c, round, &params, nonce);
        let challenge = derive_challenge(c, round, &params, nonce).expect("a challenge");
        assert_eq!(
            challenge.cells,
            sample_cells(s, samples, strategy, seed).expect("sampled")
        );
        let opening = s.opening_cells(&challenge.cells).expect("opening cells");
        let mut rows = session_rows(&params, nonce);
        rows.push(round_row(round));
        out.push(json!({
            "statement": name,
            "round": round,
            "samples": samples,
            "strategy": strategy_name(strategy),
            "pow_bits": pow_bits,
            "pow_nonce": nonce,
            "pow_output_hex": (pow_bits > 0).then(|| hex::encode(pow_output(c, &params, nonce))),
            "seed_hex": hex::encode(seed),
            "cells": cells_json(&challenge.cells),
            "indices": indices_json(s, &challenge.cells),
            "opening_cells": cells_json(&opening),
            "opening_indices": indices_json(s, &opening),
            "challenge_json": compact(&challenge),
            "challenge_binary_hex": hex::encode(challenge.to_bytes()),
            "transcript_rows": rows_json(&rows),
        }));
    }
    Value::Array(out)
}

/// (round, samples, strategy, pow bits, heads, chunks) of the attention-draw vectors.
const DRAWS: [(u32, u32, SamplingStrategy, u8, u32, u32); 3] = [
    (0, 4, SamplingStrategy::Uniform, 0, 1, 1),
    (1, 5, SamplingStrategy::Stratified, 3, 1, 2),
    (0, 6, SamplingStrategy::Uniform, 0, 2, 0),
];

/// Non-interactive challenges with an attention draw of the by-head statement (specs/protocol.md
/// §4.4, §7.2 rows 13a and 17): the seeds, every challenged cell's draw and the opening sets.
fn attention_draws((name, c): &(&str, Commitment)) -> Value {
    use veritrace::protocol::transcript::attention_draw;
    use veritrace::protocol::{AttentionSample, SubLayerPart};
    let s = &c.statement;
    let mut out = Vec::new();
    for (round, samples, strategy, pow_bits, heads, chunks) in DRAWS {
        let params = ChallengeParams {
            samples,
            strategy,
            pow_bits,
            attention: Some(AttentionSample { heads, chunks }),
        };
        let nonce = find_pow_nonce(c, &params).expect("valid parameters");
        let seed = challenge_seed(c, round, &params, nonce);
        let challenge = derive_challenge(c, round, &params, nonce).expect("a challenge");
        let draw = challenge.attention.expect("an attention draw");
        assert_eq!(Some(draw), attention_draw(c, round, &params, nonce));
        let draws: Vec<Value> = challenge
            .cells
            .iter()
            .filter(|cell| cell.layer > 0)
            .map(|&cell| {
                let d = draw.cell(s, cell).expect("a draw");
                json!({
                    "cell": [cell.layer, cell.chunk],
                    "leaf": s.geometry.cell_index(cell).expect("in range"),
                    "heads": d.heads,
                    "chunks": d.chunks,
                })
            })
            .collect();
        let runs = |part: Option<SubLayerPart>| -> Value {
            let r = match part {
                None => s.opening_ranges_drawn(&challenge.cells, Some(&draw)),
                Some(p) => s.sublayer_ranges_drawn(&challenge.cells, p, Some(&draw)),
            }
            .expect("opening sets");
            let cells: Vec<CellId> = r.iter().flat_map(|x| x.cells()).collect();
            cells_json(&cells)
        };
        let mut rows = session_rows(&params, nonce);
        rows.insert(
            3,
            (
                "attention-sample",
                heads
                    .to_le_bytes()
                    .into_iter()
                    .chain(chunks.to_le_bytes())
                    .collect(),
            ),
        );
        rows.push(round_row(round));
        out.push(json!({
            "statement": name,
            "round": round,
            "samples": samples,
            "strategy": strategy_name(strategy),
            "pow_bits": pow_bits,
            "heads": heads,
            "chunks": chunks,
            "pow_nonce": nonce,
            "seed_hex": hex::encode(seed),
            "attention_seed_hex": draw.seed.to_hex(),
            "indices": indices_json(s, &challenge.cells),
            "draws": draws,
            "opening": {
                "hidden": runs(None),
                "context": runs(Some(SubLayerPart::Context)),
                "kv": runs(Some(SubLayerPart::Kv)),
                "cell": runs(Some(SubLayerPart::Cell)),
            },
            "challenge_json": compact(&challenge),
            "challenge_binary_hex": hex::encode(challenge.to_bytes()),
            "transcript_rows": rows_json(&rows),
        }));
    }
    Value::Array(out)
}

/// Sampling straight from fixed seeds, without a transcript.
fn sampling(commitments: &[(&str, Commitment)]) -> Value {
    let seeds: [(&str, [u8; 32]); 3] = [
        ("zero", [0u8; 32]),
        ("ff", [0xff; 32]),
        ("counting", std::array::from_fn(|i| i as u8)),
    ];
    let cases: [(usize, u32, SamplingStrategy); 11] = [
        (0, 5, SamplingStrategy::Uniform),
        (0, 9, SamplingStrategy::Stratified),
        (0, 5, SamplingStrategy::CostWeighted),
        (1, 20, SamplingStrategy::Uniform),
        (1, 13, SamplingStrategy::Stratified),
        (1, 20, SamplingStrategy::CostWeighted),
        (2, 7, SamplingStrategy::CostWeighted),
        // stratified with k < L (q = 0): k distinct layers, one cell each
        (0, 2, SamplingStrategy::Stratified),
        (1, 5, SamplingStrategy::Stratified),
        // k >= N: every cell, no randomness drawn (the same for every seed)
        (1, 60, SamplingStrategy::Stratified),
        (2, 100, SamplingStrategy::CostWeighted),
    ];
    let mut out = Vec::new();
    for (si, k, strategy) in cases {
        for (seed_name, seed) in &seeds {
            let (name, c) = &commitments[si];
            let cells = sample_cells(&c.statement, k, strategy, *seed).expect("sampled");
            out.push(json!({
                "statement": name,
                "seed_name": seed_name,
                "seed_hex": hex::encode(seed),
                "samples": k,
                "strategy": strategy_name(strategy),
                "cells": cells_json(&cells),
                "indices": indices_json(&c.statement, &cells),
            }));
        }
    }
    Value::Array(out)
}

/// The toy opening and verification cases built on it.
fn opening(c: &Commitment) -> Value {
    let s = &c.statement;
    let prover = toy_prover(s);
    assert_eq!(prover.tree().root(), c.root);
    let challenged = vec![CellId { layer: 0, chunk: 1 }, CellId { layer: 2, chunk: 3 }];
    let challenge = Challenge {
        round: 0,
        cells: challenged.clone(),
        attention: None,
    };
    let honest = prover.open_cells(0, &challenged, 0).expect("opening");

    let run = |c: &Commitment, o: &Opening| -> Verdict {
        match check_opening(
            c,
            &challenged,
            o,
            &TolerancePolicy::Exact,
            &ToyEngine::default(),
        ) {
            Ok(()) => Verdict::Accept,
            Err(r) => Verdict::Reject(r),
        }
    };

    // A prover that commits honestly to the trace of another setup (the toy engine with every
    // layer output shifted by 1e-3), claiming the same statement.
    let cheat = toy_prover_with(s, ToyEngine { perturb: 1e-3 });
    let cheat_commitment = Commitment {
        sublayer_roots: None,
        statement: s.clone(),
        root: cheat.tree().root(),
    };
    let cheat_opening = cheat.open_cells(0, &challenged, 0).expect("opening");

    let mut cases: Vec<(&str, &str, Commitment, Opening)> =
        vec![("honest", "the honest opening", c.clone(), honest.clone())];
    let mut o = honest.clone();
    o.cells[5].data[0] ^= 1;
    cases.push((
        "data-bit-flipped",
        "lowest bit of byte 0 of cell [2, 3] flipped (equivocation)",
        c.clone(),
        o,
    ));
    let mut o = honest.clone();
    o.cells.remove(1);
    cases.push(("input-cell-dropped", "cell [1, 0] removed", c.clone(), o));
    let mut o = honest.clone();
    let mut extra = o.cells[0].clone();
    extra.cell = CellId { layer: 3, chunk: 0 };
    o.cells.push(extra);
    cases.push((
        "cell-not-asked-for",
        "a copy of cell [0, 1]'s data appended as cell [3, 0]",
        c.clone(),
        o,
    ));
    let mut o = honest.clone();
    o.cells.swap(2, 3);
    cases.push((
        "cells-swapped",
        "cells [1, 1] and [1, 2] swapped",
        c.clone(),
        o,
    ));
    let mut o = honest.clone();
    o.cells[2].data.pop();
    cases.push((
        "cell-truncated",
        "last byte of cell [1, 1] removed",
        c.clone(),
        o,
    ));
    let mut o = honest.clone();
    o.proof.siblings.push(Digest([0; 32]));
    cases.push((
        "sibling-appended",
        "an all-zero digest appended to the proof",
        c.clone(),
        o,
    ));
    let mut o = honest.clone();
    o.proof.siblings[0].0[31] ^= 0x80;
    cases.push((
        "sibling-bit-flipped",
        "top bit of the last byte of the first sibling flipped",
        c.clone(),
        o,
    ));
    cases.push((
        "other-setup",
        "a trace of another setup (toy engine with perturb = 1e-3), committed honestly under the same statement",
        cheat_commitment,
        cheat_opening,
    ));

    let case_json: Vec<Value> = cases
        .iter()
        .map(|(name, what, commitment, o)| {
            let verdict = run(commitment, o);
            json!({
                "name": name,
                "what": what,
                "root_hex": commitment.root.to_hex(),
                "opening_binary_hex": hex::encode(o.to_bytes()),
                "verdict_json": compact(&verdict),
                "reason": verdict.name(),
            })
        })
        .collect();

    let required = s.opening_cells(&challenged).expect("opening cells");
    json!({
        "statement": "toy-causal-blake3",
        "tolerance": "exact",
        "challenge_json": compact(&challenge),
        "challenge_binary_hex": hex::encode(challenge.to_bytes()),
        "challenged": cells_json(&challenged),
        "opening_cells": cells_json(&required),
        "opening_json": compact(&honest),
        "opening_binary_hex": hex::encode(honest.to_bytes()),
        "cases": case_json,
    })
}

/// Parameters of the multi-round session vector (the same as the `toy-causal-blake3` round-2
/// challenge of [`CHALLENGES`], which is therefore the session's round 2).
const SESSION_PARAMS: ChallengeParams = ChallengeParams {
    samples: 3,
    strategy: SamplingStrategy::Uniform,
    pow_bits: 8,
    attention: None,
};
const SESSION_ROUNDS: u32 = 3;
/// Seed of the interactive verifier's generator in the session vector's interactive case.
const INTERACTIVE_RNG_SEED: [u8; 32] = [0x2a; 32];

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Challenge(_) => "challenge",
        Step::AwaitOpening => "await-opening",
        Step::Decided(Verdict::Accept) => "accept",
        Step::Decided(Verdict::Reject(_)) => "reject",
    }
}

fn decided(step: Step) -> Verdict {
    match step {
        Step::Decided(v) => v,
        other => panic!("expected a verdict, got {other:?}"),
    }
}

fn verifier(mode: Mode, params: ChallengeParams, rounds: u32) -> Verifier<ToyEngine> {
    Verifier::new(
        VerifierConfig {
            method: veritrace_protocol::LayerCheck::Recompute,
            mode,
            params,
            rounds,
            tolerance: TolerancePolicy::Exact,
        },
        ToyEngine::default(),
    )
    .expect("a valid verifier configuration")
}

/// A non-interactive session of three rounds with proof of work on the toy trace, driven through
/// the reference prover and verifier state machines, and the rejections of a nonce that changes
/// between rounds and of a nonzero nonce in interactive mode.
fn session(c: &Commitment) -> Value {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    let s = &c.statement;
    let params = SESSION_PARAMS;
    let mut prover = toy_prover(s);
    assert_eq!(&prover.commit().expect("commit"), c);
    let nonce = find_pow_nonce(c, &params).expect("valid parameters");
    let mut rng = ChaCha20Rng::from_seed([0; 32]); // unused in non-interactive mode
    let mut v = verifier(Mode::NonInteractive, params, SESSION_ROUNDS);
    assert_eq!(
        v.receive_commitment(c.clone(), &mut rng),
        Step::AwaitOpening
    );
    let mut rounds = Vec::new();
    let mut openings = Vec::new();
    for round in 0..SESSION_ROUNDS {
        let (challenge, opening) = prover.open_non_interactive(&params).expect("an opening");
        assert_eq!(opening.pow_nonce, nonce, "one nonce for every round");
        assert_eq!(
            challenge,
            derive_challenge(c, round, &params, nonce).expect("a challenge")
        );
        let seed = challenge_seed(c, round, &params, nonce);
        let step = v.receive_opening(&opening, &mut rng);
        let expected = if round + 1 == SESSION_ROUNDS {
            Step::Decided(Verdict::Accept)
        } else {
            Step::AwaitOpening
        };
        assert_eq!(step, expected, "round {round}");
        let required = s.opening_cells(&challenge.cells).expect("opening cells");
        rounds.push(json!({
            "round": round,
            "transcript_rows": rows_json(&[round_row(round)]),
            "seed_hex": hex::encode(seed),
            "cells": cells_json(&challenge.cells),
            "indices": indices_json(s, &challenge.cells),
            "opening_cells": cells_json(&required),
            "opening_indices": indices_json(s, &required),
            "challenge_json": compact(&challenge),
            "challenge_binary_hex": hex::encode(challenge.to_bytes()),
            "opening_binary_hex": hex::encode(opening.to_bytes()),
            "step": step_name(&step),
        }));
        openings.push(opening);
    }

    // Another nonce meeting the same difficulty: a per-round proof of work would accept it in
    // round 1 (its challenge is as valid as the first), the session's refuses it.
    let other = (nonce + 1..)
        .find(|&n| check_pow(c, &params, n).expect("valid parameters"))
        .expect("another valid nonce");
    let other_seed = challenge_seed(c, 1, &params, other);
    let other_challenge = derive_challenge(c, 1, &params, other).expect("a challenge");
    let other_opening = prover
        .open_cells(1, &other_challenge.cells, other)
        .expect("an opening");
    let mut v = verifier(Mode::NonInteractive, params, SESSION_ROUNDS);
    v.receive_commitment(c.clone(), &mut rng);
    assert_eq!(
        v.receive_opening(&openings[0], &mut rng),
        Step::AwaitOpening
    );
    let other_verdict = decided(v.receive_opening(&other_opening, &mut rng));

    // Round 0 under a nonce that misses the difficulty (the nonces below the smallest valid one).
    let bad = nonce - 1;
    assert!(!check_pow(c, &params, bad).expect("valid parameters"));
    let bad_cells = sample_cells(
        s,
        params.samples,
        params.strategy,
        challenge_seed(c, 0, &params, bad),
    )
    .expect("sampled");
    let bad_opening = prover.open_cells(0, &bad_cells, bad).expect("an opening");
    let mut v = verifier(Mode::NonInteractive, params, SESSION_ROUNDS);
    v.receive_commitment(c.clone(), &mut rng);
    let bad_verdict = decided(v.receive_opening(&bad_opening, &mut rng));

    // Interactive: the honest opening of the verifier's challenge, but with pow_nonce 1.
    let interactive = ChallengeParams {
        pow_bits: 0,
        ..params
    };
    let mut irng = ChaCha20Rng::from_seed(INTERACTIVE_RNG_SEED);
    let mut v = verifier(Mode::Interactive, interactive, 1);
    let Step::Challenge(ichallenge) = v.receive_commitment(c.clone(), &mut irng) else {
        panic!("an interactive verifier sends a challenge");
    };
    let mut iopening = toy_prover(s)
        .open_cells(0, &ichallenge.cells, 0)
        .expect("opening");
    iopening.pow_nonce = 1;
    let interactive_verdict = decided(v.receive_opening(&iopening, &mut irng));

    let case = |name: &str, what: &str, opening: &Opening, verdict: &Verdict| {
        json!({
            "name": name,
            "what": what,
            "opening_binary_hex": hex::encode(opening.to_bytes()),
            "verdict_json": compact(verdict),
            "reason": verdict.name(),
        })
    };
    json!({
        "statement": "toy-causal-blake3",
        "mode": "non-interactive",
        "rounds": SESSION_ROUNDS,
        "samples": params.samples,
        "strategy": strategy_name(params.strategy),
        "pow_bits": params.pow_bits,
        "tolerance": "exact",
        "pow_nonce": nonce,
        "pow_output_hex": hex::encode(pow_output(c, &params, nonce)),
        "transcript_rows": rows_json(&session_rows(&params, nonce)),
        "per_round": rounds,
        "verdict_json": compact(&Verdict::Accept),
        "other_valid_nonce": other,
        "other_pow_output_hex": hex::encode(pow_output(c, &params, other)),
        "other_round_1_seed_hex": hex::encode(other_seed),
        "other_round_1_cells": cells_json(&other_challenge.cells),
        "cases": [
            case(
                "round-1-other-valid-nonce",
                "round 0 answered honestly; round 1 answered with the honest opening of the challenge derived from other_valid_nonce, carrying that nonce",
                &other_opening,
                &other_verdict,
            ),
            case(
                "round-0-invalid-nonce",
                "round 0 answered with the honest opening of the challenge derived from pow_nonce - 1, which misses the proof of work",
                &bad_opening,
                &bad_verdict,
            ),
        ],
        "interactive_case": {
            "name": "interactive-nonzero-nonce",
            "what": "interactive, one round, the same samples and strategy with pow_bits 0; the verifier draws its challenge from ChaCha20Rng::from_seed(verifier_rng_seed_hex) (the reference's first 32 bytes of that generator are the sampling seed); the prover answers it honestly but with pow_nonce 1",
            "verifier_rng_seed_hex": hex::encode(INTERACTIVE_RNG_SEED),
            "challenge_json": compact(&ichallenge),
            "opening_binary_hex": hex::encode(iopening.to_bytes()),
            "verdict_json": compact(&interactive_verdict),
            "reason": interactive_verdict.name(),
        },
    })
}

/// A verdict of every variant (and every tolerance violation).
fn verdicts() -> Value {
    let cell = CellId { layer: 3, chunk: 2 };
    let list = vec![
        Verdict::Accept,
        Verdict::Reject(RejectReason::OutOfOrder {
            state: "await-commitment".into(),
            message: "opening".into(),
        }),
        Verdict::Reject(RejectReason::GeometryMismatch {
            detail: "invalid statement: a statement needs at least one input token".into(),
        }),
        Verdict::Reject(RejectReason::MissingCell {
            cell: CellId { layer: 1, chunk: 0 },
        }),
        Verdict::Reject(RejectReason::UnexpectedCell {
            cell: CellId { layer: 3, chunk: 0 },
        }),
        Verdict::Reject(RejectReason::WrongCellLength {
            cell: CellId { layer: 1, chunk: 1 },
            expected: 48,
            got: 47,
        }),
        Verdict::Reject(RejectReason::BadProof {
            detail: "recomputed root does not match".into(),
        }),
        Verdict::Reject(RejectReason::BadProofOfWork {
            pow_bits: 8,
            nonce: 300,
        }),
        Verdict::Reject(RejectReason::NonFinite {
            cell: CellId { layer: 1, chunk: 0 },
            index: 5,
        }),
        Verdict::Reject(RejectReason::Tolerance {
            cell,
            violation: ToleranceViolation::NonFinite {
                side: Side::Recomputed,
                index: 2,
            },
        }),
        Verdict::Reject(RejectReason::Tolerance {
            cell,
            violation: ToleranceViolation::Exceeded {
                metric: Metric::RelL2,
                value: 0.5,
                threshold: 0.25,
            },
        }),
        Verdict::Reject(RejectReason::Tolerance {
            cell,
            violation: ToleranceViolation::LengthMismatch {
                claimed: 48,
                recomputed: 44,
            },
        }),
        Verdict::Reject(RejectReason::Tolerance {
            cell,
            violation: ToleranceViolation::Mismatch { index: 129 },
        }),
        Verdict::Reject(RejectReason::OutputTokenMismatch {
            position: 9,
            claimed: 12_345,
            recomputed: 70_000,
        }),
        Verdict::Reject(RejectReason::RecomputeFailed {
            cell,
            detail: "the toy engine computes in f32 only".into(),
        }),
        Verdict::Reject(RejectReason::AlgebraicCheck {
            cell,
            detail: "Down: Freivalds |v.x - r.y| = 2.0e-2 > bound 1.1e-4".into(),
        }),
    ];
    Value::Array(
        list.iter()
            .map(|v| {
                json!({
                    "reason": v.name(),
                    "json": compact(v),
                    "binary_hex": hex::encode(v.to_bytes()),
                })
            })
            .collect(),
    )
}

/// The anchors' sampling figures and the worked example of the soundness section.
fn soundness() -> Value {
    let anchors: Vec<Value> = [100u64, 300, 460]
        .iter()
        .map(|&k| {
            json!({
                "cells": 10_000, "bad_cells": 100, "samples": k,
                "miss_probability": miss_probability(10_000, 100, k).expect("valid"),
                "detection_probability": detection_probability(10_000, 100, k).expect("valid"),
            })
        })
        .collect();
    let mut needed = Vec::new();
    for n in [10_000u64, 10_000_000] {
        for (f, lambda) in [(0.1, 20.0), (0.1, 40.0), (0.01, 20.0), (0.01, 40.0)] {
            let s = samples_needed(n, f, lambda, 1.0).expect("reachable");
            needed.push(json!({
                "cells": n, "cheat_fraction": f, "lambda_bits": lambda, "power": 1.0,
                "samples": s.samples,
                "with_replacement_samples": s.with_replacement_samples,
                "log2_miss_probability": s.log2_miss_probability,
            }));
        }
    }
    // Worked example: 33 hidden states x 4096 tokens in chunks of 32 (N = 4224); skipping one
    // transformer layer makes its 128 cells bad.
    let (n, b) = (33 * 128u64, 128u64);
    let mut reports = Vec::new();
    for (k, rounds, power, grind, pow) in [
        (64u64, 1u32, 1.0, 0.0, 0.0),
        (64, 3, 1.0, 0.0, 0.0),
        (192, 1, 1.0, 0.0, 0.0),
        (811, 1, 1.0, 0.0, 0.0),
        (811, 1, 1.0, 64.0, 16.0),
        (1577, 1, 1.0, 64.0, 16.0),
        (600, 3, 1.0, 64.0, 16.0),
        (811, 1, 0.5, 0.0, 0.0),
    ] {
        let p = SoundnessParams {
            cells: n,
            bad_cells: b,
            samples: k,
            power,
            rounds,
            grind_bits: grind,
            pow_bits: pow,
        };
        let r = soundness_report(&p).expect("valid parameters");
        reports.push(json!({
            "params": p,
            "log2_miss_per_round": r.log2_miss_per_round,
            "detection_probability": r.detection_probability,
            "security_bits": r.security_bits,
            "security_bits_grinding": r.security_bits_grinding,
            "security_bits_grinding_sequential": r.security_bits_grinding_sequential,
        }));
    }
    let mut worked_needed = Vec::new();
    for (lambda, power) in [(40.0, 1.0), (88.0, 1.0), (40.0, 0.5)] {
        let s = samples_needed(n, b as f64 / n as f64, lambda, power).expect("reachable");
        worked_needed.push(json!({
            "cells": n, "cheat_fraction": b as f64 / n as f64, "lambda_bits": lambda,
            "power": power, "bad_cells": s.bad_cells, "samples": s.samples,
            "with_replacement_samples": s.with_replacement_samples,
            "log2_miss_probability": s.log2_miss_probability,
        }));
    }
    json!({
        "anchors": anchors,
        "samples_needed": needed,
        "worked_example": {
            "cells": n,
            "bad_cells": b,
            "log2_miss_k64": log2_miss_probability(n, b, 64).expect("valid"),
            "reports": reports,
            "samples_needed": worked_needed,
        }
    })
}
