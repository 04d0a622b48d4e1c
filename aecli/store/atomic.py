"""Every file aecli writes goes through ``atomic_write``: a fresh temp file in the same dir
(created exclusively, so a link planted at its name is never followed), flushed and fsynced,
then renamed over the target (a rename replaces a planted link itself, never its target), so a
crash leaves the old file whole; temp files of dead writers are removed by ``remove_stale_temps``.
A write that fails for lack of space or permission is one ``RunFailed`` naming the file."""
from __future__ import annotations

import csv
import errno
import io
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from aecli.errors import AecliError, RunFailed

# .NAME.aecli-PID-RANDOM.tmp (and an older aecli's .NAME.PID.tmp): the writer's pid is in the name
_TEMP = re.compile(r"^\..+(?:\.aecli-(\d+)-[a-z0-9_]+|\.(\d+))\.tmp$")
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's live process
        return True
    return True


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete the temp files in ``directory`` that a process killed mid-write left (their
    writer's pid is no longer alive); a live writer's temp file is left alone."""
    directory = Path(directory)
    if not directory.is_dir() or directory.is_symlink():
        return []
    stale = []
    for p in sorted(directory.iterdir()):
        m = _TEMP.match(p.name)
        if m and not _alive(int(m.group(1) or m.group(2))):
            if p.is_dir() and not p.is_symlink():  # a staging dir (atomic_move's source)
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            stale.append(p)
    return stale


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_failed(path: Path, error: OSError, fix: str = "") -> RunFailed:
    """A failed write as one message: the file, the OS's reason and the free space there."""
    try:
        free = f"; {shutil.disk_usage(Path(path).parent).free / 2**20:.1f} MB free on that disk"
    except OSError:
        free = ""
    return RunFailed(str(path), f"could not write it ({error.strerror or error}{free}); nothing was left half-written",
                     fix or "free disk space or fix the dir's permissions, then run the same command again")


def atomic_write(path: Path, write: Callable[[Any], None], fix: str = "") -> None:
    """Write ``path`` through ``write(binary file)`` into a new temp file in the same dir, flushed
    and fsynced, then renamed over ``path``: a crash at any moment leaves the old file whole, and
    a link at ``path`` is replaced, never followed. A full disk or a refused write is a
    ``RunFailed`` naming ``path`` and ``fix`` (no partial file stays)."""
    path = Path(path)
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.aecli-{os.getpid()}-",
                                    suffix=".tmp")
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as e:
        if e.errno in DISK_ERRORS:
            raise write_failed(path, e, fix) from None
        raise
    finally:  # a full disk, a read-only dir, Ctrl-C: drop the partial temp file
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def temp_dir(directory: Path) -> Path:
    """A new, private staging dir inside ``directory`` for a file a library writes by name (a
    TensorBoard event file), moved into place with ``atomic_move``; ``remove_stale_temps`` knows it."""
    return Path(tempfile.mkdtemp(dir=directory, prefix=f".staging.aecli-{os.getpid()}-", suffix=".tmp"))


def atomic_move(source: Path, target: Path) -> None:
    """Put the finished file ``source`` (same file system) in place of ``target`` in one rename,
    fsynced: ``target`` is the old file or the new one, never neither, never half of one."""
    try:
        fd = os.open(source, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(source, target)
        fsync_dir(Path(target).parent)
    except OSError as e:
        if e.errno in DISK_ERRORS:
            raise write_failed(Path(target), e) from None
        raise


def failure_message(error: BaseException) -> int:
    """For a command's ``main``: print aecli's error, or a full disk / refused write as one
    message, and return the exit status 1; anything else is re-raised (a bug: its traceback)."""
    if isinstance(error, OSError) and error.errno in DISK_ERRORS:
        error = write_failed(Path(error.filename or "an output file"), error)
    if not isinstance(error, AecliError):
        raise error
    print(error, file=sys.stderr)
    return 1


def quiet_disk_errors_in_writer_threads() -> None:
    """TensorBoard's event writer writes in a thread and hands a full disk's OSError to the main
    thread (which reports it as one message); without this, Python also prints the thread's traceback."""
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in DISK_ERRORS
                and type(args.thread).__name__ == "_AsyncWriterThread"):
            default(args)

    if getattr(threading.excepthook, "__name__", "") != "hook":
        threading.excepthook = hook


def atomic_write_text(path: Path, text: str) -> None:
    """``atomic_write`` of a text (UTF-8)."""
    data = text.encode()
    atomic_write(path, lambda f: f.write(data))


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as a formula (OWASP CSV injection)


def csv_cell(value: Any) -> Any:
    """A value safe in a CSV opened by a spreadsheet: text that starts like a formula (and is not
    a plain number) gets a leading ``'``, so it stays text."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A CSV file, atomically: every text cell quoted, formula-like text neutralised (``csv_cell``)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, quoting=csv.QUOTE_NONNUMERIC)
    writer.writerow([csv_cell(h) for h in header])
    writer.writerows([csv_cell(v) for v in row] for row in rows)
    atomic_write_text(path, out.getvalue())
