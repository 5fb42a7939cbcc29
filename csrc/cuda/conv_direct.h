// Direct convolution for small channel counts (the Net's 3->6 and 6->16 layers, depthwise convs),
// where tensor-core tiles would be mostly padding. One block program serves three ops:
//   conv2d forward (POOL = false), y = conv(x, w) + bias;
//   the fused forward (POOL = true): max_pool2d(relu(round(conv(x, w) + bias))) with only the pooled
//     value and its window position written (the conv output never reaches memory);
//   the conv2d input gradient, run as a forward convolution of dy zero-upsampled by the stride
//     (xs[t] = dy[t / up] when up divides t, else 0) with the flipped, transposed weight.
//
// A thread owns one output pixel (for POOL: one pooled pixel) and 8 output channels, with their
// accumulators (POOL: also the running max and its tap) in registers. A block of 128 threads is
// `kgroups` groups of 8 channels x `pix` pixels, the pixels a band of TH x TW of `imgs` images, so
// that small images share a block. Per step the block stages in shared memory, as float32, the
// weights of its channels for a slice of `cb` input channels, and (PATCH) the input patch the band
// reads for that slice, zeros in the padding; the taps then read only shared memory, without bounds
// checks. Where even one channel's patch would not fit (huge dilation), PATCH = false reads the input
// from global memory with bounds checks. The weights are staged channel-fastest, so that a thread's 8
// weights of a tap are one 32-byte run (vector loads, the same address across the warp).
//
// POOL with one slice computes every window tap in one step; with several slices, step s is tap
// s / slices of slice s % slices (the weights and patch are staged again per tap: only wide inputs
// with small outputs take that road).
#pragma once

#include "access.h"
#include "program.h"

namespace cnnfast {
namespace cuda {

constexpr int kDirectThreads = 128;
constexpr int kDirectKB = 8;                    // output channels per thread
constexpr int kDirectSmemFloats = 40 * 1024 / 4;  // 40 KiB: under the default 48 KiB per block

template <typename T>
struct DirectArgs {
  View<const T> x;       // the input as stored (dy for the input gradient)
  idx Hx, Wx, up_h, up_w;  // its size, and the zero-upsampling the conv sees (1: none)
  const T* w;            // contiguous (K, C/g, R, S)
  const T* bias;         // K values or null
  View<T> out;           // (N, K, OH, OW); POOL: pooled
  PosView pos;           // POOL: window positions (p == null: not wanted)
  ConvGeom g;            // g.H, g.W: the (upsampled) input size the conv sees; padding may be negative
  PoolGeom p;            // POOL: the pool over the conv output; else the 1x1 identity
  // The plan (host): channel groups and pixels per block, the band, channel slices, patch size.
  idx kgroups, pix, TH, TW, imgs, tiles_h, tiles_w, kblocks, cb, slices, PHh, PWw;
};

template <typename T, bool POOL, bool PATCH>
struct DirectConv {
  static constexpr int kThreads = kDirectThreads;
  static constexpr bool kWarpCollective = false;
  static constexpr int KB = kDirectKB;

  struct Thread {
    float acc[KB];
    float best[KB];
    int32_t q[KB];
    idx n, ph, pw;  // the thread's (pooled) output pixel
    bool active;
  };

  DirectArgs<T> a;

  // Block x = tile + tiles * (channel block + kblocks * group): depthwise convs have more groups than
  // grid y and z allow.
  CNNFAST_HD idx tiles() const {
    return ((static_cast<idx>(a.g.N) + a.imgs - 1) / a.imgs) * a.tiles_h * a.tiles_w;
  }
  CNNFAST_HD idx kblock(const Block& b) const { return (b.x / tiles()) % a.kblocks; }
  CNNFAST_HD idx group(const Block& b) const { return b.x / tiles() / a.kblocks; }
  Grid grid() const { return Grid{static_cast<int64_t>(tiles()) * a.kblocks * a.g.groups, 1, 1}; }
  size_t w_floats() const { return static_cast<size_t>(a.kgroups) * KB * a.cb * a.g.R * a.g.S; }
  size_t smem_bytes() const {
    const size_t patch = PATCH ? static_cast<size_t>(a.imgs) * a.cb * a.PHh * a.PWw : 0;
    return align16(sizeof(float) * w_floats()) + sizeof(float) * patch;
  }

  std::string describe() const {
    return std::string("direct ") + (POOL ? "pool " : "conv ") + dtype_name(T()) + (PATCH ? " patch" : " global") +
           " kgroups=" + std::to_string(a.kgroups) + " slices=" + std::to_string(a.slices) +
           (a.up_h > 1 || a.up_w > 1 ? " upsampled" : "");
  }

  CNNFAST_HD idx taps() const { return POOL ? static_cast<idx>(a.p.kh * a.p.kw) : 1; }
  CNNFAST_HD int steps(const Block&) const {
    if (!POOL) return a.slices;
    return a.slices == 1 ? 1 : taps() * a.slices;
  }

  // The block's band: image group, first (pooled) row and column.
  CNNFAST_HD void band(const Block& b, idx& ig, idx& r0, idx& c0) const {
    const idx tile = b.x % tiles();
    const idx tw = tile % a.tiles_w, th = (tile / a.tiles_w) % a.tiles_h;
    ig = tile / (a.tiles_w * a.tiles_h);
    r0 = th * a.TH;
    c0 = tw * a.TW;
  }
  // The upsampled-input coordinate of the band's patch origin (row, col) for slice staging and reads.
  CNNFAST_HD idx patch_row0(idx r0) const {
    return (r0 * static_cast<idx>(a.p.sh) - static_cast<idx>(a.p.ph)) * static_cast<idx>(a.g.sh) - static_cast<idx>(a.g.ph);
  }
  CNNFAST_HD idx patch_col0(idx c0) const {
    return (c0 * static_cast<idx>(a.p.sw) - static_cast<idx>(a.p.pw)) * static_cast<idx>(a.g.sw) - static_cast<idx>(a.g.pw);
  }
  // xs(n, c, t_h, t_w): the input the conv sees (zero-upsampled, zero outside).
  CNNFAST_HD float xs(idx n, idx c, idx th, idx tw) const {
    if (th < 0 || tw < 0 || th >= static_cast<idx>(a.g.H) || tw >= static_cast<idx>(a.g.W)) return 0.f;
    const idx h = a.up_h == 1 ? th : th / a.up_h, w = a.up_w == 1 ? tw : tw / a.up_w;
    if (h * a.up_h != th || w * a.up_w != tw) return 0.f;
    return to_f(a.x.at(n, c, h, w));
  }

  CNNFAST_HD void begin(Thread& th, int tid, const Block& b) const {
    idx ig, r0, c0;
    band(b, ig, r0, c0);
    const idx l = tid % a.pix, band_pix = a.imgs * a.TH * a.TW;
    const idx il = l / (a.TH * a.TW), y = (l / a.TW) % a.TH, x = l % a.TW;
    th.n = ig * a.imgs + il;
    th.ph = r0 + y;
    th.pw = c0 + x;
    th.active = l < band_pix && th.n < static_cast<idx>(a.g.N) && th.ph < static_cast<idx>(a.p.OH) &&
                th.pw < static_cast<idx>(a.p.OW);
#pragma unroll
    for (int k = 0; k < KB; ++k) {
      th.acc[k] = 0.f;
      th.best[k] = -__builtin_huge_valf();
      th.q[k] = 0;
    }
  }

  // Output channel (within the group) of the thread's channel k.
  CNNFAST_HD idx channel(const Block& b, int tid, int k) const {
    return (kblock(b) * a.kgroups + tid / a.pix) * KB + k;
  }

  CNNFAST_HD void stage(void* smem, Thread&, int tid, const Block& b, int s) const {
    const ConvGeom& g = a.g;
    const idx slice = s % a.slices;
    if (a.slices == 1 && s > 0) return;  // everything is staged already
    const idx Cg = static_cast<idx>(g.Cg()), Kg = static_cast<idx>(g.Kg()), RS = static_cast<idx>(g.R * g.S);
    const idx c0 = slice * a.cb, cn = c0 + a.cb <= Cg ? a.cb : Cg - c0;
    const idx grp = group(b), kbase = kblock(b) * a.kgroups * KB;
    float* w_s = static_cast<float*>(smem);
    const idx wn = a.kgroups * KB * a.cb * RS;
    // w_s[(c*RS + rs) * KG + k] for the block's KG = kgroups * 8 channels: a thread's 8 weights of a tap
    // are 32 contiguous bytes, two 16-byte shared-memory loads (all threads of a warp read the same).
    const idx KG = a.kgroups * KB;
    for (idx i = tid; i < wn; i += kThreads) {
      const idx k = i % KG, cs = i / KG, c = cs / RS, rs = cs - c * RS;
      const bool in = kbase + k < Kg && c < cn;
      w_s[i] = in ? to_f(a.w[((static_cast<int64_t>(grp) * Kg + kbase + k) * Cg + c0 + c) * RS + rs]) : 0.f;
    }
    if (!PATCH) return;
    float* patch = reinterpret_cast<float*>(static_cast<unsigned char*>(smem) + align16(sizeof(float) * wn));
    idx ig, r0, col0;
    band(b, ig, r0, col0);
    const idx pr0 = patch_row0(r0), pc0 = patch_col0(col0), plane = a.PHh * a.PWw;
    const idx count = a.imgs * a.cb * plane;
    for (idx i = tid; i < count; i += kThreads) {
      const idx pc = i % a.PWw, pr = (i / a.PWw) % a.PHh, c = (i / plane) % a.cb, il = i / (plane * a.cb);
      const idx n = ig * a.imgs + il;
      const bool in = c < cn && n < static_cast<idx>(g.N);
      patch[i] = in ? xs(n, grp * Cg + c0 + c, pr0 + pr, pc0 + pc) : 0.f;
    }
  }

  // acc[k] += the slice's taps of conv output (oh, ow) for the thread's 8 channels.
  CNNFAST_HD void accumulate(const float* smem, Thread& th, int tid, const Block& b, idx slice, idx oh, idx ow,
                             float (&acc)[KB]) const {
    const ConvGeom& g = a.g;
    const idx Cg = static_cast<idx>(g.Cg()), R = static_cast<idx>(g.R), S = static_cast<idx>(g.S), RS = R * S;
    const idx dh = static_cast<idx>(g.dh), dw = static_cast<idx>(g.dw);
    const idx c0 = slice * a.cb, cn = c0 + a.cb <= Cg ? a.cb : Cg - c0;
    const idx KG = a.kgroups * KB;
    // this thread's 8 channels of tap (c, r, s) are w_s[(c*RS + r*S + s) * KG + k], k < 8
    const float* w_s = smem + (tid / a.pix) * KB;
    if (PATCH) {
      idx ig, r0, col0;
      band(b, ig, r0, col0);
      const idx il = th.n - ig * a.imgs;
      const float* patch = reinterpret_cast<const float*>(
          reinterpret_cast<const unsigned char*>(smem) + align16(sizeof(float) * a.kgroups * KB * a.cb * RS));
      const idx prow = oh * static_cast<idx>(g.sh) - static_cast<idx>(g.ph) - patch_row0(r0);
      const idx pcol = ow * static_cast<idx>(g.sw) - static_cast<idx>(g.pw) - patch_col0(col0);
      for (idx c = 0; c < cn; ++c) {
        const float* src = patch + ((il * a.cb + c) * a.PHh + prow) * a.PWw + pcol;
        const float* wc = w_s + c * RS * KG;
        for (idx r = 0; r < R; ++r)
          for (idx s = 0; s < S; ++s) {
            const float xv = src[r * dh * a.PWw + s * dw];
            const float* wk = wc + (r * S + s) * KG;
#pragma unroll
            for (int k = 0; k < KB; ++k) acc[k] = fmaf(xv, wk[k], acc[k]);
          }
      }
    } else {
      const idx ih0 = oh * static_cast<idx>(g.sh) - static_cast<idx>(g.ph);
      const idx iw0 = ow * static_cast<idx>(g.sw) - static_cast<idx>(g.pw);
      const idx cx = group(b) * Cg + c0;
      for (idx c = 0; c < cn; ++c) {
        const float* wc = w_s + c * RS * KG;
        for (idx r = 0; r < R; ++r)
          for (idx s = 0; s < S; ++s) {
            const float xv = xs(th.n, cx + c, ih0 + r * dh, iw0 + s * dw);
            const float* wk = wc + (r * S + s) * KG;
#pragma unroll
            for (int k = 0; k < KB; ++k) acc[k] = fmaf(xv, wk[k], acc[k]);
          }
      }
    }
  }

  // The conv output of window tap q of the thread's pooled pixel, or false in the pool's padding.
  CNNFAST_HD bool tap_pixel(const Thread& th, idx q, idx& oh, idx& ow) const {
    const PoolGeom& p = a.p;
    const idx i = q / static_cast<idx>(p.kw), j = q - i * static_cast<idx>(p.kw);
    oh = th.ph * static_cast<idx>(p.sh) - static_cast<idx>(p.ph) + i * static_cast<idx>(p.dh);
    ow = th.pw * static_cast<idx>(p.sw) - static_cast<idx>(p.pw) + j * static_cast<idx>(p.dw);
    return oh >= 0 && oh < static_cast<idx>(p.H) && ow >= 0 && ow < static_cast<idx>(p.W);
  }

  // Bias, rounding to the storage dtype, ReLU and PyTorch's max-pool rule for tap q.
  CNNFAST_HD void pool_update(Thread& th, int tid, const Block& b, idx q) const {
    const idx Kg = static_cast<idx>(a.g.Kg());
#pragma unroll
    for (int k = 0; k < KB; ++k) {
      const idx kc = channel(b, tid, k);
      const float bias = (a.bias && kc < Kg) ? to_f(a.bias[group(b) * Kg + kc]) : 0.f;
      const float v = relu_keep_nan(to_f(from_f<T>(th.acc[k] + bias)));
      if (pool_takes(v, th.best[k])) {
        th.best[k] = v;
        th.q[k] = q;
      }
    }
  }

  CNNFAST_HD void compute(void* smem, Thread& th, int tid, const Block& b, int s) const {
    if (!th.active) return;
    const float* sm = static_cast<const float*>(smem);
    if (!POOL) {
      accumulate(sm, th, tid, b, s, th.ph, th.pw, th.acc);
      return;
    }
    idx oh, ow;
    if (a.slices == 1) {
      for (idx q = 0; q < taps(); ++q) {
        if (!tap_pixel(th, q, oh, ow)) continue;
#pragma unroll
        for (int k = 0; k < KB; ++k) th.acc[k] = 0.f;
        accumulate(sm, th, tid, b, 0, oh, ow, th.acc);
        pool_update(th, tid, b, q);
      }
      return;
    }
    const idx q = s / a.slices, slice = s % a.slices;
    if (!tap_pixel(th, q, oh, ow)) return;
    if (slice == 0) {
#pragma unroll
      for (int k = 0; k < KB; ++k) th.acc[k] = 0.f;
    }
    accumulate(sm, th, tid, b, slice, oh, ow, th.acc);
    if (slice == a.slices - 1) pool_update(th, tid, b, q);
  }

  template <class Th>
  CNNFAST_HD void warp_compute(void*, Th&, int, int, const Block&, int) const {}
  template <class Th>
  CNNFAST_HD void warp_finish(void*, Th&, int, int, const Block&) const {}

  CNNFAST_HD void store(void*, Thread& th, int tid, const Block& b) const {
    if (!th.active) return;
    const idx Kg = static_cast<idx>(a.g.Kg());
#pragma unroll
    for (int k = 0; k < KB; ++k) {
      const idx kc = channel(b, tid, k);
      if (kc >= Kg) continue;
      const idx kk = group(b) * Kg + kc;
      if (POOL) {
        a.out.at(th.n, kk, th.ph, th.pw) = from_f<T>(th.best[k]);
        if (a.pos.p) a.pos.store(th.n, kk, th.ph, th.pw, th.best[k] <= 0.f ? -1 : th.q[k]);
      } else {
        const float bias = a.bias ? to_f(a.bias[kk]) : 0.f;
        a.out.at(th.n, kk, th.ph, th.pw) = from_f<T>(th.acc[k] + bias);
      }
    }
  }
};

}  // namespace cuda
}  // namespace cnnfast
