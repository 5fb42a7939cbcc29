"""Triton fused conv2d + bias + ReLU + max_pool2d: one forward kernel that reads the input and writes
only the pooled output (never the 4x larger conv output), and a backward built on conv2d's
gradient kernels in their pooled mode.

The forward equals ``max_pool2d(relu(conv2d(x, weight, bias, ...)), ...)`` with PyTorch's pooling rule
(running max from -inf, an element replaces it when ``val > max or isnan(val)``; ReLU keeps NaN). Besides
the pooled values it can return ``pos``: per pooled cell the local window offset ``i * pkw + j`` of the
chosen conv output, or -1 where the pooled value ``v <= 0`` (ReLU passes no gradient there; NaN is not
<= 0). ``pos`` is all the backward needs.
"""
import torch
import triton
import triton.language as tl

from ._common import (TL_DTYPE, TRITON_VERSION, aot_spec, cdiv, choose_config, in_image, interpreting, max_take, mma, needs_int64,
                      new_empty, next_pow2, pos_dtype, tap, wide, window_start)
from .conv2d import conv2d_bias_grad, conv2d_input_grad, conv2d_weight_grad

# One forward kernel, two engines (configs of kind "fma" and "dot"):
# - FMA (direct convolution): for tiny channel counts (the Net: C=3 -> K=6, C=6 -> K=16), where
#   tensor-core tiles (16 deep, 16 wide) would be mostly padding and the layer is bound by latency and
#   memory, not FLOPs. A program owns 8 output channels (all 6 of conv1, half of conv2's 16) of its
#   pooled pixels, or 16 (all of conv2's: each loaded input value feeds twice the FMAs).
# - DOT (implicit GEMM on tensor cores): everything else.
FMA_CONFIGS = [
    dict(BLOCK_P=128, BLOCK_K=8, num_warps=4),   # many pooled pixels: Net conv1 at batch >= 150
    dict(BLOCK_P=64, BLOCK_K=8, num_warps=2),    # Net conv1 at batch 75-150, conv2 (6x6 maps) at batch >= 235
    # smaller problems: one warp per program, the most programs. Triton 3.6 spills it at one warp on
    # sm_80 with 16-bit inputs (168 registers, 16 B of stack); two warps do not.
    dict(BLOCK_P=32, BLOCK_K=8, num_warps=1 if TRITON_VERSION >= (3, 8) else 2),
    # 9 to 16 output channels (conv2) with enough pooled pixels: every channel in one program, 55% of
    # the main loop's instructions FMAs in float32 (43% at 8 channels). Triton 3.8 only: it spills the
    # tile at 4 warps and 128 pixels in the spec view (unspecialised integers) on sm_90 (4 B); Triton
    # 3.6 caps it at 168 registers and spills it on sm_90 (as the JIT compiles conv2) and on sm_80 in
    # 16-bit types, at 2 warps and 4.
    *([dict(BLOCK_P=64, BLOCK_K=16, num_warps=2)] if TRITON_VERSION >= (3, 8) else []),
]
_FMA_ALL_CHANNELS = 3 if len(FMA_CONFIGS) > 3 else None   # the 16-channel config, where there is one
# BLOCK_C is for 16-bit inputs; float32 uses BLOCK_C // 2 (same bytes per tile), at least 16 (the
# depth of a TF32 dot; `_block_c`). Tiles are kept small because every element of the gathered
# (implicit-im2col) tiles carries its own pointer and mask: larger ones spill on sm_80/sm_90.
DOT_CONFIGS = [
    # general layers (many pooled pixels). Triton 3.6 spills it at BLOCK_C=32 with 16-bit inputs (255
    # registers, 112-120 B of stack on sm_80 and sm_90); BLOCK_C=16 does not.
    dict(BLOCK_P=64, BLOCK_K=32, BLOCK_C=32 if TRITON_VERSION >= (3, 8) else 16, num_warps=4, num_stages=3),
    dict(BLOCK_P=32, BLOCK_K=32, BLOCK_C=32, num_warps=4, num_stages=3),    # small problems; float32 without TF32
]
# Every config, FMA first: ``config=`` indexes this list (tests run them all).
CONFIGS = [dict(kind="fma", **c) for c in FMA_CONFIGS] + [dict(kind="dot", **c) for c in DOT_CONFIGS]


def _block_c(cfg, dtype: str) -> int:
    """A DOT config's channel slice for inputs of Triton dtype ``dtype``."""
    return max(16, cfg["BLOCK_C"] // 2) if dtype == "fp32" else cfg["BLOCK_C"]


_MIN_PROGRAMS = 264  # about two programs per SM on an H100 (132 SMs)


@triton.jit
def _pooled_tile(P_TOTAL, PH, PW, Kg, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, INT64: tl.constexpr,
                 local=None):
    """Pooled pixels (n, ph, pw) and group-local output channels owned by this program; ``local``:
    the tile's pixel indices to decode (default ``arange(BLOCK_P)``)."""
    if local is None:
        local = tl.arange(0, BLOCK_P)
    offs_p = wide(tl.program_id(0) * BLOCK_P + local, INT64)
    offs_k = wide(tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K), INT64)
    g = wide(tl.program_id(2), INT64)
    pw = offs_p % PW
    ph = (offs_p // PW) % PH
    n = offs_p // (PW * PH)
    return n, ph, pw, offs_p < P_TOTAL, offs_k, offs_k < Kg, g


@triton.jit
def _relu_rounded(v, OUT_DTYPE: tl.constexpr):
    """ReLU of a conv output first rounded to the storage dtype (as the unfused ops would see it).
    ``where(v < 0, 0, v)`` keeps NaN, like torch.relu."""
    v = v.to(OUT_DTYPE).to(tl.float32)
    return tl.where(v < 0, 0.0, v)


@triton.jit
def _store_pooled(out_ptr, pos_ptr, best, best_q, n, ph, pw, mask_p, k, mask_k,
                  stride_on, stride_oc, stride_oh, stride_ow, WITH_POS: tl.constexpr):
    """Store a (channels x pixels) tile of pooled values and, if WITH_POS, their window offsets
    (-1 where the value is <= 0: no gradient flows through ReLU there). out and pos share strides."""
    o = (k * stride_oc)[:, None] + (n * stride_on + ph * stride_oh + pw * stride_ow)[None, :]
    mask = mask_k[:, None] & mask_p[None, :]
    tl.store(out_ptr + o, best.to(out_ptr.dtype.element_ty), mask=mask)
    if WITH_POS:
        pos = tl.where(best <= 0, -1, best_q)
        tl.store(pos_ptr + o, pos.to(pos_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv_relu_maxpool2d_forward_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, pos_ptr,
    P_TOTAL, H, W, Cg, Kg, OH, OW, PH, PW,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wk, stride_wc, stride_wr, stride_ws,
    stride_on, stride_oc, stride_oh, stride_ow,
    conv_sh, conv_sw, conv_ph, conv_pw, conv_dh, conv_dw,
    pool_sh, pool_sw, pool_ph, pool_pw, pool_dh, pool_dw,
    R: tl.constexpr, S: tl.constexpr, PKH: tl.constexpr, PKW: tl.constexpr, PKP: tl.constexpr,
    HAS_BIAS: tl.constexpr, WITH_POS: tl.constexpr, INT64: tl.constexpr,
    DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    FMA_WK: tl.constexpr, FMA_WC: tl.constexpr,
):
    # Both engines: a program owns BLOCK_P pooled pixels (n, ph, pw) x BLOCK_K output channels of
    # group g (grid axis 2), computes every conv output of their pool windows in fp32 registers and
    # writes only the pooled tile (and pos). DOT, a constexpr, picks the engine: each compiled kernel
    # holds one.
    #
    # DOT=False: direct convolution with FP32 FMAs, for tiny channel counts. Why not tensor cores: with
    # Cg = 3 or 6 input and Kg = 6 or 16 output channels per (r, s) a 16-deep, 16-wide MMA tile is
    # 60-80% padding, and the Net's layers (~0.3 MFLOP per image) are bound by latency and memory
    # traffic, not FLOPs. What matters is issuing few instructions per FMA and reading x once:
    # the program holds all PKH*PKW (padded to PKP) conv positions of its pool windows at once, as an
    # fp32 outer-product register tile acc[BLOCK_K, PKP * BLOCK_P] (the positions flattened, window
    # offset outer: x loads straight into its columns' layout and the weights into its rows', so the
    # loop converts no layout and touches no shared memory). The reduction runs over the R x S taps
    # (unrolled) and, innermost, the input channels c (runtime loop, so only one tap's pointers are
    # live); per step a thread loads its positions' input values and the BLOCK_K weights (one pointer
    # at constant offsets: the weight's channel strides are constants, FMA_WK and FMA_WC; the same
    # addresses across the warp, a broadcast) and issues an FMA per pair.
    # Epilogue: + bias, round to the output dtype, ReLU, then the window max with PyTorch's rule (last
    # NaN, else first maximum), computed as reductions over the window axis. Window positions outside
    # the conv output [0, OH) x [0, OW) (pool padding, ceil_mode) are skipped.
    #
    # DOT=True: implicit GEMM per pool-window offset. GEMM view per group g and offset (i, j): rows =
    # Kg output channels, columns = pooled pixels (n, ph, pw) whose conv position is (ph*pool_sh -
    # pool_ph + i*pool_dh, pw*pool_sw - pool_pw + j*pool_dw), reduction = R * S * Cg (taps (r, s) x
    # BLOCK_C-channel slices, flattened into one pipelined loop). Pixels are the tile's last (fastest)
    # axis so that each thread holds few pixels' gather state (rows, masks, pointers). For each of the
    # PKH x PKW offsets (a runtime loop: unrolling it copies the pipelined GEMM loop and spills) the
    # program accumulates the conv outputs in an fp32 BLOCK_K x BLOCK_P register tile with tl.dot
    # (tensor cores: fp16/bf16, or fp32 as "tf32"; "ieee" fp32 otherwise), adds bias, rounds to the
    # output dtype, applies ReLU and updates the running max and its window offset in registers with
    # PyTorch's rule (max_take). Offsets whose conv position lies outside [0, OH) x [0, OW) are skipped.
    n, ph, pw, mask_p, offs_k, mask_k, g = _pooled_tile(P_TOTAL, PH, PW, Kg, BLOCK_P, BLOCK_K, INT64)
    k = g * Kg + offs_k
    if DOT:
        offs_c = tl.arange(0, BLOCK_C)
        x_base = x_ptr + n * stride_xn + g * Cg * stride_xc               # [BLOCK_P]
        w_base = w_ptr + k * stride_wk                                   # [BLOCK_K]
        if HAS_BIAS:
            bias = tl.load(b_ptr + k, mask=mask_k, other=0.0).to(tl.float32)
        else:
            bias = tl.zeros([BLOCK_K], dtype=tl.float32)
        num_cb = tl.cdiv(Cg, BLOCK_C)

        best = tl.full([BLOCK_K, BLOCK_P], float("-inf"), tl.float32)
        best_q = tl.zeros([BLOCK_K, BLOCK_P], dtype=tl.int32)
        for q in range(0, PKH * PKW):
            oh = ph * pool_sh - pool_ph + (q // PKW) * pool_dh
            ow = pw * pool_sw - pool_pw + (q % PKW) * pool_dw
            valid = in_image(mask_p, oh, ow, OH, OW)
            ih0, iw0 = window_start(oh, ow, conv_sh, conv_sw, conv_ph, conv_pw)
            acc = tl.zeros([BLOCK_K, BLOCK_P], dtype=tl.float32)
            for t in range(0, R * S * num_cb):
                rs = t // num_cb
                c = (t % num_cb) * BLOCK_C + offs_c
                r = rs // S
                s = rs % S
                ih = ih0 + r * conv_dh
                iw = iw0 + s * conv_dw
                ok = in_image(valid, ih, iw, H, W)
                mask_c = c < Cg
                a = tl.load((w_base + r * stride_wr + s * stride_ws)[:, None] + (c * stride_wc)[None, :],
                            mask=mask_k[:, None] & mask_c[None, :], other=0.0)
                b = tl.load((c * stride_xc)[:, None] + (x_base + ih * stride_xh + iw * stride_xw)[None, :],
                            mask=mask_c[:, None] & ok[None, :], other=0.0)
                acc = mma(a, b, acc, DOT_PRECISION, DOT_FP32)
            v = _relu_rounded(acc + bias[:, None], out_ptr.dtype.element_ty)
            best, best_q = max_take(v, best, best_q, q, valid[None, :])
    else:
        # The conv outputs of the tile's pool windows as one flat axis of PKP * BLOCK_P positions
        # (window offset q outer, pooled pixel inner), so the accumulator is a plain outer-product
        # tile acc[BLOCK_K, PKP * BLOCK_P]: x loads straight into its column layout and the weights
        # into its row layout, with no layout conversion (no shared memory) in the loop.
        qp = tl.arange(0, PKP * BLOCK_P)
        q = qp // BLOCK_P                                            # window offset i * PKW + j
        n_q, ph_q, pw_q, mask_q, _, _, _ = _pooled_tile(P_TOTAL, PH, PW, Kg, BLOCK_P, BLOCK_K, INT64, qp % BLOCK_P)
        oh0, ow0 = window_start(ph_q, pw_q, pool_sh, pool_sw, pool_ph, pool_pw)
        oh = oh0 + (q // PKW) * pool_dh
        ow = ow0 + (q % PKW) * pool_dw
        valid = in_image(mask_q & (q < PKH * PKW), oh, ow, OH, OW)
        ih0, iw0 = window_start(oh, ow, conv_sh, conv_sw, conv_ph, conv_pw)
        x_base = x_ptr + n_q * stride_xn + g * Cg * stride_xc
        # The weight's channel strides as constants: its BLOCK_K rows are one pointer and constant offsets.
        w_base = w_ptr + k * FMA_WK

        acc = tl.zeros([BLOCK_K, PKP * BLOCK_P], dtype=tl.float32)
        for r in tl.static_range(R):
            ih, ok_h = tap(ih0, r, conv_dh, H, valid)
            for s in tl.static_range(S):
                iw, ok = tap(iw0, s, conv_dw, W, ok_h)
                x_ptrs = x_base + ih * stride_xh + iw * stride_xw
                w_ptrs = w_base + r * stride_wr + s * stride_ws
                # Channels innermost: only this tap's pointers stay live, advanced by one channel per step.
                for c in range(0, Cg):
                    xv = tl.load(x_ptrs, mask=ok, other=0.0).to(tl.float32)
                    wv = tl.load(w_ptrs, mask=mask_k, other=0.0).to(tl.float32)
                    acc += wv[:, None] * xv[None, :]
                    x_ptrs += stride_xc
                    w_ptrs += FMA_WC

        if HAS_BIAS:
            acc += tl.load(b_ptr + k, mask=mask_k, other=0.0).to(tl.float32)[:, None]
        v = tl.reshape(_relu_rounded(acc, out_ptr.dtype.element_ty), [BLOCK_K, PKP, BLOCK_P])
        valid = tl.reshape(valid, [PKP, BLOCK_P])
        # PyTorch's running-max rule (_common.max_take) over the whole window at once, as reductions: the
        # last NaN if any, else the first maximum. Invalid positions read -inf and never win (valid values
        # are >= 0 or NaN).
        q3 = tl.arange(0, PKP)[None, :, None]
        is_nan = (v != v) & valid[None, :, :]
        q_nan = tl.max(tl.where(is_nan, q3, -1), axis=1)
        v = tl.where(valid[None, :, :] & (v == v), v, float("-inf"))
        v_max = tl.max(v, axis=1)
        q_max = tl.min(tl.where(v == v_max[:, None, :], q3, PKP), axis=1)
        best = tl.where(q_nan >= 0, float("nan"), v_max)
        best_q = tl.where(q_nan >= 0, q_nan, q_max)
    _store_pooled(out_ptr, pos_ptr, best, best_q, n, ph, pw, mask_p, k, mask_k,
                  stride_on, stride_oc, stride_oh, stride_ow, WITH_POS)


def _choose(kind_fma, p_total, kg, dtype, allow_tf32):
    """Index into CONFIGS. FMA: the largest pixel tile that still gives _MIN_PROGRAMS programs (else
    the smallest); DOT: the large tile when it gives _MIN_PROGRAMS programs and the dot is not exact
    float32 ("ieee"), else the small one."""
    if kind_fma:
        programs = lambda i: cdiv(p_total, FMA_CONFIGS[i]["BLOCK_P"]) * cdiv(kg, FMA_CONFIGS[i]["BLOCK_K"])  # noqa: E731
        if kg > 8 and _FMA_ALL_CHANNELS is not None and programs(_FMA_ALL_CHANNELS) >= _MIN_PROGRAMS:
            return _FMA_ALL_CHANNELS
        for i in range(3):
            if programs(i) >= _MIN_PROGRAMS:
                return i
        return 2
    ieee_fp32 = dtype == torch.float32 and not allow_tf32
    big = cdiv(p_total, 64) * cdiv(kg, 32) >= _MIN_PROGRAMS
    return len(FMA_CONFIGS) + (0 if big and not ieee_fp32 else 1)


def conv_relu_maxpool2d_forward(x, weight, bias, stride, padding, dilation, groups, conv_out_size,
                                pool_kernel, pool_stride, pool_padding, pool_dilation, out_size, *,
                                with_pos, channels_last=False, allow_tf32=False, config=None):
    """``max_pool2d(relu(conv2d(x, weight, bias, stride, padding, dilation, groups)), pool_kernel,
    pool_stride, pool_padding, pool_dilation)`` in one kernel; returns ``(out, pos)``.

    x: (N, C, H, W), weight: (K, C // groups, R, S), bias: (K,) or None; one float dtype (float32,
    float16, bfloat16), any strides. Conv geometry: stride, dilation (h, w), padding (pad_top,
    pad_left), conv_out_size (OH, OW): conv output (oh, ow) reads input rows oh*stride[0] - pad_top +
    r*dilation[0] (zeros outside [0, H)), columns likewise. Pool geometry: pool_kernel (pkh, pkw),
    pool_stride, pool_dilation, pool_padding (top, left), out_size (PH, PW) (ceil_mode folded in by
    the front end): pooled (ph, pw) takes conv outputs (ph*pool_stride[0] - top + i*pool_dilation[0],
    pw*... + j*pool_dilation[1]); positions outside [0, OH) x [0, OW) are skipped.
    Each conv output is accumulated in float32, bias added, rounded to x's dtype, passed through ReLU
    (NaN stays NaN), and pooled with PyTorch's rule: running max from -inf, replaced when
    ``val > max or isnan(val)`` (NaN propagates; ties keep the first offset in row-major window order).
    out: (N, K, PH, PW) in x's dtype. pos (only when ``with_pos``, else None): (N, K, PH, PW) of
    ``pos_dtype(pool_kernel)`` (int8 up to 127 window cells, then int16, int32): the window offset
    i * pkw + j of the chosen conv output, or -1 where the pooled value is <= 0 (NaN is not).
    Both NCHW-contiguous, or channels_last when ``channels_last``. float32 uses TF32 tensor cores only
    with ``allow_tf32`` (the tiny-channel FMA path is always exact float32). config: index into
    CONFIGS (FMA configs first, then tensor-core ones) or a dict with ``kind`` "fma"/"dot".
    """
    n, c, h, w = x.shape
    k, cg, r, s = weight.shape
    kg = k // groups
    oh, ow = conv_out_size
    ph, pw = out_size
    out = new_empty((n, k, ph, pw), dtype=x.dtype, device=x.device, channels_last=channels_last)
    pos = (new_empty((n, k, ph, pw), dtype=pos_dtype(pool_kernel), device=x.device, channels_last=channels_last)
           if with_pos else None)
    p_total = n * ph * pw
    if out.numel() == 0:
        return out, pos
    cfg = choose_config(CONFIGS, config, lambda: _choose(cg < 16 and kg <= 16, p_total, kg, x.dtype, allow_tf32))
    grid = (cdiv(p_total, cfg["BLOCK_P"]), cdiv(kg, cfg["BLOCK_K"]), groups)
    args = (
        x, weight, bias if bias is not None else weight, out, pos if with_pos else out,
        p_total, h, w, cg, kg, oh, ow, ph, pw,
        *x.stride(), *weight.stride(), *out.stride(),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        pool_stride[0], pool_stride[1], pool_padding[0], pool_padding[1], pool_dilation[0], pool_dilation[1],
    )
    common = dict(R=r, S=s, PKH=pool_kernel[0], PKW=pool_kernel[1], HAS_BIAS=bias is not None,
                  WITH_POS=with_pos, INT64=needs_int64(x, weight, out),
                  BLOCK_P=cfg["BLOCK_P"], BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"])
    if cfg["kind"] == "fma":  # the DOT-only constexprs at fixed values: one compiled kernel per FMA config
        engine = dict(DOT=False, DOT_PRECISION="ieee", DOT_FP32=False, BLOCK_C=1,
                      FMA_WK=weight.stride(0), FMA_WC=weight.stride(1))
    else:
        engine = dict(DOT=True, DOT_PRECISION="tf32" if x.dtype != torch.float32 or allow_tf32 else "ieee",
                      DOT_FP32=interpreting() and x.dtype == torch.bfloat16,
                      BLOCK_C=_block_c(cfg, TL_DTYPE[x.dtype]), FMA_WK=0, FMA_WC=0, num_stages=cfg["num_stages"])
    _conv_relu_maxpool2d_forward_kernel[grid](*args, PKP=next_pow2(pool_kernel[0] * pool_kernel[1]), **engine,
                                              **common)
    return out, pos


def conv_relu_maxpool2d_backward(grad_out, x, weight, pos, stride, padding, dilation, groups, conv_out_size,
                                 pool_kernel, pool_stride, pool_padding, pool_dilation, *,
                                 needs=(True, True, True), channels_last=False, allow_tf32=False):
    """Gradients of conv_relu_maxpool2d_forward: ``(grad_x, grad_weight, grad_bias)``, each None
    unless the matching ``needs`` flag is set.

    grad_out: (N, K, PH, PW) gradient of the pooled output; pos: as returned by the forward with the
    same arguments. The conv-output gradient is never materialised: conv2d's input-, weight- and
    bias-gradient kernels rebuild it on the fly from (grad_out, pos) (dy[n, k, oh, ow] = sum over the
    pool windows containing (oh, ow) at offset (i, j) of grad_out where pos == i * pkw + j; pos == -1
    passes nothing, which is ReLU's gradient). grad_x: x's shape, grad_weight: weight's shape,
    grad_bias: (K,); dtype of grad_out; grad_x in channels_last when ``channels_last``.
    Deterministic (no atomics), float32 accumulation; ``allow_tf32`` as in the forward.
    """
    pool = (grad_out, pos, pool_kernel, pool_stride, pool_padding, pool_dilation, conv_out_size)
    grad_x = grad_w = grad_b = None
    if needs[0]:
        grad_x = conv2d_input_grad(None, weight, tuple(x.shape[2:]), stride, padding, dilation, groups,
                                   channels_last=channels_last, allow_tf32=allow_tf32, pool=pool)
    if needs[1]:
        grad_w = conv2d_weight_grad(x, None, tuple(weight.shape), stride, padding, dilation, groups,
                                    channels_last=channels_last, allow_tf32=allow_tf32, pool=pool)
    if needs[2]:
        grad_b = conv2d_bias_grad(None, pool=pool)
    return grad_x, grad_w, grad_b


def aot_specs():
    """Specs for AOT compilation: every config x dtype for the Net's geometry (3x3 conv with bias,
    2x2 pool, pos as int8); float32 DOT configs as "tf32", and the config the heuristic uses for
    "ieee" float32 also as "ieee"; the first FMA config also without pos (inference)."""
    specs = []
    geometry = dict(R=3, S=3, PKH=2, PKW=2, PKP=4, HAS_BIAS=True, INT64=False)
    for dt in TL_DTYPE.values():
        pointers = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}", "out_ptr": f"*{dt}", "pos_ptr": "*i8"}
        for ci, cfg in enumerate(FMA_CONFIGS):
            # the Net's conv1 (3 -> 6) for 8-channel tiles, conv2 (6 -> 16) for 16; contiguous weights
            cg = 3 if cfg["BLOCK_K"] == 8 else 6
            for with_pos in (True, False) if ci == 0 else (True,):
                specs.append(aot_spec(
                    f"conv_relu_maxpool2d_fma/{dt}/r3p2{'-pos' if with_pos else ''}"
                    f"/BP{cfg['BLOCK_P']}-BK{cfg['BLOCK_K']}-W{cfg['num_warps']}",
                    _conv_relu_maxpool2d_forward_kernel, pointers,
                    dict(geometry, WITH_POS=with_pos, DOT=False, DOT_PRECISION="ieee", DOT_FP32=False,
                         BLOCK_P=cfg["BLOCK_P"], BLOCK_K=cfg["BLOCK_K"], BLOCK_C=1, FMA_WK=cg * 9, FMA_WC=9),
                    cfg["num_warps"], 1))
        for ci, cfg in enumerate(DOT_CONFIGS):
            precisions = (("tf32", "ieee") if ci == 1 else ("tf32",)) if dt == "fp32" else ("tf32",)
            block_c = _block_c(cfg, dt)
            for precision in precisions:
                specs.append(aot_spec(
                    f"conv_relu_maxpool2d_dot/{dt}{'-' + precision if dt == 'fp32' else ''}/r3p2-pos"
                    f"/BP{cfg['BLOCK_P']}-BK{cfg['BLOCK_K']}-BC{block_c}-W{cfg['num_warps']}-S{cfg['num_stages']}",
                    _conv_relu_maxpool2d_forward_kernel, pointers,
                    dict(geometry, WITH_POS=True, DOT=True, DOT_PRECISION=precision, DOT_FP32=False,
                         BLOCK_P=cfg["BLOCK_P"], BLOCK_K=cfg["BLOCK_K"], BLOCK_C=block_c, FMA_WK=0, FMA_WC=0),
                    cfg["num_warps"], cfg["num_stages"]))
    return specs
