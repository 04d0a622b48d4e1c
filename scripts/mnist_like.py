"""Write an MNIST-sized dataset in torchvision's on-disk format, offline: the bundled 8x8 digits
upsampled to 28x28 and tiled to 60,000 train / 10,000 test images (with their labels). For
timing full-size epochs where MNIST cannot be downloaded (the GPU machine has no internet):

    python scripts/mnist_like.py DATA_ROOT
    python -m aecli.train experiment=mnist_vae dataset.root=DATA_ROOT dataset.download=false
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aecli.data import load_digits


def write(raw: Path, name: str, images: np.ndarray, labels: np.ndarray) -> None:
    n = len(images)
    (raw / f"{name}-images-idx3-ubyte").write_bytes(np.array([0x0803, n, 28, 28], ">i4").tobytes() + images.tobytes())
    (raw / f"{name}-labels-idx1-ubyte").write_bytes(np.array([0x0801, n], ">i4").tobytes() + labels.tobytes())


def main(root: str) -> None:
    d = load_digits(val_fraction=0.01, test_fraction=0.01)
    images = torch.cat([d.train, d.val, d.test]).float() * (255.0 / d.max_value)
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False).round().clamp(0, 255)
    images = images.to(torch.uint8)[:, 0].numpy()
    labels = torch.cat([d.labels["train"], d.labels["val"], d.labels["test"]]).numpy().astype(np.uint8)
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", 60_000), ("t10k", 10_000)):
        index = np.arange(n) % len(images)
        write(raw, name, np.ascontiguousarray(images[index]), np.ascontiguousarray(labels[index]))
    print(f"wrote {raw}")


if __name__ == "__main__":
    main(sys.argv[1])
