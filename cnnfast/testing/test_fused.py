"""The fused conv2d + bias + ReLU + max_pool2d (``conv_relu_maxpool2d``) against a float64 reference.

Where two conv outputs in a pooling window are nearly equal, rounding decides which one is the maximum,
so the backward is checked against float64 gradients routed through the window positions the kernel
chose, and those positions are checked separately: each must point at a maximum of its window in the
float64 reference (and be -1 exactly where ReLU zeroes the gradient)."""
import pytest
import torch
import torch.nn.functional as F

import cnnfast
import cnnfast.functional as cf
from cnnfast.ops import conv_relu_maxpool2d as fused_ops
from cnnfast.testing._reference import (DTYPES, TOLERANCES, assert_close_reference, assert_matches_reference,
                                        assert_unchanged, case_of, device, rand)

OP = "conv_relu_maxpool2d"
quick = pytest.mark.quick

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
# The quick subset: the Net's block, overlapping padded pooling after a strided conv, groups with pool
# dilation, ceil_mode, 'same' with an even kernel.
QUICK = {"net_block1", "overlapping_pool", "groups_pool_dilation", "pool_ceil_mode", "same_even_kernel"}


def _params(names, quick_ones=QUICK):
    return [pytest.param(n, marks=quick, id=n) if n in quick_ones else pytest.param(n, id=n) for n in names]


def _case(name, dtype, backend, seed, channels_last=False, cases=CASES):
    x_shape, w_shape, conv, pool = cases[name]
    conv = dict(conv)
    has_bias = conv.pop("bias", True)
    return case_of(OP, name, dtype=dtype, layout="channels_last" if channels_last else None, backend=backend,
                   seed=seed, arguments=dict(conv, bias=has_bias, **pool), input=x_shape, weight=w_shape)


def _inputs(name, dtype, channels_last=False, cases=CASES):
    x_shape, w_shape, conv, pool = cases[name]
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


def check_fused(name, dtype, backend, seed, channels_last=False, cases=CASES):
    case = _case(name, dtype, backend, seed, channels_last, cases)
    x, w, b, conv, pool = _inputs(name, dtype, channels_last, cases)
    x_before = x.detach().clone()
    out = cf.conv_relu_maxpool2d(x, w, b, **conv, **pool, backend=backend)
    y64 = F.conv2d(*[None if t is None else t.detach().double() for t in (x, w, b)], **conv)
    ref = F.max_pool2d(F.relu(y64), **_pool_args(pool))
    stock = F.max_pool2d(F.relu(F.conv2d(x.detach(), w.detach(), None if b is None else b.detach(), **conv)),
                         **_pool_args(pool)) if dtype == torch.float32 or x.is_cuda else None
    case.check(out.dtype == dtype, "dtype", f"output dtype {out.dtype}, expected {dtype}")
    assert_matches_reference(case, out, ref, stock=stock)
    if channels_last:
        case.check(out.is_contiguous(memory_format=torch.channels_last), "layout",
                   "a channels_last input gave an output that is not channels_last")
    assert_unchanged(case, x, x_before)
    if not out.numel():
        return

    out2, pos, geometry = _kernel_positions(x, w, b, conv, pool, backend)
    grad_out = torch.randn_like(out, dtype=torch.float64).to(dtype)
    y, (n, k, ph, pw, keep, oh, ow), ref_grads = _routed_reference(x, w, b, conv, pos, geometry, grad_out)
    # Each kept position points at a maximum of its window; -1 exactly where ReLU kills the gradient.
    _, _, tol = TOLERANCES[dtype]
    scale = ref.abs().max().item()
    case.check(torch.equal(out2, out.detach()), "pos", "the op that saves positions computed another output")
    chosen = y[n[keep], k[keep], oh, ow]
    assert_close_reference(case, chosen, ref[keep], atol=tol * scale, rtol=0,
                           what="pos (the float64 conv output at each saved window position vs the window's maximum)")
    clearly_positive = ref > tol * scale
    case.check(bool(keep[clearly_positive].all()), "pos", "pos is -1 where the pooled value is positive")
    case.check(not bool(keep[out.detach() <= 0].any()), "pos", "pos kept where the pooled value is zero")

    leaves = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad(out, leaves, grad_out)
    for what, g, r in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref_grads):
        assert_matches_reference(case, g, r, what=what)


@pytest.mark.parametrize("case", _params(CASES))
def test_fused_matches_float64_reference(case, fast_backend, seed):
    check_fused(case, torch.float32, fast_backend, seed)


@pytest.mark.parametrize("dtype", DTYPES[1:])
@pytest.mark.parametrize("case", _params(["net_block1", "overlapping_pool", "wide_channels_no_bias"], {"net_block1"}))
def test_fused_low_precision(case, dtype, fast_backend, seed):
    check_fused(case, dtype, fast_backend, seed)


@pytest.mark.parametrize("case", _params(["net_block2", "overlapping_pool"], {"net_block2"}))
def test_fused_channels_last(case, fast_backend, seed):
    check_fused(case, torch.float32, fast_backend, seed, channels_last=True)


@quick
def test_fused_equals_unfused_composition(backend, seed):
    x, w, b = rand(2, 3, 10, 10), rand(4, 3, 3, 3), rand(4)
    case = case_of(OP, "composition", dtype=torch.float32, backend=backend, seed=seed,
                   arguments=dict(padding=1, pool_kernel_size=3, pool_stride=2), input=x, weight=w, bias=b)
    out = cf.conv_relu_maxpool2d(x, w, b, padding=1, pool_kernel_size=3, pool_stride=2, backend=backend)
    ref = F.max_pool2d(F.relu(F.conv2d(x.double(), w.double(), b.double(), padding=1)), 3, 2)
    assert_matches_reference(case, out, ref)


@quick
def test_fused_unbatched(backend, seed):
    x, w = rand(3, 9, 9), rand(4, 3, 3, 3)
    case = case_of(OP, "unbatched", dtype=torch.float32, backend=backend, seed=seed,
                   arguments=dict(pool_kernel_size=2), input=x, weight=w)
    out = cf.conv_relu_maxpool2d(x, w, backend=backend)
    case.check(out.shape == (4, 3, 3), "output shape", f"output shape {tuple(out.shape)}, expected (4, 3, 3)")
    assert_matches_reference(case, out, F.max_pool2d(F.relu(F.conv2d(x.double(), w.double())), 2))


def test_fused_saves_only_window_positions_for_backward(fast_backend, seed):
    x, w, b = rand(2, 3, 12, 12, requires_grad=True), rand(6, 3, 3, 3, requires_grad=True), rand(6, requires_grad=True)
    case = case_of(OP, "saved_tensors", dtype=torch.float32, backend=fast_backend, seed=seed, input=x, weight=w,
                   bias=b)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = cf.conv_relu_maxpool2d(x, w, b, backend=fast_backend)
    floats = {t.data_ptr() for t in saved if t.is_floating_point()}
    case.check(floats == {x.data_ptr(), w.data_ptr()}, "saved tensors",
               "the fused op saved a float tensor besides its inputs")
    positions = [(t.dtype, t.shape) for t in saved if not t.is_floating_point()]
    case.check(positions == [(torch.int8, out.shape)], "saved tensors",
               f"saved integer tensors {positions}, expected one int8 tensor of the output's shape {tuple(out.shape)}")


def test_conv_relu_maxpool2d_module_matches_torch_layers(backend, seed):
    torch.manual_seed(seed)
    layer = cnnfast.nn.ConvReLUMaxPool2d(3, 5, 3, padding=1, pool_kernel_size=2, backend=backend).to(device())
    conv = torch.nn.Conv2d(3, 5, 3, padding=1).to(device())
    conv.load_state_dict(layer.state_dict())
    x = rand(2, 3, 9, 9)
    case = case_of(OP, "module", dtype=torch.float32, backend=backend, seed=seed,
                   arguments=dict(padding=1, pool_kernel_size=2), input=x, weight=layer.weight)
    assert_matches_reference(case, layer(x), F.max_pool2d(F.relu(conv.double()(x.double())), 2))
    case.check(set(layer.state_dict()) == {"weight", "bias"}, "state_dict",
               f"state_dict keys {sorted(layer.state_dict())}, expected ['bias', 'weight']")
