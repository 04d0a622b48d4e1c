"""Where a job runs among the jobs of a sweep: its torch thread count and its GPU.

Hydra's launchers start the jobs (basic: one after another; joblib: ``n_jobs`` processes at
once; submitit: local processes or SLURM jobs); they do not share out the machine. Parallel
jobs that each take all cores oversubscribe the CPU (N jobs x all-core thread pools), so each
job takes its share here, read from the launcher config Hydra hands the job. Pure functions
plus one reader of ``HydraConfig``; no torch import, so the config check stays fast.
(``place_job`` in ``aecli.training.build`` applies them.)
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from aecli.threads import cores_available


@dataclass(frozen=True)
class JobSlot:
    """This job's place in a sweep: ``num`` is ``hydra.job.num`` (None: a single run),
    ``jobs_at_once`` how many jobs of the sweep share this machine's cores while it runs."""

    num: int | None = None
    jobs_at_once: int = 1
    launcher: str = "basic"


def jobs_at_once(launcher: Mapping[str, Any] | None, cores: int) -> int:
    """How many jobs the Hydra launcher config ``launcher`` runs at once on this machine.

    joblib and packed: ``n_jobs`` (negative counts back from the cores, as in joblib: -1 = one job per
    core); submitit_local: all jobs of a batch run at once and their number is not known here,
    so a job counts as one of ``cores`` jobs (1 thread) unless ``cpus_per_task`` says its share;
    SLURM and the basic launcher: one job per machine/allocation at a time.
    """
    launcher = launcher or {}
    target = str(launcher.get("_target_", ""))
    if target.endswith(("JoblibLauncher", "PackedLauncher")):  # packed: n_jobs packs at once
        n = int(launcher.get("n_jobs") or 1)
        return max(cores + 1 + n, 1) if n < 0 else n
    if target.endswith("submitit_launcher.LocalLauncher"):
        cpus = launcher.get("cpus_per_task")
        return max(cores // int(cpus), 1) if cpus else cores
    return 1


def threads_per_job(setting: int | str | None, cores: int, jobs: int) -> int | None:
    """``trainer.num_threads``: a number is taken as is; ``auto`` is ``cores // jobs`` (at
    least 1) when jobs run side by side, and None (torch's own default, which already follows
    the CPU affinity) for a job that has the machine to itself; None stays None. On the CPU,
    ``auto`` is then timed (``aecli.training.build.time_threads``) with this as the most."""
    if setting is None:
        return None
    if setting != "auto":
        return int(setting)
    return max(cores // max(jobs, 1), 1) if jobs > 1 else None


def gpu_for_job(index: int | None, job_num: int | None, gpu_count: int) -> int | None:
    """``device.index``, or in a multirun on a box with several GPUs (and no index given) GPU
    ``job_num % gpu_count``, so parallel jobs spread over the GPUs instead of sharing GPU 0."""
    if index is not None or job_num is None or gpu_count < 2:
        return index
    return job_num % gpu_count


def job_slot() -> JobSlot:
    """This job's ``JobSlot`` from Hydra's config (a plain ``JobSlot()`` outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig, OmegaConf

    if not HydraConfig.initialized():
        return JobSlot()
    hc = cast(DictConfig, HydraConfig.get())  # typed as the HydraConf dataclass; at runtime a DictConfig
    if hc.mode != RunMode.MULTIRUN:
        return JobSlot()
    # to_container's stub allows any container; a DictConfig (the launcher's) gives a dict
    launcher = cast(dict[str, Any], OmegaConf.to_container(hc.launcher, resolve=False))
    return JobSlot(num=hc.job.get("num"), jobs_at_once=jobs_at_once(launcher, cores_available()),
                   launcher=str(hc.runtime.choices.get("hydra/launcher", "basic")))
