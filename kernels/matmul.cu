// Linear products y = x . W^T (x [M, K], W [N, K], y [M, N], row-major f32 holding values on the
// precision's grid): the split-K product of crates/model/src/ops.rs `matmul_t` and the product
// with dequantized int8 / int4 weights (crates/model/src/quant.rs).
//
// Both are tiled through shared memory in VT_MM_TILE x VT_MM_TILE tiles: a block of
// (VT_MM_TILE, VT_MM_TILE) threads computes the outputs y[m, n] with n = blockIdx.x * VT_MM_TILE +
// threadIdx.x and m = blockIdx.y * VT_MM_TILE + threadIdx.y, each accumulating its dot product
// in f32 from 0.0f in index order (acc = acc + x_k * w_k, no fused multiply-add), so the result
// does not depend on the tiling.

#define VT_MM_TILE 16

// The slice of split s of S over K inputs: ceil(K / S) consecutive inputs, the last shorter (or
// empty when S does not divide K into S non-empty slices).
__device__ __forceinline__ void vt_splitk_slice(int K, int S, int s, int* begin, int* end) {
    int part = (K + S - 1) / S;
    long long b = (long long)s * part;
    long long e = b + part;
    if (b > K) b = K;
    if (e > K) e = K;
    *begin = (int)b;
    *end = (int)e;
}

// The f32 partial products of split-K: partial[s][m][n] = sum over k in slice s of x[m, k] w[n, k]
// (f32, index order). Grid (ceil(N / 16), ceil(M / 16), S), block (16, 16).
extern "C" __global__ void vt_matmul_splitk_partial(const float* __restrict__ x,
                                                    const float* __restrict__ w,
                                                    float* __restrict__ partial, int M, int N,
                                                    int K, int S) {
    __shared__ float xs[VT_MM_TILE][VT_MM_TILE + 1];
    __shared__ float ws[VT_MM_TILE][VT_MM_TILE + 1];
    int tx = threadIdx.x;
    int ty = threadIdx.y;
    int n0 = blockIdx.x * VT_MM_TILE;
    int m0 = blockIdx.y * VT_MM_TILE;
    int s = blockIdx.z;
    int kb, ke;
    vt_splitk_slice(K, S, s, &kb, &ke);
    float acc = 0.0f;
    for (int kt = kb; kt < ke; kt += VT_MM_TILE) {
        int kk = kt + tx;
        int xm = m0 + ty;
        int wn = n0 + ty;
        xs[ty][tx] = xm < M && kk < ke ? x[(vt_u64)xm * K + kk] : 0.0f;
        ws[ty][tx] = wn < N && kk < ke ? w[(vt_u64)wn * K + kk] : 0.0f;
        __syncthreads();
        int len = ke - kt < VT_MM_TILE ? ke - kt : VT_MM_TILE;
        for (int c = 0; c < len; ++c) acc = acc + xs[ty][c] * ws[tx][c];
        __syncthreads();
    }
    int m = m0 + ty;
    int n = n0 + tx;
    if (m < M && n < N) partial[((vt_u64)s * M + m) * N + n] = acc;
}

// y[m, n] = round_p(p_0 + p_1 + ... + p_{c-1}) in f32 in slice order (starting from p_0), where c
// = ceil(K / ceil(K / S)) is the number of non-empty slices (the CPU's loop; c = S unless S does
// not cut K into S non-empty slices). One thread per element: a 1-D grid over M * N, blocks of
// VT_ROW_THREADS. With S = 1 this rounds the plain f32 product.
extern "C" __global__ void vt_splitk_reduce(const float* __restrict__ partial, float* __restrict__ y,
                                            int M, int N, int K, int S, int precision) {
    vt_u64 idx = (vt_u64)blockIdx.x * blockDim.x + threadIdx.x;
    vt_u64 mn = (vt_u64)M * N;
    if (idx >= mn) return;
    int part = (K + S - 1) / S;
    int count = part > 0 ? (K + part - 1) / part : 1;
    if (count < 1) count = 1;
    float acc = partial[idx];
    for (int s = 1; s < count; ++s) acc = acc + partial[(vt_u64)s * mn + idx];
    y[idx] = vt_round(acc, precision);
}

// The integer code of W[n, k]: `bits` = 8: codes is [N, K] of signed bytes; `bits` = 4: codes is
// [N, ceil(K / 2)] bytes, two 4-bit two's complement values per byte, the low nibble the even
// column.
__device__ __forceinline__ int vt_code(const vt_u8* codes, int n, int k, int K, int bits) {
    if (bits == 4) {
        int byte = codes[(vt_u64)n * ((K + 1) / 2) + (k >> 1)];
        int nib = (k & 1) ? (byte >> 4) & 15 : byte & 15;
        return nib >= 8 ? nib - 16 : nib;
    }
    int byte = codes[(vt_u64)n * K + k];
    return byte >= 128 ? byte - 256 : byte;
}

// y = round_p(x . Wh^T) with Wh[n, k] = round_p((float)q[n, k] * scales[n, k / group_cols]): the
// dequantized weight (quant.rs's product in f32, then the cast to the precision), the dot product
// accumulated in f32 in index order. scales is [N, ceil(K / group_cols)] (per channel:
// group_cols = K; a per-tensor scale is expanded to per channel by the host). `bits` is 8 or 4.
// Grid (ceil(N / 16), ceil(M / 16)), block (16, 16).
extern "C" __global__ void vt_matmul_dequant(const float* __restrict__ x,
                                             const vt_u8* __restrict__ codes,
                                             const float* __restrict__ scales,
                                             float* __restrict__ y, int M, int N, int K,
                                             int group_cols, int bits, int precision) {
    __shared__ float xs[VT_MM_TILE][VT_MM_TILE + 1];
    __shared__ float ws[VT_MM_TILE][VT_MM_TILE + 1];
    int tx = threadIdx.x;
    int ty = threadIdx.y;
    int n0 = blockIdx.x * VT_MM_TILE;
    int m0 = blockIdx.y * VT_MM_TILE;
    int groups = (K + group_cols - 1) / group_cols;
    float acc = 0.0f;
    for (int kt = 0; kt < K; kt += VT_MM_TILE) {
        int kk = kt + tx;
        int xm = m0 + ty;
        int wn = n0 + ty;
        xs[ty][tx] = xm < M && kk < K ? x[(vt_u64)xm * K + kk] : 0.0f;
        float wv = 0.0f;
        if (wn < N && kk < K) {
            float sc = scales[(vt_u64)wn * groups + kk / group_cols];
            wv = vt_round((float)vt_code(codes, wn, kk, K, bits) * sc, precision);
        }
        ws[ty][tx] = wv;
        __syncthreads();
        int len = K - kt < VT_MM_TILE ? K - kt : VT_MM_TILE;
        for (int c = 0; c < len; ++c) acc = acc + xs[ty][c] * ws[tx][c];
        __syncthreads();
    }
    int m = m0 + ty;
    int n = n0 + tx;
    if (m < M && n < N) y[(vt_u64)m * N + n] = vt_round(acc, precision);
}
