"""Forward-mode AD over cnnfast's ops: torch.func.jvp, jacfwd and hessian (jacfwd of jacrev), each
against the same transform of stock PyTorch in float64, on small float32 shapes."""
import pytest
import torch
import torch.nn.functional as F
from conftest import BACKENDS, assert_matches, rand
from torch.func import hessian, jacfwd, jvp

import cnnfast.functional as cf

CONV = dict(padding=1)
POOL = dict(kernel_size=3, stride=2, padding=1)  # overlapping windows: a cell can win twice
FUSED = dict(padding=1, pool_kernel_size=2)
BACKENDS_HERE = [name for name in ("cpu", "torch") if name in BACKENDS]
# The Triton kernels run under the interpreter on CPU machines: too slow for jacfwd and hessian there
# (tens of seconds), so they get the jvp test alone.
JVP_BACKENDS = BACKENDS_HERE + (["triton"] if "triton" in BACKENDS else [])


@pytest.fixture(params=BACKENDS_HERE)
def backend(request):
    return request.param


def _pair(name, backend):
    """(cnnfast's op, stock's) on (x, weight, bias)."""
    if name == "conv2d":
        return (lambda x, w, b: cf.conv2d(x, w, b, **CONV, backend=backend),
                lambda x, w, b: F.conv2d(x, w, b, **CONV))
    if name == "max_pool2d":
        return (lambda x, w, b: cf.max_pool2d(x, **POOL, backend=backend), lambda x, w, b: F.max_pool2d(x, **POOL))
    return (lambda x, w, b: cf.conv_relu_maxpool2d(x, w, b, **FUSED, backend=backend),
            lambda x, w, b: F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=1)), 2))


def _args():
    return rand(1, 2, 5, 5), rand(3, 2, 3, 3), rand(3)


def _double(*tensors):
    return tuple(t.double() for t in tensors)


NAMES = ["conv2d", "max_pool2d", "conv_relu_maxpool2d"]


@pytest.mark.parametrize("backend", JVP_BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_jvp_matches_stock(name, backend):
    ours, stock = _pair(name, backend)
    primals, tangents = _args(), _args()
    out, tangent = jvp(ours, primals, tangents)
    ref_out, ref_tangent = jvp(stock, _double(*primals), _double(*tangents))
    assert_matches(out, ref_out, torch.float32)
    assert_matches(tangent, ref_tangent, torch.float32, what="tangent")


@pytest.mark.parametrize("name", NAMES)
def test_jacfwd_matches_stock(name, backend):
    ours, stock = _pair(name, backend)
    args = _args()
    # One input at a time too: the others then carry no tangent.
    for argnums in ((0, 1, 2), 0, 1, 2):
        got = jacfwd(ours, argnums=argnums)(*args)
        ref = jacfwd(stock, argnums=argnums)(*_double(*args))
        for g, r in zip(*((got, ref) if isinstance(got, tuple) else ((got,), (ref,)))):
            assert_matches(g, r, torch.float32, what=f"jacfwd argnums={argnums}")


@pytest.mark.parametrize("name", NAMES)
def test_hessian_matches_stock(name, backend):
    # jacfwd of jacrev: forward mode through every gradient op's Function.
    ours, stock = _pair(name, backend)
    args = _args()
    got = hessian(lambda *a: ours(*a).square().sum(), argnums=(0, 1, 2))(*args)
    ref = hessian(lambda *a: stock(*a).square().sum(), argnums=(0, 1, 2))(*_double(*args))
    for i in range(3):
        for j in range(3):
            assert_matches(got[i][j], ref[i][j], torch.float32, what=f"hessian[{i}][{j}]")


def test_hessian_of_a_two_layer_loss_matches_stock(backend):
    # The Net's shape in miniature: fused conv+ReLU+pool, conv2d, ReLU, max_pool2d, then a loss.
    def loss(fused, conv, pool):
        def f(w1, b1, w2, b2, x):
            h = fused(x, w1, b1)
            return pool(F.relu(conv(h, w2, b2))).square().mean()
        return f

    ours = loss(lambda x, w, b: cf.conv_relu_maxpool2d(x, w, b, **FUSED, backend=backend),
                lambda x, w, b: cf.conv2d(x, w, b, **CONV, backend=backend),
                lambda x: cf.max_pool2d(x, 2, backend=backend))
    stock = loss(lambda x, w, b: F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=1)), 2),
                 lambda x, w, b: F.conv2d(x, w, b, **CONV), lambda x: F.max_pool2d(x, 2))
    args = rand(3, 2, 3, 3), rand(3), rand(2, 3, 3, 3), rand(2), rand(2, 2, 8, 8)
    got = hessian(ours, argnums=(0, 1, 2, 3))(*args)
    ref = hessian(stock, argnums=(0, 1, 2, 3))(*_double(*args))
    for i in range(4):
        for j in range(4):
            assert_matches(got[i][j], ref[i][j], torch.float32, what=f"hessian[{i}][{j}]")


def test_jacfwd_and_hessian_in_channels_last_match_stock(backend):
    # Batched tangents of channels_last tensors: the layout is read from strides under vmap.
    ours, stock = _pair("conv_relu_maxpool2d", backend)
    x, w, b = rand(1, 2, 5, 5, channels_last=True), rand(3, 2, 3, 3), rand(3)
    got = jacfwd(ours, argnums=(0, 1))(x, w, b)
    ref = jacfwd(stock, argnums=(0, 1))(*_double(x, w, b))
    for g, r in zip(got, ref):
        assert_matches(g, r, torch.float32, what="jacfwd")
    got = hessian(lambda *a: ours(*a).square().sum(), argnums=(0, 1))(x, w, b)
    ref = hessian(lambda *a: stock(*a).square().sum(), argnums=(0, 1))(*_double(x, w, b))
    for i in range(2):
        for j in range(2):
            assert_matches(got[i][j], ref[i][j], torch.float32, what=f"hessian[{i}][{j}]")


@pytest.mark.parametrize("name", ["conv2d", "max_pool2d", "conv_relu_maxpool2d"])
def test_forward_ad_dual_tensors_carry_their_tangent(name, backend):
    """torch.autograd.forward_ad on the eager path: the tangent of every input reaches the output."""
    import torch.autograd.forward_ad as fwAD
    ours, stock = _pair(name, backend)
    args, tangents = _args(), _args()
    with fwAD.dual_level():
        duals = [fwAD.make_dual(a, t) for a, t in zip(args, tangents)]
        tangent = fwAD.unpack_dual(ours(*duals)).tangent
    assert tangent is not None, "the tangent was dropped"
    with fwAD.dual_level():
        duals = [fwAD.make_dual(a.double(), t.double()) for a, t in zip(args, tangents)]
        ref = fwAD.unpack_dual(stock(*duals)).tangent
    assert_matches(tangent, ref, torch.float32, what="tangent")
