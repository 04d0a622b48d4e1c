"""What every command on a trained run shares (``aecli.use.encode``, ``aecli.use.map``, ``aecli.use.search``,
``aecli.use.denoise``, ``aecli.use.sample``, ``aecli.use.score``, ``aecli.use.finetune``): opening the run
that ``RUN``, ``--checkpoint`` and ``--device`` name (with ``--threads``), the ``--noise`` to apply, where outputs go
(``--out``), progress bars and tables.

The options themselves are parsed and checked by ``aecli.cli`` (no torch), which then calls the
command module's ``recipe(args)``; aecli's errors become one ``aecli: error: KEY: ...`` message there.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import OmegaConf

from aecli.components import build
from aecli.config import noise_name
from aecli.errors import ConfigError
from aecli.store import rundir
from aecli.store.atomic import remove_stale_temps
from aecli.threads import choose_threads, cores_available, limit_libraries, parse_threads, wait_policy_in_effect
from aecli.use import tables
from aecli.use.trained import TrainedRun
from aecli.use.trained import open_run as open_

T = TypeVar("T")


def open_run(args: argparse.Namespace) -> TrainedRun:
    """The run ``RUN`` names, with the ``--checkpoint`` model on ``--device``; a run still
    training there is named in a warning (its checkpoints change under the command)."""
    threads = parse_threads(getattr(args, "threads", "auto"))  # before the checkpoint is read: a typo costs nothing
    run = open_(args.run, args.checkpoint, args.device)
    still_training(run.run_dir)
    set_threads(run, threads)
    return run


def still_training(run_dir: Path) -> str | None:
    """Warn when a process holds ``run_dir``'s lock (the run is still training); who holds it."""
    holder = rundir.holder(run_dir)
    if holder is not None:
        warn(f"{run_dir} is still training ({holder}): this uses its checkpoint as it is now")
    return holder


def check_writable(out: Path, run_dir: Path) -> None:
    """Refuse to write into a run dir that a training process holds."""
    if Path(out).absolute() == Path(run_dir).absolute() and rundir.holder(run_dir) is not None:
        raise ConfigError("--out", f"{run_dir} is still training (its lock is held), so nothing is written into it",
                          "pass --out DIR for the outputs, or wait until the run has finished")


def noise(run: TrainedRun, option: Any) -> Any:
    """The noise ``--noise KIND[:LEVEL]`` names (an ``aecli.cli.NoiseOption``, already checked), or
    the run's own where there is none."""
    return run.noise if option is None else build(OmegaConf.create({"noise": option.config()}), "noise")


def set_threads(run: TrainedRun, threads: int | str, batch: int = 256) -> None:
    """``--threads``: a number is taken as is, by torch and by scikit-learn's and numpy's pools
    alike; ``auto`` on the CPU times the model's forward pass on a batch at each thread count
    (``aecli.threads.choose_threads``) and says what it chose (log; stderr on a terminal)."""
    if threads != "auto":
        torch.set_num_threads(int(threads))
        limit_libraries(int(threads))
        return
    if run.device.type != "cpu":
        return
    x = torch.rand(batch, *run.model.input_shape)

    def step() -> None:
        with torch.no_grad():
            run.model(x)

    with torch.random.fork_rng(devices=[]):
        _, why = choose_threads(step, cores_available())
    line = f"torch threads: {torch.get_num_threads()} ({why}; wait policy {wait_policy_in_effect()})"
    logging.getLogger("aecli").info(line)  # evaluate's log; the other commands: a terminal only, as progress bars
    if sys.stderr.isatty():
        print(f"aecli: {line}", file=sys.stderr)


def out_dir(args: argparse.Namespace, run: TrainedRun) -> Path:
    """Where outputs go: ``--out`` (made if needed), else the run dir."""
    out = Path(args.out) if args.out is not None else run.run_dir
    check_writable(out, run.run_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("--out", f"cannot make {out} ({e.strerror or e})",
                          "pass --out DIR where you can write") from None
    remove_stale_temps(out)  # what writers killed mid-write left there
    return out


def source_tag(path: Path) -> str:
    """A file-name part for an input path: its name and a short hash of its absolute path, so two
    folders (or files) of the same name never map to one output."""
    import hashlib

    resolved = Path(path).expanduser().resolve()
    name = (resolved.name if resolved.is_dir() else resolved.stem) or "root"
    return f"{name}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:6]}"


def run_title(run: TrainedRun) -> str:
    """How figures name a run: the model class, the noise it trained with, the run dir (its
    parent too: a date, a sweep) and a checkpoint other than the best."""
    noise = f" trained on {noise_name(run.noise)} noise" if run.noise.corrupts else ""
    which = "" if run.checkpoint_name == "best.pt" else f", {run.checkpoint_name}"
    return f"{type(run.model).__name__}{noise} ({run.run_dir.parent.name}/{run.run_dir.name}{which})"


def class_name(classes: list[str] | None, k: int) -> str:
    """Label ``k`` as its class name, where the dataset names its classes."""
    return classes[k] if classes and 0 <= k < len(classes) else str(k)


def wrote(*paths: Path) -> None:
    """Tell the user where each output went."""
    for path in paths:
        print(f"wrote {path}")


def warn(message: str) -> None:
    print(f"aecli: warning: {message}", file=sys.stderr)


def progress(items: Iterable[T], total: int | None = None, desc: str = "") -> Iterable[T]:
    """``items`` with a tqdm bar on stderr when it is a terminal (none in logs and pipes)."""
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, leave=False, file=sys.stderr, disable=None)


@contextlib.contextmanager
def stage(desc: str) -> Iterator[None]:
    """A long step that reports no progress of its own (scikit-learn's t-SNE, a probe's fit): its
    name and the seconds so far, ticking on stderr while it runs (a terminal only, as ``progress``)."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, bar_format="{desc}: {elapsed}", leave=False, file=sys.stderr, disable=None)
    done = threading.Event()

    def tick() -> None:
        while not done.wait(0.5):
            bar.refresh()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
        bar.close()


def test_index(value: Any, n: int, key: str) -> int:
    """``value`` as an index into the test split of ``n`` images, or one clear message."""
    try:
        index = int(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"{value!r} is not an index", f"pass a test image's index, 0 to {n - 1}") from None
    if not 0 <= index < n:
        raise ConfigError(key, f"{index} is out of range: the test split has {n} images (0 to {n - 1})",
                          f"pass an index from 0 to {n - 1}")
    return index


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A markdown table (what the README quotes): ``aecli.use.tables.markdown``."""
    return tables.markdown(rows, header)
