"""aecli's entrypoint: ``python -m aecli.train [group=option ...] [key=value ...]``.

Hydra composes ``conf/train.yaml`` with the chosen options of each group against the typed
schema (``aecli.config``); ``RunGuard`` checks the run before Hydra writes anything (config,
run dir, lock, checkpoint); ``task`` trains (``aecli.training.run.run``) and records the job's status;
``main`` maps the outcome to the exit status: 0 completed, 1 refused or failed (one message, no
traceback), 128 + N stopped by signal N with a checkpoint to continue from.
torch is imported only inside the task, so ``--help`` and tab completion stay fast.
"""
from __future__ import annotations

import math
import os
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from aecli import config
from aecli.errors import AecliError
from aecli.store import rundir
from aecli.store.atomic import DISK_ERRORS, quiet_disk_errors_in_writer_threads, write_failed
from aecli.training.distributed import WORLD
from aecli.training.guard import PLANS, Refused
from aecli.training.placement import job_slot
from aecli.training.signals import SIGNALS
from hydra_plugins.aecli_packed_launcher import packed_launcher

_outcome: dict[str, Any] = {}  # what a single run's task leaves for main: "error" or "stopped"


LAUNCHED = datetime.now()  # the run dir's time stamp; in a DDP run rank 0's (``main``)


def launch_time(pattern: str) -> str:
    """The resolver ``aecli_now`` in ``hydra.run.dir``: this launch's time (Hydra's ``now`` is
    each process's own, which would give every rank of a DDP run its own dir)."""
    return LAUNCHED.strftime(pattern)


def run_dir_of(resume: str | None, default: str) -> str:
    """The dir a run writes into: for ``resume=PATH`` the resumed run's own dir (so it goes on
    where it stopped), else ``default``. The resolver ``aecli_run_dir`` in ``hydra.run.dir``."""
    if resume is None or resume == "auto":
        return default
    p = Path(resume).expanduser()
    if p.suffix == ".pt" or p.is_file():
        p = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    return str(p)


OmegaConf.register_new_resolver("aecli_run_dir", run_dir_of, replace=True)
OmegaConf.register_new_resolver("aecli_now", launch_time, replace=True)


def job_tag(num: int | None) -> str:
    """``[job N]`` in a sweep job's log lines (joblib interleaves parallel jobs' lines on the
    terminal); nothing for a single run, which has no job number. The resolver
    ``aecli_job_tag`` in ``hydra.job_logging``."""
    return "" if num is None else f"[job {num}]"


OmegaConf.register_new_resolver("aecli_job_tag", job_tag, replace=True)
packed_launcher.register()  # hydra/launcher=packed, also from an editable install


def continue_command(run_dir: Path) -> str:
    """A command that continues the run in ``run_dir``, safe to paste into a shell (the dir's
    name may hold Hydra's '=' and ',': the value is quoted for Hydra, the whole for the shell)."""
    value = str(run_dir).replace("\\", "\\\\").replace("'", "\\'")
    override = f"resume='{value}'"
    plain = not any(c in override for c in '"$`\\!')
    return f'python -m aecli.train "{override}"' if plain else f"python -m aecli.train {shlex.quote(override)}"


@hydra.main(version_base="1.3", config_path="pkg://aecli.conf", config_name="train")
def task(cfg: DictConfig) -> float | None:
    """Train one configuration; return what sweepers minimise (``objective``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    # torch and the training wing load here, when a run starts, not when the app is imported:
    # `aecli train --help` and Hydra's composition errors answer in ~1 s instead of ~5 s
    from aecli.training.plan import prepare
    from aecli.training.run import run

    def status(*args: Any, **kwargs: Any) -> None:  # rank 0 alone writes the job's status
        if WORLD.main:
            try:
                rundir.write_status(run_dir, *args, **kwargs)
            except (AecliError, OSError):  # a full disk: the run's own error is the message that counts
                print(f"aecli: warning: could not record the job's status ({args[0]}) in "
                      f"{run_dir / rundir.STATUS_FILE}", file=sys.stderr)

    hc = HydraConfig.get()
    run_dir, multirun = Path(hc.runtime.output_dir).absolute(), hc.mode == RunMode.MULTIRUN
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and v is not None}
    try:
        plan = PLANS.pop(run_dir, None) or prepare(cfg, run_dir, list(hc.overrides.task), hydra_wrote=True)
        status("RUNNING")
        result = run(cfg, run_dir, choices=choices, slot=job_slot(), plan=plan)
    except AecliError as e:
        if run_dir.is_dir():
            status("FAILED", e.summary())
        if multirun:
            raise
        _outcome["error"] = e
        return None
    except Exception as e:
        if isinstance(e, OSError) and e.errno in DISK_ERRORS:  # e.g. TensorBoard's flush on a full disk
            error = write_failed(Path(e.filename or run_dir), e, f"free disk space, then continue with "
                                 f"{continue_command(run_dir)}")
            status("FAILED", error.summary())
            if multirun:
                raise error from None
            _outcome["error"] = error
            return None
        status("FAILED", f"{type(e).__name__}: {e}")
        if multirun and not picklable(e):  # a parallel launcher pickles it back: one that cannot breaks the pool
            raise RuntimeError(f"{type(e).__name__}: {e}") from None
        raise
    if result.status == "stopped":
        status("STOPPED", f"{result.signal} at step {result.step}")
        if WORLD.main:
            print(stopped_message(result, run_dir), file=sys.stderr, flush=True)
        if multirun:
            raise SystemExit(SIGNALS.exit_code())  # a stopped sweep stops: the next jobs do not start
        _outcome["stopped"] = result
        return None
    if not math.isfinite(result.objective):  # a NaN objective would stop an Optuna search: fail this job
        status("FAILED", f"the objective is {result.objective}")
        raise FloatingPointError(f"the objective ({cfg.get('objective') or 'val loss'}) is {result.objective}")
    status("COMPLETED", return_value=result.objective)
    return result.objective


def stopped_message(result: Any, run_dir: Path) -> str:
    """What a stopped run tells its user: where it stopped and the command that continues it."""
    last = run_dir / "checkpoints" / "last.pt"
    where = (f"checkpoint written to {last}" if last.is_file()
             else "before the first checkpoint (nothing trained yet: it starts afresh in that dir)")
    return (f"aecli: {result.signal}: stopped after step {result.step}; {where}. Continue with:\n"
            f"  {continue_command(run_dir)}")


def picklable(error: BaseException) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return True
    except Exception:  # noqa: BLE001 - any failure to round-trip
        return False


def join_world() -> None:
    """Under ``torchrun``: join the process group, take rank 0's launch time (so every rank
    composes the same run dir), and keep Hydra's files and log to rank 0."""
    global LAUNCHED

    if not WORLD.distributed:
        return
    if any(a in ("-m", "--multirun") for a in sys.argv[1:]):
        print("aecli: error: -m: a multirun inside torchrun would run every job in every process\n"
              "  fix: start one torchrun per job (a sweep of DDP jobs: README, 'Several GPUs or nodes')",
              file=sys.stderr)
        sys.exit(1)
    WORLD.init()
    LAUNCHED = WORLD.broadcast(LAUNCHED)
    if not WORLD.main:
        sys.argv += ["hydra.output_subdir=null", "hydra.job_logging.root.handlers=[]"]  # no .hydra/, no train.log


def main() -> None:
    """``python -m aecli.train`` / ``aecli train``: exit 0, 1 (one message) or 128 + signal."""
    SIGNALS.install()
    quiet_disk_errors_in_writer_threads()
    join_world()

    say = (lambda error: print(error, file=sys.stderr)) if WORLD.main else (lambda error: None)
    full_errors = bool(os.environ.get("HYDRA_FULL_ERROR"))
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing: we print ourselves
    try:
        task()
    except Refused as r:
        say(r.error)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a config mistake or a full disk
        error = e if isinstance(e, AecliError) else config.explain(e)
        if isinstance(e, OSError) and e.errno in DISK_ERRORS:  # Hydra's own files (.hydra/, train.log)
            from aecli.training.run import discard_new_run_dir  # torch: imported only on this path

            dirs = list(PLANS)
            for plan in PLANS.values():  # a run that never started: no half-written record of it
                discard_new_run_dir(plan)
            error = write_failed(Path(e.filename or (dirs[0] / ".hydra" if dirs else "the run dir")), e)
        if error is None or full_errors:
            raise
        say(error)
        sys.exit(1)
    if "error" in _outcome:
        say(_outcome["error"])
        sys.exit(1)
    WORLD.leave()  # every rank ended the same way (completed or stopped): they exit together
    if "stopped" in _outcome:
        sys.exit(SIGNALS.exit_code())
