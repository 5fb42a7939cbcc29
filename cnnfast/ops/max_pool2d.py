"""max_pool2d: the custom ops ``cnnfast::max_pool2d`` (no indices: nothing to differentiate) and
``cnnfast::max_pool2d_with_indices`` (autograd saves the indices), the input_grad op
``cnnfast::max_pool2d_backward``, their fake kernels and the one backward both paths use (see ``_common``).
"""
from typing import List

import torch
from torch import Tensor

from .. import _stock as stock
from ..backends import kernels
from ._common import custom_op, empty, register_autograd, run


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


_MaxPool2dFunction = register_autograd(max_pool2d_with_indices, _setup, _backward, "_MaxPool2dFunction")


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
