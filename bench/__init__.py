"""cnnfast's benchmark suites (shipped as ``cnnfast.bench``): ``cnnfast bench`` or ``python -m cnnfast.bench``.

One module per concern: ``suites`` (the cases), ``workload`` (what the runner needs of a case), ``ops``
and ``models`` (the workloads and providers), ``timing``, ``roofline`` (FLOPs, bytes, measured ceilings),
``memory``, ``runner`` (check, then time), ``report`` (table, JSON, Markdown, plots) and ``cli``.
Stand-alone tools beside them: ``cpu_targets`` (the C++ extension against stock eager on CPU),
``cuda_kernels`` (the extension's kernels' registers and spills), ``sanitize`` (calls for
compute-sanitizer) and ``gpu_check.sh`` (install, test, sanitize and benchmark on a GPU machine).
"""
