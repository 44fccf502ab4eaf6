// Attention: eager (scores materialized, as PyTorch's math path), top-k (eager with all but the
// k largest scores of each row masked) and tiled (the online softmax of FlashAttention over key
// blocks of a run-time size B), with the semantics of the CPU reference
// (crates/model/src/llama.rs `attend`, crates/model/src/bert.rs, ops.rs `softmax_times_v`).
//
// Layouts (row-major, f32, values on the precision's grid):
//   q   [tq, n_heads * hd]      query i is at position q0 + i
//   k,v [tk, n_kv_heads * hd]   key j is at position j
//   out [tq, n_heads * hd]
// Grouped KV: query head h reads kv head h / (n_heads / n_kv_heads).
//
// Visibility of key j to query i (position p = q0 + i):
//   (!causal || j <= p) && |p - j| < window   (pass a window >= tq + tk, e.g. 0x7fffffff, for
//   none; with `causal` this is the decoder's p - j < window, without it BERT's |p - j| < W),
// and then the additive key mask key_mask[j] (0 or -inf; a null pointer means none).
//
// A score is s = round_p(q_i . k_j) * scale + mask: the dot product accumulated in f32 in index
// order and rounded to the precision (the product of two 16-bit tensors), converted to f32 and
// scaled (scale = 1/sqrt(hd) as f32); a hidden key gets -inf.

// Keys per shared-memory sub-tile of the tiled kernel. Its static shared memory is the sub-tile
// [VT_ATTN_KV_TILE, VT_MAX_HEAD_DIM + 1], the queries [VT_ATTN_ROWS, VT_MAX_HEAD_DIM + 1] and
// the scores [VT_ATTN_ROWS, VT_MAX_TILE + 1], f32: 33 KB, under the 48 KB a kernel may have
// without opting in to more.
#define VT_ATTN_KV_TILE 32
// Tile edge of the eager score kernel: T x T threads per block, 17 KB of shared memory.
#define VT_ATTN_SCORE_TILE 16
// Keys of a sub-tile per lane of the tiled kernel.
#define VT_ATTN_KEYS (VT_ATTN_KV_TILE / VT_ATTN_LANES)
// Output dimensions per lane of the tiled kernel.
#define VT_ATTN_DIMS (VT_MAX_HEAD_DIM / VT_ATTN_LANES)

// -inf and a quiet NaN (NVRTC has no <cmath> macros).
#define VT_NEG_INF vt_float(0xff800000u)
#define VT_NAN vt_float(0x7fc00000u)

// Whether query position p sees key j under the causal flag and the window.
__device__ __forceinline__ bool vt_attn_visible(int p, int j, int causal, int window) {
    if (causal && j > p) return false;
    int d = p >= j ? p - j : j - p;
    return d < window;
}

// The masked, scaled score of a dot product `dot` (already accumulated in f32).
__device__ __forceinline__ float vt_attn_score(float dot, int p, int j, int causal, int window,
                                               const float* key_mask, float scale,
                                               int precision) {
    if (!vt_attn_visible(p, j, causal, window)) return VT_NEG_INF;
    float s = vt_round(dot, precision) * scale;
    return key_mask ? s + key_mask[j] : s;
}

// ---- eager ----

// scores[h][i][j], [n_heads, tq, tk]: grid (ceil(tk / T), ceil(tq / T), n_heads) with
// T = VT_ATTN_SCORE_TILE, blocks of (T, T) threads; thread (tx, ty) of block (bx, by, h) computes
// query i = by * T + ty against key j = bx * T + tx. The block's T query rows and T key rows are
// staged in shared memory (rows padded by one word, so that the threads reading a column hit
// distinct banks); each dot product is still one thread's sum over d in order. A tile in which
// no query sees any key (beyond the causal diagonal or outside the window) writes -inf without
// loading anything. hd outside [1, VT_MAX_HEAD_DIM] writes NaN (the host checks first).
extern "C" __global__ void vt_attn_scores(const float* __restrict__ q, const float* __restrict__ k,
                                          const float* __restrict__ key_mask,
                                          float* __restrict__ scores, int tq, int tk, int q0,
                                          int n_heads, int n_kv_heads, int hd, int causal,
                                          int window, float scale, int precision) {
    __shared__ float qs[VT_ATTN_SCORE_TILE * (VT_MAX_HEAD_DIM + 1)];
    __shared__ float ks[VT_ATTN_SCORE_TILE * (VT_MAX_HEAD_DIM + 1)];
    const int stride = VT_MAX_HEAD_DIM + 1;
    int tx = threadIdx.x;
    int ty = threadIdx.y;
    int h = blockIdx.z;
    int i0 = blockIdx.y * VT_ATTN_SCORE_TILE;
    int j0 = blockIdx.x * VT_ATTN_SCORE_TILE;
    int i = i0 + ty;
    int j = j0 + tx;
    int kvh = h / (n_heads / n_kv_heads);
    int hdl = hd >= 1 && hd <= VT_MAX_HEAD_DIM ? hd : 0;
    // Whether some query of the tile sees some key of it: positions [pmin, pmax] against keys
    // [j0, jlast], causal needing j <= p, the window |p - j| < window at the closest pair.
    long long pmin = (long long)q0 + i0;
    long long pmax = (long long)q0 + (i0 + VT_ATTN_SCORE_TILE < tq ? i0 + VT_ATTN_SCORE_TILE : tq) - 1;
    long long jlast = (j0 + VT_ATTN_SCORE_TILE < tk ? j0 + VT_ATTN_SCORE_TILE : tk) - 1;
    long long gap = pmin - jlast > j0 - pmax ? pmin - jlast : j0 - pmax;
    if (gap < 0) gap = 0;
    bool any = i0 < tq && j0 < tk && hdl > 0 && (!causal || j0 <= pmax) && gap < window;
    if (any) {  // the same for every thread of the block
        for (int e = ty * VT_ATTN_SCORE_TILE + tx; e < VT_ATTN_SCORE_TILE * hdl;
             e += VT_ATTN_SCORE_TILE * VT_ATTN_SCORE_TILE) {
            int r = e / hdl;
            int d = e % hdl;
            qs[r * stride + d] =
                i0 + r < tq ? q[(vt_u64)(i0 + r) * n_heads * hd + (vt_u64)h * hd + d] : 0.0f;
            ks[r * stride + d] =
                j0 + r < tk ? k[(vt_u64)(j0 + r) * n_kv_heads * hd + (vt_u64)kvh * hd + d] : 0.0f;
        }
        __syncthreads();
    }
    if (i >= tq || j >= tk) return;
    float s = hdl > 0 ? VT_NEG_INF : VT_NAN;
    if (any) {
        float dot = 0.0f;
        for (int d = 0; d < hd; ++d) dot = dot + qs[ty * stride + d] * ks[tx * stride + d];
        s = vt_attn_score(dot, q0 + i, j, causal, window, key_mask, scale, precision);
    }
    scores[((vt_u64)h * tq + i) * tk + j] = s;
}

// The block's maximum and sum of the per-thread values `part` (VT_ROW_THREADS threads): every
// thread reads the block's values from shared memory and combines them in thread order 0, 1, ...,
// 127 (the sum from scratch[0], left to right), so all threads get the same total with two
// barriers (the maximum does not depend on the order: there is no NaN in the scores).
__device__ float vt_attn_block_max(float part, float* scratch) {
    scratch[threadIdx.x] = part;
    __syncthreads();
    float total = scratch[0];
    for (int t = 1; t < VT_ROW_THREADS; ++t) total = scratch[t] > total ? scratch[t] : total;
    __syncthreads();
    return total;
}

__device__ float vt_attn_block_sum(float part, float* scratch) {
    scratch[threadIdx.x] = part;
    __syncthreads();
    float total = scratch[0];
    for (int t = 1; t < VT_ROW_THREADS; ++t) total = total + scratch[t];
    __syncthreads();
    return total;
}

// Softmax of each row of `scores` ([rows, n], rows = n_heads * tq), in place: blocks of
// VT_ROW_THREADS threads, block b taking rows b, b + gridDim.x, ... (launch grid = rows for one
// row per block; any grid >= 1 gives the same result). m = max_j s_j (f32); e_j = expf(s_j - m);
// the sum: thread t adds e_t, e_{t+128}, ... in order from 0, then the 128 partial sums are added
// in thread order (vt_attn_block_sum); p_j = round_p(e_j / sum). A row whose every key is hidden (m = -inf) gets p = 0.
extern "C" __global__ void vt_attn_softmax(float* scores, int rows, int n, int precision) {
    __shared__ float scratch[VT_ROW_THREADS];
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        float* sr = scores + (vt_u64)row * n;
        float part = VT_NEG_INF;
        for (int j = threadIdx.x; j < n; j += VT_ROW_THREADS) part = sr[j] > part ? sr[j] : part;
        float m = vt_attn_block_max(part, scratch);
        bool empty = m == VT_NEG_INF;
        part = 0.0f;
        if (!empty)
            for (int j = threadIdx.x; j < n; j += VT_ROW_THREADS) {
                float e = expf(sr[j] - m);
                sr[j] = e;
                part = part + e;
            }
        float sum = vt_attn_block_sum(part, scratch);
        for (int j = threadIdx.x; j < n; j += VT_ROW_THREADS)
            sr[j] = empty ? 0.0f : vt_round(sr[j] / sum, precision);
    }
}

// ---- top-k ----

// Order-preserving key of an f32: unsigned comparison of keys is the IEEE total order of the
// values (-0 < +0). Positive values get the sign bit set, negative values all bits flipped.
__device__ __forceinline__ unsigned vt_order_key(float x) {
    unsigned u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The value of an order key (inverse of vt_order_key).
__device__ __forceinline__ float vt_order_value(unsigned key) {
    return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

__device__ __forceinline__ bool vt_finite(float x) {
    return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}

// Digits of the threshold search: 4 bits, so 8 passes over a row.
#define VT_TOPK_BITS 4
#define VT_TOPK_BUCKETS 16

// The block's total of the per-thread integer counts `part` (exact in any order).
__device__ int vt_block_count(int part, int* scratch) {
    scratch[threadIdx.x] = part;
    __syncthreads();
    int total = 0;
    for (int t = 0; t < VT_ROW_THREADS; ++t) total += scratch[t];
    __syncthreads();
    return total;
}

// Top-k masking of each row of `scores` ([rows, n], rows = n_heads * tq), in place, between
// vt_attn_scores and vt_attn_softmax: blocks of VT_ROW_THREADS threads, block b taking rows b,
// b + gridDim.x, ... (any grid >= 1 gives the same result).
//
// The rule is the CPU reference's (`veritrace_model::topk_mask`, used by llama.rs and bert.rs):
// when a row has more than `keep` finite scores, the threshold is the keep-th largest of them in
// the total order of f32 (-0 < +0), and every score s with s < threshold (IEEE comparison)
// becomes -inf; ties with the threshold are all kept, and a row with at most `keep` finite
// scores is left as it is. keep >= 1 (the host checks; keep < 1 leaves the row).
//
// The threshold is found without sorting, by a radix search over order keys: it is the value of
// the largest key K with #{j : s_j finite, key(s_j) >= K} >= keep (the key of the keep-th
// largest finite score). K is built 4 bits at a time from the most significant end, keeping the
// invariant count(K) >= keep: in each pass every thread sorts its elements with key >= K into 16
// buckets b = min((key - K) >> shift, 15), the block totals the buckets (integer sums, exact in
// any order), and the largest digit d with sum_{b >= d} total_b >= keep is appended to K.
extern "C" __global__ void vt_attn_topk(float* scores, int rows, int n, int keep) {
    __shared__ int scratch[VT_TOPK_BUCKETS * VT_ROW_THREADS];
    __shared__ int totals[VT_TOPK_BUCKETS];
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        float* sr = scores + (vt_u64)row * n;
        int part = 0;
        for (int j = threadIdx.x; j < n; j += VT_ROW_THREADS) part += vt_finite(sr[j]) ? 1 : 0;
        // Every thread of the block gets the same count, so the branch is uniform.
        if (keep < 1 || vt_block_count(part, scratch) <= keep) continue;
        unsigned key = 0;
        for (int shift = 32 - VT_TOPK_BITS; shift >= 0; shift -= VT_TOPK_BITS) {
            int hist[VT_TOPK_BUCKETS];
            for (int b = 0; b < VT_TOPK_BUCKETS; ++b) hist[b] = 0;
            for (int j = threadIdx.x; j < n; j += VT_ROW_THREADS) {
                float s = sr[j];
                if (!vt_finite(s)) continue;
                unsigned u = vt_order_key(s);
                if (u < key) continue;
                unsigned b = (u - key) >> shift;
                hist[b < VT_TOPK_BUCKETS ? b : VT_TOPK_BUCKETS - 1] += 1;
            }
            for (int b = 0; b < VT_TOPK_BUCKETS; ++b)
                scratch[b * VT_ROW_THREADS + threadIdx.x] = hist[b];
            __syncthreads();
            if (threadIdx.x < VT_TOPK_BUCKETS) {
                int total = 0;
                for (int t = 0; t < VT_ROW_THREADS; ++t)
                    total += scratch[threadIdx.x * VT_ROW_THREADS + t];
                totals[threadIdx.x] = total;
            }
            __syncthreads();
            // count(key + d << shift) = sum_{b >= d} totals[b]; digit 0 always qualifies.
            int above = 0;
            unsigned digit = 0;
            for (int d = VT_TOPK_BUCKETS - 1; d >= 1; --d) {
                above += totals[d];
                if (above >= keep) {
                    digit = (unsigned)d;
                    break;
                }
            }
            key += digit << shift;
        }
        float threshold = vt_order_value(key);
        for (int j = threadIdx.x; j < n; j += VT_ROW_THREADS)
            if (sr[j] < threshold) sr[j] = VT_NEG_INF;
    }
}

// out[i, h * hd + d] = round_p(sum_j p[h][i][j] * v[j, kvh * hd + d]), accumulated in f32 in key
// order from 0 over the keys the causal flag and the window let query i see (the other
// probabilities are exactly 0 and would not change the sum). One thread per (i, h, d): a 1-D
// grid over tq * n_heads * hd (index (i * n_heads + h) * hd + d), blocks of VT_ROW_THREADS.
extern "C" __global__ void vt_attn_pv(const float* __restrict__ probs, const float* __restrict__ v,
                                      float* __restrict__ out, int tq, int tk, int q0, int n_heads,
                                      int n_kv_heads, int hd, int causal, int window,
                                      int precision) {
    vt_u64 idx = (vt_u64)blockIdx.x * blockDim.x + threadIdx.x;
    vt_u64 total = (vt_u64)tq * n_heads * hd;
    if (idx >= total) return;
    int d = (int)(idx % hd);
    int h = (int)((idx / hd) % n_heads);
    int i = (int)(idx / ((vt_u64)hd * n_heads));
    int kvh = h / (n_heads / n_kv_heads);
    int p = q0 + i;
    // Visible keys lie in [lo, hi): the window around p, cut at p + 1 when causal.
    long long lo = (long long)p - window + 1;
    long long hi = (long long)p + window;
    if (causal && hi > (long long)p + 1) hi = (long long)p + 1;
    if (lo < 0) lo = 0;
    if (hi > tk) hi = tk;
    const float* pr = probs + ((vt_u64)h * tq + i) * tk;
    const float* vd = v + (vt_u64)kvh * hd + d;
    vt_u64 vstride = (vt_u64)n_kv_heads * hd;
    float acc = 0.0f;
    for (long long j = lo; j < hi; ++j) acc = acc + pr[j] * vd[(vt_u64)j * vstride];
    out[idx] = vt_round(acc, precision);
}

// ---- tiled (online softmax) ----

// VT_ATTN_LANES threads per (query row, head): grid (ceil(tq / VT_ATTN_ROWS), n_heads), blocks
// of VT_ATTN_THREADS threads; thread t of block (bx, h) works for query
// i = bx * VT_ATTN_ROWS + t / VT_ATTN_LANES as its lane t % VT_ATTN_LANES.
//
// Keys are taken in blocks of `block` keys (B, 1 <= B <= VT_MAX_TILE) starting at 0: [0, B),
// [B, 2B), ... For each block, per query row (f32 throughout unless rounded):
//   s_j   = the score of key j (above); bmax = max_j s_j
//   a block with bmax = -inf (no key visible to this query) is skipped: it contributes exactly 0
//   first block processed:  m = bmax, sum = sum_j p_j, o = round_p(sum_j round_p(p_j) v_j)
//                           with p_j = expf(s_j - m)
//   later blocks:           m' = max(m, bmax), corr = expf(m - m'), p_j = expf(s_j - m'),
//                           sum = sum * corr + (sum_j p_j),
//                           o = o * corr + round_p(sum_j round_p(p_j) v_j), m = m'
// Sums over j run in key order from 0 (sum_j p_j from 0.0f, the product with v from 0.0f); the
// block's product with v is rounded to the precision before it is added (the CPU's product of
// 16-bit tensors), and out = round_p(o / sum). A query that sees no key at all gets 0.
//
// The lanes of a row share its work without changing any sum's order: each score's dot product
// is computed whole by one lane (keys j = lane, lane + LANES, ...), each output dimension's sum
// over keys whole by one lane (dimensions d = lane, lane + LANES, ...), and the row's max and
// sum_j p_j by every lane alike, in key order. The row's query, its scores and a sub-tile of
// VT_ATTN_KV_TILE keys of K or V sit in shared memory, rows padded by one word so that lanes
// reading a column hit distinct banks. The key range of a thread block starts at the block
// boundary below the first key its rows' windows reach and ends after the last key its rows can
// see (causal, window), so blocks no row sees are never loaded; a block some rows see and others
// do not is skipped by those others as above.
// `block` outside [1, VT_MAX_TILE] or hd > VT_MAX_HEAD_DIM writes NaN (the host checks first).
extern "C" __global__ void vt_attn_tiled(const float* __restrict__ q, const float* __restrict__ k,
                                         const float* __restrict__ v,
                                         const float* __restrict__ key_mask,
                                         float* __restrict__ out, int tq, int tk, int q0,
                                         int n_heads, int n_kv_heads, int hd, int causal,
                                         int window, int block, float scale, int precision) {
    __shared__ float tile[VT_ATTN_KV_TILE * (VT_MAX_HEAD_DIM + 1)];
    __shared__ float qs[VT_ATTN_ROWS * (VT_MAX_HEAD_DIM + 1)];
    __shared__ float ps[VT_ATTN_ROWS * (VT_MAX_TILE + 1)];
    int t = threadIdx.x;
    int lane = t % VT_ATTN_LANES;
    int h = blockIdx.y;
    int row0 = blockIdx.x * VT_ATTN_ROWS;
    int i = row0 + t / VT_ATTN_LANES;
    bool live = i < tq;
    bool ok = block >= 1 && block <= VT_MAX_TILE && hd >= 1 && hd <= VT_MAX_HEAD_DIM;
    int kvh = h / (n_heads / n_kv_heads);
    int p = q0 + i;
    vt_u64 qstride = (vt_u64)n_heads * hd;
    vt_u64 kvstride = (vt_u64)n_kv_heads * hd;
    int ts = hd + 1;  // row stride of the K/V sub-tile
    const float* qrow = qs + (t / VT_ATTN_LANES) * (VT_MAX_HEAD_DIM + 1);
    float* srow = ps + (t / VT_ATTN_LANES) * (VT_MAX_TILE + 1);

    // The key range of the thread block: [kbeg, kend), kbeg a multiple of `block`.
    int last_row = row0 + VT_ATTN_ROWS - 1;
    if (last_row > tq - 1) last_row = tq - 1;
    long long kend = tk;
    if (causal && (long long)q0 + last_row + 1 < kend) kend = (long long)q0 + last_row + 1;
    if ((long long)q0 + last_row + window < kend) kend = (long long)q0 + last_row + window;
    long long first = (long long)q0 + row0 - window + 1;
    if (first < 0) first = 0;
    long long kbeg = ok ? (first / block) * block : 0;
    if (!ok || row0 >= tq) kend = 0;

    // The block's query rows (the first barrier of the key loop orders these writes).
    int hdl = ok ? hd : 0;
    for (int e = t; e < VT_ATTN_ROWS * hdl; e += VT_ATTN_THREADS) {
        int r = e / hdl;
        int d = e % hdl;
        int ir = row0 + r;
        qs[r * (VT_MAX_HEAD_DIM + 1) + d] =
            ir < tq ? q[(vt_u64)ir * qstride + (vt_u64)h * hd + d] : 0.0f;
    }
    // Output dimension d = lane + u * VT_ATTN_LANES of this row is o[u].
    float o[VT_ATTN_DIMS];
    float pv[VT_ATTN_DIMS];
    VT_UNROLL
    for (int u = 0; u < VT_ATTN_DIMS; ++u) o[u] = 0.0f;
    float m = VT_NEG_INF;
    float sum = 0.0f;
    bool started = false;

    for (long long k0 = kbeg; k0 < kend; k0 += block) {
        int len = (int)(tk - k0 < block ? tk - k0 : block);
        // Scores of the block, K staged by sub-tiles.
        for (int c0 = 0; c0 < len; c0 += VT_ATTN_KV_TILE) {
            int clen = len - c0 < VT_ATTN_KV_TILE ? len - c0 : VT_ATTN_KV_TILE;
            __syncthreads();
            for (int e = t; e < clen * hd; e += VT_ATTN_THREADS) {
                int r = e / hd;
                int d = e % hd;
                tile[r * ts + d] = k[(vt_u64)(k0 + c0 + r) * kvstride + (vt_u64)kvh * hd + d];
            }
            __syncthreads();
            // Lane `lane` takes keys r = lane + u * VT_ATTN_LANES of the sub-tile: its
            // VT_ATTN_KEYS dot products advance together over d (one load of q_d for all),
            // each still summed over d in order. Rows past clen hold stale keys; their dot
            // products are not used.
            float dot[VT_ATTN_KEYS];
            VT_UNROLL
            for (int u = 0; u < VT_ATTN_KEYS; ++u) dot[u] = 0.0f;
            for (int d = 0; d < hd; ++d) {
                float qd = qrow[d];
                VT_UNROLL
                for (int u = 0; u < VT_ATTN_KEYS; ++u)
                    dot[u] = dot[u] + qd * tile[(lane + u * VT_ATTN_LANES) * ts + d];
            }
            VT_UNROLL
            for (int u = 0; u < VT_ATTN_KEYS; ++u) {
                int r = lane + u * VT_ATTN_LANES;
                if (r < clen)
                    srow[c0 + r] = live ? vt_attn_score(dot[u], p, (int)k0 + c0 + r, causal,
                                                        window, key_mask, scale, precision)
                                        : VT_NEG_INF;
            }
        }
        __syncthreads();  // the row's scores are complete
        float bmax = VT_NEG_INF;
        for (int r = 0; r < len; ++r) bmax = srow[r] > bmax ? srow[r] : bmax;
        bool use = bmax != VT_NEG_INF;
        float m_new = use && bmax > m ? bmax : m;
        if (!started) m_new = bmax;
        __syncthreads();  // every lane has read the scores before they become p_j
        for (int r = lane; r < len; r += VT_ATTN_LANES)
            srow[r] = use ? expf(srow[r] - m_new) : 0.0f;  // p_j, f32
        __syncthreads();
        float psum = 0.0f;
        for (int r = 0; r < len; ++r) psum = psum + srow[r];
        VT_UNROLL
        for (int u = 0; u < VT_ATTN_DIMS; ++u) pv[u] = 0.0f;
        // The block's product with V, V staged by sub-tiles; key order is kept.
        for (int c0 = 0; c0 < len; c0 += VT_ATTN_KV_TILE) {
            int clen = len - c0 < VT_ATTN_KV_TILE ? len - c0 : VT_ATTN_KV_TILE;
            __syncthreads();
            for (int e = t; e < clen * hd; e += VT_ATTN_THREADS) {
                int r = e / hd;
                int d = e % hd;
                tile[r * ts + d] = v[(vt_u64)(k0 + c0 + r) * kvstride + (vt_u64)kvh * hd + d];
            }
            __syncthreads();
            if (use)
                for (int r = 0; r < clen; ++r) {
                    float pr = vt_round(srow[c0 + r], precision);
                    VT_UNROLL
                    for (int u = 0; u < VT_ATTN_DIMS; ++u) {
                        int d = lane + u * VT_ATTN_LANES;
                        if (d < hd) pv[u] = pv[u] + pr * tile[r * ts + d];
                    }
                }
        }
        if (use) {
            if (!started) {
                sum = psum;
                VT_UNROLL
                for (int u = 0; u < VT_ATTN_DIMS; ++u) o[u] = vt_round(pv[u], precision);
                started = true;
            } else {
                float corr = expf(m - m_new);
                sum = sum * corr + psum;
                VT_UNROLL
                for (int u = 0; u < VT_ATTN_DIMS; ++u)
                    o[u] = o[u] * corr + vt_round(pv[u], precision);
            }
            m = m_new;
        }
    }

    if (live) {
        float* orow = out + (vt_u64)i * qstride + (vt_u64)h * hd;
        if (!ok) {
            for (int d = lane; d < hd; d += VT_ATTN_LANES) orow[d] = VT_NAN;
        } else {
            VT_UNROLL
            for (int u = 0; u < VT_ATTN_DIMS; ++u) {
                int d = lane + u * VT_ATTN_LANES;
                if (d < hd) orow[d] = started ? vt_round(o[u] / sum, precision) : 0.0f;
            }
        }
    }
}
