"""A finished (or interrupted) run, opened for use: ``open_run(RUN_DIR)``.

The commands that measure or use a trained model (``aecli.use.evaluate``, ``aecli.use.encode``, ...)
start here. Everything comes from the run dir as data: the checkpoint is verified
(``aecli.store.checkpoint.read``), its config may name only aecli's own classes and loaders (or the
``trusted_targets`` the caller names), and the model is rebuilt from aecli's registry.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from aecli.components import build, load_data
from aecli.config import saved_config
from aecli.data import ImageData
from aecli.data.vectors import transform_file
from aecli.device import resolve_device
from aecli.errors import ConfigError
from aecli.store import checkpoint, rundir

log = logging.getLogger(__name__)


@dataclass
class TrainedRun:
    """A run dir's trained model (in eval mode, on ``device``), its config and its parts."""

    run_dir: Path
    cfg: DictConfig  # the run's config, as its checkpoint recorded it
    state: dict[str, Any]  # the verified checkpoint
    model: torch.nn.Module
    recon: Any  # the reconstruction loss (its ``output`` turns logits into images)
    noise: Any  # the noise the run trained with
    device: torch.device
    checkpoint_name: str
    _data: ImageData | None = field(default=None, repr=False)

    def data(self, root: str | None = None) -> ImageData:
        """The run's dataset (same splits), on ``device``; ``root``: where the data lies now,
        if it moved since training."""
        if self._data is None:

            cfg = self.cfg
            key = "path" if "path" in cfg.dataset else "root"  # a table or corpus: its file or folder
            if root is not None:
                cfg = OmegaConf.merge(cfg, {"dataset": {key: root}})
            fitted = self.state.get("data_transform")
            if fitted is not None:
                check_transform_copy(self.run_dir, fitted)
            try:
                self._data = load_data(cfg, fitted).to(self.device)
            except ConfigError as e:  # the training key, dataset.root, is the flag --data-root here
                if e.key != f"dataset.{key}":
                    raise
                raise ConfigError("--data-root", e.problem, "pass --data-root DIR: where the run's dataset "
                                  "lies now") from None
        return self._data


def check_transform_copy(run_dir: Path, fitted: dict[str, Any]) -> None:
    """The run dir's JSON copy of the fitted scaler or vocabulary (``scaler.json``,
    ``vocabulary.json``) must be the checkpoint's: an edited copy is refused, since the
    model's inputs would silently change meaning."""
    file = run_dir / transform_file(str(fitted.get("kind")))
    copy, problem = rundir.read_json(file)
    if problem == "missing":
        return
    if problem is not None or copy != fitted:
        raise ConfigError("RUN", f"{file} is not the {fitted.get('kind')} transform the run was trained with "
                          f"({problem or 'its content differs from the checkpoint'})",
                          f"restore {file.name} (the checkpoint holds the original), or delete it to use the "
                          "checkpoint's copy")


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run dirs among ``paths``: each one itself, or (a multirun dir) every job dir in it
    (``aecli.store.rundir.job_dirs``)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "checkpoints").is_dir() or (p / ".hydra").is_dir() and not (p / "multirun.yaml").is_file():
            out.append(p)
            continue
        jobs = rundir.job_dirs(p)
        if not jobs:
            raise ConfigError("RUN", f"{p} is not a run dir (no checkpoints/) nor a multirun dir (no job dirs)",
                              "pass the dir that aecli train printed ('run dir: ...'), or a sweep's dir")
        out.extend(jobs)
    return out


def open_run(path: str | Path, which: str = "best", device: str = "auto",
             trusted_targets: tuple[str, ...] = ()) -> TrainedRun:
    """Open ``path`` (a run dir, or a checkpoint file in one) with its ``best`` checkpoint (the
    model with the best value of the run's ``objective``, by default the validation loss: the one
    its ``metrics.json`` describes) or its ``last``. ``device``: auto | cpu | cuda | mps."""

    if which not in ("best", "last"):
        raise ConfigError("--checkpoint", f"{which!r} is not best or last",
                          "use --checkpoint best or --checkpoint last")
    p = rundir.check_trained(path)
    name = checkpoint.BEST if which == "best" else checkpoint.LAST
    file = checkpoint.find(p, name)
    # best: best.pt, or last.pt where best.pt is stale or there is no validated model yet
    state, file = checkpoint.best_state(file, "RUN") if file.name == checkpoint.BEST \
        else (checkpoint.read(file, key="RUN"), file)
    checkpoint.check_targets(state["config"], trusted_targets, source=str(file), key="RUN")
    target = resolve_device(device, flag="--device")
    model = checkpoint.build_model(state, trusted_targets).to(target)

    cfg = saved_config(state["config"], key="RUN")
    return TrainedRun(file.parent.parent, cfg, state, model, build(cfg, "loss"), build(cfg, "noise"), target, file.name)
