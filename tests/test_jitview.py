"""On a GPU: the call view (``python -m cnnfast.kernels.aot --suite ...``) shows the code the JIT really
compiles. Each launcher call is compiled once by ``cnnfast.kernels.jitview.compile_only`` for this GPU's
architecture and once for real by a launch on CUDA tensors of the same shapes and strides; the two
cubins must have the same SASS, so the static view can never drift from what runs. Skipped without a
GPU (on a CPU the view's own tests are in tests/test_kernels_aot.py)."""
import pytest

from cnnfast.kernels import aot


@pytest.mark.gpu
@pytest.mark.parametrize("case_id", [
    "net/block2/conv_relu_maxpool2d/n64/float32/nchw/fwd+bwd",
    "net/block1/max_pool2d/n64/bfloat16/channels_last/fwd+bwd",
    "resnet18/layer1.0.conv1 ×4/conv2d/n32/bfloat16/channels_last/fwd+bwd",
    "resnet18/layer2.0.conv1/conv2d/n32/float32/nchw/fwd+bwd",
])
def test_call_view_is_the_code_the_jit_compiled(case_id):
    """On a GPU: each kernel a real launch compiles has the same SASS as the call view's for the same call."""
    import torch

    from cnnfast import kernels
    from cnnfast.kernels import jitview

    case = next((c for c in aot.select_cases(["net", "resnet18"], None, None, None, None, [case_id])
                 if c.id == case_id), None)
    assert case is not None, f"no case {case_id}"
    arch = 10 * torch.cuda.get_device_capability()[0] + torch.cuda.get_device_capability()[1]
    for launcher, args, kwargs in jitview.launcher_calls(case):
        with jitview.compile_only(arch) as static:
            getattr(kernels, launcher)(*args, **kwargs)
        on_gpu = [torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device="cuda").normal_()
                  if isinstance(a, torch.Tensor) and a.is_floating_point()
                  else torch.zeros_like(a, device="cuda") if isinstance(a, torch.Tensor) else a for a in args]
        with jitview.record_launches() as real:
            getattr(kernels, launcher)(*on_gpu, **kwargs)
        torch.cuda.synchronize()
        assert [k.name for k in real] == [k.name for k in static], launcher
        for r, s in zip(real, static):
            assert aot.cubin_sass(r.kernel.asm["cubin"], arch) == aot.cubin_sass(s.kernel.asm["cubin"], arch), \
                f"{case_id} {launcher} {r.name}: the JIT compiled other code than the call view shows"
