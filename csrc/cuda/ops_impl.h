// The CUDA backend's ops, written once against an execution context `Exec`: DeviceExec (device.cuh)
// launches the block programs on the GPU, EmulatorExec (emulator.h) runs them on the CPU. Each op
// checks its arguments (ops.h, shared with the CPU backend), converts inputs to one dtype, chooses a
// program and its tiling from the shape, and launches it, in batch chunks small enough for the
// programs' int32 index math (offsets are int64 throughout).
//
// Which program runs (the choice is a function of the shape, dtype and allow_tf32 only):
//   conv2d forward         implicit GEMM (conv_gemm.h) when K/g >= 32 and C/g*R*S >= 32, else direct
//                          convolution (conv_direct.h) -- tensor cores for float16 / bfloat16, TF32
//                          tensor cores for float32 when allow_tf32, exact float32 FMA otherwise
//   input gradient         GEMM when C/g >= 32 and K/g*R*S >= 32, else the direct program on the
//                          zero-upsampled dy with the flipped weight
//   weight gradient        split-K GEMM when K/g >= 32 and C/g*R*S >= 32, else WgradDirect; both
//                          reduce their splits in order (reduce.h)
//   fused forward          GEMM with the pooling epilogue when K/g >= 32, C/g*R*S >= 32 and a window
//                          has at most 128 taps, else direct with POOL
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <type_traits>
#include <vector>

#include "../ops.h"
#include "conv_direct.h"
#include "conv_gemm.h"
#include "pool.h"
#include "reduce.h"

// AT_DISPATCH over the three storage dtypes of the kernels (check_float has refused the others).
#define CNNFAST_DISPATCH_FLOAT(TYPE, NAME, ...)                         \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace cnnfast {
namespace cuda {
namespace impl {

template <typename T>
View<T> view_of(const at::Tensor& t) {
  return View<T>{static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

inline PosView pos_of(const std::optional<at::Tensor>& pos) {
  if (!pos.has_value()) return PosView{nullptr, 1, 0, 0, 0, 0};
  const at::Tensor& t = *pos;
  return PosView{t.data_ptr(), static_cast<int>(t.element_size()), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// A temporary the kernels fill: NaN (all bytes 0xff for integer scratch) when the test suite asks for
// poisoned outputs ($CNNFAST_POISON=1), so that an element a kernel forgets to write cannot pass.
inline bool poisoning() {
  const char* env = std::getenv("CNNFAST_POISON");
  return env && env[0] == '1' && env[1] == 0;
}

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

inline at::Tensor scratch(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return poison(at::empty(sizes, options));
}

// A tensor of `dtype` the kernels can write for `out`: out itself, or a temporary copied back.
struct TypedOut {
  at::Tensor out, t;
  TypedOut(const at::Tensor& o, at::ScalarType dtype)
      : out(o), t(o.scalar_type() == dtype ? o : poison(at::empty_like(o, o.options().dtype(dtype)))) {}
  void finish() {
    if (!t.is_same(out)) out.copy_(t);
  }
};

// The largest index a program may compute: int32's. $CNNFAST_CUDA_INDEX_LIMIT lowers it, so that
// the tests make small launches split along the batch the way launches past 2^31 elements do.
inline int64_t index_limit() {
  constexpr int64_t kInt32 = (int64_t{1} << 31) - 1;
  const char* env = std::getenv("CNNFAST_CUDA_INDEX_LIMIT");
  const int64_t lim = env ? std::atoll(env) : kInt32;
  return lim > 0 && lim < kInt32 ? lim : kInt32;
}

// Images per launch so that every index a program computes fits: `per_image` is the largest element
// count of one image in any tensor (or index range) the launch touches.
inline int64_t batch_chunk(const char* op, int64_t N, int64_t per_image) {
  const int64_t lim = index_limit();
  TORCH_CHECK(per_image < lim, op, ": one image of ", per_image, " elements is more than the CUDA kernels' ",
              "index range (", lim, "); use backend='torch'");
  return std::max<int64_t>(1, std::min<int64_t>(N, lim / std::max<int64_t>(per_image, 1)));
}

inline void check_extent(const char* op, const ConvGeom& g) {
  constexpr int64_t kLim = int64_t{1} << 28;
  TORCH_CHECK(g.H < kLim && g.W < kLim && g.OH < kLim && g.OW < kLim && g.ph < kLim && g.pw < kLim &&
                  (g.R - 1) * g.dh < kLim && (g.S - 1) * g.dw < kLim && g.sh < kLim && g.sw < kLim,
              op, ": spatial sizes of 2^28 and more are not supported by backend 'cuda'");
}

inline ConvGeom with_batch(ConvGeom g, int64_t n) {
  g.N = n;
  return g;
}

// ---- choosing programs ------------------------------------------------------------------------------

inline bool gemm_shape(int64_t rows_channels, int64_t reduction) { return rows_channels >= 32 && reduction >= 32; }

// The direct program's plan for thread-pixel grid p.OH x p.OW; false when even one input channel's
// weights for 8 output channels do not fit in shared memory.
template <typename T>
bool plan_direct(DirectArgs<T>& a, bool& patch) {
  const ConvGeom& g = a.g;
  const PoolGeom& p = a.p;
  const int64_t Kg = g.Kg(), Cg = g.Cg(), RS = g.R * g.S, OHt = p.OH, OWt = p.OW;
  const int64_t kgroups_max = std::min<int64_t>(4, (Kg + kDirectKB - 1) / kDirectKB);
  double best_eff = -1.0;
  for (int64_t kgroups = 1; kgroups <= 4; kgroups *= 2) {
    if (kgroups > 1 && kgroups / 2 >= kgroups_max) break;
    const int64_t pix = kDirectThreads / kgroups;
    const int64_t TW = std::min(OWt, pix), TH = std::min(OHt, pix / TW);
    const int64_t imgs = TH == OHt ? std::max<int64_t>(1, std::min(g.N, pix / (OHt * OWt))) : 1;
    const int64_t tiles = ((OHt + TH - 1) / TH) * ((OWt + TW - 1) / TW) * ((g.N + imgs - 1) / imgs);
    const int64_t kblocks = (Kg + kgroups * kDirectKB - 1) / (kgroups * kDirectKB);
    const double eff = static_cast<double>(g.N * OHt * OWt * Kg) /
                       static_cast<double>(tiles * kblocks * kDirectThreads * kDirectKB);
    if (eff >= best_eff) {
      best_eff = eff;
      a.kgroups = static_cast<idx>(kgroups), a.pix = static_cast<idx>(pix);
      a.TH = static_cast<idx>(TH), a.TW = static_cast<idx>(TW), a.imgs = static_cast<idx>(imgs);
      a.tiles_h = static_cast<idx>((OHt + TH - 1) / TH), a.tiles_w = static_cast<idx>((OWt + TW - 1) / TW);
      a.kblocks = static_cast<idx>(kblocks);
    }
  }
  const int64_t PHh = ((a.TH - 1) * p.sh + (p.kh - 1) * p.dh) * g.sh + (g.R - 1) * g.dh + 1;
  const int64_t PWw = ((a.TW - 1) * p.sw + (p.kw - 1) * p.dw) * g.sw + (g.S - 1) * g.dw + 1;
  const int64_t wf = static_cast<int64_t>(a.kgroups) * kDirectKB * RS, pf = a.imgs * PHh * PWw;
  // shared memory holds align16(weights) + patch: keep 4 floats of slack for the alignment
  const int64_t budget = kDirectSmemFloats - 4;
  int64_t cb;
  if (wf + pf <= budget) {
    patch = true;
    cb = budget / (wf + pf);
  } else if (wf <= budget) {
    patch = false;
    cb = budget / wf;
  } else {
    return false;
  }
  cb = std::min(cb, Cg);
  a.cb = static_cast<idx>(cb);
  a.slices = static_cast<idx>((Cg + cb - 1) / cb);
  a.PHh = static_cast<idx>(PHh), a.PWw = static_cast<idx>(PWw);
  return true;
}

template <typename T, bool POOL, class Exec>
void launch_direct(const Exec& exec, const DirectArgs<T>& a, bool patch) {
  if (patch) {
    exec.launch(DirectConv<T, POOL, true>{a});
  } else {
    exec.launch(DirectConv<T, POOL, false>{a});
  }
}

inline PoolGeom identity_pool(const ConvGeom& g) {
  PoolGeom p;
  p.H = g.OH, p.W = g.OW, p.OH = g.OH, p.OW = g.OW;
  p.kh = p.kw = p.sh = p.sw = p.dh = p.dw = 1;
  p.ph = p.pw = 0;
  return p;
}

// Split count of the weight gradient: about 4 waves of an H100's 132 SMs in all, at least 4 steps of
// the reduction per split, splits x groups within the grid's z limit; a function of the shape only
// (and with it the summation order).
inline idx wgrad_splits(int64_t blocks, int64_t steps, int64_t groups) {
  const int64_t want = (528 + blocks - 1) / std::max<int64_t>(blocks, 1);
  const int64_t by_len = std::max<int64_t>(1, steps / 4);
  return static_cast<idx>(std::max<int64_t>(1, std::min({want, by_len, int64_t{65535} / groups})));
}

template <int KIND, typename T, class Mma, int BN, class Exec>
void launch_gemm_tiles(const Exec& exec, GemmArgs<T> a) {
  using P = ConvGemm<KIND, T, Mma, BN>;
  if (KIND == kFwdPool) {
    a.taps = static_cast<idx>(a.p.kh * a.p.kw);
    a.windows = P::BM / a.taps;
    const int64_t pooled = a.g.N * a.p.OH * a.p.OW;
    a.tiles_m = static_cast<idx>((pooled + a.windows - 1) / a.windows);
    a.M = a.tiles_m * P::BM;
  } else {
    a.tiles_m = static_cast<idx>((a.M + P::BM - 1) / P::BM);
  }
  a.tiles_n = static_cast<idx>((a.N + BN - 1) / BN);
  exec.launch(P{a});
}

// Launches kind KIND with the tile width and multiply policy the dtype and shape call for (after the
// tap table the forward and input-gradient gathers read).
template <int KIND, typename T, class Exec>
void launch_gemm(const Exec& exec, GemmArgs<T> a, bool allow_tf32, const at::Tensor& like) {
  at::Tensor table;
  if constexpr (KIND != kWgrad) {
    constexpr bool dgrad = KIND == kDgrad;
    table = scratch({static_cast<int64_t>(a.Kred) * static_cast<int64_t>(dgrad ? sizeof(DTap) : sizeof(Tap))},
                    like.options().dtype(at::kChar));
    TapTable<T, dgrad> prog;
    prog.a = a;
    prog.table = table.data_ptr();
    exec.launch(prog);
    a.tap_table = table.data_ptr();
  }
  auto by_width = [&](auto mma) {
    using Mma = decltype(mma);
    if (a.N <= 32) {
      launch_gemm_tiles<KIND, T, Mma, 32>(exec, a);
    } else {
      launch_gemm_tiles<KIND, T, Mma, 64>(exec, a);
    }
  };
  if constexpr (std::is_same<T, float>::value) {
    if (allow_tf32 && exec.tensor_cores()) {
      by_width(typename Exec::template TensorCore<float>{});
    } else {
      by_width(SimtF32{});
    }
  } else {
    by_width(typename Exec::template TensorCore<T>{});
  }
}

template <typename T>
GemmArgs<T> gemm_args(const ConvGeom& g) {
  GemmArgs<T> a{};
  a.g = g;
  a.splits = 1;
  return a;
}

// ---- conv2d ---------------------------------------------------------------------------------------

template <class Exec>
void conv2d_fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                bool allow_tf32, const at::Tensor& out) {
  const char* op = "conv2d_fwd_kernel";
  const ConvGeom g = check_conv2d_fwd(x, weight, bias, stride, padding, dilation, groups, out);
  if (out.numel() == 0) return;
  check_extent(op, g);
  const Exec exec(x.device());
  const auto dtype = x.scalar_type();
  const at::Tensor w = weight.to(dtype).contiguous();
  const at::Tensor b = bias.has_value() ? bias->to(dtype).contiguous() : at::Tensor();
  TypedOut y(out, dtype);
  const int64_t chunk = batch_chunk(op, g.N, std::max(g.C * g.H * g.W, g.K * g.OH * g.OW));
  CNNFAST_DISPATCH_FLOAT(dtype, "cnnfast_cuda_conv2d", [&] {
    for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
      const int64_t nc = std::min(chunk, g.N - n0);
      const ConvGeom gc = with_batch(g, nc);
      const at::Tensor xc = x.narrow(0, n0, nc), yc = y.t.narrow(0, n0, nc);
      DirectArgs<scalar_t> d{};
      d.x = view_of<const scalar_t>(xc);
      d.Hx = static_cast<idx>(g.H), d.Wx = static_cast<idx>(g.W), d.up_h = 1, d.up_w = 1;
      d.w = w.const_data_ptr<scalar_t>();
      d.bias = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
      d.out = view_of<scalar_t>(yc);
      d.pos = pos_of(std::nullopt);
      d.g = gc;
      d.p = identity_pool(gc);
      bool patch = false;
      const bool want_gemm = gemm_shape(g.Kg(), g.Cg() * g.R * g.S) && (dtype == at::kFloat || exec.tensor_cores());
      if (!want_gemm && plan_direct(d, patch)) {
        launch_direct<scalar_t, false>(exec, d, patch);
        continue;
      }
      GemmArgs<scalar_t> a = gemm_args<scalar_t>(gc);
      a.act = view_of<const scalar_t>(xc);
      a.w = d.w;
      a.bias = d.bias;
      a.out = d.out;
      a.pos = d.pos;
      a.M = static_cast<idx>(nc * g.OH * g.OW), a.N = static_cast<idx>(g.Kg()), a.Kred = static_cast<idx>(g.Cg() * g.R * g.S);
      launch_gemm<kFwd>(exec, a, allow_tf32, x);
    }
  });
  y.finish();
}

template <class Exec>
void conv2d_input_grad(const at::Tensor& grad, const at::Tensor& weight, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, bool allow_tf32,
                       const at::Tensor& out) {
  const char* op = "conv2d_input_grad_kernel";
  const ConvGeom f = check_conv2d_input_grad(grad, weight, stride, padding, dilation, groups, out);
  if (out.numel() == 0) return;
  check_extent(op, f);
  const Exec exec(out.device());
  const auto dtype = weight.scalar_type();
  const at::Tensor w = weight.contiguous(), dy = grad.to(dtype);
  TypedOut gi(out, dtype);
  if (f.OH == 0 || f.OW == 0) {
    gi.t.zero_();
    gi.finish();
    return;
  }
  const int64_t G = f.groups, Kg = f.Kg(), Cg = f.Cg();
  const int64_t chunk = batch_chunk(op, f.N, std::max(f.C * f.H * f.W, f.K * f.OH * f.OW));
  // The direct program's view: a stride-1 forward conv of dy zero-upsampled by the stride, padded by
  // (R-1)*dh - ph (negative: a crop), with wt[g*Cg + c][k][R-1-r][S-1-s] = w[g*Kg + k][c][r][s].
  ConvGeom t;
  t.N = f.N, t.C = f.K, t.H = (f.OH - 1) * f.sh + 1, t.W = (f.OW - 1) * f.sw + 1;
  t.K = f.C, t.R = f.R, t.S = f.S, t.OH = f.H, t.OW = f.W, t.groups = G;
  t.sh = 1, t.sw = 1, t.dh = f.dh, t.dw = f.dw;
  t.ph = (f.R - 1) * f.dh - f.ph, t.pw = (f.S - 1) * f.dw - f.pw;
  const bool want_gemm = gemm_shape(Cg, Kg * f.R * f.S) && (dtype == at::kFloat || exec.tensor_cores());
  at::Tensor wt;
  CNNFAST_DISPATCH_FLOAT(dtype, "cnnfast_cuda_conv2d_input_grad", [&] {
    for (int64_t n0 = 0; n0 < f.N; n0 += chunk) {
      const int64_t nc = std::min(chunk, f.N - n0);
      const at::Tensor dyc = dy.narrow(0, n0, nc), gic = gi.t.narrow(0, n0, nc);
      if (!want_gemm) {
        DirectArgs<scalar_t> d{};
        d.x = view_of<const scalar_t>(dyc);
        d.Hx = static_cast<idx>(f.OH), d.Wx = static_cast<idx>(f.OW);
        d.up_h = static_cast<idx>(f.sh), d.up_w = static_cast<idx>(f.sw);
        d.bias = nullptr;
        d.out = view_of<scalar_t>(gic);
        d.pos = pos_of(std::nullopt);
        d.g = with_batch(t, nc);
        d.p = identity_pool(d.g);
        bool patch = false;
        if (plan_direct(d, patch)) {
          if (!wt.defined())
            wt = w.reshape({G, Kg, Cg, f.R, f.S}).transpose(1, 2).flip({3, 4}).reshape({G * Cg, Kg, f.R, f.S}).contiguous();
          d.w = wt.const_data_ptr<scalar_t>();
          launch_direct<scalar_t, false>(exec, d, patch);
          continue;
        }
      }
      GemmArgs<scalar_t> a = gemm_args<scalar_t>(with_batch(f, nc));
      a.act = view_of<const scalar_t>(dyc);
      a.w = w.const_data_ptr<scalar_t>();
      a.out = view_of<scalar_t>(gic);
      a.M = static_cast<idx>(nc * f.H * f.W), a.N = static_cast<idx>(Cg), a.Kred = static_cast<idx>(Kg * f.R * f.S);
      launch_gemm<kDgrad>(exec, a, allow_tf32, out);
    }
  });
  gi.finish();
}

template <class Exec>
void conv2d_weight_grad(const at::Tensor& x, const at::Tensor& grad, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation, int64_t groups, bool allow_tf32, const at::Tensor& out) {
  const char* op = "conv2d_weight_grad_kernel";
  const ConvGeom g = check_conv2d_weight_grad(x, grad, stride, padding, dilation, groups, out);
  if (out.numel() == 0) return;
  check_extent(op, g);
  const Exec exec(x.device());
  const auto dtype = x.scalar_type();
  const at::Tensor dy = grad.to(dtype);
  TypedOut gw(out, dtype);
  const int64_t crs = g.Cg() * g.R * g.S, total = g.K * crs;
  if (g.N == 0 || g.OH == 0 || g.OW == 0) {
    gw.t.zero_();
    gw.finish();
    return;
  }
  TORCH_CHECK(total < (int64_t{1} << 31), op, ": weights of 2^31 elements and more are not supported");
  const int64_t chunk = batch_chunk(op, g.N, std::max(g.C * g.H * g.W, g.K * g.OH * g.OW));
  const int64_t chunks = (g.N + chunk - 1) / chunk;
  const bool use_gemm = gemm_shape(g.Kg(), crs) && (dtype == at::kFloat || exec.tensor_cores());
  // Splits per chunk, the same for every chunk but the last, which may hold fewer images.
  auto splits_of = [&](int64_t nc) -> idx {
    const int64_t P = nc * g.OH * g.OW;
    if (use_gemm) {
      const int64_t BN = g.Kg() <= 32 ? 32 : 64;
      const int64_t blocks = ((crs + 127) / 128) * ((g.Kg() + BN - 1) / BN) * g.groups;
      return wgrad_splits(blocks, (P + kWgradBK - 1) / kWgradBK, g.groups);
    }
    const int64_t want = (65536 + total - 1) / total, by_len = (P + 255) / 256;
    return static_cast<idx>(std::max<int64_t>(1, std::min({want, by_len, int64_t{65535}})));
  };
  std::vector<idx> splits(chunks);
  int64_t all_splits = 0;
  for (int64_t c = 0; c < chunks; ++c) all_splits += splits[c] = splits_of(std::min(chunk, g.N - c * chunk));
  TORCH_CHECK(all_splits < (int64_t{1} << 31), op, ": too many splits");
  at::Tensor ws = scratch({all_splits, total}, x.options().dtype(at::kFloat));
  CNNFAST_DISPATCH_FLOAT(dtype, "cnnfast_cuda_conv2d_weight_grad", [&] {
    int64_t first = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t n0 = c * chunk, nc = std::min(chunk, g.N - n0);
      const ConvGeom gc = with_batch(g, nc);
      const at::Tensor xc = x.narrow(0, n0, nc), dyc = dy.narrow(0, n0, nc);
      float* wsc = ws.data_ptr<float>() + first * total;
      const idx sp = splits[c];
      first += sp;
      const int64_t P = nc * g.OH * g.OW;
      if (use_gemm) {
        GemmArgs<scalar_t> a = gemm_args<scalar_t>(gc);
        a.act = view_of<const scalar_t>(xc);
        a.dy = view_of<const scalar_t>(dyc);
        a.ws = wsc;
        a.M = static_cast<idx>(crs), a.N = static_cast<idx>(g.Kg()), a.Kred = static_cast<idx>(P);
        a.splits = sp;
        const int64_t steps = (P + kWgradBK - 1) / kWgradBK;
        a.steps_per_split = static_cast<idx>((steps + sp - 1) / sp);
        launch_gemm<kWgrad>(exec, a, allow_tf32, x);
      } else {
        WgradDirect<scalar_t> prog;
        prog.x = view_of<const scalar_t>(xc);
        prog.dy = view_of<const scalar_t>(dyc);
        prog.ws = wsc;
        prog.g = gc;
        prog.splits = sp;
        prog.per_split = static_cast<idx>((P + sp - 1) / sp);
        exec.launch(prog);
      }
    }
    SplitReduce<scalar_t> red;
    red.ws = ws.const_data_ptr<float>();
    red.splits = static_cast<idx>(all_splits), red.total = static_cast<idx>(total);
    red.d1 = static_cast<idx>(out.size(1)), red.d2 = static_cast<idx>(out.size(2)), red.d3 = static_cast<idx>(out.size(3));
    red.out = view_of<scalar_t>(gw.t);
    exec.launch(red);
  });
  gw.finish();
}

// gb[k] = sum of grad[:, k] (where pos >= 0, when given): per-chunk splits of the pixels, then the
// splits summed in order.
template <class Exec>
void bias_grad(const char* op, const at::Tensor& grad, const std::optional<at::Tensor>& pos, const at::Tensor& out) {
  if (out.numel() == 0) return;
  const Exec exec(grad.device());
  const int64_t N = grad.size(0), K = grad.size(1), OH = grad.size(2), OW = grad.size(3);
  TypedOut gb(out.view({1, K, 1, 1}), grad.scalar_type());
  const int64_t chunk = N == 0 ? 1 : batch_chunk(op, N, K * OH * OW);
  const int64_t chunks = N == 0 ? 0 : (N + chunk - 1) / chunk;
  auto splits_of = [&](int64_t nc) -> idx {
    const int64_t P = nc * OH * OW;
    const int64_t want = (528 + K - 1) / K, by_len = (P + 4095) / 4096;
    return static_cast<idx>(std::max<int64_t>(1, std::min({want, by_len, int64_t{65535}})));
  };
  std::vector<idx> splits(chunks);
  int64_t all_splits = 0;
  for (int64_t c = 0; c < chunks; ++c) all_splits += splits[c] = splits_of(std::min(chunk, N - c * chunk));
  if (all_splits == 0) {
    gb.t.zero_();
    gb.finish();
    return;
  }
  at::Tensor ws = scratch({all_splits, K}, grad.options().dtype(at::kFloat));
  CNNFAST_DISPATCH_FLOAT(grad.scalar_type(), "cnnfast_cuda_bias_grad", [&] {
    int64_t first = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t n0 = c * chunk, nc = std::min(chunk, N - n0);
      BiasGradPartial<scalar_t> prog;
      prog.dy = view_of<const scalar_t>(grad.narrow(0, n0, nc));
      prog.mask = pos.has_value() ? pos_of(pos->narrow(0, n0, nc)) : pos_of(std::nullopt);
      prog.ws = ws.data_ptr<float>() + first * K;
      prog.N = static_cast<idx>(nc), prog.K = static_cast<idx>(K), prog.OH = static_cast<idx>(OH), prog.OW = static_cast<idx>(OW);
      prog.splits = splits[c];
      prog.per_split = static_cast<idx>((nc * OH * OW + splits[c] - 1) / splits[c]);
      first += splits[c];
      exec.launch(prog);
    }
    SplitReduce<scalar_t> red;
    red.ws = ws.const_data_ptr<float>();
    red.splits = static_cast<idx>(all_splits), red.total = static_cast<idx>(K);
    red.d1 = static_cast<idx>(K), red.d2 = 1, red.d3 = 1;
    red.out = view_of<scalar_t>(gb.t);
    exec.launch(red);
  });
  gb.finish();
}

template <class Exec>
void conv2d_bias_grad(const at::Tensor& grad, const at::Tensor& out) {
  check_conv2d_bias_grad(grad, out);
  bias_grad<Exec>("conv2d_bias_grad_kernel", grad, std::nullopt, out);
}

// ---- max_pool2d -------------------------------------------------------------------------------------

template <class Exec>
void max_pool2d_fwd(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                    at::IntArrayRef dilation, const at::Tensor& out, const std::optional<at::Tensor>& indices) {
  const char* op = "max_pool2d_fwd_kernel";
  const PoolGeom p = check_max_pool2d_fwd(x, kernel, stride, padding, dilation, out, indices);
  if (out.numel() == 0) return;
  const Exec exec(x.device());
  const int64_t N = x.size(0), C = x.size(1);
  const int64_t chunk = batch_chunk(op, N, C * std::max(p.H * p.W, p.OH * p.OW));
  CNNFAST_DISPATCH_FLOAT(x.scalar_type(), "cnnfast_cuda_max_pool2d", [&] {
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
      const int64_t nc = std::min(chunk, N - n0);
      MaxPoolFwd<scalar_t> prog;
      prog.x = view_of<const scalar_t>(x.narrow(0, n0, nc));
      prog.out = view_of<scalar_t>(out.narrow(0, n0, nc));
      prog.indices = indices.has_value() ? view_of<int64_t>(indices->narrow(0, n0, nc)) : View<int64_t>{nullptr, 0, 0, 0, 0};
      prog.N = static_cast<idx>(nc), prog.C = static_cast<idx>(C);
      prog.p = p;
      exec.launch(prog);
    }
  });
}

template <class Exec>
void max_pool2d_bwd(const at::Tensor& grad, const at::Tensor& indices, at::IntArrayRef kernel, at::IntArrayRef stride,
                    at::IntArrayRef padding, at::IntArrayRef dilation, const at::Tensor& out) {
  const char* op = "max_pool2d_bwd_kernel";
  const PoolGeom p = check_max_pool2d_bwd(grad, indices, kernel, stride, padding, dilation, out);
  if (out.numel() == 0) return;
  const Exec exec(out.device());
  const int64_t N = out.size(0), C = out.size(1);
  const int64_t chunk = batch_chunk(op, N, C * std::max(p.H * p.W, p.OH * p.OW));
  CNNFAST_DISPATCH_FLOAT(grad.scalar_type(), "cnnfast_cuda_max_pool2d_bwd", [&] {
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
      const int64_t nc = std::min(chunk, N - n0);
      MaxPoolBwd<scalar_t> prog;
      prog.grad = view_of<const scalar_t>(grad.narrow(0, n0, nc));
      prog.indices = view_of<const int64_t>(indices.narrow(0, n0, nc));
      prog.out = view_of<scalar_t>(out.narrow(0, n0, nc));
      prog.N = static_cast<idx>(nc), prog.C = static_cast<idx>(C);
      prog.p = p;
      exec.launch(prog);
    }
  });
}

// ---- conv2d + bias + ReLU + max_pool2d ----------------------------------------------------------------

template <class Exec>
void fused_fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
               at::IntArrayRef conv_out_size, at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
               at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation, bool allow_tf32, const at::Tensor& out,
               const std::optional<at::Tensor>& pos) {
  const char* op = "conv_relu_maxpool2d_fwd_kernel";
  const auto geom = check_fused_fwd(x, weight, bias, stride, padding, dilation, groups, conv_out_size, pool_kernel,
                                    pool_stride, pool_padding, pool_dilation, out, pos);
  const ConvGeom g = geom.first;
  const PoolGeom p = geom.second;
  if (out.numel() == 0) return;
  check_extent(op, g);
  const Exec exec(x.device());
  const auto dtype = x.scalar_type();
  const at::Tensor w = weight.to(dtype).contiguous();
  const at::Tensor b = bias.has_value() ? bias->to(dtype).contiguous() : at::Tensor();
  const int64_t taps = p.kh * p.kw;
  // per image: the tensors, and the GEMM rows of the pooling windows (at most twice pooled x taps)
  const int64_t chunk = batch_chunk(op, g.N, std::max({g.C * g.H * g.W, g.K * g.OH * g.OW, g.K * p.OH * p.OW,
                                                        2 * p.OH * p.OW * taps + 128}));
  CNNFAST_DISPATCH_FLOAT(dtype, "cnnfast_cuda_fused", [&] {
    for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
      const int64_t nc = std::min(chunk, g.N - n0);
      const ConvGeom gc = with_batch(g, nc);
      const at::Tensor xc = x.narrow(0, n0, nc);
      const std::optional<at::Tensor> posc = pos.has_value() ? std::optional<at::Tensor>(pos->narrow(0, n0, nc)) : std::nullopt;
      DirectArgs<scalar_t> d{};
      d.x = view_of<const scalar_t>(xc);
      d.Hx = static_cast<idx>(g.H), d.Wx = static_cast<idx>(g.W), d.up_h = 1, d.up_w = 1;
      d.w = w.const_data_ptr<scalar_t>();
      d.bias = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
      d.out = view_of<scalar_t>(out.narrow(0, n0, nc));
      d.pos = pos_of(posc);
      d.g = gc;
      d.p = p;
      const bool gemm_fits = taps <= 128 && (dtype == at::kFloat || exec.tensor_cores());
      bool patch = false;
      if (!(gemm_fits && gemm_shape(g.Kg(), g.Cg() * g.R * g.S)) && plan_direct(d, patch)) {
        launch_direct<scalar_t, true>(exec, d, patch);
        continue;
      }
      TORCH_CHECK(gemm_fits, op, ": a ", g.R, "x", g.S, " kernel with a ", p.kh, "x", p.kw,
                  " pooling window is not supported by backend 'cuda'; use backend='triton' or 'torch'");
      GemmArgs<scalar_t> a = gemm_args<scalar_t>(gc);
      a.act = d.x;
      a.w = d.w;
      a.bias = d.bias;
      a.out = d.out;
      a.pos = d.pos;
      a.p = p;
      a.N = static_cast<idx>(g.Kg()), a.Kred = static_cast<idx>(g.Cg() * g.R * g.S);
      launch_gemm<kFwdPool>(exec, a, allow_tf32, x);
    }
  });
}

// The fused op's conv-output gradient dy (N, K, OH, OW, float32) rebuilt from (grad, pos): a temporary
// that lives for one gradient op (the programs' gathers would repeat the window scan per element).
template <class Exec>
at::Tensor unpool(const Exec& exec, const char* op, const at::Tensor& grad, const at::Tensor& pos, const PoolGeom& p) {
  const int64_t N = grad.size(0), K = grad.size(1);
  at::Tensor dy = scratch({N, K, p.H, p.W}, grad.options().dtype(at::kFloat));
  if (dy.numel() == 0) return dy;
  const int64_t chunk = batch_chunk(op, N, K * std::max(p.H * p.W, p.OH * p.OW));
  CNNFAST_DISPATCH_FLOAT(grad.scalar_type(), "cnnfast_cuda_unpool", [&] {
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
      const int64_t nc = std::min(chunk, N - n0);
      Unpool<scalar_t> prog;
      prog.grad = view_of<const scalar_t>(grad.narrow(0, n0, nc));
      prog.pos = pos_of(pos.narrow(0, n0, nc));
      prog.dy = view_of<float>(dy.narrow(0, n0, nc));
      prog.N = static_cast<idx>(nc), prog.K = static_cast<idx>(K);
      prog.p = p;
      exec.launch(prog);
    }
  });
  return dy;
}

template <class Exec>
void fused_input_grad(const at::Tensor& grad, const at::Tensor& pos, const at::Tensor& weight, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, at::IntArrayRef conv_out_size,
                      at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
                      at::IntArrayRef pool_dilation, bool allow_tf32, const at::Tensor& out) {
  const char* op = "conv_relu_maxpool2d_input_grad_kernel";
  check_float(weight, op, "weight");
  TORCH_CHECK(out.dim() == 4, op, ": out must be 4-D");
  const auto geom = check_fused_grad(op, out, weight, grad, pos, stride, padding, dilation, groups, conv_out_size,
                                     pool_kernel, pool_stride, pool_padding, pool_dilation);
  if (out.numel() == 0) return;
  const Exec exec(out.device());
  const at::Tensor dy = unpool(exec, op, grad, pos, geom.second);
  conv2d_input_grad<Exec>(dy, weight, stride, padding, dilation, groups, allow_tf32, out);
}

template <class Exec>
void fused_weight_grad(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& pos, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, at::IntArrayRef conv_out_size,
                       at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
                       at::IntArrayRef pool_dilation, bool allow_tf32, const at::Tensor& out) {
  const char* op = "conv_relu_maxpool2d_weight_grad_kernel";
  const auto geom = check_fused_grad(op, x, out, grad, pos, stride, padding, dilation, groups, conv_out_size,
                                     pool_kernel, pool_stride, pool_padding, pool_dilation);
  if (out.numel() == 0) return;
  const Exec exec(x.device());
  const at::Tensor dy = unpool(exec, op, grad, pos, geom.second);
  conv2d_weight_grad<Exec>(x, dy, stride, padding, dilation, groups, allow_tf32, out);
}

template <class Exec>
void fused_bias_grad(const at::Tensor& grad, const at::Tensor& pos, const at::Tensor& out) {
  check_fused_bias_grad(grad, pos, out);
  bias_grad<Exec>("conv_relu_maxpool2d_bias_grad_kernel", grad, pos, out);
}

}  // namespace impl
}  // namespace cuda
}  // namespace cnnfast
