"""Nothing lost at the edges, and nobody else's files overwritten: odd files in a folder dataset,
a damaged folder cache, planted links, temp files of dead writers, crafted checkpoints."""
from __future__ import annotations

import contextlib
import logging
import os
import signal

import torch

from aecli.data import cache as foldercache
from tests.test_folders import all_images, load, log_counts, write_pngs


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
