//! The BERT encoder on a small synthetic model written to a temporary directory (so these tests
//! run without the real MiniLM): loading with and without the `bert.` prefix, typed errors for
//! bad files, bitwise per-cell recompute, masks, agreement with candle-transformers' BertModel,
//! and the protocol's Recompute.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert as ct;
use veritrace_commit::HasherId;
use veritrace_model::{BertModel, CellInputs, ModelError, Setup, Trace};
use veritrace_protocol::{ProtocolError, Recompute};

mod synthetic_bert;

use synthetic_bert::{model, tokens, weights, write_model, CONFIG};

fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert!(
        got.iter()
            .map(|v| v.to_bits())
            .eq(want.iter().map(|v| v.to_bits())),
        "{what}: not bitwise equal"
    );
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn rows(t: &Trace, layer: usize, r: std::ops::Range<usize>) -> &[f32] {
    &t.layers[layer][r.start * t.hidden..r.end * t.hidden]
}

#[test]
fn loads_with_and_without_the_bert_prefix_to_the_same_digest() {
    let (m, dir) = model("prefix-plain");
    let prefixed = write_model("prefixed", "bert.", &weights());
    let p = BertModel::load(&prefixed).unwrap();
    assert_eq!(m.digest(), p.digest());
    assert_eq!(m.config().head_dim(), 8);
    let t = tokens(13);
    let a = m.trace(&Setup::F32_EAGER, &t, 4).unwrap();
    let b = p.trace(&Setup::F32_EAGER, &t, 4).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.layers.len(), 3);
    assert_eq!((a.tokens, a.hidden), (13, 24));
    // other weights, other digest
    let mut w = weights();
    w[0].2[5] += 1e-3;
    let other_dir = write_model("other", "", &w);
    assert_ne!(BertModel::load(&other_dir).unwrap().digest(), m.digest());
    for d in [dir, prefixed, other_dir] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn bad_model_files_give_typed_errors() {
    let missing = Path::new("/nonexistent/veritrace/minilm");
    assert!(matches!(
        BertModel::load(missing),
        Err(ModelError::Io { .. })
    ));

    // a missing tensor
    let w: Vec<_> = weights()
        .into_iter()
        .filter(|(n, _, _)| n != "encoder.layer.1.output.dense.bias")
        .collect();
    let dir = write_model("missing", "", &w);
    match BertModel::load(&dir) {
        Err(ModelError::MissingTensor { name, .. }) => {
            assert_eq!(name, "encoder.layer.1.output.dense.bias")
        }
        other => panic!("{other:?}"),
    }
    // a wrong shape
    let mut w = weights();
    let i = w
        .iter()
        .position(|(n, _, _)| n == "encoder.layer.0.intermediate.dense.weight")
        .unwrap();
    w[i].1 = vec![24, 40];
    let dir = write_model("shape", "", &w);
    assert!(matches!(
        BertModel::load(&dir),
        Err(ModelError::TensorShape { expected, got, .. }) if expected == [40, 24] && got == [24, 40]
    ));
    // a non-finite weight
    let mut w = weights();
    w[3].2[7] = f32::NAN;
    let dir = write_model("nan", "", &w);
    assert!(matches!(
        BertModel::load(&dir),
        Err(ModelError::NonFiniteWeight { index: 7, .. })
    ));
    // a truncated weights file, a missing weights file
    let dir = write_model("trunc", "", &weights());
    let f = dir.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        BertModel::load(&dir),
        Err(ModelError::WeightsFile { .. })
    ));
    std::fs::remove_file(&f).unwrap();
    assert!(matches!(BertModel::load(&dir), Err(ModelError::Io { .. })));
    // configs the encoder cannot run
    for (from, to) in [
        (r#""hidden_act": "gelu""#, r#""hidden_act": "gelu_new""#),
        (r#""num_attention_heads": 3"#, r#""num_attention_heads": 5"#),
        (r#""layer_norm_eps": 1e-12"#, r#""layer_norm_eps": 0"#),
        (r#""hidden_size": 24"#, r#""hidden_size": "24""#),
        (
            r#""position_embedding_type": "absolute""#,
            r#""position_embedding_type": "relative_key""#,
        ),
    ] {
        let dir = write_model("config", "", &weights());
        std::fs::write(dir.join("config.json"), CONFIG.replace(from, to)).unwrap();
        assert!(
            matches!(BertModel::load(&dir), Err(ModelError::InvalidConfig(_))),
            "{to}"
        );
    }
    for tag in ["missing", "shape", "nan", "trunc", "config"] {
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("veritrace-bert-{tag}-{}", std::process::id())),
        );
    }
}

#[test]
fn every_cell_recomputed_alone_is_bitwise_the_trace() {
    let (m, dir) = model("cells");
    let s = Setup::F32_EAGER;
    for (n, tile) in [(13, 4), (16, 4), (7, 8), (1, 3), (21, 5)] {
        let t = tokens(n);
        let trace = m.trace(&s, &t, tile).unwrap();
        let chunks = n.div_ceil(tile);
        for j in 0..chunks {
            let r = j * tile..((j + 1) * tile).min(n);
            let got = m
                .recompute_cell(&s, tile, 0, j, CellInputs::Tokens(&t))
                .unwrap();
            assert_bits_eq(&got, rows(&trace, 0, r.clone()), "embeddings");
            for l in 1..trace.layers.len() {
                let got = m
                    .recompute_cell(&s, tile, l, j, CellInputs::Hidden(&trace.layers[l - 1]))
                    .unwrap();
                assert_bits_eq(
                    &got,
                    rows(&trace, l, r.clone()),
                    &format!("n {n} tile {tile} cell ({l}, {j})"),
                );
            }
        }
        // another chunk size changes the arithmetic by rounding noise only
        let whole = m.trace(&s, &t, n).unwrap();
        for l in 0..trace.layers.len() {
            assert!(max_abs(&whole.layers[l], &trace.layers[l]) < 1e-5);
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn masked_keys_get_no_attention() {
    let (m, dir) = model("mask");
    let s = Setup::F32_EAGER;
    let t = tokens(14);
    // positions 11..14 masked, tiles of 8: the same two tiles of keys as the 11-token run
    let mut mask = vec![1; 14];
    mask[11..].fill(0);
    let masked = m.trace_masked(&s, &t, &mask, 8).unwrap();
    let short = m.trace(&s, &t[..11], 8).unwrap();
    for l in 0..masked.layers.len() {
        assert_bits_eq(
            rows(&masked, l, 0..11),
            &short.layers[l],
            &format!("layer {l}"),
        );
    }
    // the masked positions still get rows, which a cell recompute reproduces
    let got = m
        .recompute_cell_masked(&s, 8, 2, 1, CellInputs::Hidden(&masked.layers[1]), &mask)
        .unwrap();
    assert_bits_eq(&got, rows(&masked, 2, 8..14), "masked cell");
    // a mask is checked
    for bad in [vec![1; 13], vec![0; 14], {
        let mut b = vec![1; 14];
        b[2] = 2;
        b
    }] {
        assert!(m.trace_masked(&s, &t, &bad, 8).is_err());
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_input_gives_typed_errors() {
    let (m, dir) = model("input");
    let s = Setup::F32_EAGER;
    let t = tokens(10);
    let trace = m.trace(&s, &t, 4).unwrap();
    assert!(matches!(
        m.trace(&s, &[1, 50], 4),
        Err(ModelError::TokenOutOfRange {
            position: 1,
            token: 50,
            ..
        })
    ));
    assert!(matches!(
        m.trace(&s, &tokens(41), 4),
        Err(ModelError::SequenceTooLong {
            tokens: 41,
            max: 40
        })
    ));
    assert!(matches!(
        m.trace(&s, &[], 4),
        Err(ModelError::InvalidArgument(_))
    ));
    assert!(matches!(
        m.trace(&s, &t, 0),
        Err(ModelError::InvalidArgument(_))
    ));
    let h = &trace.layers[1];
    // chunk beyond the rows, ragged rows, NaN, tokens for a hidden layer and vice versa
    assert!(m
        .recompute_cell(&s, 4, 2, 3, CellInputs::Hidden(h))
        .is_err());
    assert!(matches!(
        m.recompute_cell(&s, 4, 2, 0, CellInputs::Hidden(&h[..h.len() - 1])),
        Err(ModelError::WrongLength { .. })
    ));
    let mut nan = h.clone();
    nan[30] = f32::NAN;
    assert!(matches!(
        m.recompute_cell(&s, 4, 2, 0, CellInputs::Hidden(&nan)),
        Err(ModelError::NonFinite { index: 30, .. })
    ));
    assert!(m
        .recompute_cell(&s, 4, 1, 0, CellInputs::Tokens(&t))
        .is_err());
    assert!(m
        .recompute_cell(&s, 4, 0, 0, CellInputs::Hidden(h))
        .is_err());
    assert!(m
        .recompute_cell(&s, 4, 3, 0, CellInputs::Hidden(h))
        .is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

/// candle-transformers' BertModel on the same files, `[1, T]` input, token type 0.
fn candle_transformers_forward(dir: &Path, t: &[u32], mask: Option<&[u32]>) -> Vec<f32> {
    let config: ct::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu).unwrap();
    let model = ct::BertModel::load(vb, &config).unwrap();
    let ids = Tensor::new(t, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let types = ids.zeros_like().unwrap();
    let mask = mask.map(|m| Tensor::new(m, &Device::Cpu).unwrap().unsqueeze(0).unwrap());
    model
        .forward(&ids, &types, mask.as_ref())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn agrees_with_candle_transformers_bert() {
    let (m, dir) = model("candle");
    let t = tokens(19);
    let ours = m.trace(&Setup::F32_EAGER, &t, 8).unwrap();
    let theirs = candle_transformers_forward(&dir, &t, None);
    let diff = max_abs(ours.layers.last().unwrap(), &theirs);
    eprintln!("synthetic BERT, 19 tokens: max |ours - candle-transformers| = {diff:e}");
    assert!(diff < 1e-5, "{diff}");
    let mut mask = vec![1; 19];
    mask[15..].fill(0);
    let ours = m.trace_masked(&Setup::F32_EAGER, &t, &mask, 8).unwrap();
    let theirs = candle_transformers_forward(&dir, &t, Some(&mask));
    let diff = max_abs(ours.layers.last().unwrap(), &theirs);
    assert!(diff < 1e-5, "masked: {diff}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn recompute_trait_serves_an_encoder_statement() {
    let (m, dir) = model("recompute");
    let t = tokens(10);
    let (statement, trace) = m
        .prove_encode(&Setup::F32_EAGER, &t, 4, HasherId::Blake3)
        .unwrap();
    assert!(statement.output_tokens.is_empty());
    assert_eq!(statement.geometry.layers, 3);
    let bytes = trace.layer_bytes();
    let row = trace.hidden * 4;
    assert_eq!(
        m.layer(&statement, 2, 4..8, 0..10, &bytes[1]).unwrap(),
        bytes[2][4 * row..8 * row]
    );
    assert_eq!(m.embed(&statement, 8..10).unwrap(), bytes[0][8 * row..]);
    let engine = |r: veritrace_protocol::Result<Vec<u8>>| {
        assert!(matches!(r, Err(ProtocolError::Engine(_))), "{r:?}");
    };
    // causal-style input rows, wrong lengths, rows that are not one cell
    engine(m.layer(&statement, 2, 4..8, 0..8, &bytes[1][..8 * row]));
    engine(m.layer(&statement, 2, 4..8, 0..10, &bytes[1][..10 * row - 4]));
    engine(m.layer(&statement, 2, 2..6, 0..10, &bytes[1]));
    engine(m.embed(&statement, 8..9));
    assert!(matches!(
        m.next_token(&statement, 9, &bytes[2][9 * row..]),
        Err(ProtocolError::Engine(_))
    ));
    // statements the encoder cannot serve
    let mut causal = statement.clone();
    causal.dependency = veritrace_protocol::Dependency::Causal;
    let mut other = statement.clone();
    other.model_digest = veritrace_commit::Digest([9; 32]);
    let mut setup = statement.clone();
    setup.setup = b"f32/attn=eager/order=decode".to_vec();
    for s in [causal, other, setup] {
        engine(m.layer(&s, 2, 4..8, 0..10, &bytes[1]));
        engine(m.embed(&s, 0..4));
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A config claiming a million layers over a small weights file fails on the first missing
/// tensor, naming it, without building every layer's tensor names.
#[test]
fn an_absurd_layer_count_names_the_first_missing_tensor() {
    let dir = write_model("absurd", "", &weights());
    let mut config: serde_json::Value = serde_json::from_str(CONFIG).unwrap();
    let layers = config["num_hidden_layers"].as_u64().unwrap();
    config["num_hidden_layers"] = 1_000_000.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    match BertModel::load(&dir) {
        Err(ModelError::MissingTensor { name, .. }) => {
            assert_eq!(
                name,
                format!("encoder.layer.{layers}.attention.self.query.weight")
            );
        }
        other => panic!("{other:?}"),
    }
}

/// The BERT loader is as strict as the Llama one: a field it does not know, a decoder flag or
/// another model type is refused by name, not ignored.
#[test]
fn unknown_or_decoder_config_fields_are_refused_by_name() {
    let dir = write_model("strict", "", &weights());
    let base: serde_json::Value = serde_json::from_str(CONFIG).unwrap();
    for (key, value, needle) in [
        ("rotary_value", serde_json::json!(0.5), "rotary_value"),
        ("is_decoder", serde_json::json!(true), "is_decoder"),
        ("model_type", serde_json::json!("roberta"), "model_type"),
        (
            "architectures",
            serde_json::json!(["RobertaModel"]),
            "architectures",
        ),
    ] {
        let mut c = base.clone();
        c[key] = value;
        std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
        match BertModel::load(&dir) {
            Err(ModelError::InvalidConfig(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("{key}: {other:?}"),
        }
    }
    // Inert fields as transformers writes them load.
    let mut c = base;
    c["attention_probs_dropout_prob"] = 0.1.into();
    c["is_decoder"] = false.into();
    c["transformers_version"] = "5.0.0".into();
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    BertModel::load(&dir).unwrap();
}
