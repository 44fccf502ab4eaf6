//! One opened GPU: context, stream, cuBLAS handle and the compiled kernels, with the launch
//! helpers the models share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig};
use cudarc::nvrtc::Ptx;

use super::{compile_cubin, cublas_present, driver_present, nvrtc_present};
use crate::kernels::{KERNELS, ROW_THREADS};
use crate::{Device, ModelError, Precision, Result};

/// Threads per block of the elementwise kernels.
const ELEMENT_THREADS: u32 = 256;

/// An opened GPU with every kernel of [`KERNELS`] compiled for it.
///
/// The forward pass runs on one stream, in order. Leaf hashing of a committed run has a second
/// stream, so that hashing layer `l` overlaps computing layer `l + 1`; the two are ordered by
/// explicit events (see `GpuLlama::run`), not by cudarc's per-buffer event tracking, which is
/// off: it keeps one read event per buffer, which cannot say that two streams read the same
/// hidden state. `Gpu::lock` serializes whole forward passes of callers on several threads.
pub struct Gpu {
    ordinal: usize,
    name: String,
    capability: (i32, i32),
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    /// The stream leaf hashing runs on while the forward pass goes on.
    pub(crate) hash_stream: Arc<CudaStream>,
    blas: CudaBlas,
    functions: HashMap<&'static str, CudaFunction>,
    busy: Mutex<()>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu(cuda:{} {})", self.ordinal, self.name)
    }
}

pub(crate) fn cuda_err(what: &str, e: impl std::fmt::Debug) -> ModelError {
    ModelError::Cuda(format!("{what}: {e:?}"))
}

fn unavailable(device: Device, reason: impl Into<String>) -> ModelError {
    ModelError::DeviceUnavailable {
        device: device.to_string(),
        reason: reason.into(),
    }
}

/// The opened GPUs, one per ordinal, so kernels compile once per process.
fn opened() -> &'static Mutex<HashMap<usize, Arc<Gpu>>> {
    static OPENED: OnceLock<Mutex<HashMap<usize, Arc<Gpu>>>> = OnceLock::new();
    OPENED.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The precision code of kernels/common.cuh (`VT_F32`, `VT_BF16`, `VT_F16`).
pub(crate) fn precision_code(p: Precision) -> i32 {
    match p {
        Precision::F32 => 0,
        Precision::Bf16 => 1,
        Precision::F16 => 2,
    }
}

/// Rounds to the precision's grid and back, on the host (as the kernels' `vt_round`).
pub(crate) fn round_host(x: f32, p: Precision) -> f32 {
    match p {
        Precision::F32 => x,
        Precision::Bf16 => half::bf16::from_f32(x).to_f32(),
        Precision::F16 => half::f16::from_f32(x).to_f32(),
    }
}

/// The launch shape of an elementwise kernel over `n` items.
pub(crate) fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(ELEMENT_THREADS).max(1), 1, 1),
        block_dim: (ELEMENT_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The launch shape of a row kernel: one block of [`ROW_THREADS`] per row.
pub(crate) fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launches kernel `$name` of `$gpu` with `$cfg` and the argument references that follow, on
/// the GPU's stream, or on `$stream` with `launch!(on $stream, $gpu, ...)`.
macro_rules! launch {
    (on $stream:expr, $gpu:expr, $name:expr, $cfg:expr, $($arg:expr),* $(,)?) => {{
        let f = $gpu.function($name)?;
        let mut b = $stream.launch_builder(f);
        $( cudarc::driver::PushKernelArg::arg(&mut b, $arg); )*
        // SAFETY: each call site passes exactly the parameters, in order and of the types, that
        // the kernel's signature in kernels/*.cu declares, with buffers at least as long as the
        // launch shape reads and writes.
        unsafe { b.launch($cfg) }.map_err(|e| $crate::cuda::gpu::cuda_err($name, e))?;
    }};
    ($gpu:expr, $name:expr, $cfg:expr, $($arg:expr),* $(,)?) => {
        $crate::cuda::gpu::launch!(on $gpu.stream, $gpu, $name, $cfg, $($arg),*)
    };
}
pub(crate) use launch;

impl Gpu {
    /// Opens `device` (a `cuda:N`), compiling every kernel for it on first use; later calls
    /// return the same GPU. Typed errors, never a panic, when the driver, NVRTC, cuBLAS or the
    /// GPU is missing.
    pub fn open(device: Device) -> Result<Arc<Gpu>> {
        let Device::Cuda(ordinal) = device else {
            return Err(ModelError::InvalidArgument(
                "Gpu::open needs a cuda:N device".into(),
            ));
        };
        let mut map = opened().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = map.get(&ordinal) {
            return Ok(g.clone());
        }
        if !driver_present() {
            return Err(unavailable(
                device,
                "no CUDA driver (libcuda) on this machine",
            ));
        }
        if !nvrtc_present() {
            return Err(unavailable(device, super::NVRTC_MISSING));
        }
        if !cublas_present() {
            return Err(unavailable(device, super::CUBLAS_MISSING));
        }
        let count =
            CudaContext::device_count().map_err(|e| unavailable(device, format!("{e:?}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(unavailable(
                device,
                format!("this machine has {count} GPU(s)"),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| unavailable(device, format!("{e:?}")))?;
        // SAFETY: called before any buffer of this context exists; from here on the streams are
        // ordered explicitly (the struct's doc says how).
        unsafe { ctx.disable_event_tracking() };
        let name = ctx.name().map_err(|e| cuda_err("device name", e))?;
        let capability = ctx
            .compute_capability()
            .map_err(|e| cuda_err("compute capability", e))?;
        let stream = ctx.default_stream();
        let hash_stream = ctx.new_stream().map_err(|e| cuda_err("stream", e))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| cuda_err("cuBLAS", e))?;
        // Machine code for this GPU's architecture (see `compile_cubin` for why not PTX).
        let arch = format!("sm_{}{}", capability.0, capability.1);
        let mut functions = HashMap::new();
        for k in KERNELS {
            let cubin = compile_cubin(k, &arch)?;
            let module = ctx
                .load_module(Ptx::from_binary(cubin))
                .map_err(|e| cuda_err(k.name, e))?;
            for &f in k.functions {
                let func = module.load_function(f).map_err(|e| cuda_err(f, e))?;
                functions.insert(f, func);
            }
        }
        let gpu = Arc::new(Gpu {
            ordinal,
            name,
            capability,
            ctx,
            stream,
            hash_stream,
            blas,
            functions,
            busy: Mutex::new(()),
        });
        map.insert(ordinal, gpu.clone());
        Ok(gpu)
    }

    /// The device's name as the driver reports it (`NVIDIA H100 80GB HBM3`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The compute capability `(major, minor)`.
    pub fn capability(&self) -> (i32, i32) {
        self.capability
    }

    /// The device this is (`cuda:N`).
    pub fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    /// Holds the GPU for one caller's sequence of launches.
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn function(&self, name: &'static str) -> Result<&CudaFunction> {
        self.functions
            .get(name)
            .ok_or_else(|| ModelError::Cuda(format!("kernel {name} is not loaded")))
    }

    /// Copies host values to a new device buffer.
    pub(crate) fn upload<T: cudarc::driver::DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(v)
            .map_err(|e| cuda_err("host to device copy", e))
    }

    /// Copies a device buffer to the host (waits for the stream).
    pub(crate) fn download<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        d: &CudaSlice<T>,
    ) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(d)
            .map_err(|e| cuda_err("device to host copy", e))
    }

    /// A zeroed device buffer of `n` values.
    pub(crate) fn zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros(n.max(1))
            .map_err(|e| cuda_err("device allocation", e))
    }

    /// Runs `f` (launches on this GPU's stream) and returns its result with the GPU time in
    /// milliseconds between CUDA events recorded before and after it: the measure the
    /// benchmarks report, free of host-side launch jitter.
    pub fn timed<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, f32)> {
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self
            .ctx
            .new_event(flags)
            .map_err(|e| cuda_err("event", e))?;
        let end = self
            .ctx
            .new_event(flags)
            .map_err(|e| cuda_err("event", e))?;
        start
            .record(&self.stream)
            .map_err(|e| cuda_err("event record", e))?;
        let out = f()?;
        end.record(&self.stream)
            .map_err(|e| cuda_err("event record", e))?;
        end.synchronize()
            .map_err(|e| cuda_err("event synchronize", e))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| cuda_err("elapsed time", e))?;
        Ok((out, ms))
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(|e| cuda_err("memory info", e))
    }

    /// Waits until every launch so far has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| cuda_err("synchronize", e))
    }

    /// `y = x · Wᵀ` in f32 with cuBLAS (`x: [m, k]`, `w: [n, k]`, `y: [m, n]`, row-major), the
    /// plain matmul; cuBLAS's default math mode (no TF32).
    pub(crate) fn gemm_t(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        // Row-major y = x Wᵀ is column-major yᵀ = W xᵀ: A = W (col-major [k, n], transposed),
        // B = x (col-major [k, m]), C = yᵀ (col-major [n, m]).
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: 1.0f32,
            lda: k as i32,
            ldb: k as i32,
            beta: 0.0f32,
            ldc: n as i32,
        };
        // cuBLAS runs in the context current on the calling thread; the simulator calls from
        // rayon's threads, so make this GPU's context current first.
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("bind context", e))?;
        // SAFETY: x holds m·k, w n·k and y m·n values (the callers allocate them so).
        unsafe { self.blas.gemm(cfg, w, x, y) }.map_err(|e| cuda_err("cuBLAS sgemm", e))
    }

    /// Rounds a buffer to `precision`'s grid in place (nothing for f32).
    pub(crate) fn round(
        &self,
        x: &mut CudaSlice<f32>,
        n: usize,
        precision: Precision,
    ) -> Result<()> {
        if precision == Precision::F32 {
            return Ok(());
        }
        let (n32, p) = (n as i32, precision_code(precision));
        launch!(self, "vt_round_inplace", elementwise(n), x, &n32, &p);
        Ok(())
    }
}
