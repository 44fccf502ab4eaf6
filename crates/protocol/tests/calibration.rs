//! Tests of calibration from independent honest runs: the order-statistic rank (known answers
//! computed exactly with Python's `fractions`), the runs a target needs, the rounding floor,
//! held-out evidence, the policy file's validation, and a property test that the bound holds
//! on fresh data.

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use veritrace_commit::Dtype;
use veritrace_protocol::calibration::{
    calibrate_runs, fit_exponential_tail, gamma_quantile, holdout_evidence,
    regularized_lower_gamma, runs_needed, tail_check_critical, tail_runs_needed, ucb_rank,
    unit_roundoff, CalibratedPolicy, CalibrationMethod, HonestRun, RunCalibrationConfig,
    ThresholdSource, POLICY_FORMAT,
};
use veritrace_protocol::tolerance::{Metric, TolerancePolicy};
use veritrace_protocol::ProtocolError;

fn config(target: f64, samples: u32) -> RunCalibrationConfig {
    RunCalibrationConfig {
        metric: Metric::RelL2,
        target_session_fpr: target,
        samples,
        rounds: 1,
        confidence: 0.95,
        margin: 1.0,
        rounding_dtype: Dtype::F32,
        method: CalibrationMethod::OrderStatistic,
    }
}

/// A run of `layers` layers with `cells` cells each; cell values from `dev(layer, cell)`.
fn run(
    variation: &str,
    layers: u32,
    cells: u32,
    mut dev: impl FnMut(u32, u32) -> f64,
) -> HonestRun {
    let mut r = HonestRun::new(variation);
    for l in 0..layers {
        for c in 0..cells {
            // claimed = recomputed + the deviation on the second element of a unit vector, so
            // the relative L2 is exactly |d| (as an f32).
            let d = dev(l, c) as f32;
            let recomputed = [1.0f32, 0.0, 0.0, 0.0];
            let claimed = [1.0, d, 0.0, 0.0];
            r.add_cell(l, Metric::RelL2, &claimed, &recomputed).unwrap();
        }
    }
    r
}

fn uniform(rng: &mut ChaCha20Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Known answers: the smallest rank r with P(Bin(n, 1 - a) <= r - 1) >= g, computed exactly
/// with Python's fractions.Fraction and math.comb.
#[test]
fn ucb_rank_known_answers() {
    for (n, a, g, want) in [
        (100u64, 0.05, 0.95, Some(99u64)),
        (59, 0.05, 0.95, Some(59)),
        (58, 0.05, 0.95, None),
        (500, 0.01, 0.99, Some(500)),
        (1000, 0.01, 0.95, Some(996)),
        (2400, 0.002, 0.99, Some(2400)),
        (3000, 0.001, 0.95, Some(3000)),
        (10000, 0.002, 0.99, Some(9991)),
        (5000, 0.001, 0.95, Some(4999)),
        (20000, 0.01, 0.95, Some(19824)),
    ] {
        assert_eq!(ucb_rank(n, a, g), want, "n={n} a={a} g={g}");
    }
}

#[test]
fn runs_needed_matches_the_rank() {
    for (a, g) in [(0.05, 0.95), (0.002, 0.99), (1e-3, 0.95), (2e-4, 0.99)] {
        let n = runs_needed(a, g);
        assert!(ucb_rank(n, a, g).is_some(), "a={a} g={g} n={n}");
        assert!(ucb_rank(n - 1, a, g).is_none(), "a={a} g={g} n={n}");
    }
}

#[test]
fn too_few_runs_say_how_many_are_needed() {
    let runs: Vec<HonestRun> = (0..100).map(|_| run("v", 3, 4, |_, _| 1e-7)).collect();
    // L = 3, k = 8: alpha = 0.01 / 3, gamma_l = 1 - 0.05/3.
    let err = calibrate_runs(&runs, &config(0.01, 8)).unwrap_err();
    let needed = runs_needed(0.01 / 3.0, 1.0 - 0.05 / 3.0);
    match err {
        ProtocolError::InsufficientEvidence {
            needed: n, have, ..
        } => {
            assert_eq!((n, have), (needed, 100));
        }
        other => panic!("{other:?}"),
    }
    assert!(needed > 1000 && needed < 1300, "{needed}");
}

#[test]
fn alpha_uses_the_smaller_of_checks_and_layers() {
    let c = config(0.01, 2);
    assert_eq!(c.cell_alpha(5), 0.005);
    let c = config(0.01, 16);
    assert_eq!(c.cell_alpha(5), 0.002);
    assert!((c.layer_confidence(5) - 0.99).abs() < 1e-15);
}

#[test]
fn thresholds_are_the_ranked_maxima_and_never_zero() {
    // Layer 0 bit-exact in every run; layers 1, 2 noisy with per-run maxima i * 1e-9.
    let n = runs_needed(0.05 / 3.0, 1.0 - 0.05 / 3.0) as usize + 50;
    let mut runs = Vec::new();
    for i in 0..n {
        let v = if i % 2 == 0 { "splitk=2" } else { "decode" };
        runs.push(run(v, 3, 4, |l, c| {
            if l == 0 {
                0.0
            } else if c == 0 {
                (i + 1) as f64 * 1e-9 * f64::from(l)
            } else {
                1e-12
            }
        }));
    }
    let cal = calibrate_runs(&runs, &config(0.05, 8)).unwrap();
    assert_eq!(cal.layers, 3);
    assert_eq!(cal.runs, n as u64);
    assert_eq!(cal.variations.len(), 2);
    assert_eq!(cal.variations[0].runs + cal.variations[1].runs, n as u64);
    let rank = cal.per_layer[&1].rank;
    assert!(rank <= n as u64);
    for l in 0..3u32 {
        let t = &cal.per_layer[&l];
        assert!(t.threshold > 0.0, "layer {l}");
        if l == 0 {
            assert_eq!(t.source, ThresholdSource::RoundingFloor);
            assert_eq!(t.exact_runs, n as u64);
            // One element off by one unit roundoff in a cell of 4 elements: u / 2.
            assert_eq!(t.threshold, unit_roundoff(Dtype::F32) / 2.0);
        } else {
            assert_eq!(t.source, ThresholdSource::OrderStatistic);
            let want = (rank as f64 * 1e-9 * f64::from(l)) as f32 as f64;
            assert!(
                (t.order_statistic - want).abs() <= want * 1e-6,
                "layer {l}: {} vs {want}",
                t.order_statistic
            );
        }
    }
    assert_eq!(cal.floored_layers(), vec![0]);
}

#[test]
fn rounding_floor_follows_the_dtype() {
    assert_eq!(unit_roundoff(Dtype::Bf16), 1.0 / 256.0);
    assert_eq!(unit_roundoff(Dtype::F16), 1.0 / 2048.0);
    let n = runs_needed(0.1, 0.95) as usize;
    let runs: Vec<HonestRun> = (0..n).map(|_| run("v", 1, 2, |_, _| 0.0)).collect();
    let mut c = config(0.1, 1);
    c.rounding_dtype = Dtype::Bf16;
    let cal = calibrate_runs(&runs, &c).unwrap();
    assert_eq!(cal.per_layer[&0].threshold, 1.0 / 256.0 / 2.0);
    c.metric = Metric::MaxAbs;
    let mut runs = Vec::new();
    for _ in 0..n {
        let mut r = HonestRun::new("v");
        r.add_cell(0, Metric::MaxAbs, &[2.0, 2.0], &[2.0, 2.0])
            .unwrap();
        runs.push(r);
    }
    let cal = calibrate_runs(&runs, &c).unwrap();
    // u times the cell RMS (2).
    assert_eq!(cal.per_layer[&0].threshold, 2.0 / 256.0);
}

#[test]
fn malformed_runs_and_configs_are_refused() {
    let good: Vec<HonestRun> = (0..100).map(|_| run("v", 2, 2, |_, _| 1e-7)).collect();
    let invalid =
        |r: Result<_, ProtocolError>| matches!(r, Err(ProtocolError::InvalidParameter(_)));
    assert!(invalid(calibrate_runs(&[], &config(0.5, 1))));
    for bad in [0.0, 1.0, -0.1, f64::NAN] {
        assert!(invalid(calibrate_runs(&good, &config(bad, 1))), "{bad}");
    }
    let mut c = config(0.5, 1);
    c.margin = 0.5;
    assert!(invalid(calibrate_runs(&good, &c)));
    c.margin = 1.0;
    c.metric = Metric::NoiseScore;
    assert!(invalid(calibrate_runs(&good, &c)));
    // Layers that differ between runs, a gap, a NaN deviation.
    let mut runs = good.clone();
    runs.push(run("v", 3, 2, |_, _| 1e-7));
    assert!(invalid(calibrate_runs(&runs, &config(0.5, 1))));
    let mut gap = HonestRun::new("v");
    gap.add_cell(1, Metric::RelL2, &[1.0], &[1.0]).unwrap();
    assert!(invalid(calibrate_runs(&[gap], &config(0.5, 1))));
    let mut nan = good.clone();
    nan[3].layers.get_mut(&1).unwrap().deviations[0] = f64::NAN;
    assert!(invalid(calibrate_runs(&nan, &config(0.5, 1))));
    // A NaN in the trace itself is refused when the cell is added.
    let mut r = HonestRun::new("v");
    assert!(r.add_cell(0, Metric::RelL2, &[f32::NAN], &[1.0]).is_err());
}

#[test]
fn holdout_counts_runs_and_bounds_them() {
    let thresholds = veritrace_protocol::tolerance::PerLayer::uniform(1e-6);
    let runs: Vec<HonestRun> = (0..200)
        .map(|i| {
            run("h", 2, 5, |l, c| {
                if i == 7 && l == 1 && c == 0 {
                    1e-5
                } else {
                    1e-7
                }
            })
        })
        .collect();
    let h = holdout_evidence(&thresholds, &runs, 2, 1, 0.95).unwrap();
    assert_eq!(h.runs, 200);
    assert_eq!(h.runs_with_exceedance.exceedances, 1);
    assert_eq!(h.cells_over[&1], (1, 1000));
    // One bad cell of 10, k = 2: P(reject) = 1 - C(9,2)/C(10,2) = 0.2, once in 200 runs.
    assert!((h.expected_session_fpr - 0.2 / 200.0).abs() < 1e-12);
    let s = h.sessions_rejected.unwrap();
    assert_eq!(s.samples, 200);
    assert!(s.exceedances <= 1);
    // Every cell over: every session rejects.
    let all = holdout_evidence(
        &veritrace_protocol::tolerance::PerLayer::uniform(1e-9),
        &runs,
        2,
        1,
        0.95,
    )
    .unwrap();
    assert_eq!(all.sessions_rejected.unwrap().exceedances, 200);
    assert!(h.worst_ratio > 9.0 && h.worst_ratio < 11.0);
    assert!(h.runs_with_exceedance.upper > 0.005);
}

fn calibrated_file() -> CalibratedPolicy {
    let n = runs_needed(0.05 / 2.0, 1.0 - 0.05 / 2.0) as usize;
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let runs: Vec<HonestRun> = (0..n)
        .map(|_| run("v", 2, 3, |_, _| 1e-7 * (1.0 + uniform(&mut rng))))
        .collect();
    let cal = calibrate_runs(&runs, &config(0.05, 4)).unwrap();
    let hold = holdout_evidence(&cal.thresholds(), &runs[..10], 4, 1, 0.95).unwrap();
    CalibratedPolicy::new("f32/attn=eager", "tiny", cal, Some(hold))
}

#[test]
fn policy_file_round_trips_and_refuses_inconsistent_files() {
    let p = calibrated_file();
    p.validate().unwrap();
    assert_eq!(p.format, POLICY_FORMAT);
    let json = serde_json::to_string_pretty(&p).unwrap();
    let back: CalibratedPolicy = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    assert!(matches!(
        p.tolerance().unwrap(),
        TolerancePolicy::Threshold(_)
    ));

    let refuse = |f: &dyn Fn(&mut CalibratedPolicy), field: &str| {
        let mut q = p.clone();
        f(&mut q);
        let e = q.validate().unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
    };
    refuse(&|q| q.format = "other".into(), "format");
    refuse(
        &|q| {
            q.policy.thresholds.overrides.remove(&1);
        },
        "layer 1 is missing",
    );
    refuse(
        &|q| {
            q.policy.thresholds.overrides.insert(0, -1.0);
        },
        "threshold of layer 0",
    );
    refuse(
        &|q| {
            q.policy.thresholds.overrides.insert(1, f64::INFINITY);
        },
        "threshold of layer 1",
    );
    refuse(
        &|q| {
            q.policy.thresholds.overrides.insert(1, 0.0);
        },
        "never 0",
    );
    refuse(
        &|q| q.calibration.config.target_session_fpr = 1.5,
        "target_session_fpr",
    );
    refuse(&|q| q.policy.metric = Metric::MaxAbs, "policy.metric");
    refuse(
        &|q| {
            q.policy.thresholds.overrides.insert(5, 1.0);
        },
        "beyond the calibrated layers",
    );
    // Unknown metric and unknown fields are refused by the parser, naming them.
    let bad = json.replacen("\"rel_l2\"", "\"l3\"", 1);
    let e = serde_json::from_str::<CalibratedPolicy>(&bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("l3"), "{e}");
    let bad = json.replacen("\"format\"", "\"extra\": 1, \"format\"", 1);
    let e = serde_json::from_str::<CalibratedPolicy>(&bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("extra"), "{e}");
}

/// Coverage: over 400 independent calibrations on uniform honest noise (the worst of 3 cells
/// has `P(M > t) = 1 - t^3`, known exactly), the thresholds leave more than `alpha` above them
/// in at most about `1 - gamma_l` of calibrations (13 of 800 here). The sample quantile
/// instead of its upper bound (rank `n - floor(alpha n)`, the cell calibration of
/// `tolerance::calibrate`) leaves 403 of 800 below the quantile and fails.
#[test]
fn the_bound_covers_the_quantile() {
    let c = config(0.1, 1); // L = 2, k = 1: alpha = 0.1, gamma_l = 0.975
    let n = runs_needed(0.1, 0.975) as usize + 40;
    let mut misses = 0;
    for seed in 0..400u64 {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let runs: Vec<HonestRun> = (0..n)
            .map(|_| run("v", 2, 3, |_, _| uniform(&mut rng) * 1e-3))
            .collect();
        let cal = calibrate_runs(&runs, &c).unwrap();
        for l in 0..2u32 {
            let t = (cal.per_layer[&l].threshold / 1e-3).min(1.0);
            if 1.0 - t.powi(3) > 0.1 {
                misses += 1;
            }
        }
    }
    // 800 bounds, each failing with probability <= 0.025 (mean <= 20).
    assert!(misses <= 35, "{misses} of 800 bounds below the quantile");
}

/// Known answers: for integer `a`, `P(a, x) = 1 - e^-x sum_{j<a} x^j/j!`, computed with Python's
/// `math.fsum` and `math.lgamma`.
#[test]
fn lower_gamma_known_answers() {
    for (a, x, want) in [
        (1.0, 0.5, 0.3934693402873666),
        (5.0, 2.0, 0.052653017343711084),
        (5.0, 9.0, 0.9450363585048951),
        (50.0, 40.0, 0.07033506665939349),
        (50.0, 60.0, 0.9155933189063095),
        (300.0, 270.0, 0.03803197934004754),
        (300.0, 330.0, 0.9551097761299907),
        (2000.0, 1900.0, 0.011695820380706157),
    ] {
        let got = regularized_lower_gamma(a, x);
        assert!(
            (got - want).abs() <= 1e-10 * want,
            "P({a}, {x}) = {got}, want {want}"
        );
        let q = gamma_quantile(a, want);
        assert!(
            (q - x).abs() <= 1e-8 * x,
            "quantile({a}, {want}) = {q}, want {x}"
        );
    }
    assert_eq!(regularized_lower_gamma(3.0, 0.0), 0.0);
    assert_eq!(regularized_lower_gamma(3.0, f64::NAN), 0.0);
}

#[test]
fn tail_runs_needed_values() {
    assert_eq!(tail_runs_needed(1e-3), 500);
    assert_eq!(tail_runs_needed(2e-5), 500);
    assert_eq!(tail_runs_needed(1e-6), 10_000);
    assert_eq!(tail_runs_needed(0.0), u64::MAX);
}

fn exponential(rng: &mut ChaCha20Rng) -> f64 {
    -(1.0 - uniform(rng)).ln()
}

/// The check's critical value is the 1% point: on exactly exponential data (whose excesses over
/// any order statistic are exponential) it refuses about 1% of fits; a light (uniform) tail is
/// accepted.
#[test]
fn tail_check_refuses_about_one_percent_of_exponential_samples() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let mut refused = 0;
    for _ in 0..2000 {
        let mut x: Vec<f64> = (0..600).map(|_| exponential(&mut rng)).collect();
        x.sort_by(f64::total_cmp);
        let fit = fit_exponential_tail(&x, 1e-4, 0.99).unwrap();
        assert_eq!(fit.excesses, 60);
        assert_eq!(fit.fits, fit.cv2 <= fit.cv2_critical);
        refused += u32::from(!fit.fits);
    }
    // Binomial(2000, 0.01): mean 20, sd 4.4.
    assert!((6..=38).contains(&refused), "{refused} of 2000 refused");
    // Deterministic, and near the asymptotic 1 + 2 z_0.99 / sqrt(m) (2.33) from above (the
    // statistic is right-skewed).
    assert_eq!(tail_check_critical(60), tail_check_critical(60));
    for m in [50u64, 300, 1000] {
        let c = tail_check_critical(m);
        let asymptotic = 1.0 + 2.0 * 2.326 / (m as f64).sqrt();
        assert!(
            c > asymptotic && c < 1.0 + 2.0 * 3.6 / (m as f64).sqrt(),
            "m = {m}: {c}"
        );
    }
    let mut x: Vec<f64> = (0..600).map(|_| uniform(&mut rng)).collect();
    x.sort_by(f64::total_cmp);
    let fit = fit_exponential_tail(&x, 1e-4, 0.99).unwrap();
    assert!(fit.fits && fit.cv2 < 0.5, "{fit:?}");
}

/// The fitted tail's threshold is an upper confidence bound on the (1 - alpha) quantile when the
/// tail is exponential, from far fewer runs than the order statistic needs, and not wildly
/// conservative.
#[test]
fn the_fitted_tail_covers_the_quantile() {
    // L = 2, k = 1: alpha = 1e-4, gamma_l = 0.975; the order statistic would need 36,887 runs.
    let mut c = config(1e-4, 1);
    c.method = CalibrationMethod::ExponentialTail;
    assert_eq!(c.runs_needed(2), 500);
    assert_eq!(runs_needed(1e-4, 0.975), 36_887);
    // Each run's worst of 3 cells, cells Exp(1) * 1e-3: P(M > t) = 1 - (1 - e^-t)^3.
    let truth = -(1.0 - (1.0f64 - 1e-4).powf(1.0 / 3.0)).ln() * 1e-3;
    let (mut misses, mut ratios, mut refused) = (0, Vec::new(), 0);
    for seed in 0..200u64 {
        let mut rng = ChaCha20Rng::seed_from_u64(1000 + seed);
        let runs: Vec<HonestRun> = (0..1000)
            .map(|_| run("v", 2, 3, |_, _| exponential(&mut rng) * 1e-3))
            .collect();
        let cal = match calibrate_runs(&runs, &c) {
            Ok(cal) => cal,
            Err(ProtocolError::InsufficientEvidence { needed, reason, .. }) => {
                // The 1% model check refused a layer, and 1000 runs cannot carry the order
                // statistic.
                assert_eq!(needed, 36_887);
                assert!(reason.contains("heavier than exponential"), "{reason}");
                refused += 1;
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        for l in 0..2u32 {
            let t = &cal.per_layer[&l];
            assert_eq!(t.source, ThresholdSource::ExponentialTail);
            // add_cell stores the f32 deviation: compare at f32 resolution.
            if t.threshold < truth * (1.0 - 1e-6) {
                misses += 1;
            }
            ratios.push(t.threshold / truth);
        }
    }
    // Two checks at 1% each: about 2% of calibrations refused.
    assert!(refused <= 12, "{refused} of 200 calibrations refused");
    ratios.sort_by(f64::total_cmp);
    // Up to 400 bounds, each below the quantile with probability <= 0.025 (mean <= 10).
    assert!(misses <= 20, "{misses} of 400 bounds below the quantile");
    let median = ratios[ratios.len() / 2];
    assert!(median < 1.5, "median threshold at {median} of the quantile");
}

/// A heavy (Pareto) tail fails the check: the calibration falls back to the order statistic
/// when the runs carry it, and otherwise refuses, saying how many runs that needs.
#[test]
fn a_heavy_tail_is_refused_or_falls_back() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let runs: Vec<HonestRun> = (0..3000)
        .map(|_| run("v", 2, 1, |_, _| 1e-6 / (1.0 - uniform(&mut rng))))
        .collect();
    let mut c = config(1e-4, 1);
    c.method = CalibrationMethod::ExponentialTail;
    match calibrate_runs(&runs, &c) {
        Err(ProtocolError::InsufficientEvidence {
            needed,
            have,
            reason,
        }) => {
            assert_eq!((needed, have), (36_887, 3000));
            assert!(reason.contains("heavier than exponential"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut c = config(1e-2, 1);
    c.method = CalibrationMethod::ExponentialTail;
    let cal = calibrate_runs(&runs, &c).unwrap();
    for t in cal.per_layer.values() {
        assert_eq!(t.source, ThresholdSource::OrderStatistic);
        let fit = t.tail.unwrap();
        assert!(!fit.fits && fit.cv2 > fit.cv2_critical);
    }
}

/// `P(Bin(n, q) <= j)` by summing the pmf in log space (independent of the incomplete beta).
fn binomial_cdf(n: u64, q: f64, j: u64) -> f64 {
    let ln_choose =
        |n: u64, i: u64| -> f64 { (1..=i).map(|t| ((n - i + t) as f64 / t as f64).ln()).sum() };
    (0..=j)
        .map(|i| (ln_choose(n, i) + i as f64 * q.ln() + (n - i) as f64 * (1.0 - q).ln()).exp())
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The rank is the smallest whose binomial bound reaches the confidence.
    #[test]
    fn ucb_rank_is_the_smallest_sufficient_rank(
        n in 1u64..400, alpha in 0.005f64..0.5, gamma in 0.5f64..0.999,
    ) {
        let q = 1.0 - alpha;
        match ucb_rank(n, alpha, gamma) {
            None => prop_assert!(binomial_cdf(n, q, n - 1) < gamma + 1e-9),
            Some(r) => {
                prop_assert!(r >= 1 && r <= n);
                prop_assert!(binomial_cdf(n, q, r - 1) >= gamma - 1e-9);
                if r >= 2 {
                    prop_assert!(binomial_cdf(n, q, r - 2) < gamma + 1e-9);
                }
            }
        }
    }
}
