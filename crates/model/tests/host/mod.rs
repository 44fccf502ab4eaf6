//! Builds and runs the C++ drivers that execute `kernels/*.cu` on the CPU through the host shim
//! `kernels/host/cuda_host.hpp`, so the kernels' logic is tested on machines without a GPU.
//!
//! A driver is one C++ file that includes the shim, `common.cuh` and the kernels it exercises,
//! reads its inputs from binary files named on its command line and writes its outputs likewise.
//! Without a C++ compiler the tests skip with a message, except under CI (`CI` set), where a
//! missing compiler fails them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's `kernels/` directory.
pub fn kernels_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels")
}

/// The C++ compiler: `$CXX`, else `c++`.
fn compiler() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".to_string())
}

/// Compiles `tests/host/<driver>` into a fresh temporary directory and returns the executable, or
/// `None` (after printing why) when no C++ compiler is present outside CI.
pub fn build(driver: &str) -> Option<(tempfile::TempDir, PathBuf)> {
    let cxx = compiler();
    if Command::new(&cxx).arg("--version").output().is_err() {
        if std::env::var_os("CI").is_some() {
            panic!("no C++ compiler ({cxx}) under CI: the host kernel tests cannot run");
        }
        eprintln!("skipping: no C++ compiler ({cxx}) to run kernels/*.cu on the host");
        return None;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/host")
        .join(driver);
    let dir = tempfile::tempdir().expect("temporary directory");
    let exe = dir.path().join(driver.trim_end_matches(".cpp"));
    let kernels = kernels_dir();
    let out = Command::new(&cxx)
        .args([
            "-std=c++20",
            "-O2",
            "-pthread",
            "-Wall",
            "-Wno-unused-function",
        ])
        .arg("-I")
        .arg(&kernels)
        .arg("-I")
        .arg(kernels.join("host"))
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run the C++ compiler");
    assert!(
        out.status.success(),
        "compiling {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((dir, exe))
}

/// Runs a built driver with `args`; panics with its stderr if it fails.
pub fn run(exe: &Path, args: &[&Path]) {
    let out = Command::new(exe)
        .args(args)
        .output()
        .expect("run the driver");
    assert!(
        out.status.success(),
        "{} failed:\n{}{}",
        exe.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes f32 values little-endian.
pub fn write_f32(path: &Path, v: &[f32]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write input");
}

/// Reads f32 values little-endian.
pub fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .expect("read output")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The kernels' precision codes (`VT_F32`, `VT_BF16`, `VT_F16` in kernels/common.cuh).
pub const F32: i32 = 0;
/// bf16.
pub const BF16: i32 = 1;
/// f16.
pub const F16: i32 = 2;

/// `x` rounded to the precision's grid (round to nearest even, as `vt_round`).
pub fn round_p(x: f32, precision: i32) -> f32 {
    match precision {
        BF16 => half::bf16::from_f32(x).to_f32(),
        F16 => half::f16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// Deterministic values in [-amp, amp], on the precision's grid.
pub fn values(n: usize, seed: u64, amp: f32, precision: i32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            round_p((2.0 * u - 1.0) * amp, precision)
        })
        .collect()
}
