"""Where a run runs: its device, and its place in a ``torchrun`` job (DistributedDataParallel, nccl on
GPUs, gloo on CPUs; each process trains on its own shard and only rank 0 writes files and prints)."""
import os

import torch

from .. import data as data_
from .errors import UsageError


class _Dist:
    """This process's place in a ``torchrun`` job (world 1 without one)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.backend = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def start(self, device: torch.device):
        if self.enabled and not torch.distributed.is_initialized():
            self.backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(self.backend)

    def stop(self):
        if self.enabled and torch.distributed.is_initialized():
            # Tear down together: a process that destroys its group while a peer still talks to it can
            # abort gloo's background thread ("terminate called without an active exception").
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def sum(self, values, device):
        """``values`` summed over all processes (float64)."""
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if self.enabled:
            torch.distributed.all_reduce(t)
        return t.tolist()

    def rank0_first(self, fn):
        """``fn()`` on rank 0, then on the others (so one process downloads and the rest read)."""
        if not self.enabled:
            return fn()
        result = fn() if self.main else None
        torch.distributed.barrier()
        return result if self.main else fn()

    def gather(self, obj):
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


def _shard(dataset, rank: int, world: int):
    """Every ``world``-th item from ``rank`` (the validation split of one process)."""
    if world == 1:
        return dataset
    if isinstance(dataset, data_.TensorImages):
        return data_.TensorImages(dataset.images[rank::world], dataset.labels[rank::world])
    return torch.utils.data.Subset(dataset, range(rank, len(dataset), world))


def _device(cfg, dist: _Dist) -> torch.device:
    """The device ``--device`` names (default: cuda if there is one); under torchrun, this process's GPU."""
    name = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA device here")
        if dist.enabled:
            device = torch.device("cuda", dist.local_rank)
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device
