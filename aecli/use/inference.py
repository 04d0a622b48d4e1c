"""A trained model over many images, batch by batch, without gradients: codes, reconstructions,
per-image reconstruction errors; and the user's own image files, read as the model takes them."""
from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from aecli.data import ImageFiles, batches, sources
from aecli.errors import ConfigError
from aecli.models import HasDiscreteCodes
from aecli.use.commandline import progress, warn
from aecli.use.trained import TrainedRun

BATCH = 1024


def float_batches(run: TrainedRun, images: Tensor | ImageFiles, max_value: float, desc: str,
                  indices: Tensor | None = None, batch: int = BATCH) -> Iterator[Tensor]:
    """``images`` (a split's raw uint8 images, or floats with ``max_value`` 1), all of them or
    those at ``indices``, in order, as float batches in [0, 1] on the run's device, with a
    progress bar. Scaled as ``ImageData.as_float`` scales them for training (by the reciprocal),
    so a model sees the same inputs bit for bit."""
    order = torch.arange(len(images)) if indices is None else torch.as_tensor(indices)
    for _, b in progress(batches(images, batch, order.to(run.device)), -(-len(order) // batch), desc):
        yield b.to(run.device, torch.float32) * (1.0 / max_value)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's RNG seeded for one measurement (the same noise, the same samples every time),
    and put back afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def pick(images: Tensor | ImageFiles, indices: Sequence[int] | Tensor, device: torch.device) -> Tensor:
    """The raw images at ``indices`` of a split (held, or streamed from files) as one batch on ``device``."""
    if isinstance(images, Tensor):
        return images[torch.as_tensor(indices, device=images.device)].to(device)
    return torch.stack([images[int(i)] for i in indices]).to(device)


@torch.no_grad()
def codes(run: TrainedRun, images: Tensor | ImageFiles, max_value: float, indices: Tensor | None = None,
          batch: int = BATCH) -> Tensor:
    """``model.encode`` of every image (or those at ``indices``; a VAE's posterior mean):
    (N, latent_dim) on the device."""
    return torch.cat([run.model.encode(x) for x in float_batches(run, images, max_value, "encoding", indices, batch)])


@torch.no_grad()
def code_indices(run: TrainedRun, images: Tensor | ImageFiles, max_value: float) -> Tensor:
    """A VQ-VAE's codebook index of each code vector of every image (``HasDiscreteCodes``):
    (N, codes) int64 on the CPU."""
    model = run.model
    assert isinstance(model, HasDiscreteCodes), "callers ask the model first"
    return torch.cat([model.code_indices(x).cpu() for x in float_batches(run, images, max_value, "indexing")])


@torch.no_grad()
def errors(run: TrainedRun, images: Tensor | ImageFiles, max_value: float) -> Tensor:
    """Each image's reconstruction error: the mean squared error per pixel of
    ``model.reconstruct`` (data in [0, 1]), (N,) on the CPU."""
    out = [(run.model.reconstruct(x, run.recon) - x).pow(2).flatten(1).mean(1)
           for x in float_batches(run, images, max_value, "scoring")]
    return torch.cat(out).cpu()


@torch.no_grad()
def feature_errors(run: TrainedRun, items: Tensor | ImageFiles, max_value: float) -> Tensor:
    """Each item's squared reconstruction error per feature (vectors: a table's columns),
    (N, D) on the CPU; its mean over features is ``errors``."""
    return torch.cat([(run.model.reconstruct(x, run.recon) - x).pow(2).flatten(1).cpu()
                      for x in float_batches(run, items, max_value, "scoring")])


def image_files(folder: Path, key: str, skip: Path | None = None) -> list[Path]:
    """The image files under ``folder`` as a folder dataset lists them (``aecli.data.sources.image_files``:
    by extension), ``skip``'s contents left out; the other files are counted in one note (each
    image file that cannot be read is named when read). No folder there is a ``ConfigError`` naming ``key``."""
    if not folder.is_dir():
        raise ConfigError(key, f"no folder at {folder}", "pass a folder that holds your images")
    images = sources.image_files(folder, skip=skip)
    others = len(sources.image_files(folder, extensions=None, skip=skip)) - len(images)
    if others:
        print(f"left out {others} file(s) in {folder} that are no images by their extension "
              f"({', '.join(sources.IMAGE_EXTENSIONS)})", file=sys.stderr)
    return images


def read_images(files: list[Path], shape: tuple[int, ...]) -> tuple[list[Path], Tensor]:
    """The files that are images, converted to the model's channels and resized to its (H, W)
    (``aecli.data.ImageFiles``, as a folder dataset is read), as floats in [0, 1]; each file
    that cannot be read is named in a warning and skipped."""
    from PIL import Image

    channels, size = shape[0], shape[1]
    decode = ImageFiles(files, size, channels)
    kept, images = [], []
    for i, f in enumerate(files):
        try:
            images.append(decode[i])
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            warn(f"skipped {f}: not a readable image ({type(e).__name__}: {str(e)[:100]})")
            continue
        kept.append(f)
    if not images:
        return [], torch.empty(0, *shape)
    return kept, torch.stack(images).float() / 255.0


def read_image(file: Path, shape: tuple[int, ...], key: str) -> Tensor:
    """One image file as ``read_images`` reads it, (1, C, H, W); an unreadable file is a ``ConfigError``."""
    from PIL import Image

    try:
        return ImageFiles([file], shape[1], shape[0])[0][None].float() / 255.0
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ConfigError(key, f"cannot read {file} as an image ({type(e).__name__}: {str(e)[:100]})",
                          "pass a test image's index or an image file (PNG, JPEG, ...)") from None
