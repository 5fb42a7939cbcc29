"""What a run writes: the environment it ran in, the terminal table, JSON, Markdown and plots."""
import json
import math
import os
import platform
import re
import subprocess
from collections import defaultdict
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

import cnnfast

from .workload import COMPILE, EAGER

REPO = Path(__file__).resolve().parent.parent


# --- environment ------------------------------------------------------------------------------

def _run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """Device, driver, versions, commit and date."""
    commit = _run("git", "-C", str(REPO), "rev-parse", "HEAD")
    if commit and _run("git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    commit = commit or os.environ.get("CNNFAST_COMMIT")   # a copied tree without .git: the caller says
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit,
           "python": platform.python_version(), "torch": torch.__version__, "triton": _version("triton"),
           "torchvision": _version("torchvision"), "cnnfast": cnnfast.__version__, "device_type": device.type,
           "cpu": _cpu_model(), "cpu_threads": torch.get_num_threads(), "load_average": os.getloadavg(),
           "backends": cnnfast.backends.available(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device=props.name, capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                   memory_bytes=props.total_memory, l2_bytes=props.L2_cache_size, cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(),
                   driver=_run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"))
    else:
        env["device"] = env["cpu"]
    return env


def device_slug(env: dict) -> str:
    """A folder name for the device: 'NVIDIA H100 80GB HBM3' → 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-") or "unknown"


# --- figures ----------------------------------------------------------------------------------

def geomeans(records):
    """Per suite and provider: the geometric mean of eager time / provider time (and, for cnnfast
    providers, of compile time / provider time) over the cases where both were timed."""
    ratios = defaultdict(lambda: defaultdict(list))
    for r in records:
        p = r["providers"]
        for name, res in p.items():
            for base in (EAGER, COMPILE):
                if name != base and "ms" in res and "ms" in p.get(base, {}) and not (base == COMPILE and name == EAGER):
                    ratios[r["suite"]][f"{name} vs {base}"].append(p[base]["ms"] / res["ms"])
    return {suite: {k: {"geomean": math.exp(sum(map(math.log, v)) / len(v)), "cases": len(v)} for k, v in d.items()}
            for suite, d in ratios.items()}


def _cell(res, eager):
    if "ms" not in res:
        return "skipped" if "skipped" in res else "ERROR"
    extra = [f"{eager['ms'] / res['ms']:.2f}×"] if "ms" in eager and res is not eager else []
    extra.append(f"{res['roofline_pct']:.0f}%")
    return f"{res['ms']:.4g} ({', '.join(extra)})"


def _variant(r):
    return f"{r['dtype']} {r['layout']} {r['direction']}"


def _rows(records, provider_names):
    for r in records:
        eager = r["providers"].get(EAGER, {})
        cells = [_cell(r["providers"].get(p, {"skipped": ""}), eager) for p in provider_names]
        yield [r["label"], _variant(r)] + (cells if r["providers"] else [r.get("error", "ERROR")])


def table(records, provider_names) -> str:
    """The terminal table: per suite, ms per call (× eager, % of roofline) for each provider."""
    head = ["case", "variant"] + provider_names
    out = []
    for suite in dict.fromkeys(r["suite"] for r in records):
        rows = [head] + list(_rows([r for r in records if r["suite"] == suite], provider_names))
        widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(head))]
        out.append(f"== {suite}: ms per call (speed-up over eager, % of roofline)")
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(out)


# --- files ------------------------------------------------------------------------------------

def write_json(path: Path, data: dict):
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def markdown(data: dict) -> str:
    env, ceil, names = data["environment"], data["ceilings"], data["providers"]
    lines = [f"# cnnfast benchmark: {env['device']}", "",
             f"{env['date']} · commit `{env['commit']}` · torch {env['torch']} · triton {env['triton']} · "
             f"torchvision {env['torchvision']} · python {env['python']}"
             + (f" · CUDA {env['cuda']} · cuDNN {env['cudnn']} · driver {env['driver']}" if env.get("cuda") else "")
             + f" · {env['cpu_threads']} CPU threads · load average {env['load_average'][0]:.1f}", "",
             "## Ceilings, measured in this run", "",
             "| what | measured |", "|---|---|",
             f"| device copy ({ceil['copy_bytes'] / 2**20:.0f} MiB, read + write) | {ceil['bandwidth_GBs']:.1f} GB/s |"]
    lines += [f"| {n}³ matrix product, {d} | {ceil['tflops'][d]:.3g} TFLOP/s |" for d, n in ceil["gemm_n"].items()]
    lines += ["", "## How it was measured", ""] + [f"- {n}" for n in data["notes"]]
    lines += ["", "## Geometric-mean speed-up per suite", "", "| suite | comparison | cases | geomean |", "|---|---|---|---|"]
    for suite, d in data["geomean"].items():
        lines += [f"| {suite} | {k} | {v['cases']} | {v['geomean']:.2f}× |" for k, v in d.items()]
    for suite in dict.fromkeys(r["suite"] for r in data["cases"]):
        records = [r for r in data["cases"] if r["suite"] == suite]
        lines += ["", f"## {suite}", "", "ms per call (speed-up over eager, % of roofline)", "",
                  "| case | variant | " + " | ".join(names) + " |", "|---" * (2 + len(names)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in _rows(records, names)]
    memory_rows = [r for r in data["cases"] if r["direction"] == "fwd+bwd" and r["providers"]]
    if memory_rows:
        lines += ["", "## Memory (forward+backward cases)", "",
                  "MiB saved for backward (parameters excluded) / peak MiB above what was allocated before the call", "",
                  "| case | variant | " + " | ".join(names) + " |", "|---" * (2 + len(names)) + "|"]
        for r in memory_rows:
            cells = [_memory_cell(r["providers"].get(p, {})) for p in names]
            lines.append(f"| {r['label']} | {_variant(r)} | " + " | ".join(cells) + " |")
    problems = [(r["id"], p, res["error"]) for r in data["cases"] for p, res in r["providers"].items() if "error" in res]
    problems += [(r["id"], "case", r["error"]) for r in data["cases"] if "error" in r]
    skipped = sorted({res["skipped"] for r in data["cases"] for res in r["providers"].values() if "skipped" in res})
    if problems or skipped:
        lines += ["", "## Errors and skips", ""] + [f"- `{i}` {p}: {e}" for i, p, e in problems]
        lines += [f"- skipped: {s}" for s in skipped]
    if data["not_run"]:
        lines += ["", f"## Not run: the time budget ran out or the run was interrupted ({len(data['not_run'])} cases)",
                  ""]
        lines += [f"- `{i}`" for i in data["not_run"][:50]] + (["- …"] if len(data["not_run"]) > 50 else [])
    return "\n".join(lines) + "\n"


def _memory_cell(res):
    mib = lambda b: "n/a" if b is None else f"{b / 2**20:.3g}"  # noqa: E731
    return f"{mib(res['saved_bytes'])} / {mib(res.get('peak_bytes'))}" if "saved_bytes" in res else "–"


def plots(data: dict, directory: Path, tag: str):
    """``<tag>-speedup.png`` (per suite, speed-up over eager of each provider per case) and
    ``<tag>-roofline.png`` (achieved TFLOP/s against arithmetic intensity, under the measured ceilings); returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, draw in (("speedup", _speedup_figure), ("roofline", _roofline_figure)):
        fig = draw(plt, data)
        fig.tight_layout()
        paths.append(directory / f"{tag}-{name}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def _log_axes(ax, title: str, ylabel: str, xlabel=None):
    """A log-scaled y axis (and x axis, where ``xlabel`` names it), labelled, with a legend."""
    if xlabel:
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)


def _speedup_figure(plt, data: dict):
    names = [p for p in data["providers"] if p != EAGER]
    suites = list(dict.fromkeys(r["suite"] for r in data["cases"]))
    fig, axes = plt.subplots(len(suites), 1, figsize=(12, 4.5 * len(suites)), squeeze=False)
    for ax, suite in zip(axes[:, 0], suites):
        records = [r for r in data["cases"] if r["suite"] == suite and "ms" in r["providers"].get(EAGER, {})]
        for j, name in enumerate(names):
            pts = [(i, r["providers"][EAGER]["ms"] / r["providers"][name]["ms"], r["providers"][EAGER]["ms"])
                   for i, r in enumerate(records) if "ms" in r["providers"].get(name, {})]
            if not pts:
                continue
            if len(records) <= 48:
                width = 0.8 / len(names)
                ax.bar([i + (j - (len(names) - 1) / 2) * width for i, _, _ in pts], [s for _, s, _ in pts], width,
                       label=name)
            else:
                ax.scatter([t for _, _, t in pts], [s for _, s, _ in pts], s=8, label=name)
        ax.axhline(1, color="black", lw=0.8)
        many = len(records) > 48
        if not many:
            ax.set_xticks(range(len(records)), [f"{r['label']}\n{_variant(r)}" for r in records], rotation=80,
                          fontsize=6)
        _log_axes(ax, f"{suite} ({data['environment']['device']})", "speed-up over eager",
                  "eager time per call (ms)" if many else None)
    return fig


def _roofline_figure(plt, data: dict):
    ceil = data["ceilings"]
    fig, ax = plt.subplots(figsize=(8, 6))
    points = [(r["flops"] / r["bytes"], res["tflops"], p) for r in data["cases"] for p, res in r["providers"].items()
              if "ms" in res and r.get("flops")]
    if points:
        lo = min(i for i, _, _ in points) / 2
        hi = max(max(i for i, _, _ in points) * 2, max(ceil["tflops"].values()) * 1e3 / ceil["bandwidth_GBs"] * 4)
        xs = [lo * (hi / lo) ** (k / 200) for k in range(201)]
        for dtype, peak in ceil["tflops"].items():
            ax.plot(xs, [min(peak, ceil["bandwidth_GBs"] * x / 1e3) for x in xs], lw=1, label=f"ceiling {dtype}")
        for name in data["providers"]:
            pts = [(i, t) for i, t, p in points if p == name]
            ax.scatter([i for i, _ in pts], [t for _, t in pts], s=10, label=name)
    _log_axes(ax, f"Roofline, measured ceilings ({data['environment']['device']})", "achieved TFLOP/s",
              "arithmetic intensity (FLOP per byte of the fewest bytes moved)")
    return fig
