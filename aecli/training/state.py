"""The training state: one object owns everything a checkpoint must hold to continue exactly.

``TrainState`` holds the model, the phases (each with its optimizer), the gradient scaler, the
position (phase, epochs done, global step), the partial epoch, the validation results, and the
state of the hooks that keep some (the per-step TensorBoard window). ``to_dict`` is the
checkpoint's content; ``restore`` puts a verified checkpoint back (``aecli.store.checkpoint``
verifies the file; ``restore`` checks that it fits this model and data).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from aecli.errors import ConfigError
from aecli.models import Autoencoder, Phase  # one record for a phase: the models' pre-training stages are phases too


@dataclass
class EpochState:
    """Where an epoch stands: enough, with the step's sums (``Step.totals``), to checkpoint it
    mid-way and continue it exactly. The step owns the sums; a checkpoint's partial epoch
    carries them (``carried``) until the step that continues it takes them (``hand_over``)."""

    perm: Tensor  # this epoch's batch order (on the training device)
    batch: int = 0  # batches done
    seen: int = 0  # images trained on
    skipped: int = 0  # non-finite batches skipped (trainer.on_nan=skip_batch)
    carried: dict[str, Tensor] | None = field(default_factory=dict)  # sums no step has taken yet (None: taken)

    def hand_over(self) -> dict[str, Tensor]:
        """The sums so far, for the step that goes on with this epoch (which owns them from then on)."""
        carried, self.carried = self.carried or {}, None
        return carried

    def to_dict(self, sums: dict[str, Tensor]) -> dict[str, Any]:
        """The checkpoint's partial epoch, with the epoch's ``sums`` (the step's totals)."""
        return {"perm": self.perm, "batch": self.batch, "seen": self.seen, "sums": sums, "skipped": self.skipped}

    @classmethod
    def from_dict(cls, d: dict[str, Any], device: torch.device) -> EpochState:
        return cls(d["perm"].to(device), d["batch"], d["seen"], d["skipped"],
                   {k: v.to(device) for k, v in d["sums"].items()})


@dataclass
class TrainState:
    """Everything that changes while a run trains."""

    model: Autoencoder
    phases: list[Phase]
    scaler: torch.amp.GradScaler
    phase: int = 0  # index into phases
    epoch: int = 0  # epochs of that phase done
    step: int = 0  # optimizer steps done, all phases
    epoch_state: EpochState | None = None  # a partial epoch
    val: dict[str, float] = field(default_factory=dict)  # the last validation
    best_val: float = math.inf
    best_step: int | None = None  # where best.pt's model is from
    hooks: dict[str, Any] = field(default_factory=dict)  # hook name -> its state

    def to_dict(self, input_shape: tuple[int, ...], config: dict[str, Any], epoch_state: dict[str, Any] | None,
                rng_ranks: list[dict[str, Any]] | None = None,
                data_transform: dict[str, Any] | None = None) -> dict[str, Any]:
        """The checkpoint's content (plain data and tensors): ``epoch_state`` is the partial
        epoch's (``EpochState.to_dict``, with the sums; DDP: over all ranks), ``rng_ranks``
        every rank's RNG state (DDP), ``data_transform`` the data's fitted scaler or vocabulary
        (plain numbers and strings, ``aecli.data.vectors``)."""
        optimizer = self.phases[self.phase].optimizer
        assert optimizer is not None, "build.new_state gives every phase its optimizer"
        out = {"model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
               "scaler": self.scaler.state_dict(), "phase": self.phase, "epoch": self.epoch, "step": self.step,
               "epoch_state": epoch_state, "val": dict(self.val), "best_val": self.best_val,
               "best_step": self.best_step, "rng": rng_state(), "hooks": dict(self.hooks),
               "input_shape": list(input_shape), "config": config}
        if rng_ranks is not None:
            out["rng_ranks"] = rng_ranks
        if data_transform is not None:
            out["data_transform"] = data_transform
        return out

    def restore(self, d: dict[str, Any], n_train: int, batch_size: int, device: torch.device,
                rank: int = 0, world_size: int = 1) -> None:
        """Continue from a verified checkpoint ``d``; what does not fit this model, its phases
        or this data is a ``ConfigError`` before anything changes on disk. DDP (``rank`` of
        ``world_size``): the epoch's sums (over all ranks) go to rank 0, each rank gets its own RNG."""
        def refuse(problem: str) -> ConfigError:
            return ConfigError("resume", f"the checkpoint does not fit this run: {problem}",
                               "resume with the config of the run that wrote it (resume=RUN_DIR alone does)")

        if d["phase"] >= len(self.phases):
            raise refuse(f"it is in phase {d['phase'] + 1}, but this run has {len(self.phases)} phase(s)")
        es = d["epoch_state"]
        if es is not None and (len(es["perm"]) != n_train or not torch.equal(es["perm"].sort().values,
                                                                               torch.arange(n_train))
                               or es["batch"] > math.ceil(math.ceil(n_train / world_size) / batch_size)):
            raise refuse(f"its partial epoch does not cover the {n_train} training images")
        try:
            self.model.load_state_dict(d["model"])
            self.phases[d["phase"]].optimizer.load_state_dict(d["optimizer"])
            self.scaler.load_state_dict(d["scaler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise refuse(" ".join(str(e).split())[:300]) from None
        self.phase, self.epoch, self.step = d["phase"], d["epoch"], d["step"]
        ranks = d.get("rng_ranks")
        written_by = len(ranks) if isinstance(ranks, list) else 1
        if written_by != world_size:  # both ways: its data order and RNG streams are per rank
            raise refuse(f"it was written by a run of {written_by} process(es), this one has {world_size}")
        self.epoch_state = None if es is None else EpochState.from_dict(es, device)
        if self.epoch_state is not None and rank > 0:  # rank 0 carries the sums of all ranks so far
            sums = self.epoch_state.hand_over()
            self.epoch_state.carried = {k: torch.zeros_like(v) for k, v in sums.items()}
            self.epoch_state.seen = self.epoch_state.skipped = 0
        self.val, self.best_val, self.best_step = dict(d["val"]), float(d["best_val"]), d["best_step"]
        self.hooks = dict(d["hooks"])
        try:
            set_rng_state(ranks[rank] if isinstance(ranks, list) and world_size > 1 else d["rng"])
        except (ValueError, TypeError, RuntimeError) as e:
            raise refuse(f"its RNG state is damaged ({str(e).splitlines()[0][:200]})") from None


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from (python, numpy, torch, CUDA), as checkpoint-safe data."""
    # numpy's stub also allows a dict (a non-MT19937 generator); the global RandomState's legacy state is a tuple
    legacy = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    kind, keys, pos, has_gauss, gauss = legacy
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
