// Every CUDA kernel of cnnfast is written as a *block program*: a struct whose hooks say what one
// thread of a block does between barriers. device.cuh runs a program as a __global__ kernel;
// emulator.h runs the same hooks on the CPU, thread by thread and barrier by barrier, so the test
// suite checks the CUDA kernels' index math, shared-memory tiling, boundary handling and epilogues
// on a machine without a GPU (the "emulated_cuda" backend). Only the warp-level tensor-core
// instructions differ: the emulator replaces them with a reference of the same semantics (warp_mma.h).
//
// A program P provides
//   static constexpr int kThreads;          threads per block
//   static constexpr bool kWarpCollective;  warp_compute / warp_finish are warp-wide operations (wmma):
//                                           the emulator runs them once per warp, on lane 0's Thread
//   struct Thread;                          one thread's registers (default-constructible)
//   Grid grid() const;  size_t smem_bytes() const;  std::string describe() const;   (host)
//   int  steps(const Block&) const;
//   void begin(Thread&, int tid, const Block&) const;
//   void stage(void* smem, Thread&, int tid, const Block&, int step) const;
//   void compute(void* smem, Thread&, int tid, const Block&, int step) const;
//   void warp_compute(void* smem, Thread&, int warp, int lane, const Block&, int step) const;
//   void warp_finish(void* smem, Thread&, int warp, int lane, const Block&) const;
//   void store(void* smem, Thread&, int tid, const Block&) const;
// and every thread of a block runs, with __syncthreads() at each "|":
//   begin; for each step s { stage(s) | compute(s); warp_compute(s) | }; warp_finish | store
// stage writes shared memory, compute and warp_compute read it; warp_finish may write it again (an
// accumulator tile), store reads it and writes the outputs. No hook returns early past a barrier.
//
// Plain C++: nvcc compiles the hooks for the device, g++ for the emulator. Index arithmetic inside a
// program is int32 (`idx`), memory offsets int64; the host code splits a launch along the batch so
// that every index fits (launch.h: batch_chunk).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include "../common/geometry.h"

namespace cnnfast {
namespace cuda {

using idx = int32_t;

struct Block {
  idx x, y, z;
};

struct Grid {
  int64_t x, y, z;
};

// No-op hooks for programs with no shared-memory phases (elementwise kernels): they do all their work
// in store(). Derive and hide the hooks that are needed.
struct ElementwiseProgram {
  static constexpr int kThreads = 128;
  static constexpr bool kWarpCollective = false;
  struct Thread {};
  size_t smem_bytes() const { return 0; }
  CNNFAST_HD int steps(const Block&) const { return 0; }
  template <class Th>
  CNNFAST_HD void begin(Th&, int, const Block&) const {}
  template <class Th>
  CNNFAST_HD void stage(void*, Th&, int, const Block&, int) const {}
  template <class Th>
  CNNFAST_HD void compute(void*, Th&, int, const Block&, int) const {}
  template <class Th>
  CNNFAST_HD void warp_compute(void*, Th&, int, int, const Block&, int) const {}
  template <class Th>
  CNNFAST_HD void warp_finish(void*, Th&, int, int, const Block&) const {}
};

inline std::string dtype_name(float) { return "float32"; }
inline std::string dtype_name(c10::Half) { return "float16"; }
inline std::string dtype_name(c10::BFloat16) { return "bfloat16"; }

// What a CUDA device demands of a launch, checked by both execution contexts, so that the emulator
// refuses what a GPU would: a grid within 2^31-1 x 65535 x 65535 blocks, at most 48 KiB of shared
// memory (the default opt-in limit), whole warps of at most 1024 threads, and a kernel parameter
// that is trivially copyable and within the 4 KiB parameter space.
template <class P>
void check_launch(const P& prog) {
  static_assert(std::is_trivially_copyable<P>::value, "a block program is a kernel parameter: trivially copyable");
  static_assert(sizeof(P) <= 4096, "a block program must fit the 4 KiB kernel parameter space");
  static_assert(P::kThreads % 32 == 0 && P::kThreads <= 1024, "blocks of whole warps, at most 1024 threads");
  const Grid g = prog.grid();
  TORCH_CHECK(g.x >= 1 && g.x <= 0x7fffffff && g.y >= 1 && g.y <= 65535 && g.z >= 1 && g.z <= 65535,
              "cnnfast: a CUDA grid of ", g.x, " x ", g.y, " x ", g.z, " blocks is out of range (", prog.describe(),
              ")");
  TORCH_CHECK(prog.smem_bytes() <= 48 * 1024, "cnnfast: ", prog.smem_bytes(), " bytes of shared memory (",
              prog.describe(), ") exceed 48 KiB");
}

// Blocks of `threads` threads covering `n` elements.
inline int64_t blocks_for(int64_t n, int64_t threads) { return n > 0 ? (n + threads - 1) / threads : 1; }

// 16-byte aligned size, so that shared-memory arrays placed one after another stay aligned.
constexpr size_t align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

}  // namespace cuda
}  // namespace cnnfast
