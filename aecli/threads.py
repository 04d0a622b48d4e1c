"""torch's CPU thread count, chosen by measurement: ``trainer.num_threads=auto`` and the use
commands' ``--threads auto``.

The fastest count depends on the model, the batch and what else runs on the cores right now:
on an idle machine all cores win for all but the smallest steps; with another process busy on
the same cores, each parallel region waits for its slowest (descheduled) thread and one
thread can be several times faster. So ``choose_threads`` times a few real steps at each
candidate count, interleaved (so a load that comes and goes hits every candidate alike), and
keeps the fastest. No torch import at module level: parsers import ``parse_threads``, and
``import aecli`` calls ``set_wait_policy`` before anything loads torch.

OpenMP's wait policy, decided per start (``set_wait_policy``): torch's OpenMP runtime reads
``OMP_WAIT_POLICY`` once, when it loads. Its default lets idle worker threads spin-wait for the
next parallel region: faster on idle cores, a collapse as soon as another process shares them
(each region then waits for a descheduled spinner). ``PASSIVE`` (they sleep) holds up under
load but makes more than one thread useless on a quiet machine (docs/benchmarks.md has the
measurements). So a start on a quiet machine keeps torch's default, and ``SpinWatch``
(``aecli.training.callbacks``) drops a training run to one thread if the machine gets busy
later; a start on a busy machine sleeps.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, MutableMapping
from typing import Any

BUDGET_S = 0.8  # the whole choice (startup must stay under a second): 1 warm-up + 1-12 timed steps each
MAX_ROUNDS = 12  # timed steps per candidate when steps are fast (more only narrows noise we already outrun)
MARGIN = 0.05  # more threads must be this much faster to be taken: fewer leave cores to the rest of the machine


def parse_threads(value: Any, key: str = "--threads") -> int | str:
    """``auto`` or a whole number >= 1 (a flag's or config key's value), else one clear message."""
    from aecli.errors import ConfigError  # here, not above: it imports hydra (0.2 s), and import aecli runs
    # set_wait_policy from this module before every command, library users' imports included

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


# --- OpenMP's wait policy, decided at startup ----------------------------------------------

WAIT_POLICY = "AECLI_WAIT_POLICY"  # the decision and why: logged, and inherited by child processes
QUIET_CORES = 0.25  # CPU use by other processes (in cores) under which a machine counts as quiet
SAMPLE_S = 0.05  # how long that use is sampled, at every start


def cpu_times(stat: str) -> tuple[int, int, int]:
    """The busy and total clock ticks of the aggregate ``cpu`` line of ``/proc/stat``'s text, and
    the machine's CPU count (its ``cpuN`` lines). Busy is all but idle and iowait: steal (time a
    hypervisor gave to others) counts, since a spinning thread waits through it too; guest time
    is already in user time."""
    ticks: list[int] = []
    cpus = 0
    for line in stat.splitlines():
        name, *fields = line.split() or [""]
        if name == "cpu":
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
        elif name[:3] == "cpu" and name[3:].isdigit():
            cpus += 1
    if len(ticks) < 5 or not cpus:
        raise ValueError("no aggregate cpu line with idle and iowait, or no cpuN lines")
    total = sum(ticks)
    return total - ticks[3] - ticks[4], total, cpus


def cores_used(before: str, after: str) -> tuple[float, int]:
    """CPU use between two ``/proc/stat`` snapshots, in cores (busy ticks over all ticks, times
    the CPU count), and the CPU count. Taken while this process sleeps, it is the others' use."""
    busy0, total0, cpus = cpu_times(before)
    busy1, total1, _ = cpu_times(after)
    if total1 <= total0:
        raise ValueError("no clock tick between the two snapshots")
    return max(busy1 - busy0, 0) / (total1 - total0) * cpus, cpus


def read_proc_stat() -> str:
    with open("/proc/stat") as f:
        return f.read()


def sample_load(read: Callable[[], str] = read_proc_stat,
                sleep: Callable[[float], Any] = time.sleep) -> tuple[float, int] | None:
    """Other processes' CPU use over ``SAMPLE_S`` (``cores_used``); None where it cannot be read
    (no ``/proc/stat``: macOS, Windows)."""
    try:
        before = read()
        sleep(SAMPLE_S)
        return cores_used(before, read())
    except (OSError, ValueError):
        return None


def wait_policy(load: tuple[float, int] | None) -> str:
    """The decision for a start where nobody chose: ``spin: ...`` (torch's default: the machine
    is quiet) or ``PASSIVE: ...``, with why."""
    if load is None:
        return "PASSIVE: the machine's load cannot be read here (no /proc/stat), so the safe side"
    used, cpus = load
    if used < QUIET_CORES:
        return f"spin: others used {used:.2f} of {cpus} cores at startup"
    return f"PASSIVE: others used {used:.2f} of {cpus} cores at startup"


def set_wait_policy(environ: MutableMapping[str, str] = os.environ,
                    load: Callable[[], tuple[float, int] | None] = sample_load) -> str:
    """Decide OpenMP's wait policy before torch loads, record the decision in ``WAIT_POLICY`` and
    return it. A user's own ``OMP_WAIT_POLICY`` is kept (``user: ...``). A decision already in
    the environment (``spin...`` or ``PASSIVE...``: the parent's, inherited by DataLoader and
    decode workers, sweep jobs) is kept, so parent and children share one; setting it yourself
    forces one (``AECLI_WAIT_POLICY=spin`` or ``=PASSIVE``). Otherwise the machine's load
    decides (``wait_policy``). ``PASSIVE`` sets ``OMP_WAIT_POLICY=PASSIVE``; ``spin`` leaves it
    unset (torch's default)."""
    decided = environ.get(WAIT_POLICY, "")
    user = environ.get("OMP_WAIT_POLICY")
    if user is not None and not (user == "PASSIVE" and decided.startswith("PASSIVE")):
        decided = f"user: OMP_WAIT_POLICY={user}"
    elif not decided.startswith(("spin", "PASSIVE")):
        decided = wait_policy(load())
    if decided.startswith("PASSIVE"):
        environ["OMP_WAIT_POLICY"] = "PASSIVE"
    environ[WAIT_POLICY] = decided
    return decided


def wait_policy_in_effect() -> str:
    """This process's decision (``set_wait_policy``), for the log lines that say how it runs."""
    return os.environ.get(WAIT_POLICY, "not decided (aecli/__init__.py did not run first)")


def spinning() -> bool:
    """Whether torch's OpenMP threads spin-wait here: aecli decided so on a quiet machine."""
    return wait_policy_in_effect().startswith("spin")
