//! Every kernel of `kernels/` compiles with NVRTC to PTX and to the CUBIN a GPU loads (no GPU
//! needed, only libnvrtc).
//!
//! Skips with a message when libnvrtc cannot be loaded, unless `VERITRACE_REQUIRE_NVRTC` is set
//! (CI sets it after installing the `nvidia-cuda-nvrtc-cu12` wheel), so a kernel that does not
//! compile fails CI.
#![cfg(feature = "cuda")]

use veritrace_model::kernels::{program, KERNELS};

fn nvrtc_or_skip() -> bool {
    if veritrace_model::cuda::nvrtc_present() {
        return true;
    }
    if std::env::var_os("VERITRACE_REQUIRE_NVRTC").is_some() {
        panic!(
            "VERITRACE_REQUIRE_NVRTC is set but libnvrtc cannot be loaded (LD_LIBRARY_PATH={:?})",
            std::env::var("LD_LIBRARY_PATH").ok()
        );
    }
    eprintln!("skipping: libnvrtc not found (pip install nvidia-cuda-nvrtc-cu12 and put its lib/ on LD_LIBRARY_PATH)");
    false
}

#[test]
fn every_kernel_compiles_to_ptx_for_ampere_and_hopper() {
    if !nvrtc_or_skip() {
        return;
    }
    for arch in ["compute_80", "compute_90"] {
        for k in KERNELS {
            let ptx = veritrace_model::cuda::compile_ptx(k, arch)
                .unwrap_or_else(|e| panic!("{} for {arch}: {e}", k.name));
            for f in k.functions {
                assert!(
                    ptx.contains(&format!(".entry {f}(")),
                    "{} for {arch}: no entry point {f} in the PTX",
                    k.name
                );
            }
        }
    }
}

/// What a GPU loads: machine code for its real architecture. A CUBIN is an ELF image whose
/// symbol table names every entry point.
#[test]
fn every_kernel_compiles_to_a_cubin_for_ampere_and_hopper() {
    if !nvrtc_or_skip() {
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        for k in KERNELS {
            let cubin = veritrace_model::cuda::compile_cubin(k, arch)
                .unwrap_or_else(|e| panic!("{} for {arch}: {e}", k.name));
            assert_eq!(
                &cubin[..4],
                b"\x7fELF",
                "{} for {arch}: not an ELF image",
                k.name
            );
            for f in k.functions {
                assert!(
                    cubin
                        .windows(f.len() + 1)
                        .any(|w| w[..f.len()] == *f.as_bytes() && w[f.len()] == 0),
                    "{} for {arch}: no symbol {f} in the CUBIN",
                    k.name
                );
            }
        }
    }
    // A virtual architecture has no machine code: a typed error, not a panic.
    assert!(matches!(
        veritrace_model::cuda::compile_cubin(&KERNELS[0], "sm_1"),
        Err(veritrace_model::ModelError::KernelCompile { .. })
    ));
}

/// The kernels keep their per-thread arrays in registers: no kernel has a stack frame or spills
/// registers to local memory (the tiled attention kernel once kept 2 KB per thread there), and
/// each block's static shared memory fits the 48 KB a kernel gets without opting in to more.
#[test]
fn no_kernel_touches_local_memory_and_every_block_fits_its_shared_memory() {
    if !nvrtc_or_skip() {
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        for k in KERNELS {
            let report = veritrace_model::cuda::kernel_resources(k, arch)
                .unwrap_or_else(|e| panic!("{} for {arch}: {e}", k.name));
            for f in k.functions {
                let r = report
                    .iter()
                    .find(|r| r.function == *f)
                    .unwrap_or_else(|| panic!("{f} for {arch}: not in ptxas's report"));
                assert_eq!(
                    (r.stack_bytes, r.spill_store_bytes, r.spill_load_bytes),
                    (0, 0, 0),
                    "{f} for {arch} uses local memory: {r:?}"
                );
                assert!(r.shared_bytes <= 48 * 1024, "{f} for {arch}: {r:?}");
                assert!(r.registers > 0, "{f} for {arch}: {r:?}");
            }
        }
    }
}

#[test]
fn a_kernel_that_does_not_compile_is_a_typed_error() {
    if !nvrtc_or_skip() {
        return;
    }
    let bad = veritrace_model::kernels::KernelSource {
        name: "broken.cu",
        source: "extern \"C\" __global__ void vt_broken(float* x) { x[0] = undefined_name; }",
        functions: &["vt_broken"],
    };
    for err in [
        veritrace_model::cuda::compile_ptx(&bad, "compute_80").unwrap_err(),
        veritrace_model::cuda::compile_cubin(&bad, "sm_80").unwrap_err(),
        veritrace_model::cuda::kernel_resources(&bad, "sm_80").unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(msg.contains("broken.cu"), "{msg}");
        assert!(
            msg.contains("undefined_name"),
            "the NVRTC log is kept: {msg}"
        );
    }
    assert!(program(&bad).starts_with(veritrace_model::kernels::COMMON));
}

/// Without libnvrtc, compiling is a typed error that says how to provide it (CUDA 12 or 13, the
/// pip wheel, the CUDA 13 link). Runs only where libnvrtc is absent.
#[test]
fn missing_nvrtc_is_a_typed_error_that_says_what_to_do() {
    if veritrace_model::cuda::nvrtc_present() {
        eprintln!("skipping: libnvrtc is present");
        return;
    }
    for err in [
        veritrace_model::cuda::compile_ptx(&KERNELS[0], "compute_80").unwrap_err(),
        veritrace_model::cuda::compile_cubin(&KERNELS[0], "sm_80").unwrap_err(),
    ] {
        match err {
            veritrace_model::ModelError::DeviceUnavailable { reason, .. } => {
                for hint in [
                    "LD_LIBRARY_PATH",
                    "libnvrtc.so.13",
                    "nvidia-cuda-nvrtc-cu12",
                ] {
                    assert!(reason.contains(hint), "{hint}: {reason}");
                }
            }
            other => panic!("expected DeviceUnavailable, got {other:?}"),
        }
    }
}
