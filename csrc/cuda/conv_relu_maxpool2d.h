// The fused conv2d + bias + ReLU + max_pool2d's host code on CUDA, for either execution context
// `Exec` (launch.h). Forward: direct convolution with POOL (narrow layers) or the implicit GEMM with
// the pooling epilogue (when K/g >= 32, C/g*R*S >= 32 and a window has at most 128 taps); either
// writes only the pooled output and the window position. Backward: the conv-output gradient is
// rebuilt from (grad, pos) as a gather (pool.h: Unpool) into a temporary that conv2d's gradient
// programs consume; the bias gradient sums the kept pooled gradients from (grad, pos) (conv2d.h).
#pragma once

#include "conv2d.h"

namespace cnnfast {
namespace cuda {

template <class Exec>
void conv_relu_maxpool2d_forward(const ConvReluMaxPool2dForward& a) {
  const char* op = "conv_relu_maxpool2d_forward_kernel";
  const ConvGeom& g = a.conv.g;
  const PoolGeom& p = a.p;
  const ForwardParams wb(a.conv);
  const int64_t taps = p.kh * p.kw;
  run_conv<Exec>(op, g, a.conv.out, wb.dtype, [&](const Exec& exec, const at::Tensor& out, auto type) {
    using T = decltype(type);
    const bool gemm_fits = taps <= 128 && (wb.dtype == at::kFloat || exec.tensor_cores());
    // per image: the tensors, and the GEMM rows of the pooling windows (at most twice pooled x taps)
    const int64_t chunk = batch_chunk(op, g.N, std::max({g.C * g.H * g.W, g.K * g.OH * g.OW, g.K * p.OH * p.OW,
                                                          2 * p.OH * p.OW * taps + 128}));
    for_each_chunk(g.N, chunk, [&](int64_t n0, int64_t nc) {
      DirectArgs<T> d = forward_args<T>(a.conv, wb, n0, nc, out.narrow(0, n0, nc), p);
      d.pos = pos_of(narrow_opt(a.pos, n0, nc));
      bool patch = false;
      if (!(gemm_fits && gemm_shape(g.Kg(), g.Cg() * g.R * g.S)) && plan_direct(d, patch)) {
        return launch_direct<T, true>(exec, d, patch);
      }
      TORCH_CHECK(gemm_fits, op, ": a ", g.R, "x", g.S, " kernel with a ", p.kh, "x", p.kw,
                  " pooling window is not supported by backend 'cuda'; use backend='triton' or 'torch'");
      launch_gemm<kForwardPool>(exec, forward_gemm_args(d), a.conv.allow_tf32, a.conv.x);
    });
  });
}

// The conv-output gradient dy (N, K, OH, OW, float32) rebuilt from (grad, pos): a temporary that
// lives for one gradient op (the programs' gathers would repeat the window scan per element).
template <class Exec>
at::Tensor unpool(const char* op, const at::Tensor& grad, const at::Tensor& pos, const PoolGeom& p) {
  at::Tensor dy = scratch({grad.size(0), grad.size(1), p.H, p.W}, grad.options().dtype(at::kFloat));
  if (dy.numel() == 0) return dy;
  launch_pooling<Unpool, Exec>(op, grad, grad.scalar_type(), p, [&](auto& prog, auto t, int64_t n0, int64_t nc) {
    using T = decltype(t);
    prog.grad = view_of<const T>(grad.narrow(0, n0, nc));
    prog.pos = pos_of(pos.narrow(0, n0, nc));
    prog.dy = view_of<float>(dy.narrow(0, n0, nc));
  });
  return dy;
}

// The input and weight gradients: conv2d's, of the rebuilt conv-output gradient.
template <class Exec>
void conv_relu_maxpool2d_input_grad(const ConvReluMaxPool2dInputGrad& a) {
  Conv2dInputGrad c = a.conv;
  c.grad = unpool<Exec>("conv_relu_maxpool2d_input_grad_kernel", c.grad, a.pos, a.p);
  conv2d_input_grad<Exec>(c);
}

template <class Exec>
void conv_relu_maxpool2d_weight_grad(const ConvReluMaxPool2dWeightGrad& a) {
  Conv2dWeightGrad c = a.conv;
  c.grad = unpool<Exec>("conv_relu_maxpool2d_weight_grad_kernel", c.grad, a.pos, a.p);
  conv2d_weight_grad<Exec>(c);
}

// The fused op's ops for the registrar `r` (see conv2d.h).
template <class Exec, class Registrar>
void register_conv_relu_maxpool2d(Registrar& r) {
  r.def("conv_relu_maxpool2d_forward_kernel",
        &ops::conv_relu_maxpool2d_forward_kernel<&conv_relu_maxpool2d_forward<Exec>>);
  r.def("conv_relu_maxpool2d_input_grad_kernel",
        &ops::conv_relu_maxpool2d_input_grad_kernel<&conv_relu_maxpool2d_input_grad<Exec>>);
  r.def("conv_relu_maxpool2d_weight_grad_kernel",
        &ops::conv_relu_maxpool2d_weight_grad_kernel<&conv_relu_maxpool2d_weight_grad<Exec>>);
  r.def("conv_relu_maxpool2d_bias_grad_kernel", &ops::conv_relu_maxpool2d_bias_grad_kernel<&bias_grad<Exec>>);
}

}  // namespace cuda
}  // namespace cnnfast
