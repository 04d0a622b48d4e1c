"""What every command on a trained run shares (``aecli.use.encode``, ``aecli.use.map``, ``aecli.use.search``,
``aecli.use.denoise``, ``aecli.use.sample``, ``aecli.use.score``, ``aecli.use.finetune``): opening the run
that ``RUN``, ``--checkpoint`` and ``--device`` name, the ``--noise`` to apply, where outputs go
(``--out``), progress bars and tables.

The options themselves are parsed and checked by ``aecli.cli`` (no torch), which then calls the
command module's ``recipe(args)``; aecli's errors become one ``aecli: error: KEY: ...`` message there.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf

from aecli.components import build
from aecli.errors import ConfigError
from aecli.use import tables
from aecli.use.trained import TrainedRun
from aecli.use.trained import open_run as open_

T = TypeVar("T")


def open_run(args: argparse.Namespace) -> TrainedRun:
    """The run ``RUN`` names, with the ``--checkpoint`` model on ``--device``."""

    return open_(args.run, args.checkpoint, args.device)


def noise(run: TrainedRun, option: Any) -> Any:
    """The noise ``--noise KIND[:LEVEL]`` names (an ``aecli.cli.NoiseOption``, already checked), or
    the run's own where there is none."""
    return run.noise if option is None else build(OmegaConf.create({"noise": option.config()}), "noise")


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
