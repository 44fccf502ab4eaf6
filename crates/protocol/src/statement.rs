//! The statement a prover commits under, and the dependency rules between cells.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use veritrace_commit::{CellId, Digest, Dtype, HasherId, TraceGeometry};

use crate::encoding::{Message, MessageKind};
use crate::{ProtocolError, Result};

/// Version of the protocol this crate implements; bound into every transcript.
pub const PROTOCOL_VERSION: u32 = 1;

/// Which rows of the previous layer a cell's recomputation reads (the attention pattern).
///
/// For a cell covering token rows `s..e` of layer `l ≥ 1`, the input rows of layer `l − 1` are:
///
/// | rule | input rows |
/// |---|---|
/// | `Causal` | `0..e` (decoders: every earlier position) |
/// | `Bidirectional` | `0..T` (encoders such as BERT: every position) |
/// | `Window { size: w }` | `max(0, s − (w − 1))..e` (sliding-window attention over `w` positions) |
///
/// Layer 0 (embeddings) reads no rows: it is recomputed from the statement's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dependency {
    /// Causal attention.
    Causal,
    /// Bidirectional attention.
    Bidirectional,
    /// Causal attention over a sliding window of `size` positions (including the current one).
    Window {
        /// Window length, at least 1.
        size: u32,
    },
}

/// How the output tokens follow from the last layer's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputRule {
    /// Greedy decoding (argmax).
    Greedy,
    /// Sampling with a seed bound in the statement. How the seed drives sampling (temperature,
    /// top-p, the random stream) is part of the numeric setup the [`crate::Recompute`]
    /// implementation follows; two engines agree only if they implement the same sampler.
    Sampled {
        /// The sampling seed.
        seed: Digest,
    },
}

/// What the prover claims: model `M` with numeric setup `S` on input `x` produced output `y`,
/// and the trace of that run has this geometry.
///
/// The traced sequence is `input_tokens ‖ output_tokens`, so `geometry.tokens` must equal their
/// total length. Output token `i` is the prediction made at position `len(input) − 1 + i`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Statement {
    /// Protocol version, [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Hash of the weights file.
    pub model_digest: Digest,
    /// The numeric setup, canonically encoded by the caller (opaque to the protocol).
    #[serde(with = "crate::encoding::hex_bytes")]
    pub setup: Vec<u8>,
    /// Input (prompt) token ids.
    pub input_tokens: Vec<u32>,
    /// Output (generated) token ids.
    pub output_tokens: Vec<u32>,
    /// Trace geometry: layers, tokens, hidden size, chunk size, dtype.
    pub geometry: TraceGeometry,
    /// Hasher of the trace commitment.
    pub hasher: HasherId,
    /// Attention pattern: which input rows a cell depends on.
    pub dependency: Dependency,
    /// How output tokens are derived from the last layer.
    pub output_rule: OutputRule,
    /// The text the input tokens were made from, when the prover started from text: a
    /// verifier with the same tokenizer re-tokenizes it and rejects tokens that differ
    /// ([`crate::Recompute::check_input`]). `None` (JSON `null`): the prover gave token ids.
    #[serde(default)]
    pub input_text: Option<InputText>,
    /// The engine the prover claims to have run the setup on (for example `transformers
    /// 5.25.0, torch 2.15.0, cpu, eager`), beside the setup; `None` (JSON `null`): unnamed.
    /// Bound in the transcript; a verifier's calibrated policy records the engines it was
    /// calibrated across, so the claim says which evidence applies. At most
    /// [`MAX_ENGINE_BYTES`] printable ASCII bytes.
    #[serde(default)]
    pub engine: Option<String>,
    /// What the commitment covers: the hidden states only ([`TraceLevel::Hidden`], the
    /// default; JSON may omit the field), or also every decoder layer's sub-layer values
    /// ([`TraceLevel::SubLayer`], specs/protocol.md §3.5), which a verifier may check
    /// algebraically instead of recomputing the layer.
    #[serde(default)]
    pub trace_level: TraceLevel,
}

/// What a commitment covers (specs/protocol.md §3.5).
///
/// With [`TraceLevel::SubLayer`], the prover commits, beside the hidden-state trace, two
/// sub-layer traces over layers `1 … L − 1` of the hidden trace (sub-layer index `s = l − 1`
/// for hidden layer `l`), with the hidden trace's tokens and chunk size and elements of the
/// level's `dtype` (whatever the hidden trace's dtype): f32, or the bf16 or f16 a
/// half-precision engine computed its sub-layer values in (half the bytes to commit, open and
/// hash; every value must be exactly representable, so nothing is rounded):
///
/// * the **context** trace, `context` elements per token row: what an attention over earlier
///   positions reads of each position (for a Llama-style decoder: the attention norm's output,
///   the key and the value projections, `hidden + 2 · kv_heads · head_dim`);
/// * the **cell** trace, `cell` elements per token row: the rest of the layer's linear maps'
///   inputs and outputs at that row (for a Llama-style decoder: `q`, the attention output,
///   `o`, the MLP norm's output, `gate`, `up`, the activation product and `down`).
///
/// The row layouts belong to the architecture (the engine's [`crate::Recompute`] documents
/// and checks them); the protocol fixes the widths, the trees and which cells are opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TraceLevel {
    /// Hidden states only.
    #[default]
    Hidden,
    /// Hidden states and sub-layer values.
    SubLayer {
        /// Elements per token row of the context trace.
        context: u32,
        /// Elements per token row of the cell trace.
        cell: u32,
        /// The sub-layer traces' element type: f32, bf16 or f16 (f32 when a JSON statement
        /// omits it).
        #[serde(default = "f32_dtype")]
        dtype: Dtype,
    },
    /// Hidden states and sub-layer values, with the keys and values of each key-value head
    /// in leaves of their own (specs/protocol.md §3.5), so that an opening can hold only the
    /// heads and context chunks a challenge's attention draw names (§4.4). Three sub-layer
    /// traces: the **context** trace (what a context row's provenance check reads: for a
    /// Llama-style decoder the attention norm's output, `context` elements), the **key-value**
    /// trace (`(L − 1) · kv_heads` layers of `kv` elements: sub-layer `s`'s key-value head `g`
    /// at layer `s · kv_heads + g`) and the cell trace as for [`TraceLevel::SubLayer`].
    SubLayerByHead {
        /// Elements per token row of the context trace.
        context: u32,
        /// Elements per token row of the cell trace.
        cell: u32,
        /// Query heads `H` (a multiple of `kv_heads`; query head `i` reads key-value head
        /// `i / (H / kv_heads)`).
        heads: u32,
        /// Key-value heads `g`.
        kv_heads: u32,
        /// Elements per token row of one key-value head in the key-value trace.
        kv: u32,
        /// The sub-layer traces' element type, as for [`TraceLevel::SubLayer`].
        #[serde(default = "f32_dtype")]
        dtype: Dtype,
    },
}

/// The sub-layer dtype of a JSON statement that names none (statements before it was a field).
fn f32_dtype() -> Dtype {
    Dtype::F32
}

impl TraceLevel {
    /// The sub-layer traces the level commits, in commitment order: none, context and cell,
    /// or context, key-value and cell.
    pub fn parts(&self) -> &'static [SubLayerPart] {
        match self {
            TraceLevel::Hidden => &[],
            TraceLevel::SubLayer { .. } => &[SubLayerPart::Context, SubLayerPart::Cell],
            TraceLevel::SubLayerByHead { .. } => {
                &[SubLayerPart::Context, SubLayerPart::Kv, SubLayerPart::Cell]
            }
        }
    }

    /// The sub-layer traces' element type; `None` at [`TraceLevel::Hidden`].
    pub fn dtype(&self) -> Option<Dtype> {
        match *self {
            TraceLevel::Hidden => None,
            TraceLevel::SubLayer { dtype, .. } | TraceLevel::SubLayerByHead { dtype, .. } => {
                Some(dtype)
            }
        }
    }

    /// The level with its sub-layer traces' element type set to `dtype` (unchanged at
    /// [`TraceLevel::Hidden`]).
    pub fn with_dtype(mut self, dtype: Dtype) -> Self {
        match &mut self {
            TraceLevel::Hidden => {}
            TraceLevel::SubLayer { dtype: d, .. } | TraceLevel::SubLayerByHead { dtype: d, .. } => {
                *d = dtype
            }
        }
        self
    }

    /// `(H, g)`: the query and key-value heads of a [`TraceLevel::SubLayerByHead`] level.
    pub fn heads(&self) -> Option<(u32, u32)> {
        match *self {
            TraceLevel::SubLayerByHead {
                heads, kv_heads, ..
            } => Some((heads, kv_heads)),
            _ => None,
        }
    }
}

/// Which sub-layer trace of a sub-layer statement ([`TraceLevel::parts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubLayerPart {
    /// Per position, what attention reads (opened for every input row of a challenged cell);
    /// at [`TraceLevel::SubLayerByHead`], what a context row's provenance check reads (opened
    /// for the drawn context chunks and the cell's own).
    Context,
    /// Per position, the layer's other linear inputs and outputs (opened for the challenged
    /// rows).
    Cell,
    /// At [`TraceLevel::SubLayerByHead`] only: per position and key-value head, its key and
    /// value (opened over the whole context for the drawn heads, at the checked rows for the
    /// others).
    Kv,
}

impl SubLayerPart {
    /// Every part, in the order of the messages' fields.
    pub const ALL: [SubLayerPart; 3] =
        [SubLayerPart::Context, SubLayerPart::Cell, SubLayerPart::Kv];

    /// Lowercase name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            SubLayerPart::Context => "context",
            SubLayerPart::Cell => "cell",
            SubLayerPart::Kv => "key-value",
        }
    }
}

/// Longest [`Statement::engine`] claim, in bytes.
pub const MAX_ENGINE_BYTES: usize = 128;

/// Longest [`InputText::text`] a statement may carry, in bytes (1 MiB).
pub const MAX_INPUT_TEXT_BYTES: usize = 1 << 20;

/// Text input bound in a statement (specs/protocol.md §3.4): the tokens are
/// `encode(text, add_special_tokens = true)` under the tokenizer of digest `tokenizer`, after
/// the chat template of that tokenizer when `chat` is set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InputText {
    /// Digest of the tokenizer (`tokenizer.json`, and the chat template when `chat`), as
    /// specs/protocol.md §3.4 defines it.
    pub tokenizer: Digest,
    /// Whether the text was wrapped as one user message by the checkpoint's chat template
    /// (with the generation prompt) before tokenization.
    pub chat: bool,
    /// The text, UTF-8.
    pub text: String,
}

impl Statement {
    /// Number of positions in the traced sequence.
    pub fn sequence_len(&self) -> u64 {
        self.input_tokens.len() as u64 + self.output_tokens.len() as u64
    }

    /// The token at a position of the traced sequence.
    pub fn token(&self, position: u32) -> Option<u32> {
        let p = position as usize;
        let n = self.input_tokens.len();
        if p < n {
            Some(self.input_tokens[p])
        } else {
            self.output_tokens.get(p - n).copied()
        }
    }

    /// For a position of the last layer, the output token its row predicts (if any).
    pub fn predicted_output(&self, position: u32) -> Option<u32> {
        let first = self.input_tokens.len().checked_sub(1)?;
        let i = (position as usize).checked_sub(first)?;
        self.output_tokens.get(i).copied()
    }

    /// The name of the first field in which `other` differs from `self`, if any.
    pub fn first_difference(&self, other: &Statement) -> Option<&'static str> {
        let fields = [
            ("version", self.version == other.version),
            ("model digest", self.model_digest == other.model_digest),
            ("setup", self.setup == other.setup),
            ("input tokens", self.input_tokens == other.input_tokens),
            ("output tokens", self.output_tokens == other.output_tokens),
            ("geometry", self.geometry == other.geometry),
            ("hasher", self.hasher == other.hasher),
            ("dependency", self.dependency == other.dependency),
            ("output rule", self.output_rule == other.output_rule),
            ("input text", self.input_text == other.input_text),
            ("engine", self.engine == other.engine),
            ("trace level", self.trace_level == other.trace_level),
        ];
        fields.iter().find(|(_, same)| !same).map(|(name, _)| *name)
    }

    /// The rows of layer `cell.layer − 1` that `cell` depends on (`None` for layer 0).
    pub fn input_rows(&self, cell: CellId) -> Result<Option<Range<u32>>> {
        let rows = self.geometry.cell_rows(cell)?;
        if cell.layer == 0 {
            return Ok(None);
        }
        Ok(Some(match self.dependency {
            Dependency::Causal => 0..rows.end,
            Dependency::Bidirectional => 0..self.geometry.tokens,
            Dependency::Window { size } => {
                rows.start.saturating_sub(size.saturating_sub(1))..rows.end
            }
        }))
    }

    /// The cells of layer `cell.layer − 1` covering [`Statement::input_rows`].
    pub fn input_cells(&self, cell: CellId) -> Result<Vec<CellId>> {
        let Some(rows) = self.input_rows(cell)? else {
            return Ok(Vec::new());
        };
        let c = self.geometry.chunk;
        Ok((rows.start / c..rows.end.div_ceil(c))
            .map(|chunk| CellId {
                layer: cell.layer - 1,
                chunk,
            })
            .collect())
    }

    /// Every cell an opening of `challenged` must contain: the challenged cells and their input
    /// cells, without repeats, in ascending leaf order. This lists every cell (a challenged
    /// cell of a long causal trace has as many input cells as chunks); a verifier uses
    /// [`Statement::opening_ranges`], which has the same cells as runs, and checks their count
    /// before anything lists them.
    pub fn opening_cells(&self, challenged: &[CellId]) -> Result<Vec<CellId>> {
        Ok(self
            .opening_ranges(challenged)?
            .iter()
            .flat_map(CellRange::cells)
            .collect())
    }

    /// The cells of [`Statement::opening_cells`] as maximal runs of consecutive chunks, in
    /// ascending leaf order (runs of one layer are disjoint and not adjacent): O(k log k) time
    /// and O(k) memory for k challenged cells, whatever the geometry claims. Fails as
    /// `opening_cells` does (a challenged cell outside the geometry).
    pub fn opening_ranges(&self, challenged: &[CellId]) -> Result<Vec<CellRange>> {
        self.opening_ranges_drawn(challenged, None)
    }

    /// [`Statement::opening_ranges`] under a challenge's attention draw (specs/protocol.md
    /// §4.4): with a draw, a challenged cell `[l, j]` of a layer `l ≥ 1` needs only the input
    /// cells of its checked chunks (the drawn earlier chunks and its own,
    /// [`crate::sampling::CellDraw::checked_chunks`]) instead of every input cell. `None` is
    /// `opening_ranges`. O(k (log k + s)) for `s` drawn chunks per cell.
    ///
    /// # Errors
    /// As `opening_ranges`; a draw on a statement that does not commit by head.
    pub fn opening_ranges_drawn(
        &self,
        challenged: &[CellId],
        draw: Option<&crate::AttentionDraw>,
    ) -> Result<Vec<CellRange>> {
        let c = self.geometry.chunk;
        let mut runs: Vec<(u32, u32, u32)> = Vec::with_capacity(challenged.len() * 2);
        for &cell in challenged {
            self.geometry.cell_index(cell)?;
            // cell.chunk < chunks per layer ≤ u32::MAX, so + 1 does not overflow
            runs.push((cell.layer, cell.chunk, cell.chunk + 1));
            let Some(rows) = self.input_rows(cell)? else {
                continue;
            };
            match draw {
                None => runs.push((cell.layer - 1, rows.start / c, rows.end.div_ceil(c))),
                Some(d) => {
                    let drawn = d.cell(self, cell)?;
                    runs.extend(
                        drawn
                            .checked_chunks(cell.chunk)
                            .map(|m| (cell.layer - 1, m, m + 1)),
                    );
                }
            }
        }
        Ok(merge_runs(runs))
    }

    /// The geometry of one sub-layer trace (see [`TraceLevel`]): `L − 1` layers, the hidden
    /// trace's tokens and chunk, the part's width, the level's dtype. `None` for a
    /// [`TraceLevel::Hidden`] statement. Fails when the geometry is invalid (a zero width, a
    /// single hidden layer, more cells than the commitment layer allows, an integer dtype).
    pub fn sublayer_geometry(&self, part: SubLayerPart) -> Result<Option<TraceGeometry>> {
        let (width, per_layer) = match (self.trace_level, part) {
            (TraceLevel::Hidden, _) | (TraceLevel::SubLayer { .. }, SubLayerPart::Kv) => {
                return Ok(None)
            }
            (TraceLevel::SubLayer { context, .. }, SubLayerPart::Context)
            | (TraceLevel::SubLayerByHead { context, .. }, SubLayerPart::Context) => (context, 1),
            (TraceLevel::SubLayer { cell, .. }, SubLayerPart::Cell)
            | (TraceLevel::SubLayerByHead { cell, .. }, SubLayerPart::Cell) => (cell, 1),
            (
                TraceLevel::SubLayerByHead {
                    heads,
                    kv_heads,
                    kv,
                    ..
                },
                SubLayerPart::Kv,
            ) => {
                if kv_heads == 0 || heads == 0 || !heads.is_multiple_of(kv_heads) {
                    return Err(ProtocolError::InvalidStatement(format!(
                        "{heads} query heads over {kv_heads} key-value heads: the query heads \
                         must be a positive multiple of the key-value heads"
                    )));
                }
                (kv, kv_heads)
            }
        };
        let dtype = self.trace_level.dtype().unwrap_or(Dtype::F32);
        if !matches!(dtype, Dtype::F32 | Dtype::Bf16 | Dtype::F16) {
            return Err(ProtocolError::InvalidStatement(format!(
                "sub-layer values of dtype {dtype}: they are f32, bf16 or f16"
            )));
        }
        let g = &self.geometry;
        if g.layers < 2 {
            return Err(ProtocolError::InvalidStatement(
                "a sub-layer trace needs at least one layer above the embeddings".into(),
            ));
        }
        let layers = (g.layers - 1).checked_mul(per_layer).ok_or_else(|| {
            ProtocolError::InvalidStatement(format!(
                "{} layers of {per_layer} key-value heads exceed the trace's layer count",
                g.layers - 1
            ))
        })?;
        TraceGeometry::new(layers, g.tokens, width, g.chunk, dtype)
            .map(Some)
            .map_err(|e| {
                ProtocolError::InvalidStatement(format!("the {} sub-layer trace: {e}", part.name()))
            })
    }

    /// The sub-layer cells an opening of `challenged` must hold, as runs in sub-layer
    /// coordinates (layer `s = l − 1` of hidden layer `l`; specs/protocol.md §4.3), for a
    /// [`TraceLevel::SubLayer`] statement:
    ///
    /// * [`SubLayerPart::Context`]: for every challenged cell of layer `l ≥ 1`, the chunks
    ///   covering its [`Statement::input_rows`] — the same chunks as its input cells, one
    ///   layer up;
    /// * [`SubLayerPart::Cell`]: every challenged cell of layer `l ≥ 1` itself.
    ///
    /// Challenged cells of layer 0 need none. Same order and merging as
    /// [`Statement::opening_ranges`]; O(k log k).
    pub fn sublayer_ranges(
        &self,
        challenged: &[CellId],
        part: SubLayerPart,
    ) -> Result<Vec<CellRange>> {
        self.sublayer_ranges_drawn(challenged, part, None)
    }

    /// [`Statement::sublayer_ranges`] of any part, under a challenge's attention draw
    /// (specs/protocol.md §4.4). For a challenged cell `[l, j]`, `l ≥ 1`, sub-layer
    /// `s = l − 1`, context chunks `C = u/c ..= j` and checked chunks `D`
    /// ([`crate::sampling::CellDraw::checked_chunks`]; `D = C` without a draw):
    ///
    /// * [`SubLayerPart::Context`]: `[s, m]` for `m ∈ D`;
    /// * [`SubLayerPart::Cell`]: `[s, j]`;
    /// * [`SubLayerPart::Kv`] ([`TraceLevel::SubLayerByHead`] with `g` key-value heads):
    ///   `[s·g + h, m]` for every key-value head `h` a drawn query head reads and `m ∈ C`, and
    ///   for every other key-value head and `m ∈ D` (without a draw: every head, `m ∈ C`).
    ///
    /// Parts the statement does not commit have no cells.
    ///
    /// # Errors
    /// As [`Statement::opening_ranges_drawn`].
    pub fn sublayer_ranges_drawn(
        &self,
        challenged: &[CellId],
        part: SubLayerPart,
        draw: Option<&crate::AttentionDraw>,
    ) -> Result<Vec<CellRange>> {
        let c = self.geometry.chunk;
        let mut runs: Vec<(u32, u32, u32)> = Vec::with_capacity(challenged.len());
        // validates the part's geometry ((L − 1)·g layers fit a u32), or: a part not committed
        if self.sublayer_geometry(part)?.is_none() {
            return Ok(Vec::new());
        }
        for &cell in challenged {
            self.geometry.cell_index(cell)?;
            let Some(rows) = self.input_rows(cell)? else {
                continue;
            };
            let s = cell.layer - 1;
            let context = (rows.start / c, rows.end.div_ceil(c));
            let drawn = draw.map(|d| d.cell(self, cell)).transpose()?;
            let checked = |layer: u32, runs: &mut Vec<(u32, u32, u32)>| match &drawn {
                None => runs.push((layer, context.0, context.1)),
                Some(d) => runs.extend(d.checked_chunks(cell.chunk).map(|m| (layer, m, m + 1))),
            };
            match part {
                SubLayerPart::Context => checked(s, &mut runs),
                SubLayerPart::Cell => runs.push((s, cell.chunk, cell.chunk + 1)),
                SubLayerPart::Kv => {
                    let (h, g) = self.trace_level.heads().unwrap_or((1, 1));
                    // (L − 1)·g fits u32 (checked by the geometry)
                    for group in 0..g {
                        let layer = s * g + group;
                        match &drawn {
                            Some(d) if !d.reads_group(group, h, g) => checked(layer, &mut runs),
                            _ => runs.push((layer, context.0, context.1)),
                        }
                    }
                }
            }
        }
        Ok(merge_runs(runs))
    }
}

/// Runs `(layer, start, end)` of chunks sorted and merged where they overlap or touch: disjoint,
/// non-adjacent runs in ascending leaf order.
fn merge_runs(mut runs: Vec<(u32, u32, u32)>) -> Vec<CellRange> {
    runs.sort_unstable();
    let mut out: Vec<CellRange> = Vec::with_capacity(runs.len());
    for (layer, start, end) in runs {
        match out.last_mut() {
            Some(last) if last.layer == layer && start <= last.chunks.end => {
                last.chunks.end = last.chunks.end.max(end);
            }
            _ => out.push(CellRange {
                layer,
                chunks: start..end,
            }),
        }
    }
    out
}

/// A run of consecutive cells of one layer: chunks `chunks.start .. chunks.end` of `layer`
/// (see [`Statement::opening_ranges`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CellRange {
    /// The layer.
    pub layer: u32,
    /// The chunks, a non-empty half-open range.
    pub chunks: Range<u32>,
}

impl CellRange {
    /// Number of cells in the run.
    pub fn len(&self) -> u64 {
        u64::from(self.chunks.end.saturating_sub(self.chunks.start))
    }

    /// Whether the run is empty (never, for runs from [`Statement::opening_ranges`]).
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Whether `cell` is in the run.
    pub fn contains(&self, cell: CellId) -> bool {
        cell.layer == self.layer && self.chunks.contains(&cell.chunk)
    }

    /// The run's cells, in order (lazily).
    pub fn cells(&self) -> impl Iterator<Item = CellId> + '_ {
        self.chunks.clone().map(move |chunk| CellId {
            layer: self.layer,
            chunk,
        })
    }

    /// The token rows the run covers under `geometry` (the last chunk may be partial).
    pub fn rows(&self, geometry: &veritrace_commit::TraceGeometry) -> u64 {
        let c = u64::from(geometry.chunk);
        let end = (u64::from(self.chunks.end) * c).min(u64::from(geometry.tokens));
        end.saturating_sub(u64::from(self.chunks.start) * c)
    }
}

impl Message for Statement {
    const KIND: MessageKind = MessageKind::Statement;
    const NAME: &'static str = "statement";

    /// Checks the version, the geometry, the token counts against the geometry, the
    /// dependency rule, and the input text's length.
    fn validate(&self) -> Result<()> {
        if self.version != PROTOCOL_VERSION {
            return Err(ProtocolError::InvalidStatement(format!(
                "protocol version {} (this build speaks {PROTOCOL_VERSION})",
                self.version
            )));
        }
        self.geometry.validate()?;
        if self.sequence_len() != u64::from(self.geometry.tokens) {
            return Err(ProtocolError::InvalidStatement(format!(
                "{} input + {} output tokens do not match the trace's {} token rows",
                self.input_tokens.len(),
                self.output_tokens.len(),
                self.geometry.tokens
            )));
        }
        if self.input_tokens.is_empty() {
            return Err(ProtocolError::InvalidStatement(
                "a statement needs at least one input token".into(),
            ));
        }
        if self.dependency == Dependency::Bidirectional && !self.output_tokens.is_empty() {
            return Err(ProtocolError::InvalidStatement(
                "an encoder (bidirectional attention) has no output tokens: every row sees every \
                 position, so no row predicts a later token"
                    .into(),
            ));
        }
        if let Dependency::Window { size: 0 } = self.dependency {
            return Err(ProtocolError::InvalidStatement(
                "an attention window must cover at least one position".into(),
            ));
        }
        if let Some(e) = &self.engine {
            if e.is_empty()
                || e.len() > MAX_ENGINE_BYTES
                || !e.bytes().all(|b| (0x20..0x7f).contains(&b))
            {
                return Err(ProtocolError::InvalidStatement(format!(
                    "the engine claim must be 1 to {MAX_ENGINE_BYTES} printable ASCII bytes, \
                     got {} bytes",
                    e.len()
                )));
            }
        }
        for &part in self.trace_level.parts() {
            self.sublayer_geometry(part)?;
        }
        if let Some(t) = &self.input_text {
            if t.text.len() > MAX_INPUT_TEXT_BYTES {
                return Err(ProtocolError::InvalidStatement(format!(
                    "the input text has {} bytes; at most {MAX_INPUT_TEXT_BYTES}",
                    t.text.len()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use veritrace_commit::Dtype;

    /// A small statement used across the crate's unit tests: 3 layers, 10 tokens (6 in, 4
    /// out), hidden 4, chunk 3 (4 chunks per layer, the last one a single row).
    pub(crate) fn statement(dependency: Dependency) -> Statement {
        Statement {
            version: PROTOCOL_VERSION,
            model_digest: Digest([1; 32]),
            setup: b"f32/attn=eager".to_vec(),
            input_tokens: vec![5, 6, 7, 8, 9, 10],
            output_tokens: vec![11, 12, 13, 14],
            geometry: TraceGeometry::new(3, 10, 4, 3, Dtype::F32).unwrap(),
            hasher: HasherId::Blake3,
            dependency,
            output_rule: OutputRule::Greedy,
            input_text: None,
            engine: None,
            trace_level: TraceLevel::Hidden,
        }
    }

    fn cell(layer: u32, chunk: u32) -> CellId {
        CellId { layer, chunk }
    }

    #[test]
    fn dependency_rules() {
        let s = statement(Dependency::Causal);
        assert_eq!(s.input_rows(cell(0, 2)).unwrap(), None);
        assert_eq!(s.input_rows(cell(1, 2)).unwrap(), Some(0..9));
        assert_eq!(s.input_cells(cell(1, 2)).unwrap().len(), 3);
        assert_eq!(s.input_rows(cell(2, 3)).unwrap(), Some(0..10));
        let s = statement(Dependency::Bidirectional);
        assert_eq!(s.input_rows(cell(1, 0)).unwrap(), Some(0..10));
        assert_eq!(s.input_cells(cell(1, 0)).unwrap().len(), 4);
        let s = statement(Dependency::Window { size: 2 });
        assert_eq!(s.input_rows(cell(1, 2)).unwrap(), Some(5..9));
        assert_eq!(
            s.input_cells(cell(1, 2)).unwrap(),
            vec![cell(0, 1), cell(0, 2)]
        );
        assert_eq!(s.input_rows(cell(1, 0)).unwrap(), Some(0..3));
        assert!(s.input_rows(cell(3, 0)).is_err());
    }

    #[test]
    fn opening_cells_are_sorted_and_unique() {
        let s = statement(Dependency::Causal);
        let open = s
            .opening_cells(&[cell(2, 1), cell(1, 0), cell(2, 0)])
            .unwrap();
        assert_eq!(
            open,
            vec![cell(0, 0), cell(1, 0), cell(1, 1), cell(2, 0), cell(2, 1)]
        );
    }

    #[test]
    fn opening_ranges_are_the_opening_cells_as_runs() {
        for dep in [
            Dependency::Causal,
            Dependency::Bidirectional,
            Dependency::Window { size: 1 },
            Dependency::Window { size: 4 },
        ] {
            let s = statement(dep);
            let all: Vec<CellId> = (0..12).map(|i| s.geometry.cell_at(i).unwrap()).collect();
            for mask in 1u32..(1 << 12) {
                let challenged: Vec<CellId> = (0..12)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| all[i])
                    .collect();
                // the direct definition (specs/protocol.md §4.2)
                let mut want = Vec::new();
                for &c in &challenged {
                    want.push(c);
                    want.extend(s.input_cells(c).unwrap());
                }
                want.sort_unstable();
                want.dedup();
                let runs = s.opening_ranges(&challenged).unwrap();
                let got: Vec<CellId> = runs.iter().flat_map(CellRange::cells).collect();
                assert_eq!(got, want);
                assert_eq!(s.opening_cells(&challenged).unwrap(), want);
                for w in runs.windows(2) {
                    assert!(w[0].layer < w[1].layer || w[0].chunks.end < w[1].chunks.start);
                }
                let rows: u64 = runs.iter().map(|r| r.rows(&s.geometry)).sum();
                let direct: u64 = want
                    .iter()
                    .map(|&c| {
                        let r = s.geometry.cell_rows(c).unwrap();
                        u64::from(r.end - r.start)
                    })
                    .sum();
                assert_eq!(rows, direct);
            }
        }
        let s = statement(Dependency::Causal);
        assert!(s.opening_ranges(&[cell(3, 0)]).is_err());
        assert!(s.opening_ranges(&[cell(0, 4)]).is_err());
    }

    #[test]
    fn tokens_and_predictions() {
        let s = statement(Dependency::Causal);
        assert_eq!(s.token(0), Some(5));
        assert_eq!(s.token(6), Some(11));
        assert_eq!(s.token(10), None);
        assert_eq!(s.predicted_output(4), None);
        assert_eq!(s.predicted_output(5), Some(11));
        assert_eq!(s.predicted_output(8), Some(14));
        assert_eq!(s.predicted_output(9), None);
    }

    #[test]
    fn validation_and_encodings() {
        let s = statement(Dependency::Window { size: 4 });
        s.validate().unwrap();
        let bytes = s.to_bytes();
        assert_eq!(Statement::from_bytes(&bytes).unwrap(), s);
        assert_eq!(Statement::from_json(&s.to_json()).unwrap(), s);
        let mut bad = s.clone();
        bad.output_tokens.pop();
        assert!(bad.validate().is_err());
        let mut bad = s.clone();
        bad.version = 2;
        assert!(Statement::from_bytes(&bad.to_bytes()).is_err());
        let mut bad = s.clone();
        bad.dependency = Dependency::Window { size: 0 };
        assert!(bad.validate().is_err());
        let mut bad = s;
        bad.dependency = Dependency::Bidirectional;
        assert!(bad.validate().is_err(), "an encoder with output tokens");
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Statement::from_bytes(&trailing).is_err());
        assert!(Statement::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(Statement::from_bytes_with_limit(&bytes, 10).is_err());
    }
}
