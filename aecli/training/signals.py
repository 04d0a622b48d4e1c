"""SIGTERM and SIGINT, honoured from the start of the process to its exit.

``python -m aecli.train`` installs the handlers first thing, before Hydra or torch load: a
signal then only sets ``SIGNALS.requested``, and the run stops at its next safe point (after
the current training step, with a checkpoint; before training starts, with nothing to save). A
second Ctrl-C exits at once. Library callers of ``aecli.training.run.run`` get the handlers for the
duration of the run (``installed``), their own restored afterwards.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)
_IMPORTED = time.time()


class StopSignals:
    """Records the first stop signal; ``requested`` holds its number (None: none yet)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: int | None = None
        self.process_wide = False

    def name(self) -> str | None:
        return None if self.requested is None else signal.Signals(self.requested).name

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            os._exit(128 + signum)  # the impatient second Ctrl-C
        self.requested = signum
        log.warning("%s received: stopping at the next safe point (Ctrl-C again to exit at once)",
                    signal.Signals(signum).name)

    def install(self) -> None:
        """Handle the stop signals for the rest of the process (main thread only)."""
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                signal.signal(s, self._handle)
            self.process_wide = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """The handlers for a block (unless the process has them already), then the old ones."""
        if self.process_wide or threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def exit_code(self) -> int:
        """128 + the signal (143 for SIGTERM, 130 for SIGINT): what shells and requeue tooling
        read as 'terminated'."""
        return 128 + (self.requested or 0)


SIGNALS = StopSignals()


def seconds_since_process_start() -> float:
    """Wall seconds since this process started (Linux: from /proc, so the interpreter's own
    start-up counts; elsewhere since aecli was imported)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time() - _IMPORTED
