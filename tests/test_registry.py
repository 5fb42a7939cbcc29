"""The public backend registry: a backend defined here, outside the package, registers and runs
wherever a built-in one does; a forward-only one falls back to stock PyTorch for its gradients (said
once) and is refused for what it lacks; bad registrations are refused with a sentence; entry points."""
import argparse
import importlib.metadata
import inspect
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

import cnnfast
import cnnfast.functional as cf
from cnnfast import backends, launchers as interface, tune
from cnnfast.tune import space

from conftest import assert_matches


# --- a backend outside the package: conv2d written with F.pad + F.conv2d, gradients by autograd ------

def _pads(in_size, out_size, kernel, stride, padding, dilation):
    """F.pad's list for the normalised geometry: (pad_top, pad_left) given, bottom / right from out_size."""
    end = [max(0, (o - 1) * s + d * (k - 1) + 1 - i - p)
           for i, o, k, s, p, d in zip(in_size, out_size, kernel, stride, padding, dilation)]
    return [padding[1], end[1], padding[0], end[0]]


class Recorder:
    """conv2d's four launchers; records each call's launcher and whether its tensors came contiguous
    in the layout the call names."""

    def __init__(self):
        self.calls = []

    def _record(self, launcher, tensors, channels_last):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.calls.append((launcher, all(t.is_contiguous(memory_format=fmt) for t in tensors if t.dim() == 4)))

    @staticmethod
    def _forward(x, weight, bias, stride, padding, dilation, groups, out_size):
        x = F.pad(x, _pads(x.shape[2:], out_size, weight.shape[2:], stride, padding, dilation))
        return F.conv2d(x, weight, bias, stride, 0, dilation, groups)[:, :, :out_size[0], :out_size[1]]

    def conv2d_forward(self, x, weight, bias, stride, padding, dilation, groups, out_size, *, channels_last=False,
                       allow_tf32=False):
        self._record("conv2d_forward", (x, weight), channels_last)
        return self._forward(x, weight, bias, stride, padding, dilation, groups, out_size)

    def conv2d_input_grad(self, grad_out, weight, input_size, stride, padding, dilation, groups, *,
                          channels_last=False, allow_tf32=False):
        self._record("conv2d_input_grad", (grad_out, weight), channels_last)
        x = grad_out.new_zeros((grad_out.shape[0], weight.shape[1] * groups, *input_size), requires_grad=True)
        with torch.enable_grad():
            y = self._forward(x, weight, None, stride, padding, dilation, groups, grad_out.shape[2:])
            return torch.autograd.grad(y, x, grad_out)[0]

    def conv2d_weight_grad(self, x, grad_out, weight_size, stride, padding, dilation, groups, *,
                           channels_last=False, allow_tf32=False):
        self._record("conv2d_weight_grad", (x, grad_out), channels_last)
        w = x.new_zeros(tuple(weight_size), requires_grad=True)
        with torch.enable_grad():
            y = self._forward(x, w, None, stride, padding, dilation, groups, grad_out.shape[2:])
            return torch.autograd.grad(y, w, grad_out)[0]

    def conv2d_bias_grad(self, grad_out):
        self._record("conv2d_bias_grad", (grad_out,), False)
        return grad_out.sum((0, 2, 3), dtype=torch.float32).to(grad_out.dtype)


@pytest.fixture
def registered():
    """register(name, launchers, ...) for the test; every backend it registered is removed after."""
    names = []

    def register(name, launchers, devices=("cpu",), **kwargs):
        backends.register(name, launchers, devices, **kwargs)
        names.append(name)
        return launchers
    yield register
    for name in names:
        if name in backends._REGISTRY:
            backends.unregister(name)


def _conv_inputs(n=2, c=3, h=9, w=8, k=4, grad=True, channels_last=False):
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    weight = torch.randn(k, c, 3, 3, dtype=torch.float64)
    bias = torch.randn(k, dtype=torch.float64)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ours = [t.float().contiguous(memory_format=fmt) if t.dim() == 4 else t.float() for t in (x, weight, bias)]
    return [t.requires_grad_(grad) for t in ours], [t.requires_grad_(grad) for t in (x, weight, bias)]


def _check_conv(backend, padding=1, stride=1, channels_last=False):
    """conv2d forward and every gradient on ``backend`` agree with stock PyTorch in float64."""
    (x, w, b), (x64, w64, b64) = _conv_inputs(channels_last=channels_last)
    y = cf.conv2d(x, w, b, stride=stride, padding=padding, backend=backend)
    ref = F.conv2d(x64, w64, b64, stride=stride, padding=padding)
    assert_matches(y.detach(), ref.detach(), torch.float32)
    grad = torch.randn_like(ref)
    y.backward(grad.float())
    ref.backward(grad)
    for t, r in ((x, x64), (w, w64), (b, b64)):
        assert_matches(t.grad, r.grad, torch.float32, what="gradient")


# --- a registered backend runs everywhere a built-in one does ---------------------------------------

@pytest.mark.parametrize("padding, stride", [(1, 1), ("same", 1), (0, 2)])
def test_registered_backend_runs_functional_forward_and_backward(registered, padding, stride):
    rec = registered("recorder", Recorder())
    _check_conv("recorder", padding, stride)
    assert [c[0] for c in rec.calls] == ["conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad",
                                         "conv2d_bias_grad"]


def test_registered_backend_gets_contiguous_tensors_in_the_calls_layout(registered):
    rec = registered("recorder", Recorder())
    _check_conv("recorder", channels_last=True)
    (x, w, b), _ = _conv_inputs(grad=False)
    cf.conv2d(x.transpose(2, 3), w, b, backend="recorder")     # a strided view arrives contiguous
    assert len(rec.calls) == 5 and all(ok for _, ok in rec.calls), rec.calls


def test_registered_backend_runs_modules_convert_and_use(registered):
    rec = registered("recorder", Recorder())
    conv = cnnfast.nn.Conv2d(3, 4, 3, padding=1, backend="recorder")
    x = torch.randn(2, 3, 8, 8)
    conv(x).sum().backward()
    assert rec.calls[0][0] == "conv2d_forward"
    stock = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    model = cnnfast.convert(stock, backend="recorder")
    rec.calls.clear()
    torch.testing.assert_close(model(x), stock(x), atol=1e-5, rtol=1e-4)
    assert [c[0] for c in rec.calls] == ["conv2d_forward"]
    rec.calls.clear()
    with backends.use("recorder"):
        assert backends.default() == "recorder"
        cf.conv2d(x, conv.weight.detach())
    assert backends.default() == "auto"
    assert [c[0] for c in rec.calls] == ["conv2d_forward"]


def test_registered_backend_runs_under_torch_compile_fullgraph(registered):
    rec = registered("recorder", Recorder())
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    fn = torch.compile(lambda a, b: cf.conv2d(a, b, padding=1, backend="recorder"), fullgraph=True,
                       backend="aot_eager")
    torch.testing.assert_close(fn(x, w), F.conv2d(x, w, padding=1), atol=1e-5, rtol=1e-4)
    assert rec.calls and rec.calls[-1][0] == "conv2d_forward"


def test_registered_backend_is_listed_before_torch_and_is_a_candidate_of_auto(registered):
    registered("recorder", Recorder())
    names = backends.available("cpu")
    assert "recorder" in names and names[-1] == "torch" and names.index("recorder") < names.index("torch")
    assert "recorder" not in backends.available("cuda")          # registered for CPU tensors only
    assert "recorder" in backends.names()
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    args = (x, w, None, (1, 1), (0, 0), (1, 1), 1, (6, 6))
    assert ("recorder", None) in space.candidates("conv2d_forward", "auto", x.device, args, {})
    # It implements no pooling: never a candidate there.
    assert all(name != "recorder" for name, _ in space.candidates("max_pool2d_forward", "auto", x.device,
                                                                  (x, (2, 2), (2, 2), (0, 0), (1, 1), (4, 4)), {}))


def test_auto_chooses_a_registered_backend_that_is_fastest(registered, tmp_path, monkeypatch):
    rec = registered("recorder", Recorder())
    monkeypatch.setenv("CNNFAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tune, "_ENABLED", True)
    monkeypatch.setattr(tune, "timer", lambda fn, device, candidate: float("inf") if candidate[1] == "training call"
                        else 0.01 if candidate[0] == "recorder" else 1.0)
    tune.clear()
    try:
        x, w = torch.randn(2, 3, 9, 7), torch.randn(5, 3, 3, 3)
        y = cf.conv2d(x, w, backend="auto")
        torch.testing.assert_close(y, F.conv2d(x, w), atol=1e-5, rtol=1e-4)
        chosen = {d.launcher: d.backend for d in tune.decisions()}
        assert chosen["conv2d_forward"] == "recorder"
        assert rec.calls[-1][0] == "conv2d_forward"
    finally:
        tune.clear()


def test_train_and_bench_accept_a_registered_backend(registered):
    from cnnfast.bench import runner
    from cnnfast.train.options import build_parser
    registered("recorder", Recorder())
    assert build_parser().parse_args(["--backend", "recorder"]).backend == "recorder"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--backend", "no-such-backend"])
    assert runner.providers(torch.device("cpu"), ["cnnfast:recorder"]) == ["cnnfast:recorder"]


# --- a forward-only backend ----------------------------------------------------------------------------

class ForwardOnly:
    def __init__(self):
        self.calls = 0

    def conv2d_forward(self, x, weight, bias, stride, padding, dilation, groups, out_size, **_):
        self.calls += 1
        return Recorder._forward(x, weight, bias, stride, padding, dilation, groups, out_size)


def test_forward_only_backend_trains_with_stock_gradients_said_once(registered):
    fwd = registered("forward-only", ForwardOnly())
    with pytest.warns(RuntimeWarning) as caught:
        _check_conv("forward-only")
    assert sorted(str(w.message) for w in caught) == [
        f"cnnfast: backend 'forward-only' has no conv2d_{g}_grad; stock PyTorch ('torch') runs it instead"
        for g in ("bias", "input", "weight")]
    assert fwd.calls == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_conv("forward-only")                 # said once per backend and function
    assert fwd.calls == 2


def test_forward_only_backend_is_refused_for_the_ops_it_lacks(registered):
    registered("forward-only", ForwardOnly())
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(RuntimeError, match="max_pool2d: backend 'forward-only' has no max_pool2d_forward"):
        cf.max_pool2d(x, 2, backend="forward-only")
    with pytest.raises(RuntimeError, match="conv_relu_maxpool2d: backend 'forward-only' has no "
                                           "conv_relu_maxpool2d_forward"):
        cf.conv_relu_maxpool2d(x, torch.randn(2, 3, 3, 3), backend="forward-only")
    args = (torch.randn(1, 4, 6, 6), torch.randn(4, 3, 3, 3), (8, 8), (1, 1), (0, 0), (1, 1), 1)
    assert ("forward-only", None) not in space.candidates("conv2d_input_grad", "auto", x.device, args, {})


def test_a_backend_can_be_replaced_and_removed(registered):
    first = registered("recorder", Recorder())
    second = Recorder()
    backends.register("recorder", second, ("cpu",), replace=True)
    x, w = torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3)
    cf.conv2d(x, w, backend="recorder")
    assert not first.calls and second.calls
    with backends.use("recorder"):
        backends.unregister("recorder")
        assert backends.default() == "auto"
    with pytest.raises(ValueError, match="unknown cnnfast backend 'recorder'"):
        cf.conv2d(x, w, backend="recorder")


# --- bad registrations ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, launchers, kwargs, error, message", [
    ("cpu", Recorder(), {}, ValueError, "'cpu' is a built-in backend's name"),
    ("auto", Recorder(), {}, ValueError, "'auto' is a built-in backend's name"),
    ("my backend", Recorder(), {}, ValueError, "bad backend name 'my backend'"),
    ("", Recorder(), {}, ValueError, "bad backend name ''"),
    (3, Recorder(), {}, ValueError, "bad backend name 3"),
    ("nothing", object(), {}, TypeError, "has none of the launcher functions"),
    ("nothing", None, {}, TypeError, "launchers is None"),
    ("broken", types.SimpleNamespace(conv2d_forward=3), {}, TypeError, "conv2d_forward is not callable"),
    ("gpu-only", Recorder(), dict(devices=("gpu",)), ValueError, "unknown device type 'gpu'"),
    ("meta-only", Recorder(), dict(devices=("meta",)), ValueError, "unknown device type 'meta'"),
    ("indexed", Recorder(), dict(devices=("cuda:0",)), ValueError, "unknown device type 'cuda:0'"),
    ("no-devices", Recorder(), dict(devices=()), ValueError, "devices is empty"),
    ("bad-path", "not a path", {}, ValueError, "'not a path' is not an import path"),
    ("own-state", types.SimpleNamespace(conv_relu_maxpool2d_forward=lambda *a, **k: None, FUSED_STATE="mine"), {},
     TypeError, "needs conv_relu_maxpool2d_backward too"),
])
def test_bad_registrations_are_refused_with_a_sentence(name, launchers, kwargs, error, message):
    with pytest.raises(error, match=message):
        backends.register(name, launchers, **kwargs)
    assert name not in backends._REGISTRY or name in backends.BUILTIN


def test_a_name_is_registered_once_unless_replaced(registered):
    registered("recorder", Recorder())
    with pytest.raises(ValueError, match="a backend 'recorder' is already registered .pass replace=True"):
        backends.register("recorder", Recorder(), ("cpu",))


def test_builtin_backends_cannot_be_replaced_or_removed():
    with pytest.raises(ValueError, match="'triton' is a built-in backend's name"):
        backends.register("triton", Recorder(), replace=True)
    with pytest.raises(ValueError, match="'torch' is a built-in backend; it cannot be removed"):
        backends.unregister("torch")
    with pytest.raises(ValueError, match="no backend 'never-registered' is registered"):
        backends.unregister("never-registered")


def test_builtin_backends_are_registered_and_implement_the_documented_interface():
    """Every built-in backend is in the registry like any other, with every launcher of
    ``cnnfast.launchers``: the same positional parameters, and the keywords cnnfast passes."""
    for name in backends.BUILTIN:
        assert isinstance(backends._REGISTRY[name], backends.Backend)
    loadable = ["torch", "triton"] + (["cpu", "emulated_cuda"] if backends._extension() is not None else [])
    for name in loadable:
        calls = backends.launchers(name)
        for launcher in interface.NAMES:
            assert backends.has(name, launcher), (name, launcher)
            params = inspect.signature(getattr(calls, launcher)).parameters.values()
            spec = inspect.signature(getattr(interface, launcher)).parameters.values()
            positional = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
            assert positional == [p.name for p in spec if p.kind == p.POSITIONAL_OR_KEYWORD], (name, launcher)
            keywords = {p.name for p in params if p.kind == p.KEYWORD_ONLY}
            assert set(interface.KEYWORDS[launcher]) <= keywords, (name, launcher, keywords)
    with pytest.raises(NotImplementedError, match="documents the launcher interface"):
        interface.conv2d_bias_grad(torch.randn(1, 2, 3, 3))


# --- entry points --------------------------------------------------------------------------------------

class _Point:
    """What importlib.metadata's EntryPoint offers cnnfast: name, value, load()."""

    def __init__(self, name, value, load):
        self.name, self.value, self._load = name, value, load

    def load(self):
        return self._load()


@pytest.fixture
def plugins(monkeypatch):
    """Fake installed distributions: ``plugins.append(point)``; entry points not loaded yet."""
    points, asked = [], []

    def entry_points(**kwargs):
        asked.append(kwargs)
        return [p for p in points if kwargs.get("group") == backends.ENTRY_POINT_GROUP]
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(backends, "_PLUGINS_LOADED", False)
    yield points
    monkeypatch.setattr(backends, "_PLUGINS_LOADED", True)
    for name in ("plugged", "plugged-too"):
        if name in backends._REGISTRY:
            backends.unregister(name)


def _register_plugged():
    backends.register("plugged", Recorder(), ("cpu",))


def _broken():
    raise ImportError("No module named 'cnnfast_broken_kernels'")


def test_an_entry_point_registers_its_backend_when_its_name_is_first_asked_for(plugins):
    loads = []
    plugins.append(_Point("plugged", "plugged_pkg:register_backends",
                          lambda: loads.append(1) or _register_plugged))
    assert not loads                                  # nothing at import or registration time
    x, w = torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3)
    torch.testing.assert_close(cf.conv2d(x, w, backend="plugged"), F.conv2d(x, w), atol=1e-5, rtol=1e-4)
    assert "plugged" in backends.names() and "plugged" in backends.available("cpu")
    assert loads == [1]                               # loaded once


def test_a_broken_plugin_warns_once_naming_it_and_breaks_nothing(plugins):
    plugins.append(_Point("broken-kernels", "cnnfast_broken_kernels:register", _broken))
    plugins.append(_Point("not-a-function", "pkg:LAUNCHERS", lambda: 3))
    plugins.append(_Point("plugged", "plugged_pkg:register_backends", lambda: _register_plugged))
    with pytest.warns(RuntimeWarning) as caught:
        names = backends.available("cpu")
    messages = [str(w.message) for w in caught]
    assert any("plugin 'broken-kernels' (cnnfast_broken_kernels:register) failed to load" in m
               and "No module named 'cnnfast_broken_kernels'" in m for m in messages), messages
    assert any("plugin 'not-a-function'" in m and "not a function that registers backends" in m
               for m in messages), messages
    assert len(messages) == 2
    assert "plugged" in names and names[-1] == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backends.names()                              # loaded once: no second warning


def test_the_default_may_name_a_backend_a_plugin_registers_later(plugins, monkeypatch):
    plugins.append(_Point("plugged", "plugged_pkg:register_backends", lambda: _register_plugged))
    monkeypatch.setattr(backends, "_default", "plugged")
    assert backends.resolve(None, "conv2d", torch.randn(1, 3, 8, 8)) == "plugged"
    monkeypatch.setattr(backends, "_default", "nowhere")
    with pytest.raises(ValueError, match=r"\$CNNFAST_BACKEND: unknown cnnfast backend 'nowhere'"):
        backends.default()


def test_import_does_not_load_plugins():
    import subprocess
    import sys
    code = ("import importlib.metadata as m; calls = []; real = m.entry_points\n"
            "m.entry_points = lambda **k: (k.get('group') == 'cnnfast.backends' and calls.append(k)) or real(**k)\n"
            "import cnnfast, torch; cnnfast.functional.conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3), "
            "backend='torch'); print(len(calls))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_argparse_type_names_the_known_backends():
    from cnnfast.train.options import _backend
    with pytest.raises(argparse.ArgumentTypeError, match="unknown cnnfast backend 'nope'.*'triton'"):
        _backend("nope")


def test_bench_says_why_a_provider_is_left_out(registered):
    from cnnfast.bench import runner
    registered("recorder", Recorder())
    cpu = torch.device("cpu")
    assert "unknown cnnfast backend 'nope'" in runner.why_not("cnnfast:nope", cpu)
    assert "runs on cpu tensors, not on a cuda tensor" in runner.why_not("cnnfast:recorder", torch.device("cuda"))
    assert "unknown provider 'fast'" in runner.why_not("fast", cpu)


def test_bench_and_micro_benchmarks_skip_the_ops_a_backend_lacks(registered):
    from cnnfast.bench import micro, ops, suites
    from cnnfast.bench.workload import Unavailable
    registered("forward-only", ForwardOnly())
    case = suites.micro_cases("cpu")[0]
    pool = next(c for c in suites.micro_cases("cpu") if c.op == "max_pool2d")
    with pytest.raises(Unavailable, match="backend 'forward-only' has no max_pool2d_forward"):
        ops.build(pool, torch.device("cpu")).make("cnnfast:forward-only")
    assert ops.build(case, torch.device("cpu")).make("cnnfast:forward-only") is not None
    ran = {(c.op, p) for c, p in micro.params("cpu")}
    assert ("conv2d", "cnnfast:forward-only") in ran and ("max_pool2d", "cnnfast:forward-only") not in ran


def test_a_backend_registered_by_import_path_loads_on_first_use(registered):
    registered("by-path", "cnnfast._stock", ("cpu",))
    assert backends._REGISTRY["by-path"].functions is None          # not imported yet
    x, w = torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3)
    torch.testing.assert_close(cf.conv2d(x, w, backend="by-path"), F.conv2d(x, w))
    registered("missing", "cnnfast_no_such_module:launchers", ("cpu",))
    with pytest.raises(RuntimeError, match="conv2d: backend 'missing': its launchers 'cnnfast_no_such_module:"
                                           "launchers' do not import .ModuleNotFoundError"):
        cf.conv2d(x, w, backend="missing")
    # It breaks nothing else: "auto" leaves it out, available() does not list it.
    assert "missing" not in backends.available("cpu")
    assert backends.resolve("auto", "conv2d", x) != "missing"
    torch.testing.assert_close(cf.conv2d(x, w, backend="auto"), F.conv2d(x, w), atol=1e-5, rtol=1e-4)
