"""The roofline: what each case must compute and move, and the machine's two ceilings, measured.

FLOPs count a multiply-add as two; max-pool windows count one comparison per element after the first
(reported, but pooling is judged against bandwidth alone). The fewest bytes are each input read once
and each output written once; a backward pass reads the output gradient and what the op needs (input,
weight) and writes every gradient, recomputing rather than storing anything (so the indices eager
max_pool2d keeps, or the pre-pool activation an unfused block keeps, count as excess). Model workloads
count FLOPs with ``torch.utils.flop_counter`` and bytes as the input plus the parameters (read once, and
for a training step their gradients and updated values written once): a loose floor.

The ceilings are measured once per run: a large device-to-device copy (bytes read plus bytes written
over its time) and a large matrix product per dtype, never datasheet figures.
"""
import torch

from . import timing
from .suites import MODEL_OPS, TORCH_DTYPES

# Matrix sizes for the compute ceiling; the CPU sizes keep the measurement to a second or two.
_GEMM_N = {"cuda": 8192, "cpu": {"float32": 1024, "tf32": 1024, "bfloat16": 512, "float16": 512}}
_COPY_BYTES = {"cuda": 2 << 30, "cpu": 128 << 20}


def counts(case):
    """(FLOPs, fewest bytes) of an op case, forward or forward+backward."""
    assert case.op not in MODEL_OPS
    n, (c, h, w) = case.batch, case.chw
    x = n * c * h * w
    conv_flops = pool_flops = weights = 0
    if case.conv:
        conv, (kh, kw) = case.conv, case.conv.kernel
        (h, w), c_in, c = conv.out_size(h, w), c, conv.out_channels   # what the pool (if any) sees
        weights = c * (c_in // conv.groups) * kh * kw + (c if conv.bias else 0)
        conv_flops = 2 * n * c * h * w * (c_in // conv.groups) * kh * kw
    if case.pool:
        h, w = case.pool.out_size(h, w)
        pool_flops = n * c * h * w * (case.pool.kernel[0] * case.pool.kernel[1] - 1)
    y = n * c * h * w
    elems, flops = x + weights + y, conv_flops + pool_flops
    if case.direction == "fwd+bwd":   # input_grad and weight_grad: one conv's FLOPs each
        elems += y + 2 * x + 2 * weights
        flops += 2 * conv_flops
    return flops, elems * _itemsize(case.dtype)


def model_bytes(case, params: int) -> int:
    """The loose floor for a model workload: input and ``params`` parameters read once, and for training
    (or forward+backward) the parameter gradients written once, and for a training step the updated
    parameters too."""
    n, (c, h, w) = case.batch, case.chw
    elems = n * c * h * w + params
    if case.direction == "fwd+bwd":
        elems += params * (2 if case.op == "net_train_step" else 1)
    return elems * _itemsize(case.dtype)


def _itemsize(dtype: str) -> int:
    return torch.empty((), dtype=TORCH_DTYPES[dtype]).element_size()


# --- ceilings ---------------------------------------------------------------------------------

def measure_ceilings(device: torch.device, dtypes, *, warmup_ms: float, rep_ms: float) -> dict:
    """Copy bandwidth (GB/s) and matrix-product rate (TFLOP/s) per dtype, measured here and now."""
    numel = _COPY_BYTES[device.type] // 4
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    ms = timing.median_ms(lambda: dst.copy_(src), device, warmup_ms=warmup_ms, rep_ms=rep_ms)
    out = {"bandwidth_GBs": 2 * src.nbytes / ms / 1e6, "copy_bytes": src.nbytes, "tflops": {}, "gemm_n": {}}
    del src, dst
    for dtype in dtypes:
        n = _GEMM_N["cuda"] if device.type == "cuda" else _GEMM_N["cpu"][dtype]
        a, b = (torch.randn(n, n, device=device, dtype=TORCH_DTYPES[dtype]) for _ in range(2))
        with precision(dtype):
            ms = timing.median_ms(lambda: a @ b, device, warmup_ms=warmup_ms, rep_ms=rep_ms)
        out["tflops"][dtype], out["gemm_n"][dtype] = 2 * n ** 3 / ms / 1e9, n
    return out


class precision:
    """Set the float32 policy for a dtype variant: "tf32" turns TF32 on for convolutions and matrix
    products (cuDNN's default for convolutions), every other variant turns it off. Restored on exit."""

    def __init__(self, dtype: str):
        self.tf32 = dtype == "tf32"

    def __enter__(self):
        self.saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = self.tf32
        return self

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved
        return False


def figures(flops: int, nbytes: int, ms: float, dtype: str, ceilings: dict, compute_bound_op: bool) -> dict:
    """Achieved rates and their share of the ceilings; ``roofline_pct`` is the floor time (the larger of
    FLOPs over the compute ceiling and bytes over the bandwidth) as a percentage of the measured time."""
    tflops, gbs = flops / ms / 1e9, nbytes / ms / 1e6
    peak = ceilings["tflops"].get(dtype) if compute_bound_op else None
    floor_ms = nbytes / ceilings["bandwidth_GBs"] / 1e6
    if peak:
        floor_ms = max(floor_ms, flops / peak / 1e9)
    return {"tflops": tflops, "gbs": gbs, "pct_compute": 100 * tflops / peak if peak else None,
            "pct_bandwidth": 100 * gbs / ceilings["bandwidth_GBs"], "roofline_pct": 100 * floor_ms / ms}
