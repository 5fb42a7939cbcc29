"""What is benchmarked: the cases of each suite, and the filters that pick a run's subset.

A case is one op (or one model workload) at one shape, batch, dtype, memory layout and direction.
Suites:
    net          the Net's two conv blocks (conv2d, max_pool2d and the fused op) at batch 1 … 4096
    resnet18     every distinct conv and max-pool shape of torchvision's ResNet-18 at 224×224, batch 32
                 and 128, plus the stem (conv 7×7/2 → ReLU → max-pool 3×3/2) as the fused op
    densenet121  the same for DenseNet-121
    models       a Net training step (forward, backward, SGD) at batch 256 and 4096; ResNet-18 forward
                 and forward+backward at batch 32 and 64, DenseNet-121's at batch 32 (after
                 ``cnnfast.convert`` for the cnnfast backends)
Cases come out variant-major (dtype, then layout, then direction, then suite), so that a run cut short
by ``--budget`` has covered every suite at the first variants rather than one suite at all of them.
"""
import functools
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import torch

SUITES = ("net", "resnet18", "densenet121", "models")
OPS = ("conv2d", "max_pool2d", "conv_relu_maxpool2d")
MODEL_OPS = ("net_train_step", "resnet18", "densenet121")
DTYPES = ("float32", "tf32", "bfloat16", "float16")  # "float32" is TF32 off, "tf32" TF32 on
LAYOUTS = ("nchw", "channels_last")
DIRECTIONS = ("fwd", "fwd+bwd")  # forward; forward and backward (spelled so in case ids and results)

TORCH_DTYPES = {"float32": torch.float32, "tf32": torch.float32, "bfloat16": torch.bfloat16,
                "float16": torch.float16}


@dataclass(frozen=True)
class Conv:
    out_channels: int
    kernel: Tuple[int, int]
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = True

    def out_size(self, h, w):
        return tuple((s + 2 * p - d * (k - 1) - 1) // st + 1 for s, p, d, k, st in
                     zip((h, w), self.padding, self.dilation, self.kernel, self.stride))


@dataclass(frozen=True)
class Pool:
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int] = (0, 0)

    def out_size(self, h, w):
        return tuple((s + 2 * p - k) // st + 1 for s, p, k, st in zip((h, w), self.padding, self.kernel, self.stride))


@dataclass(frozen=True)
class Case:
    suite: str
    name: str                     # the layer (e.g. "layer1.0.conv1 ×4") or the model workload
    op: str                       # one of OPS or MODEL_OPS
    batch: int
    chw: Tuple[int, int, int]     # input channels, height, width
    dtype: str = "float32"
    layout: str = "nchw"
    direction: str = "fwd"
    conv: Optional[Conv] = None
    pool: Optional[Pool] = None

    @property
    def id(self) -> str:
        return f"{self.suite}/{self.name}/{self.op}/n{self.batch}/{self.dtype}/{self.layout}/{self.direction}"

    @property
    def shape_label(self) -> str:
        """A short label for tables and plots: the op and its shape, without the variant."""
        c, h, w = self.chw
        if self.op in MODEL_OPS:
            return f"{self.name} n{self.batch}"
        text = f"{self.name} {self.op} n{self.batch} {c}x{h}x{w}"
        if self.conv:
            text += f" k{self.conv.kernel[0]}s{self.conv.stride[0]}→{self.conv.out_channels}"
        if self.pool:
            text += f" p{self.pool.kernel[0]}s{self.pool.stride[0]}"
        return text


# --- shapes -----------------------------------------------------------------------------------

def _net_shapes():
    """The Net's two blocks: conv 3→6 3×3 on 32×32, conv 6→16 3×3 on 15×15, each followed by pool 2."""
    pool = Pool((2, 2), (2, 2))
    out = []
    for name, chw, conv in (("block1", (3, 32, 32), Conv(6, (3, 3))), ("block2", (6, 15, 15), Conv(16, (3, 3)))):
        oh, ow = conv.out_size(*chw[1:])
        out += [(name, "conv2d", chw, conv, None), (name, "max_pool2d", (conv.out_channels, oh, ow), None, pool),
                (name, "conv_relu_maxpool2d", chw, conv, pool)]
    return out


@functools.lru_cache(maxsize=None)
def _torchvision_shapes(model_name: str):
    """Every distinct conv and max-pool shape of a torchvision model at 224×224, in forward order, and
    its stem (first conv, then first max-pool) as a fused case. Traced on the meta device: no weights."""
    import torchvision
    from torch import nn

    with torch.device("meta"):
        model = getattr(torchvision.models, model_name)()
    seen, stem = {}, []

    def hook(name, module, inputs, _output):
        chw = tuple(inputs[0].shape[1:])
        if isinstance(module, nn.Conv2d):
            spec, op = Conv(module.out_channels, module.kernel_size, module.stride, module.padding,
                            module.dilation, module.groups, module.bias is not None), "conv2d"
        else:
            pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
            spec, op = Pool(pair(module.kernel_size), pair(module.stride), pair(module.padding)), "max_pool2d"
        stem.append((op, chw, spec))
        key = (op, chw, spec)
        seen.setdefault(key, []).append(name)

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            module.register_forward_hook(functools.partial(hook, name))
    with torch.no_grad():
        model(torch.empty(1, 3, 224, 224, device="meta"))
    shapes = []
    for (op, chw, spec), names in seen.items():
        label = names[0] + (f" ×{len(names)}" if len(names) > 1 else "")
        shapes.append((label, op, chw, spec if op == "conv2d" else None, spec if op == "max_pool2d" else None))
    (_, chw, conv), (_, _, pool) = stem[0], next(s for s in stem if s[0] == "max_pool2d")
    shapes.insert(0, ("stem", "conv_relu_maxpool2d", chw, conv, pool))
    return shapes


_BATCHES = {"net": (1, 64, 256, 1024, 4096), "resnet18": (32, 128), "densenet121": (32, 128)}
_MODEL_CASES = (("net", "net_train_step", 256, (3, 32, 32), ("fwd+bwd",)),
                ("net", "net_train_step", 4096, (3, 32, 32), ("fwd+bwd",)),
                ("resnet18", "resnet18", 32, (3, 224, 224), DIRECTIONS),
                ("resnet18", "resnet18", 64, (3, 224, 224), DIRECTIONS),
                ("densenet121", "densenet121", 32, (3, 224, 224), DIRECTIONS))


def _base_cases(suite):
    if suite == "models":
        for name, op, batch, chw, directions in _MODEL_CASES:
            yield from (Case("models", name, op, batch, chw, direction=d) for d in directions)
        return
    shapes = _net_shapes() if suite == "net" else _torchvision_shapes(suite)
    for batch in _BATCHES[suite]:
        for name, op, chw, conv, pool in shapes:
            yield from (Case(suite, name, op, batch, chw, direction=d, conv=conv, pool=pool) for d in DIRECTIONS)


def cases(suites=SUITES, dtypes=DTYPES, layouts=LAYOUTS, directions=DIRECTIONS, ops=None, batches=None):
    """The cases of ``suites`` for every (dtype, layout, direction) asked for, variant-major."""
    out = []
    for dtype in dtypes:
        for layout in layouts:
            for direction in directions:
                for suite in suites:
                    out += [replace(c, dtype=dtype, layout=layout) for c in _base_cases(suite)
                            if c.direction == direction and (ops is None or c.op in ops)
                            and (batches is None or c.batch in batches)]
    return out


def quick_cases():
    """The ``--quick`` suite, float32 NCHW: the Net's two blocks at batch 64 (each op forward, the fused op
    forward+backward too) and its training step at batch 256. Each case compiles once for torch.compile,
    which is most of the time on a CPU."""
    return [c for c in cases(suites=("net", "models"), dtypes=("float32",), layouts=("nchw",))
            if (c.suite == "net" and c.batch == 64 and (c.direction == "fwd" or c.op == "conv_relu_maxpool2d"))
            or (c.op == "net_train_step" and c.batch == 256)]


# The micro-benchmarks' batch per device type: small enough that each call is a few kernel launches.
MICRO_BATCH = {"cpu": 1, "cuda": 64}


def micro_cases(device_type: str):
    """The regression micro-benchmarks' cases (``cnnfast.bench.micro``): the Net suite's every op at
    ``MICRO_BATCH`` for the device, forward and forward+backward, float32 NCHW (on CUDA bfloat16 too)."""
    dtypes = ("float32", "bfloat16") if device_type == "cuda" else ("float32",)
    return cases(suites=("net",), dtypes=dtypes, layouts=("nchw",), batches=(MICRO_BATCH.get(device_type, 1),))
