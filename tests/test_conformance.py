"""The conformance suite as a kernel developer uses it, on backends defined outside the package
(tests/conformance_backends.py): the correct one passes; each planted bug fails with a report naming
the op, the case, the seed, the error and the bound, from Python, from ``cnnfast test`` and from pytest."""
import os
import subprocess
import sys

import pytest

import conformance_backends
import cnnfast.testing
from cnnfast.cli import main as cli

TESTS = os.path.dirname(os.path.abspath(__file__))

# planted bug -> (the op it breaks, the case that shows it, the tensor found wrong)
PLANTED = {
    "planted_padding": ("conv2d", "same_even_kernel", "output"),
    "planted_nan": ("max_pool2d", "nan_and_ties", "output"),
    "planted_stride": ("conv2d", "stride_1x2_pad_2x1_dil2", "grad_input"),
}


@pytest.fixture
def registered(request):
    conformance_backends.register(request.param)
    yield request.param
    conformance_backends.unregister(request.param)


def _registering_module(tmp_path, name):
    """A module whose import registers backend ``name`` (what --import and pytest's -p load)."""
    path = tmp_path / f"register_{name}.py"
    path.write_text(f"import sys\nsys.path.insert(0, {TESTS!r})\nimport conformance_backends\n"
                    f"conformance_backends.register({name!r})\n")
    return path


@pytest.mark.parametrize("registered", ["plain"], indirect=True)
def test_a_correct_backend_defined_outside_the_package_passes(registered):
    report = cnnfast.testing.run(registered, quick=True)
    assert report.passed, report.summary()
    assert report.counts["passed"] >= 40 and not report.failures
    # It leaves the fused op out: exactly that op's tests skip, and the report says why.
    assert report.skips and all("has no conv_relu_maxpool2d_forward" in reason for reason in report.skips), report.skips
    assert "skipped" in report.summary() and "conv_relu_maxpool2d" in report.summary()


@pytest.mark.parametrize("registered", list(PLANTED), indirect=True)
def test_a_planted_bug_fails_with_the_op_case_seed_error_and_bound(registered):
    op, case, what = PLANTED[registered]
    report = cnnfast.testing.run(registered, quick=True)
    assert not report.passed and report.exit_code == 1
    assert report.failures and {f.op for f in report.failures} == {op}, report.summary()
    found = [f for f in report.failures if f.case == case]
    assert found, report.summary()
    failure = found[0]
    assert failure.what == what and failure.backend == registered
    assert failure.bound is not None and failure.error > failure.bound
    assert failure.shapes and failure.seed is not None and failure.test
    text = report.summary()
    assert f"FAILED {op} [{case}] on backend {registered!r}" in text and f"seed:  {failure.seed}" in text
    # The same test draws the same inputs again: the failure reproduces, error for error.
    again = cnnfast.testing.run(registered, quick=True, k=failure.test.split("::")[-1].split("[")[0])
    assert [f.error for f in again.failures if f.case == case and f.what == what] == [failure.error]


def test_cnnfast_test_exits_1_on_a_planted_bug_and_0_on_the_correct_backend(tmp_path, capsys):
    try:
        assert cli(["test", "--backend", "planted_nan", "--quick", "--import",
                    str(_registering_module(tmp_path, "planted_nan"))]) == 1
        out = capsys.readouterr().out
        assert "FAILED max_pool2d [nan_and_ties] on backend 'planted_nan'" in out and "bound" in out
        assert cli(["test", "--backend", "plain", "--quick", "-k", "conv2d", "--import",
                    str(_registering_module(tmp_path, "plain"))]) == 0
        assert "on backend 'plain'" in capsys.readouterr().out
    finally:
        for name in ("planted_nan", "plain"):
            if name in cnnfast.backends.names():
                conformance_backends.unregister(name)


def test_cnnfast_test_names_an_unknown_backend(capsys):
    assert cli(["test", "--backend", "no_such_backend", "--quick"]) == 2
    assert "no_such_backend" in capsys.readouterr().err


def test_the_pytest_plugin_route_fails_on_a_planted_bug(tmp_path):
    _registering_module(tmp_path, "planted_padding")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "cnnfast.testing.plugin", "-p", "register_planted_padding",
                           "--pyargs", "cnnfast.testing", "--cnnfast-backend", "planted_padding", "--cnnfast-quick",
                           "-q", "-p", "no:cacheprovider", "-k", "conv2d_matches"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "same_even_kernel" in proc.stdout and "relative error against float64" in proc.stdout, proc.stdout[-3000:]


def test_the_example_backend_passes_the_suite(capsys):
    example = os.path.join(os.path.dirname(TESTS), "examples", "custom_backend")
    sys.path.insert(0, example)
    try:
        assert cli(["test", "--backend", "example_unfold", "--quick", "--import",
                    "cnnfast_example_backend.autoregister"]) == 0
        out = capsys.readouterr().out
        assert "PASSED" in out and "has no max_pool2d_forward" in out
    finally:
        sys.path.remove(example)
        for name in ("example_unfold", "example_triton"):
            if name in cnnfast.backends.names():
                cnnfast.backends.unregister(name)
