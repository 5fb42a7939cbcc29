"""The tuner: the "torch" backend's launchers, choices made by a fake timer, candidates that disagree,
the cache on disk, where it must not tune, deterministic mode and the fused op's state."""
import contextlib
import json
import multiprocessing
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import cnnfast
import cnnfast.functional as cf
from cnnfast import _stock, backends, tune
from cnnfast.tune import cache, space

from conftest import assert_matches

HAS_CPU = "cpu" in backends.available("cpu")
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason="needs the extension's CPU kernels")


@pytest.fixture
def tuner(tmp_path, monkeypatch):
    """The tuner on, with an empty cache in ``tmp_path`` and a fake timer: ``speeds[backend]`` (or
    ``speeds[(backend, config)]``) seconds per call, 1.0 where not given; a whole call (a training
    call's plan, a confirmation's ``tune._whole(name)``) takes ``speeds[candidate]`` where given, else
    the timer knows no time for it. Yields the dict and the calls."""
    monkeypatch.setenv("CNNFAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tune, "_ENABLED", True)
    speeds, calls = {}, []

    def fake(fn, device, candidate):
        if candidate in (tune.STOCK_STEP, tune.CHOSEN_STEP) or candidate[1] == "whole call":
            return speeds.get(candidate, float("inf"))
        calls.append(candidate)
        return speeds.get(candidate, speeds.get(candidate[0], 1.0))
    monkeypatch.setattr(tune, "timer", fake)
    tune.clear()
    yield speeds, calls
    tune.clear()


def _directions():
    """The tuner's per-direction decisions (without the rows judging a call as a whole)."""
    return [d for d in tune.decisions() if d.launcher not in ("training call", "call")]


def _cpu_off_by_one_percent_in(monkeypatch, launcher):
    """The "cpu" backend's launchers, but ``launcher``'s result 1% off (a candidate that disagrees)."""
    cpu = backends.launchers("cpu")

    class Wrong:
        def __getattr__(self, name):
            fn = getattr(cpu, name)
            return (lambda *args, **kwargs: fn(*args, **kwargs) * 1.01) if name == launcher else fn
    monkeypatch.setitem(backends._LAUNCHERS, "cpu", Wrong())


def _backward_matches_float64(fn, inputs, y):
    """Run y's backward with a fresh gradient; y and every input's gradient agree with ``fn`` in float64."""
    grad = torch.randn_like(y)
    y.backward(grad)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    ref = fn(*ref_inputs)
    ref.backward(grad.double())
    assert_matches(y.detach(), ref.detach(), torch.float32)
    for t, r in zip(inputs, ref_inputs):
        assert_matches(t.grad, r.grad, torch.float32, what="gradient")
        t.grad = None


def _conv_inputs(grad=True, n=2, c=5, h=9, w=7, k=6):
    x = torch.randn(n, c, h, w, requires_grad=grad)
    weight = torch.randn(k, c, 3, 3, requires_grad=grad)
    bias = torch.randn(k, requires_grad=grad)
    return x, weight, bias


# --- the "torch" backend's launchers agree with the kernels' ------------------------------------------

@needs_cpu
@pytest.mark.parametrize("padding, stride", [((0, 0), 1), ((1, 2), 1), ((0, 0), 2), ((1, 2), 2), ("same", 1)])
def test_stock_conv2d_launchers_match_the_cpu_kernels(padding, stride):
    x = torch.randn(2, 4, 10, 9)
    weight = torch.randn(6, 4, 4, 3) if padding == "same" else torch.randn(6, 4, 3, 3)   # even: asymmetric
    stride_, pad, dilation, out = cf._conv_geometry(x, weight, None, stride, padding, 1, 1, "conv2d")
    cpu = backends.launchers("cpu")
    args = (stride_, pad, dilation, 1)
    for ours, theirs in [(_stock.conv2d_forward(x, weight, None, *args, out), cpu.conv2d_forward(x, weight, None,
                                                                                                   *args, out))]:
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    grad = torch.randn(2, 6, *out)
    torch.testing.assert_close(_stock.conv2d_input_grad(grad, weight, x.shape[2:], *args),
                               cpu.conv2d_input_grad(grad, weight, x.shape[2:], *args), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_stock.conv2d_weight_grad(x, grad, weight.shape, *args),
                               cpu.conv2d_weight_grad(x, grad, weight.shape, *args), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_stock.conv2d_bias_grad(grad), cpu.conv2d_bias_grad(grad), atol=1e-4, rtol=1e-4)


@needs_cpu
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_stock_max_pool2d_launchers_match_the_cpu_kernels(ceil_mode):
    x = torch.randn(2, 3, 11, 8)
    geometry = cf._pool_geometry(x.shape[2:], 3, 2, 1, 1, ceil_mode, 3, "max_pool2d")
    cpu = backends.launchers("cpu")
    out, idx = _stock.max_pool2d_forward(x, *geometry, with_indices=True)
    ref_out, ref_idx = cpu.max_pool2d_forward(x, *geometry, with_indices=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(idx, ref_idx)
    grad = torch.randn_like(out)
    torch.testing.assert_close(_stock.max_pool2d_backward(grad, idx, x.shape[2:], *geometry[:4]),
                               cpu.max_pool2d_backward(grad, idx, x.shape[2:], *geometry[:4]))


@needs_cpu
@pytest.mark.parametrize("pool", [dict(pool_kernel_size=2), dict(pool_kernel_size=3, pool_stride=2, pool_padding=1)])
def test_stock_fused_launchers_share_the_kernels_state(pool):
    """pos means the same on both: each backward reads the other's forward state and agrees."""
    x, weight, bias = _conv_inputs(grad=False, h=12, w=11)
    stride, pad, dilation, conv_out = cf._conv_geometry(x, weight, bias, 1, 1, 1, 1, "fused")
    pk, ps, pp, pd, out_size = cf._pool_geometry(conv_out, pool["pool_kernel_size"], pool.get("pool_stride"),
                                                 pool.get("pool_padding", 0), 1, False, 6, "fused")
    geometry = (stride, pad, dilation, 1, conv_out, pk, ps, pp, pd)
    cpu = backends.launchers("cpu")
    out, pos = _stock.conv_relu_maxpool2d_forward(x, weight, bias, *geometry, out_size, with_pos=True)
    ref_out, ref_pos = cpu.conv_relu_maxpool2d_forward(x, weight, bias, *geometry, out_size, with_pos=True)
    torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=1e-4)
    assert torch.equal(pos, ref_pos)
    grad = torch.randn_like(out)
    for a, b in zip(_stock.conv_relu_maxpool2d_backward(grad, x, weight, ref_pos, *geometry),
                    cpu.conv_relu_maxpool2d_backward(grad, x, weight, pos, *geometry)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# --- choices ------------------------------------------------------------------------------------------

@needs_cpu
@pytest.mark.parametrize("cpu_time, expected", [(0.5, "cpu"), (0.99, "torch"), (2.0, "torch")])
def test_auto_keeps_stock_unless_a_kernel_wins_by_the_margin(tuner, cpu_time, expected):
    speeds, _ = tuner
    speeds["cpu"] = cpu_time
    x, weight, bias = _conv_inputs()
    y = cf.conv2d(x, weight, bias, padding=1, backend="auto")
    chosen = {d.launcher: d.backend for d in _directions()}
    assert chosen == dict.fromkeys(["conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad"],
                                   expected)
    # Stock chosen everywhere: the call is stock PyTorch's own (its autograd node), else cnnfast's.
    assert ("Convolution" in type(y.grad_fn).__name__) == (expected == "torch")
    _backward_matches_float64(lambda a, b, c: F.conv2d(a, b, c, padding=1), (x, weight, bias), y)


@needs_cpu
def test_each_direction_is_its_own_choice(tuner):
    speeds, _ = tuner
    speeds["cpu"] = 2.0
    x, weight, bias = _conv_inputs()

    def fake(fn, device, candidate, _real=tune.timer):
        # cpu is fast only for the weight gradient: the forward and input gradient stay stock.
        return 0.5 if candidate[0] == "cpu" and _launcher[0] == "conv2d_weight_grad" else _real(fn, device, candidate)
    _launcher = [None]
    decide = tune._decide

    def spy(launcher, *args):
        _launcher[0] = launcher
        return decide(launcher, *args)
    import unittest.mock as mock
    with mock.patch.object(tune, "timer", fake), mock.patch.object(tune, "_decide", spy):
        y = cf.conv2d(x, weight, bias, padding=1, backend="auto")
    chosen = {d.launcher: d.backend for d in _directions()}
    assert chosen["conv2d_weight_grad"] == "cpu" and chosen["conv2d_forward"] == "torch"
    _backward_matches_float64(lambda a, b, c: F.conv2d(a, b, c, padding=1), (x, weight, bias), y)


@needs_cpu
def test_a_training_call_leaves_stock_only_for_a_clear_win_in_total(tuner):
    """cpu wins the forward alone by 5% (over MARGIN): chosen for that direction, but the call's
    total gains 1.25% (under PLAN_MARGIN), so the call runs stock PyTorch's own autograd."""
    speeds, _ = tuner
    x, weight, bias = _conv_inputs()
    real = tune.timer

    def fake(fn, device, candidate):
        return 0.95 if candidate[0] == "cpu" and current[0] == "conv2d_forward" else 2.0 if candidate[0] == "cpu" \
            else real(fn, device, candidate)
    current = [None]
    decide = tune._decide

    def spy(launcher, *args):
        current[0] = launcher
        return decide(launcher, *args)
    import unittest.mock as mock
    with mock.patch.object(tune, "timer", fake), mock.patch.object(tune, "_decide", spy):
        y = cf.conv2d(x, weight, bias, padding=1, backend="auto")
    assert {d.launcher: d.backend for d in _directions()}["conv2d_forward"] == "cpu"
    assert "Convolution" in type(y.grad_fn).__name__
    _backward_matches_float64(lambda a, b, c: F.conv2d(a, b, c, padding=1), (x, weight, bias), y)


@needs_cpu
@pytest.mark.parametrize("stock_step, chosen_step, expected", [(2.0, None, "torch"), (3.5, None, "cpu"),
                                                               (3.5, 3.6, "torch"), (3.5, 3.0, "cpu")])
def test_a_training_call_is_judged_whole_against_stock_pytorchs(tuner, stock_step, chosen_step, expected):
    """cpu beats stock by 20% in each of the four directions (3.2 s against 4 s); stock PyTorch's own
    forward and single backward call take ``stock_step``, the call on the choices ``chosen_step`` (the
    directions' sum where None): the call leaves stock only if it wins by PLAN_MARGIN."""
    speeds, _ = tuner
    speeds["cpu"], speeds[tune.STOCK_STEP] = 0.8, stock_step
    if chosen_step is not None:
        speeds[tune.CHOSEN_STEP] = chosen_step
    x, weight, bias = _conv_inputs()
    y = cf.conv2d(x, weight, bias, padding=1, backend="auto")
    *directions, plan = tune.decisions()
    assert {d.backend for d in directions} == {"cpu"} and len(directions) == 4
    assert (plan.launcher, plan.backend, plan.source) == ("training call", "torch" if expected == "torch" else
                                                          "as chosen", "plan")
    chosen = 3.2 if chosen_step is None else chosen_step
    assert (plan.seconds, plan.stock_seconds) == pytest.approx((chosen if expected == "cpu" else stock_step,
                                                                stock_step))
    assert ("Convolution" in type(y.grad_fn).__name__) == (expected == "torch")
    assert x.grad is None and weight.grad is None   # timing the training calls left the inputs alone
    _backward_matches_float64(lambda a, b, c: F.conv2d(a, b, c, padding=1), (x, weight, bias), y)


def _confirmations():
    return [d for d in tune.decisions() if d.source == "confirmed"]


@needs_cpu
@pytest.mark.parametrize("whole, expected", [
    ({"torch": 1.0, "auto": 0.5, "cpu": 0.6}, "auto"),     # the choices stand
    ({"torch": 1.0, "auto": 0.99}, "torch"),               # no clear win in the program's own state: stock
])
def test_a_calls_judgement_is_confirmed_by_whole_calls_after_it_has_run_a_few_times(tuner, whole, expected):
    """cpu wins every direction (a provisional "auto" call); CONFIRM_AFTER calls later the call is
    timed whole on stock PyTorch and on the choices (all cpu), and the faster stands (stock unless
    beaten by PLAN_MARGIN); then nothing is timed again."""
    speeds, calls = tuner
    speeds["cpu"] = 0.5
    speeds.update({tune._whole(n): t for n, t in whole.items()})
    x, weight, bias = _conv_inputs()
    ref = lambda a, b, c: F.conv2d(a, b, c, padding=1)  # noqa: E731
    for _ in range(tune.CONFIRM_AFTER):
        y = cf.conv2d(x, weight, bias, padding=1, backend="auto")
        assert not _confirmations() and "Convolution" not in type(y.grad_fn).__name__
    y = cf.conv2d(x, weight, bias, padding=1, backend="auto")
    (d,) = _confirmations()
    assert (d.launcher, d.backend) == ("training call", "as chosen" if expected == "auto" else expected)
    assert (d.seconds, d.stock_seconds) == (whole[expected], 1.0)
    timed = len(calls)
    for _ in range(3):
        y = cf.conv2d(x, weight, bias, padding=1, backend="auto")
    assert len(calls) == timed and len(_confirmations()) == 1
    assert ("Convolution" in type(y.grad_fn).__name__) == (expected == "torch")
    assert x.grad is None and weight.grad is None   # timing whole calls left the inputs alone
    _backward_matches_float64(ref, (x, weight, bias), y)


@needs_cpu
def test_a_kernel_backend_can_win_a_call_whole_over_the_choices_per_direction(tuner, monkeypatch):
    """cpu wins only the weight gradient, so the choices mix stock PyTorch and cpu; timed whole, cpu
    for every direction beats both."""
    speeds, _ = tuner
    speeds.update({tune._whole("torch"): 1.0, tune._whole("auto"): 0.9, tune._whole("cpu"): 0.4})
    current, decide, real = [None], tune._decide, tune.timer

    def spy(launcher, *args):
        current[0] = launcher
        return decide(launcher, *args)
    monkeypatch.setattr(tune, "_decide", spy)
    monkeypatch.setattr(tune, "timer", lambda fn, device, candidate: (
        0.5 if candidate == ("cpu", None) and current[0] == "conv2d_weight_grad" else 2.0 if candidate == ("cpu", None)
        else real(fn, device, candidate)))
    x, weight, bias = _conv_inputs()
    for _ in range(tune.CONFIRM_AFTER + 1):
        y = cf.conv2d(x, weight, bias, padding=1, backend="auto")
    assert {d.launcher: d.backend for d in _directions()}["conv2d_weight_grad"] == "cpu"
    assert {d.launcher: d.backend for d in _directions()}["conv2d_forward"] == "torch"
    (d,) = _confirmations()
    assert (d.backend, d.seconds, d.stock_seconds, d.kernel_seconds) == ("cpu", 0.4, 1.0, 0.4)
    assert "Convolution" not in type(y.grad_fn).__name__
    _backward_matches_float64(lambda a, b, c: F.conv2d(a, b, c, padding=1), (x, weight, bias), y)


@needs_cpu
def test_a_forward_only_call_kept_on_stock_moves_to_a_kernel_that_wins_it_whole(tuner):
    """Without gradients the call is its forward: judged stock at first (cpu's forward no faster),
    it moves to cpu when the whole call, timed later, says so."""
    speeds, _ = tuner
    speeds.update({tune._whole("torch"): 1.0, tune._whole("cpu"): 0.5})
    x, weight, bias = _conv_inputs(grad=False)
    for _ in range(tune.CONFIRM_AFTER + 1):
        y = cf.conv2d(x, weight, bias, backend="auto")
    (d,) = _confirmations()
    assert (d.launcher, d.backend, d.seconds) == ("call", "cpu", 0.5)
    assert [c.backend for c in _directions()] == ["torch"]
    torch.testing.assert_close(cf.conv2d(x, weight, bias, backend="auto"), F.conv2d(x, weight, bias))


@needs_cpu
def test_a_backend_that_disagreed_in_one_direction_never_runs_the_whole_call(tuner, monkeypatch):
    speeds, _ = tuner
    speeds.update({"cpu": 2.0, tune._whole("torch"): 1.0, tune._whole("cpu"): 0.1})
    _cpu_off_by_one_percent_in(monkeypatch, "conv2d_weight_grad")
    x, weight, bias = _conv_inputs()
    with pytest.warns(RuntimeWarning, match="conv2d_weight_grad on backend 'cpu' disagrees"):
        for _ in range(tune.CONFIRM_AFTER + 1):
            y = cf.conv2d(x, weight, bias, padding=1, backend="auto")
    assert not _confirmations()            # stock was the only whole-call candidate left
    assert "Convolution" in type(y.grad_fn).__name__


# --- the shortcut: a call judged for stock PyTorch goes to it first thing ------------------------------

def _full_calls(monkeypatch):
    """A counter of the front end's calls that took the full path (every op's starts with ``_batched``)."""
    count, real = [0], cf._batched

    def spy(*args):
        count[0] += 1
        return real(*args)
    monkeypatch.setattr(cf, "_batched", spy)
    return count


def _shortcut_cases():
    """(op in cnnfast.functional, the same call in stock PyTorch, inputs maker) per op."""
    conv = lambda f, a, b, c: f.conv2d(a, b, c, 1, 1)  # noqa: E731
    fused = lambda a, b, c: F.max_pool2d(F.relu(F.conv2d(a, b, c, 1, 1)), 2)  # noqa: E731
    return {
        "conv2d": (lambda a, b, c, **kw: cf.conv2d(a, b, c, 1, 1, **kw), lambda a, b, c: conv(F, a, b, c),
                   lambda grad: _conv_inputs(grad)),
        "max_pool2d": (lambda a, **kw: cf.max_pool2d(a, 3, 2, 1, return_indices=True, **kw),
                       lambda a: F.max_pool2d(a, 3, 2, 1, return_indices=True),
                       lambda grad: (torch.randn(2, 5, 9, 7, requires_grad=grad),)),
        "conv_relu_maxpool2d": (lambda a, b, c, **kw: cf.conv_relu_maxpool2d(a, b, c, 1, 1, **kw), fused,
                                lambda grad: _conv_inputs(grad, h=12, w=12)),
    }


@needs_cpu
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("op", ["conv2d", "max_pool2d", "conv_relu_maxpool2d"])
def test_a_call_confirmed_for_stock_pytorch_goes_to_it_without_the_full_path(tuner, monkeypatch, op, grad):
    """cpu slower in every direction: stock PyTorch is chosen, and once the judgement is confirmed
    the front end hands the call to stock PyTorch before any of its own work; the result is stock
    PyTorch's, bit for bit, with its autograd graph."""
    speeds, calls = tuner
    speeds["cpu"] = 2.0
    ours, stock, make = _shortcut_cases()[op]
    inputs = make(grad)
    full = _full_calls(monkeypatch)
    judged = tune.CONFIRM_AFTER + 2       # judged, confirmed CONFIRM_AFTER calls later, entered at the next
    for _ in range(judged):
        ours(*inputs, backend="auto")
    assert full[0] == judged and len(tune.STOCK_CALLS) == 1
    timed = len(calls)
    for _ in range(3):
        out = ours(*inputs, backend="auto")
    assert full[0] == judged and len(calls) == timed
    out, ref = (out, stock(*inputs)) if isinstance(out, tuple) else ((out,), (stock(*inputs),))
    for o, r in zip(out, ref):
        assert torch.equal(o, r)
    if grad:
        assert type(out[0].grad_fn) is type(ref[0].grad_fn)


@needs_cpu
def test_the_shortcut_is_taken_only_for_the_call_that_was_judged(tuner, monkeypatch):
    """Every argument and setting the judgement read is in the key: a call that differs in one of them
    takes the full path (its checks, its own judgement), and clearing the choices empties the shortcut."""
    speeds, _ = tuner
    speeds["cpu"] = 2.0
    x, weight, bias = _conv_inputs()
    full = _full_calls(monkeypatch)
    # Judged at the first call, confirmed CONFIRM_AFTER calls later, entered at the next: the rest
    # take the shortcut.
    judged, runs = tune.CONFIRM_AFTER + 2, tune.CONFIRM_AFTER + 4

    def full_path(fn):
        before = full[0]
        for _ in range(runs):
            fn()
        return full[0] - before

    def call(a=x, w=weight, b=bias, padding=1):
        return cf.conv2d(a, w, b, 1, padding, backend="auto")
    assert full_path(call) == judged
    assert full_path(call) == 0
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()

    def on_stock_by_default():
        with backends.use("torch"):
            return cf.conv2d(x, weight, bias, 1, 1)
    variants = {
        "grad mode": (lambda: torch.no_grad()(call)(), judged),
        "batch": (lambda: call(x[:1]), judged),
        "strides": (lambda: call(x_cl), judged),
        "requires_grad": (lambda: call(w=weight.detach()), judged),
        "no bias": (lambda: call(b=None), judged),
        "padding": (lambda: call(padding=(1, 0)), judged),
        "float64": (lambda: call(x.double(), weight.double(), bias.double()), 1),   # stock anyway: entered at once
        "deterministic": (lambda: _deterministic()(call)(), judged),
        "default backend": (on_stock_by_default, 1),
        "a list (no key)": (lambda: call(padding=[1, 1]), runs),
        "autocast": (lambda: torch.autocast("cpu", dtype=torch.bfloat16)(call)(), runs),
    }
    for name, (fn, expected) in variants.items():
        assert full_path(fn) == expected, name
    assert full_path(call) == 0
    with pytest.raises(ValueError, match="expected bias to be 1-dimensional with 6 elements"):
        call(b=bias[:-1])                                 # a shape never judged is checked
    with pytest.raises(TypeError, match="padding must be an int or a tuple of two ints"):
        call(padding=1.5)                                 # a value never judged is checked
    # Forgetting the choices empties the shortcut; enable() empties it too, and the call, still
    # judged, is entered again at its next call.
    for forget, expected in ((tune.clear, judged), (lambda: tune.enable(True), 1)):
        forget()
        assert not tune.STOCK_CALLS
        assert full_path(call) == expected


class _deterministic(contextlib.ContextDecorator):
    def __enter__(self):
        self._previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self._previous)
        return False


@needs_cpu
def test_the_shortcut_is_not_taken_inside_a_labelled_layer(tuner, monkeypatch):
    """``cnnfast tune`` lists every labelled call's choices, so a labelled call takes the full path."""
    speeds, _ = tuner
    speeds["cpu"] = 2.0
    x, weight, bias = _conv_inputs()
    full = _full_calls(monkeypatch)
    for _ in range(tune.CONFIRM_AFTER + 2):
        cf.conv2d(x, weight, bias, backend="auto")
    before, listed = full[0], len(tune.decisions())
    with tune.layer("conv"):
        cf.conv2d(x, weight, bias, backend="auto")
    assert full[0] == before + 1 and len(tune.decisions()) > listed


@needs_cpu
def test_a_choice_is_made_once_then_looked_up(tuner):
    speeds, calls = tuner
    speeds["cpu"] = 0.5
    x = torch.randn(2, 3, 8, 8)
    for _ in range(3):
        cf.max_pool2d(x, 2, backend="auto")
    assert len(calls) == 2 * tune.CPU_RUNS     # stock and cpu, each once per round, then never again
    assert [d.source for d in tune.decisions()] == ["measured"]   # no confirmation: the fake knows no whole call


@needs_cpu
def test_a_candidate_that_disagrees_is_never_chosen_and_named_once(tuner, monkeypatch):
    speeds, _ = tuner
    speeds["cpu"] = 0.01
    _cpu_off_by_one_percent_in(monkeypatch, "conv2d_forward")
    x, weight, bias = _conv_inputs(grad=False)
    with pytest.warns(RuntimeWarning, match=r"conv2d_forward on backend 'cpu' disagrees with stock PyTorch on "
                                            r"float32\[2, 5, 9, 7\].*relative error"):
        y = cf.conv2d(x, weight, bias, backend="auto")
    torch.testing.assert_close(y, F.conv2d(x, weight, bias))
    assert tune.decisions()[-1].backend == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cf.conv2d(torch.randn(3, 5, 9, 7), weight, bias, backend="auto")   # a new case: no second warning


@needs_cpu
def test_deterministic_mode_runs_only_deterministic_candidates(tuner, monkeypatch):
    speeds, calls = tuner
    speeds["cpu"] = 0.01
    cpu = backends.launchers("cpu")
    monkeypatch.setattr(cpu, "NONDETERMINISTIC", ("conv2d_forward",), raising=False)
    x, weight, bias = _conv_inputs(grad=False)
    torch.use_deterministic_algorithms(True)
    try:
        cf.conv2d(x, weight, bias, backend="auto")
    finally:
        torch.use_deterministic_algorithms(False)
    assert ("cpu", None) not in calls and tune.decisions()[-1].backend == "torch"
    cf.conv2d(x, weight, bias, backend="auto")       # another case: the key holds the mode
    assert tune.decisions()[-1].backend == "cpu"


@needs_cpu
def test_fused_backward_candidates_read_the_forward_state(tuner, monkeypatch):
    x, weight, bias = _conv_inputs(grad=False)
    args = (torch.randn(2, 6, 3, 2), x, weight, torch.zeros(2, 6, 3, 2, dtype=torch.int8))
    names = lambda state: [c[0] for c in space.candidates("conv_relu_maxpool2d_backward", "auto",  # noqa: E731
                                                          torch.device("cpu"), args, {}, state)]
    assert names("pos") == ["cpu", "torch"]
    monkeypatch.setattr(backends.launchers("cpu"), "FUSED_STATE", "other", raising=False)
    assert names("pos") == ["torch"] and names("other") == ["cpu"]


@needs_cpu
def test_fused_op_under_auto_matches_reference_whatever_is_chosen(tuner):
    speeds, _ = tuner
    x, weight, bias = _conv_inputs(h=12, w=12)
    for cpu_time in (0.5, 2.0):
        tune.clear()
        speeds["cpu"] = cpu_time
        y = cf.conv_relu_maxpool2d(x, weight, bias, padding=1, backend="auto")
        ref = lambda a, b, c: F.max_pool2d(F.relu(F.conv2d(a, b, c, padding=1)), 2)  # noqa: E731
        _backward_matches_float64(ref, (x, weight, bias), y)


# --- the cache ----------------------------------------------------------------------------------------

@needs_cpu
def test_choices_are_read_back_from_disk_without_measuring(tuner):
    speeds, calls = tuner
    speeds["cpu"] = 0.5
    x = torch.randn(2, 3, 8, 8)
    cf.max_pool2d(x, 2, backend="auto")
    tune.clear()                      # a new process: nothing in memory
    calls.clear()
    cf.max_pool2d(x, 2, backend="auto")
    assert calls == [] and [(d.source, d.backend) for d in tune.decisions()] == [("cache", "cpu")]


@needs_cpu
@pytest.mark.parametrize("content", ["{not json", json.dumps({"env": {"device": "elsewhere"}, "entries": {}}), "[]"])
def test_a_corrupt_or_foreign_cache_file_is_ignored_with_one_warning(tuner, content):
    speeds, _ = tuner
    f = tune._file(torch.device("cpu"))
    f.path.parent.mkdir(parents=True, exist_ok=True)
    f.path.write_text(content)
    tune.clear()
    with pytest.warns(RuntimeWarning, match="ignoring the cache file"):
        cf.max_pool2d(torch.randn(2, 3, 8, 8), 2, backend="auto")
        cf.max_pool2d(torch.randn(2, 3, 6, 6), 2, backend="auto")
    data = json.loads(f.path.read_text())          # rewritten whole by the next choice
    assert len(data["entries"]) == 2


def _writer(directory, env, worker, count):
    f = cache.File(env, root=directory)
    for i in range(count):
        f.put(f"worker{worker}-{i}", dict(backend="cpu", config=None))


def test_concurrent_writers_neither_corrupt_the_file_nor_lose_entries(tmp_path):
    env = dict(format=cache.FORMAT, device="test", threads=1)
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(tmp_path, env, w, 25)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    entries = json.loads(cache.File(env, root=tmp_path).path.read_text())["entries"]
    assert sorted(entries) == sorted(f"worker{w}-{i}" for w in range(4) for i in range(25))


# --- where it must not tune ---------------------------------------------------------------------------

@needs_cpu
def test_no_tuning_on_fake_tensors_or_with_tuning_off(tuner, monkeypatch):
    _, calls = tuner
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x, weight, _ = _conv_inputs(grad=False)
        y = cf.conv2d(x, weight, backend="auto")
    assert y.shape == (2, 6, 7, 5) and calls == []
    monkeypatch.setattr(tune, "_ENABLED", False)
    assert backends.resolve("auto", "conv2d", torch.randn(1)) == "cpu"      # the heuristic, unmeasured
    cf.conv2d(torch.randn(2, 5, 9, 7), torch.randn(6, 5, 3, 3), backend="auto")
    assert calls == []


@needs_cpu
def test_compiled_converted_model_has_no_graph_break_and_tunes_only_when_run(tuner):
    _, calls = tuner
    model = cnnfast.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                                torch.nn.Conv2d(4, 5, 3)), backend="auto")
    x = torch.randn(2, 3, 12, 12)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)            # traced without measuring; the custom ops measure when the graph runs
    assert all(d.source in ("measured", "plan") for d in tune.decisions()) and calls
    torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)


@needs_cpu
def test_cnnfast_tune_prints_the_table_and_manages_the_cache(tmp_path):
    env = {**__import__("os").environ, "CNNFAST_CACHE_DIR": str(tmp_path), "CNNFAST_TUNE": "1"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "cnnfast.cli", "tune", *a], env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    out = run("--model", "net", "--batch", "8")
    assert out.returncode == 0, out.stderr
    assert "conv_relu_maxpool2d_forward" in out.stdout and "conv_relu_maxpool2d_backward" in out.stdout
    assert "stock/chosen" in out.stdout
    shown = run("--show")
    assert shown.returncode == 0 and "1 file(s)" in shown.stdout
    cleared = run("--clear")
    assert cleared.returncode == 0 and "deleted 1 cache file" in cleared.stdout
    assert not list((tmp_path / "tune").glob("*.json"))


@pytest.mark.skipif("triton" not in backends.available("cpu"), reason="needs triton (the interpreter on CPU)")
def test_a_named_backend_tunes_among_its_own_configs(tuner, monkeypatch):
    """Under "triton" the candidates are its configs (stock PyTorch is only the reference): the
    fastest by the (fake) timer wins, even when stock PyTorch is faster."""
    speeds, calls = tuner
    speeds.update({("triton", 0): 2.0, ("triton", 1): 1.5, "torch": 0.1})
    monkeypatch.setattr(tune, "_slow", lambda requested, device: False)   # the interpreter is timed here
    x = torch.randn(2, 3, 9, 9)
    geometry = cf._pool_geometry(x.shape[2:], 3, 2, 1, 1, False, 3, "max_pool2d")
    out, idx = tune.call("triton", "max_pool2d_forward", x, *geometry, with_indices=True, channels_last=False)
    ref_out, ref_idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    torch.testing.assert_close(out, ref_out)
    assert torch.equal(idx, ref_idx)
    d = tune.decisions()[-1]
    assert (d.backend, d.config, d.source) == ("triton", 1, "measured") and d.stock_seconds == 0.1
    assert {c for c in calls} == {("triton", 0), ("triton", 1), ("torch", None)}


@pytest.mark.skipif("triton" not in backends.available("cpu"), reason="needs triton (the interpreter on CPU)")
def test_a_config_saved_under_other_config_lists_is_measured_again(tuner, monkeypatch):
    """A choice of config on disk names an index into the backend's config lists: read back under the
    lists it was saved with (CONFIG_DIGEST), measured again once they changed."""
    import cnnfast.kernels as kernels
    speeds, calls = tuner
    speeds.update({("triton", 0): 2.0, ("triton", 1): 1.5, "torch": 0.1})
    monkeypatch.setattr(tune, "_slow", lambda requested, device: False)   # the interpreter is timed here
    x = torch.randn(2, 3, 9, 9)
    geometry = cf._pool_geometry(x.shape[2:], 3, 2, 1, 1, False, 3, "max_pool2d")
    run = lambda: tune.call("triton", "max_pool2d_forward", x, *geometry, with_indices=True, channels_last=False)  # noqa: E731
    run()
    for digest, source in ((kernels.CONFIG_DIGEST, "cache"), ("another list", "measured")):
        monkeypatch.setattr(kernels, "CONFIG_DIGEST", digest)
        tune._forget_choices()            # a new process: nothing in memory
        calls.clear()
        run()
        d = tune.decisions()[-1]
        assert (d.backend, d.config, d.source) == ("triton", 1, source)
        assert bool(calls) == (source == "measured")


@pytest.mark.skipif("triton" not in backends.available("cpu"), reason="needs triton (the interpreter on CPU)")
@pytest.mark.parametrize("launcher", ["conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad",
                                      "max_pool2d_forward", "max_pool2d_backward", "conv_relu_maxpool2d_forward",
                                      "conv_relu_maxpool2d_backward"])
def test_every_triton_launcher_has_a_config_space(launcher):
    from cnnfast.kernels import conv_relu_maxpool2d as fused
    from cnnfast.kernels.conv2d import configs
    x, weight, _ = _conv_inputs(grad=False)
    args = (x, weight, None, (1, 1), (0, 0), (1, 1), 1, (7, 5))
    found = space._triton_configs(launcher, args, {})
    lists = {"conv2d_forward": configs.FORWARD_CONFIGS, "conv_relu_maxpool2d_forward": fused.CONFIGS}
    if launcher == "conv_relu_maxpool2d_backward":
        assert found == [None]       # its gradient kernels pick their own configs
    else:
        assert found and all(isinstance(i, int) for i in found)
        if launcher in lists:        # the small-reduction direct / FMA paths are candidates here; not the
            # taps forward, which serves at least 32 channels per group, nor the few-channels one, which
            # serves tensor cores (float32 only with TF32) and at least 32 output channels
            expected = [i for i, c in enumerate(lists[launcher]) if c.get("kind") not in ("taps", "few")]
            assert found == expected


@pytest.mark.skipif("triton" not in backends.available("cpu"), reason="needs triton (the interpreter on CPU)")
def test_the_taps_forward_is_a_candidate_exactly_for_wide_channel_counts_on_tensor_cores():
    from cnnfast.kernels.conv2d import configs
    taps = {i for i, c in enumerate(configs.FORWARD_CONFIGS) if c["kind"] == "taps"}
    fp32_taps = {i for i in taps if configs.FORWARD_CONFIGS[i]["FP32"] is not None}
    cl = torch.channels_last

    def candidates(dtype, channels_last, channels, allow_tf32=False):
        x = torch.randn(2, channels, 6, 6, dtype=dtype)
        w = torch.randn(64, channels, 3, 3, dtype=dtype)
        if channels_last:
            x, w = x.to(memory_format=cl), w.to(memory_format=cl)
        args = (x, w, None, (1, 1), (1, 1), (1, 1), 1, (6, 6))
        return set(space._triton_configs("conv2d_forward", args, {"allow_tf32": allow_tf32})) & taps

    assert candidates(torch.bfloat16, True, 64) == taps
    assert candidates(torch.float16, True, 32) == taps
    assert candidates(torch.float32, True, 64, allow_tf32=True) == fp32_taps
    assert candidates(torch.float32, True, 64) == set()      # exact float32: FMAs, not tensor cores
    assert candidates(torch.bfloat16, False, 64) == taps     # NCHW: read through a channels_last copy
    assert candidates(torch.bfloat16, True, 16) == set()     # too few channels for a channel block


@pytest.mark.skipif("triton" not in backends.available("cpu"), reason="needs triton (the interpreter on CPU)")
def test_the_taps_gradients_are_candidates_only_where_they_serve():
    from cnnfast.kernels.conv2d import configs
    cl = torch.channels_last

    def taps(launcher, dtype, stride=(1, 1), channels_last=True, dilation=(1, 1)):
        dy = torch.randn(2, 64, 6, 6, dtype=dtype)
        x = torch.randn(2, 64, 6 * stride[0], 6 * stride[1], dtype=dtype)
        if channels_last:
            dy, x = dy.to(memory_format=cl), x.to(memory_format=cl)
        w = torch.randn(64, 64, 3, 3, dtype=dtype).to(memory_format=cl)
        if launcher == "conv2d_input_grad":
            args, table = (dy, w, tuple(x.shape[2:]), stride, (1, 1), dilation, 1), configs.INPUT_GRAD_CONFIGS
        else:
            args, table = (x, dy, tuple(w.shape), stride, (1, 1), (1, 1), 1), configs.WEIGHT_GRAD_CONFIGS
        found = space._triton_configs(launcher, args, {"allow_tf32": True})
        return {i for i in found if table[i]["kind"] == "taps"}

    assert taps("conv2d_input_grad", torch.bfloat16)
    assert taps("conv2d_input_grad", torch.bfloat16, stride=(2, 2))       # by phases
    assert taps("conv2d_input_grad", torch.bfloat16, stride=(2, 1), dilation=(1, 2))
    # stride and dilation above 1 along one axis: the taps kernel would multiply the zeros between
    assert not taps("conv2d_input_grad", torch.bfloat16, stride=(2, 2), dilation=(2, 1))
    assert taps("conv2d_input_grad", torch.float32)                       # TF32
    assert taps("conv2d_weight_grad", torch.bfloat16)
    assert not taps("conv2d_weight_grad", torch.float32)                  # TF32 wgmma wants pixels contiguous
    assert taps("conv2d_weight_grad", torch.bfloat16, channels_last=False)   # read channels_last


def test_the_tune_tables_total_counts_a_calls_last_whole_call_row_instead_of_its_directions():
    from cnnfast.tune.cli import _totals
    D = tune.Decision
    rows = [D("conv2d_forward", "auto", "c", "cpu", None, 1.0, 2.0, "measured", "a"),
            D("conv2d_input_grad", "auto", "g", "cpu", None, 1.0, 2.0, "measured", "a"),
            D("training call", "auto", "c", "torch", None, 2.5, 2.5, "plan", "a", 2.0),
            D("conv2d_forward", "auto", "c", "cpu", None, 1.0, 3.0, "measured", "b")]
    assert _totals(rows) == (3.5, 5.5)
    # Two calls in one layer (the Net's two blocks), each confirmed later: each call's confirmation counts.
    rows += [D("conv_relu_maxpool2d_forward", "auto", "n1", "cpu", None, 1.0, 4.0, "measured", "net"),
             D("conv_relu_maxpool2d_backward", "auto", "n1b", "cpu", None, 1.0, 4.0, "measured", "net"),
             D("conv_relu_maxpool2d_forward", "auto", "n2", "cpu", None, 1.0, 2.0, "measured", "net"),
             D("training call", "auto", "n1", "as chosen", None, 3.0, 6.0, "confirmed", "net", 3.0),
             D("call", "auto", "n2", "torch", None, 2.0, 2.0, "confirmed", "net", 2.5)]
    assert _totals(rows) == (3.5 + 3.0 + 2.0, 5.5 + 6.0 + 2.0)
