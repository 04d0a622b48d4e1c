"""Hooks: what happens around training, apart from training itself.

A hook subclasses ``Hook`` and overrides any of its methods; each gets the ``Run`` (the config,
the run dir, the data, the model, the ``TrainState``). The loop calls them in list order:

- ``on_fit_start(run)``: once, before the first step (also after a resume);
- ``on_epoch_start(run)``: before each epoch (or the rest of one, after a resume);
- ``on_step_end(run, terms)``: after every optimizer step; ``terms`` are the step's loss terms
  as device tensors (None: the batch was skipped). Reading them (``.item()``) makes the host
  wait for the device: do it every N steps, not every step;
- ``on_epoch_end(run, result, val)``: after each epoch; ``val`` is the validation of the main
  phase (None during pre-training); ``result.means`` the epoch's mean training loss terms;
- ``on_stop(run)``: training ends before its schedule (a signal, ``trainer.max_steps``);
- ``on_fit_end(run, metrics)``: after the final evaluation, with what goes to ``metrics.json``.

Setting ``run.stop_requested`` (to a reason) ends training after the current step. A hook with a
``state_key`` has its ``state_dict()`` saved in each checkpoint and given back to
``load_state_dict`` on resume. Your own hooks go in the config (``callbacks``):
``+callbacks.mine._target_=my_pkg.MyHook``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from aecli.config import plain
from aecli.data import ImageData
from aecli.losses import ReconstructionLoss
from aecli.models import Autoencoder
from aecli.training.distributed import World
from aecli.training.state import Phase, TrainState
from aecli.training.step import Step

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Run:
    """What hooks may look at (and ``stop_requested``, which they may set). Built by keyword."""

    cfg: DictConfig
    run_dir: Path
    state: TrainState  # the model, the phases, the position, the best model's record
    data: ImageData
    recon: ReconstructionLoss
    noise: Any
    hooks: Hooks
    world: World = field(default_factory=World)  # DDP: this process's rank (rank 0 writes)
    step: Step | None = None  # the phase being trained: its step, which holds the epoch's sums
    stop_requested: str | None = None  # why training should end after this step
    last_epoch: EpochResult | None = None  # the main phase's last epoch in this process
    # derived once (read every step: not from the config or the model each time)
    batch_size: int = field(init=False)  # trainer.batch_size
    device: torch.device = field(init=False)  # the training device (the model's)
    config: dict[str, Any] = field(init=False)  # the config a checkpoint records

    def __post_init__(self) -> None:
        self.batch_size, self.config = int(self.cfg.trainer.batch_size), plain(self.cfg)
        self.device = next(self.state.model.parameters()).device

    @property
    def model(self) -> Autoencoder:
        return self.state.model

    @property
    def phase(self) -> Phase | None:
        return None if self.step is None else self.step.phase

    def epoch_sums(self) -> dict[str, Tensor]:
        """The partial epoch's loss sums (copies): the step's, or those a checkpoint carried
        while no step has taken them over yet (a stop before the first step after a resume)."""
        es = self.state.epoch_state
        if es is None:
            return {}
        if es.carried is None:
            assert self.step is not None, "only a step takes the carried sums over"
            return self.step.totals()
        return dict(es.carried)


class Hook:
    """Base class: every method does nothing."""

    state_key: str | None = None  # set to keep state in checkpoints

    def on_fit_start(self, run: Run) -> None: ...
    def on_epoch_start(self, run: Run) -> None: ...
    def on_step_end(self, run: Run, terms: dict[str, Tensor] | None) -> None: ...
    def on_epoch_end(self, run: Run, result: EpochResult, val: dict[str, float] | None) -> None: ...
    def on_stop(self, run: Run) -> None: ...
    def on_fit_end(self, run: Run, metrics: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Hooks:
    """The run's hooks, called in order. ``on_step_end`` goes only to hooks that override it
    (it runs every step)."""

    def __init__(self, hooks: list[Hook]) -> None:
        self.hooks = list(hooks)
        self._per_step = [h for h in self.hooks if type(h).on_step_end is not Hook.on_step_end]

    def __iter__(self):
        return iter(self.hooks)

    def on_fit_start(self, run: Run) -> None:
        for h in self.hooks:
            if h.state_key is not None and h.state_key in run.state.hooks:
                h.load_state_dict(run.state.hooks[h.state_key])
            h.on_fit_start(run)

    def on_epoch_start(self, run: Run) -> None:
        for h in self.hooks:
            h.on_epoch_start(run)

    def on_step_end(self, run: Run, terms: dict[str, Tensor] | None) -> None:
        for h in self._per_step:
            h.on_step_end(run, terms)

    def on_epoch_end(self, run: Run, result: EpochResult, val: dict[str, float] | None) -> None:
        for h in self.hooks:
            h.on_epoch_end(run, result, val)

    def on_stop(self, run: Run) -> None:
        for h in self.hooks:
            h.on_stop(run)

    def on_fit_end(self, run: Run, metrics: dict[str, Any]) -> None:
        for h in self.hooks:
            h.on_fit_end(run, metrics)

    def states(self) -> dict[str, Any]:
        return {h.state_key: h.state_dict() for h in self.hooks if h.state_key is not None}


# --- built-in hooks ------------------------------------------------------------------------


@dataclass
class EpochResult:
    means: dict[str, float]  # mean loss terms over the epoch's images
    images_per_sec: float
    stopped: bool = False  # ended early: a stop was requested, or trainer.max_steps reached
