"""Data for ``cnnfast train``: the embedded "shapes" set, CIFAR-10 and any ``ImageFolder`` directory.

Every dataset yields ``uint8`` images of shape (C, H, W) and ``int`` labels. Conversion to float,
normalisation and augmentation happen on whole batches on the training device (``prepare_batch``),
so the same code serves data held in memory and data read from files.

The embedded set needs no download: ten classes of shapes drawn procedurally into 3×32×32 images
(random colours, position, size, rotation, noise), the same images for the same seed on every
machine. A LeNet-sized network learns it to well above 80% in a minute on a CPU; it is not
trivial (disc against ring, plus against cross, stripes against checkerboard at a few pixels'
period under noise).
"""
import math
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = ["Data", "DataError", "TensorImages", "SHAPES_CLASSES", "draw_shapes", "shapes", "cifar10",
           "image_folder", "load", "loader", "prepare_batch", "augment"]

SHAPES_CLASSES = ["disc", "ring", "square", "frame", "triangle", "plus", "cross", "hstripes", "vstripes",
                  "checker"]

# The usual per-channel statistics of the CIFAR-10 training set and of ImageNet (for pretrained models).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DataError(RuntimeError):
    """A dataset could not be found or read; the message says what to do."""


class TensorImages(Dataset):
    """Images held in memory as one ``uint8`` tensor (N, C, H, W) with ``int64`` labels (N,).

    Indexing with a list of indices returns a whole batch at once, so a ``DataLoader`` given a
    ``BatchSampler`` as its sampler and ``batch_size=None`` costs one gather per batch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or labels.shape != images.shape[:1]:
            raise ValueError("TensorImages expects uint8 images (N, C, H, W) and labels (N,)")
        self.images, self.labels = images, labels.long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        if isinstance(index, (list, tuple)):
            index = torch.as_tensor(index, dtype=torch.long)
        return self.images[index], self.labels[index]


@dataclass
class Data:
    """A train/validation pair with what the model needs to know about it."""
    name: str
    train: Dataset
    val: Dataset
    classes: List[str]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --- the embedded data set ---------------------------------------------------------------------

def _box(u, v):
    return np.maximum(np.abs(u), np.abs(v))


def _bar_cross(a, b, r, t):
    return ((np.abs(a) <= t) & (np.abs(b) <= r)) | ((np.abs(b) <= t) & (np.abs(a) <= r))


def _checks(a, p, ph):
    return np.floor(a / p + ph)


# One mask function per class, in the order of SHAPES_CLASSES: (u, v) are pixel coordinates in the
# shape's rotated frame, r its radius, t the stroke half-width, p and ph the stripes' half period and phase.
_SHAPES = [
    lambda u, v, r, t, p, ph: np.hypot(u, v) <= r,                                              # disc
    lambda u, v, r, t, p, ph: (np.hypot(u, v) <= r) & (np.hypot(u, v) >= r - 2 * t),            # ring
    lambda u, v, r, t, p, ph: _box(u, v) <= 0.85 * r,                                           # square
    lambda u, v, r, t, p, ph: (_box(u, v) <= 0.85 * r) & (_box(u, v) >= 0.85 * r - 2 * t),      # frame
    lambda u, v, r, t, p, ph: (v <= 0.7 * r) & (np.abs(u) <= (v + r) / 1.7),                    # triangle
    lambda u, v, r, t, p, ph: _bar_cross(u, v, r, t),                                           # plus
    lambda u, v, r, t, p, ph: _bar_cross((u + v) / math.sqrt(2), (u - v) / math.sqrt(2), r, t),  # cross
    lambda u, v, r, t, p, ph: (_box(u, v) <= 0.85 * r) & (_checks(v, p, ph) % 2 == 0),          # hstripes
    lambda u, v, r, t, p, ph: (_box(u, v) <= 0.85 * r) & (_checks(u, p, ph) % 2 == 0),          # vstripes
    lambda u, v, r, t, p, ph: (_box(u, v) <= 0.85 * r) & ((_checks(u, p, ph) + _checks(v, p, ph)) % 2 == 0),
]


def draw_shapes(n: int, seed: int, size: int = 32, noise: float = 0.08) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` images (n, 3, size, size) ``uint8`` of the ten ``SHAPES_CLASSES``, balanced, from ``seed``.

    Each image: a random background colour, a shape in a different random colour, centred near the
    middle at a random offset, radius and rotation (±20°), plus Gaussian pixel noise.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(SHAPES_CLASSES)
    rng.shuffle(labels)
    s = size / 32.0                                   # all lengths below are for 32-pixel images
    cx = size / 2 + rng.uniform(-5, 5, n) * s
    cy = size / 2 + rng.uniform(-5, 5, n) * s
    r = rng.uniform(6.5, 11, n) * s                   # radius (half side) of the shape
    t = rng.uniform(1.6, 2.6, n) * s                  # stroke half-width / thickness
    period = rng.uniform(2.4, 3.6, n) * s             # half period of stripes and checks
    phase = rng.uniform(0, 2, n)
    theta = np.deg2rad(rng.uniform(-20, 20, n))
    bg = rng.uniform(0, 1, (n, 3))
    fg = rng.uniform(0, 1, (n, 3))
    close = np.linalg.norm(fg - bg, axis=1) < 0.45    # keep the shape visible: push fg away from bg
    fg[close] = np.where(bg[close] > 0.5, bg[close] - 0.45, bg[close] + 0.45)

    yy, xx = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    mask = np.zeros((n, size, size), dtype=bool)
    for k, draw in enumerate(_SHAPES):                  # each class's mask, for its own images only
        i = np.flatnonzero(labels == k)
        dx, dy = xx[None] - cx[i, None, None], yy[None] - cy[i, None, None]
        cos, sin = np.cos(theta[i])[:, None, None], np.sin(theta[i])[:, None, None]
        u, v = dx * cos + dy * sin, -dx * sin + dy * cos
        mask[i] = draw(u, v, r[i, None, None], t[i, None, None], period[i, None, None], phase[i, None, None])
    image = np.where(mask[:, None], fg[:, :, None, None], bg[:, :, None, None]).astype(np.float32)
    image += np.float32(noise) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8), labels.astype(np.int64)


def _draw(n: int, seed: int, chunk: int = 2048) -> TensorImages:
    """``draw_shapes`` in chunks (bounded memory), each chunk from its own seed derived from ``seed``."""
    images, labels = [], []
    for i, start in enumerate(range(0, n, chunk)):
        x, y = draw_shapes(min(chunk, n - start), seed=np.random.SeedSequence([seed, i]).generate_state(1)[0])
        images.append(torch.from_numpy(x))
        labels.append(torch.from_numpy(y))
    if not images:
        return TensorImages(torch.empty(0, 3, 32, 32, dtype=torch.uint8), torch.empty(0, dtype=torch.long))
    return TensorImages(torch.cat(images), torch.cat(labels))


def shapes(train_size: int = 12000, val_size: int = 2000, seed: int = 0) -> Data:
    """The embedded data set: ``train_size`` training and ``val_size`` held-out validation images.

    Training and validation images come from disjoint random streams of the same ``seed``.
    """
    train = _draw(train_size, seed=2 * seed)
    val = _draw(val_size, seed=2 * seed + 1)
    return Data("shapes", train, val, list(SHAPES_CLASSES), *_stats(train.images))


def _stats(images: torch.Tensor, limit: int = 4096):
    x = images[:limit].double() / 255
    return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).clamp_min(1e-3).tolist())


# --- data from files ---------------------------------------------------------------------------

def _require_torchvision(what: str):
    try:
        import torchvision  # noqa: F401
    except ImportError:
        raise DataError(f"{what} needs torchvision: pip install torchvision") from None


def cifar10(data_dir: str, download: bool = False) -> Data:
    """CIFAR-10 in its standard python format (``cifar-10-batches-py``) under ``data_dir``, read with
    ``torchvision.datasets.CIFAR10``: the 50,000 training images and the 10,000 test images as the
    validation split. Downloads (about 170 MB) only when ``download`` is True."""
    _require_torchvision("--data cifar10")
    from torchvision.datasets import CIFAR10

    root = os.path.expanduser(data_dir)
    if os.path.basename(os.path.normpath(root)) == CIFAR10.base_folder and not download:
        root = os.path.dirname(os.path.normpath(root))     # accept the batches folder itself too
    try:
        train = CIFAR10(root, train=True, download=download)
        val = CIFAR10(root, train=False, download=False)
    except RuntimeError as e:
        raise DataError(f"CIFAR-10 not found or corrupted in {root!r}: expected {CIFAR10.base_folder}/ with "
                        f"data_batch_1..5, test_batch and batches.meta (torchvision says: {str(e).rstrip('.')}). "
                        "Pass --download to fetch it (about 170 MB).") from None

    def tensors(ds):
        return TensorImages(torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))),
                            torch.tensor(ds.targets, dtype=torch.long))

    return Data("cifar10", tensors(train), tensors(val), list(train.classes), CIFAR10_MEAN, CIFAR10_STD)


class _Uint8:
    """PIL image → uint8 tensor (C, H, W), always 3 channels (a picklable transform for workers)."""

    def __call__(self, image):
        from torchvision.transforms.functional import pil_to_tensor
        return pil_to_tensor(image.convert("RGB"))


def image_folder(data_dir: str, image_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Data:
    """An ``ImageFolder`` directory (one sub-folder per class). If it holds ``train/`` and ``val/``
    (or ``test/``) folders those are the splits; otherwise a seeded random ``val_fraction`` of the
    images is held out. Images are resized (shorter side) and centre-cropped to ``image_size``."""
    _require_torchvision("--data folder")
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    root = os.path.expanduser(data_dir)
    if not os.path.isdir(root):
        raise DataError(f"image folder {root!r} does not exist")
    transform = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size), _Uint8()])
    val_dir = next((os.path.join(root, d) for d in ("val", "test") if os.path.isdir(os.path.join(root, d))), None)
    try:
        if os.path.isdir(os.path.join(root, "train")) and val_dir is not None:
            train = ImageFolder(os.path.join(root, "train"), transform=transform)
            val = ImageFolder(val_dir, transform=transform)
            if val.classes != train.classes:
                raise DataError(f"{val_dir!r} has classes {val.classes}, but the training folder has {train.classes}")
            classes = train.classes
        else:
            full = ImageFolder(root, transform=transform)
            n_val = max(1, int(round(len(full) * val_fraction)))
            if n_val >= len(full):
                raise DataError(f"{root!r} has {len(full)} images: too few to hold out a validation split")
            order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed)).tolist()
            train, val, classes = Subset(full, order[n_val:]), Subset(full, order[:n_val]), full.classes
    except (FileNotFoundError, RuntimeError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot read image folder {root!r}: {e}") from None
    return Data("folder", train, val, list(classes), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _limit(dataset: Dataset, n: Optional[int], seed: int) -> Dataset:
    """At most ``n`` items of ``dataset``: a seeded random subset (all of it when ``n`` is None)."""
    if n is None or n >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    if isinstance(dataset, TensorImages):
        return TensorImages(dataset.images[order], dataset.labels[order])
    return Subset(dataset, order.tolist())


def load(name: str = "shapes", data_dir: Optional[str] = None, *, download: bool = False, image_size: int = 32,
         train_size: Optional[int] = None, val_size: Optional[int] = None, val_fraction: float = 0.2,
         seed: int = 0) -> Data:
    """The data set ``name`` ("shapes", "cifar10" or "folder"). ``train_size``/``val_size`` set the size
    of the embedded set and cap the others (a seeded random subset)."""
    if name == "shapes":
        data = shapes(12000 if train_size is None else train_size, 2000 if val_size is None else val_size, seed)
    elif name in ("cifar10", "folder"):
        if data_dir is None:
            raise DataError(f"--data {name} needs --data-dir DIR")
        data = cifar10(data_dir, download) if name == "cifar10" else image_folder(data_dir, image_size,
                                                                                     val_fraction, seed)
        data.train, data.val = _limit(data.train, train_size, seed), _limit(data.val, val_size, seed + 1)
    else:
        raise DataError(f"unknown data set {name!r}; expected 'shapes', 'cifar10' or 'folder'")
    if len(data.train) == 0 or len(data.val) == 0:
        raise DataError(f"data set {name!r} has {len(data.train)} training and {len(data.val)} validation images; "
                        "both must be non-empty")
    return data


# --- batches -----------------------------------------------------------------------------------

def loader(dataset: Dataset, batch_size: int, sampler, *, drop_last: bool = False, workers: int = 0,
           pin_memory: bool = False) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` in the order of ``sampler`` (a Sampler of indices).

    In-memory ``TensorImages`` are gathered a whole batch at a time; anything else is read item by
    item (with ``workers`` processes) and stacked."""
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last)
    if isinstance(dataset, TensorImages):
        return DataLoader(dataset, batch_size=None, sampler=batches, num_workers=workers, pin_memory=pin_memory)
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=False)


def augment(images: torch.Tensor, generator: torch.Generator, *, crop_padding: int = 4,
            flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, per image, on a batch (N, C, H, W).

    The same as torchvision's ``RandomCrop(size, padding=crop_padding)`` and ``RandomHorizontalFlip()``
    applied to each image; the random numbers come from ``generator`` (on the CPU), so a run is
    repeatable on any device."""
    n, _, h, w = images.shape
    if flip:
        flips = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        images = torch.where(flips[:, None, None, None], images.flip(3), images)
    if crop_padding > 0:
        p = crop_padding
        top = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(images.device)
        left = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(images.device)
        padded = torch.nn.functional.pad(images, (p, p, p, p))
        rows = (top[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
        cols = (left[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
        batch = torch.arange(n, device=images.device)[:, None, None, None]
        chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[batch, chans, rows, cols]
    return images


def prepare_batch(images: torch.Tensor, mean, std, device, *, generator: Optional[torch.Generator] = None,
                  crop_padding: int = 0, flip: bool = False, channels_last: bool = False) -> torch.Tensor:
    """A ``uint8`` batch → normalised float32 on ``device``, augmented when ``generator`` is given.
    ``mean`` and ``std`` are per channel, in [0, 1] units."""
    images = images.to(device, non_blocking=True)
    if generator is not None and (crop_padding or flip):
        images = augment(images, generator, crop_padding=crop_padding, flip=flip)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    x = images.float().div_(255).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
