"""Bad input gets a clear error naming the problem, before any kernel runs; inputs are never modified:
the conformance suite's tests (cnnfast/testing/test_errors.py) on the built-in backends, and the
built-in backends' own refusals."""
import pytest
import torch
from conftest import DEVICE, rand

import cnnfast
import cnnfast.functional as cf
from cnnfast.testing.test_errors import *  # noqa: F401,F403


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
