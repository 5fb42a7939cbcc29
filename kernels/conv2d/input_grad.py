"""conv2d's gradient with respect to its input: an implicit GEMM that gathers dy (no atomics)."""
import torch
import triton
import triton.language as tl

from .._common import (cdiv, channel_contiguous, channels_inner, choose_config, dot_args, mma,
                       needs_int64, new_empty, pixel_tile, program_ids, reduction_tile, tap_block, target_arch)
from .configs import INPUT_GRAD_CONFIGS, by_phases, choose_input_grad, input_grad_taps, taps_variant
from .gemm import INPUT_GRAD, ConvProblem, implicit_gemm_problem_size
from .grad_out import aot_specs_per_source, grad_source, load_grad_out


@triton.jit
def _conv2d_input_grad_kernel(
    go_ptr, gp_ptr, pos_ptr, w_ptr, gi_ptr,
    M, H, W, OH, OW, Cg, Kg, R, S, PH, PW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    s_gon, s_gok, s_goh, s_gow, s_gpn, s_gpk, s_gph, s_gpw, s_pn, s_pk, s_ph, s_pw,
    s_wk, s_wc, s_wr, s_ws, s_in, s_ic, s_ih, s_iw, K_INNER: tl.constexpr,
    POOL: tl.constexpr, PKH: tl.constexpr, PKW: tl.constexpr, PSH: tl.constexpr, PSW: tl.constexpr,
    PPH: tl.constexpr, PPW: tl.constexpr, PDH: tl.constexpr, PDW: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr, INT64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Implicit GEMM for grad_input (gemm.py, input_grad): M = N·H·W input pixels, N = C/groups input
    # channels of group g (grid axis 2), reduction over K/groups·R·S. Program (pid_m, pid_n, g) owns
    # a BLOCK_M x BLOCK_N tile of grad_input with its fp32 accumulator in registers, so every
    # element is written once (no atomics). A step gathers A (BLOCK_M x BLOCK_K): dy[n, k, oh, ow]
    # with oh = (h + pt - r*dh)/sh, ow = (w + pl - s*dw)/sw where both divisions are exact and in
    # range (zero otherwise; rebuilt from the pooled gradient when POOL, see grad_out.py), and B
    # (BLOCK_K x BLOCK_N): w[k, c, r, s], then tl.dot. The reduction index runs over (k, r, s), or
    # (r, s, k) when K_INNER (channels_last dy).
    pid_m, pid_n, g = program_ids(INT64)

    n, ih, iw, mask_m = pixel_tile(pid_m * BLOCK_M, M, H, W, BLOCK_M)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < Cg
    cin = g * Cg + offs_n

    RS = R * S
    KRS = Kg * RS
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk0 in range(0, KRS, BLOCK_K):
        kl, r, s, mask_k = reduction_tile(kk0, Kg, RS, S, K_INNER, INT64, BLOCK_K)
        k = g * Kg + kl
        oh_num = (ih + pad_h)[:, None] - (r * dil_h)[None, :]
        ow_num = (iw + pad_w)[:, None] - (s * dil_w)[None, :]
        oh = oh_num // stride_h
        ow = ow_num // stride_w
        mask_a = ((mask_m[:, None] & mask_k[None, :]) & (oh_num >= 0) & (ow_num >= 0)
                  & (oh_num % stride_h == 0) & (ow_num % stride_w == 0) & (oh < OH) & (ow < OW))
        a = load_grad_out(go_ptr, s_gon, s_gok, s_goh, s_gow, gp_ptr, s_gpn, s_gpk, s_gph, s_gpw,
                          pos_ptr, s_pn, s_pk, s_ph, s_pw, PH, PW, n[:, None], k[None, :], oh, ow,
                          mask_a, POOL, PKH, PKW, PSH, PSW, PPH, PPW, PDH, PDW)
        b = tl.load(w_ptr + (k * s_wk + r * s_wr + s * s_ws)[:, None] + (offs_n * s_wc)[None, :],
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = mma(a.to(b.dtype), b, acc, DOT_PRECISION, DOT_FP32)

    gi_ptrs = gi_ptr + (n * s_in + ih * s_ih + iw * s_iw)[:, None] + (cin * s_ic)[None, :]
    tl.store(gi_ptrs, acc.to(gi_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _conv2d_input_grad_taps_kernel(
    go_ptr, gp_ptr, pos_ptr, w_ptr, gi_ptr,
    M, H, W, OH, OW, Cg, Kg, R, S, PH, PW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    s_gon, s_gok, s_goh, s_gow, s_gpn, s_gpk, s_gph, s_gpw, s_pn, s_pk, s_ph, s_pw,
    s_wk, s_wc, s_wr, s_ws, s_in, s_ic, s_ih, s_iw,
    POOL: tl.constexpr, PKH: tl.constexpr, PKW: tl.constexpr, PSH: tl.constexpr, PSW: tl.constexpr,
    PPH: tl.constexpr, PPW: tl.constexpr, PDH: tl.constexpr, PDW: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr, INT64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # The input gradient's implicit GEMM (as in _conv2d_input_grad_kernel: M = N·H·W input pixels,
    # N = C/groups input channels, reduction over K/groups·R·S) in the structure of the taps forward:
    # the filter taps (r, s) outer and blocks of BLOCK_K contiguous output channels of dy inner, one
    # flattened loop whose index arithmetic is scalar. Per step, each pixel row's source position
    # oh = (h + pt - r*dh)/sh, ow = (w + pl - s*dw)/sw and its mask (both divisions exact, in range)
    # are one value per row; with channels_last dy a row of the A tile is BLOCK_K contiguous elements,
    # and with a channels_last weight the B tile's rows (w[k, c, r, s] over c) are contiguous too.
    pid_m, pid_n, g = program_ids(INT64)

    n, ih, iw, mask_m = pixel_tile(pid_m * BLOCK_M, M, H, W, BLOCK_M)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < Cg
    cin = g * Cg + offs_n

    k_blocks = tl.cdiv(Kg, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, R * S * k_blocks):
        r, s, kl = tap_block(step, k_blocks, S, BLOCK_K)
        mask_k = kl < Kg
        k = g * Kg + kl
        oh_num = ih + pad_h - r * dil_h
        ow_num = iw + pad_w - s * dil_w
        oh = oh_num // stride_h
        ow = ow_num // stride_w
        mask_a = (mask_m & (oh_num >= 0) & (ow_num >= 0) & (oh_num % stride_h == 0) & (ow_num % stride_w == 0)
                  & (oh < OH) & (ow < OW))
        a = load_grad_out(go_ptr, s_gon, s_gok, s_goh, s_gow, gp_ptr, s_gpn, s_gpk, s_gph, s_gpw,
                          pos_ptr, s_pn, s_pk, s_ph, s_pw, PH, PW, n[:, None], k[None, :], oh[:, None], ow[:, None],
                          mask_a[:, None] & mask_k[None, :], POOL, PKH, PKW, PSH, PSW, PPH, PPW, PDH, PDW)
        b = tl.load(w_ptr + (k * s_wk)[:, None] + (r * s_wr + s * s_ws) + (offs_n * s_wc)[None, :],
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = mma(a.to(b.dtype), b, acc, DOT_PRECISION, DOT_FP32)

    gi_ptrs = gi_ptr + (n * s_in + ih * s_ih + iw * s_iw)[:, None] + (cin * s_ic)[None, :]
    tl.store(gi_ptrs, acc.to(gi_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _conv2d_input_grad_phases_kernel(
    go_ptr, gp_ptr, pos_ptr, w_ptr, gi_ptr,
    M, H, W, HP, WP, OH, OW, Cg, Kg, R, S, PH, PW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    s_gon, s_gok, s_goh, s_gow, s_gpn, s_gpk, s_gph, s_gpw, s_pn, s_pk, s_ph, s_pw,
    s_wk, s_wc, s_wr, s_ws, s_in, s_ic, s_ih, s_iw,
    POOL: tl.constexpr, PKH: tl.constexpr, PKW: tl.constexpr, PSH: tl.constexpr, PSW: tl.constexpr,
    PPH: tl.constexpr, PPW: tl.constexpr, PDH: tl.constexpr, PDW: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr, INT64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # The taps kernel's implicit GEMM at a stride, by phases: no zero between dy's rows and columns
    # is multiplied. Input pixels are grouped by phase (h mod sh, w mod sw) (grid axis 2: group x
    # phase), and program (pid_m, pid_n) owns BLOCK_M pixels h = ph + sh*i, w = pw + sw*j of one
    # phase, i < HP = ceil(H/sh), j < WP. A tap r reaches such a pixel from dy row
    # oh = i + (ph + pt - r*dh)/sh exactly when that division is exact: with dh = 1 on an axis of
    # stride above 1 (the launcher sends no other) those are r = r0 + t*sh, r0 = (ph + pt) mod sh, the
    # same for every pixel of the phase, and oh steps by -dh from tap to tap. The loop runs over those
    # taps (outer) and blocks of BLOCK_K contiguous output channels of dy (inner), flattened, with
    # scalar index arithmetic and no division; a pixel row's source position and mask are one value
    # per row. A phase no tap reaches (a 1x1 filter at stride 2: three of four) writes zeros.
    pid_m, pid_n, gq = program_ids(INT64)
    phases = stride_h * stride_w
    g = gq // phases
    q = gq - g * phases
    ph = q // stride_w
    pw = q - ph * stride_w

    n, i, j, mask_m = pixel_tile(pid_m * BLOCK_M, M, HP, WP, BLOCK_M)
    ih = ph + i * stride_h
    iw = pw + j * stride_w
    mask_m = mask_m & (ih < H) & (iw < W)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < Cg
    cin = g * Cg + offs_n

    r0 = (ph + pad_h) % stride_h
    s0 = (pw + pad_w) % stride_w
    taps_s = tl.maximum(tl.cdiv(S - s0, stride_w), 0)
    taps = tl.maximum(tl.cdiv(R - r0, stride_h), 0) * taps_s
    # The t-th reaching tap's dy row: oh = i + (ph + pt - r0*dh)/sh - t*dh (exact: dh = 1 where sh > 1),
    # so the loop divides nothing.
    base_h = i + (ph + pad_h - r0 * dil_h) // stride_h
    base_w = j + (pw + pad_w - s0 * dil_w) // stride_w
    k_blocks = tl.cdiv(Kg, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, taps * k_blocks):
        tr, ts, kl = tap_block(step, k_blocks, taps_s, BLOCK_K)
        r = r0 + tr * stride_h
        s = s0 + ts * stride_w
        mask_k = kl < Kg
        k = g * Kg + kl
        oh = base_h - tr * dil_h
        ow = base_w - ts * dil_w
        mask_a = mask_m & (oh >= 0) & (ow >= 0) & (oh < OH) & (ow < OW)
        a = load_grad_out(go_ptr, s_gon, s_gok, s_goh, s_gow, gp_ptr, s_gpn, s_gpk, s_gph, s_gpw,
                          pos_ptr, s_pn, s_pk, s_ph, s_pw, PH, PW, n[:, None], k[None, :], oh[:, None], ow[:, None],
                          mask_a[:, None] & mask_k[None, :], POOL, PKH, PKW, PSH, PSW, PPH, PPW, PDH, PDW)
        b = tl.load(w_ptr + (k * s_wk)[:, None] + (r * s_wr + s * s_ws) + (offs_n * s_wc)[None, :],
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = mma(a.to(b.dtype), b, acc, DOT_PRECISION, DOT_FP32)

    gi_ptrs = gi_ptr + (n * s_in + ih * s_ih + iw * s_iw)[:, None] + (cin * s_ic)[None, :]
    tl.store(gi_ptrs, acc.to(gi_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def conv2d_input_grad(grad_out, weight, input_size, stride, padding, dilation, groups, *,
                      channels_last=False, allow_tf32=False, config=None, pool=None):
    """Gradient of conv2d with respect to its input.

    grad_out (N, K, OH, OW), weight (K, C//groups, R, S), input_size (H, W), geometry as in
    ``conv2d_forward``. Returns grad_input (N, C, H, W), C = groups * (C//groups), in grad_out.dtype
    (weight.dtype when ``pool`` is given), channels_last memory format when ``channels_last``:
    ``gi[n,c,h,w] = sum_{k in group(c), r, s} dy[n, k, (h + pt - r*dh)/sh, (w + pl - s*dw)/sw] *
    weight[k, c - g*C//groups, r, s]`` over the terms where both divisions are exact and land in
    [0, OH) x [0, OW); accumulated in float32, deterministic. With ``pool`` (see grad_out.py)
    ``grad_out`` is None and dy is rebuilt from the pooled gradient; N is
    grad_pooled.shape[0] and (OH, OW) = conv_out_size. ``config``: index into
    ``INPUT_GRAD_CONFIGS`` or a dict.
    """
    tensors, go_strides, pooled_size, pool_consts, (n_, k_, oh, ow) = grad_source(grad_out, pool)
    _, cg, r, s = weight.shape
    h, w = input_size
    dtype = weight.dtype if pool is not None else grad_out.dtype
    gi = new_empty((n_, groups * cg, h, w), dtype=dtype, device=weight.device,
                   channels_last=channels_last)
    if gi.numel() == 0:
        return gi
    size = implicit_gemm_problem_size(INPUT_GRAD, ConvProblem(n_, groups * cg, h, w, k_, r, s, oh, ow, groups))
    cfg = choose_config(INPUT_GRAD_CONFIGS, config, lambda: choose_input_grad(
        size, input_grad_taps(INPUT_GRAD_CONFIGS, grad_out, k_ // groups, stride, dilation, allow_tf32)))
    grid = (cdiv(size.M, cfg["BLOCK_M"]), cdiv(cg, cfg["BLOCK_N"]), groups)
    w_read = weight
    if cfg["kind"] == "taps":
        # dy's channel blocks contiguous (NCHW dy: a channels_last copy); the weight's B tile w[k, c]
        # with c contiguous, except in TF32, whose wgmma reads B only K-major (the GEMM's reduction
        # index k contiguous; 16-bit types may be transposed in shared memory): with c contiguous
        # every B element would be a 4-byte copy, so it reads a copy of the weight with k innermost.
        dy = channel_contiguous(grad_out)
        tensors, go_strides = (dy, dy, dy), (*dy.stride(), *go_strides[4:])
        if weight.dtype == torch.float32:
            w_read = weight.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)
        else:
            w_read = channel_contiguous(weight)
    # An NCHW result of the taps kernel is written through a channels_last copy, as the taps forward's.
    gc = gi if cfg["kind"] != "taps" or channels_last else new_empty(gi.shape, dtype=gi.dtype, device=gi.device,
                                                                     channels_last=True)
    args = (*tensors, w_read, gc, size.M, h, w, oh, ow, cg, k_ // groups, r, s, *pooled_size,
            *stride, *padding, *dilation, *go_strides, *w_read.stride(), *gc.stride())
    common = dict(**pool_consts, **dot_args(weight.dtype, allow_tf32), INT64=needs_int64(*tensors, w_read, gc))
    if cfg["kind"] == "taps":
        tile = taps_variant(cfg, weight.dtype, target_arch() if cfg.get("PRE_SM90") else None)
        launch = dict(**common, BLOCK_M=tile["BLOCK_M"], BLOCK_N=tile["BLOCK_N"], BLOCK_K=tile["BLOCK_K"],
                      num_warps=tile["num_warps"], num_stages=tile["num_stages"])
        if not by_phases(stride, dilation):
            _conv2d_input_grad_taps_kernel[grid](*args, **launch)
        else:
            hp, wp = cdiv(h, stride[0]), cdiv(w, stride[1])  # the largest phase's rows and columns
            m = n_ * hp * wp
            _conv2d_input_grad_phases_kernel[(cdiv(m, tile["BLOCK_M"]), grid[1], groups * stride[0] * stride[1])](
                *args[:5], m, h, w, hp, wp, *args[8:], **launch)
        if gc is not gi:
            gi.copy_(gc)
    else:
        _conv2d_input_grad_kernel[grid](
            *args, K_INNER=channels_inner(tensors[1]), **common,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return gi


def aot_specs():
    """Every gemm config x dtype x dy source x precision (``aot_specs_per_source``), NCHW dy. The taps
    kernel is judged in the call view only (see ``forward.aot_specs``)."""
    gemm = [c for c in INPUT_GRAD_CONFIGS if c["kind"] == "gemm"]
    return aot_specs_per_source("conv2d_input_grad", _conv2d_input_grad_kernel, gemm,
                                dict(w_ptr="*{dt}", gi_ptr="*{dt}"), dict(K_INNER=False))
