"""Helpers every Triton launcher shares: output allocation, layout and index-width choices.

Launchers receive arguments already normalised and checked by ``cnnfast.functional``; nothing here
validates user input.
"""
import os

import torch

# Debug aid used by the test suite: when on, every kernel output starts as NaN (or -1 for integer
# outputs) so that an element the kernel forgets to write can never look correct.
_POISON = os.environ.get("CNNFAST_POISON", "") == "1"


def set_poison(enabled: bool) -> None:
    """Fill every new kernel output with NaN / -1 before the kernel writes it (tests use this)."""
    global _POISON
    _POISON = bool(enabled)


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def new_empty(shape, *, dtype, device, channels_last: bool = False) -> torch.Tensor:
    """Allocate a kernel output (poisoned when ``set_poison(True)``)."""
    fmt = torch.channels_last if channels_last and len(shape) == 4 else torch.contiguous_format
    out = torch.empty(shape, dtype=dtype, device=device, memory_format=fmt)
    if _POISON:
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether a 4-D tensor is laid out NHWC (and not also plainly contiguous)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether any tensor spans more than 2**31 - 1 elements of memory, so offsets need int64."""
    for t in tensors:
        if t is None or t.numel() == 0:
            continue
        span = 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))
        if span >= 2**31:
            return True
    return False
