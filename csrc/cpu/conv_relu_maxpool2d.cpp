// The fused conv2d + bias + ReLU + max_pool2d on the CPU. Forward: engine.h's fused_body computes the
// conv rows of each pool window into a row buffer and pools them there; only the pooled output and the
// compact window position `pos` are written. Backward: `unpool` rebuilds the conv-output gradient
// dy[n,k,oh,ow] from (grad, pos) as a gather (no atomics), which the conv2d gradient ops consume.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../ops.h"
#include "glue.h"

namespace cnnfast {
namespace cpu {
namespace {

void fused_fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
               at::IntArrayRef conv_out_size, at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
               at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation, const at::Tensor& out,
               const std::optional<at::Tensor>& pos) {
  const char* op = "conv_relu_maxpool2d_fwd_kernel";
  check_float(x, op, "input");
  TORCH_CHECK(conv_out_size.size() == 2, op, ": conv_out_size must have 2 elements");
  TORCH_CHECK(out.dim() == 4, op, ": out must be 4-D");
  ConvGeom g = conv_geom(op, x, weight, stride, padding, dilation, groups, conv_out_size[0], conv_out_size[1]);
  PoolGeom p = pool_geom(op, g.OH, g.OW, out.size(2), out.size(3), pool_kernel, pool_stride, pool_padding,
                         pool_dilation);
  check_out(out, x, op, "out", {g.N, g.K, p.OH, p.OW});
  if (pos.has_value()) {
    check_out(*pos, x, op, "pos", {g.N, g.K, p.OH, p.OW});
    const auto d = pos->scalar_type();
    TORCH_CHECK(d == at::kChar || d == at::kShort || d == at::kInt, op, ": pos must be int8, int16 or int32");
    TORCH_CHECK(p.kh * p.kw <= (d == at::kChar ? 127 : d == at::kShort ? 32767 : INT32_MAX), op,
                ": pos dtype too narrow for a ", p.kh, "x", p.kw, " window");
  }
  if (out.numel() == 0) return;
  const at::Tensor xf = as_float(x), wf = as_float(weight).contiguous();
  at::Tensor bf;
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.K, op, ": bias must have shape [", g.K, "]");
    bf = as_float(*bias).contiguous();
  }
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

// dy[n, k, oh, ow] (out: N, K, OH, OW) = sum over the pool windows holding (oh, ow) at tap (i, j) with
// pos == i * pkw + j of grad[n, k, ph, pw].
void unpool(const at::Tensor& grad, const at::Tensor& pos, at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
            at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation, const at::Tensor& out) {
  const char* op = "conv_relu_maxpool2d_unpool_kernel";
  check_tensor(grad, grad, op, "grad", 4);
  TORCH_CHECK(out.dim() == 4, op, ": out must be 4-D");
  const int64_t N = out.size(0), K = out.size(1);
  const PoolGeom p = pool_geom(op, out.size(2), out.size(3), grad.size(2), grad.size(3), pool_kernel, pool_stride,
                               pool_padding, pool_dilation);
  check_out(grad, out, op, "grad", {N, K, p.OH, p.OW});
  check_out(pos, out, op, "pos", {N, K, p.OH, p.OW});
  if (out.numel() == 0) return;
  const at::Tensor pos32 = pos.to(at::kInt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "unpool", [&] {
    using out_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "unpool_grad", [&] {
      const scalar_t* gp = grad.const_data_ptr<scalar_t>();
      const int32_t* pp = pos32.const_data_ptr<int32_t>();
      out_t* dst = out.data_ptr<out_t>();
      const int64_t gs0 = grad.stride(0), gs1 = grad.stride(1), gs2 = grad.stride(2), gs3 = grad.stride(3);
      const int64_t ps0 = pos32.stride(0), ps1 = pos32.stride(1), ps2 = pos32.stride(2), ps3 = pos32.stride(3);
      const int64_t os0 = out.stride(0), os1 = out.stride(1), os2 = out.stride(2), os3 = out.stride(3);
      at::parallel_for(0, N * K, 1, [&](int64_t begin, int64_t end) {
        for (int64_t nk = begin; nk < end; ++nk) {
          const int64_t n = nk / K, k = nk % K;
          const scalar_t* g = gp + n * gs0 + k * gs1;
          const int32_t* ps = pp + n * ps0 + k * ps1;
          out_t* o = dst + n * os0 + k * os1;
          if (p.kh == p.sh && p.kw == p.sw && p.dh == 1 && p.dw == 1 && p.ph == 0 && p.pw == 0) {
            // Non-overlapping windows (the Net's 2x2 / 2): a scatter is a gather here, one pass.
            for (int64_t h = 0; h < p.H; ++h)
              for (int64_t w = 0; w < p.W; ++w) o[h * os2 + w * os3] = out_t(0);
            for (int64_t ph = 0; ph < p.OH; ++ph)
              for (int64_t pw = 0; pw < p.OW; ++pw) {
                const int32_t q = ps[ph * ps2 + pw * ps3];
                if (q < 0) continue;
                const int64_t h = ph * p.sh + q / p.kw, w = pw * p.sw + q % p.kw;
                if (h < p.H && w < p.W) o[h * os2 + w * os3] = static_cast<out_t>(static_cast<float>(g[ph * gs2 + pw * gs3]));
              }
            continue;
          }
          for (int64_t h = 0; h < p.H; ++h)
            for (int64_t w = 0; w < p.W; ++w) {
              const float v = pool_gather(
                  p, h, w,
                  [&](int64_t oh, int64_t ow, int64_t i, int64_t j) { return ps[oh * ps2 + ow * ps3] == i * p.kw + j; },
                  [&](int64_t oh, int64_t ow) { return static_cast<float>(g[oh * gs2 + ow * gs3]); });
              o[h * os2 + w * os3] = static_cast<out_t>(v);
            }
        }
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CPU, m) {
  m.impl("conv_relu_maxpool2d_fwd_kernel", &fused_fwd);
  m.impl("conv_relu_maxpool2d_unpool_kernel", &unpool);
}

}  // namespace cpu
}  // namespace cnnfast
