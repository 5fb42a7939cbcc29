"""What the runner needs from a case, whichever level it is at (``ops`` or ``models`` builds it)."""
from dataclasses import dataclass
from typing import Callable, List

import torch

from .suites import Case

EAGER, COMPILE = "eager", "compile"


class Unavailable(Exception):
    """A provider that cannot run this case here (a missing module, say); the message says why."""


@dataclass
class Workload:
    case: Case
    sets: List[tuple]                        # input sets to rotate through; set 0 is the one checked
    reference: List[torch.Tensor]            # float64 results on set 0, in the order ``run`` returns them
    make: Callable[[str], Callable]          # provider -> run(inputs, check=False) -> list of tensors;
                                             # run.params, if set, are left out of the saved-bytes count
    flops: int
    nbytes: int
    compute_bound: bool = True               # judged against the matrix-product ceiling as well as bandwidth


def cnnfast_backend(provider: str):
    """The backend name of a ``cnnfast:<backend>`` provider, else None."""
    return provider.split(":", 1)[1] if provider.startswith("cnnfast:") else None


def require(backend, ops):
    """Raise Unavailable unless cnnfast backend ``backend`` (None: not a cnnfast provider) has the forward of
    every op in ``ops`` (a registered backend may implement some ops only)."""
    if backend in (None, "auto", "torch"):
        return
    from cnnfast import backends, launchers
    for op in ops:
        if not backends.has(backend, launchers.FORWARD[op]):
            raise Unavailable(f"backend {backend!r} has no {launchers.FORWARD[op]}")


def compiled(fn, mode):
    """``fn`` under ``torch.compile`` as the benchmark uses it: static shapes, ``mode`` (None: default)."""
    return torch.compile(fn, mode=mode, dynamic=False)
