"""cnnfast's Triton kernels (the "triton" backend): the launchers of ``cnnfast.launchers``, taking
normalised arguments, and ``tune_configs``, the configs the tuner may time for a call."""
from .conv2d import conv2d_bias_grad, conv2d_forward, conv2d_input_grad, conv2d_weight_grad
from .conv_relu_maxpool2d import conv_relu_maxpool2d_backward, conv_relu_maxpool2d_forward
from .max_pool2d import max_pool2d_backward, max_pool2d_forward

__all__ = [
    "conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad",
    "max_pool2d_forward", "max_pool2d_backward",
    "conv_relu_maxpool2d_forward", "conv_relu_maxpool2d_backward",
]


def _config_digest() -> str:
    """A digest of every config list ``tune_configs`` indexes (``cnnfast.launchers``: CONFIG_DIGEST)."""
    import hashlib
    from . import conv_relu_maxpool2d as fused, max_pool2d as pool
    from .conv2d import configs as conv
    lists = (conv.FORWARD_CONFIGS, conv.INPUT_GRAD_CONFIGS, conv.WEIGHT_GRAD_CONFIGS, conv.BIAS_GRAD_CONFIGS,
             pool.FORWARD_CONFIGS, pool.BACKWARD_CONFIGS, fused.CONFIGS)
    return hashlib.sha1(repr(lists).encode()).hexdigest()[:12]


CONFIG_DIGEST = _config_digest()


def tune_configs(launcher: str, args, kwargs):
    """The configs the tuner may time for this call (``cnnfast.launchers``): indices into the kernels'
    config lists that can serve it, or [None] for a launcher without configs. Configs are pruned by
    shape with the rules the kernels' own heuristics follow: the direct and FMA paths unroll the
    reduction, so they are candidates only where it is short; the taps forward reads contiguous
    channel blocks on tensor cores, so only where ``taps_candidates`` says."""
    from . import conv_relu_maxpool2d as fused, max_pool2d as pool
    from .conv2d import configs as conv
    if launcher == "conv2d_forward":
        x, weight, groups = args[0], args[1], args[6]
        red, kg = weight.shape[1] * weight.shape[2] * weight.shape[3], weight.shape[0] // groups
        short = red <= 64 and kg <= 32
        taps = conv.taps_candidates(conv.FORWARD_CONFIGS, x, weight.shape[1], kwargs.get("allow_tf32", False))
        few = conv.few_channels_candidates(conv.FORWARD_CONFIGS, x, weight, args[5], groups,
                                           kwargs.get("allow_tf32", False))
        return [i for i, c in enumerate(conv.FORWARD_CONFIGS)
                if (c["kind"] != "direct" or short) and (c["kind"] != "taps" or i in taps)
                and (c["kind"] != "few" or i in few)]
    if launcher == "conv2d_input_grad":
        grad_out, weight, stride, dilation, groups = args[0], args[1], args[3], args[5], args[6]
        taps = conv.input_grad_taps(conv.INPUT_GRAD_CONFIGS, grad_out, weight.shape[0] // groups, stride, dilation,
                                    kwargs.get("allow_tf32", False))
        return [i for i, c in enumerate(conv.INPUT_GRAD_CONFIGS) if c["kind"] != "taps" or i in taps]
    if launcher == "conv2d_weight_grad":
        x, grad_out, groups = args[0], args[1], args[6]
        taps = conv.weight_grad_taps(conv.WEIGHT_GRAD_CONFIGS, x, grad_out, x.shape[1] // groups,
                                     grad_out.shape[1] // groups)
        return [i for i, c in enumerate(conv.WEIGHT_GRAD_CONFIGS) if c["kind"] != "taps" or i in taps]
    lists = {"conv2d_bias_grad": conv.BIAS_GRAD_CONFIGS, "max_pool2d_forward": pool.FORWARD_CONFIGS,
             "max_pool2d_backward": pool.BACKWARD_CONFIGS}
    if launcher in lists:
        return list(range(len(lists[launcher])))
    if launcher == "conv_relu_maxpool2d_forward":
        weight, groups = args[1], args[6]
        fma = weight.shape[1] < 16 and weight.shape[0] // groups <= 16
        return [i for i, c in enumerate(fused.CONFIGS) if c["kind"] != "fma" or fma]
    return [None]
