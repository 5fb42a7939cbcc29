// The fused conv2d + bias + ReLU + max_pool2d on the CPU. Forward: engine.h's fused_body computes the
// conv rows of each pool window into a row buffer and pools them there; only the pooled output and the
// compact window position `pos` are written. Backward: `unpool` rebuilds the conv-output gradient
// dy[n,k,oh,ow] from (grad, pos) as a gather (no atomics), which the conv2d gradient ops consume;
// `bias_grad` sums the kept pooled gradients straight from (grad, pos).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cstring>
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

// dy[n, k, oh, ow] (out: N, K, OH, OW) = sum over the pool windows holding (oh, ow) at tap (i, j) with
// pos == i * pkw + j of grad[n, k, ph, pw].
void unpool(const at::Tensor& grad, const at::Tensor& pos, at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
            at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation, const at::Tensor& out) {
  const PoolGeom p = check_unpool(grad, pos, pool_kernel, pool_stride, pool_padding, pool_dilation, out);
  const int64_t N = out.size(0), K = out.size(1);
  if (out.numel() == 0) return;
  const bool disjoint = p.kh == p.sh && p.kw == p.sw && p.dh == 1 && p.dw == 1 && p.ph == 0 && p.pw == 0;
  std::vector<int64_t> tap_i(disjoint ? p.kh * p.kw : 0), tap_j(disjoint ? p.kh * p.kw : 0);
  for (int64_t q = 0; q < (int64_t)tap_i.size(); ++q) tap_i[q] = q / p.kw, tap_j[q] = q % p.kw;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "unpool", [&] {
    using out_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "unpool_grad", [&] {
      using grad_t = scalar_t;
      AT_DISPATCH_INTEGRAL_TYPES(pos.scalar_type(), "unpool_pos", [&] {
        using pos_t = scalar_t;
        const grad_t* gp = grad.const_data_ptr<grad_t>();
        const pos_t* pp = pos.const_data_ptr<pos_t>();
        out_t* dst = out.data_ptr<out_t>();
        const int64_t gs0 = grad.stride(0), gs1 = grad.stride(1), gs2 = grad.stride(2), gs3 = grad.stride(3);
        const int64_t ps0 = pos.stride(0), ps1 = pos.stride(1), ps2 = pos.stride(2), ps3 = pos.stride(3);
        const int64_t os0 = out.stride(0), os1 = out.stride(1), os2 = out.stride(2), os3 = out.stride(3);
        at::parallel_for(0, N * K, 1, [&](int64_t begin, int64_t end) {
          for (int64_t nk = begin; nk < end; ++nk) {
            const int64_t n = nk / K, k = nk % K;
            const grad_t* g = gp + n * gs0 + k * gs1;
            const pos_t* ps = pp + n * ps0 + k * ps1;
            out_t* o = dst + n * os0 + k * os1;
            if (disjoint) {
              // Non-overlapping windows (the Net's 2x2 / 2): per pooled row, zero the conv rows of its
              // windows, then write the chosen tap of each window (tap -> (i, j) from a table: no
              // divisions in the loop); rows below the last window are zeros.
              auto zero_row = [&](int64_t h) {
                out_t* orow = o + h * os2;
                if (os3 == 1) {
                  std::memset(static_cast<void*>(orow), 0, sizeof(out_t) * p.W);
                } else {
                  for (int64_t w = 0; w < p.W; ++w) orow[w * os3] = out_t(0);
                }
              };
              for (int64_t ph = 0; ph < p.OH; ++ph) {
                const int64_t h0 = ph * p.sh;
                for (int64_t i = 0; i < p.kh && h0 + i < p.H; ++i) zero_row(h0 + i);
                const pos_t* prow = ps + ph * ps2;
                const grad_t* grow = g + ph * gs2;
                for (int64_t pw = 0; pw < p.OW; ++pw) {
                  // Branch-free (kept and dropped cells are mixed at random): a dropped cell (pos -1)
                  // writes its zero onto tap 0, which is zero already.
                  const int64_t q0 = (int64_t)prow[pw * ps3];
                  const bool keep = q0 >= 0 && q0 < p.kh * p.kw;
                  const int64_t q = keep ? q0 : 0;
                  const int64_t h = h0 + tap_i[q], w = pw * p.sw + tap_j[q];
                  const float v = keep ? static_cast<float>(grow[pw * gs3]) : 0.f;
                  if (h < p.H && w < p.W) o[h * os2 + w * os3] = static_cast<out_t>(v);
                }
              }
              for (int64_t h = p.OH * p.sh; h < p.H; ++h) zero_row(h);
              continue;
            }
            for (int64_t h = 0; h < p.H; ++h)
              for (int64_t w = 0; w < p.W; ++w) {
                const float v = pool_gather(
                    p, h, w,
                    [&](int64_t oh, int64_t ow, int64_t i, int64_t j) {
                      return (int64_t)ps[oh * ps2 + ow * ps3] == i * p.kw + j;
                    },
                    [&](int64_t oh, int64_t ow) { return static_cast<float>(g[oh * gs2 + ow * gs3]); });
                o[h * os2 + w * os3] = static_cast<out_t>(v);
              }
          }
        });
      });
    });
  });
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
  m.impl("conv_relu_maxpool2d_unpool_kernel", &unpool);
  m.impl("conv_relu_maxpool2d_bias_grad_kernel", &bias_grad);
}

}  // namespace cpu
}  // namespace cnnfast
