"""Double backward of conv2d, max_pool2d and the fused op against stock PyTorch's, in float64.

Each case differentiates a first-order gradient again (``create_graph=True``): the Hessian-vector
style check of the issue (``g = grad(y.square().sum(), x, create_graph=True)``, then
``grad((g * v).sum(), inputs)``) with every input differentiated, on the eager path (plain tensors)
and on the custom-op path (torch.library's autograd, which tracing and tensor subclasses take).
Named kernel backends run float32 and are compared with the float64 result of stock PyTorch; the
"torch" backend accepts float64 and passes ``gradgradcheck``."""
import pytest
import torch
import torch.nn.functional as F
from conftest import FAST_BACKENDS, assert_matches, rand

import cnnfast
import cnnfast.functional as cf
from cnnfast.ops import _common

needs_cpu = pytest.mark.skipif("cpu" not in cnnfast.backends.available("cpu"), reason="backend 'cpu' is not built")

CONV = dict(stride=1, padding=1)
POOL = dict(kernel_size=3, stride=2, padding=1)  # overlapping windows: a cell can win twice
FUSED_POOL = dict(pool_kernel_size=3, pool_stride=2, pool_padding=1)


def _ops(name, backend):
    """(cnnfast's op, stock PyTorch's, input shapes); the op takes (x, [weight, bias])."""
    if name == "conv2d":
        return (lambda x, w, b: cf.conv2d(x, w, b, **CONV, backend=backend),
                lambda x, w, b: F.conv2d(x, w, b, **CONV), ((1, 2, 6, 5), (3, 2, 3, 3), (3,)))
    if name == "max_pool2d":
        return (lambda x: cf.max_pool2d(x, **POOL, backend=backend),
                lambda x: F.max_pool2d(x, **POOL), ((2, 2, 7, 6),))
    return (lambda x, w, b: cf.conv_relu_maxpool2d(x, w, b, **CONV, **FUSED_POOL, backend=backend),
            lambda x, w, b: F.max_pool2d(F.relu(F.conv2d(x, w, b, **CONV)), POOL["kernel_size"],
                                         POOL["stride"], POOL["padding"]),
            ((1, 2, 7, 6), (3, 2, 3, 3), (3,)))


def _second_order(fn, inputs, cotangents):
    """grad of sum(grad(y.square().sum(), inputs) * cotangents) with respect to the inputs."""
    y = fn(*inputs)
    grads = torch.autograd.grad(y.square().sum(), inputs, create_graph=True)
    assert all(g.requires_grad for g in grads), "the first-order gradient was not recorded"
    total = sum((g * v).sum() for g, v in zip(grads, cotangents))
    return grads, torch.autograd.grad(total, inputs)


@pytest.fixture(params=["eager", "custom_op"])
def path(request, monkeypatch):
    if request.param == "custom_op":
        # No tensor counts as plain: every call goes through torch.library's custom ops.
        monkeypatch.setattr(_common, "_PLAIN", ())
    return request.param


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name", ["conv2d", "max_pool2d", "conv_relu_maxpool2d"])
def test_double_backward_matches_float64_reference(name, fast_backend, path, channels_last):
    op, ref_op, shapes = _ops(name, fast_backend)
    inputs = [rand(*s, channels_last=channels_last, requires_grad=True) for s in shapes]
    cotangents = [rand(*s) for s in shapes]
    grads, second = _second_order(op, inputs, cotangents)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    ref_grads, ref_second = _second_order(ref_op, ref_inputs, [v.double() for v in cotangents])
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert_matches(g.detach(), r, torch.float32, what=f"first-order gradient {i}")
    for i, (g, r) in enumerate(zip(second, ref_second)):
        assert_matches(g, r, torch.float32, what=f"second-order gradient {i}")


def test_max_pool2d_hessian_vector_product_is_not_silently_wrong(fast_backend):
    """The issue's check: relative error against stock PyTorch was 0.68; it must be rounding."""
    x = rand(2, 3, 8, 8, requires_grad=True)
    results = []
    for fn in (lambda t: cf.max_pool2d(t, 2, backend=fast_backend), lambda t: F.max_pool2d(t, 2)):
        g, = torch.autograd.grad(fn(x).square().sum(), x, create_graph=True)
        results.append(torch.autograd.grad((g * torch.sin(x)).sum(), x)[0])
    err = ((results[0] - results[1]).norm() / results[1].norm()).item()
    assert err < 1e-6, f"Hessian-vector product off by a relative {err:.3g}"


@needs_cpu
def test_conv2d_third_order_matches_float64_reference():
    """The gradient ops' own backward is differentiable again (conv2d is linear in each argument)."""
    x, w = rand(1, 2, 5, 5, requires_grad=True), rand(3, 2, 3, 3, requires_grad=True)
    results = []
    for fn, (a, b) in ((lambda a, b: cf.conv2d(a, b, padding=1, backend="cpu"), (x, w)),
                       (lambda a, b: F.conv2d(a, b, padding=1), (x.detach().double().requires_grad_(),
                                                                w.detach().double().requires_grad_()))):
        gx, = torch.autograd.grad(fn(a, b).pow(3).sum(), a, create_graph=True)
        gw, = torch.autograd.grad(gx.square().sum(), b, create_graph=True)
        results.append(torch.autograd.grad(gw.square().sum(), (a, b)))
    for got, ref in zip(*results):
        assert_matches(got, ref, torch.float32, what="third-order gradient")


@needs_cpu
def test_first_order_backward_records_nothing():
    x, w = rand(1, 2, 5, 5, requires_grad=True), rand(3, 2, 3, 3, requires_grad=True)
    y = cf.conv_relu_maxpool2d(x, w, padding=1, backend="cpu")
    gx, gw = torch.autograd.grad(y.sum(), (x, w))
    assert not gx.requires_grad and not gw.requires_grad


@pytest.mark.parametrize("name", ["conv2d", "max_pool2d"])
def test_torch_backend_passes_gradgradcheck_in_float64(name):
    op, _, _ = _ops(name, "torch")
    shapes = ((1, 1, 4, 3),) if name == "max_pool2d" else ((1, 1, 4, 3), (2, 1, 2, 2), (2,))
    inputs = [rand(*s, dtype=torch.float64, requires_grad=True) for s in shapes]
    assert torch.autograd.gradgradcheck(op, inputs)


def _gradient_op_samples(backend):
    from cnnfast.ops import conv2d as conv_ops, conv_relu_maxpool2d as fused_ops, max_pool2d as pool_ops
    x, w, g = rand(2, 3, 7, 6, requires_grad=True), rand(4, 3, 3, 3, requires_grad=True), rand(2, 4, 7, 6,
                                                                                               requires_grad=True)
    conv = ([1, 1], [1, 1], [1, 1], 1)
    yield conv_ops.conv2d_input_grad, (g, w, [7, 6], *conv, False, False, backend)
    yield conv_ops.conv2d_weight_grad, (x, g, [4, 3, 3, 3], *conv, False, False, backend)
    yield conv_ops.conv2d_bias_grad, (g, backend)
    pool = ([2, 2], [2, 2], [0, 0], [1, 1])
    _, idx = pool_ops.max_pool2d_with_indices(x.detach(), *pool, [3, 3], False, backend)
    gp = rand(2, 3, 3, 3, requires_grad=True)
    yield pool_ops.max_pool2d_backward, (gp, idx, [7, 6], *pool, False, backend)
    yield pool_ops.max_pool2d_gather, (x, idx, *pool, False, backend)
    fused_geometry = (*conv, [7, 6], *pool)
    _, pos = fused_ops.conv_relu_maxpool2d_with_pos(x.detach(), w.detach(), None, *fused_geometry, [3, 3], False,
                                                    False, backend)
    g_pooled = rand(2, 4, 3, 3, requires_grad=True)
    for which in range(3):
        yield fused_ops.conv_relu_maxpool2d_backward, (g_pooled, x, w, pos, *fused_geometry, which, False, False,
                                                      backend)


@needs_cpu
def test_gradient_ops_pass_opcheck_with_their_own_autograd():
    for op, args in _gradient_op_samples("cpu"):
        torch.library.opcheck(op, args)
