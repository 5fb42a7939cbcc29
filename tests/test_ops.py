"""The custom ops pass torch.library.opcheck, and torch.compile traces models using them whole: the
conformance suite's tests (cnnfast/testing/test_ops.py) on the built-in backends, and Inductor on a GPU."""
import pytest
import torch
from conftest import rand

from cnnfast.models import Net
from cnnfast.testing.test_ops import *  # noqa: F401,F403


@pytest.mark.gpu
def test_compiled_net_with_inductor_matches_eager():
    model = Net(backend="triton").cuda()
    x = rand(64, 3, 32, 32)
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x), atol=1e-4, rtol=1e-4)
