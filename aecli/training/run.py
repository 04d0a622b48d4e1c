"""A training run, top to bottom: ``run(cfg, run_dir)``.

prepare (every check; the run dir's lock; the checkpoint to continue) -> build (device, data,
model, phases: ``aecli.training.build``) -> fit (the phases' epochs, ``aecli.training.loop``, with hooks for
checkpoints, TensorBoard, progress and stop signals) -> finish (the best model evaluated on
every split, ``metrics.json``, HParams).

``run`` is a library function: it returns a ``RunResult`` (completed, or stopped by a signal
with a checkpoint to continue from) and raises ``ConfigError`` (refused: nothing written) or
``RunFailed`` (diverged, disk full: the last good checkpoint kept). ``python -m aecli.train``
maps these to exit codes.
"""
from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from aecli import metrics
from aecli.components import build
from aecli.config import plain, value
from aecli.errors import ConfigError, RunFailed
from aecli.store import checkpoint, rundir
from aecli.training import callbacks, hooks
from aecli.training import tensorboard as tb
from aecli.training.build import Parts, build_parts, make_step, new_state
from aecli.training.distributed import WORLD, World
from aecli.training.loop import run_epochs
from aecli.training.placement import JobSlot
from aecli.training.plan import Prepared, prepare
from aecli.training.signals import SIGNALS
from aecli.training.step import NonFiniteLoss

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """How a run ended: ``completed`` (with its metrics) or ``stopped`` by ``signal`` at ``step``."""

    status: str
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    objective: float = math.nan  # the value sweepers minimise (``objective`` in the config)
    signal: str | None = None


def run(cfg: DictConfig, run_dir: str | Path, *, choices: dict[str, str] | None = None, slot: JobSlot = JobSlot(),
        extra_hooks: list[hooks.Hook] | None = None, prepared: Prepared | None = None,
        world: World = WORLD) -> RunResult:
    """Train as ``cfg`` says, writing everything into ``run_dir``. ``prepared``: the result of
    ``aecli.training.plan.prepare`` when the caller ran it already (the CLI, before Hydra writes).
    ``world``: this process's place in a DDP run (``torchrun``; rank 0 writes)."""
    prepared = prepared or prepare(cfg, Path(run_dir))
    cfg, run_dir = prepared.cfg, prepared.run_dir
    with SIGNALS.installed():
        try:
            parts = build_parts(cfg, slot, world=world)
            state = new_state(parts, cfg, world)
            if prepared.state is not None:
                state.restore(prepared.state, len(parts.data.train), cfg.trainer.batch_size, parts.device,
                              world.rank, world.size)
        except ConfigError:
            if world.main:
                discard_new_run_dir(prepared)
            raise
        if SIGNALS.requested is not None and not world.distributed:  # before the first step: nothing to save
            return RunResult("stopped", state.step, signal=SIGNALS.name())
        writer = tb.open_writer(run_dir, state.step if prepared.state is not None else None) if world.main \
            else tb.NullWriter()
        mine = user_hooks(cfg) + list(extra_hooks or [])
        all_hooks = hooks.Hooks(default_hooks(cfg, writer, choices or {}, mine, world))
        run_ = hooks.Run(cfg, run_dir, state, parts.data, parts.model, parts.recon, parts.noise, parts.device,
                         cfg.trainer.batch_size, all_hooks, config=plain(cfg), world=world)
        describe(parts, prepared)
        log.info("processes: %d (world size%s)", world.size, ", torchrun" if world.distributed else "")
        try:
            finished = fit(run_, all_hooks, parts, cfg)
            if not finished:
                all_hooks.on_stop(run_)
            if not finished and run_.stop_requested != "max_steps":
                return RunResult("stopped", state.step, signal=run_.stop_requested)
            result = finish(run_, all_hooks, parts, cfg)
        finally:
            writer.close()
    return result


def fit(run_: hooks.Run, all_hooks: hooks.Hooks, parts: Parts, cfg: DictConfig) -> bool:
    """Every remaining epoch; False if training ended early (a stop signal, ``max_steps``)."""
    tc = cfg.trainer
    all_hooks.on_fit_start(run_)
    if run_.stop_requested:
        return False
    try:
        return run_epochs(run_, lambda phase: make_step(phase, parts, run_.state, cfg, run_.world), all_hooks,
                          tc.log_every_n_steps, lambda: validate(run_, tc.eval_batch_size))
    except NonFiniteLoss as e:
        last = run_.run_dir / "checkpoints" / checkpoint.LAST
        good = f"the last good checkpoint is {last} (untouched)" if last.exists() else "no checkpoint was written"
        raise RunFailed("trainer.on_nan", f"{e} ({run_.phase.name}, epoch {run_.state.epoch + 1}); {good}",
                        "lower optim.lr, or trainer.on_nan=skip_batch to skip such batches"
                        + (f"; continue with resume={last.parent.parent}" if last.exists() else "")) from None


def validate(run_: hooks.Run, batch_size: int) -> dict[str, float]:
    """The epoch's validation pass; a non-finite validation loss means the model diverged."""
    val = metrics.reconstruction(run_.model, run_.data, run_.data.val, run_.recon, batch_size)
    if not math.isfinite(val[f"loss_{run_.phase.unit}"]):
        raise NonFiniteLoss(run_.state.step, "validation loss")
    return val


def finish(run_: hooks.Run, all_hooks: hooks.Hooks, parts: Parts, cfg: DictConfig) -> RunResult:
    """The best model (best.pt; the final one if there is no best yet) on every split:
    ``metrics.json``, the hooks' ``on_fit_end`` (HParams, PNGs), the objective."""
    state, unit = run_.state, parts.model.loss_unit
    best = run_.run_dir / "checkpoints" / checkpoint.BEST
    if state.best_step is not None and state.best_step != state.step and best.is_file():
        parts.model.load_state_dict(checkpoint.read(best)["model"])
    splits = {"train": parts.data.train, "val": parts.data.val, "test": parts.data.test}
    out: dict[str, Any] = {f"{split}/{k}": v for split, raw in splits.items()
                           for k, v in metrics.reconstruction(parts.model, parts.data, raw, parts.recon,
                                                              cfg.trainer.eval_batch_size).items()}
    last = run_.last_epoch
    out.update({f"train_epoch/{k}_{unit}": v for k, v in (last.means if last else {}).items()})
    out.update({"checkpoint": checkpoint.BEST if state.best_step is not None else "final model",
                "best_step": state.best_step, "epochs": state.epoch if state.phases[state.phase].main else 0,
                "steps": state.step, "images_per_sec": last.images_per_sec if last else None,
                "best_val_loss": state.best_val if math.isfinite(state.best_val) else None,
                "torch_threads": torch.get_num_threads(), "world_size": run_.world.size})
    all_hooks.on_fit_end(run_, out)
    if run_.world.main:
        rundir.write_json(run_.run_dir / "metrics.json", out)
    key = cfg.get("objective") or f"val/loss_{unit}"
    if key not in out:
        raise ConfigError("objective", f"{key} is not a metric of this run", f"use one of: {', '.join(sorted(out))}")
    log.info("test (%s): %s", out["checkpoint"], ", ".join(f"{k.removeprefix('test/')} {v:.5g}" for k, v in out.items()
                                                            if k.startswith("test/")))
    log.info("run dir: %s", run_.run_dir)
    return RunResult("completed", state.step, out, float(out[key]))


def default_hooks(cfg: DictConfig, writer: Any, choices: dict[str, str], mine: list[hooks.Hook],
                  world: World = WORLD) -> list[hooks.Hook]:
    """The hooks in the order they run: the user's (``mine``) first, so what they do in a step is
    in that step's checkpoint; then what ends training, what logs, and the checkpoint (after the
    events up to its step are flushed: a resume purges the later ones). In a DDP run the ranks
    other than 0 keep only those that take part in collectives (they log to a ``NullWriter``)."""
    tc = cfg.trainer
    bar = value(tc.progress) == "bar" or (value(tc.progress) == "auto" and _stderr_is_tty())
    ends = [callbacks.StopOnSignal(SIGNALS, tc.log_every_n_steps)]
    ends += [callbacks.MaxSteps(tc.max_steps)] if tc.max_steps is not None else []
    logs = [tb.EpochScalars(writer), tb.ImageGrids(writer, tc.grid_images, cfg.seed),
            callbacks.ProgressReport(bar, tc.log_every_n_steps)] if world.main else []
    return [callbacks.FirstStepTime(), *mine, *ends, tb.StepScalars(writer, tc.log_every_n_steps), *logs,
            callbacks.Checkpointing(tc.checkpoint_every_n_steps, flush=writer.flush),
            *([tb.HParams(writer, cfg, choices)] if world.main else [])]


def user_hooks(cfg: DictConfig) -> list[hooks.Hook]:
    """The hooks named under ``callbacks`` in the config, in their order there."""
    return [build(cfg.callbacks, name) for name in (cfg.get("callbacks") or {})]


def _stderr_is_tty() -> bool:
    import sys

    return sys.stderr.isatty()


def describe(parts: Parts, prepared: Prepared) -> None:
    data, model = parts.data, parts.model
    log.info("%s", parts.placement)
    log.info("%s (%s parameters) on %s; data %s: %d train / %d val / %d test; noise %r; loss %s",
             type(model).__name__, f"{sum(p.numel() for p in model.parameters()):,}", parts.device,
             "x".join(map(str, data.shape)), len(data.train), len(data.val), len(data.test), parts.noise,
             parts.recon.name)
    if prepared.state is not None:
        s = prepared.state
        log.info("resuming from step %d (phase %d, epoch %d%s)", s["step"], s["phase"], s["epoch"],
                 f", batch {s['epoch_state']['batch']}" if s["epoch_state"] else "")


def discard_new_run_dir(prepared: Prepared) -> None:
    """A new run refused while building (its data, its model): remove the dir it made, which holds
    only Hydra's record of the command and aecli's lock, so no FAILED dir is left behind."""
    if prepared.created is None or prepared.state is not None:
        return
    leftovers = set(rundir.foreign_files(prepared.run_dir)) - {".hydra", "train.log", rundir.STATUS_FILE}
    if not leftovers:
        rundir.unlock(prepared.run_dir)
        shutil.rmtree(prepared.created, ignore_errors=True)
