// conv2d as an implicit GEMM on tensor cores (or float32 FMA), one block program for four problems.
//
// Per group g (grid z), C[M x N] = A[M x Kred] * B[Kred x N], with A and B gathered from the tensors
// on the fly (im2col is never stored):
//   kForward      M = N*OH*OW pixels (n, oh, ow)   N = K/g   Kred = C/g*R*S taps (c, r, s)
//                 A = x[n, c, oh*sh - ph + r*dh, ow*sw - pw + s*dw] (0 in the padding), B = w[k][(c, r, s)];
//                 C + bias -> y[n, k, oh, ow]
//   kForwardPool  as kForward, but the rows are (pooled pixel, window tap), taps fastest: a tile of BM
//                 rows holds BM / T whole pooling windows of T taps, and the epilogue applies bias,
//                 rounding to the storage dtype, ReLU and PyTorch's max-pool rule per window; only the
//                 pooled value and the window position are written (the conv output never reaches memory)
//   kInputGrad    M = N*H*W input pixels           N = C/g   Kred = K/g*R*S (k, r, s)
//                 A = dy[n, k, (h + ph - r*dh)/sh, (w + pw - s*dw)/sw] where both divisions are exact and
//                 in range (else 0), B = w[k, c, r, s]; C -> gi[n, c, h, w]
//   kWeightGrad   M = C/g*R*S taps                 N = K/g   Kred = N*OH*OW pixels, split in `splits`
//                 fixed ranges (grid z = splits x groups); A = x gathered as for kForward,
//                 B = dy[n, k, oh, ow]; C -> ws[split][k][(c, r, s)] (float32); a second kernel sums the
//                 splits in order, so the weight gradient repeats bit for bit (no atomics)
//
// A block of (BM/32) x (BN/32) warps owns a BM x BN tile of C (BM = 128, BN = 64 or 32), each warp
// a 32 x 32 sub-tile held in registers (warp_mma.h: wmma fragments or FMA micro-tiles). Per step the
// block stages BK reduction steps of A and B in shared memory, k-major (As[k][m], Bs[k][n], rows
// padded by 16 bytes against bank conflicts); the global loads of step s+1 are issued into registers
// before the warps multiply step s, so they are in flight during the math. The epilogue stores the
// accumulators column-major in shared memory (reusing the A/B buffers) and writes the outputs along M,
// which is the contiguous direction of NCHW outputs and of the weight-gradient workspace.
//
// Thread -> element maps of the loads: each operand has a fixed index (m or n) and the reduction
// index k. Activations are read with consecutive threads on consecutive pixels (coalesced in NCHW);
// weights and the reduction-major operands of kWeightGrad with consecutive threads on consecutive k. A
// thread decodes its fixed indices once per block (Fix) and each reduction index once per step (Red).
#pragma once

#include <type_traits>

#include "access.h"
#include "warp_mma.h"
#include "program.h"

namespace cnnfast {
namespace cuda {

enum GemmKind : int { kForward = 0, kForwardPool = 1, kInputGrad = 2, kWeightGrad = 3 };

// Reduction steps staged per step: 32 for 16-bit operands (two wmma k-steps), 16 for float32; the
// weight gradient stages 16 for every dtype (its loads decode a fixed index per element held, and
// 16 keeps those in registers).
constexpr int kWeightGradBK = 16;

// What the host glue fills in for one launch.
template <typename T>
struct GemmArgs {
  View<const T> act;   // kForward / kForwardPool / kWeightGrad: x (N, C, H, W); kInputGrad: dy (N, K, OH, OW)
  View<const T> dy;    // kWeightGrad: dy (N, K, OH, OW)
  const T* w;          // weight, contiguous (K, C/g, R, S)
  const T* bias;       // kForward / kForwardPool: K values or null
  View<T> out;         // kForward: y; kForwardPool: pooled output; kInputGrad: gi
  PosView pos;         // kForwardPool: window positions (p == null: not wanted)
  float* ws;           // kWeightGrad: [splits][K][C/g*R*S]
  const void* tap_table;  // kForward / kForwardPool: Tap[Kred]; kInputGrad: InputGradTap[Kred] (TapTable
                          // below): the reduction index decoded once per call, not per element and step
  ConvGeom g;
  PoolGeom p;          // kForwardPool: p.H, p.W = conv output size
  idx M, N, Kred;      // GEMM sizes per group
  idx tiles_m, tiles_n;
  idx splits, steps_per_split;  // kWeightGrad
  idx taps, windows;   // kForwardPool: taps per window, windows per tile
};

// Shared-memory row padding in elements: 16 bytes.
template <typename E>
constexpr int pad_of() {
  return 16 / static_cast<int>(sizeof(E));
}

// Which elements of a tile (BF fixed x BK reduction indices) thread `tid` of NT loads: TF threads
// along the fixed index, NT / TF along k; FIXED_FAST puts consecutive threads on consecutive fixed
// indices, else on consecutive k. Element (i, j): fixed index f_lane + i * TF, k index r_lane + j * TR.
template <int BF, int BK, int NT, int TF_, bool FIXED_FAST>
struct TileMap {
  static constexpr int TF = TF_, TR = NT / TF, FE = BF / TF, RE = BK / TR;
  static_assert(NT % TF == 0 && BF % TF == 0 && BK % TR == 0, "tile map does not divide");
  static CNNFAST_HD int f_lane(int tid) { return FIXED_FAST ? tid % TF : tid / TR; }
  static CNNFAST_HD int r_lane(int tid) { return FIXED_FAST ? tid / TF : tid % TR; }
};

// Out of range in every gather: added to any in-range coordinate it stays negative.
constexpr idx kFar = -(1 << 29);

// ---- the gathers ----------------------------------------------------------------------------------

// A conv output pixel as a gather of x: the image base offset (group channels included) and the
// top-left input coordinate of its receptive field; ih0 = kFar marks "no pixel".
struct Pix {
  int64_t base;
  idx ih0, iw0;
};

// A tap (c, r, s) as a gather of x: its offset and coordinate shift; dr = kFar marks "no tap".
struct Tap {
  int64_t off;
  idx dr, ds;
};

// A plain index into a dense operand, -1 for none.
struct Lin {
  int64_t off;
};

template <typename T>
CNNFAST_HD Tap tap_of(const GemmArgs<T>& a, idx k) {
  const ConvGeom& g = a.g;
  if (k >= a.g.Cg() * g.R * g.S) return Tap{0, kFar, 0};
  const idx RS = static_cast<idx>(g.R * g.S);
  const idx c = k / RS, rs = k - c * RS, r = rs / static_cast<idx>(g.S), s = rs - r * static_cast<idx>(g.S);
  const idx dr = r * static_cast<idx>(g.dh), ds = s * static_cast<idx>(g.dw);
  return Tap{c * a.act.s1 + dr * a.act.s2 + ds * a.act.s3, dr, ds};
}

// The conv output pixel (n, oh, ow) of group `grp`.
template <typename T>
CNNFAST_HD Pix pix_at(const GemmArgs<T>& a, idx grp, idx n, idx oh, idx ow) {
  const ConvGeom& g = a.g;
  const idx ih0 = oh * static_cast<idx>(g.sh) - static_cast<idx>(g.ph);
  const idx iw0 = ow * static_cast<idx>(g.sw) - static_cast<idx>(g.pw);
  const int64_t base = n * a.act.s0 + static_cast<int64_t>(grp) * g.Cg() * a.act.s1 + ih0 * a.act.s2 + iw0 * a.act.s3;
  return Pix{base, ih0, iw0};
}

// Conv output pixel m = (n, oh, ow) of group `grp`.
template <typename T>
CNNFAST_HD Pix pix_of(const GemmArgs<T>& a, idx grp, idx m, idx M) {
  const ConvGeom& g = a.g;
  if (m >= M) return Pix{0, kFar, 0};
  const idx OW = static_cast<idx>(g.OW), OHW = static_cast<idx>(g.OH) * OW;
  const idx n = m / OHW, rem = m - n * OHW, oh = rem / OW, ow = rem - oh * OW;
  return pix_at(a, grp, n, oh, ow);
}

// Row m of a kForwardPool tile: window (m % BM) / taps of the tile's windows, tap (m % BM) % taps; the
// conv pixel that tap reads, or none (past the tile's windows, past the last window, or in the
// pool's padding).
template <int BM, typename T>
CNNFAST_HD Pix pool_pix_of(const GemmArgs<T>& a, idx grp, idx m) {
  const PoolGeom& p = a.p;
  const idx local = m % BM, tile = m / BM;
  const idx win = local / a.taps, tap = local - win * a.taps;
  const idx PW = static_cast<idx>(p.OW), PHW = static_cast<idx>(p.OH) * PW;
  const idx pp = tile * a.windows + win;
  if (win >= a.windows || pp >= static_cast<idx>(a.g.N) * PHW) return Pix{0, kFar, 0};
  const idx n = pp / PHW, rem = pp - n * PHW, ph = rem / PW, pw = rem - ph * PW;
  const idx i = tap / static_cast<idx>(p.kw), j = tap - i * static_cast<idx>(p.kw);
  const idx oh = ph * static_cast<idx>(p.sh) - static_cast<idx>(p.ph) + i * static_cast<idx>(p.dh);
  const idx ow = pw * static_cast<idx>(p.sw) - static_cast<idx>(p.pw) + j * static_cast<idx>(p.dw);
  if (oh < 0 || oh >= static_cast<idx>(p.H) || ow < 0 || ow >= static_cast<idx>(p.W)) return Pix{0, kFar, 0};
  return pix_at(a, grp, n, oh, ow);
}

template <typename T>
CNNFAST_HD T gather_x(const GemmArgs<T>& a, const Pix& px, const Tap& tp) {
  const idx ih = px.ih0 + tp.dr, iw = px.iw0 + tp.ds;
  const bool in = static_cast<uint32_t>(ih) < static_cast<uint32_t>(a.g.H) &&
                  static_cast<uint32_t>(iw) < static_cast<uint32_t>(a.g.W);
  return in ? a.act.p[px.base + tp.off] : T(0.f);
}

// kInputGrad's A: the input pixel m = (n, h, w) (hp = h + ph, wp = w + pw; hp = kFar for none) and the
// reduction index (k, r, s) (dr = r*dh; dr = -kFar for none, so hp - dr < 0 whenever either is none).
struct InputGradPix {
  int64_t base;
  idx hp, wp;
};

struct InputGradTap {
  int64_t off;
  idx dr, ds;
};

template <typename T>
CNNFAST_HD InputGradPix dpix_of(const GemmArgs<T>& a, idx grp, idx m) {
  const ConvGeom& g = a.g;
  if (m >= a.M) return InputGradPix{0, kFar, 0};
  const idx W = static_cast<idx>(g.W), HW = static_cast<idx>(g.H) * W;
  const idx n = m / HW, rem = m - n * HW, h = rem / W, w = rem - h * W;
  return InputGradPix{n * a.act.s0 + static_cast<int64_t>(grp) * g.Kg() * a.act.s1, h + static_cast<idx>(g.ph),
              w + static_cast<idx>(g.pw)};
}

template <typename T>
CNNFAST_HD InputGradTap dtap_of(const GemmArgs<T>& a, idx k) {
  const ConvGeom& g = a.g;
  if (k >= a.Kred) return InputGradTap{0, -kFar, 0};
  const idx RS = static_cast<idx>(g.R * g.S);
  const idx kk = k / RS, rs = k - kk * RS, r = rs / static_cast<idx>(g.S), s = rs - r * static_cast<idx>(g.S);
  return InputGradTap{kk * a.act.s1, r * static_cast<idx>(g.dh), s * static_cast<idx>(g.dw)};
}

template <typename T>
CNNFAST_HD T gather_dy(const GemmArgs<T>& a, const InputGradPix& px, const InputGradTap& tp) {
  const ConvGeom& g = a.g;
  const idx th = px.hp - tp.dr, tw = px.wp - tp.ds;
  const idx sh = static_cast<idx>(g.sh), sw = static_cast<idx>(g.sw);
  if (th < 0 || tw < 0) return T(0.f);
  const idx oh = sh == 1 ? th : th / sh, ow = sw == 1 ? tw : tw / sw;
  const bool in = oh * sh == th && ow * sw == tw && oh < static_cast<idx>(g.OH) && ow < static_cast<idx>(g.OW);
  return in ? a.act.p[px.base + tp.off + oh * a.act.s2 + ow * a.act.s3] : T(0.f);
}

template <typename T>
CNNFAST_HD T gather_lin(const T* p, const Lin& f, const Lin& r) {
  return (f.off >= 0 && r.off >= 0) ? p[f.off + r.off] : T(0.f);
}

// ---- the program -----------------------------------------------------------------------------------

template <int KIND, typename T, class Mma, int BN>
struct ConvGemm {
  using E = typename Mma::Elem;
  static constexpr int BM = 128;
  static constexpr int BK = KIND == kWeightGrad ? kWeightGradBK : (sizeof(E) == 2 ? 32 : 16);
  static constexpr int kThreads = (BM / kWarpTile) * (BN / kWarpTile) * 32;
  static constexpr bool kWarpCollective = Mma::kCollective;
  static constexpr int LDA = BM + pad_of<E>(), LDB = BN + pad_of<E>(), LDC = BM + 4;
  static_assert(BK % Mma::kK == 0, "BK must be a multiple of the instruction's k");

  // Load maps. kWeightGrad reads both operands along the reduction (pixels); the others read the
  // activation along its pixels (the fixed index) and the weight along k.
  static constexpr bool kAFixedFast = KIND != kWeightGrad;
  using AMap = TileMap<BM, BK, kThreads, kAFixedFast ? (BM < kThreads ? BM : kThreads) : kThreads / BK, kAFixedFast>;
  using BMap = TileMap<BN, BK, kThreads, kThreads / BK, false>;

  using AFix = typename std::conditional<KIND == kInputGrad, InputGradPix,
                                         typename std::conditional<KIND == kWeightGrad, Tap, Pix>::type>::type;
  using ARed = typename std::conditional<KIND == kInputGrad, InputGradTap,
                                         typename std::conditional<KIND == kWeightGrad, Pix, Tap>::type>::type;

  struct Thread {
    AFix a_fix[AMap::FE];
    Lin b_fix[BMap::FE];
    E a_reg[AMap::FE * AMap::RE];
    E b_reg[BMap::FE * BMap::RE];
    typename Mma::Acc acc;
  };

  GemmArgs<T> a;

  // ---- host side
  Grid grid() const {
    const int64_t z = KIND == kWeightGrad ? static_cast<int64_t>(a.g.groups) * a.splits : a.g.groups;
    return Grid{static_cast<int64_t>(a.tiles_m) * a.tiles_n, 1, z};
  }
  static constexpr size_t kABBytes = align16(sizeof(E) * BK * LDA) + align16(sizeof(E) * BK * LDB);
  static constexpr size_t kCBytes = sizeof(float) * BN * LDC;
  size_t smem_bytes() const { return kABBytes > kCBytes ? kABBytes : kCBytes; }
  std::string describe() const {
    // the launch log's names of the kinds, which the tests and bench/cuda_kernels.py read
    static const char* kinds[] = {"fwd", "fwd_pool", "dgrad", "wgrad"};
    return std::string("gemm ") + kinds[KIND] + " " + dtype_name(T()) + " " + Mma::kName + " bn" +
           std::to_string(BN) + (KIND == kWeightGrad ? " splits=" + std::to_string(a.splits) : "");
  }

  // ---- where the block is
  CNNFAST_HD idx tile_m(const Block& b) const { return b.x % a.tiles_m; }
  CNNFAST_HD idx tile_n(const Block& b) const { return b.x / a.tiles_m; }
  CNNFAST_HD idx group(const Block& b) const { return KIND == kWeightGrad ? b.z % static_cast<idx>(a.g.groups) : b.z; }
  CNNFAST_HD idx split(const Block& b) const { return KIND == kWeightGrad ? b.z / static_cast<idx>(a.g.groups) : 0; }
  CNNFAST_HD idx k_begin(const Block& b) const { return split(b) * a.steps_per_split * BK; }

  CNNFAST_HD int steps(const Block& b) const {
    const idx total = (a.Kred + BK - 1) / BK;
    if (KIND != kWeightGrad) return total;
    const idx first = split(b) * a.steps_per_split, left = total - first;
    return left < a.steps_per_split ? (left > 0 ? left : 0) : a.steps_per_split;
  }

  // ---- operand gathers
  CNNFAST_HD AFix fix_a(idx grp, idx m) const {
    if constexpr (KIND == kForward) {
      return pix_of(a, grp, m, a.M);
    } else if constexpr (KIND == kForwardPool) {
      return pool_pix_of<BM>(a, grp, m);
    } else if constexpr (KIND == kInputGrad) {
      return dpix_of(a, grp, m);
    } else {
      return tap_of(a, m);
    }
  }
  CNNFAST_HD ARed red_a(idx grp, idx k, idx k_end) const {
    if constexpr (KIND == kInputGrad) {
      return k < k_end ? static_cast<const InputGradTap*>(a.tap_table)[k] : InputGradTap{0, -kFar, 0};
    } else if constexpr (KIND == kWeightGrad) {
      return k < k_end ? pix_of(a, grp, k, a.Kred) : Pix{0, kFar, 0};
    } else {
      return k < k_end ? static_cast<const Tap*>(a.tap_table)[k] : Tap{0, kFar, 0};
    }
  }
  CNNFAST_HD E load_a(const AFix& f, const ARed& r) const {
    if constexpr (KIND == kInputGrad) {
      return gather_dy(a, f, r);
    } else if constexpr (KIND == kWeightGrad) {
      return gather_x(a, r, f);
    } else {
      return gather_x(a, f, r);
    }
  }
  CNNFAST_HD Lin fix_b(idx grp, idx n) const {
    const ConvGeom& g = a.g;
    if (n >= a.N) return Lin{-1};
    if constexpr (KIND == kInputGrad) {
      return Lin{(static_cast<int64_t>(grp) * g.Kg() * g.Cg() + n) * g.R * g.S};
    } else if constexpr (KIND == kWeightGrad) {
      return Lin{(static_cast<int64_t>(grp) * g.Kg() + n) * a.dy.s1};
    } else {
      return Lin{(static_cast<int64_t>(grp) * g.Kg() + n) * a.Kred};
    }
  }
  CNNFAST_HD Lin red_b(idx k, idx k_end) const {
    const ConvGeom& g = a.g;
    if (k >= k_end) return Lin{-1};
    if constexpr (KIND == kInputGrad) {
      const idx RS = static_cast<idx>(g.R * g.S), kk = k / RS;
      return Lin{(static_cast<int64_t>(kk) * g.Cg() - kk) * RS + k};  // kk*Cg*RS + (k - kk*RS)
    } else if constexpr (KIND == kWeightGrad) {
      const idx OW = static_cast<idx>(g.OW), OHW = static_cast<idx>(g.OH) * OW;
      const idx n = k / OHW, rem = k - n * OHW, oh = rem / OW, ow = rem - oh * OW;
      return Lin{n * a.dy.s0 + oh * a.dy.s2 + ow * a.dy.s3};
    } else {
      return Lin{k};
    }
  }
  CNNFAST_HD E load_b(const Lin& f, const Lin& r) const {
    if constexpr (KIND == kWeightGrad) {
      return gather_lin(a.dy.p, f, r);
    } else {
      return gather_lin(a.w, f, r);
    }
  }

  // Global -> registers for the step starting at reduction index k0.
  CNNFAST_HD void prefetch(Thread& th, int tid, idx grp, idx k0, idx k_end) const {
    const int ar = AMap::r_lane(tid), br = BMap::r_lane(tid);
#pragma unroll
    for (int j = 0; j < AMap::RE; ++j) {
      const ARed r = red_a(grp, k0 + ar + j * AMap::TR, k_end);
#pragma unroll
      for (int i = 0; i < AMap::FE; ++i) th.a_reg[i * AMap::RE + j] = load_a(th.a_fix[i], r);
    }
#pragma unroll
    for (int j = 0; j < BMap::RE; ++j) {
      const Lin r = red_b(k0 + br + j * BMap::TR, k_end);
#pragma unroll
      for (int i = 0; i < BMap::FE; ++i) th.b_reg[i * BMap::RE + j] = load_b(th.b_fix[i], r);
    }
  }

  CNNFAST_HD idx k_end(const Block& b) const {
    if (KIND != kWeightGrad) return a.Kred;
    const idx e = (split(b) + 1) * a.steps_per_split * BK;
    return e < a.Kred ? e : a.Kred;
  }

  // ---- the hooks
  CNNFAST_HD void begin(Thread& th, int tid, const Block& b) const {
    const idx grp = group(b), m0 = tile_m(b) * BM, n0 = tile_n(b) * BN;
#pragma unroll
    for (int i = 0; i < AMap::FE; ++i) th.a_fix[i] = fix_a(grp, m0 + AMap::f_lane(tid) + i * AMap::TF);
#pragma unroll
    for (int i = 0; i < BMap::FE; ++i) th.b_fix[i] = fix_b(grp, n0 + BMap::f_lane(tid) + i * BMap::TF);
    Mma::zero(th.acc);
    if (steps(b) > 0) prefetch(th, tid, grp, k_begin(b), k_end(b));
  }

  CNNFAST_HD void stage(void* smem, Thread& th, int tid, const Block&, int) const {
    E* As = static_cast<E*>(smem);
    E* Bs = reinterpret_cast<E*>(static_cast<unsigned char*>(smem) + align16(sizeof(E) * BK * LDA));
    const int af = AMap::f_lane(tid), ar = AMap::r_lane(tid), bf = BMap::f_lane(tid), br = BMap::r_lane(tid);
#pragma unroll
    for (int i = 0; i < AMap::FE; ++i)
#pragma unroll
      for (int j = 0; j < AMap::RE; ++j) As[(ar + j * AMap::TR) * LDA + af + i * AMap::TF] = th.a_reg[i * AMap::RE + j];
#pragma unroll
    for (int i = 0; i < BMap::FE; ++i)
#pragma unroll
      for (int j = 0; j < BMap::RE; ++j) Bs[(br + j * BMap::TR) * LDB + bf + i * BMap::TF] = th.b_reg[i * BMap::RE + j];
  }

  CNNFAST_HD void compute(void*, Thread& th, int tid, const Block& b, int s) const {
    if (s + 1 < steps(b)) prefetch(th, tid, group(b), k_begin(b) + (s + 1) * BK, k_end(b));
  }

  CNNFAST_HD void warp_compute(void* smem, Thread& th, int warp, int lane, const Block&, int) const {
    const E* As = static_cast<const E*>(smem);
    const E* Bs = reinterpret_cast<const E*>(static_cast<const unsigned char*>(smem) + align16(sizeof(E) * BK * LDA));
    const int wm = warp % (BM / kWarpTile), wn = warp / (BM / kWarpTile);
    Mma::step(th.acc, As, LDA, Bs, LDB, wm * kWarpTile, wn * kWarpTile, BK, lane);
  }

  CNNFAST_HD void warp_finish(void* smem, Thread& th, int warp, int lane, const Block&) const {
    const int wm = warp % (BM / kWarpTile), wn = warp / (BM / kWarpTile);
    Mma::store(static_cast<float*>(smem), LDC, th.acc, wm * kWarpTile, wn * kWarpTile, lane);
  }

  CNNFAST_HD void store(void* smem, Thread&, int tid, const Block& b) const {
    const float* Cs = static_cast<const float*>(smem);
    const idx grp = group(b), m0 = tile_m(b) * BM, n0 = tile_n(b) * BN;
    if constexpr (KIND == kForwardPool) {
      store_pooled(Cs, tid, grp, tile_m(b), n0);
    } else {
      store_tile(Cs, tid, b, grp, m0, n0);
    }
  }

  // The epilogue of kForward, kInputGrad and kWeightGrad, along M.
  CNNFAST_HD void store_tile(const float* Cs, int tid, const Block& b, idx grp, idx m0, idx n0) const {
    const ConvGeom& g = a.g;
    for (int e = tid; e < BM * BN; e += kThreads) {
      const int ml = e % BM, nl = e / BM;
      const idx m = m0 + ml, n = n0 + nl;
      if (m >= a.M || n >= a.N) continue;
      const float v = Cs[nl * LDC + ml];
      if constexpr (KIND == kForward) {
        const idx OW = static_cast<idx>(g.OW), OHW = static_cast<idx>(g.OH) * OW;
        const idx img = m / OHW, rem = m - img * OHW, oh = rem / OW, ow = rem - oh * OW;
        const idx k = grp * static_cast<idx>(g.Kg()) + n;
        a.out.at(img, k, oh, ow) = from_f<T>(v + (a.bias ? to_f(a.bias[k]) : 0.f));
      } else if constexpr (KIND == kInputGrad) {
        const idx W = static_cast<idx>(g.W), HW = static_cast<idx>(g.H) * W;
        const idx img = m / HW, rem = m - img * HW, h = rem / W, w = rem - h * W;
        a.out.at(img, grp * static_cast<idx>(g.Cg()) + n, h, w) = from_f<T>(v);
      } else {
        const int64_t k = static_cast<int64_t>(grp) * g.Kg() + n;
        a.ws[(static_cast<int64_t>(split(b)) * g.K + k) * a.M + m] = v;
      }
    }
  }

  // kForwardPool's epilogue: per (window, channel) of the tile, the taps in window order.
  CNNFAST_HD void store_pooled(const float* Cs, int tid, idx grp, idx tm, idx n0) const {
    const ConvGeom& g = a.g;
    const PoolGeom& p = a.p;
    const idx PW = static_cast<idx>(p.OW), PHW = static_cast<idx>(p.OH) * PW;
    for (int e = tid; e < a.windows * BN; e += kThreads) {
      const idx wl = e % a.windows, nl = e / a.windows;
      const idx pp = tm * a.windows + wl, n = n0 + nl;
      if (pp >= static_cast<idx>(g.N) * PHW || n >= a.N) continue;
      const idx img = pp / PHW, rem = pp - img * PHW, ph = rem / PW, pw = rem - ph * PW;
      const idx k = grp * static_cast<idx>(g.Kg()) + n;
      const float bias = a.bias ? to_f(a.bias[k]) : 0.f;
      float best = -__builtin_huge_valf();
      int32_t best_q = 0;
      for (idx q = 0; q < a.taps; ++q) {
        const idx i = q / static_cast<idx>(p.kw), j = q - i * static_cast<idx>(p.kw);
        const idx oh = ph * static_cast<idx>(p.sh) - static_cast<idx>(p.ph) + i * static_cast<idx>(p.dh);
        const idx ow = pw * static_cast<idx>(p.sw) - static_cast<idx>(p.pw) + j * static_cast<idx>(p.dw);
        if (oh < 0 || oh >= static_cast<idx>(p.H) || ow < 0 || ow >= static_cast<idx>(p.W)) continue;
        const float v = relu_keep_nan(to_f(from_f<T>(Cs[nl * LDC + wl * a.taps + q] + bias)));
        if (pool_takes(v, best)) {
          best = v;
          best_q = q;
        }
      }
      a.out.at(img, k, ph, pw) = from_f<T>(best);
      if (a.pos.p) a.pos.store(img, k, ph, pw, best <= 0.f ? -1 : best_q);
    }
  }
};

// The reduction-index table of kForward / kForwardPool (Tap, INPUT_GRAD = false) or kInputGrad
// (InputGradTap): entry k is the decoded index k, for k < Kred, so that the GEMM's gathers do no
// division per element.
template <typename T, bool INPUT_GRAD>
struct TapTable : ElementwiseProgram {
  GemmArgs<T> a;
  void* table;

  Grid grid() const { return Grid{blocks_for(a.Kred, kThreads), 1, 1}; }
  std::string describe() const { return std::string("tap_table ") + (INPUT_GRAD ? "dgrad" : "fwd"); }

  CNNFAST_HD void store(void*, Thread&, int tid, const Block& b) const {
    const idx k = b.x * kThreads + tid;
    if (k >= a.Kred) return;
    if (INPUT_GRAD) {
      static_cast<InputGradTap*>(table)[k] = dtap_of(a, k);
    } else {
      static_cast<Tap*>(table)[k] = tap_of(a, k);
    }
  }
};

}  // namespace cuda
}  // namespace cnnfast
