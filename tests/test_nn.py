"""Drop-in modules and the Net: same constructor, state_dict and repr as torch's; same training. The
backend-parametrised tests are the conformance suite's (cnnfast/testing/test_nn.py)."""
import torch

import cnnfast
from cnnfast.models import Net, TorchNet
from cnnfast.testing.test_nn import *  # noqa: F401,F403


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
