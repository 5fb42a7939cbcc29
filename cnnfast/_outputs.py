"""How every backend allocates kernel outputs, in one place (importing it pulls in neither triton nor
the compiled extension).

The test suite sets ``CNNFAST_POISON=1`` (or calls ``set_poison(True)``): every new output then starts
as NaN, or -1 for integer outputs, so an element a kernel forgets to write can never look correct.
"""
import os

import torch

_POISON = os.environ.get("CNNFAST_POISON", "") == "1"


def set_poison(enabled: bool) -> None:
    """Fill every new kernel output with NaN / -1 before the kernel writes it (tests use this)."""
    global _POISON
    _POISON = bool(enabled)


def new_empty(shape, *, dtype, device, channels_last: bool = False) -> torch.Tensor:
    """Allocate a kernel output (poisoned when ``set_poison(True)``)."""
    fmt = torch.channels_last if channels_last and len(shape) == 4 else torch.contiguous_format
    out = torch.empty(shape, dtype=dtype, device=device, memory_format=fmt)
    if _POISON:
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


# The fused op's saved state, as every built-in backend writes it: ``pos``, one small integer per pooled
# output (the window position of its maximum, -1 where ReLU zeroed it). A backend's backward may read
# the state of another backend's forward only where both name the same state.
FUSED_STATE = "pos"


def pos_dtype(pool_kernel) -> torch.dtype:
    """The fused op's saved window position (or -1): the narrowest integer type that holds it."""
    cells = pool_kernel[0] * pool_kernel[1]
    return torch.int8 if cells <= 127 else torch.int16 if cells <= 32767 else torch.int32
