//! `veritrace calibrate`: thresholds from honest runs generated under honest variations or read
//! from trace files, written as a calibrated policy file that `verify --tolerance` reads as
//! written; too few runs say how many are needed (exit 2); malformed policy files are refused
//! (exit 2) naming the field.

mod common;

use common::veritrace;
use veritrace_protocol::calibration::{CalibratedPolicy, CalibrationMethod, ThresholdSource};

fn run_ok(args: &[&str]) -> String {
    let o = veritrace(args);
    assert_eq!(o.code, 0, "{args:?}: {}{}", o.stdout, o.stderr);
    o.stdout
}

/// Calibrates the tiny decoder (f32) for k = 4, target 0.1: L = 5, alpha = 0.025,
/// gamma_l = 0.99, n_min = 182 runs; 240 generated runs with a fifth held out.
fn calibrate(dir: &std::path::Path) -> (String, CalibratedPolicy) {
    let policy = dir.join("policy.json").display().to_string();
    let out = run_ok(&[
        "calibrate",
        "--honest",
        "f32/attn=eager/splitk=2",
        "--honest",
        "f32/attn=eager/order=decode",
        "--prompts",
        "240",
        "--tokens",
        "6",
        "--output",
        "2",
        "--chunk",
        "4",
        "--samples",
        "4",
        "--target-fpr",
        "0.1",
        "--unseen",
        "f32/attn=eager/splitk=4",
        "--unseen-runs",
        "20",
        "--quiet",
        "--out",
        &policy,
    ]);
    assert!(
        out.contains("unseen f32/attn=eager/splitk=4: 20 independent honest runs"),
        "{out}"
    );
    let file: CalibratedPolicy =
        serde_json::from_str(&std::fs::read_to_string(&policy).unwrap()).unwrap();
    assert!(out.contains("from 192 honest runs (182 needed)"), "{out}");
    (policy, file)
}

#[test]
fn calibrate_then_verify_with_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (policy, file) = calibrate(dir.path());
    file.validate().unwrap();
    let c = &file.calibration;
    assert_eq!(c.layers, 5);
    assert_eq!(c.runs, 192);
    assert_eq!(c.runs_needed, 182);
    assert_eq!(c.variations.len(), 2);
    for (l, t) in &c.per_layer {
        assert!(t.threshold > 0.0, "layer {l}");
    }
    // The embeddings are the same under every honest variation: the rounding floor.
    assert_eq!(c.per_layer[&0].source, ThresholdSource::RoundingFloor);
    assert_eq!(c.per_layer[&0].exact_runs, 192);
    // Split-K changes the layers' sums: a threshold from the order statistic.
    assert_eq!(c.per_layer[&1].source, ThresholdSource::OrderStatistic);
    assert_eq!(file.unseen.len(), 1);
    assert_eq!(file.unseen[0].runs, 20);
    let h = file.holdout.as_ref().expect("held-out runs");
    assert_eq!(h.runs, 48);
    assert_eq!(h.runs_with_exceedance.samples, 48);

    // An honest prover verified with the policy: accepted.
    let p = |name: &str| dir.path().join(name).display().to_string();
    run_ok(&[
        "prove",
        "--prompt",
        "5,9,2,7,1,3",
        "--output",
        "2",
        "--chunk",
        "4",
        "--out",
        &p("run"),
    ]);
    run_ok(&[
        "challenge",
        &p("run/commitment.json"),
        "--samples",
        "4",
        "--out",
        &p("ch.json"),
    ]);
    run_ok(&[
        "open",
        &p("run/trace.safetensors"),
        "--challenge",
        &p("ch.json"),
        "--out",
        &p("op.json"),
    ]);
    let verify = |tolerance: &str| {
        veritrace(&[
            "verify",
            "--commitment",
            &p("run/commitment.json"),
            "--challenge",
            &p("ch.json"),
            "--opening",
            &p("op.json"),
            "--tolerance",
            tolerance,
        ])
    };
    let o = verify(&policy);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);

    // Malformed policy files exit 2 and name the field.
    let json = std::fs::read_to_string(&policy).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "layer 3 is missing",
            Box::new(|v| {
                v["policy"]["thresholds"]["overrides"]
                    .as_object_mut()
                    .unwrap()
                    .remove("3");
            }),
        ),
        (
            "threshold of layer 2",
            Box::new(|v| v["policy"]["thresholds"]["overrides"]["2"] = (-1.0).into()),
        ),
        (
            "unknown variant `l3`",
            Box::new(|v| v["policy"]["metric"] = "l3".into()),
        ),
        (
            "target_session_fpr",
            Box::new(|v| v["calibration"]["config"]["target_session_fpr"] = 1.5.into()),
        ),
        (
            "calibration.layers: the policy covers 6 layers",
            Box::new(|v| {
                v["calibration"]["layers"] = 6.into();
                v["calibration"]["per_layer"]["5"] = v["calibration"]["per_layer"]["4"].clone();
                v["policy"]["thresholds"]["overrides"]["5"] =
                    v["policy"]["thresholds"]["overrides"]["4"].clone();
            }),
        ),
        ("missing field `format`", Box::new(|_| {})),
    ];
    for (i, (want, edit)) in cases.iter().enumerate() {
        let mut v = value.clone();
        edit(&mut v);
        let mut text = serde_json::to_string(&v).unwrap();
        if *want == "missing field `format`" {
            // A file that looks like a policy file but has no format is read as a bare
            // tolerance policy and refused as one.
            text = text.replacen("\"format\"", "\"formt\"", 1);
        }
        let path = p(&format!("bad-{i}.json"));
        std::fs::write(&path, text).unwrap();
        let o = verify(&path);
        assert_eq!(o.code, 2, "{want}: {}{}", o.stdout, o.stderr);
        if *want != "missing field `format`" {
            assert!(o.stderr.contains(want), "{want}: {}", o.stderr);
        }
    }
    // NaN and infinity are not JSON numbers: refused by the parser.
    let path = p("nan.json");
    std::fs::write(
        &path,
        json.replacen("\"threshold\": ", "\"threshold\": NaN, \"x\": ", 1),
    )
    .unwrap();
    assert_eq!(verify(&path).code, 2);
}

#[test]
fn too_few_runs_say_how_many_are_needed() {
    let dir = tempfile::tempdir().unwrap();
    let o = veritrace(&[
        "calibrate",
        "--honest",
        "f32/attn=eager/splitk=2",
        "--prompts",
        "100",
        "--samples",
        "8",
        "--target-fpr",
        "0.001",
        "--out",
        &dir.path().join("p.json").display().to_string(),
    ]);
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    // L = 5, k = 8: alpha = 2e-4, gamma_l = 0.99: 23,024 calibration runs, 28,780 with a fifth
    // held out.
    assert!(o.stderr.contains("28780 needed"), "{}", o.stderr);
    assert!(o.stderr.contains("23024 calibration runs"), "{}", o.stderr);
    assert!(!dir.path().join("p.json").exists());
    // Bad arguments exit 2 too.
    for args in [
        vec!["--honest", "f32/attn=tiled:8", "--prompts", "10"],
        vec!["--honest", "f32/attn=eager/splitk=2"],
        vec!["--prompts", "10"],
        vec![
            "--honest",
            "f32/attn=eager/splitk=2",
            "--prompts",
            "10",
            "--metric",
            "l3",
        ],
    ] {
        let mut a = vec![
            "calibrate",
            "--samples",
            "8",
            "--target-fpr",
            "0.5",
            "--out",
            "x",
        ];
        a.extend(args.iter().copied());
        let o = veritrace(&a);
        assert_eq!(o.code, 2, "{a:?}: {}{}", o.stdout, o.stderr);
    }
}

#[test]
fn calibrate_from_trace_files() {
    // alpha = 0.5 / min(1, 5) = 0.5, gamma_l = 0.99: n_min = 7 runs.
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let mut args: Vec<String> = [
        "calibrate",
        "--samples",
        "1",
        "--target-fpr",
        "0.5",
        "--chunk",
        "4",
        "--holdout",
        "0",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(p("policy.json"));
    for i in 0..7 {
        let run = p(&format!("run{i}"));
        run_ok(&[
            "prove",
            "--setup",
            "f32/attn=eager/splitk=4",
            "--prompt-seed",
            &i.to_string(),
            "--prompt-tokens",
            "6",
            "--output",
            "2",
            "--chunk",
            "4",
            "--out",
            &run,
        ]);
        args.push("--trace".into());
        args.push(format!("{run}/trace.safetensors"));
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_ok(&a);
    assert!(out.contains("from 7 honest runs (7 needed)"), "{out}");
    let file: CalibratedPolicy =
        serde_json::from_str(&std::fs::read_to_string(p("policy.json")).unwrap()).unwrap();
    assert_eq!(file.calibration.variations.len(), 1);
    assert_eq!(
        file.calibration.variations[0].variation,
        "f32/attn=eager/splitk=4"
    );
    assert!(file.holdout.is_none());
    // A trace of another chunk is refused, naming the geometry.
    run_ok(&["prove", "--chunk", "8", "--out", &p("other")]);
    let mut b = a.clone();
    let other = p("other/trace.safetensors");
    b.push("--trace");
    b.push(&other);
    let o = veritrace(&b);
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("geometry"), "{}", o.stderr);
}

/// `--method exponential-tail`: 500 runs reach a target the order statistic would need about
/// 18,000 runs for (k = 4, target 1e-3, L = 5: alpha = 2.5e-4); each layer records its fitted
/// tail, and fewer runs are refused with the count needed.
#[test]
fn calibrate_with_a_fitted_tail() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("tail.json").display().to_string();
    let args = |prompts: &'static str| {
        vec![
            "calibrate",
            "--honest",
            "f32/attn=eager/splitk=2",
            "--honest",
            "f32/attn=eager/splitk=16",
            "--prompts",
            prompts,
            "--tokens",
            "6",
            "--output",
            "0",
            "--chunk",
            "6",
            "--samples",
            "4",
            "--target-fpr",
            "1e-3",
            "--method",
            "exponential-tail",
            "--holdout",
            "0",
            "--quiet",
            "--out",
            policy.as_str(),
        ]
    };
    let o = veritrace(&args("499"));
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("500"), "{}", o.stderr);
    assert!(!std::path::Path::new(&policy).exists());
    let out = run_ok(&args("500"));
    assert!(out.contains("exponential tail"), "{out}");
    let file: CalibratedPolicy =
        serde_json::from_str(&std::fs::read_to_string(&policy).unwrap()).unwrap();
    file.validate().unwrap();
    let c = &file.calibration;
    assert_eq!((c.runs, c.runs_needed), (500, 500));
    assert_eq!(c.method, CalibrationMethod::ExponentialTail);
    assert_eq!(c.per_layer[&0].source, ThresholdSource::RoundingFloor);
    for l in 1..5u32 {
        let t = &c.per_layer[&l];
        let fit = t.tail.expect("a fitted tail");
        assert_eq!(fit.excesses, 50);
        assert!(fit.fits, "layer {l}: {fit:?}");
        assert_eq!(t.source, ThresholdSource::ExponentialTail, "layer {l}");
        // Past the sample maximum (alpha is far below 1/n), and exactly the fitted quantile.
        assert!(t.threshold > t.order_statistic, "layer {l}");
        assert_eq!(t.threshold, fit.quantile);
    }
    let bad = veritrace(&[
        "calibrate",
        "--method",
        "maximum",
        "--honest",
        "f32/attn=eager/splitk=2",
        "--prompts",
        "10",
        "--samples",
        "4",
        "--target-fpr",
        "0.1",
        "--out",
        policy.as_str(),
    ]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("order-statistic or exponential-tail"),
        "{}",
        bad.stderr
    );
}
