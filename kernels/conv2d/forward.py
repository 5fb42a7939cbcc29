"""conv2d forward: a direct FMA kernel for small channel counts, implicit GEMMs on tensor cores (general, taps,
and for few input channels)."""
import triton
import triton.language as tl

from .._common import (TL_DTYPE, aot_precisions, aot_spec, aot_tag, cdiv, channel_contiguous, channels_inner,
                       choose_config, dot_args, in_image, mma, needs_int64, new_empty, next_pow2, pixel_decode,
                       pixel_tile, program_ids, reduction_tile, tap_block, window_start)
from .configs import (FORWARD_CONFIGS, choose_forward, direct_block_n, few_channels, few_channels_candidates,
                      few_channels_taps, taps_candidates, taps_variant)
from .gemm import FORWARD, ConvProblem, implicit_gemm_problem_size


@triton.jit
def _conv2d_forward_direct_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    M, H, W, OH, OW, Kg, R, S,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    s_xn, s_xc, s_xh, s_xw, s_wk, s_wc, s_wr, s_ws, s_b, s_yn, s_yk, s_yh, s_yw,
    Cg: tl.constexpr, HAS_BIAS: tl.constexpr, INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Direct convolution for small channel counts: the forward GEMM (M = N·OH·OW pixels, N = K/groups
    # channels, reduction over C/groups·R·S) done as rank-1 FP32 FMA updates. With C/groups·R·S = 27
    # or 54 and K/groups = 6 or 16 (the Net), implicit-GEMM tiles are mostly padding (MMA wants
    # 16-wide N and K tiles: 2.7x wasted work for K = 6) and the im2col gather costs an address and a
    # mask per A element; the layer is bound by memory and latency, not FLOPs. Here each output
    # pixel's input taps are addressed once per (r, s) and plain FP32 FMAs do the math, exactly (no
    # TF32).
    # Program (pid_m, pid_n, g) owns BLOCK_M output pixels m = (n, oh, ow) x BLOCK_N output channels
    # of group g: 128 threads hold the BLOCK_M x BLOCK_N fp32 accumulator in registers, one pixel
    # row (BLOCK_M = 128) or two (256) and all BLOCK_N channels per thread. A runtime loop over the
    # taps (r, s) computes the input position and padding mask once; the channel loop (Cg
    # constexpr, unrolled) then costs per c one gather of x (BLOCK_M x 1, L1-resident after the
    # first tap), one broadcast load of w[k, c, r, s] (1 x BLOCK_N, the same address in every
    # thread, row index clamped so no mask is needed) and a rank-1 FMA update. Bias is added in
    # fp32; y is written once in its dtype.
    pid_m, pid_n, g = program_ids(INT64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]
    mask_m = offs_m < M
    n, oh, ow = pixel_decode(offs_m, OH, OW)
    ih0, iw0 = window_start(oh, ow, stride_h, stride_w, pad_h, pad_w)

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
        mask_x = in_image(mask_m, ih, iw, H, W)
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
def _conv2d_forward_gemm_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    M, H, W, OH, OW, Cg, Kg, R, S,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    s_xn, s_xc, s_xh, s_xw, s_wk, s_wc, s_wr, s_ws, s_b, s_yn, s_yk, s_yh, s_yw,
    HAS_BIAS: tl.constexpr, C_INNER: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr, INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Implicit GEMM (gemm.py, forward): M = N·OH·OW output pixels, N = K/groups output channels of
    # group g (grid axis 2), reduction over C/groups·R·S. Program (pid_m, pid_n, g) owns a BLOCK_M x
    # BLOCK_N tile of y with its fp32 accumulator in registers. Each step gathers the im2col tile A
    # (BLOCK_M x BLOCK_K, x at ih = oh*sh - pt + r*dh, iw = ow*sw - pl + s*dw, zero outside the
    # image) and the weight tile B (BLOCK_K x BLOCK_N) and feeds tl.dot (tensor cores; fp32 in TF32
    # or exact "ieee"). The reduction index runs over (c, r, s), or (r, s, c) when C_INNER
    # (channels_last x, where c is the contiguous dimension). Bias is added in fp32; y is written
    # once in its dtype.
    pid_m, pid_n, g = program_ids(INT64)

    n, oh, ow, mask_m = pixel_tile(pid_m * BLOCK_M, M, OH, OW, BLOCK_M)
    ih0, iw0 = window_start(oh, ow, stride_h, stride_w, pad_h, pad_w)
    x_base = x_ptr + n * s_xn + (g * Cg) * s_xc

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < Kg
    k = g * Kg + offs_n
    w_base = w_ptr + k * s_wk

    RS = R * S
    CRS = Cg * RS
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk0 in range(0, CRS, BLOCK_K):
        c, r, s, mask_k = reduction_tile(kk0, Cg, RS, S, C_INNER, INT64, BLOCK_K)
        ih = ih0[:, None] + (r * dil_h)[None, :]
        iw = iw0[:, None] + (s * dil_w)[None, :]
        mask_a = in_image(mask_m[:, None] & mask_k[None, :], ih, iw, H, W)
        a = tl.load(x_base[:, None] + (c * s_xc)[None, :] + ih * s_xh + iw * s_xw, mask=mask_a, other=0.0)
        b = tl.load(w_base[None, :] + (c * s_wc + r * s_wr + s * s_ws)[:, None],
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = mma(a, b, acc, DOT_PRECISION, DOT_FP32)

    if HAS_BIAS:
        acc += tl.load(b_ptr + k * s_b, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + (n * s_yn + oh * s_yh + ow * s_yw)[:, None] + (k * s_yk)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _conv2d_forward_taps_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    M, H, W, OH, OW, Cg, Kg, R, S,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    s_xn, s_xc, s_xh, s_xw, s_wk, s_wc, s_wr, s_ws, s_b, s_yn, s_yk, s_yh, s_yw,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_FP32: tl.constexpr, INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Implicit GEMM (gemm.py, forward) in the structure of CUTLASS's and Inductor's conv kernels:
    # M = N·OH·OW output pixels, N = K/groups output channels of group g (grid axis 2), reduction
    # over (r, s, c) with the filter taps (r, s) outer and blocks of BLOCK_K contiguous channels
    # inner, flattened into one loop of R·S·ceil(C/groups / BLOCK_K) steps. Program (pid_m, pid_n, g)
    # owns a BLOCK_M x BLOCK_N tile of y with its fp32 accumulator in registers. Per step the only
    # index arithmetic is scalar (which tap, which channel block); the row offsets and the image mask
    # of the tap are one value per pixel row, and the channel offsets one arange: no division or
    # modulo per element. With channels_last x (channel stride 1) each pixel row of the A tile is
    # BLOCK_K contiguous elements, and the weight tile's rows are contiguous in c for a channels_last
    # weight, so both operands load in 16-byte vectors; Triton pipelines the loop (num_stages) and
    # feeds tl.dot (wgmma on sm_90; fp32 in TF32 or exact "ieee"). Any strides are read correctly;
    # the launcher hands it NCHW x and weights as channels_last copies (channel_contiguous), so the
    # channel blocks are never strided, and gives it a channels_last y. Bias is added in fp32; y is
    # written once in its dtype.
    pid_m, pid_n, g = program_ids(INT64)

    n, oh, ow, mask_m = pixel_tile(pid_m * BLOCK_M, M, OH, OW, BLOCK_M)
    ih0, iw0 = window_start(oh, ow, stride_h, stride_w, pad_h, pad_w)
    x_base = x_ptr + n * s_xn + (g * Cg) * s_xc

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < Kg
    k = g * Kg + offs_n
    w_base = w_ptr + k * s_wk

    c_blocks = tl.cdiv(Cg, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, R * S * c_blocks):
        r, s, c = tap_block(step, c_blocks, S, BLOCK_K)
        mask_c = c < Cg
        ih = ih0 + r * dil_h
        iw = iw0 + s * dil_w
        mask_a = in_image(mask_m, ih, iw, H, W)
        a = tl.load(x_base[:, None] + (ih * s_xh + iw * s_xw)[:, None] + (c * s_xc)[None, :],
                    mask=mask_a[:, None] & mask_c[None, :], other=0.0)
        b = tl.load(w_base[None, :] + (r * s_wr + s * s_ws) + (c * s_wc)[:, None],
                    mask=mask_c[:, None] & mask_n[None, :], other=0.0)
        acc = mma(a, b, acc, DOT_PRECISION, DOT_FP32)

    if HAS_BIAS:
        acc += tl.load(b_ptr + k * s_b, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + (n * s_yn + oh * s_yh + ow * s_yw)[:, None] + (k * s_yk)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _conv2d_forward_few_channels_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    M, OH, OW, K, R, stride_h, dil_h,
    s_xn, s_xh, s_wk, s_wr, s_b, s_yn, s_yk, s_yh, s_yw,
    STRIDE_W: tl.constexpr, CP: tl.constexpr, SC: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr, INT64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # Implicit GEMM for layers with few input channels (ResNet's stem, 3 -> 64 7x7 stride 2), after
    # CUTLASS's "few channels" iterators: M = N·OH·OW output pixels, N = K output channels, reduction
    # over (r, s, c) one filter row r per step. The launcher hands it x zero-padded in space (so no
    # tap falls outside it) and in channels to CP, channels_last: one filter row's taps s of a pixel
    # are then BLOCK_K = SP·CP contiguous elements (SP: the row's S taps rounded up to a power of
    # two, at least 16 elements, the extra ones weighted zero and never read: masked past SC = S·CP,
    # so an Inf or NaN beside a window cannot reach it), 16-byte aligned when STRIDE_W·CP elements
    # are (STRIDE_W is a constant for that reason). Its weight is (K, R, SP, CP), contiguous: the B
    # tile is K-major.
    # Program (pid_m, pid_n) owns a BLOCK_M x BLOCK_N tile of y with its fp32 accumulator in
    # registers; R steps, each one A tile (a row per pixel, masked by pixel only) and one B tile,
    # then tl.dot. Bias is added in fp32; y is written once in its dtype.
    pid_m, pid_n, _ = program_ids(INT64)

    n, oh, ow, mask_m = pixel_tile(pid_m * BLOCK_M, M, OH, OW, BLOCK_M)
    row = n * s_xn + (oh * stride_h) * s_xh + (ow * STRIDE_W) * CP

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < K
    offs_k = tl.arange(0, BLOCK_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r in range(0, R):
        a = tl.load(x_ptr + (row + r * dil_h * s_xh)[:, None] + offs_k[None, :],
                    mask=mask_m[:, None] & (offs_k < SC)[None, :], other=0.0)
        b = tl.load(w_ptr + (offs_n * s_wk)[None, :] + r * s_wr + offs_k[:, None], mask=mask_n[None, :], other=0.0)
        acc = mma(a, b, acc, DOT_PRECISION, DOT_FP32)

    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n * s_b, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + (n * s_yn + oh * s_yh + ow * s_yw)[:, None] + (offs_n * s_yk)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _few_channels_operands(x, weight, stride, padding, dilation, out_size, cp):
    """x zero-padded in space and to ``cp`` channels, channels_last and 16-byte aligned per row, and
    the weight as (K, R, SP, CP) with zeros in the padded taps and channels (see the kernel)."""
    n_, c_, h, w = x.shape
    k_, _, r, s = weight.shape
    (oh, ow), (pt, pl) = out_size, padding
    sp = few_channels_taps(s, cp)
    hp = max(pt + h, (oh - 1) * stride[0] + (r - 1) * dilation[0] + 1)
    wp = cdiv(max(pl + w, (ow - 1) * stride[1] + sp), 4) * 4      # rows of whole 16-byte units
    xp = x.new_zeros((n_, hp, wp, cp))
    xp[:, pt:pt + h, pl:pl + w, :c_] = x.permute(0, 2, 3, 1)
    wp_ = weight.new_zeros((k_, r, sp, cp))
    wp_[:, :, :s, :c_] = weight.permute(0, 2, 3, 1)
    return xp, wp_


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, out_size, *,
                   channels_last=False, allow_tf32=False, config=None):
    """conv2d forward.

    x (N, C, H, W), weight (K, C//groups, R, S), bias (K,) or None, stride/dilation (h, w),
    padding (pad_top, pad_left), out_size (OH, OW). Returns y (N, K, OH, OW) in x.dtype
    (channels_last memory format when ``channels_last``) with, for g = k // (K//groups),
    ``y[n,k,oh,ow] = bias[k] + sum_{c<C//groups, r<R, s<S} x[n, g*C//groups + c, oh*sh - pt + r*dh,
    ow*sw - pl + s*dw] * weight[k, c, r, s]``, x read as zero outside [0, H) x [0, W), accumulated in
    float32. float32 inputs use TF32 tensor cores only when ``allow_tf32`` and the GEMM path is
    taken (the direct path is exact fp32). ``config``: index into ``FORWARD_CONFIGS`` or a dict.
    """
    n_, c_, h, w = x.shape
    k_, cg, r, s = weight.shape
    oh, ow = out_size
    y = new_empty((n_, k_, oh, ow), dtype=x.dtype, device=x.device, channels_last=channels_last)
    if y.numel() == 0:
        return y
    size = implicit_gemm_problem_size(FORWARD, ConvProblem(n_, c_, h, w, k_, r, s, oh, ow, groups))
    m, kg = size.M, size.N
    cfg = choose_config(FORWARD_CONFIGS, config, lambda: choose_forward(
        size, taps_candidates(FORWARD_CONFIGS, x, cg, allow_tf32),
        few_channels_candidates(FORWARD_CONFIGS, x, weight, dilation, groups, allow_tf32)))
    # channels the few-channels kernel pads to; 0: it cannot serve the layer (a forced "few" config
    # then runs the gemm kernel)
    cp = few_channels(x, weight, dilation, groups) if cfg["kind"] == "few" else 0
    has_bias = bias is not None
    b = bias if has_bias else weight
    s_b = bias.stride(0) if has_bias else 0
    common = (x, weight, b, y)
    geometry = (*stride, *padding, *dilation,
                *x.stride(), *weight.stride(), s_b, *y.stride())
    int64 = needs_int64(x, weight, y)
    if cfg["kind"] == "direct":
        block_n = cfg.get("BLOCK_N", direct_block_n(kg))
        grid = (cdiv(m, cfg["BLOCK_M"]), cdiv(kg, block_n), groups)
        _conv2d_forward_direct_kernel[grid](
            *common, m, h, w, oh, ow, kg, r, s, *geometry,
            Cg=cg, HAS_BIAS=has_bias, INT64=int64,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=block_n,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    elif cp:
        xp, wp = _few_channels_operands(x, weight, stride, padding, dilation, out_size, cp)
        yc = y if channels_last else new_empty(y.shape, dtype=y.dtype, device=y.device, channels_last=True)
        tile = taps_variant(cfg, x.dtype)
        grid = (cdiv(m, tile["BLOCK_M"]), cdiv(k_, tile["BLOCK_N"]), 1)
        _conv2d_forward_few_channels_kernel[grid](
            xp, wp, b, yc, m, oh, ow, k_, r, stride[0], dilation[0],
            xp.stride(0), xp.stride(1), wp.stride(0), wp.stride(1), s_b, *yc.stride(),
            STRIDE_W=stride[1], CP=cp, SC=s * cp, HAS_BIAS=has_bias, **dot_args(x.dtype, allow_tf32),
            INT64=needs_int64(xp, wp, yc), BLOCK_M=tile["BLOCK_M"], BLOCK_N=tile["BLOCK_N"],
            BLOCK_K=wp.shape[2] * cp, num_warps=tile["num_warps"], num_stages=tile["num_stages"])
        if yc is not y:
            y.copy_(yc)
    elif cfg["kind"] == "taps":
        grid = (cdiv(m, cfg["BLOCK_M"]), cdiv(kg, cfg["BLOCK_N"]), groups)
        tile = taps_variant(cfg, x.dtype)
        # NCHW operands are read, and an NCHW result written, through channels_last copies: storing
        # the tile's channel-major accumulator to NCHW directly costs a layout conversion that spills.
        xc, wc = channel_contiguous(x), channel_contiguous(weight)
        yc = y if channels_last else new_empty(y.shape, dtype=y.dtype, device=y.device, channels_last=True)
        _conv2d_forward_taps_kernel[grid](
            xc, wc, b, yc, m, h, w, oh, ow, cg, kg, r, s,
            *stride, *padding, *dilation, *xc.stride(), *wc.stride(), s_b, *yc.stride(),
            HAS_BIAS=has_bias, **dot_args(x.dtype, allow_tf32), INT64=int64,
            BLOCK_M=tile["BLOCK_M"], BLOCK_N=tile["BLOCK_N"], BLOCK_K=tile["BLOCK_K"],
            num_warps=tile["num_warps"], num_stages=tile["num_stages"])
        if yc is not y:
            y.copy_(yc)
    else:
        cfg = dict(cfg, BLOCK_K=cfg.get("BLOCK_K", 16))   # a "few" config has none: the gemm kernels' depth
        grid = (cdiv(m, cfg["BLOCK_M"]), cdiv(kg, cfg["BLOCK_N"]), groups)
        _conv2d_forward_gemm_kernel[grid](
            *common, m, h, w, oh, ow, cg, kg, r, s, *geometry,
            HAS_BIAS=has_bias, C_INNER=channels_inner(x),
            **dot_args(x.dtype, allow_tf32), INT64=int64,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return y


def aot_specs():
    """Every forward config x dtype: direct for the Net's conv1 (3 -> 6) and conv2 (6 -> 16), 3x3;
    GEMM in both layouts (NCHW, channels_last) and, for float32, both precisions. Not the taps or
    few-channels kernels: their speed rests on the JIT's specialisation (channel stride 1, strides
    divisible by 16), without which they are different kernels (the taps one spills); they are
    compiled and checked in the call view (``python -m cnnfast.kernels.aot --suite ...``) for the
    layers they serve."""
    specs = []
    for dt in TL_DTYPE.values():
        pointers = dict(x_ptr=f"*{dt}", w_ptr=f"*{dt}", b_ptr=f"*{dt}", y_ptr=f"*{dt}")
        for cfg in (c for c in FORWARD_CONFIGS if c["kind"] == "direct"):
            for cg, kg in ((3, 6), (6, 16)):
                consts = dict(Cg=cg, HAS_BIAS=True, INT64=False, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=direct_block_n(kg))
                name = f"conv2d_forward_direct/{dt}/C{cg}-K{kg}-{aot_tag(consts, ('BLOCK_M', 'BLOCK_N'))}"
                specs.append(aot_spec(name, _conv2d_forward_direct_kernel, pointers, consts,
                                      cfg["num_warps"], cfg["num_stages"]))
        for cfg in (c for c in FORWARD_CONFIGS if c["kind"] == "gemm"):
            for prec in aot_precisions(dt):
                for c_inner in (False, True):
                    tiles = dict((key, cfg[key]) for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
                    consts = dict(HAS_BIAS=True, C_INNER=c_inner, DOT_PRECISION=prec, DOT_FP32=False, INT64=False,
                                  **tiles)
                    name = f"conv2d_forward_gemm/{dt}/{prec}/{'nhwc' if c_inner else 'nchw'}/{aot_tag(tiles, tiles)}"
                    specs.append(aot_spec(name, _conv2d_forward_gemm_kernel, pointers, consts,
                                          cfg["num_warps"], cfg["num_stages"]))
    return specs
