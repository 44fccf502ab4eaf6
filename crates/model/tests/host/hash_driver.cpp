// Runs the leaf hashing kernels of kernels/leaf_hash.cu on the CPU (tests/kernels_hash.rs).
//
// usage: hash_driver PARAMS LAYER OUT_BLAKE3 OUT_SHA256
//   PARAMS      text: layer_index tokens hidden chunk_rows elem_size dtype_code shift block
//   LAYER       the layer's element bytes (tokens * hidden * elem_size)
//   OUT_*       written: cells * 32 bytes, the leaf digests of the layer's cells in order
//
// The layer is placed `shift` bytes past a 4-aligned address (shift = 0 is what cudaMalloc
// gives; 1..3 exercise the bytewise loads), and every kernel is launched as the Rust side does:
// 1-D grids of `block` threads. The scratch and digest buffers are sized exactly as
// leaf_hash.cu documents, filled with garbage, and followed by guard words that must survive.
#include "cuda_host.hpp"
#include "common.cuh"
#include "leaf_hash.cu"

#include <cstdio>
#include <fstream>
#include <iterator>

static const uint32_t kGuard = 0xdeadbeefu;
static const size_t kGuardWords = 64;

static void fail(const char* what) {
    std::fprintf(stderr, "hash_driver: %s\n", what);
    std::exit(1);
}

static std::vector<uint8_t> read_file(const char* path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail("cannot read an input file");
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

static void write_file(const char* path, const uint32_t* words, size_t n) {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(words), (std::streamsize)(n * 4));
    if (!f) fail("cannot write an output file");
}

// A buffer of `n` words filled with garbage and followed by guard words.
static std::vector<uint32_t> guarded(size_t n) {
    std::vector<uint32_t> v(n + kGuardWords, kGuard);
    for (size_t i = 0; i < n; ++i) v[i] = 0xa5a5a5a5u ^ (uint32_t)(i * 2654435761u);
    return v;
}

static void check_guard(const std::vector<uint32_t>& v, size_t n, const char* what) {
    for (size_t i = n; i < v.size(); ++i)
        if (v[i] != kGuard) {
            std::fprintf(stderr, "hash_driver: %s written past its end (word %zu)\n", what, i);
            std::exit(1);
        }
}

static unsigned grid_for(uint64_t threads, unsigned block) {
    return (unsigned)((threads + block - 1) / block);
}

int main(int argc, char** argv) {
    if (argc != 5) fail("usage: hash_driver PARAMS LAYER OUT_BLAKE3 OUT_SHA256");
    unsigned layer_index, tokens, hidden, chunk_rows, elem_size, dtype_code, shift, block;
    {
        std::ifstream p(argv[1]);
        if (!(p >> layer_index >> tokens >> hidden >> chunk_rows >> elem_size >> dtype_code >>
              shift >> block))
            fail("bad PARAMS file");
    }
    std::vector<uint8_t> bytes = read_file(argv[2]);
    if (bytes.size() != (size_t)tokens * hidden * elem_size) fail("LAYER has the wrong length");
    if (shift > 3 || block == 0) fail("bad shift or block");

    // The layer at `shift` bytes past a 4-aligned address, in word storage so that the kernels'
    // aligned word loads read uint32_t objects.
    std::vector<uint32_t> storage((bytes.size() + shift + 3) / 4 + 1, 0);
    uint8_t* layer = reinterpret_cast<uint8_t*>(storage.data()) + shift;
    if (!bytes.empty()) std::memcpy(layer, bytes.data(), bytes.size());

    // The sizes of leaf_hash.cu's header.
    const uint64_t cells = ((uint64_t)tokens + chunk_rows - 1) / chunk_rows;
    const uint64_t rows0 = chunk_rows < tokens ? chunk_rows : tokens;
    const uint64_t per_cell = (36 + rows0 * hidden * elem_size + 1023) / 1024;
    const size_t digest_words = (size_t)cells * 8;
    const size_t cv_words = (size_t)(cells * per_cell * 8);

    std::vector<uint32_t> b3 = guarded(digest_words);
    std::vector<uint32_t> cvs = guarded(cv_words);
    vt_launch(vt_blake3_chunks, dim3(grid_for(cells * per_cell, block)), dim3(block),
              (const vt_u8*)layer, layer_index, tokens, hidden, chunk_rows, elem_size,
              dtype_code, cvs.data(), b3.data());
    if (per_cell > 1)
        vt_launch(vt_blake3_cells, dim3((unsigned)cells), dim3(block), cvs.data(), tokens,
                  hidden, chunk_rows, elem_size, b3.data());
    check_guard(b3, digest_words, "BLAKE3 digests");
    check_guard(cvs, cv_words, "BLAKE3 scratch");
    if (per_cell == 1)
        for (size_t i = 0; i < cv_words; ++i)
            if (cvs[i] != (0xa5a5a5a5u ^ (uint32_t)(i * 2654435761u)))
                fail("BLAKE3 scratch touched although every cell is one chunk");

    std::vector<uint32_t> sha = guarded(digest_words);
    vt_launch(vt_sha256_cells, dim3(grid_for(cells, block)), dim3(block), (const vt_u8*)layer,
              layer_index, tokens, hidden, chunk_rows, elem_size, dtype_code, sha.data());
    check_guard(sha, digest_words, "SHA-256 digests");

    write_file(argv[3], b3.data(), digest_words);
    write_file(argv[4], sha.data(), digest_words);
    return 0;
}
