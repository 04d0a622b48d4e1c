"""Runs that survive: real subprocesses killed (SIGKILL) or signalled (SIGTERM, SIGINT) at chosen
points, through test-side hooks (tests/faults.py), then resumed to the uninterrupted result."""
from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from aecli.errors import RunFailed
from aecli.store.checkpoint import load_model, read
from aecli.training.run import run

from .conftest import cli_env, make_cfg, popen_cli, read_events, read_metrics, run_cli, without_timing
from .faults import MARKER

# VAE + masking noise: both draw random numbers every step, so resuming must restore the RNGs.
# digits: 10 steps per epoch; a mid-epoch checkpoint every 4 steps; per-step scalars every 3
# steps (so a resume mid-window must restore the window to log what the uninterrupted run logs).
# one thread: the uninterrupted and the interrupted run are separate runs, and auto would time
# each one's thread count afresh (another count sums in another order: the last bits differ)
RUN = ("model=vae", "noise=binomial", "trainer.epochs=3", "trainer.checkpoint_every_n_steps=4",
       "trainer.log_every_n_steps=3", "trainer.progress=log", "trainer.num_threads=1")


def pause_at(step: int) -> tuple[str, str]:
    return "+callbacks.pause._target_=tests.faults.PauseAt", f"+callbacks.pause.step={step}"


def start(run_dir: Path, *extra: str, module: str = "aecli.train") -> subprocess.Popen:
    return popen_cli(*RUN, *extra, f"hydra.run.dir={run_dir}", cwd=run_dir.parent, module=module)


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


def step_values(run_dir: Path) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in read_events(run_dir).Scalars("train_step/loss_per_image")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run (in-process: the same computation as the CLI's)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run(make_cfg(*RUN), run_dir)
    return run_dir


@pytest.mark.integration
def test_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(tmp_path, reference):
    run_dir = tmp_path / "run"
    proc = start(run_dir, *pause_at(17))  # epoch 2, batch 7; last checkpoint: step 16
    wait_for_pause(proc)
    proc.kill()
    proc.wait()
    state = read(run_dir / "checkpoints" / "last.pt")
    assert (state["step"], state["epoch"], state["epoch_state"]["batch"]) == (16, 1, 6)

    code, out = finish(start(run_dir, "resume=auto"))
    assert code == 0, out
    assert "resuming from step 16" in out
    assert without_timing(read_metrics(run_dir)) == without_timing(read_metrics(reference))  # bit for bit on CPU
    # TensorBoard shows each step once, with the uninterrupted run's values: what the killed run
    # logged after step 16 was purged, and the window of steps 16-18 was restored mid-way
    assert step_values(run_dir) == step_values(reference)


@pytest.mark.integration
def test_sigkill_inside_a_checkpoint_write_leaves_the_previous_one_intact(tmp_path, reference):
    run_dir = tmp_path / "run"
    # writes: step 4, step 8, then epoch 1's end (last.pt): pause inside that third one
    proc = popen_cli("3", *RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path, module="tests.faults")
    wait_for_pause(proc)
    proc.kill()
    proc.wait()
    ckpts = run_dir / "checkpoints"
    assert list(ckpts.glob(".last.pt.*.tmp")), "the half-written temp file is where the kill left it"
    assert read(ckpts / "last.pt")["step"] == 8  # the previous checkpoint, whole

    code, out = finish(start(run_dir, "resume=auto"))
    assert code == 0, out
    assert not list(ckpts.glob(".*.tmp"))
    assert without_timing(read_metrics(run_dir)) == without_timing(read_metrics(reference))


@pytest.mark.integration
def test_a_kill_between_last_and_best_is_repaired(tmp_path, reference):
    """Writes 7 and 8 are epoch 2's last.pt and best.pt: killed inside the 8th, best.pt is still
    epoch 1's while last.pt holds the better model. load_model takes the best model from last.pt;
    the resumed run rewrites best.pt."""
    run_dir = tmp_path / "run"
    proc = popen_cli("8", *RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path, module="tests.faults")
    assert "best.pt" in wait_for_pause(proc)
    proc.kill()
    proc.wait()
    last, best = read(run_dir / "checkpoints" / "last.pt"), read(run_dir / "checkpoints" / "best.pt")
    assert (last["step"], last["best_step"], best["step"]) == (20, 20, 10)
    model = load_model(run_dir)  # best.pt is stale: the best model comes from last.pt
    assert all(torch.equal(model.state_dict()[k], v) for k, v in last["model"].items())

    code, out = finish(start(run_dir, "resume=auto"))
    assert code == 0, out
    assert "is missing or older than the best model" in out
    assert without_timing(read_metrics(run_dir)) == without_timing(read_metrics(reference))
    assert read(run_dir / "checkpoints" / "best.pt")["step"] == read(reference / "checkpoints" / "best.pt")["step"]


@pytest.mark.integration
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_write_a_checkpoint_and_print_a_command_that_continues(tmp_path, reference, sig, code):
    run_dir = tmp_path / "run"
    proc = start(run_dir, *pause_at(13))
    wait_for_pause(proc)
    proc.send_signal(sig)
    returncode, out = finish(proc)
    assert returncode == code, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    state = read(run_dir / "checkpoints" / "last.pt")
    assert (state["step"], state["epoch_state"]["batch"]) == (13, 3)
    assert read_events(run_dir).Scalars("train_step/loss_per_image")[-1].step == 12  # flushed
    status = json.loads((run_dir / "job_status.json").read_text())
    assert status["status"] == "STOPPED" and signal.Signals(sig).name in status["error"]

    command = out.split("Continue with:\n", 1)[1].splitlines()[0].strip()
    args = shlex.split(command)[3:]  # after "python -m aecli.train": resume='RUN_DIR' alone
    assert len(args) == 1 and args[0].startswith("resume=")
    if sig == signal.SIGTERM:  # the printed command itself
        code, out = finish(popen_cli(*args, "trainer.progress=log", cwd=tmp_path))
        assert code == 0, out
    else:  # the same from Python
        run(make_cfg(*RUN, f"resume={run_dir}"), run_dir)
    assert without_timing(read_metrics(run_dir)) == without_timing(read_metrics(reference))


@pytest.mark.integration
def test_a_stopped_sweep_job_prints_a_command_that_pastes(tmp_path):
    """A multirun job's dir name holds '=' and ',' (Hydra's own syntax): the command quotes it."""
    sweep = tmp_path / "sweep"
    proc = popen_cli("-m", "model=ae", "noise=none", "trainer.epochs=2", *pause_at(5), f"hydra.sweep.dir={sweep}",
                     cwd=tmp_path)
    wait_for_pause(proc)
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == 143, out
    command = out.split("Continue with:\n", 1)[1].splitlines()[0].strip()
    assert "model=ae,noise=none" in command and command.count('"') == 2
    code, out = finish(popen_cli(*shlex.split(command)[3:], cwd=tmp_path))
    assert code == 0, out
    assert read_metrics(next(p for p in sweep.iterdir() if p.name.startswith("0_")))["steps"] == 20


@pytest.mark.integration
def test_signals_before_training_and_during_the_final_evaluation(tmp_path):
    """Handlers are in place from the start: a signal while the data loads stops the run cleanly
    (nothing to save); one during the final evaluation lets the run complete."""
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        run_dir = tmp_path / f"early-{code}"
        proc = popen_cli("dataset._target_=tests.faults.slow_digits", f"hydra.run.dir={run_dir}", cwd=tmp_path)
        wait_for_pause(proc)
        proc.send_signal(sig)
        returncode, out = finish(proc)
        assert returncode == code, out
        assert "Traceback" not in out and "before the first checkpoint" in out
        assert json.loads((run_dir / "job_status.json").read_text())["status"] == "STOPPED"
    run_dir = tmp_path / "late"
    proc = popen_cli("trainer.epochs=1", "+callbacks.pause._target_=tests.faults.PauseAt",
                     "+callbacks.pause.event=fit_end", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    wait_for_pause(proc)
    proc.send_signal(signal.SIGTERM)
    returncode, out = finish(proc)
    assert returncode == 0, out
    assert json.loads((run_dir / "job_status.json").read_text())["status"] == "COMPLETED"
    assert read_metrics(run_dir)["steps"] == 10


@pytest.mark.integration
def test_resume_path_continues_in_the_runs_own_dir_with_its_own_config(tmp_path):
    run_dir = tmp_path / "run"
    first = run_cli("model=conv", "trainer.epochs=1", "trainer.max_steps=3", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    # the stored config, but for what is typed (max_steps and epochs may change)
    again = run_cli("trainer.epochs=2", "trainer.max_steps=null", f"resume={run_dir / 'checkpoints' / 'last.pt'}",
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    metrics = read_metrics(run_dir)
    assert metrics["epochs"] == 2 and "test/loss_per_pixel" in metrics
    assert read(run_dir)["config"]["model"]["_target_"] == "aecli.models.ConvAutoencoder"  # not the default ae
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == overrides  # the original command is kept
    assert not (tmp_path / "outputs").exists()  # no new run dir
    # resuming the finished run adds no second HParams record
    assert [e.step for e in read_events(run_dir).Scalars("hparam/test_psnr_db")] == [21]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    # noise call 9 is step 9's batch (the image grid does not call a noise that corrupts nothing)
    cfg = make_cfg("noise._target_=tests.faults.NaNNoise", "+noise.nan_calls=[9]", "trainer.epochs=2",
                   "trainer.checkpoint_every_n_steps=5", "trainer.progress=log")
    with pytest.raises(RunFailed) as e:
        run(cfg, run_dir)
    assert str(e.value).startswith("aecli: error: trainer.on_nan: non-finite loss at step 9"), str(e.value)
    assert f"{run_dir / 'checkpoints' / 'last.pt'} (untouched)" in e.value.problem
    state = read(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 5
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_skip_batch_skips_the_bad_batch_and_finishes(tmp_path):
    cfg = make_cfg("noise._target_=tests.faults.NaNNoise", "+noise.nan_calls=[9]", "trainer.epochs=2",
                   "trainer.on_nan=skip_batch", "trainer.progress=log")
    result = run(cfg, tmp_path)
    assert result.status == "completed"
    metrics = read_metrics(tmp_path)
    assert all(v == v and abs(v) != float("inf") for v in metrics.values() if isinstance(v, float))


def can_mount() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True).returncode == 0


# Inside a private mount namespace (unshare -rm: no root needed on the host), so the read-only
# dir and the full disk are real, for root too.
SCENARIO = textwrap.dedent("""
    set -e
    cd "$WORK"
    cp -a "$FIRST" mnt/run
    sha256sum mnt/run/checkpoints/*.pt mnt/run/metrics.json > before.sha
    {setup}
    set +e
    {python} -m aecli.train trainer.epochs=2 model.hidden_dims=[1024] resume=auto hydra.run.dir=$WORK/mnt/run \\
        > second.log 2>&1
    echo "rc=$?" >> second.log
    sha256sum -c before.sha >> second.log 2>&1 && echo "intact" >> second.log
    ls -a mnt/run/checkpoints >> second.log
""")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """A finished 1-epoch run (in-process), copied into each scenario's mount."""
    run_dir = tmp_path_factory.mktemp("first") / "run"
    run(make_cfg("trainer.epochs=1", "model.hidden_dims=[1024]", "trainer.progress=log"), run_dir)
    return run_dir


@pytest.mark.integration
@pytest.mark.skipif(not can_mount(), reason="needs unprivileged mount namespaces (unshare -rm)")
@pytest.mark.parametrize("case,setup,message", ids=["read-only", "read-only-checkpoints", "full-disk"], argvalues=[
    ("read-only", "mount -o remount,bind,ro mnt", "is not writable"),
    ("read-only checkpoints", "mount --bind mnt/run/checkpoints mnt/run/checkpoints && "
     "mount -o remount,bind,ro mnt/run/checkpoints", "checkpoints is not writable"),
    # leave room for the small files and the event file, not for a ~1 MB checkpoint
    ("full disk", "head -c $(( $(df -k --output=avail mnt | tail -1) * 1024 - 300000 )) /dev/zero > mnt/filler",
     "MB free on that disk); nothing was left half-written; the previous checkpoint there is intact"),
])
def test_unwritable_run_dir_and_full_disk_are_reported_and_the_checkpoint_survives(tmp_path, first_run, case, setup,
                                                                                   message):
    (tmp_path / "mnt").mkdir()
    script = SCENARIO.format(python=sys.executable, setup=setup)
    mount = "mount -t tmpfs -o size=8m tmpfs mnt" if case == "full disk" else "mount --bind mnt mnt"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", f'cd "$WORK" && {mount} && {script}'],
                          env={**cli_env(), "WORK": str(tmp_path), "FIRST": str(first_run)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "second.log").read_text()
    assert "rc=1" in log and message in log and "Traceback" not in log, log
    assert "intact" in log and ".tmp" not in log, log
