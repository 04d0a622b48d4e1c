"""Datasets as uint8 image tensors (N, C, H, W), split into train / val / test.

Every loader here is a ``_target_`` of the ``dataset`` config group and returns ``ImageData``.
Training holds the tensors on the training device and slices batches from them
(``batches``); the uint8 -> float conversion happens per batch, on the device. A ``folder``
too large for ``dataset.max_memory_mb`` is streamed instead: its splits are ``ImageFiles``,
decoded by DataLoader workers into pinned memory, batch by batch.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from aecli.data.cache import decoded_folder
from aecli.data.decode import decode_image
from aecli.errors import ConfigError, printable

log = logging.getLogger(__name__)

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

        try:
            array = decode_image(self.files[index], self.image_size, self.channels)
        except Exception as e:  # checked when the dataset was loaded: the file changed since
            raise OSError(f"{self.files[index]}: cannot be read any more ({e})") from e
        return torch.from_numpy(array.copy())


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
    files: dict[str, list[Path]] | None = None  # a folder dataset: each split's image files, aligned
    # vectors (``aecli.data.vectors``): "table" or "text", float32 (N, D) splits, max_value 1
    kind: str = "image"
    transform: dict[str, Any] | None = None  # the fitted scaler / vocabulary, plain data (sealed)
    features: list[str] | None = None  # feature k's name (a column, a word)
    names: dict[str, list[str]] | None = None  # per split, each item's name (a document's file)

    @property
    def shape(self) -> tuple[int, ...]:
        """(channels, height, width) of one image; (D,) of one vector."""
        return tuple(int(s) for s in self.train.shape[1:])

    @property
    def images(self) -> bool:
        """Whether items are images (grids, PNGs, SSIM apply) rather than vectors."""
        return self.kind == "image"

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
        """A raw batch as float32 in [0, 1] (vectors: as they are, already transformed)."""
        x = raw.to(torch.float32)
        return x if self.max_value == 1.0 else x.mul_(1.0 / self.max_value)


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
    parts, start = [], 0
    for size in split_sizes(n, fractions):
        parts.append(images[perm[start : start + size]])
        start += size
    return parts


def split_sizes(n: int, fractions: tuple[float, ...]) -> list[int]:
    """The part sizes ``split`` cuts ``n`` items into: ``round(f * n)`` for each fraction (never
    0: no empty val or test set), and the remainder first."""
    sizes = [max(1, round(f * n)) for f in fractions]
    return [n - sum(sizes), *sizes]


def labelled(labels: list[Tensor] | None) -> dict[str, Tensor] | None:
    """Per-split labels (train, val, test) as ``ImageData.labels``."""
    return None if labels is None else dict(zip(("train", "val", "test"), (t.to(torch.int64) for t in labels)))


def keep_classes(data: ImageData, classes: list[int] | None) -> ImageData:
    """``data`` with its train and val splits cut to the labels in ``classes`` (``dataset.classes``;
    None: every class). The test split keeps every class, so the reconstruction error of a model
    trained on some classes can be measured against the held-out ones (``aecli.use.score``)."""
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
    names = data.names and {**data.names, **{s: [data.names[s][i] for i in
                                                 torch.isin(data.labels[s], wanted).nonzero().squeeze(1).tolist()]
                                             for s in ("train", "val")}}
    return replace(data, **cut, labels=labels, names=names)


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
    on_bad_image: str = "skip",
    cache: bool = True,
) -> ImageData:
    """The user's own images: every image file under ``root`` (flat or in class sub-folders;
    hidden files and folders left out), decoded by ``aecli.data.decode``'s colour policy to
    ``image_size`` x ``image_size`` with ``channels`` 1 (grey) or 3 (RGB).

    Files that cannot be read are left out with a warning naming them
    (``on_bad_image=fail``: refused instead). ``num_workers`` processes decode the files; with
    ``cache`` the decoded images are kept in ``root/.aecli-cache/`` for the next run
    (``aecli.data.cache``). Held in memory (and on the training device) when they fit
    ``max_memory_mb``; streamed from disk by ``num_workers`` DataLoader workers otherwise.
    """
    _check_fraction("dataset.val_fraction", val_fraction)
    _check_fraction("dataset.test_fraction", test_fraction)
    on_bad_image = getattr(on_bad_image, "value", on_bad_image)
    if on_bad_image not in ("skip", "fail"):
        raise ConfigError("dataset.on_bad_image", f"{on_bad_image!r} is not skip or fail",
                          "use dataset.on_bad_image=skip (leave unreadable files out, warned) or fail")
    if channels not in (1, 3):
        raise ConfigError("dataset.channels", f"{channels} is not 1 or 3", "use dataset.channels=1 (grey) or 3 (RGB)")
    if image_size < 1:
        raise ConfigError("dataset.image_size", f"{image_size} < 1", "use e.g. dataset.image_size=64")
    if num_workers < 0:
        raise ConfigError("dataset.num_workers", f"{num_workers} < 0", "use e.g. dataset.num_workers=2")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise ConfigError("dataset.root", f"no folder at {folder.resolve()}",
                          "pass dataset.root=/path/to/your/images (with ~: dataset.root=$HOME/...)")
    files = image_files(folder)
    _check_count(folder, len(files), "")

    streamed = len(files) * channels * image_size**2 > max_memory_mb * 2**20
    decoded = decoded_folder(folder, files, image_size, channels, num_workers, pixels=not streamed, use_cache=cache)
    _report_unreadable(folder, decoded.files, decoded.problems, on_bad_image)
    readable = decoded.readable
    _check_count(folder, len(readable), f" readable ({len(files) - len(readable)} unreadable)")
    parts = split(torch.arange(len(readable)), (val_fraction, test_fraction), split_seed)
    _warn_if_small(folder, [len(p) for p in parts])
    if streamed:
        splits = [ImageFiles([readable[i] for i in part], image_size, channels, num_workers) for part in parts]
    else:
        splits = [decoded.images[part] for part in parts]
    files_of = {name: [readable[i] for i in part] for name, part in zip(("train", "val", "test"), parts)}
    return ImageData(*splits, **_class_labels(folder, readable, parts), files=files_of)


def image_files(folder: Path, extensions: tuple[str, ...] | None = IMAGE_EXTENSIONS,
                skip: Path | None = None) -> list[Path]:
    """The files under ``folder`` with one of ``extensions`` (None: every file, for commands
    that name each file they cannot read), sorted; names starting with '.' (hidden files,
    macOS's ``._*`` companions, aecli's own cache) are left out, and so is the folder ``skip``
    (an output folder inside the input one)."""
    skipped = os.path.realpath(skip) if skip is not None else None
    found = []  # strings, not Paths, while walking: pathlib costs 60 us a file (0.3 s for 5,000)
    for top, dirs, names in os.walk(folder, onerror=lambda e: log.warning("cannot list %s (%s): its images "
                                                                          "are left out", e.filename, e.strerror)):
        dirs[:] = [d for d in dirs if not d.startswith(".")
                   and (skipped is None or os.path.realpath(os.path.join(top, d)) != skipped)]
        found += [os.path.join(top, n) for n in names
                  if not n.startswith(".") and (extensions is None or os.path.splitext(n)[1].lower() in extensions)]
    return sorted(Path(f) for f in found)  # the order of Paths (by parts), as before: the same splits


def _check_count(folder: Path, n: int, what: str) -> None:
    if n < 3:
        raise ConfigError("dataset.root", f"{folder.resolve()} holds {n}{what} image files "
                          f"({', '.join(IMAGE_EXTENSIONS)}), too few to split into train, val and test",
                          "point dataset.root at a folder with your images (sub-folders are fine)")


def _report_unreadable(folder: Path, files: list[Path], problems: list[str], on_bad_image: str) -> None:
    """Warn about the files that could not be read, or refuse them (``on_bad_image=fail``)."""
    bad = [(f.relative_to(folder), p) for f, p in zip(files, problems) if p]
    if not bad:
        return
    shown = "; ".join(printable(f"{f} ({p})") for f, p in bad[:10])
    shown += f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
    folder = Path(printable(folder.resolve()))
    if on_bad_image == "fail":
        raise ConfigError("dataset.root", f"{len(bad)} of {len(files)} image files under {folder} "
                          f"cannot be read: {shown}",
                          "replace or delete those files, or pass dataset.on_bad_image=skip to leave them out")
    log.warning("dataset.root: %d of %d image files under %s cannot be read and are left out: %s "
                "(dataset.on_bad_image=fail refuses them instead)", len(bad), len(files), folder, shown)


SMALL_SPLIT = 20  # fewer val or test images than this: their metrics are mostly noise


def _warn_if_small(folder: Path, sizes: list[int]) -> None:
    if min(sizes[1:]) < SMALL_SPLIT:
        log.warning("dataset.root: %s holds only %d usable images: %d train, %d val, %d test; a val or test "
                    "set under %d images gives noisy metrics (add images, or raise dataset.val_fraction "
                    "and dataset.test_fraction)", folder.resolve(), sum(sizes), *sizes, SMALL_SPLIT)


def _class_labels(folder: Path, files: list[Path], parts: list[Tensor]) -> dict:
    """Class sub-folders (root/<class>/image) label the images; a flat folder has none."""
    names = sorted({f.parent.relative_to(folder).parts[0] for f in files if f.parent != folder})
    if not names or any(f.parent == folder for f in files):
        return {}
    index = {n: k for k, n in enumerate(names)}
    target = torch.tensor([index[f.parent.relative_to(folder).parts[0]] for f in files])
    return {"labels": labelled([target[part] for part in parts]), "classes": names}


def load_sample_patches(patch_size: int = 32, patches: int = 6000, val_fraction: float = 0.1,
                        test_fraction: float = 0.1, split_seed: int = 0) -> ImageData:
    """Colour patches from scikit-learn's two sample photos (427x640 RGB each), offline.

    Each photo is cut into square blocks of twice ``patch_size``; the blocks are split into
    train / val / test (seeded by ``split_seed``) and each split's share of ``patches`` are
    random crops inside its own blocks, so no two splits share a pixel. Labels: the photo.
    """
    _check_fraction("dataset.val_fraction", val_fraction)
    _check_fraction("dataset.test_fraction", test_fraction)
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    photos = [torch.tensor(p).permute(2, 0, 1) for p in bunch.images]  # (3, 427, 640) uint8
    block = 2 * patch_size
    corners = [(k, y, x) for k, p in enumerate(photos)
               for y in range(0, p.shape[1] - block + 1, block) for x in range(0, p.shape[2] - block + 1, block)]
    if patch_size < 1 or len(corners) < 3:
        raise ConfigError("dataset.patch_size", f"{patch_size} px: the photos hold {len(corners)} blocks of "
                          f"{block} px, too few to split", "use a patch_size from 1 to 213, e.g. dataset.patch_size=32")
    fractions = (val_fraction, test_fraction)
    gen = torch.Generator().manual_seed(split_seed)
    images, labels = [], []
    for blocks, count in zip(split(torch.tensor(corners), fractions, split_seed), split_sizes(patches, fractions)):
        pick = blocks[torch.randint(len(blocks), (count,), generator=gen)]
        dy, dx = (torch.randint(block - patch_size + 1, (count,), generator=gen) for _ in range(2))
        images.append(torch.stack([photos[k][:, y : y + patch_size, x : x + patch_size]
                                   for k, y, x in zip(pick[:, 0].tolist(), (pick[:, 1] + dy).tolist(),
                                                      (pick[:, 2] + dx).tolist())]))
        labels.append(pick[:, 0])
    return ImageData(*images, labels=labelled(labels), classes=[Path(f).stem for f in bunch.filenames])

