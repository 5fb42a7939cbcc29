"""An example cnnfast backend package: two conv2d backends written outside cnnfast.

    "example_unfold"  conv2d forward and all three gradients as matrix products over F.unfold
                      columns (``unfold.py``); CPU and CUDA tensors.
    "example_triton"  a direct convolution in Triton, forward only (``triton_direct.py``); CUDA
                      tensors, or CPU tensors under the Triton interpreter (TRITON_INTERPRET=1).

``register_backends()`` registers both; it is what the ``cnnfast.backends`` entry point in this
folder's pyproject.toml names, so once the package is installed cnnfast finds the backends by name.
"""
import importlib.util
import os

import cnnfast

NAMES = ("example_unfold", "example_triton")


def _triton_unavailable(device):
    """None where the Triton kernel can run on ``device``, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "backend 'example_triton' needs the triton package"
    if device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
        return None
    return f"backend 'example_triton' runs on CUDA tensors (CPU ones under TRITON_INTERPRET=1), not on {device.type}"


def register_backends():
    """Register this package's backends with cnnfast (again: replacing them, so importing twice is harmless)."""
    from . import unfold
    cnnfast.backends.register("example_unfold", unfold, devices=("cpu", "cuda"), replace=True)
    # An import path: triton is imported only when the backend is first used.
    cnnfast.backends.register("example_triton", "cnnfast_example_backend.triton_direct", devices=("cuda", "cpu"),
                              slow_on=("cpu",), available=_triton_unavailable, replace=True)
