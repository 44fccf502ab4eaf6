//! `weight-perturbation`: a prover whose model differs from the claimed one in a single weight
//! matrix, moved a `factor` of the way to a quantization of it (`W' = W + factor · (Q(W) − W)`:
//! at `factor = 1` exactly that matrix's int8 or int4 error, smaller factors scale it down),
//! claiming the model and the reference setup (issue 16). Everything else it computes
//! honestly, so with the layer check `freivalds` the only check that can see it is the
//! Freivalds check of that matrix, whose acceptance probability the spec states
//! (specs/freivalds.md §4): the report sets the measured detection beside that probability.
//!
//! Each trial draws a fresh verifier key (its own secret, from the trial's stream): the stated
//! probability is over the secret vectors, so the measured rate is too. The prediction, with the
//! layer check `freivalds`, uniform sampling and interactive rounds, is
//! `1 − E_S[Π_{c ∈ S} a_c]^rounds` over the uniform `k`-subsets `S` of the cells, where `a_c` is
//! the cell's acceptance probability `Π erf(B / (√2 ‖e‖))` over the rows and repetitions of that
//! matrix's check (the cell's rows; for `k` and `v` every context row), `e = y − W x` from the
//! committed sub-layer values and the true `W`, and the bounds `B` those of the scenario's key
//! taken as fixed; cells of other layers have `a_c = 1`. With drawn openings
//! (`protocol.context_chunks`, specs/protocol.md §4.4) the `k` and `v` projections are checked
//! at the rows of the cell's own chunk and of the drawn earlier chunks only, so there `a_c` is
//! the own chunk's product times its mean over the uniform draws of the earlier chunks (the
//! other maps are checked at the cell's own rows, drawn or not). With `recompute` the
//! prediction is the hypergeometric law on the cells the verifier's check rejects, as for any
//! kind.

use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use veritrace_model::freivalds::{accept_probability, matrix_weights, perturbed_model, Matrix};
use veritrace_model::setup::Quant;
use veritrace_model::{LlamaModel, Setup};
use veritrace_protocol::{LayerCheck, Mode, SamplingStrategy};

use super::{AdversaryKind, Behaviour, CellPlan, Committed, Plan, Prediction};
use crate::engine::{Outcome, ProverRun, Simulation, Tally};
use crate::model::SimModel;
use crate::SimError;

/// A prover with one perturbed weight matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightPerturbation {
    /// The layer (1-based) of the perturbed matrix.
    pub layer: u32,
    /// Which of its matrices: `q`, `k`, `v`, `o`, `gate`, `up` or `down`.
    pub matrix: Matrix,
    /// The quantization whose error sets the perturbation (`int8-channel`, `int4-g32`, …).
    pub quant: String,
    /// The fraction of that error applied, in (0, 1e6]: 1 is the quantization itself.
    pub factor: f64,
}

impl WeightPerturbation {
    fn quant(&self) -> Result<Quant, String> {
        self.quant
            .parse()
            .map_err(|e: veritrace_model::ModelError| e.to_string())
    }

    /// The perturbed model.
    fn model(&self, claimed: &LlamaModel) -> Result<LlamaModel, SimError> {
        let quant = self.quant().map_err(SimError::Scenario)?;
        perturbed_model(
            claimed,
            self.layer as usize,
            self.matrix,
            quant,
            self.factor,
        )
        .map_err(|e| SimError::Scenario(format!("weight-perturbation: {e}")))
    }
}

impl Behaviour for WeightPerturbation {
    fn kind(&self) -> AdversaryKind {
        AdversaryKind::WeightPerturbation
    }

    fn label_params(&self) -> String {
        format!(
            " L{} {} {} x{}",
            self.layer,
            self.matrix.name(),
            self.quant,
            self.factor
        )
    }

    fn check(&self, _reference: &Setup) -> Result<(), String> {
        self.quant()?;
        if self.matrix == Matrix::LmHead {
            return Err("the matrix is one of q, k, v, o, gate, up, down".into());
        }
        if !(self.factor.is_finite() && self.factor > 0.0 && self.factor <= 1e6) {
            return Err(format!("factor {} must be in (0, 1e6]", self.factor));
        }
        if self.layer == 0 {
            return Err("layer must be at least 1".into());
        }
        Ok(())
    }

    fn check_model(&self, model: &SimModel) -> Result<(), String> {
        let Some(d) = model.decoder() else {
            return Err("a weight perturbation needs a Llama-style decoder".into());
        };
        if self.layer as usize > d.config().num_layers {
            return Err(format!(
                "layer {} is beyond the model's {} layers",
                self.layer,
                d.config().num_layers
            ));
        }
        Ok(())
    }

    /// Its detection depends on the verifier's secret vectors, which fast mode does not draw.
    fn fast_sampled(&self) -> bool {
        false
    }

    fn commit(
        &self,
        sim: &Simulation,
        _ai: u64,
        _pi: u64,
        prompt: &[u32],
    ) -> Result<Committed, SimError> {
        let claimed = sim.model().decoder().ok_or_else(|| {
            SimError::Scenario("a weight perturbation needs a Llama-style decoder".into())
        })?;
        let perturbed: SimModel = Arc::new(self.model(claimed)?);
        let reference = sim.scenario().reference;
        let (s, t) = sim.run_setup(&perturbed, &reference, prompt)?;
        let c = sim
            .model()
            .forward_cost(&reference, &reference, t.tokens as u32);
        Ok(Committed::plain(s, t, c).with_plan(CellPlan::Model(perturbed)))
    }

    /// A session against a verifier with a key of its own (drawn from the trial's stream).
    fn trial(
        &self,
        sim: &Simulation,
        plan: &Plan,
        run: &ProverRun,
        _t: u64,
        rng: &mut ChaCha20Rng,
    ) -> Result<Outcome, SimError> {
        if sim.key().is_none() {
            return sim.session(run, plan.mode, plan.pow_bits, rng);
        }
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let verifier = sim.verifier_with_secret(secret)?;
        sim.session_by(run, plan.mode, plan.pow_bits, rng, verifier)
    }

    fn prediction(
        &self,
        sim: &Simulation,
        plan: &Plan,
        runs: &[ProverRun],
    ) -> Result<Option<Prediction>, SimError> {
        match sim.scenario().protocol.layer_check {
            // recompute: the hypergeometric law on the rejected cells, as for any kind
            LayerCheck::Recompute => Ok(Some(Prediction::expected(
                plan.mean_detection(runs, |r| r.bad.len() as u64)?,
            ))),
            LayerCheck::Freivalds => {
                Ok(freivalds_prediction(sim, self, plan, runs)?.map(Prediction::expected))
            }
            LayerCheck::Both => Ok(None),
        }
    }

    fn note(&self, _plan: &Plan, _outcomes: &Tally) -> Option<String> {
        Some(format!(
            "one weight matrix ({} of layer {}) carries {} of its {} error; each trial's verifier \
             draws its own key, so the rate is over the secret vectors; the prediction is the \
             stated false-accept probability erf(s B / (sqrt 2 |e|))^t per checked row, s the \
             verifier's bound scale for that map",
            self.matrix.name(),
            self.layer,
            if self.factor == 1.0 {
                "all".to_string()
            } else {
                format!("{}x", self.factor)
            },
            self.quant
        ))
    }
}

/// `E_S[Π_{c ∈ S} a_c]` over the uniform `k`-subsets `S` of `n` cells, where the cells not in
/// `a` have `a_c = 1`: `Σ_j P(|S ∩ A| = j) · e_j(a) / C(|A|, j)` with the hypergeometric law and
/// the elementary symmetric polynomials `e_j` (a DP over `a`).
pub(crate) fn expected_product(a: &[f64], n: u64, k: u64) -> f64 {
    let m = a.len();
    let k = k.min(n);
    // e_j(a) / C(m, j) by the DP on means: mean_j over j-subsets
    let mut e = vec![0.0f64; m + 1];
    e[0] = 1.0;
    for (i, &x) in a.iter().enumerate() {
        for j in (1..=i + 1).rev() {
            e[j] += e[j - 1] * x;
        }
    }
    let ln_c = |n: u64, r: u64| -> f64 {
        if r > n {
            return f64::NEG_INFINITY;
        }
        let r = r.min(n - r);
        (0..r)
            .map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln())
            .sum()
    };
    let mut total = 0.0;
    for (j, ej) in e.iter().enumerate().take(m.min(k as usize) + 1) {
        let jj = j as u64;
        let ln_p = ln_c(m as u64, jj) + ln_c(n - m as u64, k - jj) - ln_c(n, k);
        if ln_p == f64::NEG_INFINITY {
            continue;
        }
        total += ln_p.exp() * ej / ln_c(m as u64, jj).exp();
    }
    total
}

/// The prediction of the Freivalds check (see the module docs), over the prover runs.
pub(crate) fn freivalds_prediction(
    sim: &Simulation,
    adversary: &WeightPerturbation,
    plan: &Plan,
    runs: &[ProverRun],
) -> Result<Option<f64>, SimError> {
    let p = &sim.scenario().protocol;
    let (Some(key), Some(claimed)) = (sim.key(), sim.model().decoder()) else {
        return Ok(None);
    };
    if p.layer_check != LayerCheck::Freivalds
        || p.strategy != SamplingStrategy::Uniform
        || plan.mode != Mode::Interactive
    {
        return Ok(None);
    }
    let l = adversary.layer as usize;
    let w = matrix_weights(claimed, l, adversary.matrix)
        .map_err(|e| SimError::Scenario(e.to_string()))?;
    let biases = claimed.qkv_biases(l).map_err(SimError::Model)?;
    let bias = adversary.matrix.bias(biases.as_ref());
    let layout = claimed.sublayer_layout();
    let chunk = p.chunk as usize;
    let mut sum = 0.0;
    for run in runs {
        let Some(sub) = &run.sublayers else {
            return Ok(None);
        };
        let g = run.statement.geometry;
        let n = g.tokens as usize;
        let ctx = layout
            .unpack_context(&sub.context[l - 1])
            .map_err(SimError::Model)?;
        let cell = layout
            .unpack_cell(&sub.cell[l - 1])
            .map_err(SimError::Model)?;
        let (d, q, kv, m) = (layout.hidden, layout.q, layout.kv, layout.mlp);
        let accept = |x: &[f32], y: &[f32], r: usize| -> Result<f64, SimError> {
            accept_probability(
                key,
                &w,
                l,
                adversary.matrix,
                x,
                y,
                r,
                bias,
                sim.freivalds_scale(l, adversary.matrix),
            )
            .map_err(|e| SimError::Scenario(e.to_string()))
        };
        let mut a = Vec::new();
        for j in 0..n.div_ceil(chunk) {
            let (lo, e) = (j * chunk, ((j + 1) * chunk).min(n));
            let rows = |v: &[f32], w: usize, a: usize, b: usize| v[a * w..b * w].to_vec();
            if let (Some(s_c), Matrix::K | Matrix::V) = (p.context_chunks, adversary.matrix) {
                // drawn openings: the key and value projections are checked at the rows of the
                // cell's own chunk and of `s_c` earlier chunks drawn uniformly (within its input
                // rows), each row on its own, so the cell's acceptance is its own chunk's times
                // the mean product over the drawn chunks
                let cell = veritrace_commit::CellId {
                    layer: l as u32,
                    chunk: j as u32,
                };
                let u = run
                    .statement
                    .input_rows(cell)?
                    .map_or(0, |r| r.start as usize);
                let y_all = if adversary.matrix == Matrix::K {
                    &ctx.k
                } else {
                    &ctx.v
                };
                let chunk_accept = |c: usize| -> Result<f64, SimError> {
                    let (a0, b0) = ((c * chunk).max(u), ((c + 1) * chunk).min(e));
                    accept(
                        &rows(&ctx.normed, d, a0, b0),
                        &rows(y_all, kv, a0, b0),
                        b0 - a0,
                    )
                };
                let earlier: Vec<f64> =
                    (u / chunk..j).map(chunk_accept).collect::<Result<_, _>>()?;
                let n_earlier = earlier.len() as u64;
                a.push(
                    chunk_accept(j)?
                        * expected_product(&earlier, n_earlier, u64::from(s_c).min(n_earlier))
                            .clamp(0.0, 1.0),
                );
                continue;
            }
            let (x, y, r) = match adversary.matrix {
                Matrix::Q => (rows(&ctx.normed, d, lo, e), rows(&cell.q, q, lo, e), e - lo),
                Matrix::K => (rows(&ctx.normed, d, 0, e), rows(&ctx.k, kv, 0, e), e),
                Matrix::V => (rows(&ctx.normed, d, 0, e), rows(&ctx.v, kv, 0, e), e),
                Matrix::O => (rows(&cell.attn, q, lo, e), rows(&cell.o, d, lo, e), e - lo),
                Matrix::Gate => (
                    rows(&cell.mlp_in, d, lo, e),
                    rows(&cell.gate, m, lo, e),
                    e - lo,
                ),
                Matrix::Up => (
                    rows(&cell.mlp_in, d, lo, e),
                    rows(&cell.up, m, lo, e),
                    e - lo,
                ),
                Matrix::Down => (
                    rows(&cell.act, m, lo, e),
                    rows(&cell.down, d, lo, e),
                    e - lo,
                ),
                Matrix::LmHead => return Ok(None),
            };
            a.push(accept(&x, &y, r)?);
        }
        let miss = expected_product(&a, plan.cells, plan.k)
            .clamp(0.0, 1.0)
            .powi(plan.rounds as i32);
        sum += 1.0 - miss;
    }
    Ok(Some(sum / runs.len() as f64))
}

#[cfg(test)]
mod tests {
    use super::expected_product;

    #[test]
    fn expected_product_matches_enumeration() {
        // 6 cells, 3 of them with acceptance below 1, every k: enumerate the subsets
        let a = [0.2, 0.5, 0.9];
        let n = 6u64;
        for k in 0..=6u64 {
            let mut sum = 0.0;
            let mut count = 0.0;
            for mask in 0u32..(1 << n) {
                if u64::from(mask.count_ones()) != k {
                    continue;
                }
                let p: f64 = (0..3)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| a[i])
                    .product();
                sum += p;
                count += 1.0;
            }
            let want = sum / count;
            let got = expected_product(&a, n, k);
            assert!((got - want).abs() < 1e-12, "k {k}: {got} vs {want}");
        }
        assert_eq!(expected_product(&[], 10, 3), 1.0);
    }
}
