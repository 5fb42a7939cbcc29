"""The launcher interface: the functions a cnnfast backend implements, each documented once.

A backend is any object (a module, a class instance, a namespace) with some of these functions,
given to ``cnnfast.backends.register``. Every built-in backend implements all eight with exactly
these signatures (``cnnfast.kernels`` for "triton", ``cnnfast._extension`` for "cpu", "cuda" and
"emulated_cuda", ``cnnfast._stock`` for "torch"); the functions below are that signature and
contract, and raise if called.

What a launcher may assume (the front end, ``cnnfast.functional``, has checked and normalised
everything; a launcher trusts its arguments and checks nothing):

- Tensors are 4-D (N, C, H, W) -- unbatched input was given a batch of one -- on one device, and
  every floating tensor of a call has one dtype: float32, float16 or bfloat16 (cnnfast runs every
  other dtype on stock PyTorch). Integer tensors: max_pool2d's ``indices`` are int64, the fused op's
  ``pos`` is ``cnnfast._outputs.pos_dtype(pool_kernel)`` (int8 for windows of at most 127 cells).
- Geometry is tuples of ints: ``stride``, ``dilation``, ``kernel_size`` as (rows, columns);
  ``padding`` = (pad_top, pad_left), and the output size is given explicitly (``out_size``,
  ``conv_out_size``), so the bottom / right padding is whatever gives that size ('same' padding with
  an even kernel pads one more row at the bottom than at the top; pooling's ``ceil_mode`` is folded
  into ``out_size``). Padded cells are zero for conv2d and never the maximum for max_pool2d.
- Layout: a registered backend receives every 4-D tensor contiguous in the layout its call's
  ``channels_last`` flag names (``torch.channels_last`` if True, NCHW otherwise) and 1-D tensors
  contiguous, unless it registered with ``contiguous=False`` (the built-in backends do: they read
  any strides).

What a launcher returns: new tensors (never a view of an input), in the layout ``channels_last``
names (cnnfast makes them so for a backend registered with ``contiguous=True``), with the dtype of
the call's floating inputs; accumulate in float32 for float16 / bfloat16. A launcher must not
modify its inputs.

Keywords: cnnfast calls each launcher with the keywords shown (``channels_last``, ``allow_tf32``,
``with_indices``, ``with_pos``, ``needs``); ``config=`` only for a backend that has ``tune_configs``
(below), with one of the values it listed. ``allow_tf32`` says float32 convolutions may use TF32
tensor cores (cuDNN's flag at the call); a backend may ignore it and compute float32 exactly.

Which functions a backend needs: the forward of an op is required for that op (asked for by name,
a backend without it raises; "auto" never considers it for that op); a missing gradient function is
run by stock PyTorch ("torch") instead, with one warning per backend and function. So a
forward-only conv2d backend implements ``conv2d_forward`` alone.

Optional attributes, besides the functions:

``FUSED_STATE``
    A string naming what ``conv_relu_maxpool2d_forward`` writes as ``pos`` (default ``"pos"``: the
    window position of each pooled maximum, -1 where ReLU zeroed it, as every built-in backend
    writes it). A fused backward reads only the state its own kind of forward writes; a backend with
    a state of its own must implement ``conv_relu_maxpool2d_backward``.
``NONDETERMINISTIC``
    The names of launchers whose results may differ from run to run (atomics, say): never run under
    ``torch.use_deterministic_algorithms(True)``.
``tune_configs(launcher, args, kwargs)``
    The configs the tuner may time for one call (a list of values passed back as ``config=``, or
    ``[None]``): the backend then goes through the tuner when named explicitly, and each config is a
    candidate of "auto". The Triton backend lists its tile configs this way.
``CONFIG_DIGEST``
    With ``tune_configs``: a string that changes whenever the configs those values stand for change
    (a list entry added, removed or edited). A choice of config saved on disk under another digest
    is measured again instead of read back (an index would name another config).
"""

import torch

__all__ = ["FORWARD", "GRADIENTS", "NAMES", "KEYWORDS"]

# The forward launcher of each op, and each op's gradient launchers.
FORWARD = {"conv2d": "conv2d_forward", "max_pool2d": "max_pool2d_forward",
           "conv_relu_maxpool2d": "conv_relu_maxpool2d_forward"}
GRADIENTS = {"conv2d": ("conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad"),
             "max_pool2d": ("max_pool2d_backward",), "conv_relu_maxpool2d": ("conv_relu_maxpool2d_backward",)}
NAMES = ("conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad",
         "max_pool2d_forward", "max_pool2d_backward", "conv_relu_maxpool2d_forward", "conv_relu_maxpool2d_backward")
# The keywords cnnfast passes to each launcher (``config=`` besides, for a backend with tune_configs).
KEYWORDS = {"conv2d_forward": ("channels_last", "allow_tf32"), "conv2d_input_grad": ("channels_last", "allow_tf32"),
            "conv2d_weight_grad": ("channels_last", "allow_tf32"), "conv2d_bias_grad": (),
            "max_pool2d_forward": ("with_indices", "channels_last"), "max_pool2d_backward": ("channels_last",),
            "conv_relu_maxpool2d_forward": ("with_pos", "channels_last", "allow_tf32"),
            "conv_relu_maxpool2d_backward": ("needs", "channels_last", "allow_tf32")}


def _spec():
    raise NotImplementedError("cnnfast.launchers documents the launcher interface; a backend implements it")


# --- conv2d ---------------------------------------------------------------------------------------

def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, out_size, *, channels_last=False,
                   allow_tf32=False, config=None) -> torch.Tensor:
    """``F.conv2d``: x (N, C, H, W), weight (K, C / groups, R, S), bias (K,) or None; returns y
    (N, K, *out_size), ``y[n, k, oh, ow] = bias[k] + sum over c in k's group, r, s of
    x[n, c, oh * stride[0] - padding[0] + r * dilation[0], ow * stride[1] - padding[1] + s * dilation[1]]
    * weight[k, c % (C / groups), r, s]``, x read as zero outside the image."""
    _spec()


def conv2d_input_grad(grad_out, weight, input_size, stride, padding, dilation, groups, *, channels_last=False,
                      allow_tf32=False, config=None) -> torch.Tensor:
    """conv2d's gradient with respect to x: grad_out (N, K, OH, OW), weight as in the forward,
    input_size (H, W); returns (N, C, H, W) (every input cell, those no window reads included: 0)."""
    _spec()


def conv2d_weight_grad(x, grad_out, weight_size, stride, padding, dilation, groups, *, channels_last=False,
                       allow_tf32=False, config=None) -> torch.Tensor:
    """conv2d's gradient with respect to the weight: x as in the forward, grad_out (N, K, OH, OW),
    weight_size (K, C / groups, R, S); returns a tensor of that size."""
    _spec()


def conv2d_bias_grad(grad_out, *, config=None) -> torch.Tensor:
    """conv2d's gradient with respect to the bias: grad_out (N, K, OH, OW) summed over (N, OH, OW);
    returns (K,) in grad_out's dtype (summed in float32)."""
    _spec()


# --- max_pool2d -----------------------------------------------------------------------------------

def max_pool2d_forward(x, kernel_size, stride, padding, dilation, out_size, *, with_indices, channels_last=False,
                       config=None):
    """``F.max_pool2d``: x (N, C, H, W); returns ``(out, indices)``, out (N, C, *out_size) and, when
    ``with_indices``, indices (int64, same size: the flat position h * W + w in x's plane of each
    maximum), else None. PyTorch's rules: a NaN in a window is its maximum (the first NaN); among
    equal maxima the first in row-major window order; windows never start in the bottom/right
    padding."""
    _spec()


def max_pool2d_backward(grad_out, indices, input_size, kernel_size, stride, padding, dilation, *,
                        channels_last=False, config=None) -> torch.Tensor:
    """max_pool2d's gradient: grad_out and indices (N, C, OH, OW), input_size (H, W) (or (N, C, H, W));
    returns (N, C, H, W), each cell the sum of the pooled gradients whose index names it, 0 elsewhere."""
    _spec()


# --- conv2d + bias + ReLU + max_pool2d ------------------------------------------------------------

def conv_relu_maxpool2d_forward(x, weight, bias, stride, padding, dilation, groups, conv_out_size, pool_kernel,
                                pool_stride, pool_padding, pool_dilation, out_size, *, with_pos,
                                channels_last=False, allow_tf32=False, config=None):
    """``max_pool2d(relu(conv2d(x, weight, bias, stride, padding, dilation, groups)), pool_kernel,
    pool_stride, pool_padding, pool_dilation)``; the conv output (N, K, *conv_out_size) need never
    exist in memory. Returns ``(out, pos)``: out (N, K, *out_size) and, when ``with_pos``, pos (same
    size, ``pos_dtype(pool_kernel)``): the window position ``i * pool_kernel[1] + j`` of each maximum,
    -1 where the output is not positive (ReLU passes no gradient); else None."""
    _spec()


def conv_relu_maxpool2d_backward(grad_out, x, weight, pos, stride, padding, dilation, groups, conv_out_size,
                                 pool_kernel, pool_stride, pool_padding, pool_dilation, *, needs=(True, True, True),
                                 channels_last=False, allow_tf32=False, config=None):
    """The fused op's gradients from the pooled gradient grad_out (N, K, PH, PW) and the forward's pos:
    returns ``(grad_x, grad_weight, grad_bias)``, each None where ``needs`` (three bools) says it is not
    wanted. The conv-output gradient is grad_out sent to the cell pos names (nothing where pos is -1);
    the gradients are conv2d's on it."""
    _spec()
