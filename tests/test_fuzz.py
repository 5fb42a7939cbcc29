"""Fuzzing the argument space of each op against stock PyTorch with hypothesis: where PyTorch computes a
result, cnnfast computes the same values and gradients; where PyTorch raises, cnnfast raises too (never a
wrong answer, never a crash). Inputs are non-contiguous, channels_last or overlapping (``expand``ed)
at random, batches can be empty, and dtypes include integer, complex and float64, which a named kernel
backend refuses with its own sentence. Runs on the "cpu" backend (the C++ kernels; the other backends
share the front end checked here and are compared case by case in their own tests)."""
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_matches

import cnnfast
import cnnfast.functional as cf

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.skipif("cpu" not in cnnfast.backends.available("cpu"), reason="backend 'cpu' is not built")

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
DTYPES = [torch.float32] * 6 + [torch.float64, torch.int64, torch.complex64]
ERRORS = (RuntimeError, ValueError, TypeError)


def _layout(t, how):
    """``t`` (4-D) in layout ``how``: same values, other strides."""
    if how == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if how == "transposed":
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    if how == "expanded" and t.shape[0] > 0:
        return t[:1].expand(t.shape)  # every batch element aliases the first
    return t


def _tensor(shape, dtype, how, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g, dtype=torch.float64)
    t = (t * 3).round().to(dtype) if not (dtype.is_floating_point or dtype.is_complex) else t.to(dtype)
    return _layout(t, how)


def _compare(ours, stock, tensors):
    """Run both; same failure or same values and gradients (float tensors get gradients)."""
    try:
        ref = stock()
    except ERRORS:
        with pytest.raises(ERRORS):
            ours()
        return
    float_ok = all(t.dtype == torch.float32 for t in tensors)
    if not float_ok:
        # Stock computes integer / complex / float64; a named kernel backend refuses it in a sentence.
        with pytest.raises(TypeError, match="backend 'cpu' supports float32, float16 and bfloat16"):
            ours()
        return
    leaves = [t.detach().requires_grad_() for t in tensors]
    refs = [t.detach().double().requires_grad_() for t in tensors]
    out = ours(*leaves)
    ref = stock(*refs)
    assert_matches(out.detach(), ref.detach(), torch.float32)
    if ref.numel():
        v = torch.randn(ref.shape, dtype=torch.float64)
        grads = torch.autograd.grad(out, leaves, v.float())
        ref_grads = torch.autograd.grad(ref, refs, v)
        for g, r in zip(grads, ref_grads):
            assert_matches(g, r, torch.float32, what="gradient")


LAYOUTS = st.sampled_from(["contiguous", "contiguous", "channels_last", "transposed", "expanded"])


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@SETTINGS
@given(n=st.integers(0, 2), groups=st.integers(1, 2), cpg=st.integers(1, 3), kpg=st.integers(1, 3),
       h=st.integers(1, 7), w=st.integers(1, 7), kh=st.integers(1, 4), kw=st.integers(1, 4),
       stride=st.integers(1, 3), padding=st.one_of(st.integers(0, 2), st.sampled_from(["same", "valid"])),
       dilation=st.integers(1, 2), bias=st.booleans(), dtype=st.sampled_from(DTYPES), layout=LAYOUTS,
       seed=st.integers(0, 2**16))
def test_conv2d_fuzz_matches_pytorch(n, groups, cpg, kpg, h, w, kh, kw, stride, padding, dilation, bias, dtype,
                                     layout, seed):
    x = _tensor((n, groups * cpg, h, w), dtype, layout, seed)
    weight = _tensor((groups * kpg, cpg, kh, kw), dtype, "contiguous", seed + 1)
    b = _tensor((groups * kpg,), dtype, "contiguous", seed + 2) if bias else None
    tensors = [x, weight] + ([b] if bias else [])
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def call(fn, **extra):
        return lambda *t: fn(*(t or tensors)[:2], (t or tensors)[2] if bias else None, **kwargs, **extra)
    _compare(call(cf.conv2d, backend="cpu"), call(F.conv2d), tensors)


@SETTINGS
@given(n=st.integers(0, 2), c=st.integers(1, 3), h=st.integers(1, 8), w=st.integers(1, 8), k=st.integers(1, 4),
       stride=st.one_of(st.none(), st.integers(1, 3)), padding=st.integers(0, 2), dilation=st.integers(1, 2),
       ceil_mode=st.booleans(), dtype=st.sampled_from(DTYPES[:-1]), layout=LAYOUTS, seed=st.integers(0, 2**16))
def test_max_pool2d_fuzz_matches_pytorch(n, c, h, w, k, stride, padding, dilation, ceil_mode, dtype, layout, seed):
    x = _tensor((n, c, h, w), dtype, layout, seed)
    kwargs = dict(kernel_size=k, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    _compare(lambda *t: cf.max_pool2d((t or [x])[0], **kwargs, backend="cpu"),
             lambda *t: F.max_pool2d((t or [x])[0], **kwargs), [x])


def test_tensors_on_different_devices_are_refused_in_pytorch_words():
    meta_w = torch.empty(2, 3, 3, 3, device="meta")
    with pytest.raises(RuntimeError, match="input is on cpu but weight is on meta"):
        cf.conv2d(torch.randn(1, 3, 5, 5), meta_w, backend="cpu")


@SETTINGS
@given(n=st.integers(0, 2), c=st.integers(1, 3), k=st.integers(1, 3), h=st.integers(1, 8), w=st.integers(1, 8),
       kernel=st.integers(1, 3), padding=st.integers(0, 1), pool=st.integers(1, 3),
       pool_stride=st.one_of(st.none(), st.integers(1, 2)), pool_padding=st.integers(0, 1),
       ceil_mode=st.booleans(), dtype=st.sampled_from(DTYPES[:-1]), layout=LAYOUTS, seed=st.integers(0, 2**16))
def test_conv_relu_maxpool2d_fuzz_matches_pytorch(n, c, k, h, w, kernel, padding, pool, pool_stride, pool_padding,
                                                  ceil_mode, dtype, layout, seed):
    """Values and errors; its gradients (where rounding decides between near-equal maxima) are checked
    against routed float64 gradients in test_fused.py."""
    x = _tensor((n, c, h, w), dtype, layout, seed)
    weight = _tensor((k, c, kernel, kernel), dtype, "contiguous", seed + 1)
    b = _tensor((k,), dtype, "contiguous", seed + 2)
    pool_kwargs = dict(stride=pool_stride, padding=pool_padding, ceil_mode=ceil_mode)

    def ours():
        return cf.conv_relu_maxpool2d(x, weight, b, padding=padding, pool_kernel_size=pool, pool_stride=pool_stride,
                                      pool_padding=pool_padding, pool_ceil_mode=ceil_mode, backend="cpu")

    def stock(x=x, weight=weight, b=b):
        return F.max_pool2d(F.relu(F.conv2d(x, weight, b, padding=padding)), pool, **pool_kwargs)
    try:
        stock()
    except ERRORS:
        with pytest.raises(ERRORS):
            ours()
        return
    if dtype != torch.float32:
        with pytest.raises(TypeError, match="backend 'cpu' supports float32, float16 and bfloat16"):
            ours()
        return
    assert_matches(ours(), stock(x.double(), weight.double(), b.double()), torch.float32)
