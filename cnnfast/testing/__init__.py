"""cnnfast's conformance suite: the correctness tests cnnfast runs on itself, runnable on any backend.

    cnnfast test --backend NAME [--quick] [--device cuda] [-k EXPR] [--import MODULE_OR_FILE]
    report = cnnfast.testing.run("NAME", quick=True)      # report.passed, .failures, .skips, .summary()
    pytest -p cnnfast.testing.plugin --pyargs cnnfast.testing --cnnfast-backend NAME [--cnnfast-quick]

(``-p`` is not needed once cnnfast is installed through pip: the plugin is a ``pytest11`` entry point.)
Every op is compared with a float64 reference on every argument, outputs poisoned with NaN; a failure
is a ``Failure`` record (``cnnfast.testing._reference``) naming the op, the case (shapes and
arguments), the seed, the error against float64 and the bound it broke. The tests of an op the backend
was registered without are skipped, saying so. cnnfast's own tests/ import these tests and run them on
every built-in backend.
"""
from ._reference import ConformanceError, Failure  # noqa: E402
from ._run import Report, run  # noqa: E402

__all__ = ["run", "Report", "Failure", "ConformanceError"]
