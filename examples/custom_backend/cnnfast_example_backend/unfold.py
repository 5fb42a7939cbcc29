"""conv2d as matrix products over ``F.unfold`` columns: forward, input, weight and bias gradients.

The GEMM view, per group g: columns X (C/G·R·S, OH·OW) of each image, weight W (K/G, C/G·R·S);
forward Y = W X; input gradient dX = Wᵀ dY, folded back onto the image (``F.fold`` sums the
overlapping windows); weight gradient dW = Σ_images dY Xᵀ; bias gradient dY summed over (N, OH, OW).
Everything is computed in float32 and cast back, so float16 / bfloat16 accumulate in float32.

The launchers follow ``cnnfast.launchers``: geometry normalised (``padding`` = (pad_top, pad_left),
the output size explicit), tensors contiguous (cnnfast registers this backend with
``contiguous=True``), one dtype per call.
"""
import torch
import torch.nn.functional as F


def _padded(size, out_size, kernel, stride, padding, dilation):
    """For each of (rows, columns): (pad before, pad after, rows the windows read): the padded input
    is cut to what the last window reads, so ``F.unfold`` gives exactly ``out_size`` windows."""
    out = []
    for i, o, k, s, p, d in zip(size, out_size, kernel, stride, padding, dilation):
        needed = (o - 1) * s + d * (k - 1) + 1
        out.append((p, max(0, needed - i - p), needed))
    return out


def _columns(x, kernel, stride, padding, dilation, out_size):
    """(N, C·R·S, OH·OW): the input under every window, zero in the padding."""
    (top, bottom, rows), (left, right, cols) = _padded(x.shape[2:], out_size, kernel, stride, padding, dilation)
    xp = F.pad(x, [left, right, top, bottom])[:, :, :rows, :cols]
    return F.unfold(xp, kernel, dilation=dilation, stride=stride)


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, out_size, *, channels_last=False,
                   allow_tf32=False):
    n, k, g = x.shape[0], weight.shape[0], groups
    cols = _columns(x.float(), weight.shape[2:], stride, padding, dilation, out_size)
    cols = cols.view(n, g, cols.shape[1] // g, cols.shape[-1])       # (N, G, C/G·R·S, L)
    w = weight.float().reshape(g, k // g, weight[0].numel())         # (G, K/G, C/G·R·S)
    y = torch.einsum("gkc,ngcl->ngkl", w, cols).reshape(n, k, *out_size)
    if bias is not None:
        y = y + bias.float().view(1, k, 1, 1)
    return y.to(x.dtype)


def conv2d_input_grad(grad_out, weight, input_size, stride, padding, dilation, groups, *, channels_last=False,
                      allow_tf32=False):
    n, k, g = grad_out.shape[0], weight.shape[0], groups
    c = weight.shape[1] * g
    out_size = tuple(grad_out.shape[2:])
    w = weight.float().reshape(g, k // g, weight[0].numel())
    dy = grad_out.float().reshape(n, g, k // g, out_size[0] * out_size[1])   # (N, G, K/G, L)
    dcols = torch.einsum("gkc,ngkl->ngcl", w, dy).reshape(n, g * w.shape[-1], dy.shape[-1])
    (top, bottom, rows), (left, right, cols) = _padded(input_size, out_size, weight.shape[2:], stride, padding,
                                                       dilation)
    dxp = F.fold(dcols, (rows, cols), weight.shape[2:], dilation=dilation, stride=stride)
    full = dxp.new_zeros((n, c, top + input_size[0] + bottom, left + input_size[1] + right))
    full[:, :, :rows, :cols] = dxp
    return full[:, :, top:top + input_size[0], left:left + input_size[1]].to(grad_out.dtype).contiguous()


def conv2d_weight_grad(x, grad_out, weight_size, stride, padding, dilation, groups, *, channels_last=False,
                       allow_tf32=False):
    n, k, g = x.shape[0], weight_size[0], groups
    cols = _columns(x.float(), tuple(weight_size[2:]), stride, padding, dilation, tuple(grad_out.shape[2:]))
    cols = cols.view(n, g, cols.shape[1] // g, cols.shape[-1])
    dy = grad_out.float().reshape(n, g, k // g, cols.shape[-1])
    return torch.einsum("ngkl,ngcl->gkc", dy, cols).reshape(tuple(weight_size)).to(x.dtype)


def conv2d_bias_grad(grad_out):
    return grad_out.sum((0, 2, 3), dtype=torch.float32).to(grad_out.dtype)
