//! The protocol over files: `prove`, `challenge`, `open`, `verify`, interactive and
//! non-interactive. Honest runs are accepted (exit 0); a tampered opening, a wrong proof of work,
//! a swapped challenge, a cheaper setup claimed as the reference and a verifier with another
//! model are rejected (exit 1, with the reason); malformed files exit 2. An encoder (a BERT
//! checkpoint directory) runs the same protocol.

mod common;
#[path = "../../model/tests/synthetic_bert/mod.rs"]
mod synthetic_bert;

use common::veritrace;

fn run_ok(args: &[&str]) -> String {
    let o = veritrace(args);
    assert_eq!(o.code, 0, "{args:?}: {}{}", o.stdout, o.stderr);
    o.stdout
}

fn rejected(args: &[&str], reason: &str) {
    let o = veritrace(args);
    assert_eq!(o.code, 1, "{args:?}: {}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains(reason), "{args:?}: {}", o.stdout);
}

#[test]
fn interactive_and_non_interactive_runs() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let out = run_ok(&[
        "prove",
        "--prompt",
        "5,9,2,7,1,3",
        "--output",
        "3",
        "--chunk",
        "4",
        "--out",
        &p("run"),
    ]);
    assert!(out.starts_with("root "), "{out}");
    let (commitment, trace) = (p("run/commitment.json"), p("run/trace.safetensors"));
    let seed = "07".repeat(32);
    run_ok(&[
        "challenge",
        &commitment,
        "--samples",
        "3",
        "--seed",
        &seed,
        "--out",
        &p("ch.json"),
    ]);
    // A fixed seed gives the same challenge; fresh randomness by default.
    run_ok(&[
        "challenge",
        &commitment,
        "--samples",
        "3",
        "--seed",
        &seed,
        "--out",
        &p("ch2.json"),
    ]);
    assert_eq!(
        std::fs::read(p("ch.json")).unwrap(),
        std::fs::read(p("ch2.json")).unwrap()
    );
    // JSON for the tampering below (the binary default is checked in
    // `binary_and_json_messages_verify_alike`)
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
    let verify = |extra: &[&str]| {
        let mut a = vec!["verify", "--commitment", commitment.as_str()];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let args = verify(&["--challenge", &p("ch.json"), "--opening", &p("op.json")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(run_ok(&args), "accept\n");
    let json = verify(&[
        "--challenge",
        &p("ch.json"),
        "--opening",
        &p("op.json"),
        "--json",
    ]);
    let json: Vec<&str> = json.iter().map(String::as_str).collect();
    assert!(run_ok(&json).contains("accept"));

    // Tampered opening: one hex digit of the first cell changed.
    let text = std::fs::read_to_string(p("op.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let data = v["cells"][0]["data"].as_str().unwrap().to_string();
    let flipped = format!(
        "{}{}",
        if data.starts_with('0') { '1' } else { '0' },
        &data[1..]
    );
    v["cells"][0]["data"] = flipped.into();
    std::fs::write(p("bad.json"), v.to_string()).unwrap();
    let a = verify(&["--challenge", &p("ch.json"), "--opening", &p("bad.json")]);
    rejected(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        "BadProof",
    );
    // An opening of another challenge.
    run_ok(&[
        "challenge",
        &commitment,
        "--samples",
        "2",
        "--seed",
        &"08".repeat(32),
        "--out",
        &p("other.json"),
    ]);
    let a = verify(&["--challenge", &p("other.json"), "--opening", &p("op.json")]);
    let o = veritrace(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.code, 1, "{}", o.stdout);
    // A verifier running another model.
    let a = verify(&[
        "--challenge",
        &p("ch.json"),
        "--opening",
        &p("op.json"),
        "--model",
        "small",
    ]);
    rejected(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        "RecomputeFailed",
    );

    // Non-interactive with proof of work, two rounds.
    run_ok(&[
        "open",
        &trace,
        "--non-interactive",
        "--samples",
        "2",
        "--pow-bits",
        "4",
        "--rounds",
        "2",
        "--out",
        &p("ni"),
    ]);
    let ni = verify(&[
        "--non-interactive",
        "--samples",
        "2",
        "--pow-bits",
        "4",
        "--opening",
        &p("ni/opening-0.vtpm"),
        "--opening",
        &p("ni/opening-1.vtpm"),
    ]);
    assert_eq!(
        run_ok(&ni.iter().map(String::as_str).collect::<Vec<_>>()),
        "accept\n"
    );
    let ni = verify(&[
        "--non-interactive",
        "--samples",
        "2",
        "--pow-bits",
        "9",
        "--opening",
        &p("ni/opening-0.vtpm"),
    ]);
    rejected(
        &ni.iter().map(String::as_str).collect::<Vec<_>>(),
        "BadProofOfWork",
    );
}

#[test]
fn a_cheaper_setup_claimed_as_the_reference_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    run_ok(&[
        "prove",
        "--setup",
        "f32/attn=eager/quant=int4-g32",
        "--prompt-tokens",
        "8",
        "--output",
        "2",
        "--chunk",
        "4",
        "--out",
        &p("run"),
    ]);
    // The prover lies about its setup in the commitment.
    let c = std::fs::read_to_string(p("run/commitment.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&c).unwrap();
    v["statement"]["setup"] = hex::encode("f32/attn=eager").into();
    std::fs::write(p("lie.json"), v.to_string()).unwrap();
    // Challenge every cell of layer >= 1 is not needed: k = all cells.
    run_ok(&[
        "challenge",
        &p("lie.json"),
        "--samples",
        "100",
        "--seed",
        &"01".repeat(32),
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
    let o = veritrace(&[
        "verify",
        "--commitment",
        &p("lie.json"),
        "--challenge",
        &p("ch.json"),
        "--opening",
        &p("op.json"),
    ]);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.starts_with("reject"), "{}", o.stdout);
}

#[test]
fn malformed_inputs_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(p("garbage.json"), "{not json").unwrap();
    for args in [
        vec!["prove", "--model", "huge", "--out", &p("x")],
        vec!["prove", "--setup", "f32/attn=magic", "--out", &p("x")],
        vec!["prove", "--prompt", "1,x", "--out", &p("x")],
        vec!["prove", "--prompt", "99999", "--out", &p("x")],
        vec![
            "challenge",
            &p("garbage.json"),
            "--samples",
            "2",
            "--out",
            &p("c.json"),
        ],
        vec![
            "challenge",
            &p("missing.json"),
            "--samples",
            "2",
            "--out",
            &p("c.json"),
        ],
        vec![
            "open",
            &p("garbage.json"),
            "--challenge",
            &p("garbage.json"),
            "--out",
            &p("o.json"),
        ],
        vec![
            "verify",
            "--commitment",
            &p("garbage.json"),
            "--opening",
            &p("garbage.json"),
        ],
    ] {
        let o = veritrace(&args);
        assert_eq!(o.code, 2, "{args:?}: {}", o.stderr);
    }
    run_ok(&[
        "prove",
        "--prompt-tokens",
        "4",
        "--output",
        "1",
        "--chunk",
        "4",
        "--out",
        &p("run"),
    ]);
    let c = p("run/commitment.json");
    for args in [
        vec![
            "challenge",
            c.as_str(),
            "--samples",
            "2",
            "--seed",
            "abc",
            "--out",
            &p("c.json"),
        ],
        vec![
            "challenge",
            c.as_str(),
            "--samples",
            "2",
            "--strategy",
            "magic",
            "--out",
            &p("c.json"),
        ],
        vec![
            "verify",
            "--commitment",
            c.as_str(),
            "--opening",
            &p("garbage.json"),
        ],
        vec![
            "verify",
            "--commitment",
            c.as_str(),
            "--opening",
            &c,
            "--tolerance",
            &p("missing.json"),
        ],
    ] {
        let o = veritrace(&args);
        assert_eq!(o.code, 2, "{args:?}: {}", o.stderr);
    }
}

/// An encoder runs the protocol over files too: `prove` encodes the prompt (no output tokens,
/// bidirectional dependency), the verifier recomputes the challenged cells from every row of the
/// layer below, and a verifier with another model rejects.
#[test]
fn an_encoder_runs_the_protocol_over_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let (_, model_dir) = synthetic_bert::model("cli-verbs");
    let model = model_dir.display().to_string();
    // An encoder generates nothing.
    let o = veritrace(&[
        "prove",
        "--model",
        &model,
        "--output",
        "3",
        "--out",
        &p("x"),
    ]);
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("encoder"), "{}", o.stderr);
    let out = run_ok(&[
        "prove",
        "--model",
        &model,
        "--prompt-tokens",
        "20",
        "--chunk",
        "4",
        "--out",
        &p("run"),
    ]);
    assert!(out.starts_with("root "), "{out}");
    let (commitment, trace) = (p("run/commitment.json"), p("run/trace.safetensors"));
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&commitment).unwrap()).unwrap();
    assert_eq!(c["statement"]["output_tokens"], serde_json::json!([]));
    assert_eq!(c["statement"]["input_tokens"].as_array().unwrap().len(), 20);
    assert!(
        c["statement"]["dependency"]
            .to_string()
            .to_lowercase()
            .contains("bidirectional"),
        "{}",
        c["statement"]
    );
    run_ok(&[
        "challenge",
        &commitment,
        "--samples",
        "3",
        "--seed",
        &"05".repeat(32),
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
    ]);
    let verify = |m: &str| {
        veritrace(&[
            "verify",
            "--commitment",
            &commitment,
            "--challenge",
            &p("ch.json"),
            "--opening",
            &p("op.json"),
            "--model",
            m,
        ])
    };
    let o = verify(&model);
    assert_eq!((o.code, o.stdout.as_str()), (0, "accept\n"), "{}", o.stderr);
    // A verifier running the decoder instead.
    let o = verify("tiny");
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.starts_with("reject"), "{}", o.stdout);
    // Non-interactive, with proof of work.
    run_ok(&[
        "open",
        &trace,
        "--non-interactive",
        "--samples",
        "2",
        "--pow-bits",
        "4",
        "--out",
        &p("ni"),
    ]);
    assert_eq!(
        run_ok(&[
            "verify",
            "--commitment",
            &commitment,
            "--non-interactive",
            "--samples",
            "2",
            "--pow-bits",
            "4",
            "--opening",
            &p("ni/opening-0.vtpm"),
            "--model",
            &model,
        ]),
        "accept\n"
    );
    let _ = std::fs::remove_dir_all(model_dir);
}

/// A checkpoint the loader refuses (here a Mistral config over Llama weights, and a rope type it
/// does not compute) is an input error in every verb that loads a model: exit 2, the field
/// named once.
#[test]
fn a_refused_checkpoint_exits_2_naming_the_field_once() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    veritrace_model::LlamaModel::preset("tiny")
        .unwrap()
        .save(&ckpt)
        .unwrap();
    let config = ckpt.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let out = dir.path().join("run").display().to_string();
    let ckpt = ckpt.display().to_string();
    for (field, value, needle) in [
        ("model_type", serde_json::json!("gemma"), "model_type"),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
            "yarn",
        ),
    ] {
        let mut bad = v.clone();
        bad[field] = value;
        std::fs::write(&config, bad.to_string()).unwrap();
        for args in [
            vec![
                "prove", "--model", &ckpt, "--prompt", "1,2,3", "--out", &out,
            ],
            vec![
                "fingerprint",
                "--model",
                &ckpt,
                "--prompts",
                "1",
                "--tokens",
                "4",
            ],
            vec![
                "calibrate",
                "--model",
                &ckpt,
                "--honest",
                "f32/attn=eager/splitk=2",
                "--prompts",
                "200",
                "--samples",
                "2",
                "--target-fpr",
                "0.5",
                "--out",
                &out,
            ],
        ] {
            let o = veritrace(&args);
            assert_eq!(o.code, 2, "{args:?}: {}{}", o.stdout, o.stderr);
            assert_eq!(
                o.stderr.matches(needle).count(),
                1,
                "{args:?}: {}",
                o.stderr
            );
        }
    }
    v["model_type"] = serde_json::json!("llama");
    std::fs::write(&config, v.to_string()).unwrap();
    let o = veritrace(&[
        "prove", "--model", &ckpt, "--prompt", "1,2,3", "--out", &out,
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
}

/// `prove --text`: through the checkpoint's tokenizer.json, bound in the statement and checked
/// by `verify` (another text is rejected, exit 1); text for a model without a tokenizer and
/// `--chat` without a chat template exit 2.
#[test]
fn text_input_is_tokenized_bound_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    veritrace_model::LlamaModel::preset("tiny")
        .unwrap()
        .save(&ckpt)
        .unwrap();
    std::fs::write(
        ckpt.join("tokenizer.json"),
        include_str!("../../model/tests/fixtures/wordlevel-tokenizer.json"),
    )
    .unwrap();
    let ckpt = ckpt.display().to_string();
    let run = dir.path().join("run");
    let out = run.display().to_string();
    let stdout = run_ok(&[
        "prove",
        "--model",
        &ckpt,
        "--text",
        "the verifier checks a trace.",
        "--output",
        "3",
        "--out",
        &out,
    ]);
    assert!(
        stdout.contains("input tokens [0, 2, 3, 4, 5, 6, 10]"),
        "{stdout}"
    );
    let commitment = run.join("commitment.json");
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&commitment).unwrap()).unwrap();
    assert_eq!(
        c["statement"]["input_text"]["text"],
        "the verifier checks a trace."
    );
    let opened = dir.path().join("opened").display().to_string();
    let trace = run.join("trace.safetensors").display().to_string();
    run_ok(&[
        "open",
        &trace,
        "--non-interactive",
        "--samples",
        "4",
        "--out",
        &opened,
    ]);
    let opening = dir
        .path()
        .join("opened/opening-0.vtpm")
        .display()
        .to_string();
    let verify = |commitment: &str, model: &str| {
        veritrace(&[
            "verify",
            "--commitment",
            commitment,
            "--opening",
            &opening,
            "--non-interactive",
            "--samples",
            "4",
            "--model",
            model,
        ])
    };
    let commitment_s = commitment.display().to_string();
    assert_eq!(verify(&commitment_s, &ckpt).code, 0);
    // the verifier's preset has no tokenizer: it cannot check the text and rejects
    let o = verify(&commitment_s, "tiny");
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    // another text under the same tokens
    let mut forged = c.clone();
    forged["statement"]["input_text"]["text"] = "the verifier checks a trace".into();
    let forged_path = dir.path().join("forged.json");
    std::fs::write(&forged_path, forged.to_string()).unwrap();
    let o = verify(&forged_path.display().to_string(), &ckpt);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("tokenization"), "{}", o.stdout);
    // refused inputs
    let other = dir.path().join("other").display().to_string();
    for args in [
        vec![
            "prove",
            "--model",
            "tiny",
            "--text",
            "the trace",
            "--out",
            &other,
        ],
        vec![
            "prove",
            "--model",
            &ckpt,
            "--text",
            "the trace",
            "--chat",
            "--out",
            &other,
        ],
        vec![
            "prove", "--model", &ckpt, "--text", "x", "--prompt", "1,2", "--out", &other,
        ],
    ] {
        let o = veritrace(&args);
        assert_eq!(o.code, 2, "{args:?}: {}{}", o.stdout, o.stderr);
    }
}

/// `challenge` and `open` write the binary envelope by default and JSON with `--format json`;
/// `verify` reads either (and both verify alike). The binary opening carries the cell bytes as
/// they are: its size is the raw bytes opened plus the proof's digests and a few bytes of
/// framing per cell, about half the JSON's.
#[test]
fn binary_and_json_messages_verify_alike() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    run_ok(&[
        "prove",
        "--model",
        "small",
        "--prompt-tokens",
        "60",
        "--output",
        "4",
        "--chunk",
        "16",
        "--out",
        &p("run"),
    ]);
    let (commitment, trace) = (p("run/commitment.json"), p("run/trace.safetensors"));
    run_ok(&[
        "challenge",
        &commitment,
        "--samples",
        "4",
        "--out",
        &p("ch.vtpm"),
    ]);
    assert_eq!(&std::fs::read(p("ch.vtpm")).unwrap()[..4], b"VTPM");
    for (format, file) in [("binary", "op.vtpm"), ("json", "op.json")] {
        run_ok(&[
            "open",
            &trace,
            "--challenge",
            &p("ch.vtpm"),
            "--out",
            &p(file),
            "--format",
            format,
        ]);
        let out = run_ok(&[
            "verify",
            "--model",
            "small",
            "--commitment",
            &commitment,
            "--challenge",
            &p("ch.vtpm"),
            "--opening",
            &p(file),
        ]);
        assert_eq!(out, "accept\n", "{format}");
    }
    let binary = std::fs::metadata(p("op.vtpm")).unwrap().len();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("op.json")).unwrap()).unwrap();
    let cells = json["cells"].as_array().unwrap();
    let raw: u64 = cells
        .iter()
        .map(|c| c["data"].as_str().unwrap().len() as u64 / 2)
        .sum();
    let digests = json["proof"]["siblings"].as_array().unwrap().len() as u64;
    let framing = binary - raw - 32 * digests;
    assert!(
        binary >= raw + 32 * digests && framing <= 64 + 16 * cells.len() as u64,
        "binary {binary} bytes for {raw} raw bytes, {digests} digests, {} cells",
        cells.len()
    );
    let json_len = std::fs::metadata(p("op.json")).unwrap().len();
    assert!(
        2 * binary < json_len + 1024,
        "binary {binary}, JSON {json_len}"
    );
    // non-interactive: opening-<r>.vtpm by default, .json on request
    run_ok(&[
        "open",
        &trace,
        "--non-interactive",
        "--samples",
        "3",
        "--rounds",
        "2",
        "--out",
        &p("ni"),
    ]);
    for r in 0..2 {
        assert_eq!(
            &std::fs::read(p(&format!("ni/opening-{r}.vtpm"))).unwrap()[..4],
            b"VTPM"
        );
    }
    run_ok(&[
        "verify",
        "--model",
        "small",
        "--commitment",
        &commitment,
        "--non-interactive",
        "--samples",
        "3",
        "--opening",
        &p("ni/opening-0.vtpm"),
        "--opening",
        &p("ni/opening-1.vtpm"),
    ]);
    // a truncated binary opening is malformed input (exit 2), not a panic
    let bytes = std::fs::read(p("op.vtpm")).unwrap();
    std::fs::write(p("cut.vtpm"), &bytes[..bytes.len() / 2]).unwrap();
    let o = veritrace(&[
        "verify",
        "--model",
        "small",
        "--commitment",
        &commitment,
        "--challenge",
        &p("ch.vtpm"),
        "--opening",
        &p("cut.vtpm"),
    ]);
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
}

/// A prover on the batch-invariant kernels (`kernels=invariant`: generation with a KV cache,
/// the forward as one block) is verified by recompute, bit for bit, at a chunk size that is
/// not a compute tile of its.
#[test]
fn an_invariant_kernels_prover_is_verified_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let out = prove_open_verify(
        dir.path(),
        &[
            "--prompt",
            "5,9,2,7,1,3,8,8,4",
            "--output",
            "5",
            "--chunk",
            "3",
        ],
        "tiny",
        "8",
    );
    assert_eq!(out, "accept\n");
    // bf16 on the same kernels (every stored value rounded once to bf16)
    let bf16 = dir.path().join("bf16");
    std::fs::create_dir(&bf16).unwrap();
    let out = prove_open_verify_with(
        &bf16,
        "bf16/attn=eager/kernels=invariant",
        &[
            "--prompt",
            "5,9,2,7,1,3,8,8,4",
            "--output",
            "5",
            "--chunk",
            "3",
        ],
        "tiny",
        "8",
    );
    assert_eq!(out, "accept\n");
    // a setup the kernels do not implement is bad input
    let bad = dir.path().join("bad").display().to_string();
    let o = veritrace(&[
        "prove",
        "--setup",
        "f32/attn=tiled:16/kernels=invariant",
        "--out",
        &bad,
    ]);
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
}

/// `prove --model MODEL --setup f32/attn=eager/kernels=invariant` with `prove_args` into `dir`,
/// then a non-interactive `open` and `verify` of `samples` cells: what `verify` prints.
fn prove_open_verify(
    dir: &std::path::Path,
    prove_args: &[&str],
    model: &str,
    samples: &str,
) -> String {
    prove_open_verify_with(
        dir,
        "f32/attn=eager/kernels=invariant",
        prove_args,
        model,
        samples,
    )
}

/// [`prove_open_verify`] under `setup`.
fn prove_open_verify_with(
    dir: &std::path::Path,
    setup: &str,
    prove_args: &[&str],
    model: &str,
    samples: &str,
) -> String {
    let p = |name: &str| dir.join(name).display().to_string();
    let mut prove = vec!["prove", "--model", model, "--setup", setup];
    prove.extend_from_slice(prove_args);
    let run = p("run");
    prove.extend(["--out", &run]);
    run_ok(&prove);
    run_ok(&[
        "open",
        &p("run/trace.safetensors"),
        "--non-interactive",
        "--samples",
        samples,
        "--out",
        &p("ni"),
    ]);
    run_ok(&[
        "verify",
        "--model",
        model,
        "--commitment",
        &p("run/commitment.json"),
        "--non-interactive",
        "--samples",
        samples,
        "--opening",
        &p("ni/opening-0.vtpm"),
    ])
}

/// The BERT encoder on the invariant kernels over files: an all-MiniLM-L6-v2 prover at chunk 5
/// is verified exactly (skips where MiniLM is not installed).
#[test]
fn an_invariant_kernels_encoder_is_verified_exactly() {
    if veritrace_model::minilm_dir().is_none() {
        eprintln!("skipping: MiniLM not installed; run scripts/install-minilm.sh");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = prove_open_verify(
        dir.path(),
        &[
            "--prompt",
            "101,7592,2088,2003,1037,3231,1997,1996,4800,102",
            "--output",
            "0",
            "--chunk",
            "5",
        ],
        "minilm",
        "6",
    );
    assert_eq!(out, "accept\n");
}

/// `prove` keeps the hidden tree's leaf digests beside the trace (`trace.leaves`), and `open`
/// rebuilds the tree from them by default: the opening is byte for byte the one `--rehash`
/// gives, and verifies. A trace edited after `prove` in an opened cell, a corrupt or foreign
/// leaf file, and a non-finite opened value are refused (exit 2); `--rehash` opens the edited
/// trace as it is, which the verifier then rejects.
#[test]
fn open_reads_the_stored_leaf_digests() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    run_ok(&[
        "prove",
        "--prompt",
        "5,9,2,7,1,3,8,8,4",
        "--output",
        "3",
        "--chunk",
        "4",
        "--out",
        &p("run"),
    ]);
    let (commitment, trace) = (p("run/commitment.json"), p("run/trace.safetensors"));
    assert!(dir.path().join("run/trace.leaves").is_file());
    let open = |extra: &[&str], out: &str| {
        let mut args = vec!["open", &trace, "--non-interactive"];
        if !extra.contains(&"--samples") {
            args.extend(["--samples", "4"]);
        }
        args.extend_from_slice(extra);
        args.extend(["--out", out]);
        veritrace(&args)
    };
    assert_eq!(open(&[], &p("a")).code, 0);
    assert_eq!(open(&["--rehash"], &p("b")).code, 0);
    let (a, b) = (
        std::fs::read(dir.path().join("a/opening-0.vtpm")).unwrap(),
        std::fs::read(dir.path().join("b/opening-0.vtpm")).unwrap(),
    );
    assert_eq!(a, b, "the stored leaves give the rehashed opening");
    let verify = |opening: &str| {
        veritrace(&[
            "verify",
            "--commitment",
            &commitment,
            "--non-interactive",
            "--samples",
            "4",
            "--opening",
            opening,
        ])
    };
    assert_eq!(verify(&p("a/opening-0.vtpm")).code, 0);

    // every value of the trace edited after prove (the safetensors data follows the 8-byte
    // header length and the header): no opened cell hashes to its leaf any more
    let text = std::fs::read(&trace).unwrap();
    let data = 8 + u64::from_le_bytes(text[..8].try_into().unwrap()) as usize;
    let fill = |v: f32| {
        let mut t = text.clone();
        for c in t[data..].chunks_exact_mut(4) {
            c.copy_from_slice(&v.to_le_bytes());
        }
        std::fs::write(&trace, &t).unwrap();
    };
    fill(1.5);
    let o = open(&[], &p("c"));
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stderr.contains("does not hash to its leaf"),
        "{}",
        o.stderr
    );
    // rehashed, it opens as it is, and the verifier rejects it
    assert_eq!(open(&["--rehash"], &p("d")).code, 0);
    assert_eq!(verify(&p("d/opening-0.vtpm")).code, 1);
    // non-finite values in the opened cells
    fill(f32::NAN);
    let o = open(&[], &p("e"));
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("non-finite"), "{}", o.stderr);
    std::fs::write(&trace, &text).unwrap();

    // a corrupt leaf file, one of another trace, one given by path
    let leaves = dir.path().join("run/trace.leaves");
    let good = std::fs::read(&leaves).unwrap();
    let mut bad = good.clone();
    let at = bad.len() - 1;
    bad[at] ^= 1;
    std::fs::write(&leaves, &bad).unwrap();
    let o = open(&[], &p("f"));
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("leaf-digest"), "{}", o.stderr);
    std::fs::write(&leaves, &good[..good.len() - 32]).unwrap();
    assert_eq!(open(&[], &p("g")).code, 2);
    std::fs::write(&leaves, &good).unwrap();
    let moved = p("elsewhere.leaves");
    std::fs::rename(&leaves, &moved).unwrap();
    assert_eq!(open(&["--leaves", &moved], &p("h")).code, 0);
    assert_eq!(
        std::fs::read(dir.path().join("h/opening-0.vtpm")).unwrap(),
        a
    );
    assert_eq!(open(&["--leaves", &p("missing.leaves")], &p("i")).code, 2);
}

/// `open --out -` writes the opening to standard output and `verify --opening -` checks it as
/// it arrives on standard input: the two processes run as a pipe. A tampered or truncated
/// opening read as a stream gets the verdict (or the refusal, naming the file) it gets as a
/// file.
#[test]
fn an_opening_is_verified_as_it_streams_through_a_pipe() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    run_ok(&[
        "prove",
        "--prompt",
        "4,8,15,16,23,42",
        "--output",
        "4",
        "--chunk",
        "2",
        "--out",
        &p("run"),
    ]);
    let commitment = p("run/commitment.json");
    run_ok(&[
        "challenge",
        &commitment,
        "--samples",
        "4",
        "--seed",
        &"2a".repeat(32),
        "--out",
        &p("ch.vtpm"),
    ]);
    let bin = env!("CARGO_BIN_EXE_veritrace");
    let mut open = Command::new(bin)
        .args([
            "open",
            &p("run/trace.safetensors"),
            "--challenge",
            &p("ch.vtpm"),
            "--out",
            "-",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let verify = Command::new(bin)
        .args([
            "verify",
            "--commitment",
            &commitment,
            "--challenge",
            &p("ch.vtpm"),
            "--opening",
            "-",
        ])
        .stdin(open.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(open.wait().unwrap().success());
    assert_eq!(
        String::from_utf8_lossy(&verify.stdout),
        "accept\n",
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // the same opening as a file, then changed: one byte of its last cell, then cut short
    run_ok(&[
        "open",
        &p("run/trace.safetensors"),
        "--challenge",
        &p("ch.vtpm"),
        "--out",
        &p("o.vtpm"),
    ]);
    let bytes = std::fs::read(p("o.vtpm")).unwrap();
    let verify_file = |bytes: &[u8], stdin: bool| {
        if stdin {
            let mut child = Command::new(bin)
                .args([
                    "verify",
                    "--commitment",
                    &commitment,
                    "--challenge",
                    &p("ch.vtpm"),
                    "--opening",
                    "-",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(bytes).unwrap();
            let o = child.wait_with_output().unwrap();
            (
                o.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr),
            )
        } else {
            std::fs::write(p("t.vtpm"), bytes).unwrap();
            let o = veritrace(&[
                "verify",
                "--commitment",
                &commitment,
                "--challenge",
                &p("ch.vtpm"),
                "--opening",
                &p("t.vtpm"),
            ]);
            (o.code, o.stdout + &o.stderr)
        }
    };
    let mut flipped = bytes.clone();
    let at = flipped.len() - 200;
    flipped[at] ^= 0x40;
    for stdin in [false, true] {
        let (code, text) = verify_file(&flipped, stdin);
        assert_eq!(code, 1, "{text}");
        assert!(text.contains("reject"), "{text}");
        let (code, text) = verify_file(&bytes[..bytes.len() - 7], stdin);
        assert_eq!(code, 2, "{text}");
        let name = if stdin { "-" } else { "t.vtpm" };
        assert!(text.contains(name) && text.contains("opening"), "{text}");
    }
    // a JSON opening on standard input is decoded whole, with the same verdict
    let json = veritrace(&[
        "open",
        &p("run/trace.safetensors"),
        "--challenge",
        &p("ch.vtpm"),
        "--format",
        "json",
        "--out",
        "-",
    ]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    assert!(json.stdout.trim_start().starts_with('{'), "{}", json.stdout);
    let (code, text) = verify_file(json.stdout.as_bytes(), true);
    assert_eq!((code, text.as_str()), (0, "accept\n"), "{text}");
    // a device or FIFO path is refused, pointing at `-`
    let o = veritrace(&[
        "verify",
        "--commitment",
        &commitment,
        "--challenge",
        &p("ch.vtpm"),
        "--opening",
        "/dev/stdin",
    ]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("`--opening -`"), "{}", o.stderr);
    // only one opening can come from standard input, and --out - is for one opening
    let o = veritrace(&[
        "verify",
        "--commitment",
        &commitment,
        "--opening",
        "-",
        "--opening",
        "-",
    ]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    let o = veritrace(&[
        "open",
        &p("run/trace.safetensors"),
        "--non-interactive",
        "--samples",
        "2",
        "--out",
        "-",
    ]);
    assert_eq!(o.code, 2, "{}", o.stderr);
}
