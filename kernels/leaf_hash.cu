// Leaf digests of trace cells on the device (specs/commitment.md sections 4 to 6), so that only
// 32-byte digests leave the GPU and the root built from them on the host equals the CPU
// commitment (veritrace_commit::commit_trace) bit for bit.
//
// A layer is a row-major [tokens, hidden] buffer of `elem_size`-byte little-endian elements,
// cut into cells of `chunk_rows` token rows (the last cell of a layer may be shorter). The leaf
// digest of cell j of layer l is H(0x00 || header || elements) with the 35-byte header
//   "veritrace/cell/v1" || u32le(l) || u32le(j) || u8(dtype code) || u8(2) || u32le(rows_j)
//   || u32le(hidden)
// and H = BLAKE3 (default, unkeyed, 32-byte output) or SHA-256. 0x00 || header is 36 bytes = 9
// words, so the element bytes start word-aligned in the preimage; where a cell's elements are
// not 4-aligned in memory (bf16/f16 with odd hidden, or a layer pointer that is not 4-aligned)
// they are read byte by byte.
//
// Definitions used below (all integers unsigned):
//   cells      = ceil(tokens / chunk_rows)                  cells of the layer
//   rows0      = min(chunk_rows, tokens)                    rows of every cell but the last
//   per_cell   = ceil((36 + rows0 * hidden * elem_size) / 1024)
//                                                           BLAKE3 chunks of the longest cell
//
// Entry points (every scalar parameter is a u32; every kernel reads only blockIdx.x, blockDim.x
// and threadIdx.x, so any 1-D block size works; VT_HASH_THREADS = 128 is the intended one):
//
//   vt_blake3_chunks(const u8* layer, u32 layer_index, u32 tokens, u32 hidden, u32 chunk_rows,
//                    u32 elem_size, u32 dtype_code, u32* cvs, u32* digests)
//     grid  ceil(cells * per_cell / 128) x 1 x 1, block 128 x 1 x 1;
//     one thread per (cell, BLAKE3 chunk) pair, thread t = cell * per_cell + chunk.
//     Writes the chunk's chaining value to cvs[(cell * per_cell + chunk) * 8 .. + 8] when the
//     cell has more than one chunk; a cell of one chunk is finished here (ROOT flag) and its
//     digest written to digests.
//
//   vt_blake3_cells(u32* cvs, u32 tokens, u32 hidden, u32 chunk_rows, u32 elem_size,
//                   u32* digests)
//     grid  cells x 1 x 1, block 128 x 1 x 1; one block per cell, whose threads merge the
//     pairs of each tree level together (a barrier between levels), so a cell of n chunks
//     takes ceil(log2 n) compressions one after another instead of n - 1.
//     Merges the cell's chunk chaining values by BLAKE3's tree rule (pair neighbours, carry an
//     odd last one up; ROOT on the final parent) in place in cvs and writes the digest of every
//     cell of more than one chunk. Launch it after vt_blake3_chunks on the same stream (it may
//     be skipped when per_cell == 1: then it does nothing).
//
//   vt_sha256_cells(const u8* layer, u32 layer_index, u32 tokens, u32 hidden, u32 chunk_rows,
//                   u32 elem_size, u32 dtype_code, u32* digests)
//     grid  ceil(cells / 128) x 1 x 1, block 128 x 1 x 1; one thread per cell, which hashes
//     the whole cell serially (SHA-256 has no tree mode).
//
// Buffers:
//   layer     the layer's element bytes, tokens * hidden * elem_size bytes (any alignment).
//   digests   cells * 32 bytes (u32[cells * 8]), 4-byte aligned; digest of cell j at bytes
//             [32 j, 32 j + 32), in the byte order of the CPU digest (the words are stored
//             little-endian, as on every CUDA device). To fill a trace-wide [L * cells][32]
//             buffer, pass the pointer offset by layer_index * cells * 32 bytes.
//   cvs       BLAKE3 scratch: cells * per_cell * 32 bytes (u32[cells * per_cell * 8]), 4-byte
//             aligned; no initialisation needed; untouched when per_cell == 1 (then any pointer,
//             null included, will do). It can be reused for the next layer once
//             vt_blake3_cells of this layer has run.
//   dtype_code  veritrace_commit::Dtype::code(): 1 = f32, 2 = f16, 3 = bf16, 4 = i8.
//
// No shared memory. vt_blake3_chunks and vt_sha256_cells need no synchronization (every thread
// owns its outputs); vt_blake3_cells has one barrier per tree level.

#define VT_HASH_THREADS 128

// BLAKE3 flags.
#define VT_B3_CHUNK_START 1u
#define VT_B3_CHUNK_END 2u
#define VT_B3_PARENT 4u
#define VT_B3_ROOT 8u

#define VT_ROTR32(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define VT_WORD4(a, b, c, d) \
    ((vt_u32)(a) | ((vt_u32)(b) << 8) | ((vt_u32)(c) << 16) | ((vt_u32)(d) << 24))

__device__ __forceinline__ vt_u32 vt_bswap32(vt_u32 x) {
    return (x >> 24) | ((x >> 8) & 0xff00u) | ((x << 8) & 0xff0000u) | (x << 24);
}

// One cell of a layer and its leaf preimage 0x00 || header || elements.
struct VtCell {
    const vt_u8* el;   // the cell's first element byte
    vt_u64 ebytes;     // element bytes
    vt_u64 n;          // preimage bytes: 36 + ebytes
    vt_u32 layer;      // header fields
    vt_u32 index;
    vt_u32 code;
    vt_u32 rows;
    vt_u32 hidden;
    bool aligned;      // el is 4-byte aligned: whole words may be loaded directly
};

__device__ __forceinline__ vt_u64 vt_cells_of(vt_u32 tokens, vt_u32 chunk_rows) {
    return ((vt_u64)tokens + chunk_rows - 1) / chunk_rows;
}

// BLAKE3 chunks of the longest cell (per_cell above).
__device__ __forceinline__ vt_u64 vt_blake3_per_cell(vt_u32 tokens, vt_u32 hidden,
                                                     vt_u32 chunk_rows, vt_u32 elem_size) {
    vt_u64 rows0 = chunk_rows < tokens ? chunk_rows : tokens;
    return (36 + rows0 * hidden * elem_size + 1023) / 1024;
}

__device__ __forceinline__ VtCell vt_cell(const vt_u8* layer, vt_u32 layer_index, vt_u32 tokens,
                                          vt_u32 hidden, vt_u32 chunk_rows, vt_u32 elem_size,
                                          vt_u32 dtype_code, vt_u64 cell) {
    VtCell c;
    vt_u64 first = cell * chunk_rows;
    vt_u64 left = (vt_u64)tokens - first;
    c.rows = (vt_u32)(left < chunk_rows ? left : chunk_rows);
    vt_u64 row_bytes = (vt_u64)hidden * elem_size;
    c.el = layer + first * row_bytes;
    c.ebytes = (vt_u64)c.rows * row_bytes;
    c.n = 36 + c.ebytes;
    c.layer = layer_index;
    c.index = (vt_u32)cell;
    c.code = dtype_code;
    c.hidden = hidden;
    c.aligned = ((vt_u64)c.el & 3u) == 0;
    return c;
}

// Word i (i < 9) of 0x00 || header, little-endian.
__device__ __forceinline__ vt_u32 vt_header_word(const VtCell& c, vt_u64 i) {
    if (i == 0) return VT_WORD4(0x00, 'v', 'e', 'r');
    if (i == 1) return VT_WORD4('i', 't', 'r', 'a');
    if (i == 2) return VT_WORD4('c', 'e', '/', 'c');
    if (i == 3) return VT_WORD4('e', 'l', 'l', '/');
    if (i == 4) return VT_WORD4('v', '1', 0, 0) | (c.layer << 16);
    if (i == 5) return (c.layer >> 16) | (c.index << 16);
    if (i == 6) return (c.index >> 16) | (c.code << 16) | (2u << 24);
    if (i == 7) return c.rows;
    return c.hidden;
}

// Word i of the cell's preimage, little-endian, with zero bytes past its end.
__device__ __forceinline__ vt_u32 vt_preimage_word(const VtCell& c, vt_u64 i) {
    if (i < 9) return vt_header_word(c, i);
    vt_u64 e = (i - 9) * 4;
    if (e >= c.ebytes) return 0;
    if (c.aligned && e + 4 <= c.ebytes) return *(const vt_u32*)(c.el + e);
    vt_u32 w = 0;
    for (vt_u32 b = 0; b < 4; ++b)
        if (e + b < c.ebytes) w |= (vt_u32)c.el[e + b] << (8 * b);
    return w;
}

// The 16 words of the 64-byte preimage block starting at byte 64 * blk (zero past the end).
__device__ __forceinline__ void vt_load_block(const VtCell& c, vt_u64 blk, vt_u32 m[16]) {
    vt_u64 start = blk * 64;
    if (c.aligned && start >= 64 && start + 64 <= c.n) {
        const vt_u32* p = (const vt_u32*)(c.el + (start - 36));
        for (int w = 0; w < 16; ++w) m[w] = p[w];
    } else {
        for (int w = 0; w < 16; ++w) m[w] = vt_preimage_word(c, blk * 16 + w);
    }
}

// ---- BLAKE3 ----

#define VT_B3_IV0 0x6a09e667u
#define VT_B3_IV1 0xbb67ae85u
#define VT_B3_IV2 0x3c6ef372u
#define VT_B3_IV3 0xa54ff53au
#define VT_B3_IV4 0x510e527fu
#define VT_B3_IV5 0x9b05688cu
#define VT_B3_IV6 0x1f83d9abu
#define VT_B3_IV7 0x5be0cd19u

#define VT_B3_G(a, b, c, d, x, y)   \
    do {                            \
        a = a + b + (x);            \
        d = VT_ROTR32(d ^ a, 16);   \
        c = c + d;                  \
        b = VT_ROTR32(b ^ c, 12);   \
        a = a + b + (y);            \
        d = VT_ROTR32(d ^ a, 8);    \
        c = c + d;                  \
        b = VT_ROTR32(b ^ c, 7);    \
    } while (0)

// One round; s0..s15 are the round's message schedule (the permutation applied r times).
#define VT_B3_ROUND(s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15) \
    do {                                                                                   \
        VT_B3_G(v0, v4, v8, v12, m[s0], m[s1]);                                            \
        VT_B3_G(v1, v5, v9, v13, m[s2], m[s3]);                                            \
        VT_B3_G(v2, v6, v10, v14, m[s4], m[s5]);                                           \
        VT_B3_G(v3, v7, v11, v15, m[s6], m[s7]);                                           \
        VT_B3_G(v0, v5, v10, v15, m[s8], m[s9]);                                           \
        VT_B3_G(v1, v6, v11, v12, m[s10], m[s11]);                                         \
        VT_B3_G(v2, v7, v8, v13, m[s12], m[s13]);                                          \
        VT_B3_G(v3, v4, v9, v14, m[s14], m[s15]);                                          \
    } while (0)

// The BLAKE3 compression function, truncated to the 8-word chaining value: cv <- compress(cv,
// m, counter, block_len, flags)[0..8].
__device__ __forceinline__ void vt_blake3_compress(vt_u32 cv[8], const vt_u32 m[16],
                                                   vt_u64 counter, vt_u32 block_len,
                                                   vt_u32 flags) {
    vt_u32 v0 = cv[0], v1 = cv[1], v2 = cv[2], v3 = cv[3];
    vt_u32 v4 = cv[4], v5 = cv[5], v6 = cv[6], v7 = cv[7];
    vt_u32 v8 = VT_B3_IV0, v9 = VT_B3_IV1, v10 = VT_B3_IV2, v11 = VT_B3_IV3;
    vt_u32 v12 = (vt_u32)counter, v13 = (vt_u32)(counter >> 32), v14 = block_len, v15 = flags;
    VT_B3_ROUND(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    VT_B3_ROUND(2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8);
    VT_B3_ROUND(3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1);
    VT_B3_ROUND(10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6);
    VT_B3_ROUND(12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4);
    VT_B3_ROUND(9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7);
    VT_B3_ROUND(11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13);
    cv[0] = v0 ^ v8;
    cv[1] = v1 ^ v9;
    cv[2] = v2 ^ v10;
    cv[3] = v3 ^ v11;
    cv[4] = v4 ^ v12;
    cv[5] = v5 ^ v13;
    cv[6] = v6 ^ v14;
    cv[7] = v7 ^ v15;
}

__device__ __forceinline__ void vt_blake3_iv(vt_u32 cv[8]) {
    cv[0] = VT_B3_IV0;
    cv[1] = VT_B3_IV1;
    cv[2] = VT_B3_IV2;
    cv[3] = VT_B3_IV3;
    cv[4] = VT_B3_IV4;
    cv[5] = VT_B3_IV5;
    cv[6] = VT_B3_IV6;
    cv[7] = VT_B3_IV7;
}

// One thread per (cell, 1024-byte BLAKE3 chunk of the cell's preimage): the chunk's chaining
// value, or the cell's digest when the cell is a single chunk. See the top of the file.
extern "C" __global__ void vt_blake3_chunks(const vt_u8* __restrict__ layer, vt_u32 layer_index,
                                            vt_u32 tokens, vt_u32 hidden, vt_u32 chunk_rows,
                                            vt_u32 elem_size, vt_u32 dtype_code,
                                            vt_u32* __restrict__ cvs,
                                            vt_u32* __restrict__ digests) {
    vt_u64 cells = vt_cells_of(tokens, chunk_rows);
    vt_u64 per = vt_blake3_per_cell(tokens, hidden, chunk_rows, elem_size);
    vt_u64 t = (vt_u64)blockIdx.x * blockDim.x + threadIdx.x;
    vt_u64 cell = t / per;
    vt_u64 k = t % per;
    if (cell >= cells) return;
    VtCell c = vt_cell(layer, layer_index, tokens, hidden, chunk_rows, elem_size, dtype_code,
                       cell);
    vt_u64 chunks = (c.n + 1023) / 1024;
    if (k >= chunks) return;  // the last cell may have fewer chunks
    vt_u64 start = k * 1024;
    vt_u64 len = c.n - start < 1024 ? c.n - start : 1024;
    vt_u64 blocks = (len + 63) / 64;
    vt_u32 cv[8];
    vt_blake3_iv(cv);
    for (vt_u64 b = 0; b < blocks; ++b) {
        vt_u32 m[16];
        vt_load_block(c, k * 16 + b, m);
        bool last = b + 1 == blocks;
        vt_u32 block_len = last ? (vt_u32)(len - b * 64) : 64u;
        vt_u32 flags = (b == 0 ? VT_B3_CHUNK_START : 0u) | (last ? VT_B3_CHUNK_END : 0u) |
                       (last && chunks == 1 ? VT_B3_ROOT : 0u);
        vt_blake3_compress(cv, m, k, block_len, flags);
    }
    vt_u32* out = chunks == 1 ? digests + cell * 8 : cvs + (cell * per + k) * 8;
    for (int i = 0; i < 8; ++i) out[i] = cv[i];
}

// One block per cell: merges the cell's chunk chaining values (left by vt_blake3_chunks) into
// its digest, the block's threads taking a level's pairs together. See the top of the file.
extern "C" __global__ void vt_blake3_cells(vt_u32* __restrict__ cvs, vt_u32 tokens,
                                           vt_u32 hidden, vt_u32 chunk_rows, vt_u32 elem_size,
                                           vt_u32* __restrict__ digests) {
    vt_u64 cells = vt_cells_of(tokens, chunk_rows);
    vt_u64 per = vt_blake3_per_cell(tokens, hidden, chunk_rows, elem_size);
    vt_u64 cell = blockIdx.x;
    vt_u64 chunks = 1;  // a block past the last cell has nothing to merge
    if (cell < cells) {
        vt_u64 left = (vt_u64)tokens - cell * chunk_rows;
        vt_u64 rows = left < chunk_rows ? left : chunk_rows;
        chunks = (36 + rows * hidden * elem_size + 1023) / 1024;
    }
    vt_u32* nodes = cvs + cell * per * 8;
    // Level by level: node x of the next level is parent(2x, 2x + 1), or node 2x carried up
    // when it is the odd last one; this is BLAKE3's tree (the left subtree holds the largest
    // power of two of chunks below the count). Node x of a level whose nodes are `stride`
    // chunks apart sits in slot x * stride; a parent overwrites its left child's slot, which
    // only its own thread reads, and the odd last node stays where it is (slot (w - 1) * stride
    // is node (w - 1) / 2 of the next level). A cell of one chunk was finished by
    // vt_blake3_chunks: the loop does not run. Every thread of the block runs the same levels,
    // so the barrier between levels is reached by all.
    vt_u64 stride = 1;
    for (vt_u64 w = chunks; w > 1; w = (w + 1) / 2) {
        for (vt_u64 x = threadIdx.x; 2 * x + 1 < w; x += blockDim.x) {
            vt_u32* left = nodes + 2 * x * stride * 8;
            const vt_u32* right = nodes + (2 * x + 1) * stride * 8;
            vt_u32 m[16];
            for (int i = 0; i < 8; ++i) {
                m[i] = left[i];
                m[8 + i] = right[i];
            }
            vt_u32 cv[8];
            vt_blake3_iv(cv);
            vt_blake3_compress(cv, m, 0, 64, VT_B3_PARENT | (w == 2 ? VT_B3_ROOT : 0u));
            vt_u32* dst = w == 2 ? digests + cell * 8 : left;
            for (int i = 0; i < 8; ++i) dst[i] = cv[i];
        }
        stride *= 2;
        __syncthreads();
    }
}

// ---- SHA-256 ----

#define VT_SHA_S0(x) (VT_ROTR32(x, 2) ^ VT_ROTR32(x, 13) ^ VT_ROTR32(x, 22))
#define VT_SHA_S1(x) (VT_ROTR32(x, 6) ^ VT_ROTR32(x, 11) ^ VT_ROTR32(x, 25))
#define VT_SHA_s0(x) (VT_ROTR32(x, 7) ^ VT_ROTR32(x, 18) ^ ((x) >> 3))
#define VT_SHA_s1(x) (VT_ROTR32(x, 17) ^ VT_ROTR32(x, 19) ^ ((x) >> 10))
#define VT_SHA_CH(e, f, g) (((e) & (f)) ^ (~(e) & (g)))
#define VT_SHA_MAJ(a, b, c) (((a) & (b)) ^ ((a) & (c)) ^ ((b) & (c)))

// One round; the caller rotates the roles of a..h instead of moving the values.
#define VT_SHA_RND(a, b, c, d, e, f, g, h, k, x)                           \
    do {                                                                   \
        vt_u32 t1_ = h + VT_SHA_S1(e) + VT_SHA_CH(e, f, g) + (k) + (x);    \
        vt_u32 t2_ = VT_SHA_S0(a) + VT_SHA_MAJ(a, b, c);                   \
        d += t1_;                                                          \
        h = t1_ + t2_;                                                     \
    } while (0)

// Message word t >= 16 in a rolling window of 16: i = t mod 16, i2 = (t - 2) mod 16, ...
#define VT_SHA_W(i, i2, i7, i15) \
    (w[i] += VT_SHA_s1(w[i2]) + w[i7] + VT_SHA_s0(w[i15]))

// The SHA-256 compression function on the big-endian message words w (overwritten).
__device__ __forceinline__ void vt_sha256_compress(vt_u32 st[8], vt_u32 w[16]) {
    vt_u32 a = st[0], b = st[1], c = st[2], d = st[3];
    vt_u32 e = st[4], f = st[5], g = st[6], h = st[7];
    VT_SHA_RND(a, b, c, d, e, f, g, h, 0x428a2f98u, w[0]);
    VT_SHA_RND(h, a, b, c, d, e, f, g, 0x71374491u, w[1]);
    VT_SHA_RND(g, h, a, b, c, d, e, f, 0xb5c0fbcfu, w[2]);
    VT_SHA_RND(f, g, h, a, b, c, d, e, 0xe9b5dba5u, w[3]);
    VT_SHA_RND(e, f, g, h, a, b, c, d, 0x3956c25bu, w[4]);
    VT_SHA_RND(d, e, f, g, h, a, b, c, 0x59f111f1u, w[5]);
    VT_SHA_RND(c, d, e, f, g, h, a, b, 0x923f82a4u, w[6]);
    VT_SHA_RND(b, c, d, e, f, g, h, a, 0xab1c5ed5u, w[7]);
    VT_SHA_RND(a, b, c, d, e, f, g, h, 0xd807aa98u, w[8]);
    VT_SHA_RND(h, a, b, c, d, e, f, g, 0x12835b01u, w[9]);
    VT_SHA_RND(g, h, a, b, c, d, e, f, 0x243185beu, w[10]);
    VT_SHA_RND(f, g, h, a, b, c, d, e, 0x550c7dc3u, w[11]);
    VT_SHA_RND(e, f, g, h, a, b, c, d, 0x72be5d74u, w[12]);
    VT_SHA_RND(d, e, f, g, h, a, b, c, 0x80deb1feu, w[13]);
    VT_SHA_RND(c, d, e, f, g, h, a, b, 0x9bdc06a7u, w[14]);
    VT_SHA_RND(b, c, d, e, f, g, h, a, 0xc19bf174u, w[15]);
    VT_SHA_RND(a, b, c, d, e, f, g, h, 0xe49b69c1u, VT_SHA_W(0, 14, 9, 1));
    VT_SHA_RND(h, a, b, c, d, e, f, g, 0xefbe4786u, VT_SHA_W(1, 15, 10, 2));
    VT_SHA_RND(g, h, a, b, c, d, e, f, 0x0fc19dc6u, VT_SHA_W(2, 0, 11, 3));
    VT_SHA_RND(f, g, h, a, b, c, d, e, 0x240ca1ccu, VT_SHA_W(3, 1, 12, 4));
    VT_SHA_RND(e, f, g, h, a, b, c, d, 0x2de92c6fu, VT_SHA_W(4, 2, 13, 5));
    VT_SHA_RND(d, e, f, g, h, a, b, c, 0x4a7484aau, VT_SHA_W(5, 3, 14, 6));
    VT_SHA_RND(c, d, e, f, g, h, a, b, 0x5cb0a9dcu, VT_SHA_W(6, 4, 15, 7));
    VT_SHA_RND(b, c, d, e, f, g, h, a, 0x76f988dau, VT_SHA_W(7, 5, 0, 8));
    VT_SHA_RND(a, b, c, d, e, f, g, h, 0x983e5152u, VT_SHA_W(8, 6, 1, 9));
    VT_SHA_RND(h, a, b, c, d, e, f, g, 0xa831c66du, VT_SHA_W(9, 7, 2, 10));
    VT_SHA_RND(g, h, a, b, c, d, e, f, 0xb00327c8u, VT_SHA_W(10, 8, 3, 11));
    VT_SHA_RND(f, g, h, a, b, c, d, e, 0xbf597fc7u, VT_SHA_W(11, 9, 4, 12));
    VT_SHA_RND(e, f, g, h, a, b, c, d, 0xc6e00bf3u, VT_SHA_W(12, 10, 5, 13));
    VT_SHA_RND(d, e, f, g, h, a, b, c, 0xd5a79147u, VT_SHA_W(13, 11, 6, 14));
    VT_SHA_RND(c, d, e, f, g, h, a, b, 0x06ca6351u, VT_SHA_W(14, 12, 7, 15));
    VT_SHA_RND(b, c, d, e, f, g, h, a, 0x14292967u, VT_SHA_W(15, 13, 8, 0));
    VT_SHA_RND(a, b, c, d, e, f, g, h, 0x27b70a85u, VT_SHA_W(0, 14, 9, 1));
    VT_SHA_RND(h, a, b, c, d, e, f, g, 0x2e1b2138u, VT_SHA_W(1, 15, 10, 2));
    VT_SHA_RND(g, h, a, b, c, d, e, f, 0x4d2c6dfcu, VT_SHA_W(2, 0, 11, 3));
    VT_SHA_RND(f, g, h, a, b, c, d, e, 0x53380d13u, VT_SHA_W(3, 1, 12, 4));
    VT_SHA_RND(e, f, g, h, a, b, c, d, 0x650a7354u, VT_SHA_W(4, 2, 13, 5));
    VT_SHA_RND(d, e, f, g, h, a, b, c, 0x766a0abbu, VT_SHA_W(5, 3, 14, 6));
    VT_SHA_RND(c, d, e, f, g, h, a, b, 0x81c2c92eu, VT_SHA_W(6, 4, 15, 7));
    VT_SHA_RND(b, c, d, e, f, g, h, a, 0x92722c85u, VT_SHA_W(7, 5, 0, 8));
    VT_SHA_RND(a, b, c, d, e, f, g, h, 0xa2bfe8a1u, VT_SHA_W(8, 6, 1, 9));
    VT_SHA_RND(h, a, b, c, d, e, f, g, 0xa81a664bu, VT_SHA_W(9, 7, 2, 10));
    VT_SHA_RND(g, h, a, b, c, d, e, f, 0xc24b8b70u, VT_SHA_W(10, 8, 3, 11));
    VT_SHA_RND(f, g, h, a, b, c, d, e, 0xc76c51a3u, VT_SHA_W(11, 9, 4, 12));
    VT_SHA_RND(e, f, g, h, a, b, c, d, 0xd192e819u, VT_SHA_W(12, 10, 5, 13));
    VT_SHA_RND(d, e, f, g, h, a, b, c, 0xd6990624u, VT_SHA_W(13, 11, 6, 14));
    VT_SHA_RND(c, d, e, f, g, h, a, b, 0xf40e3585u, VT_SHA_W(14, 12, 7, 15));
    VT_SHA_RND(b, c, d, e, f, g, h, a, 0x106aa070u, VT_SHA_W(15, 13, 8, 0));
    VT_SHA_RND(a, b, c, d, e, f, g, h, 0x19a4c116u, VT_SHA_W(0, 14, 9, 1));
    VT_SHA_RND(h, a, b, c, d, e, f, g, 0x1e376c08u, VT_SHA_W(1, 15, 10, 2));
    VT_SHA_RND(g, h, a, b, c, d, e, f, 0x2748774cu, VT_SHA_W(2, 0, 11, 3));
    VT_SHA_RND(f, g, h, a, b, c, d, e, 0x34b0bcb5u, VT_SHA_W(3, 1, 12, 4));
    VT_SHA_RND(e, f, g, h, a, b, c, d, 0x391c0cb3u, VT_SHA_W(4, 2, 13, 5));
    VT_SHA_RND(d, e, f, g, h, a, b, c, 0x4ed8aa4au, VT_SHA_W(5, 3, 14, 6));
    VT_SHA_RND(c, d, e, f, g, h, a, b, 0x5b9cca4fu, VT_SHA_W(6, 4, 15, 7));
    VT_SHA_RND(b, c, d, e, f, g, h, a, 0x682e6ff3u, VT_SHA_W(7, 5, 0, 8));
    VT_SHA_RND(a, b, c, d, e, f, g, h, 0x748f82eeu, VT_SHA_W(8, 6, 1, 9));
    VT_SHA_RND(h, a, b, c, d, e, f, g, 0x78a5636fu, VT_SHA_W(9, 7, 2, 10));
    VT_SHA_RND(g, h, a, b, c, d, e, f, 0x84c87814u, VT_SHA_W(10, 8, 3, 11));
    VT_SHA_RND(f, g, h, a, b, c, d, e, 0x8cc70208u, VT_SHA_W(11, 9, 4, 12));
    VT_SHA_RND(e, f, g, h, a, b, c, d, 0x90befffau, VT_SHA_W(12, 10, 5, 13));
    VT_SHA_RND(d, e, f, g, h, a, b, c, 0xa4506cebu, VT_SHA_W(13, 11, 6, 14));
    VT_SHA_RND(c, d, e, f, g, h, a, b, 0xbef9a3f7u, VT_SHA_W(14, 12, 7, 15));
    VT_SHA_RND(b, c, d, e, f, g, h, a, 0xc67178f2u, VT_SHA_W(15, 13, 8, 0));
    st[0] += a;
    st[1] += b;
    st[2] += c;
    st[3] += d;
    st[4] += e;
    st[5] += f;
    st[6] += g;
    st[7] += h;
}

// One thread per cell: SHA-256 of 0x00 || header || elements with FIPS 180-4 padding (0x80,
// zeros, the bit length as a big-endian u64). See the top of the file.
extern "C" __global__ void vt_sha256_cells(const vt_u8* __restrict__ layer, vt_u32 layer_index,
                                           vt_u32 tokens, vt_u32 hidden, vt_u32 chunk_rows,
                                           vt_u32 elem_size, vt_u32 dtype_code,
                                           vt_u32* __restrict__ digests) {
    vt_u64 cells = vt_cells_of(tokens, chunk_rows);
    vt_u64 cell = (vt_u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (cell >= cells) return;
    VtCell c = vt_cell(layer, layer_index, tokens, hidden, chunk_rows, elem_size, dtype_code,
                       cell);
    vt_u32 st[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                    0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    vt_u64 full = c.n / 64;            // blocks of message bytes only
    vt_u64 blocks = (c.n + 9 + 63) / 64;  // with the padding
    vt_u64 bits = c.n * 8;
    for (vt_u64 blk = 0; blk < blocks; ++blk) {
        vt_u32 w[16];
        if (blk < full) {
            vt_load_block(c, blk, w);
            for (int i = 0; i < 16; ++i) w[i] = vt_bswap32(w[i]);
        } else {
            // A block that holds the end of the message, the 0x80 byte or the length.
            for (int i = 0; i < 16; ++i) {
                vt_u64 p = (blk * 16 + i) * 4;  // byte offset of the word
                vt_u32 x = 0;
                if (p < c.n) x = vt_bswap32(vt_preimage_word(c, blk * 16 + i));
                if (p <= c.n && c.n < p + 4) x |= 0x80u << (24 - 8 * (vt_u32)(c.n - p));
                w[i] = x;
            }
            if (blk + 1 == blocks) {
                w[14] = (vt_u32)(bits >> 32);
                w[15] = (vt_u32)bits;
            }
        }
        vt_sha256_compress(st, w);
    }
    for (int i = 0; i < 8; ++i) digests[cell * 8 + i] = vt_bswap32(st[i]);
}
