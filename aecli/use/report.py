"""A sweep's results in one table and one plot: ``aecli report SWEEP_DIR``.

Reads each job dir of a multirun (``.hydra/overrides.yaml``, ``.hydra/config.yaml``,
``metrics.json``, the ``job_status.json`` that ``aecli.training.app`` writes, and ``eval.json`` where
``aecli.use.evaluate`` has measured the job), prints a markdown table sorted by the test MSE per
pixel (the one reconstruction metric every model shares), and writes ``report.md``,
``report.csv`` and ``report.png`` into the sweep dir. No torch import: it answers in about a
second, also while the sweep is still running.

The objective is what each job returned to the sweeper: the ``objective`` key of its config,
by default its final validation loss ``val/loss_<unit>`` (nats per image for the VAE, per pixel
for the others), so objectives compare only between jobs with the same objective key (sorting
by ``objective`` groups them by it). ``test/mse_per_pixel`` and ``test/psnr_db`` compare across
all models.
"""
from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aecli.errors import ConfigError
from aecli.store.atomic import atomic_write, atomic_write_text, remove_stale_temps
from aecli.store.rundir import job_dirs, read_json
from aecli.use import tables

DONE, FAILED, STOPPED, BROKEN, RUNNING = "done", "failed", "stopped", "broken", "running (or killed)"
FILES = ("report.md", "report.csv", "report.png")
FIGSIZE, DPI = (10.0, 6.0), 100  # report.png is FIGSIZE x DPI = 1000 x 600 pixels
METRIC_COLUMNS = {"test/mse_per_pixel": "test/mse_per_pixel", "test/psnr_db": "test/psnr_db",
                  "epochs": "epochs", "images/s": "images_per_sec"}  # column -> metrics.json key
# column -> eval.json key (aecli evaluate), shown when some job has it
EVAL_COLUMNS = {"ssim": "test/ssim", "denoised psnr": "test/denoised_psnr_db",
                "iw bound nats": "test/iw_bound_nats_per_image", "probe codes": "probe/codes_accuracy",
                "knn codes": "knn/codes_accuracy"}
DEFAULT_SORT = "test/mse_per_pixel"
LOG_RATIO = 100  # numeric swept values spanning this factor or more are plotted on a log axis
LOG_TAG = re.compile(r"tag\(\s*((?:\w+\s*,\s*)+)")  # Hydra's tag(TAG, ..., SWEEP): the tags
SWEEPS_NAMED = 5  # sweeps named when a dir holds sweeps but no jobs


@dataclass
class Job:
    """One job dir of a sweep and what it left behind."""

    dir: Path
    num: int | None
    overrides: dict[str, str]
    status: str
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    objective_key: str | None = None  # the config's ``objective`` (None: val/loss_<unit>)
    eval: dict[str, Any] = field(default_factory=dict)  # eval.json, if the job was evaluated

    @property
    def unit(self) -> str | None:
        """The objective's unit (``per_pixel``, ``per_image``), from its ``val/loss_<unit>`` key."""
        return next((k.removeprefix("val/loss_") for k in self.metrics if k.startswith("val/loss_")), None)

    @property
    def objective_name(self) -> str | None:
        """The ``metrics.json`` key the task returned: the config's ``objective``, else
        ``val/loss_<unit>``."""
        return self.objective_key or (f"val/loss_{self.unit}" if self.unit else None)

    @property
    def objective(self) -> float | None:
        """What the task returned (None unless the job is done)."""
        return self.metrics.get(self.objective_name) if self.status == DONE and self.objective_name else None


def read_overrides(path: Path) -> dict[str, str] | None:
    """``.hydra/overrides.yaml`` as key -> value strings (``+key``/``++key`` as ``key``); None if
    the file is missing or unreadable (the job is then listed as broken)."""
    try:
        items = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    if not isinstance(items, list):
        return None
    return dict((s.split("=", 1) + [""])[:2] for s in (str(o).lstrip("+~") for o in items))


def read_job(job_dir: Path) -> Job:
    """A job's overrides, status and metrics. Done: metrics.json written and the job not marked
    FAILED or STOPPED (dirs from before job_status.json existed count as done too); failed or
    stopped (by a signal, with a checkpoint to continue from): marked so; broken: a file that
    cannot be read (named in the error column); anything else is running, or was killed before
    it could record how it ended."""

    num = _yaml_get(job_dir / ".hydra" / "hydra.yaml", "hydra", "job", "num")  # "???" for a single run
    overrides = read_overrides(job_dir / ".hydra" / "overrides.yaml")
    job = Job(job_dir, num if isinstance(num, int) else None, overrides or {},
              RUNNING, objective_key=_yaml_get(job_dir / ".hydra" / "config.yaml", "objective"))
    evaluated, _ = read_json(job_dir / "eval.json")
    job.eval = evaluated if isinstance(evaluated, dict) else {}
    recorded, status_problem = read_json(job_dir / "job_status.json")
    metrics, metrics_problem = read_json(job_dir / "metrics.json")
    if status_problem not in (None, "missing") or not isinstance(recorded or {}, dict):
        job.status, job.error = BROKEN, f"job_status.json {status_problem or 'is not a JSON object'}"
    elif (recorded or {}).get("status") == "FAILED":
        job.status, job.error = FAILED, recorded.get("error") or "failed"
    elif (recorded or {}).get("status") == "STOPPED":
        job.status, job.error = STOPPED, recorded.get("error") or "stopped by a signal"
    elif metrics_problem not in (None, "missing") or (metrics is not None and not isinstance(metrics, dict)):
        job.status, job.error = BROKEN, f"metrics.json {metrics_problem or 'is not a JSON object'}"
    elif overrides is None:  # its swept values are unknown: it cannot take its place in the table
        job.status, job.error = BROKEN, ".hydra/overrides.yaml is unreadable (not a YAML list)"
    elif metrics is not None:
        job.status, job.metrics = DONE, metrics
    return job


def _yaml_get(path: Path, *keys: str) -> Any:
    """``data[k0][k1]...`` of a YAML file; None if the file or a key is missing or unreadable."""
    try:
        node = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    for k in keys:
        node = node.get(k) if isinstance(node, dict) else None
    return node


def read_sweep(sweep_dir: Path) -> list[Job]:
    """Every job dir of ``sweep_dir`` (``aecli.store.rundir.job_dirs``: a subdir with
    ``.hydra/overrides.yaml``), in the sweep's order; a clear ``ConfigError`` when there is none."""
    if not sweep_dir.is_dir():
        raise ConfigError("SWEEP_DIR", f"{sweep_dir} is not a directory",
                          "pass the dir of a multirun, e.g. aecli report multirun/2026-01-01/12-00-00-123456")
    jobs = [read_job(d) for d in job_dirs(sweep_dir)]
    fill_defaults(jobs)
    if not jobs:
        below = sweeps_below(sweep_dir)
        raise ConfigError("SWEEP_DIR", f"{sweep_dir} holds no job dirs (subdirs with .hydra/overrides.yaml)"
                          + (f"; it holds {describe_sweeps(below)}" if below else ""),
                          "pass the dir of one multirun (python -m aecli.train -m ... prints it: 'sweep output dir')")
    return jobs


def fill_defaults(jobs: Sequence[Job]) -> None:
    """Single runs gathered in one dir (the README's one model per command): a key that some jobs
    override and others leave at its default gets the default's value in the others (the group
    choice Hydra recorded, e.g. ``model=ae``, else the composed config's value), and a job
    without a Hydra job number (a single run) is numbered by its place in the dir."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    for i, job in enumerate(jobs):
        if job.num is None:
            job.num = i
        for key in keys:
            if key not in job.overrides:
                choice = _yaml_get(job.dir / ".hydra" / "hydra.yaml", "hydra", "runtime", "choices", key)
                value = choice if choice is not None else _yaml_get(job.dir / ".hydra" / "config.yaml",
                                                                    *key.split("."))
                job.overrides[key] = "(default)" if value is None or isinstance(value, dict) else str(value)


def sweeps_below(path: Path) -> list[Path]:
    """The sweep dirs strictly below ``path`` (dirs holding job dirs; a date dir holds one
    per start time, their names sort by time), newest first."""
    jobs_below = path.glob("*/*/**/.hydra/overrides.yaml")  # job dirs two or more levels down
    return sorted({p.parent.parent.parent for p in jobs_below} - {path}, key=str, reverse=True)


def describe_sweeps(sweeps: Sequence[Path]) -> str:
    """'N sweeps, newest first: a, b, ...' naming SWEEPS_NAMED of them and counting the rest."""
    more = len(sweeps) - SWEEPS_NAMED
    return (f"{len(sweeps)} sweep(s), newest first: {', '.join(map(str, sweeps[:SWEEPS_NAMED]))}"
            + (f" (and {more} older, not named)" if more > 0 else ""))


def log_scaled_keys(sweep_dir: Path, jobs: Sequence[Job]) -> set[str]:
    """Swept keys searched on a log scale: ``tag(log, ...)`` in the sweeper's ``params`` or in a
    command-line sweep. Read from the sweep's ``multirun.yaml`` (the basic sweeper writes one)
    or a job's ``.hydra/hydra.yaml`` (the Optuna sweeper's jobs record its params there)."""
    specs: list[tuple[str, str]] = []  # (key, how it was swept)
    for path in [sweep_dir / "multirun.yaml"] + [j.dir / ".hydra" / "hydra.yaml" for j in jobs[:1]]:
        params = _yaml_get(path, "hydra", "sweeper", "params")
        task = _yaml_get(path, "hydra", "overrides", "task")
        specs += [(str(k), str(v)) for k, v in params.items()] if isinstance(params, dict) else []
        specs += [tuple((str(o).lstrip("+~").split("=", 1) + [""])[:2]) for o in task or [] if isinstance(o, str)]
    return {k for k, v in specs if any("log" in re.split(r"\s*,\s*", tags) for tags in LOG_TAG.findall(v))}


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """The override keys whose value differs between jobs (all override keys if none does),
    in the order they first appear."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    varying = [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]
    return varying or keys


def _num(value: Any) -> float:
    """A sortable number (missing or non-numeric values last)."""
    try:
        return float(value) if value not in (None, "") else math.inf
    except (TypeError, ValueError):
        return math.inf


def row(job: Job, keys: Sequence[str], eval_columns: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """A job as one table row: job number, its swept values, status, objective and metrics."""
    out: dict[str, Any] = {"job": job.num}
    out.update({k: job.overrides.get(k, "") for k in keys})
    out.update({"status": job.status, "objective": job.objective,
                "objective key": job.objective_name if job.status == DONE else None})
    out.update({col: job.metrics.get(key) for col, key in METRIC_COLUMNS.items()})
    out.update({col: job.eval.get(key) for col, key in eval_columns})
    out.update({"error": job.error, "dir": job.dir.name})
    return out


def sort_rows(rows: Sequence[dict[str, Any]], key: str = DEFAULT_SORT) -> list[dict[str, Any]]:
    """Done jobs first, then stopped, failed, broken, running. By default by test MSE per
    pixel (every model has it), ascending; ``objective``: grouped by the objective's key, then
    by value (VAE nats/image and per-pixel losses do not compare); any other column ascending,
    ``-COLUMN`` descending."""
    rank = {DONE: 0, STOPPED: 1, FAILED: 2, BROKEN: 3, RUNNING: 4}
    column, sign = key.lstrip("-"), -1 if key.startswith("-") else 1
    if column not in rows[0] or column in ("error", "dir"):
        raise ConfigError("--sort", f"{key!r} is not a column of the table",
                          f"use one of: {', '.join(c for c in rows[0] if c not in ('error', 'dir'))}")
    group = (lambda r: r["objective key"] or "") if column == "objective" else (lambda r: "")
    return sorted(rows, key=lambda r: (rank[r["status"]], group(r), sign * _num(r[column]), r["job"] or 0))


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub-style markdown table (the ``dir`` column is left to the CSV; ``error`` only
    when some job has one)."""
    columns = [c for c in rows[0] if c != "dir" and (c != "error" or any(r["error"] for r in rows))]
    return tables.markdown_records([{c: _short(r[c]) for c in columns} for r in rows], columns) + "\n"


def _short(value: Any) -> Any:
    """Swept numbers arrive as strings from overrides.yaml: long decimals to 4 significant digits."""
    if isinstance(value, str) and "." in value and len(value) > 8:
        try:
            return f"{float(value):.4g}"
        except ValueError:
            pass
    return value


def plot(jobs: Sequence[Job], keys: Sequence[str], path: Path, log_keys: set[str] = frozenset()) -> None:
    """``report.png`` (FIGSIZE at DPI): with ``model`` and ``noise`` both swept, grouped bars of
    the best test MSE per pixel for each model x noise; else one panel per swept key, the
    objective (test MSE per pixel when the jobs' objectives differ) against the key's values:
    categories in the sweep's order, numbers on a log axis for ``log_keys`` (searched on a log
    scale) or values spanning LOG_RATIO or more. Only done jobs are drawn."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    done = [j for j in jobs if j.status == DONE]
    n_other = len(jobs) - len(done)
    fig = plt.figure(figsize=FIGSIZE, dpi=DPI)
    note = f" ({n_other} job(s) not done, not shown)" if n_other else ""
    if not done:
        fig.text(0.5, 0.5, f"no completed jobs yet{note}", ha="center", va="center", fontsize=14)
    elif "model" in keys and "noise" in keys:
        _model_noise_bars(fig, done)
        fig.suptitle(f"{path.parent.name}: best test MSE per pixel, model x noise{note}")
    else:
        names = {j.objective_name for j in done}
        metric, label = (("objective", f"objective ({names.pop()})") if len(names) == 1
                         else ("test/mse_per_pixel", "test MSE per pixel"))
        _panels(fig, done, keys or ["job"], metric, label, log_keys)  # no override: one point per job
        fig.suptitle(f"{path.parent.name}: {label} per swept value{note}")
    try:  # no bbox_inches="tight": the pixel size stays FIGSIZE x DPI
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
    finally:
        plt.close(fig)


def _value(job: Job, metric: str) -> float:
    return job.objective if metric == "objective" else job.metrics.get(metric, math.nan)


def _model_noise_bars(fig: Any, done: Sequence[Job]) -> None:
    models = list(dict.fromkeys(j.overrides.get("model", "") for j in done))
    noises = list(dict.fromkeys(j.overrides.get("noise", "") for j in done))
    best: dict[tuple[str, str], float] = {}
    for j in done:  # other swept keys: the best job of each cell
        cell = (j.overrides.get("model", ""), j.overrides.get("noise", ""))
        best[cell] = min(best.get(cell, math.inf), _value(j, "test/mse_per_pixel"))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(noises)
    for i, noise in enumerate(noises):
        xs = [m + (i - (len(noises) - 1) / 2) * width for m in range(len(models))]
        ys = [best.get((model, noise), math.nan) for model in models]
        bars = ax.bar(xs, ys, width, label=f"noise={noise}")
        ax.bar_label(bars, fmt="%.4f", fontsize=8)
    ax.set_xticks(range(len(models)), [f"model={m}" for m in models])
    ax.set_ylabel("test MSE per pixel (lower is better)")
    ax.legend()


def x_axis(done: Sequence[Job], key: str, log_keys: set[str]) -> tuple[list[float], list[str] | None, bool]:
    """A panel's x positions of ``done``'s values of ``key``, the category names (None for
    numbers; categories keep the sweep's order) and whether the axis is logarithmic (``key``
    searched on a log scale, or positive values spanning LOG_RATIO or more)."""
    values = [str(j.num) if key == "job" else j.overrides.get(key, "") for j in done]
    try:
        xs = [float(x) for x in values]
    except ValueError:
        names = list(dict.fromkeys(values))
        return [float(names.index(x)) for x in values], names, False
    return xs, None, min(xs) > 0 and (key in log_keys or max(xs) / min(xs) >= LOG_RATIO)


def _panels(fig: Any, done: Sequence[Job], keys: Sequence[str], metric: str, label: str,
            log_keys: set[str]) -> None:
    from matplotlib.ticker import NullFormatter

    cols = min(len(keys), 3)
    rows = math.ceil(len(keys) / cols)
    for n, key in enumerate(keys, 1):
        ax = fig.add_subplot(rows, cols, n)
        xs, names, log = x_axis(done, key, log_keys)
        ys = [_value(j, metric) for j in done]
        if names is not None:  # categories: one column of points each
            ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 4 else 0)
        if log:  # e.g. a learning rate
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # labels at decades only: minor ones overlap
        ax.scatter(xs, ys, label="job")
        best = min(range(len(ys)), key=lambda i: ys[i])
        ax.scatter([xs[best]], [ys[best]], marker="*", s=250, color="tab:red", zorder=3, label="best job")
        if n == 1:
            ax.legend()
        ax.set_xlabel(key)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.95))


def report(sweep_dir: Path, sort: str = DEFAULT_SORT) -> str:
    """Write report.md, report.csv and report.png into ``sweep_dir``; return the markdown table."""
    jobs = read_sweep(sweep_dir)
    remove_stale_temps(sweep_dir)  # what reports killed mid-write left
    keys = swept_keys(jobs)
    evaluated = [(col, key) for col, key in EVAL_COLUMNS.items() if any(key in j.eval for j in jobs)]
    rows = sort_rows([row(j, keys, evaluated) for j in jobs], sort)
    table = markdown(rows)
    counts = {s: sum(j.status == s for j in jobs) for s in (DONE, STOPPED, FAILED, BROKEN, RUNNING)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    below = sweeps_below(sweep_dir)
    if below:  # e.g. a date dir: its own job dirs are reported, the sweeps in its sub-dirs are not
        summary += f"; left out: {describe_sweeps(below)} (report each one on its own)"
    note = notes(jobs, evaluated)
    atomic_write_text(sweep_dir / "report.md",
                      f"# Sweep {sweep_dir}\n\n{len(jobs)} jobs: {summary}\n\n{table}\n{note}\n")
    tables.write_csv(rows, sweep_dir / "report.csv")
    plot(jobs, keys, sweep_dir / "report.png", log_scaled_keys(sweep_dir, jobs))
    return f"{len(jobs)} jobs in {sweep_dir}: {summary}\n\n{table}\n{note}\n"


def notes(jobs: Sequence[Job], evaluated: Sequence[tuple[str, str]]) -> str:
    """What the objective and the eval columns are."""
    names = sorted({j.objective_name for j in jobs if j.status == DONE and j.objective_name})
    text = (f"objective = what each job returned to the sweeper ({', '.join(names) or 'none yet'}); objectives "
            "compare only within one objective key (val/loss_per_image: VAE nats per image; val/loss_per_pixel: "
            "the others), test/mse_per_pixel and test/psnr_db across all models.")
    if evaluated:
        text += (f"\n{', '.join(c for c, _ in evaluated)}: from each job's eval.json (aecli evaluate "
                 "SWEEP_DIR; its eval.md has the pixel and PCA baselines); empty for jobs not evaluated.")
    return text


def recipe(args: argparse.Namespace) -> None:
    """``aecli report SWEEP_DIR [--sort COLUMN]`` (parsed by ``aecli.cli``)."""
    print(report(args.sweep_dir, args.sort or DEFAULT_SORT))
    print("wrote " + ", ".join(str(args.sweep_dir / f) for f in FILES))
