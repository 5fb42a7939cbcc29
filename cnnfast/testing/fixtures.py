"""The suite's fixtures and collection hooks, imported by the suite's own ``conftest.py`` and by
cnnfast's ``tests/conftest.py`` (one copy: ``from cnnfast.testing.fixtures import *``).

``backend`` and ``fast_backend`` are parametrised by ``pytest_generate_tests``: with
``--cnnfast-backend NAME`` both are that one backend; without it, ``backend`` is every backend available
on the suite's device and ``fast_backend`` every one but "torch" (the reference itself). ``seed`` seeds
torch's generators for the test, from the test's name and parameters (the backend left out, so every
backend draws the same inputs) and ``--cnnfast-seed``.
"""
import re
import zlib

import pytest
import torch

from ._reference import settings

__all__ = ["pytest_generate_tests", "pytest_collection_modifyitems", "pytest_runtest_call", "backend", "fast_backend", "seed", "exact_float32",
           "backends_under_test"]

# Parameters that do not change a test's inputs (the seed leaves them out).
_NOT_INPUTS = ("backend", "fast_backend")


def backends_under_test(config, fast=False):
    """The backends a test taking ``backend`` (or, with ``fast``, ``fast_backend``) runs on."""
    name = config.getoption("cnnfast_backend", None) if config is not None else None
    if name:
        return [name]
    import cnnfast
    names = list(cnnfast.backends.available(settings.device))
    return [n for n in names if n != "torch"] if fast else names


def _parametrized_by_marks(metafunc):
    names = set()
    for mark in metafunc.definition.iter_markers("parametrize"):
        argnames = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        names.update(a.strip() for a in (argnames.split(",") if isinstance(argnames, str) else argnames))
    return names


def _ours(metafunc, arg) -> bool:
    """Whether the fixture ``arg`` a test sees is the one below (a test module may define its own)."""
    defs = getattr(metafunc, "_arg2fixturedefs", {}).get(arg)
    return bool(defs) and getattr(defs[-1].func, "__module__", None) == __name__


def pytest_generate_tests(metafunc):
    own = _parametrized_by_marks(metafunc)       # a test that names its own backends keeps them
    for arg, fast in (("backend", False), ("fast_backend", True)):
        if arg in metafunc.fixturenames and arg not in own and _ours(metafunc, arg):
            metafunc.parametrize(arg, backends_under_test(metafunc.config, fast), indirect=True)


@pytest.fixture
def backend(request):
    """The backend under test (parametrised by ``pytest_generate_tests``)."""
    return request.param


@pytest.fixture
def fast_backend(request):
    """The backend under test, leaving "torch" out when no backend is named."""
    return request.param


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip unless the suite runs on CUDA; ``--cnnfast-quick`` keeps the tests
    (and parameters) marked ``quick``."""
    if settings.device != "cuda" or not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    if config.getoption("cnnfast_quick", False):
        keep = [item for item in items if item.get_closest_marker("quick") is not None]
        dropped = [item for item in items if item.get_closest_marker("quick") is None]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep


# What cnnfast.backends.MissingOp says (also when torch.compile re-raised it as an error of its own).
_MISSING = re.compile(r"(\w+): backend '([^']+)' has no (\w+) \(it was registered without it\)")


def _missing_op(exc, backend):
    """(op, launcher) where ``exc`` (or an error in its cause/context chain) says that ``backend`` has
    no forward for an op, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        found = _MISSING.search(str(exc))
        if found and found.group(2) == backend:
            return found.group(1), found.group(3)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A test of an op the backend under test does not implement (registered without its forward)
    is skipped, saying so, rather than failed: a conv2d-only backend is tested on conv2d."""
    try:
        return (yield)
    except Exception as e:
        params = getattr(getattr(item, "callspec", None), "params", {})
        backend = params.get("backend") or params.get("fast_backend")
        missing = _missing_op(e, backend) if isinstance(backend, str) else None
        if missing is None:
            raise
        pytest.skip(f"backend {backend!r} has no {missing[1]}: {missing[0]} is not tested on it")


def seed_of(node) -> int:
    """The seed of a test: a hash of its name and input parameters, xor ``--cnnfast-seed``."""
    params = getattr(node, "callspec", None)
    key = getattr(node, "originalname", node.name)
    if params is not None:
        key += "".join(f"|{k}={v}" for k, v in sorted(params.params.items()) if k not in _NOT_INPUTS)
    return (zlib.crc32(key.encode()) ^ settings.seed) & 0x7FFFFFFF


@pytest.fixture
def seed(request):
    """torch.manual_seed for this test (see ``seed_of``); the test's inputs are drawn after it."""
    value = seed_of(request.node)
    torch.manual_seed(value)
    return value


@pytest.fixture(autouse=True)
def exact_float32():
    """float32 kernels compared at full precision: TF32 off (its own tests turn it on)."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before
