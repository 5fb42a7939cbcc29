"""What every Triton kernel of cnnfast shares: device helpers (index decoding, image masks, the
max-pool rule, the tensor-core step) and host helpers (config choice, output allocation, index width,
dtype names, AOT compile specs).

Launchers receive arguments already normalised and checked by ``cnnfast.functional``; nothing here
validates user input. The device helpers are ``@triton.jit`` functions, inlined into every kernel that
calls them, so sharing them costs no instructions.
"""
import os

import torch
import triton
import triton.language as tl

from .._outputs import new_empty, pos_dtype  # noqa: F401  (re-exported for the launchers)

# Triton's (major, minor): a few configs are reshaped for older releases, whose compiler spills
# where 3.8's does not (each such config says so beside it; the AOT tests check every config).
TRITON_VERSION = tuple(int(part) for part in triton.__version__.split(".")[:2])

# ------------------------------------------------------------------------------------------------
# Device helpers
# ------------------------------------------------------------------------------------------------


@triton.jit
def wide(x, INT64: tl.constexpr):
    """``x`` as int64 when the launch needs 64-bit offsets, unchanged otherwise."""
    if INT64:
        x = x.to(tl.int64)
    return x


@triton.jit
def program_ids(INT64: tl.constexpr):
    """The three grid coordinates of this program, int64 when the launch needs 64-bit offsets."""
    return wide(tl.program_id(0), INT64), wide(tl.program_id(1), INT64), wide(tl.program_id(2), INT64)


@triton.jit
def pixel_decode(m, OH, OW):
    """Output pixel ``m = (n * OH + oh) * OW + ow`` (the rows of every implicit GEMM) -> (n, oh, ow)."""
    ow = m % OW
    t = m // OW
    oh = t % OH
    n = t // OH
    return n, oh, ow


@triton.jit
def pixel_tile(start, limit, OH, OW, BLOCK: tl.constexpr):
    """The BLOCK output pixels from ``start`` -> (n, oh, ow, mask), mask = pixel < limit."""
    offs = start + tl.arange(0, BLOCK)
    mask = offs < limit
    n, oh, ow = pixel_decode(offs, OH, OW)
    return n, oh, ow, mask


@triton.jit
def element_decode(offs, C, H, W, CHANNELS_LAST: tl.constexpr):
    """Flat index of a 4-D (N, C, H, W) tensor in its memory order -> (n, c, h, w): NCHW
    ``((n * C + c) * H + h) * W + w``, or NHWC ``((n * H + h) * W + w) * C + c`` when CHANNELS_LAST.
    For the elementwise kernels: each coordinate divides ``offs`` by the product of the faster
    dimensions (independent divisions, not the chained ones of ``pixel_decode``; the forms compile
    differently and each kernel keeps the one it was tuned with)."""
    if CHANNELS_LAST:
        c = offs % C
        w = (offs // C) % W
        h = (offs // (C * W)) % H
        n = offs // (C * W * H)
    else:
        w = offs % W
        h = (offs // W) % H
        c = (offs // (W * H)) % C
        n = offs // (W * H * C)
    return n, c, h, w


@triton.jit
def reduction_decode(kk, CH, RS, S, CH_INNER: tl.constexpr):
    """Reduction index of a convolution GEMM -> (ch, r, s): ``kk = ch * R * S + r * S + s``, or
    ``kk = (r * S + s) * CH + ch`` when CH_INNER (the channel dimension is the contiguous one, as in
    channels_last tensors, so consecutive kk read consecutive addresses). RS = R * S. ``ch`` is the
    input channel (forward, weight gradient: ``C_INNER``) or the output channel (input gradient:
    ``K_INNER``)."""
    if CH_INNER:
        ch = kk % CH
        rs = kk // CH
    else:
        ch = kk // RS
        rs = kk % RS
    r = rs // S
    s = rs % S
    return ch, r, s


@triton.jit
def reduction_tile(start, CH, RS, S, CH_INNER: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
    """The BLOCK reduction indices from ``start`` decoded (``reduction_decode``) -> (ch, r, s, mask),
    mask = index < CH * RS. Forward and input_grad reduce over them; weight_grad's GEMM columns are
    the same (c, r, s) index."""
    kk = wide(start + tl.arange(0, BLOCK), INT64)
    mask = kk < CH * RS
    ch, r, s = reduction_decode(kk, CH, RS, S, CH_INNER)
    return ch, r, s, mask


@triton.jit
def window_start(oh, ow, stride_h, stride_w, pad_h, pad_w):
    """First input row and column of the window of output (oh, ow): tap (r, s) then reads
    (start_h + r * dil_h, start_w + s * dil_w) (im2col)."""
    return oh * stride_h - pad_h, ow * stride_w - pad_w


@triton.jit
def tap(start, t, dil, size, mask):
    """im2col along one axis: index ``start + t * dil`` of window tap t, and ``mask`` narrowed to
    the taps inside [0, size) (padding is never read)."""
    i = start + t * dil
    return i, mask & (i >= 0) & (i < size)


@triton.jit
def tap_block(step, blocks, S, BLOCK: tl.constexpr):
    """Step ``step`` of a taps loop (filter taps outer, ``blocks`` channel blocks of BLOCK inner, as
    one flattened loop) -> (r, s, the block's BLOCK channel indices); scalar arithmetic but the arange."""
    rs = step // blocks
    ch = (step - rs * blocks) * BLOCK + tl.arange(0, BLOCK)
    r = rs // S
    return r, rs - r * S, ch


@triton.jit
def in_image(mask, ih, iw, H, W):
    """The im2col mask: ``mask`` narrowed to the (ih, iw) inside the H x W image (outside it x reads
    as zero). The terms are and-ed one by one onto ``mask``: grouping them instead cost the weight
    gradient kernel 32 more registers on sm_90."""
    return mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)


@triton.jit
def max_take(val, best, best_q, q, ok):
    """One step of PyTorch's max_pool2d rule (``max_pool2d_with_indices`` in ATen): the running
    maximum starts at -inf and element ``val`` at window offset ``q`` replaces it when
    ``val > best or isnan(val)``, so NaN propagates with the last NaN's offset and ties keep the
    first maximum in row-major window order. Cells where ``ok`` is off never win."""
    take = ok & ((val > best) | (val != val))
    return tl.where(take, val, best), tl.where(take, q, best_q)


@triton.jit
def mma(a, b, acc, DOT_PRECISION: tl.constexpr, DOT_FP32: tl.constexpr):
    """acc + a @ b on tensor cores (fp32 operands in DOT_PRECISION: "tf32" or exact "ieee").
    DOT_FP32 casts both operands to fp32 first: the launchers set it for bfloat16 under the Triton
    interpreter, whose tl.dot multiplies bfloat16's raw bits."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


# ------------------------------------------------------------------------------------------------
# Host helpers
# ------------------------------------------------------------------------------------------------

# Triton's name of each float dtype, in AOT signatures and spec names.
TL_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def target_arch():
    """The compute capability (major * 10 + minor) Triton compiles the next launch for -- the current
    device's, or the target of ``cnnfast.kernels.jitview.compile_only`` --, None under the interpreter."""
    if interpreting():
        return None
    from triton.runtime import driver
    return driver.active.get_current_target().arch


def needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether any tensor spans more than 2**31 - 1 elements of memory, so offsets need int64."""
    for t in tensors:
        if t is None or t.numel() == 0:
            continue
        span = 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))
        if span >= 2**31:
            return True
    return False


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for non-negative ints."""
    return -(-a // b)


def next_pow2(v: int) -> int:
    """The smallest power of two >= v (1 for v <= 1)."""
    return 1 << (max(int(v), 1) - 1).bit_length()


def choose_config(configs, config, heuristic):
    """The config dict a launcher runs: ``config`` as an index into ``configs`` or a dict, else
    ``configs[heuristic()]``."""
    if config is None:
        return configs[heuristic()]
    if isinstance(config, dict):
        return config
    return configs[config]


def dot_args(dtype, allow_tf32):
    """DOT_PRECISION and DOT_FP32 (see ``mma``) for a GEMM kernel whose operands have ``dtype``."""
    return dict(DOT_PRECISION="tf32" if allow_tf32 and dtype == torch.float32 else "ieee",
                DOT_FP32=interpreting() and dtype == torch.bfloat16)


def channel_contiguous(t):
    """``t`` (4-D) dense in channels_last order with exactly channels_last's strides: ``t`` itself when
    it is, else a channels_last copy -- the one transposition cuDNN also makes of NCHW tensors for its
    tensor-core kernels -- so that a kernel reading blocks of channels loads them as vectors whatever
    layout the caller's tensors have. A size-1 dimension's stride is set to channels_last's too (a view:
    it never multiplies a nonzero index): an NCHW 1x1 weight is channels_last already but has spatial
    strides of 1, which the JIT makes constants, losing the divisibility its 16-byte loads rest on."""
    if not t.is_contiguous(memory_format=torch.channels_last):
        t = t.contiguous(memory_format=torch.channels_last)
    _, c, _, w = t.shape
    canonical = (t.shape[2] * w * c, 1, w * c, c)
    return t if t.stride() == canonical else t.as_strided(t.shape, canonical)


def channels_inner(t) -> bool:
    """Whether the channel dimension is the contiguous one (channels_last-like strides)."""
    return t.stride(1) == 1 and t.shape[1] > 1


# ------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (compiled by ``python -m cnnfast.kernels.aot``)
# ------------------------------------------------------------------------------------------------


def aot_spec(name, fn, pointers, constexprs, num_warps, num_stages):
    """One ``aot_specs()`` entry: every parameter of kernel ``fn`` in order, typed from
    ``pointers`` (name -> "*fp32" ...) when given there, "constexpr" when ``fn`` declares it
    ``tl.constexpr`` (its value from ``constexprs``, which must name exactly those), else "i32"."""
    declared = {fn.arg_names[i] for i in fn.constexprs}
    if set(constexprs) != declared:
        raise ValueError(f"{name}: constexprs {sorted(constexprs)} != the kernel's {sorted(declared)}")
    signature = {arg: pointers.get(arg, "constexpr" if arg in declared else "i32") for arg in fn.arg_names}
    return dict(name=name, fn=fn, signature=signature, constexprs=dict(constexprs),
                num_warps=num_warps, num_stages=num_stages)


def aot_precisions(dt):
    """The dot precisions a GEMM kernel is compiled in for dtype name ``dt``: float32 exact and TF32."""
    return ("ieee", "tf32") if dt == "fp32" else ("ieee",)


def aot_tag(cfg, keys):
    """A config's part of a spec name: ``BM64-BN32-BK16`` for keys BLOCK_M, BLOCK_N, BLOCK_K."""
    return "-".join(f"{k.replace('BLOCK_', 'B')}{cfg[k]}" for k in keys)
