// max_pool2d on the CPU: the forward (values and optional int64 indices, PyTorch's rule) in the vector
// engine (engine/max_pool2d.h: max_pool2d_forward_impl), the backward a scatter in the gather's summation order; parallel
// over the N*C planes.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "../ops.h"
#include "glue.h"

namespace cnnfast {
namespace cpu {
namespace impl {  // what ops.h's entry points call (ops::<op>_kernel<&impl::<op>>)

// The scalar forward (planes of 2^31 elements and more, whose indices the vector engine's int32 lanes
// cannot hold): pool_window per output element.
template <typename scalar_t>
void max_pool2d_forward_scalar(const at::Tensor& x, const PoolGeom& p, const at::Tensor& out, int64_t* idx,
                           const int64_t* is) {
  const int64_t N = x.size(0), C = x.size(1);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* op_ = out.data_ptr<scalar_t>();
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1), xs2 = x.stride(2), xs3 = x.stride(3);
  const int64_t os0 = out.stride(0), os1 = out.stride(1), os2 = out.stride(2), os3 = out.stride(3);
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / C, c = nc % C;
      const scalar_t* plane = xp + n * xs0 + c * xs1;
      for (int64_t oh = 0; oh < p.OH; ++oh)
        for (int64_t ow = 0; ow < p.OW; ++ow) {
          float best;
          int64_t best_idx;
          pool_window(p, oh, ow, [&](int64_t h, int64_t w) { return static_cast<float>(plane[h * xs2 + w * xs3]); },
                      best, best_idx);
          op_[n * os0 + c * os1 + oh * os2 + ow * os3] = static_cast<scalar_t>(best);
          if (idx) idx[n * is[0] + c * is[1] + oh * is[2] + ow * is[3]] = best_idx;
        }
    }
  });
}

void max_pool2d_forward(const MaxPool2dForward& a) {
  const at::Tensor& x = a.x;
  const PoolGeom& p = a.p;
  int64_t* idx = nullptr;
  int64_t is[4] = {0, 0, 0, 0};
  if (a.indices.has_value()) {
    idx = a.indices->data_ptr<int64_t>();
    for (int d = 0; d < 4; ++d) is[d] = a.indices->stride(d);
  }
  if (p.H * p.W >= (int64_t{1} << 31)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d_forward_kernel",
                                    [&] { max_pool2d_forward_scalar<scalar_t>(x, p, a.out, idx, is); });
    return;
  }
  const at::Tensor xf = as_float(x);
  FloatOut y(a.out);
  MaxPool2dForwardArgs f;
  f.x = view4(xf);
  f.out = view4(y.t);
  f.N = x.size(0), f.C = x.size(1);
  f.p = p;
  f.idx = idx;
  f.is0 = is[0], f.is1 = is[1], f.is2 = is[2], f.is3 = is[3];
  cpu::max_pool2d_forward(f, parallel);
  y.finish();
}

// The gradient of each plane as a scatter of the pooled gradient to the chosen cells, windows in
// ascending (oh, ow) order: the summation order of geometry.h's gather, so the same bits, without
// a window scan per input cell. Indices outside the plane are refused.
void max_pool2d_backward(const MaxPool2dBackward& a) {
  const at::Tensor &grad = a.grad, &indices = a.indices, &out = a.out;
  const PoolGeom& p = a.p;
  const int64_t N = out.size(0), C = out.size(1), HW = p.H * p.W;
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "max_pool2d_backward_kernel", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const int64_t* ip = indices.const_data_ptr<int64_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const int64_t gs0 = grad.stride(0), gs1 = grad.stride(1), gs2 = grad.stride(2), gs3 = grad.stride(3);
    const int64_t is0 = indices.stride(0), is1 = indices.stride(1), is2 = indices.stride(2), is3 = indices.stride(3);
    const int64_t os0 = out.stride(0), os1 = out.stride(1), os2 = out.stride(2), os3 = out.stride(3);
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(HW);
      for (int64_t nc = begin; nc < end; ++nc) {
        const int64_t n = nc / C, c = nc % C;
        const scalar_t* g = gp + n * gs0 + c * gs1;
        const int64_t* ix = ip + n * is0 + c * is1;
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t oh = 0; oh < p.OH; ++oh)
          for (int64_t ow = 0; ow < p.OW; ++ow) {
            const int64_t t = ix[oh * is2 + ow * is3];
            if (t < 0 || t >= HW) {
              bad = true;
              continue;
            }
            acc[t] += static_cast<float>(g[oh * gs2 + ow * gs3]);
          }
        scalar_t* o = dst + n * os0 + c * os1;
        for (int64_t h = 0; h < p.H; ++h)
          for (int64_t w = 0; w < p.W; ++w) o[h * os2 + w * os3] = static_cast<scalar_t>(acc[h * p.W + w]);
      }
    });
  });
  TORCH_CHECK(!bad, "max_pool2d_backward_kernel: indices outside the input plane of ", p.H, "x", p.W);
}

}  // namespace impl

TORCH_LIBRARY_IMPL(cnnfast, CPU, m) {
  m.impl("max_pool2d_forward_kernel", &ops::max_pool2d_forward_kernel<&impl::max_pool2d_forward>);
  m.impl("max_pool2d_backward_kernel", &ops::max_pool2d_backward_kernel<&impl::max_pool2d_backward>);
}

}  // namespace cpu
}  // namespace cnnfast
