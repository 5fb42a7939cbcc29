"""Triton kernels for conv2d: forward, input gradient, weight gradient and bias gradient.

Every launcher receives arguments already normalised by ``cnnfast.functional``: 4-D tensors with any
strides, one float dtype (float32 / float16 / bfloat16) for all float inputs, int pairs for the
geometry, ``padding = (pad_top, pad_left)`` and the output size given explicitly (so asymmetric
'same' padding needs nothing special). All arithmetic accumulates in float32 and no kernel uses
atomics: every result is deterministic and repeats bit for bit for a given shape and config.

One subject per file:

    gemm.py         the implicit-GEMM view (M, N, reduction) of forward, input_grad and weight_grad
    configs.py      the tile configs of every kernel, as data, and the heuristics choosing among them
    forward.py      direct (FMA) and implicit-GEMM forward kernels and their launcher
    input_grad.py   grad_input: implicit GEMM gathering dy
    weight_grad.py  grad_weight: split-K implicit GEMM
    bias_grad.py    grad_bias: split reduction of dy
    splitk.py       how the weight and bias reductions are split, and their fixed-order sum
    grad_out.py     where the gradient kernels read dy: grad_out, or rebuilt from the fused op's pooled
                    gradient and ``pos`` (the fused conv2d + ReLU + max_pool2d backward)

Each kernel file lists the specs ``python -m cnnfast.kernels.aot`` compiles beside its kernels.
"""
from . import bias_grad, forward, input_grad, splitk, weight_grad
from .bias_grad import conv2d_bias_grad
from .forward import conv2d_forward
from .input_grad import conv2d_input_grad
from .weight_grad import conv2d_weight_grad

__all__ = ["conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad"]


def aot_specs():
    """Every (kernel, config, dtype) of conv2d worth compiling ahead of time."""
    return [spec for module in (forward, input_grad, weight_grad, bias_grad, splitk) for spec in module.aot_specs()]
