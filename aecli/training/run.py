"""A training run, top to bottom: ``run(cfg, run_dir)``.

prepare (every check; the run dir's lock; the checkpoint to continue: a ``Plan``) -> build (device, data,
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
from aecli.config import value
from aecli.data import ImageData, ImageFiles, batches
from aecli.errors import ConfigError, RunFailed
from aecli.store import checkpoint, rundir
from aecli.training import callbacks, hooks
from aecli.training import tensorboard as tb
from aecli.training.best import BestModel
from aecli.training.build import Parts, build_parts, make_step, new_state
from aecli.training.distributed import WORLD, World
from aecli.training.loop import run_epochs
from aecli.training.placement import JobSlot
from aecli.training.plan import Plan, prepare
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
        extra_hooks: list[hooks.Hook] | None = None, plan: Plan | None = None,
        world: World = WORLD) -> RunResult:
    """Train as ``cfg`` says, writing everything into ``run_dir``; or, with ``cfg.resume`` set,
    continue the run that a checkpoint holds.

    A resume trains the config stored in the checkpoint, not ``cfg``: only the keys that may
    change between the interrupted and the continued run (``aecli.training.plan.MAY_CHANGE``:
    the schedule's length, logging, speed knobs, the device, where the data lies, ``callbacks``)
    are taken from ``cfg``; any other key of ``cfg`` that differs from the stored one is refused
    (``ConfigError``), and the log says which keys ``cfg`` changed.

    ``plan``: what ``aecli.training.plan.prepare(cfg, run_dir)`` decided, when the caller ran it
    already (the CLI, before Hydra writes); ``run`` then follows it (its config, its checkpoint).
    ``world``: this process's place in a DDP run (``torchrun``; rank 0 writes)."""
    if plan is None:
        plan = prepare(cfg, Path(run_dir))
    elif Path(plan.run_dir).absolute() != Path(run_dir).absolute():
        raise ValueError(f"the plan is for {plan.run_dir}, not {run_dir}")
    with SIGNALS.installed():
        begun = start(plan, choices=choices, slot=slot, extra_hooks=extra_hooks, world=world)
        if isinstance(begun, RunResult):
            return begun
        try:
            finished = fit(begun.run, begun.hooks, begun.parts, plan.cfg, begun.best)
            return end(begun, finished)
        finally:
            begun.writer.close()


@dataclass
class Started:
    """A run built and ready to train: its ``hooks.Run``, hooks, parts, best-model record and
    TensorBoard writer (``run`` fits one; a packed sweep fits several side by side)."""

    run: hooks.Run
    hooks: hooks.Hooks
    parts: Parts
    best: BestModel
    writer: Any


def start(plan: Plan, *, choices: dict[str, str] | None = None, slot: JobSlot = JobSlot(),
          extra_hooks: list[hooks.Hook] | None = None, world: World = WORLD, data: ImageData | None = None,
          pick_threads: bool = True) -> Started | RunResult:
    """Build what ``plan`` trains (``data``: these images instead of the config's; ``pick_threads``:
    False keeps the thread count already chosen), put a checkpoint it continues back, and open
    its writer and hooks; a ``RunResult`` when a stop signal came before the first step. A
    ``ConfigError`` removes the new run's dir."""
    cfg, run_dir = plan.cfg, plan.run_dir
    try:
        parts = build_parts(cfg, slot, data=data, world=world, pick_threads=pick_threads,
                            fitted=plan.resume_from.get("data_transform") if plan.resume_from is not None else None)
        best = BestModel(cfg.get("objective"), parts.model.loss_unit)
        # the objective's name, against one validation image's metrics, before any training
        # (``batches`` brings it to the device also from a streamed folder)
        _, first = next(batches(parts.data.val, 1, torch.arange(1, device=parts.device)))
        best.check(measure(parts, first, 1, cfg.seed))
        state = new_state(parts, cfg, world)
        if plan.resume_from is not None:
            state.restore(plan.resume_from, len(parts.data.train), cfg.trainer.batch_size, parts.device,
                          world.rank, world.size)
    except ConfigError:
        if world.main:
            discard_new_run_dir(plan)
        raise
    if SIGNALS.requested is not None and not world.distributed:  # before the first step: nothing to save
        return RunResult("stopped", state.step, signal=SIGNALS.name())
    writer = tb.open_writer(run_dir, state.step if plan.resuming else None) if world.main else tb.NullWriter()
    mine = user_hooks(cfg) + list(extra_hooks or [])
    all_hooks = hooks.Hooks(default_hooks(cfg, writer, choices or {}, mine, best, world))
    run_ = hooks.Run(cfg=cfg, run_dir=run_dir, state=state, data=parts.data, recon=parts.recon,
                     noise=parts.noise, hooks=all_hooks, world=world)
    describe(parts, plan)
    log.info("processes: %d (world size%s)", world.size, ", torchrun" if world.distributed else "")
    return Started(run_, all_hooks, parts, best, writer)


def end(begun: Started, finished: bool) -> RunResult:
    """After fitting: a stopped run's result (its hooks' ``on_stop``), else ``finish``'s."""
    run_ = begun.run
    if not finished:
        begun.hooks.on_stop(run_)
    if not finished and run_.stop_requested != "max_steps":
        return RunResult("stopped", run_.state.step, signal=run_.stop_requested)
    return finish(run_, begun.hooks, begun.parts, run_.cfg, begun.best)


def fit(run_: hooks.Run, all_hooks: hooks.Hooks, parts: Parts, cfg: DictConfig, best: BestModel) -> bool:
    """Every remaining epoch; False if training ended early (a stop signal, ``max_steps``).
    Each validation goes to ``best``, before the hooks see the epoch's end."""
    tc = cfg.trainer
    all_hooks.on_fit_start(run_)
    if run_.stop_requested:
        return False
    try:
        return run_epochs(run_, lambda phase: make_step(phase, parts, run_.state, cfg, run_.world), all_hooks,
                          tc.log_every_n_steps, lambda: validate(run_, parts, cfg, best))
    except NonFiniteLoss as e:
        raise diverged(run_, e) from None


def diverged(run_: hooks.Run, e: NonFiniteLoss) -> RunFailed:
    """What a run that met a non-finite loss tells its user: where, the checkpoint it keeps, the fix."""
    last = run_.run_dir / "checkpoints" / checkpoint.LAST
    good = f"the last good checkpoint is {last} (untouched)" if last.exists() else "no checkpoint was written"
    assert run_.phase is not None, "a phase's step raises it"
    return RunFailed("trainer.on_nan", f"{e} ({run_.phase.name}, epoch {run_.state.epoch + 1}); {good}",
                     "lower optim.lr, or trainer.on_nan=skip_batch to skip such batches"
                     + (f"; continue with resume={last.parent.parent}" if last.exists() else ""))


def measure(parts: Parts, raw: torch.Tensor | ImageFiles, batch_size: int, seed: int) -> dict[str, float]:
    """``metrics.reconstruction`` of ``raw`` with the RNG seeded by ``seed`` (a VAE's loss draws
    codes) and the training's RNG left as it was: the same model gives the same numbers at a
    validation and in ``metrics.json``, and measuring does not change the training's draws."""
    devices = [parts.device] if parts.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=parts.device.type):
        torch.manual_seed(seed)
        return metrics.reconstruction(parts.model, parts.data, raw, parts.recon, batch_size)


def validate(run_: hooks.Run, parts: Parts, cfg: DictConfig, best: BestModel) -> dict[str, float]:
    """The epoch's validation pass, handed to ``best``; a non-finite validation loss means the model diverged."""
    val = measure(parts, parts.data.val, cfg.trainer.eval_batch_size, cfg.seed)
    assert run_.phase is not None, "run_epochs validates after a phase's epoch"
    if not math.isfinite(val[f"loss_{run_.phase.unit}"]):
        raise NonFiniteLoss(run_.state.step, "validation loss")
    best.update(run_.state, val)
    return val


def finish(run_: hooks.Run, all_hooks: hooks.Hooks, parts: Parts, cfg: DictConfig, best: BestModel) -> RunResult:
    """The best model (``best`` says which: best.pt, or the final one if none was validated) on
    every split: ``metrics.json``, the hooks' ``on_fit_end`` (HParams, PNGs), and its objective."""
    state, unit = run_.state, parts.model.loss_unit
    chosen = best.load_best(parts.model, run_.run_dir, state, strict=run_.world.main)
    splits = {"train": parts.data.train, "val": parts.data.val, "test": parts.data.test}
    out: dict[str, Any] = {f"{split}/{k}": v for split, raw in splits.items()
                           for k, v in measure(parts, raw, cfg.trainer.eval_batch_size, cfg.seed).items()}
    last = run_.last_epoch
    out.update({f"train_epoch/{k}_{unit}": v for k, v in (last.means if last else {}).items()})
    out.update({"checkpoint": chosen, **best.summary(state),
                "epochs": state.epoch if state.phases[state.phase].main else 0,
                "steps": state.step, "images_per_sec": last.images_per_sec if last else None,
                "torch_threads": torch.get_num_threads(), "world_size": run_.world.size})
    all_hooks.on_fit_end(run_, out)
    if run_.world.main:
        rundir.write_json(run_.run_dir / "metrics.json", out)
    log.info("test (%s): %s", out["checkpoint"], ", ".join(f"{k.removeprefix('test/')} {v:.5g}" for k, v in out.items()
                                                            if k.startswith("test/")))
    log.info("run dir: %s", run_.run_dir)
    return RunResult("completed", state.step, out, float(out[best.key]))


def default_hooks(cfg: DictConfig, writer: Any, choices: dict[str, str], mine: list[hooks.Hook], best: BestModel,
                  world: World = WORLD) -> list[hooks.Hook]:
    """The hooks in the order they run: the user's (``mine``) first, so what they do in a step is
    in that step's checkpoint; then what ends training, what logs, and the checkpoint (after the
    events up to its step are flushed: a resume purges the later ones). In a DDP run the ranks
    other than 0 keep only those that take part in collectives (they log to a ``NullWriter``)."""
    tc = cfg.trainer
    bar = value(tc.progress) == "bar" or (value(tc.progress) == "auto" and _stderr_is_tty())
    ends: list[hooks.Hook] = [callbacks.StopOnSignal(SIGNALS, tc.log_every_n_steps)]
    ends += [callbacks.MaxSteps(tc.max_steps)] if tc.max_steps is not None else []
    logs = [tb.EpochScalars(writer), tb.ImageGrids(writer, tc.grid_images, cfg.seed), tb.VectorReport(writer),
            callbacks.ProgressReport(bar, tc.log_every_n_steps)] if world.main else []
    return [callbacks.KeepThreads(tc.get("num_threads")), callbacks.FirstStepTime(), callbacks.LastEpoch(),
            callbacks.SpinWatch(tc.get("num_threads"), tc.log_every_n_steps),
            callbacks.SaveTransform(), *mine, *ends,
            tb.StepScalars(writer, tc.log_every_n_steps), *logs,
            callbacks.Checkpointing(tc.checkpoint_every_n_steps, best, flush=writer.flush),
            *([tb.HParams(writer, cfg, choices)] if world.main else [])]


def user_hooks(cfg: DictConfig) -> list[hooks.Hook]:
    """The hooks named under ``callbacks`` in the config, in their order there."""
    return [build(cfg.callbacks, name) for name in (cfg.get("callbacks") or {})]


def _stderr_is_tty() -> bool:
    import sys

    return sys.stderr.isatty()


def describe(parts: Parts, plan: Plan) -> None:
    data, model = parts.data, parts.model
    log.info("%s", parts.placement)
    log.info("%s (%s parameters) on %s; data %s: %d train / %d val / %d test; noise %r; loss %s",
             type(model).__name__, f"{sum(p.numel() for p in model.parameters()):,}", parts.device,
             "x".join(map(str, data.shape)), len(data.train), len(data.val), len(data.test), parts.noise,
             parts.recon.name)
    s = plan.resume_from
    if s is not None:
        log.info("resuming from step %d (phase %d, epoch %d%s): training the checkpoint's config; from this "
                 "command: %s", s["step"], s["phase"], s["epoch"],
                 f", batch {s['epoch_state']['batch']}" if s["epoch_state"] else "", "; ".join(plan.changed) or
                 "nothing")


def discard_new_run_dir(plan: Plan) -> None:
    """A new run refused while building (its data, its model): remove the dir it made, which holds
    only Hydra's record of the command and aecli's lock, so no FAILED dir is left behind."""
    if plan.created is None or plan.resuming:
        return
    leftovers = set(rundir.foreign_files(plan.run_dir)) - {".hydra", "train.log", rundir.STATUS_FILE}
    if not leftovers:
        rundir.unlock(plan.run_dir)
        shutil.rmtree(plan.created, ignore_errors=True)
