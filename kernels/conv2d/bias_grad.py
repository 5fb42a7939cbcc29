"""conv2d's gradient with respect to its bias: a split reduction of dy over its pixels."""
import triton
import triton.language as tl

from .._common import cdiv, choose_config, needs_int64, new_empty, pixel_tile, wide
from .configs import BIAS_GRAD_CONFIGS, choose_bias_grad
from .grad_out import aot_specs_per_source, grad_source, load_grad_out
from .splitk import split_k, split_range, splitk_reduce, workspace


@triton.jit
def _conv2d_bias_grad_kernel(
    go_ptr, gp_ptr, pos_ptr, ws_ptr,
    P, K, OH, OW, PH, PW, CHUNKS_PER_SPLIT,
    s_gon, s_gok, s_goh, s_gow, s_gpn, s_gpk, s_gph, s_gpw, s_pn, s_pk, s_ph, s_pw,
    POOL: tl.constexpr, PKH: tl.constexpr, PKW: tl.constexpr, PSH: tl.constexpr, PSW: tl.constexpr,
    PPH: tl.constexpr, PPW: tl.constexpr, PDH: tl.constexpr, PDW: tl.constexpr,
    INT64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Split reduction for grad_bias (no GEMM): gb[k] = sum of dy[n, k, oh, ow] over the P = N·OH·OW
    # output pixels. Program (pid_k, split) owns BLOCK_K channels and one contiguous range of
    # CHUNKS_PER_SPLIT·BLOCK_P pixels. It adds BLOCK_P x BLOCK_K tiles of dy (rebuilt from the
    # pooled gradient when POOL, see grad_out.py) into an fp32 register tile, reduces it over pixels
    # once at the end and writes ws[split, k]; splitk.py sums the splits in a fixed order.
    pid_k = wide(tl.program_id(0), INT64)
    split = wide(tl.program_id(1), INT64)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = offs_k < K

    p_lo, p_hi = split_range(split, CHUNKS_PER_SPLIT, BLOCK_P, P)
    acc = tl.zeros((BLOCK_P, BLOCK_K), dtype=tl.float32)
    for p0 in range(p_lo, p_hi, BLOCK_P):
        n, oh, ow, mask_p = pixel_tile(p0, p_hi, OH, OW, BLOCK_P)
        dy = load_grad_out(go_ptr, s_gon, s_gok, s_goh, s_gow, gp_ptr, s_gpn, s_gpk, s_gph, s_gpw,
                           pos_ptr, s_pn, s_pk, s_ph, s_pw, PH, PW, n[:, None], offs_k[None, :],
                           oh[:, None], ow[:, None], mask_p[:, None] & mask_k[None, :],
                           POOL, PKH, PKW, PSH, PSW, PPH, PPW, PDH, PDW)
        acc += dy.to(tl.float32)
    tl.store(ws_ptr + split * K + offs_k, tl.sum(acc, axis=0), mask=mask_k)


def conv2d_bias_grad(grad_out, *, pool=None, config=None):
    """Gradient of conv2d with respect to its bias.

    grad_out (N, K, OH, OW), any strides. Returns (K,) in grad_out.dtype (grad_pooled.dtype when
    ``pool`` is given): ``gb[k] = sum_{n, oh, ow} dy[n, k, oh, ow]``, accumulated in float32 by a
    split reduction into an fp32 workspace summed in a fixed order (no atomics, bit-for-bit
    repeatable). With ``pool`` (see grad_out.py) ``grad_out`` is None and dy is rebuilt from the
    pooled gradient. ``config``: index into ``BIAS_GRAD_CONFIGS`` or a dict.
    """
    tensors, go_strides, pooled_size, pool_consts, (n_, k_, oh, ow) = grad_source(grad_out, pool)
    src = tensors[1]
    gb = new_empty((k_,), dtype=src.dtype, device=src.device)
    if gb.numel() == 0:
        return gb
    p = n_ * oh * ow
    cfg = choose_config(BIAS_GRAD_CONFIGS, config, lambda: choose_bias_grad(k_))
    tiles = cdiv(k_, cfg["BLOCK_K"])
    split, per_split = split_k(cdiv(p, cfg["BLOCK_P"]), tiles)
    ws = workspace(split, k_, device=src.device)
    _conv2d_bias_grad_kernel[(tiles, split)](
        *tensors, ws, p, k_, oh, ow, *pooled_size, per_split, *go_strides,
        **pool_consts, INT64=needs_int64(*tensors, ws),
        BLOCK_P=cfg["BLOCK_P"], BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"])
    splitk_reduce(ws, gb.view(1, k_, 1, 1))
    return gb


def aot_specs():
    """Every bias_grad config x dtype x dy source (plain, the Net's 2x2 pool)."""
    return aot_specs_per_source("conv2d_bias_grad", _conv2d_bias_grad_kernel, BIAS_GRAD_CONFIGS,
                                dict(ws_ptr="*fp32"), {}, tile_keys=("BLOCK_P", "BLOCK_K"), precisions=None)
