"""Speed on a busy machine: OpenMP's wait policy is set before torch loads in every entry point
(and reaches child processes), and thread counts are chosen by timing real steps."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import pytest
import torch

from aecli.components import build
from aecli.errors import ConfigError
from aecli.threads import candidates, choose_threads, fastest, parse_threads
from aecli.training.build import build_parts, time_threads
from aecli.training.step import Precision
from aecli.use.commandline import stage

from .conftest import REPO, cli_env, make_cfg

# Each shim ``python -m aecli.X`` (a module with a __main__ guard at aecli's top level), imported
# afresh with a finder that records OMP_WAIT_POLICY when torch is first imported, then stops the
# import there (no torch load: the whole check takes about a second). An entry point that defers
# torch to its main() records the value its import leaves for that later load.
PROBE = """
import importlib, json, os, sys
from pathlib import Path
import aecli
names = sorted(p.stem for p in Path(aecli.__file__).parent.glob("*.py") if "__main__" in p.read_text())
class Stop(Exception):
    pass
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            seen[entry] = os.environ.get("OMP_WAIT_POLICY")
            raise Stop
sys.meta_path.insert(0, Spy())
seen = {}
for entry in names:
    for m in [m for m in sys.modules if m == "aecli" or m.startswith("aecli.")]:
        del sys.modules[m]
    if USER is None:
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = USER
    try:
        importlib.import_module("aecli." + entry)
        seen[entry] = os.environ.get("OMP_WAIT_POLICY")
    except Stop:
        pass
print(json.dumps(seen))
"""


def wait_policies(user: str | None) -> dict[str, str]:
    env = cli_env()
    env.pop("OMP_WAIT_POLICY", None)
    out = subprocess.run([sys.executable, "-c", f"USER = {user!r}\n{PROBE}"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_every_entry_point_sets_the_wait_policy_before_torch_loads():
    seen = wait_policies(None)
    assert {"train", "bench", "evaluate", "encode", "map", "finetune"} <= set(seen)
    assert seen == {entry: "PASSIVE" for entry in seen}


def test_a_users_own_wait_policy_is_kept():
    seen = wait_policies("ACTIVE")
    assert seen == {entry: "ACTIVE" for entry in seen}


def test_child_processes_inherit_the_wait_policy():
    """DataLoader workers (fork, spawn, forkserver) and sweep jobs (new processes) start with it."""
    code = """
import os, multiprocessing as mp
import aecli
for method in ("fork", "spawn", "forkserver"):
    with mp.get_context(method).Pool(1) as pool:
        print(method, pool.apply(os.getenv, ("OMP_WAIT_POLICY",)))
"""
    env = cli_env()
    env.pop("OMP_WAIT_POLICY", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split("\n")[:3] == ["fork PASSIVE", "spawn PASSIVE", "forkserver PASSIVE"], out.stderr


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


def test_auto_threads_are_timed_and_logged_on_the_cpu():
    parts = build_parts(make_cfg("trainer.num_threads=auto"))
    assert f"torch threads: {torch.get_num_threads()} (trainer.num_threads=auto; " in parts.placement
    assert "the fastest by median step time" in parts.placement or "the only candidate" in parts.placement
    fixed = build_parts(make_cfg("trainer.num_threads=1"))
    assert fixed.placement.startswith("torch threads: 1 (trainer.num_threads=1; ") and "auto:" not in fixed.placement


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
