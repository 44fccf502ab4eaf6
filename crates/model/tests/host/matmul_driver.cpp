// Runs kernels/matmul.cu on the CPU through the host shim.
//
// Usage: matmul_driver splitk|dequant DIR
//   splitk:  DIR/params.txt "M N K S precision"; DIR/x.bin [M, K], DIR/w.bin [N, K] (f32);
//            writes DIR/partial.bin [S, M, N] and DIR/y.bin [M, N].
//   dequant: DIR/params.txt "M N K group_cols bits precision"; DIR/x.bin [M, K] (f32),
//            DIR/codes.bin (bytes: [N, K] int8 or [N, ceil(K/2)] packed int4),
//            DIR/scales.bin [N, ceil(K/group_cols)] (f32); writes DIR/y.bin [M, N].
#include "cuda_host.hpp"
#include "common.cuh"
#include "matmul.cu"

#include <cstdio>
#include <cstdlib>
#include <string>

template <class T>
static std::vector<T> read_vec(const std::string& path, size_t n) {
    std::vector<T> v(n);
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f || std::fread(v.data(), sizeof(T), n, f) != n) {
        std::fprintf(stderr, "cannot read %zu items from %s\n", n, path.c_str());
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

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: matmul_driver splitk|dequant DIR\n");
        return 2;
    }
    std::string mode = argv[1], dir = argv[2];
    FILE* pf = std::fopen((dir + "/params.txt").c_str(), "r");
    if (!pf) {
        std::fprintf(stderr, "no params.txt\n");
        return 2;
    }
    const unsigned T = VT_MM_TILE;
    if (mode == "splitk") {
        int M, N, K, S, precision;
        if (std::fscanf(pf, "%d %d %d %d %d", &M, &N, &K, &S, &precision) != 5) return 2;
        auto x = read_vec<float>(dir + "/x.bin", (size_t)M * K);
        auto w = read_vec<float>(dir + "/w.bin", (size_t)N * K);
        std::vector<float> partial((size_t)S * M * N, -12345.0f), y((size_t)M * N, -12345.0f);
        vt_launch(vt_matmul_splitk_partial, dim3((N + T - 1) / T, (M + T - 1) / T, S),
                  dim3(T, T), (const float*)x.data(), (const float*)w.data(), partial.data(), M,
                  N, K, S);
        unsigned mn = (unsigned)(M * N);
        vt_launch(vt_splitk_reduce, dim3((mn + VT_ROW_THREADS - 1) / VT_ROW_THREADS),
                  dim3(VT_ROW_THREADS), (const float*)partial.data(), y.data(), M, N, K, S,
                  precision);
        write_f32(dir + "/partial.bin", partial);
        write_f32(dir + "/y.bin", y);
    } else if (mode == "dequant") {
        int M, N, K, group_cols, bits, precision;
        if (std::fscanf(pf, "%d %d %d %d %d %d", &M, &N, &K, &group_cols, &bits, &precision) != 6)
            return 2;
        int groups = (K + group_cols - 1) / group_cols;
        size_t ncodes = bits == 4 ? (size_t)N * ((K + 1) / 2) : (size_t)N * K;
        auto x = read_vec<float>(dir + "/x.bin", (size_t)M * K);
        auto codes = read_vec<vt_u8>(dir + "/codes.bin", ncodes);
        auto scales = read_vec<float>(dir + "/scales.bin", (size_t)N * groups);
        std::vector<float> y((size_t)M * N, -12345.0f);
        vt_launch(vt_matmul_dequant, dim3((N + T - 1) / T, (M + T - 1) / T), dim3(T, T),
                  (const float*)x.data(), (const vt_u8*)codes.data(),
                  (const float*)scales.data(), y.data(), M, N, K, group_cols, bits, precision);
        write_f32(dir + "/y.bin", y);
    } else {
        std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
        return 2;
    }
    std::fclose(pf);
    return 0;
}
