"""Hydra callbacks (registered under ``hydra.callbacks`` in ``conf/train.yaml``)."""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from aecli.errors import ConfigError


class RunDirGuard(Callback):
    """Check the run dir before Hydra writes anything into it.

    A new run must not start in a dir that already holds one; a resumed run needs a readable,
    matching checkpoint; the dir must be writable. Hydra writes ``.hydra/`` right after this
    hook, so checking here keeps an earlier run's config, logs and checkpoints byte-identical.
    Hydra turns exceptions in callbacks into warnings and carries on, so this one exits itself.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from aecli.checkpoint import check_writable, plain_config, resolve_resume

        run_dir = Path(config.hydra.run.dir)
        try:
            resolve_resume(config.get("resume"), run_dir, plain_config(config))
            check_writable(run_dir)
        except ConfigError as e:
            print(e, file=sys.stderr)
            sys.exit(1)


STATUS_FILE = "job_status.json"


class JobStatus(Callback):
    """Write ``job_status.json`` into each job's run dir: RUNNING when the job starts, then
    COMPLETED (with the returned value) or FAILED (with the error).

    Hydra catches a job's exception, runs ``on_job_end`` and goes on with the other jobs of the
    batch (raising only after it), in the job's own process with every launcher. So a sweep
    keeps a record of each job, which ``aecli.report`` reads: a job still marked RUNNING is
    running, or was killed before Hydra could say how it ended.
    """

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._write(config, {"status": "RUNNING", "error": None, "return_value": None})

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus as Status

        if job_return.status == Status.COMPLETED:
            value = job_return.return_value
            status = {"status": "COMPLETED", "error": None,
                      "return_value": float(value) if isinstance(value, (int, float)) else None}
        else:
            error = job_return._return_value  # the exception; .return_value would raise it
            message = str(error).removeprefix("aecli: error: ")  # the type name says as much
            status = {"status": "FAILED", "error": f"{type(error).__name__}: {message}", "return_value": None}
            try:  # parallel launchers pickle the job's return back to the sweep's process
                pickle.loads(pickle.dumps(error))
            except Exception:  # an error that cannot make that trip would take the whole sweep down
                job_return.return_value = RuntimeError(status["error"])
        self._write(config, status)

    @staticmethod
    def _write(config: DictConfig, status: dict[str, Any]) -> None:
        path = Path(config.hydra.runtime.output_dir) / STATUS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(status, indent=2) + "\n")
