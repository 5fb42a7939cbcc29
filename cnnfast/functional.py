"""The public functions: PyTorch's signatures plus a keyword ``backend=``.

Everything about arguments lives here, once: ints versus tuples, 'same' and 'valid', output sizes,
unbatched input, autocast, memory format and the error messages (worded like PyTorch's). Backends
receive normalised arguments and trust them.

A call already judged for stock PyTorch (``tune.STOCK_CALLS``) goes to stock PyTorch first thing,
with its arguments as given: it was checked when it was judged, and its key holds everything the
checks and the judgement read.
"""
import torch
import torch.nn.functional as F

from . import backends, ops, tune
from .ops import is_channels_last, run_conv2d, run_conv_relu_maxpool2d, run_max_pool2d, wants_grad
from .ops._common import _PLAIN, _differentiated_forward

__all__ = ["conv2d", "max_pool2d", "conv_relu_maxpool2d"]


# --- argument normalisation --------------------------------------------------------------------

def _pair(value, name: str, op: str):
    """An int or a sequence of one or two ints, as a tuple of two ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (tuple, list, torch.Size)) and len(value) in (1, 2) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return (value[0], value[-1])
    raise TypeError(f"{op}: {name} must be an int or a tuple of two ints, got {value!r}")


def _conv_out(size: int, pad_total: int, dilation: int, kernel: int, stride: int) -> int:
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def _pool_out(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output size: ceil_mode rounds up, but no window may start in the padding."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _batched(input: torch.Tensor, op: str):
    """Check the rank; return the input as 4-D and whether it was unbatched (3-D)."""
    if input.dim() not in (3, 4):
        raise ValueError(f"Expected 3D (unbatched) or 4D (batched) input to {op}, but got input of size: "
                         f"{list(input.shape)}")
    return (input.unsqueeze(0), True) if input.dim() == 3 else (input, False)


def _check_same(input: torch.Tensor, other: torch.Tensor, name: str, op: str):
    if other.device != input.device:
        raise RuntimeError(f"{op}: input is on {input.device} but {name} is on {other.device}; "
                           "they must be on the same device")
    if other.dtype != input.dtype:
        raise RuntimeError(f"{op}: input dtype ({input.dtype}) and {name} dtype ({other.dtype}) should be the same")


def _autocast(op_device: str, *tensors):
    """Cast floating tensors to the autocast dtype when autocast is on (conv runs in lower precision).
    Meta tensors have no autocast state (torch.is_autocast_enabled refuses the device type)."""
    if op_device == "meta" or not torch.is_autocast_enabled(op_device):
        return tensors
    dtype = torch.get_autocast_dtype(op_device)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def _on_meta(backend, x):
    """The backend for input ``x``: on meta tensors (shape inference, deferred initialisation) there is
    no kernel to run, whatever was asked: stock PyTorch's meta functions give the shapes, strides and
    dtypes (after the same argument checks)."""
    return "torch" if x.is_meta else backend


def _conv_geometry(x, weight, bias, stride, padding, dilation, groups, op):
    """Check a batched conv2d call; return (stride, (pad_top, pad_left), dilation, (OH, OW))."""
    if weight.dim() != 4:
        raise ValueError(f"{op}: expected weight to be 4-D (out_channels, in_channels/groups, kH, kW), "
                         f"but got weight of size {list(weight.shape)}")
    _check_same(x, weight, "weight", op)
    if bias is not None:
        _check_same(x, bias, "bias", op)
    if not isinstance(groups, int) or groups <= 0:
        raise ValueError(f"{op}: non-positive groups is not supported (groups={groups!r})")
    stride, dilation = _pair(stride, "stride", op), _pair(dilation, "dilation", op)
    if min(stride) <= 0:
        raise ValueError(f"{op}: non-positive stride is not supported (stride={stride})")
    if min(dilation) <= 0:
        raise ValueError(f"{op}: dilation should be greater than zero (dilation={dilation})")
    out_channels, channels_per_group, kh, kw = weight.shape
    if out_channels % groups != 0:
        raise ValueError(f"{op}: Given groups={groups}, expected weight to be divisible by {groups} at "
                         f"dimension 0, but got weight of size {list(weight.shape)} instead")
    if x.shape[1] != channels_per_group * groups:
        raise ValueError(f"{op}: Given groups={groups}, weight of size {list(weight.shape)}, expected input"
                         f"{list(x.shape)} to have {channels_per_group * groups} channels, but got "
                         f"{x.shape[1]} channels instead")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_channels):
        raise ValueError(f"{op}: Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional "
                         f"with {out_channels} elements, but got bias of size {list(bias.shape)} instead")
    if isinstance(padding, str):
        if padding == "valid":
            pads = ((0, 0), (0, 0))
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{op}: padding='same' is not supported for strided convolutions")
            # Even kernels pad one more on the bottom/right, as PyTorch does.
            pads = tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for d, k in zip(dilation, (kh, kw)))
        else:
            raise ValueError(f"{op}: Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
    else:
        ph, pw = _pair(padding, "padding", op)
        if min(ph, pw) < 0:
            raise ValueError(f"{op}: negative padding is not supported (padding={(ph, pw)})")
        pads = ((ph, ph), (pw, pw))
    padded = tuple(size + sum(p) for size, p in zip(x.shape[2:], pads))
    effective = tuple(d * (k - 1) + 1 for d, k in zip(dilation, (kh, kw)))
    if padded[0] < effective[0] or padded[1] < effective[1]:
        raise ValueError(f"{op}: Calculated padded input size per channel: ({padded[0]} x {padded[1]}). "
                         f"Kernel size: ({effective[0]} x {effective[1]}). Kernel size can't be greater "
                         "than actual input size")
    out_size = tuple(_conv_out(size, sum(p), d, k, s) for size, p, d, k, s in
                     zip(x.shape[2:], pads, dilation, (kh, kw), stride))
    return stride, (pads[0][0], pads[1][0]), dilation, out_size


def _pool_geometry(size, kernel_size, stride, padding, dilation, ceil_mode, channels, op):
    """Check max_pool2d arguments for an input of spatial ``size``; return the normalised geometry."""
    kernel_size = _pair(kernel_size, "kernel_size", op)
    stride = kernel_size if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) \
        else _pair(stride, "stride", op)
    padding, dilation = _pair(padding, "padding", op), _pair(dilation, "dilation", op)
    if min(kernel_size) <= 0:
        raise ValueError(f"{op}: kernel_size must be greater than zero, but got {kernel_size}")
    if min(stride) <= 0:
        raise ValueError(f"{op}: stride should be greater than zero, but got {stride}")
    if min(dilation) <= 0:
        raise ValueError(f"{op}: dilation should be greater than zero, but got {dilation}")
    # PyTorch's rule: half of the kernel size, whatever the dilation.
    if min(padding) < 0 or padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        raise ValueError(f"{op}: pad should be smaller than or equal to half of kernel size, but got "
                         f"padW = {padding[1]}, padH = {padding[0]}, kW = {kernel_size[1]}, kH = {kernel_size[0]}")
    out_size = tuple(_pool_out(s, k, st, p, d, ceil_mode)
                     for s, k, st, p, d in zip(size, kernel_size, stride, padding, dilation))
    if min(out_size) < 1:
        raise ValueError(f"{op}: Given input size: ({channels}x{size[0]}x{size[1]}). Calculated output size: "
                         f"({channels}x{out_size[0]}x{out_size[1]}). Output size is too small")
    return kernel_size, stride, padding, dilation, out_size


def _check_pool_input(x, op):
    if min(x.shape[1:]) == 0:
        raise ValueError(f"{op}: Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for "
                         f"input, but got: {list(x.shape)}")


def _shortcut(op: str, backend, tensors, params):
    """The call's key in ``tune.STOCK_CALLS`` and whether it is there. The key: the op, the backend
    asked for, grad mode, the settings "auto" reads, and each tensor's shape, strides, dtype, device
    and ``requires_grad`` with the other arguments as given. None (not there) where the call takes the
    full path whatever was judged: under torch.compile, autocast, torch.func transforms or
    forward-mode AD, on tensor subclasses and tensors without strides, or with an argument that
    cannot be a key (a list)."""
    if torch.compiler.is_compiling() or torch._C._is_any_autocast_enabled() or _differentiated_forward():
        return None, False
    key = [op, backends._current() if backend is None else backend, torch.is_grad_enabled(),
           torch.are_deterministic_algorithms_enabled(), torch._C._get_cudnn_allow_tf32(), params]
    for t in tensors:
        if t is None:
            key.append(None)
        elif type(t) in _PLAIN and t.layout is torch.strided:
            key.append((t.shape, t.stride(), t.dtype, t.device, t.requires_grad))
        else:
            return None, False     # a subclass, or a sparse or mkldnn tensor (no strides)
    key = tuple(key)
    try:
        return key, key in tune.STOCK_CALLS
    except TypeError:
        return None, False


def _measured(name: str, launches, stock, ours, *inputs, shortcut=None) -> str:
    """The backend that runs the call: under "auto" the tuner's answer for it ("torch": stock PyTorch,
    exactly as if cnnfast were not there; "auto": the tuner's choice per direction; or one kernel
    backend for the whole call), else ``name``. ``launches()``: the op module's ``launches``;
    ``stock(*inputs)`` and ``ours(backend, *inputs)``: the call in stock PyTorch and on a backend,
    which the tuner times against each other. A call that runs on stock PyTorch for good is entered
    under ``shortcut`` (``_shortcut``) for its next calls."""
    if name == "torch" and shortcut is not None:
        tune.STOCK_CALLS[shortcut] = True
    if name != "auto" or torch.compiler.is_compiling():
        return name
    return tune.backend_for_call(*launches(), stock, ours, inputs, shortcut)


# --- public functions --------------------------------------------------------------------------

def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, backend=None):
    """``torch.nn.functional.conv2d`` on cnnfast's kernels. ``backend``: see ``cnnfast.backends``."""
    op = "conv2d"
    shortcut, stock_call = _shortcut(op, backend, (input, weight, bias), (stride, padding, dilation, groups))
    if stock_call:
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    x, unbatched = _batched(input, op)
    backend = _on_meta(backend, x)
    x, weight, bias = _autocast(x.device.type, x, weight, bias)
    stride_, pad, dilation_, out_size = _conv_geometry(x, weight, bias, stride, padding, dilation, groups, op)
    args = (x, weight, bias, stride_, pad, dilation_, groups, out_size, is_channels_last(x) or is_channels_last(weight),
            torch.backends.cudnn.allow_tf32)
    pad_ = padding if isinstance(padding, str) else pad
    stock = lambda a, w, b: F.conv2d(a, w, b, stride_, pad_, dilation_, groups)  # noqa: E731
    name = _measured(backends.resolve(backend, op, x), lambda: ops.conv2d.launches(*args), stock,
                     lambda on, a, w, b: run_conv2d(a, w, b, *args[3:], on), x, weight, bias, shortcut=shortcut)
    if name == "torch":
        out = stock(x, weight, bias)
    else:
        out = run_conv2d(*args, name)
    return out.squeeze(0) if unbatched else out


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False,
               *, backend=None):
    """``torch.nn.functional.max_pool2d`` on cnnfast's kernels. ``backend``: see ``cnnfast.backends``."""
    op = "max_pool2d"
    shortcut, stock_call = _shortcut(op, backend, (input,),
                                     (kernel_size, stride, padding, dilation, ceil_mode, return_indices))
    if stock_call:
        return F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                            return_indices=return_indices)
    x, unbatched = _batched(input, op)
    backend = _on_meta(backend, x)
    _check_pool_input(x, op)
    kernel_size, stride, padding, dilation, out_size = _pool_geometry(
        x.shape[2:], kernel_size, stride, padding, dilation, ceil_mode, x.shape[1], op)
    args = (x, kernel_size, stride, padding, dilation, out_size, is_channels_last(x))
    with_indices = return_indices or wants_grad(x)
    stock = lambda a: F.max_pool2d(a, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,  # noqa: E731
                                   return_indices=return_indices)
    name = _measured(backends.resolve(backend, op, x),
                     lambda: ops.max_pool2d.launches(*args, with_indices=with_indices), stock,
                     lambda on, a: run_max_pool2d(a, *args[1:], on, with_indices=with_indices), x,
                     shortcut=shortcut)
    if name == "torch":
        result = stock(x)
    else:
        result = run_max_pool2d(*args, name, with_indices=with_indices)
        if with_indices and not return_indices:
            result = result[0]
    if unbatched:
        return tuple(r.squeeze(0) for r in result) if return_indices else result.squeeze(0)
    return result


def conv_relu_maxpool2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, pool_kernel_size=2,
                        pool_stride=None, pool_padding=0, pool_dilation=1, pool_ceil_mode=False, *, backend=None):
    """``max_pool2d(relu(conv2d(input, weight, bias, ...)), pool_kernel_size, ...)`` in one kernel.

    The pre-pool activation is never written to memory; for backward the op keeps one small integer
    per pooled output (the window position of its maximum).
    """
    op = "conv_relu_maxpool2d"
    shortcut, stock_call = _shortcut(op, backend, (input, weight, bias),
                                     (stride, padding, dilation, groups, pool_kernel_size, pool_stride, pool_padding,
                                      pool_dilation, pool_ceil_mode))
    if stock_call:
        return F.max_pool2d(F.relu(F.conv2d(input, weight, bias, stride, padding, dilation, groups)),
                            pool_kernel_size, pool_stride, pool_padding, pool_dilation, ceil_mode=pool_ceil_mode)
    x, unbatched = _batched(input, op)
    backend = _on_meta(backend, x)
    x, weight, bias = _autocast(x.device.type, x, weight, bias)
    stride_, pad, dilation_, conv_out = _conv_geometry(x, weight, bias, stride, padding, dilation, groups, op)
    pool_kernel, pool_stride, pool_pad, pool_dilation, out_size = _pool_geometry(
        conv_out, pool_kernel_size, pool_stride, pool_padding, pool_dilation, pool_ceil_mode, weight.shape[0], op)
    args = (x, weight, bias, stride_, pad, dilation_, groups, conv_out, pool_kernel, pool_stride, pool_pad,
            pool_dilation, out_size, is_channels_last(x) or is_channels_last(weight), torch.backends.cudnn.allow_tf32)
    with_pos = wants_grad(x, weight, bias)
    pad_ = padding if isinstance(padding, str) else pad
    stock = lambda a, w, b: F.max_pool2d(F.relu(F.conv2d(a, w, b, stride_, pad_, dilation_, groups)),  # noqa: E731
                                         pool_kernel, pool_stride, pool_pad, pool_dilation, ceil_mode=pool_ceil_mode)
    name = _measured(backends.resolve(backend, op, x),
                     lambda: ops.conv_relu_maxpool2d.launches(*args, with_pos=with_pos), stock,
                     lambda on, a, w, b: run_conv_relu_maxpool2d(a, w, b, *args[3:], on, with_pos=with_pos),
                     x, weight, bias, shortcut=shortcut)
    if name == "torch":
        out = stock(x, weight, bias)
    else:
        out = run_conv_relu_maxpool2d(*args, name, with_pos=with_pos)
        out = out[0] if with_pos else out
    return out.squeeze(0) if unbatched else out
