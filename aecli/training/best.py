"""The best model, by the run's ``objective``: the one component that decides what "best" is.

``objective`` (default ``val/loss_<unit>``) names a validation metric; after each validation
``BestModel.update`` compares it with the best so far (``psnr_db`` higher, every other metric
lower) and records the step in the ``TrainState`` (``best_step``, ``best_val``: checkpointed,
so a resume goes on comparing against the same best). Everything else asks it:

- the checkpointing hook writes ``best.pt`` when ``holds`` (the model being trained is the
  best), and ``repair`` rewrites a ``best.pt`` that a crash left older than ``last.pt`` says;
- ``finish`` evaluates ``load_best``'s model on every split for ``metrics.json``, and returns
  that model's objective to the sweepers;
- the read side (``aecli.store.checkpoint.best_state``, used by ``load_model`` and the use
  commands) trusts the ``best_step`` that ``last.pt`` records, which is this component's.
"""
from __future__ import annotations

import logging
import math
import shlex
from pathlib import Path
from typing import Any

import torch

from aecli.errors import ConfigError, RunFailed
from aecli.store import checkpoint
from aecli.training.state import TrainState

log = logging.getLogger("aecli")

HIGHER_IS_BETTER = ("psnr_db",)  # metric names (endings) that are maximised; every other is minimised


class BestModel:
    """Monitors ``objective`` (a ``val/`` metric; None: ``val/loss_<unit>``) and its direction."""

    def __init__(self, objective: str | None, unit: str) -> None:
        self.key = objective or f"val/loss_{unit}"
        if not self.key.startswith("val/"):
            raise ConfigError("objective", f"{self.key} is not a validation metric, so it cannot choose the best "
                              "model (the test set must not, and the training set's numbers are noisy)",
                              f"use a val/ key, e.g. val/loss_{unit}, val/mse_per_pixel or val/psnr_db")
        self.metric = self.key.removeprefix("val/")
        self.maximize = self.metric.endswith(HIGHER_IS_BETTER)

    def check(self, val: dict[str, float]) -> None:
        """Refuse an objective that the validation does not measure (``val``: one validation's
        metrics, e.g. of one image before training starts)."""
        if self.metric not in val:
            raise ConfigError("objective", f"{self.key} is not a validation metric of this run",
                              f"use one of: {', '.join('val/' + k for k in sorted(val))}")

    def better(self, value: float, than: float) -> bool:
        return value > than if self.maximize else value < than

    def update(self, state: TrainState, val: dict[str, float]) -> bool:
        """After a validation at ``state.step``: True (and recorded in ``state``) if it is the best so far."""
        self.check(val)
        value = val[self.metric]
        if math.isnan(value) or (state.best_step is not None and not self.better(value, state.best_val)):
            return False
        state.best_val, state.best_step = float(value), state.step
        return True

    @staticmethod
    def holds(state: TrainState) -> bool:
        """Whether the model being trained is the best one (its checkpoint goes to best.pt too)."""
        return state.best_step is not None and state.best_step == state.step

    @staticmethod
    def value(state: TrainState) -> float | None:
        """The best model's objective (None: nothing validated yet)."""
        return state.best_val if state.best_step is not None else None

    @staticmethod
    def repair(run_dir: Path, state: TrainState) -> None:
        """If last.pt holds the best model and best.pt is not it (a crash between the two
        writes), write best.pt from last.pt (``checkpoint.best_state`` decides, as on the read side)."""
        best = Path(run_dir) / "checkpoints" / checkpoint.BEST
        if not BestModel.holds(state) or not best.with_name(checkpoint.LAST).is_file():
            return
        content, file = checkpoint.best_state(best, key="resume")
        if file.name == checkpoint.LAST:
            log.warning("%s is missing or older than the best model (step %d): writing it from %s", best,
                        state.step, file)
            checkpoint.save(content, best)

    @staticmethod
    def load_best(model: torch.nn.Module, run_dir: Path, state: TrainState, strict: bool = True) -> str:
        """Put the best model's weights into ``model`` (it holds them already when the last
        validation was the best); what ``metrics.json`` calls it: best.pt, or the final model
        when nothing was validated. A best model that cannot be read (best.pt missing, damaged,
        another step's) is a ``RunFailed``: the numbers are never another model's. ``strict``
        False (a DDP rank that cannot see best.pt; rank 0 writes the numbers): the model as it is."""
        best = Path(run_dir) / "checkpoints" / checkpoint.BEST
        if state.best_step is None:
            return "final model"
        if state.best_step == state.step or (not strict and not best.is_file()):
            return checkpoint.BEST
        try:
            content, _ = checkpoint.best_state(best, key="hydra.run.dir")
        except ConfigError as e:
            raise RunFailed(e.key, f"metrics.json cannot describe the best model (step {state.best_step}): {e.problem}",
                            f"evaluate the final model (step {state.step}) instead: python -m aecli.evaluate "
                            f"{shlex.quote(str(run_dir))} --checkpoint last; or train again in a new run dir to "
                            "recover the best model") from None
        model.load_state_dict(content["model"])
        return checkpoint.BEST

    def summary(self, state: TrainState) -> dict[str, Any]:
        """What ``metrics.json`` says about the choice."""
        return {"objective": self.key, "best_step": state.best_step, "best_value": self.value(state)}
