"""The "torch" backend's launchers: stock PyTorch (cuDNN on GPUs, oneDNN on CPUs) behind the same
functions, signatures and semantics as ``cnnfast.kernels``.

They let the tuner put stock PyTorch among the candidates of every direction on its own: under
"auto" a layer may run cnnfast's forward and stock PyTorch's weight gradient, or the reverse. The
fused op's state is the one every backend shares (``pos``: the window position of each pooled
maximum, -1 where ReLU zeroed it), so a stock forward pairs with a kernel backward and back.

Geometry arrives normalised (``padding`` = (pad_top, pad_left), sizes explicit), so the bottom and
right padding is whatever makes the given output size: asymmetric 'same' padding pads the input
first. ``config=`` is accepted and ignored; ``allow_tf32`` is cuDNN's global flag, which stock
PyTorch reads itself.
"""
import torch
import torch.nn.functional as F

from ._outputs import FUSED_STATE, pos_dtype  # noqa: F401 (FUSED_STATE: the state this backend writes)

aten = torch.ops.aten


def _layout(t, channels_last):
    return t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _extra_pads(in_size, out_size, kernel, stride, padding, dilation):
    """(bottom, right): the padding past the input that makes ``out_size`` (its rows read by the last
    window; any padding below/right that no window reads is zero)."""
    return tuple(max(0, (o - 1) * st + d * (k - 1) + 1 - i - p)
                 for i, o, k, st, p, d in zip(in_size, out_size, kernel, stride, padding, dilation))


def _conv_padding(x_size, kernel, stride, padding, dilation, out_size):
    """(the padding stock conv2d takes, F.pad's list or None): how stock conv2d reaches ``out_size``."""
    end = _extra_pads(x_size, out_size, kernel, stride, padding, dilation)
    if all(e <= p for e, p in zip(end, padding)):
        # Stock conv pads both sides by p; windows past the output size are dropped by its floor.
        return tuple(padding), None
    return (0, 0), [padding[1], end[1], padding[0], end[0]]


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, out_size, *, channels_last=False,
                   allow_tf32=False, config=None):
    pad, explicit = _conv_padding(x.shape[2:], weight.shape[2:], stride, padding, dilation, out_size)
    if explicit is not None:
        x = F.pad(x, explicit)
    return _layout(F.conv2d(x, weight, bias, stride, pad, dilation, groups), channels_last)


def _padded_input_size(input_size, weight, stride, padding, dilation, out_size):
    pad, explicit = _conv_padding(input_size, weight.shape[2:], stride, padding, dilation, out_size)
    if explicit is None:
        return tuple(input_size), pad, None
    return (input_size[0] + explicit[2] + explicit[3], input_size[1] + explicit[0] + explicit[1]), pad, explicit


def conv2d_input_grad(grad_out, weight, input_size, stride, padding, dilation, groups, *, channels_last=False,
                      allow_tf32=False, config=None):
    size, pad, explicit = _padded_input_size(tuple(input_size), weight, stride, padding, dilation, grad_out.shape[2:])
    shape = (grad_out.shape[0], weight.shape[1] * groups, *size)
    gx = torch.nn.grad.conv2d_input(shape, weight, grad_out, stride, pad, dilation, groups)
    if explicit is not None:
        gx = gx[:, :, explicit[2]:explicit[2] + input_size[0], explicit[0]:explicit[0] + input_size[1]]
    return _layout(gx, channels_last)


def conv2d_weight_grad(x, grad_out, weight_size, stride, padding, dilation, groups, *, channels_last=False,
                       allow_tf32=False, config=None):
    pad, explicit = _conv_padding(x.shape[2:], tuple(weight_size)[2:], stride, padding, dilation, grad_out.shape[2:])
    if explicit is not None:
        x = F.pad(x, explicit)
    gw = torch.nn.grad.conv2d_weight(x, tuple(weight_size), grad_out, stride, pad, dilation, groups)
    return _layout(gw, channels_last)


def conv2d_bias_grad(grad_out, *, config=None):
    return grad_out.sum((0, 2, 3), dtype=torch.float32).to(grad_out.dtype)


def _ceil_mode(in_size, kernel_size, stride, padding, dilation, out_size) -> bool:
    """Whether stock pooling needs ceil_mode to give ``out_size`` (the front end folded it in)."""
    floor = tuple((i + 2 * p - d * (k - 1) - 1) // s + 1
                  for i, k, s, p, d in zip(in_size, kernel_size, stride, padding, dilation))
    return floor != tuple(out_size)


def max_pool2d_forward(x, kernel_size, stride, padding, dilation, out_size, *, with_indices, channels_last=False,
                       config=None):
    ceil = _ceil_mode(x.shape[2:], kernel_size, stride, padding, dilation, out_size)
    if with_indices:
        out, idx = F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode=ceil, return_indices=True)
        return _layout(out, channels_last), _layout(idx, channels_last)
    return _layout(F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode=ceil), channels_last), None


def max_pool2d_backward(grad_out, indices, input_size, kernel_size, stride, padding, dilation, *,
                        channels_last=False, config=None):
    input_size = tuple(input_size)[-2:]
    ceil = _ceil_mode(input_size, kernel_size, stride, padding, dilation, grad_out.shape[2:])
    # The stock kernel reads only the input's sizes and layout: an uninitialised stand-in does.
    like = _layout(grad_out.new_empty((*grad_out.shape[:2], *input_size)), channels_last)
    gx = aten.max_pool2d_with_indices_backward(grad_out, like, list(kernel_size), list(stride), list(padding),
                                               list(dilation), ceil, indices)
    return _layout(gx, channels_last)


# --- the fused op, through stock PyTorch's conv, ReLU and pooling ------------------------------------

def _window_origin(out_size, pool_stride, pool_padding, device):
    """Each pooled cell's first conv-output row (column): ph * stride - pad, as (PH, 1) and (1, PW)."""
    rows = torch.arange(out_size[0], device=device) * pool_stride[0] - pool_padding[0]
    cols = torch.arange(out_size[1], device=device) * pool_stride[1] - pool_padding[1]
    return rows[:, None], cols[None, :]


def conv_relu_maxpool2d_forward(x, weight, bias, stride, padding, dilation, groups, conv_out_size, pool_kernel,
                                pool_stride, pool_padding, pool_dilation, out_size, *, with_pos, channels_last=False,
                                allow_tf32=False, config=None):
    y = torch.relu(conv2d_forward(x, weight, bias, stride, padding, dilation, groups, conv_out_size))
    out, idx = max_pool2d_forward(y, pool_kernel, pool_stride, pool_padding, pool_dilation, out_size,
                                  with_indices=True)
    out = _layout(out, channels_last)
    if not with_pos:
        return out, None
    # Flat index in the conv output -> offset i * pkw + j within the window; -1 where ReLU zeroed it.
    row0, col0 = _window_origin(out_size, pool_stride, pool_padding, x.device)
    i = torch.div(idx // conv_out_size[1] - row0, pool_dilation[0], rounding_mode="floor")
    j = torch.div(idx % conv_out_size[1] - col0, pool_dilation[1], rounding_mode="floor")
    pos = torch.where(out <= 0, -1, i * pool_kernel[1] + j)   # NaN is kept, as the kernels keep it
    return out, _layout(pos.to(pos_dtype(pool_kernel)), channels_last)


def _conv_grad_from_pos(grad_out, pos, pool_kernel, pool_stride, pool_padding, pool_dilation, conv_out_size):
    """The conv-output gradient: each kept pooled gradient added at its window position, in float32."""
    n, k, ph, pw = grad_out.shape
    row0, col0 = _window_origin((ph, pw), pool_stride, pool_padding, grad_out.device)
    kept = pos >= 0
    p = pos.long().clamp(min=0)
    rows = row0 + torch.div(p, pool_kernel[1], rounding_mode="floor") * pool_dilation[0]
    cols = col0 + (p % pool_kernel[1]) * pool_dilation[1]
    flat = torch.where(kept, rows * conv_out_size[1] + cols, 0).reshape(n, k, -1)   # unkept cells add 0 at 0
    dy = grad_out.new_zeros((n, k, conv_out_size[0] * conv_out_size[1]), dtype=torch.float32)
    dy.scatter_add_(2, flat, torch.where(kept, grad_out, 0).reshape(n, k, -1).float())
    return dy.view(n, k, *conv_out_size).to(grad_out.dtype)


def conv_relu_maxpool2d_backward(grad_out, x, weight, pos, stride, padding, dilation, groups, conv_out_size,
                                 pool_kernel, pool_stride, pool_padding, pool_dilation, *, needs=(True, True, True),
                                 channels_last=False, allow_tf32=False, config=None):
    dy = _conv_grad_from_pos(grad_out, pos, pool_kernel, pool_stride, pool_padding, pool_dilation, conv_out_size)
    geometry = (stride, padding, dilation, groups)
    grad_x = grad_w = grad_b = None
    if needs[0]:
        grad_x = conv2d_input_grad(dy, weight, tuple(x.shape[2:]), *geometry, channels_last=channels_last)
    if needs[1]:
        grad_w = conv2d_weight_grad(x, dy, tuple(weight.shape), *geometry, channels_last=channels_last)
    if needs[2]:
        grad_b = torch.where(pos >= 0, grad_out, 0).sum((0, 2, 3), dtype=torch.float32).to(grad_out.dtype)
    return grad_x, grad_w, grad_b
