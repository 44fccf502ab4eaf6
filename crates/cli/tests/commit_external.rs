//! `veritrace commit TRACE --model ... --out RUN/`: an external prover's trace (here written by
//! hand as safetensors, as PyTorch would) is checked against the model and committed under its
//! statement, then opened and verified like a `prove` run; a trace that does not fit the model,
//! bad values or an existing output are refused with exit 2 and nothing is overwritten.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::veritrace;
use safetensors::tensor::{Dtype, TensorView};
use veritrace_model::{LlamaModel, Setup};

/// Writes `layers` (`[tokens, hidden]` each) as a trace file of `dtype` (F32, or BF16 by
/// truncation-free rounding of values that are exact in bf16).
fn write_trace(path: &Path, layers: &[Vec<f32>], tokens: usize, dtype: Dtype) {
    let bytes: Vec<Vec<u8>> = layers
        .iter()
        .map(|l| match dtype {
            Dtype::F32 => l.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::BF16 => l
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => unreachable!(),
        })
        .collect();
    let names: Vec<String> = (0..layers.len()).map(|l| format!("h.{l}")).collect();
    let views: Vec<(&str, TensorView)> = names
        .iter()
        .zip(&bytes)
        .map(|(n, b)| {
            let hidden = b.len() * 8 / tokens / dtype.bitsize();
            (
                n.as_str(),
                TensorView::new(dtype, vec![tokens, hidden], b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None::<HashMap<String, String>>, path).unwrap();
}

fn ids(t: &[u32]) -> String {
    t.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

#[test]
fn an_external_trace_is_committed_opened_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    // the "external" prover: the tiny decoder's own trace, written without a statement
    let model = LlamaModel::preset("tiny").unwrap();
    let setup: Setup = "f32/attn=eager".parse().unwrap();
    let prompt = [5u32, 9, 2, 7, 11];
    let (statement, trace) = model
        .prove_run(&setup, &prompt, 3, 4, veritrace_commit::HasherId::Blake3)
        .unwrap();
    write_trace(
        &dir.path().join("ext.safetensors"),
        &trace.layers,
        trace.tokens,
        Dtype::F32,
    );
    let out = veritrace(&[
        "commit",
        &d("ext.safetensors"),
        "--model",
        "tiny",
        "--prompt",
        &ids(&prompt),
        "--output-tokens",
        &ids(&statement.output_tokens),
        "--chunk",
        "4",
        "--engine",
        "hand-written 1.0",
        "--out",
        &d("run"),
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d("run/commitment.json")).unwrap()).unwrap();
    assert_eq!(c["statement"]["model_digest"], model.digest().to_string());
    assert_eq!(c["statement"]["engine"], "hand-written 1.0");
    assert_eq!(c["statement"]["dependency"], "causal");
    // the leaf digests beside the trace, which `open` below reads instead of hashing the trace
    assert!(dir.path().join("run/trace.leaves").is_file());
    let o = veritrace(&[
        "open",
        &d("run/trace.safetensors"),
        "--non-interactive",
        "--samples",
        "6",
        "--out",
        &d("opened"),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let verify = |commitment: &str, model: &str| {
        veritrace(&[
            "verify",
            "--commitment",
            commitment,
            "--opening",
            &d("opened/opening-0.vtpm"),
            "--non-interactive",
            "--samples",
            "6",
            "--model",
            model,
        ])
    };
    let v = verify(&d("run/commitment.json"), "tiny");
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
    // another model's verifier: the digest differs
    let v = verify(&d("run/commitment.json"), "small");
    assert_eq!(v.code, 1, "{}{}", v.stdout, v.stderr);

    // a bf16 trace is widened exactly and committed as F32
    let rounded: Vec<Vec<f32>> = trace
        .layers
        .iter()
        .map(|l| {
            l.iter()
                .map(|v| half::bf16::from_f32(*v).to_f32())
                .collect()
        })
        .collect();
    write_trace(
        &dir.path().join("bf16.safetensors"),
        &rounded,
        trace.tokens,
        Dtype::BF16,
    );
    let out = veritrace(&[
        "commit",
        &d("bf16.safetensors"),
        "--model",
        "tiny",
        "--prompt",
        &ids(&prompt),
        "--output-tokens",
        &ids(&statement.output_tokens),
        "--out",
        &d("run-bf16"),
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("widened to F32 exactly"),
        "{}",
        out.stdout
    );
    let (back, st) =
        veritrace_model::read_trace(&dir.path().join("run-bf16/trace.safetensors")).unwrap();
    assert_eq!(back.layers, rounded);
    assert!(st.is_some());
}

#[test]
fn a_trace_that_does_not_fit_the_model_is_refused_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let model = LlamaModel::preset("tiny").unwrap();
    let tokens = [5u32, 9, 2, 7];
    let trace = model
        .trace(&"f32/attn=eager".parse().unwrap(), &tokens, 4)
        .unwrap();
    write_trace(
        &dir.path().join("t.safetensors"),
        &trace.layers,
        4,
        Dtype::F32,
    );
    let mut nan = trace.layers.clone();
    nan[2][7] = f32::NAN;
    write_trace(&dir.path().join("nan.safetensors"), &nan, 4, Dtype::F32);
    let refused = |args: &[&str], needle: &str| {
        let o = veritrace(args);
        assert_eq!(o.code, 2, "{args:?}: {}{}", o.stdout, o.stderr);
        assert!(o.stderr.contains(needle), "{args:?}: {}", o.stderr);
    };
    let t = d("t.safetensors");
    let out = d("run");
    // layers, token rows, vocabulary, missing input, encoder output, NaN, bad setup
    refused(
        &[
            "commit", &t, "--model", "small", "--prompt", "5,9,2,7", "--out", &out,
        ],
        "hidden states",
    );
    refused(
        &[
            "commit", &t, "--model", "tiny", "--prompt", "5,9,2", "--out", &out,
        ],
        "token rows",
    );
    refused(
        &[
            "commit",
            &t,
            "--model",
            "tiny",
            "--prompt",
            "5,9,2,100000",
            "--out",
            &out,
        ],
        "vocabulary",
    );
    refused(
        &["commit", &t, "--model", "tiny", "--out", &out],
        "--prompt",
    );
    refused(
        &[
            "commit",
            &d("nan.safetensors"),
            "--model",
            "tiny",
            "--prompt",
            "5,9,2,7",
            "--out",
            &out,
        ],
        "non-finite",
    );
    refused(
        &[
            "commit",
            &t,
            "--model",
            "tiny",
            "--prompt",
            "5,9,2,7",
            "--setup",
            "f32/attn=nope",
            "--out",
            &out,
        ],
        "attention",
    );
    refused(
        &[
            "commit", &t, "--model", "tiny", "--text", "hello", "--out", &out,
        ],
        "tokenizer",
    );
    refused(
        &[
            "commit", &t, "--model", "tiny", "--prompt", "5,9,2,7", "--engine", "é", "--out", &out,
        ],
        "engine",
    );
    assert!(!dir.path().join("run/commitment.json").exists());
    // an existing run is never overwritten
    let ok = [
        "commit", &t, "--model", "tiny", "--prompt", "5,9,2,7", "--out", &out,
    ];
    assert_eq!(veritrace(&ok).code, 0);
    let before = std::fs::read(dir.path().join("run/commitment.json")).unwrap();
    refused(&ok, "exists");
    assert_eq!(
        std::fs::read(dir.path().join("run/commitment.json")).unwrap(),
        before
    );
    // the bare form (root only) is unchanged
    let o = veritrace(&["commit", &t, "--chunk", "4"]);
    assert_eq!(o.code, 0);
    assert!(o.stdout.starts_with("root "), "{}", o.stdout);
}
