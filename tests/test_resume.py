"""Runs that survive: real subprocesses killed at chosen points (aecli.faults), then resumed."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from aecli.checkpoint import load_checkpoint, save_checkpoint
from aecli.faults import MARKER, PAUSE_AT_STEP, PAUSE_IN_CHECKPOINT

from .conftest import read_events, read_metrics, run_cli, snapshot

REPO = Path(__file__).resolve().parent.parent
# VAE + masking noise: both draw random numbers every step, so resuming must restore the RNGs.
# digits: 10 steps per epoch; a mid-epoch checkpoint every 4 steps.
RUN = ("model=vae", "noise=binomial", "trainer.epochs=3", "trainer.checkpoint_every_n_steps=4",
       "trainer.log_every_n_steps=2", "trainer.progress=log")


def start(run_dir: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "aecli.train", *RUN, *extra, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(cmd, cwd=run_dir.parent, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_pause(proc: subprocess.Popen) -> str:
    """Read stderr until the process announces it is paused at the fault point."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if MARKER in line:
            return line
    proc.wait()
    raise AssertionError("the run ended without reaching its fault point:\n" + "".join(lines))


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out + err


def without_speed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "images_per_sec"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run's final metrics."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    code, out = finish(start(run_dir))
    assert code == 0, out
    return read_metrics(run_dir)


def test_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(tmp_path, reference):
    run_dir = tmp_path / "run"
    proc = start(run_dir, env={PAUSE_AT_STEP: "17"})  # epoch 2, batch 7; last checkpoint: step 16
    wait_for_pause(proc)
    proc.kill()
    proc.wait()
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (state["step"], state["epoch"], state["epoch_state"]["batch"]) == (16, 1, 6)

    code, out = finish(start(run_dir, "resume=auto"))
    assert code == 0, out
    assert "resuming from step 16" in out
    assert without_speed(read_metrics(run_dir)) == without_speed(reference)  # bit for bit on CPU
    # TensorBoard shows each step once: what the killed run logged after step 16 was purged
    steps = [e.step for e in read_events(run_dir).Scalars("train_step/loss_per_image")]
    assert steps == list(range(2, 31, 2))


def test_sigkill_inside_a_checkpoint_write_leaves_the_previous_one_intact(tmp_path, reference):
    run_dir = tmp_path / "run"
    # writes: step 4, step 8, then epoch 1's end (last.pt): pause inside that third one
    proc = start(run_dir, env={PAUSE_IN_CHECKPOINT: "3"})
    wait_for_pause(proc)
    proc.kill()
    proc.wait()
    ckpts = run_dir / "checkpoints"
    assert list(ckpts.glob(".last.pt.*.tmp")), "the half-written temp file is where the kill left it"
    assert load_checkpoint(ckpts / "last.pt")["step"] == 8  # the previous checkpoint, whole

    code, out = finish(start(run_dir, "resume=auto"))
    assert code == 0, out
    assert not list(ckpts.glob(".*.tmp"))
    assert without_speed(read_metrics(run_dir)) == without_speed(reference)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_write_a_resumable_checkpoint(tmp_path, reference, sig, code):
    run_dir = tmp_path / "run"
    proc = start(run_dir, env={PAUSE_AT_STEP: "13"})
    wait_for_pause(proc)
    proc.send_signal(sig)
    returncode, out = finish(proc)
    assert returncode == code, out
    assert "Continue with:" in out and f"resume={run_dir}" in out
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (state["step"], state["epoch_state"]["batch"]) == (13, 3)
    assert read_events(run_dir).Scalars("train_step/loss_per_image")[-1].step == 12  # flushed

    code, out = finish(start(run_dir, f"resume={run_dir}"))
    assert code == 0, out
    assert without_speed(read_metrics(run_dir)) == without_speed(reference)


def test_resume_path_continues_in_the_runs_own_dir(tmp_path):
    run_dir = tmp_path / "run"
    first = run_cli("trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = run_cli("trainer.epochs=2", f"resume={run_dir / 'checkpoints' / 'last.pt'}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert read_metrics(run_dir)["epochs"] == 2
    assert not (tmp_path / "outputs").exists()  # no new run dir


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    # noise call 1 corrupts the image grid's batch; call 9 is step 8's batch
    proc = run_cli("noise._target_=tests.faults.NaNNoise", "+noise.nan_calls=[9]", "trainer.epochs=2",
                   "trainer.checkpoint_every_n_steps=5", f"hydra.run.dir={run_dir}", cwd=REPO)
    assert proc.returncode == 1
    assert "aecli: error: trainer.on_nan: non-finite loss at step 8" in proc.stderr
    assert f"{run_dir / 'checkpoints' / 'last.pt'} (untouched)" in proc.stderr
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 5
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_skip_batch_skips_the_bad_batch_and_finishes(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("noise._target_=tests.faults.NaNNoise", "+noise.nan_calls=[9]", "trainer.epochs=2",
                   "trainer.on_nan=skip_batch", f"hydra.run.dir={run_dir}", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "step 8: non-finite loss, batch skipped" in proc.stdout + proc.stderr
    metrics = read_metrics(run_dir)
    assert all(v == v and abs(v) != float("inf") for v in metrics.values())


@pytest.fixture
def finished_run(tmp_path) -> Path:
    run_dir = tmp_path / "run"
    proc = run_cli("trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return run_dir


def corrupt(kind: str, file: Path) -> None:
    data = file.read_bytes()
    if kind == "truncated":
        file.write_bytes(data[: len(data) // 2])
    elif kind == "random bytes":
        file.write_bytes(os.urandom(len(data)))
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(3)}}, file)
    elif kind == "pickled code":
        torch.save({"format": "aecli-checkpoint-1", "evil": subprocess.Popen}, file)


@pytest.mark.parametrize("kind,message", [
    ("truncated", "is not a readable checkpoint"),
    ("random bytes", "is not a readable checkpoint"),
    ("foreign", "is not an aecli checkpoint"),
    ("pickled code", "is not a readable checkpoint"),
])
def test_bad_checkpoint_files_are_refused_and_nothing_is_touched(finished_run, kind, message):
    corrupt(kind, finished_run / "checkpoints" / "last.pt")
    before = snapshot(finished_run)
    proc = run_cli("trainer.epochs=2", "resume=auto", f"hydra.run.dir={finished_run}", cwd=finished_run.parent)
    assert proc.returncode == 1
    assert "aecli: error: resume:" in proc.stderr and message in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(finished_run) == before


@pytest.mark.parametrize("overrides,expected", [
    (["model=conv"], "model._target_: 'aecli.models.ConvAutoencoder' here, 'aecli.models.MLPAutoencoder'"),
    (["model.latent_dim=4"], "model.latent_dim: 4 here, 16 in the checkpoint"),
])
def test_a_config_that_does_not_match_the_checkpoint_is_refused(finished_run, overrides, expected):
    before = snapshot(finished_run)
    proc = run_cli(*overrides, f"resume={finished_run}", cwd=finished_run.parent)
    assert proc.returncode == 1
    assert "aecli: error: resume: the config does not match" in proc.stderr and expected in proc.stderr
    assert "that run's overrides: trainer.epochs=1" in proc.stderr
    assert snapshot(finished_run) == before


def test_atomic_save_replaces_whole_files_only(tmp_path):
    target = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, target)
    save_checkpoint({"step": 2}, target)
    assert load_checkpoint(target)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def can_mount() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True).returncode == 0


# Inside a private mount namespace (unshare -rm: no root needed on the host), so the read-only
# dir and the full disk are real, for root too.
SCENARIO = textwrap.dedent("""
    set -e
    cd "$WORK"
    {python} -m aecli.train trainer.epochs=1 model.hidden_dims=[1024] hydra.run.dir=$WORK/mnt/run > first.log 2>&1
    sha256sum mnt/run/checkpoints/*.pt mnt/run/metrics.json > before.sha
    {setup}
    set +e
    {python} -m aecli.train trainer.epochs=2 model.hidden_dims=[1024] resume=auto hydra.run.dir=$WORK/mnt/run \\
        > second.log 2>&1
    echo "rc=$?" >> second.log
    sha256sum -c before.sha >> second.log 2>&1 && echo "intact" >> second.log
""")


@pytest.mark.skipif(not can_mount(), reason="needs unprivileged mount namespaces (unshare -rm)")
@pytest.mark.parametrize("case,setup,message", ids=["read-only", "full-disk"], argvalues=[
    ("read-only", "mount -o remount,bind,ro mnt", "is not writable"),
    # leave room for Hydra's small files and the event file, not for a ~1 MB checkpoint
    ("full disk", "head -c $(( $(df -k --output=avail mnt | tail -1) * 1024 - 300000 )) /dev/zero > mnt/filler",
     "MB free on that disk); the previous checkpoint there is intact"),
])
def test_unwritable_run_dir_and_full_disk_are_reported_and_the_checkpoint_survives(tmp_path, case, setup, message):
    (tmp_path / "mnt").mkdir()
    script = SCENARIO.format(python=sys.executable, setup=setup)
    mount = "mount -t tmpfs -o size=8m tmpfs mnt" if case == "full disk" else "mount --bind mnt mnt"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", f'cd "$WORK" && {mount} && {script}'],
                          env={**os.environ, "WORK": str(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr + (tmp_path / "first.log").read_text()
    log = (tmp_path / "second.log").read_text()
    assert "rc=1" in log and message in log and "Traceback" not in log, log
    assert "intact" in log, log
