//! Analysis of simulation and sweep results for plots: ROC curves of the tolerance test per
//! layer ([`roc`], [`roc_curves`]) and detection against `k` beside the hypergeometric law
//! ([`k_panels`]). Pure functions of a [`SimReport`] or a [`SweepResult`]; `veritrace report`
//! draws them.
//!
//! Work is bounded whatever the input: the dense hypergeometric curve of a series is drawn
//! only within [`MAX_DENSE_K`] values of `k` and [`MAX_DENSE_WORK`] steps of the law (else the
//! engine's predictions are joined), and panels are grouped in time linear in the points (up
//! to a logarithm).

use std::collections::BTreeMap;

use veritrace_protocol::soundness::detection_probability;

use crate::sweep::{Axis, SweepResult};
use crate::{AdversaryKind, AdversaryResult, SimReport};

/// Largest span of `k` (last minus first) over which a series' hypergeometric curve is drawn
/// densely, one value per integer `k`.
pub const MAX_DENSE_K: u64 = 100_000;

/// Largest number of steps of the hypergeometric law (`min(k, b)` per evaluation) spent on one
/// series' curve: a hundred million steps are about a second.
pub const MAX_DENSE_WORK: u64 = 100_000_000;

/// One layer's ROC curve of a threshold test separating an adversary's cells from honest
/// held-out cells: a cell is flagged when its deviation is strictly above the threshold (the
/// verifier's rule). Values that are not finite or equal `f64::MAX` (cells that cannot be
/// compared) count as `+∞`: flagged at every finite threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Roc {
    /// The layer.
    pub layer: u32,
    /// `(false-positive rate, true-positive rate)` from threshold `−∞` (`(1, 1)`) through every
    /// distinct finite value, ascending, to `+∞` (`(0, 0)`); consecutive duplicates removed.
    pub points: Vec<(f64, f64)>,
    /// The calibrated threshold of the layer.
    pub threshold: f64,
    /// The point of the calibrated threshold.
    pub at_threshold: (f64, f64),
    /// Area under the curve (trapezoids; ties count half).
    pub auc: f64,
    /// Honest held-out samples.
    pub honest: usize,
    /// Adversary samples.
    pub adversary: usize,
}

fn comparable(v: f64) -> f64 {
    if v.is_finite() && v < f64::MAX {
        v
    } else {
        f64::INFINITY
    }
}

fn sorted(xs: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = xs.iter().map(|&x| comparable(x)).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Fraction of `sorted` strictly above `t`.
fn above(sorted: &[f64], t: f64) -> f64 {
    (sorted.len() - sorted.partition_point(|&x| x <= t)) as f64 / sorted.len() as f64
}

/// The ROC curve of `layer` from honest held-out samples and an adversary's deviations, with
/// the point of the calibrated `threshold`; `None` when either sample is empty.
pub fn roc(layer: u32, honest: &[f64], adversary: &[f64], threshold: f64) -> Option<Roc> {
    if honest.is_empty() || adversary.is_empty() {
        return None;
    }
    let (h, a) = (sorted(honest), sorted(adversary));
    let mut thresholds: Vec<f64> = h
        .iter()
        .chain(&a)
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    thresholds.sort_by(f64::total_cmp);
    thresholds.dedup();
    let mut points = vec![(1.0, 1.0)];
    for &t in &thresholds {
        let p = (above(&h, t), above(&a, t));
        if points.last() != Some(&p) {
            points.push(p);
        }
    }
    if points.last() != Some(&(0.0, 0.0)) {
        points.push((0.0, 0.0));
    }
    let auc = points
        .windows(2)
        .map(|w| (w[0].0 - w[1].0) * (w[0].1 + w[1].1) / 2.0)
        .sum();
    let threshold = comparable(threshold);
    Some(Roc {
        layer,
        points,
        threshold,
        at_threshold: (above(&h, threshold), above(&a, threshold)),
        auc,
        honest: h.len(),
        adversary: a.len(),
    })
}

/// The ROC curves of every layer of adversary `index` of `report` (layers with both honest
/// held-out samples and deviations).
pub fn roc_curves(report: &SimReport, index: usize) -> Vec<Roc> {
    let Some(a) = report.adversaries.get(index) else {
        return Vec::new();
    };
    let c = &report.calibration;
    a.deviations
        .iter()
        .filter_map(|(&layer, dev)| {
            let honest = c.holdout_samples.get(&layer)?;
            roc(layer, honest, dev, c.thresholds.get(layer))
        })
        .collect()
}

/// Whether ROC curves of an adversary are meaningful: it is not an honest prover, and the
/// verifier catches it by the tolerance test (equivocation is caught by the Merkle check and a
/// late commitment by the API, whatever the deviations of the committed trace; a corridor
/// prover stays within the thresholds by construction).
pub fn roc_of_interest(kind: AdversaryKind) -> bool {
    !matches!(
        kind,
        AdversaryKind::Honest
            | AdversaryKind::OtherHardware
            | AdversaryKind::Equivocation
            | AdversaryKind::LateCommitment
            | AdversaryKind::Corridor
    )
}

/// The interval a plot draws for an adversary: one-sided 95% bounds over its independent prover
/// runs, or, for reports written before they were recorded, the Wilson interval over trials.
pub fn interval(a: &AdversaryResult) -> (f64, f64) {
    if a.runs > 0 {
        a.run_bounds
    } else {
        a.wilson95
    }
}

/// One measured point of detection against k.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KPoint {
    /// Cells challenged per round.
    pub k: f64,
    /// Detection rate.
    pub detection: f64,
    /// One-sided 95% bounds over the independent prover runs (reports that predate them: the
    /// 95% Wilson interval over trials).
    pub wilson95: (f64, f64),
    /// The engine's hypergeometric prediction, if the kind has one.
    pub predicted: Option<f64>,
}

/// One adversary's detection against k.
#[derive(Debug, Clone, PartialEq)]
pub struct KSeries {
    /// Report label.
    pub label: String,
    /// Measured points, ascending k.
    pub points: Vec<KPoint>,
    /// The hypergeometric curve: `(k, P(detect))`, dense over every integer k of the grid's range
    /// when it reproduces every point's prediction, else the predictions joined; empty when the
    /// kind has no prediction.
    pub analytic: Vec<(f64, f64)>,
    /// Whether [`KSeries::analytic`] is dense.
    pub dense: bool,
}

/// Detection against k at one value of the grid's other axes.
#[derive(Debug, Clone, PartialEq)]
pub struct KPanel {
    /// The other axes' values.
    pub fixed: Vec<(Axis, f64)>,
    /// One series per adversary, in scenario order.
    pub series: Vec<KSeries>,
}

/// `1 − (1 − P_hyp(n, b, k))^rounds`, with a mean bad-cell count `b` interpolated linearly
/// between its neighbouring integers; `None` when `b` is not in `0..=n`, `k > n`, or `rounds`
/// exceeds `i32::MAX`. Costs `O(min(k, b))`.
pub fn hypergeometric(n: u64, b: f64, k: u64, rounds: u32) -> Option<f64> {
    if !(b >= 0.0 && b <= n as f64) || k > n {
        return None;
    }
    let lo = b.floor();
    let w = b - lo;
    let p_lo = detection_probability(n, lo as u64, k).ok()?;
    let p = if w > 0.0 {
        let p_hi = detection_probability(n, lo as u64 + 1, k).ok()?;
        (1.0 - w) * p_lo + w * p_hi
    } else {
        p_lo
    };
    Some(1.0 - (1.0 - p).powi(i32::try_from(rounds).ok()?))
}

/// The values of a grid's axes other than `k`.
type Fixed = Vec<(Axis, f64)>;

/// Detection against k from a sweep whose grid has a `k` axis: one panel per combination of the
/// other axes' values (in grid order); empty when the grid has no `k` axis.
pub fn k_panels(sweep: &SweepResult) -> Vec<KPanel> {
    if !sweep.grid.axes.iter().any(|(a, _)| *a == Axis::K) {
        return Vec::new();
    }
    // (the other axes' values, the points that have them), in order of first appearance; the
    // map finds a point's group by the values' bits (equal values, equal bits: grid values
    // are finite and never -0 apart from 0 in practice, and a split group only adds a panel).
    let mut groups: Vec<(Fixed, Vec<usize>)> = Vec::new();
    let mut group_of: BTreeMap<Vec<(Axis, u64)>, usize> = BTreeMap::new();
    for (i, p) in sweep.points.iter().enumerate() {
        let fixed: Fixed = p
            .values
            .iter()
            .filter(|(a, _)| **a != Axis::K)
            .map(|(a, v)| (*a, *v))
            .collect();
        let key: Vec<(Axis, u64)> = fixed.iter().map(|(a, v)| (*a, v.to_bits())).collect();
        match group_of.get(&key) {
            Some(&g) => groups[g].1.push(i),
            None => {
                group_of.insert(key, groups.len());
                groups.push((fixed, vec![i]));
            }
        }
    }
    let mut panels = Vec::new();
    for (fixed, mut members) in groups {
        let k_of = |i: usize| sweep.points[i].values.get(&Axis::K).copied();
        members.retain(|&i| k_of(i).is_some());
        members.sort_by(|&x, &y| k_of(x).unwrap_or(0.0).total_cmp(&k_of(y).unwrap_or(0.0)));
        let Some(&first) = members.first() else {
            continue;
        };
        let adversaries = sweep.points[first].report.adversaries.len();
        let mut series = Vec::new();
        for ai in 0..adversaries {
            let label = sweep.points[first].report.adversaries[ai].label.clone();
            let mut points = Vec::new();
            let mut geometry = Vec::new();
            for &i in &members {
                let r = &sweep.points[i].report;
                let Some(a) = r.adversaries.get(ai).filter(|a| a.label == label) else {
                    continue;
                };
                let k = k_of(i).unwrap_or(0.0);
                points.push(KPoint {
                    k,
                    detection: a.detection,
                    wilson95: interval(a),
                    predicted: a.predicted,
                });
                geometry.push((a.kind, a.cells, a.bad_cells, r.scenario.protocol.rounds));
            }
            let (analytic, dense) = analytic_curve(&points, &geometry);
            series.push(KSeries {
                label,
                points,
                analytic,
                dense,
            });
        }
        panels.push(KPanel { fixed, series });
    }
    panels
}

/// The hypergeometric curve of one series: dense over every integer `k` from the first point's
/// to the last's when the points share one geometry (`(kind, cells, mean bad cells, rounds)`
/// per point, in `geometry`), the kind's prediction comes from the bad-cell count, the law
/// reproduces every point's prediction within 1e-9, and the curve costs at most
/// [`MAX_DENSE_K`] values and [`MAX_DENSE_WORK`] steps; else the points' predictions joined
/// (empty unless every point has one). The flag says whether the curve is dense.
pub fn analytic_curve(
    points: &[KPoint],
    geometry: &[(AdversaryKind, u64, f64, u32)],
) -> (Vec<(f64, f64)>, bool) {
    let joined: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| p.predicted.map(|q| (p.k, q)))
        .collect();
    if joined.len() != points.len() || joined.is_empty() {
        return (joined, false);
    }
    // The dense curve needs one geometry for every point, and a kind whose prediction comes
    // from the bad-cell count (an equivocating prover's comes from the altered cells).
    let Some(&(kind, cells, bad, rounds)) = geometry.first() else {
        return (joined, false);
    };
    let same = geometry
        .iter()
        .all(|g| g.0 == kind && g.1 == cells && g.2 == bad && g.3 == rounds);
    if !same || kind == AdversaryKind::Equivocation {
        return (joined, false);
    }
    // Each evaluation costs min(k, b) steps: the checks and the dense curve stay within
    // MAX_DENSE_WORK steps in all.
    let steps = |k: u64| k.min(bad.ceil().max(0.0) as u64).saturating_add(1);
    let check_work = points
        .iter()
        .fold(0u64, |w, p| w.saturating_add(steps(p.k as u64)));
    if check_work > MAX_DENSE_WORK {
        return (joined, false);
    }
    let reproduces = points.iter().all(|p| {
        hypergeometric(cells, bad, p.k as u64, rounds)
            .zip(p.predicted)
            .is_some_and(|(d, q)| (d - q).abs() <= 1e-9)
    });
    let (k0, k1) = (points[0].k as u64, points[points.len() - 1].k as u64);
    let span = k1.saturating_sub(k0);
    if !reproduces || span > MAX_DENSE_K || span.saturating_mul(steps(k1)) > MAX_DENSE_WORK {
        return (joined, false);
    }
    let dense: Option<Vec<(f64, f64)>> = (k0..=k1)
        .map(|k| hypergeometric(cells, bad, k, rounds).map(|d| (k as f64, d)))
        .collect();
    match dense {
        Some(d) => (d, true),
        None => (joined, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_of_separated_samples() {
        let r = roc(1, &[0.1, 0.2, 0.3], &[1.0, 2.0, f64::MAX], 0.5).unwrap();
        assert_eq!(r.points.first(), Some(&(1.0, 1.0)));
        assert_eq!(r.points.last(), Some(&(0.0, 0.0)));
        assert!((r.auc - 1.0).abs() < 1e-12, "{}", r.auc);
        assert_eq!(r.at_threshold, (0.0, 1.0));
    }

    #[test]
    fn roc_of_identical_samples_is_the_diagonal() {
        let r = roc(0, &[0.0; 4], &[0.0; 8], 0.0).unwrap();
        assert_eq!(r.points, vec![(1.0, 1.0), (0.0, 0.0)]);
        assert!((r.auc - 0.5).abs() < 1e-12);
        assert!(roc(0, &[], &[1.0], 0.0).is_none());
    }

    #[test]
    fn roc_counts_non_comparable_cells_as_flagged() {
        let r = roc(2, &[0.1, f64::MAX], &[f64::MAX, f64::INFINITY], 1.0).unwrap();
        assert_eq!(r.at_threshold, (0.5, 1.0));
        assert_eq!(r.points, vec![(1.0, 1.0), (0.5, 1.0), (0.0, 0.0)]);
    }

    #[test]
    fn dense_curve_matches_the_hypergeometric_law() {
        // 10 cells, 1 bad: detection k/10.
        for k in 1..=10 {
            let d = hypergeometric(10, 1.0, k, 1).unwrap();
            assert!((d - k as f64 / 10.0).abs() < 1e-12);
        }
        // Halfway between 1 and 2 bad cells.
        let d = hypergeometric(10, 1.5, 1, 1).unwrap();
        assert!((d - 0.15).abs() < 1e-12);
        assert!(hypergeometric(10, 11.0, 1, 1).is_none());
        assert!(hypergeometric(10, 1.0, 1, u32::MAX).is_none());
    }

    fn point(k: f64, predicted: f64) -> KPoint {
        KPoint {
            k,
            detection: predicted,
            wilson95: (0.0, 1.0),
            predicted: Some(predicted),
        }
    }

    #[test]
    fn analytic_curve_is_dense_when_the_law_reproduces_the_points() {
        let g = (AdversaryKind::Partial, 10u64, 1.0, 1u32);
        let points = [point(1.0, 0.1), point(4.0, 0.4)];
        let (curve, dense) = analytic_curve(&points, &[g, g]);
        assert!(dense);
        assert_eq!(curve.len(), 4);
        // A prediction the law does not reproduce: the predictions joined.
        let points = [point(1.0, 0.1), point(4.0, 0.5)];
        let (curve, dense) = analytic_curve(&points, &[g, g]);
        assert!(!dense);
        assert_eq!(curve, vec![(1.0, 0.1), (4.0, 0.5)]);
    }

    #[test]
    fn analytic_curve_work_is_bounded() {
        // A claimed geometry of 2^40 cells, half bad, over k from 1 to 10^5: the dense curve
        // would take ~5·10^9 steps; it is refused and the predictions are joined at once.
        let n = 1u64 << 40;
        let g = (AdversaryKind::Partial, n, (n / 2) as f64, 1u32);
        let start = std::time::Instant::now();
        let points = [point(1.0, 0.5), point(100_000.0, 1.0)];
        let (curve, dense) = analytic_curve(&points, &[g, g]);
        assert!(!dense);
        assert_eq!(curve.len(), 2);
        assert!(start.elapsed().as_secs() < 5);
    }
}
