// Runs the kernels of kernels/norm.cu on the CPU (host shim) for tests/kernels_norm.rs.
// usage: norm_driver <kernel> <in-dir> <out-file> rows n precision eps
// Inputs are raw little-endian f32 files in <in-dir>: x, a, b (per kernel, as read below).
#include "cuda_host.hpp"
#include "common.cuh"
#include "norm.cu"

#include <cstdio>
#include <cstdlib>
#include <string>

static std::vector<float> read_f32(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) { std::perror(path.c_str()); std::exit(2); }
    std::vector<float> v;
    float x;
    while (std::fread(&x, 4, 1, f) == 1) v.push_back(x);
    std::fclose(f);
    return v;
}

static void write_f32(const std::string& path, const std::vector<float>& v) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) { std::perror(path.c_str()); std::exit(2); }
    std::fwrite(v.data(), 4, v.size(), f);
    std::fclose(f);
}

int main(int argc, char** argv) {
    if (argc != 8) { std::fprintf(stderr, "usage: norm_driver kernel dir out rows n precision eps\n"); return 2; }
    std::string k = argv[1], dir = argv[2], out = argv[3];
    int rows = std::atoi(argv[4]), n = std::atoi(argv[5]), p = std::atoi(argv[6]);
    float eps = std::strtof(argv[7], nullptr);
    std::vector<float> x = read_f32(dir + "/x");
    std::vector<float> y(x.size());
    int total = (int)x.size();
    dim3 elem((unsigned)(total + 63) / 64), e_blk(64);
    if (k == "rms_norm") {
        std::vector<float> g = read_f32(dir + "/a");
        vt_launch(vt_rms_norm, dim3(rows), dim3(VT_ROW_THREADS), x.data(), g.data(), y.data(), rows, n, eps, p);
    } else if (k == "layer_norm") {
        std::vector<float> g = read_f32(dir + "/a"), b = read_f32(dir + "/b");
        vt_launch(vt_layer_norm, dim3(rows), dim3(VT_ROW_THREADS), x.data(), g.data(), b.data(), y.data(), rows, n, eps, p);
    } else if (k == "silu_mul") {
        std::vector<float> u = read_f32(dir + "/a");
        vt_launch(vt_silu_mul, elem, e_blk, x.data(), u.data(), y.data(), total, p);
    } else if (k == "gelu") {
        y = x;
        vt_launch(vt_gelu, elem, e_blk, y.data(), total, p);
    } else if (k == "round") {
        y = x;
        vt_launch(vt_round_inplace, elem, e_blk, y.data(), total, p);
    } else if (k == "add") {
        std::vector<float> a = read_f32(dir + "/a");
        y = x;
        vt_launch(vt_add_inplace, elem, e_blk, y.data(), a.data(), total, p);
    } else if (k == "add_bias") {
        std::vector<float> b = read_f32(dir + "/a");
        y = x;
        vt_launch(vt_add_bias, elem, e_blk, y.data(), b.data(), rows, n, p);
    } else if (k == "rope") {
        // x: [rows tokens, n = heads * hd]; a = cos, b = sin: [rows, hd/2]; eps carries hd.
        std::vector<float> c = read_f32(dir + "/a"), s = read_f32(dir + "/b");
        int hd = (int)eps, heads = n / hd;
        y = x;
        unsigned items = (unsigned)(rows * heads * hd / 2);
        vt_launch(vt_rope, dim3((items + 63) / 64), dim3(64), y.data(), c.data(), s.data(), rows, heads, hd, p);
    } else if (k == "reuse") {
        std::vector<float> b = read_f32(dir + "/a");
        vt_launch(vt_reuse_update, elem, e_blk, x.data(), b.data(), y.data(), total, p);
    } else {
        std::fprintf(stderr, "unknown kernel %s\n", k.c_str());
        return 2;
    }
    write_f32(out, y);
    return 0;
}
