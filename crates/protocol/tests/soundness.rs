//! Tests of the soundness calculator against values computed independently in Python, with exact
//! rational arithmetic (`fractions`, `math.comb`) or 40-60 digit `mpmath`; the one-liner that
//! produced each value stands next to it.

// Reference values are pasted with all the digits Python printed, beyond f64's precision.
#![allow(clippy::excessive_precision)]

use proptest::prelude::*;
use veritrace_protocol::soundness::*;
use veritrace_protocol::ProtocolError;

/// `|got - want| <= rel * |want|`.
#[track_caller]
fn close(got: f64, want: f64, rel: f64) {
    assert!(
        (got - want).abs() <= rel * want.abs(),
        "got {got:e}, want {want:e} (relative tolerance {rel:e})"
    );
}

#[track_caller]
fn invalid<T: std::fmt::Debug>(r: Result<T, ProtocolError>) {
    match r {
        Err(ProtocolError::InvalidParameter(msg)) => assert!(!msg.is_empty()),
        other => panic!("expected InvalidParameter, got {other:?}"),
    }
}

// ---------------------------------------------------------------- exact hypergeometric

#[test]
fn anchor_table_n_10k_one_percent_bad() {
    // anchors.md: N = 10^4, 1% bad: k = 100 -> 0.636; k = 300 -> 0.953; k = 460 -> 0.991.
    // python3 -c 'from math import comb; import mpmath as m; m.mp.dps=40; [print(k, m.mpf(comb(9900,k))/comb(10000,k), 1-m.mpf(comb(9900,k))/comb(10000,k)) for k in (100,300,460)]'
    // (exact: the rational C(9900,k)/C(10000,k), evaluated to 40 digits)
    let cases = [
        (
            100,
            0.3641945152395915707332160424654104230998,
            0.6358054847604084292667839575345895769002,
        ),
        (
            300,
            0.04682519170381114751994641508728965484717,
            0.9531748082961888524800535849127103451528,
        ),
        (
            460,
            0.008798341260547372507530408553105619811388,
            0.9912016587394526274924695914468943801886,
        ),
    ];
    for (k, miss, detect) in cases {
        close(miss_probability(10_000, 100, k).unwrap(), miss, 1e-13);
        close(
            detection_probability(10_000, 100, k).unwrap(),
            detect,
            1e-13,
        );
        close(
            log2_miss_probability(10_000, 100, k).unwrap(),
            miss.log2(),
            1e-13,
        );
    }
    // The rounded anchor figures.
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    assert_eq!(
        round3(detection_probability(10_000, 100, 100).unwrap()),
        0.636
    );
    assert_eq!(
        round3(detection_probability(10_000, 100, 300).unwrap()),
        0.953
    );
    assert_eq!(
        round3(detection_probability(10_000, 100, 460).unwrap()),
        0.991
    );
}

#[test]
fn ten_million_cells_match_high_precision() {
    // python3 -c 'import mpmath as m; m.mp.dps=60; g=m.loggamma; N,b,k=10**7,10**5,1380; print((g(N-b+1)-g(N-b-k+1)-g(N+1)+g(N-k+1))/m.log(2))'
    // with (b, k) replaced as listed.
    let cases: [(u64, u64, f64); 6] = [
        (100_000, 1380, -20.01079291224402471339337),
        (1000, 1_000_000, -152.0111009657423625931332),
        (3_000_000, 5_000_000, -3958155.616356152873349492),
        (5_000_000, 5_000_000, -9999988.047503567090696361),
        // k = N - b: the only clean sample is the set of all good cells, P = 1/C(N, b).
        (10, 9_999_990, -210.7438990352686709801824),
        (1, 9_999_999, -23.25349666421153643509224),
    ];
    for (b, k, want) in cases {
        close(
            log2_miss_probability(10_000_000, b, k).unwrap(),
            want,
            1e-11,
        );
    }
    // Exact rational cross-check of the loggamma formula:
    // python3 -c 'from math import comb; import mpmath as m; m.mp.dps=50; print(m.log(comb(10**7-1000,10**4),2)-m.log(comb(10**7,10**4),2))'
    close(
        log2_miss_probability(10_000_000, 1000, 10_000).unwrap(),
        -1.443489009230107215923726,
        1e-13,
    );
}

#[test]
fn tiny_probabilities_stay_representable_in_log2() {
    // python3 -c 'from math import comb; import mpmath as m; m.mp.dps=50; print(m.log(comb(10**6-1000,875000),2)-m.log(comb(10**6,875000),2))'
    let want = -3005.059570401714467206427;
    close(
        log2_miss_probability(1_000_000, 1000, 875_000).unwrap(),
        want,
        1e-12,
    );
    // 2^-3005 underflows f64: the plain probability is 0 and detection is 1, never NaN.
    assert_eq!(miss_probability(1_000_000, 1000, 875_000).unwrap(), 0.0);
    assert_eq!(
        detection_probability(1_000_000, 1000, 875_000).unwrap(),
        1.0
    );
}

#[test]
fn edge_cases() {
    // b = 0 or k = 0: a miss is certain.
    assert_eq!(miss_probability(100, 0, 100).unwrap(), 1.0);
    assert_eq!(miss_probability(100, 100, 0).unwrap(), 1.0);
    assert_eq!(log2_miss_probability(100, 0, 50).unwrap(), 0.0);
    assert_eq!(detection_probability(100, 0, 50).unwrap(), 0.0);
    assert_eq!(miss_probability(0, 0, 0).unwrap(), 1.0);
    // k > N - b: every sample holds a bad cell.
    assert_eq!(miss_probability(100, 10, 91).unwrap(), 0.0);
    assert_eq!(
        log2_miss_probability(100, 10, 91).unwrap(),
        f64::NEG_INFINITY
    );
    assert_eq!(detection_probability(100, 10, 91).unwrap(), 1.0);
    assert_eq!(miss_probability(100, 100, 1).unwrap(), 0.0);
    assert_eq!(miss_probability(1, 1, 1).unwrap(), 0.0);
    // k = N - b: P = 1/C(N, b) = 1/C(100, 10) = 1/17310309456440.
    // python3 -c 'from math import comb; print(comb(100,10))'
    close(
        miss_probability(100, 10, 90).unwrap(),
        1.0 / 17_310_309_456_440.0,
        1e-13,
    );
    // One bad cell: P = 1 - k/N exactly.
    close(miss_probability(1000, 1, 250).unwrap(), 0.75, 1e-15);
    // Invalid inputs.
    invalid(miss_probability(10, 11, 1));
    invalid(miss_probability(10, 1, 11));
    invalid(log2_miss_probability(10, 1, 11));
    invalid(detection_probability(10, 11, 0));
}

// ---------------------------------------------------------------- detection power p < 1

#[test]
fn power_matches_exact_rationals() {
    // python3 -c 'from math import comb; from fractions import Fraction as F; import mpmath as m; m.mp.dps=40; N,b,k,p=10**4,100,300,F(1,2); v=sum(F(comb(b,x)*comb(N-b,k-x))*(1-p)**x for x in range(max(0,k-(N-b)),min(k,b)+1))/comb(N,k); print(m.mpf(v.numerator)/v.denominator, m.log(v.numerator,2)-m.log(v.denominator,2))'
    // with (N, b, k, p) replaced as listed (p as F(1,5), F(37,100)).
    let cases: [(u64, u64, u64, f64, f64, f64); 3] = [
        (
            10_000,
            100,
            300,
            0.5,
            0.2197889126274447904051172,
            -2.185809484309276425249543,
        ),
        // k + b > N: the support starts at x0 = k - (N - b) = 300.
        (
            1000,
            600,
            700,
            0.2,
            6.912089088858662465755118e-41,
            -133.4099300780850034043494,
        ),
        (
            50,
            10,
            20,
            0.37,
            0.1932104013113058152469141,
            -2.37175533240975717024135,
        ),
    ];
    for (n, b, k, p, miss, log2) in cases {
        close(
            miss_probability_with_power(n, b, k, p).unwrap(),
            miss,
            1e-12,
        );
        close(
            log2_miss_probability_with_power(n, b, k, p).unwrap(),
            log2,
            1e-12,
        );
    }
}

#[test]
fn power_at_ten_million_cells_matches_mpmath() {
    // python3 -c 'import mpmath as m; m.mp.dps=50; g=m.loggamma; N,b,k,q=10**7,10**5,10**4,1-m.mpf("0.3"); pm=m.exp(g(N-b+1)-g(N-b-k+1)-g(N+1)+g(N-k+1)); t=m.mpf(0)
    // for x in range(min(k,b)+1): t+=pm*q**x; pm=pm*m.mpf((b-x)*(k-x))/((x+1)*(N-b-k+x+1))
    // print(m.log(t,2))'   (the pmf summed over the whole support, no early stop)
    close(
        log2_miss_probability_with_power(10_000_000, 100_000, 10_000, 0.3).unwrap(),
        -43.35236921367377491494831,
        1e-11,
    );
    // Same script with N,b,k,p = 10**7, 2*10**5, 2*10**5, 0.1.
    close(
        log2_miss_probability_with_power(10_000_000, 200_000, 200_000, 0.1).unwrap(),
        -578.224399099451387346703,
        1e-11,
    );
}

#[test]
fn power_with_half_of_ten_million_cells_bad_and_sampled() {
    // Five million pmf terms; checked against Python floats with lgamma and fsum (absolute error
    // about 1e-8 in the natural log, far below the tolerance):
    // python3 -c 'from math import lgamma as g, log, exp, log1p, fsum; N,b,k,p=10**7,5*10**6,5*10**6,0.5; lq=log1p(-p); lc=lambda n,r: g(n+1)-g(r+1)-g(n-r+1); ts=[lc(b,x)+lc(N-b,k-x)-lc(N,k)+x*lq for x in range(min(k,b)+1)]; m=max(ts); print((m+log(fsum(exp(t-m) for t in ts)))/log(2))'
    close(
        log2_miss_probability_with_power(10_000_000, 5_000_000, 5_000_000, 0.5).unwrap(),
        -2284466.9468105347,
        1e-11,
    );
}

#[test]
fn power_one_is_plain_hypergeometric_and_power_zero_never_detects() {
    for (n, b, k) in [
        (10_000, 100, 300),
        (10_000_000, 100_000, 1380),
        (100, 10, 91),
        (7, 3, 2),
    ] {
        assert_eq!(
            log2_miss_probability_with_power(n, b, k, 1.0).unwrap(),
            log2_miss_probability(n, b, k).unwrap()
        );
        assert_eq!(miss_probability_with_power(n, b, k, 0.0).unwrap(), 1.0);
    }
    for p in [f64::NAN, -0.1, 1.1, f64::INFINITY] {
        invalid(miss_probability_with_power(100, 10, 10, p));
    }
}

// ---------------------------------------------------------------- sample sizes

#[test]
fn samples_needed_anchors_at_ten_million_cells() {
    // anchors.md: f = 10%: k = 132 (lambda 20), 264 (lambda 40); f = 1%: 1380 and 2759 —
    // the with-replacement bound; at N = 10^7 the exact hypergeometric answer is the same.
    // python3 -c 'import mpmath as m; m.mp.dps=60; g=m.loggamma; l2=lambda N,b,k:(g(N-b+1)-g(N-b-k+1)-g(N+1)+g(N-k+1))/m.log(2); N,b,k=10**7,10**5,1380; print(l2(N,b,k), l2(N,b,k-1))'
    //   -> -20.010792912244 (k = 1380 suffices), -19.9962913326982 (k = 1379 does not)
    for (f, lambda, want) in [
        (0.1, 20.0, 132),
        (0.1, 40.0, 264),
        (0.01, 20.0, 1380),
        (0.01, 40.0, 2759),
    ] {
        let s = samples_needed(10_000_000, f, lambda, 1.0).unwrap();
        assert_eq!(s.samples, want, "f = {f}, lambda = {lambda}");
        assert_eq!(s.with_replacement_samples, Some(want));
        assert_eq!(with_replacement_samples(f, lambda, 1.0).unwrap(), want);
        assert_eq!(s.bad_cells, (f * 1e7).round() as u64);
        assert!(s.log2_miss_probability <= -lambda);
        assert!(log2_miss_probability(10_000_000, s.bad_cells, want - 1).unwrap() > -lambda);
    }
}

#[test]
fn samples_needed_is_minimal_without_replacement() {
    // N = 10^4, f = 1%, lambda = 20: sampling without replacement needs 1289, not 1380.
    // python3 -c 'from math import comb; import mpmath as m; m.mp.dps=50; l2=lambda k: m.log(comb(9900,k),2)-m.log(comb(10000,k),2); print(l2(1289), l2(1288))'
    //   -> -20.015406964032, -19.9987513294824
    let s = samples_needed(10_000, 0.01, 20.0, 1.0).unwrap();
    assert_eq!((s.bad_cells, s.samples), (100, 1289));
    close(s.log2_miss_probability, -20.015406964032, 1e-12);
    close(
        log2_miss_probability(10_000, 100, 1288).unwrap(),
        -19.9987513294824,
        1e-12,
    );
    assert_eq!(s.with_replacement_samples, Some(1380));

    // With power 1/2: exact binary search over the exact rational E[(1/2)^X]:
    // python3 -c 'from math import comb; from fractions import Fraction as F; import mpmath as m; m.mp.dps=50; N,b=10**4,100
    // mp=lambda k: sum(F(comb(b,x)*comb(N-b,k-x),2**x) for x in range(min(k,b)+1))/comb(N,k); l2=lambda v: m.log(v.numerator,2)-m.log(v.denominator,2)
    // print(l2(mp(2584)), l2(mp(2583)))'   -> -20.0039008593973, -19.9956007822664
    let s = samples_needed(10_000, 0.01, 20.0, 0.5).unwrap();
    assert_eq!(s.samples, 2584);
    close(s.log2_miss_probability, -20.0039008593973, 1e-12);
    close(
        log2_miss_probability_with_power(10_000, 100, 2583, 0.5).unwrap(),
        -19.9956007822664,
        1e-12,
    );
    // ceil(20 ln 2 / -ln(1 - 0.005)) = ceil(2765.6...) = 2766
    // python3 -c 'import math; print(20*math.log(2)/-math.log1p(-0.005))'
    assert_eq!(s.with_replacement_samples, Some(2766));
}

#[test]
fn samples_needed_edge_cases() {
    // lambda = 0 needs nothing.
    assert_eq!(samples_needed(100, 0.5, 0.0, 1.0).unwrap().samples, 0);
    // Everything bad: one sample.
    let s = samples_needed(100, 1.0, 128.0, 1.0).unwrap();
    assert_eq!((s.samples, s.with_replacement_samples), (1, Some(1)));
    assert_eq!(s.log2_miss_probability, f64::NEG_INFINITY);
    // 0.07 * 100 = 7.000000000000001 in f64, still 7 bad cells.
    assert_eq!(bad_cells_for_fraction(100, 0.07).unwrap(), 7);
    assert_eq!(bad_cells_for_fraction(100, 0.071).unwrap(), 8);
    // A tiny fraction still means at least one bad cell.
    assert_eq!(bad_cells_for_fraction(1000, 1e-9).unwrap(), 1);
    // One bad cell of 10 with lambda 20: only sampling all 10 cells is enough; the
    // with-replacement bound for f = 1e-30 does not fit in u64.
    let s = samples_needed(10, 1e-30, 20.0, 1.0).unwrap();
    assert_eq!((s.bad_cells, s.samples), (1, 10));
    assert_eq!(s.with_replacement_samples, None);
    invalid(with_replacement_samples(1e-30, 64.0, 1.0));
    // Unreachable: one bad cell, power 1/2: P(miss) >= 1/2 whatever k.
    invalid(samples_needed(100, 0.01, 20.0, 0.5));
    // ... but 1 bit is reachable: all 100 cells.
    assert_eq!(samples_needed(100, 0.01, 1.0, 0.5).unwrap().samples, 100);
    // Invalid parameters.
    invalid(samples_needed(100, 0.1, 20.0, 0.0));
    invalid(samples_needed(100, 0.0, 20.0, 1.0));
    invalid(samples_needed(100, 1.5, 20.0, 1.0));
    invalid(samples_needed(100, f64::NAN, 20.0, 1.0));
    invalid(samples_needed(100, 0.1, -1.0, 1.0));
    invalid(samples_needed(100, 0.1, f64::INFINITY, 1.0));
    invalid(samples_needed(100, 0.1, 20.0, f64::NAN));
    invalid(samples_needed(0, 0.1, 20.0, 1.0));
}

// ---------------------------------------------------------------- grinding and rounds

#[test]
fn grinding_arithmetic() {
    // Interactive: -log2 P.
    assert_eq!(interactive_security_bits(-44.0).unwrap(), 44.0);
    assert_eq!(interactive_security_bits(0.0).unwrap(), 0.0);
    assert_eq!(
        interactive_security_bits(f64::NEG_INFINITY).unwrap(),
        f64::INFINITY
    );
    // Budget 2^40 hash evaluations, no proof-of-work: 2^40 attempts.
    assert_eq!(log2_grinding_attempts(40.0, 0.0).unwrap(), 40.0);
    assert_eq!(grinding_security_bits(-100.0, 40.0, 0.0).unwrap(), 60.0);
    // 20 bits of proof-of-work per attempt: 2^20 attempts; the work adds its 20 bits.
    assert_eq!(log2_grinding_attempts(40.0, 20.0).unwrap(), 20.0);
    assert_eq!(grinding_security_bits(-100.0, 40.0, 20.0).unwrap(), 80.0);
    // The work exceeds the budget: still the one attempt the prover submits.
    assert_eq!(log2_grinding_attempts(10.0, 20.0).unwrap(), 0.0);
    assert_eq!(grinding_security_bits(-100.0, 10.0, 20.0).unwrap(), 100.0);
    // No budget: the interactive figure.
    assert_eq!(grinding_security_bits(-37.5, 0.0, 0.0).unwrap(), 37.5);
    // The budget beats the miss probability: success is certain, 0 bits (not negative).
    assert_eq!(grinding_security_bits(-20.0, 64.0, 0.0).unwrap(), 0.0);
    // A miss that is impossible cannot be ground.
    assert_eq!(
        grinding_security_bits(f64::NEG_INFINITY, 1000.0, 0.0).unwrap(),
        f64::INFINITY
    );
    invalid(grinding_security_bits(0.5, 10.0, 0.0));
    invalid(grinding_security_bits(f64::NAN, 10.0, 0.0));
    invalid(grinding_security_bits(-10.0, -1.0, 0.0));
    invalid(grinding_security_bits(-10.0, 10.0, f64::NAN));
    invalid(log2_grinding_attempts(f64::INFINITY, 0.0));
}

#[test]
fn sequential_grinding_is_weaker_than_one_commitment() {
    // One round: the same as grinding_security_bits.
    assert_eq!(
        sequential_grinding_security_bits(-100.0, 1, 40.0, 0.0).unwrap(),
        grinding_security_bits(-100.0, 40.0, 0.0).unwrap()
    );
    // No budget: T = r draws, C(r, r) = 1: the interactive r * 60 bits.
    close(
        sequential_grinding_security_bits(-60.0, 3, 0.0, 0.0).unwrap(),
        180.0,
        1e-15,
    );
    // r = 3, T = 2^40, P = 2^-60: -log2(C(2^40, 3) 2^-180).
    // python3 -c 'import mpmath as m; m.mp.dps=40; T=m.mpf(2)**40; print(-(m.log(T*(T-1)*(T-2)/6,2)-180))'
    close(
        sequential_grinding_security_bits(-60.0, 3, 40.0, 0.0).unwrap(),
        62.584962500725092552,
        1e-13,
    );
    // ... against 180 - 40 = 140 when one commitment fixes all three challenges.
    assert_eq!(
        grinding_security_bits(repeat_rounds(-60.0, 3).unwrap(), 40.0, 0.0).unwrap(),
        140.0
    );
    // r = 2, T = 2^10, P = 2^-30.
    // python3 -c 'import mpmath as m; m.mp.dps=40; T=m.mpf(2)**10; print(-(m.log(T*(T-1)/2,2)-60))'
    close(
        sequential_grinding_security_bits(-30.0, 2, 10.0, 0.0).unwrap(),
        41.001409570254671354,
        1e-13,
    );
    // Absurd budgets give 0 bits, not NaN.
    assert_eq!(
        sequential_grinding_security_bits(-30.0, 2, 5000.0, 0.0).unwrap(),
        0.0
    );
    invalid(sequential_grinding_security_bits(-30.0, 0, 10.0, 0.0));
    invalid(sequential_grinding_security_bits(
        -30.0,
        MAX_ROUNDS + 1,
        10.0,
        0.0,
    ));
}

#[test]
fn rounds_compose_by_adding_log2() {
    assert_eq!(compose_rounds(&[-1.0, -2.5, -3.0]).unwrap(), -6.5);
    assert_eq!(compose_rounds(&[]).unwrap(), 0.0);
    assert_eq!(
        compose_rounds(&[-1.0, f64::NEG_INFINITY]).unwrap(),
        f64::NEG_INFINITY
    );
    invalid(compose_rounds(&[-1.0, 0.1]));
    invalid(compose_rounds(&[f64::NAN]));
    assert_eq!(repeat_rounds(-4.25, 4).unwrap(), -17.0);
    assert_eq!(repeat_rounds(f64::NEG_INFINITY, 0).unwrap(), 0.0);
    invalid(repeat_rounds(1.0, 2));

    // Three rounds of k = 300 of the anchor table: miss^3.
    let per_round = log2_miss_probability(10_000, 100, 300).unwrap();
    let r = soundness_report(&SoundnessParams {
        rounds: 3,
        ..SoundnessParams::new(10_000, 100, 300)
    })
    .unwrap();
    close(r.log2_miss, 3.0 * per_round, 1e-15);
    close(
        r.miss_probability,
        0.04682519170381114751994641508728965484717_f64.powi(3),
        1e-12,
    );
    assert_eq!(r.log2_miss, compose_rounds(&[per_round; 3]).unwrap());
}

// ---------------------------------------------------------------- report

#[test]
fn report_of_the_anchor_case() {
    let r = soundness_report(&SoundnessParams {
        grind_bits: 2.0,
        pow_bits: 1.0,
        ..SoundnessParams::new(10_000, 100, 300)
    })
    .unwrap();
    // python3 -c 'from math import comb; import mpmath as m; m.mp.dps=40; print(-(m.log(comb(9900,300),2)-m.log(comb(10000,300),2)))'
    let bits = 4.416571288855330458208359;
    close(
        r.miss_probability,
        0.04682519170381114751994641508728965484717,
        1e-13,
    );
    close(
        r.detection_probability,
        0.9531748082961888524800535849127103451528,
        1e-13,
    );
    close(r.security_bits, bits, 1e-13);
    assert_eq!(r.log2_grinding_attempts, 1.0);
    close(r.security_bits_grinding, bits - 1.0, 1e-13);
    close(r.security_bits_grinding_sequential, bits - 1.0, 1e-13);
    close(r.grinding_break_even_bits, bits + 1.0, 1e-13);
    assert!(!r.certain_detection);
    assert_eq!(
        (r.cells, r.bad_cells, r.samples, r.rounds),
        (10_000, 100, 300, 1)
    );

    let json = serde_json::to_value(&r).unwrap();
    for key in [
        "cells",
        "bad_cells",
        "samples",
        "power",
        "rounds",
        "pow_bits",
        "grind_bits",
        "miss_probability",
        "log2_miss",
        "detection_probability",
        "security_bits",
        "security_bits_grinding",
    ] {
        assert!(json.get(key).is_some(), "missing {key} in {json}");
    }
    let back: SoundnessReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, r);
}

#[test]
fn report_of_certain_detection_has_no_nan() {
    let r = soundness_report(&SoundnessParams::new(100, 10, 91)).unwrap();
    assert!(r.certain_detection);
    assert_eq!(r.miss_probability, 0.0);
    assert_eq!(r.detection_probability, 1.0);
    assert_eq!(r.log2_miss, f64::NEG_INFINITY);
    assert_eq!(r.security_bits, f64::INFINITY);
    assert_eq!(r.security_bits_grinding, f64::INFINITY);
    assert_eq!(r.security_bits_grinding_sequential, f64::INFINITY);
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["security_bits"].is_null());
    assert_eq!(json["certain_detection"], true);
}

#[test]
fn report_refuses_bad_parameters() {
    invalid(soundness_report(&SoundnessParams::new(10, 11, 1)));
    invalid(soundness_report(&SoundnessParams::new(10, 1, 11)));
    let ok = SoundnessParams::new(100, 10, 10);
    invalid(soundness_report(&SoundnessParams { rounds: 0, ..ok }));
    invalid(soundness_report(&SoundnessParams { power: 2.0, ..ok }));
    invalid(soundness_report(&SoundnessParams {
        grind_bits: f64::NAN,
        ..ok
    }));
    invalid(soundness_report(&SoundnessParams {
        pow_bits: -1.0,
        ..ok
    }));
}

// ---------------------------------------------------------------- bounded cost, closed forms

/// `log2 C(N-b, k)/C(N, k)` from 80-digit `mpmath` for sizes no exact sum reaches:
/// python3 -c 'import mpmath as m; m.mp.dps=80; g=m.loggamma; print((g(N-b+1)-g(N-b-k+1)-g(N+1)+g(N-k+1))/m.log(2))'
/// with (N, b, k) as listed.
const HUGE: [(u64, u64, u64, f64); 7] = [
    (
        1_000_000_000_000_000_000,
        1_000_000_000,
        1_000_000_000,
        -1.442695042331658449210685,
    ),
    (
        1_000_000_000_000_000_000,
        500_000_000_000_000_000,
        500_000_000_000_000_000,
        -999999999999999969.7768991,
    ),
    (
        1_000_000_000_000_000_000,
        10_000_000,
        1_000_000_000_000,
        -14.42695762244178232245892,
    ),
    (u64::MAX, 1 << 62, 1 << 62, -2260763758429090960.647209),
    (
        u64::MAX,
        u64::MAX / 2,
        u64::MAX / 2,
        -18446744073709551519.67425,
    ),
    (
        1_000_000_000_000_000_000,
        90_000_000,
        999_999_999_900_000_000,
        -3086358556.462952244792655,
    ),
    (
        1_000_000_000_000,
        10_000_000,
        10_000_000,
        -144.2709468006967520555774,
    ),
];

/// `bound` is an upper bound on `exact` (up to the exact sum's own rounding) exceeding it by at
/// most the documented `1e-11 |exact| + 1e-11` nats.
#[track_caller]
fn em_bound_close(bound: f64, exact: f64) {
    let slack = 1e-14 * exact.abs();
    assert!(bound >= exact - slack, "{bound} below the exact {exact}");
    assert!(
        bound <= exact + 1e-11 * exact.abs() + 1e-11 / std::f64::consts::LN_2,
        "{bound} too far above the exact {exact}"
    );
}

#[test]
fn huge_arguments_use_the_euler_maclaurin_bound() {
    for (n, b, k, want) in HUGE {
        let e = miss_estimate(n, b, k, 1.0).unwrap();
        assert_eq!(e.method, MissMethod::EulerMaclaurinBound, "{n} {b} {k}");
        assert!(!e.method.is_exact());
        em_bound_close(e.log2_miss, want);
        assert_eq!(log2_miss_probability(n, b, k).unwrap(), e.log2_miss);
        assert_eq!(
            log2_miss_probability_closed_form(n, b, k).unwrap(),
            e.log2_miss
        );
        // Symmetric in b and k.
        assert_eq!(miss_estimate(n, k, b, 1.0).unwrap(), e);
    }
    // Every sample holds a bad cell: exact at any size.
    let e = miss_estimate(u64::MAX, u64::MAX / 2 + 1, u64::MAX / 2 + 1, 1.0).unwrap();
    assert_eq!(
        (e.log2_miss, e.method),
        (f64::NEG_INFINITY, MissMethod::Exact)
    );
    // Small min(k, b) stays exact however large N and the other count are.
    let e = miss_estimate(u64::MAX, 3, u64::MAX - 3, 1.0).unwrap();
    assert_eq!(e.method, MissMethod::Exact);
    // P = 1/C(N, 3) with N = 2^64 - 1: log2 = -(3 * 64 - log2 6) up to 2^-64 terms.
    close(e.log2_miss, -(192.0 - 6f64.log2()), 1e-15);
}

#[test]
fn closed_form_matches_the_exact_sums_it_replaces() {
    // The pinned exact values of `ten_million_cells_match_high_precision`, from the closed form.
    for (b, k, want) in [
        (100_000_u64, 1380_u64, -20.01079291224402471339337),
        (1000, 1_000_000, -152.0111009657423625931332),
        (3_000_000, 5_000_000, -3958155.616356152873349492),
        (5_000_000, 5_000_000, -9999988.047503567090696361),
        (10, 9_999_990, -210.7438990352686709801824),
        (1, 9_999_999, -23.25349666421153643509224),
    ] {
        let closed = log2_miss_probability_closed_form(10_000_000, b, k).unwrap();
        em_bound_close(closed, want);
        em_bound_close(closed, log2_miss_probability(10_000_000, b, k).unwrap());
    }
    // Edge cases of the closed form agree with the exact function.
    for (n, b, k) in [
        (100, 0, 5),
        (100, 5, 0),
        (100, 10, 91),
        (100, 10, 90),
        (7, 3, 2),
    ] {
        assert_eq!(
            log2_miss_probability_closed_form(n, b, k).unwrap(),
            log2_miss_probability(n, b, k).unwrap()
        );
    }
    invalid(log2_miss_probability_closed_form(10, 11, 1));
    invalid(log2_miss_probability_closed_form(10, 1, 11));
}

#[test]
fn switch_over_is_continuous_for_power_one() {
    // k = EXACT_TERMS_MAX is the last exact figure, k + 1 the first closed form; the exact value
    // at k + 1 is the one at k times the next factor (1 - b/(N - k)).
    let (n, b) = (1_000_000_000_u64, 20_000_000_u64);
    let k = EXACT_TERMS_MAX;
    let last = miss_estimate(n, b, k, 1.0).unwrap();
    assert_eq!(last.method, MissMethod::Exact);
    let first = miss_estimate(n, b, k + 1, 1.0).unwrap();
    assert_eq!(first.method, MissMethod::EulerMaclaurinBound);
    let next_factor = (-(b as f64) / (n - k) as f64).ln_1p() / std::f64::consts::LN_2;
    em_bound_close(first.log2_miss, last.log2_miss + next_factor);
    // The closed form at the last exact point agrees with the exact figure too.
    em_bound_close(
        log2_miss_probability_closed_form(n, b, k).unwrap(),
        last.log2_miss,
    );
}

#[test]
fn power_below_one_beyond_the_limit_is_the_with_replacement_bound() {
    for (n, b, k, _) in HUGE {
        let e = miss_estimate(n, b, k, 0.5).unwrap();
        assert_eq!(e.method, MissMethod::WithReplacementBound, "{n} {b} {k}");
        let nf = n as f64;
        let by_k = k as f64 * (-(0.5 * b as f64 / nf)).ln_1p();
        let by_b = b as f64 * (-(0.5 * k as f64 / nf)).ln_1p();
        let want = by_k.min(by_b) / std::f64::consts::LN_2;
        assert!(e.log2_miss >= want, "{} < {want}", e.log2_miss);
        close(e.log2_miss, want, 1e-11);
        assert_eq!(
            log2_with_replacement_bound(n, b, k, 0.5).unwrap(),
            e.log2_miss
        );
        assert_eq!(
            log2_miss_probability_with_power(n, b, k, 0.5).unwrap(),
            e.log2_miss
        );
        // Never below the exact power-1 figure (a weaker test can only miss more often).
        assert!(e.log2_miss >= miss_estimate(n, b, k, 1.0).unwrap().log2_miss);
    }
    // k = N or b = N: X is constant, exact at any size.
    let e = miss_estimate(u64::MAX, 1 << 40, u64::MAX, 0.5).unwrap();
    assert_eq!(
        (e.log2_miss, e.method),
        (-(2f64.powi(40)), MissMethod::Exact)
    );
    let e = miss_estimate(u64::MAX, u64::MAX, 1 << 40, 0.5).unwrap();
    assert_eq!(
        (e.log2_miss, e.method),
        (-(2f64.powi(40)), MissMethod::Exact)
    );
    invalid(log2_with_replacement_bound(0, 0, 0, 0.5));
    invalid(log2_with_replacement_bound(10, 1, 1, 1.5));
    assert_eq!(log2_with_replacement_bound(10, 0, 5, 0.5).unwrap(), 0.0);
}

#[test]
fn samples_needed_answers_huge_targets_from_the_bounds() {
    let n = 1_000_000_000_000_000_000_u64;
    // p = 1, 10^9 bits against half the cells bad: k near 10^9, far beyond the exact limit.
    let s = samples_needed(n, 0.5, 1e9, 1.0).unwrap();
    assert_eq!(s.miss_method, MissMethod::EulerMaclaurinBound);
    assert!(s.log2_miss_probability <= -1e9);
    assert_eq!(
        s.log2_miss_probability,
        log2_miss_probability_closed_form(n, s.bad_cells, s.samples).unwrap()
    );
    assert!(log2_miss_probability_closed_form(n, s.bad_cells, s.samples - 1).unwrap() > -1e9);
    assert_eq!(s.with_replacement_samples, Some(1_000_000_000));
    assert!(s.samples <= 1_000_000_000);
    // p = 1/2: the with-replacement bound decides.
    let s = samples_needed(n, 0.5, 1e9, 0.5).unwrap();
    assert_eq!(s.miss_method, MissMethod::WithReplacementBound);
    assert!(s.log2_miss_probability <= -1e9);
    assert!(log2_with_replacement_bound(n, s.bad_cells, s.samples - 1, 0.5).unwrap() > -1e9);
    // ceil(10^9 ln 2 / -ln(3/4)) = 2409420840
    // python3 -c 'import math; print(1e9*math.log(2)/-math.log1p(-0.25))'
    assert_eq!(s.with_replacement_samples, Some(2_409_420_840));
    close(s.samples as f64, 2_409_420_840.0, 1e-10);
    // A few bad cells of 2^64 - 1: min(k, b) is small, exact however large k.
    let s = samples_needed(u64::MAX, 1e-18, 20.0, 1.0).unwrap();
    assert_eq!((s.bad_cells, s.miss_method), (19, MissMethod::Exact));
    assert!(s.samples > 1 << 62);
    // Unreachable targets are refused from the exact value at k = N, at any N.
    invalid(samples_needed(u64::MAX, 1e-19, 20.0, 0.5));
    invalid(samples_needed(n, 0.5, 1e18, 0.5));
    // Search-limit figures stay exact in the ordinary range.
    let s = samples_needed(10_000_000, 0.01, 40.0, 1.0).unwrap();
    assert_eq!(s.miss_method, MissMethod::Exact);
}

#[test]
fn report_marks_bounds_and_survives_the_largest_arguments() {
    let r = soundness_report(&SoundnessParams {
        rounds: MAX_ROUNDS,
        grind_bits: 1000.0,
        pow_bits: 20.0,
        ..SoundnessParams::new(u64::MAX, u64::MAX / 3, u64::MAX / 3)
    })
    .unwrap();
    assert_eq!(r.miss_method, MissMethod::EulerMaclaurinBound);
    assert!(r.log2_miss_per_round < -1e18 && r.log2_miss_per_round.is_finite());
    assert_eq!(r.miss_probability, 0.0);
    assert!(!r.certain_detection);
    assert!(r.security_bits_grinding_sequential.is_finite());
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["miss_method"], "euler_maclaurin_bound");
    let r = soundness_report(&SoundnessParams {
        power: 0.25,
        ..SoundnessParams::new(u64::MAX, u64::MAX / 3, u64::MAX / 3)
    })
    .unwrap();
    assert_eq!(r.miss_method, MissMethod::WithReplacementBound);
    assert_eq!(
        serde_json::to_value(&r).unwrap()["miss_method"],
        "with_replacement_bound"
    );
    // Ordinary reports are exact, and JSON written before the field existed still reads.
    let r = soundness_report(&SoundnessParams::new(10_000, 100, 300)).unwrap();
    assert_eq!(r.miss_method, MissMethod::Exact);
    let mut json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["miss_method"], "exact");
    json.as_object_mut().unwrap().remove("miss_method");
    let back: SoundnessReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, r);
}

// ---------------------------------------------------------------- properties

/// Non-increasing, up to the rounding of two nearly equal sums.
fn not_above(later: f64, earlier: f64) -> bool {
    later <= earlier || later <= earlier + 1e-12 * earlier.abs().max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn miss_decreases_in_k_and_b(
        n in 1_u64..2_000_000,
        b_frac in 0.0_f64..=1.0,
        k_frac in 0.0_f64..=1.0,
        power in prop_oneof![Just(1.0_f64), 0.01_f64..1.0],
    ) {
        let b = ((n as f64 * b_frac) as u64).min(n);
        let k = ((n as f64 * k_frac) as u64).min(n);
        let at = |b: u64, k: u64| log2_miss_probability_with_power(n, b, k, power).unwrap();
        let here = at(b, k);
        prop_assert!(!here.is_nan() && here <= 0.0);
        if k < n {
            prop_assert!(not_above(at(b, k + 1), here), "k+1: {} > {}", at(b, k + 1), here);
        }
        if b < n {
            prop_assert!(not_above(at(b + 1, k), here), "b+1: {} > {}", at(b + 1, k), here);
        }
        // Without replacement never does worse than with replacement (Hoeffding):
        // E[(1-p)^X] <= (1 - p b/N)^k.
        let with_replacement = k as f64 * (-(power * b as f64 / n as f64)).ln_1p()
            / std::f64::consts::LN_2;
        prop_assert!(not_above(here, with_replacement), "{here} > {with_replacement}");
        // Detection probability is a probability.
        let d = detection_probability(n, b, k).unwrap();
        prop_assert!((0.0..=1.0).contains(&d));
    }

    #[test]
    fn closed_form_bounds_the_exact_sum_from_above(
        n in 1_u64..3_000_000,
        b_frac in 0.0_f64..=1.0,
        k_frac in 0.0_f64..=1.0,
    ) {
        let b = ((n as f64 * b_frac) as u64).min(n);
        let k = ((n as f64 * k_frac) as u64).min(n);
        let exact = log2_miss_probability(n, b, k).unwrap();
        let closed = log2_miss_probability_closed_form(n, b, k).unwrap();
        if exact == f64::NEG_INFINITY {
            prop_assert_eq!(closed, exact);
        } else {
            prop_assert!(closed >= exact - 1e-14 * exact.abs(), "{} < {}", closed, exact);
            prop_assert!(
                closed <= exact + 1e-11 * exact.abs() + 1.5e-11,
                "{} too far above {}", closed, exact
            );
        }
    }

    #[test]
    fn closed_form_bounds_the_exact_sum_at_huge_n(
        n in 1_u64 << 40..u64::MAX,
        small in 1_u64..40_000,
        large_frac in 0.0_f64..=1.0,
    ) {
        // min(k, b) small enough for the exact sum, the other count and N as large as they come:
        // the regime where the closed form's terms nearly cancel.
        let large = ((((n - small) as f64) * large_frac) as u64).clamp(small, n - small);
        let exact = log2_miss_probability(n, small, large).unwrap();
        let closed = log2_miss_probability_closed_form(n, small, large).unwrap();
        prop_assert!(closed >= exact - 1e-14 * exact.abs(), "{} < {}", closed, exact);
        prop_assert!(
            closed <= exact + 1e-11 * exact.abs() + 1.5e-11,
            "{} too far above {}", closed, exact
        );
    }

    #[test]
    fn with_replacement_bound_is_above_the_exact_power_figure(
        n in 1_u64..300_000,
        b_frac in 0.0_f64..=1.0,
        k_frac in 0.0_f64..=1.0,
        power in 0.001_f64..1.0,
    ) {
        let b = ((n as f64 * b_frac) as u64).min(n);
        let k = ((n as f64 * k_frac) as u64).min(n);
        let exact = log2_miss_probability_with_power(n, b, k, power).unwrap();
        let bound = log2_with_replacement_bound(n, b, k, power).unwrap();
        // The tolerance is the exact walk's own: a log-sum-exp whose total is near 1 (small p)
        // carries an absolute error of about 1e-13.
        prop_assert!(bound >= exact - 1e-12 * exact.abs() - 1e-11, "{} < {}", bound, exact);
    }

    #[test]
    fn samples_needed_is_the_smallest_k(
        n in 1_u64..1_000_000,
        f in 0.0001_f64..=1.0,
        lambda in 0.0_f64..80.0,
        power in prop_oneof![Just(1.0_f64), 0.2_f64..1.0],
    ) {
        match samples_needed(n, f, lambda, power) {
            Ok(s) => {
                let at = |k: u64| log2_miss_probability_with_power(n, s.bad_cells, k, power).unwrap();
                prop_assert!(s.samples <= n);
                prop_assert!(at(s.samples) <= -lambda);
                prop_assert_eq!(at(s.samples), s.log2_miss_probability);
                if s.samples > 0 {
                    prop_assert!(at(s.samples - 1) > -lambda);
                }
                if let Some(w) = s.with_replacement_samples {
                    // b >= f N, so the with-replacement bound for f is never below the exact k.
                    prop_assert!(s.samples <= w, "{} > {}", s.samples, w);
                }
            }
            Err(ProtocolError::InvalidParameter(_)) => {
                // Only unreachable targets are refused for these inputs: even all N cells miss.
                prop_assert!(power < 1.0);
                let b = bad_cells_for_fraction(n, f).unwrap();
                prop_assert!(log2_miss_probability_with_power(n, b, n, power).unwrap() > -lambda);
            }
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }
}
