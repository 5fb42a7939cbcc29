"""The custom ops pass torch.library.opcheck, and torch.compile traces models using them whole."""
import pytest
import torch
from conftest import DEVICE, rand

import cnnfast.functional as cf
from cnnfast.ops import conv2d as conv2d_ops, conv_relu_maxpool2d as fused_ops, max_pool2d as pool_ops
from cnnfast.models import Net


def _samples(backend):
    x, w, b = rand(2, 3, 7, 6, requires_grad=True), rand(4, 3, 3, 3, requires_grad=True), rand(4, requires_grad=True)
    conv = ([1, 1], [1, 1], [1, 1], 1)
    yield conv2d_ops.conv2d, (x, w, b, *conv, [7, 6], False, False, backend)
    yield conv2d_ops.conv2d, (x, w, None, [2, 1], [0, 1], [1, 2], 1, [3, 4], False, False, backend)
    g = rand(2, 4, 7, 6)  # the gradient ops' own backward (double backward): tests/test_double_backward.py
    yield conv2d_ops.conv2d_input_grad, (g, w.detach(), [7, 6], *conv, False, False, backend)
    yield conv2d_ops.conv2d_weight_grad, (x.detach(), g, [4, 3, 3, 3], *conv, False, False, backend)
    yield conv2d_ops.conv2d_bias_grad, (g, backend)
    pool = ([2, 2], [2, 2], [0, 0], [1, 1], [3, 3], False, backend)
    yield pool_ops.max_pool2d, (x.detach(), *pool)  # the front end calls it only when no grad is needed
    yield pool_ops.max_pool2d_with_indices, (x, *pool)
    fused = (x, w, b, *conv, [7, 6], [2, 2], [2, 2], [0, 0], [1, 1], [3, 3], False, False, backend)
    yield fused_ops.conv_relu_maxpool2d, tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in fused)
    yield fused_ops.conv_relu_maxpool2d_with_pos, fused


def test_custom_ops_pass_opcheck(fast_backend):
    for op, args in _samples(fast_backend):
        torch.library.opcheck(op, args)


def test_compiled_net_has_no_graph_break_and_matches_eager(fast_backend):
    torch.manual_seed(0)
    model = Net(backend=fast_backend).to(DEVICE)
    x = rand(2, 3, 32, 32)
    eager = model(x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.gpu
def test_compiled_net_with_inductor_matches_eager():
    model = Net(backend="triton").cuda()
    x = rand(64, 3, 32, 32)
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x), atol=1e-4, rtol=1e-4)


def test_compiled_functional_ops_with_unbatched_and_pool_indices(fast_backend):
    def f(x, w):
        y = cf.conv2d(x, w, padding="same", backend=fast_backend)
        return cf.max_pool2d(y, 2, return_indices=True, backend=fast_backend)

    x, w = rand(3, 8, 8), rand(4, 3, 2, 2)
    torch._dynamo.reset()
    out, idx = torch.compile(f, fullgraph=True, backend="aot_eager")(x, w)
    ref, ref_idx = f(x, w)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(out, ref)


def _layers(backend):
    """(name, fn) for each op with its custom op's name: conv2d, max_pool2d with grad, the fused op."""
    return [
        ("cnnfast.conv2d", lambda x, w, b: cf.conv2d(x, w, b, padding=1, backend=backend)),
        ("cnnfast.max_pool2d_with_indices", lambda x, w, b: cf.max_pool2d(x, 3, 2, 1, backend=backend)),
        ("cnnfast.conv_relu_maxpool2d_with_pos",
         lambda x, w, b: cf.conv_relu_maxpool2d(x, w, b, padding=1, pool_kernel_size=2, backend=backend)),
    ]


@pytest.mark.parametrize("which", range(3))
def test_eager_path_equals_the_custom_op_and_compiled_graphs_keep_the_op(which, fast_backend):
    """Eager calls run an autograd.Function (no torch.library dispatch), compiled graphs the custom op;
    both give the same bits, forward and backward."""
    op_name, fn = _layers(fast_backend)[which]
    x, w, b = rand(2, 3, 9, 8, requires_grad=True), rand(4, 3, 3, 3, requires_grad=True), rand(4, requires_grad=True)
    out = fn(x, w, b)
    assert type(out.grad_fn).__name__.startswith("_"), type(out.grad_fn).__name__  # one of cnnfast.ops' Functions
    g = torch.randn_like(out)
    leaves = [x] if "max_pool2d" in op_name else [x, w, b]
    eager = (out, *torch.autograd.grad(out, leaves, g))
    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    torch._dynamo.reset()
    out_c = torch.compile(fn, fullgraph=True, backend=record)(x, w, b)
    assert any(op_name in graph for graph in graphs), graphs
    compiled = (out_c, *torch.autograd.grad(out_c, leaves, g))
    for a, c in zip(eager, compiled):
        assert torch.equal(a, c)
