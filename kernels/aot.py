"""Ahead-of-time compile of every cnnfast Triton kernel spec, with a table of the resources each uses.

Every kernel module lists in ``aot_specs()`` the (kernel, config, dtype) combinations worth compiling:
every config of its config lists (the tile sizes its launchers choose among; nothing uses
``triton.autotune``), in every float dtype, for the geometries and layouts the module's docstring of
``aot_specs()`` names. This tool compiles each for real GPU architectures (sm_80 and sm_90 by default)
without needing a GPU, and reports, per spec and architecture:

    regs         registers per thread        REG of ``cuobjdump -res-usage`` on the compiled cubin
    smem         shared memory per block      Triton's metadata ``shared`` (the dynamic shared memory its
                                              launcher requests; checked against the architecture's limit
                                              the way Triton checks it when the kernel is loaded)
    static_smem  static shared memory         SHARED of ``cuobjdump -res-usage`` (sm_90 cubins report
                                              1 KiB here that the PTX never declares)
    stack        stack frame bytes/thread     STACK of ``cuobjdump -res-usage``: register spills land here
    local        local memory bytes/thread    LOCAL of ``cuobjdump -res-usage``
    spill st/ld  spill stores / loads bytes   0 when the cubin has no stack and no local memory (spills
                                              live there); otherwise ``ptxas -v`` run again on the kernel's
                                              PTX (Triton's ptxas and target; Triton discards its own log)

A spec fails when it does not compile, when it spills (stack, local, spill stores or spill loads
non-zero), when it asks for more shared memory than the architecture has, or when registers × threads
exceed the 64 K register file. The command exits non-zero naming every failing spec.

Pointer arguments are compiled as 16-byte aligned (``tt.divisibility = 16``), which is what Triton's
JIT assumes for freshly allocated tensors; integer arguments get no specialisation.

The spec view above compiles kernels with unspecialised integers, which is not the code that runs:
at a launch Triton's JIT turns integers equal to 1 into constants and gives integers divisible by 16
divisibility hints. ``--suite`` / ``--case`` switch to the *call view*: for each case of a benchmark
suite (``cnnfast.bench.suites``: the Net's blocks, every conv and pool layer of ResNet-18 or
DenseNet-121) in the dtypes and layouts asked for, the Triton launchers run on CPU tensors of the call's
shapes and strides under ``cnnfast.kernels.jitview.compile_only``, so every kernel they launch is
compiled by Triton's own JIT path, with its specialisation, for each architecture, and not run. Each
config the tuner may time for the call is compiled (``--heuristic``: only the launcher's own choice).
Per kernel, config and case it reports, besides the resources above, resident warps per SM and the main
loop's machine-code profile (``cnnfast.kernels.sass``): instructions, tensor-core instructions
(``HGMMA`` in 64-column units, ``HMMA``), instructions per tensor-core unit, asynchronous loads
(``LDGSTS``, ``UTMALDG``), load widths, barriers, shared-memory accesses and FMAs. ``--dump-dir DIR``
writes each cubin as ``DIR/<kernel>__<config>__<case>.cubin``.

Run it as ``python -m cnnfast.kernels.aot``. The Triton interpreter (``TRITON_INTERPRET=1``)
replaces ``@triton.jit`` functions by Python ones that cannot be compiled, so when that variable is set
the command runs itself again in a child process without it; ``run_subprocess`` does the same for
callers such as the test suite.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

_THIS_MODULE = f"{__package__}.aot"  # also right when run as __main__
KERNEL_MODULES = ("conv2d", "max_pool2d", "conv_relu_maxpool2d")
DEFAULT_ARCHS = (80, 90)

# Largest dynamic shared memory one block may request (cudaDevAttrMaxSharedMemoryPerBlockOptin).
MAX_SHARED_BYTES = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 120: 101376}
REGISTER_FILE = 65536

_POINTER_ALIGNED = [["tt.divisibility", 16]]


def interpreter_requested(environ=os.environ) -> bool:
    """Whether TRITON_INTERPRET asks for the interpreter (the values Triton's knobs treat as true)."""
    return environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def compiler_env(environ=os.environ) -> dict:
    """A copy of the environment with the Triton interpreter switched off."""
    env = dict(environ)
    env.pop("TRITON_INTERPRET", None)
    return env


def run_subprocess(argv=(), *, timeout=None, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m cnnfast.kernels.aot *argv`` in a child without TRITON_INTERPRET.

    Output is captured as text; the exit status is left for the caller to judge.
    """
    cmd = [sys.executable, "-m", _THIS_MODULE, *map(str, argv)]
    return subprocess.run(cmd, env=compiler_env(), capture_output=True, text=True, timeout=timeout, **kwargs)


# ---------------------------------------------------------------------------------------------------
# Specs


def _module_path(module: str) -> str:
    """Kernel module names without a dot live in this package; dotted names are taken as given."""
    return module if "." in module else f"{__package__}.{module}"


@functools.lru_cache(maxsize=None)
def _specs_of(module: str) -> tuple:
    specs = tuple(importlib.import_module(_module_path(module)).aot_specs())
    names = [s["name"] for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{module}.aot_specs() repeats spec names: {', '.join(dupes)}")
    return specs


def load_specs(modules=KERNEL_MODULES) -> list[tuple[str, dict]]:
    """``(module, spec)`` for every spec of every kernel module, in order."""
    return [(m, spec) for m in modules for spec in _specs_of(m)]


# ---------------------------------------------------------------------------------------------------
# Compilation


def _jit_function(fn):
    import triton

    if isinstance(fn, triton.runtime.JITFunction):
        return fn
    raise TypeError(
        f"{getattr(fn, '__name__', fn)!r} is not a triton JITFunction ({type(fn).__name__}): the kernel "
        "module was imported with TRITON_INTERPRET set, and interpreted kernels cannot be compiled. "
        "Run `python -m cnnfast.kernels.aot` (it re-runs itself without the variable) or unset it.")


def make_source(spec: dict):
    """The ``ASTSource`` for a spec, in whichever convention the installed Triton uses.

    Triton >= 3.3 (3.6 on the GPU image, 3.8 here): ``signature`` keyed by parameter name with
    constexpr parameters typed ``"constexpr"``, their values in ``constexprs`` keyed by name (or by
    index path ``(i,)``), and ``attrs`` mapping index paths to ``[["tt.divisibility", 16]]``.
    Triton 3.0-3.2: the values go in ``constants`` and attributes in an ``AttrsDescriptor``; 3.2
    keys both by name, 3.0/3.1 key them by parameter index and leave constexprs out of the signature.
    """
    from triton.compiler import ASTSource

    fn = _jit_function(spec["fn"])
    signature, constexprs = dict(spec["signature"]), dict(spec["constexprs"])
    if list(signature) != list(fn.arg_names):
        raise ValueError(f"signature names {list(signature)} do not match the kernel's parameters {fn.arg_names}")
    missing = [k for k, t in signature.items() if t == "constexpr" and k not in constexprs]
    if missing:
        raise ValueError(f"constexpr parameters without a value: {', '.join(missing)}")
    pointers = [i for i, t in enumerate(signature.values()) if t.startswith("*")]

    params = inspect.signature(ASTSource.__init__).parameters
    if "constexprs" in params:
        attrs = {(i, ): _POINTER_ALIGNED for i in pointers}
        return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    try:  # Triton 3.2: names everywhere
        return ASTSource(fn=fn, signature=signature, constants=constexprs)
    except TypeError:  # Triton 3.0 / 3.1: parameter indices, constexprs not in the signature
        index = {name: i for i, name in enumerate(fn.arg_names)}
        return ASTSource(fn=fn, signature={index[k]: t for k, t in signature.items() if t != "constexpr"},
                         constants={index[k]: v for k, v in constexprs.items()})


def compile_spec(spec: dict, arch: int):
    """Compile one spec for ``sm_<arch>`` without a GPU; returns Triton's ``CompiledKernel``."""
    import triton
    from triton.backends.compiler import GPUTarget

    options = {"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]}
    return triton.compile(make_source(spec), target=GPUTarget("cuda", arch, 32), options=options)


# ---------------------------------------------------------------------------------------------------
# Resource extraction


def _nvidia_tool(name: str, arch: int) -> str:
    """Path of the CUDA tool Triton itself uses (its knobs honour TRITON_<TOOL>_PATH), else the bundled one."""
    import triton

    try:
        if name == "ptxas":
            from triton.backends.nvidia.compiler import get_ptxas
            return get_ptxas(arch).path
        return getattr(triton.knobs.nvidia, name).path
    except (ImportError, AttributeError, TypeError):
        return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _sm_name(arch: int) -> str:
    try:
        from triton.backends.nvidia.compiler import sm_arch_from_capability
        return sm_arch_from_capability(arch)
    except ImportError:
        return f"sm_{arch}{'a' if arch >= 90 else ''}"


def _run_tool(cmd) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout + proc.stderr


def _field(pattern: str, text: str, what: str) -> int:
    m = re.search(pattern, text)
    if m is None:
        raise RuntimeError(f"no {what} in tool output:\n{text}")
    return int(m.group(1))


def _cuobjdump(cubin: bytes, option: str, arch: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return _run_tool([_nvidia_tool("cuobjdump", arch), option, path])


def cubin_sass(cubin: bytes, arch: int) -> str:
    """The SASS of a cubin, as ``cuobjdump -sass`` prints it."""
    return _cuobjdump(cubin, "-sass", arch)


def cubin_resources(cubin: bytes, kernel_name: str, arch: int) -> dict:
    """REG / SHARED / STACK / LOCAL of one function, from ``cuobjdump -res-usage``."""
    out = _cuobjdump(cubin, "-res-usage", arch)
    block = re.search(rf"Function {re.escape(kernel_name)}:\s*\n(.*)", out)
    if block is None:
        raise RuntimeError(f"cuobjdump lists no function {kernel_name}:\n{out}")
    line = block.group(1)
    return {
        "regs": _field(r"\bREG:(\d+)", line, "REG"),
        "static_shared": _field(r"\bSHARED:(\d+)", line, "SHARED"),
        "stack": _field(r"\bSTACK:(\d+)", line, "STACK"),
        "local": _field(r"\bLOCAL:(\d+)", line, "LOCAL"),
    }


def ptxas_spills(ptx: str, arch: int, enable_fp_fusion: bool = True) -> dict:
    """Spill stores / loads (bytes) and registers reported by ``ptxas -v`` on the kernel's PTX."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        fmad = [] if enable_fp_fusion else ["--fmad=false"]
        out = _run_tool([_nvidia_tool("ptxas", arch), "-v", "-lineinfo", *fmad, f"--gpu-name={_sm_name(arch)}",
                         path, "-o", os.path.join(tmp, "kernel.cubin")])
    return {
        "spill_stores": _field(r"(\d+) bytes spill stores", out, "spill stores"),
        "spill_loads": _field(r"(\d+) bytes spill loads", out, "spill loads"),
        "ptxas_regs": _field(r"Used (\d+) registers", out, "register count"),
    }


def problems(row: dict) -> list[str]:
    """Why a compiled spec is not acceptable (empty when it is)."""
    found = []
    spilled = {k: row[k] for k in ("stack", "local", "spill_stores", "spill_loads") if row[k]}
    if spilled:
        found.append("spills (" + ", ".join(f"{k} {v} B" for k, v in spilled.items()) + ")")
    limit = MAX_SHARED_BYTES.get(row["arch"])
    if limit is not None and row["shared"] > limit:
        found.append(f"shared memory {row['shared']} B > {limit} B")
    threads = row["num_warps"] * 32
    if row["regs"] * threads > REGISTER_FILE:
        found.append(f"{row['regs']} registers x {threads} threads > {REGISTER_FILE}")
    return found


def measure(kernel, arch: int) -> dict:
    """Resources of one compiled kernel: shared memory, registers, stack / local memory and spills."""
    meta = kernel.metadata
    row = {"shared": int(meta.shared)}
    row.update(cubin_resources(kernel.asm["cubin"], meta.name, arch))
    if row["stack"] or row["local"]:
        row.update(ptxas_spills(kernel.asm["ptx"], arch, getattr(meta, "enable_fp_fusion", True)))
    else:  # spills are stored to local memory: a cubin without any has none
        row.update(spill_stores=0, spill_loads=0)
    return row


def inspect_spec(spec: dict, arch: int) -> dict:
    """Compile one spec and measure it; returns one JSON-ready row (``error`` set when it failed)."""
    row = {"name": spec["name"], "kernel": getattr(spec["fn"], "__name__", "?"), "arch": arch,
           "num_warps": spec["num_warps"], "num_stages": spec["num_stages"], "error": None, "problems": []}
    start = time.perf_counter()
    try:
        row.update(measure(compile_spec(spec, arch), arch))
        row["problems"] = problems(row)
    except Exception as e:  # reported per spec; the run goes on with the others
        row["error"] = f"{type(e).__name__}: {e}".strip()
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _inspect_task(task) -> list[dict]:
    module, name, arch = task
    spec = next(s for s in _specs_of(module) if s["name"] == name)
    row = inspect_spec(spec, arch)
    row["module"] = module
    return [row]


# ---------------------------------------------------------------------------------------------------
# The call view: what the JIT compiles for the calls of a benchmark case


def select_cases(suites, dtypes=None, layouts=None, directions=None, batches=None, substrings=None):
    """The benchmark cases of ``suites`` with Triton launchers (not whole models), filtered (None: all)."""
    from cnnfast.bench import suites as bench_suites
    chosen = bench_suites.cases(suites=suites, dtypes=dtypes or bench_suites.DTYPES,
                                layouts=layouts or bench_suites.LAYOUTS,
                                directions=directions or bench_suites.DIRECTIONS, batches=batches,
                                ops=bench_suites.OPS)
    return [c for c in chosen if not substrings or any(k in c.id for k in substrings)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def _config_label(config) -> str:
    return "heuristic" if config is None else f"cfg{config}"


def inspect_call(case, launcher: str, args, kwargs, config, arch: int, dump_dir=None) -> list[dict]:
    """Compile one launcher call with one config as the JIT would for ``sm_<arch>``: one row per kernel
    it launches (``error`` set, one row, when it failed)."""
    from . import sass
    from . import jitview

    base = {"case": case.id, "label": case.shape_label, "dtype": case.dtype, "layout": case.layout,
            "launcher": launcher, "config": config, "arch": arch, "error": None, "problems": []}
    start = time.perf_counter()
    try:
        backend = importlib.import_module(__package__)
        extra = {} if config is None else {"config": config}
        with jitview.compile_only(arch) as launches:
            getattr(backend, launcher)(*args, **kwargs, **extra)
        if not launches:
            raise RuntimeError("the launcher launched no kernel")
    except Exception as e:
        return [dict(base, error=f"{type(e).__name__}: {e}".strip(), seconds=round(time.perf_counter() - start, 2))]
    rows = []
    for launch in launches:
        row = dict(base, kernel=launch.fn.__name__, function=launch.name, grid=list(launch.grid),
                   num_warps=launch.constexprs["num_warps"], num_stages=launch.constexprs["num_stages"],
                   constexprs={k: v for k, v in launch.constexprs.items() if isinstance(v, (bool, int, str))})
        try:
            row.update(measure(launch.kernel, arch))
            row["resident_warps"] = sass.resident_warps(row["regs"], row["shared"], row["num_warps"], arch)
            code = cubin_sass(launch.kernel.asm["cubin"], arch)
            row.update(sass.profile(code, launch.name))
            row["problems"] = problems(row)
            if dump_dir:
                name = f"{launch.fn.__name__}__{_config_label(config)}__{_slug(case.id)}__sm_{arch}.cubin"
                with open(os.path.join(dump_dir, name), "wb") as f:
                    f.write(launch.kernel.asm["cubin"])
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}".strip()
        rows.append(row)
    for row in rows:
        row["seconds"] = round((time.perf_counter() - start) / len(rows), 2)
    return rows


def _call_task(task) -> list[dict]:
    case, arch, all_configs, dump_dir = task
    from . import jitview
    rows = []
    for launcher, args, kwargs in jitview.launcher_calls(case):
        for config in jitview.case_configs(launcher, args, kwargs, all_configs):
            rows += inspect_call(case, launcher, args, kwargs, config, arch, dump_dir)
    return rows


def _run_tasks(tasks, jobs: int, progress: bool, worker=_inspect_task, label=None) -> list[dict]:
    """Rows of every task, in task order; one line per finished task on stderr when ``progress``."""
    label = label or (lambda rows: f"{rows[0]['name']} sm_{rows[0]['arch']}")

    def report(done, rows):
        if progress:
            bad = [r for r in rows if r["error"] or r["problems"]]
            state = "; ".join(r["error"] or "; ".join(r["problems"]) for r in bad) or "ok"
            seconds = sum(r.get("seconds", 0) for r in rows)
            print(f"[{done}/{len(tasks)}] {label(rows)}: {state} ({seconds:.1f} s)", file=sys.stderr, flush=True)

    if jobs <= 1 or len(tasks) <= 1:
        out = []
        for task in tasks:
            out.append(worker(task))
            report(len(out), out[-1])
        return [row for rows in out for row in rows]
    # spawn: every worker starts clean instead of inheriting a forked torch/triton state.
    with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=multiprocessing.get_context("spawn")) as ex:
        futures = {ex.submit(worker, task): i for i, task in enumerate(tasks)}
        out = [None] * len(tasks)
        for done, future in enumerate(as_completed(futures), 1):
            out[futures[future]] = future.result()
            report(done, out[futures[future]])
    return [row for rows in out for row in rows]


# ---------------------------------------------------------------------------------------------------
# Command line


def _table(rows) -> str:
    head = ["kernel spec", "arch", "warps", "stages", "regs", "smem B", "static smem B", "stack B", "local B",
            "spill st/ld B", "status"]
    body = []
    for r in rows:
        if r["error"]:
            body.append([r["name"], f"sm_{r['arch']}", str(r["num_warps"]), str(r["num_stages"]),
                         *["-"] * 6, "COMPILE ERROR"])
            continue
        body.append([r["name"], f"sm_{r['arch']}", str(r["num_warps"]), str(r["num_stages"]), str(r["regs"]),
                     str(r["shared"]), str(r["static_shared"]), str(r["stack"]), str(r["local"]),
                     f"{r['spill_stores']}/{r['spill_loads']}", "; ".join(r["problems"]) or "ok"])
    return _format_table(head, body, left={0, len(head) - 1})


def _format_table(head, body, left) -> str:
    widths = [max(len(x) for x in col) for col in zip(head, *body)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)])


def _call_table(rows) -> str:
    head = ["case", "launcher", "config", "kernel", "arch", "warps", "regs", "smem B", "spill B", "warps/SM",
            "loop instr", "TC units", "instr/TC", "async ld", "load widths (op.bytes: n)", "bar", "fma", "status"]
    body = []
    for r in rows:
        config = _config_label(r["config"])
        if r["error"]:
            body.append([r["label"] + f" {r['dtype']} {r['layout']}", r["launcher"], config, r.get("kernel", "-"),
                         f"sm_{r['arch']}", *["-"] * 12, "ERROR"])
            continue
        loop = r["main_loop"] or {}
        tc = loop.get("hgmma_units") or loop.get("hmma") or 0
        tc_text = "-" if not loop else (f"{tc:g} HGMMA" if loop.get("hgmma_units") else f"{tc} HMMA" if tc else "0")
        body.append([r["label"] + f" {r['dtype']} {r['layout']}", r["launcher"], config, r["kernel"],
                     f"sm_{r['arch']}", str(r["num_warps"]), str(r["regs"]), str(r["shared"]),
                     str(r["spill_stores"] + r["spill_loads"] + r["stack"] + r["local"]), str(r["resident_warps"]),
                     str(loop.get("instructions", "-")), tc_text, str(loop.get("per_tc") or "-"),
                     str(loop.get("ldgsts", 0) + loop.get("utmaldg", 0)) if loop else "-",
                     " ".join(f"{k}: {v}" for k, v in loop.get("loads", {}).items()) or "-",
                     str(loop.get("barriers", "-")), str(loop.get("fma", "-")),
                     "; ".join(r["problems"]) or "ok"])
    return _format_table(head, body, left={0, 1, 2, 3, 14, len(head) - 1})




def _csv(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cnnfast.kernels.aot",
        description="Compile cnnfast's Triton kernels ahead of time (no GPU needed) and report what each uses. "
        "Spec view (the default): every config of every kernel, integers unspecialised; prints registers, shared "
        "memory and local memory / spills. Call view (--suite / --case): the kernels each layer of a benchmark "
        "suite launches, compiled exactly as Triton's JIT would for that call, with resident warps per SM and "
        "the main loop's machine-code profile. Exits 1 when a kernel fails to compile, spills, or exceeds the "
        "architecture's shared memory or register file; the failing ones are named.",
        epilog="Numbers: regs, static smem, stack and local from `cuobjdump -res-usage` on the compiled cubin; "
        "smem is Triton's requested (dynamic) shared memory from the kernel metadata; spill stores/loads from "
        "`ptxas -v` on the kernel's PTX when the cubin has any stack or local memory (else 0); the main loop "
        "from `cuobjdump -sass` (cnnfast.kernels.sass). "
        "TRITON_INTERPRET is ignored: the tool re-runs itself without it.",
    )
    p.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHS), metavar="CC",
                   help="compute capabilities to compile for: 80 = sm_80, 90 = sm_90a [default: 80 90]")
    p.add_argument("--kernel", action="append", default=None, metavar="SUBSTR",
                   help="spec view: only specs whose name contains SUBSTR (repeatable: any of them)")
    p.add_argument("--module", action="append", default=None, metavar="NAME",
                   help="spec view: kernel module to take specs from (repeatable); a name without a dot is a "
                   f"module of cnnfast.kernels [default: {' '.join(KERNEL_MODULES)}]")
    calls = p.add_argument_group("call view")
    calls.add_argument("--suite", type=_csv, default=None, metavar="NAMES",
                       help="benchmark suites whose layers to compile, comma-separated: net, resnet18, densenet121")
    calls.add_argument("--case", action="append", default=None, metavar="SUBSTR",
                       help="only cases whose id contains SUBSTR (repeatable; ids as `cnnfast bench --list` "
                       "prints them); alone, searches every suite")
    calls.add_argument("--dtype", type=_csv, default=["bfloat16"], metavar="NAMES",
                       help="float32 (TF32 off), tf32, bfloat16, float16, comma-separated [default: bfloat16]")
    calls.add_argument("--layout", type=_csv, default=["channels_last"], metavar="NAMES",
                       help="nchw, channels_last, comma-separated [default: channels_last]")
    calls.add_argument("--direction", type=_csv, default=["fwd+bwd"], metavar="NAMES",
                       help="fwd (inference forward), fwd+bwd (training forward and every gradient) "
                       "[default: fwd+bwd]")
    calls.add_argument("--batch", type=lambda t: [int(x) for x in _csv(t)], default=None, metavar="NS",
                       help="only these batch sizes [default: every batch of the suite]")
    calls.add_argument("--heuristic", action="store_true",
                       help="compile only the launcher's own config choice, not every config the tuner may time")
    calls.add_argument("--dump-dir", metavar="DIR", help="write each cubin as DIR/<kernel>__<config>__<case>.cubin")
    p.add_argument("--json", metavar="FILE", help="also write every row (all fields) to FILE as JSON")
    p.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1,
                   help="compile processes [default: the number of CPUs]")
    p.add_argument("--list", action="store_true", help="print the selected spec names (or case ids) and exit")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    return p


def _finish(args, rows, failures, **view) -> int:
    """Write the JSON report when asked, name the failures; the exit status (1 when any)."""
    if args.json:
        import triton
        report = {"triton_version": triton.__version__, "archs": args.arch, **view, "failures": failures,
                  "results": rows}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def _failures(rows, what) -> list[str]:
    out = []
    for r in rows:
        if r["error"]:
            out.append(f"{what(r)} sm_{r['arch']}: does not compile: {r['error']}")
        elif r["problems"]:
            out.append(f"{what(r)} sm_{r['arch']}: " + "; ".join(r["problems"]))
    return out


def _main_calls(args) -> int:
    from cnnfast.bench import suites as bench_suites
    names = args.suite or [s for s in bench_suites.SUITES if s != "models"]
    unknown = sorted(set(names) - set(bench_suites.SUITES) | ({"models"} & set(names)))
    if unknown:
        print(f"aot: unknown --suite {', '.join(unknown)} (choose from net, resnet18, densenet121)", file=sys.stderr)
        return 2
    try:
        cases = select_cases(names, args.dtype, args.layout, args.direction, args.batch, args.case)
    except Exception as e:
        print(f"aot: cannot select cases: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if not cases:
        print("aot: no case matches the filters", file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(c.id for c in cases))
        return 0
    if args.dump_dir:
        os.makedirs(args.dump_dir, exist_ok=True)
    tasks = [(case, arch, not args.heuristic, args.dump_dir) for case in cases for arch in args.arch]
    start = time.perf_counter()
    rows = _run_tasks(tasks, args.jobs, progress=not args.quiet, worker=_call_task,
                      label=lambda rows: f"{rows[0]['case']} sm_{rows[0]['arch']}")
    elapsed = time.perf_counter() - start
    print(_call_table(rows))
    print(f"\n{len(rows)} kernels from {len(cases)} cases x {len(args.arch)} archs in {elapsed:.1f} s "
          f"with {min(args.jobs, max(len(tasks), 1))} process(es)")
    failures = _failures(rows, lambda r: f"{r['case']} {r['launcher']} {_config_label(r['config'])} "
                                         f"{r.get('kernel', '')}".rstrip())
    return _finish(args, rows, failures, view="calls", suites=names)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if interpreter_requested():
        # Interpreted kernels cannot be compiled: start again with the interpreter off.
        return subprocess.call([sys.executable, "-m", _THIS_MODULE, *argv], env=compiler_env())
    args = _parser().parse_args(argv)
    if args.suite or args.case:
        return _main_calls(args)
    modules = args.module or list(KERNEL_MODULES)

    selected, failures = [], []
    for module in modules:
        try:
            specs = _specs_of(module)
        except Exception as e:
            failures.append(f"module {module}: {type(e).__name__}: {e}")
            continue
        selected += [(module, s["name"]) for s in specs
                     if not args.kernel or any(k in s["name"] for k in args.kernel)]
    if args.list:
        print("\n".join(name for _, name in selected))
        return 1 if failures else 0

    tasks = [(module, name, arch) for module, name in selected for arch in args.arch]
    start = time.perf_counter()
    rows = _run_tasks(tasks, args.jobs, progress=not args.quiet)
    elapsed = time.perf_counter() - start

    print(_table(rows))
    print(f"\n{len(rows)} compilations ({len(selected)} specs x {len(args.arch)} archs) in {elapsed:.1f} s "
          f"with {min(args.jobs, max(len(tasks), 1))} process(es)")
    failures += _failures(rows, lambda r: r["name"])
    return _finish(args, rows, failures, view="specs", modules=modules)


if __name__ == "__main__":
    sys.exit(main())
