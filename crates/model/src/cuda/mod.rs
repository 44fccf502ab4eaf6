//! The CUDA backend (feature `cuda`): the decoder and the encoder on an NVIDIA GPU, and the
//! trace committed on the device.
//!
//! Everything CUDA is loaded at run time (cudarc's `dynamic-loading`): a binary built with the
//! feature runs on machines without CUDA and reports [`ModelError::DeviceUnavailable`] when a
//! GPU is asked for. The kernels (`kernels/*.cu`, [`crate::kernels`]) are compiled with NVRTC
//! for the GPU found.
//!
//! `cudarc`'s `CudaContext::new` panics when libcuda is absent, so every entry point checks
//! [`driver_present`] first.
#![allow(unsafe_code)]

use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};

use crate::kernels::{program, KernelSource};
use crate::{ModelError, Result};

/// Whether libcuda (the driver) can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library under its usual names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether libnvrtc can be loaded (kernels can be compiled; no GPU needed).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library under its usual names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether cuBLAS can be loaded.
pub fn cublas_present() -> bool {
    // SAFETY: only tries to dlopen the library under its usual names.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// The NVRTC options every kernel is compiled with: IEEE division and square root, no
/// flush-to-zero, and no contraction of `a * b + c` into a fused multiply-add, so that each
/// operation of a kernel rounds as written (the CPU reference does not fuse either).
fn options(arch: &'static str, name: &str) -> CompileOptions {
    CompileOptions {
        ftz: Some(false),
        prec_sqrt: Some(true),
        prec_div: Some(true),
        fmad: Some(false),
        arch: Some(arch),
        name: Some(name.to_string()),
        ..Default::default()
    }
}

/// Compiles one kernel file ([`program`]) to PTX for a virtual architecture such as
/// `compute_90`. Needs libnvrtc only ([`nvrtc_present`]), not a GPU.
pub fn compile_ptx(kernel: &KernelSource, arch: &'static str) -> Result<String> {
    if !nvrtc_present() {
        return Err(ModelError::DeviceUnavailable {
            device: "nvrtc".into(),
            reason: "libnvrtc cannot be loaded (install CUDA or the nvidia-cuda-nvrtc-cu12 wheel and put its lib/ on LD_LIBRARY_PATH)".into(),
        });
    }
    let ptx = compile_ptx_with_opts(program(kernel), options(arch, kernel.name))
        .map_err(|e| compile_error(kernel, e))?;
    Ok(ptx.to_src())
}

/// The GPUs the driver reports, with name, compute capability and memory (a context per GPU,
/// no kernels compiled), or why none can be used.
pub(crate) fn list_gpus() -> std::result::Result<Vec<crate::device::DeviceInfo>, String> {
    if !driver_present() {
        return Err("no CUDA driver (libcuda) on this machine".into());
    }
    let count = cudarc::driver::CudaContext::device_count().map_err(|e| format!("{e:?}"))?;
    let mut out = Vec::new();
    for i in 0..count.max(0) as usize {
        let ctx = cudarc::driver::CudaContext::new(i).map_err(|e| format!("cuda:{i}: {e:?}"))?;
        let name = ctx.name().map_err(|e| format!("{e:?}"))?;
        let (ma, mi) = ctx.compute_capability().map_err(|e| format!("{e:?}"))?;
        let mem = ctx.total_mem().map_err(|e| format!("{e:?}"))?;
        let mut description = format!(
            "{name}, sm_{ma}{mi}, {:.1} GiB",
            mem as f64 / (1u64 << 30) as f64
        );
        if !nvrtc_present() {
            description.push_str("; libnvrtc missing, so kernels cannot be compiled");
        }
        if !cublas_present() {
            description.push_str("; libcublas missing");
        }
        out.push(crate::device::DeviceInfo {
            device: crate::Device::Cuda(i),
            description,
        });
    }
    Ok(out)
}

fn compile_error(kernel: &KernelSource, e: CompileError) -> ModelError {
    match e {
        CompileError::CompileError { nvrtc, log, .. } => ModelError::KernelCompile {
            name: kernel.name.to_string(),
            reason: format!("{nvrtc:?}"),
            log: log.to_string_lossy().into_owned(),
        },
        other => ModelError::KernelCompile {
            name: kernel.name.to_string(),
            reason: format!("{other:?}"),
            log: String::new(),
        },
    }
}

pub mod bench;
mod bert;
pub(crate) mod gpu;
mod llama;
mod ops;

pub use bert::GpuBert;
pub use gpu::Gpu;
pub use llama::{GpuLlama, GpuRun, RunOptions};
