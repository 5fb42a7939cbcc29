"""max_pool2d values, indices and gradients against PyTorch, through every backend available here.

Max pooling does no arithmetic, so values and indices must equal stock PyTorch's exactly (at every
dtype), NaN and ties included; gradients are compared with a float64 reference."""
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_unchanged, DTYPES, assert_matches, rand

import cnnfast.functional as cf

# (N, C, H, W), keyword arguments
CASES = {
    "net_pool": ((2, 6, 30, 30), dict(kernel_size=2)),
    "odd_size": ((3, 5, 9, 11), dict(kernel_size=2)),
    "k3_s2_overlapping": ((2, 3, 9, 10), dict(kernel_size=3, stride=2)),
    "k3_s1_pad1": ((1, 4, 7, 8), dict(kernel_size=3, stride=1, padding=1)),
    "rect_kernel_stride": ((2, 3, 10, 9), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0))),
    "dilation2": ((1, 3, 11, 10), dict(kernel_size=3, stride=2, dilation=2, padding=1)),
    "ceil_mode": ((2, 3, 10, 7), dict(kernel_size=3, stride=2, ceil_mode=True)),
    "ceil_mode_pad": ((1, 2, 6, 9), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    "k1": ((2, 3, 5, 4), dict(kernel_size=1, stride=2)),
    "batch_zero": ((0, 3, 6, 6), dict(kernel_size=2)),
}


def _check(x, kwargs, backend, dtype):
    x = x.detach().requires_grad_()
    x_before = x.detach().clone()
    out, idx = cf.max_pool2d(x, **kwargs, return_indices=True, backend=backend)
    ref, ref_idx = F.max_pool2d(x.detach(), **kwargs, return_indices=True)
    assert out.dtype == dtype and idx.dtype == torch.int64
    torch.testing.assert_close(out, ref, atol=0, rtol=0, equal_nan=True)
    assert torch.equal(idx, ref_idx), "indices differ from PyTorch's"
    grad_out = torch.randn_like(out, dtype=torch.float64).to(dtype)
    if out.numel():
        (grad,) = torch.autograd.grad(out, x, grad_out)
        x64 = x.detach().double().requires_grad_()
        (ref_grad,) = torch.autograd.grad(F.max_pool2d(x64, **kwargs), x64, grad_out.double())
        assert_matches(grad, ref_grad, dtype, what="grad_input")
    assert_unchanged(x, x_before)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_max_pool2d_values_indices_and_grad_match_pytorch(case, dtype, backend):
    shape, kwargs = CASES[case]
    _check(rand(*shape, dtype=dtype), kwargs, backend, dtype)


@pytest.mark.parametrize("case", ["net_pool", "k3_s2_overlapping", "ceil_mode_pad"])
def test_max_pool2d_channels_last_keeps_layout(case, backend):
    shape, kwargs = CASES[case]
    out = _check(rand(*shape, channels_last=True), kwargs, backend, torch.float32)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_nan_propagates_and_ties_keep_first(dtype, backend):
    # Few distinct values make ties common; NaNs scattered through the windows.
    x = torch.randint(-2, 3, (2, 3, 9, 8)).to(dtype)
    x.view(-1)[torch.randperm(x.numel())[:12]] = float("nan")
    _check(x.to(rand(1).device), dict(kernel_size=3, stride=2, padding=1), backend, dtype)


def test_max_pool2d_unbatched_and_without_indices(backend):
    x = rand(3, 9, 8)
    out = cf.max_pool2d(x, 2, backend=backend)
    assert out.shape == (3, 4, 4)
    torch.testing.assert_close(out, F.max_pool2d(x, 2), atol=0, rtol=0)
    out, idx = cf.max_pool2d(x, 3, 1, 1, return_indices=True, backend=backend)
    ref, ref_idx = F.max_pool2d(x, 3, 1, 1, return_indices=True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)


def test_max_pool2d_backward_without_return_indices(backend):
    x = rand(2, 3, 8, 8, requires_grad=True)
    cf.max_pool2d(x, 2, backend=backend).sum().backward()
    x64 = x.detach().double().requires_grad_()
    F.max_pool2d(x64, 2).sum().backward()
    assert_matches(x.grad, x64.grad, torch.float32)
