"""What every command on a trained run shares (``aecli.use.encode``, ``aecli.use.map``, ``aecli.use.search``,
``aecli.use.denoise``, ``aecli.use.sample``, ``aecli.use.score``, ``aecli.use.finetune``): the command line
(``RUN``, ``--checkpoint``, ``--device``, ``--threads``, ``--out``), opening the run (and choosing its CPU
threads), where outputs go, progress bars, and bad input as one ``aecli: error: KEY: ...`` message with exit status 1.

Each command module holds its own recipe and calls ``main(parser, recipe, argv)``.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from aecli.errors import AecliError, ConfigError
from aecli.threads import choose_threads, cores_available, parse_threads
from aecli.use.trained import TrainedRun
from aecli.use.trained import open_run as open_

T = TypeVar("T")


def parser(name: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """A command's parser with the options every command has: RUN, --checkpoint, --device, --threads, --out."""
    p = argparse.ArgumentParser(prog=f"python -m aecli.{name}", description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="a run dir (the 'run dir: ...' that python -m aecli.train printed), "
                   "or a checkpoint file in one")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="the model with the best validation loss (default) or the last one")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="where the model runs (default: auto, a GPU when there is one)")
    add_threads(p)
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write the outputs into DIR (default: the run dir)")
    return p


def main(p: argparse.ArgumentParser, recipe: Callable[[argparse.Namespace], None],
         argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run ``recipe``; aecli's errors become one message and exit status 1."""
    args = p.parse_args(argv)
    try:
        recipe(args)
    except AecliError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


def add_threads(p: argparse.ArgumentParser) -> None:
    """``--threads auto|N``: torch's CPU thread count."""
    p.add_argument("--threads", default="auto", metavar="auto|N",
                   help="torch's CPU threads: auto (default: the fastest for this model on this machine now, "
                   "timed at startup in under a second) or a number")


def open_run(args: argparse.Namespace) -> TrainedRun:
    """The run ``RUN`` names, with the ``--checkpoint`` model on ``--device`` and ``--threads`` set."""
    threads = parse_threads(getattr(args, "threads", "auto"))  # before the checkpoint is read: a typo costs nothing
    run = open_(args.run, args.checkpoint, args.device)
    set_threads(run, threads)
    return run


def set_threads(run: TrainedRun, threads: int | str, batch: int = 256) -> None:
    """``--threads``: a number is taken as is; ``auto`` on the CPU times the model's forward pass on a
    batch at each thread count (``aecli.threads.choose_threads``) and says what it chose (log; stderr on a terminal)."""
    if threads != "auto":
        torch.set_num_threads(int(threads))
        return
    if run.device.type != "cpu":
        return
    x = torch.rand(batch, *run.model.input_shape)

    def step() -> None:
        with torch.no_grad():
            run.model(x)

    with torch.random.fork_rng(devices=[]):
        _, why = choose_threads(step, cores_available())
    line = f"torch threads: {torch.get_num_threads()} ({why})"
    logging.getLogger("aecli").info(line)  # evaluate's log; the other commands: a terminal only, as progress bars
    if sys.stderr.isatty():
        print(f"aecli: {line}", file=sys.stderr)


def out_dir(args: argparse.Namespace, run: TrainedRun) -> Path:
    """Where outputs go: ``--out`` (made if needed), else the run dir."""
    out = Path(args.out) if args.out is not None else run.run_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("--out", f"cannot make {out} ({e.strerror or e})",
                          "pass --out DIR where you can write") from None
    return out


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
    """A markdown table (what the README quotes), numbers as given."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
