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

use std::ffi::{CStr, CString};

use cudarc::nvrtc;

use crate::kernels::{program, KernelSource};
use crate::{ModelError, Result};

/// Whether libcuda (the driver) can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library under its usual names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Why libnvrtc cannot be loaded, and what to do.
pub(crate) const NVRTC_MISSING: &str = "libnvrtc cannot be loaded: install CUDA 12 or 13 (or the \
     nvidia-cuda-nvrtc-cu12 wheel) and put its lib/ on LD_LIBRARY_PATH; where CUDA 13 has only \
     libnvrtc.so.13, link libnvrtc.so to it (scripts/gpu-run.sh does)";

/// Why libcublas cannot be loaded, and what to do.
pub(crate) const CUBLAS_MISSING: &str =
    "libcublas cannot be loaded: install CUDA 12 or 13 (or the \
     nvidia-cublas-cu12 wheel) and put its lib/ on LD_LIBRARY_PATH; where CUDA 13 has only \
     libcublas.so.13, link libcublas.so to it (scripts/gpu-run.sh does)";

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
fn options(arch: &str) -> Vec<String> {
    vec![
        "--ftz=false".into(),
        "--prec-sqrt=true".into(),
        "--prec-div=true".into(),
        "--fmad=false".into(),
        format!("--gpu-architecture={arch}"),
    ]
}

/// What NVRTC hands back.
#[derive(Clone, Copy)]
enum Output {
    /// PTX text, for a virtual architecture (`compute_XY`).
    Ptx,
    /// A CUBIN (SASS for one GPU), for a real architecture (`sm_XY`).
    Cubin,
    /// The program log of a CUBIN compile with ptxas's verbose report (`-Xptxas -v`).
    PtxasReport,
}

/// An NVRTC program, destroyed on drop.
struct Program(nvrtc::sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by `create_program` and is destroyed only here.
        let _ = unsafe { nvrtc::result::destroy_program(self.0) };
    }
}

fn compile(kernel: &KernelSource, arch: &str, output: Output) -> Result<Vec<u8>> {
    if !nvrtc_present() {
        return Err(ModelError::DeviceUnavailable {
            device: "nvrtc".into(),
            reason: NVRTC_MISSING.into(),
        });
    }
    let failed = |reason: String, log: String| ModelError::KernelCompile {
        name: kernel.name.to_string(),
        reason,
        log,
    };
    let src = CString::new(program(kernel))
        .map_err(|_| failed("the source holds a NUL byte".into(), String::new()))?;
    let name = CString::new(kernel.name)
        .map_err(|_| failed("the name holds a NUL byte".into(), String::new()))?;
    let prog = Program(
        nvrtc::result::create_program(&src, Some(&name))
            .map_err(|e| failed(format!("{e:?}"), String::new()))?,
    );
    // SAFETY: `prog` is live until the end of this function (it is dropped last), and `src`
    // and `name`, which it may point into, outlive it.
    unsafe {
        let mut opts = options(arch);
        if matches!(output, Output::PtxasReport) {
            opts.push("--ptxas-options=-v".into());
        }
        let log = || {
            nvrtc::result::get_program_log(prog.0)
                .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        if let Err(e) = nvrtc::result::compile_program(prog.0, &opts) {
            return Err(failed(format!("{e:?}"), log()));
        }
        let bytes = match output {
            Output::PtxasReport => Ok(log().into_bytes()),
            Output::Ptx => nvrtc::result::get_ptx(prog.0)
                .map(|v| v.iter().map(|&c| c as u8).collect::<Vec<u8>>()),
            Output::Cubin => {
                let mut size = 0usize;
                nvrtc::sys::nvrtcGetCUBINSize(prog.0, &mut size)
                    .result()
                    .and_then(|()| {
                        let mut v = vec![0u8; size];
                        nvrtc::sys::nvrtcGetCUBIN(prog.0, v.as_mut_ptr().cast())
                            .result()
                            .map(|()| v)
                    })
            }
        }
        .map_err(|e| failed(format!("{e:?}"), String::new()))?;
        Ok(bytes)
    }
}

/// Compiles one kernel file ([`program`]) to PTX for a virtual architecture such as
/// `compute_90`. Needs libnvrtc only ([`nvrtc_present`]), not a GPU.
pub fn compile_ptx(kernel: &KernelSource, arch: &str) -> Result<String> {
    let mut bytes = compile(kernel, arch, Output::Ptx)?;
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    String::from_utf8(bytes).map_err(|_| ModelError::KernelCompile {
        name: kernel.name.to_string(),
        reason: "NVRTC returned PTX that is not UTF-8".into(),
        log: String::new(),
    })
}

/// Compiles one kernel file ([`program`]) to a CUBIN, the machine code of one real
/// architecture such as `sm_90`: what [`Gpu::open`] loads. Needs libnvrtc only, not a GPU.
///
/// Machine code rather than PTX because of CUDA's minor-version compatibility: a driver older
/// than the NVRTC (the pip wheel is often newer than a machine's driver) runs a CUBIN of the
/// same major version, but refuses PTX of a newer ISA (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`).
pub fn compile_cubin(kernel: &KernelSource, arch: &str) -> Result<Vec<u8>> {
    compile(kernel, arch, Output::Cubin)
}

/// What ptxas reports for one kernel entry point compiled for one architecture: the resources
/// that decide how many of its blocks a multiprocessor holds, and whether it touches local
/// memory (a stack frame or register spills, which the kernels are written to avoid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelResources {
    /// The entry point (`vt_attn_tiled`, ...).
    pub function: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of per-thread stack frame (local memory).
    pub stack_bytes: u32,
    /// Bytes of register spill stores (local memory).
    pub spill_store_bytes: u32,
    /// Bytes of register spill loads (local memory).
    pub spill_load_bytes: u32,
    /// Bytes of static shared memory per block.
    pub shared_bytes: u32,
}

/// Compiles one kernel file to a CUBIN for `arch` (`sm_XY`) as [`compile_cubin`] does and
/// returns ptxas's report for each entry point. Needs libnvrtc only, not a GPU.
pub fn kernel_resources(kernel: &KernelSource, arch: &str) -> Result<Vec<KernelResources>> {
    let log = String::from_utf8_lossy(&compile(kernel, arch, Output::PtxasReport)?).into_owned();
    parse_ptxas_report(&log).ok_or_else(|| ModelError::KernelCompile {
        name: kernel.name.to_string(),
        reason: "ptxas's report could not be read".into(),
        log,
    })
}

/// Reads ptxas's verbose report: per entry point, a `Compiling entry function 'NAME'` line,
/// then `N bytes stack frame, N bytes spill stores, N bytes spill loads` and
/// `Used N registers, ..., N bytes smem` (no `smem` when there is none).
fn parse_ptxas_report(log: &str) -> Option<Vec<KernelResources>> {
    // The number just before `unit` in `line` (`120 registers`, `0 bytes stack frame`).
    fn before(line: &str, unit: &str) -> Option<u32> {
        let at = line.find(unit)?;
        line[..at].split_whitespace().last()?.parse().ok()
    }
    let mut out: Vec<KernelResources> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            out.push(KernelResources {
                function: rest.split('\'').next()?.to_string(),
                registers: 0,
                stack_bytes: 0,
                spill_store_bytes: 0,
                spill_load_bytes: 0,
                shared_bytes: 0,
            });
        } else if let Some(k) = out.last_mut() {
            if line.contains("bytes stack frame") {
                k.stack_bytes = before(line, " bytes stack frame")?;
                k.spill_store_bytes = before(line, " bytes spill stores")?;
                k.spill_load_bytes = before(line, " bytes spill loads")?;
            } else if line.contains("Used ") && line.contains(" registers") {
                k.registers = before(line, " registers")?;
                k.shared_bytes = before(line, " bytes smem").unwrap_or(0);
            }
        }
    }
    (!out.is_empty()).then_some(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_reports_are_read_per_entry_point() {
        let log = "ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'vt_a' for 'sm_90'
ptxas info    : Function properties for vt_a
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 120 registers, used 1 barriers, 33024 bytes smem
ptxas info    : Compile time = 818.919 ms
ptxas info    : Compiling entry function 'vt_b' for 'sm_90'
ptxas info    : Function properties for vt_b
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 436 bytes cmem[0]
";
        let got = parse_ptxas_report(log).expect("a report");
        assert_eq!(
            got,
            vec![
                KernelResources {
                    function: "vt_a".into(),
                    registers: 120,
                    stack_bytes: 8,
                    spill_store_bytes: 4,
                    spill_load_bytes: 12,
                    shared_bytes: 33024,
                },
                KernelResources {
                    function: "vt_b".into(),
                    registers: 32,
                    stack_bytes: 0,
                    spill_store_bytes: 0,
                    spill_load_bytes: 0,
                    shared_bytes: 0,
                },
            ]
        );
        assert_eq!(parse_ptxas_report("ptxas info    : 0 bytes gmem\n"), None);
        let garbled = "ptxas info : Compiling entry function 'vt_a' for 'sm_90'
ptxas . x bytes stack frame, 0 bytes spill stores, 0 bytes spill loads";
        assert_eq!(parse_ptxas_report(garbled), None);
    }
}

pub mod bench;
mod bert;
pub(crate) mod gpu;
mod llama;
mod ops;
mod run;

pub use bert::GpuBert;
pub use gpu::Gpu;
pub use llama::GpuLlama;
pub use run::{GpuRun, RunOptions};
