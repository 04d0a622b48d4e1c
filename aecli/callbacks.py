"""Hydra callbacks (registered under ``hydra.callbacks`` in ``conf/train.yaml``)."""
from __future__ import annotations

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
