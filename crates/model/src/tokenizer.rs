//! The encoder's tokenizer: a Hugging Face `tokenizer.json` (for all-MiniLM-L6-v2, BERT
//! WordPiece, lower-cased, `[CLS] … [SEP]`) through the `tokenizers` crate.
//!
//! The all-MiniLM-L6-v2 `tokenizer.json` pads every sequence to 128 tokens and truncates longer
//! ones. [`BertTokenizer`] turns both off: a sequence is exactly its tokens, and one longer than
//! the model's positions is refused with [`ModelError::SequenceTooLong`] rather than cut short.

use std::path::Path;

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
