"""Faults the tests plug in through aecli's own seams: hooks and ``_target_``s named in the config
(``+callbacks.pause._target_=tests.faults.PauseAt``), and ``python -m tests.faults`` (a run that
pauses inside its N-th checkpoint write). Nothing here is in ``aecli/``."""
from __future__ import annotations

import sys
import time

import torch
from torch import Tensor

from aecli.training.hooks import Hook

MARKER = "aecli-test: paused"
PAUSE_LIMIT_S = 60.0  # a paused run that nobody kills ends itself (a broken test must not hang CI)


def pause(where: str) -> None:
    """Announce the pause and wait until a stop signal arrives (or the limit: then exit 3)."""
    import os

    from aecli.training.signals import SIGNALS

    print(f"{MARKER} {where} (pid {os.getpid()})", file=sys.stderr, flush=True)
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while SIGNALS.requested is None:
        if time.monotonic() > deadline:
            print("aecli-test: pause limit reached", file=sys.stderr, flush=True)
            sys.exit(3)
        time.sleep(0.01)


class PauseAt(Hook):
    """Pause after optimizer step ``step``, or at ``event`` (fit_start, fit_end); in a DDP run
    only on ``rank`` (all ranks: None)."""

    def __init__(self, step: int | None = None, event: str | None = None, rank: int | None = None) -> None:
        self.step, self.event, self.rank = step, event, rank

    def on_step_end(self, run, terms) -> None:
        if run.state.step == self.step and self.rank in (None, run.world.rank):
            pause(f"after step {self.step}")

    def on_fit_start(self, run) -> None:
        if self.event == "fit_start":
            pause("at fit start")

    def on_fit_end(self, run, metrics) -> None:
        if self.event == "fit_end":
            pause("at fit end")


def slow_digits(**kwargs):
    """The digits, loaded slowly: a window in which to signal a run before training starts (no
    pause with AECLI_TEST_NO_PAUSE set: the run that continues the stopped one)."""
    import os

    from aecli.data import load_digits

    if not os.environ.get("AECLI_TEST_NO_PAUSE"):
        pause("loading the data")
    return load_digits(**kwargs)


class NaNNoise:
    """Clean inputs, except that the listed calls (1-based) return all-NaN batches."""

    level = 0.0
    corrupts = False

    def __init__(self, nan_calls: list[int]) -> None:
        self.nan_calls = set(nan_calls)
        self.calls = 0

    def __call__(self, x: Tensor) -> Tensor:
        self.calls += 1
        return torch.full_like(x, float("nan")) if self.calls in self.nan_calls else x

    def at_level(self, level: float, clip: bool = True) -> NaNNoise:
        return self


def pause_in_checkpoint_write(n: int | str) -> None:
    """Make the ``n``-th checkpoint write (``n`` a file name such as ``metrics.json``: the first
    write of that file) pause after its temp file is written, before the rename (where a kill
    leaves a half-finished write behind)."""
    from aecli import figures
    from aecli.store import checkpoint, rundir

    for module in (checkpoint, rundir, figures):
        module.atomic_write = pausing(module.atomic_write, n)


def pausing(original, n: int | str):
    count = [0]

    def atomic_write(path, write, **kwargs):
        if path.suffix != ".pt" if isinstance(n, int) else path.name != n:
            return original(path, write, **kwargs)
        count[0] += 1
        if count[0] != (n if isinstance(n, int) else 1):
            return original(path, write, **kwargs)

        def write_then_pause(f):
            write(f)
            f.flush()
            pause(f"in checkpoint write {n} ({path})")

        return original(path, write_then_pause, **kwargs)

    return atomic_write


if __name__ == "__main__":  # python -m tests.faults N|NAME ARGS...: aecli.training.app ARGS, pausing in write N
    pause_in_checkpoint_write(int(sys.argv[1]) if sys.argv[1].isdigit() else sys.argv[1])
    sys.argv = ["aecli.train", *sys.argv[2:]]
    from aecli.training.app import main

    main()


class SlowStop(Hook):
    """Take ``seconds`` in ``on_stop`` (after the ranks' last collective) on ``rank``: the other
    ranks reach their exit first."""

    def __init__(self, seconds: float = 3.0, rank: int = 0) -> None:
        self.seconds, self.rank = seconds, rank

    def on_stop(self, run) -> None:
        if run.world.rank == self.rank:
            time.sleep(self.seconds)
