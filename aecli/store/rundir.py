"""The run dir: one writer at a time, never someone else's files, small files written whole.

- ``lock``: an OS lock (``flock``) on ``RUN_DIR/.aecli.lock``, held until the process exits. The
  OS drops it when the holder dies however it dies, so a stale lock from a killed process is
  simply free again; a live holder is named (pid, host, start time) in the refusal.
- ``check_new``: a new run starts only in a dir that does not exist or is empty.
- ``write_json``: ``metrics.json``, ``eval.json`` and ``job_status.json`` are replaced atomically.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

from aecli.errors import ConfigError, RunFailed
from aecli.store.atomic import atomic_write, remove_stale_temps

log = logging.getLogger("aecli")

LOCK_FILE = ".aecli.lock"
STATUS_FILE = "job_status.json"
_held: dict[Path, int] = {}  # run dir -> the open, locked file descriptor


def lock(run_dir: Path) -> None:
    """Take the run dir's lock for this process (creating the dir), or refuse naming the holder.
    Taking a lock this process already holds does nothing."""
    run_dir = Path(run_dir).absolute()
    if run_dir in _held:
        return
    check_dir_path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:  # never through a link: a planted .aecli.lock -> ~/.bashrc would be truncated
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # a hard link shares another file's bytes
            os.close(fd)
            raise OSError(errno.ELOOP, "not a regular file")
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.EMLINK, errno.ENXIO):
            raise
        raise ConfigError("hydra.run.dir", f"{run_dir / LOCK_FILE} is a link or not a regular file: aecli did not "
                          "make it, and will not write through it", f"remove {run_dir / LOCK_FILE} if the dir is "
                          "yours (or choose another hydra.run.dir)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _describe(os.pread(fd, 4096, 0))
        os.close(fd)
        raise ConfigError("hydra.run.dir", f"{run_dir} is in use by another aecli process ({holder})",
                          "wait for it to finish (or stop it), or choose another hydra.run.dir") from None
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
    try:  # who holds it, for the refusal of a second process; a full disk leaves it unnamed, not unlocked
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
    except OSError:
        pass
    _held[run_dir] = fd
    for stale in remove_stale_temps(run_dir):
        log.info("removed %s, left by a process killed while writing it", stale)


def unlock(run_dir: Path) -> None:
    """Release this process's lock on ``run_dir`` (the lock file stays: removing it could race)."""
    fd = _held.pop(Path(run_dir).absolute(), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def holder(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s lock (a run still training there: pid, host, start time), or None
    when no live process does. Reads only: a shared lock tried and dropped at once."""
    path = Path(run_dir) / LOCK_FILE
    if Path(run_dir).absolute() in _held or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except OSError:
        return _describe(os.pread(fd, 4096, 0))
    finally:
        os.close(fd)


def _describe(raw: bytes) -> str:
    try:
        info = json.loads(raw.decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "it is starting up"


def check_dir_path(run_dir: Path) -> None:
    """The run dir must be a dir (or not exist yet) under a writable parent."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError("hydra.run.dir", f"{run_dir} is a file, not a dir", "choose another hydra.run.dir")
    p = run_dir.absolute()
    while not p.exists():
        p = p.parent
    for d in (p, p / "checkpoints"):
        if d.exists() and (not d.is_dir() or not os.access(d, os.W_OK)):
            raise ConfigError("hydra.run.dir", f"{d} is not writable", "choose a writable hydra.run.dir "
                              "(or fix the permissions / free the disk), then run again")


def foreign_files(run_dir: Path) -> list[str]:
    """What is in ``run_dir`` besides aecli's lock (sorted, at most 5 named)."""
    if not Path(run_dir).is_dir():
        return []
    return sorted(p.name for p in Path(run_dir).iterdir() if p.name != LOCK_FILE)


def check_new(run_dir: Path, ignore: tuple[str, ...] = ()) -> None:
    """A new run (no ``resume``) must not start in a dir that holds anything (but ``ignore``):
    an earlier run, a run without its ``last.pt``, or files that are not a run at all."""
    check_dir_path(run_dir)
    files = [f for f in foreign_files(run_dir) if f not in ignore]
    if not files or stopped_before_training(run_dir):  # the same command again: a fresh start in it
        return
    has_run = (Path(run_dir) / "checkpoints" / "last.pt").is_file()
    listed = ", ".join(files[:5]) + (", ..." if len(files) > 5 else "")
    what = "a run (checkpoints/last.pt)" if has_run else f"files ({listed})"
    raise ConfigError("hydra.run.dir", f"{run_dir} already holds {what}",
                      ("pass resume=auto to continue that run, or " if has_run else "")
                      + "drop hydra.run.dir for a new run dir, or choose an empty one")


STARTUP_FILES = (LOCK_FILE, ".hydra", "train.log", STATUS_FILE)  # what a run writes before its first step


def stopped_before_training(run_dir: Path) -> bool:
    """An aecli run dir that holds only what aecli and Hydra write before training starts (no
    checkpoint, no metrics, no event file), i.e. a run stopped or killed before its first
    checkpoint: it is continued by a fresh start in the same dir."""
    d = Path(run_dir)
    if not is_run_dir(d) or (read_json(d / STATUS_FILE)[0] or {}).get("status") == "COMPLETED":
        return False
    for p in d.iterdir():
        if p.name == "checkpoints":
            if not p.is_dir() or p.is_symlink() or any(not c.name.endswith(".tmp") for c in p.iterdir()):
                return False
        elif not (p.name in STARTUP_FILES or p.name.endswith(".tmp")
                  or p.name.startswith("events.out.tfevents.") and p.suffix != ".eval"):  # a new run purges these
            return False
    return True


def is_run_dir(run_dir: Path) -> bool:
    """A dir that aecli made: its lock file, or Hydra's ``.hydra`` next to aecli's job status."""
    d = Path(run_dir)
    return (d / LOCK_FILE).is_file() or ((d / ".hydra").is_dir() and (d / STATUS_FILE).is_file())


def check_trained(path: str | Path, key: str = "RUN") -> Path:
    """``path`` if it names a trained run: a checkpoint file, or a dir that holds ``checkpoints/``.
    Cheap (no torch), so the command line refuses a wrong path before any heavy import."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(key, f"{p} does not exist", "pass the dir that aecli train printed ('run dir: ...')")
    jobs = job_dirs(p) if p.is_dir() and not (p / "checkpoints").is_dir() else []
    if jobs:
        raise ConfigError(key, f"{p} is a sweep (multirun) dir of {len(jobs)} job(s), not one run",
                          f"pass one of its job dirs, e.g. {jobs[0]}")
    if p.is_dir() and not (p / "checkpoints").is_dir():
        raise ConfigError(key, f"{p} holds no checkpoints/ (not a run dir, or a run that never reached "
                          "its first checkpoint)", "pass the dir of a run that trained at least one epoch")
    return p


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job dirs of a multirun (sweep) dir: its sub-dirs where Hydra recorded the job's
    overrides (``.hydra/overrides.yaml``), in the sweep's order: by job number (the leading
    digits of the name, as aecli's ``hydra.sweep.subdir`` ``<num>_<overrides>`` writes it), then
    by name. [] for a dir without jobs, or no dir. The one finder of ``aecli.use.evaluate``,
    ``aecli.use.report`` and the commands that open a run."""
    if not Path(sweep_dir).is_dir():
        return []
    jobs = [d for d in Path(sweep_dir).iterdir() if (d / ".hydra" / "overrides.yaml").is_file()]
    return sorted(jobs, key=_job_number)


def _job_number(d: Path) -> tuple[float, str]:
    head = d.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else math.inf, d.name)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON, atomically (a crash or full disk leaves the old file whole)."""

    text = (json.dumps(data, indent=2) + "\n").encode()
    atomic_write(Path(path), lambda f: f.write(text))


def read_json(path: Path) -> tuple[Any, str | None]:
    """(data, None), or (None, what is wrong with the file): readers name broken files."""
    try:
        return json.loads(Path(path).read_text()), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"unreadable ({type(e).__name__}: {str(e)[:80]})"


def write_status(run_dir: Path, status: str, error: str | None = None, return_value: float | None = None) -> None:
    """``job_status.json``: RUNNING, COMPLETED (+ the returned value), FAILED (+ the error) or
    STOPPED (a signal; the last checkpoint continues it)."""
    path, data = Path(run_dir) / STATUS_FILE, {"status": status, "error": error, "return_value": return_value}
    try:
        write_json(path, data)
    except RunFailed:  # a full disk has no room for a temp file: overwrite the old one in place
        if not _overwrite(path, (json.dumps(data, indent=2) + "\n").encode()):
            raise


def _overwrite(path: Path, text: bytes) -> bool:
    """Rewrite the existing small regular file ``path`` in place (its freed block takes ``text``
    on a full disk); never through a link. True when done."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
        os.fsync(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
