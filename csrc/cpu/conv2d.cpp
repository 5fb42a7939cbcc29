// conv2d on the CPU: forward, input gradient (a forward convolution of the zero-upsampled dy with the
// flipped, transposed weight), weight gradient (split over fixed batch chunks, reduced in order) and
// bias gradient. The arithmetic is engine.h's; this file converts dtypes and fills the arguments.
// input_grad and weight_grad also serve the fused op, whose dy is an Unpooled (glue.h).
#include <torch/library.h>

#include "../ops.h"
#include "glue.h"

namespace cnnfast {
namespace cpu {

void input_grad(const ConvGeom& f, const View4& dy, const Unpooled* u, const at::Tensor& weight, const at::Tensor& out) {
  const int64_t G = f.groups, Kg = f.Kg(), Cg = f.Cg();
  // wt[g*Cg + c][k][R-1-r][S-1-s] = w[g*Kg + k][c][r][s]
  const at::Tensor wt = as_float(weight).reshape({G, Kg, Cg, f.R, f.S}).transpose(1, 2).flip({3, 4})
                            .reshape({G * Cg, Kg, f.R, f.S}).contiguous();
  FloatOut y(out);
  ConvFwdArgs a;
  a.x = dy;
  a.x_unpool = u;
  a.Hx = f.OH, a.Wx = f.OW, a.up_h = f.sh, a.up_w = f.sw;
  a.w = wt.data_ptr<float>();
  a.bias = nullptr;
  a.y = view4(y.f);
  ConvGeom g;
  g.N = f.N, g.C = f.K, g.H = (f.OH - 1) * f.sh + 1, g.W = (f.OW - 1) * f.sw + 1;
  g.K = f.C, g.R = f.R, g.S = f.S, g.OH = f.H, g.OW = f.W, g.groups = G;
  g.sh = 1, g.sw = 1, g.dh = f.dh, g.dw = f.dw;
  g.ph = (f.R - 1) * f.dh - f.ph, g.pw = (f.S - 1) * f.dw - f.pw;  // may be negative: a crop
  a.g = g;
  if (f.OH == 0 || f.OW == 0) {
    y.f.zero_();
  } else {
    conv_forward(a, parallel);
  }
  y.finish();
}

void weight_grad(const ConvGeom& g, const at::Tensor& x, const View4& dy, const Unpooled* u, const at::Tensor& out) {
  at::Tensor gw = at::empty(out.sizes(), out.options().dtype(at::kFloat));
  if (g.N == 0 || g.OH == 0 || g.OW == 0) {
    gw.zero_();
  } else {
    const at::Tensor xf = as_float(x);
    WeightGradArgs a;
    a.x = view4(xf);
    a.dy = dy;
    a.dy_unpool = u;
    a.gw = gw.data_ptr<float>();
    a.g = g;
    conv_weight_grad(a, parallel);
  }
  out.copy_(gw);
}

namespace {

void conv2d_fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                bool /*allow_tf32*/, const at::Tensor& out) {
  const ConvGeom g = check_conv2d_fwd(x, weight, bias, stride, padding, dilation, groups, out);
  if (out.numel() == 0) return;
  const at::Tensor xf = as_float(x), wf = as_float(weight).contiguous();
  const at::Tensor bf = bias.has_value() ? as_float(*bias).contiguous() : at::Tensor();
  FloatOut y(out);
  ConvFwdArgs a;
  a.x = view4(xf);
  a.Hx = g.H, a.Wx = g.W, a.up_h = 1, a.up_w = 1;
  a.w = wf.data_ptr<float>();
  a.bias = bf.defined() ? bf.data_ptr<float>() : nullptr;
  a.y = view4(y.f);
  a.g = g;
  conv_forward(a, parallel);
  y.finish();
}

void conv2d_input_grad(const at::Tensor& grad, const at::Tensor& weight, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, bool /*allow_tf32*/,
                       const at::Tensor& out) {
  // The geometry of the forward conv this is the gradient of: input `out`, output `grad`.
  const ConvGeom f = check_conv2d_input_grad(grad, weight, stride, padding, dilation, groups, out);
  if (out.numel() == 0) return;
  const at::Tensor gf = as_float(grad);
  input_grad(f, view4(gf), nullptr, weight, out);
}

void conv2d_weight_grad(const at::Tensor& x, const at::Tensor& grad, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation, int64_t groups, bool /*allow_tf32*/, const at::Tensor& out) {
  const ConvGeom g = check_conv2d_weight_grad(x, grad, stride, padding, dilation, groups, out);
  if (out.numel() == 0) return;
  const at::Tensor gf = as_float(grad);
  weight_grad(g, x, view4(gf), nullptr, out);
}

// gb[k] = sum over n, oh, ow of dy[n, k, oh, ow]: one channel per task, 8 running partial sums
// (vectorised) combined in a fixed order; bit-for-bit repeatable.
void conv2d_bias_grad(const at::Tensor& grad, const at::Tensor& out) {
  check_conv2d_bias_grad(grad, out);
  const int64_t N = grad.size(0), K = grad.size(1), P = grad.size(2) * grad.size(3);
  const at::Tensor gf = as_float(grad).permute({1, 0, 2, 3}).reshape({K, N, P});  // copies unless NCHW
  const float* src = gf.data_ptr<float>();
  const int64_t sk = gf.stride(0), sn = gf.stride(1), sp = gf.stride(2);
  at::Tensor res = at::empty({K}, out.options().dtype(at::kFloat));
  float* dst = res.data_ptr<float>();
  at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t n = 0; n < N; ++n) {
        const float* p = src + k * sk + n * sn;
        int64_t i = 0;
        if (sp == 1) {
          for (; i + 8 <= P; i += 8)
            for (int l = 0; l < 8; ++l) acc[l] += p[i + l];
        }
        for (; i < P; ++i) acc[i % 8] += p[i * sp];
      }
      dst[k] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
  });
  out.copy_(res);
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CPU, m) {
  m.impl("conv2d_fwd_kernel", &conv2d_fwd);
  m.impl("conv2d_input_grad_kernel", &conv2d_input_grad);
  m.impl("conv2d_weight_grad_kernel", &conv2d_weight_grad);
  m.impl("conv2d_bias_grad_kernel", &conv2d_bias_grad);
}

}  // namespace cpu
}  // namespace cnnfast
