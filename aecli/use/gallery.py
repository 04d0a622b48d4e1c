"""Your own collection to search: ``aecli search RUN --gallery PATH`` (a folder of images, a table
file, a corpus), encoded once and cached by content, and exact nearest neighbours by chunked
matrix products (``nearest``) on the run's device.

The cache key is the SHA-256 of the model's checkpoint and of every gallery file's bytes, so an
edited file or another model encodes again; the codes lie in ``.aecli-cache/`` next to the
gallery (in it, for a folder), or in ``--out``.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from aecli.data import sources, vectors
from aecli.errors import ConfigError
from aecli.store.atomic import atomic_write
from aecli.use import inference
from aecli.use.trained import TrainedRun

CHUNK = 262_144  # gallery codes per matrix product: 32-dim fp32 codes, 32 MB a chunk


@dataclass
class Gallery:
    """The gallery's item names and their codes, unit length, (N, latent_dim) on the run's device."""

    names: list[str]
    codes: Tensor
    cache: Path
    cached: bool  # read from the cache (nothing encoded)


def files_of(run: TrainedRun, path: Path) -> list[Path]:
    """The files whose bytes make up the gallery: a folder's (images, or .txt documents), or the one file."""
    if not path.exists():
        raise ConfigError("--gallery", f"no file or folder at {path}", "pass a folder of images, a table or a corpus")
    if path.is_file():
        return [path]
    if (run.state.get("data_transform") or {}).get("kind") == "text":
        return sources.image_files(path, extensions=(".txt",))  # a corpus: its documents
    return inference.image_files(path, "--gallery")


def content_key(run: TrainedRun, files: list[Path], root: Path) -> str:
    """SHA-256 over the checkpoint's bytes and each gallery file's name and bytes."""
    digest = hashlib.sha256((run.run_dir / "checkpoints" / run.checkpoint_name).read_bytes())
    for f in files:
        digest.update(str(f.relative_to(root) if f != root else f.name).encode() + b"\0")
        digest.update(hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()[:32]


def encoded(run: TrainedRun, path: Path, out: Path | None) -> Gallery:
    """The gallery's codes: from the cache when the model and the files are the ones cached, else
    encoded now (images as the model takes them; a table or corpus through the run's transform) and cached."""
    files = files_of(run, path)
    root = path if path.is_dir() else path.parent
    cache_dir = out if out is not None else root / ".aecli-cache"
    cache = cache_dir / f"codes-{content_key(run, files, root)}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            return Gallery([str(n) for n in stored["names"]], torch.from_numpy(stored["codes"]).to(run.device),
                           cache, True)
    fitted = run.state.get("data_transform")
    if fitted is not None:
        names, items = vectors.read_items(fitted, path, run.cfg.dataset.get("text_column", "text"))
    else:
        kept, items = inference.read_images(files, run.model.input_shape)
        names = [str(f.relative_to(root)) for f in kept]
    if not names:
        raise ConfigError("--gallery", f"nothing in {path} that this model takes", "pass the kind of items it "
                          "was trained on (images, a table's rows, documents)")
    codes = F.normalize(inference.codes(run, items, 1.0).float(), dim=1)
    buffer = io.BytesIO()
    np.savez(buffer, names=np.array(names), codes=codes.cpu().numpy())
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(cache, lambda f: f.write(buffer.getvalue()))
    return Gallery(names, codes, cache, False)


@torch.no_grad()
def nearest(codes: Tensor, query: Tensor, k: int, chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """The ``k`` rows of unit-length ``codes`` most cosine-similar to ``query`` (one code): exact,
    a chunk of rows per matrix product, the running top ``k`` kept; (similarities, indices)."""
    q = F.normalize(query.reshape(1, -1).to(codes.device, codes.dtype), dim=1)
    best_v = torch.empty(0, device=codes.device)
    best_i = torch.empty(0, dtype=torch.long, device=codes.device)
    for start in range(0, len(codes), chunk):
        sims = (codes[start : start + chunk] @ q.T).squeeze(1)
        top = sims.topk(min(k, len(sims)))
        values, indices = torch.cat([best_v, top.values]), torch.cat([best_i, top.indices + start])
        keep = values.topk(min(k, len(values)))
        best_v, best_i = keep.values, indices[keep.indices]
    return best_v, best_i
