"""The command line of ``cnnfast train``: its options, which of them were given explicitly (those
``--resume`` does not override), and the checks of options that do not go together."""
import argparse
import sys
from typing import Optional

from .errors import UsageError
from .loop import _AMP
from .models import MODELS


def _backend(name: str) -> str:
    """A backend name cnnfast knows (built-in, or registered by a plugin's entry point)."""
    from .. import backends
    try:
        return backends._check_name(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
    g.add_argument("--backend", type=_backend, metavar="NAME",
                   help="cnnfast backend for every layer: triton, cuda, cpu, torch, auto, or one registered by "
                        "a plugin (default: cnnfast's default, 'auto')")
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
    """The options in ``argv`` (default ``sys.argv[1:]``); ``_explicit`` lists those given explicitly."""
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
