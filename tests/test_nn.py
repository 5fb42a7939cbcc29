"""Drop-in modules and the Net: same constructor, state_dict and repr as torch's; same training."""
import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, assert_matches, rand

import cnnfast
from cnnfast.models import Net, TorchNet


@pytest.mark.parametrize("kwargs", [
    dict(in_channels=3, out_channels=4, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=1, dilation=(1, 2), groups=2, bias=False),
    dict(in_channels=3, out_channels=4, kernel_size=4, padding="same"),
    dict(in_channels=3, out_channels=4, kernel_size=3, padding=2, padding_mode="reflect"),
    dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, padding_mode="circular"),
])
def test_conv2d_module_is_a_drop_in_for_torch(kwargs, backend):
    torch.manual_seed(0)
    ours = cnnfast.nn.Conv2d(**kwargs, backend=backend).to(DEVICE)
    torch.manual_seed(0)
    theirs = torch.nn.Conv2d(**kwargs).to(DEVICE)
    assert isinstance(ours, torch.nn.Conv2d)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), f"{key} initialised differently"
    assert repr(ours) == repr(theirs)[:-1] + f", backend={backend!r})"
    x = rand(2, kwargs["in_channels"], 9, 8)
    assert_matches(ours(x), theirs.double()(x.double()), torch.float32)


def test_max_pool2d_module_is_a_drop_in_for_torch(backend):
    ours = cnnfast.nn.MaxPool2d(3, 2, 1, ceil_mode=True, return_indices=True, backend=backend)
    theirs = torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True, return_indices=True)
    assert isinstance(ours, torch.nn.MaxPool2d)
    assert repr(ours) == repr(theirs)[:-1] + f", backend={backend!r})"
    x = rand(2, 3, 9, 10)
    (out, idx), (ref, ref_idx) = ours(x), theirs(x)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)


def test_module_without_backend_repr_equals_torch():
    assert repr(cnnfast.nn.Conv2d(3, 6, 3)) == repr(torch.nn.Conv2d(3, 6, 3))
    assert repr(cnnfast.nn.MaxPool2d(2)) == repr(torch.nn.MaxPool2d(2))


def test_net_state_dict_keys_and_checkpoints_load_both_ways(tmp_path):
    ours, theirs = Net(), TorchNet()
    expected = [f"{layer}.{p}" for layer in ("conv1", "conv2", "fc1", "fc2", "fc3") for p in ("weight", "bias")]
    assert list(ours.state_dict()) == expected == list(theirs.state_dict())
    torch.save(theirs.state_dict(), tmp_path / "torch.pt")
    ours.load_state_dict(torch.load(tmp_path / "torch.pt"))
    torch.save(ours.state_dict(), tmp_path / "ours.pt")
    back = TorchNet()
    back.load_state_dict(torch.load(tmp_path / "ours.pt"))
    for key, value in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)


def test_net_trains_like_the_pytorch_net(backend):
    """20 SGD steps (lr 0.001, momentum 0.9) on the same batches: losses agree at every step."""
    torch.manual_seed(0)
    theirs = TorchNet().to(DEVICE)
    ours = Net(backend=backend).to(DEVICE)
    ours.load_state_dict(theirs.state_dict())
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.001, momentum=0.9) for m in (ours, theirs)]
    generator = torch.Generator().manual_seed(1)
    batch = 2 if DEVICE == "cpu" else 64  # the Triton interpreter on CPU is slow
    losses = []
    for _ in range(20):
        x = rand(batch, 3, 32, 32, generator=generator)
        y = torch.randint(0, 10, (batch,), generator=generator).to(DEVICE)
        step = []
        for model, optimizer in zip((ours, theirs), optimizers):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            step.append(loss.item())
        losses.append(step)
    ours_curve, theirs_curve = torch.tensor(losses).T
    torch.testing.assert_close(ours_curve, theirs_curve, atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
