"""The backend registry: defaults, use(), available(), and "auto"'s choices."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import DEVICE, rand

import cnnfast
import cnnfast.functional as cf
from cnnfast import backends


def test_default_is_auto_and_use_sets_and_restores():
    assert backends.default() == "auto"
    with backends.use("torch"):
        assert backends.default() == "torch"
        with backends.use("triton"):
            assert backends.default() == "triton"
        assert backends.default() == "torch"
    assert backends.default() == "auto"
    backends.use("torch")
    try:
        assert backends.default() == "torch"
    finally:
        backends.use("auto")


def test_unknown_backend_name_is_refused():
    with pytest.raises(ValueError, match="unknown cnnfast backend 'fast'"):
        backends.use("fast")
    assert backends.default() == "auto"


def test_environment_variable_sets_the_default():
    code = "import cnnfast; print(cnnfast.backends.default())"
    env = dict(os.environ, CNNFAST_BACKEND="torch")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "torch"


def test_available_lists_torch_last_and_triton_where_it_runs():
    names = backends.available(DEVICE)
    assert names[-1] == "torch"
    assert ("triton" in names) == (DEVICE == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
    assert backends.available("meta") == ["torch"]


def test_emulated_cuda_runs_on_cpu_tensors_only_and_auto_never_picks_it():
    if backends._extension() is None:
        pytest.skip("cnnfast._C is not built")
    assert "emulated_cuda" in backends.available("cpu")
    assert "emulated_cuda" not in backends.available("cuda")
    x = rand(1, 3, 8, 8)
    assert backends.resolve("auto", "conv2d", x.cpu()) != "emulated_cuda"
    if torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend 'emulated_cuda' runs the CUDA kernels on cpu tensors"):
            cf.conv2d(x.cuda(), rand(2, 3, 3, 3).cuda(), backend="emulated_cuda")


def test_auto_falls_back_to_torch_for_float64_and_uses_a_kernel_otherwise():
    x = rand(1, 3, 8, 8)
    assert backends.resolve("auto", "conv2d", x.double()) == "torch"
    expected = {"cuda": "triton", "cpu": "cpu" if "cpu" in backends.available("cpu") else "torch"}[DEVICE]
    assert backends.resolve("auto", "conv2d", x) == expected
    out = cf.conv2d(x.double(), rand(2, 3, 3, 3, dtype=torch.float64))
    assert out.dtype == torch.float64


def test_backend_none_follows_the_default(monkeypatch):
    calls = []
    real = backends.resolve
    monkeypatch.setattr(backends, "resolve", lambda b, op, t: calls.append(real(b, op, t)) or calls[-1])
    x, w = rand(1, 3, 8, 8), rand(2, 3, 3, 3)
    with backends.use("torch"):
        cf.conv2d(x, w)
    assert calls == ["torch"]


def test_autocast_runs_the_conv_in_lower_precision():
    dtype = torch.bfloat16
    x, w = rand(2, 3, 8, 8), rand(4, 3, 3, 3)
    with torch.autocast(DEVICE, dtype=dtype):
        out = cf.conv2d(x, w, backend="torch")
        fused = cf.conv_relu_maxpool2d(x, w, backend="torch")
    assert out.dtype == dtype and fused.dtype == dtype


def test_package_import_does_not_import_triton():
    code = "import sys, cnnfast; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_backend_modules_expose_the_same_launchers():
    """Every backend's launcher module has the Triton package's functions, with the same parameters."""
    import inspect

    import cnnfast.kernels as triton_kernels
    modules = [triton_kernels]
    if backends._extension() is not None:
        import cnnfast._extension
        modules.append(cnnfast._extension)
    for module in modules[1:]:
        assert sorted(module.__all__) == sorted(triton_kernels.__all__)
    if backends._extension() is not None:
        modules.append(backends.kernels("emulated_cuda"))
    for module in modules[1:]:
        for name in triton_kernels.__all__:
            ours = list(inspect.signature(getattr(module, name)).parameters)
            theirs = list(inspect.signature(getattr(triton_kernels, name)).parameters)
            assert ours == theirs, f"{module}.{name}{ours} != cnnfast.kernels.{name}{theirs}"
    assert all(callable(getattr(triton_kernels, name)) for name in triton_kernels.__all__)
