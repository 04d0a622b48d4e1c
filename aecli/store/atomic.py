"""Every file aecli writes goes through ``atomic_write``: a temp file in the same dir, flushed
and fsynced, then renamed over the target, so a crash leaves the old file whole; temp files
of dead writers are found by ``remove_stale_temps``."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def temp_name(path: Path) -> Path:
    """Where ``save`` writes before the rename: a hidden file in the same dir."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temp files left by a process killed mid-write (the caller holds the run dir's
    lock, so no other process is writing them)."""
    stale = sorted(Path(directory).glob(".*.tmp")) if Path(directory).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` through ``write(binary file)`` into a temp file in the same dir, flushed and
    fsynced, then renamed over ``path``: a crash at any moment leaves the old file whole."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:  # a full disk, a read-only dir, Ctrl-C: drop the partial temp file
        tmp.unlink(missing_ok=True)
        raise
