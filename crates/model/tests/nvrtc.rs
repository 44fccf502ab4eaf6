//! Every kernel of `kernels/` compiles to PTX with NVRTC (no GPU needed, only libnvrtc).
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
    let err = veritrace_model::cuda::compile_ptx(&bad, "compute_80").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("broken.cu"), "{msg}");
    assert!(
        msg.contains("undefined_name"),
        "the NVRTC log is kept: {msg}"
    );
    assert!(program(&bad).starts_with(veritrace_model::kernels::COMMON));
}
