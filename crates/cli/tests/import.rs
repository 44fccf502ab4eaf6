//! `veritrace import`: hidden states saved the way transformers and vLLM save them become a
//! trace file that `commit --model` commits and `verify` accepts; a decoder's post-norm last
//! entry, missing layers, token ids that disagree with the statement, a file that does not
//! decompress, and an existing output are refused with exit 2.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::veritrace;
use safetensors::tensor::{Dtype, TensorView};
use veritrace_model::{LlamaModel, Model, Setup};

/// Writes `tensors` (name, dtype, shape, little-endian bytes) as safetensors.
fn write(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None::<HashMap<String, String>>, path).unwrap();
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn ids(t: &[u32]) -> String {
    t.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// transformers' last decoder entry: RMSNorm(h_L) times the gain (eps 1e-5, as tiny's).
fn post_norm(h: &[f32], hidden: usize, gain: &[f32]) -> Vec<f32> {
    h.chunks(hidden)
        .flat_map(|r| {
            let ms = r.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / hidden as f64;
            let inv = 1.0 / (ms + 1e-5).sqrt();
            r.iter()
                .zip(gain)
                .map(move |(x, g)| (f64::from(*x) * inv) as f32 * g)
        })
        .collect()
}

#[test]
fn transformers_hidden_states_are_imported_committed_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let model = LlamaModel::preset("tiny").unwrap();
    let setup: Setup = "f32/attn=eager".parse().unwrap();
    let prompt = [5u32, 9, 2, 7, 11, 3];
    let (statement, trace) = model
        .prove_run(&setup, &prompt, 3, 4, veritrace_commit::HasherId::Blake3)
        .unwrap();
    let (t, h, last) = (trace.tokens, trace.hidden, trace.layers.len() - 1);
    let all: Vec<u32> = prompt
        .iter()
        .chain(&statement.output_tokens)
        .copied()
        .collect();
    let input_ids: Vec<u8> = all
        .iter()
        .flat_map(|x| i64::from(*x).to_le_bytes())
        .collect();
    // output_hidden_states as transformers gives it: [1, T, d] each, the last one post-norm
    let gain = Model::final_norm_gain(&model).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = trace
        .layers
        .iter()
        .enumerate()
        .map(|(l, v)| {
            let v = if l == last {
                post_norm(v, h, &gain)
            } else {
                v.clone()
            };
            (
                format!("hidden_states.{l}"),
                Dtype::F32,
                vec![1, t, h],
                f32s(&v),
            )
        })
        .collect();
    tensors.push((
        "input_ids".into(),
        Dtype::I64,
        vec![1, t],
        input_ids.clone(),
    ));
    write(&dir.path().join("post.safetensors"), &tensors);
    let import = |file: &str, out: &str| {
        veritrace(&[
            "import",
            "--from",
            "transformers",
            file,
            "--model",
            "tiny",
            "--out",
            out,
        ])
    };
    let o = import(&d("post.safetensors"), &d("x.safetensors"));
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stderr.contains("final norm") && o.stderr.contains("pre_norm"),
        "{}",
        o.stderr
    );
    assert!(!dir.path().join("x.safetensors").exists());
    // with the norm's input captured as pre_norm
    tensors.push((
        "pre_norm".into(),
        Dtype::F32,
        vec![1, t, h],
        f32s(&trace.layers[last]),
    ));
    write(&dir.path().join("hs.safetensors"), &tensors);
    let o = import(&d("hs.safetensors"), &d("trace.safetensors"));
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("from pre_norm"), "{}", o.stdout);
    // an existing output is never overwritten
    let o = import(&d("hs.safetensors"), &d("trace.safetensors"));
    assert_eq!(o.code, 2);
    // commit checks the carried token ids against the statement
    let commit = |prompt: &str, out: &str| {
        veritrace(&[
            "commit",
            &d("trace.safetensors"),
            "--model",
            "tiny",
            "--prompt",
            prompt,
            "--output-tokens",
            &ids(&statement.output_tokens),
            "--chunk",
            "4",
            "--out",
            out,
        ])
    };
    let o = commit("5,9,2,7,11,4", &d("bad-run"));
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("token_ids"), "{}", o.stderr);
    let o = commit(&ids(&prompt), &d("run"));
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert_eq!(
        veritrace(&[
            "open",
            &d("run/trace.safetensors"),
            "--non-interactive",
            "--samples",
            "6",
            "--out",
            &d("opened"),
        ])
        .code,
        0
    );
    let v = veritrace(&[
        "verify",
        "--commitment",
        &d("run/commitment.json"),
        "--opening",
        &d("opened/opening-0.vtpm"),
        "--non-interactive",
        "--samples",
        "6",
        "--model",
        "tiny",
    ]);
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
    // a missing layer is named
    let partial: Vec<_> = tensors
        .iter()
        .filter(|(n, ..)| n != "hidden_states.2")
        .cloned()
        .collect();
    write(&dir.path().join("partial.safetensors"), &partial);
    let o = import(&d("partial.safetensors"), &d("p.safetensors"));
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("[2]"), "{}", o.stderr);
}

#[test]
fn vllm_files_are_imported_in_both_layouts_and_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let model = LlamaModel::preset("tiny").unwrap();
    // 6 tokens and 5 hidden states: the two layouts are told apart by token_ids' length (with
    // as many tokens as layers the current connector's [tokens, layers, hidden] is assumed)
    let tokens = [5u32, 9, 2, 7, 11, 1];
    let trace = model
        .trace(&"f32/attn=eager".parse().unwrap(), &tokens, 4)
        .unwrap();
    let (t, h, n) = (trace.tokens, trace.hidden, trace.layers.len());
    assert_ne!(t, n);
    let bf16 = |v: f32| half::bf16::from_f32(v);
    // [tokens, layers, hidden] (the current connector) and [layers, tokens, hidden] (older)
    let mut token_major = Vec::new();
    for p in 0..t {
        for l in 0..n {
            token_major.extend(trace.layers[l][p * h..(p + 1) * h].iter().map(|v| bf16(*v)));
        }
    }
    let layer_major: Vec<half::bf16> = trace.layers.iter().flatten().map(|v| bf16(*v)).collect();
    let ids: Vec<u8> = tokens
        .iter()
        .flat_map(|x| i64::from(*x).to_le_bytes())
        .collect();
    let bytes = |v: &[half::bf16]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let layers = (0..n).map(|l| l.to_string()).collect::<Vec<_>>().join(",");
    for (name, shape, data) in [
        ("tm", vec![t, n, h], bytes(&token_major)),
        ("lm", vec![n, t, h], bytes(&layer_major)),
    ] {
        let file = dir.path().join(format!("{name}.safetensors"));
        write(
            &file,
            &[
                ("hidden_states".into(), Dtype::BF16, shape, data),
                ("token_ids".into(), Dtype::I64, vec![t], ids.clone()),
            ],
        );
        let out = d(&format!("{name}-trace.safetensors"));
        let o = veritrace(&[
            "import",
            "--from",
            "vllm",
            &file.display().to_string(),
            "--model",
            "tiny",
            "--layers",
            &layers,
            "--out",
            &out,
        ]);
        assert_eq!(o.code, 0, "{name}: {}{}", o.stdout, o.stderr);
        let (back, _) = veritrace_model::read_trace(Path::new(&out)).unwrap();
        for l in 0..n {
            let want: Vec<f32> = trace.layers[l].iter().map(|v| bf16(*v).to_f32()).collect();
            assert_eq!(back.layers[l], want, "{name}: h.{l}");
        }
    }
    // zstd-compressed, as the online connector writes it
    let raw = std::fs::read(dir.path().join("tm.safetensors")).unwrap();
    let zst = ruzstd::encoding::compress_to_vec(
        raw.as_slice(),
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    std::fs::write(dir.path().join("tm.safetensors.zst"), &zst).unwrap();
    let run = |file: &str, layers: &str, out: &str| {
        veritrace(&[
            "import", "--from", "vllm", file, "--model", "tiny", "--layers", layers, "--out", out,
        ])
    };
    let o = run(&d("tm.safetensors.zst"), &layers, &d("z.safetensors"));
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert_eq!(
        veritrace_model::read_trace(&dir.path().join("z.safetensors"))
            .unwrap()
            .0,
        veritrace_model::read_trace(&dir.path().join("tm-trace.safetensors"))
            .unwrap()
            .0
    );
    // refusals: a corrupt stream, layer ids that miss some layers, no --layers
    std::fs::write(
        dir.path().join("bad.safetensors.zst"),
        &zst[..zst.len() / 2],
    )
    .unwrap();
    let o = run(&d("bad.safetensors.zst"), &layers, &d("b.safetensors"));
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    let o = run(&d("tm.safetensors"), "0,1,2,3,7", &d("m.safetensors"));
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("[4]"), "{}", o.stderr);
    let o = veritrace(&[
        "import",
        "--from",
        "vllm",
        &d("tm.safetensors"),
        "--model",
        "tiny",
        "--out",
        &d("n.safetensors"),
    ]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("--layers"), "{}", o.stderr);
}
