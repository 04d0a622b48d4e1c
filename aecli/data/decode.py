"""Image files to uint8 arrays: aecli's one colour policy, and many files decoded in parallel.

The policy (``decode_image``), for every file of a ``folder`` dataset, in memory or streamed:

- EXIF orientation is applied (a phone photo stands the way it was taken).
- 16-bit and 32-bit integer images (modes ``I;16*``, ``I``: 16-bit PNG and TIFF greys) are
  scaled from 0-65535 to 0-255; 32-bit float images (``F``) are read as 0-1.
- Transparency (RGBA, LA, PA, a palette or colour key with a transparent entry) is composited
  onto black, i.e. colours are premultiplied by their alpha: a fully transparent pixel is black
  whatever colour it hides.
- Palette images (``P``) take their palette's colours; CMYK and YCbCr become RGB.
- ``channels=1``: colour images become grey by ITU-R 601 luma (Pillow's ``L``);
  ``channels=3``: grey images are repeated over R, G and B. A folder may mix both.
- The image is resized (bilinear, antialiased) to ``size`` x ``size``, its aspect ratio not
  kept: crop the images beforehand if shapes differ and distortion matters.

No torch here: worker processes import only numpy and Pillow.
"""
from __future__ import annotations

import concurrent.futures
import io
import multiprocessing
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

POLICY = "aecli-decode-1"  # part of the cache key: change it when the policy above changes
ORIENTATION = 0x0112  # the EXIF tag
CHUNK = 64  # files per task sent to a worker process
MAX_FILE_BYTES = 512 * 2**20  # larger image files are refused unread (a bound on each read)
IN_PROCESS_BELOW = 256  # fewer files than this are decoded in this process (no pool to start)
# forkserver where the platform has it (Linux, macOS), else its default (spawn): never fork,
# since the parent has usually imported torch and started its threads by now, and forking a
# threaded process can deadlock the child (Python 3.12 warns). The server starts once per
# process and forks each worker from a clean interpreter that imports only this module (numpy,
# Pillow) and the parent's __main__ (aecli's entry points import torch lazily; a script of your
# own that loads a folder needs Python's ``if __name__ == "__main__":`` guard, as for any
# forkserver or spawn pool). Measured here, 3,000 64x64 PNGs, torch imported, 2 workers:
# fork 6,300 img/s, forkserver 4,400 (the pool's start), spawn 3,500.
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else None

def read_image_bytes(path: str | Path) -> bytes:
    """The bytes of an image file: only a regular file is read (a FIFO, socket or device named
    like an image would block or never end), and at most ``MAX_FILE_BYTES``. Raises OSError /
    ValueError naming what is wrong."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO without a writer would block in a plain open
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file (a FIFO, socket or device): not read")
        if st.st_size > MAX_FILE_BYTES:
            raise ValueError(f"{st.st_size / 2**20:.0f} MB, over the {MAX_FILE_BYTES // 2**20} MB an image file "
                             "may have")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(MAX_FILE_BYTES + 1)[:MAX_FILE_BYTES]
    finally:
        os.close(fd)


def decode_image(path: str | Path, size: int, channels: int) -> np.ndarray:
    """One image file as a uint8 array (channels, size, size), by the module's colour policy.

    Raises whatever Pillow raises for a file it cannot read (truncated, not an image, ...), and
    ``read_image_bytes``'s refusals (not a regular file, too large).
    """
    try:
        opened = Image.open(io.BytesIO(read_image_bytes(path)))
    except UnidentifiedImageError:  # Pillow would name the in-memory buffer, not the file
        raise UnidentifiedImageError(f"cannot identify image file {str(path)!r}") from None
    with opened as img:
        if img.format == "JPEG":
            img.draft(None, (size, size))  # libjpeg decodes at 1/2, 1/4 or 1/8 scale: fewer pixels to resize
        img.load()  # a truncated or damaged file raises here, not later
        if img.getexif().get(ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(img)
        img = _to_8_bit(img)
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
            img = _on_black(img)
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _to_8_bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float images as 8-bit grey (``convert("L")`` would clip them)."""
    if img.mode.startswith("I"):
        wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L")
    if img.mode == "F":
        return Image.fromarray(np.round(np.clip(np.asarray(img), 0.0, 1.0) * 255).astype(np.uint8), "L")
    return img


def _on_black(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    out = Image.new("RGB", rgba.size)
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def decode_chunk(paths: Sequence[str], size: int, channels: int, keep: bool = True) -> tuple[np.ndarray, list[str]]:
    """Decode ``paths``: their images (N, C, size, size), zeros where a file failed (none kept
    unless ``keep``), and for each file its problem ("" when it was read)."""
    out = np.zeros((len(paths) if keep else 0, channels, size, size), dtype=np.uint8)
    problems = []
    for i, path in enumerate(paths):
        try:
            image = decode_image(path, size, channels)
            if keep:
                out[i] = image
            problems.append("")
        except Exception as e:  # noqa: BLE001 - any failure to decode marks the file unreadable
            problems.append(f"{type(e).__name__}: {e}" if not str(e) else str(e))
    return out, problems


def decode_files(paths: Sequence[str], size: int, channels: int, workers: int,
                 progress: bool | None = None, keep: bool = True) -> tuple[np.ndarray, list[str]]:
    """Decode many files: images (N, C, size, size) in ``paths``' order (zeros for unreadable
    files; none unless ``keep``: a check that each file decodes) and each file's problem (""
    when read). ``workers`` processes share the work (0: this process); a tqdm bar shows
    progress (``progress`` None: on a terminal only).

    Processes rather than threads: decoding small files is mostly Python-level work that holds
    the GIL (5,000 64x64 PNGs here: 2 threads 2,700 images/s, one thread 3,600, 2 processes 5,600).
    """
    from tqdm.auto import tqdm

    images = np.empty((len(paths) if keep else 0, channels, size, size), dtype=np.uint8)
    problems: list[str] = []
    chunks = [list(paths[i : i + CHUNK]) for i in range(0, len(paths), CHUNK)]
    bar = tqdm(total=len(paths), desc="decoding images", unit="img", leave=False,
               disable=None if progress is None else not progress)
    with bar:
        args = (chunks, [size] * len(chunks), [channels] * len(chunks), [keep] * len(chunks))
        results = map(decode_chunk, *args)
        pool = None
        if workers > 0 and len(paths) >= IN_PROCESS_BELOW:
            pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(chunks)),
                                                          mp_context=decode_context())
            results = pool.map(decode_chunk, *args)
        try:
            start = 0
            for block, chunk_problems in results:
                if keep:
                    images[start : start + len(block)] = block
                problems.extend(chunk_problems)
                start += len(chunk_problems)
                bar.update(len(chunk_problems))
        except concurrent.futures.process.BrokenProcessPool as e:
            raise DecoderDied(str(e)) from None
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    return images, problems


def decode_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context the decoding workers start in (``START_METHOD``)."""
    return multiprocessing.get_context(START_METHOD)


class DecoderDied(RuntimeError):
    """A decoding process was killed: out of memory, or a file that crashes an image decoder."""


def usable_workers(requested: int) -> int:
    """``requested`` decoding processes, at most the cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(requested, cores))
