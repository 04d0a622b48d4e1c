"""Hydra callbacks (registered under ``hydra.callbacks`` in ``conf/train.yaml``)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from aecli.checkpoint import check_fresh_run_dir
from aecli.errors import ConfigError


class RunDirGuard(Callback):
    """Refuse to start a new run in a dir that already holds one.

    Runs before Hydra writes ``.hydra/`` into the run dir, so an earlier run's config, logs and
    checkpoints are never touched; ``resume=...`` is the way to continue a run in place. Hydra
    turns exceptions in callbacks into warnings and carries on, so this one exits itself.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_fresh_run_dir(Path(config.hydra.run.dir), config.get("resume"))
        except ConfigError as e:
            print(e, file=sys.stderr)
            sys.exit(1)
