"""torch.func over cnnfast's ops: vmap (batching rules folding the vmapped dimension into the batch, or
into the channels where weights are batched too), grad, jacrev, grad of grad and functional_call,
each against the same transform of stock PyTorch in float64."""
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_matches, rand
from torch.func import functional_call, grad, jacrev, vmap

import cnnfast
import cnnfast.functional as cf
from cnnfast.models import TorchNet

FUSED = dict(padding=1, pool_kernel_size=2)


def _fused_stock(x, w, b, padding, pool_kernel_size):
    return F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=padding)), pool_kernel_size)


def _pair(name, backend):
    """(cnnfast's op, stock's) on (x, weight, bias)."""
    if name == "conv2d":
        return (lambda x, w, b: cf.conv2d(x, w, b, padding=1, backend=backend),
                lambda x, w, b: F.conv2d(x, w, b, padding=1))
    if name == "max_pool2d":
        return (lambda x, w, b: cf.max_pool2d(x, 2, backend=backend), lambda x, w, b: F.max_pool2d(x, 2))
    return (lambda x, w, b: cf.conv_relu_maxpool2d(x, w, b, **FUSED, backend=backend),
            lambda x, w, b: _fused_stock(x, w, b, **FUSED))


def _args(batched_weight):
    x = rand(3, 2, 2, 6, 6)  # vmapped dimension 0 of size 3, then (N, C, H, W)
    w = rand(3, 4, 2, 3, 3) if batched_weight else rand(4, 2, 3, 3)
    b = rand(3, 4) if batched_weight else rand(4)
    return x, w, b


def _double(*tensors):
    return [t.double() for t in tensors]


@pytest.mark.parametrize("name, batched_weight", [("conv2d", False), ("conv2d", True), ("max_pool2d", False),
                                                  ("conv_relu_maxpool2d", False), ("conv_relu_maxpool2d", True)])
def test_vmap_matches_stock_vmap(name, batched_weight, fast_backend):
    ours, stock = _pair(name, fast_backend)
    x, w, b = _args(batched_weight)
    dims = (0, 0 if batched_weight else None, 0 if batched_weight else None)
    got = vmap(ours, in_dims=dims)(x, w, b)
    ref = vmap(stock, in_dims=dims)(*_double(x, w, b))
    assert_matches(got, ref, torch.float32)


def test_vmap_over_a_later_dimension_and_out_of_place_layout(fast_backend):
    x = rand(2, 3, 2, 6, 6).transpose(0, 1)  # vmapped dimension 1, non-contiguous
    w = rand(4, 2, 3, 3)
    got = vmap(lambda t: cf.conv2d(t, w, backend=fast_backend), in_dims=1)(x)
    ref = vmap(lambda t: F.conv2d(t, w.double()), in_dims=1)(x.double())
    assert_matches(got, ref, torch.float32)


@pytest.mark.parametrize("name", ["conv2d", "max_pool2d", "conv_relu_maxpool2d"])
def test_grad_and_jacrev_match_stock(name, fast_backend):
    ours, stock = _pair(name, fast_backend)
    x, w, b = rand(1, 2, 4, 4), rand(2, 2, 3, 3), rand(2)
    argnums = (0,) if name == "max_pool2d" else (0, 1, 2)
    for transform in (grad, jacrev):
        f = (lambda op: lambda *a: op(*a).square().sum()) if transform is grad else (lambda op: op)
        got = transform(f(ours), argnums=argnums)(x, w, b)
        ref = transform(f(stock), argnums=argnums)(*_double(x, w, b))
        for g, r in zip(got, ref):
            assert_matches(g, r, torch.float32, what=f"{transform.__name__}")


@pytest.mark.parametrize("name", ["conv2d", "max_pool2d", "conv_relu_maxpool2d"])
def test_grad_of_grad_matches_stock(name, fast_backend):
    ours, stock = _pair(name, fast_backend)
    x, w, b, v = rand(1, 2, 5, 5), rand(3, 2, 3, 3), rand(3), rand(1, 2, 5, 5)

    def hvp(op, x, w, b, v):
        g = grad(lambda t: op(t, w, b).square().sum())
        return grad(lambda t: (g(t) * v).sum())(x)
    assert_matches(hvp(ours, x, w, b, v), hvp(stock, *_double(x, w, b, v)), torch.float32)


def test_per_sample_gradients_of_the_net_match_stock(fast_backend):
    net = cnnfast.Net(backend=fast_backend)
    stock = TorchNet().double()
    stock.load_state_dict(net.state_dict())
    xs, ys = rand(2, 3, 32, 32), torch.randint(0, 10, (2,))

    def per_sample(model, params, xs):
        def loss(p, xi, yi):
            return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])
        return vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, ys)

    got = per_sample(net, {k: v.detach() for k, v in net.named_parameters()}, xs)
    ref = per_sample(stock, {k: v.detach() for k, v in stock.named_parameters()}, xs.double())
    assert got.keys() == ref.keys()
    for k in got:
        assert_matches(got[k], ref[k], torch.float32, what=f"per-sample gradient of {k}")
