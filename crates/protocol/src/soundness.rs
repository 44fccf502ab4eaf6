//! Soundness calculator: how likely a cheating prover escapes a sampling verifier, and how many
//! samples a verifier needs.
//!
//! # Model
//!
//! The trace has `N` cells (`n`), of which `b` are *bad* (computed under another setup than the
//! claimed one). The verifier samples `k` distinct cells uniformly at random, i.e. **without
//! replacement**, and recomputes each. The number `X` of bad cells in the sample follows the
//! hypergeometric law
//!
//! ```text
//! P(X = x) = C(b, x) C(N-b, k-x) / C(N, k),   max(0, k-(N-b)) <= x <= min(k, b).
//! ```
//!
//! With perfect detection (every sampled bad cell is caught) the prover escapes iff `X = 0`:
//!
//! ```text
//! P(miss) = C(N-b, k) / C(N, k) = prod_{i=0}^{k-1} (1 - b/(N-i)) = prod_{j=0}^{b-1} (1 - k/(N-j))
//!         <= (1 - b/N)^k        (the with-replacement bound).
//! ```
//!
//! With a *detection power* `p` (a sampled bad cell is caught with probability `p`,
//! independently: tolerance policies can let small deviations through),
//! `P(miss) = E[(1-p)^X]`; by Hoeffding (1963) this is again at most the with-replacement value
//! `(1 - p b/N)^k`.
//!
//! All probabilities are computed in log space (natural log internally, base 2 in the public
//! `log2_*` functions), so that values far below `f64::MIN_POSITIVE` (`2^-3000`, `2^-10^7`)
//! stay representable; the plain-probability functions then return `0.0` on underflow. The cost
//! of one evaluation is `O(min(k, b))` logarithms (under 0.1 s in a release build at
//! `N = 10^7`, `k = b = 5 * 10^6`, with or without a power below 1). A probability of exactly zero has log `-inf`, and the matching number of
//! security bits is `+inf` (JSON has no infinity: `serde_json` writes such a field as `null`;
//! [`SoundnessReport::certain_detection`] says so explicitly).
//!
//! # Security bits and grinding
//!
//! *Interactive* challenges (verifier randomness drawn after the commitment) give
//! `bits = -log2 P(miss)`. In *non-interactive* (Fiat-Shamir) mode the challenge is a hash of the
//! prover's own commitment, so a prover that re-randomizes its commitment can retry: with `A`
//! attempts its success probability is at most `min(1, A P(miss))`, and
//! `bits = -log2 min(1, A P(miss))`. See [`grinding_security_bits`] for how a budget and a
//! proof-of-work translate into attempts (this module counts budgets in **hash evaluations**).
//!
//! # Rounds
//!
//! `r` rounds with independent fresh challenges multiply their miss probabilities (add their
//! `log2`): [`compose_rounds`], [`repeat_rounds`].

use serde::{Deserialize, Serialize};

use crate::{ProtocolError, Result};

/// Most rounds [`soundness_report`] and [`sequential_grinding_security_bits`] accept (2^20).
///
/// More rounds than this are refused as [`ProtocolError::InvalidParameter`]; `r` rounds of `k`
/// samples are never better than one round of `r k` samples, so no protocol needs that many.
pub const MAX_ROUNDS: u32 = 1 << 20;

/// Relative tolerance under which a product such as `f N` counts as the integer next to it
/// (`0.07 * 100` is `7.000000000000001` in binary floating point and means 7 cells, not 8).
const SNAP_REL: f64 = 1e-9;

/// Relative tolerance for rounding up the closed-form with-replacement bound.
const SNAP_REL_BOUND: f64 = 1e-12;

fn invalid(message: impl Into<String>) -> ProtocolError {
    ProtocolError::InvalidParameter(message.into())
}

/// `ceil(x)` for `x >= 0`, except that an `x` within a relative `rel` of an integer counts as that
/// integer.
fn ceil_snapped(x: f64, rel: f64) -> f64 {
    let nearest = x.round();
    if (x - nearest).abs() <= rel * x.abs() {
        nearest
    } else {
        x.ceil()
    }
}

/// Neumaier (improved Kahan) compensated summation: the error stays about one rounding of the
/// total, independent of the number of terms.
#[derive(Debug, Default, Clone, Copy)]
struct CompensatedSum {
    sum: f64,
    compensation: f64,
}

impl CompensatedSum {
    fn add(&mut self, term: f64) {
        let t = self.sum + term;
        if self.sum.abs() >= term.abs() {
            self.compensation += (self.sum - t) + term;
        } else {
            self.compensation += (term - t) + self.sum;
        }
        self.sum = t;
    }

    fn value(&self) -> f64 {
        self.sum + self.compensation
    }
}

fn check_counts(n: u64, b: u64, k: u64) -> Result<()> {
    if b > n {
        return Err(invalid(format!(
            "{b} bad cells is more than the {n} cells of the trace"
        )));
    }
    if k > n {
        return Err(invalid(format!(
            "{k} samples without replacement is more than the {n} cells of the trace"
        )));
    }
    Ok(())
}

fn check_power(power: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&power) {
        return Err(invalid(format!(
            "detection power {power} is not a probability in [0, 1]"
        )));
    }
    Ok(())
}

fn check_log2_probability(log2_p: f64, what: &str) -> Result<()> {
    if log2_p.is_nan() || log2_p > 0.0 {
        return Err(invalid(format!(
            "{what} {log2_p} is not the log2 of a probability (it must be <= 0, -inf allowed)"
        )));
    }
    Ok(())
}

fn check_bits(bits: f64, what: &str) -> Result<()> {
    if !bits.is_finite() || bits < 0.0 {
        return Err(invalid(format!(
            "{what} {bits} must be a finite number >= 0"
        )));
    }
    Ok(())
}

/// `ln C(N-b, k)/C(N, k)` for already validated `b, k <= N`: `-inf` if `k > N-b` (every sample
/// of `k` cells holds a bad one), else a compensated sum of the `min(k, b)` terms
/// `ln(1 - b/(N-i))`, `i < k` (or, symmetrically, `ln(1 - k/(N-j))`, `j < b`), each finite
/// since `b/(N-i) < 1` there, and each accurate to about one rounding (see the loop).
fn ln_miss_exact(n: u64, b: u64, k: u64) -> f64 {
    if b == 0 || k == 0 {
        return 0.0;
    }
    if k > n - b {
        return f64::NEG_INFINITY;
    }
    // C(N-b,k)/C(N,k) = C(N-k,b)/C(N,b): the roles of b and k are symmetric.
    let (terms, other) = if k <= b { (k, b) } else { (b, k) };
    let mut sum = CompensatedSum::default();
    for i in 0..terms {
        // Factor (N-i-other)/(N-i), numerator and denominator exact integers. Near 1 the
        // factor's log is ln_1p(-other/(N-i)); below 1/2 it is ln of the ratio itself (ln_1p of
        // -x with x near 1 would amplify the rounding of x).
        let (num, den) = (n - i - other, n - i);
        sum.add(if num >= den - num {
            (-(other as f64) / den as f64).ln_1p()
        } else {
            (num as f64 / den as f64).ln()
        });
    }
    sum.value().min(0.0)
}

/// `ln E[(1-p)^X]`, `X ~ Hypergeometric(N, b, k)`, for validated inputs with `0 < p < 1`.
///
/// Walks the pmf upwards from the bottom of its support `x0 = max(0, k-(N-b))`, with
/// `ln pmf(x0)` from [`ln_miss_exact`] (if `x0 > 0`, `pmf(x0)` is the probability that the `N-k`
/// cells left out are all bad, i.e. a miss with the roles of good and bad and of sampled and
/// unsampled swapped) and the ratio
/// `pmf(x+1)/pmf(x) = (b-x)(k-x) / ((x+1)(N-b-k+x+1))`, accumulating the terms
/// `ln pmf(x) + x ln(1-p)` with a streaming log-sum-exp. The ratio decreases in `x` (the pmf is
/// log-concave), so once the terms decrease the rest is bounded by a geometric series and the
/// walk stops when that tail is below `e^-40` of the sum.
fn ln_miss_with_power(n: u64, b: u64, k: u64, power: f64) -> f64 {
    let ln_q = (-power).ln_1p(); // ln(1-p), finite and < 0 for 0 < p < 1
    let good = n - b;
    let x0 = k.saturating_sub(good);
    let x1 = k.min(b);
    let ln_first = if x0 == 0 {
        ln_miss_exact(n, b, k)
    } else {
        ln_miss_exact(n, good, n - k)
    };
    let mut term = CompensatedSum::default();
    term.add(ln_first);
    term.add(x0 as f64 * ln_q);
    // Streaming log-sum-exp: total = exp(max) * scaled.
    let mut max = term.value();
    let mut scaled = 1.0_f64;
    let (n128, b128, k128) = (u128::from(n), u128::from(b), u128::from(k));
    let mut x = x0;
    while x < x1 {
        let x128 = u128::from(x);
        let numerator = (b128 - x128) as f64 * (k128 - x128) as f64;
        let denominator = (x128 + 1) as f64 * ((n128 + x128 + 1) - b128 - k128) as f64;
        let step = (numerator / denominator).ln() + ln_q;
        term.add(step);
        x += 1;
        let t = term.value();
        if t > max {
            scaled = scaled * (max - t).exp() + 1.0;
            max = t;
        } else {
            scaled += (t - max).exp();
        }
        if step < 0.0 {
            // Every later step is <= step < 0, so the remaining terms sum to at most
            // exp(t) * e^step / (1 - e^step).
            let ln_tail = t + step - (-step.exp()).ln_1p();
            if ln_tail < max + scaled.ln() - 40.0 {
                break;
            }
        }
    }
    (max + scaled.ln()).min(0.0)
}

fn ln_miss(n: u64, b: u64, k: u64, power: f64) -> Result<f64> {
    check_counts(n, b, k)?;
    check_power(power)?;
    Ok(if power == 0.0 || b == 0 || k == 0 {
        0.0
    } else if power == 1.0 {
        ln_miss_exact(n, b, k)
    } else {
        ln_miss_with_power(n, b, k, power)
    })
}

/// Probability that `k` cells sampled uniformly without replacement from `n` contain none of the
/// `b` bad ones: the hypergeometric `P(X = 0) = C(N-b, k)/C(N, k) = prod_{i<k} (1 - b/(N-i))`.
///
/// Exact up to floating-point rounding (relative error about `1e-15 * |ln P|`), computed as
/// `exp` of a compensated sum of `min(k, b)` terms `ln(1 - b/(N-i))`, so it neither overflows
/// nor loses precision at `N = 10^7`. Edge cases: `b = 0` or `k = 0` gives 1, `k > N-b` gives 0.
/// Underflows to `0.0` below about `2^-1074`; use [`log2_miss_probability`] for those.
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if `b > n` or `k > n`.
pub fn miss_probability(n: u64, b: u64, k: u64) -> Result<f64> {
    Ok(ln_miss(n, b, k, 1.0)?.exp())
}

/// `log2` of [`miss_probability`]: `log2 C(N-b, k) - log2 C(N, k)`, representable far below
/// `2^-1074` (e.g. `-3000`); `-inf` when `k > N-b` (a miss is impossible), `0` when `b = 0` or
/// `k = 0`.
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if `b > n` or `k > n`.
pub fn log2_miss_probability(n: u64, b: u64, k: u64) -> Result<f64> {
    Ok(ln_miss(n, b, k, 1.0)? / std::f64::consts::LN_2)
}

/// `1 - P(miss) = 1 - C(N-b, k)/C(N, k)`, computed as `-expm1(ln P(miss))` so that detection
/// probabilities close to 0 keep their relative precision.
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if `b > n` or `k > n`.
pub fn detection_probability(n: u64, b: u64, k: u64) -> Result<f64> {
    Ok(-ln_miss(n, b, k, 1.0)?.exp_m1())
}

/// Miss probability when a sampled bad cell is caught only with probability `power` (`p`),
/// independently of the others:
///
/// ```text
/// P(miss) = E[(1-p)^X] = sum_x (1-p)^x C(b, x) C(N-b, k-x) / C(N, k),  X ~ Hypergeometric(N, b, k)
/// ```
///
/// computed in log space (log-sum-exp over the pmf, walked from the bottom of its support with
/// the ratio `pmf(x+1)/pmf(x) = (b-x)(k-x) / ((x+1)(N-b-k+x+1))` and stopped once the
/// remaining terms are provably negligible). `power = 1` is exactly [`miss_probability`];
/// `power = 0` gives 1. The result is at most the with-replacement value `(1 - p b/N)^k`.
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if `b > n`, `k > n`, or `power` is not in `[0, 1]`.
pub fn miss_probability_with_power(n: u64, b: u64, k: u64, power: f64) -> Result<f64> {
    Ok(ln_miss(n, b, k, power)?.exp())
}

/// `log2` of [`miss_probability_with_power`]: `log2 E[(1-p)^X]`, representable far below
/// `2^-1074`; `-inf` only when `p = 1` and `k > N-b`.
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if `b > n`, `k > n`, or `power` is not in `[0, 1]`.
pub fn log2_miss_probability_with_power(n: u64, b: u64, k: u64, power: f64) -> Result<f64> {
    Ok(ln_miss(n, b, k, power)? / std::f64::consts::LN_2)
}

/// Number of bad cells a cheat fraction `f` of `n` cells means: `b = ceil(f N)` (a prover that
/// cheats on at least a fraction `f` cheats on at least that many cells), where a product
/// within a relative `1e-9` of an integer counts as that integer (`0.07 * 100` is 7 cells,
/// although it is `7.000000000000001` in binary floating point).
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if `f` is not in `(0, 1]`.
pub fn bad_cells_for_fraction(n: u64, cheat_fraction: f64) -> Result<u64> {
    if !(cheat_fraction > 0.0 && cheat_fraction <= 1.0) {
        return Err(invalid(format!(
            "cheat fraction {cheat_fraction} is not in (0, 1]"
        )));
    }
    let b = ceil_snapped(cheat_fraction * n as f64, SNAP_REL);
    // f <= 1 keeps b <= n up to rounding; `as` saturates, min keeps it in range.
    Ok((b as u64).min(n))
}

/// The closed-form **with-replacement** sample size: the smallest `k` with
/// `(1 - f p)^k <= 2^-lambda`, i.e.
///
/// ```text
/// k = ceil(lambda ln 2 / -ln(1 - f p))
/// ```
///
/// (`lambda = 20`: 132 samples for `f = 10%`, 1380 for `f = 1%`; `lambda = 40`: 264 and 2759).
/// Sampling without replacement never needs more (see [`samples_needed`]). `f p = 1` needs one
/// sample (none for `lambda = 0`). A quotient within a relative `1e-12` of an integer counts as
/// that integer.
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if `f` is not in `(0, 1]`, `power` not in `(0, 1]`,
/// `lambda_bits` is negative or not finite, or the bound exceeds `u64::MAX`.
pub fn with_replacement_samples(cheat_fraction: f64, lambda_bits: f64, power: f64) -> Result<u64> {
    if !(cheat_fraction > 0.0 && cheat_fraction <= 1.0) {
        return Err(invalid(format!(
            "cheat fraction {cheat_fraction} is not in (0, 1]"
        )));
    }
    if !(power > 0.0 && power <= 1.0) {
        return Err(invalid(format!(
            "detection power {power} must be in (0, 1] (with power 0 no number of samples \
             detects anything)"
        )));
    }
    check_bits(lambda_bits, "security level (bits)")?;
    with_replacement_k(cheat_fraction * power, lambda_bits).ok_or_else(|| {
        invalid(format!(
            "the with-replacement bound for cheat fraction {cheat_fraction}, power {power} and \
             {lambda_bits} bits exceeds 2^64 samples"
        ))
    })
}

/// `ceil(lambda ln 2 / -ln(1 - q))` for `0 < q <= 1`, `lambda >= 0`; `None` beyond `u64::MAX`.
fn with_replacement_k(q: f64, lambda_bits: f64) -> Option<u64> {
    if lambda_bits == 0.0 {
        return Some(0);
    }
    if q >= 1.0 {
        return Some(1);
    }
    let per_sample = -(-q).ln_1p(); // > 0 for q > 0 (ln_1p keeps tiny q exact)
    let k = ceil_snapped(
        lambda_bits * std::f64::consts::LN_2 / per_sample,
        SNAP_REL_BOUND,
    );
    // 2^64 is exactly representable; anything at or above it does not fit.
    if k.is_finite() && k < 18_446_744_073_709_551_616.0 {
        Some(k as u64)
    } else {
        None
    }
}

/// Sample sizes for a target security level, as returned by [`samples_needed`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleSize {
    /// Number of cells `N`.
    pub cells: u64,
    /// Cheat fraction `f` asked for.
    pub cheat_fraction: f64,
    /// Bad cells `b = ceil(f N)` the exact computation assumes.
    pub bad_cells: u64,
    /// Target: `P(miss) <= 2^-lambda`.
    pub lambda_bits: f64,
    /// Detection power `p` per sampled bad cell.
    pub power: f64,
    /// Smallest `k` with `E[(1-p)^X] <= 2^-lambda`, `X ~ Hypergeometric(N, b, k)` (sampling
    /// without replacement, exact).
    pub samples: u64,
    /// `log2 P(miss)` at `samples` (at most `-lambda`; `-inf`, `null` in JSON, if a miss is
    /// impossible there).
    pub log2_miss_probability: f64,
    /// The closed-form with-replacement bound `ceil(lambda ln 2 / -ln(1 - f p))` for comparison
    /// (uses `f` as given, not `b/N`); `None` if it exceeds `u64::MAX`. Never less than
    /// `samples`, since `b >= f N` and sampling without replacement never needs more.
    pub with_replacement_samples: Option<u64>,
}

/// The smallest number of samples `k` (without replacement) such that a prover cheating on a
/// fraction `f` of the `n` cells escapes with probability at most `2^-lambda`:
///
/// ```text
/// k = min { k : E[(1-p)^X] <= 2^-lambda },  X ~ Hypergeometric(N, b = ceil(f N), k)
/// ```
///
/// found by binary search on `k` (the miss probability does not increase with `k`), between 0 and
/// the with-replacement bound for `b/N` (an upper bound, by Hoeffding's comparison of sampling
/// with and without replacement), capped at `N`. The closed-form with-replacement bound for `f`
/// ([`with_replacement_samples`]) is reported alongside. `lambda = 0` needs 0 samples.
///
/// The comparison `log2 P(miss) <= -lambda` is made in floating point (relative error about
/// `1e-13`), so a `k` whose exact miss probability lies within that of `2^-lambda` may come out
/// one off.
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if `f` is not in `(0, 1]`, `power` not in `(0, 1]`
/// (power 0 never detects anything), `lambda_bits` is negative or not finite, `n = 0`, or the
/// target is unreachable: with `p < 1` even sampling all `N` cells leaves
/// `P(miss) = (1-p)^b`, so `lambda > -b log2(1-p)` cannot be met.
pub fn samples_needed(
    n: u64,
    cheat_fraction: f64,
    lambda_bits: f64,
    power: f64,
) -> Result<SampleSize> {
    if n == 0 {
        return Err(invalid("a trace of 0 cells cannot be sampled"));
    }
    let b = bad_cells_for_fraction(n, cheat_fraction)?;
    if !(power > 0.0 && power <= 1.0) {
        return Err(invalid(format!(
            "detection power {power} must be in (0, 1] (with power 0 no number of samples \
             detects anything)"
        )));
    }
    check_bits(lambda_bits, "security level (bits)")?;
    if b == 0 {
        return Err(invalid(format!(
            "cheat fraction {cheat_fraction} of {n} cells is no bad cell: nothing to detect"
        )));
    }
    let target = -lambda_bits;
    let log2_at = |k: u64| log2_miss_probability_with_power(n, b, k, power);

    // Upper end of the search: the with-replacement bound for b/N (>= the exact k), capped at N;
    // if floating-point rounding made it fall just short, N itself.
    let mut hi =
        with_replacement_k((b as f64 / n as f64) * power, lambda_bits).map_or(n, |k| k.min(n));
    let mut log2_hi = log2_at(hi)?;
    if log2_hi > target && hi < n {
        hi = n;
        log2_hi = log2_at(hi)?;
    }
    if log2_hi > target {
        return Err(invalid(format!(
            "{lambda_bits} bits are unreachable with detection power {power}: even sampling all \
             {n} cells leaves a miss probability of (1-p)^b = 2^{log2_hi:.4} (b = {b} bad cells)"
        )));
    }
    // Invariant: log2_at(hi) <= target; every k < lo has log2_at(k) > target.
    let mut lo = 0_u64;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let v = log2_at(mid)?;
        if v <= target {
            hi = mid;
            log2_hi = v;
        } else {
            lo = mid + 1;
        }
    }
    Ok(SampleSize {
        cells: n,
        cheat_fraction,
        bad_cells: b,
        lambda_bits,
        power,
        samples: hi,
        log2_miss_probability: log2_hi,
        with_replacement_samples: with_replacement_k(cheat_fraction * power, lambda_bits),
    })
}

/// Security bits of an interactive challenge (verifier randomness drawn after the commitment;
/// no grinding): `-log2 P(miss)`, `+inf` if a miss is impossible.
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if `log2_miss` is NaN or positive.
pub fn interactive_security_bits(log2_miss: f64) -> Result<f64> {
    check_log2_probability(log2_miss, "log2 miss probability")?;
    Ok(-log2_miss + 0.0) // + 0.0 turns -0.0 into 0.0
}

/// `log2` of the number of grinding attempts a budget of `2^log2_hash_budget` transcript hash
/// evaluations buys when each attempt must carry a proof-of-work of `pow_bits`:
///
/// ```text
/// log2 A = max(0, log2_hash_budget - pow_bits)      (A = 2^(g - pow), at least 1)
/// ```
///
/// An attempt costs `2^pow_bits` hash evaluations (the expected work of the proof-of-work; the
/// one hash deriving the challenge is neglected), and every prover makes at least the one attempt
/// it submits.
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if either argument is negative or not finite.
pub fn log2_grinding_attempts(log2_hash_budget: f64, pow_bits: f64) -> Result<f64> {
    check_bits(log2_hash_budget, "grinding budget (log2 hash evaluations)")?;
    check_bits(pow_bits, "proof-of-work bits")?;
    Ok((log2_hash_budget - pow_bits).max(0.0))
}

/// Security bits of a non-interactive (Fiat-Shamir) challenge against a grinding prover.
///
/// The challenge is a hash of the prover's commitment; a prover that can re-randomize its trace
/// commitment (salt, padding, an equivalent encoding) retries until a challenge misses its bad
/// cells. With `A` attempts, by the union bound,
///
/// ```text
/// P(success) <= min(1, A P(miss)),   bits = -log2 min(1, A P(miss)) = max(0, -log2 P(miss) - log2 A).
/// ```
///
/// **Budget reading used here (and by the CLI's `--grind-bits`): hash evaluations.** The
/// prover can evaluate `2^log2_hash_budget` transcript hashes; with a proof-of-work of
/// `pow_bits` per attempt (veritrace's proof of work is once per session, so one attempt fixes
/// every round's challenge) an attempt costs `2^pow_bits` of them, so
/// `A = max(1, 2^(log2_hash_budget - pow_bits))` ([`log2_grinding_attempts`]) and, once the
/// budget exceeds the work, `bits = -log2 P(miss) + pow_bits - log2_hash_budget`: the
/// proof-of-work adds its bits. The budget at which a cheat is expected to succeed is
/// `2^(pow_bits - log2 P(miss))` hashes.
///
/// *Other reading, budget in attempts:* if you count the adversary's budget as `2^g` attempts
/// regardless of their cost, the proof-of-work does not change the success probability
/// `min(1, 2^g P(miss))`; it only makes each attempt cost `2^pow_bits` hashes. To get that
/// reading from this function pass `log2_hash_budget = g + pow_bits` (or `g` and `pow_bits = 0`).
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if `log2_miss` is NaN or positive, or a budget argument is
/// negative or not finite.
pub fn grinding_security_bits(log2_miss: f64, log2_hash_budget: f64, pow_bits: f64) -> Result<f64> {
    check_log2_probability(log2_miss, "log2 miss probability")?;
    let log2_attempts = log2_grinding_attempts(log2_hash_budget, pow_bits)?;
    Ok((-(log2_miss + log2_attempts)).max(0.0))
}

/// Security bits against a grinding prover when each of `rounds` identical rounds draws its
/// Fiat-Shamir challenge *after a fresh prover message of that round* (sequential composition),
/// so the prover can grind round by round instead of all rounds at once.
///
/// Every challenge draw (of any round) misses the bad cells with probability at most `P`
/// (`2^log2_miss_per_round`), independently (random-oracle model); passing all `r` rounds with
/// `T` draws in total needs at least `r` lucky draws among them, so
///
/// ```text
/// P(success) <= P(Binomial(T, P) >= r) <= min(1, C(T, r) P^r),   T = max(A, r),
/// ```
///
/// where `A = 2^log2 A` is the attempt count of [`log2_grinding_attempts`] (budget in hash
/// evaluations, `pow_bits` per draw) and `C(T, r) = prod_{i<r} (T-i)/(r-i)` (for real `T`).
/// veritrace's own transcript does not allow this (one proof-of-work nonce per session fixes
/// every round's challenge, so [`grinding_security_bits`] on the composed probability applies);
/// this bound is for protocols whose rounds each follow a fresh prover message.
/// It is weaker than the single-commitment bound `A P^r` of [`grinding_security_bits`] on the
/// composed probability: with `r = 3`, `A = 2^40`, it loses about `2 * 40 - log2 3! = 77.4`
/// bits. With `r = 1` the two coincide.
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if `log2_miss_per_round` is NaN or positive, `rounds` is
/// 0 or above [`MAX_ROUNDS`], or a budget argument is negative or not finite.
pub fn sequential_grinding_security_bits(
    log2_miss_per_round: f64,
    rounds: u32,
    log2_hash_budget: f64,
    pow_bits: f64,
) -> Result<f64> {
    check_log2_probability(log2_miss_per_round, "log2 miss probability per round")?;
    check_rounds(rounds)?;
    let log2_attempts = log2_grinding_attempts(log2_hash_budget, pow_bits)?;
    if log2_miss_per_round == f64::NEG_INFINITY {
        return Ok(f64::INFINITY);
    }
    let r = f64::from(rounds);
    let t = log2_attempts.exp2().max(r);
    if t.is_infinite() {
        // A budget beyond 2^1024 attempts: C(T, r) P^r is unbounded, success is certain.
        return Ok(0.0);
    }
    let mut log2_choose = CompensatedSum::default();
    for i in 0..rounds {
        let i = f64::from(i);
        log2_choose.add(((t - i) / (r - i)).log2());
    }
    let log2_success = log2_choose.value() + r * log2_miss_per_round;
    Ok((-log2_success).max(0.0))
}

fn check_rounds(rounds: u32) -> Result<()> {
    if rounds == 0 || rounds > MAX_ROUNDS {
        return Err(invalid(format!(
            "rounds must be between 1 and {MAX_ROUNDS}, got {rounds}"
        )));
    }
    Ok(())
}

/// Composes independent rounds, each with its own fresh challenge: the prover escapes only if it
/// escapes every round, so
///
/// ```text
/// P(miss total) = prod_i P(miss_i),   log2 P(miss total) = sum_i log2 P(miss_i).
/// ```
///
/// Takes and returns `log2` probabilities (`-inf` allowed); an empty slice gives 0 (probability
/// 1, the empty product).
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if an entry is NaN or positive.
pub fn compose_rounds(per_round_log2_miss: &[f64]) -> Result<f64> {
    let mut sum = CompensatedSum::default();
    for (i, &l) in per_round_log2_miss.iter().enumerate() {
        check_log2_probability(l, &format!("log2 miss probability of round {i}"))?;
        if l == f64::NEG_INFINITY {
            return Ok(f64::NEG_INFINITY);
        }
        sum.add(l);
    }
    Ok(sum.value() + 0.0)
}

/// `r` identical independent rounds: `log2 P(miss total) = r log2 P(miss per round)`
/// (`r = 0` gives 0, the empty product).
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if `log2_miss_per_round` is NaN or positive.
pub fn repeat_rounds(log2_miss_per_round: f64, rounds: u32) -> Result<f64> {
    check_log2_probability(log2_miss_per_round, "log2 miss probability per round")?;
    Ok(if rounds == 0 {
        0.0
    } else {
        f64::from(rounds) * log2_miss_per_round + 0.0
    })
}

/// Inputs of [`soundness_report`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SoundnessParams {
    /// Number of cells `N` of the trace.
    pub cells: u64,
    /// Bad cells `b`.
    pub bad_cells: u64,
    /// Cells sampled per round, without replacement (`k`).
    pub samples: u64,
    /// Probability `p` that a sampled bad cell is caught (1 for exact recomputation).
    pub power: f64,
    /// Independent rounds `r`, each with a fresh challenge (1 to [`MAX_ROUNDS`]).
    pub rounds: u32,
    /// `log2` of the grinding prover's budget in transcript hash evaluations (`g`).
    pub grind_bits: f64,
    /// Proof-of-work bits required once per session (an attempt, which fixes every round's
    /// challenge, costs `2^pow_bits` hashes).
    pub pow_bits: f64,
}

impl SoundnessParams {
    /// `N`, `b`, `k` with power 1, one round, no grinding budget and no proof-of-work.
    pub fn new(cells: u64, bad_cells: u64, samples: u64) -> Self {
        Self {
            cells,
            bad_cells,
            samples,
            power: 1.0,
            rounds: 1,
            grind_bits: 0.0,
            pow_bits: 0.0,
        }
    }
}

/// Everything the calculator says about one parameter set ([`soundness_report`]).
///
/// Infinite values (a miss that is impossible has `log2` `-inf` and `+inf` security bits) are
/// written as `null` by `serde_json`; `certain_detection` flags that case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoundnessReport {
    /// Number of cells `N`.
    pub cells: u64,
    /// Bad cells `b`.
    pub bad_cells: u64,
    /// Samples per round `k`.
    pub samples: u64,
    /// Detection power `p` per sampled bad cell.
    pub power: f64,
    /// Independent rounds `r`.
    pub rounds: u32,
    /// Proof-of-work bits per challenge.
    pub pow_bits: f64,
    /// `log2` of the grinding budget in hash evaluations.
    pub grind_bits: f64,
    /// `log2` of the attempts that budget buys: `max(0, grind_bits - pow_bits)`.
    pub log2_grinding_attempts: f64,
    /// `log2 P(miss)` of one round: `log2 E[(1-p)^X]`, `X ~ Hypergeometric(N, b, k)`.
    pub log2_miss_per_round: f64,
    /// `P(miss)` over all rounds: `prod` of the per-round values (0.0 on underflow).
    pub miss_probability: f64,
    /// `log2 P(miss)` over all rounds: `r * log2_miss_per_round`.
    pub log2_miss: f64,
    /// `1 - P(miss)` over all rounds.
    pub detection_probability: f64,
    /// True when a miss is impossible (`p = 1`, `k > N - b`): then the `log2` values are `-inf`
    /// and the security bits `+inf` (`null` in JSON).
    pub certain_detection: bool,
    /// Interactive security: `-log2 P(miss)`.
    pub security_bits: f64,
    /// Non-interactive security against grinding when one re-randomized commitment re-draws the
    /// challenges of all rounds: `-log2 min(1, A P(miss))` with `A = 2^log2_grinding_attempts`.
    pub security_bits_grinding: f64,
    /// Non-interactive security when the prover can grind round by round (each round's challenge
    /// follows a fresh prover message): `-log2 min(1, C(T, r) P_round^r)`, `T = max(A, r)`.
    /// Equal to `security_bits_grinding` for one round.
    pub security_bits_grinding_sequential: f64,
    /// `log2` of the hash evaluations at which a grinding prover's bound reaches 1 (all rounds
    /// bound to one commitment): `pow_bits - log2 P(miss)`.
    pub grinding_break_even_bits: f64,
}

/// Computes a [`SoundnessReport`]: the per-round miss probability `E[(1-p)^X]`, its composition
/// over `r` rounds, the detection probability, and security bits interactive
/// ([`interactive_security_bits`]) and against a grinding budget ([`grinding_security_bits`],
/// [`sequential_grinding_security_bits`]).
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if `b > N`, `k > N`, `power` is not in `[0, 1]`, `rounds`
/// is 0 or above [`MAX_ROUNDS`], or `grind_bits` / `pow_bits` are negative or not finite.
pub fn soundness_report(params: &SoundnessParams) -> Result<SoundnessReport> {
    let SoundnessParams {
        cells,
        bad_cells,
        samples,
        power,
        rounds,
        grind_bits,
        pow_bits,
    } = *params;
    check_rounds(rounds)?;
    let log2_miss_per_round = log2_miss_probability_with_power(cells, bad_cells, samples, power)?;
    let log2_attempts = log2_grinding_attempts(grind_bits, pow_bits)?;
    let log2_miss = repeat_rounds(log2_miss_per_round, rounds)?;
    let ln_miss = log2_miss * std::f64::consts::LN_2;
    Ok(SoundnessReport {
        cells,
        bad_cells,
        samples,
        power,
        rounds,
        pow_bits,
        grind_bits,
        log2_grinding_attempts: log2_attempts,
        log2_miss_per_round,
        miss_probability: ln_miss.exp(),
        log2_miss,
        detection_probability: -ln_miss.exp_m1(),
        certain_detection: log2_miss == f64::NEG_INFINITY,
        security_bits: interactive_security_bits(log2_miss)?,
        security_bits_grinding: grinding_security_bits(log2_miss, grind_bits, pow_bits)?,
        security_bits_grinding_sequential: sequential_grinding_security_bits(
            log2_miss_per_round,
            rounds,
            grind_bits,
            pow_bits,
        )?,
        grinding_break_even_bits: pow_bits - log2_miss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_snapped_absorbs_representation_error() {
        assert_eq!(ceil_snapped(0.07 * 100.0, SNAP_REL), 7.0);
        assert_eq!(ceil_snapped(7.2, SNAP_REL), 8.0);
        assert_eq!(ceil_snapped(1e-12, SNAP_REL), 1.0);
        assert_eq!(ceil_snapped(0.0, SNAP_REL), 0.0);
    }

    #[test]
    fn compensated_sum_is_exact_on_cancelling_terms() {
        let mut s = CompensatedSum::default();
        for t in [1e16, 1.0, -1e16, 1.0] {
            s.add(t);
        }
        assert_eq!(s.value(), 2.0);
    }

    #[test]
    fn power_walk_agrees_with_direct_pmf_sum_on_small_cases() {
        // Brute force with f64 binomials for N <= 30, every b, k, at p = 0.37.
        fn choose(n: u64, r: u64) -> f64 {
            if r > n {
                return 0.0;
            }
            (0..r).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
        }
        let p = 0.37_f64;
        for n in [1_u64, 2, 7, 30] {
            for b in 0..=n {
                for k in 0..=n {
                    let direct: f64 = (0..=k.min(b))
                        .map(|x| choose(b, x) * choose(n - b, k - x) * (1.0 - p).powi(x as i32))
                        .sum::<f64>()
                        / choose(n, k);
                    let got = miss_probability_with_power(n, b, k, p).unwrap();
                    assert!(
                        (got - direct).abs() <= 1e-12 * direct.max(1e-300),
                        "N={n} b={b} k={k}: {got} vs {direct}"
                    );
                }
            }
        }
    }

    #[test]
    fn early_stop_keeps_full_precision() {
        // A case where the walk stops long before min(k, b): N = 10^7, b = 10^6, k = 10^6, p = 0.5
        // (mode of X near 10^5, the weighted terms peak near 5.3e4 and are negligible well before
        // 10^6). Compared with a walk that never stops, by summing all terms here.
        let (n, b, k, p) = (10_000_000_u64, 1_000_000_u64, 1_000_000_u64, 0.5_f64);
        let ln_q = (-p).ln_1p();
        let mut t = ln_miss_exact(n, b, k);
        let mut terms = vec![t];
        for x in 0..k.min(b) {
            let r =
                ((b - x) as f64 * (k - x) as f64) / ((x + 1) as f64 * (n - b - k + x + 1) as f64);
            t += r.ln() + ln_q;
            terms.push(t);
        }
        let m = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let full = m + terms.iter().map(|&t| (t - m).exp()).sum::<f64>().ln();
        let got = ln_miss_with_power(n, b, k, p);
        assert!((got - full).abs() <= 1e-9 * full.abs(), "{got} vs {full}");
    }
}
