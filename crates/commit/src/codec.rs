//! Strict little-endian byte reader and writer for the compact binary encodings.
//!
//! The reader never panics: every read checks the remaining length first and returns
//! [`CommitError::Truncated`]; [`Reader::finish`] rejects trailing bytes. Later crates (protocol
//! messages) build their encodings on the same two types.

use crate::{CommitError, Digest, Result};

/// Appends little-endian fields to a byte vector.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends a little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends a digest's 32 bytes.
    pub fn digest(&mut self, d: &Digest) -> &mut Self {
        self.bytes(&d.0)
    }

    /// The bytes written so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads little-endian fields from a byte slice, strictly.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Reads `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(CommitError::Truncated {
                offset: self.pos as u64,
                needed: (n - self.remaining()) as u64,
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a little-endian u32.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian u64.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads a 32-byte digest.
    pub fn digest(&mut self) -> Result<Digest> {
        Ok(Digest(self.array()?))
    }

    /// Checks a magic prefix.
    pub fn magic(&mut self, expected: &'static str) -> Result<()> {
        let got = self.bytes(expected.len())?;
        if got != expected.as_bytes() {
            return Err(CommitError::BadMagic { expected });
        }
        Ok(())
    }

    /// Reads a version byte and checks it equals `supported`.
    pub fn version(&mut self, supported: u8) -> Result<()> {
        let found = self.u8()?;
        if found != supported {
            return Err(CommitError::UnsupportedVersion { found, supported });
        }
        Ok(())
    }

    /// Reads a u32 count and checks it against `max` and against the bytes left, given that each
    /// counted item takes at least `item_len` bytes (so a hostile count cannot make the caller
    /// allocate more than the input could hold).
    pub fn count(&mut self, what: &'static str, max: u64, item_len: usize) -> Result<usize> {
        let n = u64::from(self.u32()?);
        if n > max {
            return Err(CommitError::LimitExceeded {
                what,
                value: n,
                max,
            });
        }
        let need = n.saturating_mul(item_len as u64);
        if need > self.remaining() as u64 {
            return Err(CommitError::Truncated {
                offset: self.pos as u64,
                needed: need - self.remaining() as u64,
            });
        }
        Ok(n as usize)
    }

    /// Succeeds only if every byte was consumed.
    pub fn finish(self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(CommitError::TrailingBytes {
                count: count as u64,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strictness() {
        let mut w = Writer::new();
        w.bytes(b"MAGC")
            .u8(1)
            .u32(7)
            .u64(9)
            .digest(&Digest([3; 32]));
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        r.magic("MAGC").unwrap();
        r.version(1).unwrap();
        assert_eq!(r.u32().unwrap(), 7);
        assert_eq!(r.u64().unwrap(), 9);
        assert_eq!(r.digest().unwrap(), Digest([3; 32]));
        r.finish().unwrap();

        let mut r = Reader::new(&bytes[..3]);
        assert!(matches!(
            r.magic("MAGC"),
            Err(CommitError::Truncated { .. })
        ));
        let mut r = Reader::new(b"MAGX");
        assert!(matches!(r.magic("MAGC"), Err(CommitError::BadMagic { .. })));
        let mut r = Reader::new(&[2]);
        assert!(matches!(
            r.version(1),
            Err(CommitError::UnsupportedVersion { found: 2, .. })
        ));
        let r = Reader::new(&[0]);
        assert!(matches!(
            r.finish(),
            Err(CommitError::TrailingBytes { count: 1 })
        ));
        // A count larger than the input could hold is refused before any allocation.
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0x00]);
        assert!(matches!(
            r.count("items", u64::MAX, 32),
            Err(CommitError::Truncated { .. })
        ));
        let mut r = Reader::new(&[5, 0, 0, 0]);
        assert!(matches!(
            r.count("items", 4, 0),
            Err(CommitError::LimitExceeded { .. })
        ));
    }
}
