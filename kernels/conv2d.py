"""Triton kernels for conv2d: forward, input gradient, weight gradient and bias gradient.

Every launcher receives arguments already normalised by ``cnnfast.functional``: 4-D tensors with any
strides, one float dtype (float32 / float16 / bfloat16) for all float inputs, int pairs for the
geometry, ``padding = (pad_top, pad_left)`` and the output size given explicitly (so asymmetric
'same' padding needs nothing special). All arithmetic accumulates in float32 and no kernel uses
atomics: every result is deterministic and repeats bit for bit for a given shape and config.

Fused conv + ReLU + max_pool2d backward: the gradient launchers accept
``pool = (grad_pooled, pos, pool_kernel, pool_stride, pool_padding, pool_dilation, conv_out_size)``
in place of ``grad_out``. The conv-output gradient ``dy`` (N, K, OH, OW) is then never stored; the
kernels rebuild each element where they would have loaded it (``_load_grad_out``)::

    dy[n, k, oh, ow] = sum over (ph, pw, i, j) with oh = ph*psh - pph + i*pdh, ow = pw*psw - ppw + j*pdw,
                       0 <= i < pkh, 0 <= j < pkw, 0 <= ph < PH, 0 <= pw < PW, of
                       grad_pooled[n, k, ph, pw] if pos[n, k, ph, pw] == i*pkw + j else 0

``pos`` (int8/int16/int32, any strides) holds the max's local window index, or -1 where ReLU masked
the gradient.

Tile sizes are data (the ``_*_CONFIGS`` lists); each launcher picks one with a small heuristic and
takes ``config=`` (an index into its list, or a dict) to force one.
"""
import torch
import triton
import triton.language as tl

from ._common import interpreting, needs_int64, new_empty

# Split-K launches aim at about four waves of an H100's 132 SMs. The constant does not depend on
# the device, so the reduction order, and with it every bit of the result, depends only on the
# problem shape and the config.
_SPLIT_TARGET_PROGRAMS = 528
# Fewest reduction chunks (of BLOCK_K / BLOCK_P elements) one split program handles.
_SPLIT_MIN_CHUNKS = 4

# Forward configs. "direct": FMA outer products, BLOCK_N = next power of two of K/groups (<= 32);
# "gemm": implicit GEMM on tensor cores (fp32: TF32, or exact FMA dot). The gathered im2col tiles
# cost registers per element, so GEMM tiles stay at BLOCK_K = 16 and <= 4096 accumulator elements
# (larger ones spill at 4 warps; more warps are avoided, see FIELD_NOTES on Inductor's conv template).
_FWD_CONFIGS = [
    # direct, small C·R·S and K/groups (the Net's conv1 3->6 and conv2 6->16, depthwise 3x3)
    dict(kind="direct", BLOCK_M=128, num_warps=4, num_stages=1),
    # direct, same layers at large batch x image: two output pixels per thread share each w load
    dict(kind="direct", BLOCK_M=256, num_warps=4, num_stages=1),
    # gemm, K/groups <= 32 with C·R·S too large to unroll, small N·OH·OW
    dict(kind="gemm", BLOCK_M=64, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=3),
    # gemm, K/groups <= 32, large N·OH·OW
    dict(kind="gemm", BLOCK_M=128, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=3),
    # gemm, K/groups > 32
    dict(kind="gemm", BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=2),
]

# Input-grad configs: implicit GEMM, M = N·H·W, N = C/groups, reduction over K/groups·R·S.
_INPUT_GRAD_CONFIGS = [
    # C/groups <= 16 (the Net's conv2 input, 6 channels; depthwise)
    dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=1),
    # C/groups <= 32
    dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=3),
    # C/groups > 32
    dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=2),
]

# Weight-grad configs: split-K GEMM, M = K/groups, N = C/groups·R·S, reduction over N·OH·OW.
_WEIGHT_GRAD_CONFIGS = [
    # K/groups <= 16, C/groups·R·S <= 32 (the Net's conv1: 6 x 27)
    dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=3),
    # K/groups <= 16, wider C/groups·R·S (the Net's conv2: 16 x 54)
    dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=2),
    # K/groups > 16
    dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=3),
]

# Bias-grad configs: split reduction of dy over N·OH·OW, BLOCK_K channels per program.
_BIAS_GRAD_CONFIGS = [
    # few channels (the Net: 6, 16)
    dict(BLOCK_P=128, BLOCK_K=16, num_warps=4),
    # many channels
    dict(BLOCK_P=32, BLOCK_K=64, num_warps=4),
]

# Fixed-order reduction of split-K partial sums (weight grad and bias grad).
_REDUCE_CONFIG = dict(BLOCK=256, num_warps=4)


# ------------------------------------------------------------------------------------------------
# Device helpers
# ------------------------------------------------------------------------------------------------

@triton.jit
def _wide(x, INT64: tl.constexpr):
    """``x`` as int64 when the launch needs 64-bit offsets, unchanged otherwise."""
    if INT64:
        x = x.to(tl.int64)
    return x


@triton.jit
def _load_grad_out(
    go_ptr, s_gon, s_gok, s_goh, s_gow,
    gp_ptr, s_gpn, s_gpk, s_gph, s_gpw,
    pos_ptr, s_pn, s_pk, s_ph, s_pw,
    PH, PW, n, k, oh, ow, mask,
    POOL: tl.constexpr, PKH: tl.constexpr, PKW: tl.constexpr, PSH: tl.constexpr,
    PSW: tl.constexpr, PPH: tl.constexpr, PPW: tl.constexpr, PDH: tl.constexpr,
    PDW: tl.constexpr,
):
    """dy[n, k, oh, ow] for the broadcast index tensors, 0 where ``mask`` is off.

    POOL=False: one plain load of grad_out (its dtype). POOL=True: dy rebuilt in float32 from the
    pooled gradient: each of the PKH x PKW window offsets (i, j) names one candidate pooled cell
    ph = (oh + PPH - i*PDH) / PSH, pw = (ow + PPW - j*PDW) / PSW, valid when both divisions are exact
    and land in [0, PH) x [0, PW); the candidate contributes grad_pooled there when its stored window
    index equals i*PKW + j. When the windows cannot overlap (stride >= dilated window) only one
    candidate can hold (oh, ow) and only it is read. oh, ow must be >= 0 where ``mask`` is on.
    """
    if POOL:
        if (PSH >= PDH * (PKH - 1) + 1) and (PSW >= PDW * (PKW - 1) + 1):
            # Windows do not overlap: only ph = (oh + PPH) // PSH can hold (oh, ow), at offset
            # i = ((oh + PPH) % PSH) / PDH; one candidate instead of PKH x PKW.
            ph = (oh + PPH) // PSH
            pw = (ow + PPW) // PSW
            di = (oh + PPH) - ph * PSH
            dj = (ow + PPW) - pw * PSW
            ok = (mask & (ph < PH) & (pw < PW) & (di % PDH == 0) & (di < PDH * PKH)
                  & (dj % PDW == 0) & (dj < PDW * PKW))
            win = tl.load(pos_ptr + n * s_pn + k * s_pk + ph * s_ph + pw * s_pw, mask=ok, other=-1)
            hit = ok & (win.to(tl.int32) == (di // PDH) * PKW + dj // PDW)
            dy = tl.load(gp_ptr + n * s_gpn + k * s_gpk + ph * s_gph + pw * s_gpw, mask=hit, other=0.0)
            dy = dy.to(tl.float32)
        else:
            dy = tl.zeros(mask.shape, dtype=tl.float32)
            for i in tl.static_range(PKH):
                ph_num = oh + (PPH - i * PDH)
                ph = ph_num // PSH
                ok_h = (ph_num >= 0) & (ph_num % PSH == 0) & (ph < PH)
                for j in tl.static_range(PKW):
                    pw_num = ow + (PPW - j * PDW)
                    pw = pw_num // PSW
                    ok = mask & ok_h & (pw_num >= 0) & (pw_num % PSW == 0) & (pw < PW)
                    win = tl.load(pos_ptr + n * s_pn + k * s_pk + ph * s_ph + pw * s_pw, mask=ok, other=-1)
                    hit = ok & (win.to(tl.int32) == i * PKW + j)
                    gp = tl.load(gp_ptr + n * s_gpn + k * s_gpk + ph * s_gph + pw * s_gpw, mask=hit, other=0.0)
                    dy += gp.to(tl.float32)
    else:
        dy = tl.load(go_ptr + n * s_gon + k * s_gok + oh * s_goh + ow * s_gow, mask=mask, other=0.0)
    return dy


@triton.jit
def _mma(a, b, acc, DOT_PRECISION: tl.constexpr, DOT_FP32: tl.constexpr):
    """acc + a @ b on tensor cores. DOT_FP32 casts both operands to fp32 first: the launchers set it
    for bfloat16 under the Triton interpreter, whose tl.dot multiplies bfloat16's raw bits."""
    if DOT_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


# ------------------------------------------------------------------------------------------------
# Forward
# ------------------------------------------------------------------------------------------------

@triton.jit
def _conv2d_fwd_direct_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    M, H, W, OH, OW, Kg, R, S,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    s_xn, s_xc, s_xh, s_xw, s_wk, s_wc, s_wr, s_ws, s_b, s_yn, s_yk, s_yh, s_yw,
    Cg: tl.constexpr, HAS_BIAS: tl.constexpr, INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Direct convolution for small channel counts. With C/groups·R·S = 27 or 54 and K/groups = 6
    # or 16 (the Net), implicit-GEMM tiles are mostly padding (MMA wants 16-wide N and K tiles: 2.7x
    # wasted work for K = 6) and the im2col gather costs an address and a mask per A element; the
    # layer is bound by memory and latency, not FLOPs. Here each output pixel's input taps are
    # addressed once per (r, s) and plain FP32 FMAs do the math, exactly (no TF32).
    # Program (pid_m, pid_n, g) owns BLOCK_M output pixels m = (n, oh, ow) x BLOCK_N output channels
    # of group g: 128 threads hold the BLOCK_M x BLOCK_N fp32 accumulator in registers, one pixel
    # row (BLOCK_M = 128) or two (256) and all BLOCK_N channels per thread. A runtime loop over the
    # taps (r, s) computes the input position and padding mask once; the channel loop (Cg
    # constexpr, unrolled) then costs per c one gather of x (BLOCK_M x 1, L1-resident after the
    # first tap), one broadcast load of w[k, c, r, s] (1 x BLOCK_N, the same address in every
    # thread, row index clamped so no mask is needed) and a rank-1 FMA update. Bias is added in
    # fp32; y is written once in its dtype.
    pid_m = _wide(tl.program_id(0), INT64)
    pid_n = _wide(tl.program_id(1), INT64)
    g = _wide(tl.program_id(2), INT64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]
    mask_m = offs_m < M
    ow = offs_m % OW
    t = offs_m // OW
    oh = t % OH
    n = t // OH
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    mask_n = offs_n < Kg
    k = g * Kg + offs_n

    x_base = x_ptr + n * s_xn + (g * Cg) * s_xc
    w_base = w_ptr + (g * Kg + tl.minimum(offs_n, Kg - 1)) * s_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for rs in range(0, R * S):
        r = rs // S
        s = rs - r * S
        ih = ih0 + r * dil_h
        iw = iw0 + s * dil_w
        mask_x = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_ptrs = x_base + ih * s_xh + iw * s_xw
        w_ptrs = w_base + r * s_wr + s * s_ws
        for c in tl.static_range(Cg):
            xv = tl.load(x_ptrs, mask=mask_x, other=0.0).to(tl.float32)
            wv = tl.load(w_ptrs).to(tl.float32)
            acc += xv * wv
            x_ptrs += s_xc
            w_ptrs += s_wc

    if HAS_BIAS:
        acc += tl.load(b_ptr + k * s_b, mask=mask_n, other=0.0).to(tl.float32)
    y_ptrs = y_ptr + n * s_yn + oh * s_yh + ow * s_yw + k * s_yk
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m & mask_n)


@triton.jit
def _conv2d_fwd_gemm_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    M, H, W, OH, OW, Cg, Kg, R, S,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    s_xn, s_xc, s_xh, s_xw, s_wk, s_wc, s_wr, s_ws, s_b, s_yn, s_yk, s_yh, s_yw,
    HAS_BIAS: tl.constexpr, C_INNER: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr, INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Implicit GEMM: M = N·OH·OW output pixels, N = K/groups output channels of group g (grid axis
    # 2), reduction over C/groups·R·S. Program (pid_m, pid_n, g) owns a BLOCK_M x BLOCK_N tile of y
    # with its fp32 accumulator in registers. Each step gathers the im2col tile A (BLOCK_M x BLOCK_K,
    # x at ih = oh*sh - pt + r*dh, iw = ow*sw - pl + s*dw, zero outside the image) and the weight
    # tile B (BLOCK_K x BLOCK_N) and feeds tl.dot (tensor cores; fp32 in TF32 or exact "ieee").
    # The reduction index runs over (c, r, s), or (r, s, c) when C_INNER (channels_last x, where c
    # is the contiguous dimension). Bias is added in fp32; y is written once in its dtype.
    pid_m = _wide(tl.program_id(0), INT64)
    pid_n = _wide(tl.program_id(1), INT64)
    g = _wide(tl.program_id(2), INT64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    ow = offs_m % OW
    t = offs_m // OW
    oh = t % OH
    n = t // OH
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    x_base = x_ptr + n * s_xn + (g * Cg) * s_xc

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < Kg
    k = g * Kg + offs_n
    w_base = w_ptr + k * s_wk

    RS = R * S
    CRS = Cg * RS
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk0 in range(0, CRS, BLOCK_K):
        kk = _wide(kk0 + tl.arange(0, BLOCK_K), INT64)
        mask_k = kk < CRS
        if C_INNER:
            c = kk % Cg
            rs = kk // Cg
        else:
            c = kk // RS
            rs = kk % RS
        r = rs // S
        s = rs % S
        ih = ih0[:, None] + (r * dil_h)[None, :]
        iw = iw0[:, None] + (s * dil_w)[None, :]
        mask_a = (mask_m[:, None] & mask_k[None, :]) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(x_base[:, None] + (c * s_xc)[None, :] + ih * s_xh + iw * s_xw, mask=mask_a, other=0.0)
        b = tl.load(w_base[None, :] + (c * s_wc + r * s_wr + s * s_ws)[:, None],
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = _mma(a, b, acc, DOT_PRECISION, DOT_FP32)

    if HAS_BIAS:
        acc += tl.load(b_ptr + k * s_b, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + (n * s_yn + oh * s_yh + ow * s_yw)[:, None] + (k * s_yk)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# ------------------------------------------------------------------------------------------------
# Input gradient
# ------------------------------------------------------------------------------------------------

@triton.jit
def _conv2d_input_grad_kernel(
    go_ptr, gp_ptr, pos_ptr, w_ptr, gi_ptr,
    M, H, W, OH, OW, Cg, Kg, R, S, PH, PW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    s_gon, s_gok, s_goh, s_gow, s_gpn, s_gpk, s_gph, s_gpw, s_pn, s_pk, s_ph, s_pw,
    s_wk, s_wc, s_wr, s_ws, s_in, s_ic, s_ih, s_iw,
    K_INNER: tl.constexpr, POOL: tl.constexpr,
    PKH: tl.constexpr, PKW: tl.constexpr, PSH: tl.constexpr, PSW: tl.constexpr,
    PPH: tl.constexpr, PPW: tl.constexpr, PDH: tl.constexpr, PDW: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_FP32: tl.constexpr, INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Implicit GEMM for grad_input: M = N·H·W input pixels, N = C/groups input channels of group g
    # (grid axis 2), reduction over K/groups·R·S. Program (pid_m, pid_n, g) owns a BLOCK_M x BLOCK_N
    # tile of grad_input with its fp32 accumulator in registers, so every element is written once
    # (no atomics). A step gathers A (BLOCK_M x BLOCK_K): dy[n, k, oh, ow] with
    # oh = (h + pt - r*dh)/sh, ow = (w + pl - s*dw)/sw where both divisions are exact and in range
    # (zero otherwise; rebuilt from the pooled gradient when POOL), and B (BLOCK_K x BLOCK_N):
    # w[k, c, r, s], then tl.dot. The reduction index runs over (k, r, s), or (r, s, k) when K_INNER
    # (channels_last dy).
    pid_m = _wide(tl.program_id(0), INT64)
    pid_n = _wide(tl.program_id(1), INT64)
    g = _wide(tl.program_id(2), INT64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    iw = offs_m % W
    t = offs_m // W
    ih = t % H
    n = t // H

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < Cg
    cin = g * Cg + offs_n

    RS = R * S
    KRS = Kg * RS
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk0 in range(0, KRS, BLOCK_K):
        kk = _wide(kk0 + tl.arange(0, BLOCK_K), INT64)
        mask_k = kk < KRS
        if K_INNER:
            kl = kk % Kg
            rs = kk // Kg
        else:
            kl = kk // RS
            rs = kk % RS
        r = rs // S
        s = rs % S
        k = g * Kg + kl
        oh_num = (ih + pad_h)[:, None] - (r * dil_h)[None, :]
        ow_num = (iw + pad_w)[:, None] - (s * dil_w)[None, :]
        oh = oh_num // stride_h
        ow = ow_num // stride_w
        mask_a = ((mask_m[:, None] & mask_k[None, :]) & (oh_num >= 0) & (ow_num >= 0)
                  & (oh_num % stride_h == 0) & (ow_num % stride_w == 0) & (oh < OH) & (ow < OW))
        a = _load_grad_out(go_ptr, s_gon, s_gok, s_goh, s_gow, gp_ptr, s_gpn, s_gpk, s_gph, s_gpw,
                           pos_ptr, s_pn, s_pk, s_ph, s_pw, PH, PW, n[:, None], k[None, :], oh, ow,
                           mask_a, POOL, PKH, PKW, PSH, PSW, PPH, PPW, PDH, PDW)
        b = tl.load(w_ptr + (k * s_wk + r * s_wr + s * s_ws)[:, None] + (offs_n * s_wc)[None, :],
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = _mma(a.to(b.dtype), b, acc, DOT_PRECISION, DOT_FP32)

    gi_ptrs = gi_ptr + (n * s_in + ih * s_ih + iw * s_iw)[:, None] + (cin * s_ic)[None, :]
    tl.store(gi_ptrs, acc.to(gi_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# ------------------------------------------------------------------------------------------------
# Weight gradient, bias gradient and the fixed-order split reduction
# ------------------------------------------------------------------------------------------------

@triton.jit
def _conv2d_weight_grad_kernel(
    x_ptr, go_ptr, gp_ptr, pos_ptr, ws_ptr,
    P, H, W, OH, OW, K, Cg, Kg, R, S, PH, PW, CHUNKS_PER_SPLIT,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    s_xn, s_xc, s_xh, s_xw,
    s_gon, s_gok, s_goh, s_gow, s_gpn, s_gpk, s_gph, s_gpw, s_pn, s_pk, s_ph, s_pw,
    C_INNER: tl.constexpr, POOL: tl.constexpr,
    PKH: tl.constexpr, PKW: tl.constexpr, PSH: tl.constexpr, PSW: tl.constexpr,
    PPH: tl.constexpr, PPW: tl.constexpr, PDH: tl.constexpr, PDW: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_FP32: tl.constexpr, INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Split-K GEMM for grad_weight: M = K/groups output channels, N = C/groups·R·S, reduction over
    # P = N·OH·OW output pixels, cut into SPLIT contiguous ranges of CHUNKS_PER_SPLIT·BLOCK_K pixels
    # (grid axis 1). Program (tile, split, g) owns a BLOCK_M x BLOCK_N tile of group g's weight
    # gradient and one pixel range; it accumulates in fp32 registers A (BLOCK_M x BLOCK_K): dy[n, k,
    # oh, ow] (rebuilt from the pooled gradient when POOL) times B (BLOCK_K x BLOCK_N): x[n, c,
    # oh*sh - pt + r*dh, ow*sw - pl + s*dw] (zero outside the image) with tl.dot, then writes its
    # partial tile to the fp32 workspace ws[split, k, c·R·S + r·S + s]. _splitk_reduce_kernel sums
    # the splits in a fixed order. Columns run over (c, r, s), or (r, s, c) when C_INNER.
    pid_t = _wide(tl.program_id(0), INT64)
    split = _wide(tl.program_id(1), INT64)
    g = _wide(tl.program_id(2), INT64)

    RS = R * S
    CRS = Cg * RS
    num_n = tl.cdiv(CRS, BLOCK_N)
    pid_m = pid_t // num_n
    pid_n = pid_t % num_n

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < Kg
    k = g * Kg + offs_m

    offs_j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_j = offs_j < CRS
    if C_INNER:
        c = offs_j % Cg
        rs = offs_j // Cg
    else:
        c = offs_j // RS
        rs = offs_j % RS
    r = rs // S
    s = rs % S
    x_col = x_ptr + (g * Cg + c) * s_xc
    dh = r * dil_h - pad_h
    dw = s * dil_w - pad_w

    p_lo = split * CHUNKS_PER_SPLIT * BLOCK_K
    p_hi = tl.minimum(P, p_lo + CHUNKS_PER_SPLIT * BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for p0 in range(p_lo, p_hi, BLOCK_K):
        offs_p = p0 + tl.arange(0, BLOCK_K)
        mask_p = offs_p < p_hi
        ow = offs_p % OW
        t = offs_p // OW
        oh = t % OH
        n = t // OH
        a = _load_grad_out(go_ptr, s_gon, s_gok, s_goh, s_gow, gp_ptr, s_gpn, s_gpk, s_gph, s_gpw,
                           pos_ptr, s_pn, s_pk, s_ph, s_pw, PH, PW, n[None, :], k[:, None],
                           oh[None, :], ow[None, :], mask_m[:, None] & mask_p[None, :],
                           POOL, PKH, PKW, PSH, PSW, PPH, PPW, PDH, PDW)
        ih = (oh * stride_h)[:, None] + dh[None, :]
        iw = (ow * stride_w)[:, None] + dw[None, :]
        mask_b = (mask_p[:, None] & mask_j[None, :]) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        b = tl.load(x_col[None, :] + (n * s_xn)[:, None] + ih * s_xh + iw * s_xw, mask=mask_b, other=0.0)
        acc = _mma(a.to(b.dtype), b, acc, DOT_PRECISION, DOT_FP32)

    ws_ptrs = ws_ptr + ((split * K + k) * CRS)[:, None] + (c * RS + r * S + s)[None, :]
    tl.store(ws_ptrs, acc, mask=mask_m[:, None] & mask_j[None, :])


@triton.jit
def _conv2d_bias_grad_kernel(
    go_ptr, gp_ptr, pos_ptr, ws_ptr,
    P, K, OH, OW, PH, PW, CHUNKS_PER_SPLIT,
    s_gon, s_gok, s_goh, s_gow, s_gpn, s_gpk, s_gph, s_gpw, s_pn, s_pk, s_ph, s_pw,
    POOL: tl.constexpr,
    PKH: tl.constexpr, PKW: tl.constexpr, PSH: tl.constexpr, PSW: tl.constexpr,
    PPH: tl.constexpr, PPW: tl.constexpr, PDH: tl.constexpr, PDW: tl.constexpr,
    INT64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Split reduction for grad_bias: program (pid_k, split) owns BLOCK_K channels and one contiguous
    # range of CHUNKS_PER_SPLIT·BLOCK_P of the P = N·OH·OW output pixels. It adds BLOCK_P x BLOCK_K
    # tiles of dy (rebuilt from the pooled gradient when POOL) into an fp32 register tile, reduces
    # it over pixels once at the end and writes ws[split, k]; _splitk_reduce_kernel sums the splits
    # in a fixed order.
    pid_k = _wide(tl.program_id(0), INT64)
    split = _wide(tl.program_id(1), INT64)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = offs_k < K

    p_lo = split * CHUNKS_PER_SPLIT * BLOCK_P
    p_hi = tl.minimum(P, p_lo + CHUNKS_PER_SPLIT * BLOCK_P)
    acc = tl.zeros((BLOCK_P, BLOCK_K), dtype=tl.float32)
    for p0 in range(p_lo, p_hi, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < p_hi
        ow = offs_p % OW
        t = offs_p // OW
        oh = t % OH
        n = t // OH
        dy = _load_grad_out(go_ptr, s_gon, s_gok, s_goh, s_gow, gp_ptr, s_gpn, s_gpk, s_gph, s_gpw,
                            pos_ptr, s_pn, s_pk, s_ph, s_pw, PH, PW, n[:, None], offs_k[None, :],
                            oh[:, None], ow[:, None], mask_p[:, None] & mask_k[None, :],
                            POOL, PKH, PKW, PSH, PSW, PPH, PPW, PDH, PDW)
        acc += dy.to(tl.float32)
    tl.store(ws_ptr + split * K + offs_k, tl.sum(acc, axis=0), mask=mask_k)


@triton.jit
def _splitk_reduce_kernel(
    ws_ptr, out_ptr, SPLIT, TOTAL, D1, D2, D3, s_o0, s_o1, s_o2, s_o3,
    INT64: tl.constexpr, BLOCK: tl.constexpr,
):
    # out.flatten()[i] = sum over split = 0 .. SPLIT-1, in that order, of ws[split, i] (fp32), cast
    # to out's dtype. out is 4-D (D0, D1, D2, D3) with any strides; each program owns BLOCK
    # consecutive flat indices.
    pid = _wide(tl.program_id(0), INT64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < TOTAL
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    ws_ptrs = ws_ptr + offs
    for sp in range(0, SPLIT):
        acc += tl.load(ws_ptrs, mask=mask, other=0.0)
        ws_ptrs += TOTAL
    i3 = offs % D3
    t = offs // D3
    i2 = t % D2
    t = t // D2
    i1 = t % D1
    i0 = t // D1
    tl.store(out_ptr + i0 * s_o0 + i1 * s_o1 + i2 * s_o2 + i3 * s_o3, acc.to(out_ptr.dtype.element_ty),
             mask=mask)


# ------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------

def _cdiv(a, b):
    return -(-a // b)


def _next_pow2(v):
    return 1 << max(0, (int(v) - 1).bit_length())


def _choose(configs, config, heuristic):
    """The config dict: ``config`` as an index into ``configs`` or a dict, else ``heuristic()``."""
    if config is None:
        return configs[heuristic()]
    if isinstance(config, dict):
        return config
    return configs[config]


def _dot_args(dtype, allow_tf32):
    """DOT_PRECISION and DOT_FP32 for a GEMM kernel whose operands have ``dtype``."""
    return dict(DOT_PRECISION="tf32" if allow_tf32 and dtype == torch.float32 else "ieee",
                DOT_FP32=interpreting() and dtype == torch.bfloat16)


def _channels_inner(t):
    """Whether the channel dimension is the contiguous one (channels_last-like strides)."""
    return t.stride(1) == 1 and t.shape[1] > 1


def _grad_source(grad_out, pool):
    """Arguments of ``_load_grad_out`` for the launchers.

    Returns (tensors, ints, constexprs, (N, K, OH, OW)): tensors = (go, gp, pos) pointers, ints =
    the 12 strides of go / gp / pos plus (PH, PW) last, constexprs = POOL and the pool geometry.
    """
    if pool is None:
        strides = (*grad_out.stride(), 0, 0, 0, 0, 0, 0, 0, 0)
        consts = dict(POOL=False, PKH=1, PKW=1, PSH=1, PSW=1, PPH=0, PPW=0, PDH=1, PDW=1)
        return (grad_out, grad_out, grad_out), (*strides, 1, 1), consts, tuple(grad_out.shape)
    grad_pooled, pos, (pkh, pkw), (psh, psw), (pph, ppw), (pdh, pdw), (oh, ow) = pool
    strides = (0, 0, 0, 0, *grad_pooled.stride(), *pos.stride())
    consts = dict(POOL=True, PKH=pkh, PKW=pkw, PSH=psh, PSW=psw, PPH=pph, PPW=ppw, PDH=pdh, PDW=pdw)
    n, k, ph, pw = grad_pooled.shape
    return (grad_pooled, grad_pooled, pos), (*strides, ph, pw), consts, (n, k, oh, ow)


def _split(num_chunks, tiles):
    """(split, chunks_per_split) for a reduction of ``num_chunks`` chunks over ``tiles`` tiles."""
    split = max(1, min(_SPLIT_TARGET_PROGRAMS // max(tiles, 1), _cdiv(num_chunks, _SPLIT_MIN_CHUNKS)))
    per_split = max(1, _cdiv(num_chunks, split))
    return max(1, _cdiv(num_chunks, per_split)), per_split


def _splitk_reduce(ws, out):
    """out (4-D, any strides) = ws.sum(0) in fp32, split 0 first, cast to out.dtype."""
    split, total = ws.shape[0], out.numel()
    _, d1, d2, d3 = out.shape
    block = _REDUCE_CONFIG["BLOCK"]
    _splitk_reduce_kernel[(_cdiv(total, block),)](
        ws, out, split, total, d1, d2, d3, *out.stride(),
        INT64=needs_int64(ws, out), BLOCK=block, num_warps=_REDUCE_CONFIG["num_warps"])


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, out_size, *,
                   channels_last=False, allow_tf32=False, config=None):
    """conv2d forward.

    x (N, C, H, W), weight (K, C//groups, R, S), bias (K,) or None, stride/dilation (h, w),
    padding (pad_top, pad_left), out_size (OH, OW). Returns y (N, K, OH, OW) in x.dtype
    (channels_last memory format when ``channels_last``) with, for g = k // (K//groups),
    ``y[n,k,oh,ow] = bias[k] + sum_{c<C//groups, r<R, s<S} x[n, g*C//groups + c, oh*sh - pt + r*dh,
    ow*sw - pl + s*dw] * weight[k, c, r, s]``, x read as zero outside [0, H) x [0, W), accumulated in
    float32. float32 inputs use TF32 tensor cores only when ``allow_tf32`` and the GEMM path is
    taken (the direct path is exact fp32). ``config``: index into ``_FWD_CONFIGS`` or a dict.
    """
    n_, _, h, w = x.shape
    k_, cg, r, s = weight.shape
    oh, ow = out_size
    y = new_empty((n_, k_, oh, ow), dtype=x.dtype, device=x.device, channels_last=channels_last)
    if y.numel() == 0:
        return y
    kg = k_ // groups
    m = n_ * oh * ow
    crs = cg * r * s

    def heuristic():
        if crs <= 64 and kg <= 32:
            return 1 if m >= 256 * _SPLIT_TARGET_PROGRAMS else 0
        if kg <= 32:
            return 3 if m >= 128 * _SPLIT_TARGET_PROGRAMS else 2
        return 4

    cfg = _choose(_FWD_CONFIGS, config, heuristic)
    has_bias = bias is not None
    b = bias if has_bias else weight
    s_b = bias.stride(0) if has_bias else 0
    common = (x, weight, b, y)
    geometry = (*stride, *padding, *dilation,
                *x.stride(), *weight.stride(), s_b, *y.stride())
    int64 = needs_int64(x, weight, y)
    if cfg["kind"] == "direct":
        block_n = cfg.get("BLOCK_N", min(32, _next_pow2(kg)))
        grid = (_cdiv(m, cfg["BLOCK_M"]), _cdiv(kg, block_n), groups)
        _conv2d_fwd_direct_kernel[grid](
            *common, m, h, w, oh, ow, kg, r, s, *geometry,
            Cg=cg, HAS_BIAS=has_bias, INT64=int64,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=block_n,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    else:
        grid = (_cdiv(m, cfg["BLOCK_M"]), _cdiv(kg, cfg["BLOCK_N"]), groups)
        _conv2d_fwd_gemm_kernel[grid](
            *common, m, h, w, oh, ow, cg, kg, r, s, *geometry,
            HAS_BIAS=has_bias, C_INNER=_channels_inner(x),
            **_dot_args(x.dtype, allow_tf32), INT64=int64,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return y


def conv2d_input_grad(grad_out, weight, input_size, stride, padding, dilation, groups, *,
                      channels_last=False, allow_tf32=False, config=None, pool=None):
    """Gradient of conv2d with respect to its input.

    grad_out (N, K, OH, OW), weight (K, C//groups, R, S), input_size (H, W), geometry as in
    ``conv2d_forward``. Returns grad_input (N, C, H, W), C = groups * (C//groups), in grad_out.dtype
    (weight.dtype when ``pool`` is given), channels_last memory format when ``channels_last``:
    ``gi[n,c,h,w] = sum_{k in group(c), r, s} dy[n, k, (h + pt - r*dh)/sh, (w + pl - s*dw)/sw] *
    weight[k, c - g*C//groups, r, s]`` over the terms where both divisions are exact and land in
    [0, OH) x [0, OW); accumulated in float32, deterministic. With ``pool`` (see the module
    docstring) ``grad_out`` is None and dy is rebuilt from the pooled gradient; N is
    grad_pooled.shape[0] and (OH, OW) = conv_out_size. ``config``: index into
    ``_INPUT_GRAD_CONFIGS`` or a dict.
    """
    tensors, go_ints, pool_consts, (n_, k_, oh, ow) = _grad_source(grad_out, pool)
    _, cg, r, s = weight.shape
    h, w = input_size
    dtype = weight.dtype if pool is not None else grad_out.dtype
    gi = new_empty((n_, groups * cg, h, w), dtype=dtype, device=weight.device,
                   channels_last=channels_last)
    if gi.numel() == 0:
        return gi
    kg = k_ // groups
    m = n_ * h * w

    def heuristic():
        return 0 if cg <= 16 else 1 if cg <= 32 else 2

    cfg = _choose(_INPUT_GRAD_CONFIGS, config, heuristic)
    grid = (_cdiv(m, cfg["BLOCK_M"]), _cdiv(cg, cfg["BLOCK_N"]), groups)
    _conv2d_input_grad_kernel[grid](
        *tensors, weight, gi,
        m, h, w, oh, ow, cg, kg, r, s, *go_ints[12:],
        *stride, *padding, *dilation, *go_ints[:12], *weight.stride(), *gi.stride(),
        K_INNER=_channels_inner(tensors[1] if pool is not None else grad_out), **pool_consts,
        **_dot_args(weight.dtype, allow_tf32),
        INT64=needs_int64(*tensors, weight, gi),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return gi


def conv2d_weight_grad(x, grad_out, weight_size, stride, padding, dilation, groups, *,
                       channels_last=False, allow_tf32=False, config=None, pool=None):
    """Gradient of conv2d with respect to its weight.

    x (N, C, H, W), grad_out (N, K, OH, OW), weight_size (K, C//groups, R, S), geometry as in
    ``conv2d_forward``. Returns grad_weight of shape weight_size in x.dtype (channels_last memory
    format when ``channels_last``): ``gw[k,c,r,s] = sum_{n, oh, ow} dy[n,k,oh,ow] * x[n,
    g*C//groups + c, oh*sh - pt + r*dh, ow*sw - pl + s*dw]`` (x zero outside the image, g = k //
    (K//groups)), accumulated in float32. The sum over N·OH·OW is split across programs into an
    fp32 workspace (split count a function of the shape and config only) and reduced in a fixed
    order: no atomics, bit-for-bit repeatable. With ``pool`` (see the module docstring)
    ``grad_out`` is None and dy is rebuilt from the pooled gradient. ``config``: index into
    ``_WEIGHT_GRAD_CONFIGS`` or a dict.
    """
    tensors, go_ints, pool_consts, (n_, k_, oh, ow) = _grad_source(grad_out, pool)
    _, cg, r, s = weight_size
    h, w = x.shape[2], x.shape[3]
    gw = new_empty(tuple(weight_size), dtype=x.dtype, device=x.device, channels_last=channels_last)
    if gw.numel() == 0:
        return gw
    kg = k_ // groups
    crs = cg * r * s
    p = n_ * oh * ow

    def heuristic():
        if kg <= 16:
            return 0 if crs <= 32 else 1
        return 2

    cfg = _choose(_WEIGHT_GRAD_CONFIGS, config, heuristic)
    tiles_n = _cdiv(kg, cfg["BLOCK_M"]) * _cdiv(crs, cfg["BLOCK_N"])
    split, per_split = _split(_cdiv(p, cfg["BLOCK_K"]), tiles_n * groups)
    ws = torch.empty((split, k_, crs), dtype=torch.float32, device=x.device)
    _conv2d_weight_grad_kernel[(tiles_n, split, groups)](
        x, *tensors, ws,
        p, h, w, oh, ow, k_, cg, kg, r, s, *go_ints[12:], per_split,
        *stride, *padding, *dilation, *x.stride(), *go_ints[:12],
        C_INNER=_channels_inner(x), **pool_consts,
        **_dot_args(x.dtype, allow_tf32),
        INT64=needs_int64(x, *tensors, ws),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    _splitk_reduce(ws, gw)
    return gw


def conv2d_bias_grad(grad_out, *, pool=None, config=None):
    """Gradient of conv2d with respect to its bias.

    grad_out (N, K, OH, OW), any strides. Returns (K,) in grad_out.dtype (grad_pooled.dtype when
    ``pool`` is given): ``gb[k] = sum_{n, oh, ow} dy[n, k, oh, ow]``, accumulated in float32 by a
    split reduction into an fp32 workspace summed in a fixed order (no atomics, bit-for-bit
    repeatable). With ``pool`` (see the module docstring) ``grad_out`` is None and dy is rebuilt
    from the pooled gradient. ``config``: index into ``_BIAS_GRAD_CONFIGS`` or a dict.
    """
    tensors, go_ints, pool_consts, (n_, k_, oh, ow) = _grad_source(grad_out, pool)
    src = tensors[1]
    gb = new_empty((k_,), dtype=src.dtype, device=src.device)
    if gb.numel() == 0:
        return gb
    p = n_ * oh * ow
    cfg = _choose(_BIAS_GRAD_CONFIGS, config, lambda: 0 if k_ <= 16 else 1)
    tiles = _cdiv(k_, cfg["BLOCK_K"])
    split, per_split = _split(_cdiv(p, cfg["BLOCK_P"]), tiles)
    ws = torch.empty((split, k_), dtype=torch.float32, device=src.device)
    _conv2d_bias_grad_kernel[(tiles, split)](
        *tensors, ws, p, k_, oh, ow, *go_ints[12:], per_split, *go_ints[:12],
        **pool_consts, INT64=needs_int64(*tensors, ws),
        BLOCK_P=cfg["BLOCK_P"], BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"])
    _splitk_reduce(ws, gb.view(1, k_, 1, 1))
    return gb


# ------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs
# ------------------------------------------------------------------------------------------------

# Pool geometry the AOT specs use for the fused-backward variants: the Net's 2x2 / stride 2.
_AOT_POOL = dict(POOL=True, PKH=2, PKW=2, PSH=2, PSW=2, PPH=0, PPW=0, PDH=1, PDW=1)
_AOT_NO_POOL = dict(POOL=False, PKH=1, PKW=1, PSH=1, PSW=1, PPH=0, PPW=0, PDH=1, PDW=1)


def _spec(name, fn, pointers, constexprs, num_warps, num_stages):
    """One aot_specs() entry: every parameter of ``fn`` in order, pointers typed from ``pointers``,
    constexprs from ``constexprs``, every other parameter i32."""
    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in pointers:
            signature[arg] = pointers[arg]
        else:
            signature[arg] = "i32"
    return dict(name=name, fn=fn, signature=signature, constexprs=dict(constexprs),
                num_warps=num_warps, num_stages=num_stages)


def _tag(cfg, keys):
    return "-".join(f"{k.replace('BLOCK_', 'B')}{cfg[k]}" for k in keys)


def aot_specs():
    """Every (kernel, config, dtype) worth compiling ahead of time, as dicts for kernels/inspect.py."""
    specs = []
    for dt in ("fp32", "fp16", "bf16"):
        ptr = f"*{dt}"
        precisions = ("ieee", "tf32") if dt == "fp32" else ("ieee",)
        # Forward, direct: the Net's conv1 (3 -> 6) and conv2 (6 -> 16), 3x3.
        for cfg in (c for c in _FWD_CONFIGS if c["kind"] == "direct"):
            for cg, kg in ((3, 6), (6, 16)):
                consts = dict(Cg=cg, HAS_BIAS=True, INT64=False,
                              BLOCK_M=cfg["BLOCK_M"], BLOCK_N=_next_pow2(kg))
                specs.append(_spec(
                    f"conv2d_fwd_direct/{dt}/C{cg}-K{kg}-{_tag(consts, ('BLOCK_M', 'BLOCK_N'))}",
                    _conv2d_fwd_direct_kernel,
                    dict(x_ptr=ptr, w_ptr=ptr, b_ptr=ptr, y_ptr=ptr), consts,
                    cfg["num_warps"], cfg["num_stages"]))
        for cfg in (c for c in _FWD_CONFIGS if c["kind"] == "gemm"):
            for prec in precisions:
                for c_inner in (False, True):
                    consts = dict(HAS_BIAS=True, C_INNER=c_inner, DOT_PRECISION=prec, DOT_FP32=False, INT64=False,
                                  BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"])
                    layout = "nhwc" if c_inner else "nchw"
                    specs.append(_spec(
                        f"conv2d_fwd_gemm/{dt}/{prec}/{layout}/{_tag(cfg, ('BLOCK_M', 'BLOCK_N', 'BLOCK_K'))}",
                        _conv2d_fwd_gemm_kernel,
                        dict(x_ptr=ptr, w_ptr=ptr, b_ptr=ptr, y_ptr=ptr), consts,
                        cfg["num_warps"], cfg["num_stages"]))
        for pool_consts in (_AOT_NO_POOL, _AOT_POOL):
            mode = "pool2x2" if pool_consts["POOL"] else "plain"
            grad_ptrs = dict(go_ptr=ptr, gp_ptr=ptr, pos_ptr="*i8")
            for cfg in _INPUT_GRAD_CONFIGS:
                for prec in precisions:
                    consts = dict(K_INNER=False, **pool_consts, DOT_PRECISION=prec, DOT_FP32=False, INT64=False,
                                  BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"])
                    specs.append(_spec(
                        f"conv2d_input_grad/{dt}/{prec}/{mode}/{_tag(cfg, ('BLOCK_M', 'BLOCK_N', 'BLOCK_K'))}",
                        _conv2d_input_grad_kernel, dict(grad_ptrs, w_ptr=ptr, gi_ptr=ptr), consts,
                        cfg["num_warps"], cfg["num_stages"]))
            for cfg in _WEIGHT_GRAD_CONFIGS:
                for prec in precisions:
                    consts = dict(C_INNER=False, **pool_consts, DOT_PRECISION=prec, DOT_FP32=False, INT64=False,
                                  BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"])
                    specs.append(_spec(
                        f"conv2d_weight_grad/{dt}/{prec}/{mode}/{_tag(cfg, ('BLOCK_M', 'BLOCK_N', 'BLOCK_K'))}",
                        _conv2d_weight_grad_kernel, dict(grad_ptrs, x_ptr=ptr, ws_ptr="*fp32"), consts,
                        cfg["num_warps"], cfg["num_stages"]))
            for cfg in _BIAS_GRAD_CONFIGS:
                consts = dict(**pool_consts, INT64=False, BLOCK_P=cfg["BLOCK_P"], BLOCK_K=cfg["BLOCK_K"])
                specs.append(_spec(
                    f"conv2d_bias_grad/{dt}/{mode}/{_tag(cfg, ('BLOCK_P', 'BLOCK_K'))}",
                    _conv2d_bias_grad_kernel, dict(grad_ptrs, ws_ptr="*fp32"), consts,
                    cfg["num_warps"], 1))
        specs.append(_spec(
            f"conv2d_splitk_reduce/{dt}/B{_REDUCE_CONFIG['BLOCK']}", _splitk_reduce_kernel,
            dict(ws_ptr="*fp32", out_ptr=ptr), dict(INT64=False, BLOCK=_REDUCE_CONFIG["BLOCK"]),
            _REDUCE_CONFIG["num_warps"], 1))
    return specs
