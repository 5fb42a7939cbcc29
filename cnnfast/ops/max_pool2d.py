"""max_pool2d: the custom ops ``cnnfast::max_pool2d`` (no indices: nothing to differentiate) and
``cnnfast::max_pool2d_with_indices`` (autograd saves the indices), the input_grad op
``cnnfast::max_pool2d_backward``, their fake kernels and the one backward both paths use (see ``_common``).

Double backward: the input gradient sends each pooled gradient to the cell its index names, so its
derivative with respect to the pooled gradient is the gather of the cotangent by the same indices
(``cnnfast::max_pool2d_gather``), and the gather's derivative is the input gradient again.

Forward mode (torch.func only): the pooled output's tangent is the input's tangent gathered at the
indices; the input gradient and the gather are linear, so their tangents are themselves on the tangent.
"""
from typing import List

import torch
from torch import Tensor

from .. import _stock as stock
from ..backends import kernels
from ._common import (custom_op, empty, fold_batch, is_channels_last, register_autograd, register_vmap, run,
                      unfold_batch)


def _pooled(x, out_size, channels_last, dtype=None):
    return empty(x, (*x.shape[:2], *out_size), channels_last, dtype)


@custom_op("max_pool2d", fake=lambda x, kernel_size, stride, padding, dilation, out_size, channels_last, backend:
           _pooled(x, out_size, channels_last))
def max_pool2d(x: Tensor, kernel_size: List[int], stride: List[int], padding: List[int], dilation: List[int],
               out_size: List[int], channels_last: bool, backend: str) -> Tensor:
    return kernels(backend).max_pool2d_forward(x, kernel_size, stride, padding, dilation, out_size,
                                               with_indices=False, channels_last=channels_last)[0]


@custom_op("max_pool2d_with_indices", fake=lambda x, kernel_size, stride, padding, dilation, out_size,
           channels_last, backend: (_pooled(x, out_size, channels_last),
                                    _pooled(x, out_size, channels_last, torch.int64)))
def max_pool2d_with_indices(x: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                            dilation: List[int], out_size: List[int], channels_last: bool,
                            backend: str) -> tuple[Tensor, Tensor]:
    return kernels(backend).max_pool2d_forward(x, kernel_size, stride, padding, dilation, out_size,
                                               with_indices=True, channels_last=channels_last)


@custom_op("max_pool2d_backward", fake=lambda grad, indices, input_size, kernel_size, stride, padding, dilation,
           channels_last, backend: empty(grad, (*grad.shape[:2], *input_size), channels_last))
def max_pool2d_backward(grad: Tensor, indices: Tensor, input_size: List[int], kernel_size: List[int],
                        stride: List[int], padding: List[int], dilation: List[int], channels_last: bool,
                        backend: str) -> Tensor:
    return kernels(backend).max_pool2d_backward(grad, indices, input_size, kernel_size, stride, padding, dilation,
                                                channels_last=channels_last)


def _setup(ctx, inputs, output):
    x, kernel_size, stride, padding, dilation, _, channels_last, backend = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.args = (x.shape[2:], kernel_size, stride, padding, dilation, channels_last, backend)


def _backward(ctx, grad, _grad_indices, path):
    (indices,) = ctx.saved_tensors
    return (path(max_pool2d_backward)(grad, indices, *ctx.args),)


def _jvp(args, outputs, tangents, path):
    _, *pool, _, channels_last, backend = args
    # The indices are integers: no tangent.
    return path(max_pool2d_gather)(tangents[0], outputs[1], *pool, channels_last, backend), None


_MaxPool2dFunction = register_autograd(max_pool2d_with_indices, _setup, _backward, "_MaxPool2dFunction",
                                       jvp=_jvp)


# --- double backward -------------------------------------------------------------------------------

@custom_op("max_pool2d_gather", fake=lambda x, indices, kernel_size, stride, padding, dilation, channels_last,
           backend: empty(x, indices.shape, channels_last))
def max_pool2d_gather(x: Tensor, indices: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                      dilation: List[int], channels_last: bool, backend: str) -> Tensor:
    """out[n, c, oh, ow] = x[n, c].flatten()[indices[n, c, oh, ow]]: the pooled values at ``indices``
    (windows given by the geometry, which its backward needs). A gather, deterministic on every device."""
    n, c = indices.shape[:2]
    out = x.reshape(n, c, -1).gather(2, indices.reshape(n, c, -1)).view(indices.shape)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def _gather_setup(ctx, inputs, output):
    x, indices, *pool, _, backend = inputs
    ctx.save_for_backward(indices)
    ctx.args = (x.shape[2:], *pool, is_channels_last(x), backend)


def _gather_backward(ctx, v, path):
    (indices,) = ctx.saved_tensors
    return (path(max_pool2d_backward)(v, indices, *ctx.args),)


def _pool_backward_setup(ctx, inputs, output):
    _, indices, _, *pool, _, backend = inputs
    ctx.save_for_backward(indices)
    ctx.args = (*pool, backend)


def _pool_backward_backward(ctx, v, path):
    (indices,) = ctx.saved_tensors
    *pool, backend = ctx.args
    return (path(max_pool2d_gather)(v, indices, *pool, is_channels_last(indices), backend),)


def _linear_jvp(op):
    """The jvp of ``op``, linear in its first argument: ``op`` on that argument's tangent."""
    return lambda args, _outputs, tangents, path: path(op)(tangents[0], *args[1:])


register_autograd(max_pool2d_gather, _gather_setup, _gather_backward, "_MaxPool2dGatherFunction",
                  jvp=_linear_jvp(max_pool2d_gather))
register_autograd(max_pool2d_backward, _pool_backward_setup, _pool_backward_backward,
                  "_MaxPool2dBackwardFunction", jvp=_linear_jvp(max_pool2d_backward))


def run_max_pool2d(x, *args, with_indices):
    """``max_pool2d_with_indices`` or, without ``with_indices``, ``max_pool2d`` (same arguments): the
    eager path or the custom ops."""
    if with_indices:
        return run(max_pool2d_with_indices, _MaxPool2dFunction, (x,), (x, *args))
    return run(max_pool2d, None, (x,), (x, *args))


def launches(x, kernel_size, stride, padding, dilation, out_size, channels_last, *, with_indices):
    """As ``conv2d.launches``: the forward's launcher call and a function listing the backward's."""
    geometry = (kernel_size, stride, padding, dilation)
    forward = ("max_pool2d_forward", (x, *geometry, out_size), dict(with_indices=with_indices,
                                                                     channels_last=channels_last))

    def gradients():
        grad, indices = stock.max_pool2d_forward(x.detach(), *geometry, out_size, with_indices=True,
                                                 channels_last=channels_last)
        yield ("max_pool2d_backward", (torch.randn_like(grad), indices, x.shape[2:], *geometry),
               dict(channels_last=channels_last))
    return forward, gradients


# --- torch.func.vmap: every plane is pooled on its own, so the vmapped dimension joins the batch ----

def _fold_vmap(op, tensors):
    """The rule for ``op`` whose leading ``tensors`` arguments are batched alike."""
    def rule(size, dims, *args):
        folded = [fold_batch(t, d, size) for t, d in zip(args[:tensors], dims)]
        out = op(*folded, *args[tensors:])
        return tuple(unfold_batch(o, size) for o in out) if isinstance(out, tuple) else unfold_batch(out, size)
    return rule


register_vmap(max_pool2d, _fold_vmap(max_pool2d, 1))
register_vmap(max_pool2d_with_indices, _fold_vmap(max_pool2d_with_indices, 1))
register_vmap(max_pool2d_backward, _fold_vmap(max_pool2d_backward, 2))
register_vmap(max_pool2d_gather, _fold_vmap(max_pool2d_gather, 2))
