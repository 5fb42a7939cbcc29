"""max_pool2d values, indices and gradients against PyTorch: kernel size, stride, padding, dilation,
ceil_mode and return_indices, odd sizes, an empty batch, unbatched input, channels_last, NaN and ties.

Max pooling does no arithmetic, so values and indices must equal stock PyTorch's exactly (at every
dtype), NaN and ties included; gradients are compared with a float64 reference."""
import pytest
import torch
import torch.nn.functional as F

import cnnfast.functional as cf
from cnnfast.testing._reference import (DTYPES, assert_equal_reference, assert_matches_reference, assert_unchanged,
                                        case_of, device, rand)

OP = "max_pool2d"
quick = pytest.mark.quick

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
# The quick subset (in float32): odd sizes, overlapping and padded windows, rectangular kernels and
# strides, dilation, ceil_mode with padding, an empty batch.
QUICK = {"odd_size", "k3_s2_overlapping", "rect_kernel_stride", "dilation2", "ceil_mode_pad", "batch_zero"}


def check_max_pool2d(x, kwargs, backend, dtype, case):
    x = x.detach().requires_grad_()
    x_before = x.detach().clone()
    out, idx = cf.max_pool2d(x, **kwargs, return_indices=True, backend=backend)
    ref, ref_idx = F.max_pool2d(x.detach(), **kwargs, return_indices=True)
    case.check(out.dtype == dtype and idx.dtype == torch.int64, "dtype",
               f"output dtype {out.dtype} and indices dtype {idx.dtype}, expected {dtype} and torch.int64")
    assert_equal_reference(case, out, ref, what="output")
    assert_equal_reference(case, idx, ref_idx, what="indices")
    grad_out = torch.randn_like(out, dtype=torch.float64).to(dtype)
    if out.numel():
        (grad,) = torch.autograd.grad(out, x, grad_out)
        x64 = x.detach().double().requires_grad_()
        (ref_grad,) = torch.autograd.grad(F.max_pool2d(x64, **kwargs), x64, grad_out.double())
        assert_matches_reference(case, grad, ref_grad, what="grad_input")
    assert_unchanged(case, x, x_before)
    return out


def _case(name, dtype, backend, seed, layout=None, shape=None, kwargs=None):
    shape, kwargs = (shape, kwargs) if name not in CASES else CASES[name]
    return case_of(OP, name, dtype=dtype, layout=layout, backend=backend, seed=seed,
                   arguments=dict(kwargs, return_indices=True), input=shape)


def _dtype_params(quick_ones=(torch.float32,)):
    return [pytest.param(d, marks=quick) if d in quick_ones else d for d in DTYPES]


def _case_dtype_params():
    """Every case at every dtype (ids as two stacked parametrizes give them); quick: QUICK in float32."""
    return [pytest.param(c, d, id=f"{c}-dtype{i}", marks=[quick] if d == torch.float32 and c in QUICK else [])
            for i, d in enumerate(DTYPES) for c in CASES]


@pytest.mark.parametrize("case, dtype", _case_dtype_params())
def test_max_pool2d_values_indices_and_grad_match_pytorch(case, dtype, backend, seed):
    shape, kwargs = CASES[case]
    check_max_pool2d(rand(*shape, dtype=dtype), kwargs, backend, dtype, _case(case, dtype, backend, seed))


@pytest.mark.parametrize("case", [pytest.param("net_pool"), pytest.param("k3_s2_overlapping", marks=quick),
                                  pytest.param("ceil_mode_pad")])
def test_max_pool2d_channels_last_keeps_layout(case, backend, seed):
    shape, kwargs = CASES[case]
    record = _case(case, torch.float32, backend, seed, layout="channels_last")
    out = check_max_pool2d(rand(*shape, channels_last=True), kwargs, backend, torch.float32, record)
    record.check(out.is_contiguous(memory_format=torch.channels_last), "layout",
                 "a channels_last input gave an output that is not channels_last")


@pytest.mark.parametrize("dtype", _dtype_params())
def test_max_pool2d_nan_propagates_and_ties_keep_first(dtype, backend, seed):
    # Few distinct values make ties common; NaNs scattered through the windows.
    x = torch.randint(-2, 3, (2, 3, 9, 8)).to(dtype)
    x.view(-1)[torch.randperm(x.numel())[:12]] = float("nan")
    kwargs = dict(kernel_size=3, stride=2, padding=1)
    record = _case("nan_and_ties", dtype, backend, seed, shape=tuple(x.shape),
                   kwargs=dict(kwargs, values="integers in [-2, 2] and 12 NaN"))
    check_max_pool2d(x.to(device()), kwargs, backend, dtype, record)


@quick
def test_max_pool2d_unbatched_and_without_indices(backend, seed):
    x = rand(3, 9, 8)
    record = case_of(OP, "unbatched", dtype=torch.float32, backend=backend, seed=seed, arguments=dict(kernel_size=2),
                     input=x)
    out = cf.max_pool2d(x, 2, backend=backend)
    record.check(out.shape == (3, 4, 4), "output shape", f"output shape {tuple(out.shape)}, expected (3, 4, 4)")
    assert_equal_reference(record, out, F.max_pool2d(x, 2))
    record.arguments = dict(kernel_size=3, stride=1, padding=1, return_indices=True)
    out, idx = cf.max_pool2d(x, 3, 1, 1, return_indices=True, backend=backend)
    ref, ref_idx = F.max_pool2d(x, 3, 1, 1, return_indices=True)
    assert_equal_reference(record, out, ref)
    assert_equal_reference(record, idx, ref_idx, what="indices")


@quick
def test_max_pool2d_backward_without_return_indices(backend, seed):
    x = rand(2, 3, 8, 8, requires_grad=True)
    record = case_of(OP, "backward_without_indices", dtype=torch.float32, backend=backend, seed=seed,
                     arguments=dict(kernel_size=2), input=x)
    cf.max_pool2d(x, 2, backend=backend).sum().backward()
    x64 = x.detach().double().requires_grad_()
    F.max_pool2d(x64, 2).sum().backward()
    assert_matches_reference(record, x.grad, x64.grad, what="grad_input")
