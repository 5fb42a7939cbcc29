"""bench/gpu_check.sh's dry run, the plumbing of the one-call GPU check, so that it cannot rot between GPU
loans: every phase says how it went, and OUT keeps to what the device machine's tool brings back (at
most 8 files, none more than 2 folders down, none over 16 MiB). Also the prebuilt extension's check."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check_helpers as helpers  # noqa: E402  (a plain script: it runs before cnnfast is installed)

sys.path.pop(0)


def test_dry_run_runs_every_phase_plumbing_and_keeps_out_within_the_limits(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, CNNFAST_PREBUILT=str(tmp_path / "none"))
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", str(out)], env=env,
                         capture_output=True, text=True, timeout=300)
    summary = (out / "summary.txt").read_text()
    assert res.returncode == 0, summary + res.stderr[-2000:]
    lines = {line.split("  ")[0]: line for line in summary.splitlines()}
    assert summary.startswith("cnnfast GPU check") and "commit " in summary and "python " in summary
    for name in ("prebuilt", "extension", "package", "backends", "bench net-blocks", "bench net-train",
                 "bench resnet18-convs", "tests", "memcheck", "racecheck", "sanitize", "files"):
        assert name in lines, f"no summary line for {name}:\n{summary}"
    assert "no BUILD_INFO.json" in lines["prebuilt"] and "installed package: ok" in lines["package"]
    for name in ("bench net-blocks", "bench net-train", "bench resnet18-convs"):
        assert "cases listed; skipped" in lines[name]
    assert "ok" in lines["tests"] and "passed" in summary
    assert "skipped" in lines["memcheck"] and "skipped" in lines["racecheck"]
    assert "within the limits" in lines["files"] and "0 failed" in summary.splitlines()[-1]
    assert helpers.check_out(out) == 0


def test_out_check_counts_files_depth_and_size(tmp_path, capsys):
    many, deep, large = (tmp_path / name for name in ("many", "deep", "large"))
    for i in range(helpers.MAX_FILES):
        many.mkdir(exist_ok=True)
        (many / f"f{i}").write_text("x")
    assert helpers.check_out(many) == 0
    (many / "one-more").write_text("x")
    assert helpers.check_out(many) == 1 and "9 files (at most 8)" in capsys.readouterr().out
    (deep / "a" / "b" / "c").mkdir(parents=True)
    (deep / "a" / "b" / "c" / "f").write_text("x")
    assert helpers.check_out(deep) == 1 and "more than 2 folders down" in capsys.readouterr().out
    large.mkdir()
    with open(large / "f", "wb") as f:
        f.truncate(helpers.MAX_BYTES + 1)
    assert helpers.check_out(large) == 1 and "(at most 16)" in capsys.readouterr().out


def test_a_prebuilt_extension_is_used_only_for_this_python_torch_sources_and_gpu(tmp_path):
    import torch
    (tmp_path / helpers.extension_name()).write_bytes(b"")
    info = {"extension": helpers.extension_name(), "torch": torch.__version__, "archs": ["90"],
            "sources_sha256": helpers.sources_digest()}
    write = lambda **change: (tmp_path / helpers.INFO).write_text(json.dumps({**info, **change}))  # noqa: E731
    write()
    assert helpers.prebuilt_problem(tmp_path, "90") is None and helpers.prebuilt_problem(tmp_path) is None
    assert "sm_80" in helpers.prebuilt_problem(tmp_path, "80")
    write(torch="2.0.0")
    assert "torch 2.0.0" in helpers.prebuilt_problem(tmp_path, "90")
    write(sources_sha256="0" * 64)
    assert "other sources" in helpers.prebuilt_problem(tmp_path, "90")
    write(extension="_C.cpython-39-x86_64-linux-gnu.so")
    assert "this Python needs" in helpers.prebuilt_problem(tmp_path, "90")


def test_suite_line_counts_cases_not_run_and_errors(tmp_path, capsys):
    data = {"cases": [{"providers": {"eager": {"ms": 1.0}, "cnnfast:cuda": {"error": "x"}}}], "not_run": ["a", "b"],
            "geomean": {"net": {"cnnfast:cuda vs eager": {"geomean": 1.5, "cases": 1}}}}
    (tmp_path / "s.json").write_text(json.dumps(data))
    assert helpers.suite_line(tmp_path / "s.json") == 0
    assert capsys.readouterr().out.strip() == "1 cases run, 2 not run, 1 errors; net geomean: cnnfast:cuda vs eager 1.50x"
