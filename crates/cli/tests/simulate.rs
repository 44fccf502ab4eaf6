//! `veritrace simulate` end to end: a small scenario prints its table, JSON and the three output
//! files; results repeat for a seed; refused scenarios exit 2 with the reason.

mod common;

use common::{veritrace, Output};

const SCENARIO: &str = r#"
name = "cli-test"
model = "tiny"
seed = 3
trials = 20
reference = "f32/attn=eager"
[prompts]
count = 1
tokens = 8
output = 2
[protocol]
chunk = 4
samples = 2
mode = "interactive"
[tolerance]
metric = "rel_l2"
target_fpr = 0.3
honest = ["f32/attn=eager/splitk=2"]
calibration_prompts = 80
holdout_prompts = 10
[[adversary]]
kind = "honest"
[[adversary]]
kind = "setup"
setup = "bf16/attn=eager"
"#;

fn scenario_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn simulate(args: &[&str]) -> Output {
    let mut all = vec!["simulate", "--quiet"];
    all.extend_from_slice(args);
    veritrace(&all)
}

#[test]
fn table_json_and_output_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = scenario_file(&dir, "s.toml", SCENARIO);
    let o = simulate(&[&file]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("| honest | 0.0% (0/20)"), "{}", o.stdout);
    assert!(
        o.stdout.contains("setup bf16/attn=eager | 100.0% (20/20)"),
        "{}",
        o.stdout
    );

    let out = dir.path().join("out");
    let j = simulate(&[&file, "--json", "--out", out.to_str().unwrap()]);
    assert_eq!(j.code, 0, "{}", j.stderr);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(v["adversaries"][1]["detected"], 20);
    assert_eq!(v["engine"], "end-to-end");
    for f in ["report.md", "report.json", "report.csv", "policy.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // The calibrated tolerance is a policy file verify reads.
    let policy: veritrace_protocol::calibration::CalibratedPolicy =
        serde_json::from_str(&std::fs::read_to_string(out.join("policy.json")).unwrap()).unwrap();
    policy.validate().unwrap();
    assert_eq!(policy.calibration.runs, 80);
    // Every rate carries its independent runs: one prompt in the pool here.
    assert_eq!(v["adversaries"][0]["runs"], 1);
    let csv = std::fs::read_to_string(out.join("report.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3);
    // Same seed, same results; the fast engine runs too.
    let again = simulate(&[&file, "--json"]);
    assert_eq!(again.stdout, j.stdout);
    let fast = simulate(&[&file, "--json", "--fast", "--trials", "1000"]);
    assert_eq!(fast.code, 0, "{}", fast.stderr);
    let v: serde_json::Value = serde_json::from_str(&fast.stdout).unwrap();
    assert_eq!(v["engine"], "fast");
    assert_eq!(v["adversaries"][0]["detected"], 0);
    // --honest-runs: the honest row draws from 40 runs with 5 x 40 trials, the cheat keeps
    // the scenario's pool and trials; the honest bound rests on the runs, not the trials.
    let h = simulate(&[&file, "--json", "--honest-runs", "40"]);
    assert_eq!(h.code, 0, "{}", h.stderr);
    let v: serde_json::Value = serde_json::from_str(&h.stdout).unwrap();
    let honest = &v["adversaries"][0];
    assert_eq!(honest["trials"], 200);
    assert!(honest["runs"].as_u64().unwrap() >= 38, "{honest}");
    let upper = honest["run_bounds"][1].as_f64().unwrap();
    let runs = honest["runs"].as_u64().unwrap() as f64;
    assert!(
        (upper - (1.0 - 0.05f64.powf(1.0 / runs))).abs() < 1e-9,
        "{upper}"
    );
    assert_eq!(v["adversaries"][1]["trials"], 20);
    assert_eq!(v["adversaries"][1]["runs"], 1);
}

#[test]
fn refused_scenarios_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let o = simulate(&[missing.to_str().unwrap()]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("nope.toml"), "{}", o.stderr);
    for (name, text, needle) in [
        ("garbage.toml", "this is = = not toml", "TOML"),
        (
            "trials.toml",
            &SCENARIO.replace("trials = 20", "trials = 0") as &str,
            "trials",
        ),
        (
            "model.toml",
            &SCENARIO.replace("model = \"tiny\"", "model = \"/no/such/model\""),
            "/no/such/model",
        ),
        (
            "setup.toml",
            &SCENARIO.replace("bf16/attn=eager", "f32/attn=eager/splitk=3"),
            "reduction order",
        ),
    ] {
        let file = scenario_file(&dir, name, text);
        let o = simulate(&[&file]);
        assert_eq!(o.code, 2, "{name}: {}", o.stderr);
        assert!(o.stderr.contains(needle), "{name}: {}", o.stderr);
    }
    let o = simulate(&["--trials", "0"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
}
