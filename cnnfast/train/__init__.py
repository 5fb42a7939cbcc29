"""``cnnfast train``: train a CNN on cnnfast's layers, or fine-tune a pretrained one.

The classic recipe: cross-entropy loss, SGD with momentum, a fixed number of epochs, a held-out
validation split; options for what fights overfitting (augmentation, dropout, weight decay, early
stopping, batch norm). Each run writes to a directory: ``metrics.csv``/``metrics.json`` (one row per
epoch), ``curves.png``, ``checkpoint.pt`` (the last epoch: model, optimizer, epoch, RNG state;
``--resume`` continues from it and ends with the weights an uninterrupted run would have) and
``best.pt`` (the weights of the epoch with the lowest validation loss).

Under ``torchrun`` it trains with DistributedDataParallel (nccl on GPUs, gloo on CPUs), each process
on its own shard of every epoch; only rank 0 writes files and prints.

    cnnfast train                                   # Net on the embedded data, about a minute on a CPU
    cnnfast train --model net-bn --augment --weight-decay 5e-4 --patience 3 --epochs 30
    cnnfast train --data cifar10 --data-dir ~/data --device cuda --batch-size 64 --epochs 20
    cnnfast train --model resnet18 --finetune --weights resnet18.pth --data folder --data-dir photos/
    cnnfast train --compare                         # stock PyTorch against cnnfast, same weights and batches
    torchrun --nproc-per-node 2 -m cnnfast.train --epochs 4
"""
# The package, by subject: models.py (what is trained), distributed.py (where: device, torchrun),
# loop.py (the epochs), checkpoints.py, metrics.py (what a run writes), compare.py (--compare),
# options.py (the command line); here, run() puts them together. It looks the model builders up in this
# module, so a patched cnnfast.train._to_cnnfast (as tests do) is the one a run uses.
import argparse
import copy
import sys

import torch

from .. import data as data_
from ..models import NetBN, TorchNet
from .checkpoints import _RUN_KEYS, load_checkpoint
from .compare import _compare
from .distributed import _device, _Dist
from .errors import CheckpointError, UsageError
from .loop import _Run
from .metrics import _finish, _out_dir
from .models import MODELS, _backend_name, _finetune_stock_model, _pretrained_state, _stock_model, _to_cnnfast
from .options import _check, build_parser, parse_args

__all__ = ["main", "parse_args", "run", "build_parser", "TorchNet", "NetBN", "CheckpointError", "MODELS"]


def run(args: argparse.Namespace) -> dict:
    """Train as ``args`` say (``parse_args``); return the results: ``model`` (the trained cnnfast
    model), ``history``, ``out`` (the run directory) and, with ``--compare``, ``compare``."""
    cfg = copy.copy(args)
    ckpt = None
    if cfg.compare and cfg.resume:
        raise UsageError("--compare starts both models from the same initial weights; it cannot --resume")
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume)
        explicit = set(getattr(args, "_explicit", ()))
        for key, value in ckpt["config"].items():
            if key in _RUN_KEYS and key not in explicit:
                setattr(cfg, key, value)
    _check(cfg)
    if cfg.dropout is None:
        cfg.dropout = 0.5 if cfg.model == "net-bn" else 0.0
    dist = _Dist()
    device = _device(cfg, dist)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    elif device.type == "cpu" and cfg.model in ("net", "net-bn") and not dist.enabled:
        torch.set_num_threads(1)
    if cfg.workers is None:
        cfg.workers = 2 if cfg.data == "folder" else 0
    dist.start(device)
    try:
        return _run(cfg, ckpt, dist, device)
    finally:
        dist.stop()


def _run(cfg, ckpt, dist: _Dist, device: torch.device) -> dict:
    data = dist.rank0_first(lambda: data_.load(
        cfg.data, cfg.data_dir, download=cfg.download, image_size=cfg.image_size, train_size=cfg.train_size,
        val_size=cfg.val_size, val_fraction=cfg.val_fraction, seed=cfg.seed))
    if cfg.finetune and cfg.model in ("resnet18", "densenet121"):
        data.mean, data.std = data_.IMAGENET_MEAN, data_.IMAGENET_STD
    out = _out_dir(cfg, dist, ckpt)
    torch.manual_seed(cfg.seed)                          # the initial weights
    if cfg.finetune:
        state = None if ckpt is not None else dist.rank0_first(
            lambda: _pretrained_state(cfg.model, cfg.weights, cfg.download))
        stock = _finetune_stock_model(cfg.model, data.num_classes, cfg.dropout, state)
    else:
        stock = _stock_model(cfg.model, data.num_classes, cfg.dropout)
    model = _to_cnnfast(cfg.model, stock, data.num_classes, cfg.backend)
    if dist.main:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        where = f"{device} x {dist.world} processes ({dist.backend})" if dist.enabled else str(device)
        where += f", cnnfast backend {_backend_name(cfg.backend, device)!r}"
        start = f"; resuming after epoch {ckpt['epoch']}" if ckpt else ""
        print(f"cnnfast train: {cfg.model}{' (fine-tuning the classifier)' if cfg.finetune else ''}, "
              f"{trainable:,} of {total:,} parameters trained; {data.name}: {len(data.train):,} training and "
              f"{len(data.val):,} validation images, {data.num_classes} classes; {where}; {cfg.epochs} epochs of "
              f"batch {cfg.batch_size}{start}; writing to {out}", flush=True)
    if not cfg.compare:
        trainer = _Run(cfg, model, data, device, dist, out, ckpt=ckpt, progress=cfg.progress)
        try:
            history = trainer.fit()
        except KeyboardInterrupt:
            if dist.main:
                print(f"\ninterrupted; continue with: cnnfast train --resume {out}", file=sys.stderr)
            raise
        result = {"model": trainer.model, "history": history, "out": out, "best": trainer.best}
        _finish(trainer, dist)
        return result
    return _compare(cfg, stock, model, data, device, dist, out)


def main(argv=None, prog=None) -> int:
    """The ``cnnfast train`` command; returns the exit status."""
    args = parse_args(argv, prog)
    try:
        run(args)
    except (CheckpointError, UsageError, data_.DataError) as e:
        print(f"{prog or 'cnnfast train'}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
