//! The [`Engine`] trait: what the fingerprint study (and the simulator) needs from a model, so
//! that any model — the built-in [`LlamaModel`], a BERT encoder, a loaded checkpoint — can be
//! run through them.
//!
//! An engine names itself, states its geometry (layers, hidden size, vocabulary), produces
//! deterministic prompts, and traces a prompt under a numeric [`Setup`] in row tiles of a chunk
//! size. [`seeded_prompt`] is the default prompt rule.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::{LlamaModel, Result, Setup, Trace};

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

    /// Prompt number `index`, `len` token ids long, a function of `(index, len, vocab_size)`
    /// alone. The default is [`seeded_prompt`]; an engine whose vocabulary has ids a prompt
    /// should not hold (padding, special tokens) may override it and document its rule.
    fn prompt(&self, index: u64, len: usize) -> Vec<u32> {
        seeded_prompt(self.vocab_size(), index, len)
    }

    /// The trace `h_0 … h_L` of `tokens` under `setup`, computed in row tiles of `tile` rows.
    fn trace(&self, setup: &Setup, tokens: &[u32], tile: usize) -> Result<Trace>;
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

    /// [`LlamaModel::trace`].
    fn trace(&self, setup: &Setup, tokens: &[u32], tile: usize) -> Result<Trace> {
        LlamaModel::trace(self, setup, tokens, tile)
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
}
