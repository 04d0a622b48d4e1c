"""The end of a run: ``finish`` after a kill that came after the final checkpoint gives what the
uninterrupted run gives, and the numbers it writes are always the named model's. The kill/signal
campaign (integration) kills a short run at evenly spread moments and resumes it."""
from __future__ import annotations

import shlex
import shutil
import signal
from pathlib import Path

import pytest

from aecli.errors import ConfigError, RunFailed
from aecli.store import checkpoint
from aecli.training.run import run

from .conftest import make_cfg, popen_cli, read_events, read_metrics, without_timing
from .test_resume import finish, wait_for_pause

# digits: 10 steps an epoch; checkpoint writes: step 4 (1), 8 (2), epoch 1's last.pt (3) and
# best.pt (4), step 12 (5), 16 (6), epoch 2's last.pt (7) and best.pt (8)
RUN = ("trainer.epochs=2", "trainer.checkpoint_every_n_steps=4", "trainer.progress=log",
       "trainer.num_threads=1")  # separate runs compared bit for bit: one thread count for all


def tags(run_dir: Path) -> dict[str, list[str]]:
    return {kind: sorted(names) for kind, names in read_events(run_dir).Tags().items()
            if kind in ("scalars", "images", "tensors")}


def hparams(run_dir: Path) -> dict[str, list[float]]:
    events = read_events(run_dir)
    return {t: [e.value for e in events.Scalars(t)] for t in events.Tags()["scalars"] if t.startswith("hparam/")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run (in-process)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run(make_cfg(*RUN), run_dir)
    return run_dir


def killed_after_the_final_checkpoint(reference: Path, to: Path) -> Path:
    """The reference run as a kill during its final evaluation leaves it: no metrics.json, no PNG."""
    shutil.copytree(reference, to, ignore=shutil.ignore_patterns(".aecli.lock"))
    for name in ("metrics.json", "reconstruction.png"):
        (to / name).unlink(missing_ok=True)
    return to


@pytest.mark.parametrize("model", ["ae", "vae"])
def test_a_resume_after_the_final_checkpoint_finishes_as_the_uninterrupted_run(tmp_path, reference, model):
    if model != "ae":  # a VAE's loss has more terms (train_epoch/kl_*), and its evaluation draws codes
        reference = tmp_path / "reference"
        run(make_cfg(*RUN, f"model={model}"), reference)
    run_dir = killed_after_the_final_checkpoint(reference, tmp_path / "run")
    run(make_cfg(*RUN, f"model={model}", f"resume={run_dir}"), run_dir)
    resumed, whole = read_metrics(run_dir), read_metrics(reference)
    assert sorted(resumed) == sorted(whole)  # train_epoch/*, images_per_sec, first_step_seconds too
    assert without_timing(resumed) == without_timing(whole)
    assert resumed["images_per_sec"] == whole["images_per_sec"]  # the last epoch's, from the checkpoint
    assert tags(run_dir) == tags(reference)
    assert hparams(run_dir) == hparams(reference)  # hparam/train_epoch_* once, with the same values


def with_best_step(run_dir: Path, best_step: int) -> None:
    """last.pt says the best model is from ``best_step`` (older than the last step)."""
    state = checkpoint.read(run_dir / "checkpoints" / "last.pt")
    state.pop("format")
    state["best_step"] = best_step
    checkpoint.save(state, run_dir / "checkpoints" / "last.pt")


@pytest.mark.parametrize("case", ["missing", "damaged", "another step"])
def test_finish_never_reports_another_model_as_the_best(tmp_path, reference, case):
    run_dir = killed_after_the_final_checkpoint(reference, tmp_path / "run")
    with_best_step(run_dir, 10)  # epoch 1's model, which no file holds any more
    best = run_dir / "checkpoints" / "best.pt"
    if case == "missing":
        best.unlink()
    elif case == "damaged":
        best.write_bytes(best.read_bytes()[:5000])
    # "another step": best.pt is the step-20 model
    with pytest.raises(RunFailed) as e:
        run(make_cfg(*RUN, f"resume={run_dir}"), run_dir)
    assert "step 10" in e.value.problem and "best.pt" in e.value.problem, e.value.problem
    assert "--checkpoint last" in e.value.fix and "best.pt" not in e.value.fix, e.value.fix
    assert "resume=" not in e.value.fix  # a resume would fail the same way
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.parametrize("case", ["missing", "damaged", "another step"])
def test_the_use_commands_never_open_another_model_as_the_best(tmp_path, reference, case):
    """The read side (evaluate's eval.json, every use command): the same refusal, the same fix."""
    run_dir = killed_after_the_final_checkpoint(reference, tmp_path / "run")
    with_best_step(run_dir, 10)
    best = run_dir / "checkpoints" / "best.pt"
    if case == "missing":
        best.unlink()
    elif case == "damaged":
        best.write_bytes(best.read_bytes()[:5000])
    with pytest.raises(ConfigError) as e:
        checkpoint.load_model(run_dir)
    assert "best.pt" in e.value.problem, e.value.problem
    assert "--checkpoint last" in e.value.fix and "best.pt" not in e.value.fix, e.value.fix


# --- the campaign ----------------------------------------------------------------------------

PAUSE = "+callbacks.pause._target_=tests.faults.PauseAt"
KILL_POINTS = {  # evenly spread over the run: before, inside and between its writes
    "fit start": (PAUSE, "+callbacks.pause.event=fit_start"),
    "write 1 (step 4)": ("1",),
    "step 6": (PAUSE, "+callbacks.pause.step=6"),
    "write 3 (epoch 1 last.pt)": ("3",),
    "write 4 (epoch 1 best.pt)": ("4",),
    "step 13": (PAUSE, "+callbacks.pause.step=13"),
    "write 7 (final last.pt)": ("7",),
    "final evaluation": (PAUSE, "+callbacks.pause.event=fit_end"),
    "reconstruction.png": ("reconstruction.png",),
    "metrics.json": ("metrics.json",),
}


def start(run_dir: Path, point: tuple[str, ...]) -> object:
    if point[0] == PAUSE:
        return popen_cli(*RUN, *point, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    return popen_cli(point[0], *RUN, f"hydra.run.dir={run_dir}", cwd=run_dir.parent, module="tests.faults")


def assert_same_as(run_dir: Path, reference: Path) -> None:
    resumed, whole = read_metrics(run_dir), read_metrics(reference)
    assert sorted(resumed) == sorted(whole)
    assert without_timing(resumed) == without_timing(whole)
    assert tags(run_dir) == tags(reference)
    assert hparams(run_dir) == hparams(reference)
    assert not list(run_dir.rglob("*.tmp")), "no temp file is left behind"


@pytest.mark.integration
@pytest.mark.parametrize("point", list(KILL_POINTS), ids=list(KILL_POINTS))
def test_a_kill_at_any_moment_then_a_resume_gives_the_uninterrupted_run(tmp_path, reference, point):
    run_dir = tmp_path / "run"
    proc = start(run_dir, KILL_POINTS[point])
    wait_for_pause(proc)
    proc.kill()
    proc.wait()
    # resumed by the command line (in-process, its event file could sort before the killed one's:
    # a pid that is lower, in the same second)
    code, out = finish(popen_cli(*RUN, "resume=auto", f"hydra.run.dir={run_dir}", cwd=tmp_path))
    assert code == 0, out
    assert_same_as(run_dir, reference)


SIGNAL_POINTS = {"step 6": (signal.SIGTERM, 143), "write 3 (epoch 1 last.pt)": (signal.SIGINT, 130),
                 "write 7 (final last.pt)": (signal.SIGTERM, 0), "metrics.json": (signal.SIGINT, 0)}


@pytest.mark.integration
@pytest.mark.parametrize("point", list(SIGNAL_POINTS), ids=list(SIGNAL_POINTS))
def test_a_signal_at_any_moment_ends_cleanly_and_the_printed_command_continues(tmp_path, reference, point):
    sig, code = SIGNAL_POINTS[point]
    run_dir = tmp_path / "run"
    proc = start(run_dir, KILL_POINTS[point])
    wait_for_pause(proc)
    proc.send_signal(sig)
    returncode, out = finish(proc)
    assert returncode == code, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    if code:
        command = out.split("Continue with:\n", 1)[1].splitlines()[0].strip()
        returncode, out = finish(popen_cli(*shlex.split(command)[3:], cwd=tmp_path))  # the printed command
        assert returncode == 0, out
    assert_same_as(run_dir, reference)
