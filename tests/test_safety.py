"""Trust nothing on disk: checkpoints are data (never code), verified before use; one writer per
run dir; a run never starts over someone else's files; readers name broken files."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from aecli.errors import ConfigError, RunFailed
from aecli.store import checkpoint, rundir
from aecli.store.checkpoint import load_model, read
from aecli.training.plan import prepare
from aecli.training.run import run
from aecli.use import report

from .conftest import make_cfg, popen_cli, quick_cfg, read_events, run_cli, snapshot
from .faults import MARKER


def tampered(run_dir: Path, change) -> Path:
    """Rewrite last.pt with ``change(state)`` applied (a well-formed file with a bad content)."""
    file = run_dir / "checkpoints" / "last.pt"
    state = read(file)
    change(state)
    state.pop("format")
    checkpoint.save(state, file)
    return file


# --- checkpoints cannot run code ------------------------------------------------------------

PAYLOADS = {
    "nested builtins.open": lambda c, v: c["model"].update(hidden_dims={"_target_": "builtins.open", "file": v,
                                                                         "mode": "w"}),
    "pathlib write_text": lambda c, v: c["model"].update(_target_="pathlib.Path.write_text", self=v, data="x"),
    "nested torch.load": lambda c, v: c["model"].update(latent_dim={"_target_": "torch.load", "f": v,
                                                                    "weights_only": False}),
    "subprocess dataset": lambda c, v: c["dataset"].update(_target_="subprocess.run", args=["touch", v]),
    "hydra _args_": lambda c, v: c["noise"].update(_args_=[v]),
    "interpolation": lambda c, v: c["model"].update(latent_dim="${oc.env:HOME}"),
}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_checkpoint_config_that_would_run_code_is_refused_by_load_and_resume(copy, tmp_path, payload):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    tampered(copy, lambda s: PAYLOADS[payload](s["config"], str(victim)))
    (copy / "checkpoints" / "best.pt").unlink()
    with pytest.raises(ConfigError) as e:
        load_model(copy, "last.pt")
    assert e.value.key == "path" and ("_target_" in e.value.problem or "code" in e.value.problem
                                      or "interpolation" in e.value.problem or "aecli's own" in e.value.problem)
    before = snapshot(copy)
    with pytest.raises(ConfigError) as e:
        prepare(make_cfg("resume=auto"), copy, overrides=["resume=auto"])
    assert e.value.key == "resume"
    assert victim.read_text() == "precious" and snapshot(copy) == before


def test_a_target_you_name_yourself_is_trusted(copy):
    """A user's own class, named by this process (command line or trusted_targets), is allowed."""
    tampered(copy, lambda s: s["config"]["model"].update(_target_="tests.custom.TinyVAE", hidden_dims=[32],
                                                          latent_dim=4, latent_activation=False))
    with pytest.raises(ConfigError, match="not one of aecli's own"):
        load_model(copy, "last.pt")
    with pytest.raises(ConfigError):  # its weights are an MLP AE's, not a TinyVAE's: refused, not crashed
        load_model(copy, "last.pt", trusted_targets=["tests.custom.TinyVAE"])


# --- tampering and bit rot ------------------------------------------------------------------

def test_a_flipped_byte_in_tensor_data_is_refused(copy):
    file = copy / "checkpoints" / "last.pt"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the weights
    file.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="damaged \\(CRC mismatch"):
        read(file)


@pytest.mark.parametrize("change,words", [
    (lambda s: s.pop("rng"), "'rng' is missing"),
    (lambda s: s.pop("optimizer"), "'optimizer' is missing"),
    (lambda s: s.update(step="ten"), "'step' is not a whole number"),
    (lambda s: s.update(epoch_state={"perm": torch.zeros(3), "batch": 1, "seen": 1, "sums": {}, "skipped": 0}),
     "'epoch_state' is not"),
    (lambda s: s.update(epoch_state={"perm": torch.arange(5), "batch": 1, "seen": 1, "sums": {}, "skipped": 0}),
     "does not cover the 1258 training images"),
    (lambda s: s["model"].pop(next(iter(s["model"]))), "does not fit its weights"),
    (lambda s: s.update(phase=7), "phase 8"),
])
def test_a_well_formed_but_tampered_checkpoint_is_one_message_and_nothing_is_written(copy, change, words):
    tampered(copy, change)
    before = snapshot(copy)
    with pytest.raises(ConfigError) as e:
        run(quick_cfg("trainer.epochs=2", "resume=auto"), copy)
    assert words in e.value.problem and e.value.key == "resume"
    assert snapshot(copy) == before


@pytest.mark.integration
def test_a_refused_resume_on_the_cli_rewrites_no_file(copy):
    tampered(copy, lambda s: s.pop("rng"))
    before = snapshot(copy)
    proc = run_cli("trainer.epochs=2", f"resume={copy}", cwd=copy.parent)
    assert proc.returncode == 1 and "aecli: error: resume:" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(copy) == before  # no .hydra/, train.log or job_status.json rewritten


# --- one writer per run dir -----------------------------------------------------------------

@pytest.mark.integration
def test_a_second_process_is_refused_and_a_dead_holder_frees_the_dir(tmp_path):
    run_dir = tmp_path / "run"
    first = popen_cli("trainer.epochs=2", "+callbacks.pause._target_=tests.faults.PauseAt",
                      "+callbacks.pause.step=3", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    for line in first.stderr:
        if MARKER in line:
            break
    second = run_cli("resume=auto", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert second.returncode == 1
    assert f"is in use by another aecli process (pid {first.pid}" in second.stderr, second.stderr
    first.kill()  # killed before its first checkpoint: its lock dies with it
    first.wait()
    third = run_cli("resume=auto", "trainer.epochs=2", "trainer.log_every_n_steps=1", f"hydra.run.dir={run_dir}",
                    cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    steps = [e.step for e in read_events(run_dir).Scalars("train_step/loss_per_pixel")]
    assert steps == list(range(1, 21))  # the killed attempt's steps 1-3 were purged: none twice


@pytest.mark.integration
def test_two_runs_started_at_once_in_one_dir(tmp_path):
    run_dir = tmp_path / "run"
    procs = [popen_cli("trainer.epochs=1", f"model={m}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
             for m in ("ae", "vae")]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 1], results
    refused = next(err for code, err in results if code == 1)
    assert "aecli: error: hydra.run.dir:" in refused and "Traceback" not in refused
    winner = read(run_dir)["config"]["model"]["_target_"]
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert ("model=vae" in overrides) == (winner == "aecli.models.VAE")  # one run's files, not a mix


def test_lock_is_held_and_released(tmp_path):
    rundir.lock(tmp_path / "a")
    rundir.lock(tmp_path / "a")  # this process holds it already: nothing to do
    info = json.loads((tmp_path / "a" / rundir.LOCK_FILE).read_text())
    assert info["pid"] > 0 and info["host"]
    rundir.unlock(tmp_path / "a")


# --- dirs that are not a guarded run ---------------------------------------------------------

@pytest.mark.parametrize("setup,words", [
    (lambda d: (d / "checkpoints").mkdir(parents=True) or (d / "checkpoints" / "best.pt").write_bytes(b"x"),
     "already holds files (checkpoints)"),
    (lambda d: d.mkdir() or (d / "metrics.json").write_text("{}"), "already holds files (metrics.json)"),
    (lambda d: d.write_text("a file"), "is a file, not a dir"),
])
def test_a_new_run_never_starts_over_other_files(tmp_path, setup, words):
    target = tmp_path / "run"
    setup(target)
    before = target.read_bytes() if target.is_file() else snapshot(target)
    with pytest.raises(ConfigError, match="hydra.run.dir") as e:
        prepare(make_cfg(), target)
    assert words in e.value.problem
    assert (target.read_bytes() if target.is_file() else snapshot(target)) == before


# --- partial writes and fragile readers ------------------------------------------------------

def test_json_files_are_replaced_whole(tmp_path):
    path = tmp_path / "metrics.json"
    rundir.write_json(path, {"a": 1})

    def fail(f):
        f.write(b'{"a": ')
        raise OSError(28, "No space left on device")

    with pytest.raises(RunFailed, match="No space left on device"):  # one message naming the file
        checkpoint.atomic_write(path, fail)
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_the_report_names_broken_files_instead_of_crashing(tmp_path):
    for num, status, metrics in [(0, '{"status": "COMPLETED"}', '{"val/loss_per_pixel": 0.1}'),
                                 (1, '{"status": "COMPLETED"}', '{"val/loss'),
                                 (2, "\x00\x01", None), (3, '{"status": "STOPPED", "error": "SIGTERM at step 5"}',
                                                         None)]:
        job = tmp_path / f"{num}_model=ae"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- model=ae\n- seed={num}\n")
        (job / "job_status.json").write_text(status)
        if metrics:
            (job / "metrics.json").write_text(metrics)
    text = report.report(tmp_path)
    assert "1 done, 1 stopped, 2 broken" in text
    rows = {r["job"] or int(r["dir"][0]): r for r in report.sort_rows(
        [report.row(report.read_job(p), ["seed"]) for p in sorted(tmp_path.iterdir()) if p.is_dir()])}
    assert rows[1]["status"] == "broken" and "metrics.json unreadable" in rows[1]["error"]
    assert rows[2]["status"] == "broken" and "job_status.json unreadable" in rows[2]["error"]
    assert rows[3]["status"] == "stopped"


# --- on_nan=skip_batch when everything diverges ------------------------------------------------

@pytest.mark.parametrize("model", ["vae", "ae"])
def test_skip_batch_when_everything_diverges_is_one_message(tmp_path, model):
    cfg = quick_cfg(f"model={model}", "trainer.on_nan=skip_batch", "optim.lr=1e12", "trainer.epochs=3")
    with pytest.raises(RunFailed) as e:
        run(cfg, tmp_path)
    assert e.value.key == "trainer.on_nan" and "non-finite" in e.value.problem and "optim.lr" in e.value.fix


@pytest.mark.parametrize("kind,words", [
    ("truncated", "is not a checkpoint"),
    ("random bytes", "is not a checkpoint"),
    ("foreign", "is not an aecli checkpoint"),
    ("pickled code", "holds objects other than tensors and plain data"),
    ("older format", "an older aecli wrote it"),
])
def test_bad_checkpoint_files_are_refused_and_nothing_is_touched(copy, kind, words):
    file = copy / "checkpoints" / "last.pt"
    data = file.read_bytes()
    if kind == "truncated":
        file.write_bytes(data[: len(data) // 2])
    elif kind == "random bytes":
        file.write_bytes(bytes(range(256)) * (len(data) // 256))
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(3)}}, file)
    elif kind == "pickled code":
        torch.save({"format": checkpoint.FORMAT, "evil": subprocess.Popen}, file)
    else:
        torch.save({"format": "aecli-checkpoint-1", "model": {}}, file)
    before = snapshot(copy)
    with pytest.raises(ConfigError) as e:
        prepare(make_cfg("trainer.epochs=2", "resume=auto"), copy, overrides=["resume=auto"])
    assert e.value.key == "resume" and words in e.value.problem and "weights_only" not in str(e.value)
    assert snapshot(copy) == before
