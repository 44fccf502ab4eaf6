//! `--device` on the verbs that run a model: a malformed device is refused by the argument
//! parser, and a GPU that this build or this machine cannot use is refused with exit 2 and a
//! message saying what is missing, before any output is written.

mod common;

use common::veritrace;

/// Whether this test binary's `veritrace` can actually open cuda:0 (then the refusal tests
/// do not apply).
fn gpu_usable() -> bool {
    cfg!(feature = "cuda") && std::path::Path::new("/dev/nvidia0").exists()
}

#[test]
fn a_malformed_device_is_an_argument_error() {
    for verb in [
        vec!["simulate", "--device", "gpu"],
        vec!["fingerprint", "--device", "cuda:x"],
        vec![
            "prove",
            "--device",
            "cuda:",
            "--out",
            "/nonexistent/never-written",
        ],
    ] {
        let o = veritrace(&verb);
        assert_eq!(o.code, 2, "{verb:?}: {}", o.stderr);
        assert!(o.stderr.contains("cuda:N"), "{verb:?}: {}", o.stderr);
        assert!(o.stdout.is_empty(), "{verb:?} printed {}", o.stdout);
    }
}

#[test]
fn an_unusable_gpu_exits_2_with_the_reason_and_writes_nothing() {
    if gpu_usable() {
        eprintln!("skipping: this build and machine can run cuda:0");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out_s = out.display().to_string();
    for verb in [
        vec!["simulate", "--device", "cuda:0", "--quiet", "--out", &out_s],
        vec![
            "simulate",
            "--verifier-device",
            "cuda:0",
            "--quiet",
            "--out",
            &out_s,
        ],
        vec![
            "fingerprint",
            "--device",
            "cuda",
            "--quiet",
            "--out",
            &out_s,
        ],
        vec!["prove", "--device", "cuda:0", "--out", &out_s],
    ] {
        let o = veritrace(&verb);
        assert_eq!(o.code, 2, "{verb:?}: {}", o.stderr);
        let why = if cfg!(feature = "cuda") {
            "driver"
        } else {
            "--features cuda"
        };
        assert!(
            o.stderr.contains("cuda:0") && o.stderr.contains(why),
            "{verb:?}: {}",
            o.stderr
        );
        assert!(!out.exists(), "{verb:?} wrote {out_s}");
    }
}

#[test]
fn devices_lists_the_cpu_and_says_why_there_is_no_gpu() {
    let o = veritrace(&["devices"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with("cpu "), "{}", o.stdout);
    let j = veritrace(&["devices", "--json"]);
    assert_eq!(j.code, 0, "{}", j.stderr);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(v["devices"][0]["device"], "cpu");
    if !gpu_usable() {
        let why = v["no_gpu"].as_str().unwrap();
        assert!(o.stdout.contains(&format!("no GPU: {why}")), "{}", o.stdout);
        if !cfg!(feature = "cuda") {
            assert!(why.contains("--features cuda"), "{why}");
        }
    }
}
