"""Regression micro-benchmarks with pytest-benchmark: every op and direction on every backend that runs
here, as ``benchmark`` fixtures, so that a kernel developer can save timings before a change and
compare after it::

    pytest bench/micro --benchmark-autosave                  # before (or: pytest --pyargs cnnfast.bench.micro)
    pytest bench/micro --benchmark-compare --benchmark-compare-fail=median:10%    # after

The cases are ``cnnfast bench``'s (``suites.micro_cases``: the Net suite's ops at a small batch), the
providers its too (``runner.providers``: stock eager, each cnnfast backend available here, registered
ones included for the ops they implement, "torch" and "auto"; never torch.compile, whose compilation is
not what these measure).
Each provider's result is checked against the float64 reference before it is timed, with the runner's
tolerance. On a CPU the fixture's clock is ``time.perf_counter``; on a GPU it is ``cuda_event_clock``:
CUDA events, so a round's time is the GPU's from its first launch to its last. ``-k`` picks backends or
ops (``-k "cnnfast:mine and conv2d"``); ``-p my_package.backend`` imports a module that registers a
backend before the cases are collected (a backend from an installed plugin needs nothing).

Needs ``pip install 'cnnfast[bench]'`` (pytest-benchmark); the case list (``params``) does not.
"""
import torch

from .. import suites
from ..runner import providers
from ..workload import COMPILE, Unavailable, cnnfast_backend, require


def device() -> torch.device:
    """Where the micro-benchmarks run: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def params(where=None):
    """The (case, provider) pairs to benchmark on ``where`` (default: ``device()``)."""
    where = torch.device(where) if where is not None else device()
    names = [p for p in providers(where) if p != COMPILE]
    return [(case, provider) for case in suites.micro_cases(where.type) for provider in names
            if _runs(provider, case.op)]


def _runs(provider, op) -> bool:
    """Whether ``provider`` implements ``op`` (a registered backend may implement some ops only)."""
    try:
        require(cnnfast_backend(provider), (op,))
    except Unavailable:
        return False
    return True


_START = []


def cuda_event_clock() -> float:
    """Seconds since the first call, read from CUDA events on the current stream: a round timed with two
    readings is the GPU time between them (each reading waits for the GPU's work so far)."""
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    event.synchronize()
    if not _START:
        _START.append(event)
        return 0.0
    return _START[0].elapsed_time(event) / 1e3
