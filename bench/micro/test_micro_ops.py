"""The micro-benchmarks (see ``cnnfast.bench.micro``): one ``benchmark`` per case and provider, grouped by case."""
import pytest

pytest.importorskip("pytest_benchmark", reason="the micro-benchmarks need pytest-benchmark: "
                                               "pip install 'cnnfast[bench]'")

import torch  # noqa: E402

from cnnfast.bench import micro, ops, runner  # noqa: E402
from cnnfast.bench.workload import EAGER  # noqa: E402

DEVICE = micro.device()
PARAMS = micro.params(DEVICE)
# On a GPU the fixture reads CUDA events instead of the CPU's clock.
pytestmark = [pytest.mark.benchmark(timer=micro.cuda_event_clock)] if DEVICE.type == "cuda" else []
_WORKLOADS = {}


def _workload(case):
    """The case's workload and its tolerance (the runner's: the table's, or twice stock eager's own error)."""
    if case not in _WORKLOADS:
        _WORKLOADS.clear()                      # one case's tensors at a time
        workload = ops.build(case, DEVICE)
        eager = workload.make(EAGER)(workload.sets[0], check=True)
        eager_err = max(runner.rel_err(o, r) for o, r in zip(eager, workload.reference))
        _WORKLOADS[case] = workload, max(runner.TOLERANCE[case.dtype], 2 * eager_err)
    return _WORKLOADS[case]


@pytest.mark.parametrize("case, provider", PARAMS, ids=[f"{c.id}-{p}" for c, p in PARAMS])
def test_op(benchmark, case, provider):
    benchmark.group = case.id
    workload, tolerance = _workload(case)
    run = workload.make(provider)
    inputs = workload.sets[0]
    outs = run(inputs, check=True)
    err = max(runner.rel_err(o, r) for o, r in zip(outs, workload.reference))
    assert err <= tolerance, f"{provider} on {case.id}: relative error {err:.3g} > {tolerance:.3g}; not timed"
    benchmark.extra_info.update(case=case.id, provider=provider, rel_err=err, device=str(DEVICE))
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    benchmark(run, inputs)
