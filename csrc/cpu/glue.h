// ATen-side helpers of the CPU ops: float32 views for the engine, and the thread pool.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "engine_api.h"

namespace cnnfast {
namespace cpu {

// The tensor as float32 (a copy only when it is not float32 already; strides kept otherwise).
inline at::Tensor as_float(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

inline View4 view4(const at::Tensor& t) {
  TORCH_INTERNAL_ASSERT(t.scalar_type() == at::kFloat && t.dim() == 4);
  return View4{t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// A float32 tensor the engine can write for `out`: `out` itself when float32, else a float32
// temporary in out's layout; finish() copies the temporary back (rounding to out's dtype).
struct FloatOut {
  at::Tensor out, f;
  explicit FloatOut(const at::Tensor& o) : out(o), f(o.scalar_type() == at::kFloat ? o : at::empty_like(o, o.options().dtype(at::kFloat))) {}
  void finish() {
    if (!f.is_same(out)) out.copy_(f);
  }
};

inline void parallel(int64_t count, void* ctx, Body body) {
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) { body(ctx, begin, end); });
}

// The conv gradients (conv2d.cpp) of the conv with geometry f / g, from a dense float32 dy or, when
// u is given, from the fused op's pooled gradient (dy then never exists): writes `out`.
void input_grad(const ConvGeom& f, const View4& dy, const Unpooled* u, const at::Tensor& weight, const at::Tensor& out);
void weight_grad(const ConvGeom& g, const at::Tensor& x, const View4& dy, const Unpooled* u, const at::Tensor& out);

}  // namespace cpu
}  // namespace cnnfast
