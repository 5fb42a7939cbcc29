// Running block programs (program.h) on the GPU: the __global__ kernel that runs any program, the
// execution context the op glue launches through (device guard, current stream, launch check), and
// the tensor-core warp-tile policy (wmma) of the implicit-GEMM program, and the registration of the
// ops for the CUDA dispatch key (CNNFAST_REGISTER_CUDA). nvcc only.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include "warp_mma.h"
#include "program.h"

namespace cnnfast {
namespace cuda {

template <class P>
__global__ void __launch_bounds__(P::kThreads, 1) run_program(const P prog) {
  extern __shared__ __align__(128) unsigned char smem[];
  typename P::Thread th;
  const Block b{static_cast<idx>(blockIdx.x), static_cast<idx>(blockIdx.y), static_cast<idx>(blockIdx.z)};
  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
  prog.begin(th, tid, b);
  const int steps = prog.steps(b);
  for (int s = 0; s < steps; ++s) {
    prog.stage(smem, th, tid, b, s);
    __syncthreads();
    prog.compute(smem, th, tid, b, s);
    prog.warp_compute(smem, th, warp, lane, b, s);
    __syncthreads();
  }
  prog.warp_finish(smem, th, warp, lane, b);
  __syncthreads();
  prog.store(smem, th, tid, b);
}

// wmma's element type and shape for a storage dtype: float16 / bfloat16 m16n16k16, float32 as TF32
// m16n16k8 (operands rounded to TF32 after the load, as cuDNN's TF32 convolutions do).
template <typename T>
struct WmmaOf;
template <>
struct WmmaOf<c10::Half> {
  using In = __half;
  using Frag = __half;
  static constexpr int K = 16;
};
template <>
struct WmmaOf<c10::BFloat16> {
  using In = __nv_bfloat16;
  using Frag = __nv_bfloat16;
  static constexpr int K = 16;
};
template <>
struct WmmaOf<float> {
  using In = float;
  using Frag = nvcuda::wmma::precision::tf32;
  static constexpr int K = 8;
};

// The tensor-core policy of warp_mma.h's contract: a warp's 32 x 32 tile as 2 x 2 wmma fragments.
template <typename T>
struct TensorCore {
  static constexpr const char* kName = "tensor_core";
  using Elem = T;
  using In = typename WmmaOf<T>::In;
  static constexpr int kK = WmmaOf<T>::K;
  static constexpr bool kCollective = true;
  using FragA = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, kK, typename WmmaOf<T>::Frag, nvcuda::wmma::col_major>;
  using FragB = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, kK, typename WmmaOf<T>::Frag, nvcuda::wmma::row_major>;
  using FragC = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, kK, float>;
  struct Acc {
    FragC c[2][2];
  };
  static __device__ __forceinline__ void zero(Acc& acc) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(acc.c[i][j], 0.f);
  }
  template <class F>
  static __device__ __forceinline__ void to_tf32(F& f) {
    if constexpr (sizeof(T) == 4) {
#pragma unroll
      for (int t = 0; t < f.num_elements; ++t) f.x[t] = nvcuda::wmma::__float_to_tf32(f.x[t]);
    }
  }
  static __device__ __forceinline__ void step(Acc& acc, const T* As, int lda, const T* Bs, int ldb, int m0, int n0,
                                              int bk, int) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const In* A = reinterpret_cast<const In*>(As);
    const In* B = reinterpret_cast<const In*>(Bs);
    for (int k = 0; k < bk; k += kK) {
      FragA fa[2];
      FragB fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        nvcuda::wmma::load_matrix_sync(fa[i], A + k * lda + m0 + 16 * i, lda);
        to_tf32(fa[i]);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        nvcuda::wmma::load_matrix_sync(fb[j], B + k * ldb + n0 + 16 * j, ldb);
        to_tf32(fb[j]);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) nvcuda::wmma::mma_sync(acc.c[i][j], fa[i], fb[j], acc.c[i][j]);
    }
#else
    __trap();  // the host glue only chooses tensor cores on sm_80 and newer
#endif
  }
  static __device__ __forceinline__ void store(float* Cs, int ldc, const Acc& acc, int m0, int n0, int) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        nvcuda::wmma::store_matrix_sync(Cs + (n0 + 16 * j) * ldc + m0 + 16 * i, acc.c[i][j], ldc,
                                        nvcuda::wmma::mem_col_major);
  }
};

// The execution context the ops' host code (launch.h) is written against, for the GPU: the device of
// the tensors, its current stream, one launch of the program's grid.
struct DeviceExec {
  c10::cuda::CUDAGuard guard;
  cudaStream_t stream;
  explicit DeviceExec(const at::Device& device) : guard(device), stream(c10::cuda::getCurrentCUDAStream()) {}

  template <class P>
  void launch(const P& prog) const {
    check_launch(prog);
    const Grid g = prog.grid();
    run_program<P><<<dim3(static_cast<unsigned>(g.x), static_cast<unsigned>(g.y), static_cast<unsigned>(g.z)),
                     P::kThreads, prog.smem_bytes(), stream>>>(prog);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // bfloat16 and TF32 wmma need sm_80 or newer (the build's own floor; checked for a newer PTX JIT too).
  bool tensor_cores() const {
    int major = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, guard.current_device().index()));
    return major >= 8;
  }
  template <typename T>
  using TensorCore = cuda::TensorCore<T>;
};

// A registrar (conv2d.h: register_conv2d) that registers each op for the CUDA dispatch key.
struct TorchRegistrar {
  torch::Library& m;
  template <class F>
  void def(const char* name, F fn) {
    m.impl(name, fn);
  }
};

}  // namespace cuda
}  // namespace cnnfast

// One op's CUDA kernels, registered by its registration function REGISTER (e.g. register_conv2d).
#define CNNFAST_REGISTER_CUDA(REGISTER)                                   \
  TORCH_LIBRARY_IMPL(cnnfast, CUDA, m) {                                 \
    cnnfast::cuda::TorchRegistrar registrar{m};                          \
    cnnfast::cuda::REGISTER<cnnfast::cuda::DeviceExec>(registrar);       \
  }
