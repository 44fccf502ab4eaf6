//! Numeric setups: how a model's arithmetic is carried out.
//!
//! A [`Setup`] has a canonical string form, which is also its serde form and (as UTF-8 bytes)
//! the `setup` field of a [`veritrace_protocol::Statement`]. The grammar is
//!
//! ```text
//! setup     = precision "/attn=" attention [ "/quant=" quant ] [ "/splitk=" n ] [ "/batch=" n ]
//!             [ "/order=decode" ] [ "/skip=" layer ] [ "/reuse=" layer ] [ "/kernels=invariant" ]
//! precision = "f32" | "bf16" | "f16"
//! attention = "eager" | "tiled:" block | "window:" size | "topk:" k
//! quant     = ( "int8-tensor" | "int8-channel" | "int4-g32" | "int4-g128" ) [ ":mse" ]
//! ```
//!
//! with the parts in exactly this order, decimal numbers without leading zeros or signs, and
//! default values left out (`splitk=1`, `batch=1`, `order=prefill` and `:rtn` are never
//! written), so every setup has exactly one string: `f32/attn=eager` is the reference setup, and
//! `bf16/attn=tiled:64/quant=int8-channel/splitk=4` is a valid one.
//!
//! | axis | values | role |
//! |---|---|---|
//! | precision | `f32`, `bf16`, `f16` | element type of weights and activations; RMSNorm statistics, attention masks and softmax statistics stay f32 (a 16-bit mask turns `0 · −∞` into NaN) |
//! | attention | `eager`; `tiled:B` (online softmax over key blocks of `B`, the FlashAttention algorithm); `window:W` (each query sees its last `W` positions); `topk:K` (each query keeps its `K` highest scores) | algorithm; `window` and `topk` are cheaper approximations |
//! | quant | int8 per tensor / per output channel, int4 in groups of 32 or 128 inputs; round-to-nearest or `:mse` (clip ratio searched per scale group) | weight quantize-then-dequantize ([`crate::quant`]) |
//! | splitk | `n ≥ 2` | every linear layer sums `n` partial products over contiguous slices of its inner dimension, in f32 |
//! | batch | `n ≥ 2` | linear layers run on the prompt's rows stacked with `n − 1` other prompts' rows |
//! | order | `decode` | token by token with a KV cache (one-row matmuls) instead of one tiled prefill |
//! | skip | layer `l ≥ 1` | layer `l` is not computed: `h_l = h_{l−1}` |
//! | reuse | layer `l ≥ 2` | layer `l` reuses layer `l − 1`'s residual update: `h_l = h_{l−1} + (h_{l−1} − h_{l−2})` |
//! | kernels | `invariant` | the batch-invariant kernels of [`crate::invariant`] instead of candle's: every row's arithmetic is independent of how many rows are computed together, so the forward runs as large products and a generated token costs one row; f32, bf16 or f16 (each operation in f32, what it stores rounded once to the precision) with `eager` or `window:W` attention, without `splitk` and `batch` |
//!
//! `splitk`, `batch` and `order` change only the reduction order (the honest stand-in for other
//! hardware); `skip` and `reuse` are structural changes an adversary may make.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Largest block, window, top-k, split or batch parameter a setup string may carry.
pub const MAX_SETUP_PARAM: usize = 1 << 16;

/// Element type of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Precision {
    /// IEEE-754 binary32 throughout.
    F32,
    /// bfloat16 weights and activations (8-bit exponent, 8-bit significand).
    Bf16,
    /// IEEE-754 binary16 weights and activations.
    F16,
}

impl Precision {
    /// Every precision.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

    /// Canonical name (`f32`, `bf16`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 | Precision::F16 => 2,
        }
    }

    /// The trace element type of this precision's activations: what its sub-layer values are
    /// committed as (every activation of a half-precision run is a value of its type).
    pub fn dtype(self) -> veritrace_commit::Dtype {
        match self {
            Precision::F32 => veritrace_commit::Dtype::F32,
            Precision::Bf16 => veritrace_commit::Dtype::Bf16,
            Precision::F16 => veritrace_commit::Dtype::F16,
        }
    }
}

/// Attention algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attention {
    /// Scores, masked softmax and weighted sum computed in full ("eager").
    Eager,
    /// Online softmax over key blocks of `block` keys (the FlashAttention algorithm): a running
    /// maximum `m`, running sum `s` and running output `o`, rescaled by `exp(m_old − m_new)`
    /// at each block, divided by `s` at the end.
    Tiled {
        /// Keys per block.
        block: usize,
    },
    /// Sliding-window attention: query `p` sees keys `p − size + 1 ..= p`.
    Window {
        /// Window length in positions (the query's own position included).
        size: usize,
    },
    /// Top-k attention: query `p` keeps the `k` highest of its causal scores (all scores equal
    /// to the `k`-th highest are kept) and masks the rest before the softmax.
    TopK {
        /// Scores kept per query.
        k: usize,
    },
}

impl fmt::Display for Attention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attention::Eager => write!(f, "eager"),
            Attention::Tiled { block } => write!(f, "tiled:{block}"),
            Attention::Window { size } => write!(f, "window:{size}"),
            Attention::TopK { k } => write!(f, "topk:{k}"),
        }
    }
}

/// Weight quantization scheme (symmetric, zero point 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuantScheme {
    /// int8, one scale for the whole matrix.
    Int8Tensor,
    /// int8, one scale per output channel (row of `[out, in]`).
    Int8Channel,
    /// int4, one scale per group of `group` consecutive inputs of each output channel.
    Int4Group {
        /// Inputs per group (32 or 128).
        group: usize,
    },
}

impl QuantScheme {
    /// Every scheme.
    pub const ALL: [QuantScheme; 4] = [
        QuantScheme::Int8Tensor,
        QuantScheme::Int8Channel,
        QuantScheme::Int4Group { group: 32 },
        QuantScheme::Int4Group { group: 128 },
    ];

    /// Canonical name (`int8-tensor`, `int8-channel`, `int4-g32`, `int4-g128`).
    pub fn name(self) -> String {
        match self {
            QuantScheme::Int8Tensor => "int8-tensor".into(),
            QuantScheme::Int8Channel => "int8-channel".into(),
            QuantScheme::Int4Group { group } => format!("int4-g{group}"),
        }
    }

    /// Bits per quantized weight.
    pub fn bits(self) -> u32 {
        match self {
            QuantScheme::Int8Tensor | QuantScheme::Int8Channel => 8,
            QuantScheme::Int4Group { .. } => 4,
        }
    }
}

/// How a scale is chosen and values rounded, at the same bit width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rounding {
    /// Scale `max|w| / q_max`, round to nearest (ties away from zero).
    Nearest,
    /// Clipped: the scale `α · max|w| / q_max` with the clip ratio `α` from a fixed grid that
    /// minimizes the group's squared error, then round to nearest with saturation.
    Mse,
}

/// A weight quantization: scheme and rounding method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Quant {
    /// Scheme.
    pub scheme: QuantScheme,
    /// Rounding method.
    pub rounding: Rounding,
}

impl FromStr for Quant {
    type Err = ModelError;

    /// The quantization part of a setup string (`int8-channel`, `int4-g32:mse`, …).
    fn from_str(s: &str) -> Result<Self, ModelError> {
        parse_quant(s)
    }
}

impl fmt::Display for Quant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.scheme.name())?;
        if self.rounding == Rounding::Mse {
            write!(f, ":mse")?;
        }
        Ok(())
    }
}

/// In what order the sequence's rows are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Order {
    /// One forward over the whole sequence, in row tiles of the chunk size.
    #[default]
    Prefill,
    /// Token by token with a KV cache: every row is computed alone (one-row matmuls), its
    /// keys and values cached for later rows.
    Decode,
}

/// A numeric setup (see the [module docs](self) for the canonical string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Setup {
    /// Precision of weights and activations.
    pub precision: Precision,
    /// Attention algorithm.
    pub attention: Attention,
    /// Weight quantization, if any.
    pub quant: Option<Quant>,
    /// Split-K factor of every linear layer (1 = one matmul).
    pub split_k: usize,
    /// Batch the prompt runs in (1 = alone).
    pub batch: usize,
    /// Row order.
    pub order: Order,
    /// A layer (1-based) that is skipped.
    pub skip: Option<usize>,
    /// A layer (1-based, ≥ 2) that reuses the previous layer's residual update.
    pub reuse: Option<usize>,
    /// Which kernels carry out the arithmetic.
    pub kernels: Kernels,
}

/// Which kernels carry out a setup's arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Kernels {
    /// candle's CPU kernels, in tiles of the chunk size (each tile padded to its full size, so a
    /// row's arithmetic does not depend on the rows beside it).
    #[default]
    Candle,
    /// The batch-invariant kernels of [`crate::invariant`]: any number of rows at once.
    Invariant,
}

impl Default for Setup {
    fn default() -> Self {
        Setup::F32_EAGER
    }
}

impl Setup {
    /// `f32/attn=eager`, the reference setup.
    pub const F32_EAGER: Setup = Setup {
        precision: Precision::F32,
        attention: Attention::Eager,
        quant: None,
        split_k: 1,
        batch: 1,
        order: Order::Prefill,
        skip: None,
        reuse: None,
        kernels: Kernels::Candle,
    };

    /// The reference setup at another precision.
    pub fn with_precision(precision: Precision) -> Setup {
        Setup {
            precision,
            ..Setup::F32_EAGER
        }
    }

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

    /// Whether the setup changes the model's structure (`skip` or `reuse`), i.e. is not a way of
    /// running the claimed model at all.
    pub fn is_structural(&self) -> bool {
        self.skip.is_some() || self.reuse.is_some()
    }

    /// Whether the setup differs from `other` only in reduction order (`splitk`, `batch`,
    /// `order`): the honest variation that stands in for other hardware.
    pub fn same_algorithm(&self, other: &Setup) -> bool {
        Setup {
            split_k: 1,
            batch: 1,
            order: Order::Prefill,
            ..*self
        } == Setup {
            split_k: 1,
            batch: 1,
            order: Order::Prefill,
            ..*other
        }
    }

    /// Checks every parameter's range (the parser does this; call it on a setup built by hand).
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::UnsupportedSetup(m));
        let in_range = |v: usize, lo: usize| (lo..=MAX_SETUP_PARAM).contains(&v);
        match self.attention {
            Attention::Eager => {}
            Attention::Tiled { block: v }
            | Attention::Window { size: v }
            | Attention::TopK { k: v } => {
                if !in_range(v, 1) {
                    return bad(format!(
                        "attention parameter {v} must be between 1 and {MAX_SETUP_PARAM}"
                    ));
                }
            }
        }
        if let Some(Quant {
            scheme: QuantScheme::Int4Group { group },
            ..
        }) = self.quant
        {
            if group != 32 && group != 128 {
                return bad(format!("int4 group size {group} (supported: 32, 128)"));
            }
        }
        if !in_range(self.split_k, 1) || !in_range(self.batch, 1) {
            return bad(format!(
                "splitk {} and batch {} must be between 1 and {MAX_SETUP_PARAM}",
                self.split_k, self.batch
            ));
        }
        if let Some(l) = self.skip {
            if !in_range(l, 1) {
                return bad(format!(
                    "skip layer {l} must be between 1 and {MAX_SETUP_PARAM}"
                ));
            }
        }
        if let Some(l) = self.reuse {
            if !in_range(l, 2) {
                return bad(format!(
                    "reuse layer {l} must be between 2 and {MAX_SETUP_PARAM}"
                ));
            }
        }
        if self.skip.is_some() && self.skip == self.reuse {
            return bad("a layer cannot be both skipped and reused".into());
        }
        if self.kernels == Kernels::Invariant {
            if !matches!(self.attention, Attention::Eager | Attention::Window { .. }) {
                return bad(format!(
                    "the invariant kernels run eager or window attention, not {}",
                    self.attention
                ));
            }
            if self.split_k != 1 || self.batch != 1 {
                return bad(
                    "splitk and batch stand for other reduction orders; the invariant kernels \
                     have one"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

impl fmt::Display for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/attn={}", self.precision.name(), self.attention)?;
        if let Some(q) = self.quant {
            write!(f, "/quant={q}")?;
        }
        if self.split_k != 1 {
            write!(f, "/splitk={}", self.split_k)?;
        }
        if self.batch != 1 {
            write!(f, "/batch={}", self.batch)?;
        }
        if self.order == Order::Decode {
            write!(f, "/order=decode")?;
        }
        if let Some(l) = self.skip {
            write!(f, "/skip={l}")?;
        }
        if let Some(l) = self.reuse {
            write!(f, "/reuse={l}")?;
        }
        if self.kernels == Kernels::Invariant {
            write!(f, "/kernels=invariant")?;
        }
        Ok(())
    }
}

/// A decimal without sign or leading zeros, at most [`MAX_SETUP_PARAM`].
fn number(s: &str, what: &str) -> Result<usize, ModelError> {
    let ok = !s.is_empty()
        && s.len() <= 6
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    match s.parse::<usize>() {
        Ok(v) if ok && v <= MAX_SETUP_PARAM => Ok(v),
        _ => Err(ModelError::UnsupportedSetup(format!(
            "{what} {s:?} is not a decimal number up to {MAX_SETUP_PARAM}"
        ))),
    }
}

fn parse_attention(s: &str) -> Result<Attention, ModelError> {
    if s == "eager" {
        return Ok(Attention::Eager);
    }
    let (kind, n) = s
        .split_once(':')
        .ok_or_else(|| ModelError::UnsupportedSetup(format!("attention {s:?}")))?;
    let v = number(n, "attention parameter")?;
    match kind {
        "tiled" => Ok(Attention::Tiled { block: v }),
        "window" => Ok(Attention::Window { size: v }),
        "topk" => Ok(Attention::TopK { k: v }),
        _ => Err(ModelError::UnsupportedSetup(format!(
            "attention {s:?} (known: eager, tiled:B, window:W, topk:K)"
        ))),
    }
}

fn parse_quant(s: &str) -> Result<Quant, ModelError> {
    let (name, rounding) = match s.split_once(':') {
        None => (s, Rounding::Nearest),
        Some((name, "mse")) => (name, Rounding::Mse),
        Some(_) => {
            return Err(ModelError::UnsupportedSetup(format!(
                "quantization {s:?}: the only rounding suffix is :mse"
            )))
        }
    };
    let scheme = match name {
        "int8-tensor" => QuantScheme::Int8Tensor,
        "int8-channel" => QuantScheme::Int8Channel,
        _ => match name.strip_prefix("int4-g") {
            Some(g) => QuantScheme::Int4Group {
                group: number(g, "int4 group size")?,
            },
            None => {
                return Err(ModelError::UnsupportedSetup(format!(
                    "quantization {s:?} (known: int8-tensor, int8-channel, int4-g32, int4-g128, each optionally :mse)"
                )))
            }
        },
    };
    Ok(Quant { scheme, rounding })
}

impl FromStr for Setup {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        let bad = |m: String| ModelError::UnsupportedSetup(format!("{s:?}: {m}"));
        let mut parts = s.split('/');
        let precision = match parts.next().unwrap_or("") {
            "f32" => Precision::F32,
            "bf16" => Precision::Bf16,
            "f16" => Precision::F16,
            p => return Err(bad(format!("precision {p:?} (known: f32, bf16, f16)"))),
        };
        let mut setup = Setup::with_precision(precision);
        let mut seen_attention = false;
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("part {part:?} is not key=value")))?;
            match key {
                "attn" => {
                    setup.attention = parse_attention(value)?;
                    seen_attention = true;
                }
                "quant" => setup.quant = Some(parse_quant(value)?),
                "splitk" => setup.split_k = number(value, "splitk")?,
                "batch" => setup.batch = number(value, "batch")?,
                "order" => {
                    setup.order = match value {
                        "decode" => Order::Decode,
                        "prefill" => Order::Prefill,
                        _ => return Err(bad(format!("order {value:?} (known: decode)"))),
                    }
                }
                "skip" => setup.skip = Some(number(value, "skip layer")?),
                "reuse" => setup.reuse = Some(number(value, "reuse layer")?),
                "kernels" => {
                    setup.kernels = match value {
                        "invariant" => Kernels::Invariant,
                        "candle" => Kernels::Candle,
                        _ => return Err(bad(format!("kernels {value:?} (known: invariant)"))),
                    }
                }
                _ => return Err(bad(format!("unknown key {key:?}"))),
            }
        }
        if !seen_attention {
            return Err(bad("the attention part /attn=… is required".into()));
        }
        setup.validate()?;
        // One string per setup: parts in canonical order, no repeats, no spelled-out defaults.
        let canonical = setup.to_string();
        if canonical != s {
            return Err(bad(format!(
                "not canonical; the canonical form is {canonical:?}"
            )));
        }
        Ok(setup)
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
        assert!(Setup::from_bytes(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn every_axis_parses_and_prints_back() {
        for good in [
            "bf16/attn=eager",
            "f16/attn=tiled:64",
            "f32/attn=window:16",
            "f32/attn=topk:8",
            "bf16/attn=tiled:64/quant=int8-channel/splitk=4",
            "f32/attn=eager/quant=int8-tensor:mse",
            "f32/attn=eager/quant=int4-g32",
            "f32/attn=eager/quant=int4-g128:mse",
            "f32/attn=eager/batch=4",
            "f32/attn=eager/order=decode",
            "f32/attn=eager/skip=2",
            "f32/attn=eager/reuse=3",
            "f16/attn=topk:4/quant=int4-g32:mse/splitk=2/batch=3/order=decode/skip=1/reuse=2",
        ] {
            let s: Setup = good.parse().unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(s.to_string(), good);
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<Setup>(&json).unwrap(), s);
        }
        let s: Setup = "bf16/attn=tiled:64/quant=int8-channel/splitk=4"
            .parse()
            .unwrap();
        assert_eq!(s.precision, Precision::Bf16);
        assert_eq!(s.attention, Attention::Tiled { block: 64 });
        assert_eq!(
            s.quant,
            Some(Quant {
                scheme: QuantScheme::Int8Channel,
                rounding: Rounding::Nearest
            })
        );
        assert_eq!(s.split_k, 4);
    }

    #[test]
    fn non_canonical_or_out_of_range_strings_are_refused() {
        for bad in [
            "",
            "f32",
            "F32/attn=eager",
            "f64/attn=eager",
            "f32/attn=flash",
            "f32/attn=tiled:0",
            "f32/attn=tiled:064",
            "f32/attn=tiled:+4",
            "f32/attn=tiled:99999999999999999999",
            "f32/attn=window:65537",
            "f32/attn=eager/splitk=1",
            "f32/attn=eager/batch=1",
            "f32/attn=eager/order=prefill",
            "f32/attn=eager/quant=int8-channel:rtn",
            "f32/attn=eager/quant=int4-g64",
            "f32/attn=eager/quant=int3",
            "f32/attn=eager/skip=0",
            "f32/attn=eager/reuse=1",
            "f32/attn=eager/skip=2/reuse=2",
            "f32/attn=eager/splitk=2/quant=int8-tensor",
            "f32/attn=eager/splitk=2/splitk=2",
            "f32/attn=eager/attn=eager",
            "f32/quant=int8-tensor/attn=eager",
            "f32/attn=eager/",
            "f32/attn=eager/colour=red",
            "f32/attn=eager/skip",
        ] {
            assert!(bad.parse::<Setup>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn algorithm_equivalence_ignores_reduction_order_only() {
        let base = Setup::F32_EAGER;
        let p = |s: &str| s.parse::<Setup>().unwrap();
        assert!(base.same_algorithm(&p("f32/attn=eager/splitk=4/batch=2/order=decode")));
        assert!(!base.same_algorithm(&p("f32/attn=tiled:16")));
        assert!(!base.same_algorithm(&p("bf16/attn=eager")));
        assert!(!base.same_algorithm(&p("f32/attn=eager/skip=1")));
        assert!(p("f32/attn=eager/reuse=2").is_structural());
        assert!(!p("f32/attn=eager/splitk=2").is_structural());
    }
}
