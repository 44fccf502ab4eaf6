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
    for f in ["report.md", "report.json", "report.csv"] {
        assert!(out.join(f).is_file(), "{f}");
    }
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
