//! The preset cache seen from the binary: which directory the environment names
//! (`VERITRACE_CACHE_DIR`, else `XDG_CACHE_HOME/veritrace`, else `HOME/.cache/veritrace`),
//! `VERITRACE_CACHE_DIR=off` writing nothing anywhere, and the same digest from a cold and a
//! warm start. Each run gets its own environment, so these tests never touch the real cache.

use std::path::{Path, PathBuf};
use std::process::Command;

use veritrace_model::preset_cache::cache_file;

const TINY: &str = "ad06166cfcf8885c9f17ac2cbe1583c95f5ac57ded9525c8737c0cf638b1e81d";

/// `veritrace digest tiny` with exactly these cache variables set (the others removed); returns
/// its standard output.
fn digest_tiny(vars: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_veritrace"));
    cmd.args(["digest", "tiny"])
        .env_remove("VERITRACE_CACHE_DIR")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("HOME");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with(TINY), "{stdout}");
    stdout
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[test]
fn the_environment_names_the_cache_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let own = tmp.path().join("own");
    let xdg = tmp.path().join("xdg");
    let home = tmp.path().join("home");
    // VERITRACE_CACHE_DIR first: a cold start writes the file, a warm one reads it.
    let cold = digest_tiny(&[
        ("VERITRACE_CACHE_DIR", &own),
        ("XDG_CACHE_HOME", &xdg),
        ("HOME", &home),
    ]);
    let file = cache_file(&own, "tiny").unwrap();
    assert_eq!(files_under(tmp.path()), vec![file.clone()]);
    let written = std::fs::read(&file).unwrap();
    let warm = digest_tiny(&[("VERITRACE_CACHE_DIR", &own)]);
    assert_eq!(cold, warm);
    assert_eq!(std::fs::read(&file).unwrap(), written);
    // then XDG_CACHE_HOME, then HOME
    digest_tiny(&[("XDG_CACHE_HOME", &xdg), ("HOME", &home)]);
    assert!(cache_file(&xdg.join("veritrace"), "tiny")
        .unwrap()
        .is_file());
    digest_tiny(&[("HOME", &home)]);
    let in_home = cache_file(&home.join(".cache").join("veritrace"), "tiny").unwrap();
    assert_eq!(std::fs::read(in_home).unwrap(), written);
}

#[test]
fn off_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    for off in ["off", ""] {
        digest_tiny(&[
            ("VERITRACE_CACHE_DIR", Path::new(off)),
            ("XDG_CACHE_HOME", tmp.path()),
            ("HOME", tmp.path()),
        ]);
    }
    assert_eq!(files_under(tmp.path()), Vec::<PathBuf>::new());
}

#[test]
fn a_damaged_cache_gives_the_same_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let good = digest_tiny(&[("VERITRACE_CACHE_DIR", tmp.path())]);
    let file = cache_file(tmp.path(), "tiny").unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    std::fs::write(&file, &bad).unwrap();
    assert_eq!(digest_tiny(&[("VERITRACE_CACHE_DIR", tmp.path())]), good);
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "rewritten");
}
