"""``cnnfast.testing.run``: the conformance suite on one backend, in this process (``pytest.main`` on
the suite's folder with a small plugin that keeps each failure's structured record)."""
import dataclasses
import os
import time

from ._reference import Failure, settings

_OPS = ("conv_relu_maxpool2d", "max_pool2d", "conv2d")


def _op_of(nodeid: str) -> str:
    """The op a test covers, from its module (test_conv2d.py -> "conv2d"; test_nn.py -> "nn")."""
    module = os.path.basename(nodeid.split("::")[0]).removesuffix(".py").removeprefix("test_")
    if module == "fused":
        return "conv_relu_maxpool2d"
    test = nodeid.split("::")[-1]
    return next((op for op in _OPS if op in test), module)


class _Collector:
    """Keeps a ``Failure`` for every failed test (the one a ``ConformanceError`` carries, else one made
    from the exception) and counts outcomes."""

    def __init__(self):
        self.failures, self.counts = [], {"passed": 0, "failed": 0, "skipped": 0, "deselected": 0, "errors": 0}
        self.skips = {}     # reason -> how many tests it skipped

    def pytest_deselected(self, items):
        self.counts["deselected"] += len(items)

    def pytest_collectreport(self, report):
        if report.failed:
            self.counts["errors"] += 1
            self.failures.append(Failure(op=_op_of(report.nodeid), case="collection", test=report.nodeid,
                                         message=f"could not collect {report.nodeid}:\n{report.longreprtext}"))

    def pytest_runtest_makereport(self, item, call):
        if call.excinfo is None or call.when not in ("setup", "call", "teardown"):
            return
        from ._reference import ConformanceError
        from .fixtures import seed_of
        exc = call.excinfo.value
        if call.excinfo.errisinstance(ConformanceError):
            failure = dataclasses.replace(exc.failure, test=item.nodeid)
        elif call.excinfo.errisinstance(__import__("pytest").skip.Exception):
            return
        else:
            params = dict(getattr(getattr(item, "callspec", None), "params", {}))
            backend = params.pop("backend", None) or params.pop("fast_backend", None)
            failure = Failure(op=_op_of(item.nodeid), case=item.name.partition("[")[2].rstrip("]") or item.name,
                              arguments={k: v for k, v in params.items()}, backend=backend,
                              what=f"{call.when} raised {type(exc).__name__}", seed=seed_of(item),
                              test=item.nodeid, message=f"{type(exc).__name__}: {exc}")
        self.failures.append(failure)

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and not report.passed):
            if report.passed:
                self.counts["passed"] += 1
            elif report.skipped:
                self.counts["skipped"] += 1
                reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
                reason = reason.removeprefix("Skipped: ")
                self.skips[reason] = self.skips.get(reason, 0) + 1
            elif report.when == "setup":
                self.counts["errors"] += 1
            else:
                self.counts["failed"] += 1
        elif report.when == "teardown" and report.failed:
            self.counts["errors"] += 1


@dataclasses.dataclass
class Report:
    """What ``run`` found: ``passed`` (every selected test passed, and at least one ran), ``failures``
    (``Failure`` records: op, case, shapes and arguments, seed, error against float64, bound, message),
    the outcome ``counts``, ``skips`` (each reason a test was skipped for -> how many: an op the backend
    does not implement, a test that needs a GPU), pytest's ``exit_code`` and the wall time in ``seconds``."""
    backend: str
    device: str
    quick: bool
    k: str
    failures: list
    counts: dict
    exit_code: int
    seconds: float
    skips: dict = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and not self.failures and self.counts["passed"] > 0

    def summary(self) -> str:
        """One line of counts, the reasons for skips, then every failure."""
        mode = ", quick" if self.quick else ""
        select = f", -k {self.k!r}" if self.k else ""
        counts = ", ".join(f"{n} {what}" for what, n in self.counts.items() if n)
        verdict = "PASSED" if self.passed else "FAILED"
        head = (f"cnnfast conformance suite on backend {self.backend!r} ({self.device}{mode}{select}): {verdict}, "
                f"{counts or 'no tests ran'} in {self.seconds:.1f}s")
        if not self.passed and not self.failures and self.counts["passed"] == 0:
            head += " (no test was selected)" if self.exit_code in (0, 5) else f" (pytest exit code {self.exit_code})"
        skipped = [f"  skipped {n}: {reason}" for reason, n in sorted(self.skips.items())]
        return "\n\n".join(["\n".join([head] + skipped)] + [f"FAILED {f}" for f in self.failures])

    def __str__(self) -> str:
        return self.summary()


def run(backend: str, quick: bool = True, device: str = "cpu", k: str = None, seed: int = 0,
        verbose: bool = False) -> Report:
    """Run the conformance suite on backend ``backend`` (a built-in or registered name) and return a
    ``Report``.

    ``quick``: the quick subset only (seconds for a backend on stock PyTorch's speed; about a minute for
    "triton" under the interpreter). ``device``: where the inputs live ("cpu" or "cuda"). ``k``: a pytest
    ``-k`` expression selecting tests. ``seed``: xor'ed into every test's seed, to draw other inputs.
    ``verbose``: pytest's progress output and tracebacks (default: quiet; the report has the failures).

    It sets the process up as the suite needs (``cnnfast.testing._setup.prepare``: poisoned outputs, the
    tuner off, the Triton interpreter when no GPU is present and triton is not yet imported), and leaves
    it so.
    """
    import pytest

    # The suite alone, whatever the working directory: named by its folder (with ``--pyargs`` pytest
    # would also load ./test*/conftest.py), without the settings of the project it is run from.
    here = os.path.dirname(os.path.abspath(__file__))
    args = [here, "--rootdir", here, "-o", "addopts=", "-p", "cnnfast.testing.plugin", "--cnnfast-backend", backend,
            "--cnnfast-device", device, "--cnnfast-seed", str(int(seed)), "-p", "no:cacheprovider"]
    if quick:
        args.append("--cnnfast-quick")
    if k:
        args += ["-k", k]
    args += ["-q", "-rfE"] if verbose else ["-qq", "--tb=no", "-rN", "--no-header", "-p", "no:warnings"]
    collector = _Collector()
    before = dataclasses.replace(settings)
    start = time.perf_counter()
    try:
        code = pytest.main(args, plugins=[collector])
    finally:
        settings.device, settings.quick, settings.seed = before.device, before.quick, before.seed
    code = int(code)
    if code == pytest.ExitCode.USAGE_ERROR:
        raise ValueError(f"cnnfast.testing.run({backend!r}, device={device!r}): pytest refused the arguments "
                         "(an unknown backend, or one that cannot run on this device; pytest said why above)")
    return Report(backend=backend, device=device, quick=quick, k=k, failures=collector.failures,
                  counts=collector.counts, exit_code=code, seconds=time.perf_counter() - start, skips=collector.skips)
