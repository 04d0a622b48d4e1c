"""The inner loop: one training step, and one pass over the training set.

Batches are sliced from the uint8 dataset tensor on the training device; loss terms stay on
the device and are summed there. The host waits for the device only every
``trainer.log_every_n_steps`` steps and at the epoch's end (to notice a non-finite loss and to
log), so the GPU is never idle waiting on Python. ``Step`` is the seam where a step is run
eagerly or replayed as a CUDA graph (``aecli.graph``).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from aecli.config import Precision as PrecisionName
from aecli.data import batches
from aecli.distributed import World, epoch_totals
from aecli.errors import ConfigError
from aecli.losses import ReconstructionLoss
from aecli.state import EpochState, Phase

if TYPE_CHECKING:
    from aecli.hooks import Hooks, Run

log = logging.getLogger("aecli")


class NonFiniteLoss(RuntimeError):
    """A loss that is nan or inf: at a training ``step``, or in ``what`` else (validation)."""

    def __init__(self, step: int, what: str = "loss") -> None:
        super().__init__(f"non-finite {what} at step {step}")
        self.step = step


@dataclass
class Precision:
    """``trainer.precision``: fp32, or autocast to bf16 / fp16 (fp16 with a GradScaler)."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None  # None: fp32, no autocast

    @classmethod
    def from_config(cls, name: PrecisionName | str | int, device: torch.device) -> Precision:
        name = name if isinstance(name, PrecisionName) else PrecisionName(name) if name in (32, 16) \
            else PrecisionName[str(name)]
        if name is PrecisionName.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("trainer.precision", f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16",
                              "use trainer.precision=16 or 32")
        if name is not PrecisionName.fp32 and device.type == "cpu":  # measured: README, "Speed"
            log.warning("trainer.precision=%s on the CPU: correct, but no faster than fp32 even where the CPU has "
                        "bf16 units, and up to ~100x slower where it has none (fp16: always)", name.value)
        dtype = {PrecisionName.fp32: None, PrecisionName.bf16: torch.bfloat16, PrecisionName.fp16: torch.float16}[name]
        return cls(device.type, dtype)

    def autocast(self) -> torch.autocast:
        # no cache of cast weights: a CUDA graph must not keep pointers into a cache freed after
        # the region (PyTorch's advice for autocast in graphs); the step casts each weight once
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None,
                              cache_enabled=False)

    def scaler(self) -> torch.amp.GradScaler:
        """fp16 needs loss scaling; the other precisions get a disabled scaler (a no-op)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype is torch.float16)


class Step:
    """One eager training step of a phase, from a raw uint8 batch: to float (and the phase's
    inputs), noise, forward and loss (under autocast), backward, optimizer step; then the loss
    terms are added to the epoch's sums and the first non-finite step is noted, all on the
    device. ``__call__`` returns the step's loss terms (device tensors; None: skipped)."""

    def __init__(self, phase: Phase, recon: ReconstructionLoss, precision: Precision, scaler: torch.amp.GradScaler,
                 to_float: Callable[[Tensor], Tensor], compute: Callable[..., dict[str, Tensor]] | None = None,
                 skip_nan: bool = False, world: World = World()) -> None:
        self.phase, self.recon, self.precision, self.scaler = phase, recon, precision, scaler
        self.to_float, self.skip_nan, self.world = to_float, skip_nan, world
        self.compute = compute or phase.module.loss
        self.params = [p for group in phase.optimizer.param_groups for p in group["params"]]

    def prepare(self, raw: Tensor) -> Tensor:
        x = self.to_float(raw)
        return x if self.phase.inputs is None else self.phase.inputs(x)

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        with self.precision.autocast():
            return self.compute(self.phase.noise(x), x, self.recon)

    def update(self, loss: Tensor) -> None:
        self.scaler.scale(loss).backward()
        self.world.average_gradients(self.params)  # DDP: every rank steps with the global mean
        self.scaler.step(self.phase.optimizer)
        self.scaler.update()

    def begin_epoch(self, es: EpochState, step: int) -> None:
        """Before the epoch's first step here (or the first after a resume)."""
        es.first_bad = torch.full((), -1, dtype=torch.long, device=es.perm.device)

    def __call__(self, raw: Tensor, es: EpochState, step: int) -> dict[str, Tensor] | None:
        x = self.prepare(raw)
        terms = self.losses(x)
        if self.skip_nan and self.world.any(not torch.isfinite(terms["loss"]).item(), x.device):  # a sync per step
            return None
        self.phase.optimizer.zero_grad(set_to_none=True)
        self.update(terms["loss"])
        terms = {k: v.detach() for k, v in terms.items()}
        es.add(terms, x.shape[0])
        if not self.skip_nan:  # remember the first bad step on the device, without a sync
            es.first_bad.copy_(torch.where((es.first_bad < 0) & ~torch.isfinite(terms["loss"]),
                                           torch.full_like(es.first_bad, step), es.first_bad))
        return terms


@dataclass
class EpochResult:
    means: dict[str, float]  # mean loss terms over the epoch's images
    images_per_sec: float
    stopped: bool = False  # ended early: a stop was requested, or trainer.max_steps reached


def check_finite(es: EpochState, world: World = World()) -> None:
    """Raise ``NonFiniteLoss`` if a step of this epoch had a non-finite loss, on any rank (one sync)."""
    if es.first_bad is None:
        return
    never = torch.iinfo(torch.long).max
    bad = int(world.min(torch.where(es.first_bad < 0, torch.full_like(es.first_bad, never), es.first_bad)).item())
    if bad != never:
        raise NonFiniteLoss(bad)


def train_epoch(run: Run, step_fn: Step, hooks: Hooks, sync_every: int) -> EpochResult:
    """Train ``run.phase`` for one pass over the training set (or the rest of the pass that
    ``run.state.epoch_state`` describes). Hooks see every step; a hook that sets
    ``run.stop_requested`` ends the epoch after that step (the epoch state then says where).

    A non-finite loss raises ``NonFiniteLoss``: noticed on the device and reported at the next
    sync (every ``sync_every`` steps and at the epoch's end), so no sync per step; or, with
    ``on_nan=skip_batch``, the step skips the batch (a sync per step).
    """
    state, es = run.state, run.state.epoch_state
    mine = run.world.shard(es.perm)  # DDP: this rank's part of the epoch (all of it otherwise)
    n_batches = math.ceil(len(mine) / run.batch_size)
    step_fn.begin_epoch(es, state.step)
    seen_at_start, t0 = es.seen, time.perf_counter()
    for _, raw in batches(run.data.train, run.batch_size, mine, start=es.batch):
        state.step += 1
        es.batch += 1
        terms = step_fn(raw, es, state.step)
        if terms is None:
            es.skipped += 1
            log.warning("step %d: non-finite loss, batch skipped (trainer.on_nan=skip_batch)", state.step)
        if state.step % sync_every == 0 or es.batch == n_batches:  # the only host syncs in an epoch
            check_finite(es, run.world)
        hooks.on_step_end(run, terms)
        if run.stop_requested:
            break
    sums, seen = epoch_totals(run.world, es.sums, es.seen, es.perm.device)  # a sync: honest timing
    elapsed = time.perf_counter() - t0
    means = {k: v / seen for k, v in sums.items()} if seen else {}
    speed = (es.seen - seen_at_start) * run.world.size / max(elapsed, 1e-9)
    return EpochResult(means, speed, stopped=es.batch < n_batches)


def epoch_permutation(n: int, seed: int, phase: int, epoch: int, device: torch.device) -> Tensor:
    """The order of an epoch's images: the same on every rank (its own generator, seeded by the
    run's seed, the phase and the epoch, as DistributedSampler seeds by epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + phase * 10_007 + epoch)
    return torch.randperm(n, generator=generator).to(device)


def run_epochs(run: Run, make_step: Callable[[Phase], Step], hooks: Hooks, sync_every: int,
               validate: Callable[[], dict[str, float]]) -> bool:
    """Every remaining epoch of every remaining phase, from ``run.state``'s position; False if a
    stop ended it early. After each epoch of the main phase: validation, then the hooks."""
    state = run.state
    for index, phase in enumerate(state.phases):
        if index < state.phase:
            continue
        if index > state.phase:
            state.phase, state.epoch = index, 0
        run.phase, step_fn = phase, make_step(phase)
        while state.epoch < phase.epochs and not run.stop_requested:
            if state.epoch_state is None:
                perm = epoch_permutation(len(run.data.train), run.cfg.seed, index, state.epoch, run.device)
                state.epoch_state = EpochState(perm=perm)
            hooks.on_epoch_start(run)
            result = train_epoch(run, step_fn, hooks, sync_every)
            if result.stopped:
                return False
            if result.means.get("loss") is None:
                raise NonFiniteLoss(state.step, f"every batch of epoch {state.epoch + 1} (all skipped)")
            state.epoch, state.epoch_state = state.epoch + 1, None
            val = validate() if phase.main else None
            if val is not None:
                state.val, run.last_epoch = val, result
                if val[f"loss_{phase.unit}"] < state.best_val:
                    state.best_val, state.best_step = val[f"loss_{phase.unit}"], state.step
            hooks.on_epoch_end(run, result, val)
            if run.stop_requested:
                return False
    return not run.stop_requested


def optimizer_for(params: Any, lr: float, weight_decay: float, fused: Any, device: torch.device,
                  capturable: bool = False) -> torch.optim.Optimizer:
    """Adam; ``fused`` (auto: where the device has the kernel) runs the whole update as one
    fused kernel, else ``foreach`` multi-tensor kernels: both beat a Python loop over parameters
    (fused: +5% images/s over foreach for the MLP VAE on the 2-core CPU, README "Speed").
    ``capturable``: the step count lives on the device, so a CUDA graph can replay the update."""
    params = list(params)
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if capturable:
        kwargs["capturable"] = True
    if fused in (True, "auto"):
        try:
            return torch.optim.Adam(params, fused=True, **kwargs)
        except RuntimeError:  # no fused kernel for this device
            if fused is True:
                raise ConfigError("optim.fused", f"no fused Adam kernel on {device.type}",
                                  "use optim.fused=auto or false") from None
    return torch.optim.Adam(params, foreach=True, **kwargs)
