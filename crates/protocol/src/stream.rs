//! Reading an opening's binary envelope as it arrives, one opened cell at a time.
//!
//! An [`Opening`] in the binary envelope (specs/protocol.md §6.4, version 5) is
//!
//! ```text
//! "VTPM" ‖ 5 ‖ 4 ‖ varint(round) ‖ varint(pow_nonce) ‖ varint(count)
//!        ‖ count × (varint(layer) ‖ varint(chunk) ‖ varint(|data|) ‖ data)
//!        ‖ varint(siblings) ‖ 32 bytes per sibling ‖ sublayers
//! ```
//!
//! so everything a verifier needs before the first cell (the round, and the proof-of-work nonce
//! that fixes a non-interactive round's challenge) comes first. [`OpeningReader`] decodes that
//! head, then hands out the cells one by one, then the tail (the batch proof and the sub-layer
//! part, which are read whole). It accepts exactly the byte strings
//! [`Message::from_bytes_with_limit`] accepts and decodes them to the same opening (tested):
//! the size limit counts every byte read, varints must be minimal and fit their type, a length
//! is never trusted beyond the bytes that arrive, and nothing may follow the payload. What it
//! holds at any time is the current cell (and, after the cells, the tail).
//!
//! [`crate::verify_recorded_streams`] and [`crate::Verifier::receive_opening_stream`] check the
//! cells as they are read and keep only those a later cell's check needs.

use std::io::{BufReader, Read};

use serde::{Deserialize, Serialize};
use veritrace_commit::{BatchProof, CellId};

use crate::encoding::{envelope_error, Message, MessageKind};
use crate::{OpenedCell, Opening, ProtocolError, Result, SubLayerOpening};

/// A cell's buffer starts at this many bytes and at most doubles as its bytes arrive (capped
/// at its declared length), so a length prefix larger than the input allocates at most twice
/// what arrived, plus this block.
const READ_BLOCK: usize = 1 << 20;

/// What follows an opening's cells: its batch proof and its sub-layer part (encoded exactly as
/// these two fields of [`Opening`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpeningTail {
    /// Batch proof of all opened cells against the root.
    pub proof: BatchProof,
    /// The sub-layer cells and proofs, when the statement commits them.
    pub sublayers: Option<SubLayerOpening>,
}

/// A streaming decoder of one opening's binary envelope (see the [module docs](self)).
#[derive(Debug)]
pub struct OpeningReader<R> {
    inner: BufReader<R>,
    /// Where the bytes come from, named in decoding errors (none: not named).
    name: Option<String>,
    /// Bytes the envelope may still hold (the limit minus what was read).
    budget: u64,
    round: u32,
    pow_nonce: u64,
    cells: u64,
    /// Cells not yet read.
    left: u64,
}

impl<R: Read> OpeningReader<R> {
    /// Reads the envelope and the head (round, nonce, cell count) of an opening of at most
    /// `limit` bytes.
    ///
    /// # Errors
    /// [`ProtocolError::Decode`]: the input is not an opening's envelope of this version, is
    /// truncated, or exceeds `limit`; or the reader's I/O error (also as `Decode`).
    pub fn new(inner: R, limit: usize) -> Result<Self> {
        Self::named(inner, limit, None)
    }

    /// [`OpeningReader::new`] for bytes from `name` (a file), which every decoding error of
    /// this reader names: the error of an opening checked as it is read says which one.
    ///
    /// # Errors
    /// As [`OpeningReader::new`].
    pub fn named(inner: R, limit: usize, name: Option<String>) -> Result<Self> {
        let mut r = OpeningReader {
            inner: BufReader::with_capacity(64 << 10, inner),
            name,
            budget: limit as u64,
            round: 0,
            pow_nonce: 0,
            cells: 0,
            left: 0,
        };
        match r.read_head() {
            Ok(()) => Ok(r),
            Err(e) => Err(r.named_error(e)),
        }
    }

    /// The envelope, the round, the nonce and the cell count.
    fn read_head(&mut self) -> Result<()> {
        let mut envelope = [0u8; 6];
        self.read_exact(&mut envelope).map_err(|e| match e {
            ProtocolError::Decode { reason, .. } if reason.starts_with("truncated") => {
                decode("missing the VTPM magic".into())
            }
            e => e,
        })?;
        if let Some(reason) = envelope_error(&envelope, MessageKind::Opening, Opening::NAME) {
            return Err(decode(reason));
        }
        self.round =
            u32::try_from(self.varint(32)?).map_err(|_| decode("round overflows".into()))?;
        self.pow_nonce = self.varint(64)?;
        self.cells = self.varint(64)?;
        self.left = self.cells;
        Ok(())
    }

    /// `e` with the source's name in its reason.
    fn named_error(&self, e: ProtocolError) -> ProtocolError {
        match (e, &self.name) {
            (ProtocolError::Decode { what, reason }, Some(name)) => ProtocolError::Decode {
                what,
                reason: format!("{name}: {reason}"),
            },
            (e, _) => e,
        }
    }

    /// The round this opening answers.
    pub fn round(&self) -> u32 {
        self.round
    }

    /// The proof-of-work nonce it carries.
    pub fn pow_nonce(&self) -> u64 {
        self.pow_nonce
    }

    /// How many cells it says it opens (a claim: each is read only when it arrives).
    pub fn cell_count(&self) -> u64 {
        self.cells
    }

    /// The next opened cell, or `None` after the last one.
    ///
    /// # Errors
    /// [`ProtocolError::Decode`] on a truncated or non-canonical cell, or past the limit.
    pub fn next_cell(&mut self) -> Result<Option<OpenedCell>> {
        self.read_cell().map_err(|e| self.named_error(e))
    }

    fn read_cell(&mut self) -> Result<Option<OpenedCell>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let layer = self.varint(32)? as u32;
        let chunk = self.varint(32)? as u32;
        let len = self.varint(64)?;
        if len > self.budget {
            return Err(decode(format!(
                "a cell of {len} bytes exceeds the size limit of the message"
            )));
        }
        let len = usize::try_from(len).map_err(|_| decode("cell length overflows".into()))?;
        let mut data: Vec<u8> = Vec::new();
        while data.len() < len {
            // grow by what has arrived (doubling, capped at the declared length)
            let want = (len - data.len()).min(data.len().max(READ_BLOCK));
            data.reserve_exact(want);
            let start = data.len();
            data.resize(start + want, 0);
            self.read_exact(&mut data[start..])?;
        }
        Ok(Some(OpenedCell {
            cell: CellId { layer, chunk },
            data,
        }))
    }

    /// Reads the cells not yet read (discarding them) and the tail, and checks that nothing
    /// follows it.
    ///
    /// # Errors
    /// [`ProtocolError::Decode`] as [`Message::from_bytes_with_limit`] would report it.
    pub fn finish(mut self) -> Result<OpeningTail> {
        self.read_tail().map_err(|e| self.named_error(e))
    }

    fn read_tail(&mut self) -> Result<OpeningTail> {
        while self.read_cell()?.is_some() {}
        let mut rest = Vec::new();
        (&mut self.inner)
            .take(self.budget.saturating_add(1))
            .read_to_end(&mut rest)
            .map_err(io)?;
        if rest.len() as u64 > self.budget {
            return Err(decode("the message exceeds its size limit".into()));
        }
        let (tail, trailing): (OpeningTail, &[u8]) =
            postcard::take_from_bytes(&rest).map_err(|e| decode(e.to_string()))?;
        if !trailing.is_empty() {
            return Err(decode(format!("{} trailing bytes", trailing.len())));
        }
        // canonical: the tail re-encodes to exactly what was read (no overlong varint)
        let again = postcard::to_allocvec(&tail).map_err(|e| decode(e.to_string()))?;
        if again != rest {
            return Err(decode(
                "not the canonical encoding (overlong varint?)".into(),
            ));
        }
        Ok(tail)
    }

    /// Reads the whole opening ([`Opening`]), as [`Message::from_bytes_with_limit`] decodes it.
    ///
    /// # Errors
    /// As [`OpeningReader::next_cell`] and [`OpeningReader::finish`].
    pub fn into_opening(mut self) -> Result<Opening> {
        let mut cells = Vec::new();
        while let Some(c) = self.next_cell()? {
            cells.push(c);
        }
        let (round, pow_nonce) = (self.round, self.pow_nonce);
        let tail = self.finish()?;
        Ok(Opening {
            round,
            pow_nonce,
            cells,
            proof: tail.proof,
            sublayers: tail.sublayers,
        })
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        if buf.len() as u64 > self.budget {
            return Err(decode("the message exceeds its size limit".into()));
        }
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => decode("truncated input".into()),
            _ => io(e),
        })?;
        self.budget -= buf.len() as u64;
        Ok(())
    }

    fn byte(&mut self) -> Result<u8> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b)?;
        Ok(b[0])
    }

    /// A minimal unsigned LEB128 varint of a `bits`-bit integer (postcard's `u32`/`u64`/
    /// `usize`): at most ⌈bits/7⌉ bytes, no bits above the type, no trailing zero group.
    fn varint(&mut self, bits: u32) -> Result<u64> {
        let max_bytes = bits.div_ceil(7);
        let mut value = 0u64;
        for i in 0..max_bytes {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            let shift = 7 * i;
            if bits - shift < 7 && part >> (bits - shift) != 0 {
                return Err(decode(format!("a varint overflows u{bits}")));
            }
            value |= part << shift;
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(decode(
                        "not the canonical encoding (overlong varint?)".into(),
                    ));
                }
                return Ok(value);
            }
        }
        Err(decode(format!("a varint longer than u{bits} allows")))
    }
}

fn decode(reason: String) -> ProtocolError {
    ProtocolError::Decode {
        what: Opening::NAME,
        reason,
    }
}

fn io(e: std::io::Error) -> ProtocolError {
    decode(format!("reading failed: {e}"))
}
