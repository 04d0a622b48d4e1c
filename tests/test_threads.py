"""Speed on a busy machine: OpenMP's wait policy is decided before torch loads in every entry point
(and reaches child processes), a run whose threads spin drops to one when the machine gets busy,
and thread counts are chosen by timing real steps."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from aecli.components import build
from aecli.errors import ConfigError
from aecli.threads import (
    QUIET_CORES,
    SAMPLE_S,
    WAIT_POLICY,
    candidates,
    choose_threads,
    cores_used,
    cpu_times,
    fastest,
    parse_threads,
    sample_load,
    set_wait_policy,
)
from aecli.training.best import BestModel
from aecli.training.build import build_parts, time_threads
from aecli.training.callbacks import KeepThreads, SpinWatch
from aecli.training.run import default_hooks
from aecli.training.step import Precision
from aecli.training.tensorboard import NullWriter
from aecli.use.commandline import set_threads, stage

from .conftest import REPO, cli_env, make_cfg

# Each shim ``python -m aecli.X`` (a module with a __main__ guard at aecli's top level), imported
# afresh with a finder that records OMP_WAIT_POLICY and aecli's decision (AECLI_WAIT_POLICY) when
# torch is first imported, then stops the import there (no torch load: the whole check takes about
# a second). An entry point that defers torch to its main() records what its import leaves for that
# later load. USER: the user's OMP_WAIT_POLICY; DECIDED: a decision inherited from a parent process.
PROBE = """
import importlib, json, os, sys
from pathlib import Path
import aecli
names = sorted(p.stem for p in Path(aecli.__file__).parent.glob("*.py") if "__main__" in p.read_text())
class Stop(Exception):
    pass
def record():
    seen[entry] = [os.environ.get("OMP_WAIT_POLICY"), os.environ.get("AECLI_WAIT_POLICY")]
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            record()
            raise Stop
sys.meta_path.insert(0, Spy())
seen = {}
for entry in names:
    for m in [m for m in sys.modules if m == "aecli" or m.startswith("aecli.")]:
        del sys.modules[m]
    for key, given in (("OMP_WAIT_POLICY", USER), ("AECLI_WAIT_POLICY", DECIDED)):
        if given is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = given
    try:
        importlib.import_module("aecli." + entry)
        record()
    except Stop:
        pass
print(json.dumps(seen))
"""


def clean_env() -> dict[str, str]:
    """A subprocess's environment without a wait policy of the user's or a parent's."""
    env = cli_env()
    env.pop("OMP_WAIT_POLICY", None)
    env.pop(WAIT_POLICY, None)
    return env


def wait_policies(user: str | None, decided: str | None = None) -> dict[str, list]:
    out = subprocess.run([sys.executable, "-c", f"USER = {user!r}\nDECIDED = {decided!r}\n{PROBE}"], cwd=REPO,
                         env=clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


ENTRIES = {"train", "bench", "evaluate", "encode", "map", "finetune"}


def test_every_entry_point_sets_the_wait_policy_before_torch_loads():
    """Nobody chose: each entry point samples the machine and decides before torch loads, either
    way (this machine's load picks which): PASSIVE is set, or spin leaves torch's default."""
    seen = wait_policies(None)
    assert ENTRIES <= set(seen)
    for entry, (omp, decided) in seen.items():
        assert decided is not None and decided.startswith(("spin: others used", "PASSIVE: others used")), entry
        assert omp == ("PASSIVE" if decided.startswith("PASSIVE") else None), (entry, omp, decided)


@pytest.mark.parametrize("decided, omp", [("PASSIVE: forced by the test", "PASSIVE"),
                                          ("spin: forced by the test", None)])
def test_a_decision_in_the_environment_is_applied_before_torch_loads(decided, omp):
    """AECLI_WAIT_POLICY (a parent's decision, or the user's) is kept as it is, and PASSIVE is
    applied: so the test does not depend on this machine's load."""
    seen = wait_policies(None, decided)
    assert ENTRIES <= set(seen)
    assert seen == {entry: [omp, decided] for entry in seen}


@pytest.mark.parametrize("decided", [None, "PASSIVE: a parent's", "spin: a parent's"])
def test_a_users_own_wait_policy_is_kept(decided):
    seen = wait_policies("ACTIVE", decided)
    assert ENTRIES <= set(seen)
    assert seen == {entry: ["ACTIVE", "user: OMP_WAIT_POLICY=ACTIVE"] for entry in seen}


CHILDREN = """
import json, os, multiprocessing as mp
import aecli
from aecli.threads import wait_policy_in_effect
seen = {"parent": [os.getenv("OMP_WAIT_POLICY"), wait_policy_in_effect()]}
for method in ("fork", "spawn", "forkserver"):
    with mp.get_context(method).Pool(1) as pool:  # the child imports aecli to call wait_policy_in_effect
        seen[method] = [pool.apply(os.getenv, ("OMP_WAIT_POLICY",)), pool.apply(wait_policy_in_effect)]
print(json.dumps(seen))
"""


@pytest.mark.parametrize("forced", [None, "spin: forced by the test", "PASSIVE: forced by the test"])
def test_child_processes_inherit_the_wait_policy(forced):
    """DataLoader workers (fork, spawn, forkserver) and sweep jobs (new processes) that import
    aecli keep the parent's decision (the same words: nothing sampled again), spin included."""
    env = clean_env() | ({WAIT_POLICY: forced} if forced else {})
    out = subprocess.run([sys.executable, "-c", CHILDREN], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    parent = seen.pop("parent")
    assert parent[1] == forced or (forced is None and parent[1].startswith(("spin: ", "PASSIVE: ")))
    assert parent[0] == ("PASSIVE" if parent[1].startswith("PASSIVE") else None)
    assert seen == {method: parent for method in ("fork", "spawn", "forkserver")}


# /proc/stat's first lines on a 2-CPU machine; ticks: user nice system idle iowait irq softirq steal
# guest guest_nice (guest time is already in user time).
STAT = """cpu  {u} 10 100 {idle} {io} 0 5 {steal} 7 0
cpu0 {u} 5 50 {idle} {io} 0 3 {steal} 7 0
cpu1 0 5 50 0 0 0 2 0 0 0
intr 12345 0 0
ctxt 999
"""


def stat(user: int, idle: int, iowait: int = 0, steal: int = 0) -> str:
    return STAT.format(u=user, idle=idle, io=iowait, steal=steal)


def test_cpu_use_is_read_from_two_snapshots_of_proc_stat():
    assert cpu_times(stat(1000, 5000, 200, 3)) == (1000 + 10 + 100 + 5 + 3, 1000 + 10 + 100 + 5000 + 200 + 5 + 3, 2)
    # 100 ticks in all (50 ms on 2 CPUs): 10 busy = 0.2 cores; iowait is idle; steal is busy
    assert cores_used(stat(1000, 5000), stat(1010, 5090)) == (pytest.approx(0.2), 2)
    assert cores_used(stat(1000, 5000), stat(1000, 5060, iowait=40)) == (0.0, 2)
    assert cores_used(stat(1000, 5000), stat(1040, 5050, steal=10)) == (pytest.approx(1.0), 2)
    with pytest.raises(ValueError):
        cores_used(stat(1000, 5000), stat(1000, 5000))  # no tick passed
    with pytest.raises(ValueError):
        cpu_times("intr 1 2 3\n")


def test_a_quiet_machine_keeps_torchs_default_and_a_busy_one_sleeps():
    def decide(before: str, after: str, environ: dict[str, str] | None = None) -> dict[str, str]:
        environ = {} if environ is None else environ
        set_wait_policy(environ, lambda: cores_used(before, after))
        return environ

    quiet = decide(stat(1000, 5000), stat(1010, 5090))  # 0.2 cores < QUIET_CORES
    assert quiet == {WAIT_POLICY: "spin: others used 0.20 of 2 cores at startup"}
    busy = decide(stat(1000, 5000), stat(1080, 5020))  # 1.6 cores
    assert busy == {"OMP_WAIT_POLICY": "PASSIVE", WAIT_POLICY: "PASSIVE: others used 1.60 of 2 cores at startup"}
    assert QUIET_CORES < 0.5 < 1.6  # the threshold sits between the two
    # a decision inherited from a parent is kept (no sampling), a user's own value above all
    inherited = {WAIT_POLICY: "spin: the parent's"}
    assert decide(stat(1000, 5000), stat(1080, 5020), inherited) == {WAIT_POLICY: "spin: the parent's"}
    mine = decide(stat(1000, 5000), stat(1010, 5090), {"OMP_WAIT_POLICY": "ACTIVE", WAIT_POLICY: "PASSIVE: x"})
    assert mine == {"OMP_WAIT_POLICY": "ACTIVE", WAIT_POLICY: "user: OMP_WAIT_POLICY=ACTIVE"}


def test_an_unreadable_proc_stat_means_passive():
    slept = []

    def missing() -> str:
        raise FileNotFoundError("/proc/stat")

    assert sample_load(missing, slept.append) is None
    assert sample_load(lambda: "garbage\n", slept.append) is None
    reads = iter([stat(1000, 5000), stat(1010, 5090)])
    assert sample_load(lambda: next(reads), slept.append) == (pytest.approx(0.2), 2)
    assert slept == [SAMPLE_S, SAMPLE_S]  # one window per readable sample, between the two reads
    environ: dict[str, str] = {}
    set_wait_policy(environ, lambda: sample_load(missing, slept.append))
    assert environ["OMP_WAIT_POLICY"] == "PASSIVE" and environ[WAIT_POLICY].startswith("PASSIVE: ")
    assert "cannot be read" in environ[WAIT_POLICY]


class Clock:
    """A clock the test moves: seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def watched(monkeypatch, decided: str = "spin: forced by the test", threads: int = 2, device: str = "cpu",
            setting="auto", every: int = 5):
    """A SpinWatch with a test clock, started as a run starts it (the run: what the hook reads)."""
    monkeypatch.setenv(WAIT_POLICY, decided)
    torch.set_num_threads(threads)  # the torch_threads fixture puts the count back after the test
    clock = Clock()
    watch = SpinWatch(setting, every, clock)
    run = SimpleNamespace(device=torch.device(device), phase="main", state=SimpleNamespace(step=0))
    watch.on_fit_start(run)
    watch.on_epoch_start(run)
    return watch, run, clock


def steps(watch, run, clock, n: int, seconds: float) -> None:
    for _ in range(n):
        clock.now += seconds
        run.state.step += 1
        watch.on_step_end(run, None)


def test_the_watch_drops_to_one_thread_after_slow_windows_not_before(monkeypatch, caplog):
    """Windows of 10 steps (5 steps, but at least WINDOW_S = 0.1 s): 100 steps/s three times,
    then 20 steps/s (5x slower): one slow window is not enough (a pause), two in a row are."""
    watch, run, clock = watched(monkeypatch)
    steps(watch, run, clock, 30, 0.01)
    steps(watch, run, clock, 5, 0.05)
    assert torch.get_num_threads() == 2 and not caplog.records  # one slow window
    steps(watch, run, clock, 5, 0.05)
    assert torch.get_num_threads() == 1
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "the machine got busy: training ran at 20 steps/s against 100 at best" in warning.message
    assert "its 2 threads spin-waiting (spin: forced by the test); on 1 thread from step 40" in warning.message
    assert KeepThreads("auto").state_dict() == {"threads": 1}  # the checkpoint records the count in use
    torch.set_num_threads(2)
    steps(watch, run, clock, 20, 0.05)
    assert torch.get_num_threads() == 2 and len(caplog.records) == 1  # once: the watch is done


def test_one_slow_window_and_the_epochs_ends_are_no_load(monkeypatch, caplog):
    watch, run, clock = watched(monkeypatch)
    steps(watch, run, clock, 30, 0.01)
    steps(watch, run, clock, 5, 0.05)  # a pause: one slow window
    steps(watch, run, clock, 10, 0.01)
    steps(watch, run, clock, 5, 0.05)
    for _ in range(3):  # validation and image grids between epochs take long: not training time
        clock.now += 30.0
        watch.on_epoch_start(run)
        steps(watch, run, clock, 10, 0.01)
    assert torch.get_num_threads() == 2 and not caplog.records


def test_a_new_phase_is_timed_on_its_own(monkeypatch, caplog):
    """Pre-training a small layer runs faster than the whole model: the main phase is not
    compared with it."""
    watch, run, clock = watched(monkeypatch)
    run.phase = "pretrain 1"
    watch.on_epoch_start(run)
    steps(watch, run, clock, 30, 0.002)
    run.phase = "main"
    watch.on_epoch_start(run)
    steps(watch, run, clock, 30, 0.02)
    assert torch.get_num_threads() == 2 and not caplog.records


@pytest.mark.parametrize("case", [dict(decided="PASSIVE: forced by the test"), dict(decided="user: OMP_WAIT_POLICY=x"),
                                  dict(threads=1), dict(device="cuda")])
def test_the_watch_does_nothing_unless_threads_spin_on_the_cpu(monkeypatch, caplog, case):
    watch, run, clock = watched(monkeypatch, **case)
    steps(watch, run, clock, 30, 0.01)
    steps(watch, run, clock, 30, 0.1)
    assert torch.get_num_threads() == case.get("threads", 2) and not caplog.records


def test_a_thread_count_the_user_chose_is_kept_with_a_warning(monkeypatch, caplog):
    watch, run, clock = watched(monkeypatch, setting=2)
    steps(watch, run, clock, 30, 0.01)
    steps(watch, run, clock, 10, 0.05)
    assert torch.get_num_threads() == 2
    [warning] = caplog.records
    assert "the machine got busy" in warning.message and "trainer.num_threads=2 keeps them" in warning.message


def test_every_run_has_the_watch():
    cfg = make_cfg("trainer.log_every_n_steps=7")
    hooks = default_hooks(cfg, NullWriter(), {}, [], BestModel(None, "nats"))
    [watch] = [h for h in hooks if isinstance(h, SpinWatch)]
    assert watch.every == 7 and watch.setting == "auto"
    assert hooks.index(watch) > [type(h) for h in hooks].index(KeepThreads)  # after the count is restored


def test_candidates_run_from_one_thread_to_the_most():
    assert candidates(1) == [1]
    assert candidates(2) == [1, 2]
    assert candidates(8) == [1, 2, 4, 8]
    assert candidates(6) == [1, 2, 4, 6]


@pytest.mark.parametrize("fast", [1, 4])
def test_choose_threads_keeps_the_fastest_count(fast):
    """A step 20x faster at one count (a sleep: the choice depends on the step's times, not on
    this machine's speed; the median of ~10 steps each outlasts a late wake-up) is the one chosen,
    and torch is left at that count."""
    def step():
        time.sleep(0.001 if torch.get_num_threads() == fast else 0.02)

    n, why = choose_threads(step, 4, budget=0.5)
    assert n == fast == torch.get_num_threads()
    assert f"auto: {fast}, the fastest" in why and "4: " in why


def test_more_threads_must_be_clearly_faster():
    assert fastest({1: 1.0, 2: 0.97}) == 1  # within the margin: fewer threads
    assert fastest({1: 1.0, 2: 0.9}) == 2
    assert fastest({1: 1.0, 2: 0.9, 4: 0.88}) == 2  # 4 must beat 2, not 1
    assert fastest({1: 1.0, 2: 1.2, 4: 0.5}) == 4


@pytest.mark.parametrize("bad", ["0", "-2", "many", "1.5", ""])
def test_threads_is_auto_or_a_whole_number(bad):
    assert parse_threads("auto") == "auto" and parse_threads("3") == 3
    with pytest.raises(ConfigError, match="--threads"):
        parse_threads(bad)


def test_timing_threads_leaves_the_run_as_it_was():
    """The timed steps train a copy: the model's weights and the random streams are untouched,
    so a run gives the same numbers whatever count wins."""
    cfg = make_cfg("model=vae")
    torch.manual_seed(0)
    model = build(cfg, "model", input_shape=(1, 8, 8))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    n, why = time_threads(model, (1, 8, 8), build(cfg, "loss"), Precision(), cfg, 2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert n == torch.get_num_threads() and why.startswith(f"auto: {n}")


def test_auto_threads_are_timed_and_logged_on_the_cpu(monkeypatch):
    monkeypatch.setenv(WAIT_POLICY, "user: OMP_WAIT_POLICY={odd}")  # braces: said as they are
    parts = build_parts(make_cfg("trainer.num_threads=auto"))
    assert f"torch threads: {torch.get_num_threads()} (trainer.num_threads=auto; " in parts.placement
    assert "the fastest by median step time" in parts.placement or "the only candidate" in parts.placement
    assert "; wait policy user: OMP_WAIT_POLICY={odd})" in parts.placement  # the decision, and why
    fixed = build_parts(make_cfg("trainer.num_threads=1"))
    assert fixed.placement.startswith("torch threads: 1 (trainer.num_threads=1; ") and "auto:" not in fixed.placement


def test_the_use_commands_log_the_wait_policy_with_their_threads(caplog, monkeypatch):
    monkeypatch.setenv(WAIT_POLICY, "spin: {others} used 0.01 of 2 cores at startup")  # braces: said as they are
    model = build(make_cfg("model=ae"), "model", input_shape=(1, 8, 8))
    with caplog.at_level("INFO", logger="aecli"):
        set_threads(SimpleNamespace(device=torch.device("cpu"), model=model), "auto", batch=8)
    [line] = [r.message for r in caplog.records if r.message.startswith("torch threads: ")]
    assert line.endswith("; wait policy spin: {others} used 0.01 of 2 cores at startup)")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_long_stage_shows_its_name_and_elapsed_time_on_a_terminal(monkeypatch):
    """t-SNE and the probes report no progress of their own: a ticking line says what runs and
    for how long (on a terminal; nothing in logs and pipes)."""
    for terminal, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", terminal)
        monkeypatch.setenv("COLUMNS", "80")
        monkeypatch.setenv("LINES", "24")
        with stage("t-SNE of the codes (359 images)"):
            time.sleep(0.6)  # one tick
        assert ("t-SNE of the codes (359 images): 00:00" in terminal.getvalue()) is shown


LIBRARIES = """
import json, sys
import numpy
from aecli.threads import limit_libraries
limit_libraries(int(sys.argv[1]))
import sklearn.manifold, sklearn.linear_model  # their OpenMP runtime loads after the call
from threadpoolctl import threadpool_info
print(json.dumps(sorted({(p["internal_api"], p["num_threads"]) for p in threadpool_info()})))
"""


def test_a_fixed_thread_count_holds_scikit_learn_and_numpy_too():
    """``--threads 1`` also holds t-SNE's, PCA's and the probes' pools: the ones loaded before the
    call and the ones that load after it (scikit-learn's own OpenMP runtime)."""
    env = {k: v for k, v in cli_env().items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", LIBRARIES, "1"], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    pools = json.loads(out)
    assert {api for api, _ in pools} >= {"openmp"}, pools  # scikit-learn's OpenMP was seen
    assert all(n == 1 for _, n in pools), pools
