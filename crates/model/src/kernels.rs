//! The CUDA kernels of the `cuda` backend, as source text.
//!
//! Every file of `kernels/` is embedded with `include_str!`, so the binary carries its kernels
//! and compiles them at run time with NVRTC for the GPU it finds; nothing CUDA is needed to
//! build. Each program is `kernels/common.cuh` followed by one kernel file ([`program`]).
//!
//! The same text compiles as C++ for the host test shim `kernels/host/cuda_host.hpp`, which is
//! how the kernels' logic is tested on machines without a GPU (`crates/model/tests/host/`);
//! with the `cuda` feature and libnvrtc present, `tests/nvrtc.rs` compiles every program to PTX
//! and to CUBINs (what a GPU loads).

/// Definitions shared by every kernel (integer types, f32 to bf16/f16 rounding).
pub const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// One kernel file: its name, its source and the `extern "C"` functions it defines.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// The file name under `kernels/`.
    pub name: &'static str,
    /// The file's text.
    pub source: &'static str,
    /// The entry points (`extern "C" __global__`) it defines.
    pub functions: &'static [&'static str],
}

/// Every kernel file.
pub const KERNELS: &[KernelSource] = &[
    KernelSource {
        name: "norm.cu",
        source: include_str!("../../../kernels/norm.cu"),
        functions: &[
            "vt_rms_norm",
            "vt_layer_norm",
            "vt_round_inplace",
            "vt_add_inplace",
            "vt_add_bias",
            "vt_silu_mul",
            "vt_gelu",
            "vt_rope",
            "vt_reuse_update",
        ],
    },
    KernelSource {
        name: "leaf_hash.cu",
        source: include_str!("../../../kernels/leaf_hash.cu"),
        functions: &["vt_blake3_chunks", "vt_blake3_cells", "vt_sha256_cells"],
    },
    KernelSource {
        name: "attention.cu",
        source: include_str!("../../../kernels/attention.cu"),
        functions: &[
            "vt_attn_scores",
            "vt_attn_topk",
            "vt_attn_softmax",
            "vt_attn_pv",
            "vt_attn_tiled",
        ],
    },
    KernelSource {
        name: "matmul.cu",
        source: include_str!("../../../kernels/matmul.cu"),
        functions: &[
            "vt_matmul_splitk_partial",
            "vt_splitk_reduce",
            "vt_matmul_dequant",
        ],
    },
];

/// The program NVRTC compiles for a kernel file: [`COMMON`], then the file.
pub fn program(kernel: &KernelSource) -> String {
    format!("{COMMON}\n// ---- {} ----\n{}", kernel.name, kernel.source)
}

/// The kernel file that defines `function`.
pub fn source_of(function: &str) -> Option<&'static KernelSource> {
    KERNELS.iter().find(|k| k.functions.contains(&function))
}
