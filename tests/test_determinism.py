"""Under ``torch.use_deterministic_algorithms(True)`` every cnnfast op runs (none of them raises: all
their kernels are deterministic, no atomics) and repeats bit for bit: forward, backward and double
backward, per op and backend. Shapes are large enough that the weight and bias gradients reduce over
several blocks (split reductions) on the CPU backends; the Triton interpreter gets smaller ones."""
import pytest
import torch
from conftest import rand

import cnnfast.functional as cf


@pytest.fixture(autouse=True)
def deterministic():
    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before, warn_only=warn_only)


def _op(name, backend):
    if name == "conv2d":
        return lambda x, w, b: cf.conv2d(x, w, b, stride=1, padding=1, backend=backend)
    if name == "max_pool2d":
        return lambda x: cf.max_pool2d(x, 3, 2, 1, backend=backend)
    return lambda x, w, b: cf.conv_relu_maxpool2d(x, w, b, padding=1, pool_kernel_size=3, pool_stride=2,
                                                  pool_padding=1, backend=backend)


def _everything(op, inputs, v):
    """Output, first-order gradients (recorded) and second-order gradients, as one list."""
    y = op(*inputs)
    grads = torch.autograd.grad((y * v).square().sum(), inputs, create_graph=True)
    second = torch.autograd.grad(sum((g * torch.cos(t.detach())).sum() for t, g in zip(inputs, grads)), inputs)
    return [y.detach(), *(g.detach() for g in grads), *second]


@pytest.mark.parametrize("name", ["conv2d", "max_pool2d", "conv_relu_maxpool2d"])
def test_results_repeat_bit_for_bit_under_deterministic_algorithms(name, fast_backend):
    small = fast_backend == "triton"
    n, c, k, hw = (1, 3, 4, 7) if small else (8, 16, 24, 20)
    inputs = [rand(n, c, hw, hw, requires_grad=True)]
    if name != "max_pool2d":
        inputs += [rand(k, c, 3, 3, requires_grad=True), rand(k, requires_grad=True)]
    op = _op(name, fast_backend)
    v = rand(*op(*inputs).shape)
    first, second = _everything(op, inputs, v), _everything(op, inputs, v)
    for i, (a, b_) in enumerate(zip(first, second)):
        assert torch.equal(a, b_), f"result {i} differs between two identical runs"
