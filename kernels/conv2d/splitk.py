"""Split-K for conv2d's weight and bias gradients: how their reduction over the N·OH·OW pixels is cut
across programs, and the fixed-order sum of the partial results. No atomics: the split count depends
only on the problem shape and the config, and the splits are added in order, so every result repeats
bit for bit.
"""
import torch
import triton
import triton.language as tl

from .._common import TL_DTYPE, aot_spec, cdiv, needs_int64, pixel_decode, wide
from .configs import REDUCE_CONFIG, SPLIT_MIN_CHUNKS, SPLIT_TARGET_PROGRAMS


def split_k(num_chunks, tiles):
    """(split, chunks_per_split) for a reduction of ``num_chunks`` chunks over ``tiles`` tiles:
    about SPLIT_TARGET_PROGRAMS programs in all, at least SPLIT_MIN_CHUNKS chunks each."""
    split = max(1, min(SPLIT_TARGET_PROGRAMS // max(tiles, 1), cdiv(num_chunks, SPLIT_MIN_CHUNKS)))
    per_split = max(1, cdiv(num_chunks, split))
    return max(1, cdiv(num_chunks, per_split)), per_split


@triton.jit
def split_range(split, CHUNKS_PER_SPLIT, BLOCK: tl.constexpr, P):
    """[lo, hi): the pixels of split program ``split``, CHUNKS_PER_SPLIT chunks of BLOCK of the P."""
    lo = split * CHUNKS_PER_SPLIT * BLOCK
    return lo, tl.minimum(P, lo + CHUNKS_PER_SPLIT * BLOCK)


def workspace(split, *shape, device):
    """The fp32 workspace ws[split, *shape] the split programs write their partial results to."""
    return torch.empty((split, *shape), dtype=torch.float32, device=device)


@triton.jit
def _splitk_reduce_kernel(
    ws_ptr, out_ptr, SPLIT, TOTAL, D1, D2, D3, s_o0, s_o1, s_o2, s_o3,
    INT64: tl.constexpr, BLOCK: tl.constexpr,
):
    # Elementwise fixed-order sum: out.flatten()[i] = sum over split = 0 .. SPLIT-1, in that order,
    # of ws[split, i] (fp32), cast to out's dtype. out is 4-D (D0, D1, D2, D3) with any strides; each
    # program owns BLOCK consecutive flat indices, its fp32 sums in registers, and writes them once.
    pid = wide(tl.program_id(0), INT64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < TOTAL
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    ws_ptrs = ws_ptr + offs
    for sp in range(0, SPLIT):
        acc += tl.load(ws_ptrs, mask=mask, other=0.0)
        ws_ptrs += TOTAL
    t, i2, i3 = pixel_decode(offs, D2, D3)
    i1 = t % D1
    i0 = t // D1
    tl.store(out_ptr + i0 * s_o0 + i1 * s_o1 + i2 * s_o2 + i3 * s_o3, acc.to(out_ptr.dtype.element_ty),
             mask=mask)


def splitk_reduce(ws, out):
    """out (4-D, any strides) = ws.sum(0) in fp32, split 0 first, cast to out.dtype."""
    split, total = ws.shape[0], out.numel()
    _, d1, d2, d3 = out.shape
    block = REDUCE_CONFIG["BLOCK"]
    _splitk_reduce_kernel[(cdiv(total, block),)](
        ws, out, split, total, d1, d2, d3, *out.stride(),
        INT64=needs_int64(ws, out), BLOCK=block, num_warps=REDUCE_CONFIG["num_warps"])


def aot_specs():
    """The reduce kernel for every output dtype."""
    return [aot_spec(f"conv2d_splitk_reduce/{dt}/B{REDUCE_CONFIG['BLOCK']}", _splitk_reduce_kernel,
                     dict(ws_ptr="*fp32", out_ptr=f"*{dt}"), dict(INT64=False, BLOCK=REDUCE_CONFIG["BLOCK"]),
                     REDUCE_CONFIG["num_warps"], 1)
            for dt in TL_DTYPE.values()]
