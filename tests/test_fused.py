"""The fused conv2d + bias + ReLU + max_pool2d against a float64 reference.

Where two conv outputs in a pooling window are nearly equal, rounding decides which one is the maximum,
so the backward is checked against float64 gradients routed through the window positions the kernel
chose, and those positions are checked separately: each must point at a maximum of its window in the
float64 reference (and be -1 exactly where ReLU zeroes the gradient)."""
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_unchanged, DTYPES, TOLERANCES, assert_matches, rand

import cnnfast
import cnnfast.functional as cf
from cnnfast.ops import conv_relu_maxpool2d as fused_ops

# (N, C, H, W), (K, C/groups, R, S), conv keyword arguments, pool keyword arguments
CASES = {
    "net_block1": ((2, 3, 12, 11), (6, 3, 3, 3), {}, dict(pool_kernel_size=2)),
    "net_block2": ((2, 6, 9, 9), (16, 6, 3, 3), {}, dict(pool_kernel_size=2)),
    "overlapping_pool": ((2, 4, 11, 10), (5, 4, 3, 3), dict(stride=2, padding=1),
                         dict(pool_kernel_size=3, pool_stride=2, pool_padding=1)),
    "groups_pool_dilation": ((1, 4, 10, 12), (6, 2, 3, 3), dict(groups=2, padding=1),
                             dict(pool_kernel_size=2, pool_stride=1, pool_dilation=2)),
    "pool_ceil_mode": ((2, 3, 10, 9), (4, 3, 2, 2), dict(dilation=2),
                       dict(pool_kernel_size=3, pool_stride=2, pool_ceil_mode=True)),
    "same_even_kernel": ((1, 3, 9, 8), (4, 3, 4, 2), dict(padding="same"), dict(pool_kernel_size=(2, 3))),
    "wide_channels_no_bias": ((2, 40, 6, 6), (36, 40, 3, 3), dict(padding=1, bias=False), dict(pool_kernel_size=2)),
    # 8 input channels: the input gradient runs the CPU engine's channel-vectorised conv over the
    # gradient rebuilt from the window positions.
    "c8_k16": ((2, 8, 9, 10), (16, 8, 3, 3), dict(padding=1), dict(pool_kernel_size=2)),
    "batch_zero": ((0, 3, 6, 6), (4, 3, 3, 3), {}, dict(pool_kernel_size=2)),
}


def _inputs(case, dtype, channels_last=False, cases=CASES):
    x_shape, w_shape, conv, pool = cases[case]
    conv = dict(conv)
    has_bias = conv.pop("bias", True)
    x = rand(*x_shape, dtype=dtype, channels_last=channels_last, requires_grad=True)
    w = rand(*w_shape, dtype=dtype, requires_grad=True)
    b = rand(w_shape[0], dtype=dtype, requires_grad=True) if has_bias else None
    return x, w, b, conv, pool


def _pool_args(pool):
    """The fused op's pool keywords as F.max_pool2d's."""
    return dict(kernel_size=pool["pool_kernel_size"], stride=pool.get("pool_stride"),
                padding=pool.get("pool_padding", 0), dilation=pool.get("pool_dilation", 1),
                ceil_mode=pool.get("pool_ceil_mode", False))


def _kernel_positions(x, w, b, conv, pool, backend):
    """Run the op that saves window positions, as autograd does; return (out, pos, pool geometry)."""
    from cnnfast.functional import _conv_geometry, _pool_geometry
    p = _pool_args(pool)
    stride, pad, dil, conv_out = _conv_geometry(x, w, b, conv.get("stride", 1), conv.get("padding", 0),
                                                conv.get("dilation", 1), conv.get("groups", 1), "test")
    pk, ps, pp, pd, out_size = _pool_geometry(conv_out, p["kernel_size"], p["stride"], p["padding"],
                                              p["dilation"], p["ceil_mode"], w.shape[0], "test")
    out, pos = fused_ops.conv_relu_maxpool2d_with_pos(
        x.detach(), w.detach(), None if b is None else b.detach(), list(stride), list(pad), list(dil),
        conv.get("groups", 1), list(conv_out), list(pk), list(ps), list(pp), list(pd), list(out_size),
        False, False, backend)
    return out, pos, (pk, ps, pp, pd)


def _routed_reference(x, w, b, conv, pos, geometry, grad_out):
    """float64 conv outputs, and conv gradients with grad_out routed through the kernel's positions."""
    (pkh, pkw), (psh, psw), (pph, ppw), (pdh, pdw) = geometry
    as64 = [None if t is None else t.detach().double().requires_grad_() for t in (x, w, b)]
    y = F.conv2d(*as64, **conv)
    n, k, ph, pw = torch.meshgrid(*[torch.arange(s, device=pos.device) for s in pos.shape], indexing="ij")
    keep = pos >= 0
    p = pos.long()[keep]
    oh = ph[keep] * psh - pph + (p // pkw) * pdh
    ow = pw[keep] * psw - ppw + (p % pkw) * pdw
    dy = torch.zeros_like(y).index_put_((n[keep], k[keep], oh, ow), grad_out.double()[keep], accumulate=True)
    leaves = [t for t in as64 if t is not None]
    grads = torch.autograd.grad(y, leaves, dy) if y.numel() else [torch.zeros_like(t) for t in leaves]
    return y.detach(), (n, k, ph, pw, keep, oh, ow), grads


def _check(case, dtype, backend, channels_last=False, cases=CASES):
    x, w, b, conv, pool = _inputs(case, dtype, channels_last, cases)
    x_before = x.detach().clone()
    out = cf.conv_relu_maxpool2d(x, w, b, **conv, **pool, backend=backend)
    y64 = F.conv2d(*[None if t is None else t.detach().double() for t in (x, w, b)], **conv)
    ref = F.max_pool2d(F.relu(y64), **_pool_args(pool))
    stock = F.max_pool2d(F.relu(F.conv2d(x.detach(), w.detach(), None if b is None else b.detach(), **conv)),
                         **_pool_args(pool)) if dtype == torch.float32 or x.is_cuda else None
    assert out.dtype == dtype
    assert_matches(out, ref, dtype, stock)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert_unchanged(x, x_before)
    if not out.numel():
        return

    out2, pos, geometry = _kernel_positions(x, w, b, conv, pool, backend)
    grad_out = torch.randn_like(out, dtype=torch.float64).to(dtype)
    y, (n, k, ph, pw, keep, oh, ow), ref_grads = _routed_reference(x, w, b, conv, pos, geometry, grad_out)
    # Each kept position points at a maximum of its window; -1 exactly where ReLU kills the gradient.
    _, _, tol = TOLERANCES[dtype]
    scale = ref.abs().max().item()
    assert torch.equal(out2, out.detach()), "the op that saves positions computed another output"
    chosen = y[n[keep], k[keep], oh, ow]
    torch.testing.assert_close(chosen, ref[keep], atol=tol * scale, rtol=0, msg=lambda m: f"pos: {m}")
    clearly_positive = ref > tol * scale
    assert bool(keep[clearly_positive].all()), "pos is -1 where the pooled value is positive"
    assert not bool(keep[out.detach() <= 0].any()), "pos kept where the pooled value is zero"

    leaves = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad(out, leaves, grad_out)
    for name, g, r in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref_grads):
        assert_matches(g, r, dtype, what=name)


@pytest.mark.parametrize("case", list(CASES))
def test_fused_matches_float64_reference(case, fast_backend):
    _check(case, torch.float32, fast_backend)


@pytest.mark.parametrize("dtype", DTYPES[1:])
@pytest.mark.parametrize("case", ["net_block1", "overlapping_pool", "wide_channels_no_bias"])
def test_fused_low_precision(case, dtype, fast_backend):
    _check(case, dtype, fast_backend)


@pytest.mark.parametrize("case", ["net_block2", "overlapping_pool"])
def test_fused_channels_last(case, fast_backend):
    _check(case, torch.float32, fast_backend, channels_last=True)


def test_fused_equals_unfused_composition(backend):
    x, w, b = rand(2, 3, 10, 10), rand(4, 3, 3, 3), rand(4)
    out = cf.conv_relu_maxpool2d(x, w, b, padding=1, pool_kernel_size=3, pool_stride=2, backend=backend)
    ref = F.max_pool2d(F.relu(F.conv2d(x.double(), w.double(), b.double(), padding=1)), 3, 2)
    assert_matches(out, ref, torch.float32)


def test_fused_unbatched(backend):
    x, w = rand(3, 9, 9), rand(4, 3, 3, 3)
    out = cf.conv_relu_maxpool2d(x, w, backend=backend)
    assert out.shape == (4, 3, 3)
    assert_matches(out, F.max_pool2d(F.relu(F.conv2d(x.double(), w.double())), 2), torch.float32)


def test_fused_saves_only_window_positions_for_backward(fast_backend):
    x, w, b = rand(2, 3, 12, 12, requires_grad=True), rand(6, 3, 3, 3, requires_grad=True), rand(6, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = cf.conv_relu_maxpool2d(x, w, b, backend=fast_backend)
    floats = {t.data_ptr() for t in saved if t.is_floating_point()}
    assert floats == {x.data_ptr(), w.data_ptr()}, "the fused op saved a float tensor besides its inputs"
    positions = [t for t in saved if not t.is_floating_point()]
    assert [(t.dtype, t.shape) for t in positions] == [(torch.int8, out.shape)]


def test_conv_relu_maxpool2d_module_matches_torch_layers(backend):
    torch.manual_seed(0)
    layer = cnnfast.nn.ConvReLUMaxPool2d(3, 5, 3, padding=1, pool_kernel_size=2, backend=backend).to(rand(1).device)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1).to(rand(1).device)
    conv.load_state_dict(layer.state_dict())
    x = rand(2, 3, 9, 9)
    assert_matches(layer(x), F.max_pool2d(F.relu(conv.double()(x.double())), 2), torch.float32)
    assert set(layer.state_dict()) == {"weight", "bias"}
