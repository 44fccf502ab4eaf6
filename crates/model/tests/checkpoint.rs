//! Llama-style checkpoint directories: a saved model loads back bit for bit (same digest, same
//! trace), 16-bit and tied-embedding checkpoints load, and malformed directories get typed errors.

use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use veritrace_model::{HfLlamaConfig, LlamaModel, ModelError, NamedTensor, Setup};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("veritrace-ckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `tensors` to `path`, each converted to `dtype` (F32, F16 or BF16).
fn write(path: &Path, tensors: &[NamedTensor], dtype: Dtype) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| match dtype {
            Dtype::F32 => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F16 => d
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            Dtype::BF16 => d
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => unreachable!(),
        })
        .collect();
    let views: Vec<_> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| (n.as_str(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn write_config(dir: &Path, config: &HfLlamaConfig) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(config).unwrap(),
    )
    .unwrap();
}

#[test]
fn a_saved_model_loads_back_bit_for_bit() {
    let model = LlamaModel::preset("tiny").unwrap();
    let dir = temp_dir("roundtrip");
    model.save(&dir).unwrap();
    let back = LlamaModel::load(&dir).unwrap();
    assert_eq!(back.digest(), model.digest());
    assert_eq!(back.config(), model.config());
    let tokens: Vec<u32> = (0..19).map(|i| (i * 31 + 5) % 512).collect();
    let setup: Setup = "bf16/attn=tiled:4/quant=int8-channel".parse().unwrap();
    assert_eq!(
        back.trace(&setup, &tokens, 8).unwrap(),
        model.trace(&setup, &tokens, 8).unwrap()
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sixteen_bit_sharded_and_tied_checkpoints_load() {
    let model = LlamaModel::preset("tiny").unwrap();
    let tensors = model.named_tensors().unwrap();
    let config = HfLlamaConfig::from_config(model.config());
    for dtype in [Dtype::BF16, Dtype::F16] {
        let dir = temp_dir(&format!("{dtype:?}"));
        write_config(&dir, &config);
        // Two shards with an index.
        let (a, b) = tensors.split_at(tensors.len() / 2);
        write(&dir.join("model-00001-of-00002.safetensors"), a, dtype);
        write(&dir.join("model-00002-of-00002.safetensors"), b, dtype);
        let map: serde_json::Map<String, serde_json::Value> = tensors
            .iter()
            .enumerate()
            .map(|(i, (n, _, _))| {
                let shard = if i < a.len() { 1 } else { 2 };
                (
                    n.clone(),
                    format!("model-0000{shard}-of-00002.safetensors").into(),
                )
            })
            .collect();
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            serde_json::json!({ "weight_map": map }).to_string(),
        )
        .unwrap();
        let loaded = LlamaModel::load(&dir).unwrap();
        let round = |v: f32| match dtype {
            Dtype::BF16 => half::bf16::from_f32(v).to_f32(),
            _ => half::f16::from_f32(v).to_f32(),
        };
        for ((n, _, want), (m, _, got)) in tensors.iter().zip(loaded.named_tensors().unwrap()) {
            assert_eq!(*n, m);
            assert!(want.iter().zip(&got).all(|(w, g)| round(*w) == *g), "{n}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
    // Tied embeddings: no lm_head tensor.
    let dir = temp_dir("tied");
    write_config(
        &dir,
        &HfLlamaConfig {
            tie_word_embeddings: true,
            ..config.clone()
        },
    );
    let untied: Vec<_> = tensors
        .iter()
        .filter(|(n, _, _)| n != "lm_head.weight")
        .cloned()
        .collect();
    write(&dir.join("model.safetensors"), &untied, Dtype::F32);
    let loaded = LlamaModel::load(&dir).unwrap();
    let named = loaded.named_tensors().unwrap();
    assert_eq!(named.last().unwrap().2, named[0].2);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn malformed_checkpoints_get_typed_errors() {
    let model = LlamaModel::preset("tiny").unwrap();
    let tensors = model.named_tensors().unwrap();
    let config = HfLlamaConfig::from_config(model.config());

    let dir = temp_dir("bad");
    assert!(matches!(LlamaModel::load(&dir), Err(ModelError::Io { .. })));
    std::fs::write(dir.join("config.json"), "{not json").unwrap();
    assert!(matches!(
        LlamaModel::load(&dir),
        Err(ModelError::Checkpoint { .. })
    ));
    std::fs::write(dir.join("config.json"), "[1, 2]").unwrap();
    assert!(matches!(
        LlamaModel::load(&dir),
        Err(ModelError::InvalidConfig(_))
    ));
    write_config(&dir, &config);
    assert!(matches!(
        LlamaModel::load(&dir),
        Err(ModelError::Checkpoint { .. })
    ));
    for (what, bad) in [
        (
            "gelu",
            HfLlamaConfig {
                hidden_act: "gelu".into(),
                ..config.clone()
            },
        ),
        (
            "rope scaling",
            HfLlamaConfig {
                rope_scaling: Some(serde_json::json!({"type": "linear", "factor": 2.0})),
                ..config.clone()
            },
        ),
        (
            "head_dim",
            HfLlamaConfig {
                head_dim: Some(7),
                ..config.clone()
            },
        ),
        (
            "zero layers",
            HfLlamaConfig {
                num_hidden_layers: 0,
                ..config.clone()
            },
        ),
    ] {
        write_config(&dir, &bad);
        write(&dir.join("model.safetensors"), &tensors, Dtype::F32);
        assert!(
            matches!(LlamaModel::load(&dir), Err(ModelError::InvalidConfig(_))),
            "{what}"
        );
    }
    write_config(&dir, &config);
    // A missing tensor, a mis-shaped one, a NaN, an extra one, an integer dtype.
    let mut cases: Vec<Vec<NamedTensor>> = Vec::new();
    cases.push(tensors[1..].to_vec());
    let mut shaped = tensors.clone();
    shaped[2].1 = vec![shaped[2].2.len()];
    cases.push(shaped);
    let mut nan = tensors.clone();
    nan[3].2[5] = f32::NAN;
    cases.push(nan);
    let mut extra = tensors.clone();
    extra.push(("model.layers.99.x.weight".into(), vec![1], vec![0.0]));
    cases.push(extra);
    for (i, case) in cases.iter().enumerate() {
        write(&dir.join("model.safetensors"), case, Dtype::F32);
        assert!(
            matches!(LlamaModel::load(&dir), Err(ModelError::Checkpoint { .. })),
            "case {i}"
        );
    }
    std::fs::write(dir.join("model.safetensors"), b"garbage").unwrap();
    assert!(matches!(
        LlamaModel::load(&dir),
        Err(ModelError::Checkpoint { .. })
    ));
    // A shard index pointing outside the directory.
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"lm_head.weight": "../evil.safetensors"}}"#,
    )
    .unwrap();
    assert!(matches!(
        LlamaModel::load(&dir),
        Err(ModelError::Checkpoint { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();
}
