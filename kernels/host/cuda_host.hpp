// Runs veritrace's CUDA kernels on a CPU, for tests on machines without a GPU.
//
// The kernels are written in a subset of CUDA (kernels/common.cuh): no warp intrinsics, no
// atomics, only static __shared__ arrays. Under that subset a kernel is ordinary C++ once the
// CUDA keywords are defined away, and a launch can be emulated exactly:
//
// * blocks run one after another, so a function-local `static` array is exactly one block's
//   shared memory;
// * the threads of a block run as real threads, and __syncthreads() is a std::barrier, so the
//   kernels' synchronization is exercised as written (a missing barrier shows up as a race).
//
// This checks the kernels' logic (indexing, tiling, the online softmax, hashing) against the
// reference implementations; it says nothing about speed, and expf/erff are the host's.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
inline std::barrier<>* vt_host_barrier = nullptr;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict

inline void __syncthreads() { vt_host_barrier->arrive_and_wait(); }

inline unsigned int __float_as_uint(float x) {
    unsigned int u;
    std::memcpy(&u, &x, 4);
    return u;
}

inline float __uint_as_float(unsigned int u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}

// Launches `kernel(args...)` on a grid of `grid` blocks of `block` threads.
template <class... P, class... A>
void vt_launch(void (*kernel)(P...), dim3 grid, dim3 block, A... args) {
    gridDim = grid;
    blockDim = block;
    const unsigned threads = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::barrier<> bar(threads);
                vt_host_barrier = &bar;
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (unsigned t = 0; t < threads; ++t) {
                    pool.emplace_back([&, t] {
                        blockIdx = dim3(bx, by, bz);
                        threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                        kernel(args...);
                    });
                }
                for (auto& th : pool) th.join();
                vt_host_barrier = nullptr;
            }
}
