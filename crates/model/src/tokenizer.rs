//! Tokenizers: the encoder's [`BertTokenizer`] (a Hugging Face `tokenizer.json`; for
//! all-MiniLM-L6-v2, BERT WordPiece, lower-cased, `[CLS] … [SEP]`) and every checkpoint's
//! [`TextTokenizer`] (text input bound in statements, with the chat template), both through the
//! `tokenizers` crate.
//!
//! The all-MiniLM-L6-v2 `tokenizer.json` pads every sequence to 128 tokens and truncates longer
//! ones. [`BertTokenizer`] turns both off: a sequence is exactly its tokens, and one longer than
//! the model's positions is refused with [`ModelError::SequenceTooLong`] rather than cut short.

use std::path::Path;

use veritrace_commit::Digest;
use veritrace_protocol::InputText;

use crate::{ModelError, Result};

/// A tokenized sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Attention mask, one entry per id (1 = attend). Without padding it is all ones; pass it to
    /// [`crate::BertModel::trace_masked`] all the same.
    pub attention_mask: Vec<u32>,
}

/// A `tokenizer.json` tokenizer with padding and truncation off and a length limit.
#[derive(Debug, Clone)]
pub struct BertTokenizer {
    inner: tokenizers::Tokenizer,
    max_len: usize,
}

impl BertTokenizer {
    /// Loads `path` (a Hugging Face `tokenizer.json`), turns its padding and truncation off, and
    /// refuses sequences longer than `max_len` tokens (the model's `max_position_embeddings`).
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: cannot load: {e}", path.display())))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(BertTokenizer { inner, max_len })
    }

    /// The longest sequence (in tokens, special tokens included) [`BertTokenizer::encode`] returns.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tokenizes `text` with the tokenizer's special tokens (`[CLS] … [SEP]`).
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let ids = enc.get_ids().to_vec();
        if ids.len() > self.max_len {
            return Err(ModelError::SequenceTooLong {
                tokens: ids.len(),
                max: self.max_len,
            });
        }
        Ok(Encoded {
            ids,
            attention_mask: enc.get_attention_mask().to_vec(),
        })
    }
}

/// Largest `tokenizer.json`, chat template or `tokenizer_config.json` read (64 MiB).
const MAX_TOKENIZER_FILE: u64 = 64 << 20;

/// The label at the start of every tokenizer digest's input (specs/protocol.md §3.4).
pub const TOKENIZER_DIGEST_LABEL: &[u8] = b"veritrace/tokenizer/v1";

/// A checkpoint's text tokenizer: its `tokenizer.json` (through the `tokenizers` crate, padding
/// and truncation off) and, where the checkpoint has one, its chat template
/// (`chat_template.jinja`, or `chat_template` in `tokenizer_config.json`). It turns text into
/// the input tokens of a statement and checks a statement's text binding
/// (specs/protocol.md §3.4): tokens = `encode(text, add_special_tokens = true)`, or with `chat`
/// the template rendered over one user message with the generation prompt, encoded without
/// adding special tokens.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// The tokenizer digests without and with the chat template (when there is one), computed
    /// once at load: `json` can be megabytes and a verifier checks every opening.
    digest_plain: Digest,
    digest_chat: Option<Digest>,
    chat_template: Option<String>,
    /// `bos_token`, `eos_token`, `unk_token`, `pad_token` of `tokenizer_config.json`, for the
    /// chat template's context.
    special: Vec<(String, String)>,
    source: String,
}

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    crate::files::read_limited(path, MAX_TOKENIZER_FILE, "a tokenizer file", "").map_err(
        |e| match e {
            crate::files::FileError::Read { source, .. } => ModelError::Io {
                path: path.display().to_string(),
                source,
            },
            other => ModelError::Tokenizer(other.to_string()),
        },
    )
}

impl TextTokenizer {
    /// The tokenizer of checkpoint directory `dir`: `None` when it has no `tokenizer.json`;
    /// an error when that file (or the chat template) is there but unreadable or malformed.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Ok(None);
        }
        let json = read_bounded(&path)?;
        let bad = |m: String| ModelError::Tokenizer(format!("{}: {m}", path.display()));
        let mut inner = tokenizers::Tokenizer::from_bytes(&json)
            .map_err(|e| bad(format!("cannot load: {e}")))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| bad(e.to_string()))?;
        let config_path = dir.join("tokenizer_config.json");
        let config: Option<serde_json::Value> = if config_path.exists() {
            let bytes = read_bounded(&config_path)?;
            Some(serde_json::from_slice(&bytes).map_err(|e| {
                ModelError::Tokenizer(format!("{}: not JSON: {e}", config_path.display()))
            })?)
        } else {
            None
        };
        let jinja = dir.join("chat_template.jinja");
        let chat_template =
            if jinja.exists() {
                Some(String::from_utf8(read_bounded(&jinja)?).map_err(|_| {
                    ModelError::Tokenizer(format!("{}: not UTF-8", jinja.display()))
                })?)
            } else {
                match config.as_ref().and_then(|c| c.get("chat_template")) {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(t)) => Some(t.clone()),
                    Some(other) => {
                        return Err(ModelError::Tokenizer(format!(
                            "{}: chat_template is {}, not one template string (named templates \
                         are not supported)",
                            config_path.display(),
                            match other {
                                serde_json::Value::Array(_) => "a list",
                                _ => "not a string",
                            }
                        )))
                    }
                }
            };
        let mut special = Vec::new();
        for name in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            let value = config.as_ref().and_then(|c| c.get(name));
            let token = match value {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Object(o)) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string),
                _ => None,
            };
            if let Some(t) = token {
                special.push((name.to_string(), t));
            }
        }
        Ok(Some(TextTokenizer {
            inner,
            digest_plain: tokenizer_digest(&json, ""),
            digest_chat: chat_template.as_deref().map(|t| tokenizer_digest(&json, t)),
            chat_template,
            special,
            source: dir.display().to_string(),
        }))
    }

    /// Whether the checkpoint has a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// The tokenizer digest of specs/protocol.md §3.4: BLAKE3 over the label,
    /// `u64le(|J|) ‖ J` (the `tokenizer.json` bytes) and `u64le(|C|) ‖ C` (the chat template
    /// with `chat`, empty without). Refuses `chat` without a template.
    pub fn digest(&self, chat: bool) -> Result<Digest> {
        match (chat, self.digest_chat) {
            (false, _) => Ok(self.digest_plain),
            (true, Some(d)) => Ok(d),
            (true, None) => Err(self.no_template()),
        }
    }

    fn no_template(&self) -> ModelError {
        ModelError::Tokenizer(format!(
            "{}: no chat template (chat_template.jinja or tokenizer_config.json's \
             chat_template); give the text without the chat option",
            self.source
        ))
    }

    /// The chat template rendered over one user message `text` with the generation prompt, as
    /// transformers' `apply_chat_template(..., add_generation_prompt=True, tokenize=False)`
    /// renders it (Jinja with `trim_blocks` and `lstrip_blocks`, Python string methods,
    /// `raise_exception`, the special tokens of `tokenizer_config.json`).
    pub fn render_chat(&self, text: &str) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| self.no_template())?;
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        let bad = |e: minijinja::Error| {
            ModelError::Tokenizer(format!("{}: chat template: {e}", self.source))
        };
        env.add_template("chat", template).map_err(bad)?;
        let mut ctx: std::collections::BTreeMap<String, minijinja::Value> = self
            .special
            .iter()
            .map(|(k, v)| (k.clone(), minijinja::Value::from(v.as_str())))
            .collect();
        ctx.insert(
            "messages".into(),
            minijinja::Value::from_serialize(
                serde_json::json!([{"role": "user", "content": text}]),
            ),
        );
        ctx.insert("add_generation_prompt".into(), minijinja::Value::from(true));
        env.get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(bad)
    }

    /// The input tokens of `text`: `encode(text, true)`, or with `chat` the rendered chat
    /// template encoded without adding special tokens. Refuses empty results, `chat` without a
    /// template, and text over [`veritrace_protocol::MAX_INPUT_TEXT_BYTES`].
    pub fn encode(&self, text: &str, chat: bool) -> Result<Vec<u32>> {
        if text.len() > veritrace_protocol::MAX_INPUT_TEXT_BYTES {
            return Err(ModelError::Tokenizer(format!(
                "the text has {} bytes; at most {}",
                text.len(),
                veritrace_protocol::MAX_INPUT_TEXT_BYTES
            )));
        }
        let enc = if chat {
            let rendered = self.render_chat(text)?;
            self.inner.encode(rendered, false)
        } else {
            self.inner.encode(text, true)
        }
        .map_err(|e| ModelError::Tokenizer(format!("{}: cannot encode: {e}", self.source)))?;
        let ids = enc.get_ids().to_vec();
        if ids.is_empty() {
            return Err(ModelError::Tokenizer(format!(
                "{}: the text gives no tokens",
                self.source
            )));
        }
        Ok(ids)
    }

    /// The tokens of `text` and the statement's binding of them (specs/protocol.md §3.4).
    pub fn input_text(&self, text: &str, chat: bool) -> Result<(Vec<u32>, InputText)> {
        let tokens = self.encode(text, chat)?;
        Ok((
            tokens,
            InputText {
                tokenizer: self.digest(chat)?,
                chat,
                text: text.to_string(),
            },
        ))
    }

    /// Checks a statement's text binding: the tokenizer digest is this tokenizer's and the
    /// text encodes to exactly `tokens`; the error says which differs.
    pub fn check(&self, input: &InputText, tokens: &[u32]) -> Result<()> {
        let mine = self.digest(input.chat)?;
        if input.tokenizer != mine {
            return Err(ModelError::Tokenizer(format!(
                "the statement's tokenizer digest {} is not this checkpoint's {mine}{}",
                input.tokenizer,
                if input.chat {
                    " (with its chat template)"
                } else {
                    ""
                }
            )));
        }
        let want = self.encode(&input.text, input.chat)?;
        if want != tokens {
            let at = want
                .iter()
                .zip(tokens)
                .position(|(a, b)| a != b)
                .unwrap_or(want.len().min(tokens.len()));
            return Err(ModelError::Tokenizer(format!(
                "the input tokens are not the text's tokenization: {} tokens against {}, first \
                 difference at position {at}",
                tokens.len(),
                want.len()
            )));
        }
        Ok(())
    }
}

/// `BLAKE3(label ‖ u64le(|J|) ‖ J ‖ u64le(|C|) ‖ C)` of specs/protocol.md §3.4.
fn tokenizer_digest(json: &[u8], template: &str) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(TOKENIZER_DIGEST_LABEL);
    h.update(&(json.len() as u64).to_le_bytes());
    h.update(json);
    h.update(&(template.len() as u64).to_le_bytes());
    h.update(template.as_bytes());
    Digest(*h.finalize().as_bytes())
}

/// The statement-level input check every model shares ([`veritrace_protocol::Recompute::check_input`]):
/// a statement without text passes; one with text needs `tokenizer` and its binding to hold.
pub(crate) fn check_input(
    tokenizer: Option<&TextTokenizer>,
    statement: &veritrace_protocol::Statement,
) -> Result<()> {
    match (&statement.input_text, tokenizer) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(ModelError::Tokenizer(
            "the statement gives text input and this model has no tokenizer.json to check its \
             tokens against"
                .into(),
        )),
        (Some(t), Some(tok)) => tok.check(t, &statement.input_tokens),
    }
}
