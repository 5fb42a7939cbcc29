// Every op of the extension as C++ sees it, once: its signature (the schemas are ops.cpp's), every
// argument check (TORCH_CHECK naming the argument), and the checked arguments each backend's
// implementation receives, with the geometry of common/geometry.h filled from the tensors and lists.
//
// An op `name_kernel` is the function template ops::name_kernel<Impl>: it checks its arguments,
// returns when the output is empty, and calls Impl(args) with one struct of the checked arguments.
// The CPU kernels register ops::conv2d_forward_kernel<&cpu::impl::conv2d_forward> (cpu/conv2d.cpp),
// the CUDA host code ops::conv2d_forward_kernel<&cuda::conv2d_forward<Exec>> (cuda/conv2d.h: one
// registration function for the GPU and the emulator alike).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <utility>

#include "common/geometry.h"

namespace cnnfast {

// ---- the checked arguments ----------------------------------------------------------------------

struct Conv2dForward {
  at::Tensor x, weight;
  std::optional<at::Tensor> bias;
  bool allow_tf32;
  at::Tensor out;
  ConvGeom g;
};

// g: the forward conv this is the gradient of (input `out`, output `grad`).
struct Conv2dInputGrad {
  at::Tensor grad, weight;
  bool allow_tf32;
  at::Tensor out;
  ConvGeom g;
};

// g: the forward conv (input `x`, weight `out`, output `grad`).
struct Conv2dWeightGrad {
  at::Tensor x, grad;
  bool allow_tf32;
  at::Tensor out;
  ConvGeom g;
};

// out[k] = the sum of grad[:, k] (where pos >= 0, when pos is given: the fused op's).
struct BiasGrad {
  at::Tensor grad;
  std::optional<at::Tensor> pos;
  at::Tensor out;
};

struct MaxPool2dForward {
  at::Tensor x, out;
  std::optional<at::Tensor> indices;
  PoolGeom p;
};

struct MaxPool2dBackward {
  at::Tensor grad, indices, out;
  PoolGeom p;
};

// conv.out is the pooled output; p pools the conv output (p.H, p.W = conv.g.OH, conv.g.OW).
struct ConvReluMaxPool2dForward {
  Conv2dForward conv;
  std::optional<at::Tensor> pos;
  PoolGeom p;
};

// The fused op's input / weight gradient: conv2d's, with conv.grad the pooled gradient from which,
// with pos and p, the conv-output gradient is rebuilt.
struct ConvReluMaxPool2dInputGrad {
  Conv2dInputGrad conv;
  at::Tensor pos;
  PoolGeom p;
};

struct ConvReluMaxPool2dWeightGrad {
  Conv2dWeightGrad conv;
  at::Tensor pos;
  PoolGeom p;
};

// ---- the checks ---------------------------------------------------------------------------------

inline void check_pair(at::IntArrayRef v, const char* op, const char* name, int64_t min_value) {
  TORCH_CHECK(v.size() == 2, op, ": ", name, " must have 2 elements, got ", v.size());
  TORCH_CHECK(v[0] >= min_value && v[1] >= min_value, op, ": ", name, " must be >= ", min_value, ", got ", v);
}

inline void check_tensor(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name,
                         int64_t dim) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D, got ", t.dim(), "-D");
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but input is on ", like.device());
}

inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  const auto d = t.scalar_type();
  TORCH_CHECK(d == at::kFloat || d == at::kHalf || d == at::kBFloat16, op, ": ", name,
              " must be float32, float16 or bfloat16, got ", d);
}

inline void check_out(const at::Tensor& out, const at::Tensor& like, const char* op, const char* name,
                      at::IntArrayRef shape) {
  TORCH_CHECK(out.device() == like.device(), op, ": ", name, " is on ", out.device(), " but input is on ",
              like.device());
  TORCH_CHECK(out.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", out.sizes());
}

inline void check_bias(const std::optional<at::Tensor>& bias, int64_t K, const at::Tensor& like, const char* op) {
  if (!bias.has_value()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == K, op, ": bias must have shape [", K, "], got ", bias->sizes());
  TORCH_CHECK(bias->device() == like.device(), op, ": bias is on ", bias->device(), " but input is on ", like.device());
}

inline void check_pos(const at::Tensor& pos, const at::Tensor& like, const char* op, at::IntArrayRef shape,
                      int64_t taps) {
  check_out(pos, like, op, "pos", shape);
  const auto d = pos.scalar_type();
  TORCH_CHECK(d == at::kChar || d == at::kShort || d == at::kInt, op, ": pos must be int8, int16 or int32, got ", d);
  TORCH_CHECK(taps <= (d == at::kChar ? 127 : d == at::kShort ? 32767 : INT32_MAX), op, ": pos dtype ", d,
              " is too narrow for a window of ", taps, " taps");
}

// The conv geometry of x (N, C, H, W), weight (K, C/groups, R, S) and the output size (OH, OW).
inline ConvGeom conv_geom(const char* op, const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t OH,
                          int64_t OW) {
  check_tensor(x, x, op, "input", 4);
  check_tensor(weight, x, op, "weight", 4);
  check_pair(stride, op, "stride", 1);
  check_pair(padding, op, "padding", 0);
  check_pair(dilation, op, "dilation", 1);
  TORCH_CHECK(groups >= 1, op, ": groups must be positive, got ", groups);
  ConvGeom g;
  g.N = x.size(0), g.C = x.size(1), g.H = x.size(2), g.W = x.size(3);
  g.K = weight.size(0), g.R = weight.size(2), g.S = weight.size(3);
  g.OH = OH, g.OW = OW, g.groups = groups;
  g.sh = stride[0], g.sw = stride[1], g.ph = padding[0], g.pw = padding[1], g.dh = dilation[0], g.dw = dilation[1];
  TORCH_CHECK(g.K % groups == 0 && g.C == weight.size(1) * groups, op, ": weight ", weight.sizes(),
              " does not fit input ", x.sizes(), " with groups=", groups);
  TORCH_CHECK(OH >= 0 && OW >= 0, op, ": negative output size");
  return g;
}

// The conv geometry of a conv2d gradient: the forward conv of `input` and `weight` whose output
// gradient is `grad` (a float 4-D tensor of the output's shape).
inline ConvGeom conv_grad_geom(const char* op, const at::Tensor& input, const at::Tensor& weight,
                               const at::Tensor& grad, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups) {
  check_float(grad, op, "grad");
  TORCH_CHECK(grad.dim() == 4, op, ": grad must be 4-D");
  const ConvGeom g = conv_geom(op, input, weight, stride, padding, dilation, groups, grad.size(2), grad.size(3));
  check_out(grad, input, op, "grad", {g.N, g.K, g.OH, g.OW});
  return g;
}

inline PoolGeom pool_geom(const char* op, int64_t H, int64_t W, int64_t OH, int64_t OW, at::IntArrayRef kernel,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_pair(kernel, op, "kernel_size", 1);
  check_pair(stride, op, "stride", 1);
  check_pair(padding, op, "padding", 0);
  check_pair(dilation, op, "dilation", 1);
  PoolGeom p;
  p.H = H, p.W = W, p.OH = OH, p.OW = OW;
  p.kh = kernel[0], p.kw = kernel[1], p.sh = stride[0], p.sw = stride[1];
  p.ph = padding[0], p.pw = padding[1], p.dh = dilation[0], p.dw = dilation[1];
  return p;
}

// The fused op's geometry: the conv of `input` and `weight` with output conv_out_size, and the pool
// over it whose output is (OH, OW).
inline std::pair<ConvGeom, PoolGeom> fused_geom(const char* op, const at::Tensor& input, const at::Tensor& weight,
                                                at::IntArrayRef stride, at::IntArrayRef padding,
                                                at::IntArrayRef dilation, int64_t groups,
                                                at::IntArrayRef conv_out_size, int64_t OH, int64_t OW,
                                                at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
                                                at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation) {
  TORCH_CHECK(conv_out_size.size() == 2, op, ": conv_out_size must have 2 elements");
  const ConvGeom g = conv_geom(op, input, weight, stride, padding, dilation, groups, conv_out_size[0], conv_out_size[1]);
  return {g, pool_geom(op, g.OH, g.OW, OH, OW, pool_kernel, pool_stride, pool_padding, pool_dilation)};
}

// The fused op's input / weight gradient: the forward conv of `input` (N, C, H, W) and `weight` with
// output conv_out_size, the pool over it that produced `grad`, and the window positions `pos`.
inline std::pair<ConvGeom, PoolGeom> check_fused_grad(
    const char* op, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& grad, const at::Tensor& pos,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef conv_out_size, at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
    at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation) {
  check_float(grad, op, "grad");
  check_tensor(grad, input, op, "grad", 4);
  const auto geom = fused_geom(op, input, weight, stride, padding, dilation, groups, conv_out_size, grad.size(2),
                               grad.size(3), pool_kernel, pool_stride, pool_padding, pool_dilation);
  const ConvGeom& g = geom.first;
  const PoolGeom& p = geom.second;
  check_out(grad, input, op, "grad", {g.N, g.K, p.OH, p.OW});
  check_pos(pos, input, op, {g.N, g.K, p.OH, p.OW}, p.kh * p.kw);
  return geom;
}

namespace ops {

// ---- conv2d -------------------------------------------------------------------------------------

template <auto Impl>
void conv2d_forward_kernel(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           bool allow_tf32, const at::Tensor& out) {
  const char* op = "conv2d_forward_kernel";
  check_float(x, op, "input");
  TORCH_CHECK(out.dim() == 4, op, ": out must be 4-D");
  const ConvGeom g = conv_geom(op, x, weight, stride, padding, dilation, groups, out.size(2), out.size(3));
  check_out(out, x, op, "out", {g.N, g.K, g.OH, g.OW});
  check_bias(bias, g.K, x, op);
  if (out.numel()) Impl(Conv2dForward{x, weight, bias, allow_tf32, out, g});
}

template <auto Impl>
void conv2d_input_grad_kernel(const at::Tensor& grad, const at::Tensor& weight, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, bool allow_tf32,
                              const at::Tensor& out) {
  const char* op = "conv2d_input_grad_kernel";
  TORCH_CHECK(out.dim() == 4, op, ": out must be 4-D");
  check_float(weight, op, "weight");
  const ConvGeom g = conv_grad_geom(op, out, weight, grad, stride, padding, dilation, groups);
  if (out.numel()) Impl(Conv2dInputGrad{grad, weight, allow_tf32, out, g});
}

template <auto Impl>
void conv2d_weight_grad_kernel(const at::Tensor& x, const at::Tensor& grad, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, bool allow_tf32,
                               const at::Tensor& out) {
  const char* op = "conv2d_weight_grad_kernel";
  check_float(x, op, "input");
  const ConvGeom g = conv_grad_geom(op, x, out, grad, stride, padding, dilation, groups);
  if (out.numel()) Impl(Conv2dWeightGrad{x, grad, allow_tf32, out, g});
}

template <auto Impl>
void conv2d_bias_grad_kernel(const at::Tensor& grad, const at::Tensor& out) {
  const char* op = "conv2d_bias_grad_kernel";
  check_float(grad, op, "grad");
  TORCH_CHECK(grad.dim() == 4, op, ": grad must be 4-D");
  check_out(out, grad, op, "out", {grad.size(1)});
  if (out.numel()) Impl(BiasGrad{grad, std::nullopt, out});
}

// ---- max_pool2d ---------------------------------------------------------------------------------

template <auto Impl>
void max_pool2d_forward_kernel(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, const at::Tensor& out,
                               const std::optional<at::Tensor>& indices) {
  const char* op = "max_pool2d_forward_kernel";
  check_tensor(x, x, op, "input", 4);
  TORCH_CHECK(out.dim() == 4 && out.scalar_type() == x.scalar_type(), op, ": out must be 4-D of input's dtype");
  const PoolGeom p = pool_geom(op, x.size(2), x.size(3), out.size(2), out.size(3), kernel, stride, padding, dilation);
  check_out(out, x, op, "out", {x.size(0), x.size(1), p.OH, p.OW});
  if (indices.has_value()) {
    check_out(*indices, x, op, "indices", {x.size(0), x.size(1), p.OH, p.OW});
    TORCH_CHECK(indices->scalar_type() == at::kLong, op, ": indices must be int64");
  }
  if (out.numel()) Impl(MaxPool2dForward{x, out, indices, p});
}

template <auto Impl>
void max_pool2d_backward_kernel(const at::Tensor& grad, const at::Tensor& indices, at::IntArrayRef kernel,
                                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                const at::Tensor& out) {
  const char* op = "max_pool2d_backward_kernel";
  check_tensor(grad, grad, op, "grad", 4);
  TORCH_CHECK(out.dim() == 4 && out.scalar_type() == grad.scalar_type(), op, ": out must be 4-D of grad's dtype");
  TORCH_CHECK(indices.scalar_type() == at::kLong, op, ": indices must be int64");
  const PoolGeom p = pool_geom(op, out.size(2), out.size(3), grad.size(2), grad.size(3), kernel, stride, padding,
                               dilation);
  check_out(grad, out, op, "grad", {out.size(0), out.size(1), p.OH, p.OW});
  check_out(indices, out, op, "indices", {out.size(0), out.size(1), p.OH, p.OW});
  if (out.numel()) Impl(MaxPool2dBackward{grad, indices, out, p});
}

// ---- conv2d + bias + ReLU + max_pool2d ----------------------------------------------------------

template <auto Impl>
void conv_relu_maxpool2d_forward_kernel(const at::Tensor& x, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                        at::IntArrayRef conv_out_size, at::IntArrayRef pool_kernel,
                                        at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
                                        at::IntArrayRef pool_dilation, bool allow_tf32, const at::Tensor& out,
                                        const std::optional<at::Tensor>& pos) {
  const char* op = "conv_relu_maxpool2d_forward_kernel";
  check_float(x, op, "input");
  TORCH_CHECK(out.dim() == 4 && out.scalar_type() == x.scalar_type(), op, ": out must be 4-D of input's dtype");
  const auto [g, p] = fused_geom(op, x, weight, stride, padding, dilation, groups, conv_out_size, out.size(2),
                                 out.size(3), pool_kernel, pool_stride, pool_padding, pool_dilation);
  check_out(out, x, op, "out", {g.N, g.K, p.OH, p.OW});
  check_bias(bias, g.K, x, op);
  if (pos.has_value()) check_pos(*pos, x, op, {g.N, g.K, p.OH, p.OW}, p.kh * p.kw);
  if (out.numel()) Impl(ConvReluMaxPool2dForward{{x, weight, bias, allow_tf32, out, g}, pos, p});
}

template <auto Impl>
void conv_relu_maxpool2d_input_grad_kernel(const at::Tensor& grad, const at::Tensor& pos, const at::Tensor& weight,
                                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                           int64_t groups, at::IntArrayRef conv_out_size, at::IntArrayRef pool_kernel,
                                           at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
                                           at::IntArrayRef pool_dilation, bool allow_tf32, const at::Tensor& out) {
  const char* op = "conv_relu_maxpool2d_input_grad_kernel";
  TORCH_CHECK(out.dim() == 4, op, ": out must be 4-D");
  check_float(weight, op, "weight");
  const auto [g, p] = check_fused_grad(op, out, weight, grad, pos, stride, padding, dilation, groups, conv_out_size,
                                       pool_kernel, pool_stride, pool_padding, pool_dilation);
  if (out.numel()) Impl(ConvReluMaxPool2dInputGrad{{grad, weight, allow_tf32, out, g}, pos, p});
}

template <auto Impl>
void conv_relu_maxpool2d_weight_grad_kernel(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& pos,
                                            at::IntArrayRef stride, at::IntArrayRef padding,
                                            at::IntArrayRef dilation, int64_t groups, at::IntArrayRef conv_out_size,
                                            at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
                                            at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation,
                                            bool allow_tf32, const at::Tensor& out) {
  const char* op = "conv_relu_maxpool2d_weight_grad_kernel";
  check_float(x, op, "input");
  const auto [g, p] = check_fused_grad(op, x, out, grad, pos, stride, padding, dilation, groups, conv_out_size,
                                       pool_kernel, pool_stride, pool_padding, pool_dilation);
  if (out.numel()) Impl(ConvReluMaxPool2dWeightGrad{{x, grad, allow_tf32, out, g}, pos, p});
}

// The fused op's bias gradient: the sum of the pooled gradient where pos >= 0.
template <auto Impl>
void conv_relu_maxpool2d_bias_grad_kernel(const at::Tensor& grad, const at::Tensor& pos, const at::Tensor& out) {
  const char* op = "conv_relu_maxpool2d_bias_grad_kernel";
  check_float(grad, op, "grad");
  check_tensor(grad, grad, op, "grad", 4);
  check_out(pos, grad, op, "pos", {grad.size(0), grad.size(1), grad.size(2), grad.size(3)});
  check_out(out, grad, op, "out", {grad.size(1)});
  if (out.numel()) Impl(BiasGrad{grad, pos, out});
}

}  // namespace ops
}  // namespace cnnfast
