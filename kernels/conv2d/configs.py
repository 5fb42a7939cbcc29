"""conv2d's tile configs, as data, and the heuristics that choose among them.

Each list entry names the shape family it serves; each launcher takes ``config=`` (an index into its
list, or a dict) to force one, and otherwise asks the ``choose_*`` function here. The sizes are the
implicit-GEMM ones of ``gemm.py`` (M rows, N columns, ``red`` reduction length per group).

Two limits shape every GEMM list: the gemm kernels' gathered im2col tiles cost registers per element
(an address and a mask each), so their tiles stay at BLOCK_K = 16 (forward, input_grad) and <= 4096
accumulator elements (larger ones spill at 4 warps) -- the "taps" kernels decode nothing per element
and take 128 x 64 x 64 and 128 x 128 x 32 tiles; and no config uses more than 4 warps: Inductor's
Triton conv template miscompiled at num_warps >= 8 (pytorch issue 173068). The call view
(``python -m cnnfast.kernels.aot --suite ...``) shows each config's registers and spills on the code the
JIT builds for real layers; the entries that differ between Triton 3.6 and 3.8 say why.
"""
import torch

from .._common import TRITON_VERSION, next_pow2
from .gemm import GemmSize

# Split-K launches aim at about four waves of an H100's 132 SMs. The constant does not depend on
# the device, so the reduction order, and with it every bit of the result, depends only on the
# problem shape and the config.
SPLIT_TARGET_PROGRAMS = 528
# Fewest reduction chunks (of BLOCK_K / BLOCK_P elements) one split program handles.
SPLIT_MIN_CHUNKS = 4

# Forward. "direct": FMA outer products, BLOCK_N = next power of two of K/groups (<= 32);
# "gemm": implicit GEMM on tensor cores (fp32: TF32, or exact FMA dot).
FORWARD_CONFIGS = [
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
    # taps (filter taps outer, channel blocks inner: no per-element decode, so larger tiles fit),
    # C/groups >= 32 and K/groups > 32 (ResNet's and DenseNet's 3x3 and 1x1 layers), x read channels_last.
    # FP32: the config for float32 operands (in TF32), twice the bytes, so half the BLOCK_K (64 spilled
    # on sm_80); None: no float32 candidate (the 128-column tile spilled in TF32 on sm_90; forced, it
    # runs at half its BLOCK_K). Exact float32 (no TF32) runs the dot as FMAs, whose operands do not fit
    # beside these accumulators: never a candidate. Triton 3.6 spills the bfloat16 tile in three stages
    # on sm_80 (16 B), and the TF32 one in two (16 B, 1x1 stride 2); each as given does not.
    dict(kind="taps", BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3 if TRITON_VERSION >= (3, 8) else 2,
         FP32=dict(BLOCK_K=32, num_stages=3)),
    # taps, same layers with K/groups >= 128, 2-byte types: a 128-column tile halves the A tile loads
    # per output
    dict(kind="taps", BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=3, FP32=None),
    # few input channels (ResNet's stem 3 -> 64 7x7 stride 2; KernelBench's 3 -> 96 11x11 stride 4):
    # channels padded to 4 (or 8), one filter row per step, BLOCK_K = its taps x channels
    # (``few_channels``); on tensor cores, groups 1, dilation 1 along the rows.
    dict(kind="few", BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3, FP32=dict(num_stages=3)),
]

# Input gradient: implicit GEMM, M = N·H·W, N = C/groups, reduction over K/groups·R·S.
INPUT_GRAD_CONFIGS = [
    # C/groups <= 16 (the Net's conv2 input, 6 channels; depthwise). Triton 3.6 spills it in one stage
    # on sm_90 in float32 with TF32 (8 B of stack); in two it does not.
    dict(kind="gemm", BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, num_warps=4,
         num_stages=1 if TRITON_VERSION >= (3, 8) else 2),
    # C/groups <= 32
    dict(kind="gemm", BLOCK_M=64, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=3),
    # C/groups > 32
    dict(kind="gemm", BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=2),
    # taps (as the forward's: filter taps outer, contiguous blocks of dy's channels inner),
    # K/groups >= 32 and C/groups > 32, at stride 1 or by phases at a stride (input_grad_taps,
    # by_phases), dy read channels_last; FP32 as in FORWARD_CONFIGS. Triton 3.6 spills it on sm_80 in
    # bfloat16 (12 B in three stages; by phases 8 B in two), so PRE_SM90 halves its BLOCK_K below
    # sm_90 (156-168 registers, 12 warps per SM; on sm_90 two stages would cost 50.5 instructions per
    # wgmma, three 47.2).
    dict(kind="taps", BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3,
         PRE_SM90=dict(BLOCK_K=32, num_stages=3) if TRITON_VERSION < (3, 8) else None,
         FP32=dict(BLOCK_K=32, num_stages=3)),
    dict(kind="taps", BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=3, FP32=None),
]

# Weight gradient: split-K GEMM, M = K/groups, N = C/groups·R·S, reduction over N·OH·OW.
WEIGHT_GRAD_CONFIGS = [
    # K/groups <= 16, C/groups·R·S <= 32 (the Net's conv1: 6 x 27)
    dict(kind="gemm", BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=3),
    # K/groups <= 16, wider C/groups·R·S (the Net's conv2: 16 x 54)
    dict(kind="gemm", BLOCK_M=16, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=2),
    # K/groups > 16
    dict(kind="gemm", BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=3),
    # taps (one filter tap per program, a contiguous block of x's channels as the columns: the image
    # mask is one value per pixel), x and dy read channels_last, 2-byte types, K/groups > 32, C/groups >= 32
    dict(kind="taps", BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
    # taps, K/groups >= 128
    dict(kind="taps", BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
]

# Bias gradient: split reduction of dy over N·OH·OW, BLOCK_K channels per program.
BIAS_GRAD_CONFIGS = [
    # few channels (the Net: 6, 16)
    dict(BLOCK_P=128, BLOCK_K=16, num_warps=4),
    # many channels
    dict(BLOCK_P=32, BLOCK_K=64, num_warps=4),
]

# Fixed-order reduction of split-K partial sums (weight gradient and bias gradient): elementwise.
REDUCE_CONFIG = dict(BLOCK=256, num_warps=4)


def taps_variant(cfg: dict, dtype, arch=None) -> dict:
    """The tile sizes and stages a taps config runs with for operands of ``dtype``, compiled for compute
    capability ``arch`` (``target_arch()``; None: as listed): its FP32 variant for float32, its
    PRE_SM90 variant (where it has one) below sm_90."""
    if dtype == torch.float32:
        return dict(cfg, **(cfg["FP32"] or dict(BLOCK_K=cfg["BLOCK_K"] // 2)))
    if arch is not None and arch < 90 and cfg.get("PRE_SM90"):
        return dict(cfg, **cfg["PRE_SM90"])
    return cfg


def taps_candidates(configs, t, channels: int, allow_tf32: bool) -> list:
    """Indices of the taps configs in ``configs`` that suit a call whose reduction runs over the
    channels of ``t`` (x for the forward, dy for the input gradient) in blocks: at least 32 such
    channels per group, on tensor cores (2-byte types, or float32 with TF32), and for float32 only the
    configs with an FP32 variant. Any layout: the launchers read a tensor whose channels are not
    contiguous through a channels_last copy (``channel_contiguous``)."""
    fp32 = t.dtype == torch.float32
    if channels < 32 or (fp32 and not allow_tf32):
        return []
    return [i for i, c in enumerate(configs)
            if c.get("kind") == "taps" and (not fp32 or c["FP32"] is not None)]


def by_phases(stride, dilation) -> bool:
    """Whether a taps config runs an input gradient by phases (``_conv2d_input_grad_phases_kernel``):
    at a stride above 1, along each such axis at dilation 1 (there one tap in s reaches a pixel of a
    phase, the same for every pixel of it). Elsewhere the taps kernel runs it: at stride 1 every tap
    reaches every pixel; with stride and dilation both above 1 it masks the unreached taps."""
    return tuple(stride) != (1, 1) and all(st == 1 or d == 1 for st, d in zip(stride, dilation))


def input_grad_taps(configs, grad_out, kg: int, stride, dilation, allow_tf32: bool) -> list:
    """The taps configs that suit an input gradient (``taps_candidates`` over dy's channels): at stride
    1, or by phases (``by_phases``); not with stride and dilation both above 1 along an axis, where
    the taps kernel would multiply the zeros between dy's rows and columns as the gemm kernel does.
    ``grad_out`` None (dy rebuilt from the fused op's pooled gradient, element by element): none."""
    if grad_out is None or (tuple(stride) != (1, 1) and not by_phases(stride, dilation)):
        return []
    return taps_candidates(configs, grad_out, kg, allow_tf32)


def widest_taps(configs, taps, extent: int, key: str = "BLOCK_N"):
    """Of the ``taps`` configs, the one whose tile is widest along ``key`` (BLOCK_N: columns, BLOCK_M:
    rows) while ``extent`` fills it (None if none)."""
    fitting = [i for i in taps if configs[i][key] <= extent]
    return max(fitting, key=lambda i: configs[i][key]) if fitting else None


def few_channels_taps(s: int, cp: int) -> int:
    """A few-channels filter row's taps, padded: a power of two, at least 16 elements with ``cp``
    channels (the depth of a tensor-core dot)."""
    return max(next_pow2(s), 16 // cp)


def few_channels(x, weight, dilation, groups) -> int:
    """The channel count a few-channels forward pads a layer's input to, or 0 where it cannot run it:
    groups above 1, dilation along the rows (its taps would not be contiguous), more than 8 channels,
    or a filter row of padded taps over 128 bytes (its tiles would outgrow shared memory). 4 for up
    to 4 channels, else 8; and 8 where 4 would end a row's real taps inside a 16-byte vector (the
    stem's 7 taps x 4 channels in 2-byte types), whose mask would then cut every load to 8 bytes."""
    c, s, size = x.shape[1], weight.shape[3], x.element_size()
    if groups != 1 or dilation[1] != 1 or c > 8:
        return 0
    fits = lambda cp: few_channels_taps(s, cp) * cp * size <= 128  # noqa: E731
    cp = 4 if c <= 4 else 8
    if cp == 4 and (s * 4 * size) % 16 and fits(8):
        cp = 8
    return cp if fits(cp) else 0


def few_channels_candidates(configs, x, weight, dilation, groups, allow_tf32: bool) -> list:
    """Indices of the "few" configs for a forward ``few_channels`` serves, on tensor cores (2-byte
    types, or float32 with TF32), with at least 32 output channels."""
    if (not few_channels(x, weight, dilation, groups) or weight.shape[0] < 32
            or (x.dtype == torch.float32 and not allow_tf32)):
        return []
    return [i for i, c in enumerate(configs) if c.get("kind") == "few"]


def choose_forward(size: GemmSize, taps=(), few=()) -> int:
    """Direct FMA path for small C/groups·R·S and K/groups, GEMM otherwise; the larger BLOCK_M
    once there are enough pixels for four waves of programs at it; where ``taps`` (the
    ``taps_candidates``) and more than 32 output channels per group, the widest taps tile up to
    K/groups; where ``few`` (``few_channels_candidates``), the few-channels kernel."""
    if size.red <= 64 and size.N <= 32:
        return 1 if size.M >= 256 * SPLIT_TARGET_PROGRAMS else 0
    if few:
        return few[0]
    if size.N <= 32:
        return 3 if size.M >= 128 * SPLIT_TARGET_PROGRAMS else 2
    wide = widest_taps(FORWARD_CONFIGS, taps, size.N)
    return 4 if wide is None else wide


def direct_block_n(kg: int) -> int:
    """BLOCK_N of the direct forward: every output channel of the group in one tile, up to 32."""
    return min(32, next_pow2(kg))


def choose_input_grad(size: GemmSize, taps=()) -> int:
    """By C/groups, the GEMM's N; where ``taps`` (the ``taps_candidates``) and C/groups > 32, the
    widest taps tile up to C/groups."""
    if size.N <= 32:
        return 0 if size.N <= 16 else 1
    wide = widest_taps(INPUT_GRAD_CONFIGS, taps, size.N)
    return 2 if wide is None else wide


def weight_grad_taps(configs, x, grad_out, cg: int, kg: int) -> list:
    """The taps configs that suit a weight gradient: at least 32 input and more than 32 output channels
    per group, 2-byte types (both operands have the pixels, the GEMM's reduction index, strided, and
    TF32 wgmma reads operands only with it contiguous); x and dy in any layout (read channels_last, as
    ``taps_candidates`` says). ``grad_out`` None (dy rebuilt from the fused op's pooled gradient): none."""
    if grad_out is None or cg < 32 or kg <= 32 or x.dtype == torch.float32:
        return []
    return [i for i, c in enumerate(configs) if c["kind"] == "taps"]


def choose_weight_grad(size: GemmSize, taps=()) -> int:
    """By K/groups (M) and C/groups·R·S (N); where ``taps`` (``weight_grad_taps``), the taps tile
    with the most rows that K/groups fills."""
    if size.M <= 16:
        return 0 if size.N <= 32 else 1
    tall = widest_taps(WEIGHT_GRAD_CONFIGS, taps, size.M, key="BLOCK_M")
    return 2 if tall is None else tall


def choose_bias_grad(channels: int) -> int:
    """By the number of output channels K."""
    return 0 if channels <= 16 else 1
