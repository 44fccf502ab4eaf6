//! The models a simulation runs: the built-in or loaded Llama-style decoder, or a BERT encoder
//! (all-MiniLM-L6-v2). [`SimModel`] gives the engine one interface over both: proving a run,
//! recomputing a cell from the rows the statement's dependency names (causal: rows `0..end`;
//! bidirectional: every row), the protocol's [`Recompute`], prompts, and the cost model.

use std::ops::Range;
use std::path::Path;

use veritrace_commit::HasherId;
use veritrace_model::{
    bert_prompt, minilm_dir, BertModel, CellInputs, LlamaModel, ModelConfig, ModelError,
    RecomputeOn, Runner, Setup, Trace,
};
use veritrace_protocol::{Recompute, Statement};

use crate::cost;
use crate::SimError;

/// A simulated model.
#[derive(Debug, Clone)]
pub enum SimModel {
    /// A Llama-style decoder (causal, generates output tokens).
    Llama(LlamaModel),
    /// A BERT encoder (bidirectional, no output tokens).
    Bert(BertModel),
}

impl SimModel {
    /// The model a scenario names: `tiny` or `small` (seeded decoders), `minilm` (the installed
    /// all-MiniLM-L6-v2), or a checkpoint directory (BERT when its `config.json` says
    /// `"model_type": "bert"`, else Llama-style).
    pub fn load(spec: &str) -> Result<Self, SimError> {
        match spec {
            "tiny" | "small" => return Ok(SimModel::Llama(LlamaModel::preset(spec)?)),
            "minilm" => {
                let dir = minilm_dir().ok_or_else(|| {
                    SimError::Scenario(
                        "model minilm: all-MiniLM-L6-v2 is not installed; run \
                         `bash scripts/install-minilm.sh` (or set VERITRACE_MINILM)"
                            .into(),
                    )
                })?;
                return Ok(SimModel::Bert(BertModel::load(&dir)?));
            }
            _ => {}
        }
        let dir = Path::new(spec);
        if !dir.join("config.json").is_file() {
            return Err(SimError::Scenario(format!(
                "model {spec:?}: not a built-in model (tiny, small, minilm) nor a checkpoint \
                 directory (config.json with model.safetensors: Llama-style, or BERT when \
                 \"model_type\" is \"bert\")"
            )));
        }
        let config =
            std::fs::read_to_string(dir.join("config.json")).map_err(|e| SimError::Io {
                path: dir.join("config.json").display().to_string(),
                reason: e.to_string(),
            })?;
        let is_bert = serde_json::from_str::<serde_json::Value>(&config)
            .ok()
            .and_then(|v| {
                v.get("model_type")
                    .and_then(|t| t.as_str())
                    .map(|t| t == "bert")
            })
            .unwrap_or(false);
        Ok(if is_bert {
            SimModel::Bert(BertModel::load(dir)?)
        } else {
            SimModel::Llama(LlamaModel::load(dir)?)
        })
    }

    /// The checkpoint's tokenizer (`tokenizer.json`, for text input), if it has one.
    pub fn tokenizer(&self) -> Option<&veritrace_model::TextTokenizer> {
        match self {
            SimModel::Llama(m) => m.tokenizer(),
            SimModel::Bert(m) => m.tokenizer(),
        }
    }

    /// Whether the model is an encoder (bidirectional, no generated tokens).
    pub fn is_encoder(&self) -> bool {
        matches!(self, SimModel::Bert(_))
    }

    /// The model digest.
    pub fn digest(&self) -> veritrace_commit::Digest {
        match self {
            SimModel::Llama(m) => m.digest(),
            SimModel::Bert(m) => m.digest(),
        }
    }

    /// Transformer layers `L`.
    pub fn num_layers(&self) -> usize {
        match self {
            SimModel::Llama(m) => m.config().num_layers,
            SimModel::Bert(m) => m.config().num_hidden_layers,
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            SimModel::Llama(m) => m.config().vocab_size,
            SimModel::Bert(m) => m.config().vocab_size,
        }
    }

    /// A prompt of `len` tokens from the 64-bit `key`: uniform ids below the vocabulary for a
    /// decoder (`next_u32 mod vocab` of the given stream), a `[CLS] … [SEP]` sequence of
    /// ordinary WordPieces for BERT ([`bert_prompt`]).
    pub fn prompt(&self, key: u64, len: usize, mut next_u32: impl FnMut() -> u32) -> Vec<u32> {
        match self {
            SimModel::Llama(m) => {
                let vocab = m.config().vocab_size as u32;
                (0..len).map(|_| next_u32() % vocab).collect()
            }
            SimModel::Bert(m) => bert_prompt(m.config().vocab_size, key, len),
        }
    }

    /// Runs `setup` on `prompt` (a decoder generates `output` tokens; an encoder encodes the
    /// prompt) and returns the statement of that run with its trace.
    pub fn prove_run(
        &self,
        setup: &Setup,
        prompt: &[u32],
        output: usize,
        chunk: u32,
        hasher: HasherId,
    ) -> Result<(Statement, Trace), SimError> {
        Ok(match self {
            SimModel::Llama(m) => m.prove_run(setup, prompt, output, chunk, hasher)?,
            SimModel::Bert(m) => m.prove_encode(setup, prompt, chunk, hasher)?,
        })
    }

    /// [`SimModel::prove_run`] on the device of `runner` (the CPU, or a GPU with the `cuda`
    /// feature).
    pub fn prove_run_on(
        &self,
        runner: &Runner,
        setup: &Setup,
        prompt: &[u32],
        output: usize,
        chunk: u32,
        hasher: HasherId,
    ) -> Result<(Statement, Trace), SimError> {
        Ok(match self {
            SimModel::Llama(m) => {
                runner.llama_prove_run(m, setup, prompt, output, chunk, hasher)?
            }
            SimModel::Bert(m) => runner.bert_prove_encode(m, setup, prompt, chunk, hasher)?,
        })
    }

    /// The rows of the layer below (or the tokens) that cell `j` of `n` rows with chunk `c`
    /// is recomputed from: `0..min((j + 1)c, n)` for a decoder, `0..n` for an encoder.
    pub fn input_rows(&self, n: usize, chunk: usize, j: usize) -> Range<usize> {
        match self {
            SimModel::Llama(_) => 0..((j + 1) * chunk).min(n),
            SimModel::Bert(_) => 0..n,
        }
    }

    /// Recomputes cell `(layer, j)` under `setup` from `inputs` (the rows [`SimModel::input_rows`]
    /// names).
    pub fn recompute_cell(
        &self,
        setup: &Setup,
        chunk: usize,
        layer: usize,
        j: usize,
        inputs: CellInputs<'_>,
    ) -> Result<Vec<f32>, ModelError> {
        match self {
            SimModel::Llama(m) => m.recompute_cell(setup, chunk, layer, j, inputs),
            SimModel::Bert(m) => m.recompute_cell(setup, chunk, layer, j, inputs),
        }
    }

    /// [`SimModel::recompute_cell`] on the device of `runner`.
    pub fn recompute_cell_on(
        &self,
        runner: &Runner,
        setup: &Setup,
        chunk: usize,
        layer: usize,
        j: usize,
        inputs: CellInputs<'_>,
    ) -> Result<Vec<f32>, ModelError> {
        match self {
            SimModel::Llama(m) => runner.llama_recompute_cell(m, setup, chunk, layer, j, inputs),
            SimModel::Bert(m) => runner.bert_recompute_cell(m, setup, chunk, layer, j, inputs),
        }
    }

    /// The logits of one last-layer row under `setup` (a decoder; an encoder has no LM head).
    pub fn logits_from_row(&self, setup: &Setup, row: &[f32]) -> Result<Vec<f32>, SimError> {
        match self {
            SimModel::Llama(m) => Ok(m.logits_from_row(setup, row)?),
            SimModel::Bert(_) => Err(SimError::Scenario(
                "an encoder has no LM head: no logits to steer".into(),
            )),
        }
    }

    /// A cheaper model of the same shape for the model-swap adversary: the decoder's config
    /// with a quarter of the MLP width and the next seed. Encoders have no seeded variant.
    pub fn swap_model(&self) -> Result<SimModel, SimError> {
        match self {
            SimModel::Llama(m) => {
                let c = m.config();
                Ok(SimModel::Llama(LlamaModel::new(ModelConfig {
                    intermediate_size: c.intermediate_size.div_ceil(4),
                    seed: c.seed.wrapping_add(1),
                    ..c.clone()
                })?))
            }
            SimModel::Bert(_) => Err(SimError::Scenario(
                "model-swap needs a seeded decoder (tiny, small); an encoder has no cheaper \
                 variant of its own shape"
                    .into(),
            )),
        }
    }

    /// Cost of cell rows `rows` of `layer` under `setup` (see [`crate::cost`]), `n` rows in all.
    pub fn cell_cost(
        &self,
        setup: &Setup,
        reference: &Setup,
        layer: u32,
        rows: Range<u32>,
        n: u32,
    ) -> f64 {
        match self {
            SimModel::Llama(m) => cost::cell_cost(m.config(), setup, reference, layer, rows),
            SimModel::Bert(m) => {
                let c = m.config();
                cost::encoder_cell_cost(
                    c.hidden_size,
                    c.intermediate_size,
                    setup,
                    reference,
                    layer,
                    rows,
                    n,
                )
            }
        }
    }

    /// Cost of a whole forward of `n` rows under `setup`.
    pub fn forward_cost(&self, setup: &Setup, reference: &Setup, n: u32) -> f64 {
        (1..=self.num_layers() as u32)
            .map(|l| self.cell_cost(setup, reference, l, 0..n, n))
            .sum()
    }
}

impl SimModel {
    /// Runs `f` with this model's [`Recompute`] on `runner`'s device ([`RecomputeOn`]).
    fn recompute_on<T>(&self, runner: &Runner, f: impl FnOnce(&dyn Recompute) -> T) -> T {
        match self {
            SimModel::Llama(m) => f(&RecomputeOn { model: m, runner }),
            SimModel::Bert(m) => f(&RecomputeOn { model: m, runner }),
        }
    }
}

/// Recompute on the CPU.
impl Recompute for SimModel {
    fn check_input(&self, statement: &Statement) -> veritrace_protocol::Result<()> {
        self.recompute_on(Runner::cpu(), |r| r.check_input(statement))
    }

    fn embed(
        &self,
        statement: &Statement,
        rows: Range<u32>,
    ) -> veritrace_protocol::Result<Vec<u8>> {
        self.recompute_on(Runner::cpu(), |r| r.embed(statement, rows))
    }

    fn layer(
        &self,
        statement: &Statement,
        layer: u32,
        rows: Range<u32>,
        input_rows: Range<u32>,
        inputs: &[u8],
    ) -> veritrace_protocol::Result<Vec<u8>> {
        self.recompute_on(Runner::cpu(), |r| {
            r.layer(statement, layer, rows, input_rows, inputs)
        })
    }

    fn next_token(
        &self,
        statement: &Statement,
        position: u32,
        last_row: &[u8],
    ) -> veritrace_protocol::Result<u32> {
        self.recompute_on(Runner::cpu(), |r| {
            r.next_token(statement, position, last_row)
        })
    }
}

/// The verifier's model: a [`SimModel`] whose cells are recomputed on a device (the
/// scenario's `verifier_device`), as the protocol's [`Recompute`].
#[derive(Debug, Clone)]
pub struct SimVerifier {
    /// The model.
    pub model: SimModel,
    /// The verifier's device.
    pub runner: std::sync::Arc<Runner>,
}

impl Recompute for SimVerifier {
    fn check_input(&self, statement: &Statement) -> veritrace_protocol::Result<()> {
        self.model.check_input(statement)
    }

    fn embed(
        &self,
        statement: &Statement,
        rows: Range<u32>,
    ) -> veritrace_protocol::Result<Vec<u8>> {
        self.model
            .recompute_on(&self.runner, |r| r.embed(statement, rows))
    }

    fn layer(
        &self,
        statement: &Statement,
        layer: u32,
        rows: Range<u32>,
        input_rows: Range<u32>,
        inputs: &[u8],
    ) -> veritrace_protocol::Result<Vec<u8>> {
        self.model.recompute_on(&self.runner, |r| {
            r.layer(statement, layer, rows, input_rows, inputs)
        })
    }

    /// The next token from the last-layer row: a table product, the same on every device.
    fn next_token(
        &self,
        statement: &Statement,
        position: u32,
        last_row: &[u8],
    ) -> veritrace_protocol::Result<u32> {
        self.model.next_token(statement, position, last_row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_model_says_what_a_model_can_be() {
        for spec in ["huge", "no/such/dir", "."] {
            match SimModel::load(spec) {
                Err(SimError::Scenario(msg)) => {
                    assert!(msg.contains(spec), "{msg}");
                    assert!(msg.contains("tiny, small, minilm"), "{msg}");
                }
                other => panic!("{spec}: {other:?}"),
            }
        }
        assert!(SimModel::load("tiny").unwrap().num_layers() > 0);
    }
}
