"""Memory figures: the bytes autograd keeps for backward, and the peak memory of one call."""
import torch

from . import timing


def saved_for_backward(fn, exclude=()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs
    (``torch.autograd.graph.saved_tensors_hooks``), not counting the storages of ``exclude``
    (the parameters, which live on regardless)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen = {}

    def pack(t):
        if t.device.type != "meta" and not t.is_sparse:
            storage = t.untyped_storage()
            if storage.data_ptr() not in skip:
                seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def peak_bytes(fn, device: torch.device):
    """Peak memory allocated during ``fn()`` above what was allocated before it (CUDA only: the CPU
    allocator keeps no statistics, so None there)."""
    if device.type != "cuda":
        return None
    timing.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    timing.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before
