"""A few small kernel calls, forward and backward, of every cnnfast GPU backend, for compute-sanitizer to
watch (memcheck, racecheck): ``compute-sanitizer --tool memcheck python -m cnnfast.bench.sanitize``.

Odd sizes (5 channels in, 7 out, 13×11 images) so that every tile has masked edges, and 40 in, 36 out
for the wide-layer kernels (the extension's implicit GEMM on tensor cores); NCHW and channels_last;
float32 and bfloat16. Each result is compared loosely with stock PyTorch (the test suite
judges precision; this only makes sure the calls did real work). Exits 1 if any call fails.
``--backend`` and ``--dtype`` narrow the set (racecheck is slow: ``bench/gpu_check.sh`` gives it the
extension's CUDA kernels alone); ``--list`` prints the calls without running them.
"""
import argparse
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


VARIANTS = [(fmt, ck) for ck in ((5, 7), (40, 36)) for fmt in (torch.contiguous_format, torch.channels_last)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m cnnfast.bench.sanitize", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default=None, help="comma list of GPU backends, run in that order (default: every one available)")
    p.add_argument("--dtype", default=",".join(DTYPES), help="comma list of " + ",".join(DTYPES))
    p.add_argument("--list", action="store_true", help="print the calls and exit (no GPU needed)")
    args = p.parse_args(argv)
    args.dtype = [d for d in args.dtype.split(",") if d]
    if set(args.dtype) - set(DTYPES):
        p.error(f"--dtype: choose among {', '.join(DTYPES)}")
    args.backend = args.backend.split(",") if args.backend else None
    return args


def _calls(backends, dtypes):
    """(backend, dtype name, memory format, (in, out) channels, call name) in the order they run."""
    return [(backend, dtype, fmt, ck, name) for backend in backends for dtype in dtypes
            for fmt, ck in VARIANTS for name in CALLS]


def _run_one(backend, dtype, fmt, ck, name):
    c, k = ck
    torch.manual_seed(0)
    x = torch.randn(2, c, 13, 11, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    w = (torch.randn(k, c, 3, 3, device="cuda") / (3 * c) ** 0.5).to(dtype).contiguous(memory_format=fmt)
    b = torch.randn(k, device="cuda", dtype=dtype)
    inputs = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    refs = [t.detach().float().requires_grad_() for t in (x, w, b)]
    out, ref = CALLS[name](*inputs, backend), CALLS[name](*refs, "torch")
    grad = torch.randn_like(ref)
    out.backward(grad.to(out.dtype))
    ref.backward(grad)
    torch.cuda.synchronize()
    used = [(t.grad, r.grad) for t, r in zip(inputs, refs) if r.grad is not None]
    for got, want in [(out, ref)] + used:
        err = ((got.float() - want).norm() / want.norm().clamp_min(1e-12)).item()
        assert err < 5e-2, f"relative error {err:.3g}"


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        names = args.backend or ["cuda", "triton"]
    elif not torch.cuda.is_available():
        print("sanitize: no CUDA device")
        return 1
    else:
        found = [b for b in cnnfast.backends.available("cuda") if b != "torch"]
        names = found if args.backend is None else args.backend
        missing = [b for b in names if b not in found]
        if missing:
            print(f"sanitize: backend(s) {', '.join(missing)} not available here (available: {', '.join(found)})")
            return 1
    calls = _calls(names, args.dtype)
    failures = done = 0
    for backend, dtype, fmt, (c, k), name in calls:
        layout = "channels_last" if fmt is torch.channels_last else "nchw"
        line = f"{backend:7s} {dtype:9s} {layout:13s} {f'{name} {c}->{k}':30s}"
        if args.list:
            print(line)
            continue
        try:
            _run_one(backend, DTYPES[dtype], fmt, (c, k), name)
            status = "ok"
        except KeyboardInterrupt:   # an outer time limit: say how far it got
            print(f"sanitize: interrupted after {done} of {len(calls)} calls ({failures} failed)", flush=True)
            return 130
        except Exception as e:  # report every failing call, keep going
            failures += 1
            status = f"FAILED {type(e).__name__}: {e}"
        done += 1
        print(f"{line} {status}", flush=True)
    if args.list:
        print(f"sanitize: {len(calls)} calls on backends {names}")
        return 0
    print(f"sanitize: {done} calls on backends {names or 'none'} ({failures} failed)")
    return 1 if failures or not names else 0


if __name__ == "__main__":
    sys.exit(main())
