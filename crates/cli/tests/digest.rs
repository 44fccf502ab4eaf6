//! `veritrace digest` is the engine-independent model digest of specs/model-digest.md: the
//! independent Python reference (specs/reference/model_digest_ref.py, from the files alone)
//! computes the same value for Llama checkpoints in f32 and bf16 storage, tied heads, Llama-3
//! rope scaling, and the installed MiniLM; a preset and its saved checkpoint agree.

mod common;

use std::path::Path;
use std::process::Command;

use common::veritrace;
use veritrace_model::{LlamaModel, NamedTensor};

const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../specs/reference/model_digest_ref.py"
);

/// The Python reference's digest of `dir`, or `None` when python3 with blake3 is missing.
fn reference(dir: &Path) -> Option<String> {
    let out = Command::new("python3")
        .arg(REFERENCE)
        .arg(dir)
        .output()
        .ok()?;
    if out.status.code() == Some(2) {
        return None;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout)[..64].to_string())
}

fn ours(model: &str) -> String {
    let o = veritrace(&["digest", model]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.ends_with(&format!("  {model}\n")), "{}", o.stdout);
    o.stdout[..64].to_string()
}

/// bf16 of an f32, rounded to nearest even (the value a bf16 checkpoint stores).
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

fn write_bf16(path: &Path, tensors: &[NamedTensor]) {
    use safetensors::tensor::TensorView;
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|v| bf16_bits(*v).to_le_bytes()).collect())
        .collect();
    let views: Vec<_> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (
                n.as_str(),
                TensorView::new(safetensors::Dtype::BF16, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

#[test]
fn the_digest_matches_the_independent_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = LlamaModel::preset("tiny").unwrap();
    let f32_dir = tmp.path().join("f32");
    tiny.save(&f32_dir).unwrap();
    let f32_path = f32_dir.display().to_string();
    // A preset and its checkpoint: one model, one digest.
    assert_eq!(ours("tiny"), ours(&f32_path));

    let bf16_dir = tmp.path().join("bf16");
    tiny.save(&bf16_dir).unwrap();
    write_bf16(
        &bf16_dir.join("model.safetensors"),
        &tiny.named_tensors().unwrap(),
    );
    let tied_dir = tmp.path().join("tied");
    tiny.save(&tied_dir).unwrap();
    let mut tensors = tiny.named_tensors().unwrap();
    tensors.retain(|(n, _, _)| n != "lm_head.weight");
    write_bf16(&tied_dir.join("model.safetensors"), &tensors);
    edit_config(&tied_dir, |v| v["tie_word_embeddings"] = true.into());
    let llama3_dir = tmp.path().join("llama3");
    tiny.save(&llama3_dir).unwrap();
    edit_config(&llama3_dir, |v| {
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_scaling"] = serde_json::Value::Null;
        v["rope_parameters"] = serde_json::json!({
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64
        });
    });
    let mut dirs = vec![f32_dir, bf16_dir, tied_dir, llama3_dir];
    if let Some(m) = veritrace_model::minilm_dir() {
        dirs.push(m);
    } else {
        eprintln!(
            "MiniLM not installed (scripts/install-minilm.sh): checking the Llama cases only"
        );
    }
    let digests: Vec<String> = dirs
        .iter()
        .map(|d| ours(&d.display().to_string()))
        .collect();
    // Storage type, the tie and the rope scaling each change the model (bf16 rounds the values).
    for i in 0..4 {
        for j in 0..i {
            assert_ne!(digests[i], digests[j], "{i} {j}");
        }
    }
    let Some(_) = reference(&dirs[0]) else {
        eprintln!(
            "skipping the reference comparison: python3 with the blake3 package is missing \
             (pip install blake3)"
        );
        return;
    };
    for (dir, digest) in dirs.iter().zip(&digests) {
        assert_eq!(
            reference(dir).unwrap(),
            *digest,
            "{}: the Python reference disagrees",
            dir.display()
        );
    }
}
