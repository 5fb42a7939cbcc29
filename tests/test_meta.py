"""Meta and fake tensors: shapes, strides and dtypes without running a kernel, and deferred
initialisation (build on meta, ``to_empty``, load a state_dict)."""
import importlib

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, rand
from torch._subclasses.fake_tensor import FakeTensorMode

import cnnfast
import cnnfast.functional as cf

torchvision = pytest.importorskip("torchvision")

NAMES = [None, "auto", "torch", "cpu", "triton", "emulated_cuda"]


@pytest.fixture
def no_kernels(monkeypatch):
    """Any kernel launch fails the test."""
    def refuse(name):
        raise AssertionError(f"a {name} kernel was looked up for meta tensors")
    monkeypatch.setattr(cnnfast.backends, "kernels", refuse)
    for op in ("conv2d", "max_pool2d", "conv_relu_maxpool2d"):
        monkeypatch.setattr(importlib.import_module(f"cnnfast.ops.{op}"), "kernels", refuse)


CALLS = {
    "conv2d": (lambda f, x, w, b: f(x, w, b, stride=2, padding=1), F.conv2d),
    "conv2d_same": (lambda f, x, w, b: f(x, w, b, padding="same"), F.conv2d),
    "max_pool2d": (lambda f, x, w, b: f(x, 3, 2, 1, ceil_mode=True), F.max_pool2d),
    "max_pool2d_indices": (lambda f, x, w, b: f(x, 2, return_indices=True)[1], F.max_pool2d),
    "conv_relu_maxpool2d": (lambda f, x, w, b: f(x, w, b, padding=1), None),
}


def _stock_fused(x, w, b, padding):
    return F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=padding)), 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("name", NAMES)
def test_functions_on_meta_give_stock_shapes_strides_and_dtypes(name, call, channels_last, dtype, no_kernels):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.empty(2, 4, 9, 8, device="meta", dtype=dtype, memory_format=fmt)
    w = torch.empty(6, 4, 3, 3, device="meta", dtype=dtype)
    b = torch.empty(6, device="meta", dtype=dtype)
    ours, stock = CALLS[call]
    fn = getattr(cf, call.replace("_same", "").replace("_indices", ""))
    out = ours(lambda *a, **k: fn(*a, **k, backend=name), x, w, b)
    ref = ours(stock, x, w, b) if stock is not None else _stock_fused(x, w, b, padding=1)
    assert out.device.type == "meta"
    assert (out.shape, out.stride(), out.dtype) == (ref.shape, ref.stride(), ref.dtype)


def test_meta_input_keeps_the_argument_checks():
    x, w = torch.empty(1, 3, 8, 8, device="meta"), torch.empty(4, 2, 3, 3, device="meta")
    with pytest.raises(ValueError, match="expected input.*to have 2 channels, but got 3 channels"):
        cf.conv2d(x, w, backend="cpu")


def test_modules_on_meta_infer_shapes(no_kernels):
    with torch.device("meta"):
        net = cnnfast.Net()
        out = net(torch.empty(5, 3, 32, 32))
    assert out.device.type == "meta" and out.shape == (5, 10)


def test_deferred_resnet18_loads_a_state_dict_and_matches_stock():
    with torch.device("meta"):
        model = cnnfast.convert(torchvision.models.resnet18(num_classes=7))
    assert all(p.device.type == "meta" for p in model.parameters())
    model.to_empty(device=DEVICE)
    stock = torchvision.models.resnet18(num_classes=7).to(DEVICE).eval()
    model.load_state_dict(stock.state_dict())
    model.eval()
    x = rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), stock(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["cpu", "triton", "emulated_cuda"])
def test_fake_tensors_take_the_fake_kernels(name, no_kernels):
    if name not in cnnfast.backends.available("cpu"):
        pytest.skip(f"backend {name!r} is not available here")
    with FakeTensorMode():
        x = torch.empty(2, 4, 9, 8).to(memory_format=torch.channels_last).requires_grad_()
        w = torch.empty(6, 4, 3, 3, requires_grad=True)
        y = cf.conv_relu_maxpool2d(x, w, padding=1, backend=name)
        p = cf.max_pool2d(cf.conv2d(x, w, backend=name), 2, backend=name)
        assert y.shape == (2, 6, 4, 4) and y.is_contiguous(memory_format=torch.channels_last)
        assert p.shape == (2, 6, 3, 3)
