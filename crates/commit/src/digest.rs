//! 32-byte digests, shown and serialized as lowercase hex.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::CommitError;

/// Length of every digest in bytes.
pub const DIGEST_LEN: usize = 32;

/// A 32-byte hash output: a leaf digest, an internal node or a root.
///
/// For BLAKE3 and SHA-256 any 32 bytes are a possible digest. For Poseidon a digest is the
/// big-endian encoding of a BN254 scalar field element, so only values below the modulus occur
/// (see [`crate::Hasher::is_canonical`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Digest(pub [u8; DIGEST_LEN]);

impl Digest {
    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; DIGEST_LEN] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses exactly 64 hex digits (an optional `0x` prefix is accepted).
    pub fn from_hex(s: &str) -> Result<Self, CommitError> {
        let s = s.strip_prefix("0x").unwrap_or(s);
        let mut out = [0u8; DIGEST_LEN];
        if s.len() != 2 * DIGEST_LEN {
            return Err(CommitError::WrongLength {
                what: "hex digest (64 hex digits)",
                expected: 64,
                got: s.len() as u64,
            });
        }
        hex::decode_to_slice(s, &mut out).map_err(|e| CommitError::InvalidHex(e.to_string()))?;
        Ok(Digest(out))
    }
}

impl From<[u8; DIGEST_LEN]> for Digest {
    fn from(b: [u8; DIGEST_LEN]) -> Self {
        Digest(b)
    }
}

impl AsRef<[u8]> for Digest {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl FromStr for Digest {
    type Err = CommitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::from_hex(s)
    }
}

/// Human-readable formats (JSON) get 64 hex digits; binary formats get the 32 raw bytes as a
/// fixed-size tuple (no length prefix).
impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            Digest::from_hex(&s).map_err(serde::de::Error::custom)
        } else {
            <[u8; DIGEST_LEN]>::deserialize(d).map(Digest)
        }
    }
}
