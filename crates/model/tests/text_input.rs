//! Text input (issue 13, item 6): a checkpoint's tokenizer.json and chat template turn text into
//! the input tokens, the tokenizer digest is the specified hash of the files' bytes (known
//! answers from Python's `blake3`), and a verifier's engine accepts exactly the tokens the text
//! gives (`Recompute::check_input`).

use veritrace_commit::{Digest, HasherId};
use veritrace_model::{LlamaModel, ModelError, Setup};
use veritrace_protocol::Recompute;

/// A word-level tokenizer.json with a post-processor that adds `<s>` (844 bytes).
const TOKENIZER: &str = include_str!("fixtures/wordlevel-tokenizer.json");

/// A chat template using a Python string method (`strip`) and the special tokens.
const TEMPLATE: &str = r#"{{ bos_token }} user : {{ messages[0]["content"].strip() }}{% if add_generation_prompt %} assistant :{% endif %}"#;

/// BLAKE3("veritrace/tokenizer/v1" ‖ u64le(844) ‖ tokenizer.json ‖ u64le(|C|) ‖ C), computed
/// with Python's blake3 package: without the template (C empty) and with it.
const DIGEST_PLAIN: &str = "9dc4ae74b028b5dbf4745427a040508b77b656899572f85b16c8cceb6a2b1c69";
const DIGEST_CHAT: &str = "241f3ebaccda6cefcc6db703609f79b568b87fb24c65ef90009cc6fdc7066372";

/// The tiny preset saved as a checkpoint with the tokenizer and, if `chat`, the template in
/// tokenizer_config.json.
fn checkpoint(chat: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    LlamaModel::preset("tiny")
        .unwrap()
        .save(dir.path())
        .unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), TOKENIZER).unwrap();
    let mut config = serde_json::json!({"bos_token": "<s>", "unk_token": "<unk>"});
    if chat {
        config["chat_template"] = TEMPLATE.into();
    }
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn text_is_tokenized_as_transformers_does_and_the_digest_is_the_files() {
    let dir = checkpoint(true);
    let model = LlamaModel::load(dir.path()).unwrap();
    let tok = model.tokenizer().expect("a tokenizer.json is there");
    // transformers' PreTrainedTokenizerFast(tokenizer_file=...)("the verifier checks a trace.")
    assert_eq!(
        tok.encode("the verifier checks a trace.", false).unwrap(),
        [0, 2, 3, 4, 5, 6, 10]
    );
    // transformers' apply_chat_template([{"role": "user", "content": "  the trace "}],
    // add_generation_prompt=True): "<s> user : the trace assistant :"
    assert_eq!(
        tok.render_chat("  the trace ").unwrap(),
        "<s> user : the trace assistant :"
    );
    assert_eq!(
        tok.encode("  the trace ", true).unwrap(),
        [0, 7, 8, 2, 6, 9, 8]
    );
    assert_eq!(tok.digest(false).unwrap().to_string(), DIGEST_PLAIN);
    assert_eq!(tok.digest(true).unwrap().to_string(), DIGEST_CHAT);
    // without a template, chat is refused; the plain digest is unchanged
    let plain = LlamaModel::load(checkpoint(false).path()).unwrap();
    let t = plain.tokenizer().unwrap();
    assert_eq!(t.digest(false).unwrap().to_string(), DIGEST_PLAIN);
    assert!(matches!(
        t.encode("the trace", true),
        Err(ModelError::Tokenizer(_))
    ));
    assert!(matches!(t.digest(true), Err(ModelError::Tokenizer(_))));
    // the presets have no tokenizer
    assert!(LlamaModel::preset("tiny").unwrap().tokenizer().is_none());
}

#[test]
fn a_verifier_accepts_exactly_the_tokens_the_text_gives() {
    let dir = checkpoint(true);
    let model = LlamaModel::load(dir.path()).unwrap();
    let tok = model.tokenizer().unwrap();
    let setup: Setup = "f32/attn=eager".parse().unwrap();
    for chat in [false, true] {
        let (tokens, binding) = tok
            .input_text("the verifier checks a trace.", chat)
            .unwrap();
        let (mut statement, _) = model
            .prove_run(&setup, &tokens, 2, 4, HasherId::Blake3)
            .unwrap();
        statement.input_text = Some(binding.clone());
        model.check_input(&statement).unwrap();
        // another text, another tokenizer digest, other tokens: each refused
        let mut s = statement.clone();
        s.input_text.as_mut().unwrap().text = "the verifier checks a trace".into();
        assert!(model.check_input(&s).is_err(), "chat {chat}: another text");
        let mut s = statement.clone();
        s.input_text.as_mut().unwrap().tokenizer = Digest([0; 32]);
        assert!(
            model.check_input(&s).is_err(),
            "chat {chat}: another tokenizer"
        );
        let mut s = statement.clone();
        s.input_text.as_mut().unwrap().chat = !chat;
        assert!(
            model.check_input(&s).is_err(),
            "chat {chat}: the other mode"
        );
        let mut s = statement.clone();
        s.input_tokens[1] = 3;
        assert!(model.check_input(&s).is_err(), "chat {chat}: another token");
        // a model without a tokenizer cannot check text, and says so
        let preset = LlamaModel::preset("tiny").unwrap();
        assert!(preset.check_input(&statement).is_err());
        statement.input_text = None;
        preset.check_input(&statement).unwrap();
    }
}

#[test]
fn a_malformed_tokenizer_or_template_is_a_typed_error() {
    let dir = checkpoint(false);
    std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
    assert!(matches!(
        LlamaModel::load(dir.path()),
        Err(ModelError::Tokenizer(_))
    ));
    let dir = checkpoint(false);
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": [{"name": "default", "template": "x"}]}"#,
    )
    .unwrap();
    match LlamaModel::load(dir.path()) {
        Err(ModelError::Tokenizer(m)) => assert!(m.contains("named templates"), "{m}"),
        other => panic!("{other:?}"),
    }
    let dir = checkpoint(false);
    std::fs::write(dir.path().join("chat_template.jinja"), "{% if %}").unwrap();
    let model = LlamaModel::load(dir.path()).unwrap();
    assert!(matches!(
        model.tokenizer().unwrap().encode("the trace", true),
        Err(ModelError::Tokenizer(_))
    ));
    // a template that raises, as transformers' raise_exception does
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{{ raise_exception('only system messages') }}",
    )
    .unwrap();
    let model = LlamaModel::load(dir.path()).unwrap();
    match model.tokenizer().unwrap().encode("the trace", true) {
        Err(ModelError::Tokenizer(m)) => assert!(m.contains("only system messages"), "{m}"),
        other => panic!("{other:?}"),
    }
    // text beyond the statement's limit
    let long = "a ".repeat(veritrace_protocol::MAX_INPUT_TEXT_BYTES);
    assert!(model.tokenizer().unwrap().encode(&long, false).is_err());
}
