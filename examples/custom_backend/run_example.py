"""Register the example backends, check them against float64 references through cnnfast's layers, and
benchmark them against the built-in backends.

    python examples/custom_backend/run_example.py                        # check example_unfold (CPU: seconds)
    python examples/custom_backend/run_example.py --backend example_triton --device cuda
    python examples/custom_backend/run_example.py --bench                # then time it beside the built-ins

Run from anywhere: without the package installed (pip install -e examples/custom_backend), the folder
is put on sys.path.
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cnnfast  # noqa: E402
import cnnfast.functional as cf  # noqa: E402
from cnnfast_example_backend import register_backends  # noqa: E402

# Geometries the check runs: every argument of conv2d that the launchers see (odd sizes, stride,
# 'same' padding with an even kernel, dilation, groups, no bias).
CASES = [
    dict(shape=(2, 3, 9, 8), weight=(4, 3, 3, 3)),
    dict(shape=(1, 4, 11, 7), weight=(6, 4, 3, 2), stride=2, padding=(1, 0)),
    dict(shape=(2, 2, 8, 8), weight=(3, 2, 4, 4), padding="same"),
    dict(shape=(1, 3, 10, 9), weight=(5, 3, 3, 3), dilation=2, padding=1, bias=False),
    dict(shape=(2, 4, 7, 7), weight=(6, 2, 3, 3), groups=2, padding=1),
]
# Relative error against float64 a float32 result may show (‖out − ref‖ / ‖ref‖).
TOLERANCE = 1e-5


def rel_err(out, ref) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check(backend: str, device: str = "cpu", seed: int = 0, cases=CASES) -> list:
    """Each case's forward and gradients through ``cnnfast.functional.conv2d(backend=...)`` against
    stock PyTorch in float64; then a cnnfast.nn.Conv2d layer and a converted model. Returns lines saying
    what passed; raises AssertionError naming the case and the error otherwise."""
    generator = torch.Generator().manual_seed(seed)
    lines = []
    for case in cases:
        kwargs = {k: v for k, v in case.items() if k in ("stride", "padding", "dilation", "groups")}
        x64 = torch.randn(case["shape"], dtype=torch.float64, generator=generator)
        w64 = torch.randn(case["weight"], dtype=torch.float64, generator=generator)
        b64 = torch.randn(case["weight"][0], dtype=torch.float64, generator=generator) if case.get("bias", True) \
            else None
        ref_inputs = [t.requires_grad_() for t in (x64, w64, b64) if t is not None]
        ours = [t.detach().float().to(device).requires_grad_() for t in ref_inputs]
        y = cf.conv2d(*ours[:2], ours[2] if len(ours) > 2 else None, backend=backend, **kwargs)
        ref = F.conv2d(*ref_inputs[:2], ref_inputs[2] if len(ref_inputs) > 2 else None, **kwargs)
        grad = torch.randn(ref.shape, dtype=torch.float64, generator=generator)
        y.backward(grad.float().to(device))
        ref.backward(grad)
        for name, out, r in [("forward", y, ref)] + [(f"grad {n}", t.grad, rt.grad)
                                                    for n, t, rt in zip(("x", "weight", "bias"), ours, ref_inputs)]:
            err = rel_err(out.detach().cpu(), r.detach())
            assert err <= TOLERANCE, (f"{backend}: conv2d {case} seed {seed}: {name} relative error {err:.3g} against "
                                      f"float64 > {TOLERANCE:g}")
        lines.append(f"ok  conv2d {case}")
    # A layer and a converted model: cnnfast.nn.Conv2d, then convert() of a stock model (its fused blocks
    # need conv_relu_maxpool2d, which this backend lacks, so fuse=False).
    stock = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3))
    stock = stock.double().to(device)
    model = cnnfast.convert(stock, backend=backend, fuse=False).float()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=generator).to(device)
    err = rel_err(model(x.float()).detach().cpu(), stock(x).detach().cpu())
    assert err <= TOLERANCE, f"{backend}: converted model output relative error {err:.3g} > {TOLERANCE:g}"
    lines.append("ok  cnnfast.convert(model) forward")
    return lines


def bench(backend: str, device: str) -> int:
    """``cnnfast bench`` on the Net's conv2d layers: stock eager, the built-in kernels, and ``backend``."""
    from cnnfast.bench import cli
    builtin = [b for b in cnnfast.backends.available(device) if b in ("triton", "cuda", "cpu")
               and not cnnfast.backends._slow(b, torch.device(device))]
    providers = ",".join(["eager"] + [f"cnnfast:{b}" for b in builtin + [backend]])
    return cli.main(["--device", device, "--suite", "net", "--op", "conv2d", "--batch", "64", "--dtype", "float32",
                     "--layout", "nchw", "--providers", providers, "--formats", "md",
                     "--out", str(Path.cwd() / "example-bench"), "--tag", backend])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="example_unfold", help="example_unfold (default) or example_triton")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bench", action="store_true", help="then benchmark it with cnnfast bench")
    args = p.parse_args(argv)
    register_backends()
    print(f"{args.backend} on {args.device}; available here: {', '.join(cnnfast.backends.available(args.device))}")
    for line in check(args.backend, args.device):
        print(line)
    return bench(args.backend, args.device) if args.bench else 0


if __name__ == "__main__":
    sys.exit(main())
