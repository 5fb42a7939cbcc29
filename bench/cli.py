"""``cnnfast bench`` / ``python -m cnnfast.bench``: run suites, print the table, write JSON, Markdown, plots."""
import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from cnnfast import tune

from . import report, roofline, runner, suites

PACKAGE = Path(__file__).resolve().parent
FORMATS = ("json", "md", "png")

# glibc hands each allocation above its mmap threshold (at most 32 MiB however it adapts) fresh pages
# from the kernel and returns them on free, so a large layer's every call page-faults its outputs and
# temporaries in again: on a shared or virtual machine that is most of the time of a large layer, and
# it varies twofold from one round to the next. With these thresholds (read at process start) freed
# memory is kept and reused, and the timings are the kernels'. ``--allocator system`` times the faults.
STEADY_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}
ALLOCATORS = ("steady", "system")


def _list(text):
    return [s for s in text.split(",") if s]


def parse_args(argv=None, prog=None):
    p = argparse.ArgumentParser(prog=prog or "cnnfast bench", description=__doc__.split(":", 1)[1].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="the small suite: Net blocks at batch 64 and a Net training step, float32 NCHW")
    p.add_argument("--suite", type=_list, default=list(suites.SUITES), help="comma list of " + ",".join(suites.SUITES))
    p.add_argument("--op", type=_list, default=None, help="comma list of " + ",".join(suites.OPS + suites.MODEL_OPS))
    p.add_argument("--dtype", type=_list, default=None,
                   help="comma list of " + ",".join(suites.DTYPES) + " (default: all; no tf32 on CPU)")
    p.add_argument("--layout", type=_list, default=list(suites.LAYOUTS), help="comma list of nchw,channels_last")
    p.add_argument("--direction", type=_list, default=list(suites.DIRECTIONS),
                   help="comma list of fwd (forward), fwd+bwd (forward and backward)")
    p.add_argument("--batch", type=lambda s: [int(v) for v in _list(s)], default=None, help="comma list of batch sizes")
    p.add_argument("--providers", type=_list, default=None,
                   help="comma list among eager,compile,cnnfast:<backend> (default: all available)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode (default: max-autotune on GPU, the default mode on CPU)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up per timing, ms (default: 25 GPU, 50 CPU)")
    p.add_argument("--rep", type=float, default=None, help="timed runs per timing, ms (default: 100 GPU, 200 CPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds: start no case after this; the rest is listed as not run")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: bench/results/<device>/ in a source checkout, else "
                        "./cnnfast-bench-results/<device>/)")
    p.add_argument("--tag", default=None, help="file name stem (default: quick or bench)")
    p.add_argument("--formats", type=_list, default=list(FORMATS),
                   help="comma list of what to write: json, md (Markdown), png (two plots)")
    p.add_argument("--allocator", default="steady", choices=ALLOCATORS,
                   help="CPU memory: 'steady' reruns the benchmark in a child whose glibc allocator keeps freed "
                        "memory (no page faults timed), 'system' keeps the allocator as it is")
    p.add_argument("--list", action="store_true", help="print the selected cases and exit")
    args = p.parse_args(argv)
    for option, allowed in (("suite", suites.SUITES), ("op", suites.OPS + suites.MODEL_OPS),
                            ("dtype", suites.DTYPES), ("layout", suites.LAYOUTS),
                            ("direction", suites.DIRECTIONS), ("formats", FORMATS)):
        unknown = sorted(set(getattr(args, option) or ()) - set(allowed))
        if unknown:
            p.error(f"--{option}: unknown {', '.join(unknown)} (choose among {', '.join(allowed)})")
    return args


def select(args, device):
    cpu_dtypes = [d for d in suites.DTYPES if d != "tf32"]
    dtypes = args.dtype or (list(suites.DTYPES) if device.type == "cuda" else cpu_dtypes)
    if device.type != "cuda":
        dtypes = [d for d in dtypes if d != "tf32"]
    if args.quick:
        chosen = suites.quick_cases()
    else:
        chosen = suites.cases(args.suite, dtypes, args.layout, args.direction, args.op, args.batch)
    return chosen, sorted({c.dtype for c in chosen}, key=suites.DTYPES.index)


def notes(device, compile_mode, settings):
    gpu = device.type == "cuda"
    out = [
        ("GPU: CUDA events through `triton.testing.do_bench`, the median of the runs in "
         f"{settings['rep_ms']:g} ms after {settings['warmup_ms']:g} ms of warm-up, the L2 cache flushed before "
         "every run; cuDNN with `torch.backends.cudnn.benchmark = True`." if gpu else
         "CPU: `torch.utils.benchmark.Timer.blocked_autorange`, the providers of a case timed in "
         f"{runner.CPU_ROUNDS} alternating rounds of at least {settings['rep_ms'] / runner.CPU_ROUNDS:g} ms each "
         "(a slow spell of a shared machine falls on all of them), more (up to "
         f"{runner.CPU_MAX_ROUNDS}) while some provider's rounds spread by more than "
         f"{(runner.CPU_SPREAD - 1) * 100:.0f}%, each figure the median of the rounds' "
         f"medians; {torch.get_num_threads()} threads; stock eager runs oneDNN / ATen kernels."),
        "Inputs are standard-normal (never zeros); cases whose inputs fit in the cache rotate through up to "
        "8 input sets. Forward cases run under `torch.no_grad()`."
        + ("" if gpu else " Nothing flushes a CPU's caches between runs, so small cases may run from cache and "
           "pass 100% of the (DRAM) roofline; on a shared machine, compare only figures from the same run."),
        f"`compile` is `torch.compile(mode={compile_mode!r}, dynamic=False)` of the same unfused PyTorch code "
        "that `eager` runs; its compile time is in `first_call_s` in the JSON, not in the timings.",
        "`cnnfast:<backend>` calls `cnnfast.functional` (models: `cnnfast.Net`, `cnnfast.convert`) with that "
        "backend; `cnnfast:torch` is stock PyTorch behind cnnfast's front end, so its ratio is the front end's "
        "overhead. `cnnfast:auto` is timed after tuning: its first call measures the choices, "
        f"{tune.CONFIRM_AFTER} more confirm them (all in `first_call_s`).",
        "Every provider's output (and gradients) is checked against a float64 reference before it is timed: "
        "relative error at most " + ", ".join(f"{k} {v:g}" for k, v in runner.TOLERANCE.items())
        + f" ({runner.MODEL_SLACK}× that for whole models), or twice stock eager's own error if larger; a "
        "provider that fails is reported and not timed.",
        "`float32` runs with TF32 off for convolutions and matrix products, `tf32` with it on (cuDNN's default)"
        + ("." if gpu else "; TF32 does not exist on CPU, so there is no `tf32` variant here."),
        "Roofline: FLOPs count a multiply-add as two (max-pool: one comparison per window element after the "
        "first); bytes are the fewest an op must move (each input read once, each output written once; backward "
        "recomputes rather than stores). `% of roofline` is the larger of FLOPs / measured matrix-product rate "
        "and bytes / measured copy bandwidth, over the measured time. Pooling is judged on bandwidth alone.",
        "Models: bfloat16 / float16 run under `torch.autocast` with float32 weights. Saved bytes: distinct "
        "storages packed by `torch.autograd.graph.saved_tensors_hooks`, parameters excluded"
        + ("; peak memory: `torch.cuda.max_memory_allocated` above what was allocated before the call." if gpu else
           "; peak memory is not available on CPU (the CPU allocator keeps no statistics)."),
    ]
    if not gpu:
        out.append("CPU memory: " + ("glibc's allocator kept freed memory (`--allocator steady`: "
                                     + ", ".join(f"`{k}={v}`" for k, v in STEADY_ALLOCATOR.items())
                                     + "), so large tensors are not page-faulted in again on every call and "
                                     "the timings are the kernels', for every provider alike."
                                     if allocator() != "system" else
                                     "the system allocator as it was (`--allocator system`): large tensors' "
                                     "pages are faulted in afresh on every call, and that time is in the figures."))
        out.append(runner.INTERPRETER_NOTE)
    return out


def allocator() -> str:
    """How this process's CPU allocator treats freed memory, as the JSON records it."""
    if all(os.environ.get(k) == v for k, v in STEADY_ALLOCATOR.items()):
        return "steady: glibc " + ", ".join(f"{k}={v}" for k, v in STEADY_ALLOCATOR.items())
    return "system"


def _in_steady_child(argv, prog) -> int:
    """The same benchmark run by ``python -m cnnfast.bench`` in a child with the steady allocator."""
    env = {**os.environ, **STEADY_ALLOCATOR}
    print(f"{prog or 'cnnfast bench'}: running in a child process with glibc's allocator keeping freed memory "
          "(--allocator system to time page faults too)", flush=True)
    return subprocess.call([sys.executable, "-m", "cnnfast.bench", *argv], env=env)


def main(argv=None, prog=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, prog)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    chosen, dtypes = select(args, device)
    if args.list:
        print("\n".join(c.id for c in chosen))
        return 0
    if (device.type == "cpu" and args.allocator == "steady" and allocator() == "system"
            and platform.libc_ver()[0] == "glibc"):
        return _in_steady_child(argv, prog)
    start = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True
    compile_mode = args.compile_mode or ("max-autotune" if gpu else None)
    provider_names = runner.providers(device, args.providers)
    for provider in args.providers or ():
        if provider not in provider_names:
            print(f"cnnfast bench: --providers {provider} left out: {runner.why_not(provider, device)}", file=sys.stderr)
    if not provider_names:
        print("cnnfast bench: error: none of --providers runs here", file=sys.stderr)
        return 2
    env = report.environment(device)
    env["allocator"] = allocator() if device.type == "cpu" else "PyTorch's CUDA caching allocator"
    tag = args.tag or ("quick" if args.quick else "bench")
    out = args.out or ((PACKAGE / "results" if (PACKAGE.parent / "pyproject.toml").exists()
                        else Path.cwd() / "cnnfast-bench-results") / report.device_slug(env))
    out.mkdir(parents=True, exist_ok=True)
    settings = {"warmup_ms": args.warmup or (25 if gpu else 50), "rep_ms": args.rep or (100 if gpu else 200),
                "compile_mode": compile_mode}
    print(f"cnnfast bench: {len(chosen)} cases on {env['device']} ({', '.join(provider_names)}), "
          f"torch {env['torch']}, commit {env['commit']}", flush=True)
    settings["ceilings"] = roofline.measure_ceilings(device, dtypes, warmup_ms=settings["warmup_ms"],
                                                     rep_ms=settings["rep_ms"])
    ceil = settings["ceilings"]
    print("ceilings: copy {:.1f} GB/s; matrix product ".format(ceil["bandwidth_GBs"])
          + ", ".join(f"{d} {t:.3g} TFLOP/s" for d, t in ceil["tflops"].items()), flush=True)
    deadline = start + args.budget if args.budget else None
    records, not_run = runner.run_all(chosen, device, provider_names, settings, deadline,
                                      log=lambda line: print(line, flush=True))
    data = {"environment": env, "settings": {k: v for k, v in settings.items() if k != "ceilings"},
            "argv": sys.argv[1:] if argv is None else list(argv), "ceilings": ceil, "providers": provider_names,
            "notes": notes(device, compile_mode, settings), "geomean": report.geomeans(records),
            "cases": records, "not_run": not_run}
    written = []
    if "json" in args.formats:
        report.write_json(out / f"{tag}.json", data)
        written.append(f"{tag}.json")
    if "md" in args.formats:
        (out / f"{tag}.md").write_text(report.markdown(data))
        written.append(f"{tag}.md")
    if "png" in args.formats:
        written += [p.name for p in report.plots(data, out, tag)]
    print()
    print(report.table(records, provider_names))
    for suite, d in data["geomean"].items():
        print(f"geomean {suite}: " + ", ".join(f"{k} {v['geomean']:.2f}× ({v['cases']})" for k, v in d.items()))
    if not_run:
        print(f"{len(not_run)} cases not run (time budget or interrupt)")
    print(f"wrote {', '.join(written) or 'nothing'} in {out} ({time.monotonic() - start:.0f} s)")
    failed = [r["id"] for r in records for res in r["providers"].values() if "error" in res] + \
             [r["id"] for r in records if "error" in r]
    return 1 if failed else 0
