"""A few small kernel calls, forward and backward, of every cnnfast GPU backend, for compute-sanitizer to
watch (memcheck, racecheck): ``compute-sanitizer --tool memcheck python -m cnnfast.bench.sanitize``.

Odd sizes (5 channels in, 7 out, 13×11 images) so that every tile has masked edges, and 40 in, 36 out
for the wide-layer kernels (the extension's implicit GEMM on tensor cores); NCHW and channels_last;
float32 and bfloat16. Each result is compared loosely with stock PyTorch (the test suite
judges precision; this only makes sure the calls did real work). Exits 1 if any call fails.
"""
import sys

import torch

import cnnfast
import cnnfast.functional as cf

CALLS = {
    "conv2d": lambda x, w, b, backend: cf.conv2d(x, w, b, padding=1, backend=backend),
    "conv2d stride 2": lambda x, w, b, backend: cf.conv2d(x, w, b, stride=2, backend=backend),
    "max_pool2d 3/2 pad 1": lambda x, w, b, backend: cf.max_pool2d(x, 3, 2, 1, backend=backend),
    "conv_relu_maxpool2d": lambda x, w, b, backend: cf.conv_relu_maxpool2d(x, w, b, padding=1, pool_kernel_size=2,
                                                                          backend=backend),
}


def main():
    if not torch.cuda.is_available():
        print("sanitize: no CUDA device")
        return 1
    names = [b for b in cnnfast.backends.available("cuda") if b != "torch"]
    failures = calls = 0
    for backend in names:
        for dtype in (torch.float32, torch.bfloat16):
            for fmt, (c, k) in ((torch.contiguous_format, (5, 7)), (torch.channels_last, (5, 7)),
                                (torch.contiguous_format, (40, 36)), (torch.channels_last, (40, 36))):
                torch.manual_seed(0)
                x = torch.randn(2, c, 13, 11, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
                w = (torch.randn(k, c, 3, 3, device="cuda") / (3 * c) ** 0.5).to(dtype).contiguous(memory_format=fmt)
                b = torch.randn(k, device="cuda", dtype=dtype)
                for name, call in CALLS.items():
                    name = f"{name} {c}->{k}"
                    inputs = [t.detach().clone().requires_grad_() for t in (x, w, b)]
                    refs = [t.detach().float().requires_grad_() for t in (x, w, b)]
                    try:
                        out, ref = call(*inputs, backend), call(*refs, "torch")
                        grad = torch.randn_like(ref)
                        out.backward(grad.to(out.dtype))
                        ref.backward(grad)
                        torch.cuda.synchronize()
                        used = [(t.grad, r.grad) for t, r in zip(inputs, refs) if r.grad is not None]
                        for got, want in [(out, ref)] + used:
                            err = ((got.float() - want).norm() / want.norm().clamp_min(1e-12)).item()
                            assert err < 5e-2, f"relative error {err:.3g}"
                        status = "ok"
                    except Exception as e:  # report every failing call, keep going
                        failures += 1
                        status = f"FAILED {type(e).__name__}: {e}"
                    calls += 1
                    layout = "channels_last" if fmt is torch.channels_last else "nchw"
                    print(f"{backend:7s} {str(dtype)[6:]:9s} {layout:13s} {name:30s} {status}", flush=True)
    print(f"sanitize: {calls} calls on backends {names or 'none'} ({failures} failed)")
    return 1 if failures or not names else 0


if __name__ == "__main__":
    sys.exit(main())
