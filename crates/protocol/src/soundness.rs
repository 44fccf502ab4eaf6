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
//! stay representable; the plain-probability functions then return `0.0` on underflow. A
//! probability of exactly zero has log `-inf`, and the matching number of security bits is `+inf`
//! (JSON has no infinity: `serde_json` writes such a field as `null`;
//! [`SoundnessReport::certain_detection`] says so explicitly).
//!
//! # Cost: exact sums, then closed forms
//!
//! The exact figures are sums of `O(min(k, b))` logarithms (and, when `p < 1`, a pmf walk of up
//! to [`WALK_STEPS_MAX`] more steps). They are used while `min(k, b) <= `[`EXACT_TERMS_MAX`]
//! (`2^23`) and the walk ends within its `3 * 2^20` steps: at most about 0.1 s of CPU for `p = 1`
//! and 0.35 s for `p < 1`, in a release build or the opt-level-1 test profile. Beyond, every function answers
//! in constant time from a closed form that is an **upper bound on the miss probability** (so the
//! security bits are a lower bound), and says which one through [`MissMethod`]
//! ([`miss_estimate`], [`SoundnessReport::miss_method`], [`SampleSize::miss_method`]):
//!
//! * `p = 1`: [`MissMethod::EulerMaclaurinBound`], the Euler-Maclaurin expansion of the log-sum
//!   with a rigorous remainder bound added, exceeding the exact `ln P(miss)` by at most
//!   `1e-11 |ln P(miss)| + 1e-11` (nats) — in effect the exact figure
//!   ([`log2_miss_probability_closed_form`]);
//! * `0 < p < 1`: [`MissMethod::WithReplacementBound`], Hoeffding's with-replacement bound
//!   `min((1 - p b/N)^k, (1 - p k/N)^b)` ([`log2_with_replacement_bound`]): conservative and
//!   nearly tight in the range where security figures matter (`-ln P(miss) = O(k b/N)`, so with
//!   both `k` and `b` above `2^23` that range needs `k, b << N`, where sampling with and without
//!   replacement agree), but looser when `k` and `b` are large fractions of `N`.
//!
//! [`samples_needed`] evaluates the miss probability `O(log N)` times and uses the lower limit
//! [`SEARCH_EXACT_TERMS_MAX`] (`2^16`) per evaluation, so that it too stays well under a second.
//! Every other loop is bounded by its input: [`sequential_grinding_security_bits`] by
//! [`MAX_ROUNDS`] (`2^20` logarithms, about 10 ms), [`compose_rounds`] by its slice.
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

/// Largest `min(k, b)` for which the miss probability is computed exactly (a compensated sum of
/// `min(k, b)` logarithms, and for a power below 1 a pmf walk of at most [`WALK_STEPS_MAX`]
/// steps): `2^23`, about 0.1 s per evaluation for `p = 1` in a release build or in the
/// opt-level-1 test profile. Beyond it the calculator uses a closed-form upper bound
/// ([`MissMethod`]).
pub const EXACT_TERMS_MAX: u64 = 1 << 23;

/// Most steps of the pmf walk for a power below 1 ([`miss_probability_with_power`]):
/// `3 * 2^20`. The walk runs from the bottom of the support to a little past the peak of
/// `pmf(x) (1-p)^x`; a walk that would run longer is abandoned for the closed-form bound, so that
/// one evaluation costs at most `min(k, b)` logarithms and `3 * 2^20` walk steps (about 0.35 s in
/// a release build or at opt-level 1).
pub const WALK_STEPS_MAX: u64 = 3 << 20;

/// The limit that replaces [`EXACT_TERMS_MAX`] inside [`samples_needed`], whose binary search
/// evaluates the miss probability up to about 65 times: `2^16` (under 0.1 s for the whole
/// search).
pub const SEARCH_EXACT_TERMS_MAX: u64 = 1 << 16;

/// Terms next to the steep end of the product summed exactly before the Euler-Maclaurin closed
/// form takes over ([`log2_miss_probability_closed_form`]): its remainder is then below
/// `1/(360 * 1024^3)` nats.
const EM_HEAD_TERMS: u64 = 1024;

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
/// walk stops when that tail is below `e^-40` of the sum. `None` if that takes more than
/// `max_steps` steps (the walk is abandoned, its cost bounded).
fn ln_miss_with_power(n: u64, b: u64, k: u64, power: f64, max_steps: u64) -> Option<f64> {
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
        if x - x0 >= max_steps {
            return None;
        }
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
    Some((max + scaled.ln()).min(0.0))
}

/// `ln(1 - o/x) = ln((x - o)/x)` for `0 <= o < x`, accurate to about one rounding: `ln_1p` near
/// 1, the log of the exact-integer ratio below 1/2 (as in [`ln_miss_exact`]).
fn ln_ratio(x: u64, o: u64) -> f64 {
    let num = x - o;
    if num >= x - num {
        (-(o as f64) / x as f64).ln_1p()
    } else {
        (num as f64 / x as f64).ln()
    }
}

/// `x psi(o/x)` with `psi(u) = (1-u) ln(1-u) + u = sum_{n>=2} u^n / (n(n-1))` (`>= 0`), for
/// `0 <= o < x`: the series below `u = 1/2` (no cancellation for tiny `u`), else
/// `(x - o) ln((x - o)/x) + o`; about ten roundings relative either way.
fn x_psi(x: u64, o: u64) -> f64 {
    let u = o as f64 / x as f64;
    if u < 0.5 {
        let mut power = u * u;
        let mut sum = power / 2.0;
        let mut n = 2.0_f64;
        loop {
            power *= u;
            n += 1.0;
            let term = power / (n * (n - 1.0));
            sum += term;
            if term <= sum * 1e-17 {
                break;
            }
        }
        x as f64 * sum
    } else {
        (x - o) as f64 * ((x - o) as f64 / x as f64).ln() + o as f64
    }
}

/// Euler-Maclaurin upper bound on `ln C(N-b, k)/C(N, k)` for validated `0 < b, k` with
/// `k <= N - b`, in constant time.
///
/// With `t = max(k, b)` and `o = min(k, b)` the log is `S = sum_{x=N-t+1}^{N} g(x)`,
/// `g(x) = ln(x - o) - ln(x)`. The first [`EM_HEAD_TERMS`] terms (the steep end, where `x - o` is
/// smallest) are summed exactly; on the rest, `[a, c] = [N-t+1+head, N]`, Euler-Maclaurin to
/// second order:
///
/// ```text
/// sum_{x=a}^{c} g(x) = I + (g(a) + g(c))/2 + (g'(c) - g'(a))/12 - (g'''(c) - g'''(a))/720 + R,
/// I = int_a^c g = -o ln(c/a) + c psi(o/c) - a psi(o/a),   psi(u) = (1-u) ln(1-u) + u,
/// g'(x) = o / (x (x-o)),   g'''(x) = 2/(x-o)^3 - 2/x^3,
/// |R| <= 2 zeta(4)/(2 pi)^4 int_a^c |g''''| <= (1/720) * 2/(a-o)^3 = 1/(360 (a-o)^3)
/// ```
///
/// (`g'''' = 6/x^4 - 6/(x-o)^4` keeps its sign, and `a - o > 1024`). The result adds `|R|`'s bound
/// and a floating-point margin of `1e-12` times the sum of the magnitudes of all the components
/// (each is accurate to a few roundings, and `psi` is summed as a series for small arguments, so
/// no component cancels catastrophically), so it is never below the exact `S`; it exceeds it by at
/// most twice those, in practice under `1e-11 |S| + 1e-11`. If `t` is within the head the sum
/// is exact.
fn ln_miss_euler_maclaurin(n: u64, b: u64, k: u64) -> f64 {
    let (t, o) = if k >= b { (k, b) } else { (b, k) };
    let lo = n - t + 1; // lo - o = N - k - b + 1 >= 1
    let head = EM_HEAD_TERMS.min(t);
    let mut sum = CompensatedSum::default();
    for x in lo..lo + head {
        sum.add(ln_ratio(x, o));
    }
    if head == t {
        return sum.value().min(0.0);
    }
    let mut magnitude = sum.value().abs();
    let (a, c) = (lo + head, n);
    let of = o as f64;
    let (af, cf) = (a as f64, c as f64);
    let (ad, cd) = ((a - o) as f64, (c - o) as f64);
    let g1 = |x: f64, xd: f64| of / (x * xd);
    let g3 = |x: f64, xd: f64| 2.0 / (xd * xd * xd) - 2.0 / (x * x * x);
    let components = [
        -of * ((c - a) as f64 / af).ln_1p(),
        x_psi(c, o),
        -x_psi(a, o),
        ln_ratio(a, o) / 2.0,
        ln_ratio(c, o) / 2.0,
        g1(cf, cd) / 12.0,
        -g1(af, ad) / 12.0,
        -g3(cf, cd) / 720.0,
        g3(af, ad) / 720.0,
    ];
    for v in components {
        sum.add(v);
        magnitude += v.abs();
    }
    let remainder = 1.0 / (360.0 * ad * ad * ad);
    (sum.value() + 1e-12 * magnitude + remainder).min(0.0)
}

/// Hoeffding's with-replacement upper bound on `ln E[(1-p)^X]`, `X ~ Hypergeometric(N, b, k)`,
/// for validated `0 < p <= 1`: `min(k ln(1 - p b/N), b ln(1 - p k/N))` (the law of `X` is
/// symmetric in `b` and `k`; `(1-p)^x` is convex, so the hypergeometric expectation is at most the
/// binomial one, Hoeffding 1963, Theorem 4). Rounded towards 0: the fraction is shrunk by 8
/// roundings and the result by a relative `1e-12`, so it never falls below the bound itself.
fn ln_with_replacement_bound(n: u64, b: u64, k: u64, power: f64) -> f64 {
    let shrink = 1.0 - 8.0 * f64::EPSILON;
    let nf = n as f64;
    let one = |count: u64, other: u64| -> f64 {
        let q = power * (other as f64 / nf) * shrink;
        count as f64 * (-q).ln_1p()
    };
    let v = one(k, b).min(one(b, k));
    (v * (1.0 - 1e-12)).min(0.0)
}

/// `ln E[(1-p)^X]` and how it was computed: exact while `min(k, b) <= limit`, else the closed
/// form of [`MissMethod`].
fn ln_miss_limited(n: u64, b: u64, k: u64, power: f64, limit: u64) -> Result<(f64, MissMethod)> {
    check_counts(n, b, k)?;
    check_power(power)?;
    let exact = |v: f64| Ok((v, MissMethod::Exact));
    if power == 0.0 || b == 0 || k == 0 {
        return exact(0.0);
    }
    if power == 1.0 {
        if k > n - b {
            return exact(f64::NEG_INFINITY);
        }
        if k.min(b) <= limit {
            return exact(ln_miss_exact(n, b, k));
        }
        return Ok((
            ln_miss_euler_maclaurin(n, b, k),
            MissMethod::EulerMaclaurinBound,
        ));
    }
    let ln_q = (-power).ln_1p();
    if k == n {
        return exact(b as f64 * ln_q); // every bad cell is sampled: X = b
    }
    if b == n {
        return exact(k as f64 * ln_q); // every sampled cell is bad: X = k
    }
    if k.min(b) <= limit {
        if let Some(v) = ln_miss_with_power(n, b, k, power, limit.min(WALK_STEPS_MAX)) {
            return exact(v);
        }
    }
    Ok((
        ln_with_replacement_bound(n, b, k, power),
        MissMethod::WithReplacementBound,
    ))
}

fn ln_miss(n: u64, b: u64, k: u64, power: f64) -> Result<f64> {
    Ok(ln_miss_limited(n, b, k, power, EXACT_TERMS_MAX)?.0)
}

/// How a miss probability was obtained ([`miss_estimate`]; the `miss_method` fields of
/// [`SoundnessReport`] and [`SampleSize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissMethod {
    /// The exact hypergeometric figure, up to floating-point rounding (`min(k, b)` within the
    /// exact limit and, for `p < 1`, the pmf walk within [`WALK_STEPS_MAX`]; or a case with a
    /// closed-form exact value).
    #[default]
    Exact,
    /// `p = 1`, `min(k, b)` above the limit: the Euler-Maclaurin closed form with its remainder
    /// bound added ([`log2_miss_probability_closed_form`]). An upper bound on the miss
    /// probability, above the exact value by at most about `1e-11` relative in the log.
    EulerMaclaurinBound,
    /// `0 < p < 1`, `min(k, b)` above the limit or the pmf walk longer than
    /// [`WALK_STEPS_MAX`]: Hoeffding's with-replacement bound
    /// `min((1 - p b/N)^k, (1 - p k/N)^b)` ([`log2_with_replacement_bound`]). An upper bound on
    /// the miss probability, nearly tight when `k b / N` is moderate, loose when `k` and `b` are
    /// both large fractions of `N`.
    WithReplacementBound,
}

impl MissMethod {
    /// True for [`MissMethod::Exact`]; otherwise the figure is an upper bound on the miss
    /// probability (a lower bound on detection and on security bits).
    pub fn is_exact(self) -> bool {
        self == Self::Exact
    }

    /// One line saying what the figure is, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Exact => "exact hypergeometric",
            Self::EulerMaclaurinBound => {
                "upper bound: Euler-Maclaurin closed form, within about 1e-11 of the exact log; \
                 min(b, k) too large for the exact sum"
            }
            Self::WithReplacementBound => {
                "upper bound: with replacement, min((1 - p b/N)^k, (1 - p k/N)^b); min(b, k) too \
                 large for the exact sum"
            }
        }
    }
}

/// `log2 P(miss)` and how it was obtained, as returned by [`miss_estimate`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MissEstimate {
    /// `log2 E[(1-p)^X]`, or an upper bound on it (see `method`).
    pub log2_miss: f64,
    /// Exact, or which closed-form upper bound.
    pub method: MissMethod,
}

/// `log2 E[(1-p)^X]`, `X ~ Hypergeometric(N, b, k)`, with the method used: exact while
/// `min(k, b) <= `[`EXACT_TERMS_MAX`] (and the pmf walk of a power below 1 ends within
/// [`WALK_STEPS_MAX`] steps), else the constant-time upper bound of [`MissMethod`].
/// Every other `log2_*` / `*_probability*` function returns the same figure without the method.
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if `b > n`, `k > n`, or `power` is not in `[0, 1]`.
pub fn miss_estimate(n: u64, b: u64, k: u64, power: f64) -> Result<MissEstimate> {
    let (ln, method) = ln_miss_limited(n, b, k, power, EXACT_TERMS_MAX)?;
    Ok(MissEstimate {
        log2_miss: ln / std::f64::consts::LN_2,
        method,
    })
}

/// The Euler-Maclaurin closed form the calculator uses for `p = 1` beyond [`EXACT_TERMS_MAX`],
/// at any size: an upper bound on `log2 C(N-b, k)/C(N, k)` in constant time, exceeding it by at
/// most about `1e-11` relative (plus `1e-11` nats absolute); exact (a plain sum) when
/// `max(k, b) <= 1024`; `-inf` when `k > N - b`.
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if `b > n` or `k > n`.
pub fn log2_miss_probability_closed_form(n: u64, b: u64, k: u64) -> Result<f64> {
    check_counts(n, b, k)?;
    let ln = if b == 0 || k == 0 {
        0.0
    } else if k > n - b {
        f64::NEG_INFINITY
    } else {
        ln_miss_euler_maclaurin(n, b, k)
    };
    Ok(ln / std::f64::consts::LN_2)
}

/// Hoeffding's with-replacement upper bound the calculator uses for `p < 1` beyond
/// [`EXACT_TERMS_MAX`], at any size: `log2 min((1 - p b/N)^k, (1 - p k/N)^b)`, never below
/// `log2 E[(1-p)^X]`. Power 0 gives 0.
///
/// # Errors
/// [`ProtocolError::InvalidParameter`] if `b > n`, `k > n`, `n = 0`, or `power` is not in
/// `[0, 1]`.
pub fn log2_with_replacement_bound(n: u64, b: u64, k: u64, power: f64) -> Result<f64> {
    check_counts(n, b, k)?;
    check_power(power)?;
    if n == 0 {
        return Err(invalid("a trace of 0 cells cannot be sampled"));
    }
    if power == 0.0 || b == 0 || k == 0 {
        return Ok(0.0);
    }
    Ok(ln_with_replacement_bound(n, b, k, power) / std::f64::consts::LN_2)
}

/// Probability that `k` cells sampled uniformly without replacement from `n` contain none of the
/// `b` bad ones: the hypergeometric `P(X = 0) = C(N-b, k)/C(N, k) = prod_{i<k} (1 - b/(N-i))`.
///
/// Exact up to floating-point rounding (relative error about `1e-15 * |ln P|`) while
/// `min(k, b) <= `[`EXACT_TERMS_MAX`], computed as `exp` of a compensated sum of `min(k, b)` terms
/// `ln(1 - b/(N-i))`, so it neither overflows nor loses precision at `N = 10^7`; beyond, the
/// constant-time Euler-Maclaurin upper bound ([`MissMethod::EulerMaclaurinBound`], within about
/// `1e-11` relative in the log; [`miss_estimate`] says which). Edge cases: `b = 0` or `k = 0`
/// gives 1, `k > N-b` gives 0.
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
/// remaining terms are provably negligible) while `min(k, b) <= `[`EXACT_TERMS_MAX`] and the walk
/// ends within [`WALK_STEPS_MAX`] steps; beyond, the
/// with-replacement upper bound `min((1 - p b/N)^k, (1 - p k/N)^b)`
/// ([`MissMethod::WithReplacementBound`]; [`miss_estimate`] says which). `k = N` and `b = N` are
/// exact at any size (`(1-p)^b`, `(1-p)^k`). `power = 1` is exactly [`miss_probability`];
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
    /// impossible there), or an upper bound on it (see `miss_method`).
    pub log2_miss_probability: f64,
    /// How `log2_miss_probability` was obtained: exact, or a closed-form upper bound when
    /// `min(samples, bad_cells)` exceeds [`SEARCH_EXACT_TERMS_MAX`] (then `samples` suffices but
    /// may exceed the exact minimum).
    #[serde(default)]
    pub miss_method: MissMethod,
    /// The closed-form with-replacement bound `ceil(lambda ln 2 / -ln(1 - f p))` for comparison
    /// (uses `f` as given, not `b/N`); `None` if it exceeds `u64::MAX`. Never less than
    /// `samples` when `miss_method` is exact, since `b >= f N` and sampling without replacement
    /// never needs more; under a bound `samples` may exceed it by the bound's safety margin (a
    /// relative `1e-11` or so).
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
/// **Cost.** Each of the `O(log N)` evaluations is exact only while `min(k, b) <=
/// `[`SEARCH_EXACT_TERMS_MAX`] (`2^16`), otherwise the constant-time upper bound of
/// [`MissMethod`]; the whole search stays well under a second at any `N`. Where the bound decides,
/// the returned `k` is the smallest `k` whose *bound* meets the target (with
/// `log2 P(miss)` at `k` and above the target at `k - 1`): enough samples, possibly more than the
/// exact minimum (by a relative `1e-11` for `p = 1`), and `miss_method` says so. The refusal of
/// an unreachable target uses the exact value at `k = N` (`(1-p)^b`, or 0 for `p = 1`).
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
    let log2_at = |k: u64| -> Result<(f64, MissMethod)> {
        let (ln, method) = ln_miss_limited(n, b, k, power, SEARCH_EXACT_TERMS_MAX)?;
        Ok((ln / std::f64::consts::LN_2, method))
    };

    // Upper end of the search: the with-replacement bound for b/N (>= the exact k), capped at N;
    // if floating-point rounding made it fall just short, N itself.
    let mut hi =
        with_replacement_k((b as f64 / n as f64) * power, lambda_bits).map_or(n, |k| k.min(n));
    let (mut log2_hi, mut method_hi) = log2_at(hi)?;
    if log2_hi > target && hi < n {
        hi = n;
        (log2_hi, method_hi) = log2_at(hi)?;
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
        let (v, method) = log2_at(mid)?;
        if v <= target {
            hi = mid;
            log2_hi = v;
            method_hi = method;
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
        miss_method: method_hi,
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
    /// How the per-round miss probability was obtained: exact, or (when `min(samples,
    /// bad_cells)` exceeds [`EXACT_TERMS_MAX`]) a closed-form upper bound, so that every miss
    /// figure above is an upper bound and every detection and security figure a lower bound.
    #[serde(default)]
    pub miss_method: MissMethod,
}

/// Computes a [`SoundnessReport`]: the per-round miss probability `E[(1-p)^X]`, its composition
/// over `r` rounds, the detection probability, and security bits interactive
/// ([`interactive_security_bits`]) and against a grinding budget ([`grinding_security_bits`],
/// [`sequential_grinding_security_bits`]). Constant time beyond [`EXACT_TERMS_MAX`] (see
/// [`MissMethod`]); at most about 0.1 s below it, plus `O(rounds)` for the sequential bound.
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
    let MissEstimate {
        log2_miss: log2_miss_per_round,
        method: miss_method,
    } = miss_estimate(cells, bad_cells, samples, power)?;
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
        miss_method,
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
        let got = ln_miss_with_power(n, b, k, p, u64::MAX).unwrap();
        assert!((got - full).abs() <= 1e-9 * full.abs(), "{got} vs {full}");
    }
}
