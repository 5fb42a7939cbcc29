// Reduction block programs of the conv2d backward, all in a fixed order (no atomics): the results
// repeat bit for bit for a given shape.
//   WeightGradDirect  the weight gradient for small channel counts: a thread per weight element and
//                     split of the N*OH*OW pixels, summing dy * x over its range into ws[split][...]
//   BiasGradPartial   a block per (channel, split): 128 threads stride over the split's pixels, then
//                     thread 0 adds the 128 partial sums in order into ws[split][k]; with a window-
//                     position tensor, only the pooled cells whose pos >= 0 count (the fused op)
//   SplitReduce       out[i] = sum over splits of ws[split][i], in split order
#pragma once

#include "access.h"
#include "program.h"

namespace cnnfast {
namespace cuda {

// ws[split][k * crs + (c*R + r)*S + s] = sum over this split's pixels p = (n, oh, ow) of
// dy[n, k, oh, ow] * x[n, grp*Cg + c, oh*sh - ph + r*dh, ow*sw - pw + s*dw].
template <typename T>
struct WeightGradDirect : ElementwiseProgram {
  View<const T> x, dy;
  float* ws;
  ConvGeom g;
  idx per_split, splits;

  Grid grid() const { return Grid{blocks_for(g.K * g.Cg() * g.R * g.S, kThreads), splits, 1}; }
  std::string describe() const { return "wgrad_direct " + dtype_name(T()) + " splits=" + std::to_string(splits); }

  CNNFAST_HD void store(void*, Thread&, int tid, const Block& b) const {
    const idx Cg = static_cast<idx>(g.Cg()), Kg = static_cast<idx>(g.Kg());
    const idx R = static_cast<idx>(g.R), S = static_cast<idx>(g.S), crs = Cg * R * S;
    const idx e = b.x * kThreads + tid;
    if (e >= static_cast<idx>(g.K) * crs) return;
    const idx s = e % S, r = (e / S) % R, c = (e / (S * R)) % Cg, k = e / crs;
    const idx cx = (k / Kg) * Cg + c;
    const idx OW = static_cast<idx>(g.OW), OH = static_cast<idx>(g.OH), P = static_cast<idx>(g.N) * OH * OW;
    // p0 + per_split may pass INT32_MAX for the last split: compare the distances instead
    const idx p0 = b.y * per_split, p1 = per_split < P - p0 ? p0 + per_split : P;
    float acc = 0.f;
    for (idx p = p0; p < p1; ++p) {
      const idx ow = p % OW, oh = (p / OW) % OH, n = p / (OW * OH);
      const idx ih = oh * static_cast<idx>(g.sh) - static_cast<idx>(g.ph) + r * static_cast<idx>(g.dh);
      const idx iw = ow * static_cast<idx>(g.sw) - static_cast<idx>(g.pw) + s * static_cast<idx>(g.dw);
      if (ih < 0 || ih >= static_cast<idx>(g.H) || iw < 0 || iw >= static_cast<idx>(g.W)) continue;
      acc = fmaf(to_f(dy.at(n, k, oh, ow)), to_f(x.at(n, cx, ih, iw)), acc);
    }
    ws[static_cast<int64_t>(b.y) * g.K * crs + e] = acc;
  }
};

template <typename T>
struct BiasGradPartial {
  static constexpr int kThreads = 128;
  static constexpr bool kWarpCollective = false;
  struct Thread {
    float acc;
  };
  View<const T> dy;  // (N, K, OH, OW)
  PosView mask;      // p == null: every cell counts
  float* ws;         // [splits][K]
  idx N, K, OH, OW, per_split, splits;

  Grid grid() const { return Grid{K, splits, 1}; }
  std::string describe() const {
    return "bias_grad " + dtype_name(T()) + (mask.p ? " masked" : "") + " splits=" + std::to_string(splits);
  }
  size_t smem_bytes() const { return sizeof(float) * kThreads; }
  CNNFAST_HD int steps(const Block&) const { return 0; }

  CNNFAST_HD void begin(Thread& th, int tid, const Block& b) const {
    const idx k = b.x, P = N * OH * OW;
    const idx p0 = b.y * per_split, p1 = per_split < P - p0 ? p0 + per_split : P;
    float acc = 0.f;
    for (int64_t p64 = p0 + tid; p64 < p1; p64 += kThreads) {
      const idx p = static_cast<idx>(p64);
      const idx ow = p % OW, oh = (p / OW) % OH, n = p / (OW * OH);
      const float v = to_f(dy.at(n, k, oh, ow));
      acc += (mask.p && mask.load(n, k, oh, ow) < 0) ? 0.f : v;
    }
    th.acc = acc;
  }
  CNNFAST_HD void stage(void*, Thread&, int, const Block&, int) const {}
  CNNFAST_HD void compute(void*, Thread&, int, const Block&, int) const {}
  CNNFAST_HD void warp_compute(void*, Thread&, int, int, const Block&, int) const {}
  CNNFAST_HD void warp_finish(void* smem, Thread& th, int warp, int lane, const Block&) const {
    static_cast<float*>(smem)[warp * 32 + lane] = th.acc;
  }
  CNNFAST_HD void store(void* smem, Thread&, int tid, const Block& b) const {
    if (tid != 0) return;
    const float* part = static_cast<const float*>(smem);
    float s = 0.f;
    for (int i = 0; i < kThreads; ++i) s += part[i];
    ws[static_cast<int64_t>(b.y) * K + b.x] = s;
  }
};

// out (a 4-D view of d0 x d1 x d2 x d3 = total elements, any strides) = the splits summed in order.
template <typename T>
struct SplitReduce : ElementwiseProgram {
  const float* ws;
  idx splits, total, d1, d2, d3;
  View<T> out;

  Grid grid() const { return Grid{blocks_for(total, kThreads), 1, 1}; }
  std::string describe() const { return "split_reduce " + dtype_name(T()) + " splits=" + std::to_string(splits); }

  CNNFAST_HD void store(void*, Thread&, int tid, const Block& b) const {
    const idx i = b.x * kThreads + tid;
    if (i >= total) return;
    float acc = 0.f;
    for (idx sp = 0; sp < splits; ++sp) acc += ws[static_cast<int64_t>(sp) * total + i];
    out.at(i / (d1 * d2 * d3), (i / (d2 * d3)) % d1, (i / d3) % d2, i % d3) = from_f<T>(acc);
  }
};

}  // namespace cuda
}  // namespace cnnfast
