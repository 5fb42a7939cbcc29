"""Bad input gets a clear error naming the problem, in PyTorch's words, before any kernel runs; inputs
are never modified."""
import re

import pytest
import torch

import cnnfast.functional as cf
from cnnfast.testing._reference import assert_equal_reference, case_of, device, rand

OP = "bad input"
quick = pytest.mark.quick

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
# The quick subset: a wrong input rank, a channel mismatch, a non-positive stride, a kernel larger than
# the padded input, 'same' with a stride.
QUICK_CONV = {0, 3, 6, 10, 13}


def expect_error(case, errors, message, call, regex=False):
    """``call()`` raises one of ``errors`` whose message contains ``message`` (or, with ``regex``, matches
    it); else a failure for ``case``."""
    try:
        call()
    except errors as e:
        if not (re.search(message, str(e)) if regex else message in str(e)):
            case.fail("error message", f"raised {type(e).__name__}({str(e)!r}), which does not say {message!r}")
        return
    except Exception as e:
        case.fail("error type", f"raised {type(e).__name__}({str(e)!r}); expected one of "
                                f"{', '.join(t.__name__ for t in errors)} saying {message!r}")
    case.fail("error", f"no error was raised; expected one saying {message!r}")


def _conv_params():
    return [pytest.param(*row, marks=[quick] if i in QUICK_CONV else []) for i, row in enumerate(CONV_ERRORS)]


@pytest.mark.parametrize("fn", ["conv2d", "conv_relu_maxpool2d"])
@pytest.mark.parametrize("x_shape, w_shape, kwargs, message", _conv_params())
def test_conv_bad_arguments_raise_clear_errors(fn, x_shape, w_shape, kwargs, message, backend, seed):
    x, w = rand(*x_shape), rand(*w_shape)
    case = case_of(fn, "bad arguments", backend=backend, seed=seed, arguments=kwargs, input=x, weight=w)
    x_before, w_before = x.clone(), w.clone()
    expect_error(case, (ValueError, TypeError, RuntimeError), message,
                 lambda: getattr(cf, fn)(x, w, **kwargs, backend=backend))
    assert_equal_reference(case, x, x_before, what="input (the op modified it)", equal_nan=False)
    assert_equal_reference(case, w, w_before, what="weight (the op modified it)", equal_nan=False)


@quick
def test_conv_bias_of_wrong_size(backend, seed):
    x, w, b = rand(1, 3, 8, 8), rand(4, 3, 3, 3), rand(5)
    case = case_of("conv2d", "bias of the wrong size", backend=backend, seed=seed, input=x, weight=w, bias=b)
    expect_error(case, (ValueError,), "expected bias to be 1-dimensional with 4 elements",
                 lambda: cf.conv2d(x, w, b, backend=backend))


def test_conv_dtype_mismatch(backend, seed):
    x, w = rand(1, 3, 8, 8), rand(4, 3, 3, 3, dtype=torch.float64)
    case = case_of("conv2d", "dtype mismatch", backend=backend, seed=seed, input=x, weight=w)
    expect_error(case, (RuntimeError,), "input dtype (torch.float32) and weight dtype (torch.float64)",
                 lambda: cf.conv2d(x, w, backend=backend))


def test_conv_device_mismatch(backend, seed):
    other = "meta"
    x, w = rand(1, 3, 8, 8), torch.empty(4, 3, 3, 3, device=other)
    case = case_of("conv2d", "device mismatch", backend=backend, seed=seed, input=x, weight=w)
    expect_error(case, (RuntimeError,), f"input is on {device()}.* but weight is on {other}",
                 lambda: cf.conv2d(x, w, backend=backend), regex=True)


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
QUICK_POOL = {1, 5, 6}


@pytest.mark.parametrize("x_shape, kwargs, message",
                         [pytest.param(*row, marks=[quick] if i in QUICK_POOL else []) for i, row in enumerate(POOL_ERRORS)])
def test_max_pool2d_bad_arguments_raise_clear_errors(x_shape, kwargs, message, backend, seed):
    x = rand(*x_shape)
    case = case_of("max_pool2d", "bad arguments", backend=backend, seed=seed, arguments=kwargs, input=x)
    x_before = x.clone()
    expect_error(case, (ValueError, TypeError), message, lambda: cf.max_pool2d(x, **kwargs, backend=backend))
    assert_equal_reference(case, x, x_before, what="input (the op modified it)", equal_nan=False)


@quick
def test_fused_pool_larger_than_conv_output(backend, seed):
    x, w = rand(1, 3, 4, 4), rand(2, 3, 3, 3)
    case = case_of("conv_relu_maxpool2d", "pool larger than the conv output", backend=backend, seed=seed,
                   arguments=dict(pool_kernel_size=3), input=x, weight=w)
    expect_error(case, (ValueError,), "Output size is too small",
                 lambda: cf.conv_relu_maxpool2d(x, w, pool_kernel_size=3, backend=backend))
