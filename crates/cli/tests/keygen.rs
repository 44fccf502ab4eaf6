//! `veritrace keygen`: a verifier key from a secret file or a new secret (never replacing a
//! file), the same key for the same secret, size and build time printed; bad input (a secret
//! of the wrong size, an unknown or non-decoder model, --out naming the secret, bad
//! repetitions) exits 2.

mod common;

use common::veritrace;
use veritrace_model::freivalds::{VerifierKey, VerifierSecret};
use veritrace_model::LlamaModel;

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[test]
fn keys_from_a_secret_file_and_a_new_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, [9u8; 32]).unwrap();
    let key = dir.path().join("tiny.key");
    let o = veritrace(&[
        "keygen",
        "--model",
        "tiny",
        "--secret-file",
        &s(&secret),
        "--repetitions",
        "3",
        "--out",
        &s(&key),
    ]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let bytes = std::fs::read(&key).unwrap();
    assert!(
        o.stdout
            .contains(&format!("key size: {} bytes", bytes.len())),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("build time: "), "{}", o.stdout);
    let decoded = VerifierKey::from_bytes(&bytes).unwrap();
    let model = LlamaModel::preset("tiny").unwrap();
    let secret_value = VerifierSecret::from_bytes([9u8; 32]);
    assert_eq!(
        decoded,
        VerifierKey::build(&secret_value, &model, 3).unwrap()
    );
    assert!(decoded.matches_secret(&secret_value));
    decoded.check_model(&model.digest()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A new secret: written (0600), then refused when it exists.
    let fresh = dir.path().join("fresh");
    let key2 = dir.path().join("fresh.key");
    let args = [
        "keygen",
        "--model",
        "tiny",
        "--new-secret",
        &s(&fresh),
        "--out",
        &s(&key2),
    ];
    let o = veritrace(&args);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let fresh_bytes = std::fs::read(&fresh).unwrap();
    assert_eq!(fresh_bytes.len(), 32);
    let decoded = VerifierKey::from_bytes(&std::fs::read(&key2).unwrap()).unwrap();
    assert!(decoded.matches_secret(&VerifierSecret::from_bytes(
        fresh_bytes.clone().try_into().unwrap()
    )));
    assert_eq!(decoded.repetitions(), 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let o = veritrace(&args);
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert_eq!(
        std::fs::read(&fresh).unwrap(),
        fresh_bytes,
        "secret replaced"
    );
}

#[test]
fn bad_input_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, [1u8; 31]).unwrap();
    let long = dir.path().join("long");
    std::fs::write(&long, [1u8; 33]).unwrap();
    let good = dir.path().join("good");
    std::fs::write(&good, [1u8; 32]).unwrap();
    let out = s(&dir.path().join("k"));
    let cases: Vec<Vec<String>> = vec![
        vec![
            "--model",
            "tiny",
            "--secret-file",
            &s(&short),
            "--out",
            &out,
        ],
        vec!["--model", "tiny", "--secret-file", &s(&long), "--out", &out],
        vec![
            "--model",
            "tiny",
            "--secret-file",
            &s(dir.path()),
            "--out",
            &out,
        ],
        vec![
            "--model",
            "tiny",
            "--secret-file",
            "/nonexistent/secret",
            "--out",
            &out,
        ],
        vec![
            "--model",
            "nosuch",
            "--secret-file",
            &s(&good),
            "--out",
            &out,
        ],
        vec![
            "--model",
            "minilm",
            "--secret-file",
            &s(&good),
            "--out",
            &out,
        ],
        vec![
            "--model",
            "tiny",
            "--secret-file",
            &s(&good),
            "--out",
            &s(&good),
        ],
        vec!["--model", "tiny", "--new-secret", &out, "--out", &out],
        vec![
            "--model",
            "tiny",
            "--secret-file",
            &s(&good),
            "--repetitions",
            "0",
            "--out",
            &out,
        ],
        vec![
            "--model",
            "tiny",
            "--secret-file",
            &s(&good),
            "--repetitions",
            "65",
            "--out",
            &out,
        ],
        vec!["--model", "tiny", "--out", &out],
        vec![
            "--model",
            "tiny",
            "--secret-file",
            &s(&good),
            "--new-secret",
            &out,
            "--out",
            &out,
        ],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(String::from).collect())
    .collect();
    for case in cases {
        let mut args = vec!["keygen"];
        args.extend(case.iter().map(String::as_str));
        let o = veritrace(&args);
        assert_eq!(o.code, 2, "{case:?}: {}{}", o.stdout, o.stderr);
        assert!(!dir.path().join("k").exists(), "{case:?} wrote a key");
    }
    assert_eq!(std::fs::read(&good).unwrap(), [1u8; 32]);

    // A checkpoint of another architecture (a BERT config) is refused.
    let bert = dir.path().join("bert");
    std::fs::create_dir(&bert).unwrap();
    std::fs::write(bert.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let o = veritrace(&[
        "keygen",
        "--model",
        &s(&bert),
        "--secret-file",
        &s(&good),
        "--out",
        &out,
    ]);
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
}
