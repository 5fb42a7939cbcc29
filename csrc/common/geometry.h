// The math both devices must agree on, written once as __host__ __device__ functions: the argument
// structs the ops pass to their kernels, PyTorch's max-pool rule (running max from -inf, replaced when
// `val > max || isnan(val)`: NaN propagates, ties keep the first maximum), the gather form of every
// pooling backward (no atomics), and the rounding of a float32 conv output to float16 / bfloat16 that
// the fused op applies before ReLU and pooling (as the unfused ops would see the stored value).
//
// Plain C++ with no includes beyond <cstdint>: the CPU vector engine includes it inside per-ISA
// namespaces, the CUDA kernels include it as is. Every offset is int64_t.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define CNNFAST_HD __host__ __device__ __forceinline__
#else
#define CNNFAST_HD inline
#endif

namespace cnnfast {

// Geometry of a convolution, normalised by the front end: padding is (top, left); the bottom/right
// padding is implied by the output size.
struct ConvGeom {
  int64_t N, C, H, W;     // input
  int64_t K, R, S;        // weight (K, C / groups, R, S)
  int64_t OH, OW;         // output
  int64_t groups;
  int64_t sh, sw, ph, pw, dh, dw;
  CNNFAST_HD int64_t Cg() const { return C / groups; }
  CNNFAST_HD int64_t Kg() const { return K / groups; }
};

// The input gradient of the conv `f` as a forward convolution, the form both backends run it in: a
// stride-1 conv of dy (N, K, OH, OW) zero-upsampled by the stride, padded by (R-1)*dh - ph (negative:
// a crop), with the flipped weight (host.h: flipped_weight), producing (N, C, H, W).
CNNFAST_HD ConvGeom input_grad_as_forward(const ConvGeom& f) {
  ConvGeom t;
  t.N = f.N, t.C = f.K, t.H = (f.OH - 1) * f.sh + 1, t.W = (f.OW - 1) * f.sw + 1;
  t.K = f.C, t.R = f.R, t.S = f.S, t.OH = f.H, t.OW = f.W, t.groups = f.groups;
  t.sh = 1, t.sw = 1, t.dh = f.dh, t.dw = f.dw;
  t.ph = (f.R - 1) * f.dh - f.ph, t.pw = (f.S - 1) * f.dw - f.pw;
  return t;
}

// Geometry of a max-pool over a (H, W) plane producing (OH, OW); padding is (top, left).
struct PoolGeom {
  int64_t H, W, OH, OW;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// ---- PyTorch's max-pool rule ---------------------------------------------------------------------

// Whether `val` replaces the running maximum `best` (NaN always does: the last NaN wins).
CNNFAST_HD bool pool_takes(float val, float best) { return val > best || val != val; }

// First in-range tap of a window starting at `start` (may be negative) with dilation `d`: PyTorch's
// initial choice of index, kept only when every value in the window is -inf.
CNNFAST_HD int64_t first_in_range(int64_t start, int64_t d) {
  return start < 0 ? (d - 1 - start) / d : 0;
}

// Max-pool one window of a plane: `load(h, w)` returns the value as float. Returns the maximum in
// `best` and its flattened index h * W + w in `best_idx`. Padded cells are never read.
template <class Load>
CNNFAST_HD void pool_window(const PoolGeom& g, int64_t oh, int64_t ow, Load load, float& best,
                            int64_t& best_idx) {
  const int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
  best = -__builtin_huge_valf();
  best_idx = (h0 + first_in_range(h0, g.dh) * g.dh) * g.W + (w0 + first_in_range(w0, g.dw) * g.dw);
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t h = h0 + i * g.dh;
    if (h < 0 || h >= g.H) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t w = w0 + j * g.dw;
      if (w < 0 || w >= g.W) continue;
      const float v = load(h, w);
      if (pool_takes(v, best)) {
        best = v;
        best_idx = h * g.W + w;
      }
    }
  }
}

// The gather form of a pooling backward: the gradient of input cell (h, w) is the sum, in ascending
// (oh, ow) order, of grad(oh, ow) over the windows that contain (h, w) at tap (i, j) and chose it
// (`chose(oh, ow, i, j)`). A cell is tap (i, j) of window (oh, ow) iff h = oh*sh - ph + i*dh, so each
// tap names at most one window. Visiting taps from last to first visits windows in ascending order.
template <class Chose, class Grad>
CNNFAST_HD float pool_gather(const PoolGeom& g, int64_t h, int64_t w, Chose chose, Grad grad) {
  float acc = 0.f;
  for (int64_t ii = g.kh - 1; ii >= 0; --ii) {
    const int64_t oh_num = h + g.ph - ii * g.dh;
    if (oh_num < 0 || oh_num % g.sh != 0) continue;
    const int64_t oh = oh_num / g.sh;
    if (oh >= g.OH) continue;
    for (int64_t jj = g.kw - 1; jj >= 0; --jj) {
      const int64_t ow_num = w + g.pw - jj * g.dw;
      if (ow_num < 0 || ow_num % g.sw != 0) continue;
      const int64_t ow = ow_num / g.sw;
      if (ow >= g.OW) continue;
      if (chose(oh, ow, ii, jj)) acc += grad(oh, ow);
    }
  }
  return acc;
}

// ---- rounding a float32 value to a 16-bit float and back (round to nearest even) ------------------

enum RoundMode : int { kRoundNone = 0, kRoundBF16 = 1, kRoundFP16 = 2 };

CNNFAST_HD uint32_t float_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return u;
}

CNNFAST_HD float bits_float(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

CNNFAST_HD float round_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return f;  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bits_float(u & 0xffff0000u);
}

CNNFAST_HD float round_fp16(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t sign = u & 0x80000000u;
  uint32_t a = u ^ sign;
  if (a >= 0x7f800000u) return f;                             // inf, NaN
  if (a >= 0x477ff000u) return bits_float(sign | 0x7f800000u);  // >= 65520 rounds to inf
  if (a < 0x38800000u) {                                      // below 2^-14: half subnormals, step 2^-24
    const float big = bits_float(a) + 0.5f;                   // the float ulp at 0.5 is 2^-24
    return bits_float(sign | float_bits(big - 0.5f));
  }
  a += 0xfffu + ((a >> 13) & 1u);
  return bits_float(sign | (a & 0xffffe000u));
}

CNNFAST_HD float round_to(float f, int mode) {
  return mode == kRoundBF16 ? round_bf16(f) : mode == kRoundFP16 ? round_fp16(f) : f;
}

// ReLU that keeps NaN, as torch.relu does.
CNNFAST_HD float relu_keep_nan(float v) { return v < 0.f ? 0.f : v; }

}  // namespace cnnfast
