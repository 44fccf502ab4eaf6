//! The models a simulation runs: any [`veritrace_model::Model`] that
//! [`veritrace_model::load`] gives (a seeded preset, the installed all-MiniLM-L6-v2, or a
//! checkpoint directory of a registered architecture), held as a [`SimModel`], and
//! [`SimVerifier`], the verifier's recompute of it on a device.

use std::ops::Range;
use std::sync::Arc;

use veritrace_model::freivalds::VerifierKey;
use veritrace_model::sublayer::KeyedVerifier;
use veritrace_model::{Model, ModelError, Runner};
use veritrace_protocol::{AlgebraicCheck, Recompute, Statement};

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
    /// With the scenario's `layer_check` `freivalds` or `both`: the verifier's secret key, the
    /// tolerance of the nonlinear parts and the Freivalds bound scale, for [`Recompute::check_sublayers`] (checked on the
    /// CPU, [`veritrace_model::sublayer::KeyedVerifier`]).
    pub keyed: Option<(Arc<VerifierKey>, f64, f64)>,
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
        let (Some((key, tolerance, bound_scale)), Some(decoder)) =
            (&self.keyed, self.model.decoder())
        else {
            return Err(veritrace_protocol::ProtocolError::Engine(
                "this verifier holds no Freivalds key (the scenario's layer_check is recompute)"
                    .into(),
            ));
        };
        KeyedVerifier {
            model: decoder,
            key,
            tolerance: *tolerance,
            bound_scale: *bound_scale,
            map_bounds: None,
        }
        .check_sublayers(statement, layer, rows, input_rows, inputs, context, cell)
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
