"""Shared test setup: the Triton interpreter on machines without a GPU, poisoned outputs, the backends
to test, tolerances per dtype and the float64 comparison every test uses."""
import os
import sys
import tempfile

import torch

# The interpreter must be chosen before triton is imported (torch itself does not import it).
assert "triton" not in sys.modules, "conftest must run before triton is imported"
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
# Every kernel output starts as NaN (-1 for integer outputs) so an unwritten element cannot pass.
os.environ["CNNFAST_POISON"] = "1"
# No test depends on real timings: "auto" is the unmeasured heuristic unless a test turns the tuner on
# (tests/test_tune.py, with a fake timer), and no test writes the user's cache.
os.environ["CNNFAST_TUNE"] = "0"
os.environ["CNNFAST_CACHE_DIR"] = tempfile.mkdtemp(prefix="cnnfast-test-cache-")

import pytest  # noqa: E402

import cnnfast  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [name for name in cnnfast.backends.available(DEVICE)]
FAST_BACKENDS = [name for name in BACKENDS if name != "torch"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Relative-error ceilings (‖out − ref‖ / ‖ref‖ against float64) and elementwise tolerances per dtype;
# for low precision the kernel may also be up to twice as far from float64 as stock PyTorch is.
TOLERANCES = {
    # dtype:          (rel_err, atol, rtol)
    torch.float32: (1e-5, 1e-5, 1e-4),
    torch.float16: (2e-3, 2e-3, 1e-2),
    torch.bfloat16: (1.6e-2, 1.6e-2, 5e-2),
}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _exact_float32():
    """float32 kernels compared at full precision: TF32 off (its own tests turn it on)."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=FAST_BACKENDS)
def fast_backend(request):
    return request.param


def rand(*shape, dtype=torch.float32, channels_last=False, requires_grad=False, generator=None):
    """Fresh standard-normal input (never zeros) on the test device."""
    t = torch.randn(*shape, dtype=torch.float64, generator=generator).to(DEVICE, dtype)
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


def rel_err(out, ref):
    out, ref = out.double(), ref.double()
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / denom if denom > 0 else diff


def assert_matches(out, ref, dtype, stock=None, what="output"):
    """``out`` agrees with the float64 ``ref``: relative error within the dtype's ceiling (or twice
    stock PyTorch's own error ``stock`` at that dtype, if larger), and elementwise close with
    tolerances scaled to the reference's magnitude."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert not torch.isnan(out).any() or torch.isnan(ref).any(), f"{what}: NaN where the reference has none"
    if ref.numel() == 0:
        return
    ceiling, atol, rtol = TOLERANCES[dtype]
    if stock is not None:
        ceiling = max(ceiling, 2 * rel_err(stock, ref))
    err = rel_err(out, ref)
    assert err <= ceiling, f"{what}: relative error {err:.3g} > {ceiling:.3g} ({dtype})"
    scale = max(ref.abs().max().item(), 1.0)
    torch.testing.assert_close(out.double(), ref.double(), atol=atol * scale, rtol=rtol,
                               msg=lambda m: f"{what} ({dtype}): {m}")


def assert_unchanged(t, before, what="input"):
    """The op left its input as it was (NaN included)."""
    torch.testing.assert_close(t.detach(), before, atol=0, rtol=0, equal_nan=True,
                               msg=lambda m: f"the op modified its {what}: {m}")
