// Row normalizations, activations, rotary positions and elementwise steps of the decoder and
// the encoder.
//
// Every buffer is f32; under a 16-bit precision (`precision` = VT_BF16 or VT_F16) each result is
// rounded to that grid (vt_round), so an f32 buffer holds exactly the 16-bit values a bf16/f16
// kernel would store. Statistics (the mean square, the mean and variance) are accumulated in f32
// in a fixed order: thread t of the block sums elements t, t + VT_ROW_THREADS, ... in order, then
// the block's partial sums are added by a fixed binary tree. A row's result is therefore a
// function of the row alone: bitwise reproducible run to run.

// Sums the per-thread values `part` of a block of VT_ROW_THREADS threads by a fixed binary tree;
// every thread gets the total.
__device__ float vt_block_sum(float part, float* scratch) {
    vt_u32 t = threadIdx.x;
    scratch[t] = part;
    __syncthreads();
    for (vt_u32 stride = VT_ROW_THREADS / 2; stride > 0; stride >>= 1) {
        if (t < stride) scratch[t] = scratch[t] + scratch[t + stride];
        __syncthreads();
    }
    float total = scratch[0];
    __syncthreads();
    return total;
}

// RMSNorm, one block of VT_ROW_THREADS threads per row:
// y_i = round(x_i * (1 / sqrt(mean_j x_j^2 + eps)) * g_i), all in f32, rounded once.
extern "C" __global__ void vt_rms_norm(const float* __restrict__ x, const float* __restrict__ gain,
                                       float* __restrict__ y, int rows, int n, float eps,
                                       int precision) {
    __shared__ float scratch[VT_ROW_THREADS];
    int row = blockIdx.x;
    bool live = row < rows;
    const float* xr = x + (vt_u64)(live ? row : 0) * n;
    float part = 0.0f;
    if (live)
        for (int i = threadIdx.x; i < n; i += VT_ROW_THREADS) part = part + xr[i] * xr[i];
    float ss = vt_block_sum(part, scratch);
    if (!live) return;
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    float* yr = y + (vt_u64)row * n;
    for (int i = threadIdx.x; i < n; i += VT_ROW_THREADS)
        yr[i] = vt_round(xr[i] * inv * gain[i], precision);
}

// LayerNorm, one block per row: mu = mean x, var = mean (x - mu)^2 (both f32),
// y_i = round((x_i - mu) / sqrt(var + eps) * g_i + b_i), all in f32 (a division, as the CPU).
extern "C" __global__ void vt_layer_norm(const float* __restrict__ x, const float* __restrict__ gamma,
                                         const float* __restrict__ beta, float* __restrict__ y,
                                         int rows, int n, float eps, int precision) {
    __shared__ float scratch[VT_ROW_THREADS];
    int row = blockIdx.x;
    bool live = row < rows;
    const float* xr = x + (vt_u64)(live ? row : 0) * n;
    float part = 0.0f;
    if (live)
        for (int i = threadIdx.x; i < n; i += VT_ROW_THREADS) part = part + xr[i];
    float mu = vt_block_sum(part, scratch) / (float)n;
    part = 0.0f;
    if (live)
        for (int i = threadIdx.x; i < n; i += VT_ROW_THREADS) {
            float d = xr[i] - mu;
            part = part + d * d;
        }
    float var = vt_block_sum(part, scratch) / (float)n;
    if (!live) return;
    float sd = sqrtf(var + eps);
    float* yr = y + (vt_u64)row * n;
    for (int i = threadIdx.x; i < n; i += VT_ROW_THREADS)
        yr[i] = vt_round((xr[i] - mu) / sd * gamma[i] + beta[i], precision);
}

// x_i = round(x_i): puts an f32 buffer on the precision's grid.
extern "C" __global__ void vt_round_inplace(float* x, int n, int precision) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = vt_round(x[i], precision);
}

// y_i = round(y_i + x_i): the residual connection.
extern "C" __global__ void vt_add_inplace(float* __restrict__ y, const float* __restrict__ x, int n,
                                          int precision) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = vt_round(y[i] + x[i], precision);
}

// y[r, c] = round(y[r, c] + b[c]) for a [rows, cols] buffer: a linear layer's bias.
extern "C" __global__ void vt_add_bias(float* __restrict__ y, const float* __restrict__ b, int rows,
                                       int cols, int precision) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows * cols) y[i] = vt_round(y[i] + b[i % cols], precision);
}

// out_i = round(round(silu(g_i)) * u_i), silu(g) = g / (1 + exp(-g)): the gated MLP.
extern "C" __global__ void vt_silu_mul(const float* __restrict__ gate, const float* __restrict__ up,
                                       float* __restrict__ out, int n, int precision) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float g = gate[i];
        float s = vt_round(g / (1.0f + expf(-g)), precision);
        out[i] = vt_round(s * up[i], precision);
    }
}

// x_i = round(0.5 x_i (1 + erf(x_i / sqrt 2))): the exact (erf) GELU of BERT, in place.
extern "C" __global__ void vt_gelu(float* x, int n, int precision) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = x[i];
        x[i] = vt_round(0.5f * v * (1.0f + erff(v * 0.70710678118654752f)), precision);
    }
}

// Rotary positions ("rotate half"), in place on x: [tokens, heads * hd].
// cos, sin: [tokens, hd / 2], from the host's f64 angles rounded to f32 and then to the precision.
// x'_i = round(round(x_i cos_i) + round(r_i sin_i)), r = (-x[hd/2..], x[..hd/2]).
extern "C" __global__ void vt_rope(float* x, const float* __restrict__ cosv,
                                   const float* __restrict__ sinv, int tokens, int heads, int hd,
                                   int precision) {
    int half = hd / 2;
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // one thread per (token, head, pair)
    if (i >= tokens * heads * half) return;
    int p = i % half;
    int th = i / half;
    int t = th / heads;
    float* xh = x + (vt_u64)th * hd;
    float c = cosv[t * half + p];
    float s = sinv[t * half + p];
    float lo = xh[p];
    float hi = xh[p + half];
    // Positions p and p + half share cos/sin index p (the tables repeat across the two halves).
    xh[p] = vt_round(vt_round(lo * c, precision) + vt_round(-hi * s, precision), precision);
    xh[p + half] = vt_round(vt_round(hi * c, precision) + vt_round(lo * s, precision), precision);
}

// The `reuse` setup: out_i = round(a_i + round(a_i - b_i)), the previous layer's update applied
// again (a = h_{l-1}, b = h_{l-2}).
extern "C" __global__ void vt_reuse_update(const float* __restrict__ a, const float* __restrict__ b,
                                           float* __restrict__ out, int n, int precision) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = vt_round(a[i] + vt_round(a[i] - b[i], precision), precision);
}
