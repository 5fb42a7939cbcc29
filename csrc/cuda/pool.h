// The pooling block programs: max_pool2d forward and backward, and the fused op's unpool. One thread
// per output element (forward) or input element (backward, unpool); the window scan and the gather
// are common/geometry.h's, shared with the CPU kernels. The backwards are gathers: no atomics.
#pragma once

#include "access.h"
#include "program.h"

namespace cnnfast {
namespace cuda {

template <typename T>
struct MaxPoolFwd : ElementwiseProgram {
  View<const T> x;
  View<T> out;
  View<int64_t> indices;  // p == null: not wanted
  idx N, C;
  PoolGeom p;

  Grid grid() const { return Grid{blocks_for(static_cast<int64_t>(N) * C * p.OH * p.OW, kThreads), 1, 1}; }
  std::string describe() const { return "max_pool2d_fwd " + dtype_name(T()); }

  CNNFAST_HD void store(void*, Thread&, int tid, const Block& b) const {
    const idx i = b.x * kThreads + tid;
    const idx OW = static_cast<idx>(p.OW), OH = static_cast<idx>(p.OH);
    if (i >= N * C * OH * OW) return;
    const idx ow = i % OW, oh = (i / OW) % OH, c = (i / (OW * OH)) % C, n = i / (OW * OH * C);
    float best;
    int64_t best_idx;
    pool_window(p, oh, ow, [&](int64_t h, int64_t w) { return to_f(x.at(n, c, h, w)); }, best, best_idx);
    out.at(n, c, oh, ow) = from_f<T>(best);
    if (indices.p) indices.at(n, c, oh, ow) = best_idx;
  }
};

// A thread per cell (n, c, h, w) of the pooling's input planes (N, C, p.H, p.W): the backward gathers.
struct PerInputCell : ElementwiseProgram {
  idx N, C;
  PoolGeom p;

  Grid grid() const { return Grid{blocks_for(static_cast<int64_t>(N) * C * p.H * p.W, kThreads), 1, 1}; }

  // The cell of thread `tid` of block `b`; false past the last one.
  CNNFAST_HD bool cell(int tid, const Block& b, idx& n, idx& c, idx& h, idx& w) const {
    const idx i = b.x * kThreads + tid;
    const idx W = static_cast<idx>(p.W), H = static_cast<idx>(p.H);
    if (i >= N * C * H * W) return false;
    w = i % W, h = (i / W) % H, c = (i / (W * H)) % C, n = i / (W * H * C);
    return true;
  }
};

template <typename T>
struct MaxPoolBwd : PerInputCell {
  View<const T> grad;
  View<const int64_t> indices;
  View<T> out;

  std::string describe() const { return "max_pool2d_bwd " + dtype_name(T()); }

  CNNFAST_HD void store(void*, Thread&, int tid, const Block& b) const {
    idx n, c, h, w;
    if (!cell(tid, b, n, c, h, w)) return;
    const int64_t target = static_cast<int64_t>(h) * p.W + w;
    const float v = pool_gather(
        p, h, w, [&](int64_t oh, int64_t ow, int64_t, int64_t) { return indices.at(n, c, oh, ow) == target; },
        [&](int64_t oh, int64_t ow) { return to_f(grad.at(n, c, oh, ow)); });
    out.at(n, c, h, w) = from_f<T>(v);
  }
};

// dy[n, k, h, w] (float32; k: the cell's channel c) = sum over the pool windows holding conv output
// (h, w) at tap (i, j) with pos == i * pkw + j of grad[n, k, ph, pw].
template <typename T>
struct Unpool : PerInputCell {
  View<const T> grad;
  PosView pos;
  View<float> dy;

  std::string describe() const { return "unpool " + dtype_name(T()); }

  CNNFAST_HD void store(void*, Thread&, int tid, const Block& b) const {
    idx n, k, h, w;
    if (!cell(tid, b, n, k, h, w)) return;
    dy.at(n, k, h, w) = pool_gather(
        p, h, w,
        [&](int64_t oh, int64_t ow, int64_t ii, int64_t jj) { return pos.load(n, k, oh, ow) == ii * p.kw + jj; },
        [&](int64_t oh, int64_t ow) { return to_f(grad.at(n, k, oh, ow)); });
  }
};

}  // namespace cuda
}  // namespace cnnfast
