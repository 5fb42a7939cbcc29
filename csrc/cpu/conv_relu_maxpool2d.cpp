// The fused conv2d + bias + ReLU + max_pool2d on the CPU. Forward: engine/conv_relu_maxpool2d.h computes the
// conv rows of each pool window into a row buffer and pools them there; only the pooled output and the
// compact window position `pos` are written. Backward: the conv2d gradients of conv2d.cpp, whose
// engine rebuilds each row of the conv-output gradient from (grad, pos) where it packs it (engine/pack.h's
// pack_unpooled: a gather, no atomics), so that gradient never exists in memory; the bias gradient sums the
// kept pooled gradients straight from (grad, pos).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

#include "../ops.h"
#include "glue.h"

namespace cnnfast {
namespace cpu {
namespace impl {  // what ops.h's entry points call (ops::<op>_kernel<&impl::<op>>)

void conv_relu_maxpool2d_forward(const ConvReluMaxPool2dForward& a) {
  const Conv2dForward& c = a.conv;
  const at::Tensor xf = as_float(c.x), wf = as_float(c.weight).contiguous();
  const at::Tensor bf = c.bias.has_value() ? as_float(*c.bias).contiguous() : at::Tensor();
  FloatOut y(c.out);
  ConvReluMaxpool2dForwardArgs f;
  f.conv.x = view4(xf);
  f.conv.Hx = c.g.H, f.conv.Wx = c.g.W, f.conv.up_h = 1, f.conv.up_w = 1;
  f.conv.w = wf.data_ptr<float>();
  f.conv.bias = bf.defined() ? bf.data_ptr<float>() : nullptr;
  f.conv.y = view4(y.t);
  f.conv.g = c.g;
  f.pool = a.p;
  const at::Tensor* pos = a.pos.has_value() ? &*a.pos : nullptr;
  f.pos = pos ? pos->data_ptr() : nullptr;
  f.pos_bytes = pos ? static_cast<int>(pos->element_size()) : 1;
  f.ps0 = pos ? pos->stride(0) : 0, f.ps1 = pos ? pos->stride(1) : 0;
  f.ps2 = pos ? pos->stride(2) : 0, f.ps3 = pos ? pos->stride(3) : 0;
  const auto dtype = c.x.scalar_type();
  f.round_mode = dtype == at::kBFloat16 ? kRoundBF16 : dtype == at::kHalf ? kRoundFP16 : kRoundNone;
  cpu::conv_relu_maxpool2d_forward(f, parallel);
  y.finish();
}

// The fused op's conv-output gradient as the engine reads it: the pooled gradient (float32), pos,
// and the cell offset of each window tap.
struct UnpooledGrad {
  at::Tensor grad_f;
  std::vector<int64_t> tap_h, tap_w;
  Unpooled u;
  UnpooledGrad(const at::Tensor& grad, const at::Tensor& pos, const PoolGeom& p)
      : grad_f(as_float(grad)), tap_h(p.kh * p.kw), tap_w(p.kh * p.kw) {
    for (int64_t q = 0; q < p.kh * p.kw; ++q) {
      tap_h[q] = (q / p.kw) * p.dh - p.ph;
      tap_w[q] = (q % p.kw) * p.dw - p.pw;
    }
    u.grad = view4(grad_f);
    u.pos = pos.data_ptr();
    u.pos_bytes = static_cast<int>(pos.element_size());
    u.ps0 = pos.stride(0), u.ps1 = pos.stride(1), u.ps2 = pos.stride(2), u.ps3 = pos.stride(3);
    u.p = p;
    u.tap_h = tap_h.data();
    u.tap_w = tap_w.data();
  }
};

// The input and weight gradients: conv2d's, reading the conv-output gradient rebuilt from (grad, pos)
// row by row.
void conv_relu_maxpool2d_input_grad(const ConvReluMaxPool2dInputGrad& a) {
  const UnpooledGrad dy(a.conv.grad, a.pos, a.p);
  input_grad(a.conv.g, dy.u.grad, &dy.u, a.conv.weight, a.conv.out);
}

void conv_relu_maxpool2d_weight_grad(const ConvReluMaxPool2dWeightGrad& a) {
  const UnpooledGrad dy(a.conv.grad, a.pos, a.p);
  weight_grad(a.conv.g, a.conv.x, dy.u.grad, &dy.u, a.conv.out);
}

// gb[k] = sum over n, ph, pw of grad[n, k, ph, pw] where pos >= 0 (each kept pooled cell passes its
// gradient to exactly one conv output): conv2d_bias_grad_kernel's arithmetic (glue.h: channel_sums) on
// the masked grad.
void conv_relu_maxpool2d_bias_grad(const BiasGrad& a) {
  const at::Tensor &grad = a.grad, &pos = *a.pos;
  const int64_t N = grad.size(0), K = grad.size(1), PH = grad.size(2), PW = grad.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "bias_grad", [&] {
    using grad_t = scalar_t;
    AT_DISPATCH_INTEGRAL_TYPES(pos.scalar_type(), "bias_grad_pos", [&] {
      using pos_t = scalar_t;
      const grad_t* gp = grad.const_data_ptr<grad_t>();
      const pos_t* pp = pos.const_data_ptr<pos_t>();
      const int64_t gs0 = grad.stride(0), gs1 = grad.stride(1), gs2 = grad.stride(2), gs3 = grad.stride(3);
      const int64_t ps0 = pos.stride(0), ps1 = pos.stride(1), ps2 = pos.stride(2), ps3 = pos.stride(3);
      channel_sums(K, N, a.out, [&](int64_t k, int64_t n, float(&acc)[8]) {
        const grad_t* g = gp + n * gs0 + k * gs1;
        const pos_t* ps = pp + n * ps0 + k * ps1;
        if (gs3 == 1 && ps3 == 1 && gs2 == PW && ps2 == PW) {  // contiguous planes: vectorises
          add_to_lanes(acc, PH * PW, [&](int64_t i) { return ps[i] < 0 ? 0.f : static_cast<float>(g[i]); });
          return;
        }
        int64_t i = 0;
        for (int64_t ph = 0; ph < PH; ++ph)
          for (int64_t pw = 0; pw < PW; ++pw, ++i) {
            const float v = static_cast<float>(g[ph * gs2 + pw * gs3]);
            acc[i % 8] += ps[ph * ps2 + pw * ps3] < 0 ? 0.f : v;
          }
      });
    });
  });
}

}  // namespace impl

TORCH_LIBRARY_IMPL(cnnfast, CPU, m) {
  m.impl("conv_relu_maxpool2d_forward_kernel",
         &ops::conv_relu_maxpool2d_forward_kernel<&impl::conv_relu_maxpool2d_forward>);
  m.impl("conv_relu_maxpool2d_input_grad_kernel",
         &ops::conv_relu_maxpool2d_input_grad_kernel<&impl::conv_relu_maxpool2d_input_grad>);
  m.impl("conv_relu_maxpool2d_weight_grad_kernel",
         &ops::conv_relu_maxpool2d_weight_grad_kernel<&impl::conv_relu_maxpool2d_weight_grad>);
  m.impl("conv_relu_maxpool2d_bias_grad_kernel",
         &ops::conv_relu_maxpool2d_bias_grad_kernel<&impl::conv_relu_maxpool2d_bias_grad>);
}

}  // namespace cpu
}  // namespace cnnfast
