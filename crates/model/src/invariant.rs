//! Batch-invariant f32 kernels (issue 17): arithmetic in which every output row is computed by
//! the same operations in the same order however many rows are computed together, in whatever
//! blocks, on however many threads.
//!
//! # The rule
//! * **Products** `y = x·Wᵀ` ([`matmul_t`]): each output element is one chain of fused
//!   multiply-adds over the inner dimension in order, `c ← fma(x_k, w_k, c)` for `k = 0, 1, …`
//!   from `c = +0`. Blocking over rows and columns (the register tiles of the micro-kernel,
//!   the row blocks and column panels split across threads) changes which elements are computed
//!   together, never the chain of any element. A fused multiply-add is correctly rounded, so the
//!   AVX2 micro-kernel, any other vector width and the scalar fallback ([`f32::mul_add`]) give
//!   the same bits.
//! * **Row reductions** (the RMSNorm mean of squares, the softmax sum) use eight interleaved
//!   accumulators over the row in order and a fixed pairwise reduction ([`sum_lanes`]); the
//!   order depends on the row's length only.
//! * **Attention** of query position `p` over keys `0..e`: the scores are a product as above
//!   (over the head dimension); the maximum, the exponentials and their sum run over the keys
//!   the query sees only (`lo..=p`), so they do not depend on `e`; the output is the product of
//!   the probabilities with the values over keys `0..e`, in which every key the query does not
//!   see has probability exactly 0 and adds exactly nothing (`fma(0, v, c) = c` for finite `v`
//!   and `c ≠ −0`, and a chain from `+0` never holds `−0`). So a row computed alone with its
//!   keys cached (generation with a KV cache), inside a chunk (a verifier's cell recompute) or
//!   inside the whole prefill is bitwise the same row.
//!
//! * **Exponentials** ([`exp`], in the softmax, SwiGLU and the GELU's [`erf`]) are one fixed
//!   sequence of IEEE operations (adds, multiplies, fused multiply-adds, bit moves), vectorized
//!   where the CPU allows and the same bits everywhere: not the platform's `expf`, whose last bit
//!   may differ between C libraries or between their FMA and non-FMA variants.
//!
//! `specs/invariant-kernels.md` states every operation and its order for other implementations.
//!
//! The kernels are plain functions over row-major `f32` slices; [`crate::LlamaModel`] (its
//! decoders) and [`crate::BertModel`] (the encoder: LayerNorm, the GELU, bidirectional attention
//! with a key mask) run them under the setup key `kernels=invariant` ([`crate::Kernels::Invariant`]).

use rayon::prelude::*;

/// Output columns per panel of a packed matrix (two AVX2 registers of eight f32).
pub const NR: usize = 16;
/// Rows per register tile of the micro-kernel.
pub const MR: usize = 4;
/// Rows per task when the rows are split across threads.
const ROW_BLOCK: usize = 64;

/// Whether `work` multiply-adds (or element operations) are worth handing to the thread pool:
/// more than one thread, and enough work that the hand-off (a wake-up and a wait) is small
/// beside it. Either way the bits are the same.
pub(crate) fn parallel(work: usize) -> bool {
    work >= 1 << 18 && rayon::current_num_threads() > 1
}

/// `len` zeros, written by the pool's threads when there are many (a large output buffer's
/// zeroing, and its first-touch page faults, are otherwise serial work before each parallel
/// kernel: about 6% of a `small` forward at 512 tokens).
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    if !parallel(len) {
        return vec![0f32; len];
    }
    let mut v = Vec::with_capacity(len);
    v.par_extend(rayon::iter::repeat_n(0f32, len));
    v
}

/// Rounds every value of `v` to `precision` in place, to nearest with ties to even (the
/// conversion `half` and candle's `to_dtype` perform; a value beyond the format's range becomes
/// an infinity of its sign), and leaves it widened exactly in f32; nothing for f32.
///
/// Under a bf16 or f16 setup the invariant kernels compute every operation in f32 from its
/// stored inputs, as under f32, and round what the operation stores (a product after its bias,
/// a norm, the rotary embedding, the attention output, an activation, a residual sum) once,
/// here: a row's rounding depends on that row's f32 values only, so the kernels stay
/// batch-invariant (`specs/invariant-kernels.md` §7).
pub fn round_to(precision: crate::Precision, v: &mut [f32]) {
    match precision {
        crate::Precision::F32 => {}
        crate::Precision::Bf16 => each(v, round_bf16),
        crate::Precision::F16 => each(v, round_f16),
    }
}

/// `x ← f(x)` for every element, on the pool's threads when there are many (element by
/// element: the same bits on any number of threads).
fn each(v: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    if parallel(v.len()) {
        v.par_chunks_mut(1 << 14)
            .for_each(|c| c.iter_mut().for_each(|x| *x = f(*x)));
    } else {
        v.iter_mut().for_each(|x| *x = f(*x));
    }
}

/// `half::bf16::from_f32(x).to_f32()`, by integer arithmetic on the bits: adding
/// `0x7fff + lsb` carries into the kept bits exactly when the dropped half is above one half,
/// or one half with an odd kept part (ties to even); a carry out of the largest finite value
/// reaches the infinity, as rounding must. NaN goes to `half` (it keeps the NaN quiet).
#[inline]
fn round_bf16(x: f32) -> f32 {
    if x.is_nan() {
        return bf16_by_half(x);
    }
    let b = x.to_bits();
    f32::from_bits(b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000)
}

/// `half::f16::from_f32(x).to_f32()`: for `|x|` in f16's normal range (`2^−14 ≤ |x| < 65520`,
/// where the result is finite and normal) the same carry trick on the 13 dropped bits; the
/// rest (subnormal results, overflow to infinity, NaN) through `half`.
#[inline]
fn round_f16(x: f32) -> f32 {
    let a = x.abs();
    if !(6.103_515_6e-5..65520.0).contains(&a) {
        return f16_by_half(x);
    }
    let b = x.to_bits();
    f32::from_bits(b.wrapping_add(0x0fff + ((b >> 13) & 1)) & 0xffff_e000)
}

/// The rare cases of [`round_bf16`], out of its loop.
#[cold]
#[inline(never)]
fn bf16_by_half(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// The rare cases of [`round_f16`] (zeros and tiny values included), out of its loop.
#[cold]
#[inline(never)]
fn f16_by_half(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// Recycled output buffers of this thread ([`buffer`], [`recycle`]).
const SPARE_BUFFERS: usize = 8;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer of `len` elements whose contents are unspecified (left from an earlier use), for
/// an output the caller writes in full: a buffer [`recycle`]d on this thread where one is
/// large enough (the smallest such; no zeroing, no fresh pages: a layer's outputs have the
/// shapes of the layer before's), else [`zeros`]. What the kernels compute never depends on
/// the old contents, so the bits are the same either way.
pub(crate) fn buffer(len: usize) -> Vec<f32> {
    let reused = SPARE.with(|s| {
        let mut s = s.borrow_mut();
        let i = (0..s.len())
            .filter(|&i| s[i].capacity() >= len)
            .min_by_key(|&i| s[i].capacity())?;
        Some(s.swap_remove(i))
    });
    match reused {
        Some(mut b) => {
            if b.len() >= len {
                b.truncate(len);
            } else {
                b.resize(len, 0.0);
            }
            b
        }
        None => zeros(len),
    }
}

/// Gives `v` back for [`buffer`] to reuse on this thread, which keeps at most
/// [`SPARE_BUFFERS`] (the smallest goes first).
pub(crate) fn recycle(v: Vec<f32>) {
    if v.capacity() == 0 {
        return;
    }
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARE_BUFFERS {
            s.push(v);
        } else if let Some(i) = (0..s.len()).min_by_key(|&i| s[i].capacity()) {
            if s[i].capacity() < v.capacity() {
                s[i] = v;
            }
        }
    });
}

/// A weight `W: [out, in]` (row-major, as checkpoints store linear layers) laid out for
/// `x·Wᵀ`: panels of [`NR`] output columns, each `[in][NR]` (zero columns past `out`).
///
/// A matrix whose every value is a bfloat16 (a bf16 checkpoint, or weights a bf16 setup has
/// rounded) or a binary16 (an f16 setup's weights) can be held in 16 bits
/// ([`PackedMatrix::compact`]): half the memory, and half the bytes a one-row product (a
/// decoded token) streams. The kernels read each panel widened
/// back to f32, the same values, so every product is bitwise the f32 matrix's.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    out: usize,
    inp: usize,
    /// Rows of `k` each panel is laid out for (`≥ inp`: a prefix view uses fewer).
    kstride: usize,
    panels: Store,
}

/// A packed matrix's elements: f32, or 16-bit values (bfloat16 or IEEE binary16) that widen
/// exactly to the f32 values.
#[derive(Debug, Clone)]
enum Store {
    F32(Vec<f32>),
    Bf16(Vec<half::bf16>),
    F16(Vec<half::f16>),
}

/// A borrowed [`Store`].
#[derive(Debug, Clone, Copy)]
enum Slab<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
    F16(&'a [half::f16]),
}

/// A borrowed 16-bit panel ([`Panels::panel16`]).
#[derive(Debug, Clone, Copy)]
enum Half<'a> {
    Bf16(&'a [half::bf16]),
    F16(&'a [half::f16]),
}

/// A packed matrix or a prefix of one ([`PackedMatrix::prefix`]): its first `out` output
/// columns over its first `inp` inputs, read in place.
#[derive(Debug, Clone, Copy)]
pub struct Panels<'a> {
    out: usize,
    inp: usize,
    kstride: usize,
    panels: Slab<'a>,
}

impl<'a> Panels<'a> {
    /// Panel `p` in 16 bits, when the matrix is held so.
    fn panel16(&self, p: usize) -> Option<Half<'a>> {
        let range = p * self.kstride * NR..p * self.kstride * NR + self.inp * NR;
        match self.panels {
            Slab::Bf16(v) => Some(Half::Bf16(&v[range])),
            Slab::F16(v) => Some(Half::F16(&v[range])),
            Slab::F32(_) => None,
        }
    }

    /// Panel `p` as f32: in place, or widened from 16 bits into `scratch` (exactly: every
    /// bfloat16 and binary16 value is an f32 value).
    fn panel<'s>(&self, p: usize, scratch: &'s mut Vec<f32>) -> &'s [f32]
    where
        'a: 's,
    {
        let range = p * self.kstride * NR..p * self.kstride * NR + self.inp * NR;
        match self.panels {
            Slab::F32(v) => &v[range],
            Slab::Bf16(v) => {
                widen_bf16(&v[range], scratch);
                scratch
            }
            Slab::F16(v) => {
                widen_f16(&v[range], scratch);
                scratch
            }
        }
    }
}

/// `v` as f32 into `out` (resized to `v.len()`): each value's bits shifted into the upper half
/// of an f32, exactly.
fn widen_bf16(v: &[half::bf16], out: &mut Vec<f32>) {
    out.resize(v.len(), 0.0);
    // (a plain zip: vectorized)
    for (o, &b) in out.iter_mut().zip(v) {
        *o = f32::from_bits(u32::from(b.to_bits()) << 16);
    }
}

/// `v` as f32 into `out` (resized to `v.len()`), exactly: sixteen at a time by `vcvtph2ps`
/// where the CPU has AVX-512F (the same conversion as the one-row kernel's), else by `half`.
fn widen_f16(v: &[half::f16], out: &mut Vec<f32>) {
    out.resize(v.len(), 0.0);
    #[cfg(target_arch = "x86_64")]
    if wide_available() {
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX-512F.
        unsafe {
            widen_f16_avx512(v, out)
        };
        return;
    }
    use half::slice::HalfFloatSliceExt;
    v.convert_to_f32_slice(out);
}

/// [`widen_f16`] with AVX-512F (`out.len() == v.len()`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn widen_f16_avx512(v: &[half::f16], out: &mut [f32]) {
    use std::arch::x86_64::_mm512_storeu_ps;
    let n = v.len() / NR * NR;
    for (o, c) in out[..n].chunks_exact_mut(NR).zip(v[..n].chunks_exact(NR)) {
        #[allow(unsafe_code)]
        // SAFETY: each chunk holds 16 elements of `v` and 16 of `out`; the CPU has AVX-512F.
        unsafe {
            _mm512_storeu_ps(o.as_mut_ptr(), half::f16::load16(c.as_ptr()))
        };
    }
    for (o, x) in out[n..].iter_mut().zip(&v[n..]) {
        *o = x.to_f32();
    }
}

thread_local! {
    /// Widened panels of 16-bit matrices, reused across products on this thread.
    static WIDE: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with `n` scratch vectors of this thread (for [`Panels::panel`]).
fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [Vec<f32>]) -> R) -> R {
    let mut mine = WIDE.with(|w| std::mem::take(&mut *w.borrow_mut()));
    if mine.len() < n {
        mine.resize_with(n, Vec::new);
    }
    let r = f(&mut mine[..n]);
    WIDE.with(|w| *w.borrow_mut() = mine);
    r
}

impl PackedMatrix {
    /// Packs `w` (`out · inp` elements, row-major `[out, inp]`). `None` if the length is not
    /// `out · inp`.
    pub fn new(w: &[f32], out: usize, inp: usize) -> Option<Self> {
        if out.checked_mul(inp)? != w.len() {
            return None;
        }
        Self::new_strided(w, out, inp, inp, 0)
    }

    /// Packs the `[out, inp]` matrix whose row `j` is `w[j·stride + offset..][..inp]`: one
    /// head's columns of a wider row-major array, packed without a copy of its own. `None` if
    /// a row does not fit in `w` or `offset + inp > stride`.
    pub fn new_strided(
        w: &[f32],
        out: usize,
        inp: usize,
        stride: usize,
        offset: usize,
    ) -> Option<Self> {
        Self::strided_fits(w.len(), out, inp, stride, offset)?;
        let np = out.div_ceil(NR);
        let mut panels = vec![0f32; np.checked_mul(inp)?.checked_mul(NR)?];
        for j in 0..out {
            let row = &w[j * stride + offset..j * stride + offset + inp];
            let (p, c) = (j / NR, j % NR);
            let panel = &mut panels[p * inp * NR..(p + 1) * inp * NR];
            for (k, &v) in row.iter().enumerate() {
                panel[k * NR + c] = v;
            }
        }
        Some(PackedMatrix {
            out,
            inp,
            kstride: inp,
            panels: Store::F32(panels),
        })
    }

    /// `Some(())` when `rows` rows of `width` elements at `offset` of each `stride`-wide row
    /// lie inside `len` elements.
    fn strided_fits(
        len: usize,
        rows: usize,
        width: usize,
        stride: usize,
        offset: usize,
    ) -> Option<()> {
        if offset.checked_add(width)? > stride && rows > 0 {
            return None;
        }
        let need = match rows {
            0 => 0,
            r => (r - 1).checked_mul(stride)?.checked_add(offset + width)?,
        };
        (need <= len).then_some(())
    }

    /// Packs `Wᵀ` given `W` as `[inp, out]` row-major (so the product is `x·W`): the layout of
    /// attention values `[keys, head]`, whose panels are slabs of the rows.
    pub fn from_transposed(wt: &[f32], out: usize, inp: usize) -> Option<Self> {
        if out.checked_mul(inp)? != wt.len() {
            return None;
        }
        Self::from_transposed_strided(wt, out, inp, out, 0)
    }

    /// [`PackedMatrix::from_transposed`] of the `[inp, out]` matrix whose row `k` is
    /// `wt[k·stride + offset..][..out]` (one head's values in a wider row-major array). `None`
    /// if a row does not fit in `wt` or `offset + out > stride`.
    pub fn from_transposed_strided(
        wt: &[f32],
        out: usize,
        inp: usize,
        stride: usize,
        offset: usize,
    ) -> Option<Self> {
        Self::strided_fits(wt.len(), inp, out, stride, offset)?;
        let np = out.div_ceil(NR);
        let mut panels = vec![0f32; np.checked_mul(inp)?.checked_mul(NR)?];
        for k in 0..inp {
            let row = &wt[k * stride + offset..k * stride + offset + out];
            for p in 0..np {
                let cols = NR.min(out - p * NR);
                let at = (p * inp + k) * NR;
                panels[at..at + cols].copy_from_slice(&row[p * NR..p * NR + cols]);
            }
        }
        Some(PackedMatrix {
            out,
            inp,
            kstride: inp,
            panels: Store::F32(panels),
        })
    }

    /// The same matrix held in 16 bits when every element is a bfloat16 (its f32 bits end in
    /// 16 zeros) or else every element is an IEEE binary16 value (it converts to binary16 and
    /// back to the same bits: the weights of an f16 setup), else unchanged: the products are
    /// bitwise the same either way.
    pub fn compact(self) -> Self {
        let Store::F32(v) = &self.panels else {
            return self;
        };
        let panels = if v.iter().all(|x| x.to_bits() & 0xffff == 0) {
            Store::Bf16(v.iter().map(|&x| half::bf16::from_f32(x)).collect())
        } else if v
            .iter()
            .all(|&x| half::f16::from_f32(x).to_f32().to_bits() == x.to_bits())
        {
            Store::F16(v.iter().map(|&x| half::f16::from_f32(x)).collect())
        } else {
            return self;
        };
        PackedMatrix { panels, ..self }
    }

    /// Whether the matrix is held in 16 bits ([`PackedMatrix::compact`]).
    pub fn is_compact(&self) -> bool {
        !matches!(self.panels, Store::F32(_))
    }

    /// Bytes the elements occupy.
    pub fn bytes(&self) -> usize {
        match &self.panels {
            Store::F32(v) => v.len() * 4,
            Store::Bf16(v) => v.len() * 2,
            Store::F16(v) => v.len() * 2,
        }
    }

    /// An empty `[0, inp]` matrix that grows by output rows ([`PackedMatrix::push_out`]): a
    /// key cache, `[keys, hd]`.
    pub fn growing_out(inp: usize) -> Self {
        PackedMatrix {
            out: 0,
            inp,
            kstride: inp,
            panels: Store::F32(Vec::new()),
        }
    }

    /// Appends a row to `W` (`w`: `inp` values): the matrix is then bitwise
    /// [`PackedMatrix::new`] of the longer `W`. Only for matrices from
    /// [`PackedMatrix::growing_out`]; `w` of another length is cut or zero-padded.
    pub fn push_out(&mut self, w: &[f32]) {
        let (j, inp) = (self.out, self.inp);
        let Store::F32(panels) = &mut self.panels else {
            debug_assert!(false, "push_out on a 16-bit matrix");
            return;
        };
        if j.is_multiple_of(NR) {
            panels.resize(panels.len() + inp * NR, 0.0);
        }
        let (p, c) = (j / NR, j % NR);
        let panel = &mut panels[p * inp * NR..(p + 1) * inp * NR];
        for (k, &v) in w.iter().take(inp).enumerate() {
            panel[k * NR + c] = v;
        }
        self.out += 1;
    }

    /// An empty `[out, 0]` matrix that grows by input columns ([`PackedMatrix::push_inp`]),
    /// with room for `capacity` of them before it is laid out again: a value cache, `Wᵀ =
    /// [values, hd]`.
    pub fn growing_inp(out: usize, capacity: usize) -> Self {
        let kstride = capacity.max(1);
        PackedMatrix {
            out,
            inp: 0,
            kstride,
            panels: Store::F32(vec![0.0; out.div_ceil(NR) * kstride * NR]),
        }
    }

    /// Appends a column to `W` (a row of `Wᵀ`; `w`: `out` values): the matrix then reads as
    /// [`PackedMatrix::from_transposed`] of the longer `Wᵀ` (its panels keep room for more
    /// columns; a full matrix is laid out again with twice the room). Only for matrices from
    /// [`PackedMatrix::growing_inp`]; `w` of another length is cut or zero-padded.
    pub fn push_inp(&mut self, w: &[f32]) {
        let (out, np) = (self.out, self.out.div_ceil(NR));
        let Store::F32(panels) = &mut self.panels else {
            debug_assert!(false, "push_inp on a 16-bit matrix");
            return;
        };
        if self.inp == self.kstride {
            let wider = self.kstride * 2;
            let mut grown = vec![0f32; np * wider * NR];
            for p in 0..np {
                let from = &panels[p * self.kstride * NR..(p * self.kstride + self.inp) * NR];
                grown[p * wider * NR..p * wider * NR + from.len()].copy_from_slice(from);
            }
            *panels = grown;
            self.kstride = wider;
        }
        let k = self.inp;
        for p in 0..np {
            let cols = NR.min(out - p * NR).min(w.len().saturating_sub(p * NR));
            let at = (p * self.kstride + k) * NR;
            panels[at..at + cols].copy_from_slice(&w[p * NR..p * NR + cols]);
        }
        self.inp += 1;
    }

    /// Output width (rows of `W`).
    pub fn out(&self) -> usize {
        self.out
    }

    /// Input width (columns of `W`).
    pub fn inp(&self) -> usize {
        self.inp
    }

    /// The whole matrix as [`Panels`].
    pub fn view(&self) -> Panels<'_> {
        Panels {
            out: self.out,
            inp: self.inp,
            kstride: self.kstride,
            panels: match &self.panels {
                Store::F32(v) => Slab::F32(v),
                Store::Bf16(v) => Slab::Bf16(v),
                Store::F16(v) => Slab::F16(v),
            },
        }
    }

    /// The first `out` output columns over the first `inp` inputs (each at most the matrix's),
    /// without copying: the keys and values of a context's first rows, when the matrix holds a
    /// longer context's.
    pub fn prefix(&self, out: usize, inp: usize) -> Panels<'_> {
        let (out, inp) = (out.min(self.out), inp.min(self.inp));
        let np = out.div_ceil(NR);
        let end = np * self.kstride * NR;
        Panels {
            out,
            inp,
            kstride: self.kstride,
            panels: match &self.panels {
                Store::F32(v) => Slab::F32(&v[..end]),
                Store::Bf16(v) => Slab::Bf16(&v[..end]),
                Store::F16(v) => Slab::F16(&v[..end]),
            },
        }
    }
}

/// `x·Wᵀ` for `m` rows of `x` (row-major `[m, w.inp()]`): row-major `[m, w.out()]`, every
/// element one in-order chain of fused multiply-adds (see the [module docs](self)). Rows are
/// split across the rayon pool's threads in blocks of 64, or, for fewer rows, the column panels
/// are; the bits do not depend on either. Panics if `x.len() != m · w.inp()` (callers check).
pub fn matmul_t(x: &[f32], m: usize, w: &PackedMatrix) -> Vec<f32> {
    matmul_panels(x, m, w.view())
}

/// [`matmul_t`] against a (prefix) view of a packed matrix.
pub fn matmul_panels(x: &[f32], m: usize, w: Panels<'_>) -> Vec<f32> {
    let (k, n) = (w.inp, w.out);
    assert_eq!(
        x.len(),
        m * k,
        "matmul_t: {} input elements for {m} rows of {k}",
        x.len()
    );
    if m == 0 || n == 0 || k == 0 {
        // an empty product: zeros
        return zeros(m * n);
    }
    // every element is written below
    let mut y = buffer(m * n);
    let np = n.div_ceil(NR);
    if !parallel(m * n * k) {
        for (yb, xb) in y.chunks_mut(ROW_BLOCK * n).zip(x.chunks(ROW_BLOCK * k)) {
            let rows = yb.len() / n;
            panels_rows(xb, rows, k, &w, 0, np, yb, n);
        }
    } else if m >= 2 * ROW_BLOCK {
        y.par_chunks_mut(ROW_BLOCK * n)
            .zip(x.par_chunks(ROW_BLOCK * k))
            .for_each(|(yb, xb)| {
                let rows = yb.len() / n;
                panels_rows(xb, rows, k, &w, 0, np, yb, n);
            });
    } else {
        // few rows (decode): split the column panels, each task into its own buffer
        let tasks = rayon::current_num_threads().min(np);
        let per = np.div_ceil(tasks);
        let parts: Vec<(usize, Vec<f32>)> = (0..tasks)
            .into_par_iter()
            .map(|t| {
                let (p0, p1) = (t * per, ((t + 1) * per).min(np));
                let cols = (p1 * NR).min(n) - (p0 * NR).min(n);
                let mut buf = vec![0f32; m * cols];
                panels_rows(x, m, k, &w, p0, p1, &mut buf, cols);
                (p0 * NR, buf)
            })
            .collect();
        for (c0, buf) in parts {
            let cols = buf.len() / m;
            for r in 0..m {
                y[r * n + c0..r * n + c0 + cols].copy_from_slice(&buf[r * cols..(r + 1) * cols]);
            }
        }
    }
    y
}

/// Rows `x: [rows, k]` times panels `p0..p1` of `w` into columns `(p − p0)·NR..` of `y` (row
/// stride `ys`). Where the CPU has AVX-512, pairs of panels go through the 4 x 32 register tile,
/// the rest through the 4 x 16 one; the last `rows mod MR` rows are padded with zero rows (whose
/// results are dropped). Every element is the same chain in each kernel.
#[allow(clippy::too_many_arguments)]
fn panels_rows(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &Panels<'_>,
    p0: usize,
    p1: usize,
    y: &mut [f32],
    ys: usize,
) {
    // With AVX-512, the last `rows mod MR` rows (a decoded token's single row) go row by row
    // across up to eight panels at once instead of through a padded 4-row tile.
    let full = if wide_available() {
        rows / MR * MR
    } else {
        rows
    };
    for r in full..rows {
        single_row(
            &x[r * k..(r + 1) * k],
            k,
            w,
            p0,
            p1,
            &mut y[r * ys..(r + 1) * ys],
        );
    }
    let rows = full;
    if rows == 0 {
        return;
    }
    with_scratch(2, |scratch| {
        let [sa, sb] = scratch else {
            unreachable!("two scratch vectors")
        };
        panel_tiles(x, rows, k, w, p0, p1, y, ys, (sa, sb))
    });
}

/// The full `MR`-row tiles of [`panels_rows`] (`rows` a multiple of `MR` where AVX-512 is
/// available), each panel widened once into `scratch` when it is held in 16 bits (widening
/// in the registers instead, as [`row_avx512`] does for one row, measured slower here: the
/// tile reuses each loaded panel vector for 4 or 8 rows).
#[allow(clippy::too_many_arguments)]
fn panel_tiles(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &Panels<'_>,
    p0: usize,
    p1: usize,
    y: &mut [f32],
    ys: usize,
    (sa, sb): (&mut Vec<f32>, &mut Vec<f32>),
) {
    let mut pad = Vec::new();
    let mut p = p0;
    while p < p1 {
        let c0 = (p - p0) * NR;
        let wide = p + 1 < p1 && wide_available();
        let cols = if wide { 2 * NR } else { NR }.min(ys - c0);
        let pa = w.panel(p, sa);
        let pb: &[f32] = if wide { w.panel(p + 1, sb) } else { &[] };
        let mut r = 0;
        while r < rows {
            let mr = MR.min(rows - r);
            let xr = if mr == MR {
                &x[r * k..(r + MR) * k]
            } else {
                pad.clear();
                pad.extend_from_slice(&x[r * k..(r + mr) * k]);
                pad.resize(MR * k, 0.0);
                &pad[..]
            };
            if wide && rows - r >= 2 * MR {
                // eight rows: each panel load serves twice the rows
                let mut tile = [[0f32; 2 * NR]; 2 * MR];
                micro_wide::<{ 2 * MR }>(&x[r * k..(r + 2 * MR) * k], k, pa, pb, &mut tile);
                for (i, t) in tile.iter().enumerate() {
                    y[(r + i) * ys + c0..(r + i) * ys + c0 + cols].copy_from_slice(&t[..cols]);
                }
                r += 2 * MR;
                continue;
            }
            let mut tile = [[0f32; 2 * NR]; MR];
            if wide {
                micro_wide::<MR>(xr, k, pa, pb, &mut tile);
            } else {
                micro(xr, k, pa, &mut tile);
            }
            for (i, t) in tile.iter().enumerate().take(mr) {
                y[(r + i) * ys + c0..(r + i) * ys + c0 + cols].copy_from_slice(&t[..cols]);
            }
            r += mr;
        }
        p += if wide { 2 } else { 1 };
    }
}

/// One row times panels `p0..p1` into `y` (that row's `(p − p0)·NR..` columns), in groups of
/// eight, four, two and one panels. Only called where [`wide_available`] holds.
fn single_row(x: &[f32], k: usize, w: &Panels<'_>, p0: usize, p1: usize, y: &mut [f32]) {
    let mut p = p0;
    while p < p1 {
        let group = [8usize, 4, 2, 1]
            .into_iter()
            .find(|&g| p + g <= p1)
            .unwrap_or(1);
        let mut out = [[0f32; NR]; 8];
        match group {
            8 => row_wide::<8>(x, k, w, p, &mut out),
            4 => row_wide::<4>(x, k, w, p, &mut out),
            2 => row_wide::<2>(x, k, w, p, &mut out),
            _ => row_wide::<1>(x, k, w, p, &mut out),
        }
        for (g, o) in out.iter().enumerate().take(group) {
            let c0 = (p + g - p0) * NR;
            let cols = NR.min(y.len() - c0);
            y[c0..c0 + cols].copy_from_slice(&o[..cols]);
        }
        p += group;
    }
}

/// One row times `G` panels from `p` with AVX-512 (one accumulator register per panel).
fn row_wide<const G: usize>(
    x: &[f32],
    k: usize,
    w: &Panels<'_>,
    p: usize,
    out: &mut [[f32; NR]; 8],
) {
    // 16-bit panels are widened in the registers (a decoded row reads each weight once:
    // widening into memory first would cost more than the halved read saves)
    #[cfg(target_arch = "x86_64")]
    match w.panel16(p) {
        Some(Half::Bf16(first)) => {
            return row_in_place::<G, _>(x, k, out, |g| match w.panel16(p + g) {
                Some(Half::Bf16(v)) => v,
                _ => first,
            })
        }
        Some(Half::F16(first)) => {
            return row_in_place::<G, _>(x, k, out, |g| match w.panel16(p + g) {
                Some(Half::F16(v)) => v,
                _ => first,
            })
        }
        None => {}
    }
    #[cfg(target_arch = "x86_64")]
    with_scratch(G, |scratch| {
        let mut it = scratch.iter_mut();
        let panels: [&[f32]; G] = std::array::from_fn(|g| {
            let s = it.next().expect("G scratch vectors");
            w.panel(p + g, s)
        });
        #[allow(unsafe_code)]
        // SAFETY: callers check `wide_available` (the CPU has AVX-512F).
        unsafe {
            row_avx512::<G, f32>(x, k, &panels, out)
        };
    });
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, k, w, p, out);
        unreachable!("the AVX-512 row kernel runs on x86-64 only");
    }
}

/// [`row_avx512`] over the `G` panels `panel(0..G)` read in place. Only called where
/// [`wide_available`] holds.
#[cfg(target_arch = "x86_64")]
fn row_in_place<'a, const G: usize, T: PanelElem + 'a>(
    x: &[f32],
    k: usize,
    out: &mut [[f32; NR]; 8],
    panel: impl Fn(usize) -> &'a [T],
) {
    let panels: [&[T]; G] = std::array::from_fn(panel);
    #[allow(unsafe_code)]
    // SAFETY: callers check `wide_available` (the CPU has AVX-512F).
    unsafe {
        row_avx512::<G, T>(x, k, &panels, out)
    };
}

/// [`micro_scalar`] for one row and `G ≤ 8` panels with AVX-512: each element's chain of fused
/// multiply-adds over `k` in order.
///
/// Panels of 16-bit elements (bfloat16, binary16) are widened in the registers
/// ([`PanelElem`]): the same values, so the same bits as their f32 panels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn row_avx512<const G: usize, T: PanelElem>(
    x: &[f32],
    k: usize,
    panels: &[&[T]; G],
    out: &mut [[f32; NR]; 8],
) {
    use std::arch::x86_64::{_mm512_fmadd_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps};
    assert!(x.len() >= k && G <= 8 && panels.iter().all(|p| p.len() >= k * NR));
    let mut acc = [_mm512_setzero_ps(); G];
    for (kk, &xv) in x[..k].iter().enumerate() {
        let a = _mm512_set1_ps(xv);
        for g in 0..G {
            #[allow(unsafe_code)]
            // SAFETY: `kk < k` and each panel holds `k · NR` elements; the CPU has AVX-512F.
            let b = unsafe { T::load16(panels[g].as_ptr().add(kk * NR)) };
            acc[g] = _mm512_fmadd_ps(a, b, acc[g]);
        }
    }
    for g in 0..G {
        #[allow(unsafe_code)]
        // SAFETY: each row of `out` holds NR = 16 f32.
        unsafe {
            _mm512_storeu_ps(out[g].as_mut_ptr(), acc[g])
        };
    }
}

/// An element the AVX-512 kernels read panels of: f32, or a bfloat16 or binary16 (widened in
/// the register to the same f32).
#[cfg(target_arch = "x86_64")]
trait PanelElem: Copy {
    /// Sixteen consecutive elements at `p` as f32 lanes.
    ///
    /// # Safety
    /// `p` must point at 16 readable elements, and the CPU must have AVX-512F (only called
    /// from the AVX-512 kernels, into which it is inlined).
    #[allow(unsafe_code)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

#[cfg(target_arch = "x86_64")]
impl PanelElem for f32 {
    #[inline(always)]
    #[allow(unsafe_code)]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        #[allow(unsafe_code)]
        // SAFETY: the caller's contract.
        unsafe {
            std::arch::x86_64::_mm512_loadu_ps(p)
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl PanelElem for half::bf16 {
    /// Zero-extended and shifted into the upper half of each f32 lane.
    #[inline(always)]
    #[allow(unsafe_code)]
    unsafe fn load16(p: *const half::bf16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::{
            __m256i, _mm256_loadu_si256, _mm512_castsi512_ps, _mm512_cvtepu16_epi32,
            _mm512_slli_epi32,
        };
        #[allow(unsafe_code)]
        // SAFETY: the caller's contract (16 elements of 2 bytes: one 32-byte load).
        unsafe {
            let h = _mm256_loadu_si256(p.cast::<__m256i>());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl PanelElem for half::f16 {
    /// Converted by `vcvtph2ps` (AVX-512F), exact for every binary16 value, subnormals
    /// included.
    #[inline(always)]
    #[allow(unsafe_code)]
    unsafe fn load16(p: *const half::f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm512_cvtph_ps};
        #[allow(unsafe_code)]
        // SAFETY: the caller's contract (16 elements of 2 bytes: one 32-byte load).
        unsafe {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast::<__m256i>()))
        }
    }
}

/// Whether the AVX-512 register tile can run on this CPU.
fn wide_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Two panels at once with AVX-512 for `R` rows (4 or 8): the first `NR` columns of each tile
/// row from `pa`, the next from `pb`. Only called where [`wide_available`] holds.
fn micro_wide<const R: usize>(
    x: &[f32],
    k: usize,
    pa: &[f32],
    pb: &[f32],
    tile: &mut [[f32; 2 * NR]; R],
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[allow(unsafe_code)]
        // SAFETY: callers check `wide_available` (the CPU has AVX-512F).
        unsafe {
            micro_avx512::<R>(x, k, pa, pb, tile)
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, k, pa, pb, tile);
        unreachable!("the AVX-512 tile runs on x86-64 only");
    }
}

/// [`micro_scalar`] for `R` rows (4 or 8) and two panels with AVX-512: `2R` accumulator
/// registers of sixteen lanes, one fused multiply-add per element per step of `k`, in order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn micro_avx512<const R: usize>(
    x: &[f32],
    k: usize,
    pa: &[f32],
    pb: &[f32],
    tile: &mut [[f32; 2 * NR]; R],
) {
    use std::arch::x86_64::{
        _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
    };
    assert!(x.len() >= R * k && pa.len() >= k * NR && pb.len() >= k * NR);
    let mut acc0 = [_mm512_setzero_ps(); R];
    let mut acc1 = [_mm512_setzero_ps(); R];
    for kk in 0..k {
        #[allow(unsafe_code)]
        // SAFETY: `kk < k` and each panel holds `k · NR` elements, so the 16-wide loads at
        // `kk · NR` stay inside them.
        let (b0, b1) = unsafe {
            (
                _mm512_loadu_ps(pa.as_ptr().add(kk * NR)),
                _mm512_loadu_ps(pb.as_ptr().add(kk * NR)),
            )
        };
        for i in 0..R {
            #[allow(unsafe_code)]
            // SAFETY: `i < R` and `kk < k`, so `i·k + kk < R·k ≤ x.len()` (asserted above);
            // unchecked, since a bounds check per broadcast costs a fifth of the kernel's time.
            let a = _mm512_set1_ps(unsafe { *x.get_unchecked(i * k + kk) });
            acc0[i] = _mm512_fmadd_ps(a, b0, acc0[i]);
            acc1[i] = _mm512_fmadd_ps(a, b1, acc1[i]);
        }
    }
    for (i, t) in tile.iter_mut().enumerate() {
        #[allow(unsafe_code)]
        // SAFETY: each row of `tile` holds 2·NR = 32 f32; the stores write 16 each.
        unsafe {
            _mm512_storeu_ps(t.as_mut_ptr(), acc0[i]);
            _mm512_storeu_ps(t.as_mut_ptr().add(NR), acc1[i]);
        }
    }
}

/// The register tile: [`MR`] rows of `x` (`[MR, k]`) times one panel (`[k][NR]`), into the
/// first `NR` columns of `tile`.
fn micro(x: &[f32], k: usize, panel: &[f32], tile: &mut [[f32; 2 * NR]; MR]) {
    #[cfg(target_arch = "x86_64")]
    if fma_available() {
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX2 and FMA (checked by `fma_available`).
        unsafe {
            micro_avx2(x, k, panel, tile)
        };
        return;
    }
    micro_scalar(x, k, panel, tile);
}

/// Whether the AVX2 + FMA micro-kernel can run on this CPU.
#[cfg(target_arch = "x86_64")]
fn fma_available() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// The micro-kernel for any target: each element's chain by [`f32::mul_add`] (a correctly
/// rounded fused multiply-add, in hardware or in software), bitwise [`micro_avx2`].
fn micro_scalar(x: &[f32], k: usize, panel: &[f32], tile: &mut [[f32; 2 * NR]; MR]) {
    for (i, t) in tile.iter_mut().enumerate() {
        *t = [0f32; 2 * NR];
        let xr = &x[i * k..(i + 1) * k];
        for (kk, &a) in xr.iter().enumerate() {
            let b = &panel[kk * NR..(kk + 1) * NR];
            for c in 0..NR {
                t[c] = a.mul_add(b[c], t[c]);
            }
        }
    }
}

/// [`micro_scalar`] for four rows with AVX2 + FMA: eight accumulator registers (four rows by
/// two halves of the panel), one fused multiply-add per element per step of `k`, in order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn micro_avx2(x: &[f32], k: usize, panel: &[f32], tile: &mut [[f32; 2 * NR]; MR]) {
    use std::arch::x86_64::{
        _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };
    assert!(x.len() >= MR * k && panel.len() >= k * NR);
    let mut acc = [_mm256_setzero_ps(); 2 * MR];
    let (x0, x1, x2, x3) = (&x[..k], &x[k..2 * k], &x[2 * k..3 * k], &x[3 * k..4 * k]);
    for kk in 0..k {
        #[allow(unsafe_code)]
        // SAFETY: `kk < k` and `panel` holds `k · NR` elements, so both 8-wide loads at
        // `kk · NR` and `kk · NR + 8` stay inside it.
        let (b0, b1) = unsafe {
            let at = panel.as_ptr().add(kk * NR);
            (_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8)))
        };
        for (i, a) in [x0[kk], x1[kk], x2[kk], x3[kk]].into_iter().enumerate() {
            let a = _mm256_set1_ps(a);
            acc[2 * i] = _mm256_fmadd_ps(a, b0, acc[2 * i]);
            acc[2 * i + 1] = _mm256_fmadd_ps(a, b1, acc[2 * i + 1]);
        }
    }
    for (i, t) in tile.iter_mut().enumerate() {
        #[allow(unsafe_code)]
        // SAFETY: each row of `tile` holds 2·NR = 32 f32; the stores write 8 of the first 16.
        unsafe {
            _mm256_storeu_ps(t.as_mut_ptr(), acc[2 * i]);
            _mm256_storeu_ps(t.as_mut_ptr().add(8), acc[2 * i + 1]);
        }
    }
}

/// Accumulators of [`sum_lanes`].
const LANES: usize = 8;

/// `Σ xᵢ` in f32 with eight interleaved accumulators (element `i` into lane `i mod 8`) and the
/// fixed pairwise reduction `((s₀+s₁)+(s₂+s₃))+((s₄+s₅)+(s₆+s₇))`: an order fixed by the length.
pub fn sum_lanes(x: &[f32]) -> f32 {
    let mut s = [0f32; LANES];
    let n = x.len() / LANES * LANES;
    for c in x[..n].chunks_exact(LANES) {
        for i in 0..LANES {
            s[i] += c[i];
        }
    }
    for (i, &v) in x[n..].iter().enumerate() {
        s[i] += v;
    }
    ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
}

/// Elements per task of the element-wise kernels split across threads.
const ELEMENT_BLOCK: usize = 1 << 14;

/// RMSNorm of each `d`-wide row of `x`: `(x · (1 / √(mean(x²) + eps))) · gain`, the mean of
/// squares by [`sum_lanes`] over the squares, each step rounded to f32. Rows are split across
/// threads (each row's arithmetic is its own), and within a thread four rows' sums run
/// interleaved (four independent add chains; each row's sum is still [`sum_lanes`]'s, bit for
/// bit).
pub fn rms_norm_rows(x: &[f32], d: usize, gain: &[f32], eps: f32) -> Vec<f32> {
    by_rows(x, d, |o, xs| {
        #[cfg(target_arch = "x86_64")]
        if fma_available() {
            #[allow(unsafe_code)]
            // SAFETY: the CPU has AVX2 (checked by `fma_available`).
            unsafe {
                rms_norm_block_avx2(o, xs, d, gain, eps)
            };
            return;
        }
        rms_norm_block(o, xs, d, gain, eps)
    })
}

/// [`rms_norm_block`] compiled with AVX2 (no fused multiply-add is formed: the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn rms_norm_block_avx2(o: &mut [f32], xs: &[f32], d: usize, gain: &[f32], eps: f32) {
    rms_norm_block(o, xs, d, gain, eps)
}

/// The rows of one block of [`rms_norm_rows`]: four at a time, then one at a time.
#[inline(always)]
fn rms_norm_block(o: &mut [f32], xs: &[f32], d: usize, gain: &[f32], eps: f32) {
    let scale = |orow: &mut [f32], row: &[f32], sum: f32| {
        let inv = 1.0 / (sum / d as f32 + eps).sqrt();
        for ((y, &v), &g) in orow.iter_mut().zip(row).zip(gain) {
            *y = (v * inv) * g;
        }
    };
    let mut outs = o.chunks_exact_mut(4 * d);
    let mut ins = xs.chunks_exact(4 * d);
    for (o4, x4) in (&mut outs).zip(&mut ins) {
        let rows: [&[f32]; 4] = std::array::from_fn(|r| &x4[r * d..(r + 1) * d]);
        let sums = sum_squares(rows);
        for (r, orow) in o4.chunks_exact_mut(d).enumerate() {
            scale(orow, rows[r], sums[r]);
        }
    }
    for (orow, row) in outs
        .into_remainder()
        .chunks_exact_mut(d)
        .zip(ins.remainder().chunks_exact(d))
    {
        scale(orow, row, sum_squares([row])[0]);
    }
}

/// `Σ xᵢ²` of each of `R` rows of one length, each square rounded to f32 and summed as
/// [`sum_lanes`] sums (so bitwise `sum_lanes` of the squares), the rows' chains interleaved.
#[inline(always)]
fn sum_squares<const R: usize>(rows: [&[f32]; R]) -> [f32; R] {
    let d = rows[0].len();
    let n = d / LANES * LANES;
    let mut s = [[0f32; LANES]; R];
    for c in (0..n).step_by(LANES) {
        for (sr, row) in s.iter_mut().zip(&rows) {
            let x: &[f32; LANES] = row[c..c + LANES].try_into().expect("LANES elements");
            for i in 0..LANES {
                sr[i] += x[i] * x[i];
            }
        }
    }
    for (sr, row) in s.iter_mut().zip(&rows) {
        for (i, &v) in row[n..].iter().enumerate() {
            sr[i] += v * v;
        }
    }
    s.map(|s| ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])))
}

/// `f(out_block, x_block)` over blocks of whole `d`-wide rows of `x` (on the rayon pool's
/// threads where [`parallel`] says so), into a new output of `x`'s length: the row kernels'
/// split, which never changes a row's arithmetic.
fn by_rows(x: &[f32], d: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    if d == 0 {
        return zeros(x.len());
    }
    // `f` writes every element of its rows
    let mut out = buffer(x.len());
    let block = (ELEMENT_BLOCK / d).max(1) * d;
    if parallel(x.len()) {
        out.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .for_each(|(o, xs)| f(o, xs));
    } else {
        out.chunks_mut(block)
            .zip(x.chunks(block))
            .for_each(|(o, xs)| f(o, xs));
    }
    out
}

/// LayerNorm of each `d`-wide row of `x` (the BERT encoder's):
/// `((x − μ) / √(σ² + eps)) · gain + bias`, with `μ` the mean of the row and `σ²` the mean of
/// the squared centred values, both by [`sum_lanes`]; each step rounded to f32. Rows are split
/// across threads (each row's arithmetic is its own).
pub fn layer_norm_rows(x: &[f32], d: usize, gain: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    by_rows(x, d, |o, xs| {
        let mut centred = vec![0f32; d];
        let mut sq = vec![0f32; d];
        for (orow, row) in o.chunks_exact_mut(d).zip(xs.chunks_exact(d)) {
            let mean = sum_lanes(row) / d as f32;
            for ((c, s), &v) in centred.iter_mut().zip(sq.iter_mut()).zip(row) {
                *c = v - mean;
                *s = *c * *c;
            }
            let std = (sum_lanes(&sq) / d as f32 + eps).sqrt();
            for (((y, &c), &g), &b) in orow.iter_mut().zip(&centred).zip(gain).zip(bias) {
                *y = (c / std) * g + b;
            }
        }
    })
}

/// `y + bias` on every `bias.len()`-wide row of `y`, in place.
pub fn add_bias(y: &mut [f32], bias: &[f32]) {
    if bias.is_empty() {
        return;
    }
    for row in y.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// The GELU `0.5 · x · (1 + erf(x / √2))` in place, element by element, with [`erf`].
pub fn gelu(x: &mut [f32]) {
    let f = |c: &mut [f32]| map_in_place(c, |v| 0.5 * v * (1.0 + erf(v * FRAC_1_SQRT_2)));
    if parallel(x.len()) {
        x.par_chunks_mut(ELEMENT_BLOCK).for_each(f);
    } else {
        x.chunks_mut(ELEMENT_BLOCK).for_each(f);
    }
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// Cephes `expf`'s polynomial for `(e^r − 1 − r) / r²` on `|r| ≤ ln 2 / 2`, highest degree
/// first (S. L. Moshier, Cephes Math Library, `expf.c`).
pub const EXP_POLY: [f32; 6] = [
    1.987_569_2e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5, // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
];

/// `e^x` in f32 by one fixed sequence of IEEE operations: `n = round(x · log₂e)` (by the
/// `1.5·2²³` shift, ties to even), `r = x − n·ln2` in two fused steps (Cody–Waite, Cephes'
/// split of ln 2), `e^r = 1 + r + r²·P(r)` with [`EXP_POLY`] (Horner, fused), times `2ⁿ` built
/// from its bits. `x` is clamped to `[−87.3, 88]` first (so `2ⁿ` is a normal number): below,
/// the result is about `1.2e−38` instead of underflowing; NaN stays NaN. Within 2 ulp of `e^x`
/// on the clamped range (tested against f64). [`f32::mul_add`] is correctly rounded, in hardware
/// or in software, so every CPU and vector width gives the same bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_359_4; // Cephes' C1 = 0.693359375, exact in 9 bits
    const LN2_LO: f32 = -2.121_944_4e-4; // Cephes' C2
    let x = x.clamp(-87.3, 88.0);
    let t = x.mul_add(std::f32::consts::LOG2_E, SHIFT);
    let n = t - SHIFT;
    let r = (-n).mul_add(LN2_HI, x);
    let r = (-n).mul_add(LN2_LO, r);
    let mut p = EXP_POLY[0];
    for &c in &EXP_POLY[1..] {
        p = p.mul_add(r, c);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    let n = (t.to_bits() as i32).wrapping_sub(SHIFT.to_bits() as i32);
    y * f32::from_bits((n.wrapping_add(127) as u32) << 23)
}

/// `erf(x)` in f32 by Abramowitz and Stegun's formula 7.1.26 (the one PyTorch's vectorized CPU
/// kernels use): `erf(|x|) ≈ 1 − t·(a₁ + t(a₂ + t(a₃ + t(a₄ + t·a₅))))·e^(−x²)` with
/// `t = 1 / (1 + p·|x|)`, odd in `x`. Absolute error at most `1.5e−7` for the formula in exact
/// arithmetic and below `5e−7` in f32 (4.8e−7 at worst over `[−6, 6]`, tested against f64's
/// `erf`): in the GELU, at most `2.5e−7·|x|`. Fixed IEEE operations and [`exp`]: the same bits
/// on every CPU.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        1.061_405_4,
        -1.453_152,
        1.421_413_8,
        -0.284_496_73,
        0.254_829_6,
    ];
    let a = x.abs();
    let t = 1.0 / P.mul_add(a, 1.0);
    let mut poly = A[0];
    for &c in &A[1..] {
        poly = poly.mul_add(t, c);
    }
    let y = 1.0 - poly * t * exp(-(a * a));
    y.copysign(x)
}

/// `x ← f(x)` for every element, compiled for AVX-512 or AVX2 + FMA where the CPU has them
/// (so `f`'s fused multiply-adds vectorize) and portably otherwise: the same bits either way.
#[inline(always)]
fn map_in_place(x: &mut [f32], f: impl Fn(f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if wide_available() {
            #[allow(unsafe_code)]
            // SAFETY: the CPU has AVX-512F (checked by `wide_available`).
            unsafe {
                map_avx512(x, f)
            };
            return;
        }
        if fma_available() {
            #[allow(unsafe_code)]
            // SAFETY: the CPU has AVX2 and FMA (checked by `fma_available`).
            unsafe {
                map_avx2(x, f)
            };
            return;
        }
    }
    for v in x {
        *v = f(*v);
    }
}

/// [`map_in_place`]'s loop compiled with AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn map_avx512(x: &mut [f32], f: impl Fn(f32) -> f32) {
    for v in x {
        *v = f(*v);
    }
}

/// [`map_in_place`]'s loop compiled with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn map_avx2(x: &mut [f32], f: impl Fn(f32) -> f32) {
    for v in x {
        *v = f(*v);
    }
}

/// `x ← e^x` ([`exp`]) for every element.
pub fn exp_in_place(x: &mut [f32]) {
    map_in_place(x, exp);
}

/// SwiGLU's product `silu(gate) · up` element by element, `silu(g) = g / (1 + e^(−g))`.
pub fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut out = buffer(gate.len().min(up.len()));
    let f = |(o, (g, u)): (&mut [f32], (&[f32], &[f32]))| {
        for (y, &g) in o.iter_mut().zip(g) {
            *y = -g;
        }
        exp_in_place(o);
        for ((y, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *y = (g / (1.0 + *y)) * u;
        }
    };
    if parallel(out.len()) {
        out.par_chunks_mut(ELEMENT_BLOCK)
            .zip(
                gate.par_chunks(ELEMENT_BLOCK)
                    .zip(up.par_chunks(ELEMENT_BLOCK)),
            )
            .for_each(f);
    } else {
        out.chunks_mut(ELEMENT_BLOCK)
            .zip(gate.chunks(ELEMENT_BLOCK).zip(up.chunks(ELEMENT_BLOCK)))
            .for_each(f);
    }
    out
}

/// Element-wise `a + b`.
pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut out = buffer(a.len().min(b.len()));
    let f = |(o, (a, b)): (&mut [f32], (&[f32], &[f32]))| {
        for ((y, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *y = a + b;
        }
    };
    if parallel(out.len()) {
        out.par_chunks_mut(ELEMENT_BLOCK)
            .zip(a.par_chunks(ELEMENT_BLOCK).zip(b.par_chunks(ELEMENT_BLOCK)))
            .for_each(f);
    } else {
        out.chunks_mut(ELEMENT_BLOCK)
            .zip(a.chunks(ELEMENT_BLOCK).zip(b.chunks(ELEMENT_BLOCK)))
            .for_each(f);
    }
    out
}

/// Causal attention of the query rows at positions `q0..q0 + tq` over the keys and values of
/// positions `0..e` (`e ≥ q0 + tq`), one head: `q: [tq, hd]`, `k, v: [e, hd]`; query `p` sees
/// keys `j ≤ p` with `p − j < window`. Returns `[tq, hd]`. Scores are `(q·kᵀ)·scale` by
/// [`matmul_t`]; see the [module docs](self) for why a row's result does not depend on `e`,
/// `tq` or `q0`'s block.
// The head's geometry is separate arguments, as in `LlamaModel::recompute_cell`.
#[allow(clippy::too_many_arguments)]
pub fn attend_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q0: usize,
    tq: usize,
    e: usize,
    hd: usize,
    window: usize,
) -> Vec<f32> {
    let keys = PackedMatrix::new(k, e, hd).expect("key rows");
    let values = PackedMatrix::from_transposed(v, hd, e).expect("value rows");
    attend_packed(q, &keys, &values, q0, tq, e, window)
}

/// [`attend_head`] over keys and values packed once for a longer context (`keys`: the keys
/// as a `[e′, hd]` matrix, `values`: the values transposed, `e′ ≥ e`): only their first `e`
/// rows are read, so the query blocks of one context share one packing.
pub fn attend_packed(
    q: &[f32],
    keys: &PackedMatrix,
    values: &PackedMatrix,
    q0: usize,
    tq: usize,
    e: usize,
    window: usize,
) -> Vec<f32> {
    attend_visible(q, keys, values, tq, e, |i| {
        let p = q0 + i;
        Seen::Range(p.saturating_sub(window.saturating_sub(1))..p + 1)
    })
}

/// The keys one query row sees, in increasing order.
#[derive(Debug, Clone)]
pub enum Seen<'a> {
    /// The keys of a contiguous range (causal attention, a window, every key).
    Range(std::ops::Range<usize>),
    /// Key `j` where `mask[j]` (a key mask, a bidirectional window); `mask` covers every key.
    Mask(&'a [bool]),
}

/// The softmax of `x` in place: `e^(xᵢ − max) / Σ e^(xⱼ − max)` with [`exp`], the sum by
/// [`sum_lanes`], each quotient as `e^(xᵢ − max) · (1 / Σ)`. The maximum runs in sixteen lanes
/// with a fixed reduction: the maximum of numbers is the same in any order but for the sign of
/// a zero, and `xᵢ − (±0)` has the same exponential either way, so the result is the bits of a
/// sequential maximum. Empty: nothing.
pub fn softmax_in_place(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    for (m, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *m = if v > *m { v } else { *m };
    }
    let max = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for v in x.iter_mut() {
        *v -= max;
    }
    exp_in_place(x);
    let inv = 1.0 / sum_lanes(x);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Attention of `tq` query rows over the keys and values of positions `0..e` (packed as in
/// [`attend_packed`]) where query row `i` sees the keys `seen(i)` (a causal range, or the BERT
/// encoder's key mask). The maximum, the exponentials and their sum run over the seen keys in
/// increasing order only, and an unseen key's probability is exactly 0, so a row's result
/// depends on its own query and seen keys alone, not on `tq`, `e` or the rows beside it (see
/// the [module docs](self)); a [`Seen::Mask`] that keeps a range gives the bits of that
/// [`Seen::Range`]. A row that sees no key gets zeros.
pub fn attend_visible<'a>(
    q: &[f32],
    keys: &PackedMatrix,
    values: &PackedMatrix,
    tq: usize,
    e: usize,
    seen: impl Fn(usize) -> Seen<'a>,
) -> Vec<f32> {
    let hd = keys.inp;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut probs = matmul_panels(q, tq, keys.prefix(e, hd));
    let (mut ex, mut at) = (Vec::with_capacity(e), Vec::with_capacity(e));
    for (i, row) in probs.chunks_exact_mut(e).enumerate() {
        // the seen scores, scaled, into `ex`; their softmax there; back into the row, every
        // other key at probability 0
        ex.clear();
        match seen(i) {
            Seen::Range(r) => {
                let r = r.start.min(e)..r.end.min(e);
                ex.extend(row[r.clone()].iter().map(|&s| s * scale));
                softmax_in_place(&mut ex);
                row[..r.start].fill(0.0);
                row[r.end..].fill(0.0);
                row[r].copy_from_slice(&ex);
            }
            Seen::Mask(mask) => {
                at.clear();
                at.extend((0..e).filter(|&j| mask.get(j) == Some(&true)));
                ex.extend(at.iter().map(|&j| row[j] * scale));
                softmax_in_place(&mut ex);
                row.fill(0.0);
                for (&j, &p) in at.iter().zip(&ex) {
                    row[j] = p;
                }
            }
        }
    }
    matmul_panels(&probs, tq, values.prefix(hd, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both roundings are `half`'s conversion there and back, bit for bit (NaN: a NaN).
    fn same_as_half(x: f32) {
        let want_b = half::bf16::from_f32(x).to_f32();
        let want_h = half::f16::from_f32(x).to_f32();
        let (got_b, got_h) = (round_bf16(x), round_f16(x));
        if x.is_nan() {
            assert!(got_b.is_nan() && got_h.is_nan());
        } else {
            assert_eq!(
                got_b.to_bits(),
                want_b.to_bits(),
                "bf16 of {x:e} ({:#x})",
                x.to_bits()
            );
            assert_eq!(
                got_h.to_bits(),
                want_h.to_bits(),
                "f16 of {x:e} ({:#x})",
                x.to_bits()
            );
        }
    }

    #[test]
    fn stored_precision_rounding_is_the_conversion_bitwise() {
        let mut edges = vec![
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            6.103_515_6e-5,
            6.103_515e-5,
            65504.0,
            65519.99,
            65520.0,
            65536.0,
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            3.389_531_4e38,
        ];
        // every tie and near-tie around a few binades, both signs
        for e in [-30, -15, -14, -1, 0, 7, 15, 16, 127] {
            for m in 0u32..64 {
                let base = 2f32.powi(e) * (1.0 + m as f32 / 64.0);
                for d in [-2i32, -1, 0, 1, 2] {
                    for t in [0x8000u32, 0x1000] {
                        let bits = (base.to_bits() & !(2 * t - 1)) | t;
                        edges.push(f32::from_bits(bits.wrapping_add(d as u32)));
                    }
                }
            }
        }
        for x in edges {
            same_as_half(x);
            same_as_half(-x);
        }
    }

    proptest::proptest! {
        #[test]
        fn stored_precision_rounding_matches_half_on_any_bits(bits in proptest::prelude::any::<u32>()) {
            same_as_half(f32::from_bits(bits));
        }
    }

    fn values(seed: u32, n: usize) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = (i ^ seed.rotate_left(13)).wrapping_mul(0x9E37_79B9) ^ seed;
                (h >> 9) as f32 / 4_194_304.0 - 1.0
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Each element as one scalar chain of fused multiply-adds: the definition.
    fn reference(x: &[f32], m: usize, w: &[f32], out: usize, inp: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * out];
        for i in 0..m {
            for j in 0..out {
                let mut c = 0f32;
                for kk in 0..inp {
                    c = x[i * inp + kk].mul_add(w[j * inp + kk], c);
                }
                y[i * out + j] = c;
            }
        }
        y
    }

    #[test]
    fn products_are_the_definition_at_every_shape() {
        for (m, out, inp) in [
            (1, 1, 1),
            (3, 17, 5),
            (4, 16, 64),
            (7, 33, 19),
            (130, 40, 24),
        ] {
            let (x, w) = (values(1, m * inp), values(2, out * inp));
            let packed = PackedMatrix::new(&w, out, inp).expect("pack");
            let y = matmul_t(&x, m, &packed);
            assert_eq!(
                bits(&y),
                bits(&reference(&x, m, &w, out, inp)),
                "{m}x{out}x{inp}"
            );
        }
    }

    #[test]
    fn matrices_held_in_16_bits_give_the_same_products() {
        // weights rounded to bfloat16 or binary16 (as a bf16 or f16 setup holds them; binary16
        // with some subnormal values), at shapes that exercise every kernel path: single rows
        // (decode), 4- and 8-row tiles, partial panels, padding
        for (precision, (m, out, inp)) in [
            (1, 1, 1),
            (1, 200, 64),
            (3, 17, 5),
            (4, 16, 64),
            (7, 33, 19),
            (9, 130, 40),
            (130, 40, 24),
        ]
        .into_iter()
        .flat_map(|shape| {
            [
                (crate::Precision::Bf16, shape),
                (crate::Precision::F16, shape),
            ]
        }) {
            let x = values(11, m * inp);
            let mut w = values(12, out * inp);
            for (i, v) in w.iter_mut().enumerate().step_by(7) {
                *v *= 1e-6 * (1 + i % 5) as f32;
            }
            round_to(precision, &mut w);
            let full = PackedMatrix::new(&w, out, inp).expect("pack");
            let compact = full.clone().compact();
            assert!(compact.is_compact() && !full.is_compact());
            assert_eq!(2 * compact.bytes(), full.bytes());
            assert_eq!(
                bits(&matmul_t(&x, m, &compact)),
                bits(&matmul_t(&x, m, &full)),
                "{precision:?} {m}x{out}x{inp}"
            );
            // prefix views read the 16-bit panels in place too
            let (po, pi) = (out.div_ceil(2), inp.div_ceil(2));
            let xs = &x[..m.min(3) * pi];
            assert_eq!(
                bits(&matmul_panels(xs, m.min(3), compact.prefix(po, pi))),
                bits(&matmul_panels(xs, m.min(3), full.prefix(po, pi))),
                "prefix of {m}x{out}x{inp}"
            );
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool");
                let y = pool.install(|| matmul_t(&x, m, &compact));
                assert_eq!(bits(&y), bits(&matmul_t(&x, m, &full)), "{threads} threads");
            }
        }
        // a matrix with one value that is neither a bfloat16 nor a binary16 stays in f32
        let mut w = values(13, 64);
        round_to(crate::Precision::Bf16, &mut w);
        w[5] = 1.0 + f32::EPSILON;
        assert!(!PackedMatrix::new(&w, 8, 8).unwrap().compact().is_compact());
        let mut w = values(14, 64);
        round_to(crate::Precision::F16, &mut w);
        w[9] = 1e-30;
        assert!(!PackedMatrix::new(&w, 8, 8).unwrap().compact().is_compact());
    }

    #[test]
    fn growing_matrices_are_the_packing_of_the_longer_matrix() {
        // a key cache [rows, 40] and a value cache (its transpose) grown one row at a time,
        // through several re-layouts of the value panels, against packing from scratch
        let (width, rows) = (40usize, 70usize);
        let all = values(21, rows * width);
        let mut keys = PackedMatrix::growing_out(width);
        let mut vals = PackedMatrix::growing_inp(width, 3);
        for r in 0..rows {
            keys.push_out(&all[r * width..(r + 1) * width]);
            vals.push_inp(&all[r * width..(r + 1) * width]);
            let e = r + 1;
            let fresh_k = PackedMatrix::new(&all[..e * width], e, width).unwrap();
            let fresh_v = PackedMatrix::from_transposed(&all[..e * width], width, e).unwrap();
            let x = values(22 + r as u32, 3 * width);
            assert_eq!(
                bits(&matmul_t(&x, 3, &keys)),
                bits(&matmul_t(&x, 3, &fresh_k)),
                "keys after {e} rows"
            );
            let p = values(90 + r as u32, 2 * e);
            assert_eq!(
                bits(&matmul_panels(&p, 2, vals.prefix(width, e))),
                bits(&matmul_t(&p, 2, &fresh_v)),
                "values after {e} rows"
            );
            assert_eq!((keys.out(), vals.inp()), (e, e));
        }
    }

    #[test]
    fn a_row_is_the_same_alone_in_any_batch_and_on_any_thread_count() {
        let (m, out, inp) = (150, 70, 48);
        let (x, w) = (values(3, m * inp), values(4, out * inp));
        let packed = PackedMatrix::new(&w, out, inp).expect("pack");
        let all = matmul_t(&x, m, &packed);
        for r in [0, 3, 64, 149] {
            let one = matmul_t(&x[r * inp..(r + 1) * inp], 1, &packed);
            assert_eq!(bits(&one), bits(&all[r * out..(r + 1) * out]), "row {r}");
        }
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let y = pool.install(|| matmul_t(&x, m, &packed));
            assert_eq!(bits(&y), bits(&all), "{threads} threads");
            let few = pool.install(|| matmul_t(&x[..5 * inp], 5, &packed));
            assert_eq!(
                bits(&few),
                bits(&all[..5 * out]),
                "{threads} threads, 5 rows"
            );
            // few rows but enough work to split the column panels across threads
            let (wo, wi) = (400, 300);
            let (xw, ww) = (values(12, 5 * wi), values(13, wo * wi));
            let wide = PackedMatrix::new(&ww, wo, wi).expect("pack");
            let split = pool.install(|| matmul_t(&xw, 5, &wide));
            let want = reference(&xw, 5, &ww, wo, wi);
            assert_eq!(bits(&split), bits(&want), "{threads} threads, split panels");
        }
    }

    #[test]
    fn transposed_packing_is_the_same_matrix() {
        let (out, inp) = (37, 11);
        let w = values(5, out * inp);
        let mut wt = vec![0f32; inp * out];
        for j in 0..out {
            for kk in 0..inp {
                wt[kk * out + j] = w[j * inp + kk];
            }
        }
        let x = values(6, 3 * inp);
        let a = matmul_t(&x, 3, &PackedMatrix::new(&w, out, inp).expect("pack"));
        let b = matmul_t(
            &x,
            3,
            &PackedMatrix::from_transposed(&wt, out, inp).expect("pack"),
        );
        assert_eq!(bits(&a), bits(&b));
        assert!(PackedMatrix::new(&w, out, inp + 1).is_none());
    }

    #[test]
    fn strided_packing_is_the_packing_of_the_columns() {
        // a head of width 11 at offset 22 of rows 40 wide, 37 rows
        let (rows, width, stride, offset) = (37usize, 11usize, 40usize, 22usize);
        let wide = values(8, rows * stride);
        let cols: Vec<f32> = wide
            .chunks_exact(stride)
            .flat_map(|r| r[offset..offset + width].to_vec())
            .collect();
        let f32s = |m: &PackedMatrix| match &m.panels {
            Store::F32(v) => bits(v),
            _ => unreachable!("packed in f32"),
        };
        let same = |a: &PackedMatrix, b: &PackedMatrix| {
            (a.out(), a.inp(), f32s(a)) == (b.out(), b.inp(), f32s(b))
        };
        let strided = PackedMatrix::new_strided(&wide, rows, width, stride, offset).expect("pack");
        assert!(same(
            &strided,
            &PackedMatrix::new(&cols, rows, width).unwrap()
        ));
        let strided = PackedMatrix::from_transposed_strided(&wide, width, rows, stride, offset)
            .expect("pack");
        assert!(same(
            &strided,
            &PackedMatrix::from_transposed(&cols, width, rows).unwrap()
        ));
        // rows that leave the array or the stride are refused, not read past
        assert!(PackedMatrix::new_strided(&wide, rows + 1, width, stride, offset).is_none());
        assert!(PackedMatrix::new_strided(&wide, rows, width, stride, offset + 8).is_none());
        assert!(PackedMatrix::new_strided(&wide, rows, width, usize::MAX, 0).is_none());
        assert!(
            PackedMatrix::from_transposed_strided(&wide, width, rows + 1, stride, offset).is_none()
        );
        assert!(PackedMatrix::new_strided(&[], 0, width, stride, 0).is_some());
    }

    #[test]
    fn attention_rows_do_not_depend_on_the_batch_or_the_context_length() {
        let (hd, e) = (16, 40);
        let (q, k, v) = (values(7, e * hd), values(8, e * hd), values(9, e * hd));
        for window in [usize::MAX, 5] {
            let all = attend_head(&q, &k, &v, 0, e, e, hd, window);
            // each row alone over exactly its keys, and blocks over a padded context
            for p in [0, 1, 17, 39] {
                let one = attend_head(
                    &q[p * hd..(p + 1) * hd],
                    &k[..(p + 1) * hd],
                    &v[..(p + 1) * hd],
                    p,
                    1,
                    p + 1,
                    hd,
                    window,
                );
                assert_eq!(bits(&one), bits(&all[p * hd..(p + 1) * hd]), "row {p}");
            }
            let block = attend_head(&q[16 * hd..24 * hd], &k, &v, 16, 8, e, hd, window);
            assert_eq!(bits(&block), bits(&all[16 * hd..24 * hd]));
        }
    }

    /// Values spread over `[lo, hi]`, both ends included.
    fn sweep(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32)
            .collect()
    }

    #[test]
    fn exp_is_within_two_ulp_and_the_same_bits_vectorized_or_not() {
        let x = sweep(-87.3, 88.0, 200_003);
        let mut fast = x.clone();
        exp_in_place(&mut fast);
        for (&v, &y) in x.iter().zip(&fast) {
            // the portable scalar code, element by element
            assert_eq!(exp(v).to_bits(), y.to_bits(), "e^{v}");
            let want = (v as f64).exp();
            let ulp = f64::from(f32::EPSILON) * want;
            assert!(
                ((y as f64) - want).abs() <= 2.0 * ulp,
                "e^{v} = {y}, not {want}"
            );
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 2e-38);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn erf_and_gelu_are_within_their_bound() {
        let x = sweep(-6.0, 6.0, 100_001);
        let mut g = x.clone();
        gelu(&mut g);
        for (&v, &y) in x.iter().zip(&g) {
            let e = libm::erf(v as f64);
            assert!(((erf(v) as f64) - e).abs() < 5e-7, "erf({v})");
            assert_eq!(erf(-v).to_bits(), (-erf(v)).to_bits());
            let want = 0.5 * v as f64 * (1.0 + libm::erf(v as f64 / std::f64::consts::SQRT_2));
            assert!(
                ((y as f64) - want).abs() < 3e-7 * (v.abs() as f64).max(1.0),
                "gelu({v}) = {y}, not {want}"
            );
            assert_eq!(
                y.to_bits(),
                (0.5 * v * (1.0 + erf(v * FRAC_1_SQRT_2))).to_bits()
            );
        }
    }

    #[test]
    fn layer_norm_is_row_local() {
        let d = 19;
        let (x, g, b) = (values(15, 6 * d), values(16, d), values(17, d));
        let all = layer_norm_rows(&x, d, &g, &b, 1e-12);
        let one = layer_norm_rows(&x[4 * d..5 * d], d, &g, &b, 1e-12);
        assert_eq!(bits(&one), bits(&all[4 * d..5 * d]));
        let mean = x[..d].iter().sum::<f32>() / d as f32;
        assert!((all[0] - ((x[0] - mean) / stddev(&x[..d]) * g[0] + b[0])).abs() < 1e-4);
    }

    fn stddev(x: &[f32]) -> f32 {
        let mean = x.iter().sum::<f32>() / x.len() as f32;
        (x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / x.len() as f32 + 1e-12).sqrt()
    }

    #[test]
    fn the_lane_maximum_softmax_is_the_sequential_one_bitwise() {
        for n in [1usize, 2, 15, 16, 17, 40, 129] {
            let mut x = values(21 + n as u32, n);
            // zeros of both signs among the maxima
            for (i, v) in x.iter_mut().enumerate() {
                if i % 5 == 0 {
                    *v = if i % 2 == 0 { 0.0 } else { -0.0 };
                } else {
                    *v = -v.abs();
                }
            }
            let mut max = f32::NEG_INFINITY;
            for &v in &x {
                max = max.max(v);
            }
            let mut want: Vec<f32> = x.iter().map(|&v| exp(v - max)).collect();
            let inv = 1.0 / sum_lanes(&want);
            for w in &mut want {
                *w *= inv;
            }
            softmax_in_place(&mut x);
            assert_eq!(bits(&x), bits(&want), "{n}");
        }
    }

    #[test]
    fn a_mask_that_keeps_a_range_is_that_range() {
        let (hd, e, tq) = (8, 21, 5);
        let (q, k, v) = (values(18, tq * hd), values(19, e * hd), values(20, e * hd));
        let keys = PackedMatrix::new(&k, e, hd).expect("pack");
        let vals = PackedMatrix::from_transposed(&v, hd, e).expect("pack");
        let masks: Vec<Vec<bool>> = (0..tq)
            .map(|i| (0..e).map(|j| (i + 3..=i + 12).contains(&j)).collect())
            .collect();
        let by_range = attend_visible(&q, &keys, &vals, tq, e, |i| Seen::Range(i + 3..i + 13));
        let by_mask = attend_visible(&q, &keys, &vals, tq, e, |i| Seen::Mask(&masks[i]));
        assert_eq!(bits(&by_range), bits(&by_mask));
    }

    #[test]
    fn sums_and_norms_are_row_local() {
        let d = 24;
        let x = values(10, 5 * d);
        let gain = values(11, d);
        let all = rms_norm_rows(&x, d, &gain, 1e-5);
        let one = rms_norm_rows(&x[2 * d..3 * d], d, &gain, 1e-5);
        assert_eq!(bits(&one), bits(&all[2 * d..3 * d]));
        assert_eq!(sum_lanes(&[1.0, 2.0, 3.0]), 6.0);
        assert_eq!(sum_lanes(&[]), 0.0);
    }

    #[test]
    fn interleaved_norms_are_the_row_by_row_definition_bitwise() {
        // the definition: each row's squares, their `sum_lanes`, then the scale
        let definition = |x: &[f32], d: usize, gain: &[f32], eps: f32| -> Vec<f32> {
            let mut out = Vec::with_capacity(x.len());
            for row in x.chunks_exact(d) {
                let sq: Vec<f32> = row.iter().map(|v| v * v).collect();
                let inv = 1.0 / (sum_lanes(&sq) / d as f32 + eps).sqrt();
                out.extend(row.iter().zip(gain).map(|(&v, &g)| (v * inv) * g));
            }
            out
        };
        for d in (1..20).chain([63, 512, 1000]) {
            for rows in 1..10 {
                let x: Vec<f32> = values(d as u32 * 31 + rows as u32, rows * d)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * (1 + i % 5) as f32 * 3.0)
                    .collect();
                let gain = values(d as u32, d);
                assert_eq!(
                    bits(&rms_norm_rows(&x, d, &gain, 1e-5)),
                    bits(&definition(&x, d, &gain, 1e-5)),
                    "d {d}, {rows} rows"
                );
                let mut block = vec![0f32; x.len()];
                rms_norm_block(&mut block, &x, d, &gain, 1e-5);
                assert_eq!(bits(&block), bits(&definition(&x, d, &gain, 1e-5)));
            }
        }
    }
}
