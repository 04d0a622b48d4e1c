"""Checkpoints: written atomically, loaded safely, enough to rebuild a model from a run dir alone.

A checkpoint is a plain dict of tensors and built-in types (the resolved config travels as
plain data), so it loads with ``torch.load(weights_only=True)``: no pickled code runs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from aecli.errors import ConfigError

FORMAT = "aecli-checkpoint-1"


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically: a temp file in the same dir, flushed and fsynced,
    then renamed over ``path``. A crash at any moment leaves the previous file intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def check_fresh_run_dir(run_dir: Path, resume: str | None) -> None:
    """A new run (no ``resume``) must not start in a run dir that already holds a run."""
    if resume is None and (Path(run_dir) / "checkpoints" / "last.pt").exists():
        raise ConfigError("hydra.run.dir", f"{run_dir} already holds a run (checkpoints/last.pt)",
                          "pass resume=auto to continue that run, or drop hydra.run.dir for a new run dir")


def find_checkpoint(path: str | Path, name: str = "last.pt") -> Path:
    """``path`` itself if it is a file, else ``path/checkpoints/<name>`` of a run dir."""
    p = Path(path).expanduser()
    return p if p.is_file() else p / "checkpoints" / name


def load_checkpoint(path: str | Path, key: str = "resume") -> dict[str, Any]:
    """Load and sanity-check an aecli checkpoint; any problem is a ``ConfigError`` naming ``key``."""
    file = find_checkpoint(path)
    if not file.is_file():
        raise ConfigError(key, f"no checkpoint at {file}", "pass a run dir holding checkpoints/last.pt or a .pt file")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickled code: all unreadable to us
        raise ConfigError(key, f"{file} is not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})",
                          "point it at another checkpoint (e.g. checkpoints/best.pt) or start a new run") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(key, f"{file} is not an aecli checkpoint (no '{FORMAT}' marker)",
                          "pass a checkpoint written by aecli")
    return state


def load_model(path: str | Path, name: str = "best.pt") -> torch.nn.Module:
    """Rebuild a trained model from a run dir (its ``checkpoints/<name>``) or a checkpoint file.

    >>> model = load_model("outputs/2026-11-24/10-00-00-123456")   # doctest: +SKIP
    """
    from hydra.utils import instantiate

    file = find_checkpoint(path, name)
    state = load_checkpoint(file, key="path")
    model = instantiate(state["config"]["model"], input_shape=state["input_shape"])
    model.load_state_dict(state["model"])
    return model.eval()
