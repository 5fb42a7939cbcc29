// What the CUDA kernels share besides common/geometry.h: a strided 4-D view, float loads and stores
// of every storage dtype, and the launch helpers (current stream, device guard, launch check).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../common/geometry.h"

namespace cnnfast {
namespace cuda {

template <typename T>
struct View {
  T* p;
  int64_t s0, s1, s2, s3;
  __device__ __forceinline__ T& at(int64_t a, int64_t b, int64_t c, int64_t d) const {
    return p[a * s0 + b * s1 + c * s2 + d * s3];
  }
};

template <typename T>
inline View<T> view(const at::Tensor& t) {
  return View<T>{static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

template <typename T>
__device__ __forceinline__ float to_f(T v) { return static_cast<float>(v); }

template <typename T>
__device__ __forceinline__ T from_f(float v) { return static_cast<T>(v); }

constexpr int kThreads = 128;

inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  TORCH_CHECK(b <= 0x7fffffff, "cnnfast: grid too large");
  return static_cast<unsigned>(b > 0 ? b : 1);
}

}  // namespace cuda
}  // namespace cnnfast
