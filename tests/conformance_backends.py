"""A backend written outside cnnfast, the way a kernel developer would start one, and three copies of
it with a bug planted (tests/test_conformance.py runs the conformance suite on each).

"plain" computes conv2d and max_pool2d tap by tap in float64: for each filter (window) position it
takes the strided slice of the padded input that position reads for every output pixel, and
accumulates (conv2d: a matrix product over channels; pooling: the running maximum and its index, a
NaN winning as in PyTorch). Gradients are the same loops transposed. The fused op is left out (the
suite skips it, saying so). The planted bugs, each one a mistake such code is prone to:

- "planted_padding": the (top, left) padding pair read as (left, top), right whenever the two agree;
- "planted_nan": pooling compares with ``>`` only, so a NaN that is not first in its window is lost;
- "planted_stride": the input gradient scatters each tap with the row stride on both axes (an
  input-gradient off by a stride whenever the two strides differ).

``register(name)`` registers one of them on the CPU (``unregister`` removes it); importing registers
nothing.
"""
import types

import torch
import torch.nn.functional as F

import cnnfast

NAMES = ("plain", "planted_padding", "planted_nan", "planted_stride")


def _pads(in_size, out_size, kernel, stride, padding, dilation):
    """((top, bottom), (left, right)): the padding that makes exactly ``out_size`` windows."""
    return tuple((p, max(0, (o - 1) * s + d * (k - 1) + 1 - i - p))
                 for i, o, k, s, p, d in zip(in_size, out_size, kernel, stride, padding, dilation))


def _tap(t, r, s, out_size, stride, dilation):
    """The strided slice of padded ``t`` that filter tap (r, s) reads for every output pixel."""
    (oh, ow), (sh, sw), (dh, dw) = out_size, stride, dilation
    return t[..., r * dh:r * dh + (oh - 1) * sh + 1:sh, s * dw:s * dw + (ow - 1) * sw + 1:sw]


def _grouped(t, groups):
    """(N, C, H, W) -> (N, G, C/G, H, W)."""
    return t.reshape(t.shape[0], groups, t.shape[1] // groups, *t.shape[2:])


class Plain:
    """The correct backend; each planted bug overrides one thing."""

    def conv_padding(self, padding):
        return padding

    def grad_stride(self, stride):
        return stride

    def pool_wins(self, value, best):
        return (value > best) | torch.isnan(value)

    # --- conv2d ----------------------------------------------------------------------------------

    def conv2d_forward(self, x, weight, bias, stride, padding, dilation, groups, out_size, *, channels_last=False,
                       allow_tf32=False):
        (top, bottom), (left, right) = _pads(x.shape[2:], out_size, weight.shape[2:], stride,
                                             self.conv_padding(padding), dilation)
        xp = _grouped(F.pad(x.double(), [left, right, top, bottom]), groups)
        w = weight.double().reshape(groups, weight.shape[0] // groups, *weight.shape[1:])   # (G, K/G, C/G, R, S)
        y = x.new_zeros((x.shape[0], groups, weight.shape[0] // groups, *out_size), dtype=torch.float64)
        for r in range(weight.shape[2]):
            for s in range(weight.shape[3]):
                y += torch.einsum("gkc,ngchw->ngkhw", w[..., r, s], _tap(xp, r, s, out_size, stride, dilation))
        y = y.reshape(x.shape[0], weight.shape[0], *out_size)
        if bias is not None:
            y = y + bias.double().view(1, -1, 1, 1)
        return y.to(x.dtype)

    def conv2d_input_grad(self, grad_out, weight, input_size, stride, padding, dilation, groups, *,
                          channels_last=False, allow_tf32=False):
        n, out_size = grad_out.shape[0], tuple(grad_out.shape[2:])
        (top, bottom), (left, right) = _pads(input_size, out_size, weight.shape[2:], stride, padding, dilation)
        step = self.grad_stride(stride)
        dxp = grad_out.new_zeros((n, groups, weight.shape[1], top + input_size[0] + bottom,
                                  left + input_size[1] + right), dtype=torch.float64)
        w = weight.double().reshape(groups, weight.shape[0] // groups, *weight.shape[1:])
        dy = _grouped(grad_out.double(), groups)                        # (N, G, K/G, OH, OW)
        for r in range(weight.shape[2]):
            for s in range(weight.shape[3]):
                rows = slice(r * dilation[0], r * dilation[0] + (out_size[0] - 1) * step[0] + 1, step[0])
                cols = slice(s * dilation[1], s * dilation[1] + (out_size[1] - 1) * step[1] + 1, step[1])
                dxp[..., rows, cols] += torch.einsum("gkc,ngkhw->ngchw", w[..., r, s], dy)
        dx = dxp.reshape(n, groups * weight.shape[1], *dxp.shape[3:])
        return dx[:, :, top:top + input_size[0], left:left + input_size[1]].to(grad_out.dtype)

    def conv2d_weight_grad(self, x, grad_out, weight_size, stride, padding, dilation, groups, *, channels_last=False,
                           allow_tf32=False):
        out_size = tuple(grad_out.shape[2:])
        (top, bottom), (left, right) = _pads(x.shape[2:], out_size, weight_size[2:], stride, padding, dilation)
        xp = _grouped(F.pad(x.double(), [left, right, top, bottom]), groups)
        dy = _grouped(grad_out.double(), groups)
        dw = x.new_zeros((groups, weight_size[0] // groups, *weight_size[1:]), dtype=torch.float64)
        for r in range(weight_size[2]):
            for s in range(weight_size[3]):
                dw[..., r, s] = torch.einsum("ngkhw,ngchw->gkc", dy, _tap(xp, r, s, out_size, stride, dilation))
        return dw.reshape(tuple(weight_size)).to(x.dtype)

    def conv2d_bias_grad(self, grad_out):
        return grad_out.double().sum((0, 2, 3)).to(grad_out.dtype)

    # --- max_pool2d -------------------------------------------------------------------------------

    def max_pool2d_forward(self, x, kernel_size, stride, padding, dilation, out_size, *, with_indices,
                           channels_last=False):
        (top, bottom), (left, right) = _pads(x.shape[2:], out_size, kernel_size, stride, padding, dilation)
        xp = F.pad(x, [left, right, top, bottom], value=float("-inf"))
        width = x.shape[3]
        rows = torch.arange(out_size[0], device=x.device).view(-1, 1) * stride[0] - top
        cols = torch.arange(out_size[1], device=x.device).view(1, -1) * stride[1] - left
        # PyTorch's rule: the running maximum starts at -inf on the window's first position inside the
        # input; a later value replaces it if greater, or if it is NaN.
        first_row = rows + ((-rows).clamp(min=0) + dilation[0] - 1) // dilation[0] * dilation[0]
        first_col = cols + ((-cols).clamp(min=0) + dilation[1] - 1) // dilation[1] * dilation[1]
        best = x.new_full((x.shape[0], x.shape[1], *out_size), float("-inf"))
        index = (first_row * width + first_col).expand(best.shape).clone()
        for r in range(kernel_size[0]):
            for s in range(kernel_size[1]):
                value = _tap(xp, r, s, out_size, stride, dilation)
                wins = self.pool_wins(value, best)
                best = torch.where(wins, value, best)
                index = torch.where(wins, (rows + r * dilation[0]) * width + cols + s * dilation[1], index)
        return best, (index if with_indices else None)

    def max_pool2d_backward(self, grad_out, indices, input_size, kernel_size, stride, padding, dilation, *,
                            channels_last=False):
        n, c = grad_out.shape[:2]
        h, w = tuple(input_size)[-2:]
        dx = grad_out.new_zeros((n, c, h * w), dtype=torch.float64)
        dx.scatter_add_(2, indices.reshape(n, c, -1), grad_out.double().reshape(n, c, -1))
        return dx.view(n, c, h, w).to(grad_out.dtype)


class PlantedPadding(Plain):
    def conv_padding(self, padding):
        return tuple(padding)[::-1]


class PlantedNaN(Plain):
    def pool_wins(self, value, best):
        return value > best


class PlantedStride(Plain):
    def grad_stride(self, stride):
        return (stride[0], stride[0])


_CLASSES = {"plain": Plain, "planted_padding": PlantedPadding, "planted_nan": PlantedNaN,
            "planted_stride": PlantedStride}
_LAUNCHERS = ("conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad",
              "max_pool2d_forward", "max_pool2d_backward")


def launchers(name):
    """The launcher functions of backend ``name``, as a namespace (bound methods of its class)."""
    impl = _CLASSES[name]()
    return types.SimpleNamespace(**{f: getattr(impl, f) for f in _LAUNCHERS})


def register(name):
    cnnfast.backends.register(name, launchers(name), devices=("cpu",), replace=True)


def unregister(name):
    cnnfast.backends.unregister(name)
