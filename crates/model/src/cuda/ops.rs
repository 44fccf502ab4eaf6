//! Launch wrappers for kernels/attention.cu, kernels/matmul.cu and kernels/leaf_hash.cu, and
//! the device form of a linear layer's weights.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, LaunchConfig};
use veritrace_commit::{HasherId, TraceGeometry};

use super::gpu::{elementwise, launch, per_row, precision_code, round_host, Gpu};
use crate::kernels::{ATTN_ROWS, ATTN_THREADS, MAX_HEAD_DIM, MM_TILE, ROW_THREADS, SCORE_TILE};
use crate::quant::quantize;
use crate::{Attention, ModelError, Order, QuantScheme, Result, Setup};

/// Threads per block of the hashing kernels.
const HASH_THREADS: u32 = 128;
/// "No window" for the attention kernels.
const NO_WINDOW: i32 = i32::MAX;

/// A linear layer's weights `[out, in]` on the device.
pub(crate) enum Weight {
    /// f32 values on the precision's grid (cuBLAS or the split-K kernel).
    Dense(CudaSlice<f32>),
    /// Integer codes (int8 one per byte, int4 two per byte, low nibble first) and one scale per
    /// (row, group of `group_cols` inputs), for the dequantize-and-multiply kernel.
    Quant {
        codes: CudaSlice<u8>,
        scales: CudaSlice<f32>,
        group_cols: usize,
        bits: i32,
    },
}

/// A linear layer on the device.
pub(crate) struct Linear {
    pub(crate) w: Weight,
    pub(crate) out: usize,
    pub(crate) inp: usize,
}

impl Linear {
    /// Prepares `w` (`[out, inp]`, f32) for `setup`: quantized (codes and scales) when the
    /// setup quantizes, else rounded to its precision.
    pub(crate) fn prepare(
        gpu: &Gpu,
        w: &[f32],
        out: usize,
        inp: usize,
        setup: &Setup,
    ) -> Result<Self> {
        if w.len() != out * inp {
            return Err(ModelError::WrongLength {
                what: "linear weight",
                expected: format!("{out} x {inp}"),
                got: w.len(),
            });
        }
        let weight = match setup.quant {
            None => {
                let v: Vec<f32> = w.iter().map(|&x| round_host(x, setup.precision)).collect();
                Weight::Dense(gpu.upload(&v)?)
            }
            Some(q) => {
                let qz = quantize(w, out, inp, q)?;
                let groups = inp.div_ceil(qz.group_cols);
                // Per-tensor: one scale, expanded to every row (the kernel reads [out, groups]).
                let scales: Vec<f32> = if qz.scales.len() == 1 {
                    vec![qz.scales[0]; out * groups]
                } else {
                    qz.scales.clone()
                };
                let (codes, bits) = match q.scheme {
                    QuantScheme::Int4Group { .. } => {
                        let per_row = inp.div_ceil(2);
                        let mut packed = vec![0u8; out * per_row];
                        for r in 0..out {
                            for c in 0..inp {
                                let nib = (qz.values[r * inp + c] as u8) & 0x0f;
                                packed[r * per_row + c / 2] |=
                                    if c % 2 == 0 { nib } else { nib << 4 };
                            }
                        }
                        (packed, 4)
                    }
                    _ => (qz.values.iter().map(|&v| v as u8).collect(), 8),
                };
                Weight::Quant {
                    codes: gpu.upload(&codes)?,
                    scales: gpu.upload(&scales)?,
                    group_cols: qz.group_cols,
                    bits,
                }
            }
        };
        Ok(Linear {
            w: weight,
            out,
            inp,
        })
    }
}

/// `y = x · Wᵀ` over `rows` rows under the setup's precision, batch and split-K, by the kernel
/// the setup implies: dequantize-and-multiply, split-K, or cuBLAS SGEMM then rounding.
///
/// Under `order=decode` every row is its own one-row product, as a KV-cache decoder computes
/// each new token: cuBLAS then multiplies `[1, in]` by `[in, out]` (its matrix-vector kernels,
/// another reduction order than the prefill's `[rows, in]` product). Our own kernels give each
/// output element the same sum whatever the number of rows, so for them decode is prefill.
pub(crate) fn linear(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    rows: usize,
    l: &Linear,
    setup: &Setup,
) -> Result<CudaSlice<f32>> {
    if setup.order == Order::Decode && rows > 1 {
        let (n, k) = (l.out, l.inp);
        let mut y = gpu.zeros::<f32>(rows * n)?;
        let mut row = gpu.zeros::<f32>(k)?;
        for r in 0..rows {
            gpu.stream
                .memcpy_dtod(&x.slice(r * k..(r + 1) * k), &mut row)
                .map_err(|e| super::gpu::cuda_err("copy", e))?;
            let yr = linear(gpu, &row, 1, l, setup)?;
            gpu.stream
                .memcpy_dtod(&yr, &mut y.slice_mut(r * n..(r + 1) * n))
                .map_err(|e| super::gpu::cuda_err("copy", e))?;
        }
        return Ok(y);
    }
    let (m, n, k) = (rows, l.out, l.inp);
    let p = precision_code(setup.precision);
    let (m32, n32, k32) = (m as i32, n as i32, k as i32);
    let tiles = |s: u32| LaunchConfig {
        grid_dim: (
            (n as u32).div_ceil(MM_TILE),
            (m as u32).div_ceil(MM_TILE),
            s,
        ),
        block_dim: (MM_TILE, MM_TILE, 1),
        shared_mem_bytes: 0,
    };
    let mut y = gpu.zeros::<f32>(m * n)?;
    match &l.w {
        Weight::Quant {
            codes,
            scales,
            group_cols,
            bits,
        } => {
            let g32 = *group_cols as i32;
            launch!(
                gpu,
                "vt_matmul_dequant",
                tiles(1),
                x,
                codes,
                scales,
                &mut y,
                &m32,
                &n32,
                &k32,
                &g32,
                bits,
                &p
            );
        }
        Weight::Dense(w) if setup.split_k > 1 && k > 1 => {
            let s = setup.split_k.min(k);
            let s32 = s as i32;
            let mut partial = gpu.zeros::<f32>(s * m * n)?;
            launch!(
                gpu,
                "vt_matmul_splitk_partial",
                tiles(s as u32),
                x,
                w,
                &mut partial,
                &m32,
                &n32,
                &k32,
                &s32
            );
            launch!(
                gpu,
                "vt_splitk_reduce",
                elementwise(m * n),
                &partial,
                &mut y,
                &m32,
                &n32,
                &k32,
                &s32,
                &p
            );
        }
        Weight::Dense(w) if setup.batch > 1 => {
            // The prompt's rows stacked `batch` times into one product; the first `rows` kept.
            let b = setup.batch;
            let mut stacked = gpu.zeros::<f32>(b * m * k)?;
            for i in 0..b {
                let mut dst = stacked.slice_mut(i * m * k..(i + 1) * m * k);
                gpu.stream
                    .memcpy_dtod(x, &mut dst)
                    .map_err(|e| super::gpu::cuda_err("copy", e))?;
            }
            let mut yb = gpu.zeros::<f32>(b * m * n)?;
            gpu.gemm_t(&stacked, w, &mut yb, b * m, n, k)?;
            gpu.stream
                .memcpy_dtod(&yb.slice(0..m * n), &mut y)
                .map_err(|e| super::gpu::cuda_err("copy", e))?;
            gpu.round(&mut y, m * n, setup.precision)?;
        }
        Weight::Dense(w) => {
            gpu.gemm_t(x, w, &mut y, m, n, k)?;
            gpu.round(&mut y, m * n, setup.precision)?;
        }
    }
    Ok(y)
}

/// Multi-head attention of `q: [t, nh·hd]` over `k, v: [t, nkv·hd]` (all positions `0..t`),
/// causal or bidirectional, under the setup's attention (eager, window, top-k or tiled); returns
/// `[t, nh·hd]`. `key_mask` is an additive `[t]` mask (0 / −∞) or none.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    gpu: &Gpu,
    q: &CudaSlice<f32>,
    k: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
    t: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    causal: bool,
    key_mask: Option<&CudaSlice<f32>>,
    setup: &Setup,
) -> Result<CudaSlice<f32>> {
    if hd > MAX_HEAD_DIM {
        return Err(ModelError::UnsupportedOnDevice {
            setup: setup.to_string(),
            device: gpu.device().to_string(),
            reason: format!("head size {hd} exceeds the kernels' {MAX_HEAD_DIM}"),
        });
    }
    let p = precision_code(setup.precision);
    let scale = (1.0 / (hd as f64).sqrt()) as f32;
    let (t32, q0, nh32, nkv32, hd32) = (t as i32, 0i32, nh as i32, nkv as i32, hd as i32);
    let c32 = i32::from(causal);
    // The key mask as the kernels take it: a device pointer, null for none. The mask was
    // uploaded on this stream, so its upload is ordered before the launches that read it; the
    // guard (which would record the read under cudarc's event tracking, off here) lives until
    // they are queued.
    let mask_guard = key_mask.map(|m| m.device_ptr(&gpu.stream));
    let mask_ptr: u64 = mask_guard.as_ref().map_or(0, |(ptr, _)| *ptr);
    let mut out = gpu.zeros::<f32>(t * nh * hd)?;
    let (window, tiled, topk) = match setup.attention {
        Attention::Window { size } => (i32::try_from(size).unwrap_or(NO_WINDOW), None, None),
        Attention::Tiled { block } => (NO_WINDOW, Some(block), None),
        Attention::Eager => (NO_WINDOW, None, None),
        Attention::TopK { k } => (NO_WINDOW, None, Some(k)),
    };
    if let Some(block) = tiled {
        let b32 = block as i32;
        let cfg = LaunchConfig {
            grid_dim: ((t as u32).div_ceil(ATTN_ROWS), nh as u32, 1),
            block_dim: (ATTN_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            gpu,
            "vt_attn_tiled",
            cfg,
            q,
            k,
            v,
            &mask_ptr,
            &mut out,
            &t32,
            &t32,
            &q0,
            &nh32,
            &nkv32,
            &hd32,
            &c32,
            &window,
            &b32,
            &scale,
            &p
        );
        return Ok(out);
    }
    // Eager: the [nh, t, t] score matrix is materialized, as PyTorch's math path does.
    let mut scores = gpu.zeros::<f32>(nh * t * t)?;
    let cfg = LaunchConfig {
        grid_dim: (
            (t as u32).div_ceil(SCORE_TILE),
            (t as u32).div_ceil(SCORE_TILE),
            nh as u32,
        ),
        block_dim: (SCORE_TILE, SCORE_TILE, 1),
        shared_mem_bytes: 0,
    };
    launch!(
        gpu,
        "vt_attn_scores",
        cfg,
        q,
        k,
        &mask_ptr,
        &mut scores,
        &t32,
        &t32,
        &q0,
        &nh32,
        &nkv32,
        &hd32,
        &c32,
        &window,
        &scale,
        &p
    );
    let rows = (nh * t) as i32;
    if let Some(keep) = topk {
        // Top-k: all but the `keep` largest scores of each row masked before the softmax.
        let keep = i32::try_from(keep).unwrap_or(i32::MAX);
        launch!(
            gpu,
            "vt_attn_topk",
            per_row(nh * t),
            &mut scores,
            &rows,
            &t32,
            &keep
        );
    }
    launch!(
        gpu,
        "vt_attn_softmax",
        per_row(nh * t),
        &mut scores,
        &rows,
        &t32,
        &p
    );
    let cfg = LaunchConfig {
        block_dim: (ROW_THREADS, 1, 1),
        grid_dim: (((t * nh * hd) as u32).div_ceil(ROW_THREADS), 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(
        gpu,
        "vt_attn_pv",
        cfg,
        &scores,
        v,
        &mut out,
        &t32,
        &t32,
        &q0,
        &nh32,
        &nkv32,
        &hd32,
        &c32,
        &window,
        &p
    );
    Ok(out)
}

/// Refuses hashers without a device kernel (Poseidon: field arithmetic over BN254).
pub(crate) fn check_device_hasher(hasher: HasherId) -> Result<()> {
    match hasher {
        HasherId::Blake3 | HasherId::Sha256 => Ok(()),
        other => Err(ModelError::InvalidArgument(format!(
            "hasher {} has no device kernel (blake3 and sha256 do)",
            other.name()
        ))),
    }
}

/// Hashes every cell of `layer` (the f32 buffer of `h_layer`) into its leaf digest on the
/// device, writing the `chunks_per_layer` digests of the layer at their layer-major place in
/// `out` (`num_cells · 32` bytes). The kernels and their scratch buffer go to `stream`; the
/// caller orders `stream` after the writes of `layer_buf` and `out`, and keeps both alive until
/// `stream` has finished with them.
pub(crate) fn leaf_digests(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    layer_buf: &CudaSlice<f32>,
    layer: u32,
    g: &TraceGeometry,
    hasher: HasherId,
    out: &mut CudaSlice<u8>,
) -> Result<()> {
    check_device_hasher(hasher)?;
    let cells = g.chunks_per_layer() as usize;
    let first = layer as usize * cells * 32;
    let elem = g.dtype.size() as u32;
    let code = u32::from(g.dtype.code());
    let (tokens, hidden, chunk) = (g.tokens, g.hidden, g.chunk);
    let bytes = g.layer_byte_len();
    // SAFETY: the f32 buffer holds tokens·hidden values, i.e. exactly `bytes` bytes.
    let layer_bytes = unsafe { layer_buf.transmute::<u8>(bytes) }
        .ok_or_else(|| ModelError::Cuda("layer buffer shorter than its geometry".into()))?;
    let mut dst = out.slice_mut(first..first + cells * 32);
    // SAFETY: 32·cells bytes are exactly 8·cells u32 words.
    let mut digests = unsafe { dst.transmute_mut::<u32>(cells * 8) }
        .ok_or_else(|| ModelError::Cuda("digest buffer too short".into()))?;
    let cfg = |items: usize| LaunchConfig {
        grid_dim: ((items as u32).div_ceil(HASH_THREADS).max(1), 1, 1),
        block_dim: (HASH_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    match hasher {
        HasherId::Sha256 => {
            launch!(
                on stream,
                gpu,
                "vt_sha256_cells",
                cfg(cells),
                &layer_bytes,
                &layer,
                &tokens,
                &hidden,
                &chunk,
                &elem,
                &code,
                &mut digests
            );
        }
        _ => {
            let per = blake3_chunks_per_cell(g);
            // Allocated and freed on `stream`, in order with the kernels that use it.
            let mut cvs = stream
                .alloc_zeros::<u32>(cells * per * 8)
                .map_err(|e| super::gpu::cuda_err("device allocation", e))?;
            launch!(
                on stream,
                gpu,
                "vt_blake3_chunks",
                cfg(cells * per),
                &layer_bytes,
                &layer,
                &tokens,
                &hidden,
                &chunk,
                &elem,
                &code,
                &mut cvs,
                &mut digests
            );
            // One block per cell: its threads merge a tree level's pairs together.
            let per_cell = LaunchConfig {
                grid_dim: (cells as u32, 1, 1),
                block_dim: (HASH_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(
                on stream,
                gpu,
                "vt_blake3_cells",
                per_cell,
                &mut cvs,
                &tokens,
                &hidden,
                &chunk,
                &elem,
                &mut digests
            );
        }
    }
    Ok(())
}

/// BLAKE3 chunks (1024 bytes) of the largest cell's leaf preimage `0x00 ‖ header ‖ elements`.
fn blake3_chunks_per_cell(g: &TraceGeometry) -> usize {
    let rows = g.chunk.min(g.tokens) as usize;
    let preimage = 1 + veritrace_commit::CELL_HEADER_LEN + rows * g.row_byte_len();
    preimage.div_ceil(1024).max(1)
}

/// Checks a one-layer recompute's request and returns the input's row count: `layer` is a
/// computed transformer layer (`1..=layers`, not skipped or reused by `setup`), `input` holds
/// whole finite rows of width `d`, and `rows` is a non-empty range within them.
pub(crate) fn check_layer_input(
    layer: usize,
    layers: usize,
    d: usize,
    input: &[f32],
    rows: &std::ops::Range<usize>,
    setup: &Setup,
) -> Result<usize> {
    if layer == 0 || layer > layers {
        return Err(ModelError::InvalidArgument(format!(
            "layer {layer} is not a transformer layer (1..={layers})"
        )));
    }
    if input.is_empty() || !input.len().is_multiple_of(d) {
        return Err(ModelError::WrongLength {
            what: "input rows",
            expected: format!("a positive multiple of {d}"),
            got: input.len(),
        });
    }
    let t = input.len() / d;
    if rows.start >= rows.end || rows.end > t {
        return Err(ModelError::InvalidArgument(format!(
            "rows {rows:?} are not within the {t} input rows"
        )));
    }
    if let Some(i) = crate::first_non_finite(input) {
        return Err(ModelError::NonFinite {
            what: "input rows",
            index: i,
        });
    }
    if setup.skip == Some(layer) || setup.reuse == Some(layer) {
        return Err(ModelError::InvalidArgument(format!(
            "layer {layer} is not computed under {setup}"
        )));
    }
    Ok(t)
}

/// The `reuse` setup's layer, the previous layer's update applied again:
/// `h_l = round_p(h_{l-1} + round_p(h_{l-1} − h_{l-2}))` over `n` values (kernels/norm.cu
/// `vt_reuse_update`).
pub(crate) fn reuse_update(
    gpu: &Gpu,
    prev: &CudaSlice<f32>,
    prev2: &CudaSlice<f32>,
    n: usize,
    precision: crate::Precision,
) -> Result<CudaSlice<f32>> {
    let mut y = gpu.zeros::<f32>(n)?;
    let (n32, p) = (n as i32, precision_code(precision));
    launch!(
        gpu,
        "vt_reuse_update",
        elementwise(n),
        prev,
        prev2,
        &mut y,
        &n32,
        &p
    );
    Ok(y)
}
