"""cnnfast's benchmark suites (shipped as ``cnnfast.bench``): ``cnnfast bench`` or ``python -m cnnfast.bench``.

One module per concern: ``suites`` (the cases), ``ops`` and ``models`` (the workloads and providers),
``timing``, ``roofline`` (FLOPs, bytes, measured ceilings), ``memory``, ``runner`` (check, then time),
``report`` (table, JSON, Markdown, plots) and ``cli``.
"""
