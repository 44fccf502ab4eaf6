//! Issue 15's findings at the command line, one test each: files that are not regular files,
//! oversized headers, outputs that must never destroy a user's file or an input, output sets
//! that appear whole, and the one exit-code rule (0 ok, 1 reject or internal failure, 2 bad
//! input). Every command runs under a watchdog, so a verb that blocks or stalls fails the test
//! instead of hanging it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::veritrace;

/// Runs `veritrace ARGS` and fails the test if it does not finish within `limit`.
fn within(limit: Duration, args: &[&str]) -> common::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_veritrace"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let o = common::Output {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
            assert!(!o.stderr.contains("panicked"), "{args:?}: {}", o.stderr);
            return o;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("veritrace {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const LIMIT: Duration = Duration::from_secs(60);

/// A scenario that simulates in a second or two.
const SMALL_SCENARIO: &str = r#"
name = "hostile-test"
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

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A proven run in `dir/run`: (commitment, trace).
fn prove(dir: &Path) -> (String, String) {
    let o = veritrace(&[
        "prove",
        "--prompt",
        "5,9,2,7",
        "--output",
        "2",
        "--chunk",
        "2",
        "--out",
        &s(&dir.join("run")),
    ]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    (
        s(&dir.join("run/commitment.json")),
        s(&dir.join("run/trace.safetensors")),
    )
}

#[cfg(unix)]
#[test]
fn fifos_and_devices_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("trace.safetensors");
    let made = Command::new("mkfifo").arg(&fifo).status();
    let (commitment, trace) = prove(dir.path());
    if made.is_ok_and(|s| s.success()) {
        let o = within(LIMIT, &["commit", &s(&fifo)]);
        assert_eq!(o.code, 2, "{}", o.stderr);
        assert!(o.stderr.contains("not a regular file"), "{}", o.stderr);
        let o = within(
            LIMIT,
            &["open", &s(&fifo), "--challenge", "x", "--out", "y"],
        );
        assert_eq!(o.code, 2, "{}", o.stderr);
    }
    // /dev/zero as a commitment, a challenge, an opening, a policy: refused before reading.
    let zero = "/dev/zero";
    for args in [
        vec![
            "verify",
            "--commitment",
            zero,
            "--opening",
            zero,
            "--challenge",
            zero,
        ],
        vec![
            "verify",
            "--commitment",
            &commitment,
            "--opening",
            zero,
            "--challenge",
            zero,
        ],
        vec![
            "verify",
            "--commitment",
            &commitment,
            "--opening",
            &commitment,
            "--challenge",
            &commitment,
            "--tolerance",
            zero,
        ],
        vec![
            "open",
            &trace,
            "--challenge",
            zero,
            "--out",
            &s(&dir.path().join("o.json")),
        ],
        vec!["challenge", zero, "--samples", "1", "--out", "c.json"],
        vec!["simulate", zero, "--quiet"],
    ] {
        let o = within(LIMIT, &args);
        assert_eq!(o.code, 2, "{args:?}: {}", o.stderr);
        assert!(
            o.stderr.contains("character device") || o.stderr.contains("not a regular file"),
            "{args:?}: {}",
            o.stderr
        );
    }
}

#[cfg(unix)]
#[test]
fn an_output_path_that_is_a_fifo_is_refused_not_replaced() {
    // (The same rule keeps `--out /dev/null` from replacing the device with a regular file for
    // every process on the machine; a FIFO in a temporary directory tests it safely.)
    let dir = tempfile::tempdir().unwrap();
    let (commitment, _) = prove(dir.path());
    let fifo = dir.path().join("challenge.json");
    if !Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        return;
    }
    let o = within(
        LIMIT,
        &[
            "challenge",
            &commitment,
            "--samples",
            "2",
            "--out",
            &s(&fifo),
        ],
    );
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("a FIFO"), "{}", o.stderr);
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn an_oversized_safetensors_header_is_refused_before_it_is_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.safetensors");
    // A header length of 17 MiB (over the 16 MiB limit), followed by that many bytes of an
    // unterminated JSON array: parsing it would build a deep value first.
    let n: u64 = 17 << 20;
    let mut bytes = n.to_le_bytes().to_vec();
    bytes.resize(8 + n as usize, b'[');
    std::fs::write(&path, &bytes).unwrap();
    let o = within(LIMIT, &["commit", &s(&path)]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr.contains("header") && o.stderr.contains("limit"),
        "{}",
        o.stderr
    );
    // The limit is configurable: raised, the header is parsed (and refused as malformed).
    let o = Command::new(env!("CARGO_BIN_EXE_veritrace"))
        .args(["commit", &s(&path)])
        .env("VERITRACE_MAX_HEADER_BYTES", (32u64 << 20).to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("limit"), "{stderr}");
}

#[test]
fn outputs_never_touch_a_users_tmp_file() {
    let dir = tempfile::tempdir().unwrap();
    let (commitment, trace) = prove(dir.path());
    let d = |n: &str| s(&dir.path().join(n));
    for name in ["answer.tmp", "challenge.tmp", "opening.tmp"] {
        std::fs::write(dir.path().join(name), b"mine").unwrap();
    }
    let o = veritrace(&[
        "challenge",
        &commitment,
        "--samples",
        "2",
        "--out",
        &d("challenge.json"),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = veritrace(&[
        "challenge",
        &commitment,
        "--samples",
        "2",
        "--out",
        &d("answer"),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = veritrace(&[
        "open",
        &trace,
        "--challenge",
        &d("challenge.json"),
        "--out",
        &d("opening.json"),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    for name in ["answer.tmp", "challenge.tmp", "opening.tmp"] {
        assert_eq!(
            std::fs::read(dir.path().join(name)).unwrap(),
            b"mine",
            "{name}"
        );
    }
    // No temporary file is left behind.
    let stray: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".veritrace"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn prove_writes_its_run_as_one_set_and_keeps_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let (commitment, _) = prove(dir.path());
    let first = std::fs::read(&commitment).unwrap();
    // A second prove into the same directory replaces both files together.
    let o = veritrace(&[
        "prove",
        "--prompt",
        "1,2,3,4",
        "--output",
        "2",
        "--chunk",
        "2",
        "--out",
        &s(&dir.path().join("run")),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_ne!(std::fs::read(&commitment).unwrap(), first);
    // The new trace opens to the new commitment: open + verify accept.
    let ch = s(&dir.path().join("c.json"));
    let op = s(&dir.path().join("o.json"));
    let trace = s(&dir.path().join("run/trace.safetensors"));
    assert_eq!(
        veritrace(&["challenge", &commitment, "--samples", "3", "--out", &ch]).code,
        0
    );
    assert_eq!(
        veritrace(&["open", &trace, "--challenge", &ch, "--out", &op]).code,
        0
    );
    let v = veritrace(&[
        "verify",
        "--commitment",
        &commitment,
        "--challenge",
        &ch,
        "--opening",
        &op,
    ]);
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
    // A directory holding a file prove does not write is refused, and the file is kept.
    std::fs::write(dir.path().join("run/notes.txt"), b"mine").unwrap();
    let o = veritrace(&[
        "prove",
        "--prompt",
        "1,2",
        "--output",
        "1",
        "--out",
        &s(&dir.path().join("run")),
    ]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("notes.txt"), "{}", o.stderr);
    assert_eq!(
        std::fs::read(dir.path().join("run/notes.txt")).unwrap(),
        b"mine"
    );
}

#[test]
fn an_output_that_names_an_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (commitment, trace) = prove(dir.path());
    let before = std::fs::read(&commitment).unwrap();
    let o = veritrace(&[
        "challenge",
        &commitment,
        "--samples",
        "2",
        "--out",
        &commitment,
    ]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert_eq!(std::fs::read(&commitment).unwrap(), before);
    let ch = s(&dir.path().join("c.json"));
    assert_eq!(
        veritrace(&["challenge", &commitment, "--samples", "2", "--out", &ch]).code,
        0
    );
    let ch_before = std::fs::read(&ch).unwrap();
    // Through another spelling of the same path too.
    let dotted = s(&dir.path().join(".").join("c.json"));
    let o = veritrace(&["open", &trace, "--challenge", &ch, "--out", &dotted]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("destroy the input"), "{}", o.stderr);
    assert_eq!(std::fs::read(&ch).unwrap(), ch_before);
    let o = veritrace(&["open", &trace, "--challenge", &ch, "--out", &trace]);
    assert_eq!(o.code, 2, "{}", o.stderr);
}

#[test]
fn merge_refuses_to_overwrite_a_part() {
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("part.json");
    std::fs::write(&part, b"{}").unwrap();
    let o = veritrace(&["merge", &s(&part), "--out", &s(&part)]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert_eq!(std::fs::read(&part).unwrap(), b"{}");
}

#[test]
fn concurrent_simulations_into_one_directory_leave_one_whole_set() {
    let dir = tempfile::tempdir().unwrap();
    let scenarios = tempfile::tempdir().unwrap();
    let scenario = scenarios.path().join("s.toml");
    std::fs::write(&scenario, SMALL_SCENARIO).unwrap();
    let scenario = s(&scenario);
    let out = s(&dir.path().join("results"));
    let run = |trials: &str| {
        Command::new(env!("CARGO_BIN_EXE_veritrace"))
            .args([
                "simulate", &scenario, "--quiet", "--trials", trials, "--out", &out,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children: Vec<_> = ["20", "21", "22"].into_iter().map(run).collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("results/report.json")).unwrap(),
    )
    .unwrap();
    let trials = json["scenario"]["trials"]
        .as_u64()
        .expect("the trials in report.json");
    let md = std::fs::read_to_string(dir.path().join("results/report.md")).unwrap();
    assert!(
        md.contains(&format!("{trials} trials per adversary")),
        "report.md and report.json come from different runs (json: {trials} trials)"
    );
    let csv = std::fs::read_to_string(dir.path().join("results/report.csv")).unwrap();
    let policy = dir.path().join("results/policy.json");
    assert!(policy.exists() && csv.lines().count() > 2);
    // Nothing but the set is left in the parent.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["results"]);
}

#[test]
fn bad_arguments_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let (commitment, _) = prove(dir.path());
    let o = veritrace(&[
        "verify",
        "--commitment",
        &commitment,
        "--opening",
        &commitment,
        "--non-interactive",
        "--samples",
        "0",
        "--pow-bits",
        "6",
    ]);
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    // A target false-positive rate no number of runs can support: bad input, not a crash.
    let out = s(&dir.path().join("p.json"));
    let o = within(
        LIMIT,
        &[
            "calibrate",
            "--samples",
            "4",
            "--target-fpr",
            "1e-300",
            "--honest",
            "f32/attn=eager/splitk=2",
            "--prompts",
            "10",
            "--out",
            &out,
        ],
    );
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("insufficient evidence"), "{}", o.stderr);
}

const UNLIMITED: &str = r#"{"max_layers":4294967295,"max_tokens":4294967295,"max_cells":18446744073709551615,"max_opening_cells":18446744073709551615,"max_opening_bytes":18446744073709551615}"#;

/// An honest commitment with its geometry rewritten to claim `layers` layers of `tokens`
/// tokens in cells of one row (the root is unchanged: nothing can open it).
fn forged(dir: &Path, commitment: &str, layers: u64, tokens: usize) -> String {
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(commitment).unwrap()).unwrap();
    let st = &mut c["statement"];
    st["input_tokens"] = serde_json::json!(vec![1u32; tokens]);
    st["output_tokens"] = serde_json::json!([]);
    st["geometry"]["layers"] = layers.into();
    st["geometry"]["tokens"] = tokens.into();
    st["geometry"]["chunk"] = 1.into();
    let path = dir.join(format!("forged-{layers}-{tokens}.json"));
    std::fs::write(&path, c.to_string()).unwrap();
    s(&path)
}

#[test]
fn claimed_sizes_do_not_drive_the_verifiers_cost() {
    let dir = tempfile::tempdir().unwrap();
    let (commitment, trace) = prove(dir.path());
    let ch = s(&dir.path().join("c.json"));
    let op = s(&dir.path().join("o.json"));
    assert_eq!(
        veritrace(&["challenge", &commitment, "--samples", "2", "--out", &ch]).code,
        0
    );
    assert_eq!(
        veritrace(&["open", &trace, "--challenge", &ch, "--out", &op]).code,
        0
    );
    // A 2^32 - 1 layer claim (a few hundred bytes): refused by the default limits, and with no
    // limits sampled in O(k) (stratified used to loop over every claimed layer).
    let layers = forged(dir.path(), &commitment, u64::from(u32::MAX), 1);
    for strategy in ["uniform", "stratified", "cost-weighted"] {
        let out = s(&dir.path().join(format!("ch-{strategy}.json")));
        let o = within(
            LIMIT,
            &[
                "challenge",
                &layers,
                "--samples",
                "64",
                "--strategy",
                strategy,
                "--out",
                &out,
            ],
        );
        assert_eq!(o.code, 2, "{}", o.stderr);
        assert!(o.stderr.contains("limit"), "{}", o.stderr);
        let o = within(
            LIMIT,
            &[
                "challenge",
                &layers,
                "--samples",
                "64",
                "--strategy",
                strategy,
                "--out",
                &out,
                "--limits",
                UNLIMITED,
            ],
        );
        assert_eq!(o.code, 0, "{strategy}: {}", o.stderr);
        for limits in [None, Some(UNLIMITED)] {
            let mut args = vec![
                "verify",
                "--commitment",
                &layers,
                "--opening",
                &op,
                "--non-interactive",
                "--samples",
                "64",
                "--strategy",
                strategy,
            ];
            if let Some(l) = limits {
                args.extend(["--limits", l]);
            }
            let o = within(LIMIT, &args);
            assert_eq!(o.code, 1, "{strategy} {limits:?}: {}{}", o.stdout, o.stderr);
            assert!(o.stdout.starts_with("reject"), "{}", o.stdout);
        }
    }
    // A claim over the token limit is rejected before the model or any opening is read.
    let tokens = forged(dir.path(), &commitment, 5, (1 << 20) + 1);
    let o = within(
        LIMIT,
        &[
            "verify",
            "--commitment",
            &tokens,
            "--opening",
            "/nonexistent",
            "--challenge",
            &ch,
        ],
    );
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("limit of 1048576"), "{}", o.stdout);
}

#[test]
fn an_interactive_opening_with_a_nonce_is_a_bad_proof_of_work() {
    let dir = tempfile::tempdir().unwrap();
    let (commitment, trace) = prove(dir.path());
    let ch = s(&dir.path().join("c.json"));
    let op = s(&dir.path().join("o.json"));
    assert_eq!(
        veritrace(&["challenge", &commitment, "--samples", "2", "--out", &ch]).code,
        0
    );
    assert_eq!(
        veritrace(&[
            "open",
            &trace,
            "--challenge",
            &ch,
            "--out",
            &op,
            "--format",
            "json"
        ])
        .code,
        0
    );
    let mut o: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&op).unwrap()).unwrap();
    o["pow_nonce"] = 5.into();
    std::fs::write(&op, o.to_string()).unwrap();
    let v = veritrace(&[
        "verify",
        "--commitment",
        &commitment,
        "--challenge",
        &ch,
        "--opening",
        &op,
    ]);
    assert_eq!(v.code, 1, "{}{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("BadProofOfWork"), "{}", v.stdout);
}
