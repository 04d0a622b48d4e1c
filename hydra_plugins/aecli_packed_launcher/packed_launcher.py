"""``hydra/launcher=packed``: a sweep's same-shape jobs trained side by side in one process.

Hydra imports every module under ``hydra_plugins`` when it starts, so this one stays light: the
launcher's work (and torch) loads from ``aecli.training.packing`` only when a sweep launches.
"""
# no "from __future__ import annotations": Hydra runs plugin modules outside sys.modules, where a
# dataclass cannot look string annotations up

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class PackedLauncherConf:
    _target_: str = "hydra_plugins.aecli_packed_launcher.packed_launcher.PackedLauncher"
    # packs (and lone jobs) trained at once, each in a process of its own (joblib's loky workers,
    # as hydra/launcher=joblib); -1: one per core. 1: one after another in this process
    n_jobs: int = 1


ConfigStore.instance().store(group="hydra/launcher", name="packed", node=PackedLauncherConf, provider="aecli")


class PackedLauncher(Launcher):
    """Groups the jobs that can train together (``aecli.training.packing.pack_key``), trains each
    group as one batched model (``trainer.pack_size`` members at most), and runs the rest one
    after another as the basic launcher does, saying why each could not pack."""

    def __init__(self, n_jobs: int = 1) -> None:
        super().__init__()
        self.n_jobs = n_jobs
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        loader: Any = hydra_context.config_loader
        if not isinstance(loader.load_sweep_config, Composed):
            loader.load_sweep_config = Composed(loader.load_sweep_config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from aecli.training.packing import launch  # torch and the training wing: only when a sweep runs

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        return launch(self.config, self.hydra_context, self.task_function, job_overrides, initial_job_idx,
                      self.n_jobs)


class Composed:
    """A config loader's ``load_sweep_config`` that keeps what it composed until the launcher takes
    it: the sweeper composes every job once to check the batch (``validate_batch_is_legal``), and
    the launcher would compose each again (about 0.3 s a job)."""

    def __init__(self, compose: Any) -> None:
        self.compose = compose
        self.kept: dict[tuple[str, ...], DictConfig] = {}

    def __call__(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        cfg = self.compose(master_config, sweep_overrides)
        self.kept[tuple(sweep_overrides)] = cfg
        return cfg

    def take(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        """The job's config, composed by the check if it was, else now; no longer kept."""
        key = tuple(sweep_overrides)
        cfg = self.kept.pop(key, None)
        return cfg if cfg is not None else self.compose(master_config, sweep_overrides)


def register() -> None:
    """Make the launcher known to Hydra also where its plugin scan does not see this folder: the
    scan lists the ``hydra_plugins`` folders on ``sys.path``, and an editable install of aecli
    (``pip install -e``) maps this package from elsewhere. Called by ``aecli.training.app``."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(PackedLauncher)
