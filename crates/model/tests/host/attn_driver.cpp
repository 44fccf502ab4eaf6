// Runs kernels/attention.cu on the CPU through the host shim.
//
// Usage: attn_driver eager|topk|tiled DIR, or attn_driver select DIR (below)
//   DIR/params.txt: tq tk q0 n_heads n_kv_heads hd causal window block precision scale_bits
//                   has_mask (whitespace-separated integers; scale_bits is the f32 scale's bits)
//   DIR/q.bin [tq, n_heads*hd], DIR/k.bin and DIR/v.bin [tk, n_kv_heads*hd], DIR/mask.bin [tk]
//   (read when has_mask), f32 little-endian.
// eager writes DIR/scores.bin and DIR/probs.bin ([n_heads, tq, tk]) and DIR/out.bin
// ([tq, n_heads*hd]); topk the same, with `block` scores kept per row (scores.bin after the
// selection); tiled writes DIR/out.bin.
#include "cuda_host.hpp"
#include "common.cuh"
#include "attention.cu"

#include <cstdio>
#include <cstdlib>
#include <string>

static std::vector<float> read_f32(const std::string& path, size_t n) {
    std::vector<float> v(n);
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f || std::fread(v.data(), 4, n, f) != n) {
        std::fprintf(stderr, "cannot read %zu floats from %s\n", n, path.c_str());
        std::exit(2);
    }
    std::fclose(f);
    return v;
}

static void write_f32(const std::string& path, const std::vector<float>& v) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f || std::fwrite(v.data(), 4, v.size(), f) != v.size()) {
        std::fprintf(stderr, "cannot write %s\n", path.c_str());
        std::exit(2);
    }
    std::fclose(f);
}

// `select DIR`: DIR/select.txt holds `rows n keep`, DIR/scores.bin [rows, n]; writes the rows
// after vt_attn_topk to DIR/selected.bin.
static int select_mode(const std::string& dir) {
    FILE* pf = std::fopen((dir + "/select.txt").c_str(), "r");
    int rows, n, keep;
    if (!pf || std::fscanf(pf, "%d %d %d", &rows, &n, &keep) != 3) {
        std::fprintf(stderr, "bad select.txt\n");
        return 2;
    }
    std::fclose(pf);
    auto scores = read_f32(dir + "/scores.bin", (size_t)rows * n);
    vt_launch(vt_attn_topk, dim3(rows < 4 ? rows : 4), dim3(VT_ROW_THREADS), scores.data(), rows,
              n, keep);
    write_f32(dir + "/selected.bin", scores);
    return 0;
}

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: attn_driver eager|topk|tiled|select DIR\n");
        return 2;
    }
    std::string mode = argv[1], dir = argv[2];
    if (mode == "select") return select_mode(dir);
    FILE* pf = std::fopen((dir + "/params.txt").c_str(), "r");
    int tq, tk, q0, nh, nkv, hd, causal, window, block, precision, has_mask;
    unsigned scale_bits;
    if (!pf || std::fscanf(pf, "%d %d %d %d %d %d %d %d %d %d %u %d", &tq, &tk, &q0, &nh, &nkv,
                           &hd, &causal, &window, &block, &precision, &scale_bits,
                           &has_mask) != 12) {
        std::fprintf(stderr, "bad params.txt\n");
        return 2;
    }
    std::fclose(pf);
    float scale = __uint_as_float(scale_bits);
    auto q = read_f32(dir + "/q.bin", (size_t)tq * nh * hd);
    auto k = read_f32(dir + "/k.bin", (size_t)tk * nkv * hd);
    auto v = read_f32(dir + "/v.bin", (size_t)tk * nkv * hd);
    std::vector<float> mask;
    if (has_mask) mask = read_f32(dir + "/mask.bin", (size_t)tk);
    const float* mp = has_mask ? mask.data() : nullptr;
    std::vector<float> out((size_t)tq * nh * hd, -12345.0f);
    if (mode == "eager" || mode == "topk") {
        std::vector<float> scores((size_t)nh * tq * tk, -12345.0f);
        const unsigned T = VT_ATTN_SCORE_TILE;
        vt_launch(vt_attn_scores, dim3((tk + T - 1) / T, (tq + T - 1) / T, (unsigned)nh),
                  dim3(T, T), (const float*)q.data(), (const float*)k.data(), mp,
                  scores.data(), tq, tk, q0, nh, nkv, hd, causal, window, scale, precision);
        // Fewer blocks than rows (each takes rows b, b + grid, ...): the same result as one
        // block per row, with fewer host threads to start.
        unsigned rows = (unsigned)(nh * tq);
        // topk: `block` is the number of scores kept per row.
        if (mode == "topk")
            vt_launch(vt_attn_topk, dim3(rows < 8 ? rows : 8), dim3(VT_ROW_THREADS),
                      scores.data(), nh * tq, tk, block);
        write_f32(dir + "/scores.bin", scores);
        vt_launch(vt_attn_softmax, dim3(rows < 8 ? rows : 8), dim3(VT_ROW_THREADS),
                  scores.data(), nh * tq, tk, precision);
        write_f32(dir + "/probs.bin", scores);
        unsigned no = (unsigned)(tq * nh * hd);
        vt_launch(vt_attn_pv, dim3((no + VT_ROW_THREADS - 1) / VT_ROW_THREADS),
                  dim3(VT_ROW_THREADS), (const float*)scores.data(), (const float*)v.data(),
                  out.data(), tq, tk, q0, nh, nkv, hd, causal, window, precision);
    } else if (mode == "tiled") {
        vt_launch(vt_attn_tiled, dim3((unsigned)((tq + VT_ATTN_ROWS - 1) / VT_ATTN_ROWS), (unsigned)nh),
                  dim3(VT_ATTN_THREADS), (const float*)q.data(), (const float*)k.data(),
                  (const float*)v.data(), mp, out.data(), tq, tk, q0, nh, nkv, hd, causal,
                  window, block, scale, precision);
    } else {
        std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
        return 2;
    }
    write_f32(dir + "/out.bin", out);
    return 0;
}
