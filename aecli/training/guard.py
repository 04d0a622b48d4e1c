"""Hydra callbacks (registered under ``hydra.callbacks`` in ``conf/train.yaml``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from aecli.errors import AecliError
from aecli.training.distributed import WORLD

PLANS: dict[Path, Any] = {}  # run dir -> aecli.training.plan.Plan, from RunGuard to the task


class Refused(BaseException):
    """Carries a refusal out of a Hydra callback to ``aecli.training.app.main`` (Hydra turns a
    callback's ``Exception`` into a warning and carries on)."""

    def __init__(self, error: AecliError) -> None:
        super().__init__(str(error))
        self.error = error


class RunGuard(Callback):
    """Before a single run's dir is created or ``.hydra/`` written: every check that can refuse
    the run (``aecli.training.plan.prepare``), and the run dir's lock. A refused run leaves nothing
    behind. A resumed run keeps the ``.hydra/`` of the run it continues (its original command
    and overrides), which Hydra would otherwise overwrite with the resume command's."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # the checks import torch (checkpoints): here, when a run starts, so that Hydra's --help,
        # which builds this callback too, answers before torch loads
        from aecli.training.plan import prepare

        run_dir = Path(config.hydra.run.dir).absolute()
        overrides = list(config.hydra.overrides.task)
        error = None
        try:
            plan = prepare(config, run_dir, overrides, follower=not WORLD.main)  # DDP: rank 0 checks, locks
        except AecliError as e:
            error = e
        if WORLD.distributed:  # every rank learns rank 0's verdict
            error = WORLD.broadcast(error if WORLD.main else None) or error
        if error is not None:
            raise Refused(error)
        PLANS[run_dir] = plan
        if plan.resuming or plan.cfg.get("resume") not in (None, "auto"):  # keep its .hydra/
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = None
