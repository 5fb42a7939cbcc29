// conv2d on the CPU: forward, input gradient (a forward convolution of the zero-upsampled dy with the
// flipped, transposed weight: common/geometry.h's input_grad_as_forward), weight gradient (split over
// fixed batch chunks, reduced in order) and bias gradient. The arithmetic is the engine's (engine.h, engine/); this file
// converts dtypes and fills the arguments. input_grad and weight_grad also serve the fused op, whose
// dy is an Unpooled (engine_api.h).
#include <torch/library.h>

#include "../ops.h"
#include "glue.h"

namespace cnnfast {
namespace cpu {

void input_grad(const ConvGeom& f, const View4& dy, const Unpooled* u, const at::Tensor& weight, const at::Tensor& out) {
  const at::Tensor wt = flipped_weight(as_float(weight), f.groups);
  FloatOut y(out);
  Conv2dForwardArgs a;
  a.x = dy;
  a.x_unpool = u;
  a.Hx = f.OH, a.Wx = f.OW, a.up_h = f.sh, a.up_w = f.sw;
  a.w = wt.data_ptr<float>();
  a.bias = nullptr;
  a.y = view4(y.t);
  a.g = input_grad_as_forward(f);
  if (f.OH == 0 || f.OW == 0) {
    y.t.zero_();
  } else {
    conv_forward(a, parallel);
  }
  y.finish();
}

void weight_grad(const ConvGeom& g, const at::Tensor& x, const View4& dy, const Unpooled* u, const at::Tensor& out) {
  at::Tensor gw = scratch(out.sizes(), out.options().dtype(at::kFloat));  // contiguous, as the engine writes it
  if (g.N == 0 || g.OH == 0 || g.OW == 0) {
    gw.zero_();
  } else {
    const at::Tensor xf = as_float(x);
    Conv2dWeightGradArgs a;
    a.x = view4(xf);
    a.dy = dy;
    a.dy_unpool = u;
    a.gw = gw.data_ptr<float>();
    a.g = g;
    conv_weight_grad(a, parallel);
  }
  out.copy_(gw);
}

namespace impl {  // what ops.h's entry points call (ops::<op>_kernel<&impl::<op>>)

void conv2d_forward(const Conv2dForward& a) {
  const at::Tensor xf = as_float(a.x), wf = as_float(a.weight).contiguous();
  const at::Tensor bf = a.bias.has_value() ? as_float(*a.bias).contiguous() : at::Tensor();
  FloatOut y(a.out);
  Conv2dForwardArgs f;
  f.x = view4(xf);
  f.Hx = a.g.H, f.Wx = a.g.W, f.up_h = 1, f.up_w = 1;
  f.w = wf.data_ptr<float>();
  f.bias = bf.defined() ? bf.data_ptr<float>() : nullptr;
  f.y = view4(y.t);
  f.g = a.g;
  conv_forward(f, parallel);
  y.finish();
}

void conv2d_input_grad(const Conv2dInputGrad& a) {
  const at::Tensor gf = as_float(a.grad);
  input_grad(a.g, view4(gf), nullptr, a.weight, a.out);
}

void conv2d_weight_grad(const Conv2dWeightGrad& a) {
  const at::Tensor gf = as_float(a.grad);
  weight_grad(a.g, a.x, view4(gf), nullptr, a.out);
}

// gb[k] = sum over n, oh, ow of dy[n, k, oh, ow] (glue.h: channel_sums).
void conv2d_bias_grad(const BiasGrad& a) {
  const int64_t N = a.grad.size(0), K = a.grad.size(1), P = a.grad.size(2) * a.grad.size(3);
  const at::Tensor gf = as_float(a.grad).permute({1, 0, 2, 3}).reshape({K, N, P});  // copies unless NCHW
  const float* src = gf.data_ptr<float>();
  const int64_t sk = gf.stride(0), sn = gf.stride(1), sp = gf.stride(2);
  channel_sums(K, N, a.out, [&](int64_t k, int64_t n, float(&acc)[8]) {
    const float* p = src + k * sk + n * sn;
    if (sp == 1) {
      add_to_lanes(acc, P, [&](int64_t i) { return p[i]; });
    } else {
      add_to_lanes(acc, P, [&](int64_t i) { return p[i * sp]; });
    }
  });
}

}  // namespace impl

TORCH_LIBRARY_IMPL(cnnfast, CPU, m) {
  m.impl("conv2d_forward_kernel", &ops::conv2d_forward_kernel<&impl::conv2d_forward>);
  m.impl("conv2d_input_grad_kernel", &ops::conv2d_input_grad_kernel<&impl::conv2d_input_grad>);
  m.impl("conv2d_weight_grad_kernel", &ops::conv2d_weight_grad_kernel<&impl::conv2d_weight_grad>);
  m.impl("conv2d_bias_grad_kernel", &ops::conv2d_bias_grad_kernel<&impl::conv2d_bias_grad>);
}

}  // namespace cpu
}  // namespace cnnfast
