//! The sub-layer trace level over files (issue 16): `prove --trace-level sublayer`, `keygen`,
//! `challenge`, `open` and `verify --layer-check freivalds|both --key`. An honest run is
//! accepted by every layer check; a cheaper setup claimed as the reference is rejected by the
//! Freivalds check alone; sub-layer values changed in the trace file no longer open; a
//! Freivalds verifier of a hidden-only commitment rejects; bad keys and arguments exit 2.

mod common;

use common::veritrace;

fn run_ok(args: &[&str]) -> String {
    let o = veritrace(args);
    assert_eq!(o.code, 0, "{args:?}: {}{}", o.stdout, o.stderr);
    o.stdout
}

fn code(args: &[&str]) -> (i32, String) {
    let o = veritrace(args);
    (o.code, format!("{}{}", o.stdout, o.stderr))
}

/// A commitment's output tokens as `--output-tokens` takes them.
fn output_tokens(commitment: &serde_json::Value) -> String {
    let tokens: Vec<String> = commitment["statement"]["output_tokens"]
        .as_array()
        .expect("output tokens")
        .iter()
        .map(|t| t.to_string())
        .collect();
    tokens.join(",")
}

/// `prove --trace-level sublayer` of the tests' prompt (11 tokens, 4 generated, chunk 4) under
/// `setup` into the directory `out`; its standard output.
fn prove_sublayer(out: &str, setup: &str) -> String {
    prove_at_level(out, setup, "sublayer")
}

/// [`prove_sublayer`] at trace level `level` (`sublayer` or `sublayer-by-head`).
fn prove_at_level(out: &str, setup: &str, level: &str) -> String {
    run_ok(&[
        "prove",
        "--prompt",
        "5,9,2,7,1,3,8,8,4,6,1",
        "--output",
        "4",
        "--chunk",
        "4",
        "--setup",
        setup,
        "--trace-level",
        level,
        "--out",
        out,
    ])
}

#[test]
fn sublayer_sessions_over_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(p("secret"), [3u8; 32]).unwrap();
    run_ok(&[
        "keygen",
        "--model",
        "tiny",
        "--secret-file",
        &p("secret"),
        "--out",
        &p("tiny.key"),
    ]);
    let prove = |dir: &str, setup: &str| prove_sublayer(&p(dir), setup);
    let out = prove("run", "f32/attn=eager");
    assert!(out.contains("sub-layer roots: context "), "{out}");
    let commitment = p("run/commitment.json");
    let trace = p("run/trace.safetensors");
    let seed = "05".repeat(32);
    run_ok(&[
        "challenge",
        &commitment,
        "--samples",
        "5",
        "--seed",
        &seed,
        "--out",
        &p("ch.json"),
    ]);
    run_ok(&[
        "open",
        &trace,
        "--challenge",
        &p("ch.json"),
        "--out",
        &p("op.json"),
        "--format",
        "json",
    ]);
    let opening: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("op.json")).unwrap()).unwrap();
    assert!(opening["sublayers"]["context"]
        .as_array()
        .is_some_and(|a| !a.is_empty()));
    let ch = p("ch.json");
    let verify = |commitment: &str, opening: &str, extra: &[&str]| {
        let mut a = vec![
            "verify",
            "--commitment",
            commitment,
            "--challenge",
            &ch,
            "--opening",
            opening,
        ];
        a.extend_from_slice(extra);
        code(&a.iter().map(|s| s.as_ref()).collect::<Vec<&str>>())
    };
    let key = p("tiny.key");
    let sampled = ["--attention-heads", "1", "--context-rows", "2"];
    let freivalds_sampled: Vec<&str> = ["--layer-check", "freivalds", "--key", key.as_str()]
        .into_iter()
        .chain(sampled)
        .collect();
    for check in [
        vec!["--layer-check", "freivalds", "--key", key.as_str()],
        vec!["--layer-check", "both", "--key", key.as_str()],
        freivalds_sampled.clone(),
        vec!["--layer-check", "recompute"],
        vec![],
    ] {
        let (c, out) = verify(&commitment, &p("op.json"), &check);
        assert_eq!(c, 0, "{check:?}: {out}");
        assert!(out.starts_with("accept"), "{out}");
    }

    // a prover that ran int8 weights and claims f32 eager: its statement, trace file and
    // commitment say f32 eager, its values are int8's
    let model = veritrace_model::LlamaModel::preset("tiny").unwrap();
    let int8: veritrace_model::Setup = "f32/attn=eager/quant=int8-tensor".parse().unwrap();
    let (mut statement, trace_values, sub) = model
        .prove_run_sublayers(
            &int8,
            &[5, 9, 2, 7, 1, 3, 8, 8, 4, 6, 1],
            4,
            4,
            veritrace_commit::HasherId::Blake3,
        )
        .unwrap();
    statement.setup = veritrace_model::Setup::F32_EAGER.to_bytes();
    std::fs::create_dir(p("cheat")).unwrap();
    let meta_trace = p("cheat/trace.safetensors");
    veritrace_model::write_trace_with(
        std::path::Path::new(&meta_trace),
        &trace_values,
        Some(&statement),
        Some(&sub),
    )
    .unwrap();
    let (context, cell) = sub.bytes();
    let mut prover = veritrace_protocol::Prover::new(statement, trace_values.layer_bytes())
        .unwrap()
        .with_sublayers(context, cell)
        .unwrap();
    let cheat_commitment = p("cheat/commitment.json");
    use veritrace_protocol::Message;
    std::fs::write(&cheat_commitment, prover.commit().unwrap().to_json()).unwrap();
    run_ok(&[
        "challenge",
        &cheat_commitment,
        "--samples",
        "5",
        "--seed",
        &seed,
        "--out",
        &p("ch.json"),
    ]);
    run_ok(&[
        "open",
        &meta_trace,
        "--challenge",
        &p("ch.json"),
        "--out",
        &p("cheat-op.json"),
    ]);
    let (c, out) = verify(
        &cheat_commitment,
        &p("cheat-op.json"),
        &["--layer-check", "freivalds", "--key", &key],
    );
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("AlgebraicCheck") || out.contains("Tolerance"),
        "{out}"
    );
    // the sampled attention check rejects it too (its weights are wrong in every map), and
    // says what it sampled
    let (c, out) = verify(&cheat_commitment, &p("cheat-op.json"), &freivalds_sampled);
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("sampled attention check: heads ["), "{out}");
    // sampling without the Freivalds check, or of no head: exit 2
    let (c, out) = verify(&cheat_commitment, &p("cheat-op.json"), &sampled);
    assert_eq!(c, 2, "{out}");
    assert!(out.contains("--layer-check freivalds"), "{out}");
    let (c, out) = verify(
        &cheat_commitment,
        &p("cheat-op.json"),
        &[
            "--layer-check",
            "freivalds",
            "--key",
            &key,
            "--attention-heads",
            "0",
        ],
    );
    assert_eq!(c, 2, "{out}");
    assert!(out.contains("at least 1 head"), "{out}");

    // a hidden-only commitment cannot be checked by Freivalds
    run_ok(&[
        "prove",
        "--prompt",
        "5,9,2,7",
        "--output",
        "2",
        "--chunk",
        "2",
        "--out",
        &p("hidden"),
    ]);
    run_ok(&[
        "challenge",
        &p("hidden/commitment.json"),
        "--samples",
        "2",
        "--seed",
        &seed,
        "--out",
        &p("hch.json"),
    ]);
    run_ok(&[
        "open",
        &p("hidden/trace.safetensors"),
        "--challenge",
        &p("hch.json"),
        "--out",
        &p("hop.json"),
    ]);
    let (c, out) = code(&[
        "verify",
        "--commitment",
        &p("hidden/commitment.json"),
        "--challenge",
        &p("hch.json"),
        "--opening",
        &p("hop.json"),
        "--layer-check",
        "freivalds",
        "--key",
        &key,
    ]);
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("GeometryMismatch") && out.contains("hidden states only"),
        "{out}"
    );
}

#[test]
fn bad_keys_and_arguments_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(p("secret"), [4u8; 32]).unwrap();
    run_ok(&[
        "keygen",
        "--model",
        "small",
        "--secret-file",
        &p("secret"),
        "--out",
        &p("small.key"),
    ]);
    run_ok(&[
        "prove",
        "--prompt",
        "1,2,3,4,5",
        "--output",
        "2",
        "--chunk",
        "4",
        "--trace-level",
        "sublayer",
        "--out",
        &p("run"),
    ]);
    let seed = "06".repeat(32);
    run_ok(&[
        "challenge",
        &p("run/commitment.json"),
        "--samples",
        "3",
        "--seed",
        &seed,
        "--out",
        &p("ch.json"),
    ]);
    run_ok(&[
        "open",
        &p("run/trace.safetensors"),
        "--challenge",
        &p("ch.json"),
        "--out",
        &p("op.json"),
    ]);
    let base = [
        "verify",
        "--commitment",
        &p("run/commitment.json"),
        "--challenge",
        &p("ch.json"),
        "--opening",
        &p("op.json"),
    ]
    .map(|s| s.to_string());
    let with = |extra: &[&str]| {
        let mut a: Vec<String> = base.to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        code(&refs)
    };
    // the key of another model
    let (c, out) = with(&["--layer-check", "freivalds", "--key", &p("small.key")]);
    assert_eq!(c, 2, "{out}");
    assert!(out.contains("is a key of model"), "{out}");
    // no key, a key without the check, a bad tolerance, a file that is not a key
    assert_eq!(with(&["--layer-check", "freivalds"]).0, 2);
    assert_eq!(with(&["--key", &p("small.key")]).0, 2);
    std::fs::write(p("garbage.key"), b"not a key").unwrap();
    let (c, out) = with(&["--layer-check", "both", "--key", &p("garbage.key")]);
    assert_eq!(c, 2, "{out}");
    assert!(out.contains("verifier key"), "{out}");
    run_ok(&[
        "keygen",
        "--model",
        "tiny",
        "--secret-file",
        &p("secret"),
        "--out",
        &p("tiny.key"),
    ]);
    let (c, out) = with(&[
        "--layer-check",
        "freivalds",
        "--key",
        &p("tiny.key"),
        "--sublayer-tolerance",
        "-1",
    ]);
    assert_eq!(c, 2, "{out}");
    // an encoder has no sub-layer trace
    let (c, out) = code(&[
        "prove",
        "--model",
        "minilm",
        "--trace-level",
        "sublayer",
        "--out",
        &p("enc"),
    ]);
    assert_eq!(c, 2, "{out}");
    // the GPU's capture needs a GPU: without one (or without the cuda feature) the device is
    // refused before anything is written
    if !cfg!(feature = "cuda") {
        let (c, out) = code(&[
            "prove",
            "--prompt",
            "1,2,3",
            "--output",
            "1",
            "--device",
            "cuda:0",
            "--trace-level",
            "sublayer",
            "--out",
            &p("gpu"),
        ]);
        assert_eq!(c, 2, "{out}");
        assert!(out.contains("cuda:0"), "{out}");
        assert!(!dir.path().join("gpu").exists());
    }
    // a trace file whose sub-layer tensors are gone cannot be opened
    let trace = p("run/trace.safetensors");
    let bytes = std::fs::read(&trace).unwrap();
    // the header is JSON; rename one tensor in place (same length)
    let mut patched = bytes.clone();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + header_len].to_vec()).unwrap();
    let new_header = header.replace("\"cell.1\"", "\"cell.9\"");
    assert_ne!(header, new_header);
    patched[8..8 + header_len].copy_from_slice(new_header.as_bytes());
    std::fs::write(p("broken.safetensors"), &patched).unwrap();
    let (c, out) = code(&[
        "open",
        &p("broken.safetensors"),
        "--challenge",
        &p("ch.json"),
        "--out",
        &p("op2.json"),
    ]);
    assert_eq!(c, 2, "{out}");
    assert!(out.contains("cell.1 is missing"), "{out}");
}

/// `commit --trace-level sublayer` commits an external trace file's sub-layer values (here the
/// file `prove` wrote, read as any other prover's): it verifies by Freivalds; a file without
/// them, or a model that is not a decoder, exits 2 before anything is written.
#[test]
fn external_sublayer_traces_are_committed() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(p("secret"), [8u8; 32]).unwrap();
    run_ok(&[
        "keygen",
        "--model",
        "tiny",
        "--secret-file",
        &p("secret"),
        "--out",
        &p("tiny.key"),
    ]);
    run_ok(&[
        "prove",
        "--prompt",
        "3,1,4,1,5,9,2,6",
        "--output",
        "3",
        "--chunk",
        "4",
        "--trace-level",
        "sublayer",
        "--out",
        &p("run"),
    ]);
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("run/commitment.json")).unwrap()).unwrap();
    let out = output_tokens(&c);
    let commit = |level: &str, trace: &str, model: &str, dest: &str| {
        code(&[
            "commit",
            trace,
            "--model",
            model,
            "--prompt",
            "3,1,4,1,5,9,2,6",
            "--output-tokens",
            &out,
            "--chunk",
            "4",
            "--trace-level",
            level,
            "--out",
            dest,
        ])
    };
    let (c1, o1) = commit("sublayer", &p("run/trace.safetensors"), "tiny", &p("ext"));
    assert_eq!(c1, 0, "{o1}");
    // the same roots as the prover's own commitment
    assert_eq!(
        std::fs::read_to_string(p("ext/commitment.json"))
            .unwrap()
            .trim(),
        std::fs::read_to_string(p("run/commitment.json"))
            .unwrap()
            .trim()
    );
    run_ok(&[
        "open",
        &p("ext/trace.safetensors"),
        "--non-interactive",
        "--samples",
        "6",
        "--out",
        &p("opened"),
    ]);
    let (c2, o2) = code(&[
        "verify",
        "--commitment",
        &p("ext/commitment.json"),
        "--opening",
        &p("opened/opening-0.vtpm"),
        "--non-interactive",
        "--samples",
        "6",
        "--layer-check",
        "freivalds",
        "--key",
        &p("tiny.key"),
    ]);
    assert_eq!(c2, 0, "{o2}");
    // a hidden-only trace file has no sub-layer values to commit
    run_ok(&[
        "prove",
        "--prompt",
        "3,1,4,1,5,9,2,6",
        "--output",
        "3",
        "--chunk",
        "4",
        "--out",
        &p("plain"),
    ]);
    let (c3, o3) = commit(
        "sublayer",
        &p("plain/trace.safetensors"),
        "tiny",
        &p("ext2"),
    );
    assert_eq!(c3, 2, "{o3}");
    assert!(o3.contains("context.1 is missing"), "{o3}");
    assert!(!dir.path().join("ext2").exists(), "nothing written");
    // another decoder's widths
    let (c4, o4) = commit("sublayer", &p("run/trace.safetensors"), "small", &p("ext3"));
    assert_eq!(c4, 2, "{o4}");
}

#[test]
fn keygen_calibrates_a_bound() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(p("secret"), [5u8; 32]).unwrap();
    let out = run_ok(&[
        "keygen",
        "--model",
        "tiny",
        "--secret-file",
        &p("secret"),
        "--out",
        &p("k"),
        "--calibrate-bound",
        "10",
        "--calibration-tokens",
        "12",
    ]);
    assert!(
        out.contains("honest worst ratio") && out.contains("over 10 runs"),
        "{out}"
    );
    assert!(out.contains("probability <= 1/11"), "{out}");

    // per-map scales: written with the key, read by verify for a sub-layer session
    let out = run_ok(&[
        "keygen",
        "--model",
        "tiny",
        "--secret-file",
        &p("secret"),
        "--out",
        &p("k3"),
        "--calibrate-bound",
        "10",
        "--calibration-tokens",
        "12",
        "--bound-file",
        &p("bounds.json"),
    ]);
    assert!(out.contains("per-map bound scales"), "{out}");
    let bounds: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("bounds.json")).unwrap()).unwrap();
    assert_eq!(bounds["runs"], 10);
    let scales = bounds["scales"].as_array().unwrap();
    assert_eq!(scales.len(), 4, "one row per layer of tiny");
    assert!(scales
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .all(|s| s.as_f64().is_some_and(|s| s > 0.0 && s <= 1.0)));
    prove_sublayer(&p("run"), "f32/attn=eager");
    run_ok(&[
        "challenge",
        &p("run/commitment.json"),
        "--samples",
        "6",
        "--seed",
        &"0b".repeat(32),
        "--out",
        &p("ch.vtpm"),
    ]);
    run_ok(&[
        "open",
        &p("run/trace.safetensors"),
        "--challenge",
        &p("ch.vtpm"),
        "--out",
        &p("op.vtpm"),
    ]);
    let (commitment, challenge, opening, k3) = (
        p("run/commitment.json"),
        p("ch.vtpm"),
        p("op.vtpm"),
        p("k3"),
    );
    let verify_args = |extra: &[&str]| {
        let mut a = vec![
            "verify",
            "--model",
            "tiny",
            "--commitment",
            &commitment,
            "--challenge",
            &challenge,
            "--opening",
            &opening,
        ];
        a.extend_from_slice(extra);
        code(&a)
    };
    let verify_with = |bounds: &str| {
        verify_args(&[
            "--layer-check",
            "freivalds",
            "--key",
            &k3,
            "--freivalds-bounds",
            bounds,
        ])
    };
    let (c, o) = verify_with(&p("bounds.json"));
    assert_eq!(c, 0, "{o}");
    assert!(o.starts_with("accept"), "{o}");
    // a bound file of another model, of other layers, with a scale out of (0, 1], with an
    // unknown field, or without the key: exit 2
    let text = std::fs::read_to_string(p("bounds.json")).unwrap();
    let digest = bounds["model_digest"].as_str().unwrap().to_string();
    let mut one_layer = bounds.clone();
    one_layer["scales"].as_array_mut().unwrap().truncate(1);
    let mut big = bounds.clone();
    big["scales"][0][0] = serde_json::json!(1.5);
    let mut extra = bounds.clone();
    extra["note"] = serde_json::json!("x");
    for (name, bad) in [
        ("digest", text.replace(&digest, &"00".repeat(32))),
        ("layers", one_layer.to_string()),
        ("scale", big.to_string()),
        ("field", extra.to_string()),
    ] {
        std::fs::write(p("bad.json"), bad).unwrap();
        let (c, o) = verify_with(&p("bad.json"));
        assert_eq!(c, 2, "{name}: {o}");
    }
    let (c, o) = verify_args(&["--freivalds-bounds", &p("bounds.json")]);
    assert_eq!(c, 2, "{o}");

    // per-map scales through the tolerance calibration (the order statistic; a loose target
    // so that few runs suffice), tested on held-out runs, read by verify
    let calibrated = |runs: &str, out: &str| {
        code(&[
            "keygen",
            "--model",
            "tiny",
            "--secret-file",
            &p("secret"),
            "--out",
            &p("k4"),
            "--calibrate-bound",
            runs,
            "--calibration-tokens",
            "6",
            "--bound-file",
            &p(out),
            "--bound-method",
            "order-statistic",
            "--bound-target-fpr",
            "0.9",
            "--bound-confidence",
            "0.5",
            "--bound-holdout",
            "20",
        ])
    };
    let (c, o) = calibrated("60", "few.json");
    assert_eq!(c, 2, "{o}");
    assert!(o.contains("124 honest runs are needed"), "{o}");
    assert!(!dir.path().join("few.json").exists() && !dir.path().join("k4").exists());
    let (c, o) = calibrated("130", "bounds-cal.json");
    assert_eq!(c, 0, "{o}");
    assert!(o.contains("order-statistic over 28 maps"), "{o}");
    assert!(o.contains("held out: 20 runs"), "{o}");
    let cal: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("bounds-cal.json")).unwrap()).unwrap();
    assert_eq!(cal["runs"], 130);
    assert_eq!(cal["calibration"]["method"], "order-statistic");
    assert_eq!(cal["calibration"]["holdout_runs"], 20);
    let (c, o) = verify_with(&p("bounds-cal.json"));
    assert_eq!(c, 0, "{o}");
    let mut bad_method = cal.clone();
    bad_method["calibration"]["method"] = serde_json::json!("guess");
    let mut bad_count = cal.clone();
    bad_count["calibration"]["holdout_exceeding"] = serde_json::json!(21);
    for bad in [bad_method, bad_count] {
        std::fs::write(p("bad.json"), bad.to_string()).unwrap();
        let (c, o) = verify_with(&p("bad.json"));
        assert_eq!(c, 2, "{o}");
        assert!(o.contains("calibration"), "{o}");
    }

    let (secret, k2) = (p("secret"), p("k2"));
    for bad in [["--calibrate-bound", "0"], ["--calibration-tokens", "0"]] {
        let mut a = vec![
            "keygen",
            "--model",
            "tiny",
            "--secret-file",
            &secret,
            "--out",
            &k2,
            "--calibrate-bound",
            "3",
        ];
        a.extend_from_slice(&bad);
        let (c, o) = code(&a);
        assert_eq!(c, 2, "{o}");
        assert!(
            !dir.path().join("k2").exists(),
            "refused before anything is written"
        );
    }
}

/// Sub-layer sessions of other weights than the checkpoint's f32 ones: `verify --layer-check
/// freivalds --key K` derives the key of the statement's weights (bf16; int8 per channel,
/// dequantized) from the checkpoint's key and accepts honest provers of those setups.
#[test]
fn a_bf16_sublayer_session_is_checked_with_the_key_of_its_weights() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(p("secret"), [4u8; 32]).unwrap();
    run_ok(&[
        "keygen",
        "--model",
        "tiny",
        "--secret-file",
        &p("secret"),
        "--out",
        &p("k"),
    ]);
    for (run, setup) in [
        ("bf16", "bf16/attn=eager/kernels=invariant"),
        (
            "int8",
            "f32/attn=eager/quant=int8-channel/kernels=invariant",
        ),
    ] {
        prove_sublayer(&p(run), setup);
        let ch = p(&format!("{run}-ch.vtpm"));
        let op = p(&format!("{run}-op.vtpm"));
        run_ok(&[
            "challenge",
            &p(&format!("{run}/commitment.json")),
            "--samples",
            "8",
            "--seed",
            &"0c".repeat(32),
            "--out",
            &ch,
        ]);
        run_ok(&[
            "open",
            &p(&format!("{run}/trace.safetensors")),
            "--challenge",
            &ch,
            "--out",
            &op,
        ]);
        let out = run_ok(&[
            "verify",
            "--model",
            "tiny",
            "--commitment",
            &p(&format!("{run}/commitment.json")),
            "--challenge",
            &ch,
            "--opening",
            &op,
            "--layer-check",
            "freivalds",
            "--key",
            &p("k"),
        ]);
        assert!(out.starts_with("accept"), "{setup}: {out}");
    }
    // per-map scales calibrated with the bf16 weights' key serve bf16 sessions; scales of the
    // f32 weights are refused there (exit 2)
    let calibrate = |setup: &str, file: &str| {
        run_ok(&[
            "keygen",
            "--model",
            "tiny",
            "--secret-file",
            &p("secret"),
            "--out",
            &p("k2"),
            "--calibrate-bound",
            "6",
            "--calibration-tokens",
            "12",
            "--calibration-setup",
            setup,
            "--bound-file",
            &p(file),
        ])
    };
    calibrate("bf16/attn=eager/kernels=invariant", "bf16-bounds.json");
    calibrate("f32/attn=eager", "f32-bounds.json");
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("bf16-bounds.json")).unwrap()).unwrap();
    assert_eq!(b["weights"], "bf16");
    let verify = |bounds: &str| {
        code(&[
            "verify",
            "--model",
            "tiny",
            "--commitment",
            &p("bf16/commitment.json"),
            "--challenge",
            &p("bf16-ch.vtpm"),
            "--opening",
            &p("bf16-op.vtpm"),
            "--layer-check",
            "freivalds",
            "--key",
            &p("k"),
            "--freivalds-bounds",
            &p(bounds),
        ])
    };
    let (c, o) = verify("bf16-bounds.json");
    assert_eq!(c, 0, "{o}");
    let (c, o) = verify("f32-bounds.json");
    assert_eq!(c, 2, "{o}");
    assert!(o.contains("f32 weights"), "{o}");
    // scales from sub-layer trace files (another engine's runs, here the bf16 prover's own)
    let from_traces = |extra: &[&str]| {
        let mut a = vec![
            "keygen",
            "--model",
            "tiny",
            "--secret-file",
            &p("secret"),
            "--out",
            &p("k3"),
            "--calibration-setup",
            "bf16/attn=eager/kernels=invariant",
            "--bound-file",
            &p("traced-bounds.json"),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        a.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        code(&refs)
    };
    let bf16_trace = p("bf16/trace.safetensors");
    let int8_trace = p("int8/trace.safetensors");
    let (c, o) = from_traces(&["--calibrate-bound", "1", "--bound-trace", &bf16_trace]);
    assert_eq!(c, 0, "{o}");
    assert!(o.contains("nonlinear tolerances"), "{o}");
    let (c, o) = verify("traced-bounds.json");
    assert_eq!(c, 0, "{o}");
    // the file holds the nonlinear tolerances of the trace's runs: 0 in every part here (the
    // bf16 prover is this engine: its nonlinear parts agree bit for bit)
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("traced-bounds.json")).unwrap()).unwrap();
    let t = b["nonlinear"].as_array().expect("nonlinear tolerances");
    assert_eq!(t.len(), 4, "one row per layer of tiny");
    assert!(t
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .all(|x| x.as_f64() == Some(0.0)));
    // a negative tolerance is refused (exit 2)
    let mut bad = b.clone();
    bad["nonlinear"][1][2] = serde_json::json!(-1.0);
    std::fs::write(p("bad-bounds.json"), bad.to_string()).unwrap();
    let (c, o) = verify("bad-bounds.json");
    assert_eq!(c, 2, "{o}");
    assert!(o.contains("tolerance"), "{o}");
    // too few files; a trace of other weights than the setup's
    let (c, o) = from_traces(&["--calibrate-bound", "2", "--bound-trace", &bf16_trace]);
    assert_eq!(c, 2, "{o}");
    // trace files may calibrate more runs than keygen makes itself (here, too few files for
    // them: refused for the files, not for the count); without files the count is capped
    let (c, o) = from_traces(&["--calibrate-bound", "150000", "--bound-trace", &bf16_trace]);
    assert_eq!(c, 2, "{o}");
    assert!(o.contains("--bound-trace files for 150000"), "{o}");
    let (c, o) = from_traces(&["--calibrate-bound", "150000"]);
    assert_eq!(c, 2, "{o}");
    assert!(o.contains("1..=100000"), "{o}");
    let (c, o) = from_traces(&["--calibrate-bound", "1", "--bound-trace", &int8_trace]);
    assert_eq!(c, 2, "{o}");
    assert!(o.contains("--bound-trace"), "{o}");
}

/// The by-head level over files (specs/protocol.md §4.4): `prove --trace-level
/// sublayer-by-head`, challenges that draw heads and context chunks (interactive and
/// non-interactive), openings that hold only the drawn cells, and `verify --layer-check
/// freivalds` of them; a drawn opening cannot be recomputed, and draws need a by-head statement.
#[test]
fn by_head_sessions_over_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(p("secret"), [3u8; 32]).unwrap();
    run_ok(&[
        "keygen",
        "--model",
        "tiny",
        "--secret-file",
        &p("secret"),
        "--out",
        &p("tiny.key"),
    ]);
    let out = run_ok(&[
        "prove",
        "--prompt",
        "5,9,2,7,1,3,8,8,4,6,1",
        "--output",
        "4",
        "--chunk",
        "4",
        "--trace-level",
        "sublayer-by-head",
        "--out",
        &p("run"),
    ]);
    assert!(out.contains(", key-value "), "{out}");
    let (commitment, trace, key) = (
        p("run/commitment.json"),
        p("run/trace.safetensors"),
        p("tiny.key"),
    );
    let seed = "05".repeat(32);
    let challenge = |out: &str, extra: &[&str]| {
        let mut a = vec![
            "challenge",
            commitment.as_str(),
            "--samples",
            "3",
            "--seed",
            &seed,
            "--out",
            out,
        ];
        a.extend_from_slice(extra);
        run_ok(&a)
    };
    let said = challenge(
        &p("ch.vtpm"),
        &["--attention-heads", "1", "--context-chunks", "1"],
    );
    assert!(
        said.contains("attention draw: 1 heads and 1 earlier chunks"),
        "{said}"
    );
    challenge(&p("whole.vtpm"), &[]);
    for (ch, op) in [("ch.vtpm", "op.vtpm"), ("whole.vtpm", "whole-op.vtpm")] {
        run_ok(&["open", &trace, "--challenge", &p(ch), "--out", &p(op)]);
    }
    // the same cells: the drawn opening holds less
    let size = |f: &str| std::fs::metadata(p(f)).unwrap().len();
    assert!(
        size("op.vtpm") < size("whole-op.vtpm"),
        "{} {}",
        size("op.vtpm"),
        size("whole-op.vtpm")
    );
    let verify = |ch: &str, op: &str, extra: &[&str]| {
        let (c, o) = (p(ch), p(op));
        let mut a = vec![
            "verify",
            "--commitment",
            commitment.as_str(),
            "--challenge",
            &c,
            "--opening",
            &o,
        ];
        a.extend_from_slice(extra);
        code(&a)
    };
    let freivalds = ["--layer-check", "freivalds", "--key", key.as_str()];
    for (ch, op) in [("ch.vtpm", "op.vtpm"), ("whole.vtpm", "whole-op.vtpm")] {
        let (c, out) = verify(ch, op, &freivalds);
        assert_eq!(c, 0, "{ch}: {out}");
        assert!(out.starts_with("accept"), "{out}");
    }
    // the whole opening is recomputed too; a drawn one cannot be, nor the draw given again
    let (c, out) = verify(
        "whole.vtpm",
        "whole-op.vtpm",
        &["--layer-check", "recompute"],
    );
    assert_eq!(c, 0, "{out}");
    let (c, out) = verify("ch.vtpm", "op.vtpm", &["--layer-check", "recompute"]);
    assert_eq!(c, 2, "{out}");
    assert!(out.contains("cannot be recomputed"), "{out}");
    let mut again = freivalds.to_vec();
    again.extend(["--attention-heads", "1"]);
    let (c, out) = verify("ch.vtpm", "op.vtpm", &again);
    assert_eq!(c, 2, "{out}");
    // an opening of another challenge's draw is rejected
    let (c, out) = verify("ch.vtpm", "whole-op.vtpm", &freivalds);
    assert_ne!(c, 0, "{out}");
    assert!(out.starts_with("reject"), "{out}");

    // non-interactive: the draws come from the transcript, the verifier states the sample
    let ni = |n: &str| -> Vec<String> {
        [
            "--non-interactive",
            "--samples",
            "3",
            "--attention-heads",
            "1",
            "--context-chunks",
            n,
        ]
        .into_iter()
        .map(String::from)
        .collect()
    };
    let mut a: Vec<String> = vec!["open".into(), trace.clone(), "--out".into(), p("ni")];
    a.extend(ni("1"));
    a.extend(["--rounds".into(), "2".into()]);
    run_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    for (chunks, accepted) in [("1", true), ("2", false)] {
        let mut a: Vec<String> = vec!["verify".into(), "--commitment".into(), commitment.clone()];
        for r in 0..2 {
            a.extend(["--opening".into(), p(&format!("ni/opening-{r}.vtpm"))]);
        }
        a.extend(freivalds.iter().map(|s| s.to_string()));
        a.extend(ni(chunks));
        let (c, out) = code(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(c == 0, accepted, "{chunks}: {out}");
        // another sample draws other cells: a verdict, not an argument error
        assert!(
            out.starts_with(if accepted { "accept" } else { "reject" }),
            "{out}"
        );
    }

    // draws need a statement committed by head
    prove_sublayer(&p("plain"), "f32/attn=eager");
    let (c, out) = code(&[
        "challenge",
        &p("plain/commitment.json"),
        "--samples",
        "3",
        "--attention-heads",
        "1",
        "--out",
        &p("bad.vtpm"),
    ]);
    assert_eq!(c, 2, "{out}");
    assert!(out.contains("by head"), "{out}");
}

/// A bf16 run's sub-layer values are committed as bf16 (specs/protocol.md §3.5): `prove` and
/// `commit` of its trace file under the bf16 setup give the same commitment, whose statement
/// says bf16; the f32 setup's claim commits the same values as f32; and values bf16 does not
/// hold (an f32 run's) claimed under a bf16 setup exit 2, writing nothing.
#[test]
fn a_bf16_run_commits_its_sublayer_values_as_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let bf16 = "bf16/attn=eager/kernels=invariant";
    prove_sublayer(&p("bf16"), bf16);
    prove_sublayer(&p("f32"), "f32/attn=eager");
    let read = |path: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let c = read(&p("bf16/commitment.json"));
    assert_eq!(c["statement"]["trace_level"]["sub-layer"]["dtype"], "bf16");
    let out = output_tokens(&c);
    let commit = |trace: &str, setup: &str, dest: &str| {
        code(&[
            "commit",
            trace,
            "--model",
            "tiny",
            "--setup",
            setup,
            "--prompt",
            "5,9,2,7,1,3,8,8,4,6,1",
            "--output-tokens",
            &out,
            "--chunk",
            "4",
            "--trace-level",
            "sublayer",
            "--out",
            dest,
        ])
    };
    let (c1, o1) = commit(&p("bf16/trace.safetensors"), bf16, &p("ext"));
    assert_eq!(c1, 0, "{o1}");
    assert_eq!(read(&p("ext/commitment.json")), c);
    // claimed as f32 (a cheat's claim): the same values, committed as f32
    let (c2, o2) = commit(&p("bf16/trace.safetensors"), "f32/attn=eager", &p("ext32"));
    assert_eq!(c2, 0, "{o2}");
    let c32 = read(&p("ext32/commitment.json"));
    assert_eq!(c32["statement"]["trace_level"]["sub-layer"]["dtype"], "f32");
    assert_eq!(c32["root"], c["root"], "the hidden trace is the same");
    assert_ne!(c32["sublayer_roots"], c["sublayer_roots"]);
    // an f32 run's values are no bf16 values
    let f = read(&p("f32/commitment.json"));

    let (c3, o3) = code(&[
        "commit",
        &p("f32/trace.safetensors"),
        "--model",
        "tiny",
        "--setup",
        bf16,
        "--prompt",
        "5,9,2,7,1,3,8,8,4,6,1",
        "--output-tokens",
        &output_tokens(&f),
        "--chunk",
        "4",
        "--trace-level",
        "sublayer",
        "--out",
        &p("bad"),
    ]);
    assert_eq!(c3, 2, "{o3}");
    assert!(o3.contains("does not hold exactly"), "{o3}");
    assert!(!dir.path().join("bad").exists(), "nothing written");
    // by head: bf16 values, a drawn challenge opened from the f32 trace file and verified
    std::fs::write(p("secret"), [5u8; 32]).unwrap();
    run_ok(&[
        "keygen",
        "--model",
        "tiny",
        "--secret-file",
        &p("secret"),
        "--out",
        &p("k"),
    ]);
    prove_at_level(&p("heads"), bf16, "sublayer-by-head");
    let h = read(&p("heads/commitment.json"));
    assert_eq!(
        h["statement"]["trace_level"]["sub-layer-by-head"]["dtype"],
        "bf16"
    );
    run_ok(&[
        "challenge",
        &p("heads/commitment.json"),
        "--samples",
        "3",
        "--seed",
        &"0d".repeat(32),
        "--attention-heads",
        "1",
        "--context-chunks",
        "1",
        "--out",
        &p("heads-ch.vtpm"),
    ]);
    run_ok(&[
        "open",
        &p("heads/trace.safetensors"),
        "--challenge",
        &p("heads-ch.vtpm"),
        "--out",
        &p("heads-op.vtpm"),
    ]);
    let v = run_ok(&[
        "verify",
        "--model",
        "tiny",
        "--commitment",
        &p("heads/commitment.json"),
        "--challenge",
        &p("heads-ch.vtpm"),
        "--opening",
        &p("heads-op.vtpm"),
        "--layer-check",
        "freivalds",
        "--key",
        &p("k"),
    ]);
    assert!(v.starts_with("accept"), "{v}");
}
