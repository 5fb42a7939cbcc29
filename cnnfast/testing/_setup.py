"""The process setup the suite needs, done before anything imports triton: the Triton interpreter on
a machine without a GPU, poisoned kernel outputs, no measuring tuner, and a tuning cache of its own."""
import os
import sys
import tempfile

import torch

_CACHE = None


def prepare() -> list:
    """Set the process up for the suite (idempotent); returns sentences about what could not be set up.

    - No CUDA device: ``TRITON_INTERPRET=1``, so the Triton kernels run on CPU tensors. It must be set
      before triton is imported; if triton is already imported without it, the "triton" backend
      cannot run here and a sentence says so.
    - ``CNNFAST_POISON=1``: every output cnnfast allocates for a kernel starts as NaN (-1 for integer
      outputs), so an element a kernel forgets to write cannot pass.
    - ``CNNFAST_TUNE=0``: "auto" is the unmeasured heuristic (no test depends on timings), and a
      temporary ``CNNFAST_CACHE_DIR`` so that nothing is written to the user's cache.
    """
    notes = []
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        if "triton" in sys.modules:
            notes.append("triton was imported before the Triton interpreter could be switched on "
                         "(TRITON_INTERPRET=1); the 'triton' backend cannot run on this machine without a GPU")
        else:
            os.environ["TRITON_INTERPRET"] = "1"
    os.environ["CNNFAST_POISON"] = "1"
    os.environ["CNNFAST_TUNE"] = "0"
    global _CACHE
    if _CACHE is None:
        _CACHE = tempfile.mkdtemp(prefix="cnnfast-test-cache-")
    os.environ["CNNFAST_CACHE_DIR"] = _CACHE
    # Modules imported before this ran read the environment at import: set them directly too.
    from cnnfast import _outputs, tune
    _outputs.set_poison(True)
    tune.enable(False)
    return notes
