"""The custom ops pass torch.library.opcheck on the backend, and torch.compile traces models using them
whole, with the same results as eager calls."""
import pytest
import torch

import cnnfast.functional as cf
from cnnfast.models import Net
from cnnfast.ops import conv2d as conv2d_ops, conv_relu_maxpool2d as fused_ops, max_pool2d as pool_ops
from cnnfast.testing._reference import assert_close_reference, assert_equal_reference, case_of, device, rand
from cnnfast.testing.fixtures import _missing_op

OP = "custom ops"
quick = pytest.mark.quick


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


def _describe(args):
    return {f"arg{i}": tuple(a.shape) if isinstance(a, torch.Tensor) else a for i, a in enumerate(args)}


@quick
def test_custom_ops_pass_opcheck(fast_backend, seed):
    samples, lacking = list(_samples(fast_backend)), []
    for op, args in samples:
        try:
            torch.library.opcheck(op, args)
        except Exception as e:  # opcheck raises OpCheckError, or the op's own error
            missing = _missing_op(e, fast_backend)
            if missing is not None:     # an op the backend does not implement: the others are checked
                lacking.append(missing[0])
                continue
            name = str(getattr(op, "_name", op))
            case = case_of(name, "opcheck", dtype=torch.float32, backend=fast_backend, seed=seed,
                           arguments=_describe(args))
            case.fail("torch.library.opcheck", f"{type(e).__name__}: {e}")
    if len(lacking) == len(samples):
        pytest.skip(f"backend {fast_backend!r} implements none of the ops: {', '.join(sorted(set(lacking)))}")


def test_compiled_net_has_no_graph_break_and_matches_eager(fast_backend, seed):
    model = Net(backend=fast_backend).to(device())
    x = rand(2, 3, 32, 32)
    case = case_of("Net", "torch.compile(fullgraph=True, backend='aot_eager')", dtype=torch.float32,
                   backend=fast_backend, seed=seed, input=x)
    eager = model(x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    assert_close_reference(case, out, eager, atol=1e-5, rtol=1e-5, what="compiled output vs eager")
    out.sum().backward()
    case.check(all(p.grad is not None for p in model.parameters()), "gradients",
               "a parameter got no gradient through the compiled model")


def test_compiled_functional_ops_with_unbatched_and_pool_indices(fast_backend, seed):
    def f(x, w):
        y = cf.conv2d(x, w, padding="same", backend=fast_backend)
        return cf.max_pool2d(y, 2, return_indices=True, backend=fast_backend)

    x, w = rand(3, 8, 8), rand(4, 3, 2, 2)
    case = case_of("conv2d + max_pool2d", "compiled_unbatched", dtype=torch.float32, backend=fast_backend, seed=seed,
                   arguments=dict(padding="same", kernel_size=2, return_indices=True), input=x, weight=w)
    torch._dynamo.reset()
    out, idx = torch.compile(f, fullgraph=True, backend="aot_eager")(x, w)
    ref, ref_idx = f(x, w)
    assert_equal_reference(case, idx, ref_idx, what="compiled indices vs eager")
    assert_close_reference(case, out, ref, atol=1e-5, rtol=1.3e-6, what="compiled output vs eager")


def _layers(backend):
    """(name, fn) for each op with its custom op's name: conv2d, max_pool2d with grad, the fused op."""
    return [
        ("cnnfast.conv2d", lambda x, w, b: cf.conv2d(x, w, b, padding=1, backend=backend)),
        ("cnnfast.max_pool2d_with_indices", lambda x, w, b: cf.max_pool2d(x, 3, 2, 1, backend=backend)),
        ("cnnfast.conv_relu_maxpool2d_with_pos",
         lambda x, w, b: cf.conv_relu_maxpool2d(x, w, b, padding=1, pool_kernel_size=2, backend=backend)),
    ]


@pytest.mark.parametrize("which", range(3))
def test_eager_path_equals_the_custom_op_and_compiled_graphs_keep_the_op(which, fast_backend, seed):
    """Eager calls run an autograd.Function (no torch.library dispatch), compiled graphs the custom op;
    both give the same bits, forward and backward."""
    op_name, fn = _layers(fast_backend)[which]
    x, w, b = rand(2, 3, 9, 8, requires_grad=True), rand(4, 3, 3, 3, requires_grad=True), rand(4, requires_grad=True)
    case = case_of(op_name, "eager_vs_compiled", dtype=torch.float32, backend=fast_backend, seed=seed, input=x,
                   weight=w)
    out = fn(x, w, b)
    case.check(type(out.grad_fn).__name__.startswith("_"), "eager path",  # one of cnnfast.ops' Functions
               f"the eager call's grad_fn is {type(out.grad_fn).__name__}, not one of cnnfast.ops' Functions")
    g = torch.randn_like(out)
    leaves = [x] if "max_pool2d" in op_name else [x, w, b]
    eager = (out, *torch.autograd.grad(out, leaves, g))
    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    torch._dynamo.reset()
    out_c = torch.compile(fn, fullgraph=True, backend=record)(x, w, b)
    case.check(any(op_name in graph for graph in graphs), "compiled graph",
               f"no compiled graph calls {op_name}: {graphs}")
    compiled = (out_c, *torch.autograd.grad(out_c, leaves, g))
    for what, a, c in zip(("output", "grad_input", "grad_weight", "grad_bias"), eager, compiled):
        assert_equal_reference(case, c, a, what=f"compiled {what} vs eager", equal_nan=False)
