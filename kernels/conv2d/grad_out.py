"""Where conv2d's gradient kernels read dy, the conv output's gradient: grad_out itself, or, for the
fused conv2d + ReLU + max_pool2d backward, rebuilt from the pooled gradient and ``pos``.

The gradient launchers accept ``pool = (grad_pooled, pos, pool_kernel, pool_stride, pool_padding,
pool_dilation, conv_out_size)`` in place of ``grad_out``. dy (N, K, OH, OW) is then never stored; the
kernels rebuild each element where they would have loaded it (``load_grad_out``)::

    dy[n, k, oh, ow] = sum over (ph, pw, i, j) with oh = ph*psh - pph + i*pdh, ow = pw*psw - ppw + j*pdw,
                       0 <= i < pkh, 0 <= j < pkw, 0 <= ph < PH, 0 <= pw < PW, of
                       grad_pooled[n, k, ph, pw] if pos[n, k, ph, pw] == i*pkw + j else 0

``pos`` (int8/int16/int32, any strides) holds the max's local window index, or -1 where ReLU masked
the gradient.
"""
import triton
import triton.language as tl

from .._common import TL_DTYPE, aot_precisions, aot_spec, aot_tag

# The pool constexprs of the plain (POOL=False) source; AOT specs compile both modes.
NO_POOL = dict(POOL=False, PKH=1, PKW=1, PSH=1, PSW=1, PPH=0, PPW=0, PDH=1, PDW=1)
# Pool geometry the AOT specs use for the fused-backward variants: the Net's 2x2 / stride 2.
AOT_POOL = dict(POOL=True, PKH=2, PKW=2, PSH=2, PSW=2, PPH=0, PPW=0, PDH=1, PDW=1)


@triton.jit
def _strided_source(num, stride, size, mask):
    """The pooled index ``o`` with ``o * stride == num``, and ``mask`` narrowed to where it exists:
    ``num`` an exact multiple of ``stride`` and ``0 <= o < size``."""
    o = num // stride
    return o, mask & (num >= 0) & (num % stride == 0) & (o < size)


@triton.jit
def load_grad_out(
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
                ph, ok_h = _strided_source(oh + (PPH - i * PDH), PSH, PH, mask)
                for j in tl.static_range(PKW):
                    pw, ok = _strided_source(ow + (PPW - j * PDW), PSW, PW, ok_h)
                    win = tl.load(pos_ptr + n * s_pn + k * s_pk + ph * s_ph + pw * s_pw, mask=ok, other=-1)
                    hit = ok & (win.to(tl.int32) == i * PKW + j)
                    gp = tl.load(gp_ptr + n * s_gpn + k * s_gpk + ph * s_gph + pw * s_gpw, mask=hit, other=0.0)
                    dy += gp.to(tl.float32)
    else:
        dy = tl.load(go_ptr + n * s_gon + k * s_gok + oh * s_goh + ow * s_gow, mask=mask, other=0.0)
    return dy


def grad_source(grad_out, pool):
    """Arguments of ``load_grad_out`` for the launchers.

    Returns (tensors, strides, (PH, PW), constexprs, (N, K, OH, OW)): tensors = the (go, gp, pos)
    pointers, strides = the 12 strides of go / gp / pos, constexprs = POOL and the pool geometry.
    """
    if pool is None:
        strides = (*grad_out.stride(), 0, 0, 0, 0, 0, 0, 0, 0)
        return (grad_out, grad_out, grad_out), strides, (1, 1), dict(NO_POOL), tuple(grad_out.shape)
    grad_pooled, pos, (pkh, pkw), (psh, psw), (pph, ppw), (pdh, pdw), (oh, ow) = pool
    strides = (0, 0, 0, 0, *grad_pooled.stride(), *pos.stride())
    consts = dict(POOL=True, PKH=pkh, PKW=pkw, PSH=psh, PSW=psw, PPH=pph, PPW=ppw, PDH=pdh, PDW=pdw)
    n, k, ph, pw = grad_pooled.shape
    return (grad_pooled, grad_pooled, pos), strides, (ph, pw), consts, (n, k, oh, ow)


def aot_specs_per_source(kernel, fn, configs, pointers, consts, tile_keys=("BLOCK_M", "BLOCK_N", "BLOCK_K"),
                         precisions=aot_precisions):
    """AOT specs of a gradient kernel: every dtype x dy source (plain, and rebuilt for the Net's 2x2
    pool with int8 pos) x config x, unless ``precisions`` is None, dot precision (GEMM kernels).
    ``pointers``: the kernel's other pointer types, "{dt}" standing for the dtype's name."""
    specs = []
    for dt in TL_DTYPE.values():
        ptrs = dict(go_ptr=f"*{dt}", gp_ptr=f"*{dt}", pos_ptr="*i8")
        ptrs.update((arg, t.format(dt=dt)) for arg, t in pointers.items())
        for mode, pool_consts in (("plain", NO_POOL), ("pool2x2", AOT_POOL)):
            for cfg in configs:
                tiles = {key: cfg[key] for key in tile_keys}
                for prec in precisions(dt) if precisions else (None,):
                    dot = {} if prec is None else dict(DOT_PRECISION=prec, DOT_FP32=False)
                    name = "/".join(part for part in (kernel, dt, prec, mode, aot_tag(tiles, tiles)) if part)
                    specs.append(aot_spec(name, fn, ptrs, dict(consts, **pool_consts, **dot, INT64=False, **tiles),
                                          cfg["num_warps"], cfg.get("num_stages", 1)))
    return specs
