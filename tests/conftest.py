"""Shared test setup: the Triton interpreter on machines without a GPU, poisoned outputs, the backends
to test. The tolerance table, the float64 comparison, ``rand`` and the fixtures are the conformance
suite's (``cnnfast.testing``), whose tests cnnfast runs on itself for every built-in backend available
here (tests/test_conv2d.py and the others import them)."""
import os
import sys
import tempfile

import torch

# The interpreter must be chosen before triton is imported (torch itself does not import it).
assert "triton" not in sys.modules, "conftest must run before triton is imported"
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
# Every kernel output starts as NaN (-1 for integer outputs) so an unwritten element cannot pass.
os.environ["CNNFAST_POISON"] = "1"
# No test depends on real timings: "auto" is the unmeasured heuristic unless a test turns the tuner on
# (tests/test_tune.py, with a fake timer), and no test writes the user's cache.
os.environ["CNNFAST_TUNE"] = "0"
os.environ["CNNFAST_CACHE_DIR"] = tempfile.mkdtemp(prefix="cnnfast-test-cache-")

import cnnfast  # noqa: E402
from cnnfast import _outputs, tune  # noqa: E402
from cnnfast.testing._reference import (DTYPES, TOLERANCES, assert_matches, device, rand,  # noqa: E402,F401
                                        rel_err)
from cnnfast.testing.fixtures import *  # noqa: E402,F401,F403  (backend, fast_backend, seed, the gpu skip)

# cnnfast may have been imported before this file ran (pytest loads the plugin cnnfast.testing.plugin
# first), when the environment above was not yet set: set what it read at import directly.
_outputs.set_poison(True)
tune.enable(False)

DEVICE = device()
BACKENDS = [name for name in cnnfast.backends.available(DEVICE)]
FAST_BACKENDS = [name for name in BACKENDS if name != "torch"]
