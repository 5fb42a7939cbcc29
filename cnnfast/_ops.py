"""The ``cnnfast::*`` custom operators: one per op, taking the backend name as an argument.

The front end (``cnnfast.functional``) normalises and checks arguments, then calls these ops with
geometry as plain int lists: ``padding = [pad_top, pad_left]`` with the output size given explicitly
(which is how asymmetric 'same' padding reaches the kernels). Each op runs its backend's launcher
(``backends.kernels(name)``); a fake kernel gives ``torch.compile`` the output's shape and strides, and
``register_autograd`` wires the backward ops. The "torch" backend never comes here.

The front end calls ``run_conv2d``, ``run_max_pool2d`` and ``run_conv_relu_maxpool2d`` (at the end):
eager calls on plain tensors take autograd.Functions over the same launchers, which skip
torch.library's Python dispatch; everything else takes the custom ops.
"""
from typing import List, Optional

import torch
from torch import Tensor

from ._outputs import pos_dtype
from .backends import kernels


def _empty(x: Tensor, shape, channels_last: bool, dtype=None) -> Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=dtype or x.dtype, device=x.device, memory_format=fmt)


# --- conv2d ------------------------------------------------------------------------------------

def _launch_conv2d(x, weight, bias, stride, padding, dilation, groups, out_size, channels_last, allow_tf32,
                   backend):
    """The backend's conv2d forward launcher, called with the custom op's arguments."""
    return kernels(backend).conv2d_forward(
        x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups, tuple(out_size),
        channels_last=channels_last, allow_tf32=allow_tf32)


@torch.library.custom_op("cnnfast::conv2d", mutates_args=())
def conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
           dilation: List[int], groups: int, out_size: List[int], channels_last: bool, allow_tf32: bool,
           backend: str) -> Tensor:
    return _launch_conv2d(x, weight, bias, stride, padding, dilation, groups, out_size, channels_last, allow_tf32,
                          backend)


@conv2d.register_fake
def _(x, weight, bias, stride, padding, dilation, groups, out_size, channels_last, allow_tf32, backend):
    return _empty(x, (x.shape[0], weight.shape[0], *out_size), channels_last)


@torch.library.custom_op("cnnfast::conv2d_input_grad", mutates_args=())
def conv2d_input_grad(grad: Tensor, weight: Tensor, input_size: List[int], stride: List[int],
                      padding: List[int], dilation: List[int], groups: int, channels_last: bool,
                      allow_tf32: bool, backend: str) -> Tensor:
    return kernels(backend).conv2d_input_grad(
        grad, weight, tuple(input_size), tuple(stride), tuple(padding), tuple(dilation), groups,
        channels_last=channels_last, allow_tf32=allow_tf32)


@conv2d_input_grad.register_fake
def _(grad, weight, input_size, stride, padding, dilation, groups, channels_last, allow_tf32, backend):
    return _empty(grad, (grad.shape[0], weight.shape[1] * groups, *input_size), channels_last)


@torch.library.custom_op("cnnfast::conv2d_weight_grad", mutates_args=())
def conv2d_weight_grad(x: Tensor, grad: Tensor, weight_size: List[int], stride: List[int],
                       padding: List[int], dilation: List[int], groups: int, channels_last: bool,
                       allow_tf32: bool, backend: str) -> Tensor:
    return kernels(backend).conv2d_weight_grad(
        x, grad, tuple(weight_size), tuple(stride), tuple(padding), tuple(dilation), groups,
        channels_last=channels_last, allow_tf32=allow_tf32)


@conv2d_weight_grad.register_fake
def _(x, grad, weight_size, stride, padding, dilation, groups, channels_last, allow_tf32, backend):
    return _empty(x, tuple(weight_size), channels_last)


@torch.library.custom_op("cnnfast::conv2d_bias_grad", mutates_args=())
def conv2d_bias_grad(grad: Tensor, backend: str) -> Tensor:
    return kernels(backend).conv2d_bias_grad(grad)


@conv2d_bias_grad.register_fake
def _(grad, backend):
    return grad.new_empty((grad.shape[1],))


def _conv2d_setup(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, groups, _, channels_last, allow_tf32, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.geometry = (stride, padding, dilation, groups)
    ctx.options = (allow_tf32, backend)
    ctx.input_channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last)
    ctx.weight_channels_last = not weight.is_contiguous() and weight.is_contiguous(
        memory_format=torch.channels_last)
    ctx.has_bias = bias is not None


def _conv2d_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    (stride, padding, dilation, groups), (allow_tf32, backend) = ctx.geometry, ctx.options
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = conv2d_input_grad(grad, weight, list(x.shape[2:]), stride, padding, dilation, groups,
                                   ctx.input_channels_last, allow_tf32, backend)
    if ctx.needs_input_grad[1]:
        grad_w = conv2d_weight_grad(x, grad, list(weight.shape), stride, padding, dilation, groups,
                                    ctx.weight_channels_last, allow_tf32, backend)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = conv2d_bias_grad(grad, backend)
    return grad_x, grad_w, grad_b, None, None, None, None, None, None, None, None


conv2d.register_autograd(_conv2d_backward, setup_context=_conv2d_setup)


# --- max_pool2d --------------------------------------------------------------------------------

def _launch_max_pool2d(x, kernel_size, stride, padding, dilation, out_size, channels_last, backend, *,
                       with_indices):
    """The backend's max_pool2d forward launcher, called with the custom ops' arguments: (out, indices),
    indices None unless ``with_indices``."""
    return kernels(backend).max_pool2d_forward(
        x, tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation), tuple(out_size),
        with_indices=with_indices, channels_last=channels_last)


@torch.library.custom_op("cnnfast::max_pool2d", mutates_args=())
def max_pool2d(x: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
               dilation: List[int], out_size: List[int], channels_last: bool, backend: str) -> Tensor:
    return _launch_max_pool2d(x, kernel_size, stride, padding, dilation, out_size, channels_last, backend,
                              with_indices=False)[0]


@max_pool2d.register_fake
def _(x, kernel_size, stride, padding, dilation, out_size, channels_last, backend):
    return _empty(x, (*x.shape[:2], *out_size), channels_last)


@torch.library.custom_op("cnnfast::max_pool2d_with_indices", mutates_args=())
def max_pool2d_with_indices(x: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                            dilation: List[int], out_size: List[int], channels_last: bool,
                            backend: str) -> tuple[Tensor, Tensor]:
    return _launch_max_pool2d(x, kernel_size, stride, padding, dilation, out_size, channels_last, backend,
                              with_indices=True)


@max_pool2d_with_indices.register_fake
def _(x, kernel_size, stride, padding, dilation, out_size, channels_last, backend):
    shape = (*x.shape[:2], *out_size)
    return _empty(x, shape, channels_last), _empty(x, shape, channels_last, torch.int64)


@torch.library.custom_op("cnnfast::max_pool2d_backward", mutates_args=())
def max_pool2d_backward(grad: Tensor, indices: Tensor, input_size: List[int], kernel_size: List[int],
                        stride: List[int], padding: List[int], dilation: List[int], channels_last: bool,
                        backend: str) -> Tensor:
    return kernels(backend).max_pool2d_backward(
        grad, indices, tuple(input_size), tuple(kernel_size), tuple(stride), tuple(padding),
        tuple(dilation), channels_last=channels_last)


@max_pool2d_backward.register_fake
def _(grad, indices, input_size, kernel_size, stride, padding, dilation, channels_last, backend):
    return _empty(grad, (*grad.shape[:2], *input_size), channels_last)


def _max_pool2d_setup(ctx, inputs, output):
    x, kernel_size, stride, padding, dilation, _, channels_last, backend = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.args = (list(x.shape[2:]), kernel_size, stride, padding, dilation, channels_last, backend)


def _max_pool2d_backward(ctx, grad, _grad_indices):
    (indices,) = ctx.saved_tensors
    return max_pool2d_backward(grad, indices, *ctx.args), None, None, None, None, None, None, None


max_pool2d_with_indices.register_autograd(_max_pool2d_backward, setup_context=_max_pool2d_setup)


# --- conv2d + bias + ReLU + max_pool2d, fused --------------------------------------------------
# The forward saves only a small integer per pooled output: the window position of its maximum,
# or -1 where ReLU zeroed the gradient. The backward ops rebuild the conv-output gradient from
# (grad, pos) inside the conv backward kernels; the pre-pool activation never exists in memory.

def _launch_fused(x, weight, bias, stride, padding, dilation, groups, conv_out_size, pool_kernel, pool_stride,
                  pool_padding, pool_dilation, out_size, channels_last, allow_tf32, backend, *, with_pos):
    """The backend's fused forward launcher, called with the custom ops' arguments: (out, pos), pos None
    unless ``with_pos``."""
    return kernels(backend).conv_relu_maxpool2d_forward(
        x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups, tuple(conv_out_size),
        tuple(pool_kernel), tuple(pool_stride), tuple(pool_padding), tuple(pool_dilation),
        tuple(out_size), with_pos=with_pos, channels_last=channels_last, allow_tf32=allow_tf32)


@torch.library.custom_op("cnnfast::conv_relu_maxpool2d", mutates_args=())
def conv_relu_maxpool2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                        padding: List[int], dilation: List[int], groups: int, conv_out_size: List[int],
                        pool_kernel: List[int], pool_stride: List[int], pool_padding: List[int],
                        pool_dilation: List[int], out_size: List[int], channels_last: bool,
                        allow_tf32: bool, backend: str) -> Tensor:
    return _launch_fused(x, weight, bias, stride, padding, dilation, groups, conv_out_size, pool_kernel,
                         pool_stride, pool_padding, pool_dilation, out_size, channels_last, allow_tf32, backend,
                         with_pos=False)[0]


@conv_relu_maxpool2d.register_fake
def _(x, weight, bias, stride, padding, dilation, groups, conv_out_size, pool_kernel, pool_stride,
      pool_padding, pool_dilation, out_size, channels_last, allow_tf32, backend):
    return _empty(x, (x.shape[0], weight.shape[0], *out_size), channels_last)


@torch.library.custom_op("cnnfast::conv_relu_maxpool2d_with_pos", mutates_args=())
def conv_relu_maxpool2d_with_pos(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                                 padding: List[int], dilation: List[int], groups: int,
                                 conv_out_size: List[int], pool_kernel: List[int], pool_stride: List[int],
                                 pool_padding: List[int], pool_dilation: List[int], out_size: List[int],
                                 channels_last: bool, allow_tf32: bool, backend: str) -> tuple[Tensor, Tensor]:
    return _launch_fused(x, weight, bias, stride, padding, dilation, groups, conv_out_size, pool_kernel,
                         pool_stride, pool_padding, pool_dilation, out_size, channels_last, allow_tf32, backend,
                         with_pos=True)


@conv_relu_maxpool2d_with_pos.register_fake
def _(x, weight, bias, stride, padding, dilation, groups, conv_out_size, pool_kernel, pool_stride,
      pool_padding, pool_dilation, out_size, channels_last, allow_tf32, backend):
    shape = (x.shape[0], weight.shape[0], *out_size)
    return _empty(x, shape, channels_last), _empty(x, shape, channels_last, pos_dtype(pool_kernel))


# One backward op per gradient, so autograd computes only those it needs. `which` is 0 for the
# input, 1 for the weight, 2 for the bias.
@torch.library.custom_op("cnnfast::conv_relu_maxpool2d_backward", mutates_args=())
def conv_relu_maxpool2d_backward(grad: Tensor, x: Tensor, weight: Tensor, pos: Tensor, stride: List[int],
                                 padding: List[int], dilation: List[int], groups: int,
                                 conv_out_size: List[int], pool_kernel: List[int], pool_stride: List[int],
                                 pool_padding: List[int], pool_dilation: List[int], which: int,
                                 channels_last: bool, allow_tf32: bool, backend: str) -> Tensor:
    needs = tuple(i == which for i in range(3))
    grads = kernels(backend).conv_relu_maxpool2d_backward(
        grad, x, weight, pos, tuple(stride), tuple(padding), tuple(dilation), groups, tuple(conv_out_size),
        tuple(pool_kernel), tuple(pool_stride), tuple(pool_padding), tuple(pool_dilation), needs=needs,
        channels_last=channels_last, allow_tf32=allow_tf32)
    return grads[which]


@conv_relu_maxpool2d_backward.register_fake
def _(grad, x, weight, pos, stride, padding, dilation, groups, conv_out_size, pool_kernel, pool_stride,
      pool_padding, pool_dilation, which, channels_last, allow_tf32, backend):
    shape = (x.shape, weight.shape, weight.shape[:1])[which]
    return _empty(x, shape, channels_last and which < 2)


def _fused_setup(ctx, inputs, output):
    (x, weight, bias, stride, padding, dilation, groups, conv_out_size, pool_kernel, pool_stride,
     pool_padding, pool_dilation, _, channels_last, allow_tf32, backend) = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, weight, output[1])
    ctx.geometry = (stride, padding, dilation, groups, conv_out_size, pool_kernel, pool_stride,
                    pool_padding, pool_dilation)
    ctx.options = (allow_tf32, backend)
    ctx.channels_last = (
        (x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()),
        (weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()),
        False)
    ctx.has_bias = bias is not None


def _fused_backward(ctx, grad, _grad_pos):
    x, weight, pos = ctx.saved_tensors
    allow_tf32, backend = ctx.options
    grads = [None, None, None]
    for which in range(3):
        if ctx.needs_input_grad[which] and (which < 2 or ctx.has_bias):
            grads[which] = conv_relu_maxpool2d_backward(
                grad, x, weight, pos, *ctx.geometry, which, ctx.channels_last[which], allow_tf32, backend)
    return (*grads, *([None] * 13))


conv_relu_maxpool2d_with_pos.register_autograd(_fused_backward, setup_context=_fused_setup)


# --- the eager path ----------------------------------------------------------------------------
# A torch.library custom op costs ~50 us of Python dispatch per call, more than a small layer's
# kernel. Eager calls on plain tensors therefore run through torch.autograd.Functions over the same
# launchers and the same context setup (in the classic forward(ctx, ...) form: a separate
# setup_context costs an inspect.signature bind per call); torch.compile (and anything tracing), fake
# tensors and tensor subclasses take the custom ops above. The fused op's backward makes one launcher
# call for every gradient it needs.

def _eager(*tensors) -> bool:
    if torch.compiler.is_compiling():
        return False
    return all(t is None or type(t) in (Tensor, torch.nn.Parameter) for t in tensors)


class _Conv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *inputs):
        out = _launch_conv2d(*inputs)
        _conv2d_setup(ctx, inputs, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        (stride, padding, dilation, groups), (allow_tf32, backend) = ctx.geometry, ctx.options
        launchers = kernels(backend)
        geometry = (tuple(stride), tuple(padding), tuple(dilation), groups)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = launchers.conv2d_input_grad(grad, weight, tuple(x.shape[2:]), *geometry,
                                                 channels_last=ctx.input_channels_last, allow_tf32=allow_tf32)
        if ctx.needs_input_grad[1]:
            grad_w = launchers.conv2d_weight_grad(x, grad, tuple(weight.shape), *geometry,
                                                  channels_last=ctx.weight_channels_last, allow_tf32=allow_tf32)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = launchers.conv2d_bias_grad(grad)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None, None


class _MaxPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *inputs):
        out = _launch_max_pool2d(*inputs, with_indices=True)
        _max_pool2d_setup(ctx, inputs, out)
        return out

    @staticmethod
    def backward(ctx, grad, _grad_indices):
        (indices,) = ctx.saved_tensors
        input_size, kernel_size, stride, padding, dilation, channels_last, backend = ctx.args
        gx = kernels(backend).max_pool2d_backward(grad, indices, tuple(input_size), tuple(kernel_size), tuple(stride),
                                                  tuple(padding), tuple(dilation), channels_last=channels_last)
        return gx, None, None, None, None, None, None, None


class _FusedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *inputs):
        out = _launch_fused(*inputs, with_pos=True)
        _fused_setup(ctx, inputs, out)
        return out

    @staticmethod
    def backward(ctx, grad, _grad_pos):
        x, weight, pos = ctx.saved_tensors
        allow_tf32, backend = ctx.options
        geometry = tuple(tuple(v) if isinstance(v, list) else v for v in ctx.geometry)
        needs = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        # One call for every gradient wanted; two when the input and weight gradients differ in layout.
        calls = [needs] if ctx.channels_last[0] == ctx.channels_last[1] else [
            [needs[0], False, needs[2]], [False, needs[1], False]]
        grads = [None, None, None]
        for wanted in calls:
            layout = ctx.channels_last[0] if wanted[0] else ctx.channels_last[1]
            got = kernels(backend).conv_relu_maxpool2d_backward(
                grad, x, weight, pos, *geometry, needs=tuple(wanted), channels_last=layout, allow_tf32=allow_tf32)
            grads = [g if g is not None else new for g, new in zip(grads, got)]
        return (*grads, *([None] * 13))


def run_conv2d(x, weight, bias, *args):
    """``conv2d`` (the custom op's arguments after ``bias``): the eager path or the custom op."""
    if _eager(x, weight, bias):
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
            return _Conv2dFunction.apply(x, weight, bias, *args)
        # Nothing to differentiate: the launcher alone (Function.apply costs ~15 us even then).
        return _launch_conv2d(x, weight, bias, *args)
    return conv2d(x, weight, bias, *args)


def run_max_pool2d(x, *args, with_indices):
    """``max_pool2d`` / ``max_pool2d_with_indices`` (same arguments): the eager path or the custom ops."""
    if _eager(x):
        if with_indices:
            return _MaxPool2dFunction.apply(x, *args)
        return _launch_max_pool2d(x, *args, with_indices=False)[0]
    return max_pool2d_with_indices(x, *args) if with_indices else max_pool2d(x, *args)


def run_conv_relu_maxpool2d(x, weight, bias, *args, with_pos):
    """The fused op (``conv_relu_maxpool2d_with_pos``'s arguments): its output, and with ``with_pos``
    the window positions autograd saves; the eager path or the custom ops."""
    if _eager(x, weight, bias):
        if with_pos:
            return _FusedFunction.apply(x, weight, bias, *args)
        return _launch_fused(x, weight, bias, *args, with_pos=False)[0]
    if with_pos:
        return conv_relu_maxpool2d_with_pos(x, weight, bias, *args)
    return conv_relu_maxpool2d(x, weight, bias, *args)
