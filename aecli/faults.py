"""Fault-injection points for aecli's own tests (tests/test_resume.py).

Inactive unless an ``AECLI_TEST_*`` environment variable names the point: the process then
prints a marker to stderr and waits there, so a test can kill it at exactly that moment with a
real signal. Nothing here changes what a normal run computes.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

PAUSE_AT_STEP = "AECLI_TEST_PAUSE_AT_STEP"  # after this optimizer step (global step number)
PAUSE_IN_CHECKPOINT = "AECLI_TEST_PAUSE_IN_CHECKPOINT"  # inside the N-th checkpoint write
MARKER = "aecli-test: paused"

_checkpoint_writes = 0


def pause_step() -> int | None:
    """The step to pause after, if a test asked for one."""
    value = os.environ.get(PAUSE_AT_STEP)
    return int(value) if value else None


def pause(where: str, until: Callable[[], bool] = lambda: False) -> None:
    """Announce the pause and wait until ``until()`` (or forever: the test kills us)."""
    print(f"{MARKER} {where}", file=sys.stderr, flush=True)
    while not until():
        time.sleep(0.01)


def in_checkpoint_write(path: str) -> None:
    """Called between writing a checkpoint's temp file and renaming it into place."""
    global _checkpoint_writes
    _checkpoint_writes += 1
    if os.environ.get(PAUSE_IN_CHECKPOINT) == str(_checkpoint_writes):
        pause(f"in checkpoint write {_checkpoint_writes} ({path})")
