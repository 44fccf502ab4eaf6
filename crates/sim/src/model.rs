//! The models a simulation runs: any [`veritrace_model::Model`] that
//! [`veritrace_model::load`] gives (a seeded preset, the installed all-MiniLM-L6-v2, or a
//! checkpoint directory of a registered architecture), held as a [`SimModel`], and
//! [`SimVerifier`], the verifier's recompute of it on a device.

use std::ops::Range;
use std::sync::Arc;

use veritrace_model::freivalds::{MapBounds, VerifierKey};
use veritrace_model::sublayer::KeyedVerifier;
use veritrace_model::{Model, ModelError, Runner};
use veritrace_protocol::{AlgebraicCheck, HeadClaim, Recompute, Statement};

use crate::SimError;

/// A simulated model: one [`Model`] interface over every architecture.
pub type SimModel = Arc<dyn Model>;

/// The model a scenario names ([`veritrace_model::load`]): `tiny` or `small` (seeded decoders),
/// `minilm` (the installed all-MiniLM-L6-v2), or a checkpoint directory. A name that is none of
/// these, or `minilm` when it is not installed, is a scenario error saying what a model can be.
pub fn load_model(spec: &str) -> Result<SimModel, SimError> {
    veritrace_model::load(spec).map_err(|e| match e {
        ModelError::UnknownModel { .. } | ModelError::MiniLmNotInstalled => {
            SimError::Scenario(e.to_string())
        }
        other => SimError::Model(other),
    })
}

/// The verifier's model: a [`SimModel`] whose cells are recomputed on a device (the
/// scenario's `verifier_device`), as the protocol's [`Recompute`].
#[derive(Debug, Clone)]
pub struct SimVerifier {
    /// The model.
    pub model: SimModel,
    /// The verifier's device.
    pub runner: Arc<Runner>,
    /// With the scenario's `layer_check` `freivalds` or `both`: the verifier's secret key and
    /// its bounds, for [`Recompute::check_sublayers`] and [`Recompute::check_sublayer_heads`]
    /// (checked on the CPU,
    /// [`veritrace_model::sublayer::KeyedVerifier`]).
    pub keyed: Option<KeyedCheck>,
}

/// The simulated verifier's Freivalds check: its key, the tolerance of the nonlinear parts and
/// the bounds it applies.
#[derive(Debug, Clone)]
pub struct KeyedCheck {
    /// The verifier's secret key.
    pub key: Arc<VerifierKey>,
    /// Relative L∞ tolerance of the recomputed nonlinear parts.
    pub tolerance: f64,
    /// The bound as a multiple `s` of the rigorous bound, for every map without its own.
    pub bound_scale: f64,
    /// Per-map calibrated scales, used instead of `bound_scale` where given.
    pub map_bounds: Option<Arc<MapBounds>>,
    /// The sampled attention check (heads and context rows per cell).
    pub sampling: veritrace_model::freivalds::AttentionSampling,
}

impl KeyedCheck {
    /// The scale the check applies to `matrix` of `layer`.
    pub fn scale(&self, layer: usize, matrix: veritrace_model::freivalds::Matrix) -> f64 {
        self.map_bounds
            .as_ref()
            .map_or(self.bound_scale, |b| b.scale(layer, matrix))
    }
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
        self.model.recompute_on(&self.runner).embed(statement, rows)
    }

    fn layer(
        &self,
        statement: &Statement,
        layer: u32,
        rows: Range<u32>,
        input_rows: Range<u32>,
        inputs: &[u8],
    ) -> veritrace_protocol::Result<Vec<u8>> {
        self.model
            .recompute_on(&self.runner)
            .layer(statement, layer, rows, input_rows, inputs)
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

    fn token_within_rounding(
        &self,
        statement: &Statement,
        position: u32,
        last_row: &[u8],
        claimed: u32,
    ) -> veritrace_protocol::Result<bool> {
        self.model
            .token_within_rounding(statement, position, last_row, claimed)
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
        self.keyed()?
            .check_sublayers(statement, layer, rows, input_rows, inputs, context, cell)
    }

    /// The check of a cell of a statement committed by head, drawn or whole (specs/protocol.md
    /// §4.4, §11.4): the same key, tolerance and bounds. With drawn openings the scenario's
    /// key samples nothing ([`crate::scenario::ProtocolParams::attention_sampling`]): the
    /// challenge's draw says what is checked.
    fn check_sublayer_heads(
        &self,
        statement: &Statement,
        claim: &HeadClaim<'_>,
    ) -> veritrace_protocol::Result<AlgebraicCheck> {
        self.keyed()?.check_sublayer_heads(statement, claim)
    }
}

impl SimVerifier {
    /// The model's keyed verifier ([`KeyedVerifier`]); an engine error without a key or a
    /// Llama-style decoder.
    fn keyed(&self) -> veritrace_protocol::Result<KeyedVerifier<'_>> {
        let (Some(k), Some(decoder)) = (&self.keyed, self.model.decoder()) else {
            return Err(veritrace_protocol::ProtocolError::Engine(
                "this verifier holds no Freivalds key (the scenario's layer_check is recompute)"
                    .into(),
            ));
        };
        Ok(KeyedVerifier {
            model: decoder,
            key: &k.key,
            tolerance: k.tolerance,
            bound_scale: k.bound_scale,
            map_bounds: k.map_bounds.as_deref(),
            sampling: k.sampling,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_model_says_what_a_model_can_be() {
        for spec in ["huge", "no/such/dir", "."] {
            match load_model(spec) {
                Err(SimError::Scenario(msg)) => {
                    assert!(msg.contains(spec), "{msg}");
                    assert!(msg.contains("tiny, small, minilm"), "{msg}");
                }
                other => panic!("{spec}: {other:?}"),
            }
        }
        assert!(load_model("tiny").unwrap().num_layers() > 0);
    }
}
