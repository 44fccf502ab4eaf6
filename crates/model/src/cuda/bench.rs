//! Measurements of the CUDA backend for `benches/gpu.rs` and the GPU report
//! (`examples/gpu_report.rs`): each returns GPU time from CUDA events, so the figures are free
//! of host-side launch jitter, and the ratios the issue asks for are taken side by side in one
//! process.

use cudarc::driver::sys::CUdevice_attribute;
use veritrace_commit::{Dtype, HasherId, TraceGeometry};

use super::gpu::{cuda_err, Gpu};
use super::ops;
use crate::{ModelError, Result, Setup};

impl Gpu {
    /// The theoretical memory bandwidth in bytes per second: `2 · memory clock · bus width`
    /// (double data rate), from the driver's device attributes.
    pub fn memory_bandwidth(&self) -> Result<f64> {
        let clock_khz = self
            .ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)
            .map_err(|e| cuda_err("memory clock", e))?;
        let bus_bits = self
            .ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)
            .map_err(|e| cuda_err("bus width", e))?;
        Ok(2.0 * f64::from(clock_khz) * 1e3 * f64::from(bus_bits) / 8.0)
    }
}

/// Leaf hashing of one f32 layer of `tokens × hidden` in cells of `chunk` rows, repeated
/// `reps` times on data already on the device; returns the GPU milliseconds per layer.
/// Throughput is `tokens · hidden · 4 / time`.
pub fn hash_layer_ms(
    gpu: &Gpu,
    tokens: u32,
    hidden: u32,
    chunk: u32,
    hasher: HasherId,
    reps: usize,
) -> Result<f64> {
    let g = TraceGeometry::new(1, tokens, hidden, chunk, Dtype::F32)
        .map_err(|e| ModelError::InvalidArgument(e.to_string()))?;
    let n = tokens as usize * hidden as usize;
    let values: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 1e-3).collect();
    let _held = gpu.lock();
    let layer = gpu.upload(&values)?;
    let mut out = gpu.zeros::<u8>(g.num_cells() as usize * 32)?;
    ops::leaf_digests(gpu, &gpu.stream, &layer, 0, &g, hasher, &mut out)?; // warm-up
    let ((), ms) = gpu.timed(|| {
        for _ in 0..reps.max(1) {
            ops::leaf_digests(gpu, &gpu.stream, &layer, 0, &g, hasher, &mut out)?;
        }
        Ok(())
    })?;
    Ok(f64::from(ms) / reps.max(1) as f64)
}

/// One attention call of `setup`'s algorithm on random `[t, heads·hd]` queries, keys and
/// values (causal, as the decoder), repeated `reps` times; returns GPU milliseconds per call.
pub fn attention_ms(
    gpu: &Gpu,
    t: usize,
    heads: usize,
    hd: usize,
    setup: &Setup,
    reps: usize,
) -> Result<f64> {
    gpu.device().check_setup(setup)?;
    let n = t * heads * hd;
    let mut x = 0x9e37_79b9u32;
    let mut rand = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    };
    let q: Vec<f32> = (0..n).map(|_| rand()).collect();
    let k: Vec<f32> = (0..n).map(|_| rand()).collect();
    let v: Vec<f32> = (0..n).map(|_| rand()).collect();
    let _held = gpu.lock();
    let (q, k, v) = (gpu.upload(&q)?, gpu.upload(&k)?, gpu.upload(&v)?);
    ops::attention(gpu, &q, &k, &v, t, heads, heads, hd, true, None, setup)?; // warm-up
    let ((), ms) = gpu.timed(|| {
        for _ in 0..reps.max(1) {
            ops::attention(gpu, &q, &k, &v, t, heads, heads, hd, true, None, setup)?;
        }
        Ok(())
    })?;
    Ok(f64::from(ms) / reps.max(1) as f64)
}
