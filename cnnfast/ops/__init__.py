"""The ``cnnfast::*`` custom operators, one module per op, each taking the backend name as an argument.

``cnnfast.functional`` normalises and checks the arguments, then calls ``run_conv2d``,
``run_max_pool2d`` or ``run_conv_relu_maxpool2d`` with geometry as tuples of ints. Each op runs its
backend's launcher (``backends.kernels(name)``); a fake kernel gives ``torch.compile`` the output's shape
and strides. Eager calls on plain tensors skip torch.library's dispatch (``_common`` says how); both
paths run the op module's one backward. Each op module's ``launches`` lists the launcher calls a
call makes, for the tuner to measure ahead (``cnnfast.tune.backend_for_call``). Stock PyTorch
reaches the ops only as a per-direction choice of "auto"; backend "torch" never comes here.
"""
from ._common import is_channels_last, wants_grad
from . import conv2d, conv_relu_maxpool2d, max_pool2d
from .conv2d import run_conv2d
from .conv_relu_maxpool2d import run_conv_relu_maxpool2d
from .max_pool2d import run_max_pool2d

__all__ = ["run_conv2d", "run_max_pool2d", "run_conv_relu_maxpool2d", "is_channels_last", "wants_grad",
           "conv2d", "max_pool2d", "conv_relu_maxpool2d"]
