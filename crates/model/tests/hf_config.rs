//! Hugging Face `config.json` fidelity: every field that changes the computation is read (rope
//! theta in either place, Llama-3 rope scaling) and bound in the digest, or the checkpoint is
//! refused naming the field; nothing loads silently as another model.

use serde_json::{json, Value};
use veritrace_model::{HfLlamaConfig, LlamaModel, ModelError, Setup};

/// A transformers-5-style config of the tiny preset's shape (`rope_parameters`, no top-level
/// `rope_theta`), with inert fields as transformers writes them.
fn tiny_config() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "dtype": "float32",
        "eos_token_id": 2,
        "head_dim": 32,
        "hidden_act": "silu",
        "hidden_size": 128,
        "initializer_range": 0.02,
        "intermediate_size": 344,
        "max_position_embeddings": 2048,
        "mlp_bias": false,
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_hidden_layers": 4,
        "num_key_value_heads": 2,
        "pad_token_id": null,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "tie_word_embeddings": false,
        "transformers_version": "5.0.0",
        "use_cache": true,
        "vocab_size": 512
    })
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn refused(v: &Value, needle: &str) {
    match HfLlamaConfig::parse(v).and_then(|c| c.to_config()) {
        Err(ModelError::InvalidConfig(m)) => assert!(m.contains(needle), "{needle}: {m}"),
        other => panic!("{needle}: expected a refusal, got {other:?}"),
    }
}

/// Writes the tiny preset's weights under `config` and loads it.
fn load_with(config: &Value) -> Result<LlamaModel, ModelError> {
    let dir = tempfile::tempdir().unwrap();
    LlamaModel::preset("tiny")
        .unwrap()
        .save(dir.path())
        .unwrap();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    LlamaModel::load(dir.path())
}

#[test]
fn rope_theta_is_read_from_either_place_and_bound_in_the_digest() {
    let base = load_with(&tiny_config()).unwrap();
    // Same weights, same config as the preset (seed aside): the preset's own digest.
    let dir = tempfile::tempdir().unwrap();
    LlamaModel::preset("tiny")
        .unwrap()
        .save(dir.path())
        .unwrap();
    let preset = LlamaModel::load(dir.path()).unwrap();
    assert_eq!(base.digest(), preset.digest());
    assert_eq!(base.config().rope_theta, 10_000.0);

    let v5 = with(
        tiny_config(),
        "rope_parameters",
        json!({"rope_theta": 500000.0, "rope_type": "default"}),
    );
    let m5 = load_with(&v5).unwrap();
    assert_eq!(m5.config().rope_theta, 500_000.0);
    assert_ne!(m5.digest(), base.digest());
    // transformers 4 spelling: the same model, the same digest.
    let mut v4 = tiny_config();
    v4.as_object_mut().unwrap().remove("rope_parameters");
    v4["rope_theta"] = json!(500000.0);
    v4["rope_scaling"] = Value::Null;
    let m4 = load_with(&v4).unwrap();
    assert_eq!(m4.digest(), m5.digest());
    // Both places, agreeing: accepted; disagreeing: refused.
    let both = with(v5.clone(), "rope_theta", json!(500000.0));
    assert_eq!(load_with(&both).unwrap().digest(), m5.digest());
    refused(&with(v5, "rope_theta", json!(10000.0)), "rope_theta");
    // A different theta computes different positions.
    let tokens: Vec<u32> = (0..12).map(|i| (i * 37 + 3) % 512).collect();
    let setup: Setup = "f32/attn=eager".parse().unwrap();
    let a = base.trace(&setup, &tokens, 4).unwrap();
    let b = m5.trace(&setup, &tokens, 4).unwrap();
    assert_eq!(a.layers[0], b.layers[0]);
    assert_ne!(a.layers[1], b.layers[1]);
}

/// Known answers for the Llama-3 scaling, from transformers' `_compute_llama3_parameters`
/// evaluated in float64 (theta 500000, head size 64, factor 32, low 1, high 4, original 8192):
/// pairs 0-14 keep their frequency, 15-19 are interpolated, 20-31 are divided by 32.
#[test]
fn llama3_rope_scaling_is_computed_and_bound() {
    let cfg = json!({
        "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 344, "num_hidden_layers": 2, "vocab_size": 512,
        "rms_norm_eps": 1e-5, "model_type": "llama",
        "rope_parameters": {
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192
        }
    });
    let c = HfLlamaConfig::parse(&cfg).unwrap().to_config().unwrap();
    let f = c.rope_inv_freq();
    assert_eq!(f.len(), 32);
    for (i, want) in [
        (0usize, 1.0),
        (10, 0.016560440080994446),
        (14, 0.003211445994752591),
        (15, 0.001290547928209264),
        (16, 0.00042955679655936815),
        (17, 9.70828780262767e-05),
        (20, 8.570255489881478e-06),
        (31, 9.41830672543491e-08),
    ] {
        assert!(
            (f[i] - want).abs() <= 1e-15 * want,
            "pair {i}: {} vs {want}",
            f[i]
        );
    }
    // The same through transformers 4's rope_scaling with a top-level theta.
    let mut v4 = cfg.clone();
    let mut s = v4["rope_parameters"].take();
    v4.as_object_mut().unwrap().remove("rope_parameters");
    s.as_object_mut().unwrap().remove("rope_theta");
    v4["rope_scaling"] = s;
    v4["rope_theta"] = json!(500000.0);
    let c4 = HfLlamaConfig::parse(&v4).unwrap().to_config().unwrap();
    assert_eq!(c4, c);
    // Bound in the digest: the tiny preset's weights with and without the scaling.
    let scaled = with(
        tiny_config(),
        "rope_parameters",
        json!({"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}),
    );
    let m = load_with(&scaled).unwrap();
    assert!(m.config().rope_scaling.is_some());
    assert_ne!(m.digest(), load_with(&tiny_config()).unwrap().digest());
    // Saved and loaded back: the same model.
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    assert_eq!(LlamaModel::load(dir.path()).unwrap().digest(), m.digest());
}

#[test]
fn what_the_decoder_does_not_compute_is_refused_by_name() {
    let t = tiny_config;
    refused(&with(t(), "model_type", json!("gemma")), "model_type");
    // Mistral's architecture under Llama's model_type, and the reverse: refused.
    refused(
        &with(t(), "architectures", json!(["MistralForCausalLM"])),
        "architectures",
    );
    refused(&with(t(), "model_type", json!("mistral")), "architectures");
    // A sliding window is Mistral's: refused for Llama, and must be a positive integer.
    refused(&with(t(), "sliding_window", json!(8)), "sliding_window");
    let m = with(t(), "model_type", json!("mistral"));
    let m = with(m, "architectures", json!(["MistralForCausalLM"]));
    refused(
        &with(m.clone(), "sliding_window", json!(0)),
        "sliding_window",
    );
    refused(
        &with(m.clone(), "sliding_window", json!(2.5)),
        "sliding_window",
    );
    refused(
        &with(m.clone(), "sliding_window", json!(1u64 << 40)),
        "sliding_window",
    );
    // Qwen2: its own fields, a sliding window refused.
    let q = with(t(), "model_type", json!("qwen2"));
    let q = with(q, "architectures", json!(["Qwen2ForCausalLM"]));
    let c = HfLlamaConfig::parse(&q).unwrap().to_config().unwrap();
    assert!(c.qkv_bias() && c.architecture() == "qwen2");
    let q = with(q, "use_sliding_window", json!(false));
    let q = with(q, "sliding_window", json!(4096));
    let q = with(q, "max_window_layers", json!(28));
    let q = with(
        q,
        "layer_types",
        json!([
            "full_attention",
            "full_attention",
            "full_attention",
            "full_attention"
        ]),
    );
    assert!(HfLlamaConfig::parse(&q)
        .unwrap()
        .to_config()
        .unwrap()
        .qkv_bias());
    refused(
        &with(q.clone(), "use_sliding_window", json!(true)),
        "use_sliding_window",
    );
    refused(
        &with(
            q.clone(),
            "layer_types",
            json!(["full_attention", "sliding_attention"]),
        ),
        "layer_types",
    );
    refused(
        &with(q.clone(), "attention_bias", json!(true)),
        "attention_bias",
    );
    refused(
        &with(t(), "use_sliding_window", json!(false)),
        "use_sliding_window",
    );
    refused(
        &with(
            t(),
            "architectures",
            json!(["LlamaForCausalLM", "Qwen2ForCausalLM"]),
        ),
        "architectures",
    );
    refused(
        &with(t(), "architectures", json!(["Qwen2ForCausalLM"])),
        "architectures",
    );
    refused(&with(t(), "sliding_window", json!(16)), "sliding_window");
    refused(
        &with(t(), "partial_rotary_factor", json!(0.5)),
        "partial_rotary_factor",
    );
    refused(
        &with(t(), "use_sliding_window", json!(false)),
        "use_sliding_window",
    );
    refused(&with(t(), "pretraining_tp", json!(2)), "pretraining_tp");
    refused(&with(t(), "attention_bias", json!(true)), "bias");
    refused(&with(t(), "hidden_act", json!("gelu")), "hidden_act");
    for rope_type in ["linear", "dynamic", "yarn", "longrope"] {
        refused(
            &with(
                t(),
                "rope_parameters",
                json!({"rope_type": rope_type, "rope_theta": 10000.0, "factor": 2.0}),
            ),
            rope_type,
        );
    }
    refused(
        &with(
            t(),
            "rope_parameters",
            json!({"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
        ),
        "partial_rotary_factor",
    );
    refused(
        &with(
            t(),
            "rope_parameters",
            json!({"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}),
        ),
        "low_freq_factor",
    );
    // A sliding window of null (Llama configs of some versions) is no window: accepted.
    assert!(HfLlamaConfig::parse(&with(t(), "sliding_window", Value::Null)).is_ok());
}

/// An absurd layer count over a small checkpoint fails on the missing tensors, before anything
/// per layer is allocated (the names of the first layers only).
#[test]
fn an_absurd_layer_count_fails_fast() {
    let e = load_with(&with(tiny_config(), "num_hidden_layers", json!(1_000_000))).unwrap_err();
    assert!(e.to_string().contains("model.layers.4"), "{e}");
    let e = load_with(&with(tiny_config(), "num_hidden_layers", json!(1u64 << 40))).unwrap_err();
    assert!(e.to_string().contains("num_layers"), "{e}");
}

/// A Qwen2 model (query/key/value biases): every cell recomputes bit for bit from its committed
/// inputs, and a saved checkpoint loads back as the same model (its biases in the digest).
#[test]
fn qwen2_cells_recompute_bitwise_and_round_trip() {
    let mut c = veritrace_model::ModelConfig::tiny();
    c.family = veritrace_model::Family::Qwen2;
    c.num_layers = 2;
    let model = LlamaModel::new(c).unwrap();
    let tensors = model.named_tensors().unwrap();
    assert!(tensors
        .iter()
        .any(|(n, _, _)| n == "model.layers.1.self_attn.k_proj.bias"));
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let back = LlamaModel::load(dir.path()).unwrap();
    assert_eq!(back.digest(), model.digest());
    let mut plain = veritrace_model::ModelConfig::tiny();
    plain.num_layers = 2;
    assert_ne!(LlamaModel::new(plain).unwrap().digest(), model.digest());
    let tokens: Vec<u32> = (0..21).map(|i| (i * 37 + 3) % 512).collect();
    for setup in ["f32/attn=eager", "bf16/attn=eager/quant=int8-channel"] {
        let setup: Setup = setup.parse().unwrap();
        let chunk = 8;
        let trace = back.trace(&setup, &tokens, chunk).unwrap();
        let d = trace.hidden;
        for l in 0..trace.layers.len() {
            for j in 0..tokens.len().div_ceil(chunk) {
                let end = ((j + 1) * chunk).min(tokens.len());
                let inputs = if l == 0 {
                    veritrace_model::CellInputs::Tokens(&tokens[..end])
                } else {
                    veritrace_model::CellInputs::Hidden(&trace.layers[l - 1][..end * d])
                };
                let got = back.recompute_cell(&setup, chunk, l, j, inputs).unwrap();
                let want = &trace.layers[l][j * chunk * d..end * d];
                assert!(
                    got.iter()
                        .map(|v| v.to_bits())
                        .eq(want.iter().map(|v| v.to_bits())),
                    "{setup} cell ({l}, {j})"
                );
            }
        }
    }
}

/// Mistral: `model_type` mistral reads `sliding_window`, binds it (and the family) in the digest,
/// round-trips through `save`, and computes the window: a window at least as long as the input
/// is plain causal attention (bit for bit), a shorter one changes the rows past it, and every
/// cell recomputes bit for bit through the protocol from only the rows its window reads (the
/// statement's `Window` dependency).
#[test]
fn mistral_sliding_window_is_computed_bound_and_recomputed_from_its_window() {
    use veritrace_commit::{CellId, HasherId};
    use veritrace_model::Family;
    use veritrace_protocol::{Dependency, Recompute};

    let mistral = |w: Value| {
        let m = with(tiny_config(), "model_type", json!("mistral"));
        let m = with(m, "architectures", json!(["MistralForCausalLM"]));
        with(m, "sliding_window", w)
    };
    let llama = load_with(&tiny_config()).unwrap();
    let none = load_with(&mistral(Value::Null)).unwrap();
    let long = load_with(&mistral(json!(64))).unwrap();
    let short = load_with(&mistral(json!(5))).unwrap();
    assert_eq!(short.config().family, Family::Mistral);
    assert_eq!(short.config().sliding_window, Some(5));
    assert_eq!(short.config().dependency(), Dependency::Window { size: 5 });
    assert_eq!(none.config().dependency(), Dependency::Causal);
    // every one a different model digest
    let digests = [&llama, &none, &long, &short].map(|m| m.digest());
    for i in 0..4 {
        for j in 0..i {
            assert_ne!(digests[i], digests[j], "models {i} and {j}");
        }
    }
    // saved and loaded back: the same model
    let dir = tempfile::tempdir().unwrap();
    short.save(dir.path()).unwrap();
    let back = LlamaModel::load(dir.path()).unwrap();
    assert_eq!(back.digest(), short.digest());
    assert_eq!(back.config(), short.config());

    let tokens: Vec<u32> = (0..21).map(|i| (i * 37 + 3) % 512).collect();
    for setup in ["f32/attn=eager", "f32/attn=tiled:4", "bf16/attn=topk:3"] {
        let setup: Setup = setup.parse().unwrap();
        let chunk = 4;
        let base = llama.trace(&setup, &tokens, chunk).unwrap();
        let wide = long.trace(&setup, &tokens, chunk).unwrap();
        assert!(
            base.layers == wide.layers,
            "{setup}: a window of 64 over 21 tokens is causal"
        );
        let (statement, trace) = short
            .prove_run(&setup, &tokens[..13], 8, chunk as u32, HasherId::Blake3)
            .unwrap();
        assert_eq!(statement.dependency, Dependency::Window { size: 5 });
        let all: Vec<u32> = statement
            .input_tokens
            .iter()
            .chain(&statement.output_tokens)
            .copied()
            .collect();
        let full = llama.trace(&setup, &all, chunk).unwrap();
        let d = trace.hidden;
        // rows inside the first window are causal attention; rows past it differ
        assert_eq!(full.layers[1][..5 * d], trace.layers[1][..5 * d], "{setup}");
        assert_ne!(full.layers[1][8 * d..], trace.layers[1][8 * d..], "{setup}");
        for l in 1..trace.layers.len() as u32 {
            for chunk_index in 0..statement.geometry.chunks_per_layer() {
                let cell = CellId {
                    layer: l,
                    chunk: chunk_index,
                };
                let rows = statement.geometry.cell_rows(cell).unwrap();
                let input_rows = statement.input_rows(cell).unwrap().unwrap();
                assert!(input_rows.start >= rows.start.saturating_sub(4));
                let prev = &trace.layers[l as usize - 1];
                let inputs: Vec<u8> = prev
                    [input_rows.start as usize * d..input_rows.end as usize * d]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                let got = short
                    .layer(&statement, l, rows.clone(), input_rows, &inputs)
                    .unwrap();
                let want: Vec<u8> = trace.layers[l as usize]
                    [rows.start as usize * d..rows.end as usize * d]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                assert!(got == want, "{setup}: cell ({l}, {chunk_index})");
            }
        }
        // a causal statement is not this model's
        let mut causal = statement.clone();
        causal.dependency = Dependency::Causal;
        assert!(short.check_statement(&causal).is_err());
    }
}
