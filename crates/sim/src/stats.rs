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
}
