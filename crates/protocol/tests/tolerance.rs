//! Tests of the tolerance module: decoding, metrics, non-finite values, exact and threshold
//! policies, calibration and its Clopper–Pearson bounds, serde.

// Reference values are quoted with the 17 digits mpmath printed.
#![allow(clippy::excessive_precision)]

use std::collections::BTreeMap;

use half::{bf16, f16};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use veritrace_commit::Dtype;
use veritrace_protocol::tolerance::{
    calibrate, clopper_pearson_lower, clopper_pearson_upper, decode_values, measure_fpr,
    noise_floors_from_medians, regularized_incomplete_beta, Calibration, CalibrationConfig,
    Deviation, FprEstimate, Metric, PerLayer, Side, ThresholdPolicy, TolerancePolicy,
    ToleranceViolation, REL_L2_DENOMINATOR_FLOOR,
};
use veritrace_protocol::ProtocolError;

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

fn encode(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    for &v in values {
        match dtype {
            Dtype::F32 => out.extend_from_slice(&v.to_le_bytes()),
            Dtype::F16 => out.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes()),
            Dtype::Bf16 => out.extend_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes()),
            Dtype::I8 => out.push((v as i8) as u8),
        }
    }
    out
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    encode(Dtype::F32, values)
}

fn threshold(metric: Metric, t: f64) -> TolerancePolicy {
    TolerancePolicy::Threshold(ThresholdPolicy::new(metric, PerLayer::uniform(t)))
}

/// Judgement of a policy on f32 cells, the policy being valid.
fn judge(
    policy: &TolerancePolicy,
    layer: u32,
    claimed: &[f32],
    recomputed: &[f32],
) -> Result<Deviation, ToleranceViolation> {
    policy
        .check(
            layer,
            Dtype::F32,
            &f32_bytes(claimed),
            &f32_bytes(recomputed),
        )
        .expect("valid policy, aligned bytes")
}

fn is_invalid_parameter<T: std::fmt::Debug>(r: Result<T, ProtocolError>) -> bool {
    matches!(r, Err(ProtocolError::InvalidParameter(_)))
}

fn close(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= rel * want.abs().max(f64::MIN_POSITIVE)
}

// ---------------------------------------------------------------------------------------------
// decoding
// ---------------------------------------------------------------------------------------------

#[test]
fn decodes_f16_known_values() {
    let bits: [u16; 7] = [0x3c00, 0xc000, 0x7bff, 0x0001, 0x3555, 0x8000, 0x0000];
    let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let v = decode_values(Dtype::F16, &bytes).unwrap();
    assert_eq!(v[0], 1.0);
    assert_eq!(v[1], -2.0);
    assert_eq!(v[2], 65504.0); // largest finite f16
    assert_eq!(v[3], 2f32.powi(-24)); // smallest subnormal f16
    assert_eq!(v[4], 0.333_251_95); // f16 nearest to 1/3
    assert_eq!(v[5].to_bits(), (-0.0f32).to_bits());
    assert_eq!(v[6].to_bits(), 0);
    // little-endian: 0x3c00 is stored as [0x00, 0x3c]
    assert_eq!(decode_values(Dtype::F16, &[0x00, 0x3c]).unwrap(), vec![1.0]);
    let special = decode_values(Dtype::F16, &[0x00, 0x7c, 0x00, 0xfc, 0x01, 0x7e]).unwrap();
    assert_eq!(special[0], f32::INFINITY);
    assert_eq!(special[1], f32::NEG_INFINITY);
    assert!(special[2].is_nan());
}

#[test]
fn decodes_bf16_known_values() {
    let bits: [u16; 5] = [0x3f80, 0xc040, 0x4049, 0x7f7f, 0x0001];
    let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let v = decode_values(Dtype::Bf16, &bytes).unwrap();
    assert_eq!(v[0], 1.0);
    assert_eq!(v[1], -3.0);
    assert_eq!(v[2], 3.140_625); // bf16 nearest to pi
    assert_eq!(v[3], f32::from_bits(0x7f7f_0000)); // largest finite bf16
    assert_eq!(v[4], f32::from_bits(0x0001_0000)); // smallest subnormal bf16: 2^-133
    let special = decode_values(Dtype::Bf16, &[0x80, 0x7f, 0xc1, 0xff]).unwrap();
    assert_eq!(special[0], f32::INFINITY);
    assert!(special[1].is_nan());
}

#[test]
fn decodes_f32_and_i8() {
    let v = decode_values(
        Dtype::F32,
        &[0x00, 0x00, 0x80, 0x3f, 0xdb, 0x0f, 0x49, 0xc0],
    )
    .unwrap();
    assert_eq!(v, vec![1.0, -std::f32::consts::PI]);
    let v = decode_values(Dtype::I8, &[0x00, 0x01, 0x7f, 0x80, 0xff]).unwrap();
    assert_eq!(v, vec![0.0, 1.0, 127.0, -128.0, -1.0]);
    assert_eq!(decode_values(Dtype::F32, &[]).unwrap(), Vec::<f32>::new());
}

#[test]
fn decoding_checks_length() {
    for (dtype, len) in [
        (Dtype::F32, 3),
        (Dtype::F32, 5),
        (Dtype::F16, 1),
        (Dtype::Bf16, 7),
    ] {
        let err = decode_values(dtype, &vec![0u8; len]).unwrap_err();
        assert!(
            matches!(err, ProtocolError::Decode { .. }),
            "{dtype} {len}: {err:?}"
        );
    }
    assert_eq!(decode_values(Dtype::I8, &[1, 2, 3]).unwrap().len(), 3);
}

// ---------------------------------------------------------------------------------------------
// metrics
// ---------------------------------------------------------------------------------------------

#[test]
fn metrics_on_hand_computed_example() {
    // c - r = (0, 0, -2): max-abs 2, |c - r|_2 = 2, |r|_2 = sqrt(1 + 4 + 25) = sqrt(30).
    let d = Deviation::between(&[1.0, 2.0, 3.0], &[1.0, 2.0, 5.0], Some(0.01)).unwrap();
    assert_eq!(d.max_abs, 2.0);
    assert!(close(d.rel_l2, 2.0 / 30f64.sqrt(), 1e-15), "{}", d.rel_l2);
    assert!(close(
        d.noise_score.unwrap(),
        2.0 / 30f64.sqrt() / 0.01,
        1e-15
    ));
    assert_eq!(d.get(Metric::MaxAbs), Some(2.0));
    assert_eq!(d.get(Metric::RelL2), Some(d.rel_l2));

    // c - r = (0.5, -1.5, 0.5, 0): max-abs 1.5, |c - r|_2 = sqrt(2.75), |r|_2 = sqrt(4+9+1+36)
    let d = Deviation::between(&[2.5, -4.5, 1.5, 6.0], &[2.0, -3.0, 1.0, 6.0], None).unwrap();
    assert_eq!(d.max_abs, 1.5);
    assert!(close(d.rel_l2, (2.75f64 / 50.0).sqrt(), 1e-15));
    assert_eq!(d.noise_score, None);
    assert_eq!(d.get(Metric::NoiseScore), None);
}

#[test]
fn metrics_are_computed_in_f64() {
    // A difference of one f32 ulp at 1.0 (2^-23) squared is 2^-46, below f32 epsilon relative
    // to the sums it joins; in f64 it is exact.
    let c = [1.0f32 + f32::EPSILON, 1.0];
    let r = [1.0f32, 1.0];
    let d = Deviation::between(&c, &r, None).unwrap();
    assert_eq!(d.max_abs, f64::from(f32::EPSILON));
    assert!(close(
        d.rel_l2,
        f64::from(f32::EPSILON) / 2f64.sqrt(),
        1e-15
    ));
    // extreme magnitudes do not overflow
    let d = Deviation::between(&[f32::MAX, -f32::MAX], &[-f32::MAX, f32::MAX], None).unwrap();
    assert_eq!(d.max_abs, 2.0 * f64::from(f32::MAX));
    assert!(close(d.rel_l2, 2.0, 1e-15));
}

#[test]
fn rel_l2_with_all_zero_recomputed_values() {
    let d = Deviation::between(&[0.0, -0.0], &[0.0, 0.0], None).unwrap();
    assert_eq!(d.rel_l2, 0.0);
    assert_eq!(d.max_abs, 0.0);
    // any nonzero claimed value: |c|_2 / f32::MIN_POSITIVE, huge but finite
    let d = Deviation::between(&[1e-3, 0.0], &[0.0, 0.0], None).unwrap();
    assert!(close(
        d.rel_l2,
        f64::from(1e-3f32) / REL_L2_DENOMINATOR_FLOOR,
        1e-15
    ));
    assert!(d.rel_l2.is_finite() && d.rel_l2 > 1e30);
    let d = Deviation::between(&[f32::MAX; 4], &[0.0; 4], Some(1e-300)).unwrap();
    assert!(d.rel_l2.is_finite());
    assert_eq!(d.noise_score, Some(f64::MAX)); // saturated
    assert!(judge(&threshold(Metric::RelL2, 1e6), 0, &[1e-3], &[0.0]).is_err());
    // empty cells deviate by nothing
    let d = Deviation::between(&[], &[], Some(1.0)).unwrap();
    assert_eq!((d.max_abs, d.rel_l2, d.noise_score), (0.0, 0.0, Some(0.0)));
}

#[test]
fn deviation_checks_length_and_finiteness_first() {
    assert_eq!(
        Deviation::between(&[1.0, 2.0], &[1.0], None),
        Err(ToleranceViolation::LengthMismatch {
            claimed: 2,
            recomputed: 1
        })
    );
    assert_eq!(
        Deviation::between(&[1.0, f32::INFINITY], &[f32::NAN, 1.0], None),
        Err(ToleranceViolation::NonFinite {
            side: Side::Claimed,
            index: 1
        })
    );
    assert_eq!(
        Deviation::between(&[1.0, 2.0, 3.0], &[1.0, 2.0, f32::NEG_INFINITY], None),
        Err(ToleranceViolation::NonFinite {
            side: Side::Recomputed,
            index: 2
        })
    );
}

// ---------------------------------------------------------------------------------------------
// threshold policies
// ---------------------------------------------------------------------------------------------

#[test]
fn value_equal_to_threshold_passes_and_just_above_fails() {
    // max-abs: |1.5 - 1.0| = 0.5 exactly.
    let p = threshold(Metric::MaxAbs, 0.5);
    let d = judge(&p, 0, &[1.5], &[1.0]).unwrap();
    assert_eq!(d.max_abs, 0.5);
    let above = f32::from_bits(1.5f32.to_bits() + 1);
    assert_eq!(
        judge(&p, 0, &[above], &[1.0]),
        Err(ToleranceViolation::Exceeded {
            metric: Metric::MaxAbs,
            value: f64::from(above) - 1.0,
            threshold: 0.5
        })
    );

    // rel-L2: |(0, 0.5)|_2 / |(3, 4)|_2 = 0.5 / 5 = 0.1 (the same f64 as the literal 0.1).
    let p = threshold(Metric::RelL2, 0.1);
    assert_eq!(judge(&p, 0, &[3.0, 4.5], &[3.0, 4.0]).unwrap().rel_l2, 0.1);
    let above = f32::from_bits(4.5f32.to_bits() + 1);
    assert!(matches!(
        judge(&p, 0, &[3.0, above], &[3.0, 4.0]),
        Err(ToleranceViolation::Exceeded { metric: Metric::RelL2, value, threshold })
            if value > 0.1 && threshold == 0.1
    ));
}

#[test]
fn threshold_zero_means_equal_values() {
    let p = threshold(Metric::MaxAbs, 0.0);
    assert_eq!(judge(&p, 0, &[1.0, 2.0], &[1.0, 2.0]), Ok(Deviation::ZERO));
    // equal as numbers: -0.0 == 0.0 passes a threshold (unlike exact mode)
    assert!(judge(&p, 0, &[-0.0], &[0.0]).is_ok());
    let tiny = f32::from_bits(1); // smallest subnormal
    assert!(judge(&p, 0, &[tiny], &[0.0]).is_err());
    assert!(judge(&threshold(Metric::RelL2, 0.0), 0, &[tiny], &[0.0]).is_err());
}

#[test]
fn per_layer_thresholds_apply_to_their_layer() {
    let thresholds = PerLayer::uniform(0.01).with(5, 0.2);
    assert_eq!(thresholds.get(0), 0.01);
    assert_eq!(thresholds.get(5), 0.2);
    let p = TolerancePolicy::Threshold(ThresholdPolicy::new(Metric::RelL2, thresholds));
    p.validate().unwrap();
    // rel-L2 = 0.1
    assert!(judge(&p, 5, &[3.0, 4.5], &[3.0, 4.0]).is_ok());
    assert!(matches!(
        judge(&p, 4, &[3.0, 4.5], &[3.0, 4.0]),
        Err(ToleranceViolation::Exceeded { threshold, .. }) if threshold == 0.01
    ));
}

#[test]
fn noise_score_policy_divides_by_the_layer_floor() {
    let floors = PerLayer::uniform(0.01).with(3, 0.05);
    let p =
        TolerancePolicy::Threshold(ThresholdPolicy::noise_score(PerLayer::uniform(3.0), floors));
    p.validate().unwrap();
    // rel-L2 = 0.1: 10x the floor of layer 0, 2x the floor of layer 3.
    let d = judge(&p, 3, &[3.0, 4.5], &[3.0, 4.0]).unwrap();
    assert!(close(d.noise_score.unwrap(), 2.0, 1e-15));
    match judge(&p, 0, &[3.0, 4.5], &[3.0, 4.0]) {
        Err(ToleranceViolation::Exceeded {
            metric: Metric::NoiseScore,
            value,
            threshold,
        }) => {
            assert!(close(value, 10.0, 1e-15));
            assert_eq!(threshold, 3.0);
        }
        other => panic!("{other:?}"),
    }
    // floors given to a rel-L2 policy only fill in the noise score
    let p = TolerancePolicy::Threshold(ThresholdPolicy {
        metric: Metric::RelL2,
        thresholds: PerLayer::uniform(0.5),
        noise_floors: Some(PerLayer::uniform(0.01)),
    });
    assert!(close(
        judge(&p, 0, &[3.0, 4.5], &[3.0, 4.0])
            .unwrap()
            .noise_score
            .unwrap(),
        10.0,
        1e-15
    ));
}

#[test]
fn threshold_check_decodes_16_bit_cells() {
    let p = threshold(Metric::MaxAbs, 0.0);
    // bf16 1.0 vs 1.0078125 (one bf16 ulp): deviation 2^-7
    let c = [0x80, 0x3f];
    let r = [0x81, 0x3f];
    match p.check(0, Dtype::Bf16, &c, &r).unwrap() {
        Err(ToleranceViolation::Exceeded { value, .. }) => assert_eq!(value, 2f64.powi(-7)),
        other => panic!("{other:?}"),
    }
    let p = threshold(Metric::MaxAbs, 2f64.powi(-10));
    // f16 1.0 vs 1.0009765625 (one f16 ulp): deviation 2^-10, equal passes
    let d = p
        .check(0, Dtype::F16, &[0x00, 0x3c], &[0x01, 0x3c])
        .unwrap()
        .unwrap();
    assert_eq!(d.max_abs, 2f64.powi(-10));
    // i8: 5 vs 7
    let d = threshold(Metric::MaxAbs, 2.0)
        .check(0, Dtype::I8, &[5], &[7])
        .unwrap()
        .unwrap();
    assert_eq!(d.max_abs, 2.0);
}

#[test]
fn lengths_are_checked() {
    for policy in [TolerancePolicy::Exact, threshold(Metric::MaxAbs, 1.0)] {
        // claimed bytes of another length (even a misaligned one) reject the prover
        assert_eq!(
            policy.check(0, Dtype::F32, &[0; 8], &[0; 4]).unwrap(),
            Err(ToleranceViolation::LengthMismatch {
                claimed: 8,
                recomputed: 4
            })
        );
        assert_eq!(
            policy.check(0, Dtype::F16, &[0; 3], &[0; 4]).unwrap(),
            Err(ToleranceViolation::LengthMismatch {
                claimed: 3,
                recomputed: 4
            })
        );
        // misaligned recomputed bytes are the verifier's own fault
        assert!(is_invalid_parameter(policy.check(
            0,
            Dtype::F32,
            &[0; 6],
            &[0; 6]
        )));
        // empty cells are equal
        assert_eq!(
            policy.check(0, Dtype::Bf16, &[], &[]).unwrap(),
            Ok(Deviation::ZERO)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// exact mode
// ---------------------------------------------------------------------------------------------

#[test]
fn exact_mode_compares_bytes() {
    let p = TolerancePolicy::Exact;
    assert_eq!(
        judge(&p, 0, &[1.0, -2.5], &[1.0, -2.5]),
        Ok(Deviation::ZERO)
    );
    assert_eq!(
        judge(&p, 0, &[1.0, -0.0], &[1.0, 0.0]),
        Err(ToleranceViolation::Mismatch { index: 1 })
    );
    assert_eq!(
        p.check(0, Dtype::F16, &[0x00, 0x80], &[0x00, 0x00])
            .unwrap(),
        Err(ToleranceViolation::Mismatch { index: 0 })
    );
    assert_eq!(
        p.check(0, Dtype::I8, &[1, 2, 3, 4], &[1, 2, 3, 5]).unwrap(),
        Err(ToleranceViolation::Mismatch { index: 3 })
    );
    // the first differing element is reported
    assert_eq!(
        judge(&p, 0, &[0.0, 1.0, 2.0, 3.0], &[0.0, 1.5, 2.0, 3.5]),
        Err(ToleranceViolation::Mismatch { index: 1 })
    );
}

#[test]
fn non_finite_values_rejected_in_exact_mode_even_when_equal() {
    let p = TolerancePolicy::Exact;
    assert_eq!(
        judge(&p, 0, &[1.0, f32::NAN], &[1.0, f32::NAN]),
        Err(ToleranceViolation::NonFinite {
            side: Side::Claimed,
            index: 1
        })
    );
    assert_eq!(
        judge(&p, 0, &[1.0, 2.0], &[f32::INFINITY, 2.0]),
        Err(ToleranceViolation::NonFinite {
            side: Side::Recomputed,
            index: 0
        })
    );
    // checked before the byte comparison
    assert_eq!(
        judge(&p, 0, &[5.0, 2.0], &[1.0, f32::NEG_INFINITY]),
        Err(ToleranceViolation::NonFinite {
            side: Side::Recomputed,
            index: 1
        })
    );
}

// ---------------------------------------------------------------------------------------------
// validation
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_policies_are_refused() {
    let bad_thresholds = [
        PerLayer::uniform(-1e-9),
        PerLayer::uniform(f64::NAN),
        PerLayer::uniform(f64::INFINITY),
        PerLayer::uniform(0.1).with(3, -0.5),
        PerLayer::uniform(0.1).with(7, f64::NAN),
    ];
    for t in bad_thresholds {
        for metric in [Metric::MaxAbs, Metric::RelL2] {
            let p = TolerancePolicy::Threshold(ThresholdPolicy::new(metric, t.clone()));
            assert!(is_invalid_parameter(p.validate()), "{p:?}");
            // and check refuses to judge with it
            assert!(is_invalid_parameter(p.check(0, Dtype::F32, &[], &[])));
        }
    }
    let bad_floors = [
        PerLayer::uniform(0.0),
        PerLayer::uniform(-0.01),
        PerLayer::uniform(f64::NAN),
        PerLayer::uniform(f64::INFINITY),
        PerLayer::uniform(0.01).with(2, 0.0),
    ];
    for f in bad_floors {
        let p = TolerancePolicy::Threshold(ThresholdPolicy::noise_score(
            PerLayer::uniform(3.0),
            f.clone(),
        ));
        assert!(is_invalid_parameter(p.validate()), "{p:?}");
        // bad floors are refused even when they only serve reporting
        let p = TolerancePolicy::Threshold(ThresholdPolicy {
            metric: Metric::MaxAbs,
            thresholds: PerLayer::uniform(1.0),
            noise_floors: Some(f),
        });
        assert!(is_invalid_parameter(p.validate()), "{p:?}");
    }
    let no_floors = ThresholdPolicy::new(Metric::NoiseScore, PerLayer::uniform(3.0));
    assert!(is_invalid_parameter(no_floors.validate()));
    // valid edge cases
    TolerancePolicy::Exact.validate().unwrap();
    threshold(Metric::MaxAbs, 0.0).validate().unwrap();
}

#[test]
fn invalid_calibration_inputs_are_refused() {
    let samples: BTreeMap<u32, Vec<f64>> = [(0, vec![0.1, 0.2, 0.3])].into();
    for alpha in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
        let config = CalibrationConfig {
            alpha,
            ..Default::default()
        };
        assert!(
            is_invalid_parameter(calibrate(&samples, &config)),
            "{alpha}"
        );
    }
    for margin in [0.99, 0.0, f64::NAN, f64::INFINITY] {
        let config = CalibrationConfig {
            margin,
            ..Default::default()
        };
        assert!(
            is_invalid_parameter(calibrate(&samples, &config)),
            "{margin}"
        );
    }
    for confidence in [0.0, 1.0, f64::NAN] {
        let config = CalibrationConfig {
            confidence,
            ..Default::default()
        };
        assert!(is_invalid_parameter(calibrate(&samples, &config)));
        assert!(is_invalid_parameter(measure_fpr(
            &PerLayer::uniform(1.0),
            &samples,
            confidence
        )));
    }
    let config = CalibrationConfig::default();
    let bad_samples: [BTreeMap<u32, Vec<f64>>; 5] = [
        BTreeMap::new(),
        [(0, vec![])].into(),
        [(0, vec![0.1]), (1, vec![0.1, f64::NAN])].into(),
        [(0, vec![0.1, -0.2])].into(),
        [(0, vec![f64::INFINITY])].into(),
    ];
    for s in &bad_samples {
        assert!(is_invalid_parameter(calibrate(s, &config)), "{s:?}");
        assert!(is_invalid_parameter(measure_fpr(
            &PerLayer::uniform(1.0),
            s,
            0.95
        )));
    }
    for t in [
        PerLayer::uniform(-1.0),
        PerLayer::uniform(1.0).with(0, f64::NAN),
    ] {
        assert!(is_invalid_parameter(measure_fpr(&t, &samples, 0.95)));
    }
    assert!(is_invalid_parameter(noise_floors_from_medians(
        &[(0, vec![0.0, 0.0, 1.0])].into()
    )));
    assert!(is_invalid_parameter(clopper_pearson_upper(0, 0, 0.95)));
    assert!(is_invalid_parameter(clopper_pearson_upper(11, 10, 0.95)));
    assert!(is_invalid_parameter(clopper_pearson_lower(1, 10, 1.0)));
    assert!(is_invalid_parameter(FprEstimate::new(1, 0, 0.95)));
}

// ---------------------------------------------------------------------------------------------
// Clopper–Pearson
// ---------------------------------------------------------------------------------------------

/// (k, n, confidence, one-sided lower, one-sided upper). Exact reference values from the
/// binomial sums in mpmath at 60 digits (`pip install mpmath`), with P(Bin(n,p) <= k) summed
/// term by term and solved for p by 300 bisection steps:
///
/// ```text
/// python3 -c "
/// from mpmath import mp, mpf, binomial
/// mp.dps = 60
/// cdf = lambda k, n, p: sum(binomial(n, i) * p**i * (1-p)**(n-i) for i in range(k+1))
/// def solve(f, t):
///     lo, hi = mpf(0), mpf(1)
///     for _ in range(300):
///         mid = (lo+hi)/2
///         lo, hi = (mid, hi) if f(mid) > t else (lo, mid)
///     return (lo+hi)/2
/// up = lambda k, n, g: 1 if k == n else solve(lambda p: cdf(k, n, p), 1-mpf(g))
/// lo = lambda k, n, g: 0 if k == 0 else solve(lambda p: cdf(k-1, n, p), mpf(g))
/// print(mp.nstr(lo(100, 10000, 0.95), 17), mp.nstr(up(100, 10000, 0.95), 17))"
/// ```
const CP_REFERENCE: [(u64, u64, f64, f64, f64); 11] = [
    (0, 10, 0.95, 0.0, 0.258_865_550_893_052_22),
    (
        1,
        10,
        0.95,
        0.005_116_196_891_823_705_8,
        0.394_163_302_436_504_71,
    ),
    (
        5,
        10,
        0.95,
        0.222_441_101_008_129_13,
        0.777_558_898_991_870_87,
    ),
    (
        9,
        10,
        0.95,
        0.605_836_697_563_495_29,
        0.994_883_803_108_176_29,
    ),
    (10, 10, 0.95, 0.741_134_449_106_947_78, 1.0),
    (0, 10000, 0.95, 0.0, 0.000_299_528_359_776_611_92),
    (
        100,
        10000,
        0.95,
        0.008_420_198_936_739_017_2,
        0.011_797_233_971_347_622,
    ),
    (
        100,
        10000,
        0.99,
        0.007_829_753_046_566_951_9,
        0.012_567_582_048_691_78,
    ),
    (
        3,
        1000,
        0.9,
        0.001_102_560_699_532_207_6,
        0.006_668_495_337_068_159_3,
    ),
    (
        50,
        200,
        0.975,
        0.191_607_169_622_586_51,
        0.315_962_833_329_869_02,
    ),
    (
        1234,
        100000,
        0.95,
        0.011_771_249_235_555_885,
        0.012_929_822_644_615_83,
    ),
];

#[test]
fn clopper_pearson_matches_exact_reference() {
    for (k, n, conf, lower, upper) in CP_REFERENCE {
        let u = clopper_pearson_upper(k, n, conf).unwrap();
        let l = clopper_pearson_lower(k, n, conf).unwrap();
        assert!(
            close(u, upper, 1e-9),
            "upper({k}, {n}, {conf}) = {u}, want {upper}"
        );
        assert!(
            close(l, lower, 1e-9) || (lower == 0.0 && l == 0.0),
            "lower({k}, {n}, {conf}) = {l}, want {lower}"
        );
        let e = FprEstimate::new(k, n, conf).unwrap();
        assert_eq!((e.lower, e.upper, e.rate), (l, u, k as f64 / n as f64));
    }
}

#[test]
fn clopper_pearson_zero_exceedances_closed_form() {
    // k = 0: upper = 1 - (1 - g)^(1/n)
    for (n, g) in [
        (1u64, 0.95),
        (7, 0.5),
        (3000, 0.95),
        (10_000, 0.99),
        (1_000_000, 0.95),
    ] {
        let want = -((1.0f64 - g).ln() / n as f64).exp_m1();
        let got = clopper_pearson_upper(0, n, g).unwrap();
        assert!(close(got, want, 1e-10), "n = {n}: {got} vs {want}");
    }
}

#[test]
fn incomplete_beta_matches_reference() {
    // mpmath: betainc(a, b, 0, x, regularized=True) at 60 digits
    for (a, b, x, want) in [
        (2.0, 3.0, 0.4, 0.5248),
        (0.5, 0.5, 0.3, 0.369_010_119_565_545_38),
        (101.0, 9900.0, 0.0118, 0.950_257_092_149_993_23),
        (10.0, 10.0, 0.5, 0.5),
        (3.5, 7.25, 0.8, 0.999_616_074_357_266_39),
    ] {
        let got = regularized_incomplete_beta(a, b, x);
        assert!(
            close(got, want, 1e-11),
            "I_{x}({a}, {b}) = {got}, want {want}"
        );
    }
    assert_eq!(regularized_incomplete_beta(2.0, 3.0, 0.0), 0.0);
    assert_eq!(regularized_incomplete_beta(2.0, 3.0, 1.0), 1.0);
}

// ---------------------------------------------------------------------------------------------
// calibration
// ---------------------------------------------------------------------------------------------

/// Seeded honest samples: relative-L2 deviations of honest other-hardware runs, log-normal with
/// a median that doubles with each layer (noise grows with depth).
fn honest_samples(seed: u64, layers: u32, per_layer: usize) -> BTreeMap<u32, Vec<f64>> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut uniform = move || ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    (0..layers)
        .map(|l| {
            let median = 1e-4 * 2f64.powi(l as i32);
            let xs = (0..per_layer)
                .map(|_| {
                    // Box–Muller
                    let z = (-2.0 * uniform().ln()).sqrt()
                        * (2.0 * std::f64::consts::PI * uniform()).cos();
                    median * (0.5 * z).exp()
                })
                .collect();
            (l, xs)
        })
        .collect()
}

/// The criterion of the calibration test: on every layer, the calibration's in-sample rate is
/// at most the target, and the rate measured on fresh held-out samples is within the reported
/// upper bound (per layer, and pooled).
///
/// It is statistical. With the right order statistic `x_(n−m)`, `m = ⌊α n⌋`, the true
/// exceedance probability of the threshold is distributed as `Beta(m + 1, n − m)`, exactly the
/// distribution whose `γ`-quantile is the reported Clopper–Pearson upper bound for `k = m`, so
/// each layer fails with probability about `1 − γ` (a little more from the held-out sampling
/// noise). A scan of 200 seeds at `γ = 0.999` (4 layers, 10,000 calibration and 100,000 held-out
/// samples each): the right order statistic held on 196 seeds; ranks `n − 2m`, `n − 1.5m` and
/// `m + 1` (wrong tail) held on none. The seeds below are fixed, so the test is deterministic.
fn calibration_holds(
    reported: &Calibration,
    thresholds: &PerLayer,
    held_out: &BTreeMap<u32, Vec<f64>>,
) -> bool {
    let measured = measure_fpr(thresholds, held_out, reported.config.confidence).unwrap();
    reported.layers.iter().all(|(l, cal)| {
        cal.fpr.rate <= reported.config.alpha && measured.layers[l].rate <= cal.fpr.upper
    }) && measured.overall.rate <= reported.overall.upper
}

#[test]
fn calibrated_thresholds_meet_the_target_on_held_out_samples() {
    let alpha = 0.01;
    let config = CalibrationConfig {
        alpha,
        margin: 1.0,
        confidence: 0.999,
    };
    let train = honest_samples(1, 4, 10_000);
    let held_out = honest_samples(2, 4, 100_000);
    let cal = calibrate(&train, &config).unwrap();

    for (l, c) in &cal.layers {
        // rank = n - floor(alpha n) = 9900; no ties, so exactly 100 exceedances
        assert_eq!(c.rank, 9_900);
        let mut sorted = train[l].clone();
        sorted.sort_by(f64::total_cmp);
        assert_eq!(c.order_statistic, sorted[9_899]);
        assert_eq!(c.threshold, c.order_statistic);
        assert_eq!(c.fpr.exceedances, 100);
        assert_eq!(c.fpr.rate, alpha);
        // mpmath reference (see CP_REFERENCE): upper(100, 10000, 0.999)
        assert!(close(c.fpr.upper, 0.013_468_840_676_193_816, 1e-9));
    }
    assert_eq!(cal.overall.exceedances, 400);
    assert_eq!(cal.overall.samples, 40_000);
    // thresholds grow with depth like the noise
    let t = cal.thresholds();
    assert!((0..3).all(|l| t.get(l + 1) > 1.5 * t.get(l)));
    assert_eq!(t.default, t.get(3));

    assert!(calibration_holds(&cal, &t, &held_out));
    let measured = measure_fpr(&t, &held_out, config.confidence).unwrap();
    for (l, m) in &measured.layers {
        // and the held-out rate is near the target, not trivially small
        assert!(m.rate > alpha / 2.0, "layer {l}: {m:?}");
    }
    // a policy built from it measures the same
    let policy = match cal.policy(Metric::RelL2, None).unwrap() {
        TolerancePolicy::Threshold(p) => p,
        TolerancePolicy::Exact => unreachable!(),
    };
    assert_eq!(
        policy.measure_fpr(&held_out, config.confidence).unwrap(),
        measured
    );

    // The test can fail: thresholds from a wrong order statistic, reported with the same
    // calibration, are caught on the held-out samples.
    let with_rank = |rank_of: &dyn Fn(usize) -> usize| PerLayer {
        default: 0.0,
        overrides: train
            .iter()
            .map(|(&l, xs)| {
                let mut s = xs.clone();
                s.sort_by(f64::total_cmp);
                (l, s[rank_of(s.len()) - 1])
            })
            .collect(),
    };
    // rank n - 2 floor(alpha n): twice the target
    assert!(!calibration_holds(
        &cal,
        &with_rank(&|n| n - 2 * (n / 100)),
        &held_out
    ));
    // rank n - 1.5 floor(alpha n)
    assert!(!calibration_holds(
        &cal,
        &with_rank(&|n| n - 3 * (n / 200)),
        &held_out
    ));
    // rank floor(alpha n) + 1: the wrong tail
    assert!(!calibration_holds(
        &cal,
        &with_rank(&|n| n / 100 + 1),
        &held_out
    ));
    // and the right one passes through the same code path
    assert!(calibration_holds(
        &cal,
        &with_rank(&|n| n - n / 100),
        &held_out
    ));
}

#[test]
fn a_uniform_threshold_misallocates_false_positives() {
    // Pooling all layers into one threshold: shallow layers never alarm, deep ones alarm far
    // more often than the target.
    let config = CalibrationConfig {
        alpha: 0.01,
        ..Default::default()
    };
    let train = honest_samples(3, 4, 5_000);
    let pooled: BTreeMap<u32, Vec<f64>> = [(0, train.values().flatten().copied().collect())].into();
    let uniform = PerLayer::uniform(calibrate(&pooled, &config).unwrap().thresholds().default);
    let m = measure_fpr(&uniform, &honest_samples(4, 4, 5_000), 0.95).unwrap();
    assert_eq!(m.layers[&0].exceedances, 0);
    assert!(m.layers[&3].lower > 0.02, "{:?}", m.layers[&3]);
}

#[test]
fn margin_and_small_sample_behaviour() {
    let xs: Vec<f64> = (1..=100).map(f64::from).collect();
    let samples: BTreeMap<u32, Vec<f64>> = [(2, xs)].into();
    // alpha n = 5: rank 95, x_(95) = 95, exceedances 96..=100
    let cal = calibrate(
        &samples,
        &CalibrationConfig {
            alpha: 0.05,
            margin: 1.0,
            confidence: 0.95,
        },
    )
    .unwrap();
    let c = cal.layers[&2];
    assert_eq!((c.rank, c.order_statistic, c.threshold), (95, 95.0, 95.0));
    assert_eq!(c.fpr.exceedances, 5);
    // margin 1.02: threshold 96.9, exceedances 97..=100
    let cal = calibrate(
        &samples,
        &CalibrationConfig {
            alpha: 0.05,
            margin: 1.02,
            confidence: 0.95,
        },
    )
    .unwrap();
    let c = cal.layers[&2];
    assert_eq!(c.order_statistic, 95.0);
    assert!(close(c.threshold, 96.9, 1e-15));
    assert_eq!(c.fpr.exceedances, 4);
    // alpha n < 1: the maximum, no exceedance, and an upper bound far above alpha
    let cal = calibrate(
        &samples,
        &CalibrationConfig {
            alpha: 0.001,
            ..Default::default()
        },
    )
    .unwrap();
    let c = cal.layers[&2];
    assert_eq!((c.rank, c.threshold, c.fpr.exceedances), (100, 100.0, 0));
    assert!(c.fpr.upper > 0.02);
    // ties: every sample of the order statistic's value passes
    let tied: BTreeMap<u32, Vec<f64>> = [(0, vec![1.0, 2.0, 2.0, 2.0, 2.0])].into();
    let cal = calibrate(
        &tied,
        &CalibrationConfig {
            alpha: 0.2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(cal.layers[&0].threshold, 2.0);
    assert_eq!(cal.layers[&0].fpr.exceedances, 0);
}

#[test]
fn zero_honest_deviation_calibrates_to_exact() {
    // bitwise-identical hardware: every honest deviation is 0
    let mut samples: BTreeMap<u32, Vec<f64>> = [(0, vec![0.0; 10_000])].into();
    // a layer where only 0.5% of honest cells deviate: the 1% target still gives 0
    let mut mostly = vec![0.0; 9_950];
    mostly.extend((0..50).map(|i| 1e-6 * f64::from(i + 1)));
    samples.insert(1, mostly);
    let config = CalibrationConfig {
        alpha: 0.01,
        ..Default::default()
    };
    let cal = calibrate(&samples, &config).unwrap();
    assert_eq!(cal.layers[&0].threshold, 0.0);
    assert_eq!(cal.layers[&0].fpr.exceedances, 0);
    assert!(close(
        cal.layers[&0].fpr.upper,
        0.000_299_528_359_776_611_92,
        1e-9
    ));
    assert_eq!(cal.layers[&1].threshold, 0.0);
    assert_eq!(cal.layers[&1].fpr.exceedances, 50);
    let m = measure_fpr(&cal.thresholds(), &[(0, vec![0.0; 500])].into(), 0.95).unwrap();
    assert_eq!(m.overall.exceedances, 0);
    // the policy built from it accepts equal values and nothing else
    let policy = cal.policy(Metric::RelL2, None).unwrap();
    assert!(judge(&policy, 0, &[1.0, 2.0], &[1.0, 2.0]).is_ok());
    assert!(judge(
        &policy,
        0,
        &[1.0, 2.0],
        &[1.0, f32::from_bits(2f32.to_bits() + 1)]
    )
    .is_err());
}

#[test]
fn noise_floors_from_medians_and_noise_score_calibration() {
    let rel = honest_samples(5, 3, 2_001);
    let floors = noise_floors_from_medians(&rel).unwrap();
    for (l, xs) in &rel {
        let mut s = xs.clone();
        s.sort_by(f64::total_cmp);
        assert_eq!(floors.get(*l), s[1000]);
    }
    assert_eq!(floors.default, floors.get(2));
    let even = noise_floors_from_medians(&[(0, vec![4.0, 1.0, 3.0, 2.0])].into()).unwrap();
    assert_eq!(even.get(0), 2.5);
    // noise scores of honest samples: the same distribution on every layer, so calibrated
    // noise-score thresholds are nearly equal across layers
    let scores: BTreeMap<u32, Vec<f64>> = rel
        .iter()
        .map(|(&l, xs)| (l, xs.iter().map(|x| x / floors.get(l)).collect()))
        .collect();
    let cal = calibrate(&scores, &CalibrationConfig::default()).unwrap();
    let t = cal.thresholds();
    assert!((0..3).all(|l| t.get(l) > 1.5 && t.get(l) < 10.0), "{t:?}");
    cal.policy(Metric::NoiseScore, Some(floors))
        .unwrap()
        .validate()
        .unwrap();
    assert!(is_invalid_parameter(cal.policy(Metric::NoiseScore, None)));
}

// ---------------------------------------------------------------------------------------------
// serde
// ---------------------------------------------------------------------------------------------

fn round_trip<T>(value: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_string(value).unwrap();
    let back: T = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, value, "{json}");
    back
}

#[test]
fn serde_json_round_trips() {
    round_trip(&TolerancePolicy::Exact);
    round_trip(&threshold(Metric::MaxAbs, 0.25));
    let policy = TolerancePolicy::Threshold(ThresholdPolicy::noise_score(
        PerLayer::uniform(3.0).with(0, 2.0).with(11, 4.5),
        PerLayer::uniform(1e-3).with(11, 7e-3),
    ));
    round_trip(&policy);
    for v in [
        ToleranceViolation::NonFinite {
            side: Side::Recomputed,
            index: 7,
        },
        ToleranceViolation::Exceeded {
            metric: Metric::NoiseScore,
            value: 12.5,
            threshold: 3.0,
        },
        ToleranceViolation::LengthMismatch {
            claimed: 10,
            recomputed: 12,
        },
        ToleranceViolation::Mismatch { index: 3 },
    ] {
        round_trip(&v);
        assert!(!v.to_string().is_empty());
    }
    round_trip(&Deviation {
        max_abs: 0.5,
        rel_l2: 1e-3,
        noise_score: Some(2.0),
    });
    round_trip(&Deviation::ZERO);
    round_trip(&CalibrationConfig::default());
    let samples = honest_samples(9, 2, 500);
    let cal = calibrate(&samples, &CalibrationConfig::default()).unwrap();
    round_trip(&cal);
    round_trip(&measure_fpr(&cal.thresholds(), &samples, 0.9).unwrap());
    round_trip(&Metric::RelL2);
    round_trip(&Side::Claimed);

    // the shapes a configuration file uses
    let json = serde_json::to_value(&policy).unwrap();
    assert_eq!(json["threshold"]["metric"], "noise_score");
    assert_eq!(json["threshold"]["thresholds"]["overrides"]["11"], 4.5);
    assert_eq!(
        serde_json::to_value(TolerancePolicy::Exact).unwrap(),
        "exact"
    );
    let parsed: TolerancePolicy = serde_json::from_str(
        r#"{"threshold": {"metric": "rel_l2", "thresholds": {"default": 0.01}}}"#,
    )
    .unwrap();
    assert_eq!(parsed, threshold(Metric::RelL2, 0.01));
    // a misspelt field is refused, not ignored
    for typo in [
        r#"{"threshold": {"metric": "rel_l2", "thresholds": {"default": 0.01, "overides": {"3": 0.5}}}}"#,
        r#"{"threshold": {"metric": "rel_l2", "thresholds": {"default": 0.01}, "noise_floor": null}}"#,
    ] {
        assert!(
            serde_json::from_str::<TolerancePolicy>(typo).is_err(),
            "{typo}"
        );
    }
    let v = ToleranceViolation::NonFinite {
        side: Side::Claimed,
        index: 4,
    };
    assert_eq!(v.to_string(), "non-finite claimed value at element 4");
    let v = serde_json::to_value(ToleranceViolation::Mismatch { index: 3 }).unwrap();
    assert_eq!(v, serde_json::json!({"mismatch": {"index": 3}}));
    // violations travel inside verdicts, whose binary form (postcard) is not self-describing:
    // externally tagged enums round-trip there, internally tagged ones would not
    let v = ToleranceViolation::Exceeded {
        metric: veritrace_protocol::tolerance::Metric::RelL2,
        value: 0.5,
        threshold: 0.25,
    };
    let bytes = postcard::to_allocvec(&v).unwrap();
    assert_eq!(
        postcard::from_bytes::<ToleranceViolation>(&bytes).unwrap(),
        v
    );
}

// ---------------------------------------------------------------------------------------------
// property tests
// ---------------------------------------------------------------------------------------------

fn float_dtype() -> impl Strategy<Value = Dtype> {
    prop_oneof![Just(Dtype::F32), Just(Dtype::F16), Just(Dtype::Bf16)]
}

fn any_dtype() -> impl Strategy<Value = Dtype> {
    prop_oneof![
        Just(Dtype::F32),
        Just(Dtype::F16),
        Just(Dtype::Bf16),
        Just(Dtype::I8)
    ]
}

/// Bits of a non-finite element: a zero mantissa (after masking `payload` to the dtype's
/// mantissa width) is an infinity, any other a NaN.
fn non_finite_bytes(dtype: Dtype, negative: bool, payload: u32) -> Vec<u8> {
    match dtype {
        Dtype::F32 => {
            let mant = payload & 0x007f_ffff;
            (u32::from(negative) << 31 | 0x7f80_0000 | mant)
                .to_le_bytes()
                .to_vec()
        }
        Dtype::F16 => {
            let mant = (payload & 0x3ff) as u16;
            (u16::from(negative) << 15 | 0x7c00 | mant)
                .to_le_bytes()
                .to_vec()
        }
        Dtype::Bf16 => {
            let mant = (payload & 0x7f) as u16;
            (u16::from(negative) << 15 | 0x7f80 | mant)
                .to_le_bytes()
                .to_vec()
        }
        Dtype::I8 => unreachable!("i8 has no non-finite values"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A NaN or infinity inserted at any position of either side is always caught, with that
    /// side and index, by every policy.
    #[test]
    fn inserted_non_finite_is_caught(
        dtype in float_dtype(),
        values in prop::collection::vec(-1000.0f32..1000.0, 1..48),
        noise in prop::collection::vec(-1.0f32..1.0, 48),
        pos in any::<prop::sample::Index>(),
        on_recomputed in any::<bool>(),
        negative in any::<bool>(),
        payload in prop_oneof![Just(0u32), 1u32..(1 << 23)],
        policy_kind in 0usize..4,
    ) {
        let claimed: Vec<f32> = values.clone();
        let recomputed: Vec<f32> = values.iter().zip(&noise).map(|(v, n)| v + n).collect();
        let mut c = encode(dtype, &claimed);
        let mut r = encode(dtype, &recomputed);
        let idx = pos.index(values.len());
        let size = dtype.size();
        let bad = non_finite_bytes(dtype, negative, payload);
        let (target, side) = if on_recomputed {
            (&mut r, Side::Recomputed)
        } else {
            (&mut c, Side::Claimed)
        };
        target[idx * size..(idx + 1) * size].copy_from_slice(&bad);
        let policy = match policy_kind {
            0 => TolerancePolicy::Exact,
            1 => threshold(Metric::MaxAbs, 1e30),
            2 => threshold(Metric::RelL2, 1e30),
            _ => TolerancePolicy::Threshold(ThresholdPolicy::noise_score(
                PerLayer::uniform(1e30),
                PerLayer::uniform(1e-3),
            )),
        };
        let want = ToleranceViolation::NonFinite { side, index: idx as u64 };
        prop_assert_eq!(policy.check(3, dtype, &c, &r).unwrap(), Err(want.clone()));
        // and on decoded values
        let dc = decode_values(dtype, &c).unwrap();
        let dr = decode_values(dtype, &r).unwrap();
        prop_assert_eq!(Deviation::between(&dc, &dr, None), Err(want));
    }

    /// Exact mode accepts identical bytes and rejects any single bit flip on either side, at
    /// the flipped element (or as a non-finite value when the flip makes one).
    #[test]
    fn exact_mode_catches_every_bit_flip(
        dtype in any_dtype(),
        values in prop::collection::vec(-100.0f32..100.0, 1..32),
        bit in any::<prop::sample::Index>(),
        on_recomputed in any::<bool>(),
    ) {
        let bytes = encode(dtype, &values);
        let policy = TolerancePolicy::Exact;
        prop_assert_eq!(policy.check(0, dtype, &bytes, &bytes).unwrap(), Ok(Deviation::ZERO));
        let bit = bit.index(bytes.len() * 8);
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let index = (bit / 8 / dtype.size()) as u64;
        let (c, r, side) = if on_recomputed {
            (&bytes, &flipped, Side::Recomputed)
        } else {
            (&flipped, &bytes, Side::Claimed)
        };
        let got = policy.check(0, dtype, c, r).unwrap();
        let flipped_value = decode_values(dtype, &flipped).unwrap()[index as usize];
        if flipped_value.is_finite() {
            prop_assert_eq!(got, Err(ToleranceViolation::Mismatch { index }));
        } else {
            prop_assert_eq!(got, Err(ToleranceViolation::NonFinite { side, index }));
        }
    }

    /// Metric invariants: non-negative, zero on identical input, max-abs <= L2 of the
    /// difference, and the pass/fail decision is `value <= threshold`.
    #[test]
    fn metric_invariants(
        pairs in prop::collection::vec((-1e3f32..1e3, -1e3f32..1e3), 0..40),
        t in 0.0f64..2e3,
    ) {
        let (c, r): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
        let d = Deviation::between(&c, &r, Some(0.5)).unwrap();
        prop_assert!(d.max_abs >= 0.0 && d.rel_l2 >= 0.0);
        prop_assert_eq!(d.noise_score, Some(d.rel_l2 / 0.5));
        let same = Deviation::between(&r, &r, None).unwrap();
        prop_assert_eq!(same, Deviation::ZERO);
        let l2: f64 = c.iter().zip(&r).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
        prop_assert!(d.max_abs <= l2.sqrt() * (1.0 + 1e-12));
        let judged = judge(&threshold(Metric::MaxAbs, t), 0, &c, &r);
        prop_assert_eq!(judged.is_ok(), d.max_abs <= t);
    }
}
