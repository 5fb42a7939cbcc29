// conv2d's host code on CUDA, for either execution context `Exec` (launch.h): converts inputs to one
// dtype, chooses a program and its tiling from the shape, and launches it in batch chunks.
//   forward          implicit GEMM (conv_gemm.h) when K/g >= 32 and C/g*R*S >= 32, else direct
//                    convolution (conv_direct.h) -- tensor cores for float16 / bfloat16, TF32 tensor
//                    cores for float32 when allow_tf32, exact float32 FMA otherwise
//   input gradient   GEMM when C/g >= 32 and K/g*R*S >= 32, else the direct program on the
//                    zero-upsampled dy with the flipped weight (geometry.h: input_grad_as_forward)
//   weight gradient  split-K GEMM when K/g >= 32 and C/g*R*S >= 32, else WeightGradDirect; both reduce
//                    their splits in order (reduce.h)
//   bias gradient    per-chunk splits of the pixels (BiasGradPartial), summed in order; with pos, the
//                    fused op's (only the pooled cells whose pos >= 0)
#pragma once

#include "launch.h"

namespace cnnfast {
namespace cuda {

// The direct program's arguments for a chunk: input x (read zero-upsampled by `up`), output `out`.
template <typename T>
DirectArgs<T> direct_args(const at::Tensor& x, int64_t up_h, int64_t up_w, const at::Tensor& out, const ConvGeom& g,
                          const PoolGeom& p) {
  DirectArgs<T> d{};
  d.x = view_of<const T>(x);
  d.Hx = static_cast<idx>(x.size(2)), d.Wx = static_cast<idx>(x.size(3));
  d.up_h = static_cast<idx>(up_h), d.up_w = static_cast<idx>(up_w);
  d.out = view_of<T>(out);
  d.pos = pos_of(std::nullopt);
  d.g = g;
  d.p = p;
  return d;
}

// A forward conv's weight and bias in the input's dtype, contiguous, as the programs read them.
struct ForwardParams {
  at::ScalarType dtype;
  at::Tensor w, b;
  explicit ForwardParams(const Conv2dForward& a)
      : dtype(a.x.scalar_type()),
        w(a.weight.to(dtype).contiguous()),
        b(a.bias.has_value() ? a.bias->to(dtype).contiguous() : at::Tensor()) {}
};

// The forward programs' arguments for images [n0, n0 + nc) of the conv `a` into `out` (of the chunk)
// with pooling p (identity_pool for conv2d): the direct program's, and from them the GEMM's.
template <typename T>
DirectArgs<T> forward_args(const Conv2dForward& a, const ForwardParams& wb, int64_t n0, int64_t nc,
                           const at::Tensor& out, const PoolGeom& p) {
  DirectArgs<T> d = direct_args<T>(a.x.narrow(0, n0, nc), 1, 1, out, with_batch(a.g, nc), p);
  d.w = wb.w.const_data_ptr<T>();
  d.bias = wb.b.defined() ? wb.b.const_data_ptr<T>() : nullptr;
  return d;
}

template <typename T>
GemmArgs<T> forward_gemm_args(const DirectArgs<T>& d) {
  GemmArgs<T> ga = gemm_args<T>(d.g);
  ga.act = d.x;
  ga.w = d.w;
  ga.bias = d.bias;
  ga.out = d.out;
  ga.pos = d.pos;
  ga.p = d.p;
  ga.N = static_cast<idx>(d.g.Kg()), ga.Kred = static_cast<idx>(d.g.Cg() * d.g.R * d.g.S);
  return ga;
}

// The frame of a conv op: checks the extent, then runs body(exec, t, scalar_t()) with `t` the tensor of
// `dtype` the programs write for `out` (OutAs), dispatched on dtype.
template <class Exec, class Body>
void run_conv(const char* op, const ConvGeom& g, const at::Tensor& out, at::ScalarType dtype, Body body) {
  check_extent(op, g);
  const Exec exec(out.device());
  OutAs y(out, dtype);
  CNNFAST_DISPATCH_FLOAT(dtype, "cnnfast_cuda_conv", [&] { body(exec, y.t, scalar_t()); });
  y.finish();
}

template <class Exec>
void conv2d_forward(const Conv2dForward& a) {
  const char* op = "conv2d_forward_kernel";
  const ConvGeom& g = a.g;
  const ForwardParams wb(a);
  run_conv<Exec>(op, g, a.out, wb.dtype, [&](const Exec& exec, const at::Tensor& y, auto type) {
    using T = decltype(type);
    const bool want_gemm = gemm_shape(g.Kg(), g.Cg() * g.R * g.S) && (wb.dtype == at::kFloat || exec.tensor_cores());
    const int64_t chunk = batch_chunk(op, g.N, std::max(g.C * g.H * g.W, g.K * g.OH * g.OW));
    for_each_chunk(g.N, chunk, [&](int64_t n0, int64_t nc) {
      DirectArgs<T> d = forward_args<T>(a, wb, n0, nc, y.narrow(0, n0, nc), identity_pool(with_batch(g, nc)));
      bool patch = false;
      if (!want_gemm && plan_direct(d, patch)) return launch_direct<T, false>(exec, d, patch);
      GemmArgs<T> ga = forward_gemm_args(d);
      ga.M = static_cast<idx>(nc * g.OH * g.OW);
      launch_gemm<kForward>(exec, ga, a.allow_tf32, a.x);
    });
  });
}

template <class Exec>
void conv2d_input_grad(const Conv2dInputGrad& a) {
  const char* op = "conv2d_input_grad_kernel";
  const ConvGeom& f = a.g;
  const auto dtype = a.weight.scalar_type();
  const at::Tensor w = a.weight.contiguous(), dy = a.grad.to(dtype);
  const int64_t Kg = f.Kg(), Cg = f.Cg();
  const ConvGeom t = input_grad_as_forward(f);
  at::Tensor wt;
  run_conv<Exec>(op, f, a.out, dtype, [&](const Exec& exec, const at::Tensor& gi, auto type) {
    using T = decltype(type);
    if (f.OH == 0 || f.OW == 0) return void(gi.zero_());
    const bool want_gemm = gemm_shape(Cg, Kg * f.R * f.S) && (dtype == at::kFloat || exec.tensor_cores());
    const int64_t chunk = batch_chunk(op, f.N, std::max(f.C * f.H * f.W, f.K * f.OH * f.OW));
    for_each_chunk(f.N, chunk, [&](int64_t n0, int64_t nc) {
      const at::Tensor dyc = dy.narrow(0, n0, nc), gic = gi.narrow(0, n0, nc);
      if (!want_gemm) {
        const ConvGeom tc = with_batch(t, nc);
        DirectArgs<T> d = direct_args<T>(dyc, f.sh, f.sw, gic, tc, identity_pool(tc));
        bool patch = false;
        if (plan_direct(d, patch)) {
          if (!wt.defined()) wt = flipped_weight(w, f.groups);
          d.w = wt.const_data_ptr<T>();
          return launch_direct<T, false>(exec, d, patch);
        }
      }
      GemmArgs<T> ga = gemm_args<T>(with_batch(f, nc));
      ga.act = view_of<const T>(dyc);
      ga.w = w.const_data_ptr<T>();
      ga.out = view_of<T>(gic);
      ga.M = static_cast<idx>(nc * f.H * f.W), ga.N = static_cast<idx>(Cg), ga.Kred = static_cast<idx>(Kg * f.R * f.S);
      launch_gemm<kInputGrad>(exec, ga, a.allow_tf32, a.out);
    });
  });
}

// Splits per chunk of the weight gradient (the same for every chunk but the last, which may hold
// fewer images): a function of the shape only, and with it the summation order.
inline idx weight_grad_chunk_splits(const ConvGeom& g, bool use_gemm, int64_t nc) {
  const int64_t crs = g.Cg() * g.R * g.S, total = g.K * crs, P = nc * g.OH * g.OW;
  if (use_gemm) {
    const int64_t BN = g.Kg() <= 32 ? 32 : 64;
    const int64_t blocks = ((crs + 127) / 128) * ((g.Kg() + BN - 1) / BN) * g.groups;
    return weight_grad_splits(blocks, (P + kWeightGradBK - 1) / kWeightGradBK, g.groups);
  }
  const int64_t want = (65536 + total - 1) / total, by_len = (P + 255) / 256;
  return static_cast<idx>(std::max<int64_t>(1, std::min({want, by_len, int64_t{65535}})));
}

template <class Exec>
void conv2d_weight_grad(const Conv2dWeightGrad& a) {
  const char* op = "conv2d_weight_grad_kernel";
  const ConvGeom& g = a.g;
  const auto dtype = a.x.scalar_type();
  const at::Tensor dy = a.grad.to(dtype);
  const int64_t crs = g.Cg() * g.R * g.S, total = g.K * crs;
  run_conv<Exec>(op, g, a.out, dtype, [&](const Exec& exec, const at::Tensor& gw, auto type) {
    using T = decltype(type);
    if (g.N == 0 || g.OH == 0 || g.OW == 0) return void(gw.zero_());
    TORCH_CHECK(total < (int64_t{1} << 31), op, ": weights of 2^31 elements and more are not supported");
    const int64_t chunk = batch_chunk(op, g.N, std::max(g.C * g.H * g.W, g.K * g.OH * g.OW));
    const bool use_gemm = gemm_shape(g.Kg(), crs) && (dtype == at::kFloat || exec.tensor_cores());
    int64_t all_splits;
    const std::vector<idx> splits =
        chunk_splits(g.N, chunk, [&](int64_t nc) { return weight_grad_chunk_splits(g, use_gemm, nc); }, all_splits);
    TORCH_CHECK(all_splits < (int64_t{1} << 31), op, ": too many splits");
    at::Tensor ws = scratch({all_splits, total}, a.x.options().dtype(at::kFloat));
    int64_t first = 0;
    for_each_chunk(g.N, chunk, [&](int64_t n0, int64_t nc) {
      const ConvGeom gc = with_batch(g, nc);
      const at::Tensor xc = a.x.narrow(0, n0, nc), dyc = dy.narrow(0, n0, nc);
      float* wsc = ws.data_ptr<float>() + first * total;
      const idx sp = splits[n0 / chunk];
      first += sp;
      const int64_t P = nc * g.OH * g.OW;
      if (use_gemm) {
        GemmArgs<T> ga = gemm_args<T>(gc);
        ga.act = view_of<const T>(xc);
        ga.dy = view_of<const T>(dyc);
        ga.ws = wsc;
        ga.M = static_cast<idx>(crs), ga.N = static_cast<idx>(g.Kg()), ga.Kred = static_cast<idx>(P);
        ga.splits = sp;
        ga.steps_per_split = static_cast<idx>(((P + kWeightGradBK - 1) / kWeightGradBK + sp - 1) / sp);
        return launch_gemm<kWeightGrad>(exec, ga, a.allow_tf32, a.x);
      }
      WeightGradDirect<T> prog;
      prog.x = view_of<const T>(xc);
      prog.dy = view_of<const T>(dyc);
      prog.ws = wsc;
      prog.g = gc;
      prog.splits = sp;
      prog.per_split = static_cast<idx>((P + sp - 1) / sp);
      exec.launch(prog);
    });
    split_reduce<T>(exec, ws, all_splits, total, gw);
  });
}

// gb[k] = sum of grad[:, k] (where pos >= 0, when given: the fused op's).
template <class Exec>
void bias_grad(const BiasGrad& a) {
  const char* op = a.pos.has_value() ? "conv_relu_maxpool2d_bias_grad_kernel" : "conv2d_bias_grad_kernel";
  const at::Tensor& grad = a.grad;
  const Exec exec(grad.device());
  const int64_t N = grad.size(0), K = grad.size(1), OH = grad.size(2), OW = grad.size(3);
  OutAs gb(a.out.view({1, K, 1, 1}), grad.scalar_type());
  const int64_t chunk = N == 0 ? 1 : batch_chunk(op, N, K * OH * OW);
  int64_t all_splits;
  const std::vector<idx> splits = chunk_splits(N, chunk, [&](int64_t nc) -> idx {
    const int64_t P = nc * OH * OW;
    const int64_t want = (528 + K - 1) / K, by_len = (P + 4095) / 4096;
    return static_cast<idx>(std::max<int64_t>(1, std::min({want, by_len, int64_t{65535}})));
  }, all_splits);
  if (all_splits == 0) {
    gb.t.zero_();
    return gb.finish();
  }
  at::Tensor ws = scratch({all_splits, K}, grad.options().dtype(at::kFloat));
  CNNFAST_DISPATCH_FLOAT(grad.scalar_type(), "cnnfast_cuda_bias_grad", [&] {
    int64_t first = 0;
    for_each_chunk(N, chunk, [&](int64_t n0, int64_t nc) {
      BiasGradPartial<scalar_t> prog;
      prog.dy = view_of<const scalar_t>(grad.narrow(0, n0, nc));
      prog.mask = pos_of(narrow_opt(a.pos, n0, nc));
      prog.ws = ws.data_ptr<float>() + first * K;
      prog.N = static_cast<idx>(nc), prog.K = static_cast<idx>(K), prog.OH = static_cast<idx>(OH), prog.OW = static_cast<idx>(OW);
      prog.splits = splits[n0 / chunk];
      prog.per_split = static_cast<idx>((nc * OH * OW + prog.splits - 1) / prog.splits);
      first += prog.splits;
      exec.launch(prog);
    });
    split_reduce<scalar_t>(exec, ws, all_splits, K, gb.t);
  });
  gb.finish();
}

// conv2d's ops for the registrar `r` (r.def(name, function), as cuda/emulated.cpp and device.cuh do).
template <class Exec, class Registrar>
void register_conv2d(Registrar& r) {
  r.def("conv2d_forward_kernel", &ops::conv2d_forward_kernel<&conv2d_forward<Exec>>);
  r.def("conv2d_input_grad_kernel", &ops::conv2d_input_grad_kernel<&conv2d_input_grad<Exec>>);
  r.def("conv2d_weight_grad_kernel", &ops::conv2d_weight_grad_kernel<&conv2d_weight_grad<Exec>>);
  r.def("conv2d_bias_grad_kernel", &ops::conv2d_bias_grad_kernel<&bias_grad<Exec>>);
}

}  // namespace cuda
}  // namespace cnnfast
