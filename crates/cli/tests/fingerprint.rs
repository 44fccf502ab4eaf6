//! End-to-end tests of `veritrace fingerprint` on the tiny model: markdown and JSON output,
//! `--out` files, and refusals (exit status 2 with the reason, never a panic).

mod common;

use common::{veritrace, Output};

const SETUPS: &str = "\
# reference, then the studied setups
f32/attn=eager
f32/attn=eager          # re-run
f32/attn=eager/splitk=2
f32/attn=eager/splitk=4
f32/attn=eager/quant=int4-g32
f32/attn=eager/skip=2
";

fn setups_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("setups.txt");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn fingerprint(args: &[&str]) -> Output {
    let mut all = vec!["fingerprint"];
    all.extend_from_slice(args);
    veritrace(&all)
}

#[track_caller]
fn refused(args: &[&str], needles: &[&str]) {
    let o = fingerprint(args);
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
    for needle in needles {
        assert!(
            o.stderr.contains(needle),
            "{args:?}: {needle:?} not in the error:\n{}",
            o.stderr
        );
    }
}

#[test]
fn markdown_json_and_out_files() {
    let dir = tempfile::tempdir().unwrap();
    let setups = setups_file(&dir, SETUPS);
    let out = dir.path().join("results");
    let common = [
        "--model",
        "tiny",
        "--setups",
        &setups,
        "--prompts",
        "1",
        "--tokens",
        "32",
    ];
    let mut args = common.to_vec();
    args.extend(["--out", out.to_str().unwrap()]);
    let o = fingerprint(&args);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // stderr is not a terminal here: no progress bar.
    assert!(o.stderr.is_empty(), "{}", o.stderr);
    assert!(
        o.stdout.starts_with("# Fingerprint study: llama"),
        "{}",
        o.stdout
    );
    for row in [
        "| `f32/attn=eager` | rerun | invariant |",
        "| `f32/attn=eager/quant=int4-g32` | algorithm | cross-hardware |",
        "| `f32/attn=eager/skip=2` | structural | cross-hardware |",
    ] {
        assert!(o.stdout.contains(row), "{row} missing:\n{}", o.stdout);
    }
    let md = std::fs::read_to_string(out.join("fingerprint.md")).unwrap();
    assert_eq!(md, o.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("fingerprint.json")).unwrap())
            .unwrap();
    assert_eq!(json["plan"]["reference"], "f32/attn=eager");
    assert_eq!(json["results"].as_array().unwrap().len(), 5);

    let mut args = common.to_vec();
    args.extend(["--json", "--quiet", "--threshold", "1e12"]);
    let o = fingerprint(&args);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.lines().count(), 1, "one JSON line expected");
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["plan"]["threshold"], 1e12);
    // With an absurd threshold nothing stands out of the noise; the re-run stays invariant.
    let classes: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["class"].as_str().unwrap())
        .collect();
    assert_eq!(classes[0], "invariant");
    assert!(
        classes[1..].iter().all(|c| *c == "identical-hardware"),
        "{classes:?}"
    );
}

#[test]
fn refusals_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = setups_file(&dir, "f32/attn=eager\n\n# fine so far\nf32/attn=flash\n");
    refused(&["--setups", &bad], &["line 4", "flash"]);
    let missing = dir.path().join("nope.txt");
    refused(&["--setups", missing.to_str().unwrap()], &["nope.txt"]);
    let no_honest = setups_file(&dir, "f32/attn=eager\nbf16/attn=eager\n");
    refused(&["--setups", &no_honest], &["no honest variant"]);
    let too_deep = setups_file(
        &dir,
        "f32/attn=eager\nf32/attn=eager/splitk=2\nf32/attn=eager/skip=9\n",
    );
    refused(
        &["--setups", &too_deep, "--prompts", "1", "--tokens", "8"],
        &["skip=9"],
    );
    refused(&["--model", "huge"], &["unknown model", "tiny, small"]);
    refused(
        &["--model", "./some/dir"],
        &["not a checkpoint directory", "config.json"],
    );
    refused(&["--prompts", "0"], &["prompts"]);
    refused(&["--threshold", "-1"], &["threshold"]);
    refused(&["--chunk", "0"], &["chunk"]);
    refused(&["--tokens", "x"], &["--tokens"]);
}

/// The installed MiniLM runs through the same verb (skips when it is not installed); a setup
/// the encoder refuses is an input error.
#[test]
fn minilm_runs_and_refuses_decode_order() {
    if veritrace_model::minilm_dir().is_none() {
        eprintln!("skipping: MiniLM not installed; run scripts/install-minilm.sh");
        refused(
            &["--model", "minilm"],
            &["not installed", "install-minilm.sh"],
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let setups = setups_file(
        &dir,
        "f32/attn=eager\nf32/attn=eager/splitk=2\nbf16/attn=eager\nf32/attn=eager/skip=3\n",
    );
    let o = fingerprint(&[
        "--model",
        "minilm",
        "--setups",
        &setups,
        "--prompts",
        "1",
        "--tokens",
        "16",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout
            .starts_with("# Fingerprint study: bert L=6 d=384 heads=12 vocab=30522"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("| `f32/attn=eager/skip=3` | structural | cross-hardware |"),
        "{}",
        o.stdout
    );
    let decode = setups_file(&dir, "f32/attn=eager\nf32/attn=eager/order=decode\n");
    refused(
        &["--model", "minilm", "--setups", &decode, "--prompts", "1"],
        &["order=decode", "encoder"],
    );
}
