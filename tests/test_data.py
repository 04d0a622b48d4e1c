"""Datasets: the user's own image folder, torchvision datasets from disk, device batching."""
import numpy as np
import pytest
import torch
from PIL import Image

from aecli.data import ImageData, batches, load_folder, load_torchvision
from aecli.errors import ConfigError


def make_folder(root, n=12, size=(20, 14), mode="RGB"):
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = root / ("cats" if i % 2 else "dogs")
        sub.mkdir(parents=True, exist_ok=True)
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(sub / f"{i}.png")
    return root


def test_folder_dataset_resizes_and_splits(tmp_path):
    make_folder(tmp_path / "imgs")
    data = load_folder(str(tmp_path / "imgs"), image_size=16, channels=1, val_fraction=0.2, test_fraction=0.2)
    assert data.shape == (1, 16, 16)
    assert (len(data.train), len(data.val), len(data.test)) == (8, 2, 2)
    assert data.train.dtype == torch.uint8
    rgb = load_folder(str(tmp_path / "imgs"), image_size=10, channels=3)
    assert rgb.shape == (3, 10, 10)


def test_folder_dataset_missing_or_empty(tmp_path):
    with pytest.raises(ConfigError, match="dataset.root"):
        load_folder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="dataset.root"):
        load_folder(str(tmp_path / "empty"))


def test_torchvision_dataset_is_read_from_disk_without_download(tmp_path):
    """Write a tiny MNIST in torchvision's on-disk format, then load it offline."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def write(name, images):
        n = len(images)
        header = np.array([0x0803, n, 28, 28], dtype=">i4").tobytes()
        (raw / name).write_bytes(header + images.astype(np.uint8).tobytes())
        labels = np.array([0x0801, n], dtype=">i4").tobytes() + bytes(n)
        (raw / name.replace("images-idx3", "labels-idx1")).write_bytes(labels)

    write("train-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)))
    write("t10k-images-idx3-ubyte", rng.integers(0, 256, (5, 28, 28)))
    data = load_torchvision("mnist", root=str(tmp_path), download=False, val_fraction=0.25)
    assert data.shape == (1, 28, 28)
    assert (len(data.train), len(data.val), len(data.test)) == (15, 5, 5)


def test_missing_torchvision_dataset_without_download_names_the_fix(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_torchvision("fashion_mnist", root=str(tmp_path), download=False)
    assert e.value.key == "dataset.root" and "dataset.download=true" in e.value.fix


def test_batches_cover_the_permutation_once():
    raw = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    got = torch.cat([b for _, b in batches(raw, 4, perm)]).flatten()
    assert torch.equal(got, perm.to(torch.uint8))
    assert [i for i, _ in batches(raw, 4, perm, start=1)] == [1, 2]


def test_as_float_scales_by_max_value():
    data = ImageData(torch.full((1, 1, 2, 2), 16, dtype=torch.uint8), torch.zeros(1, 1, 2, 2, dtype=torch.uint8),
                     torch.zeros(1, 1, 2, 2, dtype=torch.uint8), max_value=16.0)
    assert data.as_float(data.train).max().item() == 1.0
