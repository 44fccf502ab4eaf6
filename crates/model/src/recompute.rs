//! The protocol's [`Recompute`] for the decoder and the encoder, and the prover-side helpers
//! that build a statement with its trace.

use std::ops::Range;

use veritrace_commit::{Digest, Dtype, HasherId};
use veritrace_protocol::{
    Dependency, OutputRule, ProtocolError, Recompute, Statement, PROTOCOL_VERSION,
};

use crate::{BertModel, CellInputs, LlamaModel, ModelError, Result, Runner, Setup, Trace};

fn engine(e: ModelError) -> ProtocolError {
    ProtocolError::Engine(e.to_string())
}

fn f32s(bytes: &[u8], what: &'static str) -> Result<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return Err(ModelError::WrongLength {
            what,
            expected: "a multiple of 4 bytes".into(),
            got: bytes.len(),
        });
    }
    Ok(bytes
        .as_chunks::<4>()
        .0
        .iter()
        .map(|c| f32::from_le_bytes(*c))
        .collect())
}

fn to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The chunk of `statement` whose cell covers exactly `rows`.
fn cell_of(statement: &Statement, rows: &Range<u32>) -> Result<usize> {
    let g = &statement.geometry;
    let chunk = rows.start / g.chunk;
    let expected = g
        .cell_rows(veritrace_commit::CellId { layer: 0, chunk })
        .map_err(|e| ModelError::InvalidArgument(e.to_string()))?;
    if !rows.start.is_multiple_of(g.chunk) || *rows != expected {
        return Err(ModelError::InvalidArgument(format!(
            "rows {rows:?} are not one cell of chunk size {}",
            g.chunk
        )));
    }
    Ok(chunk as usize)
}

/// The checks every model shares: the setup bytes parse, the statement is for the model of
/// `digest`, and the trace is f32 with `hidden` columns and `layers + 1` hidden states.
/// Returns the setup.
fn check_model_and_shape(
    statement: &Statement,
    digest: Digest,
    hidden: usize,
    layers: usize,
) -> Result<Setup> {
    let setup = Setup::from_bytes(&statement.setup)?;
    let g = &statement.geometry;
    let mismatch = |m: String| Err(ModelError::InvalidArgument(m));
    if statement.model_digest != digest {
        return mismatch(format!(
            "the statement is for model {} but this model is {digest}",
            statement.model_digest
        ));
    }
    if g.dtype != Dtype::F32 {
        return mismatch(format!("the trace is {}, this setup computes f32", g.dtype));
    }
    if g.hidden as usize != hidden || g.layers as usize != layers + 1 {
        return mismatch(format!(
            "the trace has {} layers x {} columns; this model gives {} x {hidden}",
            g.layers,
            g.hidden,
            layers + 1
        ));
    }
    Ok(setup)
}

impl LlamaModel {
    /// Checks that this model can recompute cells of `statement`: the setup bytes are a setup
    /// it runs, the model digest is this model's, the trace is f32 with this model's width and
    /// `L + 1` layers, the dependency is the model's (causal, or Mistral's sliding window) and
    /// decoding greedy. Returns the setup.
    pub fn check_statement(&self, statement: &Statement) -> Result<Setup> {
        let c = self.config();
        let setup = check_model_and_shape(statement, self.digest(), c.hidden_size, c.num_layers)?;
        let mismatch = |m: String| Err(ModelError::InvalidArgument(m));
        if statement.dependency != c.dependency() {
            return mismatch(format!(
                "this decoder's attention is {:?}, the statement says {:?}",
                c.dependency(),
                statement.dependency
            ));
        }
        if statement.output_rule != OutputRule::Greedy {
            return mismatch("the decoder decodes greedily only".into());
        }
        Ok(setup)
    }

    /// Prover side: generates `n_out` tokens greedily after `prompt`, traces the whole sequence
    /// (`prompt ‖ output`) in chunks of `chunk` rows, and returns the statement of that run
    /// (this model's digest, `setup`'s canonical bytes, causal, greedy) with its trace.
    pub fn prove_run(
        &self,
        setup: &Setup,
        prompt: &[u32],
        n_out: usize,
        chunk: u32,
        hasher: HasherId,
    ) -> Result<(Statement, Trace)> {
        let output = self.generate(setup, prompt, n_out, chunk as usize)?;
        let tokens: Vec<u32> = prompt.iter().chain(&output).copied().collect();
        let trace = self.trace(setup, &tokens, chunk as usize)?;
        self.statement_for(setup, prompt, output, trace, chunk, hasher)
    }

    /// The statement of a run of `setup` on `prompt` that generated `output` and produced
    /// `trace` (on any device), and the trace: this model's digest, its dependency (causal, or
    /// its sliding window), greedy.
    pub fn statement_for(
        &self,
        setup: &Setup,
        prompt: &[u32],
        output: Vec<u32>,
        trace: Trace,
        chunk: u32,
        hasher: HasherId,
    ) -> Result<(Statement, Trace)> {
        let statement = Statement {
            trace_level: veritrace_protocol::TraceLevel::Hidden,
            version: PROTOCOL_VERSION,
            model_digest: self.digest(),
            setup: setup.to_bytes(),
            input_tokens: prompt.to_vec(),
            output_tokens: output,
            geometry: trace.geometry(chunk)?,
            hasher,
            dependency: self.config().dependency(),
            output_rule: OutputRule::Greedy,
            input_text: None,
            engine: None,
        };
        Ok((statement, trace))
    }
}

impl Recompute for LlamaModel {
    fn check_input(&self, statement: &Statement) -> veritrace_protocol::Result<()> {
        crate::tokenizer::check_input(self.tokenizer(), statement).map_err(engine)
    }

    fn embed(
        &self,
        statement: &Statement,
        rows: Range<u32>,
    ) -> veritrace_protocol::Result<Vec<u8>> {
        RecomputeOn::cpu(self).embed(statement, rows)
    }

    fn layer(
        &self,
        statement: &Statement,
        layer: u32,
        rows: Range<u32>,
        input_rows: Range<u32>,
        inputs: &[u8],
    ) -> veritrace_protocol::Result<Vec<u8>> {
        RecomputeOn::cpu(self).layer(statement, layer, rows, input_rows, inputs)
    }

    fn next_token(
        &self,
        statement: &Statement,
        position: u32,
        last_row: &[u8],
    ) -> veritrace_protocol::Result<u32> {
        RecomputeOn::cpu(self).next_token(statement, position, last_row)
    }

    fn token_within_rounding(
        &self,
        statement: &Statement,
        position: u32,
        last_row: &[u8],
        claimed: u32,
    ) -> veritrace_protocol::Result<bool> {
        RecomputeOn::cpu(self).token_within_rounding(statement, position, last_row, claimed)
    }
}

impl Recompute for RecomputeOn<'_, LlamaModel> {
    fn check_input(&self, statement: &Statement) -> veritrace_protocol::Result<()> {
        crate::tokenizer::check_input(self.model.tokenizer(), statement).map_err(engine)
    }

    fn embed(
        &self,
        statement: &Statement,
        rows: Range<u32>,
    ) -> veritrace_protocol::Result<Vec<u8>> {
        (|| {
            let setup = self.model.check_statement(statement)?;
            let chunk = cell_of(statement, &rows)?;
            let tokens: Vec<u32> = (0..rows.end)
                .map(|p| statement.token(p).unwrap_or(u32::MAX))
                .collect();
            let out = self.runner.llama_recompute_cell(
                self.model,
                &setup,
                statement.geometry.chunk as usize,
                0,
                chunk,
                CellInputs::Tokens(&tokens),
            )?;
            Ok(to_bytes(&out))
        })()
        .map_err(engine)
    }

    fn layer(
        &self,
        statement: &Statement,
        layer: u32,
        rows: Range<u32>,
        input_rows: Range<u32>,
        inputs: &[u8],
    ) -> veritrace_protocol::Result<Vec<u8>> {
        (|| {
            let setup = self.model.check_statement(statement)?;
            let chunk = cell_of(statement, &rows)?;
            // Causal: rows 0..e. A sliding window of W reads only rows s − (W − 1)..e; the rows
            // before it are zero here, which changes nothing: they are masked for every query
            // of the cell, and a zero row's key and value are finite (exp(−∞) · v = 0).
            let needed = statement
                .input_rows(veritrace_commit::CellId {
                    layer,
                    chunk: chunk as u32,
                })
                .map_err(|e| ModelError::InvalidArgument(e.to_string()))?
                .unwrap_or(0..rows.end);
            let window = layer_inputs(statement, &input_rows, needed.clone(), "decoder", inputs)?;
            let hidden = statement.geometry.hidden as usize;
            let mut x = vec![0f32; rows.end as usize * hidden];
            x[needed.start as usize * hidden..].copy_from_slice(&window);
            let out = self.runner.llama_recompute_cell(
                self.model,
                &setup,
                statement.geometry.chunk as usize,
                layer as usize,
                chunk,
                CellInputs::Hidden(&x),
            )?;
            Ok(to_bytes(&out))
        })()
        .map_err(engine)
    }

    fn next_token(
        &self,
        statement: &Statement,
        _position: u32,
        last_row: &[u8],
    ) -> veritrace_protocol::Result<u32> {
        (|| {
            let setup = self.model.check_statement(statement)?;
            let row = f32s(last_row, "last-layer row")?;
            self.model.next_token_from_row(&setup, &row)
        })()
        .map_err(engine)
    }

    fn token_within_rounding(
        &self,
        statement: &Statement,
        _position: u32,
        last_row: &[u8],
        claimed: u32,
    ) -> veritrace_protocol::Result<bool> {
        (|| {
            let setup = self.model.check_statement(statement)?;
            let row = f32s(last_row, "last-layer row")?;
            self.model.token_within_rounding(&setup, &row, claimed)
        })()
        .map_err(engine)
    }
}

impl BertModel {
    /// Checks that this encoder can recompute cells of `statement`: the setup bytes are a setup
    /// it runs, the model digest is this model's, the trace is f32 with this model's width and
    /// `L + 1` layers, attention is bidirectional, there are no output tokens (an encoder does
    /// not decode) and the output rule is the placeholder [`OutputRule::Greedy`] that
    /// [`BertModel::prove_encode`] writes. Returns the setup.
    pub fn check_statement(&self, statement: &Statement) -> Result<Setup> {
        let c = self.config();
        let setup =
            check_model_and_shape(statement, self.digest(), c.hidden_size, c.num_hidden_layers)?;
        let mismatch = |m: String| Err(ModelError::InvalidArgument(m));
        if statement.dependency != Dependency::Bidirectional {
            return mismatch(format!(
                "the encoder attends bidirectionally, not {:?}",
                statement.dependency
            ));
        }
        if !statement.output_tokens.is_empty() {
            return mismatch("an encoder has no output tokens".into());
        }
        if statement.output_rule != OutputRule::Greedy {
            return mismatch("an encoder statement carries the output rule greedy".into());
        }
        Ok(setup)
    }

    /// Prover side: traces `tokens` (every position attended) in chunks of `chunk` rows and
    /// returns the statement of that run (this model's digest, `setup`'s canonical bytes,
    /// `tokens` as input, no output tokens, bidirectional, output rule greedy as a placeholder)
    /// with its trace.
    pub fn prove_encode(
        &self,
        setup: &Setup,
        tokens: &[u32],
        chunk: u32,
        hasher: HasherId,
    ) -> Result<(Statement, Trace)> {
        let trace = self.trace(setup, tokens, chunk as usize)?;
        self.statement_for(setup, tokens, trace, chunk, hasher)
    }

    /// The statement of an encoding of `tokens` under `setup` that produced `trace` (on any
    /// device), and the trace: this model's digest, bidirectional, no output tokens.
    pub fn statement_for(
        &self,
        setup: &Setup,
        tokens: &[u32],
        trace: Trace,
        chunk: u32,
        hasher: HasherId,
    ) -> Result<(Statement, Trace)> {
        let statement = Statement {
            trace_level: veritrace_protocol::TraceLevel::Hidden,
            version: PROTOCOL_VERSION,
            model_digest: self.digest(),
            setup: setup.to_bytes(),
            input_tokens: tokens.to_vec(),
            output_tokens: Vec::new(),
            geometry: trace.geometry(chunk)?,
            hasher,
            dependency: Dependency::Bidirectional,
            output_rule: OutputRule::Greedy,
            input_text: None,
            engine: None,
        };
        Ok((statement, trace))
    }
}

impl Recompute for BertModel {
    fn check_input(&self, statement: &Statement) -> veritrace_protocol::Result<()> {
        crate::tokenizer::check_input(self.tokenizer(), statement).map_err(engine)
    }

    fn embed(
        &self,
        statement: &Statement,
        rows: Range<u32>,
    ) -> veritrace_protocol::Result<Vec<u8>> {
        RecomputeOn::cpu(self).embed(statement, rows)
    }

    fn layer(
        &self,
        statement: &Statement,
        layer: u32,
        rows: Range<u32>,
        input_rows: Range<u32>,
        inputs: &[u8],
    ) -> veritrace_protocol::Result<Vec<u8>> {
        RecomputeOn::cpu(self).layer(statement, layer, rows, input_rows, inputs)
    }

    fn next_token(
        &self,
        statement: &Statement,
        position: u32,
        last_row: &[u8],
    ) -> veritrace_protocol::Result<u32> {
        RecomputeOn::cpu(self).next_token(statement, position, last_row)
    }
}

impl Recompute for RecomputeOn<'_, BertModel> {
    fn check_input(&self, statement: &Statement) -> veritrace_protocol::Result<()> {
        crate::tokenizer::check_input(self.model.tokenizer(), statement).map_err(engine)
    }

    fn embed(
        &self,
        statement: &Statement,
        rows: Range<u32>,
    ) -> veritrace_protocol::Result<Vec<u8>> {
        (|| {
            let setup = self.model.check_statement(statement)?;
            let chunk = cell_of(statement, &rows)?;
            let out = self.runner.bert_recompute_cell(
                self.model,
                &setup,
                statement.geometry.chunk as usize,
                0,
                chunk,
                CellInputs::Tokens(&statement.input_tokens),
            )?;
            Ok(to_bytes(&out))
        })()
        .map_err(engine)
    }

    fn layer(
        &self,
        statement: &Statement,
        layer: u32,
        rows: Range<u32>,
        input_rows: Range<u32>,
        inputs: &[u8],
    ) -> veritrace_protocol::Result<Vec<u8>> {
        (|| {
            let setup = self.model.check_statement(statement)?;
            let chunk = cell_of(statement, &rows)?;
            let all = 0..statement.geometry.tokens;
            let x = layer_inputs(statement, &input_rows, all, "bidirectional", inputs)?;
            let out = self.runner.bert_recompute_cell(
                self.model,
                &setup,
                statement.geometry.chunk as usize,
                layer as usize,
                chunk,
                CellInputs::Hidden(&x),
            )?;
            Ok(to_bytes(&out))
        })()
        .map_err(engine)
    }

    /// An encoder predicts no tokens: always an engine error.
    fn next_token(
        &self,
        _statement: &Statement,
        position: u32,
        _last_row: &[u8],
    ) -> veritrace_protocol::Result<u32> {
        Err(engine(ModelError::InvalidArgument(format!(
            "the BERT encoder does not decode: no token is predicted at position {position}"
        ))))
    }
}

/// The f32 rows a layer cell is recomputed from, checked: `input_rows` must be `needed`, the
/// rows the model's (`attention`) attention reads, and `inputs` exactly those rows of the
/// statement's width.
fn layer_inputs(
    statement: &Statement,
    input_rows: &Range<u32>,
    needed: Range<u32>,
    attention: &str,
    inputs: &[u8],
) -> Result<Vec<f32>> {
    if *input_rows != needed {
        return Err(ModelError::InvalidArgument(format!(
            "{attention} attention reads rows {needed:?}, not {input_rows:?}"
        )));
    }
    let expected = needed.len() * statement.geometry.hidden as usize * 4;
    if inputs.len() != expected {
        return Err(ModelError::WrongLength {
            what: "input bytes",
            expected: expected.to_string(),
            got: inputs.len(),
        });
    }
    f32s(inputs, "input bytes")
}

/// A model whose verifier-side recompute runs on the device of a [`Runner`]: the protocol's
/// [`Recompute`] with every transformer-layer cell recomputed there (the embedding layer is a
/// table lookup, the same everywhere). `LlamaModel` and `BertModel` themselves recompute on
/// the CPU ([`RecomputeOn::cpu`]).
#[derive(Debug)]
pub struct RecomputeOn<'a, M> {
    /// The model.
    pub model: &'a M,
    /// Where its cells are recomputed.
    pub runner: &'a Runner,
}

impl<'a, M> RecomputeOn<'a, M> {
    /// Recompute on the CPU.
    pub fn cpu(model: &'a M) -> Self {
        RecomputeOn {
            model,
            runner: Runner::cpu(),
        }
    }
}
