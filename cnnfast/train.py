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
import argparse
import copy
import csv
import datetime
import hashlib
import json
import math
import os
import re
import sys
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as TF
from torch import nn

from . import data as data_
from .convert import convert
from .models import NetBN, TorchNet

__all__ = ["main", "parse_args", "run", "build_parser", "TorchNet", "NetBN", "CheckpointError", "MODELS"]

MODELS = ("net", "net-bn", "resnet18", "densenet121")
_HEADS = {"net": "fc3", "net-bn": "fc3", "resnet18": "fc", "densenet121": "classifier"}
_AMP = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_FORMAT = "cnnfast-train-checkpoint"
# What defines a run (restored by --resume unless given again); the rest is where and how it runs.
_RUN_KEYS = ("model", "finetune", "weights", "data", "data_dir", "image_size", "train_size", "val_size",
             "val_fraction", "epochs", "batch_size", "lr", "momentum", "augment", "dropout", "weight_decay",
             "patience", "min_delta", "seed", "amp", "channels_last")


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be read or does not fit the model."""


class UsageError(ValueError):
    """Options that do not go together."""


# --- models ------------------------------------------------------------------------------------

def _torchvision():
    try:
        import torchvision
    except ImportError:
        raise UsageError("models resnet18 and densenet121 need torchvision: pip install torchvision") from None
    return torchvision


def _head(model_name: str, in_features: int, num_classes: int, dropout: float) -> nn.Module:
    linear = nn.Linear(in_features, num_classes)
    return nn.Sequential(nn.Dropout(dropout), linear) if dropout else linear


def _stock_model(name: str, num_classes: int, dropout: float) -> nn.Module:
    """Model ``name`` on stock PyTorch layers."""
    if name == "net":
        return TorchNet(num_classes)
    if name == "net-bn":
        return NetBN(num_classes, dropout)
    tv = _torchvision()
    if name == "resnet18":
        model = tv.models.resnet18(num_classes=num_classes)
        if dropout:
            model.fc = _head(name, model.fc.in_features, num_classes, dropout)
        return model
    return tv.models.densenet121(num_classes=num_classes, drop_rate=dropout)


def _to_cnnfast(name: str, stock: nn.Module, num_classes: int, backend) -> nn.Module:
    """The cnnfast model with ``stock``'s weights (and which of them train)."""
    if name == "net":
        from .models import Net
        model = Net(num_classes, backend=backend)
        model.load_state_dict(stock.state_dict())
        frozen = {n for n, p in stock.named_parameters() if not p.requires_grad}
        for n, p in model.named_parameters():
            p.requires_grad_(n not in frozen)
        return model
    return convert(stock, backend=backend)


def _pretrained_state(name: str, path: Optional[str], download: bool) -> dict:
    """The weights to fine-tune from: a local file, else torchvision's ImageNet weights from the torch
    hub cache (fetched only with ``download``)."""
    if path is not None:
        state = _read_weights(path)
    else:
        if name not in ("resnet18", "densenet121"):
            raise UsageError(f"--finetune --model {name} needs --weights PATH (for example the checkpoint.pt "
                             "of an earlier cnnfast train run)")
        tv = _torchvision()
        weights = (tv.models.ResNet18_Weights if name == "resnet18" else tv.models.DenseNet121_Weights).IMAGENET1K_V1
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        if not os.path.exists(cached) and not download:
            raise UsageError(f"no pretrained {name} weights: pass --weights PATH, put {os.path.basename(weights.url)} "
                             f"into {os.path.dirname(cached)}, or pass --download to fetch {weights.url}")
        state = torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=True, check_hash=True)
    if name == "densenet121":      # torchvision's old checkpoints name dense layers 'norm.1', 'conv.2', ...
        pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
                             r"running_var))$")
        state = {(m.group(1) + m.group(2) if (m := pattern.match(k)) else k): v for k, v in state.items()}
    return state


def _read_weights(path: str) -> dict:
    """A state dict from ``path``: a plain state dict, a cnnfast checkpoint or a ``{'state_dict': ...}``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file {path!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read weights file {path!r}: it is corrupt or not a PyTorch state dict "
                              f"({_first_line(e)})") from None
    if isinstance(obj, dict) and obj.get("format") == _FORMAT:
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"weights file {path!r} does not hold a state dict")
    return obj


def _finetune_stock_model(name: str, num_classes: int, dropout: float, state: Optional[dict]) -> nn.Module:
    """The pretrained model (``state``; random weights when None, as a shell to resume into) with its
    backbone frozen and a new classifier for ``num_classes`` classes, on stock layers, in eval mode."""
    head = _HEADS[name]
    keys = [k for k in (state or {}) if k.startswith(head + ".") and k.endswith("weight")]
    pretrained_classes = state[keys[-1]].shape[0] if keys else num_classes
    model = _stock_model(name, pretrained_classes, 0.0 if name != "net-bn" else dropout)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"the weights do not fit --model {name}: {_first_line(e)}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    old = getattr(model, head)
    in_features = [m for m in old.modules() if isinstance(m, nn.Linear)][-1].in_features
    setattr(model, head, _head(name, in_features, num_classes, dropout if name != "net-bn" else 0.0))
    return model.eval()


def _freeze_batchnorm(model: nn.Module):
    """Frozen BatchNorm layers (no trainable parameters) use their running statistics in training."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


# --- distributed -------------------------------------------------------------------------------

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


# --- checkpoints -------------------------------------------------------------------------------

def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device):
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _save(obj, path: str):
    """Write atomically: an interrupted save leaves the previous file intact."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """The checkpoint at ``path`` (a file, or a run directory holding ``checkpoint.pt``)."""
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.pt")
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path!r}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path!r}: the file is corrupt or truncated, or not a "
                              f"PyTorch file ({_first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT:
        raise CheckpointError(f"{path!r} is not a cnnfast train checkpoint (it has no '{_FORMAT}' tag)")
    missing = [k for k in ("config", "epoch", "model", "optimizer", "rng", "history") if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} is incomplete: it lacks {', '.join(missing)}")
    ckpt["path"] = path
    return ckpt


# --- writing results ---------------------------------------------------------------------------

_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "images_per_s", "train_s", "val_s")


def _write_metrics(out: str, history, summary: dict):
    with open(os.path.join(out, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({**summary, "epochs": history}, f, indent=2)


def _plot(path: str, runs: dict):
    """Loss and accuracy per epoch; ``runs`` maps a label to its history (a list of epoch rows)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for (label, history), style in zip(runs.items(), ("-", "--", ":")):
        epochs = [row["epoch"] for row in history]
        prefix = f"{label} " if len(runs) > 1 else ""
        for split, marker in (("train", "o"), ("val", "s")):
            ax_loss.plot(epochs, [row[f"{split}_loss"] for row in history], style, marker=marker, markersize=3,
                         label=f"{prefix}{split}")
            ax_acc.plot(epochs, [100 * row[f"{split}_acc"] for row in history], style, marker=marker,
                        markersize=3, label=f"{prefix}{split}")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    from matplotlib.ticker import MaxNLocator
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=100)


# --- training ----------------------------------------------------------------------------------

def _derive_seed(*keys) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def _shard(dataset, rank: int, world: int):
    """Every ``world``-th item from ``rank`` (the validation split of one process)."""
    if world == 1:
        return dataset
    if isinstance(dataset, data_.TensorImages):
        return data_.TensorImages(dataset.images[rank::world], dataset.labels[rank::world])
    return torch.utils.data.Subset(dataset, range(rank, len(dataset), world))


class _Run:
    """One model's training: the loop, evaluation, checkpoints and metrics."""

    def __init__(self, cfg, model, data, device, dist, out, *, label="cnnfast", ckpt=None, progress=True,
                 record_steps=False, quiet=False, dtype=torch.float32):
        self.cfg, self.data, self.device, self.dist, self.out = cfg, data, device, dist, out
        self.label, self.progress, self.record_steps, self.quiet = label, progress, record_steps, quiet
        self.dtype = dtype
        self.model = model.to(device, dtype)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "float16")
        self.net = self.model
        if dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.criterion = nn.CrossEntropyLoss()
        self.history, self.step_losses = [], []
        self.epoch, self.best = 0, {"val_loss": math.inf, "epoch": 0, "bad_epochs": 0}
        self.sampler = torch.utils.data.DistributedSampler(data.train, num_replicas=dist.world, rank=dist.rank,
                                                           shuffle=True, seed=cfg.seed)
        self.val_data = _shard(data.val, dist.rank, dist.world)
        self.mean = torch.tensor(data.mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(data.std, dtype=torch.float32, device=device)
        if ckpt is not None:
            self._restore(ckpt)
        else:
            torch.manual_seed(_derive_seed(cfg.seed, dist.rank, 1))      # dropout: one stream per process

    # checkpoints
    def _state(self) -> dict:
        rng = self.dist.gather(_rng_state(self.device))
        return {"format": _FORMAT, "version": 1, "config": _config(self.cfg), "epoch": self.epoch,
                "num_classes": self.data.num_classes, "classes": self.data.classes,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng, "best": dict(self.best), "history": self.history}

    def _restore(self, ckpt):
        where = ckpt["path"]
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            saved = ckpt["config"]
            raise CheckpointError(
                f"checkpoint {where!r} does not fit this model: it was saved by --model {saved.get('model')} with "
                f"{ckpt.get('num_classes')} classes, this run builds --model {self.cfg.model} with "
                f"{self.data.num_classes} classes ({_first_line(e)})") from None
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"the optimizer state in {where!r} does not fit this model ({_first_line(e)})") \
                from None
        rng = ckpt["rng"]
        _set_rng_state(rng[self.dist.rank] if len(rng) == self.dist.world else rng[0], self.device)
        self.epoch, self.best, self.history = int(ckpt["epoch"]), dict(ckpt["best"]), list(ckpt["history"])

    def _save_checkpoints(self, improved: bool):
        state = self._state()               # every process takes part (its RNG state is gathered)
        if self.dist.main and self.out:
            _save(state, os.path.join(self.out, "checkpoint.pt"))
            if improved:
                _save({k: state[k] for k in ("format", "version", "config", "epoch", "num_classes", "classes",
                                             "model")}, os.path.join(self.out, "best.pt"))

    # one epoch
    def _batches(self, dataset, sampler, batch_size, drop_last):
        return data_.loader(dataset, batch_size, sampler, drop_last=drop_last, workers=self.cfg.workers,
                            pin_memory=self.device.type == "cuda")

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=_AMP[self.cfg.amp]) \
            if self.cfg.amp and self.dtype != torch.float64 else torch.autocast(self.device.type, enabled=False)

    def train_epoch(self):
        cfg, device = self.cfg, self.device
        self.net.train()
        if cfg.finetune:
            _freeze_batchnorm(self.model)
        self.sampler.set_epoch(self.epoch)
        generator = torch.Generator().manual_seed(_derive_seed(cfg.seed, self.epoch, self.dist.rank, 2))
        batches = self._batches(self.data.train, self.sampler, cfg.batch_size,
                                drop_last=len(self.sampler) > cfg.batch_size)
        losses, sizes, corrects = [], [], []
        bar = None
        if self.progress and self.dist.main:
            from tqdm import tqdm
            bar = tqdm(total=len(batches), desc=f"{self.label} epoch {self.epoch + 1}/{cfg.epochs}", unit="batch",
                       leave=False, dynamic_ncols=True, file=sys.stderr, disable=None)
        start = time.perf_counter()
        for step, (images, labels) in enumerate(batches):
            x = data_.prepare_batch(images, self.mean, self.std, device, generator=generator,
                                    crop_padding=4 if cfg.augment else 0, flip=cfg.augment,
                                    channels_last=cfg.channels_last).to(self.dtype)
            y = labels.to(device, non_blocking=True)
            with self._autocast():
                logits = self.net(x)
                loss = self.criterion(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            loss = loss.detach()
            losses.append(loss)
            sizes.append(len(y))
            corrects.append((logits.argmax(1) == y).sum())
            if bar is not None:
                bar.update()
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{loss.item():.4f}")
        losses = torch.stack(losses).double() if losses else torch.zeros(0, dtype=torch.float64, device=device)
        local = [(losses * torch.tensor(sizes, dtype=torch.float64, device=device)).sum().item(),
                 sum(corrects).item() if corrects else 0, sum(sizes)]
        seconds = time.perf_counter() - start
        loss_sum, correct, count = self.dist.sum(local, device)
        if bar is not None:
            bar.close()
        if self.record_steps:
            self.step_losses.extend(losses.tolist())
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"the training loss became {loss_sum} in epoch {self.epoch + 1}; "
                                     "try a lower --lr")
        return loss_sum / count, correct / count, count / seconds, seconds

    @torch.no_grad()
    def evaluate(self):
        """Loss and accuracy on the validation split (each process its shard; no collective per batch)."""
        if self.dist.enabled:           # BatchNorm statistics: rank 0's, as DDP's next forward would make them
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, 0)
        self.model.eval()
        sampler = torch.utils.data.SequentialSampler(self.val_data)
        total = torch.zeros(3, dtype=torch.float64, device=self.device)
        start = time.perf_counter()
        for images, labels in self._batches(self.val_data, sampler, max(self.cfg.batch_size, 128), drop_last=False):
            x = data_.prepare_batch(images, self.mean, self.std, self.device,
                                    channels_last=self.cfg.channels_last).to(self.dtype)
            y = labels.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.model(x).float()
            total += torch.stack([TF.cross_entropy(logits, y, reduction="sum").double(),
                                  (logits.argmax(1) == y).sum().double(),
                                  torch.tensor(len(y), dtype=torch.float64, device=self.device)])
        loss_sum, correct, count = self.dist.sum(total.tolist(), self.device)
        return loss_sum / count, correct / count, time.perf_counter() - start

    def fit(self):
        cfg = self.cfg
        while self.epoch < cfg.epochs:
            if cfg.patience and self.best["bad_epochs"] >= cfg.patience:
                break
            train_loss, train_acc, speed, train_s = self.train_epoch()
            val_loss, val_acc, val_s = self.evaluate()
            self.epoch += 1
            improved = self.best["epoch"] == 0 or val_loss < self.best["val_loss"] - cfg.min_delta
            if improved:
                self.best = {"val_loss": val_loss, "val_acc": val_acc, "epoch": self.epoch, "bad_epochs": 0}
            else:
                self.best["bad_epochs"] += 1
            row = {"epoch": self.epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                   "val_acc": val_acc, "images_per_s": speed, "train_s": train_s, "val_s": val_s}
            self.history.append(row)
            self._save_checkpoints(improved)
            if self.dist.main:
                if not self.quiet:
                    print(f"{self.label + ' ' if self.label != 'cnnfast' else ''}epoch {self.epoch:>3}/{cfg.epochs}  "
                          f"train loss {train_loss:.4f} acc {100 * train_acc:5.1f}%  "
                          f"val loss {val_loss:.4f} acc {100 * val_acc:5.1f}%  "
                          f"{speed:,.0f} img/s  {train_s + val_s:.1f} s", flush=True)
                if self.out:
                    _write_metrics(self.out, self.history, self.summary())
                    _plot(os.path.join(self.out, "curves.png"), {self.label: self.history})
            if cfg.patience and self.best["bad_epochs"] >= cfg.patience and self.dist.main and not self.quiet:
                print(f"early stopping: no lower validation loss for {cfg.patience} epochs "
                      f"(best {self.best['val_loss']:.4f} at epoch {self.best['epoch']})", flush=True)
        return self.history

    def summary(self) -> dict:
        from . import __version__
        return {"label": self.label, "config": _config(self.cfg), "device": str(self.device),
                "backend": _backend_name(self.cfg.backend, self.device) if self.label != "torch" else "stock torch",
                "torch": torch.__version__, "cnnfast": __version__,
                "data": {"name": self.data.name, "train": len(self.data.train), "val": len(self.data.val),
                         "classes": self.data.classes},
                "best": self.best, "final": self.history[-1] if self.history else None,
                "distributed": {"world_size": self.dist.world, "backend": self.dist.backend}}


def _backend_name(backend, device) -> str:
    """The backend cnnfast's layers resolve to for float32 on ``device``."""
    from . import backends
    try:
        return backends.resolve(backend, "conv2d", torch.empty(0, device=device))
    except (RuntimeError, TypeError, ValueError) as e:
        raise UsageError(f"--backend {backend}: {e}") from None


def _config(cfg) -> dict:
    return {k: v for k, v in vars(cfg).items() if not k.startswith("_")}


def _weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --- command line ------------------------------------------------------------------------------

def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "cnnfast train",
        description="Train a CNN on cnnfast's layers, or fine-tune a pretrained one, with the classic recipe:\n"
                    "cross-entropy loss, SGD with momentum, a held-out validation split. Each run writes\n"
                    "metrics.csv/.json, curves.png, checkpoint.pt and best.pt to its run directory.",
        epilog="examples:\n"
               "  cnnfast train                                     Net on the embedded shapes data (~1 min on a CPU)\n"
               "  cnnfast train --model net-bn --augment --weight-decay 5e-4 --patience 3 --epochs 30\n"
               "  cnnfast train --data cifar10 --data-dir ~/data --device cuda --batch-size 64 --epochs 20\n"
               "  cnnfast train --model resnet18 --finetune --weights resnet18.pth --data folder --data-dir pics/\n"
               "  cnnfast train --compare                           stock PyTorch against cnnfast, same batches\n"
               "  cnnfast train --resume runs/20250101-120000-net --epochs 10\n"
               "  torchrun --nproc-per-node 2 -m cnnfast.train      DistributedDataParallel, one process per device",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=MODELS, default="net",
                   help="net: LeNet-style cnnfast.Net (default); net-bn: the same with BatchNorm and Dropout; "
                        "resnet18, densenet121: torchvision's, put onto cnnfast layers by cnnfast.convert")
    g.add_argument("--finetune", action="store_true",
                   help="transfer learning: load pretrained weights, freeze the backbone, train a new classifier")
    g.add_argument("--weights", metavar="PATH",
                   help="weights to fine-tune from (a state dict or a cnnfast checkpoint); default for resnet18 and "
                        "densenet121: torchvision's ImageNet weights from the torch hub cache")
    g.add_argument("--download", action="store_true",
                   help="allow downloading (CIFAR-10, pretrained weights); nothing is downloaded without it")

    g = p.add_argument_group("data")
    g.add_argument("--data", choices=("shapes", "cifar10", "folder"), default="shapes",
                   help="shapes: embedded, 10 classes of drawn 3x32x32 shapes, no download (default); cifar10: "
                        "the python-format batches under --data-dir; folder: an ImageFolder directory (class "
                        "sub-folders, optionally under train/ and val/)")
    g.add_argument("--data-dir", metavar="DIR", help="where cifar10 or folder data lives")
    g.add_argument("--image-size", type=int, default=32, metavar="N", help="folder images are resized and "
                   "centre-cropped to N x N (default 32)")
    g.add_argument("--train-size", type=int, metavar="N", help="training images (shapes: 12000; others: a cap)")
    g.add_argument("--val-size", type=int, metavar="N", help="validation images (shapes: 2000; others: a cap)")
    g.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                   help="held-out share of a folder without train/ and val/ (default 0.2)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="data loading processes (default 0 for data in memory, 2 for folder)")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=4, metavar="N", help="epochs (default 4)")
    g.add_argument("--batch-size", type=int, default=4, metavar="N", help="images per step (default 4, the "
                   "classic recipe's)")
    g.add_argument("--lr", type=float, default=0.001, help="SGD learning rate (default 0.001)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--seed", type=int, default=0, help="seed of the data, the initial weights and every "
                   "random choice; the same seed gives the same run (default 0)")

    g = p.add_argument_group("against overfitting")
    g.add_argument("--augment", action="store_true", help="random crop (padding 4) and horizontal flip")
    g.add_argument("--dropout", type=float, metavar="P", help="dropout probability (net-bn: its two dropout "
                   "layers, default 0.5; resnet18: before the classifier; densenet121: in its dense layers, or "
                   "before the new classifier with --finetune; default 0)")
    g.add_argument("--weight-decay", type=float, default=0.0, metavar="W", help="L2 penalty (default 0)")
    g.add_argument("--patience", type=int, metavar="N",
                   help="early stopping: stop after N epochs without a lower validation loss")
    g.add_argument("--min-delta", type=float, default=0.0, metavar="D",
                   help="early stopping: a validation loss counts as lower only if by more than D (default 0)")

    g = p.add_argument_group("where and how it runs")
    g.add_argument("--backend", choices=("triton", "cuda", "cpu", "torch", "auto"),
                   help="cnnfast backend for every layer (default: cnnfast's default, 'auto')")
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if there is one)")
    g.add_argument("--amp", choices=tuple(_AMP), help="mixed precision: autocast to this dtype (float16 adds "
                   "gradient scaling)")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and images")
    g.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: 1 for net and net-bn on a CPU, "
                   "whose layers are too small to gain from more; PyTorch's default otherwise)")
    g.add_argument("--out", metavar="DIR", help="run directory (default runs/<date>-<time>-<model>; "
                   "with --resume, the checkpoint's directory)")
    g.add_argument("--resume", metavar="PATH", help="continue from a checkpoint (a checkpoint.pt or its run "
                   "directory) up to --epochs; its settings apply unless given again")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    g.add_argument("--compare", action="store_true",
                   help="also train the stock PyTorch model from the same initial weights on the same batches; "
                        "report both loss curves, their largest difference and the speed ratio")
    return p


def parse_args(argv=None, prog=None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(prog).parse_args(argv)
    explicit = build_parser(prog)
    for action in explicit._actions:
        action.default = argparse.SUPPRESS
    args._explicit = sorted(vars(explicit.parse_args(argv)))
    return args


def _check(cfg):
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise UsageError("--epochs and --batch-size must be at least 1")
    if cfg.lr <= 0:
        raise UsageError("--lr must be positive")
    if cfg.dropout is not None and not 0 <= cfg.dropout < 1:
        raise UsageError("--dropout must be in [0, 1)")
    if cfg.model == "net" and cfg.dropout:
        raise UsageError("--model net has no dropout layers; use --model net-bn for --dropout")
    if cfg.weights and not cfg.finetune:
        raise UsageError("--weights is for --finetune (to continue a run, use --resume)")
    if cfg.patience is not None and cfg.patience < 1:
        raise UsageError("--patience must be at least 1")


def _device(cfg, dist: _Dist) -> torch.device:
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


def _out_dir(cfg, dist: _Dist, ckpt) -> Optional[str]:
    if cfg.out:
        out = cfg.out
    elif ckpt is not None:
        out = os.path.dirname(os.path.abspath(ckpt["path"]))
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        if dist.enabled:                                 # one name for all processes: rank 0's
            stamp = dist.gather(stamp)[0]
        out = os.path.join("runs", f"{stamp}-{cfg.model}")
    if dist.main:
        os.makedirs(out, exist_ok=True)
    return out


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
        _finish(trainer, result, dist)
        return result
    return _compare(cfg, stock, model, data, device, dist, out)


def _finish(trainer: _Run, result: dict, dist: _Dist):
    digests = dist.gather(_weights_digest(trainer.model))
    if dist.main and trainer.out:
        summary = trainer.summary()
        if dist.enabled:
            summary["distributed"]["weights_sha256_per_rank"] = digests
            summary["distributed"]["weights_identical_across_ranks"] = len(set(digests)) == 1
        _write_metrics(trainer.out, trainer.history, summary)
        best = trainer.best
        if trainer.history:
            print(f"done: best validation accuracy {100 * best.get('val_acc', 0):.1f}% (loss {best['val_loss']:.4f}, "
                  f"epoch {best['epoch']}); results in {trainer.out}", flush=True)


def _warm_up(model: nn.Module, data, cfg, device):
    """A few steps on a copy, so one-time costs (kernel compilation, autotuning, allocator) are not timed."""
    model = copy.deepcopy(model).to(device)
    images, labels = data.train[list(range(min(cfg.batch_size, len(data.train))))] \
        if isinstance(data.train, data_.TensorImages) else (None, None)
    if images is None:
        return
    x = data_.prepare_batch(images, data.mean, data.std, device, channels_last=cfg.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    for _ in range(3):
        with torch.autocast(device.type, dtype=_AMP[cfg.amp]) if cfg.amp else torch.autocast(device.type,
                                                                                               enabled=False):
            loss = TF.cross_entropy(model(x).float(), labels.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _per_epoch(a, b, epochs: int, reduce=np.max):
    """``reduce(|a - b|)`` over each epoch's share of two per-step series (their common length)."""
    n = min(len(a), len(b))
    d = np.abs(np.asarray(a[:n], dtype=np.float64) - np.asarray(b[:n], dtype=np.float64))
    return [float(reduce(part)) if len(part) else 0.0 for part in np.array_split(d, epochs)]


def _compare(cfg, stock, model, data, device, dist, out) -> dict:
    """Train ``stock`` and the cnnfast ``model`` (same initial weights) on the same batches.

    Two float32 implementations that round differently drift apart over thousands of SGD steps (the
    difference compounds until the runs are different runs), so unless the curves are bit for bit
    equal the verdict trains the stock model once more in float64 and requires cnnfast's mean per-step
    deviation from that reference to be at most twice stock PyTorch's own, in every epoch."""
    if device.type == "cuda":          # a float32 comparison: no TF32 on either side (see FIELD_NOTES)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    initial = copy.deepcopy(stock)
    for m in (stock, model):
        _warm_up(m, data, cfg, device)
    runs = {}
    for label, m, where in (("torch", stock, os.path.join(out, "torch")), ("cnnfast", model, out)):
        if dist.main:
            os.makedirs(where, exist_ok=True)
        trainer = _Run(cfg, m, data, device, dist, where, label=label, progress=cfg.progress, record_steps=True)
        trainer.fit()
        _finish(trainer, {}, dist)
        runs[label] = trainer
    t, c = runs["torch"], runs["cnnfast"]
    n = min(len(t.step_losses), len(c.step_losses))
    epochs = min(len(t.history), len(c.history))
    step_diff = max(_per_epoch(t.step_losses, c.step_losses, epochs), default=0.0)
    val_diff = max((abs(a["val_loss"] - b["val_loss"]) for a, b in zip(t.history, c.history)), default=0.0)
    reference = None
    if step_diff == 0.0:
        equal = True
    else:
        if dist.main:
            print("\nthe curves differ: training the stock model once more in float64 as the reference", flush=True)
        ref = _Run(cfg, initial, data, device, dist, None, label="float64", progress=cfg.progress,
                   record_steps=True, dtype=torch.float64)
        ref.fit()
        runs["float64"] = ref
        reference = {k: _per_epoch(runs[k].step_losses, ref.step_losses, epochs, np.mean) for k in ("torch", "cnnfast")}
        equal = all(dc <= 2 * dt + 1e-6 for dc, dt in zip(reference["cnnfast"], reference["torch"]))
    seconds = {k: sum(r["train_s"] for r in runs[k].history) for k in ("torch", "cnnfast")}
    images = {k: sum(r["images_per_s"] * r["train_s"] for r in runs[k].history) for k in ("torch", "cnnfast")}
    ips = {k: images[k] / seconds[k] if seconds[k] else 0.0 for k in seconds}
    report = {
        "steps": n, "max_abs_step_loss_diff": step_diff, "max_abs_val_loss_diff": val_diff,
        "equal_within_float32_tolerance": equal,
        "rule": "bit-identical curves, or in every epoch: mean |cnnfast - float64| <= 2 mean |torch - float64| "
                "+ 1e-6 over the per-step training losses",
        "float64_reference_mean_abs_step_loss_diff_per_epoch": reference,
        "images_per_s": ips, "speed_ratio_cnnfast_over_torch": ips["cnnfast"] / ips["torch"] if ips["torch"] else None,
        "epochs": {k: v.history for k, v in runs.items()},
        "step_losses": {k: v.step_losses for k, v in runs.items()},
    }
    runs.pop("float64", None)
    if dist.main:
        with open(os.path.join(out, "compare.json"), "w") as f:
            json.dump(report, f, indent=2)
        _plot(os.path.join(out, "compare.png"), {k: v.history for k, v in runs.items()})
        print("\nepoch   torch train / val loss    cnnfast train / val loss")
        for a, b in zip(t.history, c.history):
            print(f"{a['epoch']:>5}   {a['train_loss']:.6f} / {a['val_loss']:.6f}      "
                  f"{b['train_loss']:.6f} / {b['val_loss']:.6f}")
        print(f"largest |difference| of the {n} per-step training losses: {step_diff:.3g}; "
              f"of the validation losses: {val_diff:.3g}")
        if reference is None:
            print("the two runs are bit for bit identical")
        else:
            fmt = ", ".join
            print(f"mean |difference| from the float64 run's per-step losses, per epoch: torch "
                  f"[{fmt(f'{v:.2g}' for v in reference['torch'])}], cnnfast "
                  f"[{fmt(f'{v:.2g}' for v in reference['cnnfast'])}]")
        print(f"verdict: {'equal' if equal else 'NOT equal'} within float32 tolerance "
              f"({'bit-identical' if reference is None else 'rule: cnnfast deviates from float64 at most 2x as much as torch'})")
        print(f"speed: torch {ips['torch']:,.0f} img/s, cnnfast {ips['cnnfast']:,.0f} img/s, "
              f"ratio cnnfast/torch {report['speed_ratio_cnnfast_over_torch']:.2f}x; results in {out}", flush=True)
    return {"model": c.model, "history": c.history, "out": out, "best": c.best, "compare": report,
            "torch_model": t.model}


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


if __name__ == "__main__":
    sys.exit(main(prog="python -m cnnfast.train"))
