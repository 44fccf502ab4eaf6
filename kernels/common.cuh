// Shared definitions for every veritrace kernel.
//
// The kernels are plain CUDA C++ with no headers: NVRTC compiles them with this file prepended
// (crates/model/src/kernels.rs assembles the sources), and the host test shim
// (kernels/host/cuda_host.hpp) compiles the same text with a C++ compiler, so that every kernel
// that needs no warp intrinsics can be run and checked on a CPU.
//
// Subset rules: no warp shuffles, no atomics, no dynamic shared memory; block sizes are the
// compile-time constants below; floating point uses only IEEE operations (+, -, *, /, sqrtf) and
// expf/erff/cosf/sinf, so the results depend on the device only through expf/erff and the order
// of reductions, which each kernel fixes.

typedef unsigned char vt_u8;
typedef unsigned int vt_u32;
typedef unsigned long long vt_u64;
typedef signed char vt_i8;

// Threads per block of the row kernels (norms, softmax rows, reductions).
#define VT_ROW_THREADS 128
// Query rows per block of the tiled attention kernel, threads per query row, and so threads per
// block.
#define VT_ATTN_ROWS 16
#define VT_ATTN_LANES 8
#define VT_ATTN_THREADS (VT_ATTN_ROWS * VT_ATTN_LANES)
// Largest head dimension of the attention kernels.
#define VT_MAX_HEAD_DIM 128
// Largest key block of the tiled attention kernel (the block size B of `attn=tiled:B`).
#define VT_MAX_TILE 128

// A loop the device compiler should unroll (a fixed trip count, so that the per-thread arrays it
// indexes stay in registers); nothing for the host shim's C++ compiler.
#ifdef __CUDACC_RTC__
#define VT_UNROLL _Pragma("unroll")
#else
#define VT_UNROLL
#endif

// Numeric precisions, as in crates/model/src/setup.rs (Precision).
#define VT_F32 0
#define VT_BF16 1
#define VT_F16 2

__device__ __forceinline__ vt_u32 vt_bits(float x) { return __float_as_uint(x); }
__device__ __forceinline__ float vt_float(vt_u32 u) { return __uint_as_float(u); }

// f32 -> bf16 bits, round to nearest even; NaN stays a quiet NaN (as half::bf16::from_f32).
__device__ __forceinline__ unsigned short vt_f32_to_bf16(float x) {
    vt_u32 u = vt_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

__device__ __forceinline__ float vt_bf16_to_f32(unsigned short h) {
    return vt_float(((vt_u32)h) << 16);
}

// f32 -> IEEE binary16 bits, round to nearest even, with subnormals and overflow to infinity
// (as half::f16::from_f32).
__device__ __forceinline__ unsigned short vt_f32_to_f16(float x) {
    vt_u32 u = vt_bits(x);
    vt_u32 sign = (u >> 16) & 0x8000u;
    vt_u32 exp = (u >> 23) & 0xffu;
    vt_u32 man = u & 0x7fffffu;
    if (exp == 0xffu) {
        // Infinity or NaN (NaN keeps a quiet bit).
        return (unsigned short)(sign | 0x7c00u | (man ? (0x0200u | (man >> 13)) : 0u));
    }
    int e = (int)exp - 127 + 15;
    if (e >= 0x1f) return (unsigned short)(sign | 0x7c00u);
    if (e <= 0) {
        // Subnormal half (or zero).
        if (e < -10) return (unsigned short)sign;
        man |= 0x800000u;
        vt_u32 shift = (vt_u32)(14 - e);
        vt_u32 half_man = man >> shift;
        vt_u32 rem = man & ((1u << shift) - 1u);
        vt_u32 halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (half_man & 1u))) half_man += 1u;
        return (unsigned short)(sign | half_man);
    }
    vt_u32 half_man = man >> 13;
    vt_u32 rem = man & 0x1fffu;
    vt_u32 out = sign | ((vt_u32)e << 10) | half_man;
    if (rem > 0x1000u || (rem == 0x1000u && (half_man & 1u))) out += 1u;  // may carry into exp
    return (unsigned short)out;
}

__device__ __forceinline__ float vt_f16_to_f32(unsigned short h) {
    vt_u32 sign = ((vt_u32)h & 0x8000u) << 16;
    vt_u32 exp = ((vt_u32)h >> 10) & 0x1fu;
    vt_u32 man = (vt_u32)h & 0x3ffu;
    if (exp == 0x1fu) return vt_float(sign | 0x7f800000u | (man << 13));
    if (exp == 0u) {
        if (man == 0u) return vt_float(sign);
        // Subnormal: value = man * 2^-24, exact in f32.
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return vt_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// Rounds an f32 to the grid of `precision` and back (exact widening), so that f32 buffers can
// hold 16-bit values.
__device__ __forceinline__ float vt_round(float x, int precision) {
    if (precision == VT_BF16) return vt_bf16_to_f32(vt_f32_to_bf16(x));
    if (precision == VT_F16) return vt_f16_to_f32(vt_f32_to_f16(x));
    return x;
}
