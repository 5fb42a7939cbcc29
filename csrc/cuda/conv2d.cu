// conv2d on CUDA, direct convolution (conv.cuh), every result deterministic:
//  - forward: a thread per output pixel x 8 output channels, weights staged in shared memory;
//  - input gradient: the gather form, a thread per input pixel x 8 input channels, summing
//    dy[n, k, (h + pt - r*dh)/sh, (w + pl - s*dw)/sw] * w[k, c, r, s] over the exact divisions;
//  - weight and bias gradients: split-K over N*OH*OW into a float32 workspace (the split count a
//    function of the shape only), then a second kernel sums the splits in order. No atomics.
// 64-bit offsets throughout.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../ops.h"
#include "conv.cuh"

namespace cnnfast {
namespace cuda {
namespace {

template <typename T>
__global__ void conv2d_fwd_kernel(View<const T> x, const T* __restrict__ w, const T* __restrict__ bias, View<T> y,
                                  ConvGeom g, int64_t cb) {
  extern __shared__ float w_s[];
  const int64_t Cg = g.Cg(), Kg = g.Kg(), RS = g.R * g.S;
  const int64_t kblocks = (Kg + kKB - 1) / kKB;
  const int64_t grp = blockIdx.y / kblocks, k0 = grp * Kg + (blockIdx.y % kblocks) * kKB, k_end = (grp + 1) * Kg;
  const int64_t pix = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const bool active = pix < g.N * g.OH * g.OW;
  const int64_t ow = pix % g.OW, oh = (pix / g.OW) % g.OH, n = pix / (g.OW * g.OH);
  float acc[kKB];
#pragma unroll
  for (int k = 0; k < kKB; ++k) acc[k] = 0.f;
  for (int64_t c0 = 0; c0 < Cg; c0 += cb) {
    const int64_t cn = c0 + cb <= Cg ? cb : Cg - c0;
    __syncthreads();
    stage_weights(w_s, w, k0, k_end, Cg, c0, cn, RS);
    __syncthreads();
    if (active)
      accumulate_taps(acc, x, w_s, n, grp * Cg + c0, cn, oh * g.sh - g.ph, ow * g.sw - g.pw, g);
  }
  if (!active) return;
#pragma unroll
  for (int k = 0; k < kKB; ++k) {
    if (k0 + k >= k_end) break;
    const float b = bias ? to_f(bias[k0 + k]) : 0.f;
    y.at(n, k0 + k, oh, ow) = from_f<T>(acc[k] + b);
  }
}

// gi[n, c, h, w] for 8 channels c of group grp; weights staged as w_s[c][k][r][s] for a slice of k.
template <typename T>
__global__ void conv2d_input_grad_kernel(View<const T> dy, const T* __restrict__ w, View<T> gi, ConvGeom g,
                                         int64_t kc) {
  extern __shared__ float w_s[];
  const int64_t Cg = g.Cg(), Kg = g.Kg(), RS = g.R * g.S;
  const int64_t cblocks = (Cg + kKB - 1) / kKB;
  const int64_t grp = blockIdx.y / cblocks, cl0 = (blockIdx.y % cblocks) * kKB;
  const int64_t pix = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const bool active = pix < g.N * g.H * g.W;
  const int64_t iw = pix % g.W, ih = (pix / g.W) % g.H, n = pix / (g.W * g.H);
  float acc[kKB];
#pragma unroll
  for (int c = 0; c < kKB; ++c) acc[c] = 0.f;
  for (int64_t kk0 = 0; kk0 < Kg; kk0 += kc) {
    const int64_t kn = kk0 + kc <= Kg ? kc : Kg - kk0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < kKB * kc * RS; i += blockDim.x) {
      const int64_t rs = i % RS, k = (i / RS) % kc, c = i / (RS * kc);
      w_s[i] = (cl0 + c < Cg && kk0 + k < Kg) ? to_f(w[((grp * Kg + kk0 + k) * Cg + cl0 + c) * RS + rs]) : 0.f;
    }
    __syncthreads();
    if (!active) continue;
    for (int64_t r = 0; r < g.R; ++r) {
      const int64_t oh_num = ih + g.ph - r * g.dh;
      if (oh_num < 0 || oh_num % g.sh != 0 || oh_num / g.sh >= g.OH) continue;
      const int64_t oh = oh_num / g.sh;
      for (int64_t s = 0; s < g.S; ++s) {
        const int64_t ow_num = iw + g.pw - s * g.dw;
        if (ow_num < 0 || ow_num % g.sw != 0 || ow_num / g.sw >= g.OW) continue;
        const int64_t ow = ow_num / g.sw;
        for (int64_t k = 0; k < kn; ++k) {
          const float d = to_f(dy.at(n, grp * Kg + kk0 + k, oh, ow));
          const float* ws = w_s + (k * g.R + r) * g.S + s;
#pragma unroll
          for (int c = 0; c < kKB; ++c) acc[c] = fmaf(d, ws[c * kc * RS], acc[c]);
        }
      }
    }
  }
  if (!active) return;
#pragma unroll
  for (int c = 0; c < kKB; ++c) {
    if (cl0 + c >= Cg) break;
    gi.at(n, grp * Cg + cl0 + c, ih, iw) = from_f<T>(acc[c]);
  }
}

// ws[split][k * crs + (c*R + r)*S + s] = partial sum over this split's range of p = (n, oh, ow).
template <typename T>
__global__ void conv2d_weight_grad_kernel(View<const T> x, View<const T> dy, float* __restrict__ ws, ConvGeom g,
                                          int64_t per_split) {
  const int64_t Cg = g.Cg(), Kg = g.Kg(), crs = Cg * g.R * g.S;
  const int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (e >= g.K * crs) return;
  const int64_t s = e % g.S, r = (e / g.S) % g.R, c = (e / (g.S * g.R)) % Cg, k = e / crs;
  const int64_t cx = (k / Kg) * Cg + c;
  const int64_t P = g.N * g.OH * g.OW;
  const int64_t p0 = blockIdx.y * per_split, p1 = p0 + per_split < P ? p0 + per_split : P;
  float acc = 0.f;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t ow = p % g.OW, oh = (p / g.OW) % g.OH, n = p / (g.OW * g.OH);
    const int64_t ih = oh * g.sh - g.ph + r * g.dh, iw = ow * g.sw - g.pw + s * g.dw;
    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
    acc = fmaf(to_f(dy.at(n, k, oh, ow)), to_f(x.at(n, cx, ih, iw)), acc);
  }
  ws[blockIdx.y * g.K * crs + e] = acc;
}

// ws[split][k] = partial sum of dy[:, k] over this split's range of p = (n, oh, ow).
template <typename T>
__global__ void conv2d_bias_grad_kernel(View<const T> dy, float* __restrict__ ws, int64_t N, int64_t K, int64_t OH,
                                        int64_t OW, int64_t per_split) {
  const int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (k >= K) return;
  const int64_t P = N * OH * OW;
  const int64_t p0 = blockIdx.y * per_split, p1 = p0 + per_split < P ? p0 + per_split : P;
  float acc = 0.f;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t ow = p % OW, oh = (p / OW) % OH, n = p / (OW * OH);
    acc += to_f(dy.at(n, k, oh, ow));
  }
  ws[blockIdx.y * K + k] = acc;
}

// out (d0, d1, d2, d3 with strides) = sum over splits of ws[split][i], in split order.
template <typename T>
__global__ void splitk_reduce_kernel(const float* __restrict__ ws, int64_t splits, View<T> out, int64_t d1, int64_t d2,
                                     int64_t d3, int64_t total) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= total) return;
  float acc = 0.f;
  for (int64_t sp = 0; sp < splits; ++sp) acc += ws[sp * total + i];
  out.at(i / (d1 * d2 * d3), (i / (d2 * d3)) % d1, (i / d3) % d2, i % d3) = from_f<T>(acc);
}

// Splits for a reduction of P terms over `outputs` results: about 2^16 threads in all, at least
// 256 terms per split; a function of the shape only.
inline int64_t splits_for(int64_t P, int64_t outputs) {
  int64_t sp = (65536 + outputs - 1) / (outputs > 0 ? outputs : 1);
  const int64_t by_len = (P + 255) / 256;
  sp = sp < by_len ? sp : by_len;
  sp = sp < 65535 ? sp : 65535;
  return sp > 0 ? sp : 1;
}

// A tensor of dtype `dtype` the kernel can write for `out`: out itself, or a temporary copied back.
struct TypedOut {
  at::Tensor out, t;
  TypedOut(const at::Tensor& o, at::ScalarType dtype) : out(o), t(o.scalar_type() == dtype ? o : at::empty_like(o, o.options().dtype(dtype))) {}
  void finish() {
    if (!t.is_same(out)) out.copy_(t);
  }
};

void conv2d_fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                const at::Tensor& out) {
  const char* op = "conv2d_fwd_kernel";
  check_float(x, op, "input");
  TORCH_CHECK(out.dim() == 4, op, ": out must be 4-D");
  const ConvGeom g = conv_geom(op, x, weight, stride, padding, dilation, groups, out.size(2), out.size(3));
  check_out(out, x, op, "out", {g.N, g.K, g.OH, g.OW});
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor w = weight.to(x.scalar_type()).contiguous();
  at::Tensor b;
  if (bias.has_value()) b = bias->to(x.scalar_type()).contiguous();
  TypedOut y(out, x.scalar_type());
  const int64_t cb = slice_channels(g.Cg(), g.R, g.S);
  const dim3 grid(blocks_for(g.N * g.OH * g.OW), static_cast<unsigned>(g.groups * ((g.Kg() + kKB - 1) / kKB)));
  const size_t smem = sizeof(float) * kKB * cb * g.R * g.S;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cnnfast_cuda", [&] {
    conv2d_fwd_kernel<scalar_t><<<grid, kThreads, smem, stream>>>(
        view<const scalar_t>(x), w.const_data_ptr<scalar_t>(), b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
        view<scalar_t>(y.t), g, cb);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  y.finish();
}

void conv2d_input_grad(const at::Tensor& grad, const at::Tensor& weight, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, const at::Tensor& out) {
  const char* op = "conv2d_input_grad_kernel";
  check_float(grad, op, "grad");
  TORCH_CHECK(out.dim() == 4, op, ": out must be 4-D");
  const ConvGeom g = conv_geom(op, out, weight, stride, padding, dilation, groups, grad.size(2), grad.size(3));
  check_out(grad, out, op, "grad", {g.N, g.K, g.OH, g.OW});
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto dtype = weight.scalar_type();
  const at::Tensor w = weight.contiguous(), dy = grad.to(dtype);
  TypedOut gi(out, dtype);
  int64_t kc = kSmemFloats / (kKB * g.R * g.S);
  kc = kc < 1 ? 1 : kc < g.Kg() ? kc : g.Kg();
  const dim3 grid(blocks_for(g.N * g.H * g.W), static_cast<unsigned>(g.groups * ((g.Cg() + kKB - 1) / kKB)));
  const size_t smem = sizeof(float) * kKB * kc * g.R * g.S;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "cnnfast_cuda", [&] {
    conv2d_input_grad_kernel<scalar_t><<<grid, kThreads, smem, stream>>>(
        view<const scalar_t>(dy), w.const_data_ptr<scalar_t>(), view<scalar_t>(gi.t), g, kc);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  gi.finish();
}

void conv2d_weight_grad(const at::Tensor& x, const at::Tensor& grad, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation, int64_t groups, const at::Tensor& out) {
  const char* op = "conv2d_weight_grad_kernel";
  check_float(x, op, "input");
  check_float(grad, op, "grad");
  const ConvGeom g = conv_geom(op, x, out, stride, padding, dilation, groups, grad.size(2), grad.size(3));
  check_out(grad, x, op, "grad", {g.N, g.K, g.OH, g.OW});
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto dtype = x.scalar_type();
  const at::Tensor dy = grad.to(dtype);
  const int64_t total = out.numel(), P = g.N * g.OH * g.OW;
  const int64_t splits = splits_for(P, total);
  const int64_t per_split = (P + splits - 1) / splits;
  at::Tensor ws = at::empty({splits, total}, x.options().dtype(at::kFloat));
  TypedOut gw(out, dtype);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "cnnfast_cuda", [&] {
    conv2d_weight_grad_kernel<scalar_t><<<dim3(blocks_for(total), static_cast<unsigned>(splits)), kThreads, 0, stream>>>(
        view<const scalar_t>(x), view<const scalar_t>(dy), ws.data_ptr<float>(), g, per_split);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    splitk_reduce_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        ws.const_data_ptr<float>(), splits, view<scalar_t>(gw.t), out.size(1), out.size(2), out.size(3), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  gw.finish();
}

void conv2d_bias_grad(const at::Tensor& grad, const at::Tensor& out) {
  const char* op = "conv2d_bias_grad_kernel";
  check_float(grad, op, "grad");
  TORCH_CHECK(grad.dim() == 4, op, ": grad must be 4-D");
  check_out(out, grad, op, "out", {grad.size(1)});
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(grad.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t N = grad.size(0), K = grad.size(1), OH = grad.size(2), OW = grad.size(3), P = N * OH * OW;
  const int64_t splits = splits_for(P, K);
  const int64_t per_split = (P + splits - 1) / splits;
  at::Tensor ws = at::empty({splits, K}, grad.options().dtype(at::kFloat));
  TypedOut gb(out.view({1, K, 1, 1}), grad.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "cnnfast_cuda", [&] {
    conv2d_bias_grad_kernel<scalar_t><<<dim3(blocks_for(K), static_cast<unsigned>(splits)), kThreads, 0, stream>>>(
        view<const scalar_t>(grad), ws.data_ptr<float>(), N, K, OH, OW, per_split);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    splitk_reduce_kernel<scalar_t><<<blocks_for(K), kThreads, 0, stream>>>(
        ws.const_data_ptr<float>(), splits, view<scalar_t>(gb.t), K, 1, 1, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  gb.finish();
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CUDA, m) {
  m.impl("conv2d_fwd_kernel", &conv2d_fwd);
  m.impl("conv2d_input_grad_kernel", &conv2d_input_grad);
  m.impl("conv2d_weight_grad_kernel", &conv2d_weight_grad);
  m.impl("conv2d_bias_grad_kernel", &conv2d_bias_grad);
}

}  // namespace cuda
}  // namespace cnnfast
