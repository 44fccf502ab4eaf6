//! The decoder's sub-layer trace (issue 16): the row layouts of the two committed sub-layer
//! traces (specs/protocol.md §3.5, specs/freivalds.md §6), the prover's run that captures and
//! packs them, and [`KeyedVerifier`], the protocol engine that checks a challenged cell
//! algebraically from them ([`crate::freivalds::check_sublayer_values`]).
//!
//! # Row layouts
//!
//! For a Llama-style decoder of width `d`, `h` query heads and `g` key/value heads of size
//! `n = d / h`, and MLP width `m`, sub-layer `s` (hidden layer `l = s + 1`) holds per token row,
//! in this order (committed in the statement's sub-layer dtype: the setup's activation type,
//! f32, bf16 or f16, each value exact; trace files hold them as f32):
//!
//! | trace | elements | width |
//! |---|---|---|
//! | context | `normed` (attention norm output) ‖ `k` ‖ `v` (projections, before the rotary embedding) | `d + 2 g n` |
//! | cell | `q` (before the rotary embedding) ‖ `attn` (attention output) ‖ `o` ‖ `mlp_in` (MLP norm output) ‖ `gate` ‖ `up` ‖ `act` (`SiLU(gate) ⊙ up`) ‖ `down` | `2 h n + 3 d + 3 m` |
//!
//! `small` (d 512, 8 heads over 4, m 1376): context 1024, cell 6272 elements per row.

use std::ops::Range;

use veritrace_commit::{Dtype, HasherId};
use veritrace_protocol::{
    AlgebraicCheck, HeadClaim, ProtocolError, Recompute, Statement, TraceLevel,
};

use crate::freivalds::{check_sublayer_values, VerifierKey};
use crate::llama::{ModelConfig, SubLayers};
use crate::{LlamaModel, ModelError, RecomputeOn, Result, Setup, Trace};

/// The widths of a decoder's sub-layer rows (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubLayerLayout {
    /// `d`.
    pub hidden: usize,
    /// `h n`: the query and attention-output width.
    pub q: usize,
    /// `g n`: the key and value width.
    pub kv: usize,
    /// `m`.
    pub mlp: usize,
    /// `h`: query heads.
    pub heads: usize,
    /// `g`: key-value heads.
    pub kv_heads: usize,
}

impl SubLayerLayout {
    /// The layout of a decoder configuration.
    pub fn of(config: &ModelConfig) -> Self {
        let n = config.head_dim();
        SubLayerLayout {
            hidden: config.hidden_size,
            q: config.num_heads * n,
            kv: config.num_kv_heads * n,
            mlp: config.intermediate_size,
            heads: config.num_heads,
            kv_heads: config.num_kv_heads,
        }
    }

    /// `n`: the head size (`kv / g`).
    pub fn head_dim(&self) -> usize {
        self.kv / self.kv_heads.max(1)
    }

    /// The statement's by-head trace level for this layout (specs/protocol.md §3.5): the
    /// context trace holds the attention norm's output (`d`), the key-value trace each
    /// key-value head's key ‖ value (`2 n`), the cell trace as at [`TraceLevel::SubLayer`].
    /// Fails when a width does not fit the statement's `u32`.
    pub fn by_head_level(&self) -> Result<TraceLevel> {
        let w = |x: usize| {
            u32::try_from(x).map_err(|_| {
                ModelError::InvalidArgument(format!("a sub-layer row of {x} elements"))
            })
        };
        Ok(TraceLevel::SubLayerByHead {
            context: w(self.hidden)?,
            cell: w(self.cell_width())?,
            heads: w(self.heads)?,
            kv_heads: w(self.kv_heads)?,
            kv: w(2 * self.head_dim())?,
            dtype: Dtype::F32,
        })
    }

    /// Elements per row of the context trace: `d + 2 g n`.
    pub fn context_width(&self) -> usize {
        self.hidden + 2 * self.kv
    }

    /// Elements per row of the cell trace: `2 h n + 3 d + 3 m`.
    pub fn cell_width(&self) -> usize {
        2 * self.q + 3 * self.hidden + 3 * self.mlp
    }

    /// The statement's trace level for this layout, f32 elements ([`TraceLevel::with_dtype`]
    /// for another). Fails when a width does not fit the statement's `u32`.
    pub fn trace_level(&self) -> Result<TraceLevel> {
        let w = |x: usize| {
            u32::try_from(x).map_err(|_| {
                ModelError::InvalidArgument(format!("a sub-layer row of {x} elements"))
            })
        };
        Ok(TraceLevel::SubLayer {
            context: w(self.context_width())?,
            cell: w(self.cell_width())?,
            dtype: Dtype::F32,
        })
    }

    fn context_parts(&self) -> [usize; 3] {
        [self.hidden, self.kv, self.kv]
    }

    fn cell_parts(&self) -> [usize; 8] {
        let (d, q, m) = (self.hidden, self.q, self.mlp);
        [q, q, d, d, m, m, m, d]
    }

    /// Packs one layer's captured values (every field over the same `rows`) into its context
    /// and cell rows.
    pub fn pack(&self, sub: &SubLayers) -> Result<(Vec<f32>, Vec<f32>)> {
        let rows = sub.normed.len() / self.hidden.max(1);
        let context = interleave(&[&sub.normed, &sub.k, &sub.v], &self.context_parts(), rows)?;
        let cell = interleave(
            &[
                &sub.q,
                &sub.attn,
                &sub.o,
                &sub.mlp_in,
                &sub.gate,
                &sub.up,
                &sub.act,
                &sub.down,
            ],
            &self.cell_parts(),
            rows,
        )?;
        Ok((context, cell))
    }

    /// Rows of one layer's captured values (`sub`, every field over the same rows): the
    /// context fields (`normed`, `k`, `v`) at rows `context`, the cell fields (`q`, `attn`, `o`,
    /// `mlp_in`, `gate`, `up`, `act`, `down`) at rows `cell` — what a cell's claim holds (the
    /// context rows `0..e`, the cell's rows `lo..e`). An empty range gives empty fields.
    ///
    /// # Errors
    /// A range beyond a field's rows.
    pub fn rows(
        &self,
        sub: &SubLayers,
        context: Range<usize>,
        cell: Range<usize>,
    ) -> Result<SubLayers> {
        let take = |x: &[f32], width: usize, r: &Range<usize>| -> Result<Vec<f32>> {
            x.get(r.start * width..r.end * width)
                .map(<[f32]>::to_vec)
                .ok_or_else(|| {
                    ModelError::InvalidArgument(format!(
                        "rows {r:?} of {} rows of {width}",
                        x.len() / width.max(1)
                    ))
                })
        };
        let (d, q, kv, m) = (self.hidden, self.q, self.kv, self.mlp);
        Ok(SubLayers {
            normed: take(&sub.normed, d, &context)?,
            k: take(&sub.k, kv, &context)?,
            v: take(&sub.v, kv, &context)?,
            q: take(&sub.q, q, &cell)?,
            attn: take(&sub.attn, q, &cell)?,
            o: take(&sub.o, d, &cell)?,
            mlp_in: take(&sub.mlp_in, d, &cell)?,
            gate: take(&sub.gate, m, &cell)?,
            up: take(&sub.up, m, &cell)?,
            act: take(&sub.act, m, &cell)?,
            down: take(&sub.down, d, &cell)?,
        })
    }

    /// The `normed`, `k` and `v` rows of context rows `values` (the other fields empty).
    pub fn unpack_context(&self, values: &[f32]) -> Result<SubLayers> {
        let [normed, k, v] = split(values, &self.context_parts(), "context")?;
        Ok(SubLayers {
            normed,
            k,
            v,
            ..SubLayers::default()
        })
    }

    /// The `q`, `attn`, `o`, `mlp_in`, `gate`, `up`, `act` and `down` rows of cell rows
    /// `values` (`normed`, `k`, `v` empty).
    pub fn unpack_cell(&self, values: &[f32]) -> Result<SubLayers> {
        Ok(cell_fields(split(values, &self.cell_parts(), "cell")?))
    }
}

impl SubLayerLayout {
    /// [`SubLayerLayout::unpack_cell`] of little-endian `dtype` bytes (f32, bf16 or f16),
    /// decoded straight into the fields (one pass over the bytes, no intermediate f32 copy of
    /// the whole cell: at Llama-3-70B shapes a 16-row f32 cell is 8.7 MB).
    ///
    /// # Errors
    /// Bytes that are not whole cell rows; an integer dtype.
    pub fn unpack_cell_bytes(&self, bytes: &[u8], dtype: Dtype) -> Result<SubLayers> {
        Ok(cell_fields(split_bytes(
            bytes,
            dtype,
            &self.cell_parts(),
            "cell",
        )?))
    }
}

/// The cell part's fields in their layout order (`q`, `attn`, `o`, `mlp_in`, `gate`, `up`,
/// `act`, `down`; the context's empty).
fn cell_fields([q, attn, o, mlp_in, gate, up, act, down]: [Vec<f32>; 8]) -> SubLayers {
    SubLayers {
        q,
        attn,
        o,
        mlp_in,
        gate,
        up,
        act,
        down,
        ..SubLayers::default()
    }
}

/// [`split`] of little-endian `dtype` bytes, each field's part of a row decoded as it is
/// copied.
fn split_bytes<const N: usize>(
    bytes: &[u8],
    dtype: Dtype,
    widths: &[usize; N],
    what: &'static str,
) -> Result<[Vec<f32>; N]> {
    let size = value_size(dtype)?;
    let width: usize = widths.iter().sum();
    if width == 0 || !bytes.len().is_multiple_of(size * width) {
        return Err(ModelError::WrongLength {
            what,
            expected: format!(
                "a multiple of {} bytes ({width} {dtype} elements)",
                size * width
            ),
            got: bytes.len(),
        });
    }
    let rows = bytes.len() / (size * width);
    let mut out: [Vec<f32>; N] = std::array::from_fn(|i| Vec::with_capacity(rows * widths[i]));
    for row in bytes.chunks_exact(size * width) {
        let mut at = 0;
        for (o, &w) in out.iter_mut().zip(widths) {
            extend_decoded(dtype, o, &row[size * at..size * (at + w)]);
            at += w;
        }
    }
    Ok(out)
}

/// Bytes per sub-layer value of `dtype`: 4 (f32) or 2 (bf16, f16); an integer type is no
/// sub-layer dtype.
fn value_size(dtype: Dtype) -> Result<usize> {
    match dtype {
        Dtype::F32 | Dtype::Bf16 | Dtype::F16 => Ok(dtype.size()),
        Dtype::I8 => Err(ModelError::InvalidArgument(
            "sub-layer values are f32, bf16 or f16, not i8".into(),
        )),
    }
}

/// A bf16 value's f32: its 16 bits are the f32's high half (exact for every bf16, NaN
/// included; one shift, so the decoding loops vectorize).
fn bf16_f32(b: [u8; 2]) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16)
}

/// Decodes little-endian `dtype` values (f32, bf16 or f16; exact) into `out`, one per element
/// of `out` (`bytes` holds `out.len()` of them).
fn decode_into(dtype: Dtype, out: &mut [f32], bytes: &[u8]) {
    match dtype {
        Dtype::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.as_chunks::<4>().0) {
                *o = f32::from_le_bytes(*b);
            }
        }
        Dtype::Bf16 => {
            for (o, b) in out.iter_mut().zip(bytes.as_chunks::<2>().0) {
                *o = bf16_f32(*b);
            }
        }
        Dtype::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.as_chunks::<2>().0) {
                *o = half::f16::from_bits(u16::from_le_bytes(*b)).to_f32();
            }
        }
        Dtype::I8 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = f32::from(b as i8);
            }
        }
    }
}

/// Appends little-endian `dtype` values (f32, bf16 or f16; exact) to `out` (no zeroed buffer
/// written first: at Llama-3-70B shapes a cell's fields are 8 MB).
fn extend_decoded(dtype: Dtype, out: &mut Vec<f32>, bytes: &[u8]) {
    match dtype {
        Dtype::F32 => out.extend(
            bytes
                .as_chunks::<4>()
                .0
                .iter()
                .map(|b| f32::from_le_bytes(*b)),
        ),
        Dtype::Bf16 => out.extend(bytes.as_chunks::<2>().0.iter().map(|b| bf16_f32(*b))),
        Dtype::F16 => out.extend(
            bytes
                .as_chunks::<2>()
                .0
                .iter()
                .map(|b| half::f16::from_bits(u16::from_le_bytes(*b)).to_f32()),
        ),
        Dtype::I8 => out.extend(bytes.iter().map(|&b| f32::from(b as i8))),
    }
}

/// Little-endian `dtype` values decoded (a trailing partial element is dropped; callers check
/// lengths).
fn decode(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(bytes.len() / dtype.size());
    extend_decoded(dtype, &mut out, bytes);
    out
}

/// Little-endian f32 bytes (a trace file's sub-layer layer) as `dtype` (f32: unchanged).
///
/// # Errors
/// A value `dtype` does not hold exactly (a sub-layer trace is committed as the values the
/// engine computed, never rounded), or an integer dtype.
pub fn narrow_values(f32_bytes: Vec<u8>, dtype: Dtype) -> Result<Vec<u8>> {
    value_size(dtype)?;
    let words = f32_bytes.as_chunks::<4>().0;
    let inexact = |i: usize| inexact_value(i, f32::from_le_bytes(words[i]), dtype);
    match dtype {
        Dtype::Bf16 => {
            // a bf16 value is an f32 whose low 16 bits are zero, and its bits are the high half:
            // one vectorized scan, then one vectorized copy of the high halves
            if let Some(i) = words.iter().position(|c| c[0] | c[1] != 0) {
                return Err(inexact(i));
            }
            let halves: Vec<[u8; 2]> = words.iter().map(|c| [c[2], c[3]]).collect();
            Ok(halves.into_flattened())
        }
        Dtype::F16 => {
            let mut out = Vec::with_capacity(f32_bytes.len() / 2);
            for (i, c) in words.iter().enumerate() {
                let x = f32::from_le_bytes(*c);
                let h = half::f16::from_f32(x);
                if h.to_f32().to_bits() != x.to_bits() {
                    return Err(inexact(i));
                }
                out.extend_from_slice(&h.to_bits().to_le_bytes());
            }
            Ok(out)
        }
        _ => Ok(f32_bytes),
    }
}

/// The error of sub-layer value `i`, `x`, which `dtype` does not hold.
fn inexact_value(i: usize, x: f32, dtype: Dtype) -> ModelError {
    ModelError::InvalidArgument(format!(
        "sub-layer value {i} is {x:e}, which {dtype} does not hold exactly (the statement \
         commits {dtype} sub-layer values: those of an engine computing in {dtype})"
    ))
}

/// [`narrow_values`] of values: their little-endian bytes as `dtype`, without an f32 byte copy
/// first.
fn narrow_f32s(values: &[f32], dtype: Dtype) -> Result<Vec<u8>> {
    match dtype {
        Dtype::Bf16 => {
            if let Some(i) = values.iter().position(|x| x.to_bits() & 0xffff != 0) {
                return Err(inexact_value(i, values[i], dtype));
            }
            let halves: Vec<[u8; 2]> = values
                .iter()
                .map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
                .collect();
            Ok(halves.into_flattened())
        }
        Dtype::F32 => {
            let words: Vec<[u8; 4]> = values.iter().map(|x| x.to_le_bytes()).collect();
            Ok(words.into_flattened())
        }
        _ => narrow_values(values.iter().flat_map(|x| x.to_le_bytes()).collect(), dtype),
    }
}

fn interleave(fields: &[&Vec<f32>], widths: &[usize], rows: usize) -> Result<Vec<f32>> {
    let width: usize = widths.iter().sum();
    let mut out = Vec::with_capacity(rows * width);
    for (f, &w) in fields.iter().zip(widths) {
        if f.len() != rows * w {
            return Err(ModelError::WrongLength {
                what: "sub-layer values",
                expected: format!("{rows} rows of {w}"),
                got: f.len(),
            });
        }
    }
    for r in 0..rows {
        for (f, &w) in fields.iter().zip(widths) {
            out.extend_from_slice(&f[r * w..(r + 1) * w]);
        }
    }
    Ok(out)
}

fn split<const N: usize>(
    values: &[f32],
    widths: &[usize; N],
    what: &'static str,
) -> Result<[Vec<f32>; N]> {
    let width: usize = widths.iter().sum();
    if width == 0 || !values.len().is_multiple_of(width) {
        return Err(ModelError::WrongLength {
            what,
            expected: format!("a multiple of {width} elements"),
            got: values.len(),
        });
    }
    let rows = values.len() / width;
    let mut out: [Vec<f32>; N] = std::array::from_fn(|i| Vec::with_capacity(rows * widths[i]));
    for row in values.chunks_exact(width) {
        let mut at = 0;
        for (o, &w) in out.iter_mut().zip(widths) {
            o.extend_from_slice(&row[at..at + w]);
            at += w;
        }
    }
    Ok(out)
}

/// One trace as little-endian bytes per layer.
pub type LayerBytes = Vec<Vec<u8>>;

/// Splits context rows in the [`TraceLevel::SubLayer`] layout (`normed ‖ k ‖ v`, little-endian
/// values of `size` bytes: 4 for f32, the layout trace files hold, 2 for bf16 or f16; `d`
/// normed elements, `g` key-value heads of `n`) into the by-head level's context rows
/// (`normed`) and one key-value row set per key-value head (`k_h ‖ v_h`).
///
/// # Errors
/// Bytes that are not whole context rows.
pub fn split_by_head(
    context: &[u8],
    d: usize,
    n: usize,
    g: usize,
    size: usize,
) -> Result<(Vec<u8>, Vec<Vec<u8>>)> {
    let (d, n) = (size * d, size * n);
    let width = d + 2 * g * n;
    if width == 0 || !context.len().is_multiple_of(width) {
        return Err(ModelError::WrongLength {
            what: "context rows",
            expected: format!("a multiple of {width} bytes"),
            got: context.len(),
        });
    }
    let rows = context.len() / width;
    let mut normed = Vec::with_capacity(rows * d);
    let mut kv: Vec<Vec<u8>> = (0..g).map(|_| Vec::with_capacity(rows * 2 * n)).collect();
    for row in context.chunks_exact(width) {
        normed.extend_from_slice(&row[..d]);
        let (k, v) = row[d..].split_at(g * n);
        for (h, out) in kv.iter_mut().enumerate() {
            out.extend_from_slice(&k[h * n..(h + 1) * n]);
            out.extend_from_slice(&v[h * n..(h + 1) * n]);
        }
    }
    Ok((normed, kv))
}

/// The sub-layer traces a [`veritrace_protocol::Prover`] of `statement` holds
/// ([`veritrace_protocol::Prover::with_sublayer_parts`]), from the per-layer context and cell
/// bytes in the [`TraceLevel::SubLayer`] layout (what [`SubLayerTrace::bytes`] and
/// [`read_sublayers`] give): as they are at that level; at [`TraceLevel::SubLayerByHead`]
/// (context width `d`, `g` key-value heads of key-value width `2 n`) split by
/// [`split_by_head`], the key-value trace's layer `s · g + h` being layer `s`'s head `h`.
///
/// Each layer is then narrowed to the statement's sub-layer dtype ([`narrow_values`]).
///
/// # Errors
/// A hidden-only statement, an odd key-value width, malformed rows, a value the statement's
/// dtype does not hold exactly.
pub fn prover_parts(
    statement: &Statement,
    context: LayerBytes,
    cell: LayerBytes,
) -> Result<Vec<(veritrace_protocol::SubLayerPart, LayerBytes)>> {
    let dtype = statement.trace_level.dtype().unwrap_or(Dtype::F32);
    let narrow = |layers: LayerBytes| -> Result<LayerBytes> {
        layers
            .into_iter()
            .map(|l| narrow_values(l, dtype))
            .collect()
    };
    split_parts(statement, narrow(context)?, narrow(cell)?, dtype.size())
}

/// [`prover_parts`] of layers already in the statement's dtype (`size` bytes a value).
fn split_parts(
    statement: &Statement,
    context: LayerBytes,
    cell: LayerBytes,
    size: usize,
) -> Result<Vec<(veritrace_protocol::SubLayerPart, LayerBytes)>> {
    use veritrace_protocol::SubLayerPart;
    match statement.trace_level {
        TraceLevel::Hidden => Err(ModelError::InvalidArgument(
            "the statement commits hidden states only".into(),
        )),
        TraceLevel::SubLayer { .. } => Ok(vec![
            (SubLayerPart::Context, context),
            (SubLayerPart::Cell, cell),
        ]),
        TraceLevel::SubLayerByHead {
            context: d,
            kv_heads,
            kv: w,
            ..
        } => {
            if !w.is_multiple_of(2) {
                return Err(ModelError::InvalidArgument(format!(
                    "a key-value row of {w} elements is not a key and a value of one size"
                )));
            }
            let (d, n, g) = (d as usize, (w / 2) as usize, kv_heads as usize);
            let mut normed = Vec::with_capacity(context.len());
            let mut kv = Vec::with_capacity(context.len() * g);
            for layer in &context {
                let (x, heads) = split_by_head(layer, d, n, g, size)?;
                normed.push(x);
                kv.extend(heads);
            }
            Ok(vec![
                (SubLayerPart::Context, normed),
                (SubLayerPart::Kv, kv),
                (SubLayerPart::Cell, cell),
            ])
        }
    }
}

/// A decoder run's two sub-layer traces, one entry per layer `1 … L` (index `s` is hidden
/// layer `s + 1`), each row-major f32 `[tokens, width]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubLayerTrace {
    /// The context trace.
    pub context: Vec<Vec<f32>>,
    /// The cell trace.
    pub cell: Vec<Vec<f32>>,
}

impl SubLayerTrace {
    /// Packs captured values ([`LlamaModel::trace_sublayers`]) under `layout`.
    pub fn pack(layout: &SubLayerLayout, sub: &[SubLayers]) -> Result<Self> {
        let mut out = SubLayerTrace::default();
        for s in sub {
            let (context, cell) = layout.pack(s)?;
            out.context.push(context);
            out.cell.push(cell);
        }
        Ok(out)
    }

    /// Both traces as little-endian bytes per layer (what a [`veritrace_protocol::Prover`]
    /// holds, [`veritrace_protocol::Prover::with_sublayers`]).
    pub fn bytes(&self) -> (LayerBytes, LayerBytes) {
        let b = |v: &Vec<Vec<f32>>| -> Vec<Vec<u8>> {
            v.iter()
                .map(|l| l.iter().flat_map(|x| x.to_le_bytes()).collect())
                .collect()
        };
        (b(&self.context), b(&self.cell))
    }

    /// The sub-layer traces a [`veritrace_protocol::Prover`] of `statement` holds
    /// ([`veritrace_protocol::Prover::with_sublayer_parts`]): [`prover_parts`] of
    /// [`SubLayerTrace::bytes`], split by head at that level and in the statement's dtype.
    ///
    /// # Errors
    /// As [`prover_parts`].
    pub fn parts(
        &self,
        statement: &Statement,
    ) -> Result<Vec<(veritrace_protocol::SubLayerPart, LayerBytes)>> {
        // narrowed straight from the values (no f32 bytes first), then split
        let dtype = statement.trace_level.dtype().unwrap_or(Dtype::F32);
        let narrow = |layers: &Vec<Vec<f32>>| -> Result<LayerBytes> {
            layers.iter().map(|l| narrow_f32s(l, dtype)).collect()
        };
        split_parts(
            statement,
            narrow(&self.context)?,
            narrow(&self.cell)?,
            dtype.size(),
        )
    }

    /// Bytes of both traces as f32 (what a trace file holds; a half-precision statement
    /// commits half of it).
    pub fn byte_len(&self) -> usize {
        self.context
            .iter()
            .chain(&self.cell)
            .map(|l| 4 * l.len())
            .sum()
    }
}

impl LlamaModel {
    /// The layout of this decoder's sub-layer rows.
    pub fn sublayer_layout(&self) -> SubLayerLayout {
        SubLayerLayout::of(self.config())
    }

    /// [`LlamaModel::prove_run`] with the sub-layer trace: generates `n_out` tokens, traces the
    /// sequence capturing every linear map's inputs and outputs
    /// ([`LlamaModel::trace_sublayers`]: the hidden states are bitwise those of the plain
    /// trace), and returns the statement at [`TraceLevel::SubLayer`] with both traces. A setup
    /// that skips or reuses a layer is refused (it computes no linear map there).
    pub fn prove_run_sublayers(
        &self,
        setup: &Setup,
        prompt: &[u32],
        n_out: usize,
        chunk: u32,
        hasher: HasherId,
    ) -> Result<(Statement, Trace, SubLayerTrace)> {
        let output = self.generate(setup, prompt, n_out, chunk as usize)?;
        let tokens: Vec<u32> = prompt.iter().chain(&output).copied().collect();
        let (trace, sub) = self.trace_sublayers(setup, &tokens, chunk as usize)?;
        self.sublayer_statement(setup, (prompt, output), (trace, &sub), chunk, hasher)
    }

    /// The statement at [`TraceLevel::SubLayer`] of a run of `prompt ‖ output` (on any engine:
    /// this CPU's or a GPU's) with its trace and per-layer sub-layer values, packed in the
    /// layout trace files hold; the sub-layer values are committed in the setup's activation
    /// type ([`crate::Precision::dtype`]).
    pub(crate) fn sublayer_statement(
        &self,
        setup: &Setup,
        (prompt, output): (&[u32], Vec<u32>),
        (trace, sub): (Trace, &[SubLayers]),
        chunk: u32,
        hasher: HasherId,
    ) -> Result<(Statement, Trace, SubLayerTrace)> {
        let layout = self.sublayer_layout();
        let sub = SubLayerTrace::pack(&layout, sub)?;
        let (mut statement, trace) =
            self.statement_for(setup, prompt, output, trace, chunk, hasher)?;
        statement.trace_level = layout.trace_level()?.with_dtype(setup.precision.dtype());
        Ok((statement, trace, sub))
    }
}

/// A verifier's engine for sub-layer statements: the decoder's CPU recompute for embeddings,
/// recomputed layers and output tokens, and [`Recompute::check_sublayers`] through the
/// verifier's secret [`VerifierKey`]: Freivalds on every linear map of the cell and on the
/// keys and values of its context, the nonlinear parts recomputed from the opened values
/// within `tolerance` (relative L∞; 0 demands bitwise agreement, right for a prover on this
/// engine), and the output `(h_in + o) + down` returned for the protocol's tolerance policy.
///
/// Supported: decoders (Llama, Qwen2 with its q/k/v biases, Mistral's sliding window: the rows
/// before a cell's window are zero-padded, their keys being masked), and setups whose weights
/// are the key's ([`crate::freivalds::VerifierKey::for_setup`] derives a key of a bf16, f16 or
/// quantized setup's weights).
#[derive(Debug, Clone, Copy)]
pub struct KeyedVerifier<'a> {
    /// The model.
    pub model: &'a LlamaModel,
    /// The verifier's secret key for it.
    pub key: &'a VerifierKey,
    /// Relative L∞ tolerance of the recomputed nonlinear parts.
    pub tolerance: f64,
    /// The Freivalds bound used, as a multiple `s` of the rigorous rounding bound `B`: a row
    /// passes when `|v·x − r·y| ≤ s·B`. 1 is the rigorous bound (no honest f32 arithmetic
    /// exceeds it); a calibrated `s < 1` ([`crate::freivalds::honest_worst_ratio`] over
    /// independent honest runs, with a margin) catches deviations `1/s` times smaller, at the
    /// false-alarm rate its calibration states.
    pub bound_scale: f64,
    /// Per-map calibrated scales ([`crate::freivalds::MapBounds`], checked against the key
    /// by its `validate`), used instead of `bound_scale` where given; where the file also
    /// holds nonlinear tolerances, those are used instead of `tolerance`.
    pub map_bounds: Option<&'a crate::freivalds::MapBounds>,
    /// The sampled attention check ([`crate::freivalds::AttentionSampling`]; `FULL` checks
    /// every head and context row). Each cell's heads and rows are drawn from the key's secret
    /// and the statement ([`VerifierKey::sample_seed`]).
    pub sampling: crate::freivalds::AttentionSampling,
}

fn engine(e: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::Engine(e.to_string())
}

impl<'a> KeyedVerifier<'a> {
    /// The verifier of a prover on this engine: nonlinear parts bitwise (tolerance 0), the
    /// rigorous Freivalds bound (scale 1, no per-map file), every head and context row checked.
    pub fn exact(model: &'a LlamaModel, key: &'a VerifierKey) -> Self {
        KeyedVerifier {
            model,
            key,
            tolerance: 0.0,
            bound_scale: 1.0,
            map_bounds: None,
            sampling: crate::freivalds::AttentionSampling::FULL,
        }
    }

    fn cpu(&self) -> RecomputeOn<'_, LlamaModel> {
        RecomputeOn::cpu(self.model)
    }
}

impl Recompute for KeyedVerifier<'_> {
    fn embed(
        &self,
        statement: &Statement,
        rows: Range<u32>,
    ) -> veritrace_protocol::Result<Vec<u8>> {
        self.cpu().embed(statement, rows)
    }

    fn layer(
        &self,
        statement: &Statement,
        layer: u32,
        rows: Range<u32>,
        input_rows: Range<u32>,
        inputs: &[u8],
    ) -> veritrace_protocol::Result<Vec<u8>> {
        self.cpu().layer(statement, layer, rows, input_rows, inputs)
    }

    fn next_token(
        &self,
        statement: &Statement,
        position: u32,
        last_row: &[u8],
    ) -> veritrace_protocol::Result<u32> {
        self.cpu().next_token(statement, position, last_row)
    }

    fn token_within_rounding(
        &self,
        statement: &Statement,
        position: u32,
        last_row: &[u8],
        claimed: u32,
    ) -> veritrace_protocol::Result<bool> {
        self.cpu()
            .token_within_rounding(statement, position, last_row, claimed)
    }

    fn check_input(&self, statement: &Statement) -> veritrace_protocol::Result<()> {
        self.cpu().check_input(statement)
    }

    fn check_sublayers(
        &self,
        statement: &Statement,
        layer: u32,
        rows: Range<u32>,
        input_rows: Range<u32>,
        inputs: &[u8],
        context: &[u8],
        cell: &[u8],
    ) -> veritrace_protocol::Result<AlgebraicCheck> {
        let setup = self.model.check_statement(statement).map_err(engine)?;
        let layout = self.model.sublayer_layout();
        let dtype = statement.trace_level.dtype().unwrap_or(Dtype::F32);
        if statement.trace_level != layout.trace_level().map_err(engine)?.with_dtype(dtype) {
            return Err(engine(format!(
                "the statement's sub-layer rows are {:?}; this decoder's are {} (context) and \
                 {} (cell) elements",
                statement.trace_level,
                layout.context_width(),
                layout.cell_width()
            )));
        }
        let tile = decoder_cell(statement, &rows, &input_rows)?;
        // Rows before the window (u = input_rows.start > 0) are outside every query's window:
        // their keys are masked in the attention, so zero rows stand in for them (zero inputs
        // and outputs pass their Freivalds checks and norms trivially) and the check runs on
        // rows 0..e as for a causal cell.
        let pad = input_rows.start as usize;
        let padded = |bytes: &[u8], dtype: Dtype, width: usize| -> Vec<f32> {
            let mut v = vec![0f32; pad * width];
            v.extend(decode(dtype, bytes));
            v
        };
        // the hidden trace is f32 (`check_statement`), the sub-layer values the level's dtype
        let h_in = padded(inputs, Dtype::F32, layout.hidden);
        let ctx = layout
            .unpack_context(&padded(context, dtype, layout.context_width()))
            .map_err(engine)?;
        let cell_values = layout.unpack_cell_bytes(cell, dtype).map_err(engine)?;
        let chunk = rows.start / tile;
        let sample = self.secret_sample(statement, layer, &rows, &input_rows)?;
        self.judge(
            (&setup, layer, tile, chunk),
            Values::Dense(&h_in, &ctx, &sample),
            &cell_values,
            !self.sampling.is_full(),
        )
    }

    fn check_sublayer_heads(
        &self,
        statement: &Statement,
        claim: &HeadClaim<'_>,
    ) -> veritrace_protocol::Result<AlgebraicCheck> {
        let setup = self.model.check_statement(statement).map_err(engine)?;
        let layout = self.model.sublayer_layout();
        let dtype = statement.trace_level.dtype().unwrap_or(Dtype::F32);
        let size = value_size(dtype).map_err(engine)?;
        if statement.trace_level != layout.by_head_level().map_err(engine)?.with_dtype(dtype) {
            return Err(engine(format!(
                "the statement's sub-layer rows are {:?}; this decoder's by head are {:?}",
                statement.trace_level,
                layout.by_head_level().map_err(engine)?
            )));
        }
        let (rows, input_rows) = (claim.rows.clone(), claim.input_rows.clone());
        let tile = decoder_cell(statement, &rows, &input_rows)?;
        let chunk = rows.start / tile;
        let (d, n, g) = (layout.hidden, layout.head_dim(), layout.kv_heads);
        let kvd = layout.kv;
        let e = rows.end as usize;
        let bad = |what: &str| engine(format!("the claim's {what} have the wrong length"));
        let (x, c) = (
            decode(Dtype::F32, claim.inputs),
            decode(dtype, claim.context),
        );
        let n_checked: usize = claim.checked.iter().map(|r| r.len()).sum();
        if x.len() != n_checked * d || c.len() != n_checked * d {
            return Err(bad("checked rows"));
        }
        let mut last = None::<u32>;
        for r in claim.checked {
            if r.end as usize > e
                || r.start < input_rows.start
                || r.end < r.start
                || last.is_some_and(|l| r.start < l)
            {
                return Err(engine(format!(
                    "checked rows {r:?} are not ascending within {input_rows:?}"
                )));
            }
            last = Some(r.end);
        }
        let per = (layout.heads / g.max(1)).max(1);
        let drawn_heads = claim.heads.unwrap_or(&[]);
        if claim.kv.len() != g || drawn_heads.iter().any(|&h| h as usize >= layout.heads) {
            return Err(bad("key-value heads"));
        }
        let whole =
            |h: usize| claim.heads.is_none() || drawn_heads.iter().any(|&q| q as usize / per == h);
        // each key-value head's rows as opened (`dtype` bytes, rows `k_h ‖ v_h`): the whole
        // input rows, or the checked rows; decoded where they are copied, not as a whole
        for (h, bytes) in claim.kv.iter().enumerate() {
            let total = if whole(h) {
                input_rows.len()
            } else {
                n_checked
            };
            if bytes.len() != total * 2 * n * size {
                return Err(bad("key-value rows"));
            }
        }
        let row_of = |h: usize, i: usize| &claim.kv[h][i * 2 * n * size..(i + 1) * 2 * n * size];
        let put = |out: &mut [f32], bytes: &[u8]| decode_into(dtype, out, bytes);
        let half = n * size;
        let Some(heads) = claim.heads else {
            // no draw: every head whole, checked as the dense rows 0..e (zeros where not
            // opened, never read) under the key's secret sample
            let (mut h_in, mut normed) = (vec![0f32; e * d], vec![0f32; e * d]);
            let (mut k, mut v) = (vec![0f32; e * kvd], vec![0f32; e * kvd]);
            let mut at = 0;
            for r in claim.checked {
                let (a, b) = (r.start as usize * d, r.end as usize * d);
                h_in[a..b].copy_from_slice(&x[at..at + b - a]);
                normed[a..b].copy_from_slice(&c[at..at + b - a]);
                at += b - a;
            }
            for h in 0..g {
                for i in 0..input_rows.len() {
                    let (row, at) = (row_of(h, i), (input_rows.start as usize + i) * kvd + h * n);
                    put(&mut k[at..at + n], &row[..half]);
                    put(&mut v[at..at + n], &row[half..]);
                }
            }
            let ctx = SubLayers {
                normed,
                k,
                v,
                ..SubLayers::default()
            };
            let cell_values = layout
                .unpack_cell_bytes(claim.cell, dtype)
                .map_err(engine)?;
            let sample = self.secret_sample(statement, claim.layer, &rows, &input_rows)?;
            return self.judge(
                (&setup, claim.layer, tile, chunk),
                Values::Dense(&h_in, &ctx, &sample),
                &cell_values,
                !self.sampling.is_full(),
            );
        };
        // a draw: only what it opened, gathered (the memory the check touches follows the
        // opening, not the context; specs/freivalds.md §7.1)
        if claim.checked.last() != Some(&rows) {
            return Err(engine(format!(
                "the checked rows do not end with the cell's rows {rows:?}"
            )));
        }
        let checked: Vec<usize> = claim
            .checked
            .iter()
            .flat_map(|r| r.clone())
            .map(|q| q as usize)
            .collect();
        let mut hs: Vec<usize> = heads.iter().map(|&h| h as usize).collect();
        hs.sort_unstable();
        hs.dedup();
        let all_heads = hs.len() == layout.heads;
        let groups: Vec<usize> = (0..g).filter(|&h| whole(h)).collect();
        let u = input_rows.start as usize;
        let (mut k, mut v) = (
            vec![0f32; checked.len() * kvd],
            vec![0f32; checked.len() * kvd],
        );
        for (i, &q) in checked.iter().enumerate() {
            for h in 0..g {
                let row = row_of(h, if whole(h) { q - u } else { i });
                let at = i * kvd + h * n;
                put(&mut k[at..at + n], &row[..half]);
                put(&mut v[at..at + n], &row[half..]);
            }
        }
        // the drawn key-value heads over rows 0..e (rows before a window are zeros, as in
        // `check_sublayers`)
        let width = groups.len() * n;
        let (mut k_heads, mut v_heads) = (vec![0f32; e * width], vec![0f32; e * width]);
        for (j, &h) in groups.iter().enumerate() {
            for i in 0..input_rows.len() {
                let (row, at) = (row_of(h, i), (u + i) * width + j * n);
                put(&mut k_heads[at..at + n], &row[..half]);
                put(&mut v_heads[at..at + n], &row[half..]);
            }
        }
        let before: Vec<usize> = checked
            .iter()
            .copied()
            .filter(|&q| q < rows.start as usize)
            .collect();
        let drawn = crate::freivalds::DrawnContext {
            rows: e,
            before,
            h_in: x,
            normed: c,
            k,
            v,
            groups,
            k_heads,
            v_heads,
        };
        let cell_values = layout
            .unpack_cell_bytes(claim.cell, dtype)
            .map_err(engine)?;
        self.judge(
            (&setup, claim.layer, tile, chunk),
            Values::Drawn(&drawn, (!all_heads).then_some(&hs[..])),
            &cell_values,
            true,
        )
    }
}

/// The context a cell's keyed check reads: the dense rows `0..e` (`h_in`, the context's
/// sub-layer values, zeros where not opened) with the key's secret sample, or a drawn
/// opening's values alone with its query heads (`None`: every head).
#[derive(Clone, Copy)]
enum Values<'a> {
    Dense(&'a [f32], &'a SubLayers, &'a crate::freivalds::CellSample),
    Drawn(&'a crate::freivalds::DrawnContext, Option<&'a [usize]>),
}

/// The statement's chunk, when `rows` with their input rows `input_rows` are a decoder cell the
/// keyed check takes: a whole chunk's start, input rows ending with the cell's and starting at 0
/// (causal) or within the window (a sliding window reads rows `u..e`: the rows before `u` are
/// zero padding in the check); never bidirectional.
fn decoder_cell(
    statement: &Statement,
    rows: &Range<u32>,
    input_rows: &Range<u32>,
) -> veritrace_protocol::Result<u32> {
    let tile = statement.geometry.chunk;
    let causal_start = match statement.dependency {
        veritrace_protocol::Dependency::Causal => input_rows.start == 0,
        veritrace_protocol::Dependency::Window { .. } => input_rows.start <= rows.start,
        veritrace_protocol::Dependency::Bidirectional => false,
    };
    if !causal_start || input_rows.end != rows.end || !rows.start.is_multiple_of(tile) {
        return Err(engine(format!(
            "cell rows {rows:?} with input rows {input_rows:?} are not a decoder cell of chunk \
             {tile}"
        )));
    }
    Ok(tile)
}

impl KeyedVerifier<'_> {
    /// The cell's sample drawn from the key's secret ([`crate::freivalds::AttentionSampling`],
    /// `FULL`: everything).
    fn secret_sample(
        &self,
        statement: &Statement,
        layer: u32,
        rows: &Range<u32>,
        input_rows: &Range<u32>,
    ) -> veritrace_protocol::Result<crate::freivalds::CellSample> {
        self.sampling.validate().map_err(engine)?;
        if self.sampling.is_full() {
            return Ok(crate::freivalds::CellSample::full());
        }
        use veritrace_protocol::Message;
        let tile = statement.geometry.chunk;
        let pad = input_rows.start as usize;
        let seed = self
            .key
            .sample_seed(&statement.to_bytes(), layer, rows.start / tile);
        // rows before a window are zero padding: the sample is of the rows the window reads
        let first = (rows.start as usize).saturating_sub(pad);
        let mut drawn = self
            .sampling
            .draw(seed, self.model.config().num_heads, first);
        if let Some(rs) = &mut drawn.context_rows {
            rs.iter_mut().for_each(|r| *r += pad);
        }
        Ok(drawn)
    }

    /// The check of one cell from its dense rows `0..e` (zeros where not opened), under the
    /// verifier's bound scales and tolerances: the output rows, or the failures (naming the
    /// sample when `sampled`).
    fn judge(
        &self,
        (setup, layer, tile, chunk): (&Setup, u32, u32, u32),
        values: Values<'_>,
        cell_values: &SubLayers,
        sampled: bool,
    ) -> veritrace_protocol::Result<AlgebraicCheck> {
        if !(self.bound_scale.is_finite() && self.bound_scale > 0.0) {
            return Err(engine(format!(
                "the Freivalds bound scale {} must be finite and > 0",
                self.bound_scale
            )));
        }
        let (tile, layer_at, chunk_at) = (tile as usize, layer as usize, chunk as usize);
        let (mut check, h_out) = match values {
            Values::Dense(h_in, ctx, sample) => check_sublayer_values(
                self.key,
                self.model,
                setup,
                tile,
                layer_at,
                chunk_at,
                h_in,
                ctx,
                cell_values,
                self.tolerance,
                sample,
            ),
            Values::Drawn(context, heads) => crate::freivalds::check_drawn_values(
                self.key,
                self.model,
                setup,
                (tile, layer_at, chunk_at),
                context,
                cell_values,
                self.tolerance,
                heads,
            ),
        }
        .map_err(engine)?;
        // the bound actually used: s·B (s = 1 leaves the check as it is), per map where the
        // verifier has calibrated scales
        let scale = |m: crate::freivalds::Matrix| {
            self.map_bounds
                .map_or(self.bound_scale, |b| b.scale(layer as usize, m))
        };
        for (m, l) in &mut check.linear {
            l.passed = l.worst_ratio <= scale(*m);
        }
        // the nonlinear parts' tolerance: calibrated per layer and part where the bound file
        // has them, else the verifier's one tolerance
        let tolerance = |part: &str| {
            self.map_bounds
                .and_then(|b| b.tolerance(layer as usize, part))
                .unwrap_or(self.tolerance)
        };
        check.passed = check.linear.iter().all(|(_, l)| l.passed)
            && check
                .nonlinear
                .iter()
                .all(|&(what, dev)| dev <= tolerance(what));
        if !check.passed {
            let mut failures: Vec<String> = check
                .linear
                .iter()
                .filter(|(_, l)| !l.passed)
                .map(|(m, l)| {
                    format!(
                        "{m:?}: Freivalds |v.x - r.y| = {:.3e} > bound {:.3e} (row {}, repetition \
                         {})",
                        l.deviation,
                        l.bound * scale(*m),
                        l.worst_row,
                        l.worst_repetition
                    )
                })
                .collect();
            failures.extend(
                check
                    .nonlinear
                    .iter()
                    .filter(|&&(what, dev)| dev.is_nan() || dev > tolerance(what))
                    .map(|&(what, dev)| {
                        format!(
                            "{what}: relative deviation {dev:.3e} > {:.3e}",
                            tolerance(what)
                        )
                    }),
            );
            if sampled {
                // what this cell's sampled check covered (an auditor with the key re-derives it)
                let list = |v: Option<&[usize]>| v.map_or("all".to_string(), |v| format!("{v:?}"));
                let (heads, rows) = match values {
                    Values::Dense(_, _, sample) => (
                        list(sample.heads.as_deref()),
                        list(sample.context_rows.as_deref()),
                    ),
                    Values::Drawn(context, heads) => (list(heads), list(Some(&context.before))),
                };
                failures.push(format!(
                    "sampled attention check: heads {heads}, context rows {rows}"
                ));
            }
            return Ok(AlgebraicCheck::Failed(failures.join("; ")));
        }
        Ok(AlgebraicCheck::Output(
            h_out.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ))
    }
}

/// Reads the sub-layer traces of a [`TraceLevel::SubLayer`] (or
/// [`TraceLevel::SubLayerByHead`]: the same tensors, split by [`prover_parts`])
/// statement from its trace file
/// (the tensors [`crate::write_trace_with`] writes: `context.<l>` and `cell.<l>`, F32,
/// `[tokens, width]`, for `l = 1 … L − 1` of the statement's geometry), as little-endian bytes
/// per layer, ready for [`veritrace_protocol::Prover::with_sublayers`]. `None` for a
/// hidden-only statement. A missing tensor, another dtype or shape, or a non-finite value is a
/// typed error naming the tensor.
pub fn read_sublayers(
    path: &std::path::Path,
    statement: &Statement,
) -> Result<Option<(LayerBytes, LayerBytes)>> {
    use veritrace_protocol::SubLayerPart;
    let file = path.display().to_string();
    let bad = |reason: String| ModelError::TraceFile {
        path: file.clone(),
        reason,
    };
    let (Some(ctx), Some(cell)) = (
        statement
            .sublayer_geometry(SubLayerPart::Context)
            .map_err(|e| bad(e.to_string()))?,
        statement
            .sublayer_geometry(SubLayerPart::Cell)
            .map_err(|e| bad(e.to_string()))?,
    ) else {
        return Ok(None);
    };
    // the file holds context rows in the sub-layer layout (normed ‖ k ‖ v) at either level; by
    // head, the statement's context trace is the normed part and each head's k ‖ v its own
    let context_width = match statement.trace_level {
        TraceLevel::SubLayerByHead {
            context,
            kv_heads,
            kv,
            ..
        } => u64::from(kv_heads)
            .checked_mul(u64::from(kv))
            .and_then(|x| x.checked_add(u64::from(context)))
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| bad("the statement's sub-layer widths overflow".into()))?,
        _ => ctx.hidden,
    };
    let mapped = crate::trace_file::TraceFile::open(path, 1).map_err(|e| bad(e.to_string()))?;
    let st =
        safetensors::SafeTensors::deserialize(mapped.bytes()).map_err(|e| bad(e.to_string()))?;
    let tokens = ctx.tokens as usize;
    let read = |prefix: &str, width: u32| -> Result<Vec<Vec<u8>>> {
        (1..=ctx.layers)
            .map(|l| {
                let name = format!("{prefix}.{l}");
                let view = st.tensor(&name).map_err(|_| {
                    bad(format!(
                        "the statement commits sub-layer values and tensor {name} is missing \
                         (write the trace with `veritrace prove --trace-level sublayer`)"
                    ))
                })?;
                if view.dtype() != safetensors::Dtype::F32
                    || view.shape() != [tokens, width as usize]
                {
                    return Err(bad(format!(
                        "{name} is {:?} {:?}, the statement needs F32 [{tokens}, {width}]",
                        view.dtype(),
                        view.shape()
                    )));
                }
                let data = view.data().to_vec();
                if let Some(index) = data
                    .chunks_exact(4)
                    .position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
                {
                    return Err(ModelError::NonFinite {
                        what: "trace file sub-layer values",
                        index,
                    });
                }
                Ok(data)
            })
            .collect()
    };
    let context = read("context", context_width)?;
    let cells = read("cell", cell.hidden)?;
    Ok(Some((context, cells)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 16-bit pattern: the decoders give `half`'s value (NaN for NaN), narrowing a
    /// finite value back gives its bits, and an f32 value off the grid is refused.
    #[test]
    fn half_precision_values_decode_and_narrow_exactly() {
        for dtype in [Dtype::Bf16, Dtype::F16] {
            let bits: Vec<u16> = (0..=u16::MAX).collect();
            let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
            let mut extended = Vec::new();
            extend_decoded(dtype, &mut extended, &bytes);
            let mut into = vec![0f32; bits.len()];
            decode_into(dtype, &mut into, &bytes);
            let mut finite = Vec::new();
            for (i, &b) in bits.iter().enumerate() {
                let want = match dtype {
                    Dtype::Bf16 => half::bf16::from_bits(b).to_f32(),
                    _ => half::f16::from_bits(b).to_f32(),
                };
                for got in [extended[i], into[i]] {
                    assert!(
                        got.to_bits() == want.to_bits() || (want.is_nan() && got.is_nan()),
                        "{dtype} {b:#06x}: {got} against {want}"
                    );
                }
                if want.is_finite() {
                    finite.push((b, want));
                }
            }
            let f32_bytes: Vec<u8> = finite.iter().flat_map(|(_, x)| x.to_le_bytes()).collect();
            let narrowed = narrow_values(f32_bytes, dtype).unwrap();
            let want: Vec<u8> = finite.iter().flat_map(|(b, _)| b.to_le_bytes()).collect();
            assert_eq!(narrowed, want, "{dtype}");
            let off = (1.0f32 + f32::EPSILON).to_le_bytes().to_vec();
            let e = narrow_values(off, dtype).unwrap_err().to_string();
            assert!(
                e.contains("value 0") && e.contains("does not hold exactly"),
                "{e}"
            );
        }
        assert!(narrow_values(vec![0; 8], Dtype::I8).is_err());
        let f32_bytes = 0.1f32.to_le_bytes().to_vec();
        assert_eq!(
            narrow_values(f32_bytes.clone(), Dtype::F32).unwrap(),
            f32_bytes
        );
    }

    #[test]
    fn rows_take_the_context_and_cell_ranges_and_refuse_others() {
        let layout = SubLayerLayout {
            hidden: 2,
            q: 3,
            kv: 1,
            mlp: 4,
            heads: 1,
            kv_heads: 1,
        };
        let field = |w: usize| (0..5 * w).map(|i| i as f32).collect::<Vec<_>>();
        let sub = SubLayers {
            normed: field(2),
            q: field(3),
            k: field(1),
            v: field(1),
            attn: field(3),
            o: field(2),
            mlp_in: field(2),
            gate: field(4),
            up: field(4),
            act: field(4),
            down: field(2),
        };
        let r = layout.rows(&sub, 0..3, 2..5).expect("rows");
        assert_eq!(r.normed, sub.normed[..6]);
        assert_eq!(r.k, sub.k[..3]);
        assert_eq!(r.q, sub.q[6..15]);
        assert_eq!(r.down, sub.down[4..10]);
        assert!(layout
            .rows(&sub, 0..0, 0..0)
            .expect("empty")
            .gate
            .is_empty());
        assert!(layout.rows(&sub, 0..6, 0..1).is_err());
        assert!(layout.rows(&sub, 0..1, 4..6).is_err());
    }
}
