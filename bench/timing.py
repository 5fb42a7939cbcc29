"""Timing: CUDA events through ``triton.testing.do_bench`` on GPU, ``torch.utils.benchmark`` on CPU.

Both report the median. On GPU, do_bench runs the function once, estimates its time, warms up for
``warmup_ms``, then records ``rep_ms`` worth of runs, each between its own pair of CUDA events and each
after a write of 256 MB that flushes the L2 cache. Cases whose inputs fit in the cache (L2 on GPU,
the last-level cache on CPU) are also given several input sets to rotate through, so that no run reads
what the previous one left in cache.
"""
import itertools
import math
import time
from pathlib import Path

import torch

MAX_INPUT_SETS = 8


def cache_bytes(device: torch.device) -> int:
    """The L2 size of the GPU, or the largest CPU cache the kernel reports (32 MiB if unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        sizes.append(int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]] if text[-1] in "KM" else int(text))
    return max(sizes, default=32 << 20)


def input_sets(nbytes: int, device: torch.device) -> int:
    """How many distinct input sets to rotate through so that they overflow the cache twice over."""
    cache = cache_bytes(device)
    return 1 if nbytes >= cache else min(MAX_INPUT_SETS, math.ceil(2 * cache / max(nbytes, 1)))


def rotating(fn, sets):
    """A zero-argument callable that runs ``fn`` on the next input set each call."""
    it = itertools.cycle(sets)
    return lambda: fn(next(it))


def median_ms(fn, device: torch.device, *, warmup_ms: float, rep_ms: float) -> float:
    """The median time of one call of ``fn`` in milliseconds, warm-up excluded."""
    if device.type == "cuda":
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    from torch.utils import benchmark
    end = time.perf_counter() + warmup_ms / 1e3
    fn()
    while time.perf_counter() < end:
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=rep_ms / 1e3).median * 1e3


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
