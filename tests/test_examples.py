"""The worked example (examples/custom_backend): its backends register from outside the package and
pass the example's own check on CPU; a planted bug fails that check with the case named."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from cnnfast import backends

FOLDER = Path(__file__).resolve().parents[1] / "examples" / "custom_backend"


@pytest.fixture
def example():
    """The example's run_example module, its backends registered; removed afterwards."""
    spec = importlib.util.spec_from_file_location("run_example", FOLDER / "run_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.register_backends()
    yield module
    for name in ("example_unfold", "example_triton"):
        if name in backends._REGISTRY:
            backends.unregister(name)
    sys.path.remove(str(FOLDER))


def test_example_unfold_backend_passes_the_examples_check_on_cpu(example):
    lines = example.check("example_unfold", "cpu")
    assert len(lines) == len(example.CASES) + 1 and all(line.startswith("ok") for line in lines)
    assert "example_unfold" in backends.available("cpu")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or importlib.util.find_spec("triton") is None,
                    reason="the example's Triton kernel runs on CPU tensors only under the Triton interpreter")
def test_example_triton_backend_passes_the_examples_check_under_the_interpreter(example):
    with pytest.warns(RuntimeWarning) as caught:
        lines = example.check("example_triton", "cpu", cases=example.CASES[1:3])   # the interpreter is slow
    # Forward only: stock PyTorch runs each gradient, said once.
    # Only cnnfast's own RuntimeWarnings: Triton's interpreter adds DeprecationWarnings of its own on
    # some numpy versions, and pytest.warns records every warning.
    said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning) and " has no " in str(w.message)]
    assert sorted(message.split(" has no ")[1].split(";")[0] for message in said) == [
        "conv2d_bias_grad", "conv2d_input_grad", "conv2d_weight_grad"]
    assert all(line.startswith("ok") for line in lines)


def test_the_examples_check_fails_on_a_planted_padding_bug(example, monkeypatch):
    import cnnfast_example_backend.unfold as unfold
    real = unfold._padded

    def shifted(size, out_size, kernel, stride, padding, dilation):    # pads one row too few on top
        return [(max(0, p - 1), a + 1, n) if i == 0 else (p, a, n)
                for i, (p, a, n) in enumerate(real(size, out_size, kernel, stride, padding, dilation))]
    monkeypatch.setattr(unfold, "_padded", shifted)
    with pytest.raises(AssertionError, match=r"example_unfold: conv2d \{.*padding.*\} seed 0: forward relative error"):
        example.check("example_unfold", "cpu")
