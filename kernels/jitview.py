"""Compile cnnfast's Triton kernels exactly as the JIT would for a real call, without a GPU.

At a launch, Triton's JIT specialises the kernel on its arguments before compiling it: integers equal
to 1 become constants, integers divisible by 16 and 16-byte-aligned pointers get divisibility hints,
and the rules differ between Triton versions. Compiling a kernel with unspecialised arguments
therefore shows code that never runs. Here the launchers themselves run, on CPU tensors of the call's
shapes, strides and dtype, with Triton's own ``JITFunction.run`` doing the binding and specialisation;
only two things change while ``compile_only(arch)`` is active:

- the active Triton driver is a stand-in whose current target is ``GPUTarget("cuda", arch, 32)``, so
  Triton compiles for that architecture whatever GPU (or none) this machine has;
- every launch is a warm-up (``run(..., warmup=True)``, Triton's own compile-without-launch path):
  the kernel is compiled with the specialisation a real launch would get and is not run.

So the cubin obtained for a call is the one the JIT builds for the same call on a GPU of that
architecture (a GPU test, ``tests/test_jitview.py``, checks that their SASS is identical).
Tensors are allocated, never written; a launcher's host-side work (output allocation, split-K
planning) runs as it would.

``launcher_calls(case)`` turns a benchmark case (``cnnfast.bench.suites``) into the launcher calls its
forward, or forward and backward, makes, with the arguments ``cnnfast.functional`` would pass.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch

__all__ = ["Launch", "compile_only", "record_launches", "launcher_calls", "case_configs"]


@dataclasses.dataclass
class Launch:
    """One kernel launch seen under ``compile_only``: the JIT function, its compiled kernel, the grid
    and the constexpr / launch-option values it was called with."""
    fn: Any
    kernel: Any
    grid: tuple
    constexprs: dict

    @property
    def name(self) -> str:
        return self.kernel.metadata.name


class _CompileOnlyDriver:
    """What ``JITFunction.run`` and ``triton.compile`` ask of the active driver, for a chosen target.
    The device key is the target's own, so kernels compiled here never mix with a real device's."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", arch, 32)
        self.device = f"cnnfast-compile-only-sm_{arch}"

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device=None):
        return 0


def _grid(grid, bound):
    if callable(grid):
        grid = grid(bound)
    return tuple(int(g) for g in grid)


@contextlib.contextmanager
def _recording(compile_only_for):
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    launches: list[Launch] = []
    original = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        kernel = original(self, *args, grid=grid, warmup=warmup or compile_only_for is not None, **kwargs)
        names = [p.name for p in self.params]
        values = dict(zip(names, args), **kwargs)
        constexprs = {p.name: values[p.name] for p in self.params if p.is_constexpr and p.name in values}
        for option in ("num_warps", "num_stages"):
            constexprs[option] = getattr(kernel.metadata, option, kwargs.get(option))
        launches.append(Launch(self, kernel, _grid(grid, values) if grid is not None else (), constexprs))
        return kernel

    previous = getattr(driver, "_active", None)
    if compile_only_for is not None:
        driver.set_active(_CompileOnlyDriver(compile_only_for))
    JITFunction.run = run
    try:
        yield launches
    finally:
        JITFunction.run = original
        if compile_only_for is not None:
            driver._active = previous  # not reset_active(): that builds the real driver, which needs a GPU


def compile_only(arch: int):
    """Within: every Triton kernel launch compiles for ``sm_<arch>`` as the JIT would and does not run;
    yields the list of ``Launch`` records, appended to as launches happen."""
    return _recording(arch)


def record_launches():
    """Within: Triton kernel launches run as usual (on a GPU) and are recorded, compiled kernel
    included; yields the list of ``Launch`` records. What ``compile_only`` is checked against."""
    return _recording(None)


# ---------------------------------------------------------------------------------------------------
# The launcher calls of a benchmark case


def _tensor(shape, dtype, channels_last):
    fmt = torch.channels_last if channels_last and len(shape) == 4 else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, memory_format=fmt)


def launcher_calls(case) -> list[tuple[str, tuple, dict]]:
    """``(launcher, args, kwargs)`` of each launcher a ``cnnfast.bench.suites.Case`` of op conv2d,
    max_pool2d or conv_relu_maxpool2d calls: the forward ("fwd", inference: no indices or pos), or the
    forward that saves for backward and every gradient ("fwd+bwd"). The arguments are the normalised
    ones ``cnnfast.functional`` passes (geometry as pairs, output sizes explicit)."""
    from cnnfast.bench.suites import TORCH_DTYPES
    from cnnfast._outputs import pos_dtype

    dtype = TORCH_DTYPES[case.dtype]
    cl = case.layout == "channels_last"
    tf32 = case.dtype == "tf32"
    train = case.direction != "fwd"
    n, (c, h, w) = case.batch, case.chw
    t = lambda *shape, dt=dtype: _tensor(shape, dt, cl)  # noqa: E731
    calls = []
    if case.op in ("conv2d", "conv_relu_maxpool2d"):
        conv = case.conv
        oh, ow = conv.out_size(h, w)
        geo = (conv.stride, conv.padding, conv.dilation, conv.groups)
        x = t(n, c, h, w)
        weight = t(conv.out_channels, c // conv.groups, *conv.kernel)
        bias = _tensor((conv.out_channels,), dtype, False) if conv.bias else None
        conv_kw = dict(channels_last=cl, allow_tf32=tf32)
    if case.op == "conv2d":
        calls.append(("conv2d_forward", (x, weight, bias, *geo, (oh, ow)), conv_kw))
        if train:
            dy = t(n, conv.out_channels, oh, ow)
            calls.append(("conv2d_input_grad", (dy, weight, (h, w), *geo), conv_kw))
            calls.append(("conv2d_weight_grad", (x, dy, tuple(weight.shape), *geo), conv_kw))
            if conv.bias:
                calls.append(("conv2d_bias_grad", (dy,), {}))
    elif case.op == "max_pool2d":
        pool = case.pool
        ph, pw = pool.out_size(h, w)
        geo = (pool.kernel, pool.stride, pool.padding, (1, 1))
        calls.append(("max_pool2d_forward", (t(n, c, h, w), *geo, (ph, pw)),
                      dict(with_indices=train, channels_last=cl)))
        if train:
            dy, idx = t(n, c, ph, pw), t(n, c, ph, pw, dt=torch.int64)
            calls.append(("max_pool2d_backward", (dy, idx, (h, w), *geo), dict(channels_last=cl)))
    elif case.op == "conv_relu_maxpool2d":
        pool = case.pool
        ph, pw = pool.out_size(oh, ow)
        pgeo = (pool.kernel, pool.stride, pool.padding, (1, 1))
        calls.append(("conv_relu_maxpool2d_forward", (x, weight, bias, *geo, (oh, ow), *pgeo, (ph, pw)),
                      dict(with_pos=train, **conv_kw)))
        if train:
            dy, pos = t(n, conv.out_channels, ph, pw), t(n, conv.out_channels, ph, pw, dt=pos_dtype(pool.kernel))
            calls.append(("conv_relu_maxpool2d_backward",
                          (dy, x, weight, pos, *geo, (oh, ow), *pgeo),
                          dict(needs=(True, True, conv.bias), **conv_kw)))
    else:
        raise ValueError(f"case {case.id}: op {case.op!r} has no Triton launchers (a whole-model case?)")
    return calls


def case_configs(launcher: str, args, kwargs, all_configs: bool) -> list:
    """The configs to compile a call with: every one the tuner may time for it, or only the
    launcher's own heuristic choice (``[None]``)."""
    from . import tune_configs
    return tune_configs(launcher, args, kwargs) if all_configs else [None]
