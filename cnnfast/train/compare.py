"""``--compare``: stock PyTorch against cnnfast, from the same initial weights on the same batches, and
the verdict whether the two loss curves agree within float32 tolerance."""
import copy
import json
import os

import numpy as np
import torch
import torch.nn.functional as TF
from torch import nn

from .. import data as data_
from .loop import _autocast, _Run
from .metrics import _finish, _plot

# The verdict, as compare.json states it.
_RULE = ("bit-identical curves, or in every epoch: mean |cnnfast - float64| <= 2 mean |torch - float64| "
         "+ 1e-6 over the per-step training losses")


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
        with _autocast(device, cfg.amp):
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
    if device.type == "cuda":
        # A float32 comparison, so no TF32 on either side: on sm_80 and later, stock float32 conv2d runs on
        # TF32 tensor cores by default, because torch.backends.cudnn.allow_tf32 is True by default (PyTorch
        # docs, "TensorFloat-32 (TF32) on Ampere (and later) devices"); the matmul flag goes off likewise.
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
        _finish(trainer, dist)
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
        "equal_within_float32_tolerance": equal, "rule": _RULE,
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
        _print_report(t.history, c.history, report, out)
    return {"model": c.model, "history": c.history, "out": out, "best": c.best, "compare": report,
            "torch_model": t.model}


def _print_report(torch_history, cnnfast_history, report: dict, out: str):
    """Both loss curves side by side, their differences, the verdict and the speeds."""
    n, step_diff, val_diff = report["steps"], report["max_abs_step_loss_diff"], report["max_abs_val_loss_diff"]
    reference, ips = report["float64_reference_mean_abs_step_loss_diff_per_epoch"], report["images_per_s"]
    print("\nepoch   torch train / val loss    cnnfast train / val loss")
    for a, b in zip(torch_history, cnnfast_history):
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
    why = "bit-identical" if reference is None else "rule: cnnfast deviates from float64 at most 2x as much as torch"
    print(f"verdict: {'equal' if report['equal_within_float32_tolerance'] else 'NOT equal'} within float32 tolerance "
          f"({why})")
    print(f"speed: torch {ips['torch']:,.0f} img/s, cnnfast {ips['cnnfast']:,.0f} img/s, "
          f"ratio cnnfast/torch {report['speed_ratio_cnnfast_over_torch']:.2f}x; results in {out}", flush=True)
