//! The engine-independent model digest (`specs/model-digest.md`): what a statement's
//! `model_digest` holds for the architectures veritrace computes, defined over a checkpoint's
//! semantic config fields and its tensors' values so that another party (a PyTorch prover, an
//! auditor) computes it from the checkpoint files alone, without running veritrace's inference.
//!
//! ```text
//! digest = BLAKE3( "veritrace/model-digest/v2"
//!                  || str(architecture)
//!                  || u64(F) || F × ( str(name) || value )          fields, in the spec's order
//!                  || u64(N) || N × ( str(name) || u64(rank) || rank × u64(dim)
//!                                     || elements as f32 little-endian ) )
//!                                                  tensors, in bytewise order of their names
//! str(s) = u64(byte length) || UTF-8 bytes;  u64 = 8 bytes little-endian
//! value  = 0x00 || u64 (integer) | 0x01 || f64 bits, little-endian (float) | 0x02 || str (string)
//! ```
//!
//! Elements stored as BF16 or F16 are widened to f32 exactly, so the digest names the weights'
//! values, not the file's storage type. Which fields and tensors each architecture contributes
//! is in the spec and in [`crate::llama`] and [`crate::bert`].

use veritrace_commit::Digest;

use crate::NamedTensor;

/// The label at the start of every model digest's input.
pub const MODEL_DIGEST_LABEL: &[u8] = b"veritrace/model-digest/v2";

/// A config field's value in the digest.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// An integer (tag 0x00, u64 little-endian).
    Int(u64),
    /// A float (tag 0x01, the f64's bits little-endian).
    Float(f64),
    /// A string (tag 0x02, length-prefixed UTF-8).
    Str(String),
}

fn put_str(h: &mut blake3::Hasher, s: &str) {
    h.update(&(s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

/// The digest of a model of `architecture` with config `fields` (in the spec's order) and
/// `tensors` (any order: they are hashed in bytewise order of their names).
pub fn model_digest(
    architecture: &str,
    fields: &[(&str, FieldValue)],
    tensors: &[NamedTensor],
) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(MODEL_DIGEST_LABEL);
    put_str(&mut h, architecture);
    h.update(&(fields.len() as u64).to_le_bytes());
    for (name, value) in fields {
        put_str(&mut h, name);
        match value {
            FieldValue::Int(v) => {
                h.update(&[0]);
                h.update(&v.to_le_bytes());
            }
            FieldValue::Float(v) => {
                h.update(&[1]);
                h.update(&v.to_bits().to_le_bytes());
            }
            FieldValue::Str(s) => {
                h.update(&[2]);
                put_str(&mut h, s);
            }
        }
    }
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| tensors[a].0.as_bytes().cmp(tensors[b].0.as_bytes()));
    h.update(&(tensors.len() as u64).to_le_bytes());
    let mut bytes = Vec::new();
    for i in order {
        let (name, shape, data) = &tensors[i];
        put_str(&mut h, name);
        h.update(&(shape.len() as u64).to_le_bytes());
        for &dim in shape {
            h.update(&(dim as u64).to_le_bytes());
        }
        // little-endian f32 bytes: on a little-endian machine the values' own bytes, hashed in
        // place on every thread (BLAKE3's tree hashing gives the same digest either way)
        if cfg!(target_endian = "little") {
            let raw = bytemuck::cast_slice::<f32, u8>(data);
            if raw.len() >= 1 << 20 {
                h.update_rayon(raw);
            } else {
                h.update(raw);
            }
        } else {
            bytes.clear();
            bytes.reserve(data.len() * 4);
            for v in data {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            h.update(&bytes);
        }
    }
    Digest(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answer, computed with specs/reference/model_digest_ref.py's `digest()` on the same
    /// fields and tensors.
    #[test]
    fn known_answer() {
        let d = model_digest(
            "llama",
            &[
                ("vocab_size", FieldValue::Int(3)),
                ("rope_theta", FieldValue::Float(10000.0)),
                ("rope_type", FieldValue::Str("default".into())),
            ],
            &[
                ("b".into(), vec![2], vec![1.0, -2.5]),
                ("a".into(), vec![1, 1], vec![0.5]),
            ],
        );
        assert_eq!(d.to_string(), KNOWN);
    }

    const KNOWN: &str = "4d4ef15daf941b07bfb16624e63964e65945c26ede424217ab26f949d96fc80f";
}
