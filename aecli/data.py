"""Datasets as uint8 image tensors (N, C, H, W), split into train / val / test.

Every loader here is a ``_target_`` of the ``dataset`` config group and returns ``ImageData``.
Training holds the tensors on the training device and slices batches from them
(``batches``); the uint8 -> float conversion happens per batch, on the device. A ``folder``
too large for ``dataset.max_memory_mb`` is streamed instead: its splits are ``ImageFiles``,
decoded by DataLoader workers into pinned memory, batch by batch.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from aecli.errors import ConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class ImageFiles(torch.utils.data.Dataset):
    """Image files decoded on demand to uint8 (C, H, W) tensors: a split too large to hold.

    Looks like a uint8 tensor where training needs it to (``len``, ``shape``, slicing).
    """

    def __init__(self, files: list[Path], image_size: int, channels: int, num_workers: int = 2) -> None:
        self.files, self.image_size, self.channels = files, image_size, channels
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), self.channels, self.image_size, self.image_size))

    def __getitem__(self, index: int | slice) -> Tensor:
        if isinstance(index, slice):
            return torch.stack([self[i] for i in range(*index.indices(len(self)))])
        from PIL import Image

        with Image.open(self.files[index]) as img:
            img = img.convert("L" if self.channels == 1 else "RGB")
            img = img.resize((self.image_size, self.image_size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8).reshape(self.image_size, self.image_size, self.channels)
        return torch.from_numpy(array.copy()).permute(2, 0, 1)


@dataclass
class ImageData:
    """Raw image tensors (or streamed ``ImageFiles``); pixel value ``max_value`` maps to 1.0.

    ``labels`` holds each split's class labels (int64, aligned with its images) when the dataset
    has them (digits, the torchvision sets, a folder of class sub-folders: ``classes`` names
    them), else None. Training never reads them; evaluation and the commands that use a trained
    model do."""

    train: Tensor | ImageFiles
    val: Tensor | ImageFiles
    test: Tensor | ImageFiles
    max_value: float = 255.0
    labels: dict[str, Tensor] | None = None  # "train" | "val" | "test" -> (N,) int64
    classes: list[str] | None = None  # label k's name

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        c, h, w = self.train.shape[1:]
        return int(c), int(h), int(w)

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, ImageFiles)

    def to(self, device: torch.device) -> ImageData:
        """Tensors move to ``device``; streamed splits stay on disk (batches move instead);
        labels stay on the CPU (scikit-learn reads them)."""
        move = lambda t: t.to(device) if isinstance(t, Tensor) else t  # noqa: E731
        return replace(self, train=move(self.train), val=move(self.val), test=move(self.test))

    def split(self, name: str) -> Tensor | ImageFiles:
        """The images of split ``name`` (train, val or test)."""
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def as_float(self, raw: Tensor) -> Tensor:
        """A raw batch as float32 in [0, 1]."""
        return raw.to(torch.float32).mul_(1.0 / self.max_value)


def batches(raw: Tensor | ImageFiles, batch_size: int, perm: Tensor, start: int = 0):
    """Yield ``(index, batch)`` for the batches of ``raw`` in the order ``perm``, from batch
    ``start`` on (``start`` > 0 resumes an interrupted epoch). The last batch may be smaller.

    Tensors are sliced on their own device; ``ImageFiles`` are decoded by DataLoader workers
    into pinned memory and copied to ``perm``'s device without blocking.
    """
    n_batches = math.ceil(len(perm) / batch_size)
    if isinstance(raw, Tensor):
        for i in range(start, n_batches):
            yield i, raw.index_select(0, perm[i * batch_size : (i + 1) * batch_size])
        return
    device = perm.device
    order = perm[start * batch_size :].tolist()
    # its own generator: the workers' seeds must not be drawn from (and shift) the global RNG
    loader = torch.utils.data.DataLoader(raw, batch_size=batch_size, sampler=order, num_workers=raw.num_workers,
                                         pin_memory=device.type == "cuda", generator=torch.Generator())
    for i, batch in enumerate(loader, start):
        yield i, batch.to(device, non_blocking=True)


def split(images: Tensor, fractions: tuple[float, ...], seed: int) -> list[Tensor]:
    """Split along dim 0 by a permutation fixed by ``seed`` (not the run's seed, so every run
    sees the same validation and test images). The first part takes the remainder. Splitting
    labels with the same ``seed`` and fractions keeps them aligned with their images."""
    n = len(images)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [max(1, int(round(f * n))) for f in fractions]  # never an empty val/test set
    parts, start = [], 0
    for size in [n - sum(sizes), *sizes]:
        parts.append(images[perm[start : start + size]])
        start += size
    return parts


def labelled(labels: list[Tensor] | None) -> dict[str, Tensor] | None:
    """Per-split labels (train, val, test) as ``ImageData.labels``."""
    return None if labels is None else dict(zip(("train", "val", "test"), (t.to(torch.int64) for t in labels)))


def keep_classes(data: ImageData, classes: list[int] | None) -> ImageData:
    """``data`` with its train and val splits cut to the labels in ``classes`` (``dataset.classes``;
    None: every class). The test split keeps every class, so the reconstruction error of a model
    trained on some classes can be measured against the held-out ones (``aecli.score``)."""
    if classes is None:
        return data
    if data.labels is None:
        raise ConfigError("dataset.classes", "this dataset has no labels to pick classes by (a flat folder)",
                          "put the images into one sub-folder per class, or drop dataset.classes")
    n = n_classes(data)
    bad = [c for c in classes if not 0 <= c < n]
    if bad:
        names = f": {', '.join(data.classes)}" if data.classes and n <= 20 else ""
        raise ConfigError("dataset.classes", f"{bad[0]} is not a class of this dataset (ids 0..{n - 1}{names})",
                          f"use class ids from 0 to {n - 1}, e.g. dataset.classes=[0,1,2]")
    wanted = torch.tensor(sorted(set(classes)))
    cut, labels = {}, dict(data.labels)
    for name in ("train", "val"):
        index = torch.isin(data.labels[name], wanted).nonzero().squeeze(1)
        if len(index) == 0:
            raise ConfigError("dataset.classes", f"the {name} split holds no image of classes {classes}",
                              "pick classes that the dataset has images of")
        cut[name], labels[name] = _subset(data.split(name), index), data.labels[name][index]
    return replace(data, **cut, labels=labels)


def n_classes(data: ImageData) -> int:
    """How many classes a labelled dataset has (its class names, else its largest label + 1)."""
    return len(data.classes) if data.classes else 1 + max(int(t.max()) for t in data.labels.values())


def _subset(raw: Tensor | ImageFiles, index: Tensor) -> Tensor | ImageFiles:
    if isinstance(raw, Tensor):
        return raw[index.to(raw.device)]
    return ImageFiles([raw.files[i] for i in index.tolist()], raw.image_size, raw.channels, raw.num_workers)


def _check_fraction(key: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ConfigError(key, f"{value} is not between 0 and 1", f"use e.g. {key}=0.1")


def load_digits(val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0) -> ImageData:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 17 grey levels), offline.

    Reads the CSV that ships inside scikit-learn directly: importing sklearn costs about a
    second at startup and would only do the same.
    """
    _check_fraction("dataset.val_fraction", val_fraction)
    _check_fraction("dataset.test_fraction", test_fraction)
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ConfigError("dataset", "scikit-learn is not installed (it ships the digits)", "pip install scikit-learn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if csv.exists():
        table = np.loadtxt(csv, delimiter=",", dtype=np.uint8)
        flat, target = table[:, :-1], table[:, -1]  # last column: label
    else:  # a future scikit-learn may move the file: take the public API
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        flat, target = bunch.data.astype(np.uint8), bunch.target
    images = torch.from_numpy(flat.reshape(-1, 1, 8, 8))
    fractions = (val_fraction, test_fraction)
    train, val, test = split(images, fractions, split_seed)
    labels = labelled(split(torch.from_numpy(target.astype(np.int64)), fractions, split_seed))
    return ImageData(train, val, test, max_value=16.0, labels=labels, classes=[str(d) for d in range(10)])


TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST", "cifar10": "CIFAR10"}


def load_torchvision(
    name: str, root: str = "data", download: bool = True, val_fraction: float = 0.1, split_seed: int = 0
) -> ImageData:
    """A torchvision dataset (``mnist``, ``fashion_mnist``, ``kmnist``, ``cifar10``) under ``root``;
    its official test split is the test set, ``val_fraction`` of its train split the val set."""
    _check_fraction("dataset.val_fraction", val_fraction)
    if name not in TORCHVISION_CLASSES:
        raise ConfigError("dataset.name", f"unknown torchvision dataset {name!r}",
                          f"use one of {', '.join(TORCHVISION_CLASSES)}")
    import torchvision.datasets as tvd  # slow import: only for the datasets that need it

    cls = getattr(tvd, TORCHVISION_CLASSES[name])
    root_path = Path(root).expanduser()
    try:
        parts = [cls(str(root_path), train=t, download=download) for t in (True, False)]
    except Exception as e:  # noqa: BLE001 - torchvision raises RuntimeError / URLError / OSError here
        if not download:
            raise ConfigError("dataset.root", f"{name} is not under {root_path.resolve()} ({e})",
                              f"pass dataset.download=true (needs internet) or dataset.root=DIR "
                              f"where {name} was downloaded before") from None
        raise ConfigError("dataset.download", f"could not download {name} to {root_path.resolve()} "
                          f"({type(e).__name__}: {e}); is this machine offline?",
                          f"download it once on a machine with internet and copy it to "
                          f"{root_path.resolve()}, or use the bundled dataset=digits") from None
    raw = []
    for ds in parts:
        data = torch.as_tensor(np.asarray(ds.data))
        raw.append(data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2).contiguous())
    train, val = split(raw[0], (val_fraction,), split_seed)
    targets = [torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64) for ds in parts]
    labels = labelled([*split(targets[0], (val_fraction,), split_seed), targets[1]])
    classes = [str(c) for c in getattr(parts[0], "classes", [])] or None
    return ImageData(train, val, raw[1], labels=labels, classes=classes)


def load_folder(
    root: str,
    image_size: int = 64,
    channels: int = 3,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    max_memory_mb: float = 2048,
    num_workers: int = 2,
) -> ImageData:
    """The user's own images: every image file under ``root`` (flat or in class sub-folders),
    resized to ``image_size`` x ``image_size`` with ``channels`` 1 (grey) or 3 (RGB).

    Held in memory (and on the training device) when the decoded images fit ``max_memory_mb``;
    streamed from disk by ``num_workers`` DataLoader workers otherwise.
    """
    _check_fraction("dataset.val_fraction", val_fraction)
    _check_fraction("dataset.test_fraction", test_fraction)
    if channels not in (1, 3):
        raise ConfigError("dataset.channels", f"{channels} is not 1 or 3", "use dataset.channels=1 (grey) or 3 (RGB)")
    if image_size < 1:
        raise ConfigError("dataset.image_size", f"{image_size} < 1", "use e.g. dataset.image_size=64")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise ConfigError("dataset.root", f"no folder at {folder.resolve()}",
                          "pass dataset.root=/path/to/your/images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if len(files) < 3:
        raise ConfigError("dataset.root", f"{folder.resolve()} holds {len(files)} images "
                          f"({', '.join(IMAGE_EXTENSIONS)}), too few to split",
                          "point dataset.root at a folder with your images (sub-folders are fine)")
    if num_workers < 0:
        raise ConfigError("dataset.num_workers", f"{num_workers} < 0", "use e.g. dataset.num_workers=2")
    indices = torch.arange(len(files))
    parts = split(indices, (val_fraction, test_fraction), split_seed)
    splits = [ImageFiles([files[i] for i in part], image_size, channels, num_workers) for part in parts]
    if len(files) * channels * image_size**2 <= max_memory_mb * 2**20:
        splits = [s[:] for s in splits]  # decode once, keep as uint8 tensors
    # class sub-folders (root/<class>/image) label the images; a flat folder has no labels
    names = sorted({f.parent.relative_to(folder).parts[0] for f in files if f.parent != folder})
    labels = classes = None
    if names and all(f.parent != folder for f in files):
        index = {n: k for k, n in enumerate(names)}
        target = torch.tensor([index[f.parent.relative_to(folder).parts[0]] for f in files])
        labels, classes = labelled([target[part] for part in parts]), names
    return ImageData(*splits, labels=labels, classes=classes)
