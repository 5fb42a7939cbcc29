"""CUDA-graph readiness: no host synchronisation on any launch path, and (on a GPU) forward and backward
of the Net and of a converted ResNet-18 captured with ``torch.cuda.graphs`` and replayed with the
results of eager runs.

Without a GPU: every aten op the launch paths issue is recorded (a dispatch mode) while forward,
backward and double backward run, and none may be one that waits for the device on CUDA (reading a
value back, a device-to-host copy, an op whose output size depends on data); the host code of the CUDA
kernels and the Triton launchers are read for the calls that synchronise."""
import re
from pathlib import Path

import pytest
import torch
from conftest import rand
from torch.utils._python_dispatch import TorchDispatchMode

import cnnfast
import cnnfast.functional as cf

ROOT = Path(__file__).resolve().parent.parent

# aten ops that make the host wait for a CUDA device (or whose output size depends on its data).
SYNCHRONISING = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "masked_select", "unique",
                 "_unique", "_unique2", "unique_consecutive", "equal", "allclose", "repeat_interleave",
                 "bincount", "histc"}


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.bad = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in SYNCHRONISING:
            self.bad.append(name)
        if name in ("_to_copy", "copy_", "to") and "device" in (kwargs or {}):
            self.bad.append(f"{name} to {kwargs['device']}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["conv2d", "max_pool2d", "conv_relu_maxpool2d"])
def test_launch_paths_issue_no_synchronising_op(name, fast_backend, monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("a launch path synchronised with the device")
    monkeypatch.setattr(torch.cuda, "synchronize", refuse)
    x = rand(1, 2, 6, 6, requires_grad=True)
    w, b = rand(3, 2, 3, 3, requires_grad=True), rand(3, requires_grad=True)
    ops = {"conv2d": lambda: cf.conv2d(x, w, b, padding=1, backend=fast_backend),
           "max_pool2d": lambda: cf.max_pool2d(x, 3, 2, 1, backend=fast_backend),
           "conv_relu_maxpool2d": lambda: cf.conv_relu_maxpool2d(x, w, b, padding=1, backend=fast_backend)}
    recorder = _Recorder()
    with recorder:
        y = ops[name]()
        g, = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        g.sum().backward()
    assert recorder.bad == [], f"synchronising ops on the launch path: {recorder.bad}"


def test_kernel_host_code_has_no_synchronising_call():
    pattern = re.compile(r"\.item\(|\.cpu\(|\.tolist\(|\.numpy\(|cudaDeviceSynchronize|cudaStreamSynchronize|"
                         r"cudaMemcpy\(|\.synchronize\(|to\(\s*(at::)?kCPU")
    files = [*ROOT.glob("csrc/cuda/*.cu"), *ROOT.glob("csrc/cuda/*.h"), *ROOT.glob("kernels/**/*.py"),
             *ROOT.glob("cnnfast/ops/*.py"), ROOT / "cnnfast/_extension.py", ROOT / "cnnfast/functional.py"]
    assert len(files) > 10
    found = [f"{f.relative_to(ROOT)}:{i}" for f in files for i, line in enumerate(f.read_text().splitlines(), 1)
             if pattern.search(line) and "aot" not in f.name]
    assert found == [], f"synchronising calls in launch code: {found}"


def _capture_and_replay(model, x):
    """Eager step, then the same step captured in a CUDA graph and replayed: (eager, replayed) outputs
    and parameter gradients."""
    def step(inp):
        model.zero_grad(set_to_none=False)
        out = model(inp)
        out.square().mean().backward()
        return out, [p.grad for p in model.parameters()]
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up: every kernel compiled and every config chosen before capture
            step(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    eager_out, eager_grads = step(x)
    eager = (eager_out.clone(), [g.clone() for g in eager_grads])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, static_grads = step(static_x)
    static_x.copy_(x)
    graph.replay()
    torch.cuda.synchronize()
    return eager, (static_out, static_grads)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("model", ["net", "resnet18"])
def test_forward_and_backward_capture_in_a_cuda_graph_and_replay_identically(model, backend):
    if backend not in cnnfast.backends.available("cuda"):
        pytest.skip(f"backend {backend!r} is not available here")
    torch.manual_seed(0)
    if model == "net":
        m, x = cnnfast.Net(backend=backend).cuda(), torch.randn(8, 3, 32, 32, device="cuda")
    else:
        torchvision = pytest.importorskip("torchvision")
        m = cnnfast.convert(torchvision.models.resnet18(num_classes=10), backend=backend).cuda()
        x = torch.randn(2, 3, 64, 64, device="cuda")
    (eager_out, eager_grads), (out, grads) = _capture_and_replay(m, x)
    assert torch.equal(out, eager_out)
    for g, e in zip(grads, eager_grads):
        assert torch.equal(g, e)
