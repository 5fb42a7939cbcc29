"""conv2d forward and backward (input, weight and bias gradients) against a float64 reference: every
argument (stride, padding as ints, tuples, 'same' and 'valid', dilation, groups, bias or not), odd
sizes that divide no block size, an empty batch, unbatched input, channels_last and strided views, the
three dtypes (low precision within twice stock PyTorch's own error)."""
import pytest
import torch
import torch.nn.functional as F

import cnnfast.functional as cf
from cnnfast.testing._reference import (DTYPES, assert_matches_reference, assert_unchanged, case_of, device,
                                        rand)

OP = "conv2d"
quick = pytest.mark.quick

# (N, C, H, W), (K, C/groups, R, S), keyword arguments: small odd sizes that divide no block size.
CASES = {
    "net_conv1": ((2, 3, 11, 9), (6, 3, 3, 3), {}),
    "net_conv2": ((3, 6, 7, 7), (16, 6, 3, 3), {}),
    "stride2_pad1": ((2, 5, 9, 10), (7, 5, 3, 3), dict(stride=2, padding=1)),
    "stride_1x2_pad_2x1_dil2": ((1, 4, 11, 9), (5, 4, 3, 3), dict(stride=(1, 2), padding=(2, 1), dilation=2)),
    "groups2": ((2, 4, 8, 7), (6, 2, 3, 3), dict(groups=2, padding=1)),
    "depthwise": ((2, 6, 7, 9), (6, 1, 3, 3), dict(groups=6, padding=1)),
    "k1x1_no_bias": ((2, 8, 5, 6), (12, 8, 1, 1), dict(bias=False)),
    "k5x5_pad2": ((1, 3, 9, 8), (4, 3, 5, 5), dict(padding=2)),
    "same_even_kernel": ((2, 3, 7, 6), (5, 3, 4, 2), dict(padding="same")),
    "same_dilated": ((1, 3, 8, 7), (4, 3, 2, 3), dict(padding="same", dilation=2)),
    "valid": ((2, 3, 6, 7), (4, 3, 3, 2), dict(padding="valid")),
    "wide_channels": ((2, 40, 5, 5), (36, 40, 3, 3), dict(padding=1)),
    # Output channels per group a multiple of 8: the CPU engine's channel-vectorised path (8, 16, 24, 32
    # channels take 1 to 4 vectors per tile; 16 input channels x 3x3 split the reduction into blocks;
    # the input gradient of the 16- and 8-channel inputs takes it too, over the zero-upsampled dy).
    # Work items: 5 small images in runs of 4 and 1; one 16x16 image in row chunks, its 40 channels in
    # splits of 3 and 2 channel blocks.
    "k16_image_runs": ((5, 3, 8, 8), (16, 3, 3, 3), dict(padding=1)),
    "k40_channel_splits": ((1, 2, 16, 16), (40, 2, 3, 3), dict(padding=1)),
    "k32_reduction_blocks": ((2, 16, 7, 5), (32, 16, 3, 3), dict(padding=1)),
    "k24_stride2_dil2": ((2, 5, 11, 10), (24, 5, 3, 3), dict(stride=2, padding=2, dilation=2)),
    "k8_groups2": ((2, 6, 9, 7), (16, 3, 3, 3), dict(groups=2, padding=(0, 1))),
    "c8_stride2": ((2, 8, 9, 8), (12, 8, 3, 3), dict(stride=2, padding=1)),
    # Strided input gradients pixel phase by phase, each over the taps that meet the upsampled dy (some
    # phases meet none: 1x1 kernels, even dilation).
    "c8_k1x1_stride2": ((2, 8, 7, 9), (12, 8, 1, 1), dict(stride=2)),
    "c16_stride_2x3_dil_2x1": ((1, 16, 11, 13), (8, 16, 3, 3), dict(stride=(2, 3), padding=(1, 2), dilation=(2, 1))),
    "batch_zero": ((0, 3, 6, 6), (4, 3, 3, 3), {}),
}
# The quick subset: every kind of argument once (padding as an int, a tuple, 'same' with an even kernel,
# 'valid'; strides, dilation, groups, no bias), the channel-vectorised path and an empty batch.
QUICK = {"net_conv1", "stride2_pad1", "stride_1x2_pad_2x1_dil2", "groups2", "k1x1_no_bias", "same_even_kernel",
         "valid", "k32_reduction_blocks", "batch_zero"}


def _params(names, quick_ones=QUICK):
    return [pytest.param(n, marks=quick, id=n) if n in quick_ones else pytest.param(n, id=n) for n in names]


def _case(name, dtype, backend, seed, channels_last=False, cases=CASES):
    x_shape, w_shape, kwargs = cases[name]
    kwargs = dict(kwargs)
    has_bias = kwargs.pop("bias", True)
    return case_of(OP, name, dtype=dtype, layout="channels_last" if channels_last else None, backend=backend,
                   seed=seed, arguments=dict(kwargs, bias=has_bias), input=x_shape, weight=w_shape)


def _inputs(name, dtype, channels_last=False, cases=CASES):
    x_shape, w_shape, kwargs = cases[name]
    kwargs = dict(kwargs)
    has_bias = kwargs.pop("bias", True)
    x = rand(*x_shape, dtype=dtype, channels_last=channels_last, requires_grad=True)
    w = rand(*w_shape, dtype=dtype, requires_grad=True)
    b = rand(w_shape[0], dtype=dtype, requires_grad=True) if has_bias else None
    return x, w, b, kwargs


def _forward_backward(fn, x, w, b, kwargs, grad_out=None):
    out = fn(x, w, b, **kwargs)
    if grad_out is None:
        grad_out = torch.randn_like(out, dtype=torch.float64).to(out.dtype)
    leaves = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad(out, leaves, grad_out) if out.numel() else [torch.zeros_like(t) for t in leaves]
    return out, grads, grad_out


def _reference(x, w, b, kwargs, grad_out):
    as64 = [None if t is None else t.detach().double().requires_grad_() for t in (x, w, b)]
    return _forward_backward(F.conv2d, *as64, kwargs, grad_out.double())


def _stock(x, w, b, kwargs, grad_out):
    """Stock PyTorch at the test dtype (the yardstick for low precision)."""
    same = [None if t is None else t.detach().clone().requires_grad_() for t in (x, w, b)]
    try:
        return _forward_backward(F.conv2d, *same, kwargs, grad_out)
    except RuntimeError:  # some low-precision conv paths do not exist on the CPU
        return None, [None] * 3, None


def check_conv2d(name, dtype, backend, seed, channels_last=False, cases=CASES):
    """Forward and every gradient against float64; low precision also within twice stock's error."""
    case = _case(name, dtype, backend, seed, channels_last, cases)
    x, w, b, kwargs = _inputs(name, dtype, channels_last, cases)
    x_before = x.detach().clone()
    out, grads, grad_out = _forward_backward(lambda *a, **k: cf.conv2d(*a, **k, backend=backend), x, w, b, kwargs)
    ref, ref_grads, _ = _reference(x, w, b, kwargs, grad_out)
    stock, stock_grads = (None, [None] * 3) if dtype == torch.float32 else _stock(x, w, b, kwargs, grad_out)[:2]
    case.check(out.dtype == dtype, "dtype", f"output dtype {out.dtype}, expected {dtype}")
    if channels_last:
        case.check(out.is_contiguous(memory_format=torch.channels_last), "layout",
                   "a channels_last input gave an output that is not channels_last")
    assert_matches_reference(case, out, ref, stock=stock)
    for what, g, r, s in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref_grads, stock_grads):
        assert_matches_reference(case, g, r, stock=s, what=what)
    assert_unchanged(case, x, x_before)


@pytest.mark.parametrize("case", _params(CASES))
def test_conv2d_matches_float64_reference(case, backend, seed):
    check_conv2d(case, torch.float32, backend, seed)


@pytest.mark.parametrize("dtype", DTYPES[1:])
@pytest.mark.parametrize("case", _params(["net_conv1", "stride_1x2_pad_2x1_dil2", "groups2", "wide_channels",
                                          "k32_reduction_blocks"], {"net_conv1", "k32_reduction_blocks"}))
def test_conv2d_low_precision_within_twice_stock_error(case, dtype, backend, seed):
    check_conv2d(case, dtype, backend, seed)


@pytest.mark.parametrize("case", _params(["net_conv1", "stride2_pad1", "depthwise", "same_even_kernel",
                                          "k32_reduction_blocks"], {"stride2_pad1"}))
def test_conv2d_channels_last_matches_reference_and_keeps_layout(case, backend, seed):
    check_conv2d(case, torch.float32, backend, seed, channels_last=True)


@pytest.mark.parametrize("case", ["net_conv2", "k32_reduction_blocks"])
def test_conv2d_without_autograd_gives_the_same_bits(case, backend, seed):
    """Calls with nothing to differentiate skip autograd; the result must not change."""
    record = _case(case, torch.float32, backend, seed)
    x, w, b, kwargs = _inputs(case, torch.float32)
    with_grad = cf.conv2d(x, w, b, **kwargs, backend=backend)
    with torch.no_grad():
        no_grad = cf.conv2d(x, w, b, **kwargs, backend=backend)
    plain = cf.conv2d(x.detach(), w.detach(), b.detach(), **kwargs, backend=backend)
    record.check(with_grad.grad_fn is not None and no_grad.grad_fn is None and plain.grad_fn is None, "autograd",
                 "an output has a grad_fn where nothing needs a gradient, or none where something does")
    record.check(torch.equal(no_grad, with_grad.detach()) and torch.equal(plain, with_grad.detach()), "output",
                 "the output without autograd differs from the output with it (the same bits expected)")
    assert_matches_reference(record, no_grad, _reference(x, w, b, kwargs, torch.ones_like(no_grad))[0])


@quick
def test_conv2d_unbatched_input_gives_unbatched_output(backend, seed):
    x = rand(3, 8, 7, requires_grad=True)
    w = rand(4, 3, 3, 3, requires_grad=True)
    case = case_of(OP, "unbatched", dtype=torch.float32, backend=backend, seed=seed, arguments=dict(padding=1),
                   input=x, weight=w)
    out = cf.conv2d(x, w, padding=1, backend=backend)
    ref = F.conv2d(x.detach().double(), w.detach().double(), padding=1)
    case.check(out.shape == (4, 8, 7), "output shape", f"output shape {tuple(out.shape)}, expected (4, 8, 7)")
    assert_matches_reference(case, out, ref)
    out.sum().backward()
    case.check(x.grad.shape == x.shape, "grad_input shape", f"grad_input shape {tuple(x.grad.shape)} != {tuple(x.shape)}")


@quick
def test_conv2d_strided_view_input(backend, seed):
    base = rand(2, 6, 9, 14)
    x = base[:, ::2, :, 1::2]  # neither NCHW- nor NHWC-contiguous
    w = rand(5, 3, 3, 3)
    case = case_of(OP, "strided_view", dtype=torch.float32, layout=f"strides {x.stride()}", backend=backend, seed=seed,
                   input=x, weight=w)
    assert_matches_reference(case, cf.conv2d(x, w, backend=backend), F.conv2d(x.double(), w.double()))


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["net_conv1", "wide_channels"])
def test_conv2d_tf32_follows_cudnn_flag(case, fast_backend, seed):
    record = _case(case, torch.float32, fast_backend, seed)
    x, w, b, kwargs = _inputs(case, torch.float32)
    torch.backends.cudnn.allow_tf32 = True
    out = cf.conv2d(x, w, b, **kwargs, backend=fast_backend)
    ref = F.conv2d(x.double(), w.double(), b.double(), **kwargs)
    record.check(torch.device(out.device).type == device(), "device", f"output on {out.device}, not {device()}")
    err = ((out.double() - ref).norm() / ref.norm()).item()
    if not err < 5e-3:
        record.fail("output (TF32)", f"TF32 relative error {err:.3g} >= 5e-3", err, 5e-3)
