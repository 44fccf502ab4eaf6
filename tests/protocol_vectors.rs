//! Checks `specs/vectors/protocol.json` against the implementation and against the document.
//!
//! Every vector in the JSON file is recomputed with `veritrace-protocol` and compared: challenge
//! seeds, proof-of-work nonces and outputs, sampled cells, opening sets, cost weights, dependency
//! rows, the bytes absorbed by the transcript, the toy opening and the verdicts of its tampered
//! variants, a multi-round non-interactive session run through the prover and verifier state
//! machines (one proof of work for the whole session), the soundness figures. Every binary
//! encoding is decoded, compared with its JSON form and re-encoded to the same bytes. Finally
//! every challenge seed (and every statement root) in the JSON file must appear verbatim in
//! `specs/protocol.md`, so the document and the vectors cannot drift apart.
//!
//! Regenerate the vectors with
//! `cargo run --example gen_protocol_vectors > specs/vectors/protocol.json`.

mod common;

use common::{arr, f, s, u, unhex};
use std::collections::BTreeSet;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::Value;
use veritrace::commit::{CellId, Digest, HasherId};
use veritrace::protocol::encoding::{MAX_MESSAGE_BYTES, MESSAGE_MAGIC, MESSAGE_VERSION};
use veritrace::protocol::sampling::{cost_weight, sample_cells};
use veritrace::protocol::soundness::{
    detection_probability, log2_miss_probability, miss_probability, samples_needed,
    soundness_report, SoundnessParams,
};
use veritrace::protocol::tolerance::TolerancePolicy;
use veritrace::protocol::toy::ToyEngine;
use veritrace::protocol::transcript::{
    base_transcript, challenge_seed, check_pow, derive_challenge, find_pow_nonce,
    TranscriptProtocol, DOMAIN, MAX_POW_BITS,
};
use veritrace::protocol::{
    check_opening, Challenge, ChallengeParams, Commitment, Dependency, Message, MessageKind, Mode,
    Opening, OutputRule, Prover, RejectReason, SamplingStrategy, Statement, Step, Verdict,
    Verifier, VerifierConfig, PROTOCOL_VERSION,
};

fn root_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn vectors() -> Value {
    let path = root_dir().join("specs/vectors/protocol.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("the vectors are valid JSON")
}

fn spec_text() -> String {
    let path = root_dir().join("specs/protocol.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn cells_of(v: &Value) -> Vec<CellId> {
    arr(v)
        .iter()
        .map(|c| {
            let c = arr(c);
            assert_eq!(c.len(), 2, "a cell is [layer, chunk]");
            CellId {
                layer: u(&c[0]) as u32,
                chunk: u(&c[1]) as u32,
            }
        })
        .collect()
}

fn indices_of(v: &Value) -> Vec<u64> {
    arr(v).iter().map(u).collect()
}

fn strategy(name: &str) -> SamplingStrategy {
    match name {
        "uniform" => SamplingStrategy::Uniform,
        "stratified" => SamplingStrategy::Stratified,
        "cost-weighted" => SamplingStrategy::CostWeighted,
        other => panic!("unknown strategy {other}"),
    }
}

/// Relative comparison for floating-point figures (libm may differ in the last place).
fn close(got: f64, want: f64, what: &str) {
    let tol = 1e-12 * want.abs().max(1e-300);
    assert!(
        got == want || (got - want).abs() <= tol,
        "{what}: got {got}, the vectors say {want}"
    );
}

/// Decodes a binary message, checks it equals `expected`, and re-encodes it to the same bytes.
fn round_trip<M: Message + PartialEq + std::fmt::Debug>(bytes: &[u8], expected: &M, what: &str) {
    let decoded = M::from_bytes(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(&decoded, expected, "{what}: binary and JSON forms differ");
    assert_eq!(decoded.to_bytes(), bytes, "{what}: re-encoding differs");
    assert_eq!(&bytes[..4], MESSAGE_MAGIC, "{what}: magic");
    assert_eq!(bytes[4], MESSAGE_VERSION, "{what}: envelope version");
    assert_eq!(bytes[5], M::KIND as u8, "{what}: kind byte");
}

/// The statements of the vectors by name, as commitments.
fn commitments(v: &Value) -> Vec<(String, Commitment)> {
    arr(&v["statements"])
        .iter()
        .map(|x| {
            let c = Commitment::from_json(s(&x["commitment_json"])).expect("valid commitment");
            (s(&x["name"]).to_string(), c)
        })
        .collect()
}

fn commitment<'a>(all: &'a [(String, Commitment)], name: &str) -> &'a Commitment {
    &all.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no statement {name}"))
        .1
}

/// The bytes of transcript rows 1-10, written out from specs/protocol.md section 7.2 (a second,
/// independent writing of what `transcript.rs` absorbs).
fn statement_rows(c: &Commitment) -> Vec<(String, Vec<u8>)> {
    let st = &c.statement;
    let tokens = |t: &[u32]| -> Vec<u8> {
        let mut out = (t.len() as u64).to_le_bytes().to_vec();
        t.iter().for_each(|x| out.extend(x.to_le_bytes()));
        out
    };
    let g = st.geometry;
    let geometry: Vec<u8> = [g.layers, g.tokens, g.hidden, g.chunk]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .chain([g.dtype.code()])
        .collect();
    let dependency: Vec<u8> = match st.dependency {
        Dependency::Causal => vec![1, 0, 0, 0, 0],
        Dependency::Bidirectional => vec![2, 0, 0, 0, 0],
        Dependency::Window { size } => [3].into_iter().chain(size.to_le_bytes()).collect(),
    };
    let rule: Vec<u8> = match st.output_rule {
        OutputRule::Greedy => [1].into_iter().chain([0u8; 32]).collect(),
        OutputRule::Sampled { seed } => [2].into_iter().chain(seed.0).collect(),
    };
    let text = st.input_text.as_ref().map(|t| {
        let mut m = t.tokenizer.0.to_vec();
        m.push(u8::from(t.chat));
        m.extend(t.text.as_bytes());
        ("input-text", m)
    });
    let engine = st
        .engine
        .as_ref()
        .map(|e| ("engine", e.as_bytes().to_vec()));
    let level = match st.trace_level {
        veritrace::protocol::TraceLevel::Hidden => None,
        // the dtype code ends the row only for half-precision sub-layer values
        veritrace::protocol::TraceLevel::SubLayer {
            context,
            cell,
            dtype,
        } => Some((
            "trace-level",
            context
                .to_le_bytes()
                .into_iter()
                .chain(cell.to_le_bytes())
                .chain((dtype != veritrace::commit::Dtype::F32).then_some(dtype.code()))
                .collect(),
        )),
        veritrace::protocol::TraceLevel::SubLayerByHead {
            context,
            cell,
            heads,
            kv_heads,
            kv,
            dtype,
        } => Some((
            "trace-level",
            [context, cell, heads, kv_heads, kv]
                .into_iter()
                .flat_map(u32::to_le_bytes)
                .chain((dtype != veritrace::commit::Dtype::F32).then_some(dtype.code()))
                .collect(),
        )),
    };
    let sub_roots = c.sublayer_roots.map(|r| {
        (
            "sublayer-roots",
            r.context
                .0
                .into_iter()
                .chain(r.cell.0)
                .chain(r.kv.map(|k| k.0).into_iter().flatten())
                .collect(),
        )
    });
    [
        ("version", st.version.to_le_bytes().to_vec()),
        ("model-digest", st.model_digest.0.to_vec()),
        ("setup", st.setup.clone()),
        ("input-tokens", tokens(&st.input_tokens)),
        ("output-tokens", tokens(&st.output_tokens)),
        ("geometry", geometry),
        ("hasher", vec![st.hasher.code()]),
        ("dependency", dependency),
        ("output-rule", rule),
    ]
    .into_iter()
    .chain(text)
    .chain(engine)
    .chain(level)
    .chain([("root", c.root.0.to_vec())])
    .chain(sub_roots)
    .map(|(l, b)| (l.to_string(), b))
    .collect()
}

/// The bytes of transcript rows 11-14 (the session's: parameters, then the proof-of-work nonce),
/// written out from specs/protocol.md section 7.2.
fn session_rows(params: &ChallengeParams, nonce: u64) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "samples".into(),
            u64::from(params.samples).to_le_bytes().to_vec(),
        ),
        ("strategy".into(), vec![params.strategy.code()]),
        (
            "pow-bits".into(),
            u64::from(params.pow_bits).to_le_bytes().to_vec(),
        ),
        ("pow-nonce".into(), nonce.to_le_bytes().to_vec()),
    ]
}

/// The bytes of transcript row 15 (the round's).
fn round_row(round: u32) -> (String, Vec<u8>) {
    ("round".into(), u64::from(round).to_le_bytes().to_vec())
}

/// The output squeezed under `pow` after row 14, and its leading zero bits.
fn pow_output(c: &Commitment, params: &ChallengeParams, nonce: u64) -> ([u8; 32], u32) {
    let mut t = base_transcript(c);
    t.append_params(params);
    t.append_u64(b"pow-nonce", nonce);
    let mut out = [0u8; 32];
    t.challenge_bytes(b"pow", &mut out);
    let zeros = out
        .iter()
        .map(|b| b.leading_zeros())
        .scan(true, |go, z| {
            let r = if *go { Some(z) } else { None };
            *go = z == 8;
            r
        })
        .sum::<u32>();
    (out, zeros)
}

fn rows_of(v: &Value) -> Vec<(String, Vec<u8>)> {
    arr(v)
        .iter()
        .map(|r| (s(&r["label"]).to_string(), unhex(&r["value_hex"])))
        .collect()
}

#[test]
fn constants_match_the_crate() {
    let v = vectors();
    let c = &v["constants"];
    assert_eq!(u(&c["protocol_version"]), u64::from(PROTOCOL_VERSION));
    assert_eq!(s(&c["transcript_domain"]).as_bytes(), DOMAIN);
    assert_eq!(u(&c["max_pow_bits"]), u64::from(MAX_POW_BITS));
    assert_eq!(unhex(&c["message_magic_hex"]), MESSAGE_MAGIC);
    assert_eq!(u(&c["message_version"]), u64::from(MESSAGE_VERSION));
    assert_eq!(u(&c["max_message_bytes"]), MAX_MESSAGE_BYTES as u64);
    for (name, kind) in [
        ("statement", MessageKind::Statement),
        ("commitment", MessageKind::Commitment),
        ("challenge", MessageKind::Challenge),
        ("opening", MessageKind::Opening),
        ("verdict", MessageKind::Verdict),
    ] {
        assert_eq!(u(&c["message_kinds"][name]), kind as u64, "{name}");
    }
    for name in ["uniform", "stratified", "cost-weighted"] {
        assert_eq!(
            u(&c["strategy_codes"][name]),
            u64::from(strategy(name).code())
        );
    }
}

#[test]
fn chacha20_keystream_words() {
    let v = vectors();
    let rows = arr(&v["chacha20"]["keystreams"]);
    assert!(!rows.is_empty());
    for row in rows {
        let seed: [u8; 32] = unhex(&row["seed_hex"]).try_into().expect("32 bytes");
        let mut rng = ChaCha20Rng::from_seed(seed);
        for w in arr(&row["first_u64_words_hex"]) {
            assert_eq!(format!("{:016x}", rng.next_u64()), s(w));
        }
    }
    // RFC 8439 A.1 test vector 1: the zero key's keystream starts 76 b8 e0 ad a0 f1 3d 90.
    assert_eq!(
        s(&rows[0]["first_u64_words_hex"][0]),
        format!("{:016x}", u64::from_le_bytes(hex_array("76b8e0ada0f13d90")))
    );
}

fn hex_array<const N: usize>(h: &str) -> [u8; N] {
    hex::decode(h).unwrap().try_into().unwrap()
}

#[test]
fn statements_encodings_and_derived_values() {
    let v = vectors();
    let list = arr(&v["statements"]);
    assert_eq!(list.len(), 6);
    let mut hashers = BTreeSet::new();
    let mut deps = BTreeSet::new();
    let mut sampled_rule = false;
    for x in list {
        let name = s(&x["name"]);
        let st = Statement::from_json(s(&x["statement_json"])).expect("valid statement");
        round_trip(&unhex(&x["statement_binary_hex"]), &st, name);
        assert_eq!(serde_json::to_string(&st).unwrap(), s(&x["statement_json"]));
        let c = Commitment::from_json(s(&x["commitment_json"])).expect("valid commitment");
        assert_eq!(c.statement, st);
        assert_eq!(c.root.to_hex(), s(&x["root_hex"]));
        round_trip(&unhex(&x["commitment_binary_hex"]), &c, name);
        assert_eq!(serde_json::to_string(&c).unwrap(), s(&x["commitment_json"]));

        // the root: the toy trace's, or the fixed rule
        let root = if name.starts_with("toy-") {
            let mut p =
                Prover::new(st.clone(), ToyEngine::default().trace_bytes(&st).unwrap()).unwrap();
            if st.trace_level.heads().is_some() {
                // the three sub-layer roots are the toy's by-head traces' roots
                let (context, kv, cell) = ToyEngine::default().sublayer_bytes_by_head(&st).unwrap();
                p = p.with_sublayers_by_head(context, kv, cell).unwrap();
                assert_eq!(p.commit().unwrap(), c, "{name}: the toy's commitment");
            } else if st.trace_level != veritrace::protocol::TraceLevel::Hidden {
                // the sub-layer roots are the toy's sub-layer traces' roots
                let (context, cell) = ToyEngine::default().sublayer_bytes(&st).unwrap();
                p = p.with_sublayers(context, cell).unwrap();
                assert_eq!(p.commit().unwrap(), c, "{name}: the toy's commitment");
            }
            // the output tokens are what the toy engine generates
            let input = st.input_tokens.clone();
            let out = ToyEngine::default()
                .generate(
                    st.dependency,
                    st.geometry.layers,
                    st.geometry.hidden as usize,
                    &input,
                    st.output_tokens.len(),
                )
                .unwrap();
            assert_eq!(out, st.output_tokens);
            p.tree().root()
        } else {
            let mut d = *blake3::hash(format!("veritrace/protocol/vectors/root/{name}").as_bytes())
                .as_bytes();
            if st.hasher == HasherId::Poseidon {
                d[0] &= 0x1f;
            }
            Digest(d)
        };
        assert_eq!(root, c.root, "{name}: root");

        let g = st.geometry;
        assert_eq!(u(&x["cells"]), g.num_cells());
        assert_eq!(u(&x["chunks_per_layer"]), u64::from(g.chunks_per_layer()));
        let weights: Vec<u64> = (0..g.num_cells())
            .map(|i| cost_weight(&st, g.cell_at(i).unwrap()).unwrap() as u64)
            .collect();
        assert_eq!(weights, indices_of(&x["cost_weights"]), "{name}: weights");
        let deps_json = arr(&x["dependencies"]);
        assert_eq!(deps_json.len() as u64, g.num_cells());
        for (i, d) in deps_json.iter().enumerate() {
            let cell = g.cell_at(i as u64).unwrap();
            assert_eq!(cells_of(&Value::Array(vec![d["cell"].clone()]))[0], cell);
            let rows = g.cell_rows(cell).unwrap();
            assert_eq!(
                indices_of(&d["rows"]),
                [rows.start, rows.end].map(u64::from)
            );
            match st.input_rows(cell).unwrap() {
                None => assert!(d["input_rows"].is_null()),
                Some(r) => {
                    assert_eq!(
                        indices_of(&d["input_rows"]),
                        [r.start, r.end].map(u64::from)
                    )
                }
            }
            assert_eq!(
                cells_of(&d["input_cells"]),
                st.input_cells(cell).unwrap(),
                "{name}: input cells of {cell:?}"
            );
        }
        let predictions: Vec<(u64, u64)> = (0..g.tokens)
            .filter_map(|p| st.predicted_output(p).map(|t| (u64::from(p), u64::from(t))))
            .collect();
        let listed: Vec<(u64, u64)> = arr(&x["predicted_outputs"])
            .iter()
            .map(|p| (u(&p[0]), u(&p[1])))
            .collect();
        assert_eq!(predictions, listed, "{name}: predictions");
        assert_eq!(rows_of(&x["transcript_rows"]), statement_rows(&c), "{name}");

        hashers.insert(st.hasher.code());
        deps.insert(match st.dependency {
            Dependency::Causal => 1,
            Dependency::Bidirectional => 2,
            Dependency::Window { .. } => 3,
        });
        sampled_rule |= matches!(st.output_rule, OutputRule::Sampled { .. });
    }
    assert_eq!(hashers.len(), 3, "every hasher is covered");
    assert_eq!(deps.len(), 3, "every dependency rule is covered");
    assert!(sampled_rule, "a sampled output rule is covered");
}

#[test]
fn challenges_are_recomputed() {
    let v = vectors();
    let all = commitments(&v);
    let list = arr(&v["challenges"]);
    assert!(list.len() >= 10);
    let mut strategies = BTreeSet::new();
    let mut with_pow = 0;
    let (mut every_cell, mut few_layers) = (0, 0);
    for x in list {
        let name = s(&x["statement"]);
        let c = commitment(&all, name);
        let round = u(&x["round"]) as u32;
        let params = ChallengeParams {
            samples: u(&x["samples"]) as u32,
            strategy: strategy(s(&x["strategy"])),
            pow_bits: u(&x["pow_bits"]) as u8,
            attention: None,
        };
        strategies.insert(params.strategy.code());
        let what = format!("{name} round {round} {params:?}");

        // proof of work: the listed nonce is the smallest that works (for the session: it does
        // not depend on the round)
        let nonce = u(&x["pow_nonce"]);
        assert_eq!(find_pow_nonce(c, &params).unwrap(), nonce, "{what}");
        assert!(check_pow(c, &params, nonce).unwrap(), "{what}");
        for smaller in 0..nonce {
            assert!(!check_pow(c, &params, smaller).unwrap(), "{what}");
        }
        if params.pow_bits > 0 {
            with_pow += 1;
            let (out, zeros) = pow_output(c, &params, nonce);
            assert_eq!(hex::encode(out), s(&x["pow_output_hex"]), "{what}");
            assert!(zeros >= u32::from(params.pow_bits), "{what}");
        } else {
            assert!(x["pow_output_hex"].is_null(), "{what}");
            assert_eq!(nonce, 0);
        }

        // seed, cells, opening
        let seed = challenge_seed(c, round, &params, nonce);
        assert_eq!(hex::encode(seed), s(&x["seed_hex"]), "{what}");
        let challenge = derive_challenge(c, round, &params, nonce).unwrap();
        let cells = cells_of(&x["cells"]);
        assert_eq!(challenge.cells, cells, "{what}");
        assert_eq!(
            sample_cells(&c.statement, params.samples, params.strategy, seed).unwrap(),
            cells
        );
        let g = c.statement.geometry;
        let idx: Vec<u64> = cells.iter().map(|&c| g.cell_index(c).unwrap()).collect();
        assert_eq!(idx, indices_of(&x["indices"]), "{what}");
        let opening = c.statement.opening_cells(&cells).unwrap();
        assert_eq!(opening, cells_of(&x["opening_cells"]), "{what}");
        let idx: Vec<u64> = opening.iter().map(|&c| g.cell_index(c).unwrap()).collect();
        assert_eq!(idx, indices_of(&x["opening_indices"]), "{what}");

        // encodings
        let from_json = Challenge::from_json(s(&x["challenge_json"])).unwrap();
        assert_eq!(from_json, challenge);
        round_trip(&unhex(&x["challenge_binary_hex"]), &challenge, &what);

        // absorbed bytes of rows 11-15
        let mut rows = session_rows(&params, nonce);
        rows.push(round_row(round));
        assert_eq!(rows_of(&x["transcript_rows"]), rows, "{what}");

        let n = g.num_cells();
        if u64::from(params.samples) >= n {
            every_cell += 1;
            assert_eq!(idx_all(n), indices_of(&x["indices"]), "{what}: k >= N");
        }
        if params.strategy == SamplingStrategy::Stratified && params.samples < g.layers {
            few_layers += 1;
            assert_distinct_layers(&cells, params.samples, &what);
        }
    }
    assert_eq!(strategies.len(), 3, "every strategy is covered");
    assert!(with_pow >= 2, "proof of work is covered");
    assert!(every_cell >= 2, "k >= N is covered");
    assert!(few_layers >= 2, "stratified with k < L is covered");
}

/// `0..n`, the leaf indices of every cell.
fn idx_all(n: u64) -> Vec<u64> {
    (0..n).collect()
}

/// Stratified with k < L: k cells in k distinct layers.
fn assert_distinct_layers(cells: &[CellId], k: u32, what: &str) {
    let layers: BTreeSet<u32> = cells.iter().map(|c| c.layer).collect();
    assert_eq!(cells.len(), k as usize, "{what}: k cells");
    assert_eq!(layers.len(), k as usize, "{what}: k distinct layers");
}

#[test]
fn sampling_from_fixed_seeds() {
    let v = vectors();
    let all = commitments(&v);
    let (mut every_cell, mut few_layers) = (0, 0);
    for x in arr(&v["sampling"]) {
        let c = commitment(&all, s(&x["statement"]));
        let seed: [u8; 32] = unhex(&x["seed_hex"]).try_into().expect("32 bytes");
        let cells = sample_cells(
            &c.statement,
            u(&x["samples"]) as u32,
            strategy(s(&x["strategy"])),
            seed,
        )
        .unwrap();
        assert_eq!(cells, cells_of(&x["cells"]), "{x}");
        let g = c.statement.geometry;
        let idx: Vec<u64> = cells.iter().map(|&c| g.cell_index(c).unwrap()).collect();
        assert_eq!(idx, indices_of(&x["indices"]));
        let k = u(&x["samples"]) as u32;
        if u64::from(k) >= g.num_cells() {
            every_cell += 1;
            assert_eq!(idx, idx_all(g.num_cells()), "{x}: k >= N");
        }
        if s(&x["strategy"]) == "stratified" && k < g.layers {
            few_layers += 1;
            assert_distinct_layers(&cells, k, &x.to_string());
        }
    }
    assert!(every_cell >= 2, "k >= N is covered");
    assert!(few_layers >= 2, "stratified with k < L is covered");
}

#[test]
fn toy_opening_and_its_rejections() {
    let v = vectors();
    let all = commitments(&v);
    let o = &v["opening"];
    let c = commitment(&all, s(&o["statement"]));
    assert_eq!(s(&o["tolerance"]), "exact");
    let challenged = cells_of(&o["challenged"]);
    let challenge = Challenge::from_json(s(&o["challenge_json"])).unwrap();
    assert_eq!(challenge.cells, challenged);
    round_trip(&unhex(&o["challenge_binary_hex"]), &challenge, "challenge");
    assert_eq!(
        c.statement.opening_cells(&challenged).unwrap(),
        cells_of(&o["opening_cells"])
    );

    // the honest opening, rebuilt by the toy prover
    let st = &c.statement;
    let prover = Prover::new(st.clone(), ToyEngine::default().trace_bytes(st).unwrap()).unwrap();
    let honest = prover.open_cells(0, &challenged, 0).unwrap();
    let opening_bytes = unhex(&o["opening_binary_hex"]);
    assert_eq!(honest.to_bytes(), opening_bytes);
    assert_eq!(Opening::from_json(s(&o["opening_json"])).unwrap(), honest);
    round_trip(&opening_bytes, &honest, "opening");
    let opened: Vec<CellId> = honest.cells.iter().map(|oc| oc.cell).collect();
    assert_eq!(opened, cells_of(&o["opening_cells"]));

    let cheat = Prover::new(
        st.clone(),
        ToyEngine { perturb: 1e-3 }.trace_bytes(st).unwrap(),
    )
    .unwrap();
    let mut names = BTreeSet::new();
    for case in arr(&o["cases"]) {
        let name = s(&case["name"]);
        let root = Digest::from_hex(s(&case["root_hex"])).unwrap();
        let expected_root = if name == "other-setup" {
            cheat.tree().root()
        } else {
            c.root
        };
        assert_eq!(root, expected_root, "{name}");
        let commitment = Commitment {
            sublayer_roots: None,
            statement: st.clone(),
            root,
        };
        // tampered openings are still well-formed messages
        let bytes = unhex(&case["opening_binary_hex"]);
        let opening = Opening::from_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(opening.to_bytes(), bytes, "{name}");
        let verdict = match check_opening(
            &commitment,
            &challenged,
            &opening,
            &TolerancePolicy::Exact,
            &ToyEngine::default(),
        ) {
            Ok(()) => Verdict::Accept,
            Err(r) => Verdict::Reject(r),
        };
        assert_eq!(verdict.name(), s(&case["reason"]), "{name}");
        assert_eq!(
            serde_json::to_string(&verdict).unwrap(),
            s(&case["verdict_json"]),
            "{name}"
        );
        assert_eq!(
            Verdict::from_json(s(&case["verdict_json"])).unwrap(),
            verdict
        );
        names.insert(name.to_string());
    }
    assert!(names.contains("honest") && names.len() >= 8);
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
    .unwrap()
}

fn decided(step: Step) -> Verdict {
    match step {
        Step::Decided(v) => v,
        other => panic!("expected a verdict, got {other:?}"),
    }
}

/// A non-interactive session of several rounds: one proof-of-work nonce, searched once and
/// carried by every round's opening; each round's seed branches from the session transcript with
/// its round index. The prover's openings and the verifier's steps are replayed through the state
/// machines. A later round under another valid nonce, a round 0 under an invalid nonce and an
/// interactive opening with a nonzero nonce are refused with `BadProofOfWork`.
#[test]
fn non_interactive_session_with_one_proof_of_work() {
    let v = vectors();
    let all = commitments(&v);
    let x = &v["session"];
    let c = commitment(&all, s(&x["statement"]));
    assert_eq!(s(&x["mode"]), "non-interactive");
    assert_eq!(s(&x["tolerance"]), "exact");
    let rounds = u(&x["rounds"]) as u32;
    assert!(rounds >= 3, "a multi-round session");
    let params = ChallengeParams {
        samples: u(&x["samples"]) as u32,
        strategy: strategy(s(&x["strategy"])),
        pow_bits: u(&x["pow_bits"]) as u8,
        attention: None,
    };
    assert!(params.pow_bits > 0, "the session has a proof of work");

    // the session's nonce and the transcript rows 11-14 it is absorbed with
    let nonce = u(&x["pow_nonce"]);
    assert_eq!(find_pow_nonce(c, &params).unwrap(), nonce);
    let (out, zeros) = pow_output(c, &params, nonce);
    assert_eq!(hex::encode(out), s(&x["pow_output_hex"]));
    assert!(zeros >= u32::from(params.pow_bits));
    assert_eq!(rows_of(&x["transcript_rows"]), session_rows(&params, nonce));

    // the honest session, through the prover and the verifier
    let st = &c.statement;
    let mut prover =
        Prover::new(st.clone(), ToyEngine::default().trace_bytes(st).unwrap()).unwrap();
    assert_eq!(&prover.commit().unwrap(), c);
    let mut rng = ChaCha20Rng::from_seed([0; 32]);
    let mut ver = verifier(Mode::NonInteractive, params, rounds);
    assert_eq!(
        ver.receive_commitment(c.clone(), &mut rng),
        Step::AwaitOpening
    );
    let per_round = arr(&x["per_round"]);
    assert_eq!(per_round.len(), rounds as usize);
    let mut openings = Vec::new();
    let mut seeds = BTreeSet::new();
    for (r, y) in per_round.iter().enumerate() {
        let round = r as u32;
        assert_eq!(u(&y["round"]), u64::from(round));
        assert_eq!(rows_of(&y["transcript_rows"]), vec![round_row(round)]);
        let seed = challenge_seed(c, round, &params, nonce);
        assert_eq!(hex::encode(seed), s(&y["seed_hex"]), "round {round}");
        seeds.insert(seed);
        let cells = cells_of(&y["cells"]);
        assert_eq!(
            sample_cells(st, params.samples, params.strategy, seed).unwrap(),
            cells
        );
        let g = st.geometry;
        let idx: Vec<u64> = cells.iter().map(|&c| g.cell_index(c).unwrap()).collect();
        assert_eq!(idx, indices_of(&y["indices"]));
        let required = st.opening_cells(&cells).unwrap();
        assert_eq!(required, cells_of(&y["opening_cells"]));
        let idx: Vec<u64> = required.iter().map(|&c| g.cell_index(c).unwrap()).collect();
        assert_eq!(idx, indices_of(&y["opening_indices"]));

        let (challenge, opening) = prover.open_non_interactive(&params).unwrap();
        assert_eq!(
            opening.pow_nonce, nonce,
            "round {round}: the session's nonce"
        );
        assert_eq!(challenge.cells, cells);
        assert_eq!(
            challenge,
            derive_challenge(c, round, &params, nonce).unwrap()
        );
        assert_eq!(
            Challenge::from_json(s(&y["challenge_json"])).unwrap(),
            challenge
        );
        round_trip(&unhex(&y["challenge_binary_hex"]), &challenge, "challenge");
        let bytes = unhex(&y["opening_binary_hex"]);
        assert_eq!(opening.to_bytes(), bytes, "round {round}");
        round_trip(&bytes, &opening, "opening");
        let step = ver.receive_opening(&opening, &mut rng);
        let name = match &step {
            Step::AwaitOpening => "await-opening",
            Step::Decided(Verdict::Accept) => "accept",
            other => panic!("round {round}: {other:?}"),
        };
        assert_eq!(name, s(&y["step"]), "round {round}");
        openings.push(opening);
    }
    assert_eq!(seeds.len(), rounds as usize, "every round has its own seed");
    assert_eq!(ver.verdict(), Some(&Verdict::Accept));
    assert_eq!(
        Verdict::from_json(s(&x["verdict_json"])).unwrap(),
        Verdict::Accept
    );

    // another nonce meeting the difficulty: it fixes other challenges for every round
    let other = u(&x["other_valid_nonce"]);
    assert!(other > nonce && check_pow(c, &params, other).unwrap());
    assert!((nonce + 1..other).all(|n| !check_pow(c, &params, n).unwrap()));
    assert_eq!(
        hex::encode(pow_output(c, &params, other).0),
        s(&x["other_pow_output_hex"])
    );
    let other_seed = challenge_seed(c, 1, &params, other);
    assert_eq!(hex::encode(other_seed), s(&x["other_round_1_seed_hex"]));
    let other_challenge = derive_challenge(c, 1, &params, other).unwrap();
    assert_eq!(other_challenge.cells, cells_of(&x["other_round_1_cells"]));

    let cases = arr(&x["cases"]);
    let case = |name: &str| {
        cases
            .iter()
            .find(|k| s(&k["name"]) == name)
            .unwrap_or_else(|| panic!("no session case {name}"))
    };
    let check_case = |k: &Value, opening: &Opening, verdict: &Verdict| {
        let bytes = unhex(&k["opening_binary_hex"]);
        assert_eq!(opening.to_bytes(), bytes, "{}", s(&k["name"]));
        round_trip(&bytes, opening, s(&k["name"]));
        assert_eq!(verdict.name(), s(&k["reason"]), "{}", s(&k["name"]));
        assert_eq!(
            serde_json::to_string(verdict).unwrap(),
            s(&k["verdict_json"]),
            "{}",
            s(&k["name"])
        );
    };

    // round 1 answered, consistently, under the other valid nonce: refused, although a round-0
    // opening under that nonce would pass the proof of work
    let k = case("round-1-other-valid-nonce");
    let o1 = prover.open_cells(1, &other_challenge.cells, other).unwrap();
    let mut ver = verifier(Mode::NonInteractive, params, rounds);
    ver.receive_commitment(c.clone(), &mut rng);
    assert_eq!(
        ver.receive_opening(&openings[0], &mut rng),
        Step::AwaitOpening
    );
    let verdict = decided(ver.receive_opening(&o1, &mut rng));
    assert_eq!(
        verdict,
        Verdict::Reject(RejectReason::BadProofOfWork {
            pow_bits: params.pow_bits,
            nonce: other,
        })
    );
    check_case(k, &o1, &verdict);

    // round 0 under a nonce that misses the proof of work
    let k = case("round-0-invalid-nonce");
    let bad = nonce - 1;
    assert!(!check_pow(c, &params, bad).unwrap());
    assert!(derive_challenge(c, 0, &params, bad).is_err());
    let bad_cells = sample_cells(
        st,
        params.samples,
        params.strategy,
        challenge_seed(c, 0, &params, bad),
    )
    .unwrap();
    let o0 = prover.open_cells(0, &bad_cells, bad).unwrap();
    let mut ver = verifier(Mode::NonInteractive, params, rounds);
    ver.receive_commitment(c.clone(), &mut rng);
    let verdict = decided(ver.receive_opening(&o0, &mut rng));
    assert_eq!(
        verdict,
        Verdict::Reject(RejectReason::BadProofOfWork {
            pow_bits: params.pow_bits,
            nonce: bad,
        })
    );
    check_case(k, &o0, &verdict);

    // interactive: an honest opening with a nonzero nonce is refused; with 0 it is accepted
    let k = &x["interactive_case"];
    let interactive = ChallengeParams {
        pow_bits: 0,
        ..params
    };
    let rng_seed: [u8; 32] = unhex(&k["verifier_rng_seed_hex"]).try_into().unwrap();
    let mut irng = ChaCha20Rng::from_seed(rng_seed);
    let mut ver = verifier(Mode::Interactive, interactive, 1);
    let Step::Challenge(challenge) = ver.receive_commitment(c.clone(), &mut irng) else {
        panic!("an interactive verifier sends a challenge");
    };
    assert_eq!(
        Challenge::from_json(s(&k["challenge_json"])).unwrap(),
        challenge
    );
    let fresh = Prover::new(st.clone(), ToyEngine::default().trace_bytes(st).unwrap()).unwrap();
    let honest = fresh.open_cells(0, &challenge.cells, 0).unwrap();
    let mut with_nonce = honest.clone();
    with_nonce.pow_nonce = 1;
    let verdict = decided(ver.receive_opening(&with_nonce, &mut irng));
    assert_eq!(
        verdict,
        Verdict::Reject(RejectReason::BadProofOfWork {
            pow_bits: 0,
            nonce: 1,
        })
    );
    check_case(k, &with_nonce, &verdict);
    let mut irng = ChaCha20Rng::from_seed(rng_seed);
    let mut ver = verifier(Mode::Interactive, interactive, 1);
    assert_eq!(
        ver.receive_commitment(c.clone(), &mut irng),
        Step::Challenge(challenge)
    );
    assert_eq!(
        decided(ver.receive_opening(&honest, &mut irng)),
        Verdict::Accept
    );
}

#[test]
fn verdicts_of_every_reason() {
    let v = vectors();
    let mut seen = BTreeSet::new();
    for x in arr(&v["verdicts"]) {
        let verdict = Verdict::from_json(s(&x["json"])).unwrap();
        assert_eq!(serde_json::to_string(&verdict).unwrap(), s(&x["json"]));
        assert_eq!(verdict.name(), s(&x["reason"]));
        let bytes = unhex(&x["binary_hex"]);
        assert_eq!(verdict.to_bytes(), bytes, "{}", s(&x["reason"]));
        round_trip(&bytes, &verdict, s(&x["reason"]));
        seen.insert(s(&x["reason"]).to_string());
    }
    for name in RejectReason::NAMES.iter().chain(&["Accept"]) {
        assert!(seen.contains(*name), "no verdict vector for {name}");
    }
}

#[test]
fn soundness_figures() {
    let v = vectors();
    let so = &v["soundness"];
    for x in arr(&so["anchors"]) {
        let (n, b, k) = (u(&x["cells"]), u(&x["bad_cells"]), u(&x["samples"]));
        close(
            miss_probability(n, b, k).unwrap(),
            f(&x["miss_probability"]),
            "miss",
        );
        close(
            detection_probability(n, b, k).unwrap(),
            f(&x["detection_probability"]),
            "detect",
        );
    }
    let needed = arr(&so["samples_needed"])
        .iter()
        .chain(arr(&so["worked_example"]["samples_needed"]));
    for x in needed {
        let r = samples_needed(
            u(&x["cells"]),
            f(&x["cheat_fraction"]),
            f(&x["lambda_bits"]),
            f(&x["power"]),
        )
        .unwrap();
        assert_eq!(r.samples, u(&x["samples"]), "{x}");
        assert_eq!(
            r.with_replacement_samples,
            x["with_replacement_samples"].as_u64()
        );
        close(
            r.log2_miss_probability,
            f(&x["log2_miss_probability"]),
            "log2 miss",
        );
    }
    let w = &so["worked_example"];
    close(
        log2_miss_probability(u(&w["cells"]), u(&w["bad_cells"]), 64).unwrap(),
        f(&w["log2_miss_k64"]),
        "log2 miss k = 64",
    );
    for x in arr(&w["reports"]) {
        let p: SoundnessParams = serde_json::from_value(x["params"].clone()).unwrap();
        let r = soundness_report(&p).unwrap();
        for (got, key) in [
            (r.log2_miss_per_round, "log2_miss_per_round"),
            (r.detection_probability, "detection_probability"),
            (r.security_bits, "security_bits"),
            (r.security_bits_grinding, "security_bits_grinding"),
            (
                r.security_bits_grinding_sequential,
                "security_bits_grinding_sequential",
            ),
        ] {
            close(got, f(&x[key]), key);
        }
    }
}

/// Every challenge seed and every statement root of the vectors is written in the document.
/// The attention-draw vectors (specs/protocol.md §4.4, §7.2 rows 13a and 17): the seeds, the
/// challenge and its encodings, every cell's draw, the four opening sets, the transcript rows;
/// and the toy's honest opening of each drawn challenge passes the algebraic check.
#[test]
fn attention_draws_are_recomputed() {
    use veritrace::protocol::transcript::attention_draw;
    use veritrace::protocol::{check_opening_drawn, AttentionSample, LayerCheck, SubLayerPart};
    let v = vectors();
    let all = commitments(&v);
    let draws = arr(&v["attention_draws"]);
    assert_eq!(draws.len(), 3);
    for x in draws {
        let c = commitment(&all, s(&x["statement"]));
        let st = &c.statement;
        let params = ChallengeParams {
            samples: u(&x["samples"]) as u32,
            strategy: strategy(s(&x["strategy"])),
            pow_bits: u(&x["pow_bits"]) as u8,
            attention: Some(AttentionSample {
                heads: u(&x["heads"]) as u32,
                chunks: u(&x["chunks"]) as u32,
            }),
        };
        let round = u(&x["round"]) as u32;
        let nonce = u(&x["pow_nonce"]);
        assert!(veritrace::protocol::transcript::check_pow(c, &params, nonce).unwrap());
        let seed = challenge_seed(c, round, &params, nonce);
        assert_eq!(hex::encode(seed), s(&x["seed_hex"]));
        let ch = derive_challenge(c, round, &params, nonce).unwrap();
        let draw = ch.attention.expect("a draw");
        assert_eq!(Some(draw), attention_draw(c, round, &params, nonce));
        assert_eq!(draw.seed.to_hex(), s(&x["attention_seed_hex"]));
        assert_eq!(serde_json::to_string(&ch).unwrap(), s(&x["challenge_json"]));
        round_trip(&unhex(&x["challenge_binary_hex"]), &ch, "drawn challenge");
        let indices: Vec<u64> = ch
            .cells
            .iter()
            .map(|&cell| st.geometry.cell_index(cell).unwrap())
            .collect();
        assert_eq!(indices, indices_of(&x["indices"]));
        let listed = arr(&x["draws"]);
        let above: Vec<CellId> = ch.cells.iter().copied().filter(|c| c.layer > 0).collect();
        assert_eq!(listed.len(), above.len());
        for (d, &cell) in listed.iter().zip(&above) {
            let got = draw.cell(st, cell).unwrap();
            assert_eq!(cells_of(&Value::Array(vec![d["cell"].clone()]))[0], cell);
            assert_eq!(u(&d["leaf"]), st.geometry.cell_index(cell).unwrap());
            let as_u64 = |x: &[u32]| x.iter().map(|&i| u64::from(i)).collect::<Vec<_>>();
            assert_eq!(indices_of(&d["heads"]), as_u64(&got.heads));
            assert_eq!(indices_of(&d["chunks"]), as_u64(&got.chunks));
        }
        let cells = |r: Vec<veritrace::protocol::CellRange>| -> Vec<CellId> {
            r.iter().flat_map(|x| x.cells()).collect()
        };
        let o = &x["opening"];
        assert_eq!(
            cells_of(&o["hidden"]),
            cells(st.opening_ranges_drawn(&ch.cells, Some(&draw)).unwrap())
        );
        for (part, key) in [
            (SubLayerPart::Context, "context"),
            (SubLayerPart::Kv, "kv"),
            (SubLayerPart::Cell, "cell"),
        ] {
            assert_eq!(
                cells_of(&o[key]),
                cells(
                    st.sublayer_ranges_drawn(&ch.cells, part, Some(&draw))
                        .unwrap()
                ),
                "{key}"
            );
        }
        let mut rows = session_rows(&params, nonce);
        rows.insert(
            3,
            (
                "attention-sample".to_string(),
                [
                    params.attention.unwrap().heads,
                    params.attention.unwrap().chunks,
                ]
                .into_iter()
                .flat_map(u32::to_le_bytes)
                .collect(),
            ),
        );
        rows.push(round_row(round));
        assert_eq!(rows_of(&x["transcript_rows"]), rows);
        // the honest toy's opening of the drawn challenge passes
        let (context, kv, cell) = ToyEngine::default().sublayer_bytes_by_head(st).unwrap();
        let p = Prover::new(st.clone(), ToyEngine::default().trace_bytes(st).unwrap())
            .unwrap()
            .with_sublayers_by_head(context, kv, cell)
            .unwrap();
        let opening = p.open_drawn(round, &ch.cells, Some(&draw), nonce).unwrap();
        assert_eq!(
            check_opening_drawn(
                c,
                &ch,
                &opening,
                &TolerancePolicy::Exact,
                LayerCheck::Freivalds,
                &ToyEngine::default(),
                &veritrace::protocol::VerifierLimits::default(),
            ),
            Ok(())
        );
    }
}

#[test]
fn the_document_quotes_the_vectors() {
    let v = vectors();
    let spec = spec_text();
    let mut missing = Vec::new();
    let session = &v["session"];
    let seeds = arr(&v["challenges"])
        .iter()
        .chain(arr(&session["per_round"]))
        .chain(arr(&v["attention_draws"]))
        .map(|x| s(&x["seed_hex"]))
        .chain([s(&session["other_round_1_seed_hex"])])
        .chain(
            arr(&v["attention_draws"])
                .iter()
                .map(|x| s(&x["attention_seed_hex"])),
        );
    for seed in seeds {
        if !spec.contains(seed) {
            missing.push(format!("challenge seed {seed}"));
        }
    }
    for x in arr(&v["statements"]) {
        let root = s(&x["root_hex"]);
        if !spec.contains(root) {
            missing.push(format!("root {root}"));
        }
    }
    assert!(
        missing.is_empty(),
        "specs/protocol.md does not quote: {missing:#?}"
    );
    assert!(
        spec.contains("cargo run --example gen_protocol_vectors > specs/vectors/protocol.json"),
        "the document names the generator"
    );
}
