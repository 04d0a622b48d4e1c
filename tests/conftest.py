"""Shared test helpers: compose configs like the CLI does, run the CLI as a user would."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parent.parent


def make_cfg(*overrides: str) -> DictConfig:
    """The composed config for ``python -m aecli.train <overrides>`` (Hydra's compose API), on
    the CPU unless the overrides name a device: the default suite gives the same numbers on a
    machine with a GPU (the GPU's own checks: tests/test_gpu.py)."""
    device = [] if any(o.startswith("device") for o in overrides) else ["device=cpu"]
    with initialize_config_module(config_module="aecli.conf", version_base="1.3"):
        return compose(config_name="train", overrides=[*device, *overrides])


# Short runs: 2 epochs, progress as log lines, per-step scalars every step.
QUICK = ("trainer.epochs=2", "trainer.progress=log", "trainer.log_every_n_steps=1")


def quick_cfg(*overrides: str) -> DictConfig:
    stacked = any(o in ("model=stacked", "experiment=stacked_dae") for o in overrides)
    return make_cfg(*QUICK, *(["model.pretrain_epochs=1"] if stacked else []), *overrides)


def cli_env(gpu: bool = False) -> dict[str, str]:
    """A subprocess's environment: the repo on the path (so ``tests.*`` hooks and models can be
    named as ``_target_``), Hydra's own error printing off, and no GPU unless ``gpu``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("HYDRA_FULL_ERROR", None)
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_cli(*args: str, cwd: Path, timeout: float = 300, module: str = "aecli.train",
            gpu: bool = False) -> subprocess.CompletedProcess:
    """``python -m aecli.train ARGS`` (or another module) in a subprocess, from ``cwd``."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=cli_env(gpu),
                          capture_output=True, text=True, timeout=timeout)


def popen_cli(*args: str, cwd: Path, module: str = "aecli.train", gpu: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=cli_env(gpu),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_events(run_dir: Path):
    """TensorBoard's own reader over a run dir (all scalars and images kept)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def read_metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (but the run dir's lock), to prove nothing was
    touched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and p.name != ".aecli.lock"}


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("images_per_sec", "first_step_seconds")}


@pytest.fixture(scope="session")
def initial_threads() -> int:
    import torch

    return torch.get_num_threads()


@pytest.fixture(autouse=True)
def torch_threads(initial_threads):
    """After each test, the process's first thread count again: a run with
    trainer.num_threads=N sets torch's for the whole process, and results computed with other
    thread counts differ in their last bits (the resume tests compare an in-process run with
    subprocesses bit for bit)."""
    import torch

    yield
    torch.set_num_threads(initial_threads)


def _launches_aecli(args) -> bool:
    """``python -m aecli...`` / ``-m tests.faults``, the ``aecli`` script, or torchrun (a ``python -c``
    snippet that imports aecli to look at it is no run of aecli)."""
    words = [str(a) for a in (args if isinstance(args, (list, tuple)) else str(args).split())]
    modules = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "-m"]
    program = Path(words[0]).name if words else ""
    return any(m.startswith(("aecli", "tests.faults", "torch.distributed")) for m in modules) \
        or program in ("aecli", "torchrun")


@pytest.fixture(autouse=True)
def two_lanes(request, monkeypatch):
    """The fast lane runs in-process: a test that starts aecli (or torchrun) in a subprocess
    belongs to the integration lane (``@pytest.mark.integration``), and fails here until it is
    marked, so the lanes stay what the README says they are."""
    if request.node.get_closest_marker("integration") is not None:
        return
    original = subprocess.Popen.__init__

    def guarded(self, args, *a, **kw):
        if _launches_aecli(args):
            raise AssertionError(f"{request.node.nodeid} starts a subprocess ({args!r}): mark it "
                                 "@pytest.mark.integration")
        original(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


# Trained runs that several test files put to work, trained once per session (in-process, on the
# digits): ae 10 epochs, dae (binomial p=0.25) and vae (bce) 15 epochs each, at a learning rate of
# 3e-3 (trained enough in 10-15 epochs of ~0.5 s each).
FAST = ("trainer.progress=log", "trainer.log_every_n_steps=50", "optim.lr=3e-3")


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> dict[str, Path]:
    """Run dirs of an ae, a dae and a vae trained on the digits (shared: read them, write elsewhere)."""
    from aecli.training.run import run

    root = tmp_path_factory.mktemp("trained")
    out = {}
    for name, epochs in (("ae", 10), ("dae", 15), ("vae", 15)):
        out[name] = root / name
        run(make_cfg(f"model={name}", f"trainer.epochs={epochs}", *FAST), out[name])
    return out


@pytest.fixture(autouse=True)
def untimed_threads(request, monkeypatch):
    """In-process runs keep the process's thread count instead of timing one (tests/test_threads.py
    tests the timing): tests compare separate runs bit for bit, and two timings on a busy machine
    can pick two counts, which sum in two orders. For the same reason no run drops to one thread
    mid-run (``SpinWatch``): the wait policy reads PASSIVE here and in the subprocesses."""
    if request.module.__name__.endswith("test_threads"):
        return
    import torch

    from aecli.threads import WAIT_POLICY
    from aecli.training import build

    monkeypatch.setenv(WAIT_POLICY, "PASSIVE: set by tests/conftest.py")
    monkeypatch.setattr(build, "time_threads",
                        lambda *a, **k: (torch.get_num_threads(), "auto: not timed in the tests"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 1-epoch run of the default model (in-process; one per test module)."""
    from aecli.training.run import run

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run(quick_cfg("trainer.epochs=1"), run_dir)
    return run_dir


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    """A private copy of the finished run, to tamper with."""
    return Path(shutil.copytree(finished, tmp_path / "run"))
