"""Helpers every Triton launcher shares: output allocation, layout and index-width choices.

Launchers receive arguments already normalised and checked by ``cnnfast.functional``; nothing here
validates user input.
"""
import os

import torch

from .._outputs import new_empty, pos_dtype  # noqa: F401  (re-exported for the launchers)


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether any tensor spans more than 2**31 - 1 elements of memory, so offsets need int64."""
    for t in tensors:
        if t is None or t.numel() == 0:
            continue
        span = 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))
        if span >= 2**31:
            return True
    return False
