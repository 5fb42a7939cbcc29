// The fused conv2d + bias + ReLU + max_pool2d on the CPU. Forward: engine.h's fused_body computes the
// conv rows of each pool window into a row buffer and pools them there; only the pooled output and the
// compact window position `pos` are written. Backward: the conv2d gradients of conv2d.cpp, whose
// engine rebuilds each row of the conv-output gradient from (grad, pos) where it packs it (engine.h's
// unpool_row: a gather, no atomics), so that gradient never exists in memory; `bias_grad` sums the
// kept pooled gradients straight from (grad, pos).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

#include "../ops.h"
#include "glue.h"

namespace cnnfast {
namespace cpu {
namespace {

void fused_fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
               at::IntArrayRef conv_out_size, at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
               at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation, bool /*allow_tf32*/,
               const at::Tensor& out, const std::optional<at::Tensor>& pos) {
  const auto geom = check_fused_fwd(x, weight, bias, stride, padding, dilation, groups, conv_out_size, pool_kernel,
                                    pool_stride, pool_padding, pool_dilation, out, pos);
  const ConvGeom g = geom.first;
  const PoolGeom p = geom.second;
  if (out.numel() == 0) return;
  const at::Tensor xf = as_float(x), wf = as_float(weight).contiguous();
  const at::Tensor bf = bias.has_value() ? as_float(*bias).contiguous() : at::Tensor();
  FloatOut y(out);
  FusedFwdArgs f;
  f.conv.x = view4(xf);
  f.conv.Hx = g.H, f.conv.Wx = g.W, f.conv.up_h = 1, f.conv.up_w = 1;
  f.conv.w = wf.data_ptr<float>();
  f.conv.bias = bf.defined() ? bf.data_ptr<float>() : nullptr;
  f.conv.y = view4(y.f);
  f.conv.g = g;
  f.pool = p;
  f.pos = pos.has_value() ? pos->data_ptr() : nullptr;
  f.pos_bytes = pos.has_value() ? (int)pos->element_size() : 1;
  f.ps0 = pos.has_value() ? pos->stride(0) : 0;
  f.ps1 = pos.has_value() ? pos->stride(1) : 0;
  f.ps2 = pos.has_value() ? pos->stride(2) : 0;
  f.ps3 = pos.has_value() ? pos->stride(3) : 0;
  f.round_mode = x.scalar_type() == at::kBFloat16 ? kRoundBF16 : x.scalar_type() == at::kHalf ? kRoundFP16 : kRoundNone;
  conv_relu_maxpool2d_forward(f, parallel);
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

// The input gradient: conv2d's, reading the conv-output gradient rebuilt from (grad, pos) row by row.
void fused_input_grad(const at::Tensor& grad, const at::Tensor& pos, const at::Tensor& weight, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, at::IntArrayRef conv_out_size,
                      at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
                      at::IntArrayRef pool_dilation, bool /*allow_tf32*/, const at::Tensor& out) {
  const char* op = "conv_relu_maxpool2d_input_grad_kernel";
  check_float(weight, op, "weight");
  TORCH_CHECK(out.dim() == 4, op, ": out must be 4-D");
  const auto geom = check_fused_grad(op, out, weight, grad, pos, stride, padding, dilation, groups, conv_out_size,
                                     pool_kernel, pool_stride, pool_padding, pool_dilation);
  if (out.numel() == 0) return;
  const UnpooledGrad dy(grad, pos, geom.second);
  input_grad(geom.first, dy.u.grad, &dy.u, weight, out);
}

// The weight gradient: conv2d's, likewise.
void fused_weight_grad(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& pos, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, at::IntArrayRef conv_out_size,
                       at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
                       at::IntArrayRef pool_dilation, bool /*allow_tf32*/, const at::Tensor& out) {
  const char* op = "conv_relu_maxpool2d_weight_grad_kernel";
  check_float(x, op, "input");
  const auto geom = check_fused_grad(op, x, out, grad, pos, stride, padding, dilation, groups, conv_out_size,
                                     pool_kernel, pool_stride, pool_padding, pool_dilation);
  if (out.numel() == 0) return;
  const UnpooledGrad dy(grad, pos, geom.second);
  weight_grad(geom.first, x, dy.u.grad, &dy.u, out);
}

// gb[k] = sum over n, ph, pw of grad[n, k, ph, pw] where pos >= 0 (each kept pooled cell passes its
// gradient to exactly one conv output): conv2d_bias_grad_kernel's arithmetic on the masked grad, one
// channel per task, 8 running partial sums combined in a fixed order; bit-for-bit repeatable.
void bias_grad(const at::Tensor& grad, const at::Tensor& pos, const at::Tensor& out) {
  check_fused_bias_grad(grad, pos, out);
  const int64_t N = grad.size(0), K = grad.size(1), PH = grad.size(2), PW = grad.size(3);
  if (K == 0) return;
  at::Tensor res = at::empty({K}, out.options().dtype(at::kFloat));
  float* dst = res.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "bias_grad", [&] {
    using grad_t = scalar_t;
    AT_DISPATCH_INTEGRAL_TYPES(pos.scalar_type(), "bias_grad_pos", [&] {
      using pos_t = scalar_t;
      const grad_t* gp = grad.const_data_ptr<grad_t>();
      const pos_t* pp = pos.const_data_ptr<pos_t>();
      const int64_t gs0 = grad.stride(0), gs1 = grad.stride(1), gs2 = grad.stride(2), gs3 = grad.stride(3);
      const int64_t ps0 = pos.stride(0), ps1 = pos.stride(1), ps2 = pos.stride(2), ps3 = pos.stride(3);
      at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
          float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
          for (int64_t n = 0; n < N; ++n) {
            const grad_t* g = gp + n * gs0 + k * gs1;
            const pos_t* ps = pp + n * ps0 + k * ps1;
            int64_t i = 0;
            if (gs3 == 1 && ps3 == 1 && gs2 == PW && ps2 == PW) {  // contiguous planes: vectorises
              for (; i + 8 <= PH * PW; i += 8)
                for (int l = 0; l < 8; ++l) acc[l] += ps[i + l] < 0 ? 0.f : static_cast<float>(g[i + l]);
              for (; i < PH * PW; ++i) acc[i % 8] += ps[i] < 0 ? 0.f : static_cast<float>(g[i]);
              continue;
            }
            for (int64_t ph = 0; ph < PH; ++ph)
              for (int64_t pw = 0; pw < PW; ++pw, ++i) {
                const float v = static_cast<float>(g[ph * gs2 + pw * gs3]);
                acc[i % 8] += ps[ph * ps2 + pw * ps3] < 0 ? 0.f : v;
              }
          }
          dst[k] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        }
      });
    });
  });
  out.copy_(res);
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CPU, m) {
  m.impl("conv_relu_maxpool2d_fwd_kernel", &fused_fwd);
  m.impl("conv_relu_maxpool2d_input_grad_kernel", &fused_input_grad);
  m.impl("conv_relu_maxpool2d_weight_grad_kernel", &fused_weight_grad);
  m.impl("conv_relu_maxpool2d_bias_grad_kernel", &bias_grad);
}

}  // namespace cpu
}  // namespace cnnfast
