// Host-side ATen helpers both backends' op code shares: the temporaries the kernels fill (poisoned
// when the test suite asks, like every output the Python launchers allocate), and the flipped weight
// of the input gradient run as a forward convolution (common/geometry.h: input_grad_as_forward).
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <limits>

namespace cnnfast {

// Whether the test suite asks for poisoned outputs: $CNNFAST_POISON=1.
inline bool poisoning() {
  const char* env = std::getenv("CNNFAST_POISON");
  return env && env[0] == '1' && env[1] == 0;
}

// `t` filled with NaN (all bytes 0xff for integer tensors) when poisoning, so that an element a kernel
// forgets to write cannot pass; `t` untouched otherwise.
inline at::Tensor poison(at::Tensor t) {
  if (poisoning()) {
    if (t.is_floating_point()) {
      t.fill_(std::numeric_limits<float>::quiet_NaN());
    } else {
      t.fill_(-1);
    }
  }
  return t;
}

// A temporary the kernels fill.
inline at::Tensor scratch(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return poison(at::empty(sizes, options));
}

// A tensor of `dtype` the kernels can write for `out`: `out` itself when it has that dtype, else a
// (poisoned) temporary in out's layout; finish() copies the temporary back, rounding to out's dtype.
struct OutAs {
  at::Tensor out, t;
  OutAs(const at::Tensor& o, at::ScalarType dtype)
      : out(o), t(o.scalar_type() == dtype ? o : poison(at::empty_like(o, o.options().dtype(dtype)))) {}
  void finish() {
    if (!t.is_same(out)) out.copy_(t);
  }
};

// The weight of the input gradient as a forward convolution (K, C/groups, R, S) -> (C, K/groups, R, S):
// wt[g*Cg + c][k][R-1-r][S-1-s] = w[g*Kg + k][c][r][s], contiguous.
inline at::Tensor flipped_weight(const at::Tensor& w, int64_t groups) {
  const int64_t Kg = w.size(0) / groups, Cg = w.size(1), R = w.size(2), S = w.size(3);
  return w.reshape({groups, Kg, Cg, R, S}).transpose(1, 2).flip({3, 4}).reshape({groups * Cg, Kg, R, S}).contiguous();
}

}  // namespace cnnfast
