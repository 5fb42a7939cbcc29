"""The models ``cnnfast train`` builds: each one on stock PyTorch layers (the initial weights, and
the other side of ``--compare``), then the same model on cnnfast's layers; for ``--finetune`` the
pretrained weights, a frozen backbone and a new classifier."""
import os
import re
from typing import Optional

import torch
from torch import nn

from ..convert import convert
from ..models import NetBN, TorchNet
from .checkpoints import _read_weights
from .errors import CheckpointError, UsageError, _first_line

MODELS = ("net", "net-bn", "resnet18", "densenet121")
_HEADS = {"net": "fc3", "net-bn": "fc3", "resnet18": "fc", "densenet121": "classifier"}   # the classifiers


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
        from ..models import Net
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


def _backend_name(backend, device) -> str:
    """The backend cnnfast's layers resolve to for float32 on ``device``."""
    from .. import backends
    try:
        return backends.resolve(backend, "conv2d", torch.empty(0, device=device))
    except (RuntimeError, TypeError, ValueError) as e:
        raise UsageError(f"--backend {backend}: {e}") from None
