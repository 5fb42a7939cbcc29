"""The measured choice: which backend and config runs each call, found by timing the candidates once.

A *case* is one launcher call (op and direction: ``conv2d_forward``, ``conv2d_input_grad``,
``conv2d_weight_grad``, ``conv2d_bias_grad``, ``max_pool2d_forward``/``_backward``, the fused op's
``conv_relu_maxpool2d_forward``/``_backward``) on one device, with its dtypes, layouts, shapes and
arguments. For a case never seen, the tuner

1. lists the candidates (``space.candidates``): under "auto" every backend that runs on the device,
   stock PyTorch included, each with its configs; under a named backend that backend's configs;
2. runs stock PyTorch on the call's own inputs, then each candidate, and drops (with one warning)
   every candidate whose result disagrees with stock PyTorch's;
3. times the rest (CUDA events on a GPU; a few runs, the fastest, on a CPU; a candidate far behind
   after its first run is not run again) and keeps the fastest, but keeps stock PyTorch unless a
   kernel beats it by ``MARGIN``, so noise cannot flip a choice back and forth;
4. remembers the choice in memory (a dict: the hot path's only cost) and on disk (``cache``).

Under "auto" a call (its forward, and its backward where gradients are wanted) is then judged whole
against stock PyTorch's, once at its first call and once more ``CONFIRM_AFTER`` calls later, when the
first calls' slowness has passed (``backend_for_call``).

It never tunes while ``torch.compile`` traces, inside CUDA-graph capture, on fake or meta tensors,
or with ``CNNFAST_TUNE=0``; there the choice already made (in memory or on disk) stands, else the
fixed heuristic: the named backend with its own config heuristic, or under "auto" the first
available kernel backend. The interpreted Triton backend and the CUDA emulator are never timed
(their speed means nothing). ``CNNFAST_TUNE_VERBOSE=1`` prints each decision.
"""
import dataclasses
import functools
import os
import sys
import time
import warnings
import weakref
from typing import Optional

import torch

from .. import backends
from .._outputs import FUSED_STATE
from . import cache, space

__all__ = ["enabled", "enable", "dispatch", "backend_for_call", "decisions", "clear", "layer", "Decision",
           "STOCK_CALLS"]

# A kernel must beat stock PyTorch by this fraction of its time to be chosen over it; a training call
# (forward and gradients) leaves stock PyTorch only if its choices together beat stock PyTorch's own
# training call (forward and its one backward call, timed as such) by PLAN_MARGIN.
MARGIN = 0.03
PLAN_MARGIN = 0.03
# CPU timing: this many alternating rounds of one call per candidate; a candidate whose first call took
# over PRUNE times the fastest first call is not run again. GPU: the median of GPU_RUNS timed calls.
CPU_RUNS = 5
PRUNE = 1.5
GPU_RUNS = 10
# A call's first judgement is provisional: the first calls of a shape are slow and unsteady (oneDNN
# builds its primitives; the allocator's thresholds have yet to adapt, so fresh pages fault), so
# CONFIRM_AFTER calls later its candidates are timed again as whole calls, in the state the program
# runs in from then on, and the faster stands (``backend_for_call``).
CONFIRM_AFTER = 3


_ENABLED = os.environ.get("CNNFAST_TUNE", "1") != "0"


def enabled() -> bool:
    """Whether choices are measured: ``CNNFAST_TUNE`` was not "0" at import, or ``enable(True)``."""
    return _ENABLED


def enable(flag: bool = True) -> None:
    """Measure choices from now on (or, with False, keep the heuristic for every case not yet chosen)."""
    global _ENABLED
    _ENABLED = bool(flag)
    STOCK_CALLS.clear()   # "auto" no longer resolves the same way


def _verbose() -> bool:
    return os.environ.get("CNNFAST_TUNE_VERBOSE", "") not in ("", "0")


@dataclasses.dataclass
class Decision:
    """One choice, as ``cnnfast tune`` prints it."""
    launcher: str
    requested: str
    case: str
    backend: str
    config: Optional[int]
    seconds: Optional[float]          # the chosen candidate's time (None: not measured)
    stock_seconds: Optional[float]    # stock PyTorch's time on the same case
    source: str                       # "measured", "cache", "only candidate", "heuristic" or "reused"
    layer: Optional[str] = None
    kernel_seconds: Optional[float] = None   # the fastest kernel candidate's time (chosen or not)


_CHOICES = {}          # key -> (backend, config): the hot path's lookup
_MADE = {}             # key -> the Decision that made it
_FILES = {}            # device -> cache.File
_DECISIONS = []
_WARNED = set()
_CALLS = {}            # forward key + gradients wanted -> (backend, direction keys, Decision): see backend_for_call
_PENDING = {}          # the same keys -> calls left before the call's judgement is confirmed
_AGREED = {}           # direction key -> the backends that agreed with stock PyTorch on it
_LAYER = [None]
# Calls judged for stock PyTorch for good, under the front end's key for the raw call (every argument
# and setting the judgement depended on: ``cnnfast.functional._shortcut``). The front end hands such a
# call to stock PyTorch before doing anything else, so that all cnnfast costs it is building that key
# and one lookup: the interpreter's own work between two calls of a layer that fits in the caches
# slows the next call by a multiple of that work's time. Filled by ``backend_for_call`` (a confirmed
# judgement) and by the front end (a call whose backend is "torch" anyway); emptied with every choice.
STOCK_CALLS = {}
# The fused op's state each forward output's pos was written in (read by its backward's candidates).
_STATE_OF = weakref.WeakKeyDictionary()


def clear(disk: bool = False) -> None:
    """Forget every choice made in this process (and, with ``disk``, the cache files too)."""
    _forget_choices()
    _FILES.clear()
    _DECISIONS.clear()
    _WARNED.clear()
    if disk:
        cache.clear()


def decisions() -> list:
    """Every decision made in this process, in order (a list of ``Decision``)."""
    return list(_DECISIONS)


class layer:
    """Context manager: decisions made inside are labelled ``name`` (``cnnfast tune`` names layers so)."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self._previous, _LAYER[0] = _LAYER[0], self.name
        STOCK_CALLS.clear()   # a labelled call is listed, so it takes the full path

    def __exit__(self, *exc):
        _LAYER[0] = self._previous
        return False


# --- the case key ---------------------------------------------------------------------------------

def _layout(t: torch.Tensor) -> str:
    if t.is_contiguous():
        return "c"
    return "cl" if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) else "s"


def _part(a):
    """An argument's part of the key: a tensor's dtype, shape and layout; sizes as plain tuples."""
    if isinstance(a, torch.Tensor):
        return (a.dtype, tuple(a.shape), _layout(a))
    if isinstance(a, list):
        return tuple(a)
    return a


def _device(args) -> torch.device:
    return next(a.device for a in args if isinstance(a, torch.Tensor))


def _key(launcher, requested, args, kwargs):
    return (launcher, requested, torch.are_deterministic_algorithms_enabled(), _device(args),
            tuple(_part(a) for a in args), tuple(kwargs.items()))


def _disk_key(key) -> str:
    launcher, requested, deterministic, _, parts, kw = key
    extra = backends._registered() if requested == "auto" else ()
    # Under "auto" the choice was made among the backends registered then.
    return repr((launcher, requested, deterministic, parts, kw) + ((extra,) if extra else ()))


def _describe(key) -> str:
    _, _, _, _, parts, kw = key
    tensors = [f"{str(p[0])[6:]}{list(p[1])}{'' if p[2] == 'c' else ':' + p[2]}" for p in parts
               if isinstance(p, tuple) and len(p) == 3 and isinstance(p[0], torch.dtype)]
    flags = [f"{k}={v}" for k, v in kw if v not in (False, None)]
    return " ".join(tensors + flags)


def _file(device: torch.device) -> cache.File:
    f = _FILES.get(device)
    if f is None:
        f = _FILES[device] = cache.File(cache.environment(device))
    return f


# --- when a choice may be measured ----------------------------------------------------------------

def _may_tune(args, device) -> bool:
    if not enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False
    from torch._subclasses.fake_tensor import FakeTensor
    return all(type(a) in (torch.Tensor, torch.nn.Parameter) and not isinstance(a, FakeTensor)
               for a in args if isinstance(a, torch.Tensor))


def _heuristic(requested, device, launcher):
    """The choice without measurement: the named backend, or "auto"'s first available kernel backend
    that implements ``launcher``."""
    if requested != "auto":
        return requested, None
    order = backends._kernel_order(device, launcher)
    return (order[0] if order else "torch"), None


def _slow(requested, device) -> bool:
    """Backends whose timings mean nothing: the Triton interpreter, the CUDA emulator."""
    return backends._slow(requested, device)


# --- timing ---------------------------------------------------------------------------------------

def _time(fn, device, candidate) -> float:
    """Seconds one call of ``fn`` takes: on a GPU the median of ``GPU_RUNS`` calls timed by CUDA
    events, on a CPU one call (``candidate``: what ``fn`` runs, for a timer that fakes it)."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(GPU_RUNS):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


# Tests replace this with a fake: timer(fn, device, candidate) -> seconds.
timer = _time


def _run(candidate, launcher, args, kwargs):
    backend, config = candidate
    fn = getattr(backends.launchers(backend), launcher)
    if config is None:
        return lambda: fn(*args, **kwargs)
    return lambda: fn(*args, **kwargs, config=config)


def _warn_once(launcher, candidate, case, why):
    if (launcher, candidate) not in _WARNED:
        _WARNED.add((launcher, candidate))
        backend, config = candidate
        warnings.warn(f"cnnfast.tune: {launcher} on backend {backend!r}"
                      f"{'' if config is None else f' config {config}'} disagrees with stock PyTorch on "
                      f"{case} ({why}); it is never chosen", RuntimeWarning, stacklevel=5)


STOCK = ("torch", None)
# What the timer is told it runs when it times a whole training call (``backend_for_call``): stock
# PyTorch's, and the one on the directions' choices.
STOCK_STEP = ("torch", "training call")
CHOSEN_STEP = ("auto", "training call")


def _measure(launcher, requested, key, args, kwargs, pool):
    """Check and time each candidate of ``pool``; return (choice, its seconds, stock seconds, the
    fastest kernel's seconds): choice None where no candidate agreed with stock PyTorch.

    Stock PyTorch runs first (its result is the reference) and is always timed. On a CPU the
    candidates are timed in ``CPU_RUNS`` alternating rounds, so that a slow spell of a shared machine
    falls on all of them alike; one far behind after the first round (``PRUNE``) is not run again."""
    device = _device(args)
    case = _describe(key)
    runs = {STOCK: _run(STOCK, launcher, args, kwargs)}
    reference = runs[STOCK]()
    for candidate in pool:
        if candidate == STOCK:
            continue
        run = _run(candidate, launcher, args, kwargs)
        try:
            why = space.error(launcher, args, kwargs, run(), reference)
        except Exception as e:  # a config that cannot run this case (resources, say) is not a choice
            why = f"{type(e).__name__}: {e}"
        if why is None:
            runs[candidate] = run
        else:
            _warn_once(launcher, candidate, case, why)
    _AGREED[key] = {c[0] for c in runs}
    times = {c: [] for c in runs}
    for round_ in range(1 if device.type == "cuda" else CPU_RUNS):
        for candidate in times:
            if round_ == 0 or candidate == STOCK or times[candidate][0] <= PRUNE * first_best:
                times[candidate].append(timer(runs[candidate], device, candidate))
        first_best = min(t[0] for t in times.values())
    best_of = {c: min(t) for c, t in times.items()}
    stock_time = best_of[STOCK]
    kernels = {c: t for c, t in best_of.items() if c != STOCK}
    if not kernels:
        return (STOCK if STOCK in pool else None), stock_time, stock_time, None
    best = min(kernels, key=kernels.get)
    if STOCK in pool and not kernels[best] < stock_time * (1 - MARGIN):
        return STOCK, stock_time, stock_time, kernels[best]
    return best, kernels[best], stock_time, kernels[best]


def _config_digest(backend: str):
    """What backend ``backend``'s config values stand for now (``cnnfast.launchers``: CONFIG_DIGEST)."""
    return getattr(backends.launchers(backend), "CONFIG_DIGEST", None)


def _decide(launcher, requested, key, args, kwargs):
    """The choice for a case not yet in memory: from disk, by measurement, or by the heuristic."""
    device = key[3]
    disk_key = _disk_key(key)
    if not _slow(requested, device):
        stored = _file(device).get(disk_key)
        if (isinstance(stored, dict) and stored.get("backend") in backends._REGISTRY
                and backends.has(stored["backend"], launcher)
                and (stored.get("config") is None or stored.get("configs") == _config_digest(stored["backend"]))):
            choice = (stored["backend"], stored.get("config"))
            _AGREED[key] = set(stored.get("agreed") or ())
            _record(launcher, requested, key, choice, stored.get("seconds"), stored.get("stock_seconds"), "cache",
                    stored.get("kernel_seconds"))
            _CHOICES[key] = choice
            return choice
    if _slow(requested, device) or not _may_tune(args, device):
        return _heuristic(requested, device, launcher)    # not remembered: a later eager call may measure
    state = _STATE_OF.get(args[3], FUSED_STATE) if launcher == "conv_relu_maxpool2d_backward" else FUSED_STATE
    pool = space.candidates(launcher, requested, device, args, kwargs, state)
    kernel_seconds = None
    if len(pool) == 1:
        choice, seconds, stock_seconds, source = pool[0], None, None, "only candidate"
    elif not pool:
        raise RuntimeError(f"{launcher}: no backend can run this case under {requested!r} here "
                           f"({_describe(key)})")
    else:
        with torch.no_grad():
            choice, seconds, stock_seconds, kernel_seconds = _measure(launcher, requested, key, args, kwargs, pool)
        source = "measured"
        if choice is None:   # every config of a named backend disagreed: its heuristic stands
            choice, source = _heuristic(requested, device, launcher), "heuristic"
        else:
            _file(device).put(disk_key, dict(backend=choice[0], config=choice[1], seconds=seconds,
                                             stock_seconds=stock_seconds, kernel_seconds=kernel_seconds,
                                             agreed=sorted(_AGREED.get(key, ())),
                                             configs=_config_digest(choice[0]) if choice[1] is not None else None))
    _record(launcher, requested, key, choice, seconds, stock_seconds, source, kernel_seconds)
    _CHOICES[key] = choice
    return choice


def _record(launcher, requested, key, choice, seconds, stock_seconds, source, kernel_seconds=None):
    d = Decision(launcher, requested, _describe(key), choice[0], choice[1], seconds, stock_seconds, source, _LAYER[0],
                 kernel_seconds)
    _DECISIONS.append(d)
    _MADE[key] = d
    if _verbose():
        ms = lambda s: "-" if s is None else f"{s * 1e3:.3f} ms"  # noqa: E731
        print(f"cnnfast.tune: {launcher} [{requested}] {d.case}: {choice[0]}"
              f"{'' if choice[1] is None else f' config {choice[1]}'} {ms(seconds)} (stock {ms(stock_seconds)}; "
              f"{source})", file=sys.stderr)


def _reused(key):
    """A labelled call (``layer``) whose case was chosen before: listed again under its layer."""
    made = _MADE.get(key)
    if made is not None:
        _DECISIONS.append(dataclasses.replace(made, layer=_LAYER[0], source="reused"))


# --- the launchers the ops call -------------------------------------------------------------------

def call(requested: str, launcher: str, *args, **kwargs):
    """Run ``launcher`` for backend ``requested`` ("auto" or a named one) with the chosen backend and config."""
    key = _key(launcher, requested, args, kwargs)
    choice = _CHOICES.get(key)
    if choice is None:
        choice = _decide(launcher, requested, key, args, kwargs)
    elif _LAYER[0] is not None and requested != "auto":   # "auto"'s are listed by backend_for_call
        _reused(key)
    backend, config = choice
    fn = getattr(backends.launchers(backend), launcher)
    result = fn(*args, **kwargs) if config is None else fn(*args, **kwargs, config=config)
    if launcher == "conv_relu_maxpool2d_forward" and result[1] is not None:
        state = getattr(backends.launchers(backend), "FUSED_STATE", FUSED_STATE)
        if state != FUSED_STATE:
            _STATE_OF[result[1]] = state
    return result


class _Dispatch:
    """Backend ``requested``'s launchers with the measured choice: attribute ``conv2d_forward`` and so on."""

    def __init__(self, requested):
        self.requested = requested

    def __getattr__(self, launcher):
        if launcher.startswith("_"):
            raise AttributeError(launcher)
        if self.requested != "auto" and not backends.has(self.requested, launcher):
            return getattr(backends.launchers(self.requested), launcher)   # stock PyTorch stands in
        fn = functools.partial(call, self.requested, launcher)
        setattr(self, launcher, fn)
        return fn


def dispatch(name: str):
    """What the ops call for backend ``name``: the tuner where there is something to choose ("auto";
    a backend with configs, ``tune_configs``: "triton"), else the backend's launchers themselves (no
    cost per call)."""
    if name == "auto" or getattr(backends.launchers(name), "tune_configs", None) is not None:
        return _Dispatch(name)
    return backends.launchers(name)


def _forget_choices() -> None:
    """Forget the choices in memory (a backend was registered or removed: the candidates changed)."""
    _CHOICES.clear()
    _MADE.clear()
    _CALLS.clear()
    STOCK_CALLS.clear()
    _PENDING.clear()
    _AGREED.clear()


def backend_for_call(forward, gradients, stock, ours, inputs, shortcut=None) -> str:
    """Under "auto": the backend one call runs on. ``forward`` is its forward launch ``(launcher,
    args, kwargs)``, ``gradients()`` lists the gradient launches its backward will make (the same
    form; called only the first time), ``stock(*inputs)`` runs the call in stock PyTorch and
    ``ours(name, *inputs)`` on backend ``name`` ("auto": on the tuner's choice per direction).

    The answer is "torch" where stock PyTorch was chosen for every direction (the front end then
    calls stock PyTorch directly, as if cnnfast were not there), else "auto". A training call whose
    directions did not all choose stock is judged whole (``_plan``): stock's one backward call
    computes every gradient, and per-direction timings miss that. Every judgement is provisional:
    ``CONFIRM_AFTER`` calls later, the call is timed whole once more on stock PyTorch, on the choices
    and on each kernel backend that agreed with stock in every direction (``_confirm``), and the
    fastest stands, stock PyTorch unless beaten by ``PLAN_MARGIN``. A call judged for stock PyTorch
    once that is done is entered in ``STOCK_CALLS`` under ``shortcut`` (the front end's key for it;
    None: not to be entered)."""
    launcher, args, kwargs = forward
    wanted = tuple(isinstance(a, torch.Tensor) and a.requires_grad for a in args) if torch.is_grad_enabled() else ()
    wants = any(wanted)
    key = (_key(launcher, "auto", args, kwargs), wanted if wants else ())   # which gradients: a call of its own
    known = _CALLS.get(key)
    if known is not None:
        if _LAYER[0] is not None:
            for k in known[1]:
                _reused(k)
            if known[2] is not None:
                _DECISIONS.append(dataclasses.replace(known[2], layer=_LAYER[0], source="reused"))
        left = _PENDING.get(key)
        if left is not None:
            if left > 1:
                _PENDING[key] = left - 1
            elif _may_tune(args, _device(args)):
                del _PENDING[key]
                known = _CALLS[key] = _confirm(known, wants, stock, ours, inputs, _device(args))
        elif known[0] == "torch" and shortcut is not None and _LAYER[0] is None:
            STOCK_CALLS[shortcut] = True
        return known[0]
    device = _device(args)
    if not _may_tune(args, device):
        return "auto"
    with torch.no_grad():
        launches = [forward] + (list(gradients()) if wants else [])
    all_stock, keys = True, []
    for launcher, args, kwargs in launches:
        k = _key(launcher, "auto", args, kwargs)
        choice = _CHOICES.get(k)
        if choice is None:
            choice = _decide(launcher, "auto", k, args, kwargs)
        elif _LAYER[0] is not None:
            _reused(k)
        keys.append(k)
        all_stock = all_stock and choice[0] == "torch"
    plan = None
    if not all_stock and len(keys) > 1:
        plan = _plan(keys, stock, functools.partial(ours, "auto"), inputs, device)
        all_stock = plan is not None and plan.backend == "torch"
    _CALLS[key] = ("torch" if all_stock else "auto", keys, plan)
    _PENDING[key] = CONFIRM_AFTER
    return _CALLS[key][0]


def _step(fn, inputs, backward: bool):
    """A function running ``fn(*inputs)`` (under ``torch.no_grad()``), or with ``backward`` its forward
    and backward on copies of ``inputs`` (tensors or None) that ask for the same gradients, with one
    random output gradient; the inputs are untouched."""
    if not backward:
        def forward_only():
            with torch.no_grad():
                fn(*inputs)
        return forward_only
    leaves = [None if t is None else t.detach().requires_grad_(t.requires_grad) for t in inputs]
    wanted = [t for t in leaves if t is not None and t.requires_grad]

    def forward():
        out = fn(*leaves)
        return out[0] if isinstance(out, tuple) else out
    with torch.enable_grad():
        grad = torch.randn_like(forward())

    def step():
        with torch.enable_grad():
            torch.autograd.grad(forward(), wanted, grad)
    return step


def _plan(keys, stock, chosen, inputs, device) -> Optional[Decision]:
    """Whether a training call's choices beat stock PyTorch by ``PLAN_MARGIN``: its forward and
    backward on the choices (``chosen(*inputs)``) timed against stock PyTorch's (``stock(*inputs)``)
    in alternating rounds (``CPU_RUNS`` on a CPU), the fastest round of each; where the timer knows
    no time for a step (infinity: a test's fake timer) the sum of the directions' times stands for
    it. The answer is a Decision for the call ("training call": backend "torch" where stock PyTorch
    runs it, "as chosen" where the directions' choices do), or None where not every direction was
    measured here (cache entries of older files, say): the choices then stand."""
    made = [_MADE.get(k) for k in keys]
    if any(d is None or d.seconds is None or d.stock_seconds is None for d in made):
        return None
    totals = {STOCK_STEP: sum(d.stock_seconds for d in made), CHOSEN_STEP: sum(d.seconds for d in made)}
    steps = {STOCK_STEP: _step(stock, inputs, True), CHOSEN_STEP: _step(chosen, inputs, True)}
    times = _rounds(steps, device)
    for c, t in times.items():
        if min(t) < float("inf"):
            totals[c] = min(t)
    on_choices, on_stock = totals[CHOSEN_STEP], totals[STOCK_STEP]
    wins = on_choices < (1 - PLAN_MARGIN) * on_stock
    d = Decision("training call", "auto", made[0].case, "as chosen" if wins else "torch", None,
                 on_choices if wins else on_stock, on_stock, "plan", _LAYER[0], on_choices)
    _DECISIONS.append(d)
    if _verbose():
        print(f"cnnfast.tune: training call {d.case}: {d.backend} (on the choices {on_choices * 1e3:.3f} ms, "
              f"stock {on_stock * 1e3:.3f} ms)", file=sys.stderr)
    return d


def _rounds(steps, device) -> dict:
    """Each of ``steps`` (candidate -> function) run once to warm up, then timed in alternating rounds
    (``CPU_RUNS`` on a CPU; on a GPU one, the timer's median of ``GPU_RUNS``): candidate -> times.
    On a CPU each candidate's turn in a round is two calls, the second timed: the first call after
    another candidate's pays for that one's memory (the pages of freed buffers the allocator gave
    back), and which candidate pays more depends on the order, not on the candidate."""
    for fn in steps.values():
        fn()
    times = {c: [] for c in steps}
    for _ in range(1 if device.type == "cuda" else CPU_RUNS):
        for c, fn in steps.items():
            if device.type != "cuda":
                fn()
            times[c].append(timer(fn, device, c))
    return times


def _median(values):
    return sorted(values)[len(values) // 2]


def _whole(name: str) -> tuple:
    """What the timer is told it runs when ``_confirm`` times a whole call on backend ``name``."""
    return (name, "whole call")


def _confirm(known, backward: bool, stock, ours, inputs, device) -> tuple:
    """A call's judgement ``known`` confirmed or overturned (see ``backend_for_call``): the call timed
    whole on stock PyTorch, on the directions' choices (unless those are all stock PyTorch) and on
    each kernel backend that agreed with stock PyTorch in every direction measured, in alternating
    rounds; the candidate with the lowest median per-round ratio to stock PyTorch stands if that
    ratio beats stock by ``PLAN_MARGIN``. A candidate
    the timer knows no time for (infinity: a test's fake timer) is not a choice; without a time for
    stock PyTorch the judgement stands."""
    keys = known[1]
    choices = [_CHOICES.get(k) for k in keys]
    names = ["torch"] + (["auto"] if any(c is None or c[0] != "torch" for c in choices) else [])
    agreed = [_AGREED.get(k, set()) for k in keys]
    names += [n for n in backends._kernel_order(device) if all(n in a for a in agreed)
              and not all(c is not None and c[0] == n for c in choices)]
    if len(names) == 1:
        return known
    steps = {_whole(n): _step(stock if n == "torch" else functools.partial(ours, n), inputs, backward)
             for n in names}
    rounds = _rounds(steps, device)
    times = {c: _median(t) for c, t in rounds.items()}
    on_stock = times[_whole("torch")]
    if not on_stock < float("inf"):
        return known
    # Judged round by round: a slow spell of the machine (or of the allocator) in one round falls on
    # every candidate of that round, so the median of the per-round ratios to stock PyTorch is what
    # a candidate must win by, not a comparison of medians that one slow round can tip.
    ratio = {n: _median([t / s for t, s in zip(rounds[_whole(n)], rounds[_whole("torch")])]) for n in names[1:]}
    best = min(names[1:], key=lambda n: ratio[n])
    wins = ratio[best] < 1 - PLAN_MARGIN
    chosen = best if wins else "torch"
    made = _MADE.get(keys[0])
    d = Decision("training call" if backward else "call", "auto", made.case if made else "-",
                 "as chosen" if chosen == "auto" else chosen, None, times[_whole(chosen)], on_stock,
                 "confirmed", _LAYER[0], times[_whole(best)])
    _DECISIONS.append(d)
    if _verbose():
        timed = ", ".join(f"{n} {times[_whole(n)] * 1e3:.3f} ms" for n in names)
        print(f"cnnfast.tune: {d.launcher} {d.case}: {d.backend}, confirmed ({timed})", file=sys.stderr)
    return (chosen, keys, d)
