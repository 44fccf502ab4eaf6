//! Interval estimates.

/// The Wilson score interval of `k` successes in `n` trials at normal quantile `z`
/// (`z = 1.96` for 95%): `(p̂ + z²/2n ± z·sqrt(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n)`.
/// `(0, 1)` when `n = 0`.
pub fn wilson(k: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    // The bounds are exactly 0 at k = 0 and 1 at k = n; the formula leaves rounding residue.
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let denom = 1.0 + z2 / n;
    let lo = if k == 0.0 {
        0.0
    } else {
        ((centre - half) / denom).max(0.0)
    };
    let hi = if k == n {
        1.0
    } else {
        ((centre + half) / denom).min(1.0)
    };
    (lo, hi)
}

/// One-sided Clopper–Pearson bounds at `confidence` over `n` independent prover runs, given
/// `k = Σ_r p̂_r` effective detections (`p̂_r` the fraction of trials on run `r` that
/// detected): lower = the `(1 − γ)`-quantile of `Beta(k, n − k + 1)` (0 when `k = 0`), upper =
/// the `γ`-quantile of `Beta(k + 1, n − k)` (1 when `k = n`); `(0, 1)` when `n = 0`.
///
/// With one trial per run this is the exact Clopper–Pearson interval of a binomial over runs.
/// With several trials per run the mean `Σ p̂_r / n` has variance
/// `(Var p_r + E[p_r(1 − p_r)]/m)/n ≤ p(1 − p)/n`, at most that of one trial per run, so the
/// runs, not the trials, are the sample size (Beta quantiles take the fractional `k`). The
/// bounds are each one-sided at `γ`; together a two-sided interval of level `2γ − 1`.
pub fn bounds_over_runs(k: f64, n: u64, confidence: f64) -> (f64, f64) {
    use veritrace_protocol::tolerance::regularized_incomplete_beta as ibeta;
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let k = k.clamp(0.0, n);
    let quantile = |a: f64, b: f64, q: f64| {
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if ibeta(a, b, mid) < q {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    };
    let lower = if k <= 0.0 {
        0.0
    } else {
        quantile(k, n - k + 1.0, 1.0 - confidence)
    };
    let upper = if k >= n {
        1.0
    } else {
        quantile(k + 1.0, n - k, confidence)
    };
    (lower, upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // 8 of 10 at 95%: (0.4902, 0.9433) (Wilson 1927; e.g. Newcombe 1998, table I).
        let (lo, hi) = wilson(8, 10, 1.959_963_984_540_054);
        assert!(
            (lo - 0.4902).abs() < 1e-4 && (hi - 0.9433).abs() < 1e-4,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(0, 50, 1.959_963_984_540_054);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.0714).abs() < 1e-4, "{hi}");
        let (lo, hi) = wilson(50, 50, 1.959_963_984_540_054);
        assert!((lo - 0.9286).abs() < 1e-4 && hi == 1.0);
        assert_eq!(wilson(0, 0, 1.96), (0.0, 1.0));
    }

    #[test]
    fn bounds_over_runs_are_clopper_pearson() {
        // 0 of n: upper = 1 - 0.05^(1/n); 2995 runs put it just under 1e-3, 2994 above.
        let (lo, hi) = bounds_over_runs(0.0, 2995, 0.95);
        assert_eq!(lo, 0.0);
        assert!(
            (hi - (1.0 - 0.05f64.powf(1.0 / 2995.0))).abs() < 1e-12,
            "{hi}"
        );
        assert!(hi < 1e-3 && bounds_over_runs(0.0, 2994, 0.95).1 > 1e-3);
        // 8 of 10 (exact, bisection on the binomial CDF in Python): lower 0.4931, upper 0.9632.
        let (lo, hi) = bounds_over_runs(8.0, 10, 0.95);
        assert!(
            (lo - 0.4931).abs() < 1e-4 && (hi - 0.9632).abs() < 1e-4,
            "{lo} {hi}"
        );
        assert_eq!(bounds_over_runs(4.0, 4, 0.95).1, 1.0);
        assert_eq!(bounds_over_runs(0.0, 0, 0.95), (0.0, 1.0));
        // Fractional effective counts sit between their neighbours.
        let mid = bounds_over_runs(2.5, 10, 0.95);
        assert!(mid.1 > bounds_over_runs(2.0, 10, 0.95).1);
        assert!(mid.1 < bounds_over_runs(3.0, 10, 0.95).1);
    }
}
