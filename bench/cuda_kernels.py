"""Resource usage of the C++/CUDA extension's kernels, read from the built binary with cuobjdump:
registers, stack and local memory (where spills go) of every kernel for every architecture it was
built for. No GPU needed.

    python -m cnnfast.bench.cuda_kernels [--json FILE] [--launches]

Shared memory is dynamic (sized per launch by the program): the implicit GEMM uses a fixed
A/B-or-C tile (conv_gemm.h: 33.8 KiB at BN=64, 16.9 KiB at BN=32), the direct programs at most
40 KiB (conv_direct.h), the bias-gradient partials 512 bytes; the elementwise kernels none.
``--launches`` runs the Net's layers (and a 40 -> 36 channel layer, the implicit GEMM's) forward and
backward through the emulator, and prints each launch: program, grid and shared memory.
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess


def find_cuobjdump():
    """cuobjdump from $CUDA_HOME, PATH, or the copy inside Triton's package; None if none is found."""
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "cuobjdump"))
    if shutil.which("cuobjdump"):
        candidates.append(shutil.which("cuobjdump"))
    try:
        import triton
        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if os.path.isfile(c) and os.access(c, os.X_OK)), None)


def extension_path():
    import cnnfast
    found = glob.glob(os.path.join(os.path.dirname(cnnfast.__file__), "_C*.so"))
    return found[0] if found else None


def _short(mangled):
    """run_program<Program<...>> as 'Program<...>', namespaces and c10:: dropped (c++filt if present)."""
    name = mangled
    if shutil.which("c++filt"):
        name = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip() or mangled
    name = name.replace("cnnfast::cuda::", "").replace("c10::", "")
    m = re.match(r"void run_program<(.*)>\(.*\)$", name)
    name = (m.group(1) if m else name).strip()
    # ConvGemm's first argument is its GemmKind
    return re.sub(r"ConvGemm<(\d)", lambda k: "ConvGemm<" + ("fwd", "fwd_pool", "dgrad", "wgrad")[int(k.group(1))], name)


def resource_usage(lib=None, tool=None):
    """One dict per (kernel, architecture): kernel, arch, registers, stack, local, shared (static bytes)."""
    lib, tool = lib or extension_path(), tool or find_cuobjdump()
    if lib is None or tool is None:
        raise RuntimeError("need the built extension and cuobjdump")
    res = subprocess.run([tool, "-res-usage", lib], capture_output=True, text=True)
    if res.returncode != 0:
        if "does not contain device code" in res.stdout + res.stderr:
            return []
        raise RuntimeError(f"cuobjdump failed: {res.stderr.strip()}")
    out = res.stdout
    rows, arch = [], None
    lines = out.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"arch = (sm_\d+)", line.strip())
        if m:
            arch = m.group(1)
        m = re.match(r"\s*Function (\S+):", line)
        if m and i + 1 < len(lines):
            usage = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", lines[i + 1]))
            row = dict(kernel=_short(m.group(1)), arch=arch, registers=int(usage.get("REG", 0)),
                       stack=int(usage.get("STACK", 0)), local=int(usage.get("LOCAL", 0)),
                       shared=int(usage.get("SHARED", 0)))
            if row not in rows:  # a program instantiated in two sources appears twice
                rows.append(row)
    return rows


def launches():
    """The distinct launches (program | grid, shared bytes) of the Net's layers and a wide layer, forward
    and backward, float32 (TF32 off and on) and bfloat16, as the emulator logs them."""
    import torch
    import cnnfast._C as C
    import cnnfast.functional as cf
    layers = [((2, 3, 32, 32), (6, 3, 3, 3), {}), ((2, 6, 15, 15), (16, 6, 3, 3), {}),
              ((2, 40, 12, 12), (36, 40, 3, 3), dict(padding=1))]
    seen = []
    tf32 = torch.backends.cudnn.allow_tf32
    try:
        for dtype, allow in ((torch.float32, False), (torch.float32, True), (torch.bfloat16, False)):
            torch.backends.cudnn.allow_tf32 = allow
            for x_shape, w_shape, kw in layers:
                x = torch.randn(x_shape, dtype=dtype, requires_grad=True)
                w = torch.randn(w_shape, dtype=dtype, requires_grad=True)
                b = torch.randn(w_shape[0], dtype=dtype, requires_grad=True)
                C.emulated_cuda.launches()
                cf.conv_relu_maxpool2d(x, w, b, **kw, backend="emulated_cuda").sum().backward()
                y = cf.conv2d(x, w, b, **kw, backend="emulated_cuda")
                cf.max_pool2d(y, 2, backend="emulated_cuda").sum().backward()
                label = f"{list(x_shape)} -> {w_shape[0]}"
                for line in C.emulated_cuda.launches():
                    if (label, line) not in seen:
                        seen.append((label, line))
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    return seen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--launches", action="store_true",
                        help="print the programs, grids and shared memory of the Net's layers' launches")
    args = parser.parse_args(argv)
    if args.launches:
        for label, line in launches():
            print(f"{label:22s} {line}")
        return
    rows = resource_usage()
    if not rows:
        print("the extension holds no CUDA kernels (built without CUDA)")
        return
    print(f"{'kernel':64s} {'arch':6s} {'regs':>5s} {'stack':>6s} {'local':>6s}")
    for r in sorted(rows, key=lambda r: (r["arch"], r["kernel"])):
        print(f"{r['kernel']:64s} {r['arch']:6s} {r['registers']:5d} {r['stack']:6d} {r['local']:6d}")
    spilling = [r for r in rows if r["stack"] or r["local"]]
    print(f"{len(rows)} kernels; with stack or local memory (spills): {len(spilling)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
