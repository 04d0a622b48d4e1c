"""The inner loop: one training step, and one pass over the training set.

Batches are sliced from the uint8 dataset tensor on the training device; loss terms stay on
the device and are summed there. The host waits for the device only every
``trainer.log_every_n_steps`` steps and at the epoch's end (to notice a non-finite loss and to
log), so the GPU is never idle waiting on Python. ``Step`` is the seam where a step is run
eagerly or replayed as a CUDA graph (``aecli.training.graph_step``).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

from aecli.data import batches
from aecli.training.distributed import epoch_totals
from aecli.training.hooks import EpochResult, Hooks, Run
from aecli.training.state import EpochState, Phase
from aecli.training.step import NonFiniteLoss, Step, check_finite

log = logging.getLogger(__name__)


def train_epoch(run: Run, hooks: Hooks, sync_every: int) -> EpochResult:
    """Train ``run.phase`` with ``run.step`` for one pass over the training set (or the rest of
    the pass that ``run.state.epoch_state`` describes). Hooks see every step; a hook that sets
    ``run.stop_requested`` ends the epoch after that step (the epoch state then says where).

    A non-finite loss raises ``NonFiniteLoss``: noticed on the device and reported at the next
    sync (every ``sync_every`` steps and at the epoch's end), so no sync per step; or, with
    ``on_nan=skip_batch``, the step skips the batch (a sync per step).
    """
    state, es, step_fn = run.state, run.state.epoch_state, run.step
    assert es is not None and step_fn is not None, "run_epochs sets the epoch and the phase's step first"
    mine = run.world.shard(es.perm)  # DDP: this rank's part of the epoch (all of it otherwise)
    n_batches = math.ceil(len(mine) / run.batch_size)
    step_fn.begin_epoch(es, state.step)
    seen_at_start, t0 = es.seen, time.perf_counter()
    for _, raw in batches(run.data.train, run.batch_size, mine, start=es.batch):
        state.step += 1
        es.batch += 1
        terms = step_fn(raw, state.step)
        if terms is None:
            es.skipped += 1
            log.warning("step %d: non-finite loss, batch skipped (trainer.on_nan=skip_batch)", state.step)
        else:
            es.seen += raw.shape[0]
        if state.step % sync_every == 0 or es.batch == n_batches:  # the only host syncs in an epoch
            check_finite(step_fn, run.world)
        hooks.on_step_end(run, terms)
        if run.stop_requested:
            break
    return epoch_result(run, n_batches, seen_at_start, t0)


def epoch_result(run: Run, n_batches: int, seen_at_start: int, t0: float) -> EpochResult:
    """The epoch's mean loss terms over all ranks (a sync: honest timing), its images/s since
    ``t0`` (``seen_at_start`` images in by then), and whether a stop cut it short."""
    es, step_fn = run.state.epoch_state, run.step
    assert es is not None and step_fn is not None
    sums, seen = epoch_totals(run.world, step_fn.totals(), es.seen, es.perm.device)
    elapsed = time.perf_counter() - t0
    means = {k: v / seen for k, v in sums.items()} if seen else {}
    speed = (es.seen - seen_at_start) * run.world.size / max(elapsed, 1e-9)
    return EpochResult(means, speed, stopped=es.batch < n_batches)


def current_epoch(run: Run) -> EpochState:
    """The epoch being trained: the state a resume put back, or a new epoch's order."""
    state = run.state
    if state.epoch_state is None:
        perm = epoch_permutation(len(run.data.train), run.cfg.seed, state.phase, state.epoch, run.device)
        state.epoch_state = EpochState(perm=perm)
    return state.epoch_state


def close_epoch(run: Run, hooks: Hooks, result: EpochResult, validate: Callable[[], dict[str, float]]) -> None:
    """After an epoch's last step: the position moves on, the main phase validates (``validate``
    also keeps the best model's record), then the hooks see the epoch's end."""
    state = run.state
    state.epoch, state.epoch_state = state.epoch + 1, None
    val = validate() if state.phases[state.phase].main else None
    if val is not None:
        state.val, run.last_epoch = val, result
    hooks.on_epoch_end(run, result, val)


def epoch_permutation(n: int, seed: int, phase: int, epoch: int, device: torch.device) -> Tensor:
    """The order of an epoch's images: the same on every rank (its own generator, seeded by the
    run's seed, the phase and the epoch, as DistributedSampler seeds by epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + phase * 10_007 + epoch)
    return torch.randperm(n, generator=generator).to(device)


def run_epochs(run: Run, make_step: Callable[[Phase], Step], hooks: Hooks, sync_every: int,
               validate: Callable[[], dict[str, float]]) -> bool:
    """Every remaining epoch of every remaining phase, from ``run.state``'s position; False if a
    stop ended it early. After each epoch of the main phase: ``validate`` (which also keeps the
    best model's record), then the hooks."""
    state = run.state
    for index, phase in enumerate(state.phases):
        if index < state.phase:
            continue
        if index > state.phase:
            state.phase, state.epoch = index, 0
        run.step = make_step(phase)
        while state.epoch < phase.epochs and not run.stop_requested:
            current_epoch(run)
            hooks.on_epoch_start(run)
            result = train_epoch(run, hooks, sync_every)
            if result.stopped:
                return False
            if result.means.get("loss") is None:
                raise NonFiniteLoss(state.step, f"every batch of epoch {state.epoch + 1} (all skipped)")
            close_epoch(run, hooks, result, validate)
            if run.stop_requested:
                return False
    return not run.stop_requested


