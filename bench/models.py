"""Model-level workloads: the Net's training step, and ResNet-18 and DenseNet-121 forward and
forward+backward.

Providers: "eager" (the stock model: ``TorchNet``, torchvision's ``resnet18`` or ``densenet121``),
"compile" (that model under ``torch.compile``) and "cnnfast:<backend>" (``Net(backend=...)`` with the
same weights, or ``cnnfast.convert(model, fuse=True, backend=...)``). bfloat16 and float16 run under
``torch.autocast`` with float32 weights, as mixed-precision training does. A training step is forward,
cross-entropy, backward and an SGD step (momentum 0.9); a torchvision model's forward+backward takes the
gradients of every parameter. The check compares the loss (or output) and the gradients with a float64
copy of the model; for torchvision models the gradients are compared through their overall norm, which
does not depend on how ``convert`` names or orders the parameters.
"""
import contextlib
import copy

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cnnfast.models import Net, TorchNet

from . import roofline, timing
from .suites import TORCH_DTYPES
from .workload import COMPILE, EAGER, Unavailable, Workload, cnnfast_backend, compiled, require

NUM_CLASSES = {"net_train_step": 10, "resnet18": 1000, "densenet121": 1000}


def _convert():
    try:
        from cnnfast.convert import convert
    except ImportError as e:
        raise Unavailable(f"cnnfast.convert is not available yet ({e})") from None
    return convert


def _autocast(case, device):
    dtype = TORCH_DTYPES[case.dtype]
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype)


def _input_set(case, device, fmt):
    x = torch.randn(case.batch, *case.chw, device=device).contiguous(memory_format=fmt)
    if case.op == "net_train_step":
        return x, torch.randint(0, NUM_CLASSES[case.op], (case.batch,), device=device)
    return x, torch.randn(case.batch, NUM_CLASSES[case.op], device=device)


def _runner(case, model, device, reference=False):
    """run(inputs, check=False) for ``model``; ``run.params`` are its parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = lambda: contextlib.nullcontext() if reference else _autocast(case, device)  # noqa: E731
    run = _train_step if case.op == "net_train_step" else _forward if case.direction == "fwd" else _forward_backward
    run = run(model, params, autocast)
    run.params = params
    return run


def _train_step(model, params, autocast):
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def step(inputs, check=False):
        x, y = inputs
        with autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        out = [loss.detach().clone(), *(p.grad.clone() for p in params)] if check else []
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out
    return step


def _forward(model, params, autocast):
    def forward(inputs, check=False):
        with torch.no_grad(), autocast():
            return [model(inputs[0])]
    return forward


def _forward_backward(model, params, autocast):
    def forward_backward(inputs, check=False):
        x, grad = inputs
        with autocast():
            out = model(x)
        grads = torch.autograd.grad(out, params, grad.to(out.dtype))
        return [out, torch.stack([g.double().norm() for g in grads]).norm()] if check else []
    return forward_backward


def _base_model(case):
    torch.manual_seed(0)
    if case.op == "net_train_step":
        return TorchNet()
    import torchvision
    return getattr(torchvision.models, case.op)()


def build(case, device, compile_mode=None) -> Workload:
    fmt = torch.channels_last if case.layout == "channels_last" else torch.contiguous_format
    base = _base_model(case).to(device, memory_format=fmt).train(case.direction == "fwd+bwd")
    input_bytes = case.batch * case.chw[0] * case.chw[1] * case.chw[2] * 4
    sets = [_input_set(case, device, fmt) for _ in range(timing.input_sets(input_bytes, device))]

    ref_model = copy.deepcopy(base).double()
    x, other = sets[0]
    ref_inputs = (x.double(), other.double() if other.is_floating_point() else other)
    with FlopCounterMode(display=False) as counter:
        reference = [r.detach() for r in _runner(case, ref_model, device, reference=True)(ref_inputs, check=True)]
    n_params = sum(p.numel() for p in base.parameters())

    def make(provider):
        backend = cnnfast_backend(provider)
        # Net's blocks are the fused op; a converted torchvision model has all three.
        require(backend, ("conv_relu_maxpool2d",) if case.op == "net_train_step" else
                ("conv2d", "max_pool2d", "conv_relu_maxpool2d"))
        if provider in (EAGER, COMPILE):
            model = copy.deepcopy(base)
            model = compiled(model, compile_mode) if provider == COMPILE else model
        elif case.op == "net_train_step":
            model = Net(backend=backend).to(device, memory_format=fmt)
            model.load_state_dict(base.state_dict())
        else:
            model = _convert()(copy.deepcopy(base), fuse=True, backend=backend)
        return _runner(case, model, device)

    return Workload(case, sets, reference, make, counter.get_total_flops(), roofline.model_bytes(case, n_params))
