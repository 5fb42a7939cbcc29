"""A direct convolution in Triton, written the simplest way: the forward only (cnnfast runs its
gradients on stock PyTorch, and says so once).

Each program owns BLOCK output pixels of one (image, output channel): it loops over the input
channels of its group and the R × S window, loading one input value per pixel (0 in the padding) and
one weight, and accumulates in float32. No tiling, no shared memory, no tensor cores: a starting point
to measure against, not a fast kernel. Offsets come from the tensors' strides, so any layout works.
Offsets are int32: fine for tensors under 2^31 elements.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _conv2d_direct(x, w, b, y, C_per_group, H, W, K_per_group, OH, OW,
                   sxn, sxc, sxh, sxw, swk, swc, swr, sws, syn, syk, syh, syw,
                   stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                   K: tl.constexpr, R: tl.constexpr, S: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    nk = tl.program_id(0)
    n, k = nk // K, nk % K
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < OH * OW
    oh, ow = offs // OW, offs % OW
    c0 = (k // K_per_group) * C_per_group
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for c in range(0, C_per_group):
        for r in tl.static_range(R):
            for s in tl.static_range(S):
                ih = oh * stride_h - pad_h + r * dil_h
                iw = ow * stride_w - pad_w + s * dil_w
                inside = mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                xv = tl.load(x + n * sxn + (c0 + c) * sxc + ih * sxh + iw * sxw, mask=inside, other=0.0)
                wv = tl.load(w + k * swk + c * swc + r * swr + s * sws)
                acc += xv.to(tl.float32) * wv.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(b + k).to(tl.float32)
    tl.store(y + n * syn + k * syk + oh * syh + ow * syw, acc.to(y.dtype.element_ty), mask=mask)


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, out_size, *, channels_last=False,
                   allow_tf32=False):
    n, _, h, w_ = x.shape
    k, c_per_group, r, s = weight.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty((n, k, *out_size), dtype=x.dtype, device=x.device, memory_format=fmt)
    block = 64
    grid = (n * k, triton.cdiv(out_size[0] * out_size[1], block))
    _conv2d_direct[grid](x, weight, bias if bias is not None else weight, y, c_per_group, h, w_, k // groups,
                         out_size[0], out_size[1], *x.stride(), *weight.stride(), *y.stride(), *stride, *padding,
                         *dilation, K=k, R=r, S=s, HAS_BIAS=bias is not None, BLOCK=block)
    return y
