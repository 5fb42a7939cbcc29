"""conv2d + bias + ReLU + max_pool2d, fused: the custom ops ``cnnfast::conv_relu_maxpool2d`` (no
window positions: nothing to differentiate) and ``cnnfast::conv_relu_maxpool2d_with_pos``, the gradient
op ``cnnfast::conv_relu_maxpool2d_backward``, their fake kernels and the one backward both paths use
(see ``_common``).

The forward writes only the pooled output; for backward it saves one small integer per pooled output,
``pos``: the window position of its maximum, or -1 where ReLU zeroed the gradient. The pre-pool
activation never exists in memory. The backward rebuilds the conv-output gradient from (grad, pos):
the Triton kernels inside conv2d's gradient kernels as they load it, the CPU kernels tile by tile as
the engine packs it; the CUDA kernels (and so "emulated_cuda") gather it into a float32 temporary of
the conv output's size for the duration of one gradient op. The bias gradient sums the kept pooled
gradients directly on every backend.

Double backward: with the window positions fixed, the input gradient is linear in (grad, weight) and
the weight gradient in (grad, x), as conv2d's are, and the conv-output gradient is grad sent to the
cells ``pos`` names. So the derivative of the input (weight) gradient with respect to the weight (x)
is the fused weight (input) gradient with the cotangent in that slot, and with respect to grad it is
a conv2d of the cotangent gathered at the window positions (``max_pool2d_gather``).

Forward mode (torch.func only): the output's tangent is conv2d's tangent read at the window positions,
zero where ReLU cut the output (pos == -1); the backward op's is itself with one tangent in a slot it
is linear in (grad always, the weight for the input gradient, x for the weight gradient).
"""
from typing import List, Optional

import torch
from torch import Tensor

from .. import _stock as stock
from .._outputs import pos_dtype
from ..backends import kernels
from ._common import (custom_op, eager_path, empty, fold_batch, fold_channels, func_path, is_channels_last,
                      register_autograd, register_vmap, run, sum_terms, unfold_batch, unfold_channels)
from .conv2d import conv2d, conv2d_jvp
from .max_pool2d import max_pool2d_gather


def _outputs(x, weight, pool_kernel, out_size, channels_last, with_pos):
    """The fake kernels' (out, pos), pos only ``with_pos``."""
    shape = (x.shape[0], weight.shape[0], *out_size)
    out = empty(x, shape, channels_last)
    return (out, empty(x, shape, channels_last, pos_dtype(pool_kernel))) if with_pos else out


def _forward(args, with_pos):
    """The forward launcher on the forward ops' arguments ``args``: (out, pos), pos None unless ``with_pos``."""
    *geometry, channels_last, allow_tf32, backend = args
    return kernels(backend).conv_relu_maxpool2d_forward(*geometry, with_pos=with_pos, channels_last=channels_last,
                                                        allow_tf32=allow_tf32)


@custom_op("conv_relu_maxpool2d", fake=lambda x, weight, bias, stride, padding, dilation, groups, conv_out_size,
           pool_kernel, pool_stride, pool_padding, pool_dilation, out_size, channels_last, allow_tf32, backend:
           _outputs(x, weight, pool_kernel, out_size, channels_last, with_pos=False))
def conv_relu_maxpool2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
                        dilation: List[int], groups: int, conv_out_size: List[int], pool_kernel: List[int],
                        pool_stride: List[int], pool_padding: List[int], pool_dilation: List[int],
                        out_size: List[int], channels_last: bool, allow_tf32: bool, backend: str) -> Tensor:
    return _forward((x, weight, bias, stride, padding, dilation, groups, conv_out_size, pool_kernel, pool_stride,
                     pool_padding, pool_dilation, out_size, channels_last, allow_tf32, backend), with_pos=False)[0]


@custom_op("conv_relu_maxpool2d_with_pos", fake=lambda x, weight, bias, stride, padding, dilation, groups,
           conv_out_size, pool_kernel, pool_stride, pool_padding, pool_dilation, out_size, channels_last, allow_tf32,
           backend: _outputs(x, weight, pool_kernel, out_size, channels_last, with_pos=True))
def conv_relu_maxpool2d_with_pos(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                                 padding: List[int], dilation: List[int], groups: int, conv_out_size: List[int],
                                 pool_kernel: List[int], pool_stride: List[int], pool_padding: List[int],
                                 pool_dilation: List[int], out_size: List[int], channels_last: bool,
                                 allow_tf32: bool, backend: str) -> tuple[Tensor, Tensor]:
    return _forward((x, weight, bias, stride, padding, dilation, groups, conv_out_size, pool_kernel, pool_stride,
                     pool_padding, pool_dilation, out_size, channels_last, allow_tf32, backend), with_pos=True)


def _launch_grads(args, needs, channels_last, allow_tf32, backend):
    """The eager path's gradients: one launcher call for every gradient in ``needs``, a tuple
    (grad_x, grad_weight, grad_bias), None where not needed. ``args``: the backward op's leading ones.
    A backward being recorded (create_graph=True) goes through the backward op's Function instead."""
    if torch.is_grad_enabled():
        return _op_grads(args, needs, channels_last, allow_tf32, backend, path=eager_path)
    return kernels(backend).conv_relu_maxpool2d_backward(*args, needs=needs, channels_last=channels_last,
                                                         allow_tf32=allow_tf32)


# One backward op per gradient (its schema returns one tensor), so a traced graph holds only the
# gradients it needs. `which` is 0 for the input, 1 for the weight, 2 for the bias.
@custom_op("conv_relu_maxpool2d_backward", fake=lambda grad, x, weight, pos, stride, padding, dilation, groups,
           conv_out_size, pool_kernel, pool_stride, pool_padding, pool_dilation, which, channels_last, allow_tf32,
           backend: empty(x, (x.shape, weight.shape, weight.shape[:1])[which], channels_last and which < 2))
def conv_relu_maxpool2d_backward(grad: Tensor, x: Tensor, weight: Tensor, pos: Tensor, stride: List[int],
                                 padding: List[int], dilation: List[int], groups: int, conv_out_size: List[int],
                                 pool_kernel: List[int], pool_stride: List[int], pool_padding: List[int],
                                 pool_dilation: List[int], which: int, channels_last: bool, allow_tf32: bool,
                                 backend: str) -> Tensor:
    args = (grad, x, weight, pos, stride, padding, dilation, groups, conv_out_size, pool_kernel, pool_stride,
            pool_padding, pool_dilation)
    return _launch_grads(args, tuple(i == which for i in range(3)), channels_last, allow_tf32, backend)[which]


def _op_grads(args, needs, channels_last, allow_tf32, backend, path=lambda op: op):
    """The traced path's gradients, as ``_launch_grads``: one backward op for each one needed."""
    op = path(conv_relu_maxpool2d_backward)
    return tuple(op(*args, which, channels_last, allow_tf32, backend) if need else None
                 for which, need in enumerate(needs))


def _setup(ctx, inputs, output):
    x, weight, bias, *geometry, _, _, allow_tf32, backend = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, weight, output[1])
    ctx.geometry = geometry  # stride ... pool_dilation: the backward op's geometry arguments
    ctx.options = (allow_tf32, backend)
    ctx.channels_last = (is_channels_last(x), is_channels_last(weight))
    ctx.has_bias = bias is not None


def _backward(ctx, grad, _grad_pos, path):
    x, weight, pos = ctx.saved_tensors
    needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
    x_layout, weight_layout = ctx.channels_last
    # One call for every gradient wanted; two when the input and weight gradients differ in layout (the
    # bias gradient, 1-D, has none: it goes with the input gradient).
    calls = [(needs, x_layout)] if x_layout == weight_layout else [
        ((needs[0], False, needs[2]), x_layout), ((False, needs[1], False), weight_layout)]
    args = (grad, x, weight, pos, *ctx.geometry)
    grads = [None, None, None]
    for wanted, layout in calls:
        if any(wanted):
            got = path(args, wanted, layout, *ctx.options)
            grads = [g if g is not None else new for g, new in zip(grads, got)]
    return tuple(grads)


def _jvp(args, outputs, tangents, path):
    """The output's tangent: conv2d's (pre-ReLU) read at the window positions, 0 where ReLU cut it."""
    x, weight, bias, stride, padding, dilation, groups, conv_out_size, *pool, _, channels_last, allow_tf32, \
        backend = args
    y = conv2d_jvp((x, weight, bias, stride, padding, dilation, groups, conv_out_size, channels_last, allow_tf32,
                    backend), None, tangents, path)
    pos = outputs[1]
    cells, kept = _window_cells(pos, *pool, conv_out_size)
    return torch.where(kept, path(max_pool2d_gather)(y, cells, *pool, is_channels_last(pos), backend), 0), None


_ConvReluMaxpool2dFunction = register_autograd(conv_relu_maxpool2d_with_pos, _setup, _backward,
                                               "_ConvReluMaxpool2dFunction", eager=_launch_grads,
                                               traced=_op_grads,
                                               func=lambda *args: _op_grads(*args, path=func_path), jvp=_jvp)


# --- double backward: the backward op's own backward ----------------------------------------------

def _window_cells(pos, pool_kernel, pool_stride, pool_padding, pool_dilation, conv_out_size):
    """The conv-output cell (flattened within its plane) each pooled output's maximum came from, 0
    where ``pos`` is -1 (ReLU kept no gradient), and the mask ``pos >= 0``."""
    pos = pos.long()
    ph = torch.arange(pos.shape[2], device=pos.device).view(-1, 1)
    pw = torch.arange(pos.shape[3], device=pos.device)
    h = ph * pool_stride[0] - pool_padding[0] + pos.div(pool_kernel[1], rounding_mode="floor") * pool_dilation[0]
    w = pw * pool_stride[1] - pool_padding[1] + pos.remainder(pool_kernel[1]) * pool_dilation[1]
    kept = pos >= 0
    return torch.where(kept, h * conv_out_size[1] + w, 0), kept


def _backward_op_setup(ctx, inputs, output):
    grad, x, weight, pos, stride, padding, dilation, groups, conv_out_size, *pool, which, _, allow_tf32, \
        backend = inputs
    ctx.save_for_backward(grad, x, weight, pos)
    ctx.geometry = tuple(inputs[4:13])
    ctx.conv = (stride, padding, dilation, groups, conv_out_size)
    ctx.pool = tuple(pool)
    ctx.which = which
    ctx.options = (allow_tf32, backend)


def _backward_op_backward(ctx, v, path):
    grad, x, weight, pos = ctx.saved_tensors
    op = path(conv_relu_maxpool2d_backward)
    d_grad = d_x = d_weight = None
    which = ctx.which
    if ctx.needs_input_grad[0]:
        # The cotangent carried to the conv output, then read at the window positions.
        if which == 2:
            d_grad = torch.where(pos >= 0, v[None, :, None, None].to(grad.dtype), 0)
        else:
            a, b = (v, weight) if which == 0 else (x, v)
            y = path(conv2d)(a, b, None, *ctx.conv, is_channels_last(grad), *ctx.options)
            cells, kept = _window_cells(pos, *ctx.pool, ctx.conv[-1])
            d_grad = torch.where(kept, path(max_pool2d_gather)(y, cells, *ctx.pool, is_channels_last(pos),
                                                               ctx.options[1]), 0)
    if which == 1 and ctx.needs_input_grad[1]:
        d_x = op(grad, x, v, pos, *ctx.geometry, 0, is_channels_last(x), *ctx.options)
    if which == 0 and ctx.needs_input_grad[2]:
        d_weight = op(grad, v, weight, pos, *ctx.geometry, 1, is_channels_last(weight), *ctx.options)
    return d_grad, d_x, d_weight


def _backward_op_jvp(args, _outputs, tangents, path):
    grad, x, weight, pos, *rest = args
    d_grad, d_x, d_weight = tangents[:3]
    which = rest[9]
    op = path(conv_relu_maxpool2d_backward)
    # Linear in grad; the input gradient is also linear in the weight, the weight gradient in x; the
    # bias gradient depends on grad alone.
    return sum_terms([op(d_grad, x, weight, pos, *rest) if d_grad is not None else None,
                      op(grad, x, d_weight, pos, *rest) if which == 0 and d_weight is not None else None,
                      op(grad, d_x, weight, pos, *rest) if which == 1 and d_x is not None else None])


register_autograd(conv_relu_maxpool2d_backward, _backward_op_setup, _backward_op_backward,
                  "_ConvReluMaxpool2dBackwardFunction", jvp=_backward_op_jvp)


def run_conv_relu_maxpool2d(x, weight, bias, *args, with_pos):
    """The fused op (the custom ops' arguments): ``conv_relu_maxpool2d_with_pos`` (out, pos) when
    ``with_pos``, else ``conv_relu_maxpool2d`` (out); the eager path or the custom ops."""
    tensors = (x, weight, bias)
    if with_pos:
        return run(conv_relu_maxpool2d_with_pos, _ConvReluMaxpool2dFunction, tensors, (*tensors, *args))
    return run(conv_relu_maxpool2d, None, tensors, (*tensors, *args))


def launches(x, weight, bias, *args, with_pos):
    """As ``conv2d.launches``: the forward's launcher call and a function listing the backward's (one
    call for every gradient wanted, as the eager path makes it when x and weight share a layout)."""
    *geometry, channels_last, allow_tf32 = args
    options = dict(channels_last=channels_last, allow_tf32=allow_tf32)
    forward = ("conv_relu_maxpool2d_forward", (x, weight, bias, *geometry), dict(with_pos=with_pos, **options))

    def gradients():
        out, pos = stock.conv_relu_maxpool2d_forward(x.detach(), weight.detach(), None if bias is None else
                                                     bias.detach(), *geometry, with_pos=True, **options)
        needs = (x.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
        conv_geometry, pool_geometry = geometry[:5], geometry[5:9]
        yield ("conv_relu_maxpool2d_backward", (torch.randn_like(out), x, weight, pos, *conv_geometry,
                                                *pool_geometry), dict(needs=needs, **options))
    return forward, gradients


# --- torch.func.vmap (see ``_common``) --------------------------------------------------------------

def _forward_vmap(op):
    def rule(size, dims, x, weight, bias, stride, padding, dilation, groups, *rest):
        if dims[1] is None and dims[2] is None:
            out = op(fold_batch(x, dims[0], size), weight, bias, stride, padding, dilation, groups, *rest)
            return tuple(unfold_batch(o, size) for o in out) if isinstance(out, tuple) else unfold_batch(out, size)
        bias = fold_batch(bias, dims[2], size) if bias is not None else None
        out = op(fold_channels(x, dims[0], size), fold_batch(weight, dims[1], size), bias, stride, padding,
                 dilation, groups * size, *rest)
        return tuple(unfold_channels(o, size) for o in out) if isinstance(out, tuple) else unfold_channels(out, size)
    return rule


def _backward_vmap(size, dims, grad, x, weight, pos, stride, padding, dilation, groups, *rest):
    # Through the channels always: the weight and bias gradients are one per vmapped slice.
    which = rest[-4]
    out = conv_relu_maxpool2d_backward(fold_channels(grad, dims[0], size), fold_channels(x, dims[1], size),
                                       fold_batch(weight, dims[2], size), fold_channels(pos, dims[3], size),
                                       stride, padding, dilation, groups * size, *rest)
    return unfold_channels(out, size) if which == 0 else unfold_batch(out, size)


register_vmap(conv_relu_maxpool2d, _forward_vmap(conv_relu_maxpool2d))
register_vmap(conv_relu_maxpool2d_with_pos, _forward_vmap(conv_relu_maxpool2d_with_pos))
register_vmap(conv_relu_maxpool2d_backward, _backward_vmap)
