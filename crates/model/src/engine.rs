//! The [`Engine`] trait: what the fingerprint study (and the simulator) needs from a model, so
//! that any model — the built-in [`LlamaModel`], a BERT encoder, a loaded checkpoint — can be
//! run through them.
//!
//! An engine names itself, states its geometry (layers, hidden size, vocabulary), produces
//! deterministic prompts, says which setups it runs, and traces a prompt under a numeric
//! [`Setup`] in row tiles of a chunk size. [`seeded_prompt`] is the default prompt rule;
//! [`bert_prompt`] is the rule of a BERT encoder with the real BERT vocabulary.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::{BertModel, Device, LlamaModel, ModelError, Result, Runner, Setup, Trace};

/// The first 16 bytes of the ChaCha20 key of every prompt (see [`seeded_prompt`]).
pub const PROMPT_KEY_LABEL: &[u8; 16] = b"veritrace/prompt";

/// A model the study and the simulator can run.
pub trait Engine: Send + Sync {
    /// A short human-readable name (for example `llama tiny`), shown in reports.
    fn name(&self) -> String;

    /// Number of layers `L`: a trace holds the `L + 1` hidden states `h_0 … h_L`.
    fn num_layers(&self) -> usize;

    /// Width of every hidden state.
    fn hidden_size(&self) -> usize;

    /// Vocabulary size: valid token ids are `0..vocab_size`.
    fn vocab_size(&self) -> usize;

    /// The checkpoint's tokenizer (text prompts), if the model has one. Required, so that a
    /// wrapper forwards it.
    fn tokenizer(&self) -> Option<&crate::TextTokenizer>;

    /// Prompt number `index`, `len` token ids long, a function of `(index, len, vocab_size)`
    /// alone. The default is [`seeded_prompt`]; an engine whose vocabulary has ids a prompt
    /// should not hold (padding, special tokens) may override it and document its rule.
    fn prompt(&self, index: u64, len: usize) -> Vec<u32> {
        seeded_prompt(self.vocab_size(), index, len)
    }

    /// Whether the engine runs `setup`: `Ok` if it does, else the reason (for example
    /// [`crate::ModelError::UnsupportedSetup`] for `order=decode` on an encoder, or a skipped
    /// layer the model does not have). The default accepts every valid setup. The fingerprint
    /// study refuses a plan with a setup its engine refuses, and its default plan leaves such
    /// setups out.
    fn check_setup(&self, setup: &Setup) -> Result<()> {
        setup.validate()
    }

    /// The trace `h_0 … h_L` of `tokens` under `setup`, computed in row tiles of `tile` rows.
    fn trace(&self, setup: &Setup, tokens: &[u32], tile: usize) -> Result<Trace>;

    /// [`Engine::trace`] on the device of `runner`. The default runs on the CPU only and
    /// refuses other devices; the built-in decoder and the BERT encoder run on a GPU too.
    fn trace_on(
        &self,
        runner: &Runner,
        setup: &Setup,
        tokens: &[u32],
        tile: usize,
    ) -> Result<Trace> {
        if runner.device() == Device::Cpu {
            self.trace(setup, tokens, tile)
        } else {
            Err(ModelError::UnsupportedOnDevice {
                setup: setup.to_string(),
                device: runner.device().to_string(),
                reason: format!("{} runs on the CPU only", self.name()),
            })
        }
    }
}

/// An engine whose traces are computed on the device of a [`Runner`] (`veritrace fingerprint
/// --device cuda:0`): every setup of a study runs there, reference included, so the study
/// measures that device's own honest noise floor and how far each swapped kernel stands out
/// of it.
pub struct OnDevice<'a> {
    /// The model.
    pub engine: &'a dyn Engine,
    /// The device it runs on.
    pub runner: &'a Runner,
}

impl Engine for OnDevice<'_> {
    /// The engine's name and the device, e.g. `llama L=4 … on cuda:0`.
    fn name(&self) -> String {
        format!("{} on {}", self.engine.name(), self.runner.device())
    }
    fn num_layers(&self) -> usize {
        self.engine.num_layers()
    }
    fn hidden_size(&self) -> usize {
        self.engine.hidden_size()
    }
    fn vocab_size(&self) -> usize {
        self.engine.vocab_size()
    }
    fn tokenizer(&self) -> Option<&crate::TextTokenizer> {
        self.engine.tokenizer()
    }
    fn prompt(&self, index: u64, len: usize) -> Vec<u32> {
        self.engine.prompt(index, len)
    }
    /// The engine's check, then what the device implements ([`Device::check_setup`]).
    fn check_setup(&self, setup: &Setup) -> Result<()> {
        self.engine.check_setup(setup)?;
        self.runner.device().check_setup(setup)
    }
    fn trace(&self, setup: &Setup, tokens: &[u32], tile: usize) -> Result<Trace> {
        self.engine.trace_on(self.runner, setup, tokens, tile)
    }
}

/// Size of the BERT (uncased) WordPiece vocabulary, that of all-MiniLM-L6-v2.
pub const BERT_VOCAB_SIZE: usize = 30_522;

/// `[CLS]` in the BERT vocabulary.
pub const BERT_CLS: u32 = 101;

/// `[SEP]` in the BERT vocabulary.
pub const BERT_SEP: u32 = 102;

/// The first ordinary WordPiece of the BERT vocabulary (`!`); ids below it are `[PAD]`,
/// `[unusedN]`, `[UNK]`, `[CLS]`, `[SEP]` and `[MASK]`.
pub const BERT_FIRST_WORDPIECE: u32 = 999;

/// The prompt rule of a BERT encoder: prompt `index` of length `len`.
///
/// With the real BERT vocabulary (`vocab` = [`BERT_VOCAB_SIZE`]) a prompt is shaped like a
/// tokenized sentence: [`BERT_CLS`] first, [`BERT_SEP`] last, and between them the `len − 2`
/// ids `BERT_FIRST_WORDPIECE + u` where `u` runs over
/// [`seeded_prompt`]`(BERT_VOCAB_SIZE − BERT_FIRST_WORDPIECE, index, len − 2)` (ordinary
/// WordPieces only: no padding, unknown, unused or special tokens). A 1-token prompt is
/// `[CLS]`; a 0-token prompt is empty. Any other vocabulary (a synthetic model) uses
/// [`seeded_prompt`] unchanged.
pub fn bert_prompt(vocab: usize, index: u64, len: usize) -> Vec<u32> {
    if vocab != BERT_VOCAB_SIZE {
        return seeded_prompt(vocab, index, len);
    }
    match len {
        0 => Vec::new(),
        1 => vec![BERT_CLS],
        _ => {
            let words = BERT_VOCAB_SIZE - BERT_FIRST_WORDPIECE as usize;
            let mut p = Vec::with_capacity(len);
            p.push(BERT_CLS);
            p.extend(
                seeded_prompt(words, index, len - 2)
                    .into_iter()
                    .map(|u| BERT_FIRST_WORDPIECE + u),
            );
            p.push(BERT_SEP);
            p
        }
    }
}

/// The default prompt rule: prompt `index` of length `len` over a vocabulary of `vocab` ids.
///
/// A ChaCha20 stream (`rand_chacha::ChaCha20Rng::from_seed(key)`) with the 32-byte key
/// [`PROMPT_KEY_LABEL`] (16 ASCII bytes) ‖ `index` as u64 little-endian ‖ 8 zero bytes yields
/// one `next_u32()` per token, mapped to `⌊u · vocab / 2³²⌋` (multiply-shift; the bias is below
/// `vocab / 2³²`). Prompts of different lengths with the same index share their prefix. An
/// empty vocabulary gives an empty prompt.
pub fn seeded_prompt(vocab: usize, index: u64, len: usize) -> Vec<u32> {
    if vocab == 0 {
        return Vec::new();
    }
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(PROMPT_KEY_LABEL);
    key[16..24].copy_from_slice(&index.to_le_bytes());
    let mut rng = ChaCha20Rng::from_seed(key);
    let vocab = vocab.min(u32::MAX as usize) as u64;
    (0..len)
        .map(|_| ((u64::from(rng.next_u32()) * vocab) >> 32) as u32)
        .collect()
}

impl Engine for LlamaModel {
    fn tokenizer(&self) -> Option<&crate::TextTokenizer> {
        Self::tokenizer(self)
    }

    /// `llama` followed by the configuration's sizes, e.g. `llama L=4 d=128 vocab=512 seed=0`.
    fn name(&self) -> String {
        let c = self.config();
        format!(
            "llama L={} d={} vocab={} seed={}",
            c.num_layers, c.hidden_size, c.vocab_size, c.seed
        )
    }

    fn num_layers(&self) -> usize {
        self.config().num_layers
    }

    fn hidden_size(&self) -> usize {
        self.config().hidden_size
    }

    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }

    /// Valid, and a skipped or reused layer exists.
    fn check_setup(&self, setup: &Setup) -> Result<()> {
        LlamaModel::check_setup(self, setup)
    }

    /// [`LlamaModel::trace`].
    fn trace(&self, setup: &Setup, tokens: &[u32], tile: usize) -> Result<Trace> {
        LlamaModel::trace(self, setup, tokens, tile)
    }

    /// [`Runner::llama_trace`].
    fn trace_on(
        &self,
        runner: &Runner,
        setup: &Setup,
        tokens: &[u32],
        tile: usize,
    ) -> Result<Trace> {
        runner.llama_trace(self, setup, tokens, tile)
    }
}

impl Engine for BertModel {
    fn tokenizer(&self) -> Option<&crate::TextTokenizer> {
        Self::tokenizer(self)
    }

    /// `bert` followed by the configuration's sizes and the first 16 hex digits of the model
    /// digest (a loaded model has no seed), e.g.
    /// `bert L=6 d=384 heads=12 vocab=30522 digest=0123456789abcdef`.
    fn name(&self) -> String {
        let c = self.config();
        format!(
            "bert L={} d={} heads={} vocab={} digest={}",
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.vocab_size,
            &self.digest().to_hex()[..16]
        )
    }

    fn num_layers(&self) -> usize {
        self.config().num_hidden_layers
    }

    fn hidden_size(&self) -> usize {
        self.config().hidden_size
    }

    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }

    /// [`bert_prompt`]: `[CLS] … [SEP]` over ordinary WordPieces for the real BERT vocabulary,
    /// [`seeded_prompt`] otherwise.
    fn prompt(&self, index: u64, len: usize) -> Vec<u32> {
        bert_prompt(self.config().vocab_size, index, len)
    }

    /// [`BertModel::check_setup`]: every valid setup but `order=decode`, with a skipped or
    /// reused layer that exists.
    fn check_setup(&self, setup: &Setup) -> Result<()> {
        BertModel::check_setup(self, setup)
    }

    /// [`BertModel::trace`] (every position attended).
    fn trace(&self, setup: &Setup, tokens: &[u32], tile: usize) -> Result<Trace> {
        BertModel::trace(self, setup, tokens, tile)
    }

    /// [`Runner::bert_trace`].
    fn trace_on(
        &self,
        runner: &Runner,
        setup: &Setup,
        tokens: &[u32],
        tile: usize,
    ) -> Result<Trace> {
        runner.bert_trace(self, setup, tokens, tile)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_deterministic_in_range_and_prefix_stable() {
        let a = seeded_prompt(512, 3, 40);
        assert_eq!(a, seeded_prompt(512, 3, 40));
        assert_eq!(a.len(), 40);
        assert!(a.iter().all(|&t| t < 512));
        assert_eq!(&seeded_prompt(512, 3, 50)[..40], &a[..]);
        assert_ne!(a, seeded_prompt(512, 4, 40));
        assert!(seeded_prompt(0, 0, 8).is_empty());
        assert!(seeded_prompt(7, 0, 0).is_empty());
        // Every id of a small vocabulary shows up.
        let small = seeded_prompt(3, 0, 300);
        assert!((0..3).all(|v| small.contains(&v)));
    }

    #[test]
    fn bert_prompts_look_like_tokenized_sentences() {
        let p = bert_prompt(BERT_VOCAB_SIZE, 5, 64);
        assert_eq!(p, bert_prompt(BERT_VOCAB_SIZE, 5, 64));
        assert_eq!(p.len(), 64);
        assert_eq!((p[0], p[63]), (BERT_CLS, BERT_SEP));
        assert!(p[1..63]
            .iter()
            .all(|&t| (BERT_FIRST_WORDPIECE..BERT_VOCAB_SIZE as u32).contains(&t)));
        assert_ne!(p, bert_prompt(BERT_VOCAB_SIZE, 6, 64));
        assert_eq!(bert_prompt(BERT_VOCAB_SIZE, 5, 1), vec![BERT_CLS]);
        assert_eq!(bert_prompt(BERT_VOCAB_SIZE, 5, 2), vec![BERT_CLS, BERT_SEP]);
        assert!(bert_prompt(BERT_VOCAB_SIZE, 5, 0).is_empty());
        // Another vocabulary: the default rule.
        assert_eq!(bert_prompt(50, 5, 20), seeded_prompt(50, 5, 20));
    }
}
