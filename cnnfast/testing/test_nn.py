"""Drop-in modules and the Net on the backend: same initialisation, state_dict and repr as torch's, the
same results, and the same training as the plain PyTorch Net over SGD steps."""
import pytest
import torch
import torch.nn.functional as F

import cnnfast
from cnnfast.models import Net, TorchNet
from cnnfast.testing._reference import (assert_close_reference, assert_equal_reference, assert_matches_reference,
                                        case_of, device, rand, settings)

OP = "nn modules"
quick = pytest.mark.quick


@pytest.mark.parametrize("kwargs", [
    pytest.param(dict(in_channels=3, out_channels=4, kernel_size=3), marks=quick),
    pytest.param(dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=1, dilation=(1, 2), groups=2,
                      bias=False), marks=quick),
    dict(in_channels=3, out_channels=4, kernel_size=4, padding="same"),
    dict(in_channels=3, out_channels=4, kernel_size=3, padding=2, padding_mode="reflect"),
    dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, padding_mode="circular"),
])
def test_conv2d_module_is_a_drop_in_for_torch(kwargs, backend, seed):
    case = case_of("cnnfast.nn.Conv2d", "module", dtype=torch.float32, backend=backend, seed=seed, arguments=kwargs)
    torch.manual_seed(seed)
    ours = cnnfast.nn.Conv2d(**kwargs, backend=backend).to(device())
    torch.manual_seed(seed)
    theirs = torch.nn.Conv2d(**kwargs).to(device())
    case.check(isinstance(ours, torch.nn.Conv2d), "type", "cnnfast.nn.Conv2d is not a torch.nn.Conv2d")
    case.check(ours.state_dict().keys() == theirs.state_dict().keys(), "state_dict",
               f"state_dict keys {list(ours.state_dict())} != torch's {list(theirs.state_dict())}")
    for key, value in theirs.state_dict().items():
        assert_equal_reference(case, ours.state_dict()[key], value, what=f"{key} as initialised (torch's expected)")
    expected = repr(theirs)[:-1] + f", backend={backend!r})"
    case.check(repr(ours) == expected, "repr", f"repr {repr(ours)!r} != {expected!r}")
    x = rand(2, kwargs["in_channels"], 9, 8)
    case.shapes = dict(input=tuple(x.shape))
    assert_matches_reference(case, ours(x), theirs.double()(x.double()))


@quick
def test_max_pool2d_module_is_a_drop_in_for_torch(backend, seed):
    case = case_of("cnnfast.nn.MaxPool2d", "module", dtype=torch.float32, backend=backend, seed=seed,
                   arguments=dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, return_indices=True))
    ours = cnnfast.nn.MaxPool2d(3, 2, 1, ceil_mode=True, return_indices=True, backend=backend)
    theirs = torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True, return_indices=True)
    case.check(isinstance(ours, torch.nn.MaxPool2d), "type", "cnnfast.nn.MaxPool2d is not a torch.nn.MaxPool2d")
    expected = repr(theirs)[:-1] + f", backend={backend!r})"
    case.check(repr(ours) == expected, "repr", f"repr {repr(ours)!r} != {expected!r}")
    x = rand(2, 3, 9, 10)
    case.shapes = dict(input=tuple(x.shape))
    (out, idx), (ref, ref_idx) = ours(x), theirs(x)
    assert_equal_reference(case, out, ref)
    assert_equal_reference(case, idx, ref_idx, what="indices")


@quick
def test_net_trains_like_the_pytorch_net(backend, seed):
    """20 SGD steps (lr 0.001, momentum 0.9; 3 in the quick subset) on the same batches: losses agree at
    every step, and the weights at the end."""
    torch.manual_seed(seed)
    theirs = TorchNet().to(device())
    ours = Net(backend=backend).to(device())
    ours.load_state_dict(theirs.state_dict())
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.001, momentum=0.9) for m in (ours, theirs)]
    generator = torch.Generator().manual_seed(seed + 1)
    batch = 2 if device() == "cpu" else 64  # the Triton interpreter on CPU is slow
    steps = 3 if settings.quick else 20
    case = case_of("Net", f"{steps} SGD steps", dtype=torch.float32, backend=backend, seed=seed,
                   arguments=dict(lr=0.001, momentum=0.9, steps=steps), input=(batch, 3, 32, 32))
    losses = []
    for _ in range(steps):
        x = rand(batch, 3, 32, 32, generator=generator)
        y = torch.randint(0, 10, (batch,), generator=generator).to(device())
        step = []
        for model, optimizer in zip((ours, theirs), optimizers):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            step.append(loss.item())
        losses.append(step)
    ours_curve, theirs_curve = torch.tensor(losses).T
    assert_close_reference(case, ours_curve, theirs_curve, atol=1e-5, rtol=1e-5,
                           what="loss at each step vs the PyTorch Net's")
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert_close_reference(case, p, q, atol=1e-5, rtol=1e-4, what=f"{name} after training vs the PyTorch Net's")
