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

#[test]
fn help_mentions_the_model() {
    let o = soundness(&["--help"]);
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("Hypergeometric"), "{}", o.stdout);
    assert!(o.stdout.contains("--grind-bits"), "{}", o.stdout);
}
