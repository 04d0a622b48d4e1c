"""One training step, from a raw uint8 batch to an optimizer update: the precision it runs
at (``Precision``), the eager step (``Step``; ``graph_step.GraphStep`` replays the same step as
a CUDA graph), the optimizer (``optimizer_for``), and the non-finite check (``check_finite``)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from aecli.config import Precision as PrecisionName
from aecli.errors import ConfigError
from aecli.losses import ReconstructionLoss
from aecli.training.distributed import World
from aecli.training.state import EpochState, Phase

log = logging.getLogger(__name__)


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
    device. ``__call__`` returns the step's loss terms (device tensors; None: skipped).

    The step owns the epoch's accumulators (the loss sums, the first non-finite step): they
    start at ``begin_epoch``, ``totals`` reads them (copies), ``first_bad`` is for ``check_finite``."""

    def __init__(self, phase: Phase, recon: ReconstructionLoss, precision: Precision, scaler: torch.amp.GradScaler,
                 to_float: Callable[[Tensor], Tensor], compute: Callable[..., dict[str, Tensor]] | None = None,
                 skip_nan: bool = False, world: World = World()) -> None:
        self.phase, self.recon, self.precision, self.scaler = phase, recon, precision, scaler
        self.to_float, self.skip_nan, self.world = to_float, skip_nan, world
        # Phase.module is an nn.Module, whose attribute type (Tensor | Module) hides that it has ``loss``
        self.compute = compute or cast(Callable[..., dict[str, Tensor]], phase.module.loss)
        assert phase.optimizer is not None, "the trainer gives each phase its optimizer before its step"
        self.optimizer: torch.optim.Optimizer = phase.optimizer
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.sums: dict[str, Tensor] = {}  # the epoch's loss terms x images, on the device
        self.first_bad: Tensor | None = None  # first step with a non-finite loss, -1: none (device scalar)

    def prepare(self, raw: Tensor) -> Tensor:
        x = self.to_float(raw)
        return x if self.phase.inputs is None else self.phase.inputs(x)

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        with self.precision.autocast():
            return self.compute(self.phase.noise(x), x, self.recon)

    def update(self, loss: Tensor) -> None:
        self.scaler.scale(loss).backward()
        self.world.average_gradients(self.params)  # DDP: every rank steps with the global mean
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def begin_epoch(self, es: EpochState, step: int) -> None:
        """Before the epoch's first step here (or the first after a resume): the sums start from
        what ``es`` carries (a checkpoint's partial epoch; nothing for a new one), which the step
        takes over (``step``: the steps done so far)."""
        device = es.perm.device
        self.sums = {k: v.to(device) for k, v in es.hand_over().items()}
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def totals(self) -> dict[str, Tensor]:
        """The epoch's loss sums so far (loss terms x images; copies, on the device)."""
        return {k: v.clone() for k, v in self.sums.items()}

    def __call__(self, raw: Tensor, step: int) -> dict[str, Tensor] | None:
        x = self.prepare(raw)
        terms = self.losses(x)
        if self.skip_nan and self.world.any(not torch.isfinite(terms["loss"]).item(), x.device):  # a sync per step
            return None
        self.optimizer.zero_grad(set_to_none=True)
        self.update(terms["loss"])
        return self.tally(terms, x.shape[0], step)

    def tally(self, terms: dict[str, Tensor], images: int, step: int) -> dict[str, Tensor]:
        """After the update: the step's loss terms (over ``images``) into the epoch's sums, and a
        non-finite loss noted on the device; returns the terms, detached."""
        terms = {k: v.detach() for k, v in terms.items()}
        for k, v in terms.items():  # out of place: a tensor totals() handed out never changes
            self.sums[k] = self.sums[k] + v.float() * images if k in self.sums else v.float() * images
        if not self.skip_nan:  # remember the first bad step on the device, without a sync
            assert self.first_bad is not None, "begin_epoch comes before the epoch's steps"
            self.first_bad.copy_(torch.where((self.first_bad < 0) & ~torch.isfinite(terms["loss"]),
                                             torch.full_like(self.first_bad, step), self.first_bad))
        return terms


def check_finite(step: Step | None, world: World = World()) -> None:
    """Raise ``NonFiniteLoss`` if a step of ``step``'s epoch had a non-finite loss, on any rank (one sync)."""
    if step is None or step.first_bad is None:
        return
    never = torch.iinfo(torch.long).max
    first_bad = step.first_bad
    bad = int(world.min(torch.where(first_bad < 0, torch.full_like(first_bad, never), first_bad)).item())
    if bad != never:
        raise NonFiniteLoss(bad)


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
