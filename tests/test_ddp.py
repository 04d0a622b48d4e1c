"""One run across processes (DDP, ``torchrun``), on the CPU with gloo and 2 processes."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aecli.store.checkpoint import read
from aecli.training.run import run

from .conftest import cli_env, make_cfg, read_events, read_metrics, without_timing
from .faults import MARKER

pytestmark = pytest.mark.integration  # every test here starts processes

# no randomness in the step: 2 processes of batch 32 must train what 1 process of batch 64 does
SAME = ("model=ae", "noise=none", "trainer.epochs=2", "trainer.log_every_n_steps=1", "trainer.progress=log")
NOISY = ("model=dae", "trainer.batch_size=32", "trainer.epochs=2", "trainer.log_every_n_steps=1",
         "trainer.progress=log")


def torchrun(*args: str, cwd: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "aecli.train", *args]
    return subprocess.Popen(command, cwd=cwd, env={**cli_env(), "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err


def paused_pid(proc: subprocess.Popen) -> int:
    for line in proc.stderr:
        if MARKER in line:
            return int(re.search(r"\(pid (\d+)\)", line).group(1))
    raise AssertionError("no process paused")


def step_losses(run_dir: Path) -> list[float]:
    return [e.value for e in read_events(run_dir).Scalars("train_step/loss_per_pixel")]


def test_two_processes_train_what_one_process_trains_with_the_same_global_batch(tmp_path):
    one = run(make_cfg(*SAME, "trainer.batch_size=64"), tmp_path / "one")
    code, out = finish(torchrun(*SAME, "trainer.batch_size=32", f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path))
    assert code == 0, out
    two = read_metrics(tmp_path / "two")
    assert two["steps"] == one.metrics["steps"] == 40  # 1258 images: 20 global batches of 64 per epoch
    assert step_losses(tmp_path / "two") == pytest.approx(step_losses(tmp_path / "one"), rel=1e-5)
    for key in ("train_epoch/loss_per_pixel", "val/loss_per_pixel", "test/psnr_db"):
        assert two[key] == pytest.approx(one.metrics[key], rel=1e-5)
    # one run dir, written by rank 0 alone: one event file, one lock, Hydra's record once
    run_dir = tmp_path / "two"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1 and (run_dir / ".hydra" / "config.yaml").is_file()
    assert "rank 0 of 2 (gloo)" in (run_dir / "train.log").read_text()
    assert not (tmp_path / "outputs").exists()


def test_sigterm_to_one_rank_stops_every_rank_with_a_checkpoint_that_resumes(tmp_path):
    run_dir = tmp_path / "run"
    pause = ("+callbacks.pause._target_=tests.faults.PauseAt", "+callbacks.pause.step=13", "+callbacks.pause.rank=1",
             "+callbacks.slow._target_=tests.faults.SlowStop")  # rank 0 ends last (as on a busy disk)
    proc = torchrun(*NOISY, *pause, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    subprocess.run(["kill", "-TERM", str(paused_pid(proc))], check=True)  # rank 1 only
    code, out = finish(proc)
    assert code != 0, out  # torchrun reports its workers' 143 as a failure (and prints its own traceback)
    assert "aecli: SIGTERM: stopped after step 13" in out and "]: Traceback" not in out, out  # none from a rank
    assert "exitcode  : 143" in out and "exitcode  : 128" not in out  # every rank took the signal
    state = read(run_dir)
    assert (state["step"], state["epoch_state"]["batch"]) == (13, 13) and len(state["rng_ranks"]) == 2  # 20 per epoch
    assert json.loads((run_dir / "job_status.json").read_text())["status"] == "STOPPED"

    code, out = finish(torchrun("resume=auto", f"hydra.run.dir={run_dir}", *NOISY, cwd=tmp_path))
    assert code == 0, out
    assert read_metrics(run_dir)["steps"] == 40 and "resuming from step 13" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_ddp_resume_after_a_killed_rank_is_exact(tmp_path):
    """kill -9 of one rank: torchrun ends the run; resuming with the same world size gives the
    uninterrupted run's metrics exactly (each rank's own RNG stream comes back)."""
    whole = tmp_path / "whole"
    code, out = finish(torchrun(*NOISY, "trainer.checkpoint_every_n_steps=4", f"hydra.run.dir={whole}", cwd=tmp_path))
    assert code == 0, out
    run_dir = tmp_path / "run"
    pause = ("+callbacks.pause._target_=tests.faults.PauseAt", "+callbacks.pause.step=15", "+callbacks.pause.rank=1")
    proc = torchrun(*NOISY, "trainer.checkpoint_every_n_steps=4", *pause, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    subprocess.run(["kill", "-KILL", str(paused_pid(proc))], check=True)
    code, out = finish(proc)
    assert code != 0
    assert read(run_dir)["step"] == 12
    code, out = finish(torchrun("resume=auto", "trainer.checkpoint_every_n_steps=4", f"hydra.run.dir={run_dir}",
                                *NOISY, cwd=tmp_path))
    assert code == 0, out
    assert without_timing(read_metrics(run_dir)) == without_timing(read_metrics(whole))


def test_a_multirun_inside_torchrun_is_refused(tmp_path):
    code, out = finish(torchrun("-m", "model=ae,vae", cwd=tmp_path))
    assert code != 0 and "aecli: error: -m: a multirun inside torchrun" in out
