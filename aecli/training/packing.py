"""The packed launcher's work (``hydra/launcher=packed``): which jobs of a sweep train together,
and how each pack's members become runs that look like separately launched jobs.

Jobs pack when their configs differ only in what each member can hold on its own: the seed, the
optimizer's learning rate and weight decay, the noise, and the model's ``pack_scalars`` (beta,
the KL schedule's lengths, the sparsity or contraction weight). Everything else (the model and
its shape, the data, the loss, the batch size, the schedule) must match. Each member's run dir
is what a separate job writes: Hydra's ``.hydra/`` and ``train.log``, ``job_status.json``,
checkpoints, TensorBoard events and ``metrics.json``.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import shlex
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_class
from joblib import Parallel, delayed  # scikit-learn's dependency; loky workers, as hydra/launcher=joblib
from omegaconf import DictConfig, OmegaConf, open_dict

from aecli import config as schema
from aecli.errors import AecliError
from aecli.models import Autoencoder
from aecli.store import rundir
from aecli.training.packed import train_pack
from aecli.training.placement import JobSlot, job_slot
from aecli.training.plan import prepare
from aecli.training.run import RunResult
from aecli.training.signals import SIGNALS

log = logging.getLogger(__name__)

FREE_KEYS = ("seed", "optim.lr", "optim.weight_decay", "noise")  # with the model's pack_scalars


@dataclass
class Job:
    """One job of the sweep: its number, its overrides and its composed config."""

    idx: int
    overrides: list[str]
    cfg: DictConfig


def pack_key(cfg: DictConfig) -> tuple[str | None, str]:
    """What a job (its composed config) must share with the others of its pack (a string), or
    None and why it cannot pack."""
    try:
        model = get_class(str(cfg.model._target_))
    except Exception:  # noqa: BLE001 - any failure to find it: the job itself will say what is wrong
        return None, f"model._target_={cfg.model.get('_target_')} cannot be found"
    if not (isinstance(model, type) and issubclass(model, Autoencoder)):
        return None, f"model._target_={cfg.model._target_} is not an aecli Autoencoder"
    if not model.packs:
        return None, f"the model ({model.__name__}) does not pack: {model.why_no_pack}"
    tc, why = cfg.trainer, None
    if schema.value(tc.precision) in ("16", 16, "fp16"):
        why = "trainer.precision=16 scales each member's loss with a gradient scaler of its own"
    elif tc.compile:
        why = "trainer.compile=true: torch.compile compiles one model's step, not a pack's"
    elif schema.value(tc.on_nan) == "skip_batch":
        why = "trainer.on_nan=skip_batch checks each member's loss on the host at every step"
    elif cfg.get("resume") not in (None, "auto"):
        why = f"resume={cfg.resume} continues one run (use resume=auto to continue a packed sweep)"
    if why is not None:
        return None, why
    shared = schema.plain(cfg)
    for key in [*FREE_KEYS, *(f"model.{name}" for name in model.pack_scalars)]:
        *path, last = key.split(".")
        node = shared
        for part in path:
            node = node.get(part, {})
        node.pop(last, None)
    return json.dumps(shared, sort_keys=True, default=str), ""


def group(jobs: list[Job]) -> tuple[list[list[Job]], list[tuple[Job, str]]]:
    """The packs (at most ``trainer.pack_size`` jobs each) and the jobs that run alone, with why."""
    by_key: dict[str, list[Job]] = {}
    alone: list[tuple[Job, str]] = []
    for job in jobs:
        key, why = pack_key(job.cfg)
        if key is None:
            alone.append((job, why))
        else:
            by_key.setdefault(key, []).append(job)
    packs: list[list[Job]] = []
    for same in by_key.values():
        size = int(same[0].cfg.trainer.pack_size)
        for chunk in (same[i:i + size] for i in range(0, len(same), size)):
            if len(chunk) > 1:
                packs.append(chunk)
            else:
                alone.append((chunk[0], "no other job of the sweep shares its model, data, loss, batch size and "
                                        "schedule" if len(same) == 1 else "trainer.pack_size=1" if size == 1
                              else f"the one left over after packs of trainer.pack_size={size}"))
    return packs, alone


def launch(config: DictConfig, hydra_context: HydraContext, task_function: TaskFunction,
           job_overrides: Sequence[Sequence[str]], initial_job_idx: int, n_jobs: int = 1) -> list[JobReturn]:
    """Run a sweep's jobs: each pack as one process's batched training, the rest as ordinary jobs;
    ``n_jobs`` of them at once in processes of their own (1: one after another, here)."""
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    jobs = [load_job(hydra_context, config, initial_job_idx + k, o) for k, o in enumerate(job_overrides)]
    packs, alone = group(jobs)
    log.info("Packing %d jobs: %d pack(s) of %s job(s), %d alone%s", len(jobs), len(packs),
             "+".join(str(len(p)) for p in packs) or "0", len(alone), f"; {n_jobs} at once" if n_jobs != 1 else "")
    for pack in packs:
        log.info("\tpack of #%s", ", #".join(str(j.idx) for j in pack))
    for job, why in alone:
        log.info("\t#%d alone (%s): %s", job.idx, " ".join(filter_overrides(job.overrides)), why)
    work = [[job] for job, _ in sorted(alone, key=lambda a: a[0].idx)] + packs
    if n_jobs == 1:
        done: list[dict[int, JobReturn] | int] = []
        for w in work:
            done.append(run_work(w, hydra_context, config, task_function))
            if isinstance(done[-1], int):  # stopped: the next ones do not start
                break
    else:
        state = Singleton.get_state()
        done = Parallel(n_jobs=n_jobs, backend="loky")(
            delayed(run_in_worker)(w, hydra_context, config, task_function, state)
            for w in work)
    stopped = [d for d in done if isinstance(d, int)]
    if stopped:  # the sweep stops, as with a stopped job of another launcher: one message for it
        name = signal.Signals(stopped[0] - 128).name if stopped[0] > 128 else "stopped"
        print(f"aecli: {name}: the packed sweep stopped; every member kept a checkpoint. Continue with:\n"
              f"  {continue_command(config)}", file=sys.stderr, flush=True)
        raise SystemExit(stopped[0])
    returns: dict[int, JobReturn] = {}
    for d in done:
        assert not isinstance(d, int)
        returns.update(d)
    return [returns[j.idx] for j in jobs]


def load_job(hydra_context: HydraContext, config: DictConfig, idx: int, overrides: Sequence[str]) -> Job:
    compose: Any = hydra_context.config_loader.load_sweep_config  # the launcher's ``Composed``, which keeps
    cfg = compose.take(config, list(overrides)) if hasattr(compose, "take") else compose(config, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = cfg.hydra.job.num = idx
    return Job(idx, list(overrides), cfg)


def run_work(work: list[Job], hydra_context: HydraContext, config: DictConfig,
             task_function: TaskFunction) -> dict[int, JobReturn] | int:
    """A pack (trained together) or a lone job (Hydra's ``run_job``); an exit status if stopped."""
    try:
        if len(work) > 1:
            return run_pack(work, hydra_context, config)
        ret = run_job(hydra_context=hydra_context, task_function=task_function, config=work[0].cfg,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        return {work[0].idx: ret}
    except SystemExit as e:
        return int(e.code or 1)
    finally:
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)


def run_in_worker(work: list[Job], hydra_context: HydraContext, config: DictConfig, task_function: TaskFunction,
                  singleton_state: dict[Any, Any]) -> dict[int, JobReturn] | int:
    """``run_work`` in a joblib worker process, with the parent's Hydra state (as joblib's launcher)
    and the jobs' configs as the parent composed them."""
    setup_globals()
    Singleton.set_state(singleton_state)
    return run_work(work, hydra_context, config, task_function)


@dataclass
class Setup:
    """What a member's job set up inside Hydra's ``run_job`` (its dir, ``.hydra/``, its checks)."""

    ret: JobReturn
    plan: Any = None
    choices: dict[str, str] | None = None
    slot: JobSlot | None = None


def run_pack(pack: list[Job], hydra_context: HydraContext, config: DictConfig) -> dict[int, JobReturn]:
    """Set each member up as Hydra sets a job up, train them together, then record each one's end."""
    setups: dict[int, Setup] = {}
    for job in pack:
        holder: dict[str, Any] = {}
        ret = run_job(hydra_context=hydra_context, task_function=functools.partial(set_up_member, holder=holder),
                      config=job.cfg, job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        setups[job.idx] = Setup(ret, holder.get("plan"), holder.get("choices"), holder.get("slot"))
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    ready = [job for job in pack if setups[job.idx].plan is not None]
    results = train_pack([setups[j.idx].plan for j in ready], [member_log(j) for j in ready],
                         [setups[j.idx].choices or {} for j in ready],
                         next((s for j in ready if (s := setups[j.idx].slot) is not None), JobSlot()))
    stopped = False
    for job, result in zip(ready, results):
        stopped |= record(setups[job.idx], result)
    if stopped:
        raise SystemExit(SIGNALS.exit_code())  # ``launch`` says how to continue
    return {idx: s.ret for idx, s in setups.items()}


def set_up_member(task_cfg: DictConfig, holder: dict[str, Any]) -> None:
    """The task Hydra runs for a member (after writing its ``.hydra/``): every check of the run
    (``aecli.training.plan.prepare``) and its status; the training itself comes with the pack."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir).absolute()
    try:
        plan = prepare(task_cfg, run_dir, list(hc.overrides.task), hydra_wrote=True)
    except AecliError as e:
        if run_dir.is_dir():
            rundir.write_status(run_dir, "FAILED", e.summary())
        log.error("%s", e)
        raise
    rundir.write_status(run_dir, "RUNNING")
    holder.update(plan=plan, slot=job_slot(), choices={k: v for k, v in hc.runtime.choices.items()
                                                       if not k.startswith("hydra") and v is not None})


def record(setup: Setup, result: RunResult | AecliError) -> bool:
    """A member's end in its ``job_status.json`` and in its ``JobReturn``; True if it was stopped."""
    ret, run_dir = setup.ret, setup.plan.run_dir
    if isinstance(result, AecliError):
        rundir.write_status(run_dir, "FAILED", result.summary())
        ret.status, ret.return_value = JobStatus.FAILED, result
        return False
    if result.status == "stopped":
        rundir.write_status(run_dir, "STOPPED", f"{result.signal} at step {result.step}")
        return True
    if not math.isfinite(result.objective):
        rundir.write_status(run_dir, "FAILED", f"the objective is {result.objective}")
        ret.status, ret.return_value = JobStatus.FAILED, FloatingPointError(f"the objective is {result.objective}")
        return False
    rundir.write_status(run_dir, "COMPLETED", return_value=result.objective)
    ret.status, ret.return_value = JobStatus.COMPLETED, result.objective
    return False


def member_log(job: Job) -> Callable[[], Any]:
    """A member's log lines as a job of its own would write them: to the terminal and to its
    ``train.log``, each line carrying its job number (the format of ``hydra.job_logging``)."""
    fmt = str(OmegaConf.select(job.cfg, "hydra.job_logging.formatters.simple.format"))
    formatter = logging.Formatter(fmt)
    run_dir = Path(str(job.cfg.hydra.sweep.dir)) / str(job.cfg.hydra.sweep.subdir)
    handlers: list[logging.Handler] = [logging.StreamHandler(), logging.FileHandler(run_dir / "train.log",
                                                                                    delay=True)]
    for h in handlers:
        h.setFormatter(formatter)

    @contextmanager
    def routed() -> Iterator[None]:
        root = logging.getLogger()
        saved = root.handlers
        root.handlers = handlers
        try:
            yield
        finally:
            root.handlers = saved

    return routed


def continue_command(config: DictConfig) -> str:
    """The command that continues this sweep: the same overrides, the same sweep dir, ``resume=auto``."""
    task = [o for o in config.hydra.overrides.task if not o.startswith("resume=")]
    hydra = [o for o in config.hydra.overrides.hydra if not o.startswith(("hydra.sweep.dir=", "hydra.mode="))]
    words = ["python", "-m", "aecli.train", "-m", *task, *hydra, f"hydra.sweep.dir={config.hydra.sweep.dir}",
             "resume=auto"]
    return " ".join(shlex.quote(w) for w in words)
