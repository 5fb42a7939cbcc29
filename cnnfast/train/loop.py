"""The training loop: one model's epochs (cross-entropy, SGD with momentum, optional mixed precision),
its evaluation on the validation split, early stopping, and a checkpoint and metrics after every epoch."""
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as TF
from torch import nn

from .. import data as data_
from .checkpoints import _restore, _save_checkpoints
from .distributed import _shard
from .metrics import _plot, _summary, _write_metrics
from .models import _freeze_batchnorm

_AMP = {"bfloat16": torch.bfloat16, "float16": torch.float16}   # --amp: the dtype autocast computes in


def _autocast(device: torch.device, amp, dtype=torch.float32):
    """Autocast to ``amp`` (an ``_AMP`` name, or None for none) for a model in ``dtype``; never for float64."""
    if amp and dtype != torch.float64:
        return torch.autocast(device.type, dtype=_AMP[amp])
    return torch.autocast(device.type, enabled=False)


def _derive_seed(*keys) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


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
            _restore(self, ckpt)
        else:
            torch.manual_seed(_derive_seed(cfg.seed, dist.rank, 1))      # dropout: one stream per process

    def _batches(self, dataset, sampler, batch_size, drop_last):
        return data_.loader(dataset, batch_size, sampler, drop_last=drop_last, workers=self.cfg.workers,
                            pin_memory=self.device.type == "cuda")

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
            with _autocast(device, cfg.amp, self.dtype):
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
            with _autocast(self.device, self.cfg.amp, self.dtype):
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
            _save_checkpoints(self, improved)
            if self.dist.main:
                if not self.quiet:
                    print(f"{self.label + ' ' if self.label != 'cnnfast' else ''}epoch {self.epoch:>3}/{cfg.epochs}  "
                          f"train loss {train_loss:.4f} acc {100 * train_acc:5.1f}%  "
                          f"val loss {val_loss:.4f} acc {100 * val_acc:5.1f}%  "
                          f"{speed:,.0f} img/s  {train_s + val_s:.1f} s", flush=True)
                if self.out:
                    _write_metrics(self.out, self.history, _summary(self))
                    _plot(os.path.join(self.out, "curves.png"), {self.label: self.history})
            if cfg.patience and self.best["bad_epochs"] >= cfg.patience and self.dist.main and not self.quiet:
                print(f"early stopping: no lower validation loss for {cfg.patience} epochs "
                      f"(best {self.best['val_loss']:.4f} at epoch {self.best['epoch']})", flush=True)
        return self.history
