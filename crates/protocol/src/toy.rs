//! A deterministic toy engine implementing [`Recompute`], for tests, examples and the model
//! checker: an example of what an embedding verifier writes, small enough to read at a glance.
//!
//! Hidden states are f32. For position `p` holding token `t`, the embedding row is
//! `e[i] = (t mod 97) / 8 + i / 16 + p / 64`. Layer `l ≥ 1` maps input rows `x` to
//! `y_p = x_p + 0.5 · mean(x_q : q ∈ A(p)) + 0.1 · l` (element-wise), where `A(p)` is the set
//! of positions row `p` attends to under the statement's [`Dependency`] (causal: `0..=p`;
//! bidirectional: all; window `w`: `p−w+1..=p`). The sum runs over `A(p)` in ascending order in
//! f32, so a cell recomputed alone is bitwise identical to the same rows of a full forward. The
//! next token is `floor(|y_p[0]| · 1000) mod 50 000` (both output rules; the toy has no sampling).
//!
//! # Sub-layer values
//! For a [`crate::TraceLevel::SubLayer`] statement (context and cell widths both `hidden`),
//! the toy's "linear map" is `c_q = 0.5 · x_q` (the context row of position `q`) and its
//! "nonlinear part" the mean `m_p = Σ_{q ∈ A(p)} c_q / |A(p)|` (the cell row of position `p`),
//! so that `y_p = x_p + m_p + 0.1 · l` bit for bit (scaling by 0.5 is exact, so
//! `m_p = 0.5 · mean(x)` exactly). [`ToyEngine::sublayer_bytes`] produces them and
//! [`Recompute::check_sublayers`] checks them: every `c_q` against `0.5 · x_q` exactly (the
//! stand-in for a Freivalds check) and every `m_p` against the mean of the opened `c_q`.
//!
//! For a [`crate::TraceLevel::SubLayerByHead`] statement ([`ToyEngine::by_head_level`]: `g`
//! "heads" of `hidden / g` elements each, one query head per key-value head), the context
//! row is `c_q` again, the key-value row of head `h` is `c_q`'s elements `h·w .. (h+1)·w`, and
//! the cell row `m_p` ([`ToyEngine::sublayer_bytes_by_head`]).
//! [`Recompute::check_sublayer_heads`] checks, at the claim's checked rows, `c_q = 0.5 · x_q`
//! and every head's key-value row against `c_q`'s slice, and for each checked head the slice
//! of `m_p` against the mean of that head's opened key-value rows.

use std::ops::Range;

use veritrace_commit::Dtype;

use crate::{Dependency, ProtocolError, Recompute, Result, Statement};

/// The toy engine. `perturb` adds a constant to every layer output (a "different setup" that a
/// cheating prover might run); the honest engine has `perturb = 0.0`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ToyEngine {
    /// Added to every element of every layer ≥ 1 output.
    pub perturb: f32,
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn check(statement: &Statement) -> Result<usize> {
    if statement.geometry.dtype != Dtype::F32 {
        return Err(ProtocolError::Engine(
            "the toy engine computes in f32 only".into(),
        ));
    }
    Ok(statement.geometry.hidden as usize)
}

fn attended(dep: Dependency, tokens: u32, p: u32) -> Range<u32> {
    match dep {
        Dependency::Causal => 0..p + 1,
        Dependency::Bidirectional => 0..tokens,
        Dependency::Window { size } => (p + 1).saturating_sub(size)..p + 1,
    }
}

impl ToyEngine {
    /// The embedding rows of positions `rows` of `tokens`.
    pub fn embed_tokens(&self, hidden: usize, tokens: &[u32], rows: Range<u32>) -> Vec<f32> {
        let mut out = Vec::with_capacity((rows.end - rows.start) as usize * hidden);
        for p in rows {
            let t = tokens[p as usize];
            for i in 0..hidden {
                out.push((t % 97) as f32 / 8.0 + i as f32 / 16.0 + p as f32 / 64.0);
            }
        }
        out
    }

    /// Layer `layer` for output rows `rows`, from `inputs` holding rows `input_rows` of the
    /// previous layer.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_rows(
        &self,
        dep: Dependency,
        tokens: u32,
        hidden: usize,
        layer: u32,
        rows: Range<u32>,
        input_rows: Range<u32>,
        inputs: &[f32],
    ) -> Result<Vec<f32>> {
        let row = |q: u32| -> Result<&[f32]> {
            if !input_rows.contains(&q) {
                return Err(ProtocolError::Engine(format!(
                    "row {q} is not among the input rows {input_rows:?}"
                )));
            }
            let i = (q - input_rows.start) as usize * hidden;
            inputs
                .get(i..i + hidden)
                .ok_or_else(|| ProtocolError::Engine("input rows are shorter than declared".into()))
        };
        let mut out = Vec::with_capacity((rows.end - rows.start) as usize * hidden);
        for p in rows {
            let ctx = attended(dep, tokens, p);
            let n = (ctx.end - ctx.start) as f32;
            let own = row(p)?;
            for (i, &x) in own.iter().enumerate() {
                let mut sum = 0f32;
                for q in ctx.clone() {
                    sum += row(q)?[i];
                }
                out.push(x + 0.5 * (sum / n) + 0.1 * layer as f32 + self.perturb);
            }
        }
        Ok(out)
    }

    /// The token the toy predicts from a last-layer row.
    pub fn token_from_row(row: &[f32]) -> u32 {
        ((row[0].abs() * 1000.0) as u64 % 50_000) as u32
    }

    /// Greedy generation: appends `n_out` tokens to `input`, each predicted from the last layer
    /// at the previous position. Returns the output tokens.
    pub fn generate(
        &self,
        dep: Dependency,
        layers: u32,
        hidden: usize,
        input: &[u32],
        n_out: usize,
    ) -> Result<Vec<u32>> {
        let mut seq = input.to_vec();
        let mut out = Vec::with_capacity(n_out);
        for _ in 0..n_out {
            let trace = self.forward(dep, layers, hidden, &seq)?;
            let last = trace.last().expect("at least one layer");
            let p = seq.len() - 1;
            let t = Self::token_from_row(&last[p * hidden..(p + 1) * hidden]);
            seq.push(t);
            out.push(t);
        }
        Ok(out)
    }

    /// The full trace `h_0 … h_{layers−1}` of `tokens`, each layer row-major f32.
    pub fn forward(
        &self,
        dep: Dependency,
        layers: u32,
        hidden: usize,
        tokens: &[u32],
    ) -> Result<Vec<Vec<f32>>> {
        let t = tokens.len() as u32;
        let mut trace = vec![self.embed_tokens(hidden, tokens, 0..t)];
        for l in 1..layers {
            let prev = trace.last().expect("non-empty");
            let next = self.layer_rows(dep, t, hidden, l, 0..t, 0..t, prev)?;
            trace.push(next);
        }
        Ok(trace)
    }

    /// The full trace as little-endian bytes per layer (what a [`crate::Prover`] holds).
    pub fn trace_bytes(&self, statement: &Statement) -> Result<Vec<Vec<u8>>> {
        let hidden = check(statement)?;
        let tokens: Vec<u32> = (0..statement.geometry.tokens)
            .map(|p| statement.token(p).unwrap_or(0))
            .collect();
        Ok(self
            .forward(
                statement.dependency,
                statement.geometry.layers,
                hidden,
                &tokens,
            )?
            .iter()
            .map(|l| bytes(l))
            .collect())
    }
}

/// Per-layer little-endian byte buffers: one sub-layer trace.
pub type LayerBytes = Vec<Vec<u8>>;

impl ToyEngine {
    /// The sub-layer traces (context, cell) of a [`crate::TraceLevel::SubLayer`] statement,
    /// one entry per layer `1 … L − 1`, as little-endian bytes (see the module docs). A
    /// cheating toy (`perturb ≠ 0`) reports the honest sub-layer values of its own trace.
    pub fn sublayer_bytes(&self, statement: &Statement) -> Result<(LayerBytes, LayerBytes)> {
        let hidden = check(statement)?;
        let tokens: Vec<u32> = (0..statement.geometry.tokens)
            .map(|p| statement.token(p).unwrap_or(0))
            .collect();
        let trace = self.forward(
            statement.dependency,
            statement.geometry.layers,
            hidden,
            &tokens,
        )?;
        let t = statement.geometry.tokens;
        let mut context = Vec::new();
        let mut cell = Vec::new();
        for x in &trace[..trace.len() - 1] {
            let c: Vec<f32> = x.iter().map(|v| 0.5 * v).collect();
            let mut m = Vec::with_capacity(c.len());
            for p in 0..t {
                let ctx = attended(statement.dependency, t, p);
                let n = (ctx.end - ctx.start) as f32;
                for i in 0..hidden {
                    let mut sum = 0f32;
                    for q in ctx.clone() {
                        sum += c[q as usize * hidden + i];
                    }
                    m.push(sum / n);
                }
            }
            context.push(bytes(&c));
            cell.push(bytes(&m));
        }
        Ok((context, cell))
    }
}

impl ToyEngine {
    /// The toy's by-head trace level for `hidden`-wide rows over `kv_heads` heads (each
    /// `hidden / kv_heads` wide, one query head per key-value head). `None` when `kv_heads`
    /// does not divide `hidden`.
    pub fn by_head_level(hidden: u32, kv_heads: u32) -> Option<crate::TraceLevel> {
        (kv_heads > 0 && hidden.is_multiple_of(kv_heads)).then_some(
            crate::TraceLevel::SubLayerByHead {
                context: hidden,
                cell: hidden,
                heads: kv_heads,
                kv_heads,
                kv: hidden / kv_heads,
                dtype: Dtype::F32,
            },
        )
    }

    /// The three sub-layer traces (context, key-value, cell) of a
    /// [`crate::TraceLevel::SubLayerByHead`] statement of the toy's level (see the module
    /// docs): the key-value trace has `(L − 1) · g` layers, head `h` of sub-layer `s` at
    /// `s · g + h`.
    pub fn sublayer_bytes_by_head(
        &self,
        statement: &Statement,
    ) -> Result<(LayerBytes, LayerBytes, LayerBytes)> {
        let hidden = check(statement)?;
        let (g, w) = toy_heads(statement, hidden)?;
        let (context, cell) = self.sublayer_bytes(statement)?;
        let mut kv = Vec::with_capacity(context.len() * g);
        for layer in &context {
            for h in 0..g {
                let rows = layer.chunks_exact(4 * hidden);
                kv.push(
                    rows.flat_map(|r| r[4 * h * w..4 * (h + 1) * w].iter().copied())
                        .collect(),
                );
            }
        }
        Ok((context, kv, cell))
    }
}

/// `(g, w)` of a statement at the toy's by-head level.
fn toy_heads(statement: &Statement, hidden: usize) -> Result<(usize, usize)> {
    match statement.trace_level.heads() {
        Some((_, g))
            if ToyEngine::by_head_level(hidden as u32, g) == Some(statement.trace_level) =>
        {
            Ok((g as usize, hidden / g as usize))
        }
        _ => Err(ProtocolError::Engine(format!(
            "the toy's by-head rows are {hidden} wide over heads of one query head each; the \
             statement says {:?}",
            statement.trace_level
        ))),
    }
}

impl Recompute for ToyEngine {
    /// The toy engine has no tokenizer: statements with text input are refused.
    fn check_input(&self, statement: &Statement) -> Result<()> {
        crate::verifier::no_text_input(statement)
    }

    fn embed(&self, statement: &Statement, rows: Range<u32>) -> Result<Vec<u8>> {
        let hidden = check(statement)?;
        let tokens: Vec<u32> = (0..statement.geometry.tokens)
            .map(|p| statement.token(p).unwrap_or(0))
            .collect();
        Ok(bytes(&self.embed_tokens(hidden, &tokens, rows)))
    }

    fn layer(
        &self,
        statement: &Statement,
        layer: u32,
        rows: Range<u32>,
        input_rows: Range<u32>,
        inputs: &[u8],
    ) -> Result<Vec<u8>> {
        let hidden = check(statement)?;
        let out = self.layer_rows(
            statement.dependency,
            statement.geometry.tokens,
            hidden,
            layer,
            rows,
            input_rows,
            &f32s(inputs),
        )?;
        Ok(bytes(&out))
    }

    fn next_token(&self, statement: &Statement, _position: u32, last_row: &[u8]) -> Result<u32> {
        check(statement)?;
        Ok(Self::token_from_row(&f32s(last_row)))
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
    ) -> Result<crate::AlgebraicCheck> {
        let hidden = check(statement)?;
        if statement.trace_level
            != (crate::TraceLevel::SubLayer {
                context: hidden as u32,
                cell: hidden as u32,
                dtype: Dtype::F32,
            })
        {
            return Err(ProtocolError::Engine(format!(
                "the toy's sub-layer rows are {hidden} wide; the statement says {:?}",
                statement.trace_level
            )));
        }
        if rows.start < input_rows.start || rows.end > input_rows.end || rows.is_empty() {
            return Err(ProtocolError::Engine(format!(
                "rows {rows:?} are not within the input rows {input_rows:?}"
            )));
        }
        let (x, c, m) = (f32s(inputs), f32s(context), f32s(cell));
        let n_in = (input_rows.end - input_rows.start) as usize * hidden;
        let n_out = (rows.end - rows.start) as usize * hidden;
        if x.len() != n_in || c.len() != n_in || m.len() != n_out {
            return Err(ProtocolError::Engine(
                "sub-layer rows of the wrong length".into(),
            ));
        }
        if let Some(i) = (0..n_in).find(|&i| c[i] != 0.5 * x[i]) {
            return Ok(crate::AlgebraicCheck::Failed(format!(
                "context element {i} is {} but 0.5 x = {}",
                c[i],
                0.5 * x[i]
            )));
        }
        let mut out = Vec::with_capacity(n_out);
        for (r, p) in rows.enumerate() {
            let ctx = attended(statement.dependency, statement.geometry.tokens, p);
            let n = (ctx.end - ctx.start) as f32;
            let own = (p - input_rows.start) as usize * hidden;
            for i in 0..hidden {
                let mut sum = 0f32;
                for q in ctx.clone() {
                    let Some(at) = q.checked_sub(input_rows.start) else {
                        return Err(ProtocolError::Engine("a row outside the context".into()));
                    };
                    sum += c[at as usize * hidden + i];
                }
                let mean = sum / n;
                let claimed = m[r * hidden + i];
                if claimed != mean {
                    return Ok(crate::AlgebraicCheck::Failed(format!(
                        "cell row {r} element {i} is {claimed}, the mean of the context is {mean}"
                    )));
                }
                out.push(x[own + i] + claimed + 0.1 * layer as f32);
            }
        }
        Ok(crate::AlgebraicCheck::Output(bytes(&out)))
    }

    fn check_sublayer_heads(
        &self,
        statement: &Statement,
        claim: &crate::HeadClaim<'_>,
    ) -> Result<crate::AlgebraicCheck> {
        use crate::AlgebraicCheck::{Failed, Output};
        let hidden = check(statement)?;
        let (g, w) = toy_heads(statement, hidden)?;
        let bad = |what: &str| ProtocolError::Engine(format!("the claim's {what} are malformed"));
        // the offset of row q among the checked rows
        let checked_at = |q: u32| -> Option<usize> {
            let mut before = 0usize;
            for r in claim.checked {
                if r.contains(&q) {
                    return Some(before + (q - r.start) as usize);
                }
                before += (r.end - r.start) as usize;
            }
            None
        };
        let n_checked: usize = claim
            .checked
            .iter()
            .map(|r| (r.end - r.start) as usize)
            .sum();
        let (x, c, m) = (f32s(claim.inputs), f32s(claim.context), f32s(claim.cell));
        let rows = (claim.rows.end - claim.rows.start) as usize;
        if x.len() != n_checked * hidden
            || c.len() != n_checked * hidden
            || m.len() != rows * hidden
        {
            return Err(bad("rows"));
        }
        let all: Vec<u32> = (0..g as u32).collect();
        let heads = claim.heads.unwrap_or(&all);
        if claim.kv.len() != g || heads.iter().any(|&h| h as usize >= g) {
            return Err(bad("heads"));
        }
        let kv: Vec<Vec<f32>> = claim.kv.iter().map(|b| f32s(b)).collect();
        let full_kv = |h: usize| heads.contains(&(h as u32));
        // provenance of the checked rows: c = 0.5 x, and every head's key-value row its slice
        for i in 0..n_checked * hidden {
            if c[i] != 0.5 * x[i] {
                return Ok(Failed(format!(
                    "context element {i} is {} but 0.5 x = {}",
                    c[i],
                    0.5 * x[i]
                )));
            }
        }
        for (h, kv_h) in kv.iter().enumerate() {
            let span = if full_kv(h) {
                (claim.input_rows.end - claim.input_rows.start) as usize
            } else {
                n_checked
            };
            if kv_h.len() != span * w {
                return Err(bad("key-value rows"));
            }
            for r in claim.checked {
                for q in r.clone() {
                    let at = checked_at(q).ok_or_else(|| bad("checked rows"))?;
                    let kv_row = if full_kv(h) {
                        (q - claim.input_rows.start) as usize
                    } else {
                        at
                    };
                    let want = &c[at * hidden + h * w..at * hidden + (h + 1) * w];
                    if &kv_h[kv_row * w..(kv_row + 1) * w] != want {
                        return Ok(Failed(format!(
                            "head {h}'s key-value row {q} is not its context slice"
                        )));
                    }
                }
            }
        }
        // the checked heads' means over the context, and the output rows
        let mut out = Vec::with_capacity(rows * hidden);
        for (r, p) in claim.rows.clone().enumerate() {
            let ctx = attended(statement.dependency, statement.geometry.tokens, p);
            let n = (ctx.end - ctx.start) as f32;
            for &h in heads {
                let h = h as usize;
                for i in 0..w {
                    let mut sum = 0f32;
                    for q in ctx.clone() {
                        let Some(at) = q.checked_sub(claim.input_rows.start) else {
                            return Err(bad("context rows"));
                        };
                        sum += kv[h][at as usize * w + i];
                    }
                    let (mean, claimed) = (sum / n, m[r * hidden + h * w + i]);
                    if claimed != mean {
                        return Ok(Failed(format!(
                            "cell row {r} head {h} element {i} is {claimed}, the mean of the \
                             context is {mean}"
                        )));
                    }
                }
            }
            let own = checked_at(p).ok_or_else(|| bad("checked rows"))? * hidden;
            for i in 0..hidden {
                out.push(x[own + i] + m[r * hidden + i] + 0.1 * claim.layer as f32);
            }
        }
        Ok(Output(bytes(&out)))
    }
}
