"""What a run writes and prints about itself: its directory, ``metrics.csv``/``metrics.json`` (one row
per epoch and a summary), the loss and accuracy curves, and the closing line."""
import csv
import datetime
import hashlib
import json
import os
from typing import Optional

import torch
from torch import nn

from .checkpoints import _config
from .models import _backend_name

_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "images_per_s", "train_s", "val_s")


def _out_dir(cfg, dist, ckpt) -> Optional[str]:
    """The run directory: ``--out``, else the resumed checkpoint's, else ``runs/<date>-<time>-<model>``."""
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


def _summary(trainer) -> dict:
    """What ``metrics.json`` says of ``trainer``'s (a ``loop._Run``) run besides its epochs."""
    from .. import __version__
    stock = trainer.label == "torch"
    return {"label": trainer.label, "config": _config(trainer.cfg), "device": str(trainer.device),
            "backend": "stock torch" if stock else _backend_name(trainer.cfg.backend, trainer.device),
            "torch": torch.__version__, "cnnfast": __version__,
            "data": {"name": trainer.data.name, "train": len(trainer.data.train), "val": len(trainer.data.val),
                     "classes": trainer.data.classes},
            "best": trainer.best, "final": trainer.history[-1] if trainer.history else None,
            "distributed": {"world_size": trainer.dist.world, "backend": trainer.dist.backend}}


def _weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _finish(trainer, dist):
    """The final ``metrics.json`` (under torchrun with each process's weights digest, which must agree)
    and the closing line."""
    digests = dist.gather(_weights_digest(trainer.model))
    if dist.main and trainer.out:
        summary = _summary(trainer)
        if dist.enabled:
            summary["distributed"]["weights_sha256_per_rank"] = digests
            summary["distributed"]["weights_identical_across_ranks"] = len(set(digests)) == 1
        _write_metrics(trainer.out, trainer.history, summary)
        best = trainer.best
        if trainer.history:
            print(f"done: best validation accuracy {100 * best.get('val_acc', 0):.1f}% (loss {best['val_loss']:.4f}, "
                  f"epoch {best['epoch']}); results in {trainer.out}", flush=True)
