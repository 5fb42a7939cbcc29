// max_pool2d on CUDA: one thread per output element (forward) or input element (backward), the
// window scan and the gather written once in common/geometry.h and shared with the CPU kernels.
// The backward is a gather: no atomics, deterministic.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../ops.h"
#include "common.cuh"

namespace cnnfast {
namespace cuda {
namespace {

template <typename T>
__global__ void max_pool2d_fwd_kernel(View<const T> x, View<T> out, View<int64_t> idx, bool with_idx, int64_t N,
                                      int64_t C, PoolGeom p) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int64_t total = N * C * p.OH * p.OW;
  if (i >= total) return;
  const int64_t ow = i % p.OW, oh = (i / p.OW) % p.OH, c = (i / (p.OW * p.OH)) % C, n = i / (p.OW * p.OH * C);
  float best;
  int64_t best_idx;
  pool_window(p, oh, ow, [&](int64_t h, int64_t w) { return to_f(x.at(n, c, h, w)); }, best, best_idx);
  out.at(n, c, oh, ow) = from_f<T>(best);
  if (with_idx) idx.at(n, c, oh, ow) = best_idx;
}

template <typename T>
__global__ void max_pool2d_bwd_kernel(View<const T> grad, View<const int64_t> idx, View<T> out, int64_t N, int64_t C,
                                      PoolGeom p) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int64_t total = N * C * p.H * p.W;
  if (i >= total) return;
  const int64_t w = i % p.W, h = (i / p.W) % p.H, c = (i / (p.W * p.H)) % C, n = i / (p.W * p.H * C);
  const int64_t target = h * p.W + w;
  const float v = pool_gather(
      p, h, w, [&](int64_t oh, int64_t ow, int64_t, int64_t) { return idx.at(n, c, oh, ow) == target; },
      [&](int64_t oh, int64_t ow) { return to_f(grad.at(n, c, oh, ow)); });
  out.at(n, c, h, w) = from_f<T>(v);
}

void max_pool2d_fwd(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                    at::IntArrayRef dilation, const at::Tensor& out, const std::optional<at::Tensor>& indices) {
  const PoolGeom p = check_max_pool2d_fwd(x, kernel, stride, padding, dilation, out, indices);
  const int64_t N = x.size(0), C = x.size(1);
  View<int64_t> iv{nullptr, 0, 0, 0, 0};
  if (indices.has_value()) {
    iv = view<int64_t>(*indices);
  }
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cnnfast_cuda", [&] {
    max_pool2d_fwd_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
        view<const scalar_t>(x), view<scalar_t>(out), iv, indices.has_value(), N, C, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void max_pool2d_bwd(const at::Tensor& grad, const at::Tensor& indices, at::IntArrayRef kernel, at::IntArrayRef stride,
                    at::IntArrayRef padding, at::IntArrayRef dilation, const at::Tensor& out) {
  const PoolGeom p = check_max_pool2d_bwd(grad, indices, kernel, stride, padding, dilation, out);
  const int64_t N = out.size(0), C = out.size(1);
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "cnnfast_cuda", [&] {
    max_pool2d_bwd_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
        view<const scalar_t>(grad), view<const int64_t>(indices), view<scalar_t>(out), N, C, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CUDA, m) {
  m.impl("max_pool2d_fwd_kernel", &max_pool2d_fwd);
  m.impl("max_pool2d_bwd_kernel", &max_pool2d_bwd);
}

}  // namespace cuda
}  // namespace cnnfast
