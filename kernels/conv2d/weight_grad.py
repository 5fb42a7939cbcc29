"""conv2d's gradient with respect to its weight: a split-K implicit GEMM and a fixed-order reduction."""
import triton
import triton.language as tl

from .._common import (cdiv, channel_contiguous, channels_inner, choose_config, dot_args, in_image,
                       mma, needs_int64, new_empty, next_pow2, pixel_tile, program_ids, reduction_tile)
from .configs import WEIGHT_GRAD_CONFIGS, choose_weight_grad, weight_grad_taps
from .gemm import WEIGHT_GRAD, ConvProblem, implicit_gemm_problem_size
from .grad_out import aot_specs_per_source, grad_source, load_grad_out
from .splitk import split_k, split_range, splitk_reduce, workspace


@triton.jit
def _conv2d_weight_grad_kernel(
    x_ptr, go_ptr, gp_ptr, pos_ptr, ws_ptr,
    P, H, W, OH, OW, K, Cg, Kg, R, S, PH, PW, CHUNKS_PER_SPLIT,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    s_xn, s_xc, s_xh, s_xw,
    s_gon, s_gok, s_goh, s_gow, s_gpn, s_gpk, s_gph, s_gpw, s_pn, s_pk, s_ph, s_pw, C_INNER: tl.constexpr,
    POOL: tl.constexpr, PKH: tl.constexpr, PKW: tl.constexpr, PSH: tl.constexpr, PSW: tl.constexpr,
    PPH: tl.constexpr, PPW: tl.constexpr, PDH: tl.constexpr, PDW: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr, INT64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Split-K GEMM for grad_weight (gemm.py, weight_grad): M = K/groups output channels, N =
    # C/groups·R·S, reduction over P = N·OH·OW output pixels, cut into SPLIT contiguous ranges of
    # CHUNKS_PER_SPLIT·BLOCK_K pixels (grid axis 1). Program (tile, split, g) owns a BLOCK_M x BLOCK_N
    # tile of group g's weight gradient and one pixel range; it accumulates in fp32 registers A
    # (BLOCK_M x BLOCK_K): dy[n, k, oh, ow] (rebuilt from the pooled gradient when POOL, see
    # grad_out.py) times B (BLOCK_K x BLOCK_N): x[n, c, oh*sh - pt + r*dh, ow*sw - pl + s*dw] (zero
    # outside the image) with tl.dot, then writes its partial tile to the fp32 workspace
    # ws[split, k, c·R·S + r·S + s]; splitk.py sums the splits in a fixed order. Columns run over
    # (c, r, s), or (r, s, c) when C_INNER.
    pid_t, split, g = program_ids(INT64)

    RS = R * S
    CRS = Cg * RS
    num_n = tl.cdiv(CRS, BLOCK_N)
    pid_m = pid_t // num_n
    pid_n = pid_t % num_n

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < Kg
    k = g * Kg + offs_m

    c, r, s, mask_j = reduction_tile(pid_n * BLOCK_N, Cg, RS, S, C_INNER, INT64, BLOCK_N)
    x_col = x_ptr + (g * Cg + c) * s_xc
    dh = r * dil_h - pad_h
    dw = s * dil_w - pad_w

    p_lo, p_hi = split_range(split, CHUNKS_PER_SPLIT, BLOCK_K, P)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for p0 in range(p_lo, p_hi, BLOCK_K):
        n, oh, ow, mask_p = pixel_tile(p0, p_hi, OH, OW, BLOCK_K)
        a = load_grad_out(go_ptr, s_gon, s_gok, s_goh, s_gow, gp_ptr, s_gpn, s_gpk, s_gph, s_gpw,
                          pos_ptr, s_pn, s_pk, s_ph, s_pw, PH, PW, n[None, :], k[:, None],
                          oh[None, :], ow[None, :], mask_m[:, None] & mask_p[None, :],
                          POOL, PKH, PKW, PSH, PSW, PPH, PPW, PDH, PDW)
        ih = (oh * stride_h)[:, None] + dh[None, :]
        iw = (ow * stride_w)[:, None] + dw[None, :]
        mask_b = in_image(mask_p[:, None] & mask_j[None, :], ih, iw, H, W)
        b = tl.load(x_col[None, :] + (n * s_xn)[:, None] + ih * s_xh + iw * s_xw, mask=mask_b, other=0.0)
        acc = mma(a.to(b.dtype), b, acc, DOT_PRECISION, DOT_FP32)

    ws_ptrs = ws_ptr + ((split * K + k) * CRS)[:, None] + (c * RS + r * S + s)[None, :]
    tl.store(ws_ptrs, acc, mask=mask_m[:, None] & mask_j[None, :])


@triton.jit
def _conv2d_weight_grad_taps_kernel(
    x_ptr, go_ptr, gp_ptr, pos_ptr, ws_ptr,
    NB, H, W, OH, OW, K, Cg, Kg, R, S, PH, PW, CHUNKS_PER_SPLIT,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    s_xn, s_xc, s_xh, s_xw,
    s_gon, s_gok, s_goh, s_gow, s_gpn, s_gpk, s_gph, s_gpw, s_pn, s_pk, s_ph, s_pw,
    POOL: tl.constexpr, PKH: tl.constexpr, PKW: tl.constexpr, PSH: tl.constexpr, PSW: tl.constexpr,
    PPH: tl.constexpr, PPW: tl.constexpr, PDH: tl.constexpr, PDW: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr, INT64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_W: tl.constexpr,
):
    # The weight gradient's split-K GEMM (as in _conv2d_weight_grad_kernel: M = K/groups output
    # channels, N = C/groups·R·S, reduction over the N·OH·OW pixels split into ranges, partial tiles
    # to the fp32 workspace ws[split, k, c·R·S + r·S + s] summed by splitk.py) with each program's
    # columns one filter tap (r, s) and a block of BLOCK_N contiguous input channels: grid axis 0 runs
    # over (k block, tap, c block). The reduction steps over blocks of ROWS output rows x BLOCK_W
    # columns of one image (both powers of two, BLOCK_W >= OW but for wide images), so a step's
    # pixel coordinates are a shift and a mask of one arange plus scalar arithmetic: no division per
    # pixel. The tap's input position and image mask are one value per pixel; with channels_last x
    # and dy both operands' rows are contiguous channel runs.
    pid_t, split, g = program_ids(INT64)

    c_blocks = tl.cdiv(Cg, BLOCK_N)
    per_m = R * S * c_blocks
    pid_m = pid_t // per_m
    t = pid_t - pid_m * per_m
    rs = t // c_blocks
    r = rs // S
    s = rs - r * S

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < Kg
    k = g * Kg + offs_m
    c = (t - rs * c_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_c = c < Cg
    x_col = x_ptr + (g * Cg + c) * s_xc
    dh = r * dil_h - pad_h
    dw = s * dil_w - pad_w

    offs_p = tl.arange(0, ROWS * BLOCK_W)
    row = offs_p // BLOCK_W
    col = offs_p % BLOCK_W
    h_blocks = tl.cdiv(OH, ROWS)
    w_blocks = tl.cdiv(OW, BLOCK_W)
    per_image = h_blocks * w_blocks
    q_lo, q_hi = split_range(split, CHUNKS_PER_SPLIT, 1, NB * per_image)
    # The step's (image, row block, column block), decoded once and then counted on with carries.
    n = q_lo // per_image
    hb = (q_lo - n * per_image) // w_blocks
    wb = q_lo - n * per_image - hb * w_blocks
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(q_lo, q_hi):
        oh = hb * ROWS + row
        ow = wb * BLOCK_W + col
        mask_p = (oh < OH) & (ow < OW)
        a = load_grad_out(go_ptr, s_gon, s_gok, s_goh, s_gow, gp_ptr, s_gpn, s_gpk, s_gph, s_gpw,
                          pos_ptr, s_pn, s_pk, s_ph, s_pw, PH, PW, n, k[:, None],
                          oh[None, :], ow[None, :], mask_m[:, None] & mask_p[None, :],
                          POOL, PKH, PKW, PSH, PSW, PPH, PPW, PDH, PDW)
        ih = oh * stride_h + dh
        iw = ow * stride_w + dw
        mask_b = in_image(mask_p, ih, iw, H, W)
        b = tl.load(x_col[None, :] + (n * s_xn + ih * s_xh + iw * s_xw)[:, None],
                    mask=mask_b[:, None] & mask_c[None, :], other=0.0)
        acc = mma(a.to(b.dtype), b, acc, DOT_PRECISION, DOT_FP32)
        wb += 1
        row_done = wb == w_blocks
        wb = tl.where(row_done, 0, wb)
        hb = tl.where(row_done, hb + 1, hb)
        image_done = hb == h_blocks
        hb = tl.where(image_done, 0, hb)
        n = tl.where(image_done, n + 1, n)

    RS = R * S
    ws_ptrs = ws_ptr + ((split * K + k) * (Cg * RS))[:, None] + (c * RS + rs)[None, :]
    tl.store(ws_ptrs, acc, mask=mask_m[:, None] & mask_c[None, :])


def conv2d_weight_grad(x, grad_out, weight_size, stride, padding, dilation, groups, *,
                       channels_last=False, allow_tf32=False, config=None, pool=None):
    """Gradient of conv2d with respect to its weight.

    x (N, C, H, W), grad_out (N, K, OH, OW), weight_size (K, C//groups, R, S), geometry as in
    ``conv2d_forward``. Returns grad_weight of shape weight_size in x.dtype (channels_last memory
    format when ``channels_last``): ``gw[k,c,r,s] = sum_{n, oh, ow} dy[n,k,oh,ow] * x[n,
    g*C//groups + c, oh*sh - pt + r*dh, ow*sw - pl + s*dw]`` (x zero outside the image, g = k //
    (K//groups)), accumulated in float32. The sum over N·OH·OW is split across programs into an
    fp32 workspace (split count a function of the shape and config only) and reduced in a fixed
    order: no atomics, bit-for-bit repeatable. With ``pool`` (see grad_out.py) ``grad_out`` is None
    and dy is rebuilt from the pooled gradient. ``config``: index into ``WEIGHT_GRAD_CONFIGS`` or a
    dict.
    """
    tensors, go_strides, pooled_size, pool_consts, (n_, k_, oh, ow) = grad_source(grad_out, pool)
    _, cg, r, s = weight_size
    h, w = x.shape[2], x.shape[3]
    gw = new_empty(tuple(weight_size), dtype=x.dtype, device=x.device, channels_last=channels_last)
    if gw.numel() == 0:
        return gw
    size = implicit_gemm_problem_size(WEIGHT_GRAD, ConvProblem(n_, x.shape[1], h, w, k_, r, s, oh, ow, groups))
    cfg = choose_config(WEIGHT_GRAD_CONFIGS, config, lambda: choose_weight_grad(
        size, weight_grad_taps(WEIGHT_GRAD_CONFIGS, x, grad_out, cg, size.M)))
    taps = cfg["kind"] == "taps"
    if taps:
        # Columns: (tap, channel block) pairs; the reduction steps over blocks of rows x columns of each
        # of the n_ images. Channel blocks contiguous: NCHW x or dy are read as channels_last copies.
        tiles_n = cdiv(size.M, cfg["BLOCK_M"]) * r * s * cdiv(cg, cfg["BLOCK_N"])
        block_w = min(next_pow2(ow), cfg["BLOCK_K"])
        rows = cfg["BLOCK_K"] // block_w
        num_chunks, reduced = n_ * cdiv(oh, rows) * cdiv(ow, block_w), n_
        x, dy = channel_contiguous(x), channel_contiguous(grad_out)
        tensors, go_strides = (dy, dy, dy), (*dy.stride(), *go_strides[4:])
    else:
        tiles_n = cdiv(size.M, cfg["BLOCK_M"]) * cdiv(size.N, cfg["BLOCK_N"])
        num_chunks, reduced = cdiv(size.red, cfg["BLOCK_K"]), size.red
    split, per_split = split_k(num_chunks, tiles_n * groups)
    ws = workspace(split, k_, size.N, device=x.device)
    args = (x, *tensors, ws, reduced, h, w, oh, ow, k_, cg, size.M, r, s, *pooled_size, per_split,
            *stride, *padding, *dilation, *x.stride(), *go_strides)
    common = dict(**pool_consts, **dot_args(x.dtype, allow_tf32), INT64=needs_int64(x, *tensors, ws),
                  BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"],
                  num_stages=cfg["num_stages"])
    if taps:
        _conv2d_weight_grad_taps_kernel[(tiles_n, split, groups)](*args, **common, ROWS=rows, BLOCK_W=block_w)
    else:
        _conv2d_weight_grad_kernel[(tiles_n, split, groups)](*args, C_INNER=channels_inner(x), **common,
                                                             BLOCK_K=cfg["BLOCK_K"])
    splitk_reduce(ws, gw)
    return gw


def aot_specs():
    """Every gemm config x dtype x dy source x precision (``aot_specs_per_source``), NCHW x; the
    workspace is fp32. The taps kernel is judged in the call view only (see ``forward.aot_specs``)."""
    gemm = [c for c in WEIGHT_GRAD_CONFIGS if c["kind"] == "gemm"]
    return aot_specs_per_source("conv2d_weight_grad", _conv2d_weight_grad_kernel, gemm,
                                dict(x_ptr="*{dt}", ws_ptr="*fp32"), dict(C_INNER=False))
