//! `corridor`: a prover that keeps every opened cell inside the calibrated tolerance and spends
//! that slack steering its output.
//!
//! The target is the first generated token, predicted from row `p` (the last prompt row) of the
//! last layer. Let `y0` be the honest token and the margin `m(x) = logit_{y0}(x) −
//! max_{j ≠ y0} logit_j(x)` of a last-layer row `x`; the token flips when `m < 0`. Going up the
//! layers `l = 1 … L`, the prover recomputes row `p`'s cell from its own (already perturbed)
//! inputs, as the verifier will, and adds to row `p` the largest perturbation the layer's
//! threshold `t_l` allows:
//!
//! * `rel_l2`: `δ = −b · t_l · ‖r‖₂ · u` with `r` the recomputed rows `≤ p` of the cell (rows
//!   after `p` only add to the cell's norm, so the check holds whatever is generated later) and
//!   `u` a unit direction;
//! * `max_abs`: `δ = −b · t_l · sign(u)`;
//!
//! with the budget fraction `b ≤ 1`. The direction is the best of a few candidates, each
//! evaluated by propagating through the remaining layers to the margin: the margin's gradient
//! at the last layer (finite differences over the `d` coordinates; the residual stream carries
//! a last-layer direction down to every layer) and `directions` random unit vectors with both
//! signs. Every later cell is then recomputed from the perturbed rows, so it matches the
//! verifier's recompute exactly, and generation continues greedily from the perturbed trace:
//! the committed statement carries the tokens the perturbed trace predicts, so the output rule
//! holds. Every cell is within its threshold: sampling cannot catch this prover, only a tighter
//! threshold can.
//!
//! The probe repeats the attack on the prompt alone at threshold scales `s · t_l` for every
//! scale of [`CORRIDOR_SCALES`], on every layer together and on each layer alone, and records
//! whether the first token flipped; the engine sets these beside the honest false-positive rate
//! at the same scales (held-out honest runs with a cell over `s · t_l`): the trade-off a
//! protocol designer picks from.

use std::collections::BTreeMap;

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use veritrace_model::{CellInputs, Setup};
use veritrace_protocol::tolerance::{Deviation, Metric, PerLayer, TolerancePolicy};

use super::partial::honest_trace;
use super::{AdversaryKind, Behaviour, Committed};
use crate::engine::{stream, Simulation};
use crate::model::SimModel;
use crate::SimError;

/// The threshold scales the probe measures token flips at (multiples of the calibrated
/// thresholds).
pub const CORRIDOR_SCALES: [f64; 10] = [
    0.25, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0,
];

/// A prover that steers its first output token inside the tolerance corridor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Corridor {
    /// Fraction `b ∈ (0, 1]` of each layer's threshold the perturbation uses (default 0.99,
    /// leaving room for the rounding of the perturbed values).
    #[serde(default = "default_budget")]
    pub budget: f64,
    /// Random candidate directions per layer beside the margin gradient, each tried with both
    /// signs (default 4, at most 64).
    #[serde(default = "default_directions")]
    pub directions: u32,
}

fn default_budget() -> f64 {
    0.99
}

fn default_directions() -> u32 {
    4
}

/// What the probe found on one prompt: at each scale of [`CORRIDOR_SCALES`], whether the first
/// generated token flipped with every layer perturbed, and with each layer alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorridorProbe {
    /// Flipped with every layer perturbed, per scale.
    pub all_layers: Vec<bool>,
    /// Flipped with layer `l` alone perturbed, per scale.
    pub per_layer: BTreeMap<u32, Vec<bool>>,
    /// Whether the committed trace (scale 1, every layer) flipped the first token.
    pub committed_flip: bool,
}

impl Behaviour for Corridor {
    fn kind(&self) -> AdversaryKind {
        AdversaryKind::Corridor
    }

    fn label_params(&self) -> String {
        format!(" b={} dirs={}", self.budget, self.directions)
    }

    fn check(&self, _reference: &Setup) -> Result<(), String> {
        if !(self.budget > 0.0 && self.budget <= 1.0) {
            return Err("needs a budget in (0, 1]".into());
        }
        if self.directions > crate::scenario::MAX_DIRECTIONS {
            return Err(format!(
                "directions = {} exceeds the limit {}",
                self.directions,
                crate::scenario::MAX_DIRECTIONS
            ));
        }
        Ok(())
    }

    fn check_model(&self, model: &SimModel) -> Result<(), String> {
        if model.is_encoder() {
            return Err("corridor steers a generated token: it needs a decoder".into());
        }
        Ok(())
    }

    fn commit(
        &self,
        sim: &Simulation,
        ai: u64,
        pi: u64,
        prompt: &[u32],
    ) -> Result<Committed, SimError> {
        let (mut statement, honest) = honest_trace(sim, prompt)?;
        let sc = sim.scenario();
        let reference = sc.reference;
        let cost = sim
            .model()
            .forward_cost(&reference, &reference, honest.tokens as u32);
        let output = sc.prompts.output as usize;
        let attack = Attack::new(sim, self, ai, pi, prompt)?;
        let Some(attack) = attack.filter(|_| output > 0) else {
            return Ok(Committed::plain(statement, honest, cost));
        };
        let layers: Vec<usize> = (1..=attack.layers).collect();
        let mut probe = CorridorProbe {
            all_layers: Vec::new(),
            per_layer: BTreeMap::new(),
            committed_flip: false,
        };
        for &scale in &CORRIDOR_SCALES {
            probe.all_layers.push(attack.run(&layers, scale)?.flipped);
            for &l in &layers {
                let f = attack.run(&[l], scale)?.flipped;
                probe.per_layer.entry(l as u32).or_default().push(f);
            }
        }
        // The committed trace: scale 1, every layer, generation continued greedily.
        let done = attack.run(&layers, 1.0)?;
        let (trace, tokens) = attack.generate(&done.deltas, output)?;
        probe.committed_flip = tokens.first() != statement.output_tokens.first();
        statement.output_tokens = tokens;
        let mut c = Committed::plain(statement, trace, cost);
        c.corridor = Some(probe);
        Ok(c)
    }
}

/// The result of one attack on the prompt: the perturbation per layer and whether the token
/// flipped.
struct Outcome {
    deltas: BTreeMap<usize, Vec<f32>>,
    flipped: bool,
}

/// The prompt-only state an attack starts from.
struct Attack<'a> {
    sim: &'a Simulation,
    corridor: &'a Corridor,
    prompt: &'a [u32],
    /// Honest layers over the prompt rows.
    base: Vec<Vec<f32>>,
    /// Transformer layers `L`.
    layers: usize,
    d: usize,
    chunk: usize,
    /// The steered row, the last prompt row.
    p: usize,
    /// The honest first token.
    y0: usize,
    thresholds: PerLayer,
    metric: Metric,
    /// Random candidate directions (unit vectors), shared by every layer and scale.
    random: Vec<Vec<f64>>,
}

impl<'a> Attack<'a> {
    /// `None` in exact mode (no slack to spend).
    fn new(
        sim: &'a Simulation,
        corridor: &'a Corridor,
        ai: u64,
        pi: u64,
        prompt: &'a [u32],
    ) -> Result<Option<Self>, SimError> {
        let TolerancePolicy::Threshold(policy) = sim.policy() else {
            return Ok(None);
        };
        let sc = sim.scenario();
        let chunk = sc.protocol.chunk as usize;
        let model = sim.model();
        let layers = model.num_layers();
        let n = prompt.len();
        let reference = sc.reference;
        let base = rebuild(sim, prompt, chunk, &BTreeMap::new(), n - 1)?;
        let d = base[0].len() / n;
        let p = n - 1;
        let logits = model.logits_from_row(&reference, &base[layers][p * d..(p + 1) * d])?;
        let y0 = argmax(&logits);
        let mut rng: ChaCha20Rng = stream("veritrace/sim/corridor/v1", sc.seed, ai, pi);
        let random = (0..corridor.directions)
            .map(|_| {
                // A Gaussian vector (Box-Muller), normalized: a uniform direction.
                let v: Vec<f64> = (0..d).map(|_| gaussian(&mut rng)).collect();
                normalize(v)
            })
            .collect();
        Ok(Some(Attack {
            sim,
            corridor,
            prompt,
            base,
            layers,
            d,
            chunk,
            p,
            y0,
            thresholds: policy.thresholds.clone(),
            metric: policy.metric,
            random,
        }))
    }

    /// Recomputes the cell holding row `p` of layer `l` (rows up to `p`) from `h[l − 1]`.
    fn recompute_last(&self, h: &[Vec<f32>], l: usize) -> Result<Vec<f32>, SimError> {
        let j = self.p / self.chunk;
        let d = self.d;
        let rows = self.sim.model().recompute_cell_on(
            self.sim.prover_runner(),
            &self.sim.scenario().reference,
            self.chunk,
            l,
            j,
            CellInputs::Hidden(&h[l - 1][..(self.p + 1) * d]),
        )?;
        Ok(rows)
    }

    /// Recomputes layers `from..=L` of the last cell from `h[from − 1]`, applying `deltas`.
    fn propagate(
        &self,
        h: &mut [Vec<f32>],
        from: usize,
        deltas: &BTreeMap<usize, Vec<f32>>,
    ) -> Result<(), SimError> {
        let start = (self.p / self.chunk) * self.chunk * self.d;
        for l in from..=self.layers {
            let mut rows = self.recompute_last(h, l)?;
            if let Some(delta) = deltas.get(&l) {
                let at = (self.p - (self.p / self.chunk) * self.chunk) * self.d;
                for (x, dx) in rows[at..at + self.d].iter_mut().zip(delta) {
                    *x += dx;
                }
            }
            h[l][start..].copy_from_slice(&rows);
        }
        Ok(())
    }

    /// The margin `logit_{y0} − max_{j ≠ y0} logit_j` of last-layer row `x`.
    fn margin(&self, x: &[f32]) -> Result<f64, SimError> {
        let logits = self
            .sim
            .model()
            .logits_from_row(&self.sim.scenario().reference, x)?;
        let other = logits
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != self.y0)
            .map(|(_, &v)| f64::from(v))
            .fold(f64::NEG_INFINITY, f64::max);
        Ok(f64::from(logits[self.y0]) - other)
    }

    fn last_row<'h>(&self, h: &'h [Vec<f32>]) -> &'h [f32] {
        &h[self.layers][self.p * self.d..(self.p + 1) * self.d]
    }

    /// Finite-difference gradient of the margin at the last layer's row `p`.
    fn margin_gradient(&self, x: &[f32]) -> Result<Vec<f64>, SimError> {
        let m0 = self.margin(x)?;
        let scale = x.iter().map(|v| f64::from(*v).abs()).fold(0.0, f64::max);
        let eps = (scale * 1e-3).max(1e-6);
        let mut g = Vec::with_capacity(self.d);
        let mut y = x.to_vec();
        for i in 0..self.d {
            let keep = y[i];
            y[i] = (f64::from(keep) + eps) as f32;
            let step = f64::from(y[i]) - f64::from(keep);
            g.push(if step == 0.0 {
                0.0
            } else {
                (self.margin(&y)? - m0) / step
            });
            y[i] = keep;
        }
        Ok(g)
    }

    /// The perturbation of layer `l`'s row `p` along unit direction `u` at threshold scale
    /// `scale`, given the recomputed rows `r` (up to `p`) of its cell.
    fn delta(&self, l: usize, scale: f64, r: &[f32], u: &[f64]) -> Vec<f32> {
        let t = self.corridor.budget * scale * self.thresholds.get(l as u32);
        match self.metric {
            Metric::MaxAbs => u
                .iter()
                .map(|&x| (t * x.signum() * f64::from(x != 0.0)) as f32)
                .collect(),
            _ => {
                let norm = r
                    .iter()
                    .map(|&v| f64::from(v) * f64::from(v))
                    .sum::<f64>()
                    .sqrt();
                u.iter().map(|&x| (t * norm * x) as f32).collect()
            }
        }
    }

    /// Attacks `layers` at threshold scale `scale`, greedily from the bottom: each layer's
    /// perturbation the candidate that leaves the lowest margin after propagation.
    fn run(&self, layers: &[usize], scale: f64) -> Result<Outcome, SimError> {
        let mut h = self.base.clone();
        let mut deltas: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
        // The lowest layer whose perturbation `h` does not reflect yet (layers below it are
        // current; `base` is the unperturbed state).
        let mut stale: Option<usize> = None;
        for &l in layers {
            // Current state: propagate what was chosen since the last propagation.
            if let Some(from) = stale.take() {
                self.propagate(&mut h, from, &deltas)?;
            }
            let r = self.recompute_last(&h, l)?;
            let start = (self.p / self.chunk) * self.chunk;
            let r_rows = &r[..(self.p - start + 1) * self.d];
            let grad = self.margin_gradient(self.last_row(&h))?;
            let mut candidates: Vec<Vec<f64>> = Vec::new();
            if grad.iter().any(|g| *g != 0.0) {
                candidates.push(normalize(grad.iter().map(|g| -g).collect()));
            }
            for u in &self.random {
                candidates.push(u.clone());
                candidates.push(u.iter().map(|x| -x).collect());
            }
            let mut best: Option<(f64, Vec<f32>)> = None;
            for u in &candidates {
                let delta = self.delta(l, scale, r_rows, u);
                let mut trial = deltas.clone();
                trial.insert(l, delta.clone());
                let mut g = h.clone();
                self.propagate(&mut g, l, &trial)?;
                let m = self.margin(self.last_row(&g))?;
                if best.as_ref().is_none_or(|(bm, _)| m < *bm) {
                    best = Some((m, delta));
                }
            }
            if let Some((_, delta)) = best {
                deltas.insert(l, self.within(l, scale, &h, delta)?);
                stale = Some(l);
            }
        }
        if let Some(from) = stale {
            self.propagate(&mut h, from, &deltas)?;
        }
        let flipped = self.margin(self.last_row(&h))? < 0.0;
        Ok(Outcome { deltas, flipped })
    }

    /// Shrinks `delta` until the perturbed cell of layer `l` passes the verifier's check at
    /// threshold `scale · t_l` (the rounding of `r + δ` can add a few ulps to the metric).
    fn within(
        &self,
        l: usize,
        scale: f64,
        h: &[Vec<f32>],
        mut delta: Vec<f32>,
    ) -> Result<Vec<f32>, SimError> {
        let r = self.recompute_last(h, l)?;
        let at = (self.p - (self.p / self.chunk) * self.chunk) * self.d;
        let t = scale * self.thresholds.get(l as u32);
        for _ in 0..64 {
            let mut c = r.clone();
            for (x, dx) in c[at..at + self.d].iter_mut().zip(&delta) {
                *x += dx;
            }
            let dev = Deviation::between(&c, &r, None)
                .map_err(|v| SimError::Engine(format!("corridor cell: {v}")))?;
            if dev.get(self.metric).unwrap_or(f64::MAX) <= t {
                return Ok(delta);
            }
            for x in &mut delta {
                *x *= 0.99;
            }
        }
        Ok(vec![0.0; self.d])
    }

    /// The full trace of the prompt and `output` greedily generated tokens with `deltas` added
    /// at row `p`, every cell recomputed from the committed rows below; and the tokens.
    fn generate(
        &self,
        deltas: &BTreeMap<usize, Vec<f32>>,
        output: usize,
    ) -> Result<(veritrace_model::Trace, Vec<u32>), SimError> {
        let model = self.sim.model();
        let reference = self.sim.scenario().reference;
        let (d, chunk) = (self.d, self.chunk);
        let mut seq = self.prompt.to_vec();
        let build = |seq: &[u32]| rebuild(self.sim, seq, chunk, deltas, self.p);
        let mut tokens = Vec::with_capacity(output);
        for _ in 0..output {
            let h = build(&seq)?;
            let q = seq.len() - 1;
            let logits = model.logits_from_row(&reference, &h[self.layers][q * d..(q + 1) * d])?;
            let t = argmax(&logits) as u32;
            tokens.push(t);
            seq.push(t);
        }
        // The committed trace is one forward over the prompt and every generated token
        // (specs/protocol.md §3.3), as the honest prover's.
        let layers = build(&seq)?;
        Ok((
            veritrace_model::Trace {
                tokens: seq.len(),
                hidden: d,
                layers,
                keys: Vec::new(),
            },
            tokens,
        ))
    }
}

/// The layers `h_0 … h_L` of `seq` under the claimed setup on the provers' device, every cell
/// recomputed from the rows below as the verifier will, with `deltas[l]` added to row `p` of
/// layer `l`. With no deltas this is bitwise the honest trace (shape-invariant tiles).
fn rebuild(
    sim: &Simulation,
    seq: &[u32],
    chunk: usize,
    deltas: &BTreeMap<usize, Vec<f32>>,
    p: usize,
) -> Result<Vec<Vec<f32>>, SimError> {
    let model = sim.model();
    let reference = sim.scenario().reference;
    let runner = sim.prover_runner();
    let n = seq.len();
    let emb = model.recompute_cell_on(runner, &reference, n, 0, 0, CellInputs::Tokens(seq))?;
    let d = emb.len() / n.max(1);
    let mut h = vec![emb];
    for l in 1..=model.num_layers() {
        let mut layer = Vec::with_capacity(n * d);
        for j in 0..n.div_ceil(chunk) {
            let end = ((j + 1) * chunk).min(n);
            let mut rows = model.recompute_cell_on(
                runner,
                &reference,
                chunk,
                l,
                j,
                CellInputs::Hidden(&h[l - 1][..end * d]),
            )?;
            if let Some(delta) = deltas.get(&l).filter(|_| (j * chunk..end).contains(&p)) {
                let at = (p - j * chunk) * d;
                for (x, dx) in rows[at..at + d].iter_mut().zip(delta) {
                    *x += dx;
                }
            }
            layer.extend(rows);
        }
        h.push(layer);
    }
    Ok(h)
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

fn normalize(v: Vec<f64>) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if n == 0.0 {
        return v;
    }
    v.into_iter().map(|x| x / n).collect()
}

fn gaussian(rng: &mut ChaCha20Rng) -> f64 {
    let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scenario;

    fn sim(reference: &str) -> Simulation {
        let s = Scenario::from_toml(&format!(
            r#"
name = "t"
model = "tiny"
seed = 5
trials = 4
reference = "{reference}"
[prompts]
count = 2
tokens = 10
output = 3
[protocol]
chunk = 4
samples = 2
mode = "interactive"
[tolerance]
metric = "rel_l2"
target_fpr = 0.5
honest = ["{reference}/splitk=2"]
calibration_prompts = 20
holdout_prompts = 4
[[adversary]]
kind = "corridor"
"#
        ))
        .unwrap();
        Simulation::new(s).unwrap()
    }

    /// With no perturbation the cell-by-cell rebuild and its greedy generation are bitwise the
    /// honest prover's trace and tokens: the attack changes only what it perturbs.
    #[test]
    fn an_unperturbed_rebuild_is_the_honest_run() {
        let sim = sim("bf16/attn=eager");
        let c = Corridor {
            budget: 0.99,
            directions: 2,
        };
        for pi in 0..2 {
            let prompt = sim.prompt(pi);
            let (statement, honest) = honest_trace(&sim, &prompt).unwrap();
            let attack = Attack::new(&sim, &c, 0, pi, &prompt).unwrap().unwrap();
            let (trace, tokens) = attack.generate(&BTreeMap::new(), 3).unwrap();
            assert_eq!(tokens, statement.output_tokens);
            assert!(trace.bitwise_eq(&honest), "prompt {pi}");
        }
    }

    /// The committed trace's every cell is within its layer's threshold against the
    /// verifier's recompute, with the perturbation nonzero.
    #[test]
    fn perturbations_stay_within_the_thresholds() {
        let sim = sim("bf16/attn=eager");
        let c = Corridor {
            budget: 0.99,
            directions: 2,
        };
        let prompt = sim.prompt(0);
        let attack = Attack::new(&sim, &c, 0, 0, &prompt).unwrap().unwrap();
        let done = attack.run(&[1, 2, 3, 4], 1.0).unwrap();
        assert_eq!(done.deltas.len(), 4);
        assert!(done.deltas.values().any(|d| d.iter().any(|x| *x != 0.0)));
        let (trace, tokens) = attack.generate(&done.deltas, 3).unwrap();
        let (mut statement, _) = honest_trace(&sim, &prompt).unwrap();
        statement.output_tokens = tokens;
        let r = sim.recomputer();
        for l in 1..trace.layers.len() {
            for j in 0..trace.tokens.div_ceil(4) {
                let (claimed, recomputed) = r.cell_pair(&statement, &trace, l, j).unwrap();
                let dev = Deviation::between(&claimed, &recomputed, None).unwrap();
                let t = attack.thresholds.get(l as u32);
                assert!(dev.rel_l2 <= t, "cell ({l}, {j}): {} > {t}", dev.rel_l2);
            }
        }
    }
}
