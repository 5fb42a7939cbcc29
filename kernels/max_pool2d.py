"""Triton max_pool2d: forward (values and optional int64 indices) and a deterministic backward.

Semantics follow PyTorch's max_pool2d (ATen's ``max_pool2d_with_indices`` and its backward) exactly:
the running maximum starts at -inf, an element replaces it when ``val > max or isnan(val)`` (NaN
propagates, the index is that of the last NaN, ties keep the first maximum in row-major window order;
``_common.max_take``), padded cells are never read, and indices are int64 flattened as ``h * W + w``
within each H x W plane.
"""
import torch
import triton
import triton.language as tl

from ._common import (TL_DTYPE, aot_spec, cdiv, choose_config, element_decode, max_take, needs_int64,
                      new_empty, tap, wide, window_start)

# Forward and backward are memory-bound elementwise passes: one output (forward) or input (backward)
# element per lane, so a config is only a block size and a warp count.
FORWARD_CONFIGS = [
    dict(BLOCK=512, num_warps=4),   # large tensors (>= 2M outputs): 4 outputs per thread, loads in flight
    dict(BLOCK=256, num_warps=4),   # small tensors (the Net's pools, small batches): 2 per thread, more programs
]
BACKWARD_CONFIGS = [
    dict(BLOCK=512, num_warps=4),   # large inputs (>= 2M elements): 4 pixels per thread
    dict(BLOCK=256, num_warps=4),   # small inputs
]


def _by_size(numel):
    """The heuristic of both lists: the larger block from 2M elements on."""
    return lambda: 0 if numel >= 2**21 else 1


@triton.jit
def _max_pool2d_forward_kernel(
    x_ptr, out_ptr, idx_ptr, TOTAL, C, H, W, OH, OW,
    stride_xn, stride_xc, stride_xh, stride_xw, stride_on, stride_oc, stride_oh, stride_ow,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, WITH_INDICES: tl.constexpr, CHANNELS_LAST: tl.constexpr, INT64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Elementwise window max, no GEMM: each program owns BLOCK consecutive output elements in the
    # output's memory order (NCHW or NHWC, so stores are coalesced) and walks their KH x KW windows
    # (unrolled), keeping the running maximum (fp32, exact for every input dtype) and its window
    # offset in registers (PyTorch's rule, max_take). Out-of-range (padded) cells are masked, never
    # read. Writes the maximum and, if WITH_INDICES, the int64 index (out and indices share strides).
    offs = wide(tl.program_id(0) * BLOCK + tl.arange(0, BLOCK), INT64)
    mask = offs < TOTAL
    n, c, oh, ow = element_decode(offs, C, OH, OW, CHANNELS_LAST)
    h0, w0 = window_start(oh, ow, stride_h, stride_w, pad_h, pad_w)
    x_base = x_ptr + n * stride_xn + c * stride_xc

    best = tl.full([BLOCK], float("-inf"), tl.float32)
    # The chosen cell is tracked as its window offset i * KW + j; PyTorch's initial choice is the first
    # in-range cell of the window (kept only when every value is -inf).
    i_first = tl.where(h0 < 0, (dil_h - 1 - h0) // dil_h, 0)
    j_first = tl.where(w0 < 0, (dil_w - 1 - w0) // dil_w, 0)
    best_q = i_first * KW + j_first
    for i in tl.static_range(KH):
        h, ok_h = tap(h0, i, dil_h, H, mask)
        for j in tl.static_range(KW):
            w, ok = tap(w0, j, dil_w, W, ok_h)
            val = tl.load(x_base + h * stride_xh + w * stride_xw, mask=ok, other=float("-inf")).to(tl.float32)
            best, best_q = max_take(val, best, best_q, i * KW + j, ok)

    o = n * stride_on + c * stride_oc + oh * stride_oh + ow * stride_ow
    tl.store(out_ptr + o, best.to(out_ptr.dtype.element_ty), mask=mask)
    if WITH_INDICES:
        best_idx = (h0 + (best_q // KW) * dil_h) * W + w0 + (best_q % KW) * dil_w
        tl.store(idx_ptr + o, best_idx.to(tl.int64), mask=mask)


@triton.jit
def _max_pool2d_backward_kernel(
    gy_ptr, idx_ptr, gx_ptr, TOTAL, C, H, W, OH, OW,
    stride_gyn, stride_gyc, stride_gyh, stride_gyw, stride_in, stride_ic, stride_ih, stride_iw,
    stride_gxn, stride_gxc, stride_gxh, stride_gxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, CHANNELS_LAST: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr,
):
    # Gather, no atomics, no GEMM: each program owns BLOCK consecutive input pixels in grad_input's
    # memory order, their fp32 sums in registers. A pixel (h, w) is cell (i, j) of window (oh, ow)
    # iff h = oh*stride_h - pad_h + i*dil_h (same for w), so for every (i, j) (unrolled) there is at
    # most one candidate window; its grad_out is added when the stored index equals
    # h * W + w. Windows are visited in ascending (oh, ow), the order PyTorch accumulates in; each
    # grad_input element is written once.
    offs = wide(tl.program_id(0) * BLOCK + tl.arange(0, BLOCK), INT64)
    mask = offs < TOTAL
    n, c, h, w = element_decode(offs, C, H, W, CHANNELS_LAST)
    target = h * W + w
    gy_base = gy_ptr + n * stride_gyn + c * stride_gyc
    idx_base = idx_ptr + n * stride_in + c * stride_ic

    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for ii in tl.static_range(KH):
        oh_num = h + pad_h - (KH - 1 - ii) * dil_h
        oh = oh_num // stride_h
        ok_h = mask & (oh_num >= 0) & (oh * stride_h == oh_num) & (oh < OH)
        for jj in tl.static_range(KW):
            ow_num = w + pad_w - (KW - 1 - jj) * dil_w
            ow = ow_num // stride_w
            ok = ok_h & (ow_num >= 0) & (ow * stride_w == ow_num) & (ow < OW)
            idx = tl.load(idx_base + oh * stride_ih + ow * stride_iw, mask=ok, other=-1)
            hit = ok & (idx == target)
            acc += tl.load(gy_base + oh * stride_gyh + ow * stride_gyw, mask=hit, other=0.0).to(tl.float32)

    g = n * stride_gxn + c * stride_gxc + h * stride_gxh + w * stride_gxw
    tl.store(gx_ptr + g, acc.to(gx_ptr.dtype.element_ty), mask=mask)


def max_pool2d_forward(x, kernel_size, stride, padding, dilation, out_size, *, with_indices,
                       channels_last=False, config=None):
    """Max-pool a 4-D tensor; returns ``(out, indices)`` (``indices`` is None unless ``with_indices``).

    x: (N, C, H, W) float32/float16/bfloat16, any strides. kernel_size, stride, dilation: (h, w).
    padding: (pad_top, pad_left). out_size: (OH, OW), computed by the front end (ceil_mode folded in).
    Output (OH, OW) element covers input rows ``oh*stride[0] - pad_top + i*dilation[0]`` for
    ``i < kernel_size[0]`` (columns likewise); cells outside [0, H) x [0, W) are skipped, never read.
    out has x's dtype and holds the window maximum under PyTorch's rule: the running max starts at
    -inf and an element replaces it when ``val > max or isnan(val)`` (NaN propagates; ties keep the
    first maximum in row-major window order). indices: int64, ``h * W + w`` of that element (the last
    NaN when there is one; the first in-range cell when every value is -inf). Both are NCHW-contiguous,
    or channels_last when ``channels_last=True``. config: index into FORWARD_CONFIGS or a dict.
    """
    n, c, h, w = x.shape
    oh, ow = out_size
    out = new_empty((n, c, oh, ow), dtype=x.dtype, device=x.device, channels_last=channels_last)
    idx = (new_empty((n, c, oh, ow), dtype=torch.int64, device=x.device, channels_last=channels_last)
           if with_indices else None)
    total = out.numel()
    if total == 0:
        return out, idx
    cfg = choose_config(FORWARD_CONFIGS, config, _by_size(total))
    _max_pool2d_forward_kernel[(cdiv(total, cfg["BLOCK"]),)](
        x, out, idx if with_indices else out,
        total, c, h, w, oh, ow,
        *x.stride(), *out.stride(),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        KH=kernel_size[0], KW=kernel_size[1],
        WITH_INDICES=with_indices, CHANNELS_LAST=channels_last, INT64=needs_int64(x, out),
        BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"],
    )
    return out, idx


def max_pool2d_backward(grad_out, indices, input_size, kernel_size, stride, padding, dilation, *,
                        channels_last=False, config=None):
    """Gradient of max_pool2d with respect to its input, deterministic (gather, no atomics).

    grad_out, indices: (N, C, OH, OW), any strides; indices as returned by max_pool2d_forward with the
    same geometry. input_size: (H, W). Returns grad_input (N, C, H, W), dtype of
    grad_out, NCHW-contiguous or channels_last when ``channels_last=True``:
    ``grad_input[n, c, h, w] = sum of grad_out[n, c, oh, ow] over the windows (oh, ow) that contain
    (h, w) and whose index equals h * W + w``, summed in fp32 in ascending (oh, ow) order.
    config: index into BACKWARD_CONFIGS or a dict.
    """
    n, c, oh, ow = grad_out.shape
    h, w = input_size
    gx = new_empty((n, c, h, w), dtype=grad_out.dtype, device=grad_out.device, channels_last=channels_last)
    total = gx.numel()
    if total == 0:
        return gx
    cfg = choose_config(BACKWARD_CONFIGS, config, _by_size(total))
    _max_pool2d_backward_kernel[(cdiv(total, cfg["BLOCK"]),)](
        grad_out, indices, gx,
        total, c, h, w, oh, ow,
        *grad_out.stride(), *indices.stride(), *gx.stride(),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        KH=kernel_size[0], KW=kernel_size[1],
        CHANNELS_LAST=channels_last, INT64=needs_int64(grad_out, indices, gx),
        BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"],
    )
    return gx


def aot_specs():
    """Specs for AOT compilation: every config x dtype x layout with 2x2 windows (the Net's pool;
    forward with indices), plus, for the first forward config, the forward without indices
    (inference) and a 3x3 window."""
    specs = []
    for dt in TL_DTYPE.values():
        for ci, cfg in enumerate(FORWARD_CONFIGS):
            for layout in ("nchw", "nhwc"):
                variants = [(2, True)] + ([(2, False), (3, True)] if ci == 0 and layout == "nchw" else [])
                for k, with_idx in variants:
                    specs.append(aot_spec(
                        f"max_pool2d_forward/{dt}/{layout}/k{k}{'-idx' if with_idx else ''}"
                        f"/B{cfg['BLOCK']}-W{cfg['num_warps']}", _max_pool2d_forward_kernel,
                        {"x_ptr": f"*{dt}", "out_ptr": f"*{dt}", "idx_ptr": "*i64"},
                        dict(KH=k, KW=k, WITH_INDICES=with_idx, CHANNELS_LAST=layout == "nhwc", INT64=False,
                             BLOCK=cfg["BLOCK"]), cfg["num_warps"], 1))
        for cfg in BACKWARD_CONFIGS:
            for layout in ("nchw", "nhwc"):
                specs.append(aot_spec(
                    f"max_pool2d_backward/{dt}/{layout}/k2/B{cfg['BLOCK']}-W{cfg['num_warps']}",
                    _max_pool2d_backward_kernel, {"gy_ptr": f"*{dt}", "idx_ptr": "*i64", "gx_ptr": f"*{dt}"},
                    dict(KH=2, KW=2, CHANNELS_LAST=layout == "nhwc", INT64=False, BLOCK=cfg["BLOCK"]),
                    cfg["num_warps"], 1))
    return specs
