"""Runs cases: for each, every provider side by side, each checked against the float64 reference
before it is timed, then timed (on CPU in alternating rounds), then its memory figures taken."""
import statistics
import time

import torch

import cnnfast
from cnnfast import tune

from . import memory, models, ops, roofline, timing
from .suites import MODEL_OPS
from .workload import COMPILE, EAGER, Unavailable

# Relative error (‖out − ref‖ / ‖ref‖ against float64, per output) allowed before a provider is timed;
# also at least twice stock eager's own error on the same case, whichever is larger. Whole models
# (many layers deep) get MODEL_SLACK times the table. Stock eager itself is always timed (noted when
# its own error passes the table).
TOLERANCE = {"float32": 1e-4, "tf32": 1e-2, "bfloat16": 4e-2, "float16": 1e-2}
MODEL_SLACK = 4

INTERPRETER_NOTE = ("The Triton backend runs on CPU tensors only under the Triton interpreter, and the CUDA "
                    "kernels only under the emulator (backend emulated_cuda): correctness tools that are never "
                    "timed; on CPU they are left out.")


def providers(device: torch.device, wanted=None):
    """Stock eager, torch.compile, every cnnfast backend available on ``device`` (the interpreted
    Triton backend and the emulated CUDA one excepted) and "auto", filtered to ``wanted`` when given.
    "auto" measures its choices in its first call, the checked one, and confirms them a few calls
    later (``tune.CONFIRM_AFTER``), which ``_check`` makes before timing: it is timed after tuning."""
    kernels = [b for b in cnnfast.backends.available(device)
               if b != "torch" and not cnnfast.backends._slow(b, device)]
    # "auto" (the tuner's choice per direction, stock PyTorch among the candidates) where it has a choice.
    names = [EAGER, COMPILE] + [f"cnnfast:{b}" for b in kernels + ["torch"] + (["auto"] if kernels else [])]
    return [n for n in names if wanted is None or n in wanted]


def why_not(provider: str, device: torch.device) -> str:
    """Why ``provider`` is not among ``providers(device)``: a sentence."""
    if not provider.startswith("cnnfast:"):
        return f"unknown provider {provider!r} (eager, compile or cnnfast:<backend>)"
    name = provider.split(":", 1)[1]
    try:
        why = cnnfast.backends._why_unavailable(name, device) if name != "auto" else None
    except ValueError as e:
        return str(e)
    if why is not None:
        return why
    if cnnfast.backends._slow(name, device):
        return f"backend {name!r} only checks on {device.type} (an interpreter or an emulator): never timed there"
    return f"no kernel backend runs on {device.type} here, so 'auto' is stock PyTorch ('cnnfast:torch')"


def rel_err(out, ref) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    if out.shape != ref.shape:
        return float("inf")
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / denom if denom > 0 else diff


# On CPU each case is timed in alternating rounds of its providers, each value the median of the
# rounds' medians: a slow spell of a shared machine then falls on every provider alike. (GPU timing
# through CUDA events is steady: one round.)
CPU_ROUNDS = 5
# While some provider's rounds still spread wider than this (slowest / fastest), another round of every
# provider is run, up to CPU_MAX_ROUNDS: on a shared machine a median of five can still land on a slow
# spell of one provider and not of another.
CPU_SPREAD = 1.10
CPU_MAX_ROUNDS = 11


def _check(workload, provider, device, settings, eager_err):
    """The provider's runner and its record after the first call and the accuracy check (run is None
    when it cannot be timed: unavailable, failed, or wrong)."""
    case = workload.case
    try:
        run = workload.make(provider)
    except Unavailable as e:
        return {"skipped": str(e)}, None
    start = time.perf_counter()
    outs = run(workload.sets[0], check=True)
    if provider == "cnnfast:auto":
        # The tuner confirms each call's choice, timed whole, CONFIRM_AFTER calls after its first.
        for _ in range(tune.CONFIRM_AFTER):
            run(workload.sets[0])
    timing.synchronize(device)
    record = {"first_call_s": time.perf_counter() - start}
    record["rel_err"] = max(rel_err(o, r) for o, r in zip(outs, workload.reference))
    ceiling = TOLERANCE[case.dtype] * (MODEL_SLACK if case.op in MODEL_OPS else 1)
    record["tolerance"] = max(ceiling, 2 * (eager_err or 0.0))
    if provider == EAGER and record["rel_err"] == record["rel_err"]:
        # Stock eager is the yardstick, timed whatever its error; past the ceiling (max-pool gradients
        # routed to another cell by a float32 near-tie, say) it widens the others' tolerance.
        if record["rel_err"] > record["tolerance"]:
            record["note"] = f"stock eager's own error {record['rel_err']:.3g} exceeds the {ceiling:.3g} ceiling"
        return record, run
    if not record["rel_err"] <= record["tolerance"]:   # NaN fails too
        record["error"] = f"check failed: relative error {record['rel_err']:.3g} > {record['tolerance']:.3g}"
        return record, None
    return record, run


def _figures(workload, record, run, device, settings):
    """Roofline figures and memory of a timed provider."""
    case = workload.case
    record.update(roofline.figures(workload.flops, workload.nbytes, record["ms"], case.dtype,
                                   settings["ceilings"], workload.compute_bound))
    once = lambda: run(workload.sets[0])  # noqa: E731
    if case.direction == "fwd+bwd":
        record["saved_bytes"] = memory.saved_for_backward(once, getattr(run, "params", ()))
    record["peak_bytes"] = memory.peak_bytes(once, device)


def _spread(times) -> float:
    """The widest slowest-to-fastest ratio among the providers' rounds."""
    return max((max(t) / min(t) for t in times.values() if t and min(t) > 0), default=1.0)


def _error(e):
    return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def run_case(case, device, provider_names, settings):
    """One case's record: its identity, FLOPs and bytes, and per provider the check and figures."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    record = {"id": case.id, "label": case.shape_label, "suite": case.suite, "name": case.name, "op": case.op,
              "batch": case.batch, "chw": case.chw, "dtype": case.dtype, "layout": case.layout,
              "direction": case.direction, "providers": {}}
    with roofline.precision(case.dtype):
        try:
            build = models.build if case.op in MODEL_OPS else ops.build
            workload = build(case, device, settings["compile_mode"])
        except Exception as e:  # a case that cannot even be set up (out of memory, say) is reported, not fatal
            record["error"] = f"{type(e).__name__}: {e}"
            return record
        record.update(flops=workload.flops, bytes=workload.nbytes, input_sets=len(workload.sets))
        eager_err, runs = None, {}
        for provider in provider_names:
            try:
                result, run = _check(workload, provider, device, settings, eager_err)
            except Exception as e:
                result, run = _error(e), None
            if provider == EAGER and run is not None:
                eager_err = result["rel_err"]
            record["providers"][provider] = result
            if run is not None:
                runs[provider] = run
        rounds = settings.get("rounds") or (1 if device.type == "cuda" else CPU_ROUNDS)
        most = max(rounds, settings.get("max_rounds") or (1 if device.type == "cuda" else CPU_MAX_ROUNDS))
        times = {provider: [] for provider in runs}
        done = 0
        while runs and (done < rounds or (done < most and _spread({p: times[p] for p in runs}) > CPU_SPREAD)):
            done += 1
            for provider in list(runs):
                try:
                    times[provider].append(timing.median_ms(
                        timing.rotating(runs[provider], workload.sets), device,
                        warmup_ms=settings["warmup_ms"] / rounds, rep_ms=settings["rep_ms"] / rounds))
                except Exception as e:
                    record["providers"][provider].update(_error(e))
                    del runs[provider]
        for provider, run in runs.items():
            result = record["providers"][provider]
            result["ms"] = statistics.median(times[provider])
            if done > 1:
                result["ms_rounds"] = times[provider]
            try:
                _figures(workload, result, run, device, settings)
            except Exception as e:
                result.update(_error(e))
        del workload, runs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return record


def run_all(cases, device, provider_names, settings, deadline=None, log=print):
    """Every case in order until ``deadline`` (time.monotonic()) or an interrupt; returns (records, ids not run)."""
    records, not_run, stop = [], [], False
    for i, case in enumerate(cases):
        if stop or (deadline is not None and time.monotonic() > deadline):
            not_run.append(case.id)
            continue
        start = time.perf_counter()
        try:
            record = run_case(case, device, provider_names, settings)
        except KeyboardInterrupt:   # SIGINT (an outer time limit, say): keep what was measured, write it out
            log(f"interrupted: {case.id} and the cases after it are not run")
            stop = True
            not_run.append(case.id)
            continue
        records.append(record)
        cells = [f"{p} {_cell(r)}" for p, r in record["providers"].items()] or [record.get("error", "")]
        log(f"[{i + 1}/{len(cases)}] {case.id}  " + " | ".join(cells) + f"  ({time.perf_counter() - start:.1f} s)")
    return records, not_run


def _cell(result):
    if "ms" in result:
        return f"{result['ms']:.4g} ms"
    return "skipped" if "skipped" in result else "ERROR"
