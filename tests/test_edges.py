"""Nothing lost at the edges, and nobody else's files overwritten: odd files in a folder dataset,
a damaged folder cache, planted links, temp files of dead writers, crafted checkpoints."""
from __future__ import annotations

import contextlib
import csv
import logging
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from aecli import cli
from aecli.data import cache as foldercache
from aecli.errors import ConfigError
from aecli.images import save_png
from aecli.store import checkpoint, rundir
from aecli.store.checkpoint import load_model
from aecli.training.plan import prepare
from aecli.training.run import run
from aecli.use import report
from tests.conftest import cli_env, make_cfg, popen_cli, quick_cfg, read_metrics, snapshot
from tests.test_folders import all_images, load, log_counts, write_pngs
from tests.test_report_eval import ae_metrics, fake_job
from tests.test_resume import can_mount, finish, wait_for_pause
from tests.test_safety import tampered


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging forever (the bug some of these tests catch is a hang)."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --- odd files in a folder dataset ------------------------------------------------------------

def test_a_fifo_named_like_an_image_is_named_and_left_out_not_opened(tmp_path, caplog):
    write_pngs(tmp_path / "imgs", 25)
    os.mkfifo(tmp_path / "imgs" / "x.png")
    caplog.set_level(logging.WARNING, logger="aecli")
    with deadline(30):
        data = load(tmp_path / "imgs", cache=False)
    assert len(all_images(data)) == 25
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "x.png (not a regular file" in warning


def test_a_file_name_that_is_not_utf8_is_printed_safely(tmp_path, caplog):
    write_pngs(tmp_path / "imgs", 25)
    with open(os.path.join(os.fsencode(tmp_path / "imgs"), b"bad\xff.png"), "wb") as f:
        f.write(b"not an image")
    caplog.set_level(logging.WARNING, logger="aecli")
    assert len(all_images(load(tmp_path / "imgs", cache=False))) == 25
    warning = " ".join(r.getMessage() for r in caplog.records)
    warning.encode("utf-8")  # what a UTF-8 terminal's log handler does: no UnicodeEncodeError
    assert "bad\\xff.png" in warning


def test_a_bit_flip_in_the_cache_rows_is_caught_and_the_cache_rebuilt(tmp_path, caplog):
    folder = tmp_path / "imgs"
    write_pngs(folder, 30)
    caplog.set_level(logging.INFO, logger="aecli")
    first = all_images(load(folder))
    cache = foldercache.cache_file(folder, 8, 3)
    raw = bytearray(cache.read_bytes())
    rows = torch.arange(30, dtype=torch.int64).numpy().tobytes()
    at = raw.find(rows)
    assert at >= 0
    raw[at] ^= 0x01  # file 0's row 0 -> 1: it would get file 1's image
    cache.write_bytes(bytes(raw))
    caplog.clear()
    again = all_images(load(folder))
    assert torch.equal(again, first)
    assert log_counts(caplog) == (30, 0)
    assert any("CRC-32" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_temp_files_of_dead_writers_in_the_cache_dir_are_removed_live_ones_kept(tmp_path):
    folder = tmp_path / "imgs"
    write_pngs(folder, 30)
    load(folder)
    cache_dir = foldercache.cache_file(folder, 8, 3).parent
    dead = cache_dir / ".8px-rgb.pt.999999999.tmp"  # an older aecli's name; no such pid
    dead2 = cache_dir / ".8px-rgb.pt.aecli-999999998-abc123.tmp"
    live = cache_dir / f".8px-rgb.pt.aecli-{os.getpid()}-abc123.tmp"
    for p in (dead, dead2, live):
        p.write_bytes(b"x" * 100)
    load(folder)
    assert not dead.exists() and not dead2.exists() and live.exists()


# --- links planted in a run or sweep dir: never followed ------------------------------------

@pytest.fixture
def victim(tmp_path) -> Path:
    """Someone's file that a planted link points at."""
    path = tmp_path / "victim.rc"
    path.write_text("export SAFE=1\n")
    return path


def test_a_lock_file_planted_as_a_link_is_refused_and_its_target_untouched(tmp_path, victim):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / rundir.LOCK_FILE).symlink_to(victim)
    with pytest.raises(ConfigError, match="is a link or not a regular file"):
        rundir.lock(run_dir)
    assert victim.read_text() == "export SAFE=1\n"
    (run_dir / rundir.LOCK_FILE).unlink()
    os.link(victim, run_dir / rundir.LOCK_FILE)  # a hard link shares the victim's bytes
    with pytest.raises(ConfigError, match="is a link or not a regular file"):
        rundir.lock(run_dir)
    assert victim.read_text() == "export SAFE=1\n"


def test_atomic_write_replaces_a_planted_link_and_never_follows_one_at_its_temp_name(tmp_path, victim):
    target = tmp_path / "reconstruction.png"
    target.symlink_to(victim)
    for n in range(5):  # links at the names an older aecli's temp files had
        (tmp_path / f".reconstruction.png.{os.getpid() + n}.tmp").symlink_to(victim)
    save_png(torch.zeros(1, 4, 4), target)
    assert victim.read_text() == "export SAFE=1\n"
    assert not target.is_symlink() and target.read_bytes().startswith(b"\x89PNG")


def fake_sweep(sweep: Path, overrides: list[list[str]]) -> None:
    for num, o in enumerate(overrides):
        fake_job(sweep, num, o, ae_metrics(0.01 + num / 1000))


def test_report_writes_no_file_through_a_planted_link_and_quotes_what_it_copies(tmp_path, victim):
    fake_sweep(tmp_path / "sweep", [["+tag=$(touch CANARY)", "seed=1"], ["+tag==HYPERLINK(\"x\")", "seed=2"]])
    for name in report.FILES:
        (tmp_path / "sweep" / name).symlink_to(victim)
    assert cli.main(["report", str(tmp_path / "sweep")]) == 0
    assert victim.read_text() == "export SAFE=1\n"
    for name in report.FILES:
        assert not (tmp_path / "sweep" / name).is_symlink() and (tmp_path / "sweep" / name).stat().st_size > 0
    text = (tmp_path / "sweep" / "report.csv").read_text()
    assert '"$(touch CANARY)"' in text  # quoted
    rows = list(csv.DictReader(text.splitlines()))
    assert {r["tag"] for r in rows} == {"$(touch CANARY)", "'=HYPERLINK(\"x\")"}  # a formula stays text


# --- report: sweeps without overrides, jobs with unreadable files --------------------------

def test_report_of_a_sweep_without_overrides_draws_one_point_per_job(tmp_path):
    fake_sweep(tmp_path, [[], []])
    assert cli.main(["report", str(tmp_path)]) == 0
    assert Image.open(tmp_path / "report.png").size == (1000, 600)


def test_report_names_a_job_whose_overrides_cannot_be_read_and_goes_on(tmp_path, capsys):
    fake_sweep(tmp_path, [["model=ae", "noise=none"], ["model=dae", "noise=gaussian"], ["model=ae", "noise=gaussian"]])
    broken = next(tmp_path.glob("1_*"))
    (broken / ".hydra" / "overrides.yaml").write_text("{{{ not yaml")
    assert cli.main(["report", str(tmp_path)]) == 0
    rows = {r["job"]: r for r in csv.DictReader((tmp_path / "report.csv").open())}
    assert rows["1"]["status"] == report.BROKEN and "overrides.yaml" in rows["1"]["error"]
    assert rows["0"]["status"] == rows["2"]["status"] == report.DONE


# --- crafted checkpoints: refused by what they are, before anything is allocated ---------------

def test_garbage_before_a_good_checkpoint_is_called_damaged_not_code(copy):
    file = copy / "checkpoints" / "last.pt"
    file.write_bytes(b"garbage" + file.read_bytes())
    with pytest.raises(ConfigError) as e:
        checkpoint.read(file)
    assert "does not start as torch's zip format" in e.value.problem and "code" not in e.value.problem


def test_a_huge_file_is_refused_by_its_size_unread(copy, monkeypatch):
    file = copy / "checkpoints" / "last.pt"
    monkeypatch.setattr(checkpoint, "MAX_BYTES", 1000)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("the file was read"))
    with pytest.raises(ConfigError, match="more than the 0 GB a checkpoint may have: not read"):
        checkpoint.read(file)


def test_a_crafted_model_size_is_refused_by_the_stored_shapes_before_building(copy):
    tampered(copy, lambda s: s["config"]["model"].update(hidden_dims=[2_000_000]))
    (copy / "checkpoints" / "best.pt").unlink()
    before = snapshot(copy)
    for call in (lambda: load_model(copy, "last.pt"),
                 lambda: prepare(make_cfg("resume=auto"), copy, overrides=["resume=auto"])):
        with pytest.raises(ConfigError, match="does not fit its weights"):
            call()
    assert snapshot(copy) == before


def test_resume_trusts_a_target_only_in_its_own_group(copy):
    """The command's own dataset loader does not make the checkpoint's model._target_ trusted."""
    tampered(copy, lambda s: s["config"]["model"].update(_target_="aecli.data.load_digits"))
    with pytest.raises(ConfigError, match="model._target_=aecli.data.load_digits"):
        prepare(make_cfg("resume=auto"), copy, overrides=["resume=auto"])


# --- stops before the first checkpoint; signals from the first instruction ------------------

@pytest.mark.integration
def test_a_stop_before_the_first_checkpoint_is_continued_by_the_printed_command_and_the_same_one(tmp_path,
                                                                                                 monkeypatch):
    command = ["dataset._target_=tests.faults.slow_digits", "trainer.epochs=1"]
    printed = {}
    for name in ("printed", "same"):
        run_dir = tmp_path / name
        proc = popen_cli(*command, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        wait_for_pause(proc)
        proc.send_signal(signal.SIGTERM)
        code, out = finish(proc)
        assert code == 143 and "before the first checkpoint" in out and "Continue with:\n" in out, out
        printed[name] = shlex.split(out.split("Continue with:\n", 1)[1].splitlines()[0])[3:]
        assert printed[name] == [f"resume='{run_dir}'"]  # quoted for Hydra
    monkeypatch.setenv("AECLI_TEST_NO_PAUSE", "1")
    overrides = (tmp_path / "printed" / ".hydra" / "overrides.yaml").read_text()
    # the printed command (naming the test's own loader, as the user of an untrusted target must)
    code, out = finish(popen_cli(*printed["printed"], "dataset._target_=tests.faults.slow_digits", cwd=tmp_path))
    assert code == 0, out
    assert read_metrics(tmp_path / "printed")["epochs"] == 1
    assert (tmp_path / "printed" / ".hydra" / "overrides.yaml").read_text() == overrides  # its own command kept
    # the same command again
    code, out = finish(popen_cli(*command, f"hydra.run.dir={tmp_path / 'same'}", cwd=tmp_path))
    assert code == 0, out
    assert read_metrics(tmp_path / "same")["epochs"] == 1


def test_a_dir_with_anything_more_than_a_start_is_still_refused(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / rundir.LOCK_FILE).write_text("")
    (run_dir / "job_status.json").write_text('{"status": "STOPPED"}')
    assert rundir.stopped_before_training(run_dir)
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds files"):
        rundir.check_new(run_dir)


@pytest.mark.integration
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_imports_exits_quietly(tmp_path, sig, code):
    """As under ``python -m aecli.X`` (argv[0] is '-m' while Python locates the module): a signal
    that arrives after aecli's first instruction, before the command's handlers, exits 128 + N."""
    script = (f"import sys; sys.argv[0] = '-m'; import aecli, os, time; os.kill(os.getpid(), {int(sig)}); "
              "time.sleep(30); print('not stopped')")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == code and proc.stderr == "" and "not stopped" not in proc.stdout, proc.stderr


def test_importing_aecli_in_a_program_leaves_its_signal_handlers_alone(tmp_path):
    script = "import signal, aecli; assert signal.getsignal(signal.SIGINT) is signal.default_int_handler; " \
             "assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL"
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_a_checkpoint_of_two_ranks_is_refused_by_one_process(copy):
    tampered(copy, lambda s: s.update(rng_ranks=[s["rng"], s["rng"]]))
    before = snapshot(copy)
    with pytest.raises(ConfigError, match="written by a run of 2 process\\(es\\), this one has 1"):
        run(quick_cfg("trainer.epochs=2", "resume=auto"), copy)
    assert snapshot(copy) == before


# --- a full disk: one message, a status that says so, no 0-byte file ------------------------

FULL_DISK = textwrap.dedent("""
    cd "$WORK"
    mount -t tmpfs -o size=4m tmpfs mnt
    head -c $(( $(df -k --output=avail mnt | tail -1) * 1024 - $FREE )) /dev/zero > mnt/filler 2>/dev/null
    {python} -m aecli.train trainer.epochs=1 trainer.progress=log hydra.run.dir=$WORK/mnt/run > out.log 2>&1
    echo "rc=$?" >> out.log
    cat mnt/run/job_status.json >> out.log 2>/dev/null
    find mnt/run -type f -empty -printf 'EMPTY %p\\n' >> out.log 2>/dev/null
    find mnt/run -name '*.tmp' -printf 'TEMP %p\\n' >> out.log 2>/dev/null
    true
""")


@pytest.mark.integration
@pytest.mark.skipif(not can_mount(), reason="needs unprivileged mount namespaces (unshare -rm)")
@pytest.mark.parametrize("free_kb", [0, 16, 20, 40, 600, 1060])  # Hydra, TB, last.pt, best.pt, metrics
def test_a_full_disk_during_training_is_one_message_and_a_recorded_status(tmp_path, free_kb):
    (tmp_path / "mnt").mkdir()
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", FULL_DISK.format(python=sys.executable)],
                          env={**cli_env(), "WORK": str(tmp_path), "FREE": str(free_kb * 1024)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "out.log").read_text()
    if "rc=0" in log:  # the run fitted: nothing to say
        return
    assert "rc=1" in log and "Traceback" not in log and log.count("aecli: error:") == 1, log
    assert "EMPTY" not in log and "TEMP" not in log and '"RUNNING"' not in log, log


READERS = {  # every command that reads a run, with arguments that make it write
    "evaluate": ["mnt/run"], "encode": ["mnt/run"], "map": ["mnt/run"], "sample": ["mnt/run"],
    "score": ["mnt/run", "test"], "search": ["mnt/run"], "denoise": ["mnt/run", "--synthetic"],
    "finetune": ["mnt/run", "--steps", "2"], "report": ["mnt"],
}
FULL_DISK_READERS = textwrap.dedent("""
    cd "$WORK"
    mount -t tmpfs -o size=4m tmpfs mnt
    cp -a "$FIRST" mnt/run
    mkdir -p mnt/run/.hydra && printf -- '- seed=0\\n' > mnt/run/.hydra/overrides.yaml
    head -c $(( $(df -k --output=avail mnt | tail -1) * 1024 - $FREE )) /dev/zero > mnt/filler 2>/dev/null
    {commands}
    find mnt -type f -empty -printf 'EMPTY %p\\n' 2>/dev/null
    find mnt -name '*.tmp' -printf 'TEMP %p\\n' 2>/dev/null
    true
""")


@pytest.mark.integration
@pytest.mark.skipif(not can_mount(), reason="needs unprivileged mount namespaces (unshare -rm)")
@pytest.mark.parametrize("free_kb", [0, 24])
def test_a_full_disk_is_one_message_for_every_reading_command(tmp_path, finished, free_kb):
    (tmp_path / "mnt").mkdir()
    commands = "\n".join(f"echo '== {name}'; {sys.executable} -m aecli.{name} {' '.join(args)} 2>&1; echo \"rc=$?\""
                         for name, args in READERS.items())
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", FULL_DISK_READERS.format(commands=commands)],
                          env={**cli_env(), "WORK": str(tmp_path), "FIRST": str(finished), "FREE": str(free_kb * 1024)},
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert "EMPTY" not in out and "TEMP" not in out, out
    for name, part in (p.split("\n", 1) for p in out.split("== ")[1:]):
        assert "Traceback" not in part and ("rc=0" in part or part.count("aecli: error:") == 1), f"{name}:\n{part}"
        assert free_kb or "rc=1" in part, f"{name} wrote nothing on a full disk?\n{part}"


def stopped_at_start(run_dir: Path, *overrides: str) -> Path:
    """A run dir as a run stopped before its first checkpoint leaves it."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(make_cfg(*overrides)))
    (run_dir / rundir.LOCK_FILE).write_text("")
    (run_dir / "job_status.json").write_text('{"status": "STOPPED", "error": "SIGINT at step 0"}')
    (run_dir / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    return run_dir


def test_resume_of_a_dir_stopped_before_its_first_checkpoint_is_a_fresh_start_with_its_config(tmp_path):
    run_dir = stopped_at_start(tmp_path / "run", "model.hidden_dims=[32]", "trainer.epochs=3")
    prepared = prepare(make_cfg(f"resume={run_dir}", "trainer.epochs=2"), run_dir,
                       overrides=[f"resume={run_dir}", "trainer.epochs=2"])
    try:
        assert prepared.resume_from is None
        assert list(prepared.cfg.model.hidden_dims) == [32]  # the dir's own config
        assert prepared.cfg.trainer.epochs == 2  # a key that may change, typed now
    finally:
        rundir.unlock(run_dir)
    with pytest.raises(ConfigError, match="does not match"):  # a key that may not change
        prepare(make_cfg(f"resume={run_dir}", "model.latent_dim=3"), run_dir,
                overrides=[f"resume={run_dir}", "model.latent_dim=3"])


def test_temps_of_dead_writers_are_removed_when_the_run_dir_is_locked(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = [run_dir / ".metrics.json.999999999.tmp", run_dir / ".eval.json.aecli-999999999-x1.tmp"]
    for p in dead:
        p.write_text("{")
    staging = run_dir / ".staging.aecli-999999999-ab_c.tmp"
    staging.mkdir()
    (staging / "events.out.tfevents.1.eval").write_bytes(b"x")
    live = run_dir / f".metrics.json.aecli-{os.getpid()}-zz.tmp"
    live.write_text("{")
    rundir.lock(run_dir)
    rundir.unlock(run_dir)
    assert not any(p.exists() for p in [*dead, staging]) and live.exists()
