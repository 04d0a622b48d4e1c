"""A pack: runs of one architecture trained side by side as one batched model.

A packed sweep (``hydra/launcher=packed``) starts each member as the ordinary run it is
(``aecli.training.run.start``: its own seed, model, Adam, hooks, TensorBoard writer and
checkpoints), then trains the members together. Each step stacks the members' parameters,
computes all their losses at once with ``torch.func.vmap`` over the members, and lets each
member's own Adam take its own step. What is random stays each member's own: its data order
(its seed), its noise and its model's draws (``Autoencoder.draw_normal``), drawn from its own
RNG state in the order its separate run draws them. So a member trains as its separate run
would, up to the order of float sums in batched kernels; everything else (validation, the best
model, checkpoints, the final evaluation, the hooks) is the member's own run's code.

Members normally move in lockstep. After a crash their checkpoints may stand one interval
apart: the members behind train (``active``) while the others ride along unchanged, so the
batched kernels keep their shape and every member's numbers stay those of the uninterrupted pack.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aecli.data import ImageData, batches
from aecli.errors import AecliError
from aecli.losses import ReconstructionLoss
from aecli.models import Autoencoder
from aecli.store.atomic import DISK_ERRORS, write_failed
from aecli.training.loop import close_epoch, current_epoch, epoch_result
from aecli.training.placement import JobSlot
from aecli.training.plan import Plan
from aecli.training.run import RunResult, Started, diverged, end, start, validate
from aecli.training.signals import SIGNALS
from aecli.training.state import rng_state, set_rng_state
from aecli.training.step import NonFiniteLoss, Step, check_finite

log = logging.getLogger(__name__)

Context = Callable[[], AbstractContextManager[Any]]


@dataclass(eq=False)
class Member:
    """One run of a pack: what ``start`` built, its RNG state while the others' is current,
    ``context`` (where its log lines go), and how it ended (``result`` or ``error``)."""

    begun: Started
    rng: dict[str, Any]
    context: Context = nullcontext
    sync_every: int = 1  # trainer.log_every_n_steps: the non-finite check's interval
    step: Step | None = None
    batches: Iterator[tuple[int, Tensor]] | None = None  # the epoch's batches still to train (None: between epochs)
    n_batches: int = 0  # the epoch's
    epoch_t0: float = 0.0
    seen_at_start: int = 0
    finished: bool | None = None  # None: still training; True: its schedule is done; False: stopped early
    error: AecliError | None = None

    @property
    def model(self) -> Autoencoder:
        return self.begun.run.state.model

    @contextmanager
    def active(self) -> Iterator[None]:
        """Its RNG streams and its log, while it validates, checkpoints or logs."""
        set_rng_state(self.rng)
        try:
            with self.context():
                yield
        finally:
            self.rng = rng_state()

    @contextmanager
    def drawing(self) -> Iterator[None]:
        """Its torch RNG stream alone, while it draws a step's noise and model draws (each step)."""
        torch.set_rng_state(self.rng["torch"])
        if "cuda" in self.rng:
            torch.cuda.set_rng_state_all(self.rng["cuda"])
        try:
            yield
        finally:
            self.rng["torch"] = torch.get_rng_state()
            if "cuda" in self.rng:
                self.rng["cuda"] = torch.cuda.get_rng_state_all()


def train_pack(plans: list[Plan], contexts: list[Context], choices: list[dict[str, str]],
               slot: JobSlot = JobSlot()) -> list[RunResult | AecliError]:
    """Train the runs ``plans`` describe as one pack; each one's result, or the error that ended it
    alone (refused while building, diverged). ``contexts[i]`` routes run i's log lines; ``slot``
    says how many packs share the cores (``hydra.launcher.n_jobs``); its job number is ignored:
    a pack trains on one device."""
    out: list[RunResult | AecliError | None] = [None] * len(plans)
    members: dict[int, Member] = {}
    slot = JobSlot(jobs_at_once=slot.jobs_at_once, launcher=slot.launcher)
    with SIGNALS.installed():
        data: ImageData | None = None
        for i, plan in enumerate(plans):
            with contexts[i]():
                try:
                    begun = start(plan, choices=choices[i], slot=slot, data=data,
                                  pick_threads=not members)
                except AecliError as e:
                    out[i] = e
                    continue
            if isinstance(begun, RunResult):  # a stop signal while building
                out[i] = begun
                continue
            data = begun.parts.data
            members[i] = Member(begun, rng_state(), contexts[i], int(begun.run.cfg.trainer.log_every_n_steps))
        if members:
            fit_pack(list(members.values()))
        for i, m in members.items():
            with m.active():
                try:
                    out[i] = m.error or end(m.begun, bool(m.finished))
                except AecliError as e:
                    out[i] = e
                finally:
                    m.begun.writer.close()
    done = [r for r in out if r is not None]
    assert len(done) == len(plans), "every plan ends refused, stopped, failed or with its result"
    return done


def fit_pack(members: list[Member]) -> None:
    """Every member's remaining epochs, side by side; each member ends finished, stopped or failed."""
    for m in members:
        run = m.begun.run
        phase = run.state.phases[run.state.phase]
        assert len(run.state.phases) == 1 and phase.main, "a model with pre-training stages does not pack"
        m.step = Step(phase, m.begun.parts.recon, m.begun.parts.precision, run.state.scaler,
                      m.begun.parts.data.as_float, world=run.world)
        run.step = m.step
        with m.active():
            m.begun.hooks.on_fit_start(run)
        if run.stop_requested or run.state.epoch >= phase.epochs:
            m.finished = not run.stop_requested or run.stop_requested == "max_steps"
    pack = PackedStep(members[0].model, members[0].begun.parts.recon, members[0].begun.parts.precision)
    while live := [m for m in members if m.finished is None and m.error is None]:
        lead = min(m.begun.run.state.step for m in live)
        active = [m for m in live if m.begun.run.state.step == lead]
        raws = {id(m): next_batch(m) for m in active}
        terms = pack([m.model for m in live], [m in active for m in live],
                     [raws.get(id(m), raws[id(active[0])]) for m in live], [m.step for m in live],  # type: ignore[misc]
                     [m.drawing for m in live])
        for m, t in zip(live, terms):
            if t is not None:
                after_step(m, t, raws[id(m)].shape[0])
        stop = next((m.begun.run.stop_requested for m in active
                     if m.begun.run.stop_requested not in (None, "max_steps")), None)
        for m in live:  # a signal stops every member at this step, whichever member's hook saw it
            if stop and m.finished is None and m.error is None:
                m.begun.run.stop_requested, m.finished = stop, False


def next_batch(m: Member) -> Tensor:
    """The member's next training batch (its own epoch order); the epoch's hooks when one begins."""
    run = m.begun.run
    state = run.state
    if m.batches is None:
        es = current_epoch(run)
        with m.active():
            m.begun.hooks.on_epoch_start(run)
        assert m.step is not None
        m.step.begin_epoch(es, state.step)
        m.batches = batches(run.data.train, run.batch_size, es.perm, start=es.batch)
        m.n_batches = math.ceil(len(es.perm) / run.batch_size)
        m.epoch_t0, m.seen_at_start = time.perf_counter(), es.seen
    return next(m.batches)[1]


def after_step(m: Member, terms: dict[str, Tensor], images: int) -> None:
    """The member's side of a step, as ``loop.train_epoch`` does it: the position, the sums, the
    non-finite check at sync points, the hooks; at the epoch's end its validation and hooks."""
    run, step_fn = m.begun.run, m.step
    state, es = run.state, run.state.epoch_state
    assert es is not None and step_fn is not None
    with m.active():
        try:
            state.step += 1
            es.batch += 1
            es.seen += images
            terms = step_fn.tally(terms, images, state.step)
            if state.step % m.sync_every == 0 or es.batch == m.n_batches:
                check_finite(step_fn)
            m.begun.hooks.on_step_end(run, terms)
            if es.batch == m.n_batches:
                end_epoch(m)
        except NonFiniteLoss as e:
            m.error = diverged(run, e)
        except AecliError as e:  # e.g. its checkpoint did not fit on the disk: it fails alone
            m.error = e
        except OSError as e:
            if e.errno not in DISK_ERRORS:
                raise
            m.error = write_failed(Path(e.filename or run.run_dir), e)
        if m.error is not None:
            log.error("%s", m.error)
            return
    if run.stop_requested and m.finished is None:
        m.finished = run.stop_requested == "max_steps"


def end_epoch(m: Member) -> None:
    """The epoch's means and speed, then ``loop.close_epoch``: the validation (the best model's
    record), the hooks; the member is finished after its last epoch."""
    run = m.begun.run
    result = epoch_result(run, m.n_batches, m.seen_at_start, m.epoch_t0)
    m.batches = None
    close_epoch(run, m.begun.hooks, result, lambda: validate(run, m.begun.parts, run.cfg, m.begun.best))
    if run.state.epoch >= run.state.phases[run.state.phase].epochs and m.finished is None:
        m.finished = True


@dataclass
class PackedStep:
    """One training step of every member at once. The members' parameters are stacked each step
    (so each member's own Adam steps its own leaf tensors) and their losses computed by one
    ``vmap`` of the model's loss over the members; each member's noise and model draws come from
    its own RNG, in its separate run's order (the draws' shapes are learnt once per batch shape
    from one member's unbatched loss)."""

    template: Autoencoder  # one member: the architecture every member shares
    recon: ReconstructionLoss
    precision: Any
    skeleton: Autoencoder = field(init=False)
    shapes: dict[tuple[int, ...], list[tuple[torch.Size, tuple[int, ...], torch.dtype]]] = field(default_factory=dict)
    held: dict[int, tuple[list[Tensor], list[Tensor]]] = field(default_factory=dict)
    scalars: dict[tuple[int, ...], dict[str, Tensor]] = field(default_factory=dict)  # per set of members

    def __post_init__(self) -> None:
        self.skeleton = copy.deepcopy(self.template)
        self.wrapper = LossOf(self.skeleton, self.recon)
        self.names = [n for n, _ in self.skeleton.named_parameters()]
        self.buffer_names = [n for n, _ in self.skeleton.named_buffers()]
        self.scalar_names = type(self.skeleton).pack_scalars
        self.batched = torch.func.vmap(self.one, randomness="error")

    def one(self, params: dict[str, Tensor], buffers: dict[str, Tensor], scalars: dict[str, Tensor], noisy: Tensor,
            x: Tensor, draws: list[Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """One member's loss terms (inside ``vmap``: its slice of every stacked input)."""
        replay = iter(draws)
        with member_view(self.skeleton, scalars, lambda like: next(replay)):
            terms = torch.func.functional_call(self.wrapper, prefixed({**params, **buffers}), (noisy, x),
                                               tie_weights=False, strict=True)
        return terms, buffers

    def tensors(self, model: Autoencoder) -> tuple[list[Tensor], list[Tensor]]:
        """A member's parameters and buffers, in the skeleton's order (looked up once)."""
        key = id(model)
        if key not in self.held:
            params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
            self.held[key] = ([params[n] for n in self.names], [buffers[n] for n in self.buffer_names])
        return self.held[key]

    def draw_shapes(self, model: Autoencoder, noisy: Tensor, x: Tensor) -> list[tuple[torch.Size, tuple[int, ...],
                                                                                      torch.dtype]]:
        """The shapes (and strides) of what the model's loss draws for a batch shaped like ``x``."""
        key = tuple(x.shape)
        if key not in self.shapes:
            seen: list[tuple[torch.Size, tuple[int, ...], torch.dtype]] = []

            def record(like: Tensor) -> Tensor:
                out = torch.randn_like(like)
                seen.append((out.shape, out.stride(), out.dtype))
                return out

            state = {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}
            scalars = {n: torch.tensor(float(getattr(model, n))) for n in self.scalar_names}
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), torch.no_grad(), \
                    member_view(self.skeleton, scalars, record):
                torch.func.functional_call(self.wrapper, prefixed(state), (noisy, x), strict=True)
            self.shapes[key] = seen
        return self.shapes[key]

    def __call__(self, models: list[Autoencoder], active: list[bool], raws: list[Tensor], steps: list[Step],
                 contexts: list[Callable[[], AbstractContextManager[Any]]]) -> list[dict[str, Tensor] | None]:
        """Step the ``active`` members (the others ride along unchanged); each active one's loss terms."""
        xs, noisy, draws = [], [], []
        for model, on, raw, step, context in zip(models, active, raws, steps, contexts):
            x = step.prepare(raw)
            if on:
                with context():  # its RNG: noise first, then the model's draws, as its own run draws them
                    n = step.phase.noise(x)
                    d = [torch.empty_strided(s, st, dtype=dt, device=x.device).normal_()
                         for s, st, dt in self.draw_shapes(model, n, x)]
            else:
                n, d = x, [torch.zeros(s, dtype=dt, device=x.device) for s, _, dt in self.draw_shapes(model, x, x)]
            xs.append(x)
            noisy.append(n)
            draws.append(d)
        held = [self.tensors(m) for m in models]
        params = {name: torch.stack([h[0][k] if on else h[0][k].detach() for h, on in zip(held, active)])
                  for k, name in enumerate(self.names)}
        buffers = {name: torch.stack([h[1][k] for h in held]) for k, name in enumerate(self.buffer_names)}
        key = tuple(id(m) for m in models)
        if key not in self.scalars:  # the members' own values, stacked once per set of members
            self.scalars[key] = {name: torch.tensor([float(getattr(m, name)) for m in models], device=xs[0].device)
                                 for name in self.scalar_names}
        scalars = self.scalars[key]
        stacked_draws = [torch.stack([d[k] for d in draws]) for k in range(len(draws[0]))]
        for step, on in zip(steps, active):
            if on:
                step.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            terms, buffers = self.batched(params, buffers, scalars, torch.stack(noisy), torch.stack(xs), stacked_draws)
        on_index = [i for i, on in enumerate(active) if on]
        terms["loss"][on_index].sum().backward()
        out: list[dict[str, Tensor] | None] = []
        for i, (on, step) in enumerate(zip(active, steps)):
            if not on:
                out.append(None)
                continue
            step.optimizer.step()
            with torch.no_grad():
                for b, name in zip(held[i][1], self.buffer_names):
                    b.copy_(buffers[name][i])
            out.append({k: v[i] for k, v in terms.items()})
        return out


def prefixed(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The model's parameter and buffer names as ``LossOf`` holds them."""
    return {f"model.{n}": t for n, t in tensors.items()}


class LossOf(nn.Module):
    """``model.loss`` as a module's forward, for ``torch.func.functional_call``."""

    def __init__(self, model: Autoencoder, recon: ReconstructionLoss) -> None:
        super().__init__()
        self.model, self.recon = model, recon

    def forward(self, noisy: Tensor, x: Tensor) -> dict[str, Tensor]:
        return self.model.loss(noisy, x, self.recon)


@contextmanager
def member_view(model: Autoencoder, scalars: dict[str, Tensor], draw: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """``model`` as one member sees it: its ``pack_scalars`` values and its draws."""
    saved = {n: getattr(model, n) for n in scalars}
    for n, v in scalars.items():
        object.__setattr__(model, n, v)
    object.__setattr__(model, "draw_normal", draw)
    try:
        yield
    finally:
        for n, v in saved.items():
            object.__setattr__(model, n, v)
        object.__delattr__(model, "draw_normal")
