"""Every program of the CUDA backend, through shapes chosen to take each path of the host code's choices
(csrc/cuda/conv2d.h, conv_relu_maxpool2d.h).

Without a GPU these run on backend "emulated_cuda" (the CUDA kernels' block programs run thread by
thread on the CPU) and also check which programs each shape launched; on a GPU the same shapes run the
real kernels on backend "cuda". The shapes divide no tile: partial GEMM tiles in M, N and the
reduction, bands that cut images, several channel slices, several weight-gradient splits.
"""
import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, DTYPES, assert_matches, rand

import cnnfast
import cnnfast.functional as cf
from cnnfast.testing import test_conv2d, test_fused

if DEVICE == "cuda":
    BACKEND = "cuda" if "cuda" in cnnfast.backends.available("cuda") else None
else:
    BACKEND = "emulated_cuda" if "emulated_cuda" in cnnfast.backends.available("cpu") else None
pytestmark = pytest.mark.skipif(BACKEND is None, reason="the CUDA kernels are not built here")
EMULATED = BACKEND == "emulated_cuda"


def _launches():
    """The programs the emulator ran since the last call (empty on a GPU, where nothing is logged)."""
    if not EMULATED:
        return None
    return cnnfast._C.emulated_cuda.launches()


def _expect(launches, *fragments):
    if launches is None:
        return
    for fragment in fragments:
        assert any(fragment in line for line in launches), f"no launch of {fragment!r} in {launches}"


def _check_launching(check, case, cases, fragments, seed):
    """``check`` (the suite's check_conv2d or check_fused) of `case` in float32, which must launch
    programs matching `fragments`."""
    _launches()
    check(case, torch.float32, BACKEND, seed, cases=cases)
    _expect(_launches(), *fragments)


# name: (x shape, weight shape, conv kwargs), the programs forward and backward must launch.
CONV = {
    "direct_patch": ((2, 3, 17, 13), (6, 3, 3, 3), {},
                     ["direct conv float32 patch kgroups=1 slices=1", "wgrad_direct"]),
    "direct_many_slices": ((1, 300, 6, 5), (8, 300, 3, 3), dict(padding=1),
                           ["direct conv float32 patch kgroups=1 slices=4", "gemm dgrad"]),
    "direct_global_huge_dilation": ((1, 2, 130, 130), (4, 2, 3, 3), dict(dilation=60),
                                    ["direct conv float32 global"]),
    "direct_images_share_a_block": ((5, 6, 6, 6), (16, 6, 3, 3), {}, ["direct conv float32 patch kgroups=2"]),
    "direct_input_grad_strided": ((2, 5, 11, 10), (7, 5, 3, 2), dict(stride=(2, 3), padding=(1, 0), dilation=(1, 2)),
                                  ["direct conv float32 patch kgroups=1 slices=1 upsampled"]),
    "gemm_bn32": ((2, 32, 10, 11), (32, 32, 3, 3), dict(padding=1),
                  ["gemm fwd float32 simt bn32", "gemm dgrad float32 simt bn32", "gemm wgrad float32 simt bn32 splits=3"]),
    "gemm_bn64_groups_strided": ((2, 80, 9, 8), (80, 40, 3, 3),
                                 dict(groups=2, stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
                                 ["gemm fwd float32 simt bn64", "gemm dgrad float32 simt bn64", "gemm wgrad float32 simt bn64"]),
    "gemm_1x1": ((3, 48, 7, 9), (40, 48, 1, 1), {}, ["gemm fwd float32 simt bn64", "gemm wgrad float32 simt bn64 splits=3"]),
}
CONV_CASES = {name: case[:3] for name, case in CONV.items()}

FUSED = {
    "direct_pool": ((2, 3, 12, 11), (6, 3, 3, 3), {}, dict(pool_kernel_size=2),
                    ["direct pool float32 patch kgroups=1 slices=1", "bias_grad float32 masked"]),
    "direct_pool_many_slices": ((1, 300, 8, 7), (8, 300, 3, 3), dict(padding=1),
                                dict(pool_kernel_size=3, pool_stride=2, pool_padding=1),
                                ["direct pool float32 patch kgroups=1 slices=6"]),
    "gemm_pool_2x2": ((2, 40, 9, 10), (36, 40, 3, 3), dict(padding=1), dict(pool_kernel_size=2),
                      ["gemm fwd_pool float32 simt bn64"]),
    "gemm_pool_overlapping_ceil": ((2, 36, 11, 10), (64, 36, 3, 3), {},
                                   dict(pool_kernel_size=3, pool_stride=2, pool_padding=1, pool_ceil_mode=True),
                                   ["gemm fwd_pool float32 simt bn64"]),
    "gemm_pool_resnet_stem": ((1, 3, 40, 40), (64, 3, 7, 7), dict(stride=2, padding=3),
                              dict(pool_kernel_size=3, pool_stride=2, pool_padding=1),
                              ["gemm fwd_pool float32 simt bn64", "gemm wgrad float32 simt bn64"]),
}
FUSED_CASES = {name: case[:4] for name, case in FUSED.items()}


@pytest.mark.parametrize("case", list(CONV))
def test_cuda_conv2d_program_matches_float64_reference(case, seed):
    _check_launching(test_conv2d.check_conv2d, case, CONV_CASES, CONV[case][3], seed)


@pytest.mark.parametrize("dtype", DTYPES[1:])
@pytest.mark.parametrize("case", ["direct_patch", "gemm_bn32", "gemm_bn64_groups_strided"])
def test_cuda_conv2d_program_low_precision_on_tensor_cores(case, dtype, seed):
    _launches()
    test_conv2d.check_conv2d(case, dtype, BACKEND, seed, cases=CONV_CASES)
    launches = _launches()
    if case.startswith("gemm"):
        _expect(launches, "gemm fwd " + str(dtype).replace("torch.", "") + " tensor_core")


@pytest.mark.parametrize("case", ["direct_patch", "gemm_bn64_groups_strided"])
def test_cuda_conv2d_program_channels_last(case, seed):
    test_conv2d.check_conv2d(case, torch.float32, BACKEND, seed, channels_last=True, cases=CONV_CASES)


@pytest.mark.parametrize("case", list(FUSED))
def test_cuda_fused_program_matches_float64_reference(case, seed):
    _check_launching(test_fused.check_fused, case, FUSED_CASES, FUSED[case][4], seed)


@pytest.mark.parametrize("dtype", DTYPES[1:])
@pytest.mark.parametrize("case", ["direct_pool", "gemm_pool_overlapping_ceil"])
def test_cuda_fused_program_low_precision(case, dtype, seed):
    test_fused.check_fused(case, dtype, BACKEND, seed, cases=FUSED_CASES)


def test_cuda_fused_program_channels_last(seed):
    test_fused.check_fused("gemm_pool_2x2", torch.float32, BACKEND, seed, channels_last=True, cases=FUSED_CASES)


@pytest.mark.parametrize("case", ["gemm_bn64_groups_strided", "direct_patch"])
def test_cuda_tf32_follows_cudnn_flag(case):
    """TF32 tensor cores exactly when cudnn.allow_tf32 is set (wide layers); exact float32 otherwise."""
    x_shape, w_shape, kwargs, _ = CONV[case]
    x, w = rand(*x_shape), rand(*w_shape)
    ref = F.conv2d(x.double(), w.double(), **kwargs)
    torch.backends.cudnn.allow_tf32 = True
    _launches()
    loose = cf.conv2d(x, w, **kwargs, backend=BACKEND)
    launches = _launches()
    torch.backends.cudnn.allow_tf32 = False
    exact = cf.conv2d(x, w, **kwargs, backend=BACKEND)
    err_loose = ((loose.double() - ref).norm() / ref.norm()).item()
    err_exact = ((exact.double() - ref).norm() / ref.norm()).item()
    assert err_exact < 1e-5
    if case.startswith("gemm"):
        _expect(launches, "gemm fwd float32 tensor_core")
        assert 1e-5 < err_loose < 5e-3, f"TF32 relative error {err_loose:.3g}"
    else:  # the direct path has no tensor cores: float32 stays exact
        assert err_loose < 1e-5


@pytest.mark.parametrize("case", ["gemm_bn32", "direct_patch"])
def test_cuda_launches_split_along_the_batch_give_the_same_result(case, monkeypatch):
    """Launches past the int32 index range run in batch chunks; a small index limit makes small ones do so."""
    x_shape, w_shape, kwargs, _ = CONV[case]
    x, w, b = rand(*x_shape, requires_grad=True), rand(*w_shape, requires_grad=True), rand(w_shape[0], requires_grad=True)
    y = cf.conv2d(x, w, b, **kwargs, backend=BACKEND)
    g = torch.randn_like(y)
    whole = (y, *torch.autograd.grad(y, (x, w, b), g))
    per_image = max(x[0].numel(), y[0].numel())
    monkeypatch.setenv("CNNFAST_CUDA_INDEX_LIMIT", str(per_image + 1))  # one image per launch
    _launches()
    y1 = cf.conv2d(x, w, b, **kwargs, backend=BACKEND)
    chunked = (y1, *torch.autograd.grad(y1, (x, w, b), g))
    launches = _launches()
    if launches is not None:
        # one launch per image for the forward, the input gradient and the weight gradient each
        convs = [line for line in launches if line.startswith(("gemm fwd", "gemm dgrad", "direct conv"))]
        wgrads = [line for line in launches if line.startswith(("gemm wgrad", "wgrad_direct"))]
        assert (len(convs), len(wgrads)) == (2 * x_shape[0], x_shape[0]), launches
    # Nothing sums across images in the forward and the input gradient: the same bits. The weight and
    # bias gradients sum over the batch in another order: both agree with float64.
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = torch.autograd.grad(F.conv2d(x64, w64, b64, **kwargs), (w64, b64), g.double())
    for got, want in zip(chunked[2:], ref):
        assert_matches(got, want, torch.float32)
    x2 = rand(*x_shape)
    out, idx = cf.max_pool2d(x2, 2, return_indices=True, backend=BACKEND)
    ref, ref_idx = F.max_pool2d(x2, 2, return_indices=True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)


def test_cuda_single_image_past_the_index_range_is_refused(monkeypatch):
    monkeypatch.setenv("CNNFAST_CUDA_INDEX_LIMIT", "100")
    with pytest.raises(RuntimeError, match="index range"):
        cf.conv2d(rand(1, 3, 8, 8), rand(4, 3, 3, 3), backend=BACKEND)


def test_cuda_depthwise_conv_with_more_groups_than_a_grid_dimension_holds():
    """70,000 groups: more than grid y or z may hold (the emulator enforces the GPU's launch limits)."""
    C = 70_000
    x, w, b = rand(1, C, 4, 3, requires_grad=True), rand(C, 1, 3, 3, requires_grad=True), rand(C, requires_grad=True)
    out = cf.conv2d(x, w, b, padding=1, groups=C, backend=BACKEND)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, w, b), g)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = F.conv2d(x64, w64, b64, padding=1, groups=C)
    ref_grads = torch.autograd.grad(ref, (x64, w64, b64), g.double())
    assert_matches(out, ref, torch.float32)
    for got, want in zip(grads, ref_grads):
        assert_matches(got, want, torch.float32)


@pytest.mark.skipif(not EMULATED, reason="the launch log is the emulator's")
def test_launch_report_lists_programs_grids_and_shared_memory():
    """``python -m cnnfast.bench.cuda_kernels --launches``: every launch of the Net's layers and a wide
    layer, with its grid and dynamic shared memory (within the 48 KiB a launch may take)."""
    import re
    from cnnfast.bench.cuda_kernels import launches
    lines = [line for _, line in launches()]
    parsed = [re.fullmatch(r"(.+) \| grid (\d+)x(\d+)x(\d+), (\d+) B shared", line) for line in lines]
    assert all(parsed), lines
    programs = {m.group(1).split()[0] for m in parsed}
    assert {"direct", "gemm", "unpool", "wgrad_direct", "split_reduce", "bias_grad", "max_pool2d_fwd"} <= programs
    assert all(0 <= int(m.group(5)) <= 48 * 1024 for m in parsed)
    assert any(m.group(1).startswith("gemm") and int(m.group(5)) > 0 for m in parsed)
