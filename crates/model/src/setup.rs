//! Numeric setups: how a model's arithmetic is carried out.
//!
//! A [`Setup`] has a canonical string form, which is also its serde form and (as UTF-8 bytes)
//! the `setup` field of a [`veritrace_protocol::Statement`]. This foundation supports exactly one
//! setup:
//!
//! | setup | precision | attention |
//! |---|---|---|
//! | `f32/attn=eager` | f32 weights, activations and accumulation | eager softmax over a full causal mask |
//!
//! Issue 4's remaining setups (bf16/f16 precision, tiled online-softmax, sliding-window and
//! top-k attention, int8/int4 weight quantization with two rounding methods, explicit split-K
//! accumulation, batch and KV-cache reduction orders, structural changes) extend [`Precision`]
//! and [`Attention`] with new variants and the string grammar with new `/key=value` parts; the
//! string of `f32/attn=eager` stays as it is, so committed statements remain valid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Element type of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    /// IEEE-754 binary32 throughout.
    F32,
}

impl Precision {
    /// Canonical name (`f32`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
        }
    }
}

/// Attention algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attention {
    /// Scores, masked softmax and weighted sum computed in full ("eager").
    Eager,
}

impl Attention {
    /// Canonical name (`eager`).
    pub fn name(self) -> &'static str {
        match self {
            Attention::Eager => "eager",
        }
    }
}

/// A numeric setup. Canonical string: `<precision>/attn=<attention>`, e.g. `f32/attn=eager`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Setup {
    /// Precision of weights and activations.
    pub precision: Precision,
    /// Attention algorithm.
    pub attention: Attention,
}

impl Default for Setup {
    fn default() -> Self {
        Setup::F32_EAGER
    }
}

impl Setup {
    /// `f32/attn=eager`, the reference setup (and the only one this version runs).
    pub const F32_EAGER: Setup = Setup {
        precision: Precision::F32,
        attention: Attention::Eager,
    };

    /// Every setup this version of the crate can run.
    pub const SUPPORTED: [Setup; 1] = [Setup::F32_EAGER];

    /// The canonical string as bytes: what a statement's `setup` field holds.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// Parses a statement's `setup` bytes; they must be exactly a canonical string.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        let s = std::str::from_utf8(bytes)
            .map_err(|_| ModelError::UnsupportedSetup(format!("{bytes:?} is not UTF-8")))?;
        s.parse()
    }
}

impl fmt::Display for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/attn={}",
            self.precision.name(),
            self.attention.name()
        )
    }
}

impl FromStr for Setup {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        Setup::SUPPORTED
            .into_iter()
            .find(|setup| setup.to_string() == s)
            .ok_or_else(|| {
                ModelError::UnsupportedSetup(format!(
                    "{s:?} (this version runs only {})",
                    Setup::SUPPORTED
                        .iter()
                        .map(|s| format!("{s:?}", s = s.to_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }
}

impl TryFrom<String> for Setup {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, ModelError> {
        s.parse()
    }
}

impl From<Setup> for String {
    fn from(s: Setup) -> String {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_string_round_trips() {
        let s = Setup::F32_EAGER;
        assert_eq!(s.to_string(), "f32/attn=eager");
        assert_eq!("f32/attn=eager".parse::<Setup>().unwrap(), s);
        assert_eq!(Setup::from_bytes(&s.to_bytes()).unwrap(), s);
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"f32/attn=eager\"");
        assert_eq!(
            serde_json::from_str::<Setup>("\"f32/attn=eager\"").unwrap(),
            s
        );
        for bad in [
            "bf16/attn=eager",
            "f32/attn=tiled:64",
            "f32",
            "",
            "F32/attn=eager",
        ] {
            assert!(bad.parse::<Setup>().is_err(), "{bad}");
        }
        assert!(Setup::from_bytes(&[0xff, 0xfe]).is_err());
    }
}
