"""aecli's entrypoint: ``python -m aecli.train [group=option ...] [key=value ...]``.

Hydra composes ``conf/train.yaml`` with the chosen options of each group against the typed
schema (``aecli.config``); ``RunGuard`` checks the run before Hydra writes anything (config,
run dir, lock, checkpoint); ``task`` trains (``aecli.trainer.run``) and records the job's status;
``main`` maps the outcome to the exit status: 0 completed, 1 refused or failed (one message, no
traceback), 128 + N stopped by signal N with a checkpoint to continue from.
torch is imported only inside the task, so ``--help`` and tab completion stay fast.
"""
from __future__ import annotations

import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from aecli import config
from aecli.callbacks import PREPARED, Refused
from aecli.errors import AecliError
from aecli.signals import SIGNALS

_outcome: dict[str, Any] = {}  # what a single run's task leaves for main: "error" or "stopped"


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


def job_tag(num: int | None) -> str:
    """``[job N]`` in a sweep job's log lines (joblib interleaves parallel jobs' lines on the
    terminal); nothing for a single run, which has no job number. The resolver
    ``aecli_job_tag`` in ``hydra.job_logging``."""
    return "" if num is None else f"[job {num}]"


OmegaConf.register_new_resolver("aecli_job_tag", job_tag, replace=True)


def continue_command(run_dir: Path) -> str:
    """A command that continues the run in ``run_dir``, safe to paste into a shell (the dir's
    name may hold Hydra's '=' and ',': the value is quoted for Hydra, the whole for the shell)."""
    value = str(run_dir).replace("\\", "\\\\").replace("'", "\\'")
    return f"python -m aecli.train {shlex.quote(f'resume={chr(39)}{value}{chr(39)}')}"


@hydra.main(version_base="1.3", config_path="pkg://aecli.conf", config_name="train")
def task(cfg: DictConfig) -> float | None:
    """Train one configuration; return what sweepers minimise (``objective``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from aecli import rundir
    from aecli.placement import job_slot
    from aecli.resume import prepare
    from aecli.trainer import run

    hc = HydraConfig.get()
    run_dir, multirun = Path(hc.runtime.output_dir).absolute(), hc.mode == RunMode.MULTIRUN
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and v is not None}
    try:
        prepared = PREPARED.pop(run_dir, None) or prepare(cfg, run_dir, list(hc.overrides.task), hydra_wrote=True)
        rundir.write_status(run_dir, "RUNNING")
        result = run(cfg, run_dir, choices=choices, slot=job_slot(), prepared=prepared)
    except AecliError as e:
        if run_dir.is_dir():
            rundir.write_status(run_dir, "FAILED", f"{type(e).__name__}: {e.problem}")
        if multirun:
            raise
        _outcome["error"] = e
        return None
    except Exception as e:
        rundir.write_status(run_dir, "FAILED", f"{type(e).__name__}: {e}")
        if multirun and not picklable(e):  # a parallel launcher pickles it back: one that cannot breaks the pool
            raise RuntimeError(f"{type(e).__name__}: {e}") from None
        raise
    if result.status == "stopped":
        rundir.write_status(run_dir, "STOPPED", f"{result.signal} at step {result.step}")
        has_checkpoint = (run_dir / "checkpoints" / "last.pt").is_file()
        print(f"aecli: {result.signal}: stopped after step {result.step}; "
              + (f"checkpoint written to {run_dir / 'checkpoints' / 'last.pt'}. Continue with:\n  "
                 f"{continue_command(run_dir)}" if has_checkpoint else "before the first checkpoint: run the "
                 "same command again"), file=sys.stderr, flush=True)
        if multirun:
            raise SystemExit(SIGNALS.exit_code())  # a stopped sweep stops: the next jobs do not start
        _outcome["stopped"] = result
        return None
    if not math.isfinite(result.objective):  # a NaN objective would stop an Optuna search: fail this job
        rundir.write_status(run_dir, "FAILED", f"the objective is {result.objective}")
        raise FloatingPointError(f"the objective ({cfg.get('objective') or 'val loss'}) is {result.objective}")
    rundir.write_status(run_dir, "COMPLETED", return_value=result.objective)
    return result.objective


def picklable(error: BaseException) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return True
    except Exception:  # noqa: BLE001 - any failure to round-trip
        return False


def main() -> None:
    """``python -m aecli.train`` / ``aecli-train``: exit 0, 1 (one message) or 128 + signal."""
    SIGNALS.install()
    full_errors = bool(os.environ.get("HYDRA_FULL_ERROR"))
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing: we print ourselves
    try:
        task()
    except Refused as r:
        print(r.error, file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a config mistake
        error = e if isinstance(e, AecliError) else config.explain(e)
        if error is None or full_errors:
            raise
        print(error, file=sys.stderr)
        sys.exit(1)
    if "error" in _outcome:
        print(_outcome["error"], file=sys.stderr)
        sys.exit(1)
    if "stopped" in _outcome:
        sys.exit(SIGNALS.exit_code())


if __name__ == "__main__":
    main()
