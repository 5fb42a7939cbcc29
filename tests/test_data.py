"""cnnfast.data: the embedded shapes set, CIFAR-10 and ImageFolder readers (on small data written here
in the standard formats), batching and augmentation."""
import os
import pickle

import numpy as np
import pytest
import torch

from cnnfast import data

torchvision = pytest.importorskip("torchvision")


# --- the embedded data set ---------------------------------------------------------------------

def test_shapes_are_the_same_for_the_same_seed_and_differ_for_another():
    a, la = data.draw_shapes(40, seed=3)
    b, lb = data.draw_shapes(40, seed=3)
    c, _ = data.draw_shapes(40, seed=4)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)


def test_shapes_are_balanced_uint8_images_with_disjoint_splits():
    d = data.shapes(train_size=200, val_size=50, seed=0)
    assert d.classes == data.SHAPES_CLASSES and d.num_classes == 10
    assert d.train.images.shape == (200, 3, 32, 32) and d.train.images.dtype == torch.uint8
    assert torch.bincount(d.train.labels, minlength=10).tolist() == [20] * 10
    assert len(d.val) == 50
    train = {bytes(x.numpy()) for x in d.train.images}
    assert not any(bytes(x.numpy()) in train for x in d.val.images)
    assert all(0.3 < m < 0.7 for m in d.mean) and all(0.1 < s < 0.5 for s in d.std)


def test_shapes_classes_differ_in_shape_not_colour():
    """The class is not readable from colour statistics: per-class mean colours are all near grey."""
    x, y = data.draw_shapes(1000, seed=1)
    means = np.stack([x[y == k].mean(axis=(0, 2, 3)) for k in range(10)]) / 255
    assert np.abs(means - 0.5).max() < 0.1


# --- CIFAR-10 ----------------------------------------------------------------------------------

def _write_cifar10(root, per_batch=6, test=4):
    """A small CIFAR-10 in the standard python format (pickled dicts of uint8 rows R, G, B planes)."""
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    written = {}
    for name in names:
        n = test if name == "test_batch" else per_batch
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": rows, "labels": labels, "batch_label": name}, f)
        written[name] = (rows, labels)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"]}, f)
    return written


@pytest.fixture
def skip_cifar_checksums(monkeypatch):
    """The files written here are not the real ones, whose MD5 sums torchvision checks."""
    from torchvision.datasets import CIFAR10, cifar
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))


def test_cifar10_reads_the_standard_format(tmp_path, skip_cifar_checksums):
    written = _write_cifar10(tmp_path)
    d = data.cifar10(str(tmp_path))
    assert len(d.train) == 30 and len(d.val) == 4
    assert d.classes[0] == "airplane" and d.num_classes == 10
    rows, labels = written["data_batch_1"]
    image, label = d.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert torch.equal(image, torch.from_numpy(rows[0].reshape(3, 32, 32))) and label == labels[0]
    test_rows, _ = written["test_batch"]
    assert torch.equal(d.val[3][0], torch.from_numpy(test_rows[3].reshape(3, 32, 32)))
    # the batches folder itself works as --data-dir too
    assert len(data.cifar10(str(tmp_path / "cifar-10-batches-py")).train) == 30


def test_cifar10_missing_says_how_to_get_it_and_downloads_nothing(tmp_path):
    with pytest.raises(data.DataError, match="--download"):
        data.load("cifar10", str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_load_caps_sizes_with_a_seeded_subset(tmp_path, skip_cifar_checksums):
    _write_cifar10(tmp_path)
    a = data.load("cifar10", str(tmp_path), train_size=10, val_size=2, seed=1)
    b = data.load("cifar10", str(tmp_path), train_size=10, val_size=2, seed=1)
    assert len(a.train) == 10 and len(a.val) == 2
    assert torch.equal(a.train.images, b.train.images)


# --- ImageFolder -------------------------------------------------------------------------------

def _write_folder(root, classes=("cat", "dog", "eel"), per_class=5, size=(20, 28)):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(os.path.join(root, c))
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, c, f"{i}.png"))


def test_image_folder_holds_out_a_seeded_validation_split(tmp_path):
    _write_folder(tmp_path)
    d = data.load("folder", str(tmp_path), image_size=16, val_fraction=0.2, seed=0)
    assert d.classes == ["cat", "dog", "eel"]
    assert len(d.train) == 12 and len(d.val) == 3
    image, label = d.train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and label in (0, 1, 2)
    again = data.load("folder", str(tmp_path), image_size=16, val_fraction=0.2, seed=0)
    assert again.val.indices == d.val.indices
    assert not set(d.val.indices) & set(d.train.indices)


def test_image_folder_uses_train_and_val_subfolders(tmp_path):
    _write_folder(tmp_path / "train", per_class=3)
    _write_folder(tmp_path / "val", per_class=1)
    d = data.load("folder", str(tmp_path), image_size=8)
    assert (len(d.train), len(d.val), d.num_classes) == (9, 3, 3)


def test_image_folder_errors_are_sentences(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load("folder", str(tmp_path / "nowhere"))
    with pytest.raises(data.DataError, match="needs --data-dir"):
        data.load("folder")
    with pytest.raises(data.DataError, match="unknown data set"):
        data.load("mnist")


# --- batches and augmentation ------------------------------------------------------------------

def test_loader_gathers_in_memory_batches_in_sampler_order():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    ds = data.TensorImages(images, torch.arange(10))
    batches = list(data.loader(ds, 4, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0], drop_last=False))
    assert [b[1].tolist() for b in batches] == [[9, 8, 7, 6], [5, 4, 3, 2], [1, 0]]
    assert batches[0][0].shape == (4, 3, 2, 2) and torch.equal(batches[0][0][:, 0, 0, 0], batches[0][1].byte())


def test_augment_crops_from_the_zero_padded_image_and_flips():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = data.augment(images, g, crop_padding=2, flip=True)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    kinds = set()
    for x, y in zip(padded, out):
        found = [(i, j, f) for i in range(5) for j in range(5) for f in (False, True)
                 if torch.equal((x.flip(2) if f else x)[:, i:i + 8, j:j + 8], y)]
        assert found, "each output is a window of the (possibly flipped) padded image"
        kinds.add(found[0][2])
    assert kinds == {False, True}
    again = data.augment(images, torch.Generator().manual_seed(0), crop_padding=2, flip=True)
    assert torch.equal(out, again)


def test_prepare_batch_normalises_to_float32():
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    x = data.prepare_batch(images, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0), "cpu", channels_last=True)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert x[0, :, 0, 0].tolist() == [2.0, 1.0, 0.5]
