"""The pytest plugin (entry point ``cnnfast.testing.plugin`` in the ``pytest11`` group, so every pytest
in an environment with cnnfast knows its options):

    pytest --pyargs cnnfast.testing --cnnfast-backend NAME [--cnnfast-quick] [--cnnfast-device cuda]

It only adds the options and, when ``--cnnfast-backend`` is given, sets the process up for the suite
(``cnnfast.testing._setup.prepare``); the suite's fixtures live in ``cnnfast/testing/conftest.py``,
which pytest loads only for the suite's own files. Without the entry point (cnnfast not installed
through pip), ``-p cnnfast.testing.plugin`` loads it.
"""
import pytest


def pytest_addoption(parser):
    group = parser.getgroup("cnnfast", "cnnfast conformance suite (pytest --pyargs cnnfast.testing)")
    group.addoption("--cnnfast-backend", metavar="NAME", default=None,
                    help="run cnnfast's conformance suite on this backend (a built-in or registered name); "
                         "default: every backend available on the device")
    group.addoption("--cnnfast-quick", action="store_true", default=False,
                    help="only the suite's quick subset (tests and cases marked 'quick')")
    group.addoption("--cnnfast-device", metavar="DEVICE", choices=("cpu", "cuda"), default=None,
                    help="the device the suite's inputs live on (default: cuda if available, else cpu)")
    group.addoption("--cnnfast-seed", metavar="N", type=int, default=0,
                    help="xor every test's seed with N, to draw other inputs (default 0)")


def pytest_configure(config):
    config.addinivalue_line("markers", "quick: in the conformance suite's quick subset (--cnnfast-quick)")
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    name = config.getoption("cnnfast_backend")
    requested = (name, config.getoption("cnnfast_quick"), config.getoption("cnnfast_device"),
                 config.getoption("cnnfast_seed"))
    if not name and requested[1:] == (False, None, 0):
        return      # not running the suite: leave the process alone
    from . import _setup
    from ._reference import settings
    for note in _setup.prepare():
        config.issue_config_time_warning(pytest.PytestConfigWarning(note), stacklevel=2)
    import torch
    device = requested[2] or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--cnnfast-device cuda: no CUDA device is available here")
    settings.device, settings.quick, settings.seed = device, requested[1], requested[3]
    if name:
        _check_backend(name, device)


def _check_backend(name, device):
    """A usage error, in a sentence, unless backend ``name`` is known and runs on ``device``."""
    import torch

    import cnnfast
    if name == "auto":
        return
    known = cnnfast.backends.names()
    if name not in known:
        raise pytest.UsageError(f"--cnnfast-backend {name}: unknown cnnfast backend; expected one of "
                                f"{', '.join(known)} (or a backend registered with cnnfast.backends.register)")
    why = cnnfast.backends._why_unavailable(name, torch.device(device))
    if why is not None:
        raise pytest.UsageError(f"--cnnfast-backend {name}: {why}")
