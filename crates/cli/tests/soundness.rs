//! End-to-end tests of `veritrace soundness`: the built binary, its text and JSON output, and
//! its refusals (exit status 2, never a panic).

mod common;

use common::{veritrace, Output};

fn soundness(args: &[&str]) -> Output {
    let mut all = vec!["soundness"];
    all.extend_from_slice(args);
    veritrace(&all)
}

#[track_caller]
fn ok(args: &[&str]) -> String {
    let o = soundness(args);
    assert_eq!(o.code, 0, "{args:?} failed:\n{}", o.stderr);
    assert!(
        o.stderr.is_empty(),
        "{args:?} wrote to stderr:\n{}",
        o.stderr
    );
    o.stdout
}

#[track_caller]
fn json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = ok(&all);
    assert_eq!(out.lines().count(), 1, "one JSON line expected:\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

#[track_caller]
fn refused(args: &[&str], needle: &str) {
    let o = soundness(args);
    assert_eq!(
        o.code, 2,
        "{args:?} should exit 2, got {}:\n{}",
        o.code, o.stderr
    );
    assert!(
        o.stdout.is_empty(),
        "{args:?} wrote to stdout:\n{}",
        o.stdout
    );
    assert!(
        o.stderr.contains(needle),
        "{args:?}: {needle:?} not in the error:\n{}",
        o.stderr
    );
}

#[test]
fn anchor_table_detection_probabilities() {
    // anchors.md: N = 10^4, 1% bad: k = 100 -> 0.636; k = 300 -> 0.953; k = 460 -> 0.991.
    // Exact values (python3 -c 'from math import comb; import mpmath as m; m.mp.dps=30;
    // [print(k, 1-m.mpf(comb(9900,k))/comb(10000,k)) for k in (100,300,460)]'):
    // 0.63580548476, 0.95317480830, 0.99120165874; printed to six decimals.
    for (k, detection, miss) in [
        ("100", "0.635805", "0.364195"),
        ("300", "0.953175", "0.0468252"),
        ("460", "0.991202", "0.00879834"),
    ] {
        let out = ok(&["--cells", "10000", "--bad", "100", "--samples", k]);
        assert!(
            out.contains(&format!("detection            {detection}\n")),
            "k = {k}:\n{out}"
        );
        assert!(
            out.contains(&format!("miss probability     {miss} (2^")),
            "k = {k}:\n{out}"
        );
        assert!(out.contains("interactive"), "{out}");
        assert!(out.contains("non-interactive, grinding"), "{out}");
    }
}

#[test]
fn anchor_sample_sizes() {
    // anchors.md: f = 10%: k = 132 (lambda 20), 264 (lambda 40); f = 1%: 1380 and 2759.
    for (f, bits, k) in [
        ("0.1", "20", 132),
        ("0.1", "40", 264),
        ("0.01", "20", 1380),
        ("0.01", "40", 2759),
    ] {
        let args = ["--cells", "10000000", "--cheat-fraction", f, "--bits", bits];
        let out = ok(&args);
        assert!(out.contains(&format!("samples needed       {k} ")), "{out}");
        assert!(out.contains(&format!("with replacement     {k} ")), "{out}");
        let v = json(&args);
        assert_eq!(v["samples"], k);
        assert_eq!(v["with_replacement_samples"], k);
        assert!(v["log2_miss_probability"].as_f64().unwrap() <= -bits.parse::<f64>().unwrap());
    }
    // Without replacement pays off on small traces: N = 10^4, 1%, 20 bits: 1289 < 1380.
    let v = json(&[
        "--cells",
        "10000",
        "--cheat-fraction",
        "0.01",
        "--bits",
        "20",
    ]);
    assert_eq!(v["samples"], 1289);
    assert_eq!(v["bad_cells"], 100);
    assert_eq!(v["with_replacement_samples"], 1380);
}

#[test]
fn json_report_parses_and_is_consistent() {
    let v = json(&["--cells", "10000", "--bad", "100", "--samples", "300"]);
    assert_eq!(v["cells"], 10000);
    assert_eq!(v["bad_cells"], 100);
    assert_eq!(v["samples"], 300);
    assert_eq!(v["rounds"], 1);
    let miss = v["miss_probability"].as_f64().unwrap();
    let detection = v["detection_probability"].as_f64().unwrap();
    assert!((miss - 0.046_825_191_703_811_15).abs() < 1e-15, "{v}");
    assert!((miss + detection - 1.0).abs() < 1e-15, "{v}");
    let bits = v["security_bits"].as_f64().unwrap();
    assert!((bits - 4.416_571_288_855_33).abs() < 1e-12, "{v}");
    assert_eq!(v["certain_detection"], false);
    assert_eq!(v["miss_method"], "exact");
    let text = ok(&["--cells", "10000", "--bad", "100", "--samples", "300"]);
    assert!(!text.contains("method"), "{text}");
    assert!(!text.contains("<="), "{text}");
}

#[test]
fn grinding_rounds_and_power() {
    // Three rounds of 460, a budget of 2^40 hashes, 20 bits of proof-of-work: 2^20 attempts.
    let args = [
        "--cells",
        "10000",
        "--bad",
        "100",
        "--samples",
        "460",
        "--rounds",
        "3",
        "--grind-bits",
        "40",
        "--pow-bits",
        "20",
    ];
    let v = json(&args);
    let per_round = v["log2_miss_per_round"].as_f64().unwrap();
    let total = v["log2_miss"].as_f64().unwrap();
    assert!((total - 3.0 * per_round).abs() < 1e-12, "{v}");
    assert_eq!(v["log2_grinding_attempts"], 20.0);
    let interactive = v["security_bits"].as_f64().unwrap();
    let grinding = v["security_bits_grinding"].as_f64().unwrap();
    assert!((interactive - grinding - 20.0).abs() < 1e-12, "{v}");
    let sequential = v["security_bits_grinding_sequential"].as_f64().unwrap();
    assert!(sequential <= grinding, "{v}");
    let text = ok(&args);
    assert!(text.contains("3 rounds"), "{text}");
    assert!(text.contains("miss per round"), "{text}");
    assert!(text.contains("grinding round by round"), "{text}");
    assert!(text.contains("2^20 attempts"), "{text}");

    // Detection power lowers the figures; power 0 never detects.
    let weak = json(&[
        "--cells",
        "10000",
        "--bad",
        "100",
        "--samples",
        "300",
        "--power",
        "0.5",
    ]);
    assert!(weak["security_bits"].as_f64().unwrap() < interactive);
    let none = json(&[
        "--cells",
        "10000",
        "--bad",
        "100",
        "--samples",
        "300",
        "--power",
        "0",
    ]);
    assert_eq!(none["miss_probability"], 1.0);
    assert_eq!(none["security_bits"], 0.0);

    // Sizing against grinding: 40 bits left after 2^60 hashes with 20 bits of proof-of-work
    // means a miss probability of 2^-80.
    let v = json(&[
        "--cells",
        "10000000",
        "--cheat-fraction",
        "0.01",
        "--bits",
        "40",
        "--grind-bits",
        "60",
        "--pow-bits",
        "20",
    ]);
    assert_eq!(v["lambda_bits"], 80.0);
    assert_eq!(v["security_bits"], 40.0);
    assert!(v["log2_miss_probability"].as_f64().unwrap() <= -80.0);
}

#[test]
fn certain_detection_and_tiny_probabilities() {
    let out = ok(&["--cells", "100", "--bad", "10", "--samples", "91"]);
    assert!(out.contains("miss probability     0 "), "{out}");
    assert!(out.contains("inf"), "{out}");
    let v = json(&["--cells", "100", "--bad", "10", "--samples", "91"]);
    assert_eq!(v["certain_detection"], true);
    assert!(v["security_bits"].is_null());
    // 2^-3005 underflows f64 but prints from its logarithm.
    let out = ok(&["--cells", "1000000", "--bad", "1000", "--samples", "875000"]);
    assert!(out.contains("(2^-3005.0596)"), "{out}");
    assert!(out.contains("detection            1 - "), "{out}");
    assert!(out.contains("e-905"), "{out}");
}

#[test]
fn bad_inputs_exit_2_without_panics() {
    refused(
        &[
            "--cells",
            "100",
            "--bad",
            "10",
            "--samples",
            "5",
            "--cheat-fraction",
            "0.1",
            "--bits",
            "20",
        ],
        "cannot be used with",
    );
    refused(
        &["--cells", "100", "--bad", "101", "--samples", "5"],
        "more than the 100 cells",
    );
    refused(
        &["--cells", "100", "--bad", "10", "--samples", "101"],
        "more than the 100 cells",
    );
    refused(
        &["--cells", "100", "--cheat-fraction", "1.5", "--bits", "20"],
        "not in (0, 1]",
    );
    refused(
        &["--cells", "100", "--cheat-fraction", "0", "--bits", "20"],
        "not in (0, 1]",
    );
    refused(
        &["--cells", "100", "--cheat-fraction", "-0.1", "--bits", "20"],
        "not in (0, 1]",
    );
    refused(
        &["--cells", "100", "--cheat-fraction", "nan", "--bits", "20"],
        "not in (0, 1]",
    );
    refused(&["--cells", "100", "--cheat-fraction", "0.1"], "--bits");
    refused(&["--cells", "100", "--bad", "10"], "--samples");
    refused(&["--cells", "100", "--samples", "10"], "--bad");
    refused(&["--cells", "100"], "--cheat-fraction");
    refused(&["--cells", "0", "--bad", "0", "--samples", "0"], "--cells");
    refused(&["--cells", "-5", "--bad", "0", "--samples", "0"], "");
    refused(
        &[
            "--cells",
            "100",
            "--bad",
            "10",
            "--samples",
            "5",
            "--power",
            "1.5",
        ],
        "detection power",
    );
    refused(
        &[
            "--cells",
            "100",
            "--bad",
            "10",
            "--samples",
            "5",
            "--power",
            "nan",
        ],
        "detection power",
    );
    refused(
        &[
            "--cells",
            "100",
            "--cheat-fraction",
            "0.1",
            "--bits",
            "20",
            "--power",
            "0",
        ],
        "power 0",
    );
    refused(
        &[
            "--cells",
            "100",
            "--cheat-fraction",
            "0.01",
            "--bits",
            "20",
            "--power",
            "0.5",
        ],
        "unreachable",
    );
    refused(
        &[
            "--cells",
            "100",
            "--cheat-fraction",
            "0.1",
            "--bits",
            "20",
            "--rounds",
            "2",
        ],
        "--rounds",
    );
    refused(
        &[
            "--cells",
            "100",
            "--bad",
            "10",
            "--samples",
            "5",
            "--rounds",
            "0",
        ],
        "--rounds",
    );
    refused(
        &[
            "--cells",
            "100",
            "--bad",
            "10",
            "--samples",
            "5",
            "--grind-bits",
            "-3",
        ],
        "grinding budget",
    );
    refused(
        &[
            "--cells",
            "100",
            "--bad",
            "10",
            "--samples",
            "5",
            "--pow-bits",
            "inf",
        ],
        "proof-of-work",
    );
    refused(
        &[
            "--cells",
            "100",
            "--cheat-fraction",
            "0.1",
            "--bits",
            "-5",
            "--grind-bits",
            "10",
        ],
        "--bits",
    );
    refused(
        &["--cells", "100", "--cheat-fraction", "0.1", "--bits", "inf"],
        "--bits",
    );
    refused(&["--cells", "100", "--bad", "x", "--samples", "5"], "--bad");
}

/// `2^64 - 1` and its half, as command-line strings.
const MAX: &str = "18446744073709551615";
const HALF: &str = "9223372036854775807";
const E18: &str = "1000000000000000000";
const HALF_E18: &str = "500000000000000000";

#[track_caller]
fn assert_marked_bound(out: &str, method: &str) {
    assert!(
        out.contains(&format!("method               upper bound: {method}")),
        "{out}"
    );
    assert!(out.contains("miss probability     <= "), "{out}");
    assert!(out.contains("detection            >= 1 - "), "{out}");
    assert!(out.contains("security (bits, lower bounds)"), "{out}");
    assert!(
        out.contains("  interactive                      >= "),
        "{out}"
    );
}

#[test]
fn huge_analyses_answer_from_marked_closed_forms() {
    // These used to run for time proportional to min(b, k): 10^17 to 10^19 steps.
    let args = ["--cells", E18, "--bad", HALF_E18, "--samples", HALF_E18];
    let out = ok(&args);
    assert_marked_bound(&out, "Euler-Maclaurin");
    // log2 C(N/2, N/2)/C(N, N/2) = -(10^18 - 30.2): f64 resolves the 10^18.
    assert!(out.contains("(2^-999999999998557312.0000)"), "{out}");
    let v = json(&args);
    assert_eq!(v["miss_method"], "euler_maclaurin_bound");
    assert!(
        v["security_bits"].as_f64().unwrap() > 0.999_999_999e18,
        "{v}"
    );

    let mut weak = args.to_vec();
    weak.extend(["--power", "0.5"]);
    let out = ok(&weak);
    assert_marked_bound(&out, "with replacement");
    let v = json(&weak);
    assert_eq!(v["miss_method"], "with_replacement_bound");
    // log2 (3/4)^(N/2) = -2.0751874963921e17 (a lower bound on the bits).
    let bits = v["security_bits"].as_f64().unwrap();
    assert!((bits / 2.075_187_496_392_1e17 - 1.0).abs() < 1e-11, "{v}");

    // The largest counts, the most rounds, a grinding budget and a proof of work.
    let args = [
        "--cells",
        MAX,
        "--bad",
        HALF,
        "--samples",
        HALF,
        "--rounds",
        "1048576",
        "--grind-bits",
        "64",
        "--pow-bits",
        "16",
    ];
    let out = ok(&args);
    assert_marked_bound(&out, "Euler-Maclaurin");
    assert!(out.contains("miss per round       <= 1e-"), "{out}");
    assert!(
        out.contains("grinding round by round          >= "),
        "{out}"
    );
    let v = json(&args);
    assert_eq!(v["certain_detection"], false);
    assert!(
        v["security_bits_grinding_sequential"].as_f64().unwrap() > 1e24,
        "{v}"
    );

    // Every cell bad and sampled: X = N, exact at any size.
    let out = ok(&[
        "--cells",
        MAX,
        "--bad",
        MAX,
        "--samples",
        MAX,
        "--power",
        "0.5",
    ]);
    assert!(!out.contains("method"), "{out}");
    assert!(out.contains("(2^-18446744073709551616.0000)"), "{out}");
    // More samples than good cells: certain detection, exact.
    let out = ok(&[
        "--cells",
        MAX,
        "--bad",
        HALF,
        "--samples",
        "9223372036854775809",
    ]);
    assert!(out.contains("miss probability     0 "), "{out}");

    // Moderate figures from the closed form are rounded in the safe direction: the exact
    // log2 is -144.27094680069675 (80-digit mpmath), printed bits 144.270, not 144.271.
    let args = [
        "--cells",
        "1000000000000",
        "--bad",
        "10000000",
        "--samples",
        "10000000",
    ];
    let out = ok(&args);
    assert_marked_bound(&out, "Euler-Maclaurin");
    assert!(out.contains("(2^-144.2709)"), "{out}");
    assert!(out.contains(">= 144.270\n"), "{out}");
    let bits = json(&args)["security_bits"].as_f64().unwrap();
    assert!(
        bits <= 144.270_946_800_696_75 && bits > 144.270_946_8,
        "{bits}"
    );
}

#[test]
fn huge_sizings_answer_from_marked_closed_forms() {
    let args = [
        "--cells",
        E18,
        "--cheat-fraction",
        "0.5",
        "--bits",
        "1000000000",
    ];
    let out = ok(&args);
    assert!(
        out.contains("samples needed       1000000000 (without replacement, enough by the bound"),
        "{out}"
    );
    assert!(
        out.contains("method               upper bound: Euler-Maclaurin"),
        "{out}"
    );
    assert!(out.contains("P(miss) <= 2^-1000000000.7203"), "{out}");
    let v = json(&args);
    assert_eq!(v["miss_method"], "euler_maclaurin_bound");
    assert_eq!(v["samples"], 1_000_000_000_u64);

    let args = [
        "--cells",
        E18,
        "--cheat-fraction",
        "0.5",
        "--bits",
        "1000000000",
        "--power",
        "0.5",
    ];
    let out = ok(&args);
    assert!(
        out.contains("method               upper bound: with replacement"),
        "{out}"
    );
    let v = json(&args);
    assert_eq!(v["miss_method"], "with_replacement_bound");
    assert_eq!(v["samples"], 2_409_420_840_u64);

    let v = json(&[
        "--cells",
        MAX,
        "--cheat-fraction",
        "0.5",
        "--bits",
        "1e18",
        "--power",
        "0.5",
        "--grind-bits",
        "1000",
    ]);
    assert_eq!(v["miss_method"], "with_replacement_bound");
    assert!(
        v["samples"].as_u64().unwrap() > 2_409_420_839_000_000_000,
        "{v}"
    );

    // Few bad cells among 2^64 - 1: exact, whatever the number of samples.
    let out = ok(&["--cells", MAX, "--cheat-fraction", "1e-18", "--bits", "20"]);
    assert!(
        out.contains("(without replacement, exact hypergeometric; P(miss) = 2^-20.0000)"),
        "{out}"
    );
    assert!(!out.contains("method"), "{out}");
    // An absurd level: only certain detection reaches it (k = N - b + 1).
    let v = json(&["--cells", MAX, "--cheat-fraction", "0.5", "--bits", "1e300"]);
    assert_eq!(v["samples"], 9_223_372_036_854_775_808_u64);
    assert!(v["log2_miss_probability"].is_null(), "{v}");
    // Unreachable with a power below 1, refused at once (from the exact value at k = N).
    refused(
        &[
            "--cells",
            MAX,
            "--cheat-fraction",
            "1e-19",
            "--bits",
            "20",
            "--power",
            "0.5",
        ],
        "unreachable",
    );
    refused(
        &[
            "--cells",
            E18,
            "--cheat-fraction",
            "0.5",
            "--bits",
            "1e18",
            "--power",
            "0.5",
        ],
        "unreachable",
    );
}

#[test]
fn help_mentions_the_model() {
    let o = soundness(&["--help"]);
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("Hypergeometric"), "{}", o.stdout);
    assert!(o.stdout.contains("--grind-bits"), "{}", o.stdout);
}

#[test]
fn a_freivalds_bound_sets_the_power() {
    // P(pass) = erf(B / (sqrt2 |e|))^T; with B = |e| / 10 and T = 2 the power is
    // 1 - erf(0.1 / sqrt2)^2 = 1 - 0.0796557^2.
    let text = ok(&[
        "--cells",
        "10000",
        "--bad",
        "100",
        "--samples",
        "300",
        "--freivalds-bound",
        "1e-3",
        "--deviation-norm",
        "1e-2",
        "--freivalds-repetitions",
        "2",
    ]);
    assert!(text.starts_with("freivalds "), "{text}");
    let v = json(&[
        "--cells",
        "10000",
        "--bad",
        "100",
        "--samples",
        "300",
        "--freivalds-bound",
        "1e-3",
        "--deviation-norm",
        "1e-2",
        "--freivalds-repetitions",
        "2",
    ]);
    let power = v["power"].as_f64().expect("power in the report");
    let expect = 1.0 - 0.079_655_674_554_058_f64.powi(2);
    assert!((power - expect).abs() < 1e-9, "{power} vs {expect}");
    // the same miss probability as --power with that value
    let p = json(&[
        "--cells",
        "10000",
        "--bad",
        "100",
        "--samples",
        "300",
        "--power",
        &format!("{power}"),
    ]);
    assert!(v["miss_probability"].is_f64());
    assert_eq!(v["miss_probability"], p["miss_probability"]);
    // refusals: a zero deviation, with --power, without the norm
    for args in [
        vec![
            "--cells",
            "10",
            "--bad",
            "1",
            "--samples",
            "2",
            "--freivalds-bound",
            "1",
            "--deviation-norm",
            "0",
        ],
        vec![
            "--cells",
            "10",
            "--bad",
            "1",
            "--samples",
            "2",
            "--freivalds-bound",
            "1",
            "--deviation-norm",
            "1",
            "--power",
            "0.5",
        ],
        vec![
            "--cells",
            "10",
            "--bad",
            "1",
            "--samples",
            "2",
            "--freivalds-bound",
            "1",
        ],
    ] {
        let o = soundness(&args);
        assert_eq!(o.code, 2, "{args:?}: {}", o.stderr);
    }
}

/// The attention draw's power: a cell wrong in B of H heads is caught by a draw of S heads with
/// probability `1 − C(H−B, S)/C(H, S)`; here 1 of 64 heads drawn against 1 wrong head (1/64),
/// and 8 of 64 against 4 (1 − C(60, 8)/C(64, 8)).
#[test]
fn an_attention_draw_sets_the_power() {
    let base = ["--cells", "10000", "--bad", "100", "--samples", "300"];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        json(&a)
    };
    let v = with(&[
        "--attention-heads",
        "1",
        "--heads",
        "64",
        "--bad-heads",
        "1",
    ]);
    let power = v["power"].as_f64().unwrap();
    assert!((power - 1.0 / 64.0).abs() < 1e-12, "{power}");
    let v = with(&[
        "--attention-heads",
        "8",
        "--heads",
        "64",
        "--bad-heads",
        "4",
    ]);
    let miss: f64 = (0..8)
        .map(|i| (60.0 - f64::from(i)) / (64.0 - f64::from(i)))
        .product();
    assert!((v["power"].as_f64().unwrap() - (1.0 - miss)).abs() < 1e-12);
    // the same report as --power with that value
    let p = with(&["--power", &format!("{}", v["power"].as_f64().unwrap())]);
    assert_eq!(v["miss_probability"], p["miss_probability"]);
    let mut a = base.to_vec();
    a.extend_from_slice(&[
        "--attention-heads",
        "1",
        "--heads",
        "64",
        "--bad-heads",
        "1",
    ]);
    assert!(ok(&a).starts_with("attention draw "));
    // refusals: more heads drawn or wrong than there are, a missing count, with --power
    for extra in [
        vec![
            "--attention-heads",
            "65",
            "--heads",
            "64",
            "--bad-heads",
            "1",
        ],
        vec![
            "--attention-heads",
            "1",
            "--heads",
            "64",
            "--bad-heads",
            "0",
        ],
        vec!["--attention-heads", "1", "--heads", "64"],
        vec![
            "--attention-heads",
            "1",
            "--heads",
            "4",
            "--bad-heads",
            "1",
            "--power",
            "0.5",
        ],
    ] {
        let mut a = base.to_vec();
        a.extend_from_slice(&extra);
        assert_eq!(soundness(&a).code, 2, "{extra:?}");
    }
}
