"""Launchers of the C++/CUDA extension (backends "cpu", "cuda" and "emulated_cuda"): the same functions,
signatures and semantics as the Triton package (``cnnfast.kernels``), running the extension's ops.

The C++ ops take their outputs as mutable arguments: the launchers allocate every output the way the
Triton launchers do (``new_empty``: poisoned with NaN / -1 when the test suite asks for it), so an
element a kernel forgets to write can never look right, on any backend. Fake kernels for the ops are
registered here, so ``torch.library.opcheck`` and ``torch.compile`` can trace them.

One set of launchers, two op tables: ``torch.ops.cnnfast.*_kernel`` (the CPU and CUDA kernels, chosen
by the tensors' device) and ``cnnfast._C.emulated_cuda`` (the CUDA kernels' block programs run by the
emulator on CPU tensors; ``emulated`` below).

``config=`` is accepted and ignored (the C++ kernels choose their tiling themselves). ``allow_tf32``
lets float32 convolutions use TF32 tensor cores on CUDA, as cuDNN does; the CPU kernels compute
float32 exactly.
"""
import torch

from . import _C
from ._outputs import new_empty, pos_dtype

__all__ = [
    "conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad",
    "max_pool2d_forward", "max_pool2d_backward",
    "conv_relu_maxpool2d_forward", "conv_relu_maxpool2d_backward",
]

# The extension's ops (csrc/ops.cpp's schemas).
_OP_NAMES = tuple(f"{op}_{part}_kernel" for op, parts in (
    ("conv2d", ("forward", "input_grad", "weight_grad", "bias_grad")),
    ("max_pool2d", ("forward", "backward")),
    ("conv_relu_maxpool2d", ("forward", "input_grad", "weight_grad", "bias_grad"))) for part in parts)

# The C++ ops write their (mutable) outputs and return nothing: the fake kernels have nothing to do.
for _name in _OP_NAMES:
    torch.library.register_fake(f"cnnfast::{_name}")(lambda *args, **kwargs: None)


def _l(v):
    return [int(i) for i in v]


class Launchers:
    """The launchers of ``cnnfast.kernels``, over the op table ``ops`` (an object with the extension's
    ``*_kernel`` functions)."""

    def __init__(self, ops):
        self._ops = ops

    # --- conv2d --------------------------------------------------------------------------------------

    def conv2d_forward(self, x, weight, bias, stride, padding, dilation, groups, out_size, *,
                       channels_last=False, allow_tf32=False, config=None):
        """conv2d forward: see ``cnnfast.kernels.conv2d.conv2d_forward``."""
        y = new_empty((x.shape[0], weight.shape[0], *out_size), dtype=x.dtype, device=x.device,
                      channels_last=channels_last)
        if y.numel():
            self._ops.conv2d_forward_kernel(x, weight, bias, _l(stride), _l(padding), _l(dilation), groups,
                                            bool(allow_tf32), y)
        return y

    def conv2d_input_grad(self, grad_out, weight, input_size, stride, padding, dilation, groups, *,
                          channels_last=False, allow_tf32=False, config=None, pool=None):
        """Gradient of conv2d with respect to its input: see ``cnnfast.kernels.conv2d.conv2d_input_grad``.
        With ``pool`` = (grad_pooled, pos, kernel, stride, padding, dilation, conv_out_size), the fused
        op's: the conv-output gradient is rebuilt from (grad_pooled, pos) inside the kernels."""
        source = grad_out if pool is None else pool[0]
        dtype = grad_out.dtype if pool is None else weight.dtype
        gi = new_empty((source.shape[0], groups * weight.shape[1], *input_size), dtype=dtype, device=weight.device,
                       channels_last=channels_last)
        tensors = (grad_out, weight) if pool is None else (pool[0], pool[1], weight)
        self._conv_grad("input_grad", tensors, pool, stride, padding, dilation, groups, allow_tf32, gi)
        return gi

    def conv2d_weight_grad(self, x, grad_out, weight_size, stride, padding, dilation, groups, *,
                           channels_last=False, allow_tf32=False, config=None, pool=None):
        """Gradient of conv2d with respect to its weight: see ``cnnfast.kernels.conv2d.conv2d_weight_grad``
        (``pool`` as for the input gradient). Split in fixed chunks and reduced in order: bit-for-bit
        repeatable."""
        gw = new_empty(tuple(weight_size), dtype=x.dtype, device=x.device, channels_last=channels_last)
        tensors = (x, grad_out) if pool is None else (x, pool[0], pool[1])
        self._conv_grad("weight_grad", tensors, pool, stride, padding, dilation, groups, allow_tf32, gw)
        return gw

    def _conv_grad(self, which, tensors, pool, stride, padding, dilation, groups, allow_tf32, out):
        """Writes ``out`` with ``conv2d_{which}_kernel`` or, given ``pool``, the fused op's
        ``conv_relu_maxpool2d_{which}_kernel`` (``tensors``: the op's leading tensor arguments)."""
        if not out.numel():
            return
        args = [*tensors, _l(stride), _l(padding), _l(dilation), groups]
        if pool is not None:
            _, _, pk, ps, pp, pd, conv_out = pool
            args += [_l(conv_out), _l(pk), _l(ps), _l(pp), _l(pd)]
        op = "conv2d" if pool is None else "conv_relu_maxpool2d"
        getattr(self._ops, f"{op}_{which}_kernel")(*args, bool(allow_tf32), out)

    def conv2d_bias_grad(self, grad_out, *, pool=None, config=None):
        """Gradient of conv2d with respect to its bias: see ``cnnfast.kernels.conv2d.conv2d_bias_grad``."""
        if pool is not None:
            # Every kept pooled cell passes its gradient to exactly one conv output: sum those directly.
            grad_pooled, pos = pool[0], pool[1]
            gb = new_empty((grad_pooled.shape[1],), dtype=grad_pooled.dtype, device=grad_pooled.device)
            if gb.numel():
                self._ops.conv_relu_maxpool2d_bias_grad_kernel(grad_pooled, pos, gb)
            return gb
        gb = new_empty((grad_out.shape[1],), dtype=grad_out.dtype, device=grad_out.device)
        if gb.numel():
            self._ops.conv2d_bias_grad_kernel(grad_out, gb)
        return gb

    # --- max_pool2d ----------------------------------------------------------------------------------

    def max_pool2d_forward(self, x, kernel_size, stride, padding, dilation, out_size, *, with_indices,
                           channels_last=False, config=None):
        """Max-pool a 4-D tensor; returns ``(out, indices)``: see ``cnnfast.kernels.max_pool2d``."""
        shape = (x.shape[0], x.shape[1], *out_size)
        out = new_empty(shape, dtype=x.dtype, device=x.device, channels_last=channels_last)
        idx = (new_empty(shape, dtype=torch.int64, device=x.device, channels_last=channels_last)
               if with_indices else None)
        if out.numel():
            self._ops.max_pool2d_forward_kernel(x, _l(kernel_size), _l(stride), _l(padding), _l(dilation), out, idx)
        return out, idx

    def max_pool2d_backward(self, grad_out, indices, input_size, kernel_size, stride, padding, dilation, *,
                            channels_last=False, config=None):
        """Gradient of max_pool2d (a gather, no atomics): see ``cnnfast.kernels.max_pool2d``. ``input_size``
        is (N, C, H, W) or (H, W) (N and C then those of ``grad_out``)."""
        if len(input_size) == 2:
            input_size = (*grad_out.shape[:2], *input_size)
        gx = new_empty(tuple(input_size), dtype=grad_out.dtype, device=grad_out.device, channels_last=channels_last)
        if gx.numel():
            self._ops.max_pool2d_backward_kernel(grad_out, indices, _l(kernel_size), _l(stride), _l(padding),
                                                 _l(dilation), gx)
        return gx

    # --- conv2d + bias + ReLU + max_pool2d --------------------------------------------------------------

    def conv_relu_maxpool2d_forward(self, x, weight, bias, stride, padding, dilation, groups, conv_out_size,
                                    pool_kernel, pool_stride, pool_padding, pool_dilation, out_size, *,
                                    with_pos, channels_last=False, allow_tf32=False, config=None):
        """The fused forward; returns ``(out, pos)``: see ``cnnfast.kernels.conv_relu_maxpool2d``."""
        shape = (x.shape[0], weight.shape[0], *out_size)
        out = new_empty(shape, dtype=x.dtype, device=x.device, channels_last=channels_last)
        pos = (new_empty(shape, dtype=pos_dtype(pool_kernel), device=x.device, channels_last=channels_last)
               if with_pos else None)
        if out.numel():
            self._ops.conv_relu_maxpool2d_forward_kernel(
                x, weight, bias, _l(stride), _l(padding), _l(dilation), groups, _l(conv_out_size),
                _l(pool_kernel), _l(pool_stride), _l(pool_padding), _l(pool_dilation), bool(allow_tf32), out, pos)
        return out, pos

    def conv_relu_maxpool2d_backward(self, grad_out, x, weight, pos, stride, padding, dilation, groups,
                                     conv_out_size, pool_kernel, pool_stride, pool_padding, pool_dilation, *,
                                     needs=(True, True, True), channels_last=False, allow_tf32=False):
        """Gradients ``(grad_x, grad_weight, grad_bias)`` of the fused op: see
        ``cnnfast.kernels.conv_relu_maxpool2d``. The conv-output gradient is never returned or saved: the
        kernels rebuild it from (grad_out, pos)."""
        pool = (grad_out, pos, pool_kernel, pool_stride, pool_padding, pool_dilation, conv_out_size)
        geometry = (stride, padding, dilation, groups)
        grad_x = grad_w = grad_b = None
        if needs[0]:
            grad_x = self.conv2d_input_grad(None, weight, tuple(x.shape[2:]), *geometry, channels_last=channels_last,
                                            allow_tf32=allow_tf32, pool=pool)
        if needs[1]:
            grad_w = self.conv2d_weight_grad(x, None, tuple(weight.shape), *geometry, channels_last=channels_last,
                                             allow_tf32=allow_tf32, pool=pool)
        if needs[2]:
            grad_b = self.conv2d_bias_grad(None, pool=pool)
        return grad_x, grad_w, grad_b


# The CPU and CUDA kernels, for backends "cpu" and "cuda".
native = Launchers(torch.ops.cnnfast)
# The CUDA kernels' block programs on CPU tensors, for backend "emulated_cuda".
emulated = Launchers(_C.emulated_cuda)

conv2d_forward = native.conv2d_forward
conv2d_input_grad = native.conv2d_input_grad
conv2d_weight_grad = native.conv2d_weight_grad
conv2d_bias_grad = native.conv2d_bias_grad
max_pool2d_forward = native.max_pool2d_forward
max_pool2d_backward = native.max_pool2d_backward
conv_relu_maxpool2d_forward = native.conv_relu_maxpool2d_forward
conv_relu_maxpool2d_backward = native.conv_relu_maxpool2d_backward
