// The block-program emulator: runs a CUDA kernel of cnnfast (a block program, program.h) on the CPU,
// every block, every thread, barrier by barrier, on CPU tensors. It backs the "emulated_cuda" backend,
// through which the test suite checks the CUDA kernels' logic without a GPU.
//
// What it checks: everything a program computes (index math, tiling, shared-memory layout, masking,
// epilogues, split-K order), and that no thread reads shared memory it was never given (shared
// memory starts as NaN each block). What it cannot: the memory model (a missing barrier inside a
// hook), warp-level hardware behaviour, and launch limits, all of which need a GPU run.
// Tensor-core instructions are replaced by EmulatedTensorCore, which follows their arithmetic
// contract: 16-bit operands exact, TF32 operands rounded to nearest (ties away), float32 sums.
#pragma once

#include <ATen/Parallel.h>

#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "warp_mma.h"
#include "program.h"

namespace cnnfast {
namespace cuda {

template <typename T>
struct EmulatedTensorCore {
  static constexpr const char* kName = "tensor_core";
  using Elem = T;
  static constexpr int kK = sizeof(T) == 2 ? 16 : 8;
  static constexpr bool kCollective = true;
  struct Acc {
    float v[kWarpTile][kWarpTile];  // the warp's whole tile, [m][n]
  };
  static float operand(T v) {
    if constexpr (sizeof(T) == 4) {
      return round_tf32(v);
    } else {
      return static_cast<float>(v);
    }
  }
  // wmma's preconditions, which the hardware does not check: 256-bit aligned tile pointers and a
  // leading dimension of a multiple of 16 bytes (the emulator's shared memory is 128-byte aligned, as
  // the device's is, so absolute addresses tell).
  static void check_tile(const void* p, int ld, size_t elem) {
    TORCH_CHECK(reinterpret_cast<uintptr_t>(p) % 32 == 0 && (ld * elem) % 16 == 0,
                "cnnfast: a wmma tile at ", p, " with leading dimension ", ld, " breaks wmma's alignment rules");
  }
  static void zero(Acc& acc) { std::memset(acc.v, 0, sizeof(acc.v)); }
  static void step(Acc& acc, const T* As, int lda, const T* Bs, int ldb, int m0, int n0, int bk, int) {
    for (int k = 0; k < bk; k += kK)
      for (int t = 0; t < 2; ++t) {
        check_tile(As + k * lda + m0 + 16 * t, lda, sizeof(T));
        check_tile(Bs + k * ldb + n0 + 16 * t, ldb, sizeof(T));
      }
    for (int k = 0; k < bk; ++k)
      for (int m = 0; m < kWarpTile; ++m) {
        const float av = operand(As[k * lda + m0 + m]);
        for (int n = 0; n < kWarpTile; ++n) acc.v[m][n] += av * operand(Bs[k * ldb + n0 + n]);
      }
  }
  static void store(float* Cs, int ldc, const Acc& acc, int m0, int n0, int) {
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) check_tile(Cs + (n0 + 16 * j) * ldc + m0 + 16 * i, ldc, sizeof(float));
    for (int n = 0; n < kWarpTile; ++n)
      for (int m = 0; m < kWarpTile; ++m) Cs[(n0 + n) * ldc + m0 + m] = acc.v[m][n];
  }
};

// Runs every block of `prog`; blocks are independent, so they are spread over the CPU threads.
template <class P>
void emulate(const P& prog) {
  const Grid grid = prog.grid();
  const int64_t blocks = grid.x * grid.y * grid.z;
  const size_t words = (prog.smem_bytes() + 3) / 4 + 32;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> mem(words);
    std::vector<typename P::Thread> th(P::kThreads);
    // 128-byte aligned, as the device's dynamic shared memory is.
    void* smem = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(mem.data()) + 127) & ~uintptr_t(127));
    const int warps = (P::kThreads + 31) / 32;
    const int lanes = P::kWarpCollective ? 1 : 32;
    for (int64_t i = begin; i < end; ++i) {
      const Block b{static_cast<idx>(i % grid.x), static_cast<idx>((i / grid.x) % grid.y),
                    static_cast<idx>(i / (grid.x * grid.y))};
      std::fill(mem.begin(), mem.end(), std::numeric_limits<float>::quiet_NaN());
      for (int t = 0; t < P::kThreads; ++t) {
        th[t] = typename P::Thread{};
        prog.begin(th[t], t, b);
      }
      const int steps = prog.steps(b);
      for (int s = 0; s < steps; ++s) {
        for (int t = 0; t < P::kThreads; ++t) prog.stage(smem, th[t], t, b, s);
        for (int t = 0; t < P::kThreads; ++t) prog.compute(smem, th[t], t, b, s);
        for (int w = 0; w < warps; ++w)
          for (int l = 0; l < lanes && w * 32 + l < P::kThreads; ++l) prog.warp_compute(smem, th[w * 32 + l], w, l, b, s);
      }
      for (int w = 0; w < warps; ++w)
        for (int l = 0; l < lanes && w * 32 + l < P::kThreads; ++l) prog.warp_finish(smem, th[w * 32 + l], w, l, b);
      for (int t = 0; t < P::kThreads; ++t) prog.store(smem, th[t], t, b);
    }
  });
}

// What the emulator ran since the log was last taken: one line per launch (describe(), the grid and
// the dynamic shared memory), for the tests to check which programs a shape takes.
inline std::vector<std::string>& launch_log() {
  static std::vector<std::string> log;
  return log;
}
inline std::mutex& launch_log_mutex() {
  static std::mutex m;
  return m;
}

// The execution context the ops' host code (launch.h) is written against, for the emulator.
struct EmulatorExec {
  explicit EmulatorExec(const at::Device&) {}
  template <class P>
  void launch(const P& prog) const {
    {
      const std::lock_guard<std::mutex> lock(launch_log_mutex());
      const Grid grid = prog.grid();
      launch_log().push_back(prog.describe() + " | grid " + std::to_string(grid.x) + "x" + std::to_string(grid.y) +
                             "x" + std::to_string(grid.z) + ", " + std::to_string(prog.smem_bytes()) +
                             " B shared");
    }
    check_launch(prog);
    emulate(prog);
  }
  bool tensor_cores() const { return true; }
  template <typename T>
  using TensorCore = EmulatedTensorCore<T>;
};

}  // namespace cuda
}  // namespace cnnfast
