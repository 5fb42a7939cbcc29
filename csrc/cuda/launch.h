// What the CUDA backend's host code (conv2d.h, max_pool2d.h, conv_relu_maxpool2d.h) shares: views of
// tensors for the block programs, the batch chunks that keep the programs' int32 index math in range
// (offsets are int64 throughout), the choice between the direct and the implicit-GEMM programs and
// their tiling, and the in-order reduction of split partial sums. Everything is written against an
// execution context `Exec`: DeviceExec (device.cuh) launches the programs on the GPU, EmulatorExec
// (emulator.h) runs them on the CPU. The choice of program is a function of the shape, the dtype and
// allow_tf32 only.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "../common/host.h"
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

template <typename T>
View<T> view_of(const at::Tensor& t) {
  return View<T>{static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

inline PosView pos_of(const std::optional<at::Tensor>& pos) {
  if (!pos.has_value()) return PosView{nullptr, 1, 0, 0, 0, 0};
  const at::Tensor& t = *pos;
  return PosView{t.data_ptr(), static_cast<int>(t.element_size()), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// ---- batch chunks -----------------------------------------------------------------------------------

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

// body(n0, nc) for the chunks [n0, n0 + nc) of `chunk` images (the last may hold fewer) of N.
template <class Body>
void for_each_chunk(int64_t N, int64_t chunk, Body body) {
  for (int64_t n0 = 0; n0 < N; n0 += chunk) body(n0, std::min(chunk, N - n0));
}

inline std::optional<at::Tensor> narrow_opt(const std::optional<at::Tensor>& t, int64_t n0, int64_t nc) {
  return t.has_value() ? std::optional<at::Tensor>(t->narrow(0, n0, nc)) : std::nullopt;
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
inline idx weight_grad_splits(int64_t blocks, int64_t steps, int64_t groups) {
  const int64_t want = (528 + blocks - 1) / std::max<int64_t>(blocks, 1);
  const int64_t by_len = std::max<int64_t>(1, steps / 4);
  return static_cast<idx>(std::max<int64_t>(1, std::min({want, by_len, int64_t{65535} / groups})));
}

template <int KIND, typename T, class Mma, int BN, class Exec>
void launch_gemm_tiles(const Exec& exec, GemmArgs<T> a) {
  using P = ConvGemm<KIND, T, Mma, BN>;
  if (KIND == kForwardPool) {
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
  if constexpr (KIND != kWeightGrad) {
    constexpr bool input_grad = KIND == kInputGrad;
    table = scratch({static_cast<int64_t>(a.Kred) * static_cast<int64_t>(input_grad ? sizeof(InputGradTap) : sizeof(Tap))},
                    like.options().dtype(at::kChar));
    TapTable<T, input_grad> prog;
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

// ---- pooling ----------------------------------------------------------------------------------------

// Launches Prog (MaxPoolFwd, MaxPoolBwd, Unpool) over the planes (N, C, ...) of `planes` in batch
// chunks: fill(prog, scalar_t(), n0, nc) sets the tensors of images [n0, n0 + nc).
template <template <typename> class Prog, class Exec, class Fill>
void launch_pooling(const char* op, const at::Tensor& planes, at::ScalarType dtype, const PoolGeom& p, Fill fill) {
  const Exec exec(planes.device());
  const int64_t N = planes.size(0), C = planes.size(1);
  const int64_t chunk = batch_chunk(op, N, C * std::max(p.H * p.W, p.OH * p.OW));
  CNNFAST_DISPATCH_FLOAT(dtype, "cnnfast_cuda_pooling", [&] {
    for_each_chunk(N, chunk, [&](int64_t n0, int64_t nc) {
      Prog<scalar_t> prog;
      fill(prog, scalar_t(), n0, nc);
      prog.N = static_cast<idx>(nc), prog.C = static_cast<idx>(C);
      prog.p = p;
      exec.launch(prog);
    });
  });
}

// ---- split sums ---------------------------------------------------------------------------------

// The split counts of the chunks of a reduction over the batch (splits_of(images) each) and their sum.
template <class SplitsOf>
std::vector<idx> chunk_splits(int64_t N, int64_t chunk, SplitsOf splits_of, int64_t& all_splits) {
  std::vector<idx> splits;
  all_splits = 0;
  for_each_chunk(N, chunk, [&](int64_t, int64_t nc) {
    splits.push_back(splits_of(nc));
    all_splits += splits.back();
  });
  return splits;
}

// out (d1, d2, d3 per row of `total` elements) = the sum over the `splits` rows of ws, in order.
template <typename T, class Exec>
void split_reduce(const Exec& exec, const at::Tensor& ws, int64_t splits, int64_t total, const at::Tensor& out) {
  SplitReduce<T> red;
  red.ws = ws.const_data_ptr<float>();
  red.splits = static_cast<idx>(splits), red.total = static_cast<idx>(total);
  red.d1 = static_cast<idx>(out.size(1)), red.d2 = static_cast<idx>(out.size(2)), red.d3 = static_cast<idx>(out.size(3));
  red.out = view_of<T>(out);
  exec.launch(red);
}

}  // namespace cuda
}  // namespace cnnfast
