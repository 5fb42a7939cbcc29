"""Op-level workloads: conv2d, max_pool2d and the fused block, through each provider.

Providers: "eager" (torch.nn.functional, the same unfused code stock PyTorch users write), "compile"
(that code under ``torch.compile``) and "cnnfast:<backend>" (``cnnfast.functional`` with that backend).
Forward cases run under ``torch.no_grad()``; forward+backward cases return the output and the gradients
of every input (``torch.autograd.grad`` with a fixed random output gradient, so nothing accumulates).
"""
import torch
import torch.nn.functional as F

import cnnfast.functional as cf

from . import roofline, timing
from .suites import TORCH_DTYPES
from .workload import COMPILE, EAGER, Workload, cnnfast_backend, compiled, require


def _torch_op(case):
    conv, pool = case.conv, case.pool

    def conv2d(x, w, b=None):
        return F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)

    def max_pool2d(x):
        return F.max_pool2d(x, pool.kernel, pool.stride, pool.padding)

    def conv_relu_maxpool2d(x, w, b=None):
        return max_pool2d(F.relu(conv2d(x, w, b)))

    return {"conv2d": conv2d, "max_pool2d": max_pool2d, "conv_relu_maxpool2d": conv_relu_maxpool2d}[case.op]


def _cnnfast_op(case, backend):
    conv, pool = case.conv, case.pool
    if case.op == "conv2d":
        return lambda x, w, b=None: cf.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups,
                                              backend=backend)
    if case.op == "max_pool2d":
        return lambda x: cf.max_pool2d(x, pool.kernel, pool.stride, pool.padding, backend=backend)
    return lambda x, w, b=None: cf.conv_relu_maxpool2d(
        x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups, pool_kernel_size=pool.kernel,
        pool_stride=pool.stride, pool_padding=pool.padding, backend=backend)


def _out_shape(case):
    c, h, w = case.chw
    if case.conv:
        c, (h, w) = case.conv.out_channels, case.conv.out_size(h, w)
    if case.pool:
        h, w = case.pool.out_size(h, w)
    return (case.batch, c, h, w)


def _input_set(case, device):
    """Fresh standard-normal tensors (weights scaled by 1/sqrt(fan-in)), and the output gradient."""
    dtype = TORCH_DTYPES[case.dtype]
    fmt = torch.channels_last if case.layout == "channels_last" else torch.contiguous_format
    grad = case.direction == "fwd+bwd"
    new = lambda *shape, scale=1.0: (torch.randn(*shape, device=device) * scale).to(dtype)  # noqa: E731
    tensors = [new(case.batch, *case.chw)]
    if case.conv:
        conv = case.conv
        fan_in = case.chw[0] // conv.groups * conv.kernel[0] * conv.kernel[1]
        tensors.append(new(conv.out_channels, case.chw[0] // conv.groups, *conv.kernel, scale=fan_in ** -0.5))
        if conv.bias:
            tensors.append(new(conv.out_channels))
    tensors = tuple((t.contiguous(memory_format=fmt) if t.dim() == 4 else t).requires_grad_(grad) for t in tensors)
    return tensors, (new(*_out_shape(case)).contiguous(memory_format=fmt) if grad else None)


def _runner(fn, backward: bool):
    def run(inputs, check=False):
        tensors, grad = inputs
        if not backward:
            with torch.no_grad():
                return [fn(*tensors)]
        out = fn(*tensors)
        return [out, *torch.autograd.grad(out, tensors, grad)]
    return run


def build(case, device, compile_mode=None) -> Workload:
    flops, nbytes = roofline.counts(case)
    backward = case.direction == "fwd+bwd"
    sets = [_input_set(case, device) for _ in range(timing.input_sets(nbytes, device))]
    tensors, grad = sets[0]
    ref_inputs = (tuple(t.detach().double().requires_grad_(backward) for t in tensors),
                  grad.double() if backward else None)
    reference = [r.detach() for r in _runner(_torch_op(case), backward)(ref_inputs)]

    def make(provider):
        backend = cnnfast_backend(provider)
        require(backend, (case.op,))
        fn = (_torch_op(case) if provider == EAGER else
              compiled(_torch_op(case), compile_mode) if provider == COMPILE else
              _cnnfast_op(case, backend))
        return _runner(fn, backward)

    return Workload(case, sets, reference, make, flops, nbytes, compute_bound=case.conv is not None)
