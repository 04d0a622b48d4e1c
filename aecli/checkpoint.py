"""Checkpoints: written atomically, loaded safely, enough to rebuild a model from a run dir alone.

A checkpoint is a plain dict of tensors and built-in types (the resolved config travels as
plain data), so it loads with ``torch.load(weights_only=True)``: no pickled code runs.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from aecli import faults
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
            faults.in_checkpoint_write(str(path))
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException:  # a full disk, a read-only dir, Ctrl-C: drop the partial temp file
        tmp.unlink(missing_ok=True)
        raise


# What must be equal for a checkpoint to continue under a config (the rest, e.g. trainer.epochs,
# the device or the data's location, may change between the interrupted and the resumed run).
RESUME_KEYS = ("model", "dataset", "loss", "noise", "optim", "seed", "trainer.batch_size")
MAY_DIFFER = ("dataset.root", "dataset.download")


def check_fresh_run_dir(run_dir: Path, resume: str | None) -> None:
    """A new run (no ``resume``) must not start in a run dir that already holds a run."""
    if resume is None and (Path(run_dir) / "checkpoints" / "last.pt").exists():
        raise ConfigError("hydra.run.dir", f"{run_dir} already holds a run (checkpoints/last.pt)",
                          "pass resume=auto to continue that run, or drop hydra.run.dir for a new run dir")


def check_writable(run_dir: Path) -> None:
    """The run dir (or, before it exists, its nearest existing parent) must be writable."""
    p = Path(run_dir).absolute()
    while not p.exists():
        p = p.parent
    if not os.access(p, os.W_OK):
        raise ConfigError("hydra.run.dir", f"{p} is not writable", "choose a writable hydra.run.dir "
                          "(or fix the permissions / free the disk), then run again")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def config_mismatches(current: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """``key: value here, value in the checkpoint`` for every resume-relevant difference."""
    a, b = _flatten(current), _flatten(saved)
    relevant = sorted(k for k in set(a) | set(b) if k not in MAY_DIFFER
                      and any(k == r or k.startswith(r + ".") for r in RESUME_KEYS))
    return [f"{k}: {a.get(k)!r} here, {b.get(k)!r} in the checkpoint" for k in relevant if a.get(k) != b.get(k)]


def plain_config(cfg: Any) -> dict[str, Any]:
    """The run's config as plain data (resolved, without Hydra's own ``hydra`` node)."""
    return {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in cfg.items() if k != "hydra"}


def resolve_resume(resume: str | None, run_dir: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint state a run continues from (None: a fresh run), after checking that the
    checkpoint is readable, aecli's, and made under a matching ``config``."""
    run_dir = Path(run_dir)
    if resume is None:
        check_fresh_run_dir(run_dir, resume)
        return None
    if resume == "auto":
        file = run_dir / "checkpoints" / "last.pt"
        if not file.exists():
            return None  # first start of a requeue-able job
    else:
        file = find_checkpoint(resume)
    state = load_checkpoint(file)
    diffs = config_mismatches(config, state.get("config", {}))
    if diffs:
        overrides_file = file.parent.parent / ".hydra" / "overrides.yaml"
        overrides = ""
        if overrides_file.is_file():
            kept = [o for o in OmegaConf.load(overrides_file) if not str(o).startswith("resume=")]
            overrides = f" (that run's overrides: {' '.join(map(str, kept)) or 'none'})"
        raise ConfigError("resume", f"the config does not match {file}: " + "; ".join(diffs[:6]),
                          f"resume with the same model, data, loss, noise and optimizer settings as the "
                          f"original run{overrides}, or start a new run without resume")
    return state


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from (python, numpy, torch, CUDA), as checkpoint-safe data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state(),
                             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
