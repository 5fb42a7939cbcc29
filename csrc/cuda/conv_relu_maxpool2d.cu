// The fused conv2d + bias + ReLU + max_pool2d on CUDA.
//
// Forward: a thread owns one pooled pixel (n, ph, pw) and 8 output channels. For each tap (i, j) of
// its pool window it accumulates the conv output there (conv.cuh: weights staged in shared memory,
// acc[8] in registers), adds bias, rounds to the storage dtype, applies ReLU and updates the running
// max and its tap with PyTorch's rule (common/geometry.h). Only the pooled value and, for backward,
// the tap index `pos` (int8/16/32; -1 where the pooled value is <= 0) are written: the conv output
// never exists in memory.
// Backward: `unpool` rebuilds dy[n, k, oh, ow] from (grad, pos) as a gather (no atomics); the conv2d
// gradient kernels consume it.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../ops.h"
#include "conv.cuh"

namespace cnnfast {
namespace cuda {
namespace {

template <typename T, typename PosT>
__global__ void fused_fwd_kernel(View<const T> x, const T* __restrict__ w, const T* __restrict__ bias, View<T> out,
                                 View<PosT> pos, bool with_pos, ConvGeom g, PoolGeom p, int64_t cb) {
  extern __shared__ float w_s[];
  const int64_t Cg = g.Cg(), Kg = g.Kg(), RS = g.R * g.S;
  const int64_t kblocks = (Kg + kKB - 1) / kKB;
  const int64_t grp = blockIdx.y / kblocks, k0 = grp * Kg + (blockIdx.y % kblocks) * kKB, k_end = (grp + 1) * Kg;
  const int64_t pix = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const bool active = pix < g.N * p.OH * p.OW;
  const int64_t pw = pix % p.OW, ph = (pix / p.OW) % p.OH, n = pix / (p.OW * p.OH);
  float best[kKB];
  int32_t best_q[kKB];
#pragma unroll
  for (int k = 0; k < kKB; ++k) {
    best[k] = -__builtin_huge_valf();
    best_q[k] = 0;
  }
  float bias_k[kKB];
#pragma unroll
  for (int k = 0; k < kKB; ++k) bias_k[k] = (bias && k0 + k < k_end) ? to_f(bias[k0 + k]) : 0.f;
  const bool one_slice = cb >= Cg;
  if (one_slice) stage_weights(w_s, w, k0, k_end, Cg, 0, Cg, RS);
  for (int64_t i = 0; i < p.kh; ++i) {
    const int64_t oh = ph * p.sh - p.ph + i * p.dh;
    for (int64_t j = 0; j < p.kw; ++j) {
      const int64_t ow = pw * p.sw - p.pw + j * p.dw;
      const bool valid = active && oh >= 0 && oh < p.H && ow >= 0 && ow < p.W;
      float acc[kKB];
#pragma unroll
      for (int k = 0; k < kKB; ++k) acc[k] = 0.f;
      if (one_slice) {
        __syncthreads();  // the staged weights are visible (only the first time matters)
        if (valid) accumulate_taps(acc, x, w_s, n, grp * Cg, Cg, oh * g.sh - g.ph, ow * g.sw - g.pw, g);
      } else {
        for (int64_t c0 = 0; c0 < Cg; c0 += cb) {
          const int64_t cn = c0 + cb <= Cg ? cb : Cg - c0;
          __syncthreads();
          stage_weights(w_s, w, k0, k_end, Cg, c0, cn, RS);
          __syncthreads();
          if (valid) accumulate_taps(acc, x, w_s, n, grp * Cg + c0, cn, oh * g.sh - g.ph, ow * g.sw - g.pw, g);
        }
      }
      if (!valid) continue;
#pragma unroll
      for (int k = 0; k < kKB; ++k) {
        const float v = relu_keep_nan(to_f(from_f<T>(acc[k] + bias_k[k])));
        if (pool_takes(v, best[k])) {
          best[k] = v;
          best_q[k] = static_cast<int32_t>(i * p.kw + j);
        }
      }
    }
  }
  if (!active) return;
#pragma unroll
  for (int k = 0; k < kKB; ++k) {
    if (k0 + k >= k_end) break;
    out.at(n, k0 + k, ph, pw) = from_f<T>(best[k]);
    if (with_pos) pos.at(n, k0 + k, ph, pw) = static_cast<PosT>(best[k] <= 0.f ? -1 : best_q[k]);
  }
}

template <typename T, typename PosT>
__global__ void unpool_kernel(View<const T> grad, View<const PosT> pos, View<float> dy, int64_t N, int64_t K,
                              PoolGeom p) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= N * K * p.H * p.W) return;
  const int64_t w = i % p.W, h = (i / p.W) % p.H, k = (i / (p.W * p.H)) % K, n = i / (p.W * p.H * K);
  dy.at(n, k, h, w) = pool_gather(
      p, h, w,
      [&](int64_t oh, int64_t ow, int64_t ii, int64_t jj) {
        return static_cast<int64_t>(pos.at(n, k, oh, ow)) == ii * p.kw + jj;
      },
      [&](int64_t oh, int64_t ow) { return to_f(grad.at(n, k, oh, ow)); });
}

template <typename F>
void dispatch_pos(at::ScalarType t, F f) {
  switch (t) {
    case at::kChar: f(int8_t{}); break;
    case at::kShort: f(int16_t{}); break;
    case at::kInt: f(int32_t{}); break;
    default: TORCH_CHECK(false, "cnnfast: pos must be int8, int16 or int32, got ", t);
  }
}

void fused_fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
               at::IntArrayRef conv_out_size, at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
               at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation, const at::Tensor& out,
               const std::optional<at::Tensor>& pos) {
  const char* op = "conv_relu_maxpool2d_fwd_kernel";
  check_float(x, op, "input");
  TORCH_CHECK(conv_out_size.size() == 2, op, ": conv_out_size must have 2 elements");
  TORCH_CHECK(out.dim() == 4 && out.scalar_type() == x.scalar_type(), op, ": out must be 4-D of input's dtype");
  const ConvGeom g = conv_geom(op, x, weight, stride, padding, dilation, groups, conv_out_size[0], conv_out_size[1]);
  const PoolGeom p = pool_geom(op, g.OH, g.OW, out.size(2), out.size(3), pool_kernel, pool_stride, pool_padding,
                               pool_dilation);
  check_out(out, x, op, "out", {g.N, g.K, p.OH, p.OW});
  if (pos.has_value()) check_out(*pos, x, op, "pos", {g.N, g.K, p.OH, p.OW});
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor w = weight.to(x.scalar_type()).contiguous();
  at::Tensor b;
  if (bias.has_value()) b = bias->to(x.scalar_type()).contiguous();
  const int64_t cb = slice_channels(g.Cg(), g.R, g.S);
  const dim3 grid(blocks_for(g.N * p.OH * p.OW), static_cast<unsigned>(g.groups * ((g.Kg() + kKB - 1) / kKB)));
  const size_t smem = sizeof(float) * kKB * cb * g.R * g.S;
  const at::Tensor pos_t = pos.has_value() ? *pos : at::empty({0, 0, 0, 0}, x.options().dtype(at::kChar));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cnnfast_cuda", [&] {
    dispatch_pos(pos_t.scalar_type(), [&](auto pos_zero) {
      using pos_t_ = decltype(pos_zero);
      fused_fwd_kernel<scalar_t, pos_t_><<<grid, kThreads, smem, stream>>>(
          view<const scalar_t>(x), w.const_data_ptr<scalar_t>(), b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
          view<scalar_t>(out), view<pos_t_>(pos_t), pos.has_value(), g, p, cb);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void unpool(const at::Tensor& grad, const at::Tensor& pos, at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
            at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation, const at::Tensor& out) {
  const PoolGeom p = check_unpool(grad, pos, pool_kernel, pool_stride, pool_padding, pool_dilation, out);
  const int64_t N = out.size(0), K = out.size(1);
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor dy = out.scalar_type() == at::kFloat ? out : at::empty_like(out, out.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "cnnfast_cuda", [&] {
    dispatch_pos(pos.scalar_type(), [&](auto pos_zero) {
      using pos_t_ = decltype(pos_zero);
      unpool_kernel<scalar_t, pos_t_><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
          view<const scalar_t>(grad), view<const pos_t_>(pos), view<float>(dy), N, K, p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  if (!dy.is_same(out)) out.copy_(dy);
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CUDA, m) {
  m.impl("conv_relu_maxpool2d_fwd_kernel", &fused_fwd);
  m.impl("conv_relu_maxpool2d_unpool_kernel", &unpool);
}

}  // namespace cuda
}  // namespace cnnfast
