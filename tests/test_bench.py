"""The benchmark harness (not the speed of anything): a tiny run writes its JSON, Markdown and plots, and
no provider is timed before its output has passed the check against the float64 reference."""
import json

import pytest
import torch

from cnnfast.bench import cli, ops, runner, suites
from cnnfast.bench.workload import EAGER

# Four cases (the Net blocks' max_pool2d, forward and forward+backward, batch 1), without torch.compile,
# whose first compilation alone takes longer than this test may.
# In this process (``--allocator system``): the default reruns the benchmark in a child process.
ARGS = ["--device", "cpu", "--allocator", "system", "--suite", "net", "--op", "max_pool2d", "--batch", "1",
        "--dtype", "float32", "--layout", "nchw", "--providers", "eager,cnnfast:torch", "--warmup", "1", "--rep", "5"]


def test_bench_writes_json_markdown_and_plots_of_checked_timings(tmp_path, capsys):
    assert cli.main(ARGS + ["--out", str(tmp_path), "--tag", "t"]) == 0
    data = json.loads((tmp_path / "t.json").read_text())
    assert {"device", "date", "torch", "commit"} <= set(data["environment"])
    assert data["ceilings"]["bandwidth_GBs"] > 0 and data["ceilings"]["tflops"]["float32"] > 0
    assert [r["direction"] for r in data["cases"]] == ["fwd", "fwd", "fwd+bwd", "fwd+bwd"]
    for record in data["cases"]:
        assert record["flops"] > 0 and record["bytes"] > 0
        assert set(record["providers"]) == {"eager", "cnnfast:torch"}
        for result in record["providers"].values():
            assert result["rel_err"] <= result["tolerance"] and result["ms"] > 0
    assert data["cases"][-1]["providers"]["eager"]["saved_bytes"] > 0
    assert "net" in data["geomean"]
    assert "## net" in (tmp_path / "t.md").read_text()
    for name in ("t-speedup.png", "t-roofline.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert "== net" in capsys.readouterr().out


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="the steady allocator is glibc's")
def test_the_default_cpu_run_is_a_child_whose_allocator_keeps_freed_memory(tmp_path, capfd, monkeypatch):
    for name in cli.STEADY_ALLOCATOR:
        monkeypatch.delenv(name, raising=False)
    args = [a for a in ARGS if a not in ("--allocator", "system")] + ["--direction", "fwd", "--providers", "eager"]
    assert cli.main(args + ["--out", str(tmp_path), "--tag", "s", "--formats", "json,md"]) == 0
    assert "running in a child process" in capfd.readouterr().out
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["environment"]["allocator"].startswith("steady: glibc MALLOC_MMAP_THRESHOLD_=")
    assert any("kept freed memory" in n for n in data["notes"])


def test_a_provider_that_fails_the_check_is_reported_and_not_timed(monkeypatch):
    wrong = lambda case, backend: lambda x: torch.nn.functional.max_pool2d(x, 2) * 1.01  # noqa: E731
    monkeypatch.setattr(ops, "_cnnfast_op", wrong)
    case = suites.cases(suites=("net",), dtypes=("float32",), layouts=("nchw",), directions=("fwd",),
                        ops=("max_pool2d",), batches=(1,))[0]
    settings = {"warmup_ms": 1, "rep_ms": 5, "compile_mode": None,
                "ceilings": {"bandwidth_GBs": 1.0, "tflops": {"float32": 1.0}}}
    record = runner.run_case(case, torch.device("cpu"), [EAGER, "cnnfast:torch"], settings)
    assert "ms" in record["providers"][EAGER]
    bad = record["providers"]["cnnfast:torch"]
    assert "check failed" in bad["error"] and "ms" not in bad


def test_stock_eager_past_the_ceiling_is_still_timed_and_widens_the_tolerance(monkeypatch):
    monkeypatch.setitem(runner.TOLERANCE, "float32", 0.0)  # any rounding at all exceeds it
    case = suites.cases(suites=("net",), dtypes=("float32",), layouts=("nchw",), directions=("fwd",),
                        ops=("conv2d",), batches=(1,))[0]
    settings = {"warmup_ms": 1, "rep_ms": 5, "compile_mode": None,
                "ceilings": {"bandwidth_GBs": 1.0, "tflops": {"float32": 1.0}}}
    record = runner.run_case(case, torch.device("cpu"), [EAGER, "cnnfast:torch"], settings)
    eager, same = record["providers"][EAGER], record["providers"]["cnnfast:torch"]
    assert eager["rel_err"] > 0 and "ms" in eager and "exceeds" in eager["note"]
    assert same["tolerance"] == 2 * eager["rel_err"] and "ms" in same


@pytest.mark.parametrize("noisy", [False, True])
def test_cpu_rounds_go_on_while_a_provider_is_noisy(monkeypatch, noisy):
    from cnnfast.bench import timing
    calls = []

    def fake(fn, device, *, warmup_ms, rep_ms):       # eager steady; cnnfast:torch alternating 1 / 2 ms if noisy
        calls.append(fn)
        return 1.0 + (noisy and len(calls) % 4 == 0)
    monkeypatch.setattr(timing, "median_ms", fake)
    case = suites.cases(suites=("net",), dtypes=("float32",), layouts=("nchw",), directions=("fwd",),
                        ops=("max_pool2d",), batches=(1,))[0]
    settings = {"warmup_ms": 1, "rep_ms": 5, "compile_mode": None,
                "ceilings": {"bandwidth_GBs": 1.0, "tflops": {"float32": 1.0}}}
    record = runner.run_case(case, torch.device("cpu"), [EAGER, "cnnfast:torch"], settings)
    rounds = [len(r["ms_rounds"]) for r in record["providers"].values()]
    assert rounds == [runner.CPU_MAX_ROUNDS if noisy else runner.CPU_ROUNDS] * 2


def test_every_suite_has_cases_and_the_interpreted_triton_backend_is_never_timed():
    assert {c.suite for c in suites.cases()} == set(suites.SUITES)
    assert not any(p.endswith("triton") for p in runner.providers(torch.device("cpu")))


@pytest.mark.parametrize("case", suites.quick_cases()[:3], ids=lambda c: c.id)
def test_roofline_counts_are_positive(case):
    from cnnfast.bench import roofline
    flops, nbytes = roofline.counts(case)
    assert flops > 0 and nbytes > 0


def test_formats_pick_what_is_written_and_unknown_names_are_refused(tmp_path):
    args = ARGS + ["--direction", "fwd", "--providers", "eager", "--out", str(tmp_path), "--tag", "j"]
    assert cli.main(args + ["--formats", "json"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["j.json"]
    for option, value in (("--suite", "nett"), ("--op", "conv3d"), ("--dtype", "tf33"), ("--formats", "pdf")):
        with pytest.raises(SystemExit):
            cli.parse_args([option, value])


# --- the pytest-benchmark micro-benchmarks (bench/micro): their cases are the suites', and they collect -----

def test_micro_benchmark_cases_are_the_suites_cases_for_every_op_and_direction():
    from cnnfast.bench import micro
    for device_type in ("cpu", "cuda"):
        cases = suites.micro_cases(device_type)
        every = {c.id for c in suites.cases()}
        assert cases and {c.id for c in cases} <= every, "a micro-benchmark case that cnnfast bench does not know"
        assert {(c.op, c.direction) for c in cases} == {(op, d) for op in suites.OPS for d in suites.DIRECTIONS}
        assert {c.batch for c in cases} == {suites.MICRO_BATCH[device_type]}
    params = micro.params("cpu")
    wanted = [p for p in runner.providers(torch.device("cpu")) if p != "compile"]
    assert [(c.id, p) for c, p in params] == [(c.id, p) for c in suites.micro_cases("cpu") for p in wanted]


def test_micro_benchmarks_collect_or_skip_for_want_of_pytest_benchmark():
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path
    folder = Path(__file__).resolve().parents[1] / "bench" / "micro"
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-rs", "-p", "no:cacheprovider",
                          str(folder)], capture_output=True, text=True, cwd=folder.parents[1])
    if importlib.util.find_spec("pytest_benchmark") is None:
        assert "need pytest-benchmark" in out.stdout, out.stdout + out.stderr
        return
    assert out.returncode == 0, out.stdout + out.stderr
    from cnnfast.bench import micro
    collected = [line for line in out.stdout.splitlines() if "::test_op[" in line]
    assert len(collected) == len(micro.params()) > 0, out.stdout
