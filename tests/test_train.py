"""``cnnfast train``: the command line, the training loop and what it writes, resuming, early stopping,
``--compare``, mixed precision and fine-tuning (on tiny data, a few steps each)."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import cnnfast.nn as cnn
from cnnfast import cli, train
from cnnfast.convert import convert

FAST = ["--no-progress", "--train-size", "40", "--val-size", "20", "--batch-size", "8"]
LEARNS = ["--model", "net-bn", "--dropout", "0", "--lr", "0.02"]     # a setting that learns in a few steps


def _train(out, *args):
    return train.main([*FAST, "--out", str(out), *args])


def _metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def _checkpoint(out, name="checkpoint.pt"):
    return torch.load(os.path.join(out, name), map_location="cpu", weights_only=True)


# --- the command line --------------------------------------------------------------------------

def test_cnnfast_help_lists_the_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: cnnfast" in out and "train" in out
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_train_help_reads_well(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["train", "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cnnfast train")
    for text in ("--model {net,net-bn,resnet18,densenet121}", "--finetune", "--weights", "--data {shapes,cifar10,"
                 "folder}", "--augment", "--dropout", "--weight-decay", "--patience", "--backend", "--amp",
                 "--channels-last", "--resume", "--compare", "examples:", "torchrun"):
        assert text in out, text


def test_module_entry_point_runs_and_import_cnnfast_stays_light():
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "cnnfast.train", "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0 and "usage: python -m cnnfast.train" in done.stdout
    heavy = ("cnnfast.train", "cnnfast.data", "cnnfast.cli", "matplotlib", "torchvision")
    code = f"import sys, cnnfast; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("args, message", [
    (["--model", "net", "--dropout", "0.5"], "has no dropout layers"),
    (["--weights", "w.pt"], "--weights is for --finetune"),
    (["--compare", "--resume", "x"], "cannot --resume"),
    (["--data", "folder"], "needs --data-dir"),
])
def test_usage_errors_are_sentences_not_tracebacks(tmp_path, capsys, args, message):
    assert _train(tmp_path / "run", *args) == 2
    err = capsys.readouterr().err
    assert "cnnfast train: error:" in err and message in err


# --- training, metrics, checkpoints ------------------------------------------------------------

def test_training_lowers_the_loss_and_writes_metrics_plot_and_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, *LEARNS, "--epochs", "5") == 0
    printed = capsys.readouterr().out
    assert "epoch   5/5" in printed and "img/s" in printed and "val loss" in printed
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    assert set(rows[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "images_per_s", "train_s",
                            "val_s"}
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.2, losses
    metrics = _metrics(out)
    assert metrics["config"]["model"] == "net-bn" and len(metrics["epochs"]) == 5
    assert metrics["data"] == {"name": "shapes", "train": 40, "val": 20, "classes": metrics["data"]["classes"]}
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG")
    ckpt = _checkpoint(out)
    assert ckpt["epoch"] == 5 and ckpt["config"]["lr"] == 0.02 and "optimizer" in ckpt and "rng" in ckpt
    best = _checkpoint(out, "best.pt")
    assert best["epoch"] == metrics["best"]["epoch"]


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    args = [*LEARNS, "--augment", "--dropout", "0.3", "--weight-decay", "1e-4"]   # every RNG stream in use
    assert _train(tmp_path / "whole", *args, "--epochs", "3") == 0
    assert _train(tmp_path / "parts", *args, "--epochs", "2") == 0
    assert train.main(["--resume", str(tmp_path / "parts"), "--epochs", "3", "--no-progress"]) == 0
    whole, parts = _checkpoint(tmp_path / "whole"), _checkpoint(tmp_path / "parts")
    assert parts["epoch"] == 3
    for key, value in whole["model"].items():
        assert torch.equal(value, parts["model"][key]), key                        # bit for bit
    for key, state in whole["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], parts["optimizer"]["state"][key]["momentum_buffer"])
    assert [r["val_loss"] for r in whole["history"]] == [r["val_loss"] for r in parts["history"]]
    assert len(_metrics(tmp_path / "parts")["epochs"]) == 3


def test_resume_refuses_corrupt_foreign_and_missing_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--epochs", "1") == 0
    data = (out / "checkpoint.pt").read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[:len(data) // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    capsys.readouterr()
    for path, message in ((bad, "corrupt"), (foreign, "not a cnnfast train checkpoint"),
                          (tmp_path / "nothing.pt", "no checkpoint at")):
        assert train.main(["--resume", str(path), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_resume_into_another_model_says_which_model_the_checkpoint_is_for(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--epochs", "1") == 0
    assert train.main(["--resume", str(out), "--model", "net-bn", "--epochs", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "does not fit this model" in err and "--model net " in err


def test_early_stopping_stops_after_patience_epochs_without_improvement(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--epochs", "10", "--patience", "2", "--min-delta", "100") == 0
    assert len(_metrics(out)["epochs"]) == 3        # the first epoch improves on nothing; two more without
    assert "early stopping" in capsys.readouterr().out


# --- --compare, precision, memory format -------------------------------------------------------

@pytest.mark.parametrize("model", ["net", "net-bn"])
def test_compare_on_the_torch_backend_gives_identical_loss_curves(tmp_path, capsys, model):
    out = tmp_path / "run"
    extra = ["--augment"] if model == "net-bn" else []
    assert _train(out, "--model", model, "--compare", "--backend", "torch", "--epochs", "2", *extra) == 0
    with open(out / "compare.json") as f:
        report = json.load(f)
    assert report["steps"] == 2 * 5
    assert report["max_abs_step_loss_diff"] == 0.0 and report["equal_within_float32_tolerance"]
    assert report["float64_reference_mean_abs_step_loss_diff_per_epoch"] is None        # no need: bit-identical
    assert report["step_losses"]["torch"] == report["step_losses"]["cnnfast"]
    assert report["speed_ratio_cnnfast_over_torch"] > 0
    assert (out / "compare.png").exists() and (out / "torch" / "metrics.json").exists()
    printed = capsys.readouterr().out
    assert "largest |difference|" in printed and "ratio cnnfast/torch" in printed


@pytest.mark.parametrize("amp", ["bfloat16", "float16"])
def test_mixed_precision_and_channels_last_train(tmp_path, amp):
    out = tmp_path / "run"
    assert _train(out, *LEARNS, "--amp", amp, "--channels-last", "--epochs", "2") == 0
    rows = _metrics(out)["epochs"]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in rows)


# --- fine-tuning -------------------------------------------------------------------------------

def _resnet18_weights(path, num_classes=5):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), path)
    return model.state_dict()


def test_finetune_resnet18_trains_only_a_new_classifier(tmp_path):
    state = _resnet18_weights(tmp_path / "resnet18.pth")
    args = train.parse_args([*FAST, "--train-size", "16", "--val-size", "8", "--model", "resnet18", "--finetune",
                             "--weights", str(tmp_path / "resnet18.pth"), "--epochs", "1", "--out",
                             str(tmp_path / "run")])
    model = train.run(args)["model"]
    assert model.fc.out_features == 10                                      # the shapes data's classes
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    assert isinstance(model.conv1, cnn.ConvReLUMaxPool2d)                   # frozen: BN folded, stem fused
    reference = convert(train._finetune_stock_model("resnet18", 10, 0.0, state))
    trained = model.state_dict()
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(trained[key], value), key                     # the backbone did not move
    assert not torch.equal(trained["fc.weight"], reference.state_dict()["fc.weight"])


def test_finetune_takes_weights_from_the_hub_cache_and_never_downloads(tmp_path, monkeypatch, capsys):
    import torch.hub
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    args = ["--train-size", "8", "--val-size", "8", "--model", "resnet18", "--finetune", "--epochs", "1"]
    assert _train(tmp_path / "run", *args) == 2
    assert "--download" in capsys.readouterr().err
    os.makedirs(tmp_path / "hub" / "checkpoints")
    _resnet18_weights(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth", num_classes=1000)
    assert _train(tmp_path / "run", *args) == 0


def _write_image_folder(root, classes=("a", "b", "c"), per_class=6):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(root / c)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_finetune_net_from_an_earlier_run_on_an_image_folder(tmp_path):
    pytest.importorskip("torchvision")
    assert _train(tmp_path / "first", "--epochs", "1") == 0
    _write_image_folder(tmp_path / "pictures")
    args = train.parse_args([*FAST, "--finetune", "--weights", str(tmp_path / "first" / "checkpoint.pt"),
                             "--data", "folder", "--data-dir", str(tmp_path / "pictures"), "--epochs", "1",
                             "--workers", "0", "--out", str(tmp_path / "second")])
    result = train.run(args)
    model, first = result["model"], _checkpoint(tmp_path / "first")["model"]
    assert model.fc3.out_features == 3
    assert torch.equal(model.conv1.weight, first["conv1.weight"]) and torch.equal(model.fc2.weight,
                                                                                   first["fc2.weight"])
    assert _metrics(tmp_path / "second")["data"]["classes"] == ["a", "b", "c"]


# --- the acceptance run ------------------------------------------------------------------------

@pytest.mark.slow
def test_default_run_reaches_80_percent_validation_accuracy(tmp_path):
    """``cnnfast train`` with its defaults: about a minute on a 2-core CPU (not timed here)."""
    assert train.main(["--no-progress", "--out", str(tmp_path / "run")]) == 0
    metrics = _metrics(tmp_path / "run")
    assert metrics["config"]["epochs"] == len(metrics["epochs"])
    assert metrics["final"]["val_acc"] >= 0.80, metrics["final"]


@pytest.mark.parametrize("noise, equal", [(None, True), (1e-2, False)])
def test_compare_judges_differing_curves_against_a_float64_run(tmp_path, monkeypatch, noise, equal):
    """A cnnfast model one float32 rounding step away from stock PyTorch (its weights nudged by one ulp)
    passes; one whose weights are off by 1% does not."""
    convert_ = train._to_cnnfast

    def nudged(*args):
        model = convert_(*args)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.nextafter(p, torch.full_like(p, np.inf)) if noise is None else
                        p * (1 + noise * torch.randn_like(p)))
        return model
    monkeypatch.setattr(train, "_to_cnnfast", nudged)
    out = tmp_path / "run"
    assert _train(out, *LEARNS, "--compare", "--backend", "torch", "--epochs", "2") == 0
    with open(out / "compare.json") as f:
        report = json.load(f)
    assert report["max_abs_step_loss_diff"] > 0
    reference = report["float64_reference_mean_abs_step_loss_diff_per_epoch"]
    assert len(reference["torch"]) == len(reference["cnnfast"]) == 2
    assert report["equal_within_float32_tolerance"] is equal, reference
