"""The C++/CUDA extension itself: its ops pass opcheck, backward repeats bit for bit, offsets past
2**31 elements work on the CPU, the baseline CPU engine passes the CPU tests, and the built CUDA
kernels spill no registers."""
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, rand

import cnnfast
import cnnfast.functional as cf

ext = pytest.importorskip("cnnfast._extension", reason="cnnfast._C is not built")
BACKEND = "cuda" if DEVICE == "cuda" else "cpu"


def _op_samples():
    ops = torch.ops.cnnfast
    x, w, b = rand(2, 3, 7, 6), rand(4, 3, 3, 3), rand(4)
    conv = ([1, 1], [1, 1], [1, 1], 1, False)
    yield ops.conv2d_forward_kernel, (x, w, b, *conv, torch.empty(2, 4, 7, 6, device=DEVICE))
    yield ops.conv2d_forward_kernel, (x, w, None, [2, 1], [0, 1], [1, 2], 1, True, torch.empty(2, 4, 3, 4, device=DEVICE))
    g = rand(2, 4, 7, 6)
    yield ops.conv2d_input_grad_kernel, (g, w, *conv, torch.empty(2, 3, 7, 6, device=DEVICE))
    yield ops.conv2d_weight_grad_kernel, (x, g, *conv, torch.empty(4, 3, 3, 3, device=DEVICE))
    yield ops.conv2d_bias_grad_kernel, (g, torch.empty(4, device=DEVICE))
    pool = ([2, 2], [2, 2], [0, 0], [1, 1])
    idx = torch.empty(2, 3, 3, 3, dtype=torch.int64, device=DEVICE)
    yield ops.max_pool2d_forward_kernel, (x, *pool, torch.empty(2, 3, 3, 3, device=DEVICE), idx)
    ops.max_pool2d_forward_kernel(x, *pool, torch.empty(2, 3, 3, 3, device=DEVICE), idx)
    yield ops.max_pool2d_backward_kernel, (rand(2, 3, 3, 3), idx, *pool, torch.empty(2, 3, 7, 6, device=DEVICE))
    pos = torch.empty(2, 4, 3, 3, dtype=torch.int8, device=DEVICE)
    fused = (x, w, b, *conv[:4], [7, 6], *pool, False)
    yield ops.conv_relu_maxpool2d_forward_kernel, (*fused, torch.empty(2, 4, 3, 3, device=DEVICE), pos)
    ops.conv_relu_maxpool2d_forward_kernel(*fused, torch.empty(2, 4, 3, 3, device=DEVICE), pos)
    gp = rand(2, 4, 3, 3)
    yield ops.conv_relu_maxpool2d_input_grad_kernel, (gp, pos, w, *conv[:4], [7, 6], *pool, False,
                                                      torch.empty(2, 3, 7, 6, device=DEVICE))
    yield ops.conv_relu_maxpool2d_weight_grad_kernel, (x, gp, pos, *conv[:4], [7, 6], *pool, False,
                                                       torch.empty(4, 3, 3, 3, device=DEVICE))
    yield ops.conv_relu_maxpool2d_bias_grad_kernel, (rand(2, 4, 3, 3), pos, torch.empty(4, device=DEVICE))


def test_extension_ops_pass_opcheck():
    for op, args in _op_samples():
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_float32_output_temporary_is_poisoned(dtype):
    """The CPU kernels write a float16 / bfloat16 output through a float32 temporary: poisoned like every
    output ($CNNFAST_POISON=1, which the test suite sets), so an element no kernel writes comes out NaN."""
    assert os.environ.get("CNNFAST_POISON") == "1"
    out = torch.zeros(2, 3, 4, 5, dtype=dtype)
    cnnfast._C._unwritten_float_out(out)
    assert out.isnan().all()


REPEAT_BACKENDS = [BACKEND] + (["emulated_cuda"] if "emulated_cuda" in cnnfast.backends.available(DEVICE) else [])


@pytest.mark.parametrize("backend", REPEAT_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels", [(6, 16), (40, 36)])  # direct kernels; implicit GEMM (split-K)
def test_backward_repeats_bit_for_bit(dtype, backend, channels):
    c, k = channels
    x = rand(16, c, 15, 15, dtype=dtype, requires_grad=True)
    w = rand(k, c, 3, 3, dtype=dtype, requires_grad=True)
    b = rand(k, dtype=dtype, requires_grad=True)
    g = None
    results = []
    for _ in range(2):
        out = cf.conv_relu_maxpool2d(x, w, b, padding=1, backend=backend)
        g = torch.randn_like(out, generator=torch.Generator(device=out.device).manual_seed(0)) if g is None else g
        fused = torch.autograd.grad(out, (x, w, b), g)
        y = cf.conv2d(x, w, b, stride=2, padding=1, backend=backend)
        plain = torch.autograd.grad(y, (x, w, b), torch.ones_like(y))
        results.append([t.clone() for t in (*fused, *plain)])
    for first, second in zip(*results):
        assert torch.equal(first.view(torch.int16 if dtype != torch.float32 else torch.int32),
                           second.view(torch.int16 if dtype != torch.float32 else torch.int32))


@pytest.mark.skipif(DEVICE != "cpu", reason="the large-offset case runs on the CPU")
def test_offsets_past_int32_on_cpu():
    """A small view whose elements lie past 2**31 in its storage: an int32 offset would wrap. The
    storage is reserved but never touched except at the viewed elements."""
    big = 2**31 + 2**28
    try:
        base = torch.empty(big, dtype=torch.float32)
    except RuntimeError:
        pytest.skip("cannot reserve 9 GiB of address space")
    # (N, C, H, W) with strides putting image 1 at 1.5 * 2**30 and the last rows past 2**31.
    x = base.as_strided((2, 3, 9, 10), (3 * 2**29, 2**28 + 64, 2**24 + 32, 1), 2**20)
    assert x.storage_offset() + sum((s - 1) * st for s, st in zip(x.shape, x.stride())) >= 2**31
    x.copy_(torch.randn(2, 3, 9, 10))
    dense = x.contiguous()
    w, b = torch.randn(4, 3, 3, 3), torch.randn(4)
    torch.testing.assert_close(cf.conv2d(x, w, b, padding=1, backend="cpu"), F.conv2d(dense, w, b, padding=1))
    torch.testing.assert_close(cf.conv_relu_maxpool2d(x, w, b, backend="cpu"),
                               F.max_pool2d(F.relu(F.conv2d(dense, w, b)), 2))
    out, idx = cf.max_pool2d(x, 3, 2, return_indices=True, backend="cpu")
    ref, ref_idx = F.max_pool2d(dense, 3, 2, return_indices=True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
    xg = x.detach().requires_grad_()
    (gw,) = torch.autograd.grad(cf.conv2d(xg, w.requires_grad_(), padding=1, backend="cpu").sum(), (w,))
    w64 = w.detach().double().requires_grad_()
    (ref_gw,) = torch.autograd.grad(F.conv2d(dense.double(), w64, padding=1).sum(), (w64,))
    torch.testing.assert_close(gw.double(), ref_gw, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not cnnfast.backends._extension().built_with_cuda(), reason="built without the CUDA kernels")
def test_built_cuda_kernels_use_no_local_memory():
    """Every CUDA kernel in the built extension, for every architecture it was built for, has no stack
    and no local memory, where ptxas puts spilled registers: read from the binary with cuobjdump."""
    from cnnfast.bench.cuda_kernels import find_cuobjdump, resource_usage
    if find_cuobjdump() is None:
        pytest.skip("cuobjdump not found")
    rows = resource_usage()
    wanted = {f"sm_{a.strip()}" for a in os.environ.get("CNNFAST_CUDA_ARCHS", "80;90").split(";") if a.strip()}
    assert wanted <= {r["arch"] for r in rows}, rows
    kernels = {r["kernel"] for r in rows}
    for program in ("ConvGemm<fwd, float, TensorCore<float>, 64>", "ConvGemm<wgrad, BFloat16, TensorCore<BFloat16>, 32>",
                    "DirectConv<Half, true, true>", "MaxPoolBwd<float>", "Unpool<BFloat16>"):
        assert program in kernels, f"{program} is not in the binary: {sorted(kernels)}"
    spilling = [r for r in rows if r["stack"] or r["local"]]
    assert not spilling, f"kernels with stack or local memory (spills): {spilling}"


@pytest.mark.skipif(DEVICE != "cpu", reason="the CPU engine's fallback is tested on CPU machines")
def test_baseline_cpu_engine_passes_the_cpu_tests():
    """The engine is built twice, AVX2+FMA (chosen here) and a baseline for other CPUs; the baseline
    copy (forced by CNNFAST_CPU_ISA=baseline) runs the conv, pool and fused tests on "cpu" too."""
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, CNNFAST_CPU_ISA="baseline")
    probe = subprocess.run([sys.executable, "-c", "import cnnfast._C as C; print(C.cpu_isa())"], env=env,
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "baseline"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cpu and not emulated",
                          *(os.path.join(here, f) for f in ("test_conv2d.py", "test_fused.py", "test_max_pool2d.py"))],
                         env=env, capture_output=True, text=True, cwd=here)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
