"""Drop-in modules: subclasses of the torch modules (same constructor, ``state_dict`` and repr fields)
plus a keyword ``backend=None`` (None follows ``cnnfast.backends.use``)."""
import math

from torch import nn

from . import functional as F

__all__ = ["Conv2d", "MaxPool2d", "ConvReLUMaxPool2d"]


def _with_backend(repr_: str, backend) -> str:
    return repr_ if backend is None else f"{repr_}, backend={backend!r}"


class Conv2d(nn.Conv2d):
    """``torch.nn.Conv2d`` running on cnnfast's kernels. Non-zero ``padding_mode`` pads with
    ``torch.nn.functional.pad`` first, as PyTorch does, and then runs the cnnfast convolution."""

    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups, backend=self.backend)
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                        backend=self.backend)

    def extra_repr(self):
        return _with_backend(super().extra_repr(), self.backend)


class MaxPool2d(nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` running on cnnfast's kernels."""

    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices, backend=self.backend)

    def extra_repr(self):
        return _with_backend(super().extra_repr(), self.backend)


class ConvReLUMaxPool2d(nn.Module):
    """``MaxPool2d(ReLU(Conv2d(x)))`` as one fused op; ``weight`` and ``bias`` as in ``Conv2d``
    (initialised the same way), so a ``Conv2d``'s ``state_dict`` loads into it."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, pool_kernel_size=2, pool_stride=None, pool_padding=0, *, backend=None,
                 device=None, dtype=None):
        super().__init__()
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         device=device, dtype=dtype)
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
            setattr(self, name, getattr(conv, name))
        self.weight, self.bias = conv.weight, conv.bias
        self.pool_kernel_size = pool_kernel_size
        self.pool_stride = pool_stride if pool_stride is not None else pool_kernel_size
        self.pool_padding = pool_padding
        self.backend = backend

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        return F.conv_relu_maxpool2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                     self.groups, self.pool_kernel_size, self.pool_stride, self.pool_padding,
                                     backend=self.backend)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}, "
             f"pool_kernel_size={self.pool_kernel_size}, pool_stride={self.pool_stride}, "
             f"pool_padding={self.pool_padding}")
        return _with_backend(s, self.backend)
