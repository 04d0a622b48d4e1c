"""A folder's images decoded once: the uint8 tensor cached next to the data.

``decoded_folder`` returns every file's decoded image (or its problem), reading what it can
from ``ROOT/.aecli-cache/<size>px-<grey|rgb>.pt`` and decoding the rest in parallel
(``aecli.data.decode``). A file is known by its path under the root, its size and its mtime: a
changed, added or removed file is decoded (or dropped) alone, the others come from the cache.

The cache is data, never trusted blindly: it is read with ``weights_only`` (no code), every
field is checked, and the pixels carry a CRC-32. A damaged or foreign file is ignored with a
warning and rebuilt. A folder that cannot be written (read-only, full) costs only the cache:
the run goes on, warned that the next one decodes again.
"""
from __future__ import annotations

import logging
import os
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aecli.data import decode  # the submodule (this package imports none of its own)
from aecli.errors import ConfigError, RunFailed
from aecli.store.atomic import atomic_write, remove_stale_temps

log = logging.getLogger(__name__)

CACHE_DIR = ".aecli-cache"
FORMAT = "aecli-folder-cache-1"
Record = tuple[str, int, int]  # path under the root (posix), size in bytes, mtime in ns


@dataclass
class Decoded:
    """A folder's files, in order, with each file's problem ("" when it was read)."""

    files: list[Path]
    problems: list[str]
    images: Tensor | None  # uint8 (readable files, C, H, W) in order; None: checked only (streamed)
    decoded: int  # files decoded by this call (the others came from the cache)

    @property
    def readable(self) -> list[Path]:
        return [f for f, p in zip(self.files, self.problems) if not p]


def cache_file(root: Path, size: int, channels: int) -> Path:
    return root / CACHE_DIR / f"{size}px-{'grey' if channels == 1 else 'rgb'}.pt"


def decoded_folder(root: Path, files: list[Path], size: int, channels: int, workers: int,
                   pixels: bool = True, use_cache: bool = True) -> Decoded:
    """``files`` (under ``root``) decoded at ``size`` x ``size`` with ``channels``, through the
    cache when ``use_cache``. ``pixels`` False only checks that each file decodes (a streamed
    dataset): no image is kept."""
    prefix = len(str(root).rstrip(os.sep)) + 1
    records = [_record(str(f), prefix) for f in files]
    path = cache_file(root, size, channels)
    if use_cache:
        for stale in remove_stale_temps(path.parent):
            log.info("removed %s, left by a process killed while writing it", stale)
    cached = _read(path, size, channels) if use_cache and path.is_file() else None
    known: dict[Record, tuple[str, int]] = {}  # record -> (problem, row in the cached images or -1)
    if cached is not None:
        known = dict(zip(zip(cached["names"], cached["sizes"].tolist(), cached["mtimes"].tolist()),
                         zip(cached["problems"], cached["rows"].tolist())))
    # from the cache: unreadable files, and readable ones whose pixels it holds (or need none)
    hits = [r in known and bool(known[r][0] or not pixels or known[r][1] >= 0) for r in records]
    todo = [i for i, hit in enumerate(hits) if not hit]
    start = time.perf_counter()
    new_images, new_problems = _decode(root, [str(files[i]) for i in todo], size, channels, workers, pixels)
    _log_decoding(root, len(files), len(todo), time.perf_counter() - start)
    problems = [known[r][0] if hit else "" for r, hit in zip(records, hits)]
    for i, problem in zip(todo, new_problems):
        problems[i] = problem
    images = None
    if pixels:
        rows = [known[r][1] if hit else -1 for r, hit in zip(records, hits)]
        images = _assemble(problems, rows, todo, new_images, cached, size, channels)
    if use_cache and (todo or cached is None or len(cached["names"]) != len(records)):
        _write(path, records, problems, images, size, channels)
    return Decoded(list(files), problems, images, len(todo))


def _decode(root: Path, paths: list[str], size: int, channels: int, workers: int, keep: bool) -> tuple[Any, list[str]]:
    if not paths:
        return None, []
    try:
        return decode.decode_files(paths, size, channels, decode.usable_workers(workers), keep=keep)
    except decode.DecoderDied as e:
        raise ConfigError("dataset.root", f"a process decoding the images under {root} died ({e}): out of "
                          "memory, or a file that crashes the image decoder",
                          "free memory or lower dataset.num_workers; dataset.num_workers=0 decodes in this "
                          "process") from None


def _record(file: str, prefix: int) -> Record:
    try:
        st = os.stat(file)
    except OSError:  # gone since the folder was listed: decoding it fails and names it
        return file[prefix:].replace(os.sep, "/"), -1, -1
    return file[prefix:].replace(os.sep, "/"), int(st.st_size), int(st.st_mtime_ns)


def _assemble(problems: list[str], rows: list[int], todo: list[int], new_images: Any, cached: dict | None,
              size: int, channels: int) -> Tensor:
    """The readable files' images in order: ``rows`` of the cached images where >= 0, the rest
    from the freshly decoded ones (file ``todo[k]`` is ``new_images[k]``)."""
    readable = [i for i, p in enumerate(problems) if not p]
    out = torch.empty((len(readable), channels, size, size), dtype=torch.uint8)
    fresh = {i: k for k, i in enumerate(todo)}
    for source, pairs in ((cached and cached["images"], [(j, rows[i]) for j, i in enumerate(readable) if rows[i] >= 0]),
                          (new_images, [(j, fresh[i]) for j, i in enumerate(readable) if rows[i] < 0])):
        if pairs:
            dst, src = (torch.tensor(v) for v in zip(*pairs))
            out[dst] = torch.as_tensor(source)[src]
    return out


def _log_decoding(root: Path, total: int, decoded: int, seconds: float) -> None:
    rate = f" in {seconds:.1f} s ({decoded / seconds:.0f} images/s)" if decoded and seconds > 0 else ""
    log.info("%s: %d image files, %d decoded%s, %d from the cache", root, total, decoded, rate, total - decoded)


def _read(path: Path, size: int, channels: int) -> dict | None:
    """The cache at ``path`` when it is intact and made with these settings, else None (warned)."""
    try:
        with zipfile.ZipFile(path) as z:  # every member's CRC-32 (torch checks none): a flipped bit anywhere
            bad = z.testzip()
        problem = f"damaged (the CRC-32 of {bad} does not match)" if bad is not None else ""
        if not problem:
            # mmap: pixels are paged in when used, not copied into memory as a whole first
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            problem = _problem_with(data, size, channels)
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways; each means "rebuild"
        problem = f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if problem:
        log.warning("%s: %s; decoding again", path, problem)
        return None
    return data


def _problem_with(data: Any, size: int, channels: int) -> str:
    """What makes ``data`` unusable as this cache ("" when it is sound)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return "not an aecli folder cache"
    if (data.get("policy"), data.get("size"), data.get("channels")) != (decode.POLICY, size, channels):
        return "made with other settings"
    names, problems = data.get("names"), data.get("problems")
    if not (isinstance(names, list) and isinstance(problems, list) and len(names) == len(problems)
            and all(isinstance(v, str) for v in names + problems)):
        return "damaged (file names)"
    n = len(names)
    if not all(isinstance(data.get(k), Tensor) and data[k].dtype == torch.int64 and data[k].shape == (n,)
               for k in ("sizes", "mtimes", "rows")):
        return "damaged (file records)"
    images, rows = data.get("images"), data["rows"]
    if images is None:
        return "" if bool((rows == -1).all()) else "damaged (rows without images)"
    if not (isinstance(images, Tensor) and images.dtype == torch.uint8 and images.dim() == 4
            and tuple(images.shape[1:]) == (channels, size, size)):
        return "damaged (image tensor)"
    readable = torch.tensor([not p for p in problems], dtype=torch.bool)
    expected = torch.full((n,), -1, dtype=torch.int64)
    expected[readable] = torch.arange(int(readable.sum()))
    if not torch.equal(rows, expected) or len(images) != int(readable.sum()):
        return "damaged (rows)"
    if _crc(images) != data.get("crc32"):
        return "damaged (the images' CRC-32 does not match)"
    return ""


def _crc(images: Tensor) -> int:
    # numpy declares ndarray.__buffer__ only for Python >= 3.12; an ndarray is a buffer on every version
    return zlib.crc32(memoryview(images.contiguous().numpy()).cast("B"))  # type: ignore[arg-type]


def _write(path: Path, records: list[Record], problems: list[str], images: Tensor | None,
           size: int, channels: int) -> None:
    """Write the cache atomically (a temp file renamed); a folder that cannot take it is warned."""
    readable = torch.tensor([not p for p in problems], dtype=torch.bool)
    rows = torch.full((len(records),), -1, dtype=torch.int64)
    if images is not None:
        rows[readable] = torch.arange(int(readable.sum()))
    names, sizes, mtimes = zip(*records) if records else ((), (), ())
    data = {"format": FORMAT, "policy": decode.POLICY, "size": size, "channels": channels,
            "names": list(names), "sizes": torch.tensor(sizes, dtype=torch.int64),
            "mtimes": torch.tensor(mtimes, dtype=torch.int64), "problems": list(problems), "rows": rows,
            "images": images, "crc32": _crc(images) if images is not None else None}

    try:
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, lambda f: torch.save(data, f))
    except (OSError, RunFailed) as e:
        why = e.problem if isinstance(e, RunFailed) else e.strerror or e
        log.warning("could not write the decoded-image cache %s (%s); the next run decodes again "
                    "(dataset.cache=false: do not try)", path, why)
