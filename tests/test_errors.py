"""Bad input gets a clear error naming the problem, before any kernel runs; inputs are never modified."""
import re

import pytest
import torch
from conftest import DEVICE, rand

import cnnfast
import cnnfast.functional as cf

CONV_ERRORS = [
    # (input shape, weight shape, keyword arguments, words the message must contain)
    ((3, 8), (4, 3, 3, 3), {}, "Expected 3D (unbatched) or 4D (batched) input"),
    ((1, 2, 3, 8, 8), (4, 3, 3, 3), {}, "Expected 3D (unbatched) or 4D (batched) input"),
    ((1, 3, 8, 8), (4, 3, 3), {}, "expected weight to be 4-D"),
    ((1, 4, 8, 8), (4, 3, 3, 3), {}, "to have 3 channels, but got 4 channels"),
    ((1, 6, 8, 8), (4, 3, 3, 3), dict(groups=3), "expected weight to be divisible by 3"),
    ((1, 6, 8, 8), (6, 3, 3, 3), dict(groups=0), "non-positive groups"),
    ((1, 3, 8, 8), (4, 3, 3, 3), dict(stride=0), "non-positive stride"),
    ((1, 3, 8, 8), (4, 3, 3, 3), dict(stride=(1, -1)), "non-positive stride"),
    ((1, 3, 8, 8), (4, 3, 3, 3), dict(dilation=0), "dilation should be greater than zero"),
    ((1, 3, 8, 8), (4, 3, 3, 3), dict(padding=-1), "negative padding"),
    ((1, 3, 2, 8), (4, 3, 3, 3), {}, "Kernel size can't be greater than actual input size"),
    ((1, 3, 4, 8), (4, 3, 3, 3), dict(dilation=2), "Kernel size can't be greater than actual input size"),
    ((1, 3, 8, 8), (4, 3, 3, 3), dict(padding="full"), "Invalid padding string 'full'"),
    ((1, 3, 8, 8), (4, 3, 3, 3), dict(padding="same", stride=2), "not supported for strided convolutions"),
    ((1, 3, 8, 8), (4, 3, 3, 3), dict(stride=(1, 2, 3)), "stride must be an int or a tuple of two ints"),
    ((1, 3, 8, 8), (4, 3, 3, 3), dict(stride=1.5), "stride must be an int or a tuple of two ints"),
]


@pytest.mark.parametrize("fn", ["conv2d", "conv_relu_maxpool2d"])
@pytest.mark.parametrize("x_shape, w_shape, kwargs, message", CONV_ERRORS)
def test_conv_bad_arguments_raise_clear_errors(fn, x_shape, w_shape, kwargs, message, backend):
    x, w = rand(*x_shape), rand(*w_shape)
    x_before, w_before = x.clone(), w.clone()
    with pytest.raises((ValueError, TypeError, RuntimeError), match=re.escape(message)):
        getattr(cf, fn)(x, w, **kwargs, backend=backend)
    assert torch.equal(x, x_before) and torch.equal(w, w_before)


def test_conv_bias_of_wrong_size(backend):
    with pytest.raises(ValueError, match="expected bias to be 1-dimensional with 4 elements"):
        cf.conv2d(rand(1, 3, 8, 8), rand(4, 3, 3, 3), rand(5), backend=backend)


def test_conv_dtype_mismatch(backend):
    with pytest.raises(RuntimeError, match=r"input dtype \(torch.float32\) and weight dtype \(torch.float64\)"):
        cf.conv2d(rand(1, 3, 8, 8), rand(4, 3, 3, 3, dtype=torch.float64), backend=backend)


def test_conv_device_mismatch(backend):
    other = "meta"
    with pytest.raises(RuntimeError, match=f"input is on {DEVICE}.* but weight is on {other}"):
        cf.conv2d(rand(1, 3, 8, 8), torch.empty(4, 3, 3, 3, device=other), backend=backend)


POOL_ERRORS = [
    ((3, 8), dict(kernel_size=2), "Expected 3D (unbatched) or 4D (batched) input"),
    ((1, 0, 8, 8), dict(kernel_size=2), "Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size"),
    ((1, 3, 8, 8), dict(kernel_size=0), "kernel_size must be greater than zero"),
    ((1, 3, 8, 8), dict(kernel_size=2, stride=0), "stride should be greater than zero"),
    ((1, 3, 8, 8), dict(kernel_size=2, dilation=0), "dilation should be greater than zero"),
    ((1, 3, 8, 8), dict(kernel_size=2, padding=2), "pad should be smaller than or equal to half of kernel size"),
    ((1, 3, 2, 2), dict(kernel_size=3), "Output size is too small"),
    ((1, 3, 8, 8), dict(kernel_size=(2, 2, 2)), "kernel_size must be an int or a tuple of two ints"),
]


@pytest.mark.parametrize("x_shape, kwargs, message", POOL_ERRORS)
def test_max_pool2d_bad_arguments_raise_clear_errors(x_shape, kwargs, message, backend):
    x = rand(*x_shape)
    x_before = x.clone()
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        cf.max_pool2d(x, **kwargs, backend=backend)
    assert torch.equal(x, x_before)


def test_fused_pool_larger_than_conv_output(backend):
    with pytest.raises(ValueError, match="Output size is too small"):
        cf.conv_relu_maxpool2d(rand(1, 3, 4, 4), rand(2, 3, 3, 3), pool_kernel_size=3, backend=backend)


def test_explicit_backend_that_cannot_run_the_case_says_why():
    with pytest.raises(TypeError, match="backend 'triton' supports float32, float16 and bfloat16, not torch.float64"):
        cf.conv2d(rand(1, 3, 8, 8, dtype=torch.float64), rand(2, 3, 3, 3, dtype=torch.float64), backend="triton")
    with pytest.raises(ValueError, match="unknown cnnfast backend 'tpu'"):
        cf.conv2d(rand(1, 3, 8, 8), rand(2, 3, 3, 3), backend="tpu")
    if DEVICE == "cpu" and "cpu" not in cnnfast.backends.available("cpu"):
        with pytest.raises(RuntimeError, match="backend 'cpu' is not available"):
            cf.conv2d(rand(1, 3, 8, 8), rand(2, 3, 3, 3), backend="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend 'cuda' runs on cuda tensors, not on a cpu tensor"):
            cf.conv2d(rand(1, 3, 8, 8), rand(2, 3, 3, 3), backend="cuda")
