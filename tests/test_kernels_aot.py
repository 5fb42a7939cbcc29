"""Every Triton kernel spec compiles ahead of time for sm_80 and sm_90 without spilling.

The suite runs with TRITON_INTERPRET=1, under which ``@triton.jit`` kernels cannot be compiled, so one
child process (``python -m cnnfast.kernels.aot --json``, the interpreter off) compiles everything
once per module run and the tests below read its report. Deselect with ``-m "not aot"``.
"""
import json

import pytest

from cnnfast.kernels import aot

pytestmark = pytest.mark.aot

ARCHS = (80, 90)
TIMEOUT_S = 1200


def _list_spec_names():
    """Spec names, from a child without the interpreter (some aot_specs() read JITFunction attributes)."""
    proc = aot.run_subprocess(["--list"], timeout=300)
    return proc.stdout.splitlines(), (proc.stderr.strip() if proc.returncode else None)


SPEC_NAMES, LIST_ERROR = _list_spec_names()


@pytest.fixture(scope="module")
def aot_report(tmp_path_factory):
    """``{(spec name, arch): row}`` from one compile of every spec in a child process."""
    path = tmp_path_factory.mktemp("aot") / "report.json"
    argv = ["--arch", *ARCHS, "--json", path]
    proc = aot.run_subprocess(argv, timeout=TIMEOUT_S)  # exit status 1 just means some spec failed
    if not path.exists():
        pytest.fail(f"the AOT inspection crashed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    report = json.loads(path.read_text())
    return {(row["name"], row["arch"]): row for row in report["results"]}


def test_every_kernel_module_lists_unique_specs():
    assert LIST_ERROR is None, f"listing aot_specs() failed:\n{LIST_ERROR}"
    assert SPEC_NAMES, "no kernel module lists any aot_specs()"
    assert len(SPEC_NAMES) == len(set(SPEC_NAMES)), "spec names must be unique across modules"


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
@pytest.mark.parametrize("name", SPEC_NAMES)
def test_kernel_spec_compiles_without_spills(aot_report, name, arch):
    row = aot_report.get((name, arch))
    assert row is not None, f"{name} sm_{arch} is missing from the AOT report"
    assert row["error"] is None, f"{name} does not compile for sm_{arch}: {row['error']}"
    assert row["stack"] == 0 and row["local"] == 0, f"{name} on sm_{arch} uses local memory: {row}"
    assert row["spill_stores"] == 0 and row["spill_loads"] == 0, f"{name} on sm_{arch} spills: {row}"
    assert not row["problems"], f"{name} on sm_{arch}: {'; '.join(row['problems'])}"
