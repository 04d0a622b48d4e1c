"""Before a run starts: every check that can refuse it, and for ``resume`` the config to go on with.

``prepare`` runs before anything is written (the CLI calls it from a Hydra callback, before
Hydra creates the run dir or writes ``.hydra/``): the config checks, the run dir's state, the
checkpoint (verified, its config checked against this command), then the run dir's lock.

``prepare`` returns a ``Plan``, which ``aecli.training.run.run`` follows. Resuming trains the
config stored in the checkpoint. Keys that may change between the
interrupted and the continued run (``MAY_CHANGE``: the schedule's length, logging, speed knobs,
the device, where the data lies) are taken from the command line when typed there; any other
key typed with a different value is refused, the differences listed.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from aecli import config
from aecli.config import plain, saved_config
from aecli.errors import ConfigError
from aecli.store import checkpoint, rundir

MAY_CHANGE = (
    "trainer.epochs", "trainer.max_steps", "trainer.progress", "trainer.num_threads", "trainer.log_every_n_steps",
    "trainer.checkpoint_every_n_steps", "trainer.eval_batch_size", "trainer.grid_images", "trainer.pack_size",
    "trainer.compile",
    "trainer.compile_mode", "trainer.cuda_graph", "trainer.channels_last", "trainer.cudnn_benchmark", "trainer.on_nan",
    "device", "dataset.root", "dataset.path", "dataset.download", "dataset.num_workers", "dataset.max_memory_mb",
    "dataset.cache", "resume", "callbacks",
)


HYDRA_FILES = (".hydra", "train.log")  # what Hydra writes into a sweep job's dir before the job


@dataclass
class Plan:
    """What ``run`` is to do, decided once by ``prepare`` before anything is written.

    ``cfg`` is the config to train. A new run's is the command's. A resume's is the config
    stored in the checkpoint (``resume_from``, verified), with only the keys that may change
    (``MAY_CHANGE``) taken from the command: ``changed`` lists those whose value differs from
    the stored one (``key: stored -> now``); any other key that differs was refused.
    ``created``: the outermost dir ``prepare`` created for a new run (a refused new run removes
    it again; None: the dir existed)."""

    cfg: DictConfig
    run_dir: Path
    resume_from: dict[str, Any] | None = None  # the checkpoint a resume continues (None: a new run)
    changed: tuple[str, ...] = ()
    created: Path | None = None

    @property
    def resuming(self) -> bool:
        return self.resume_from is not None


def without_hydra(cfg: DictConfig) -> DictConfig:
    """The job's config without Hydra's own node (as Hydra hands it to the task)."""
    if "hydra" not in cfg:
        return cfg
    out = copy.deepcopy(cfg)
    with read_write(out), open_dict(out):
        del out["hydra"]
    return out


def may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def typed_keys(overrides: list[str]) -> list[str] | None:
    """The config keys that command-line ``overrides`` set; None when one of them selects a
    group option (which may set any key: the whole config then counts as typed)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = []
    for o in OverridesParser.create().parse_overrides(overrides):
        name = o.key_or_group
        if name.startswith("hydra") or name == "resume":
            continue
        if o.is_delete() or "/" in name or "." not in name and name not in ("seed", "callbacks"):
            return None  # a group option (model=vae, experiment=...) or a deletion
        keys.append(name)
    return keys


def mismatches(current: dict[str, Any], saved: dict[str, Any], keys: list[str] | None) -> list[str]:
    """``key: value here, value in the checkpoint`` for each key that must not change and differs
    (among ``keys``, or everywhere when None)."""
    a, b = _flatten(current), _flatten(saved)
    names = sorted(set(a) | set(b)) if keys is None else sorted(
        k for k in set(a) | set(b) if any(k == t or k.startswith(t + ".") for t in keys))
    return [f"{k}: {a.get(k)!r} here, {b.get(k)!r} in the checkpoint" for k in names
            if not may_change(k) and a.get(k) != b.get(k)]


def effective_config(cfg: DictConfig, saved: dict[str, Any], keys: list[str] | None) -> tuple[DictConfig, list[str]]:
    """The checkpoint's config, with ``cfg``'s values for the keys that may change and were
    typed (all of them when ``keys`` is None: a library caller passes a whole config); and
    which of those differ from the stored values (``key: stored -> now``)."""
    out = saved_config(saved)
    current = _flatten(plain(cfg))
    chosen = [k for k in current if may_change(k) and (keys is None or any(k == t or k.startswith(t + ".")
                                                                           for t in keys))]
    stored = _flatten(plain(out))
    changed = [f"{k}: {stored.get(k)!r} -> {current[k]!r}" for k in chosen
               if k != "resume" and not k.startswith("callbacks") and stored.get(k) != current[k]]
    for k in chosen + ["resume"]:
        OmegaConf.update(out, k, OmegaConf.select(cfg, k), force_add=True)
    out.callbacks = cfg.get("callbacks") or {}
    return out, changed


def outermost_missing(path: Path) -> Path | None:
    """The outermost dir of ``path`` that does not exist yet (None: ``path`` exists)."""
    path, missing = Path(path).absolute(), None
    while not path.exists():
        path, missing = path.parent, path
    return missing


def resume_file(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint that ``resume`` names (None: ``auto`` and no checkpoint yet)."""
    if resume == "auto":
        file = Path(run_dir) / "checkpoints" / checkpoint.LAST
        return file if file.is_file() else None
    if not Path(resume).expanduser().exists():
        raise ConfigError("resume", f"{resume} does not exist", "pass a run dir (the one python -m aecli.train "
                          "printed as 'run dir: ...') or a checkpoint file in it, or resume=auto")
    return checkpoint.find(resume)


def targets_in(cfg: Any) -> dict[str, set[str]]:
    """Every ``_target_`` that a config names (this process's own: trusted), by top-level group."""
    found: dict[str, set[str]] = {}

    def walk(node: Any, group: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "_target_" and isinstance(v, str):
                    found.setdefault(group, set()).add(v)
                walk(v, group)
        elif isinstance(node, list):
            for v in node:
                walk(v, group)

    node = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    for group, value in (node.items() if isinstance(node, dict) else ()):
        walk(value, str(group))
    return found


def restart_config(cfg: DictConfig, run_dir: Path, overrides: list[str] | None) -> DictConfig:
    """The config of a run stopped before its first checkpoint (its ``.hydra/config.yaml``,
    trusted no more than a checkpoint's), for a fresh start in its dir, with the keys that may
    change taken from ``cfg`` as a resume does."""
    import yaml

    source = run_dir / ".hydra" / "config.yaml"
    try:
        saved = yaml.safe_load(source.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError("resume", f"{run_dir} was stopped before its first checkpoint and its config {source} "
                          f"cannot be read ({type(e).__name__})", "start a new run (the same command with "
                          "hydra.run.dir=... or none)") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise ConfigError("resume", f"{source} is not a run's config", "start a new run without resume")
    keys = None if overrides is None else typed_keys(overrides)
    diffs = mismatches(plain(cfg), saved, keys)
    if diffs:
        raise ConfigError("resume", f"the config does not match {source}: " + "; ".join(diffs[:6]),
                          "leave those keys out (resume takes them from the run dir), or start a new run")
    checkpoint.check_targets(saved, targets_in(cfg), source=str(source))
    out, _ = effective_config(cfg, saved, keys)
    config.check(out)
    return out


def prepare(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None, hydra_wrote: bool = False,
            follower: bool = False) -> Plan:
    """Check everything that can refuse this run, then lock its dir. ``overrides``: the
    command line's (None: ``cfg`` is a whole config from a library caller). ``hydra_wrote``: a
    sweep's job, whose dir Hydra made (and wrote ``.hydra/`` into) before the job started.
    ``follower``: a DDP rank other than 0, after rank 0 passed the checks and took the lock:
    only the config to run with (a resume's), no checks of the dir. The ``Plan`` goes to
    ``aecli.training.run.run`` (``plan=``)."""
    cfg = without_hydra(cfg)
    config.check(cfg)
    run_dir = Path(run_dir)
    if not follower:
        rundir.check_dir_path(run_dir)
    file = resume_file(cfg.resume, run_dir) if cfg.get("resume") is not None else None
    state: dict[str, Any] | None = None
    changed: list[str] = []
    if file is None and follower:
        pass
    elif file is None:
        if cfg.get("resume") == "auto" and rundir.is_run_dir(run_dir):
            pass  # a requeued job killed before its first checkpoint: start again in its own dir
        else:
            rundir.check_new(run_dir, ignore=HYDRA_FILES if hydra_wrote else ())
    elif not file.is_file() and rundir.stopped_before_training(file.parent.parent):
        cfg = restart_config(cfg, file.parent.parent, overrides)  # resume=DIR stopped before its first checkpoint
    else:
        state = checkpoint.read(file)
        saved = state["config"]
        keys = None if overrides is None else typed_keys(overrides)
        diffs = mismatches(plain(cfg), saved, keys)
        if diffs:
            raise ConfigError("resume", f"the config does not match {file}: " + "; ".join(diffs[:6]),
                              "leave those keys out (resume takes them from the checkpoint), or start a new run "
                              "without resume")
        checkpoint.check_targets(saved, targets_in(cfg))
        checkpoint.check_model_shapes(state)  # before the model is built: a crafted size allocates nothing
        cfg, changed = effective_config(cfg, saved, keys)
        config.check(cfg)
    if follower:
        return Plan(cfg, run_dir, state, tuple(changed))
    created = None if hydra_wrote else outermost_missing(run_dir)
    rundir.lock(run_dir)
    return Plan(cfg, run_dir, state, tuple(changed), created)
