"""Shared test helpers: compose configs like the CLI does, run the CLI as a user would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig


def make_cfg(*overrides: str) -> DictConfig:
    """The composed config for ``python -m aecli.train <overrides>`` (Hydra's compose API)."""
    with initialize_config_module(config_module="aecli.conf", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


# Short runs: 2 epochs, progress as log lines, per-step scalars every step.
QUICK = ("trainer.epochs=2", "trainer.progress=log", "trainer.log_every_n_steps=1", "model.pretrain_epochs=1")


def quick_cfg(*overrides: str) -> DictConfig:
    model = next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), "ae")
    quick = [q for q in QUICK if model == "stacked" or not q.startswith("model.pretrain")]
    return make_cfg(*quick, *overrides)


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m aecli.train ARGS`` in a subprocess, from ``cwd``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "aecli.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_events(run_dir: Path):
    """TensorBoard's own reader over a run dir (all scalars and images kept)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def read_metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, to prove nothing was touched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def cfg_factory():
    return quick_cfg
