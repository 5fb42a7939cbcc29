// Direct-convolution building blocks shared by conv2d.cu and conv_relu_maxpool2d.cu.
//
// A thread owns one output pixel and KB output channels (acc[KB] in registers). The weights of its
// block's KB channels are staged in shared memory a slice of CB input channels at a time
// (w_s[k][c][r][s], float), loaded cooperatively by the block; every thread then walks the slice's
// taps, loading each input value once and issuing KB FMAs with it. This is the small-channel path
// (the Net's 3->6 and 6->16 layers), where tensor-core tiles would be mostly padding.
#pragma once

#include "common.cuh"

namespace cnnfast {
namespace cuda {

constexpr int kKB = 8;               // output channels per thread
constexpr int kSmemFloats = 4096;    // 16 KiB of staged weights per block

// Input channels per shared-memory slice for KB channels of an R x S kernel.
inline int64_t slice_channels(int64_t Cg, int64_t R, int64_t S) {
  int64_t cb = kSmemFloats / (kKB * R * S);
  if (cb < 1) cb = 1;
  return cb < Cg ? cb : Cg;
}

// w_s[((k*cb + c)*R + r)*S + s] = w[(k_base + k), c0 + c, r, s] (w contiguous (K, Cg, R, S)), 0 past Kend.
template <typename T>
__device__ __forceinline__ void stage_weights(float* w_s, const T* w, int64_t k_base, int64_t k_end, int64_t Cg,
                                              int64_t c0, int64_t cb, int64_t RS) {
  const int64_t count = kKB * cb * RS;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    const int64_t rs = i % RS, c = (i / RS) % cb, k = i / (RS * cb);
    w_s[i] = (k_base + k < k_end) ? to_f(w[((k_base + k) * Cg + c0 + c) * RS + rs]) : 0.f;
  }
}

// acc[k] += sum over c < cb, r, s of x[n, cx0 + c, ih0 + r*dh, iw0 + s*dw] * w_s[k][c][r][s]
// (x zero outside [0, H) x [0, W)).
template <typename T>
__device__ __forceinline__ void accumulate_taps(float (&acc)[kKB], const View<const T>& x, const float* w_s,
                                                int64_t n, int64_t cx0, int64_t cb, int64_t ih0, int64_t iw0,
                                                const ConvGeom& g) {
  for (int64_t c = 0; c < cb; ++c) {
    for (int64_t r = 0; r < g.R; ++r) {
      const int64_t ih = ih0 + r * g.dh;
      if (ih < 0 || ih >= g.H) continue;
      for (int64_t s = 0; s < g.S; ++s) {
        const int64_t iw = iw0 + s * g.dw;
        if (iw < 0 || iw >= g.W) continue;
        const float xv = to_f(x.at(n, cx0 + c, ih, iw));
        const float* ws = w_s + (c * g.R + r) * g.S + s;
#pragma unroll
        for (int k = 0; k < kKB; ++k) acc[k] = fmaf(xv, ws[k * cb * g.R * g.S], acc[k]);
      }
    }
  }
}

}  // namespace cuda
}  // namespace cnnfast
