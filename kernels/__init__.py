"""cnnfast's Triton kernels (the "triton" backend). Every launcher takes normalised arguments."""
from .conv2d import conv2d_bias_grad, conv2d_forward, conv2d_input_grad, conv2d_weight_grad
from .conv_relu_maxpool2d import conv_relu_maxpool2d_backward, conv_relu_maxpool2d_forward
from .max_pool2d import max_pool2d_backward, max_pool2d_forward

__all__ = [
    "conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad",
    "max_pool2d_forward", "max_pool2d_backward",
    "conv_relu_maxpool2d_forward", "conv_relu_maxpool2d_backward",
]
