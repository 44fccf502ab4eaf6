//! `veritrace report` end to end: a small simulation, a k sweep and a fingerprint study made by
//! the CLI itself are rendered into SVG and PNG plots with an index; unreadable, unrecognised
//! and malformed inputs exit 2 with the file named.

mod common;

use std::path::Path;

use common::veritrace;

const SCENARIO: &str = r#"
name = "cli-report"
model = "tiny"
seed = 5
trials = 40
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
[[adversary]]
kind = "partial"
setup = "f32/attn=eager/quant=int4-g32"
fraction = 0.3
"#;

const SETUPS: &str = "\
f32/attn=eager
f32/attn=eager/splitk=2
f32/attn=eager/quant=int4-g32
bf16/attn=eager
";

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[track_caller]
fn ok(args: &[&str]) -> String {
    let o = veritrace(args);
    assert_eq!(o.code, 0, "{args:?}: {}", o.stderr);
    o.stdout
}

#[track_caller]
fn check_plot(dir: &Path, stem: &str) {
    let svg = std::fs::read_to_string(dir.join(format!("{stem}.svg")))
        .unwrap_or_else(|e| panic!("{stem}.svg: {e}"));
    assert!(svg.len() > 2_000, "{stem}.svg is {} bytes", svg.len());
    assert!(
        svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
        "{stem}.svg"
    );
    assert!(svg.contains("<text"), "{stem}.svg has no text");
    let png = std::fs::read(dir.join(format!("{stem}.png")))
        .unwrap_or_else(|e| panic!("{stem}.png: {e}"));
    assert!(png.len() > 4_000, "{stem}.png is {} bytes", png.len());
    assert_eq!(png[..8], PNG_SIGNATURE, "{stem}.png");
}

#[test]
fn plots_of_a_simulation_a_sweep_and_a_study() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let scenario = write(dir, "s.toml", SCENARIO);
    let sim = dir.join("sim");
    ok(&[
        "simulate",
        "--quiet",
        "--fast",
        &scenario,
        "--out",
        sim.to_str().unwrap(),
    ]);
    let sweep = dir.join("sweep-k.json");
    ok(&[
        "sweep",
        "--quiet",
        "--fast",
        &scenario,
        "--grid",
        "k=1,2,4",
        "--out",
        sweep.to_str().unwrap(),
    ]);
    let setups = write(dir, "setups.txt", SETUPS);
    let study = dir.join("study");
    ok(&[
        "fingerprint",
        "--model",
        "tiny",
        "--prompts",
        "1",
        "--tokens",
        "16",
        "--setups",
        &setups,
        "--out",
        study.to_str().unwrap(),
    ]);

    let plots = dir.join("plots");
    let report = sim.join("report.json");
    let study_json = study.join("fingerprint.json");
    let stdout = ok(&[
        "report",
        report.to_str().unwrap(),
        sweep.to_str().unwrap(),
        study_json.to_str().unwrap(),
        "--out",
        plots.to_str().unwrap(),
    ]);
    let stems = [
        "sweep-k-detection-vs-k",
        "sim-detection-vs-saving",
        "sim-roc-02-setup-bf16-attn-eager",
        "sim-roc-03-partial-f32-attn-eager-quant-int4-g32-f-0.3",
        "study-snr-heatmap",
    ];
    for stem in stems {
        check_plot(&plots, stem);
        assert!(stdout.contains(&format!("{stem}.svg")), "{stdout}");
        assert!(stdout.contains(&format!("{stem}.png")), "{stdout}");
    }
    // Honest provers get no ROC figure.
    assert!(!plots.join("sim-roc-01-honest.svg").exists());
    let index = std::fs::read_to_string(plots.join("index.md")).unwrap();
    for stem in stems {
        assert!(index.contains(&format!("({stem}.svg)")), "{index}");
    }
    assert!(index.contains("| setup bf16/attn=eager | h1 |"), "{index}");
    // Nothing left behind but the plots and the index.
    let names: Vec<String> = std::fs::read_dir(&plots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2 * stems.len() + 1, "{names:?}");

    // A sweep without a k axis has nothing to plot on its own.
    let no_k = dir.join("sweep-fraction.json");
    ok(&[
        "sweep",
        "--quiet",
        "--fast",
        &scenario,
        "--grid",
        "fraction=0.5",
        "--out",
        no_k.to_str().unwrap(),
    ]);
    let empty = dir.join("empty");
    refused(
        &[
            "report",
            no_k.to_str().unwrap(),
            "--out",
            empty.to_str().unwrap(),
        ],
        &["nothing to plot", "no k axis"],
    );

    // Rendering is deterministic.
    let again = dir.join("again");
    ok(&[
        "report",
        report.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    for f in ["sim-detection-vs-saving.svg", "sim-detection-vs-saving.png"] {
        assert_eq!(
            std::fs::read(plots.join(f)).unwrap(),
            std::fs::read(again.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[track_caller]
fn refused(args: &[&str], needles: &[&str]) {
    let o = veritrace(args);
    assert_eq!(o.code, 2, "{args:?} should exit 2:\n{}", o.stderr);
    assert!(o.stdout.is_empty(), "{}", o.stdout);
    for n in needles {
        assert!(o.stderr.contains(n), "{n:?} not in:\n{}", o.stderr);
    }
}

#[test]
fn bad_inputs_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = dir.join("plots");
    let out = out.to_str().unwrap();
    let text = write(dir, "notes.txt", "not json at all");
    refused(&["report", &text, "--out", out], &["notes.txt", "not JSON"]);
    let other = write(dir, "other.json", "{\"hello\": [1, 2, 3]}");
    refused(
        &["report", &other, "--out", out],
        &["other.json", "not a veritrace result"],
    );
    let broken = write(
        dir,
        "broken.json",
        "{\"scenario\": {}, \"calibration\": 1, \"adversaries\": []}",
    );
    refused(
        &["report", &broken, "--out", out],
        &["broken.json", "simulation report"],
    );
    let missing = dir.join("missing.json");
    refused(
        &["report", missing.to_str().unwrap(), "--out", out],
        &["missing.json"],
    );
    // No plot was written for refused inputs.
    assert!(!dir.join("plots").join("index.md").exists());
    // Arguments clap refuses exit 2 too.
    refused(&["report", &text], &["--out"]);
}

/// A fingerprint study made by the CLI, as JSON.
fn study_json(dir: &Path) -> serde_json::Value {
    let setups = write(dir, "setups.txt", SETUPS);
    let study = dir.join("study");
    ok(&[
        "fingerprint",
        "--model",
        "tiny",
        "--prompts",
        "1",
        "--tokens",
        "16",
        "--setups",
        &setups,
        "--out",
        study.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(study.join("fingerprint.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn sizes_from_input_are_bounded_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let study = study_json(dir);
    let out = dir.join("plots");
    let out = out.to_str().unwrap();
    // num_layers = u64::MAX (num_layers + 1 wrapped to 0), a huge count (the image would not
    // be allocated), and one whose pixel width wraps i32 (74 px a column).
    for (i, layers) in [u64::MAX, 1 << 40, 29_100_000, 201].into_iter().enumerate() {
        let mut s = study.clone();
        s["num_layers"] = serde_json::json!(layers);
        let path = write(dir, &format!("layers-{i}.json"), &s.to_string());
        refused(
            &["report", &path, "--out", out],
            &[
                "num_layers",
                &layers.to_string(),
                "out of range",
                "limit 200",
            ],
        );
    }
    // Too many setups for the heatmap's height.
    let mut s = study.clone();
    let row = s["results"][0].clone();
    s["results"] = serde_json::Value::Array(vec![row; 701]);
    let path = write(dir, "rows.json", &s.to_string());
    refused(
        &["report", &path, "--out", out],
        &["setups", "701", "limit 700"],
    );
    // Within each limit but over the pixel budget together.
    let mut s = study.clone();
    let row = s["results"][0].clone();
    s["results"] = serde_json::Value::Array(vec![row; 690]);
    s["num_layers"] = serde_json::json!(200);
    let path = write(dir, "pixels.json", &s.to_string());
    refused(&["report", &path, "--out", out], &["heatmap", "limit"]);
    assert!(!dir.join("plots").join("index.md").exists());
    // A device is never read.
    refused(
        &["report", "/dev/zero", "--out", out],
        &["/dev/zero", "not a regular file"],
    );
    // The study itself still plots.
    let path = write(dir, "fine.json", &study.to_string());
    ok(&["report", &path, "--out", out]);
}
