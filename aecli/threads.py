"""torch's CPU thread count, chosen by measurement: ``trainer.num_threads=auto`` and the use
commands' ``--threads auto``.

The fastest count depends on the model, the batch and what else runs on the cores right now:
on an idle machine all cores win for all but the smallest steps; with another process busy on
the same cores, each parallel region waits for its slowest (descheduled) thread and one
thread can be several times faster. So ``choose_threads`` times a few real steps at each
candidate count, interleaved (so a load that comes and goes hits every candidate alike), and
keeps the fastest. No torch import at module level: parsers import ``parse_threads``.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from aecli.errors import ConfigError

BUDGET_S = 0.8  # the whole choice (startup must stay under a second): 1 warm-up + 1-12 timed steps each
MAX_ROUNDS = 12  # timed steps per candidate when steps are fast (more only narrows noise we already outrun)
MARGIN = 0.05  # more threads must be this much faster to be taken: fewer leave cores to the rest of the machine


def parse_threads(value: Any, key: str = "--threads") -> int | str:
    """``auto`` or a whole number >= 1 (a flag's or config key's value), else one clear message."""
    if value == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(value).strip() != str(n):
        raise ConfigError(key, f"{value!r} is neither auto nor a whole number >= 1",
                          f"use {key} auto (timed at startup) or e.g. {key} 1")
    return n


LIBRARY_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_libraries(n: int) -> None:
    """Hold scikit-learn's and numpy's thread pools (OpenMP, OpenBLAS, MKL) to ``n`` threads too,
    for a ``--threads N`` the user chose: t-SNE, PCA and the probes would otherwise take every
    core. Pools already loaded are limited now (threadpoolctl); the environment covers the ones
    that load later (each reads it once, when its library loads)."""
    from threadpoolctl import threadpool_limits

    for name in LIBRARY_THREAD_VARIABLES:
        os.environ[name] = str(n)
    threadpool_limits(n)


def cores_available() -> int:
    """The cores this process may run on (its CPU affinity: what ``taskset``, SLURM or a
    container allow), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def candidates(most: int) -> list[int]:
    """The counts worth timing up to ``most``: 1, 2, 4, ... and ``most`` itself."""
    counts, n = [], 1
    while n < most:
        counts.append(n)
        n *= 2
    return [*counts, max(most, 1)]


def fastest(median: dict[int, float]) -> int:
    """The count with the shortest median step; a larger count must beat the best smaller one by
    ``MARGIN`` (a tie within noise goes to fewer threads)."""
    counts = sorted(median)
    best = counts[0]
    for n in counts[1:]:
        if median[n] < median[best] * (1 - MARGIN):
            best = n
    return best


def choose_threads(step: Callable[[], Any], most: int, budget: float = BUDGET_S) -> tuple[int, str]:
    """Time ``step`` (a real training or inference step; it must leave no trace) at each of
    ``candidates(most)``, interleaved, within about ``budget`` seconds; set torch's thread count
    to the fastest and return it with a line that says why (the median step times)."""
    import torch

    counts = candidates(most)
    if len(counts) == 1:
        torch.set_num_threads(counts[0])
        return counts[0], f"auto: {counts[0]}, the only candidate"
    start = time.perf_counter()
    times: dict[int, list[float]] = {n: [] for n in counts}
    least = 2  # timed rounds; one when the warm-up round alone took a third of the budget (slow steps)
    for rounds in range(MAX_ROUNDS + 1):  # round 0 warms up (allocations, each count's thread pool)
        for n in counts:
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            step()
            if rounds:
                times[n].append(time.perf_counter() - t0)
        if rounds == 0 and time.perf_counter() - start > budget / 3:
            least = 1
        if rounds >= least and time.perf_counter() - start > budget:
            break
    median = {n: statistics.median(t) for n, t in times.items()}
    best = fastest(median)
    torch.set_num_threads(best)
    timed = ", ".join(f"{n}: {median[n] * 1e3:.3g} ms" for n in counts)
    return best, (f"auto: {best}, the fastest by median step time ({timed}; {len(times[best])} timed steps "
                  f"each, {time.perf_counter() - start:.2f} s)")
