"""Checkpoints: what ``checkpoint.pt`` and ``best.pt`` hold, how a run is saved and restored
bit for bit (model, optimizer, gradient scaler, every process's RNG state, history), and reading
weights files to fine-tune from."""
import os

import torch

from .errors import CheckpointError, _first_line

_FORMAT = "cnnfast-train-checkpoint"
# What defines a run (restored by --resume unless given again); the rest is where and how it runs.
_RUN_KEYS = ("model", "finetune", "weights", "data", "data_dir", "image_size", "train_size", "val_size",
             "val_fraction", "epochs", "batch_size", "lr", "momentum", "augment", "dropout", "weight_decay",
             "patience", "min_delta", "seed", "amp", "channels_last")
# What best.pt keeps of a checkpoint: the weights and what they are, not how to continue.
_BEST_KEYS = ("format", "version", "config", "epoch", "num_classes", "classes", "model")


def _config(cfg) -> dict:
    """The run's settings (the parsed options) as saved in checkpoints and metrics."""
    return {k: v for k, v in vars(cfg).items() if not k.startswith("_")}


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


def _torch_load(path: str, missing: str, unreadable: str):
    """``torch.load`` of a file of tensors, or a CheckpointError: ``missing`` when there is no file at
    ``path``, ``unreadable`` (and why) when it cannot be read."""
    if not os.path.isfile(path):
        raise CheckpointError(missing)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{unreadable} ({_first_line(e)})") from None


def load_checkpoint(path: str) -> dict:
    """The checkpoint at ``path`` (a file, or a run directory holding ``checkpoint.pt``)."""
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.pt")
    ckpt = _torch_load(path, f"no checkpoint at {path!r}", f"cannot read checkpoint {path!r}: the file is corrupt "
                       "or truncated, or not a PyTorch file")
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT:
        raise CheckpointError(f"{path!r} is not a cnnfast train checkpoint (it has no '{_FORMAT}' tag)")
    missing = [k for k in ("config", "epoch", "model", "optimizer", "rng", "history") if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} is incomplete: it lacks {', '.join(missing)}")
    ckpt["path"] = path
    return ckpt


def _read_weights(path: str) -> dict:
    """A state dict from ``path``: a plain state dict, a cnnfast checkpoint or a ``{'state_dict': ...}``."""
    obj = _torch_load(path, f"weights file {path!r} does not exist", f"cannot read weights file {path!r}: it is "
                      "corrupt or not a PyTorch state dict")
    if isinstance(obj, dict) and obj.get("format") == _FORMAT:
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"weights file {path!r} does not hold a state dict")
    return obj


def _state(trainer) -> dict:
    """The checkpoint of ``trainer`` (a ``loop._Run``) after its last epoch; every process takes part
    (each one's RNG state is gathered)."""
    rng = trainer.dist.gather(_rng_state(trainer.device))
    return {"format": _FORMAT, "version": 1, "config": _config(trainer.cfg), "epoch": trainer.epoch,
            "num_classes": trainer.data.num_classes, "classes": trainer.data.classes,
            "model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
            "scaler": trainer.scaler.state_dict(), "rng": rng, "best": dict(trainer.best), "history": trainer.history}


def _restore(trainer, ckpt: dict):
    """Put ``trainer`` where the run that saved ``ckpt`` (``load_checkpoint``) stood."""
    where = ckpt["path"]
    try:
        trainer.model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        saved = ckpt["config"]
        raise CheckpointError(
            f"checkpoint {where!r} does not fit this model: it was saved by --model {saved.get('model')} with "
            f"{ckpt.get('num_classes')} classes, this run builds --model {trainer.cfg.model} with "
            f"{trainer.data.num_classes} classes ({_first_line(e)})") from None
    try:
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            trainer.scaler.load_state_dict(ckpt["scaler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"the optimizer state in {where!r} does not fit this model ({_first_line(e)})") \
            from None
    rng = ckpt["rng"]
    _set_rng_state(rng[trainer.dist.rank] if len(rng) == trainer.dist.world else rng[0], trainer.device)
    trainer.epoch, trainer.best, trainer.history = int(ckpt["epoch"]), dict(ckpt["best"]), list(ckpt["history"])


def _save_checkpoints(trainer, improved: bool):
    """``checkpoint.pt`` after every epoch, and ``best.pt`` when the validation loss ``improved``."""
    state = _state(trainer)
    if trainer.dist.main and trainer.out:
        _save(state, os.path.join(trainer.out, "checkpoint.pt"))
        if improved:
            _save({k: state[k] for k in _BEST_KEYS}, os.path.join(trainer.out, "best.pt"))
