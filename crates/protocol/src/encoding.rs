//! Binary and JSON forms of the protocol's messages.
//!
//! Every message serializes with serde: JSON for people (digests and byte strings as lowercase
//! hex), and a compact binary form for the wire:
//!
//! ```text
//! "VTPM" ‖ version (u8 = 1) ‖ kind (u8) ‖ payload
//! ```
//!
//! where `payload` is the message in the [postcard wire format] (varint lengths and integers,
//! digests as 32 raw bytes, byte strings length-prefixed). Decoding is strict: the magic, version
//! and kind must match, the whole input must be consumed, the input may not exceed a size limit,
//! the input must be the canonical encoding of what it decodes to (no overlong varints), and the
//! decoded message is validated (e.g. a statement's geometry) before it is returned.
//! Hostile bytes give a [`ProtocolError::Decode`], never a panic; lengths inside the payload
//! cannot make the decoder allocate more than the input holds.
//!
//! [postcard wire format]: https://postcard.jamesmunns.com/wire-format

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{ProtocolError, Result};

/// Magic bytes of every binary message.
pub const MESSAGE_MAGIC: &[u8; 4] = b"VTPM";
/// Version of the binary message envelope (2: a statement ends with its `input_text`, field
/// 10; 3: a statement ends with its `trace_level`, a commitment with its `sublayer_roots` and an
/// opening with its `sublayers`, issue 16; 4: an opening's `pow_nonce` precedes its cells, so
/// that it can be checked as it streams in, issue 17; 5: a challenge ends with its
/// `attention` draw, sub-layer roots with a key-value root and an opening's sub-layer part
/// with its key-value cells and proof, issue 16; 6: a statement's sub-layer trace level ends
/// with its values' dtype, issue 16).
pub const MESSAGE_VERSION: u8 = 6;
/// Default size limit for a binary message (1 GiB).
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// Which message a binary envelope holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageKind {
    /// [`crate::Statement`].
    Statement = 1,
    /// [`crate::Commitment`].
    Commitment = 2,
    /// [`crate::Challenge`].
    Challenge = 3,
    /// [`crate::Opening`].
    Opening = 4,
    /// [`crate::Verdict`].
    Verdict = 5,
}

/// A message with a binary form: its kind and the validation run after decoding.
pub trait Message: Serialize + DeserializeOwned {
    /// The kind byte of the envelope.
    const KIND: MessageKind;
    /// Human name, for errors.
    const NAME: &'static str;

    /// Structural checks run after decoding (JSON or binary).
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// The binary envelope, in a buffer of exactly its size (an opening's bytes are held once,
    /// not in a buffer grown by doubling).
    fn to_bytes(&self) -> Vec<u8> {
        let payload = postcard::experimental::serialized_size(self).unwrap_or(64);
        let mut out = Vec::with_capacity(6 + payload);
        out.extend_from_slice(MESSAGE_MAGIC);
        out.push(MESSAGE_VERSION);
        out.push(Self::KIND as u8);
        postcard::to_extend(self, out).expect("serializing to a Vec cannot fail")
    }

    /// Writes the binary envelope ([`Message::to_bytes`]'s bytes) to `w` as it is serialized,
    /// holding no copy of it: for an opening as large as the cells it opens.
    ///
    /// # Errors
    /// The writer's error.
    fn write_bytes_to<W: std::io::Write>(&self, mut w: W) -> std::io::Result<()> {
        w.write_all(MESSAGE_MAGIC)?;
        w.write_all(&[MESSAGE_VERSION, Self::KIND as u8])?;
        postcard::to_io(self, w).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(())
    }

    /// Strict decoding with the default size limit.
    fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_bytes_with_limit(bytes, MAX_MESSAGE_BYTES)
    }

    /// Strict decoding: size limit, magic, version, kind, payload, no trailing bytes, validation.
    fn from_bytes_with_limit(bytes: &[u8], limit: usize) -> Result<Self> {
        let err = |reason: String| ProtocolError::Decode {
            what: Self::NAME,
            reason,
        };
        if bytes.len() > limit {
            return Err(err(format!(
                "{} bytes exceed the limit of {limit}",
                bytes.len()
            )));
        }
        if let Some(reason) = envelope_error(bytes, Self::KIND, Self::NAME) {
            return Err(err(reason));
        }
        let (msg, rest): (Self, &[u8]) =
            postcard::take_from_bytes(&bytes[6..]).map_err(|e| err(e.to_string()))?;
        if !rest.is_empty() {
            return Err(err(format!("{} trailing bytes", rest.len())));
        }
        // postcard accepts overlong varints (0x80 0x00 for 0); re-encoding and comparing makes
        // the binary form canonical: each message has exactly one encoding. The re-encoding is
        // compared as it is produced, so no second copy of a large opening is held.
        let mut same = SameAs {
            rest: bytes,
            differs: false,
        };
        let streamed = msg.write_bytes_to(&mut same);
        if streamed.is_err() || same.differs || !same.rest.is_empty() {
            return Err(err("not the canonical encoding (overlong varint?)".into()));
        }
        msg.validate()?;
        Ok(msg)
    }

    /// JSON, pretty-printed.
    fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("messages serialize to JSON")
    }

    /// JSON decoding followed by validation.
    fn from_json(s: &str) -> Result<Self> {
        let msg: Self = serde_json::from_str(s).map_err(|e| ProtocolError::Decode {
            what: Self::NAME,
            reason: e.to_string(),
        })?;
        msg.validate()?;
        Ok(msg)
    }
}

/// Steps 2-4 of the decoding rules (specs/protocol.md §6.6) on the start of a message of `kind`
/// (`name`): the reason the first six bytes are not its envelope (too short, another magic,
/// another version, another kind), or `None`.
pub(crate) fn envelope_error(bytes: &[u8], kind: MessageKind, name: &str) -> Option<String> {
    if bytes.len() < 6 || &bytes[..4] != MESSAGE_MAGIC {
        return Some("missing the VTPM magic".into());
    }
    if bytes[4] != MESSAGE_VERSION {
        return Some(format!(
            "envelope version {} (this build reads {MESSAGE_VERSION})",
            bytes[4]
        ));
    }
    if bytes[5] != kind as u8 {
        return Some(format!(
            "message kind {} where {} ({name}) was expected",
            bytes[5], kind as u8
        ));
    }
    None
}

/// A writer that compares what is written with `rest`, consuming it: `differs` once a byte
/// differs or more is written than `rest` holds.
struct SameAs<'a> {
    rest: &'a [u8],
    differs: bool,
}

impl std::io::Write for SameAs<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.rest.strip_prefix(buf) {
            Some(rest) if !self.differs => self.rest = rest,
            _ => self.differs = true,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serde helper for byte strings: lowercase hex in human-readable formats, raw bytes otherwise.
pub mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes bytes.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(bytes))
        } else {
            s.serialize_bytes(bytes)
        }
    }

    /// Deserializes bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            hex::decode(s.as_ref()).map_err(serde::de::Error::custom)
        } else {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Vec<u8>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                    Ok(v.to_vec())
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                    Ok(v)
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
}
