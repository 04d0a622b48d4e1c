"""The built-in hooks every run has (``training.hooks`` says what a hook is): checkpointing,
progress lines, stop on a signal, ``trainer.max_steps``, and the first step's time.
TensorBoard's hooks live in ``training.tensorboard``."""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from aecli.data.vectors import transform_file
from aecli.store import checkpoint, rundir
from aecli.store.atomic import remove_stale_temps
from aecli.threads import spinning, wait_policy_in_effect
from aecli.training.best import BestModel
from aecli.training.distributed import epoch_totals, gather
from aecli.training.hooks import EpochResult, Hook, Run
from aecli.training.signals import seconds_since_process_start
from aecli.training.state import rng_state
from aecli.training.step import check_finite

log = logging.getLogger(__name__)


class Checkpointing(Hook):
    """``checkpoints/last.pt`` at every epoch's end, every ``every_n_steps`` steps and on a stop;
    ``best.pt`` when ``best`` says the model is the best one (written right after ``last.pt``,
    which records where the best model is from, so a crash between the two is repaired at the
    next start: ``BestModel.repair``)."""

    def __init__(self, every_n_steps: int | None, best: BestModel, flush: Callable[[], None] = lambda: None) -> None:
        self.every_n_steps, self.best, self.flush = every_n_steps, best, flush

    def on_fit_start(self, run: Run) -> None:
        if not run.world.main:
            return
        directory = run.run_dir / "checkpoints"
        for stale in remove_stale_temps(directory):
            log.info("removed %s, left by a process killed while writing it", stale)
        directory.mkdir(parents=True, exist_ok=True)
        self.best.repair(run.run_dir, run.state)

    def save(self, run: Run, best: bool = False) -> None:
        """Write last.pt (and best.pt); in a DDP run every rank takes part (the epoch's sums and
        the RNG states are gathered), rank 0 writes."""
        es, world = run.state.epoch_state, run.world
        if es is not None:
            check_finite(run.step, world)  # never replace a good checkpoint with a diverged model
        self.flush()  # events up to this step reach the disk before the checkpoint that resumes after them
        run.state.hooks = run.hooks.states()
        epoch_state = rng_ranks = None
        if world.distributed:
            rng_ranks = gather(world, rng_state())
        if es is not None:
            sums = run.epoch_sums()
            if world.distributed:
                totals, seen = epoch_totals(world, sums, es.seen, es.perm.device)
                sums = {k: torch.tensor(v) for k, v in totals.items()}
            epoch_state = es.to_dict(sums) | ({"seen": seen} if world.distributed else {})
        if not world.main:
            return
        snapshot = run.state.to_dict(run.data.shape, run.config, epoch_state, rng_ranks, run.data.transform)
        directory = run.run_dir / "checkpoints"
        checkpoint.save(snapshot, directory / checkpoint.LAST, *([directory / checkpoint.BEST] if best else []))

    def on_step_end(self, run: Run, terms: dict[str, Tensor] | None) -> None:
        es = run.state.epoch_state
        assert es is not None, "steps run inside an epoch"
        last_batch = es.batch * run.batch_size >= len(es.perm)  # the epoch's end writes one anyway
        if self.every_n_steps and run.state.step % self.every_n_steps == 0 and not run.stop_requested \
                and not last_batch:
            self.save(run)

    def on_epoch_end(self, run: Run, result: EpochResult, val: dict[str, float] | None) -> None:
        self.save(run, best=val is not None and self.best.holds(run.state))

    def on_stop(self, run: Run) -> None:
        self.save(run)


class ProgressReport(Hook):
    """A tqdm bar per epoch on a terminal (``trainer.progress=bar``), and one log line per epoch."""

    def __init__(self, bar: bool, sync_every: int) -> None:
        self.use_bar, self.sync_every = bar, sync_every
        self.bar: Any = None
        self.t0 = 0.0
        self.seen0 = 0

    def on_epoch_start(self, run: Run) -> None:
        es = run.state.epoch_state
        assert es is not None, "run_epochs sets the epoch before its start"
        self.t0, self.seen0 = time.perf_counter(), es.seen
        if self.use_bar:
            import math

            from tqdm.auto import tqdm

            self.bar = tqdm(total=math.ceil(len(es.perm) / run.batch_size), initial=es.batch, leave=False,
                            desc=self._desc(run), file=sys.stderr)

    @staticmethod
    def _desc(run: Run) -> str:
        phase, state = run.phase, run.state
        assert phase is not None, "an epoch belongs to a phase"
        epoch = f"epoch {state.epoch + 1}/{phase.epochs}"
        return epoch if phase.main else f"{phase.name} {epoch}"

    def on_step_end(self, run: Run, terms: dict[str, Tensor] | None) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if terms is not None and run.state.step % self.sync_every == 0:  # a sync the loop makes anyway
            assert run.state.epoch_state is not None, "steps run inside an epoch"
            ips = (run.state.epoch_state.seen - self.seen0) / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix(loss=f"{terms['loss'].item():.4g}", img_s=f"{ips:,.0f}")

    def on_epoch_end(self, run: Run, result: EpochResult, val: dict[str, float] | None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        phase = run.phase
        assert phase is not None, "an epoch belongs to a phase"
        unit = phase.unit
        line = f"{phase.name} epoch {run.state.epoch}/{phase.epochs} step {run.state.step}: loss_{unit} " \
               f"{result.means.get('loss', float('nan')):.5g}"
        if val is not None:
            line = f"epoch {run.state.epoch}/{phase.epochs} step {run.state.step}: train loss_{unit} " \
                   f"{result.means.get('loss', float('nan')):.5g} | val loss_{unit} {val[f'loss_{unit}']:.5g}, " \
                   f"psnr {val['psnr_db']:.2f} dB"
        log.info("%s | %s img/s, %.1fs", line, f"{result.images_per_sec:,.0f}", time.perf_counter() - self.t0)

    def on_stop(self, run: Run) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StopOnSignal(Hook):
    """A stop signal (SIGTERM, SIGINT; ``aecli.training.signals``) ends training after the current step.
    In a DDP run a signal to any rank stops every rank, at the same step: the ranks agree every
    ``every`` steps (the loop's sync points) and at epoch ends."""

    def __init__(self, signals: Any, every: int = 1) -> None:
        self.signals, self.every = signals, every

    def on_step_end(self, run: Run, terms: dict[str, Tensor] | None) -> None:
        if run.stop_requested is None and (not run.world.distributed or run.state.step % self.every == 0):
            self.check(run)

    def on_epoch_end(self, run: Run, result: EpochResult, val: dict[str, float] | None) -> None:
        if run.stop_requested is None:
            self.check(run)  # one that arrived during validation

    def check(self, run: Run) -> None:
        """Stop if this rank (or, in a DDP run, any rank: every rank then takes its signal) got one."""
        signum = run.world.largest(self.signals.requested or 0, run.device)
        if signum:
            self.signals.requested = self.signals.requested or signum
            run.stop_requested = self.signals.name()


class MaxSteps(Hook):
    """``trainer.max_steps``: training ends after that many optimizer steps in all."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps

    def on_fit_start(self, run: Run) -> None:
        self.on_step_end(run, None)

    def on_step_end(self, run: Run, terms: dict[str, Tensor] | None) -> None:
        if run.state.step >= self.max_steps and run.stop_requested is None:
            run.stop_requested = "max_steps"


class KeepThreads(Hook):
    """``trainer.num_threads=auto`` picks the count by timing, so a resume could pick another
    count than the run it continues, and another count sums in another order (the last bits of
    every result differ). The checkpoint records the count; a resume with ``auto`` keeps it, so
    it continues exactly. A number given on the command line is used as given."""

    state_key = "torch_threads"

    def __init__(self, setting: Any) -> None:
        self.setting = setting

    def state_dict(self) -> dict[str, Any]:
        return {"threads": torch.get_num_threads()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        threads = state.get("threads")
        if self.setting == "auto" and isinstance(threads, int) and threads >= 1 and threads != torch.get_num_threads():
            log.info("torch threads: %d, as the run this resume continues (exact resume; trainer.num_threads=N "
                     "to change it)", threads)
            torch.set_num_threads(threads)


class SpinWatch(Hook):
    """Load that arrives after startup. On a machine that was quiet when the run started, torch's
    idle threads spin-wait (``aecli.threads.set_wait_policy``); if other work takes the cores
    later, every parallel region waits for a descheduled spinner, and several threads become many
    times slower than one. So while threads spin (more than one, on the CPU) this times windows of
    at least ``every`` steps and ``WINDOW_S`` seconds of training (validation and the epochs' ends
    left out) and keeps the best steps/s of the phase; ``SLOW_WINDOWS`` windows in a row
    ``SLOWDOWN`` times slower than the best drop torch to one thread, with one warning that says
    why. A count the user chose (``trainer.num_threads=N`` or null) is kept: the warning then
    says what to do. The checkpoint records the count in use (``KeepThreads``), so a resume goes
    on with one thread. ``clock``: seconds, injectable for tests."""

    SLOWDOWN = 3.0  # a window this many times slower than the best: the machine got busy
    SLOW_WINDOWS = 2  # in a row: one slow window alone can be a pause (a checkpoint write, the GC)
    WINDOW_S = 0.1  # the shortest window: a few fast steps alone are mostly noise

    def __init__(self, setting: Any, every: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.setting, self.every, self.clock = setting, max(int(every), 1), clock
        self.active = False
        self.phase: Any = None
        self.best = self.seconds = self.last = 0.0
        self.slow = self.steps = 0

    def on_fit_start(self, run: Run) -> None:
        self.active = run.device.type == "cpu" and spinning() and torch.get_num_threads() > 1

    def on_epoch_start(self, run: Run) -> None:
        if run.phase is not self.phase:  # another phase trains another network, at another speed
            self.phase, self.best, self.slow, self.steps, self.seconds = run.phase, 0.0, 0, 0, 0.0
        self.last = self.clock()

    def on_step_end(self, run: Run, terms: dict[str, Tensor] | None) -> None:
        if not self.active:
            return
        now = self.clock()
        self.steps, self.seconds, self.last = self.steps + 1, self.seconds + now - self.last, now
        if self.steps < self.every or self.seconds < self.WINDOW_S:
            return
        rate = self.steps / self.seconds
        self.steps, self.seconds = 0, 0.0
        self.best = max(self.best, rate)
        self.slow = self.slow + 1 if rate * self.SLOWDOWN <= self.best else 0
        if self.slow >= self.SLOW_WINDOWS:
            self.active = False
            self.busy(run, rate)

    def busy(self, run: Run, rate: float) -> None:
        threads = torch.get_num_threads()
        why = (f"the machine got busy: training ran at {rate:.3g} steps/s against {self.best:.3g} at best "
               f"({self.SLOW_WINDOWS} windows in a row), its {threads} threads spin-waiting "
               f"({wait_policy_in_effect()})")
        if self.setting == "auto":
            torch.set_num_threads(1)
            log.warning("%s; on 1 thread from step %d on (trainer.num_threads=auto)", why, run.state.step)
        else:
            log.warning("%s; trainer.num_threads=%s keeps them: trainer.num_threads=auto would go on with 1 "
                        "thread, OMP_WAIT_POLICY=PASSIVE keeps threads from spinning", why, self.setting)


class FirstStepTime(Hook):
    """Seconds from the process's start to the end of the first optimizer step it ran
    (``metrics.json``'s ``first_step_seconds``): the startup a user waits through. Kept in the
    checkpoints: a resume after the final checkpoint (no step to run) reports the interrupted
    process's."""

    state_key = "first_step"

    def __init__(self) -> None:
        self.seconds: float | None = None
        self.saved: float | None = None  # an earlier process's, from the checkpoint

    def on_step_end(self, run: Run, terms: dict[str, Tensor] | None) -> None:
        if self.seconds is None:
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)

            self.seconds = seconds_since_process_start()

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds if self.seconds is not None else self.saved}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = state.get("seconds")

    def on_fit_end(self, run: Run, metrics: dict[str, Any]) -> None:
        seconds = self.seconds if self.seconds is not None else self.saved
        if seconds is not None:
            metrics["first_step_seconds"] = round(seconds, 3)


class LastEpoch(Hook):
    """The main phase's last epoch (its mean loss terms and images/s: ``metrics.json``'s
    ``train_epoch/*`` and ``images_per_sec``) kept in the checkpoints, so that a resume after the
    final checkpoint finishes as the uninterrupted run does. Runs before ``Checkpointing``."""

    state_key = "last_epoch"

    def __init__(self) -> None:
        self.last: EpochResult | None = None

    def on_fit_start(self, run: Run) -> None:
        run.last_epoch = run.last_epoch or self.last

    def on_epoch_end(self, run: Run, result: EpochResult, val: dict[str, float] | None) -> None:
        self.last = run.last_epoch

    def state_dict(self) -> dict[str, Any]:
        last = self.last
        return {} if last is None else {"means": dict(last.means), "images_per_sec": last.images_per_sec}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.last = EpochResult(dict(state["means"]), state["images_per_sec"])


class SaveTransform(Hook):
    """A vector dataset's fitted transform (a table's scaler, a corpus's vocabulary) as JSON in
    the run dir (``vocabulary.json``, ``scaler.json``), readable without aecli; the commands that
    open the run check it against the checkpoint's copy."""

    def on_fit_start(self, run: Run) -> None:
        if run.world.main and run.data.transform is not None:
            rundir.write_json(run.run_dir / transform_file(run.data.kind), run.data.transform)
