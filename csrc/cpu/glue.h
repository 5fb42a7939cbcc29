// ATen-side helpers of the CPU ops: float32 views for the engine, the (poisoned) float32 output
// temporaries, the per-channel sums of the bias gradients, and the thread pool.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "../common/host.h"
#include "engine_api.h"

namespace cnnfast {
namespace cpu {

// The tensor as float32 (a copy only when it is not float32 already; strides kept otherwise).
inline at::Tensor as_float(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

inline View4 view4(const at::Tensor& t) {
  TORCH_INTERNAL_ASSERT(t.scalar_type() == at::kFloat && t.dim() == 4);
  return View4{t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// A float32 tensor the engine can write for `out` (`t`): `out` itself when float32, else a float32
// temporary in out's layout, poisoned like every output; finish() copies it back (rounding).
struct FloatOut : OutAs {
  explicit FloatOut(const at::Tensor& o) : OutAs(o, at::kFloat) {}
};

inline void parallel(int64_t count, void* ctx, Body body) {
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) { body(ctx, begin, end); });
}

// Adds value(i) for i in [0, count) to the running partial sum i % 8, in ascending i (vectorised
// when value reads consecutive memory).
template <class Value>
inline void add_to_lanes(float (&acc)[8], int64_t count, Value value) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += value(i + l);
  for (; i < count; ++i) acc[i % 8] += value(i);
}

// out[k] = the sum over n of plane(k, n, acc)'s contributions (add_to_lanes into acc): one channel
// per task, 8 running partial sums combined in a fixed order; bit-for-bit repeatable.
template <class Plane>
inline void channel_sums(int64_t K, int64_t N, const at::Tensor& out, Plane plane) {
  at::Tensor res = scratch({K}, out.options().dtype(at::kFloat));
  float* dst = res.data_ptr<float>();
  at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t n = 0; n < N; ++n) plane(k, n, acc);
      dst[k] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
  });
  out.copy_(res);
}

// The conv gradients (conv2d.cpp) of the conv with geometry f / g, from a dense float32 dy or, when
// u is given, from the fused op's pooled gradient (dy then never exists): writes `out`.
void input_grad(const ConvGeom& f, const View4& dy, const Unpooled* u, const at::Tensor& weight, const at::Tensor& out);
void weight_grad(const ConvGeom& g, const at::Tensor& x, const View4& dy, const Unpooled* u, const at::Tensor& out);

}  // namespace cpu
}  // namespace cnnfast
