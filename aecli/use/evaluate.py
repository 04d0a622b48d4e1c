"""Measure what a trained model learned: ``aecli evaluate RUN [RUN ...]``.

Each run (a multirun dir: each of its jobs) is opened from its ``best.pt`` (``--checkpoint
last``: its last one) and measured on its test split, batched on its device:

1. reconstruction: the training loss terms (unit in the key), MSE per pixel, PSNR, SSIM, and the
   statistics of the codes of a model that ``MeasuresCodes`` (a VAE's active units, a VQ-VAE's
   codebook perplexity and codes used, a sparse AE's near-zero fraction, a contractive AE's Jacobian);
2. likelihood, for a model that defines one (a VAE trained with loss=bce): -ELBO and the
   importance-weighted bound on -log p(x) with ``--iw-samples`` samples, nats per image;
3. denoising: the PSNR of the test images corrupted by the run's noise (or ``--noise``), and
   the PSNR of their reconstructions: what the denoiser buys;
4. representations, where the dataset has labels (``aecli.use.probes``): linear-probe and k-NN
   accuracy of the model's codes, the raw pixels, and PCA with as many dims as the code.

Writes ``eval.json`` and TensorBoard scalars (``eval/...``, at the checkpoint's step) into each
run dir (or ``--out DIR``; several runs: ``DIR/<run>``) and prints a table; several runs make one
table, also written as ``eval.md`` and ``eval.csv`` into ``--out`` (default: the runs' common
parent dir, e.g. the sweep's). Randomness (noise, the VAE's
samples) is seeded with ``--seed`` per section, so every run sees the same corrupted images.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aecli import metrics
from aecli.config import plain
from aecli.data import ImageData
from aecli.errors import ConfigError
from aecli.models import HasLikelihoodBound, likelihood_bound
from aecli.store import rundir
from aecli.store.atomic import atomic_move, atomic_write_text, remove_stale_temps, temp_dir
from aecli.use import commandline as commands
from aecli.use import inference, probes, report, tables
from aecli.use.commandline import set_threads, stage
from aecli.use.trained import TrainedRun, find_runs, open_run

log = logging.getLogger(__name__)

# Importance samples per image: the bound moves by ~0.02 nats from k = 100 to 1000 on a digits
# VAE, and k = 100 takes ~0.1 s for the 360 test digits and ~5 s for 10,000 MNIST-size images
# on 2 CPU cores (k = 1000: ten times that); pass --iw-samples 1000 (or Burda et al.'s 5000)
# for a tighter bound.
DEFAULT_IW_SAMPLES = 100
# Train images the probes are fit on (a seeded random subset, the same for all three
# representations): k-NN on MNIST-size pixels takes ~19 s with all 54,000, ~2 s with 10,000.
DEFAULT_PROBE_IMAGES = 10_000
FILES = ("eval.md", "eval.csv")
EVENTS_SUFFIX = ".eval"  # the TensorBoard event file of the last evaluation
TB_PREFIXES = ("test/", "probe/", "knn/", "chance_accuracy")  # what goes to TensorBoard (settings do not)
# table column -> eval.json key, in the order shown; columns no run has are left out
COLUMNS = {"model": "model", "train noise": "noise", "mse/px": "test/mse_per_pixel", "psnr_db": "test/psnr_db",
           "ssim": "test/ssim", "-elbo nats": "test/neg_elbo_nats_per_image",
           "iw bound nats": "test/iw_bound_nats_per_image", "active units": "test/active_units",
           "codebook perplexity": "test/codebook_perplexity", "codes used": "test/codes_used",
           "near-zero codes": "test/near_zero_fraction", "jacobian^2": "test/jacobian_frobenius_sq",
           "noisy psnr": "test/noisy_input_psnr_db",
           "denoised psnr": "test/denoised_psnr_db", "probe codes": "probe/codes_accuracy",
           "probe pixels": "probe/pixels_accuracy", "probe pca": "probe/pca_accuracy",
           "knn codes": "knn/codes_accuracy", "knn pixels": "knn/pixels_accuracy", "knn pca": "knn/pca_accuracy",
           "seconds": "seconds/total"}
# eval.md's table leaves the probe and k-NN columns to the "codes vs pixels vs PCA" table below it
# (eval.csv has every column); numbers to DIGITS significant digits
IN_REPRESENTATIONS = ("probe ", "knn ")
# and the statistics of the codes (MeasuresCodes) to a table of their own, "Codes"
CODE_STATISTICS = ("active units", "codebook perplexity", "codes used", "near-zero codes", "jacobian^2")
DIGITS = 4


@dataclass
class Options:
    """What to measure and how (the command line's options; ``aecli.cli`` checks their bounds)."""

    checkpoint: str = "best"
    device: str = "auto"
    threads: int | str = "auto"  # torch's CPU threads: auto (timed on the first run's model) | N
    iw_samples: int | None = None  # None: DEFAULT_IW_SAMPLES where the model has a likelihood
    noise: Any = None  # --noise KIND[:LEVEL] (an aecli.cli.NoiseOption); None: the run's own noise
    batch_size: int | None = None  # None: the run's trainer.eval_batch_size
    probe_images: int = DEFAULT_PROBE_IMAGES  # 0: no probes
    knn_k: int = 5
    seed: int = 0
    data_root: str | None = None
    progress: bool | None = None  # the IW bound's bar: None = on a terminal
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)  # baselines shared by runs on one dataset


# --- the recipe ------------------------------------------------------------------------------

def evaluate_paths(paths: Sequence[str | Path], opts: Options, out: Path | None = None) -> list[dict[str, Any]]:
    """Evaluate every run under ``paths``: ``eval.json`` and TensorBoard scalars in each run dir,
    ``eval.md``/``eval.csv`` for several runs; returns each run's results. Every input is
    checked (all runs opened) before anything is measured or written."""
    runs, skipped = open_runs(paths, opts)
    check_likelihood(runs, opts)
    start = time.perf_counter()
    import sklearn.linear_model  # noqa: F401 - imported once here, so no run's timing includes it
    import torchmetrics  # noqa: F401

    log.info("loaded torchmetrics and scikit-learn in %.1f s", time.perf_counter() - start)
    results = []
    for i, (run, where) in enumerate(zip(runs, output_dirs(runs, out)), 1):
        log.info("evaluating %s (%d/%d)", run.run_dir, i, len(runs))
        result = evaluate(run, opts)
        write_run_outputs(run, result, where)
        results.append(result)
    if len(runs) > 1:
        write_table(runs, results, out or common_parent([r.run_dir for r in runs]), skipped)
    return results


def evaluate(run: TrainedRun, opts: Options) -> dict[str, Any]:
    """Every metric of one run: the content of its ``eval.json``."""
    start = time.perf_counter()
    data = run.data(opts.data_root)
    batch = opts.batch_size or int(run.cfg.trainer.eval_batch_size)
    noise = eval_noise(run, opts)
    result: dict[str, Any] = {"run_dir": str(run.run_dir.absolute()), "checkpoint": run.checkpoint_name,
                              "step": run.state["step"], "epoch": run.state["epoch"],
                              "model": type(run.model).__name__, "loss": run.recon.name, "noise": repr(run.noise)}
    notes: list[str] = []
    timed(result, "reconstruction", lambda: reconstruction(run, data, batch, opts))
    notes += differs_from_training(run, result, opts.seed)
    timed(result, "likelihood", lambda: likelihood(run, data, opts, notes))
    timed(result, "denoising", lambda: denoising(run, data, batch, noise, opts, notes))
    timed(result, "representations", lambda: representations(run, data, batch, opts, notes))
    result["seconds/total"] = round(time.perf_counter() - start, 3)
    result["notes"] = notes
    return result


def timed(result: dict[str, Any], name: str, section: Callable[[], dict[str, Any]]) -> None:
    start = time.perf_counter()
    result.update(section())
    result[f"seconds/{name}"] = round(time.perf_counter() - start, 3)


# --- the sections ----------------------------------------------------------------------------

def reconstruction(run: TrainedRun, data: ImageData, batch: int, opts: Options) -> dict[str, Any]:
    """The training loss terms, MSE, PSNR (``aecli.metrics.reconstruction``, which also gives a
    VAE's -ELBO) and SSIM of the test split's reconstructions."""

    with inference.seeded(opts.seed, run.device):  # a VAE's loss terms sample z
        out: dict[str, Any] = {f"test/{k}": v for k, v in
                               metrics.reconstruction(run.model, data, data.test, run.recon, batch).items()}
    if data.images:  # SSIM compares image windows; a table row or a document has none
        out["test/ssim"] = metrics.ssim(run.model, data, data.test, run.recon, batch)
        out["ssim_window"] = f"gaussian, sigma {metrics.ssim_sigma(*data.shape[1:]):.2f}"
    return out


def differs_from_training(run: TrainedRun, result: dict[str, Any], seed: int) -> list[str]:
    """Why a test loss differs from the one ``metrics.json`` recorded for the same model: a loss
    that samples (a VAE's one z per image) gives another value on each pass; the deterministic
    metrics (MSE, PSNR: the mean code decoded) must agree."""
    recorded, _ = rundir.read_json(run.run_dir / "metrics.json")
    if not isinstance(recorded, dict) or run.checkpoint_name != "best.pt":
        return []
    out = []
    for key, value in result.items():
        before = recorded.get(key)
        if key.startswith("test/loss_") and isinstance(before, float) and not math.isclose(value, before, rel_tol=1e-6):
            out.append(f"{key} is {value:.5g} here and {before:.5g} in metrics.json: {type(run.model).__name__}'s "
                       f"loss samples a code per image, so each pass differs (this one seeded with --seed {seed}); "
                       "mse_per_pixel and psnr_db decode the mean code and do not")
    return out


def likelihood(run: TrainedRun, data: ImageData, opts: Options, notes: list[str]) -> dict[str, Any]:
    """The importance-weighted bound on -log p(x), nats per image (models with a likelihood)."""

    k = DEFAULT_IW_SAMPLES if opts.iw_samples is None else opts.iw_samples
    if k == 0:
        return {}
    why_not = likelihood_bound(run.model, run.recon)
    if why_not is not None:
        if opts.iw_samples is not None or isinstance(run.model, HasLikelihoodBound):  # a VAE: say why not
            notes.append(f"no likelihood bound: {why_not}")
        return {}
    with inference.seeded(opts.seed, run.device):
        bound = metrics.neg_log_likelihood(run.model, data, data.test, run.recon, k, opts.progress)
    return {"test/iw_bound_nats_per_image": bound, "iw_samples": k}


def denoising(run: TrainedRun, data: ImageData, batch: int, noise: Any, opts: Options,
              notes: list[str]) -> dict[str, Any]:
    """PSNR of the corrupted test images and of their reconstructions."""

    if noise is None:
        notes.append("no denoising measured: " + (f"--noise {opts.noise}" if opts.noise is not None else
                     "the run trained without noise (pass --noise binomial or --noise gaussian to measure it)"))
        return {}
    with inference.seeded(opts.seed, run.device):
        out = metrics.denoising(run.model, data, data.test, run.recon, noise, batch)
    return {"denoise_noise": repr(noise), **{f"test/{k}": v for k, v in out.items()}}


def representations(run: TrainedRun, data: ImageData, batch: int, opts: Options, notes: list[str]) -> dict[str, Any]:
    """Linear-probe and k-NN accuracy of the codes, the pixels and PCA (``aecli.use.probes``);
    the pixel and PCA baselines are computed once per dataset and reused by later runs."""
    import numpy as np
    import torch


    if data.labels is None:
        notes.append("the dataset has no labels (a folder without class sub-folders): reconstruction only")
        return {}
    if opts.probe_images == 0:
        notes.append("no probes (--probe-images 0)")
        return {}
    train_idx = probes.probe_subset(len(data.train), opts.probe_images, opts.seed)
    test_idx = torch.arange(len(data.test))
    y_train, y_test = data.labels["train"][train_idx].numpy(), data.labels["test"].numpy()
    k = min(opts.knn_k, len(train_idx))
    codes = probes.Features(*(inference.codes(run, split, data.max_value, idx, batch).float().cpu().numpy()
                              for split, idx in ((data.train, train_idx), (data.test, test_idx))))
    key = (str(plain(run.cfg.dataset)), opts.data_root, len(train_idx), opts.seed, k)
    if key not in opts.cache:
        opts.cache[key] = probes.Features(probes.pixels(data, data.train, train_idx, batch),
                                          probes.pixels(data, data.test, test_idx, batch))
    pixels: probes.Features = opts.cache[key]
    with stage(f"probes on the codes ({len(train_idx):,} train images)"):
        scores = {"codes": probes.score(codes, y_train, y_test, k, opts.seed)}
    pixels_key, pca_key = (key, "pixels"), (key, "pca", codes.dims)
    if pixels_key not in opts.cache:
        with stage("probes on the pixels"):
            opts.cache[pixels_key] = probes.score(pixels, y_train, y_test, k, opts.seed)
    if pca_key not in opts.cache:
        with stage(f"probes on the {codes.dims}-dim baseline"):
            opts.cache[pca_key] = probes.score(probes.baseline(data, pixels, codes.dims, opts.seed)[1], y_train,
                                               y_test, k, opts.seed)
    scores["pixels"], scores["pca"] = opts.cache[pixels_key], opts.cache[pca_key]
    out: dict[str, Any] = {}
    for name, s in scores.items():
        out.update({f"probe/{name}_accuracy": s["probe"], f"knn/{name}_accuracy": s["knn"], f"dims/{name}": s["dims"]})
    unconverged = [name for name, s in scores.items() if not s["probe_converged"]]
    if unconverged:
        notes.append(f"the linear probe stopped at {probes.PROBE_MAX_ITER} lbfgs iterations before converging on "
                     f"{', '.join(unconverged)}: the accuracy of that early-stopped fit")
    if not data.images:
        name = "LSA (TF-IDF, truncated SVD)" if data.kind == "text" else "PCA"
        notes.append(f"vectors: 'pixels' are the {data.kind}'s raw features, 'pca' is {name} at the code's size")
    out.update({"probe_train_images": len(train_idx), "test_images": len(test_idx), "knn_k": k,
                "chance_accuracy": float(np.bincount(y_test).max() / len(y_test))})
    return out


# --- opening runs, and the checks before any work --------------------------------------------

def open_runs(paths: Sequence[str | Path], opts: Options) -> tuple[list[TrainedRun], list[str]]:
    """Every run under ``paths``, opened. A run dir named on the command line must open; a job
    of a multirun dir that cannot (it failed before its first checkpoint) is skipped and named."""

    runs, skipped = [], []
    for path in paths:
        found = find_runs([path])
        for run_dir in found:
            try:
                runs.append(open_run(run_dir, opts.checkpoint, opts.device))
                commands.still_training(run_dir)
            except ConfigError as e:
                if found == [Path(path)]:
                    raise
                skipped.append(f"{run_dir.name} ({e.problem})")
    if not runs:
        raise ConfigError("RUN", f"no job under {', '.join(map(str, paths))} has a checkpoint "
                          f"({'; '.join(skipped[:3])})", "pass a run (or sweep) whose jobs trained at least one epoch")
    for s in skipped:
        log.warning("skipped %s", s)
    set_threads(runs[0], opts.threads)
    return runs, skipped


def check_likelihood(runs: Sequence[TrainedRun], opts: Options) -> None:
    """``--iw-samples`` asked for explicitly needs at least one run with a likelihood (the
    others of a sweep are noted and skipped)."""
    if opts.iw_samples in (None, 0) or any(likelihood_bound(r.model, r.recon) is None for r in runs):
        return
    raise ConfigError("--iw-samples", f"{runs[0].run_dir}: {likelihood_bound(runs[0].model, runs[0].recon)}",
                      "drop --iw-samples for this run, or evaluate a run trained with model=vae (and loss=bce)")


def eval_noise(run: TrainedRun, opts: Options) -> Any:
    """The noise the denoising section applies (``--noise``, else the run's own), or None for none."""
    noise = commands.noise(run, opts.noise)
    return noise if noise.corrupts else None


# --- outputs ---------------------------------------------------------------------------------

def output_dirs(runs: Sequence[TrainedRun], out: Path | None) -> list[Path]:
    """Where each run's ``eval.json`` goes: its run dir, or ``--out`` (several runs: ``--out``/the
    run's dir relative to the runs' common parent, as in the table), made if needed."""
    if out is None:
        for run in runs:  # a run still training: its dir is its own (aecli.use.commandline)
            commands.check_writable(run.run_dir, run.run_dir)
        return [run.run_dir for run in runs]
    parent = common_parent([r.run_dir for r in runs])
    dirs = [out / run.run_dir.absolute().relative_to(parent) if len(runs) > 1 else out for run in runs]
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError("--out", f"cannot make {d} ({e.strerror or e})",
                              "pass --out DIR where you can write") from None
    return dirs


def write_run_outputs(run: TrainedRun, result: dict[str, Any], where: Path | None = None) -> None:
    """``eval.json`` (atomic) and the metrics as TensorBoard scalars ``eval/<key>`` at the
    checkpoint's step, into ``where`` (default: the run dir). The scalars go to their own event file (suffix
    ``.eval``), which replaces the one of an earlier evaluation, as ``eval.json`` does."""
    from torch.utils.tensorboard import SummaryWriter


    where = run.run_dir if where is None else where
    remove_stale_temps(where)  # what evaluations killed mid-write left
    rundir.write_json(where / "eval.json", result)
    earlier = sorted(where.glob(f"events.out.tfevents.*{EVENTS_SUFFIX}"))
    staging = temp_dir(where)
    try:
        writer = SummaryWriter(log_dir=str(staging), filename_suffix=EVENTS_SUFFIX)
        for key, value in result.items():
            if key.startswith(TB_PREFIXES) and isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(f"eval/{key}", value, result["step"])
        writer.close()
        (new,) = staging.iterdir()
        # one rename, in place of the earlier file: a kill leaves the old scalars or the new, never both
        atomic_move(new, earlier[0] if earlier else where / new.name)
        for path in earlier[1:]:
            path.unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def common_parent(dirs: Sequence[Path]) -> Path:
    return Path(os.path.commonpath([str(d.absolute()) for d in dirs]))


def table_rows(runs: Sequence[TrainedRun], results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run (its dir relative to the runs' common parent), the COLUMNS some run has."""
    parent = common_parent([r.run_dir for r in runs])
    columns = [c for c, key in COLUMNS.items() if any(key in r for r in results)]
    rows = []
    for run, result in zip(runs, results):
        name = str(run.run_dir.absolute().relative_to(parent)) if len(runs) > 1 else run.run_dir.name
        rows.append({"run": name, **{c: result.get(COLUMNS[c]) for c in columns}, "dir": str(run.run_dir)})
    return rows


def write_table(runs: Sequence[TrainedRun], results: Sequence[dict[str, Any]], out: Path,
                skipped: Sequence[str]) -> None:

    rows = table_rows(runs, results)
    out.mkdir(parents=True, exist_ok=True)
    notes = "".join(f"- {row['run']}: {n}\n" for row, r in zip(rows, results) for n in r["notes"])
    representations = representation_table([row["run"] for row in rows], results)
    shown = [{c: f"{v:.{DIGITS}g}" if isinstance(v, float) else v for c, v in row.items()} for row in rows]
    compact = [{c: v for c, v in row.items() if not c.startswith(IN_REPRESENTATIONS) and c not in CODE_STATISTICS}
               for row in shown]
    codes = [{c: v for c, v in row.items() if c == "run" or c in CODE_STATISTICS} for row in shown]
    text = (f"# Evaluation of {len(runs)} runs\n\n{report.markdown(compact)}\n{legend(results, skipped)}"
            + (f"\n## Codes\n\n{report.markdown(codes)}" if any(len(row) > 1 for row in codes) else "")
            + (f"\n## Codes vs pixels vs PCA\n\n{representations}" if representations else "")
            + (f"\nNotes:\n{notes}" if notes else ""))
    atomic_write_text(out / "eval.md", text)
    tables.write_csv(rows, out / "eval.csv")
    log.info("wrote %s, %s", out / "eval.md", out / "eval.csv")


def representation_table(names: Sequence[str], results: Sequence[dict[str, Any]]) -> str:
    """Linear-probe and k-NN accuracy of each run's codes next to PCA (as many dims) and the
    pixels: one row per run that has them ("" if none has)."""
    have = [(n, r) for n, r in zip(names, results) if "probe/codes_accuracy" in r]
    if not have:
        return ""
    k = have[0][1]["knn_k"]
    header = ["run", "code dims", "probe: codes", "probe: PCA", "probe: pixels",
              *(f"{k}-NN: {rep}" for rep in ("codes", "PCA", "pixels"))]
    rows = [[name, r["dims/codes"], *(f"{r[f'{kind}/{rep}_accuracy']:.3f}" for kind in ("probe", "knn")
                                      for rep in ("codes", "pca", "pixels"))] for name, r in have]
    return tables.markdown(rows, header) + "\n"


def legend(results: Sequence[dict[str, Any]], skipped: Sequence[str] = ()) -> str:
    """What the columns mean, with the settings they were measured at."""
    first = next((r for r in results if "probe_train_images" in r), None)
    lines = [("On the test split. mse/px, psnr_db, ssim: reconstruction of clean images; -elbo nats, iw bound "
              "nats: -log p(x) bounds (nats per image, VAE with loss=bce); noisy/denoised psnr: the corrupted input "
              "and its reconstruction against the clean image.")]
    if first:
        lines.append(f"probe: logistic-regression accuracy (standardised features), knn: {first['knn_k']}-NN "
                     f"accuracy; fit on {first['probe_train_images']} train images, scored on {first['test_images']} "
                     f"test images; pca has as many dims as the code; chance (most common class): "
                     f"{first['chance_accuracy']:.3f}.")
    lines += [f"skipped {s}" for s in skipped]
    return "\n".join(lines) + "\n"


def run_table(result: dict[str, Any]) -> str:
    """One run's results as two markdown tables: the test metrics, and codes vs pixels vs PCA."""
    head = (f"{result['run_dir']} ({result['checkpoint']}, step {result['step']}, epoch {result['epoch']}): "
            f"{result['model']}, loss {result['loss']}, noise {result['noise']}")
    metrics_rows = [[k.removeprefix("test/"), f"{v:.{DIGITS}g}"] for k, v in result.items() if k.startswith("test/")]
    if "denoise_noise" in result:
        metrics_rows.append(["denoising noise", result["denoise_noise"]])
    lines = [head, "", tables.markdown(metrics_rows, ["test metric", "value"], numbers_right=False)]
    if "probe/codes_accuracy" in result:
        rows = [[name, result[f"dims/{name}"], f"{result[f'probe/{name}_accuracy']:.3f}",
                 f"{result[f'knn/{name}_accuracy']:.3f}"] for name in ("codes", "pixels", "pca")]
        lines += ["", tables.markdown(rows, ["representation", "dims", "linear probe", f"{result['knn_k']}-NN"])]
    lines += ["", legend([result])] + [f"note: {n}" for n in result["notes"]]
    lines.append(f"took {result['seconds/total']:.1f} s")
    return "\n".join(lines)


# --- the command line (parsed and checked by aecli.cli) --------------------------------------

def recipe(args: argparse.Namespace) -> None:
    """``aecli evaluate RUN...``: every run measured, its table printed (several: also written)."""
    given = {"iw_samples": args.iw_samples, "batch_size": args.batch_size, "probe_images": args.probe_images,
             "knn_k": args.knn}
    opts = Options(checkpoint=args.checkpoint, device=args.device, threads=args.threads, noise=args.noise,
                   seed=args.seed, data_root=args.data_root, **{k: v for k, v in given.items() if v is not None})
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    results = evaluate_paths(args.run, opts, args.out)
    if len(results) == 1:
        print(run_table(results[0]))
    else:
        out = args.out or common_parent([Path(r["run_dir"]) for r in results])
        print((out / "eval.md").read_text())
        print("wrote " + ", ".join(str(out / f) for f in FILES))
