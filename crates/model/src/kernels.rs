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

// The launch shapes the kernels are written for: mirrors of their `#define`s, checked against
// the sources by a unit test, so that a host launch and the kernel it launches cannot drift apart.

/// Threads per block of the row kernels (`VT_ROW_THREADS`, kernels/common.cuh): norms, softmax
/// and top-k rows, and the blocks of the eager attention kernels.
pub const ROW_THREADS: u32 = 128;
/// Query rows per block of the tiled attention kernel (`VT_ATTN_ROWS`).
pub const ATTN_ROWS: u32 = 16;
/// Threads per block of the tiled attention kernel (`VT_ATTN_THREADS`: `VT_ATTN_LANES` threads
/// for each of the [`ATTN_ROWS`] rows).
pub const ATTN_THREADS: u32 = 128;
/// Tile edge of the eager score kernel (`VT_ATTN_SCORE_TILE`): blocks of
/// `SCORE_TILE x SCORE_TILE` threads, one score each.
pub const SCORE_TILE: u32 = 16;
/// Largest head dimension of the attention kernels (`VT_MAX_HEAD_DIM`).
pub const MAX_HEAD_DIM: usize = 128;
/// Largest key block `B` of the tiled attention kernel (`VT_MAX_TILE`).
pub const MAX_TILE: usize = 128;
/// Tile edge of the matmul kernels (`VT_MM_TILE`, kernels/matmul.cu): blocks of
/// `MM_TILE x MM_TILE` threads.
pub const MM_TILE: u32 = 16;

/// The value of `#define name VALUE` in [`COMMON`] or a kernel file, where `VALUE` is an
/// integer or a product or quotient of integers and other such defines, evaluated left to right
/// (`(VT_ATTN_ROWS * VT_ATTN_LANES)`, `(VT_MAX_HEAD_DIM / VT_ATTN_LANES)`); `None` for a name
/// that is not defined so.
pub fn define(name: &str) -> Option<u64> {
    let line = std::iter::once(COMMON)
        .chain(KERNELS.iter().map(|k| k.source))
        .flat_map(str::lines)
        .find_map(|l| {
            let mut words = l.trim().splitn(3, char::is_whitespace);
            (words.next() == Some("#define") && words.next() == Some(name))
                .then(|| words.next().unwrap_or("").to_string())
        })?;
    let value = line.split("//").next()?.trim();
    let value = value.trim_start_matches('(').trim_end_matches(')');
    let factor = |f: &str| {
        let f = f.trim();
        match f.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) if f != name => define(f),
            Err(_) => None,
        }
    };
    // Operands at even places, operators at odd ones.
    let mut parts = value.split_inclusive(['*', '/']);
    let first = parts.next()?;
    let (mut acc, mut op) = match first.strip_suffix(['*', '/']) {
        Some(f) => (factor(f)?, first.chars().last()),
        None => return factor(first),
    };
    for part in parts {
        let (f, next) = match part.strip_suffix(['*', '/']) {
            Some(f) => (f, part.chars().last()),
            None => (part, None),
        };
        let v = factor(f)?;
        acc = match op {
            Some('*') => acc.checked_mul(v)?,
            _ => acc.checked_div(v)?,
        };
        op = next;
    }
    Some(acc)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_constants_match_the_kernel_defines() {
        assert_eq!(define("VT_ROW_THREADS"), Some(u64::from(ROW_THREADS)));
        assert_eq!(define("VT_ATTN_ROWS"), Some(u64::from(ATTN_ROWS)));
        assert_eq!(define("VT_ATTN_THREADS"), Some(u64::from(ATTN_THREADS)));
        assert_eq!(define("VT_MAX_HEAD_DIM"), Some(MAX_HEAD_DIM as u64));
        assert_eq!(define("VT_MAX_TILE"), Some(MAX_TILE as u64));
        assert_eq!(define("VT_MM_TILE"), Some(u64::from(MM_TILE)));
        assert_eq!(define("VT_ATTN_SCORE_TILE"), Some(u64::from(SCORE_TILE)));
        // The tiled kernel's lanes split the head dimensions evenly.
        let lanes = define("VT_ATTN_LANES").expect("VT_ATTN_LANES");
        assert_eq!(MAX_HEAD_DIM as u64 % lanes, 0);
        assert_eq!(define("VT_ATTN_DIMS"), Some(MAX_HEAD_DIM as u64 / lanes));
    }

    #[test]
    fn define_reads_integers_and_products_and_refuses_the_rest() {
        assert_eq!(define("VT_BF16"), Some(1));
        assert_eq!(define("VT_NO_SUCH_DEFINE"), None);
        // Not an integer expression (a function-like value).
        assert_eq!(define("VT_NEG_INF"), None);
    }
}
