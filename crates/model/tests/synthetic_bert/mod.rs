//! The small synthetic BERT the encoder tests build (2 layers, 24 wide, 3 heads, vocabulary 50,
//! 40 positions, seeded weights), written to a temporary directory so that the tests run
//! without the real MiniLM.
#![allow(dead_code)]

use std::path::PathBuf;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use safetensors::tensor::{Dtype as StDtype, TensorView};
use veritrace_model::BertModel;

pub const CONFIG: &str = r#"{
  "architectures": ["BertModel"], "model_type": "bert",
  "vocab_size": 50, "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 3,
  "intermediate_size": 40, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
  "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 40, "type_vocab_size": 2,
  "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
  "position_embedding_type": "absolute"
}"#;

/// Names and shapes of the synthetic model's tensors (plus a pooler and position_ids, which the
/// loader must ignore).
pub fn specs() -> Vec<(String, Vec<usize>)> {
    let (v, d, m, p) = (50, 24, 40, 40);
    let mut s = vec![
        ("embeddings.word_embeddings.weight".to_string(), vec![v, d]),
        ("embeddings.position_embeddings.weight".into(), vec![p, d]),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, d]),
        ("embeddings.LayerNorm.weight".into(), vec![d]),
        ("embeddings.LayerNorm.bias".into(), vec![d]),
        ("pooler.dense.weight".into(), vec![d, d]),
        ("pooler.dense.bias".into(), vec![d]),
    ];
    for i in 0..2 {
        for (name, shape) in [
            ("attention.self.query.weight", vec![d, d]),
            ("attention.self.query.bias", vec![d]),
            ("attention.self.key.weight", vec![d, d]),
            ("attention.self.key.bias", vec![d]),
            ("attention.self.value.weight", vec![d, d]),
            ("attention.self.value.bias", vec![d]),
            ("attention.output.dense.weight", vec![d, d]),
            ("attention.output.dense.bias", vec![d]),
            ("attention.output.LayerNorm.weight", vec![d]),
            ("attention.output.LayerNorm.bias", vec![d]),
            ("intermediate.dense.weight", vec![m, d]),
            ("intermediate.dense.bias", vec![m]),
            ("output.dense.weight", vec![d, m]),
            ("output.dense.bias", vec![d]),
            ("output.LayerNorm.weight", vec![d]),
            ("output.LayerNorm.bias", vec![d]),
        ] {
            s.push((format!("encoder.layer.{i}.{name}"), shape));
        }
    }
    s
}

/// Seeded weights: LayerNorm gains near 1, everything else uniform in ±0.5.
pub fn weights() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = ChaCha20Rng::from_seed([3; 32]);
    specs()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let data = (0..n)
                .map(|_| {
                    let r = (rng.next_u32() >> 8) as f32 / 16_777_216.0 - 0.5;
                    if name.ends_with("LayerNorm.weight") {
                        1.0 + 0.2 * r
                    } else {
                        r
                    }
                })
                .collect();
            (name, shape, data)
        })
        .collect()
}

/// Writes config.json and model.safetensors (tensor names with `prefix`) to a fresh directory.
pub fn write_model(tag: &str, prefix: &str, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("veritrace-bert-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let names: Vec<String> = tensors
        .iter()
        .map(|(n, _, _)| format!("{prefix}{n}"))
        .collect();
    let mut views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .zip(&names)
        .map(|(((_, shape, _), b), name)| {
            (
                name.as_str(),
                TensorView::new(StDtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    let ids: Vec<u8> = (0..40i64).flat_map(|v| v.to_le_bytes()).collect();
    views.push((
        "embeddings.position_ids",
        TensorView::new(StDtype::I64, vec![1, 40], &ids).unwrap(),
    ));
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    dir
}

/// The synthetic model, written under its own `tag` (tests run in parallel).
pub fn model(tag: &str) -> (BertModel, PathBuf) {
    let dir = write_model(tag, "", &weights());
    (BertModel::load(&dir).unwrap(), dir)
}

pub fn tokens(n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (1 + 7 * i * i + 3 * i) % 50)
        .collect()
}
