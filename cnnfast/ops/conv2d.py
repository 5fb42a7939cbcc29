"""conv2d: the custom op ``cnnfast::conv2d``, its gradient ops (input_grad, weight_grad, bias_grad),
their fake kernels and the one backward both paths use (see ``_common``).

The gradient ops are differentiable in turn, in terms of the same three ops (double backward): the
input gradient is linear in (grad, weight), the weight gradient in (x, grad), so each of their
derivatives is a conv2d forward, input_grad or weight_grad with the cotangent in one slot.

Forward mode (torch.func only): conv2d is linear in x, weight and bias each, so its tangent is
conv2d(dx, weight) + conv2d(x, dweight) + dbias; the gradient ops are bilinear (the bias gradient
linear), so theirs is the same op with a tangent in one slot, summed over the slots.

Geometry arrives normalised by ``cnnfast.functional``: ``padding = (pad_top, pad_left)`` with the
output size given explicitly, which is how asymmetric 'same' padding reaches the kernels.
"""
from typing import List, Optional

import torch
from torch import Tensor

from ..backends import kernels
from ._common import (custom_op, empty, fold_batch, fold_channels, is_channels_last, register_autograd,
                      register_vmap, run, sum_terms, unfold_batch, unfold_channels, wants_grad)


@custom_op("conv2d", fake=lambda x, weight, bias, stride, padding, dilation, groups, out_size, channels_last,
           *_: empty(x, (x.shape[0], weight.shape[0], *out_size), channels_last))
def conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
           dilation: List[int], groups: int, out_size: List[int], channels_last: bool, allow_tf32: bool,
           backend: str) -> Tensor:
    return kernels(backend).conv2d_forward(x, weight, bias, stride, padding, dilation, groups, out_size,
                                           channels_last=channels_last, allow_tf32=allow_tf32)


@custom_op("conv2d_input_grad", fake=lambda grad, weight, input_size, stride, padding, dilation, groups,
           channels_last, *_: empty(grad, (grad.shape[0], weight.shape[1] * groups, *input_size), channels_last))
def conv2d_input_grad(grad: Tensor, weight: Tensor, input_size: List[int], stride: List[int], padding: List[int],
                      dilation: List[int], groups: int, channels_last: bool, allow_tf32: bool, backend: str) -> Tensor:
    return kernels(backend).conv2d_input_grad(grad, weight, input_size, stride, padding, dilation, groups,
                                              channels_last=channels_last, allow_tf32=allow_tf32)


@custom_op("conv2d_weight_grad", fake=lambda x, grad, weight_size, stride, padding, dilation, groups,
           channels_last, *_: empty(x, tuple(weight_size), channels_last))
def conv2d_weight_grad(x: Tensor, grad: Tensor, weight_size: List[int], stride: List[int], padding: List[int],
                       dilation: List[int], groups: int, channels_last: bool, allow_tf32: bool, backend: str) -> Tensor:
    return kernels(backend).conv2d_weight_grad(x, grad, weight_size, stride, padding, dilation, groups,
                                               channels_last=channels_last, allow_tf32=allow_tf32)


@custom_op("conv2d_bias_grad", fake=lambda grad, backend: grad.new_empty((grad.shape[1],)))
def conv2d_bias_grad(grad: Tensor, backend: str) -> Tensor:
    return kernels(backend).conv2d_bias_grad(grad)


def _setup(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, groups, _, _, allow_tf32, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.conv = (stride, padding, dilation, groups)
    ctx.options = (allow_tf32, backend)
    # Each gradient in its tensor's layout (the forward's output is channels_last if either is).
    ctx.channels_last = (is_channels_last(x), is_channels_last(weight))
    ctx.has_bias = bias is not None


def _backward(ctx, grad, path):
    x, weight = ctx.saved_tensors
    allow_tf32, backend = ctx.options
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = path(conv2d_input_grad)(grad, weight, x.shape[2:], *ctx.conv, ctx.channels_last[0], allow_tf32,
                                         backend)
    if ctx.needs_input_grad[1]:
        grad_w = path(conv2d_weight_grad)(x, grad, weight.shape, *ctx.conv, ctx.channels_last[1], allow_tf32,
                                          backend)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = path(conv2d_bias_grad)(grad, backend)
    return grad_x, grad_w, grad_b


def conv2d_jvp(args, _outputs, tangents, path):
    """conv2d's tangent: conv2d(dx, weight) + conv2d(x, dweight) + dbias (the fused op's conv part too)."""
    x, weight, _, *rest = args
    dx, dw, db = tangents[:3]
    out_size = rest[4]
    return sum_terms([path(conv2d)(dx, weight, None, *rest) if dx is not None else None,
                      path(conv2d)(x, dw, None, *rest) if dw is not None else None,
                      db[None, :, None, None].expand(x.shape[0], weight.shape[0], *out_size) if db is not None
                      else None])


_Conv2dFunction = register_autograd(conv2d, _setup, _backward, "_Conv2dFunction", jvp=conv2d_jvp)


# --- double backward: the gradient ops' own backward ---------------------------------------------

def _grad_setup(ctx, inputs, output):
    """input_grad(grad, weight, input_size, ...) and weight_grad(x, grad, weight_size, ...) alike: save
    the two tensors and the geometry."""
    a, b, _, *conv, _, allow_tf32, backend = inputs
    ctx.save_for_backward(a, b)
    ctx.conv = tuple(conv)
    ctx.options = (allow_tf32, backend)


def _input_grad_backward(ctx, v, path):
    # grad_x = input_grad(grad, weight): d/dgrad = conv2d(v, weight); d/dweight = weight_grad(v, grad).
    grad, weight = ctx.saved_tensors
    d_grad = d_weight = None
    if ctx.needs_input_grad[0]:
        d_grad = path(conv2d)(v, weight, None, *ctx.conv, tuple(grad.shape[2:]),
                              is_channels_last(grad), *ctx.options)
    if ctx.needs_input_grad[1]:
        d_weight = path(conv2d_weight_grad)(v, grad, tuple(weight.shape), *ctx.conv, is_channels_last(weight),
                                            *ctx.options)
    return d_grad, d_weight


def _weight_grad_backward(ctx, v, path):
    # grad_w = weight_grad(x, grad): d/dx = input_grad(grad, v); d/dgrad = conv2d(x, v).
    x, grad = ctx.saved_tensors
    d_x = d_grad = None
    if ctx.needs_input_grad[0]:
        d_x = path(conv2d_input_grad)(grad, v, tuple(x.shape[2:]), *ctx.conv, is_channels_last(x), *ctx.options)
    if ctx.needs_input_grad[1]:
        d_grad = path(conv2d)(x, v, None, *ctx.conv, tuple(grad.shape[2:]), is_channels_last(grad),
                              *ctx.options)
    return d_x, d_grad


def _bias_grad_setup(ctx, inputs, output):
    ctx.grad_shape = inputs[0].shape


def _bias_grad_backward(ctx, v, path):
    # grad_b = grad summed over (N, H, W): its derivative broadcasts v back.
    return (v[None, :, None, None].expand(ctx.grad_shape),)


def _bilinear_jvp(op):
    """The jvp of ``op``, bilinear in its two leading tensors a, b: op(da, b) + op(a, db)."""
    def jvp(args, _outputs, tangents, path):
        a, b, *rest = args
        da, db = tangents[:2]
        return sum_terms([path(op)(da, b, *rest) if da is not None else None,
                          path(op)(a, db, *rest) if db is not None else None])
    return jvp


def _bias_grad_jvp(args, _outputs, tangents, path):
    return path(conv2d_bias_grad)(tangents[0], *args[1:])


register_autograd(conv2d_input_grad, _grad_setup, _input_grad_backward, "_Conv2dInputGradFunction",
                  jvp=_bilinear_jvp(conv2d_input_grad))
register_autograd(conv2d_weight_grad, _grad_setup, _weight_grad_backward, "_Conv2dWeightGradFunction",
                  jvp=_bilinear_jvp(conv2d_weight_grad))
register_autograd(conv2d_bias_grad, _bias_grad_setup, _bias_grad_backward, "_Conv2dBiasGradFunction",
                  jvp=_bias_grad_jvp)


def run_conv2d(x, weight, bias, *args):
    """``conv2d`` (the custom op's arguments): the eager path or the custom op."""
    function = _Conv2dFunction if wants_grad(x, weight, bias) else None
    return run(conv2d, function, (x, weight, bias), (x, weight, bias, *args))


def launches(x, weight, bias, stride, padding, dilation, groups, out_size, channels_last, allow_tf32):
    """The forward's launcher call ``(launcher, args, kwargs)`` and a function listing those of the
    backward it records (on a stand-in output gradient): what the tuner measures before the first call."""
    forward = ("conv2d_forward", (x, weight, bias, stride, padding, dilation, groups, out_size),
               dict(channels_last=channels_last, allow_tf32=allow_tf32))

    def gradients():
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        grad = torch.randn((x.shape[0], weight.shape[0], *out_size), dtype=x.dtype, device=x.device).contiguous(
            memory_format=fmt)
        conv, options = (stride, padding, dilation, groups), dict(allow_tf32=allow_tf32)
        if x.requires_grad:
            yield ("conv2d_input_grad", (grad, weight, x.shape[2:], *conv),
                   dict(channels_last=is_channels_last(x), **options))
        if weight.requires_grad:
            yield ("conv2d_weight_grad", (x, grad, weight.shape, *conv),
                   dict(channels_last=is_channels_last(weight), **options))
        if bias is not None and bias.requires_grad:
            yield ("conv2d_bias_grad", (grad,), {})
    return forward, gradients


# --- torch.func.vmap (see ``_common``) --------------------------------------------------------------

def _conv2d_vmap(size, dims, x, weight, bias, stride, padding, dilation, groups, *rest):
    if dims[1] is None and dims[2] is None:
        return unfold_batch(conv2d(fold_batch(x, dims[0], size), weight, bias, stride, padding, dilation, groups,
                                   *rest), size)
    bias = fold_batch(bias, dims[2], size) if bias is not None else None
    return unfold_channels(conv2d(fold_channels(x, dims[0], size), fold_batch(weight, dims[1], size), bias,
                                  stride, padding, dilation, groups * size, *rest), size)


def _input_grad_vmap(size, dims, grad, weight, input_size, stride, padding, dilation, groups, *rest):
    if dims[1] is None:
        return unfold_batch(conv2d_input_grad(fold_batch(grad, dims[0], size), weight, input_size, stride, padding,
                                              dilation, groups, *rest), size)
    return unfold_channels(conv2d_input_grad(fold_channels(grad, dims[0], size), fold_batch(weight, dims[1], size),
                                             input_size, stride, padding, dilation, groups * size, *rest), size)


def _weight_grad_vmap(size, dims, x, grad, weight_size, stride, padding, dilation, groups, *rest):
    # One weight gradient per vmapped slice: never summed over it, so always through the channels.
    weight_size = (size * weight_size[0], *weight_size[1:])
    return unfold_batch(conv2d_weight_grad(fold_channels(x, dims[0], size), fold_channels(grad, dims[1], size),
                                           weight_size, stride, padding, dilation, groups * size, *rest), size)


def _bias_grad_vmap(size, dims, grad, backend):
    return unfold_batch(conv2d_bias_grad(fold_channels(grad, dims[0], size), backend), size)


register_vmap(conv2d, _conv2d_vmap)
register_vmap(conv2d_input_grad, _input_grad_vmap)
register_vmap(conv2d_weight_grad, _weight_grad_vmap)
register_vmap(conv2d_bias_grad, _bias_grad_vmap)
