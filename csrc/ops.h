// Host-side helpers both devices' ATen glue uses: the argument checks every op makes (TORCH_CHECK
// naming the argument) and the geometry structs of common/geometry.h filled from tensors and lists.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <utility>

#include "common/geometry.h"

namespace cnnfast {

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

inline void check_out(const at::Tensor& out, const at::Tensor& like, const char* op, const char* name,
                      at::IntArrayRef shape) {
  TORCH_CHECK(out.device() == like.device(), op, ": ", name, " is on ", out.device(), " but input is on ",
              like.device());
  TORCH_CHECK(out.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", out.sizes());
}

// Per-op argument checks shared by the CPU and CUDA implementations; each returns the geometry.
inline void check_bias(const std::optional<at::Tensor>& bias, int64_t K, const at::Tensor& like, const char* op) {
  if (!bias.has_value()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == K, op, ": bias must have shape [", K, "], got ", bias->sizes());
  TORCH_CHECK(bias->device() == like.device(), op, ": bias is on ", bias->device(), " but input is on ", like.device());
}

inline ConvGeom check_conv2d_fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                 int64_t groups, const at::Tensor& out) {
  const char* op = "conv2d_fwd_kernel";
  check_float(x, op, "input");
  TORCH_CHECK(out.dim() == 4, op, ": out must be 4-D");
  const ConvGeom g = conv_geom(op, x, weight, stride, padding, dilation, groups, out.size(2), out.size(3));
  check_out(out, x, op, "out", {g.N, g.K, g.OH, g.OW});
  check_bias(bias, g.K, x, op);
  return g;
}

// The geometry of the forward conv whose input gradient this is: input `out`, output `grad`.
inline ConvGeom check_conv2d_input_grad(const at::Tensor& grad, const at::Tensor& weight, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                        const at::Tensor& out) {
  const char* op = "conv2d_input_grad_kernel";
  check_float(grad, op, "grad");
  check_float(weight, op, "weight");
  TORCH_CHECK(out.dim() == 4 && grad.dim() == 4, op, ": grad and out must be 4-D");
  const ConvGeom g = conv_geom(op, out, weight, stride, padding, dilation, groups, grad.size(2), grad.size(3));
  check_out(grad, out, op, "grad", {g.N, g.K, g.OH, g.OW});
  return g;
}

inline ConvGeom check_conv2d_weight_grad(const at::Tensor& x, const at::Tensor& grad, at::IntArrayRef stride,
                                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                         const at::Tensor& out) {
  const char* op = "conv2d_weight_grad_kernel";
  check_float(x, op, "input");
  check_float(grad, op, "grad");
  TORCH_CHECK(grad.dim() == 4, op, ": grad must be 4-D");
  const ConvGeom g = conv_geom(op, x, out, stride, padding, dilation, groups, grad.size(2), grad.size(3));
  check_out(grad, x, op, "grad", {g.N, g.K, g.OH, g.OW});
  return g;
}

inline void check_conv2d_bias_grad(const at::Tensor& grad, const at::Tensor& out) {
  const char* op = "conv2d_bias_grad_kernel";
  check_float(grad, op, "grad");
  TORCH_CHECK(grad.dim() == 4, op, ": grad must be 4-D");
  check_out(out, grad, op, "out", {grad.size(1)});
}

inline void check_pos(const at::Tensor& pos, const at::Tensor& like, const char* op, at::IntArrayRef shape,
                      int64_t taps) {
  check_out(pos, like, op, "pos", shape);
  const auto d = pos.scalar_type();
  TORCH_CHECK(d == at::kChar || d == at::kShort || d == at::kInt, op, ": pos must be int8, int16 or int32, got ", d);
  TORCH_CHECK(taps <= (d == at::kChar ? 127 : d == at::kShort ? 32767 : INT32_MAX), op, ": pos dtype ", d,
              " is too narrow for a window of ", taps, " taps");
}

inline std::pair<ConvGeom, PoolGeom> check_fused_fwd(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, at::IntArrayRef conv_out_size,
    at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    at::IntArrayRef pool_dilation, const at::Tensor& out, const std::optional<at::Tensor>& pos) {
  const char* op = "conv_relu_maxpool2d_fwd_kernel";
  check_float(x, op, "input");
  TORCH_CHECK(conv_out_size.size() == 2, op, ": conv_out_size must have 2 elements");
  TORCH_CHECK(out.dim() == 4 && out.scalar_type() == x.scalar_type(), op, ": out must be 4-D of input's dtype");
  const ConvGeom g = conv_geom(op, x, weight, stride, padding, dilation, groups, conv_out_size[0], conv_out_size[1]);
  const PoolGeom p = pool_geom(op, g.OH, g.OW, out.size(2), out.size(3), pool_kernel, pool_stride, pool_padding,
                               pool_dilation);
  check_out(out, x, op, "out", {g.N, g.K, p.OH, p.OW});
  check_bias(bias, g.K, x, op);
  if (pos.has_value()) check_pos(*pos, x, op, {g.N, g.K, p.OH, p.OW}, p.kh * p.kw);
  return {g, p};
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
  TORCH_CHECK(conv_out_size.size() == 2, op, ": conv_out_size must have 2 elements");
  const ConvGeom g = conv_geom(op, input, weight, stride, padding, dilation, groups, conv_out_size[0], conv_out_size[1]);
  const PoolGeom p = pool_geom(op, g.OH, g.OW, grad.size(2), grad.size(3), pool_kernel, pool_stride, pool_padding,
                               pool_dilation);
  check_out(grad, input, op, "grad", {g.N, g.K, p.OH, p.OW});
  check_pos(pos, input, op, {g.N, g.K, p.OH, p.OW}, p.kh * p.kw);
  return {g, p};
}

inline void check_fused_bias_grad(const at::Tensor& grad, const at::Tensor& pos, const at::Tensor& out) {
  const char* op = "conv_relu_maxpool2d_bias_grad_kernel";
  check_float(grad, op, "grad");
  check_tensor(grad, grad, op, "grad", 4);
  check_out(pos, grad, op, "pos", {grad.size(0), grad.size(1), grad.size(2), grad.size(3)});
  check_out(out, grad, op, "out", {grad.size(1)});
}

inline PoolGeom check_max_pool2d_fwd(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation, const at::Tensor& out,
                                     const std::optional<at::Tensor>& indices) {
  const char* op = "max_pool2d_fwd_kernel";
  check_tensor(x, x, op, "input", 4);
  TORCH_CHECK(out.dim() == 4 && out.scalar_type() == x.scalar_type(), op, ": out must be 4-D of input's dtype");
  const PoolGeom p = pool_geom(op, x.size(2), x.size(3), out.size(2), out.size(3), kernel, stride, padding, dilation);
  check_out(out, x, op, "out", {x.size(0), x.size(1), p.OH, p.OW});
  if (indices.has_value()) {
    check_out(*indices, x, op, "indices", {x.size(0), x.size(1), p.OH, p.OW});
    TORCH_CHECK(indices->scalar_type() == at::kLong, op, ": indices must be int64");
  }
  return p;
}

inline PoolGeom check_max_pool2d_bwd(const at::Tensor& grad, const at::Tensor& indices, at::IntArrayRef kernel,
                                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                     const at::Tensor& out) {
  const char* op = "max_pool2d_bwd_kernel";
  check_tensor(grad, grad, op, "grad", 4);
  TORCH_CHECK(out.dim() == 4 && out.scalar_type() == grad.scalar_type(), op, ": out must be 4-D of grad's dtype");
  TORCH_CHECK(indices.scalar_type() == at::kLong, op, ": indices must be int64");
  const PoolGeom p = pool_geom(op, out.size(2), out.size(3), grad.size(2), grad.size(3), kernel, stride, padding,
                               dilation);
  check_out(grad, out, op, "grad", {out.size(0), out.size(1), p.OH, p.OW});
  check_out(indices, out, op, "indices", {out.size(0), out.size(1), p.OH, p.OW});
  return p;
}

}  // namespace cnnfast
