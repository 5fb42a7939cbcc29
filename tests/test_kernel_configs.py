"""Every tile config of every Triton kernel, not only the one the heuristic picks, against float64.

(Inductor once shipped a conv template that miscompiled at one config only: test them all.)"""
import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, assert_matches, rand

pytestmark = pytest.mark.skipif("triton" not in __import__("cnnfast").backends.available(DEVICE),
                                reason="the Triton backend cannot run here")

DTYPES = [torch.float32, torch.float16]
GEOMETRY = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=2)


def _conv_case(dtype):
    x, w, b = rand(2, 4, 7, 6, dtype=dtype), rand(6, 2, 3, 3, dtype=dtype), rand(6, dtype=dtype)
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    y64 = F.conv2d(x64, w64, b64, **GEOMETRY)
    g = torch.randn_like(y64).to(dtype)
    ref_grads = torch.autograd.grad(y64, (x64, w64, b64), g.double())
    return (x, w, b, g), y64.detach(), ref_grads


def _configs(name):
    from cnnfast.kernels import conv_relu_maxpool2d, max_pool2d
    from cnnfast.kernels.conv2d import configs
    module, attr = {
        "conv2d_forward": (configs, "FORWARD_CONFIGS"), "conv2d_input_grad": (configs, "INPUT_GRAD_CONFIGS"),
        "conv2d_weight_grad": (configs, "WEIGHT_GRAD_CONFIGS"), "conv2d_bias_grad": (configs, "BIAS_GRAD_CONFIGS"),
        "max_pool2d_forward": (max_pool2d, "FORWARD_CONFIGS"),
        "max_pool2d_backward": (max_pool2d, "BACKWARD_CONFIGS"),
        "conv_relu_maxpool2d_forward": (conv_relu_maxpool2d, "CONFIGS"),
    }[name]
    return range(len(getattr(module, attr)))



@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", _configs("conv2d_forward"))
def test_every_conv2d_forward_config(config, dtype):
    from cnnfast.kernels import conv2d_forward
    (x, w, b, _), ref, _ = _conv_case(dtype)
    out = conv2d_forward(x, w, b, (1, 1), (1, 1), (1, 1), 2, (7, 6), config=config)
    assert_matches(out, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", _configs("conv2d_forward"))
def test_every_conv2d_forward_config_in_channels_last_with_wide_channel_blocks(config, dtype):
    """The layout and channel counts the taps kernel serves (channel stride 1, C/groups and K/groups
    above its blocks but not multiples of them), with stride, dilation and asymmetric padding."""
    from cnnfast.kernels import conv2d_forward
    cl = torch.channels_last
    x = rand(2, 160, 9, 8, dtype=dtype).to(memory_format=cl)
    w, b = rand(72, 80, 3, 3, dtype=dtype).to(memory_format=cl), rand(72, dtype=dtype)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    out = conv2d_forward(x, w, b, (2, 1), (1, 2), (1, 2), 2, tuple(ref.shape[2:]), channels_last=True, config=config)
    assert out.is_contiguous(memory_format=cl)
    assert_matches(out, ref, dtype)


FEW_CHANNELS = {
    # (C, K, kernel, stride, padding (top, left), dilation, H, W): ResNet's stem, scaled down
    "stem 3->64 7x7 s2 p3": (3, 64, (7, 7), (2, 2), (3, 3), (1, 1), 21, 18),
    # KernelBench's first AlexNet-style layer, 11x11 stride 4 (16 taps per row, 11 weighted)
    "3->48 11x11 s4 p2": (3, 48, (11, 11), (4, 4), (2, 2), (1, 1), 27, 30),
    # four channels exactly; five (padded to 8); a 3x3 at stride 1; dilation along the columns only;
    # asymmetric padding as 'same' gives an even kernel (the output size says how far it reaches)
    "4->40 3x3 s1 p1": (4, 40, (3, 3), (1, 1), (1, 1), (1, 1), 9, 7),
    "5->32 5x5 s(1,2) p(2,1)": (5, 32, (5, 5), (1, 2), (2, 1), (1, 1), 11, 10),
    "3->32 3x3 d(2,1)": (3, 32, (3, 3), (1, 1), (2, 1), (2, 1), 9, 8),
    "3->32 4x4 same": (3, 32, (4, 4), (1, 1), (1, 1), (1, 1), 8, 9),
    # narrow rows: one tap (1x1, 7x1) or two, padded to the 16-element depth of a tensor-core dot
    "3->64 1x1 s2": (3, 64, (1, 1), (2, 2), (0, 0), (1, 1), 9, 8),
    "3->32 7x1": (3, 32, (7, 1), (1, 1), (3, 0), (1, 1), 10, 7),
    "6->32 3x2": (6, 32, (3, 2), (1, 1), (1, 0), (1, 1), 8, 9),
}


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", list(FEW_CHANNELS), ids=list(FEW_CHANNELS))
def test_few_channels_forward_matches_float64(case, layout):
    """The few-channels kernel (the "few" configs, channels padded to 4 or 8, one filter row per step)
    on the layers it serves, float16 and float32 with TF32, with bias, odd sizes, both layouts; a
    candidate exactly where it serves (elsewhere, forced, the gemm kernel runs)."""
    from cnnfast.kernels import conv2d_forward
    from cnnfast.kernels.conv2d import configs
    c, k, kernel, stride, (pt, pl), dilation, h, w = FEW_CHANNELS[case]
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    few = [i for i, cfg in enumerate(configs.FORWARD_CONFIGS) if cfg["kind"] == "few"]
    x, wt, b = rand(2, c, h, w), rand(k, c, *kernel), rand(k)
    xp = F.pad(x.double(), (pl, pl + (1 if case.endswith("same") else 0), pt, pt + (1 if case.endswith("same") else 0)))
    ref = F.conv2d(xp, wt.double(), b.double(), stride=stride, dilation=dilation)
    for dtype in (torch.float16, torch.float32):
        args = (x.to(dtype).contiguous(memory_format=fmt), wt.to(dtype).contiguous(memory_format=fmt), b.to(dtype),
                stride, (pt, pl), dilation, 1, tuple(ref.shape[2:]))
        # it serves rows of padded taps up to 128 bytes: in float32 not the 11x11 row (16 taps x 4
        # channels x 4 B) nor the 5-channel 5x5 one (8 x 8 x 4 B)
        serves = dilation[1] == 1 and not (dtype == torch.float32 and kernel in ((11, 11), (5, 5)))
        assert configs.few_channels_candidates(configs.FORWARD_CONFIGS, args[0], args[1], dilation, 1, True) == \
            (few if serves else [])
        for config in [*few, None]:
            out = conv2d_forward(*args, channels_last=layout == "channels_last", allow_tf32=True, config=config)
            assert out.is_contiguous(memory_format=fmt)
            assert_matches(out, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_few_channels_forward_reads_nothing_beside_a_window(dtype):
    """The padded taps of a few-channels row are never read: an Inf just right of a window (the stem's
    7 taps, padded to 8) reaches exactly the outputs whose windows hold it, as in PyTorch."""
    from cnnfast.kernels import conv2d_forward
    x, w, b = rand(2, 3, 21, 18), rand(64, 3, 7, 7), rand(64)
    x[:, :, :, 10] = float("inf")     # output column 3 reads x columns 3-9; its padded 8th tap, column 10
    ref = F.conv2d(x.double(), w.double(), b.double(), stride=2, padding=3)
    out = conv2d_forward(x.to(dtype), w.to(dtype), b.to(dtype), (2, 2), (3, 3), (1, 1), 1, tuple(ref.shape[2:]),
                         allow_tf32=True)
    finite = torch.isfinite(ref)
    assert not finite.all() and finite.any()
    assert torch.equal(torch.isfinite(out), finite)
    assert_matches(torch.where(finite, out.double(), 0.0), torch.where(finite, ref, 0.0), dtype)


@pytest.mark.parametrize("config", _configs("conv2d_forward"))
def test_every_conv2d_forward_config_on_a_strided_1x1_nchw_layer(config):
    """An NCHW 1x1 weight is channels_last-contiguous too, with spatial strides of 1; the taps kernels
    read it through a view with channels_last's strides (same elements)."""
    from cnnfast.kernels import conv2d_forward
    x, w = rand(2, 48, 9, 7, dtype=torch.float16), rand(40, 48, 1, 1, dtype=torch.float16)
    ref = F.conv2d(x.double(), w.double(), stride=2)
    out = conv2d_forward(x, w, None, (2, 2), (0, 0), (1, 1), 1, tuple(ref.shape[2:]), config=config)
    assert out.is_contiguous()
    assert_matches(out, ref, torch.float16)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", _configs("conv2d_input_grad"))
def test_every_conv2d_input_grad_config(config, dtype):
    from cnnfast.kernels import conv2d_input_grad
    (x, w, b, g), _, (ref, _, _) = _conv_case(dtype)
    assert_matches(conv2d_input_grad(g, w, (7, 6), (1, 1), (1, 1), (1, 1), 2, config=config), ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", _configs("conv2d_input_grad"))
def test_every_conv2d_input_grad_config_in_channels_last_with_wide_channel_blocks(config, dtype):
    """The layout and channel counts the taps input gradient serves (see the forward's test), stride 1."""
    from cnnfast.kernels import conv2d_input_grad
    cl = torch.channels_last
    x64 = rand(2, 160, 9, 8).double().requires_grad_()
    w = rand(72, 80, 3, 3, dtype=dtype).to(memory_format=cl)
    y64 = F.conv2d(x64, w.double(), padding=(1, 2), dilation=(1, 2), groups=2)
    g = torch.randn_like(y64)
    (ref,) = torch.autograd.grad(y64, x64, g)
    got = conv2d_input_grad(g.to(dtype).contiguous(memory_format=cl), w, (9, 8), (1, 1), (1, 2), (1, 2), 2,
                            channels_last=True, config=config)
    assert got.is_contiguous(memory_format=cl)
    assert_matches(got, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", _configs("conv2d_weight_grad"))
def test_every_conv2d_weight_grad_config(config, dtype):
    from cnnfast.kernels import conv2d_weight_grad
    (x, w, b, g), _, (_, ref, _) = _conv_case(dtype)
    out = conv2d_weight_grad(x, g, tuple(w.shape), (1, 1), (1, 1), (1, 1), 2, config=config)
    assert_matches(out, ref, dtype)


STRIDED = {
    # ResNet's strided layers: 3x3 stride 2 pad 1, and the 1x1 stride-2 downsample, whose odd rows and
    # columns get no gradient at all (three of its four phases reached by no tap)
    "3x3 s2 pad 1": dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1)),
    "1x1 s2": dict(kernel=(1, 1), stride=(2, 2), padding=(0, 0), dilation=(1, 1)),
    # an even kernel; stride 3 with asymmetric padding (three phases per axis, unequal in size)
    "2x2 s2": dict(kernel=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1)),
    "3x3 s3 pad 0,1": dict(kernel=(3, 3), stride=(3, 3), padding=(0, 1), dilation=(1, 1)),
    # phases along one axis, dilation along the other
    "3x3 s(2,1) d(1,2)": dict(kernel=(3, 3), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    # stride and dilation both above 1 along an axis: no phases (a forced taps config masks the taps)
    "3x3 s2 d2": dict(kernel=(3, 3), stride=(2, 2), padding=(2, 2), dilation=(2, 1)),
}


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("geometry", list(STRIDED), ids=list(STRIDED))
@pytest.mark.parametrize("config", _configs("conv2d_input_grad"))
def test_every_conv2d_input_grad_config_at_a_stride(config, geometry, layout):
    """Strided layers, odd image sizes, both layouts: every input cell written, with every config (the
    taps ones by phases where the stride allows, ``by_phases``), float16 and, in channels_last,
    float32 with TF32 (the taps configs' FP32 variants)."""
    from cnnfast.kernels import conv2d_input_grad
    g_ = dict(STRIDED[geometry])
    kernel = g_.pop("kernel")
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x64 = rand(2, 40, 9, 7).double().requires_grad_()
    w = rand(48, 40, *kernel)
    y64 = F.conv2d(x64, w.double(), **g_)
    g = torch.randn_like(y64)
    (ref,) = torch.autograd.grad(y64, x64, g)
    for dtype in (torch.float16, torch.float32) if layout == "channels_last" else (torch.float16,):
        got = conv2d_input_grad(g.to(dtype).contiguous(memory_format=fmt), w.to(dtype).contiguous(memory_format=fmt),
                                (9, 7), g_["stride"], g_["padding"], g_["dilation"], 1,
                                channels_last=layout == "channels_last", config=config, allow_tf32=True)
        assert got.is_contiguous(memory_format=fmt)
        assert_matches(got, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", _configs("conv2d_weight_grad"))
def test_every_conv2d_weight_grad_config_in_channels_last_with_wide_channel_blocks(config, dtype):
    """The layout and channel counts the taps weight gradient serves, with stride, dilation and padding."""
    from cnnfast.kernels import conv2d_weight_grad
    cl = torch.channels_last
    x = rand(2, 160, 9, 8, dtype=dtype).to(memory_format=cl)
    w64 = rand(72, 80, 3, 3).double().requires_grad_()
    y64 = F.conv2d(x.double(), w64, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    g = torch.randn_like(y64)
    (ref,) = torch.autograd.grad(y64, w64, g)
    got = conv2d_weight_grad(x, g.to(dtype).contiguous(memory_format=cl), tuple(w64.shape), (2, 1), (1, 2), (1, 2),
                             2, channels_last=True, config=config)
    assert got.is_contiguous(memory_format=cl)
    assert_matches(got, ref, dtype)


@pytest.mark.parametrize("config", [i for i in _configs("conv2d_weight_grad") if i >= 3])
def test_taps_weight_grad_split_ranges_that_start_and_end_inside_an_image(config):
    """Enough pixels for several split-K ranges per tile, each starting inside an image (the kernel
    counts image, row block and column block on from its range's start) and crossing into the next."""
    from cnnfast.kernels import conv2d_weight_grad
    from cnnfast.kernels.conv2d import configs, splitk
    cl = torch.channels_last
    x = rand(4, 64, 20, 20, dtype=torch.float16).to(memory_format=cl)
    w64 = rand(48, 64, 3, 3).double().requires_grad_()
    y64 = F.conv2d(x.double(), w64, padding=1)
    g = torch.randn_like(y64)
    (ref,) = torch.autograd.grad(y64, w64, g)
    cfg = configs.WEIGHT_GRAD_CONFIGS[config]
    block_w = min(32, cfg["BLOCK_K"])
    steps = 4 * -(-20 // (cfg["BLOCK_K"] // block_w)) * -(-20 // block_w)
    split, per_split = splitk.split_k(steps, -(-48 // cfg["BLOCK_M"]) * 9 * -(-64 // cfg["BLOCK_N"]))
    assert split > 1 and per_split % (steps // 4) != 0, "the case must cut images across split ranges"
    got = conv2d_weight_grad(x, g.half().contiguous(memory_format=cl), (48, 64, 3, 3), (1, 1), (1, 1), (1, 1), 1,
                             channels_last=True, config=config)
    assert_matches(got, ref, torch.float16)


@pytest.mark.parametrize("config", _configs("conv2d_bias_grad"))
def test_every_conv2d_bias_grad_config(config):
    from cnnfast.kernels import conv2d_bias_grad
    (x, w, b, g), _, (_, _, ref) = _conv_case(torch.float32)
    assert_matches(conv2d_bias_grad(g, config=config), ref, torch.float32)


@pytest.mark.parametrize("config", _configs("max_pool2d_forward"))
def test_every_max_pool2d_forward_config(config):
    from cnnfast.kernels import max_pool2d_forward
    x = rand(2, 3, 9, 8)
    out, idx = max_pool2d_forward(x, (3, 3), (2, 2), (1, 1), (1, 1), (5, 4), with_indices=True, config=config)
    ref, ref_idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)


@pytest.mark.parametrize("config", _configs("max_pool2d_backward"))
def test_every_max_pool2d_backward_config(config):
    from cnnfast.kernels import max_pool2d_backward
    x64 = rand(2, 3, 9, 8).double().requires_grad_()
    out, idx = F.max_pool2d(x64, 3, 2, 1, return_indices=True)
    g = torch.randn_like(out)
    (ref,) = torch.autograd.grad(out, x64, g)
    got = max_pool2d_backward(g.float(), idx, (9, 8), (3, 3), (2, 2), (1, 1), (1, 1), config=config)
    assert_matches(got, ref, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", _configs("conv_relu_maxpool2d_forward"))
def test_every_fused_forward_config(config, dtype):
    from cnnfast.kernels import conv_relu_maxpool2d_forward
    x, w, b = rand(2, 4, 9, 8, dtype=dtype), rand(6, 2, 3, 3, dtype=dtype), rand(6, dtype=dtype)
    out, pos = conv_relu_maxpool2d_forward(x, w, b, (1, 1), (0, 0), (1, 1), 2, (7, 6), (2, 2), (2, 2), (0, 0),
                                           (1, 1), (3, 3), with_pos=True, config=config)
    ref = F.max_pool2d(F.relu(F.conv2d(x.double(), w.double(), b.double(), groups=2)), 2)
    assert_matches(out, ref, dtype)
    assert bool(((pos >= 0) == (out > 0)).all()), "pos must be -1 exactly where the pooled value is <= 0"
