//! One model interface: the [`Model`] trait every architecture implements in its own file, and
//! [`load`], the one loader every verb and the simulator go through.
//!
//! An architecture owns, in its file: config parsing and validation, the model digest, the
//! geometry (layers, width), its dependency rule (causal, a sliding window, bidirectional) and
//! output rule (a decoder generates greedily, an encoder generates nothing), its prompt rule,
//! which setups it runs, the CPU trace and single-cell recompute, the GPU runner where the
//! `cuda` feature has one ([`crate::Runner`]), and its cost model ([`crate::cost`]).
//!
//! | file | `model_type`s | [`Model`] |
//! |---|---|---|
//! | [`crate::llama`] | `llama` (or absent), `qwen2`, `mistral` | [`crate::LlamaModel`] |
//! | [`crate::bert`] | `bert` | [`crate::BertModel`] |
//!
//! Adding an architecture is its file (a type implementing [`Model`], with its [`Architecture`])
//! plus one entry in [`ARCHITECTURES`].

use std::fmt::Debug;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use veritrace_commit::{Digest, HasherId};
use veritrace_protocol::{Dependency, Recompute, Statement};

use crate::{CellInputs, CommittedRun, Engine, ModelError, Result, Runner, Setup, Trace};

/// A model veritrace computes: what the verbs and the simulator need of any architecture. It is
/// an [`Engine`] (trace, prompts, setups it runs) and the protocol's [`Recompute`] on the CPU.
pub trait Model: Engine + Recompute + Debug {
    /// The engine-independent model digest (`specs/model-digest.md`).
    fn digest(&self) -> Digest;

    /// The architecture's name in the digest (`llama`, `qwen2`, `mistral`, `bert`).
    fn architecture(&self) -> &'static str;

    /// Whether the model is an encoder: bidirectional, it generates no tokens.
    fn is_encoder(&self) -> bool;

    /// Which rows of layer `l − 1` a cell of layer `l` depends on, as its statements say.
    fn dependency(&self) -> Dependency;

    /// A simulation prompt of `len` tokens keyed by `key`, drawing ids from `next_u32`: uniform
    /// ids below the vocabulary for a decoder, a `[CLS] … [SEP]` sequence of ordinary WordPieces
    /// for BERT ([`crate::bert_prompt`]).
    fn sim_prompt(&self, key: u64, len: usize, next_u32: &mut dyn FnMut() -> u32) -> Vec<u32>;

    /// Runs `setup` on `prompt` on `runner`'s device (a decoder generates `output` tokens
    /// greedily; an encoder encodes the prompt and refuses `output > 0`) and returns the
    /// statement of that run with its trace, and the cell leaves when the device hashed them
    /// as each layer finished.
    fn prove_committed(
        &self,
        runner: &Runner,
        setup: &Setup,
        prompt: &[u32],
        output: usize,
        chunk: u32,
        hasher: HasherId,
    ) -> Result<CommittedRun>;

    /// [`Model::prove_committed`] without the leaves.
    fn prove_on(
        &self,
        runner: &Runner,
        setup: &Setup,
        prompt: &[u32],
        output: usize,
        chunk: u32,
        hasher: HasherId,
    ) -> Result<(Statement, Trace)>;

    /// The rows of the layer below (or the tokens) that cell `j` of `n` rows with chunk `c` is
    /// recomputed from by [`Model::recompute_cell_on`]: `0..min((j + 1)c, n)` for a decoder
    /// (its window masks the earlier rows), `0..n` for an encoder.
    fn input_rows(&self, n: usize, chunk: usize, j: usize) -> Range<usize>;

    /// Recomputes cell `(layer, j)` under `setup` on `runner`'s device from `inputs` (the rows
    /// [`Model::input_rows`] names), bit for bit the same rows as a full forward on that device.
    fn recompute_cell_on(
        &self,
        runner: &Runner,
        setup: &Setup,
        chunk: usize,
        layer: usize,
        j: usize,
        inputs: CellInputs<'_>,
    ) -> Result<Vec<f32>>;

    /// The protocol's [`Recompute`] with every transformer-layer cell recomputed on `runner`'s
    /// device ([`crate::RecomputeOn`]).
    fn recompute_on<'a>(&'a self, runner: &'a Runner) -> Box<dyn Recompute + 'a>;

    /// The gain of the final norm a decoder applies to `h_L` before its LM head (`None` for an
    /// encoder, which has none): importers use it to tell a post-norm tensor from `h_L`.
    fn final_norm_gain(&self) -> Option<Vec<f32>>;

    /// The logits of one last-layer row under `setup`; an encoder (no LM head) refuses.
    fn logits_from_row(&self, setup: &Setup, row: &[f32]) -> Result<Vec<f32>>;

    /// A cheaper model of the same shape (the model-swap adversary): for a seeded decoder a
    /// quarter of the MLP width and the next seed; refused where the architecture has none.
    fn swap_model(&self) -> Result<Arc<dyn Model>>;

    /// Cost of rows `rows` of layer `layer` under `setup` against `reference`, `n` rows in all
    /// ([`crate::cost`]).
    fn cell_cost(
        &self,
        setup: &Setup,
        reference: &Setup,
        layer: u32,
        rows: Range<u32>,
        n: u32,
    ) -> f64;

    /// The Llama-style decoder behind this model, for what only decoders have: the sub-layer
    /// trace level and Freivalds verifier keys (issue 16). `None` for other architectures.
    fn decoder(&self) -> Option<&crate::LlamaModel> {
        None
    }

    /// Cost of a whole forward of `n` rows under `setup`.
    fn forward_cost(&self, setup: &Setup, reference: &Setup, n: u32) -> f64 {
        (1..=self.num_layers() as u32)
            .map(|l| self.cell_cost(setup, reference, l, 0..n, n))
            .sum()
    }
}

/// An architecture's entry in [`ARCHITECTURES`]: the `model_type`s its loader reads and the
/// loader of a checkpoint directory.
#[derive(Debug, Clone, Copy)]
pub struct Architecture {
    /// `config.json` `model_type`s this architecture loads (`""`: the field is absent).
    pub model_types: &'static [&'static str],
    /// Loads a checkpoint directory of one of those types.
    pub load: fn(&Path) -> Result<Arc<dyn Model>>,
}

/// Every architecture, in the order [`load`] tries their `model_type`s.
pub const ARCHITECTURES: &[Architecture] = &[crate::llama::ARCHITECTURE, crate::bert::ARCHITECTURE];

/// The built-in seeded presets [`load`] accepts by name.
pub const PRESETS: [&str; 2] = ["tiny", "small"];

/// The name [`load`] accepts for the installed all-MiniLM-L6-v2 ([`crate::minilm_dir`]).
pub const MINILM: &str = "minilm";

/// The model a `--model` argument (or a scenario's `model`) names: a preset of [`PRESETS`]
/// (seeded weights), [`MINILM`], or a checkpoint directory, loaded by the [`Architecture`]
/// whose `model_types` hold its `config.json`'s `model_type` (absent: `llama`).
///
/// # Errors
/// [`ModelError::UnknownModel`] for a name that is none of these or a path without
/// `config.json`; [`ModelError::InvalidConfig`] for a `model_type` no architecture reads; the
/// architecture's own refusal of a checkpoint.
pub fn load(spec: &str) -> Result<Arc<dyn Model>> {
    if PRESETS.contains(&spec) {
        return Ok(Arc::new(crate::LlamaModel::preset(spec)?));
    }
    if spec == MINILM {
        let dir = crate::minilm_dir().ok_or(ModelError::MiniLmNotInstalled)?;
        return Ok(Arc::new(crate::BertModel::load(&dir)?));
    }
    let dir = Path::new(spec);
    let config = dir.join("config.json");
    if !config.is_file() {
        return Err(ModelError::UnknownModel {
            spec: spec.to_string(),
        });
    }
    let value = crate::llama::read_config_json(&config)?;
    let model_type = match value.get("model_type") {
        None => "",
        Some(t) => t.as_str().ok_or_else(|| {
            ModelError::InvalidConfig(format!(
                "{}: model_type {t} is not a string",
                config.display()
            ))
        })?,
    };
    let arch = ARCHITECTURES
        .iter()
        .find(|a| a.model_types.contains(&model_type))
        .ok_or_else(|| {
            let known: Vec<&str> = ARCHITECTURES
                .iter()
                .flat_map(|a| a.model_types.iter().copied())
                .filter(|t| !t.is_empty())
                .collect();
            ModelError::InvalidConfig(format!(
                "{}: model_type {model_type:?} is not supported (supported: {})",
                config.display(),
                known.join(", ")
            ))
        })?;
    (arch.load)(dir)
}
