"""Measure what a trained model learned: ``python -m aecli.evaluate RUN_DIR [RUN_DIR ...]``.

Each run (a multirun dir: each of its jobs) is opened from its ``best.pt`` (``--checkpoint
last``: its last one) and measured on its test split, batched on its device:

1. reconstruction: the training loss terms (unit in the key), MSE per pixel, PSNR, SSIM;
2. likelihood, for a model that defines one (a VAE trained with loss=bce): -ELBO and the
   importance-weighted bound on -log p(x) with ``--iw-samples`` samples, nats per image;
3. denoising: the PSNR of the test images corrupted by the run's noise (or ``--noise``), and
   the PSNR of their reconstructions: what the denoiser buys;
4. representations, where the dataset has labels (``aecli.use.probes``): linear-probe and k-NN
   accuracy of the model's codes, the raw pixels, and PCA with as many dims as the code.

Writes ``eval.json`` and TensorBoard scalars (``eval/...``, at the checkpoint's step) into each
run dir and prints a table; several runs make one table, also written as ``eval.md`` and
``eval.csv`` into ``--out`` (default: the runs' common parent dir). Randomness (noise, the VAE's
samples) is seeded with ``--seed`` per section, so every run sees the same corrupted images.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aecli import config, metrics
from aecli.components import build
from aecli.config import plain
from aecli.data import ImageData
from aecli.errors import ConfigError
from aecli.losses import BinaryCrossEntropy
from aecli.store import rundir
from aecli.threads import parse_threads
from aecli.use import probes, report
from aecli.use.commandline import add_threads, set_threads, stage
from aecli.use.trained import TrainedRun, find_runs, open_run

if TYPE_CHECKING:
    import torch


log = logging.getLogger("aecli")

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
NOISE_LEVEL_KEYS = ("p", "sigma")  # a noise config's level key: masking p, Gaussian sigma
# table column -> eval.json key, in the order shown; columns no run has are left out
COLUMNS = {"model": "model", "train noise": "noise", "mse/px": "test/mse_per_pixel", "psnr_db": "test/psnr_db",
           "ssim": "test/ssim", "-elbo nats": "test/neg_elbo_nats_per_image",
           "iw bound nats": "test/iw_bound_nats_per_image", "noisy psnr": "test/noisy_input_psnr_db",
           "denoised psnr": "test/denoised_psnr_db", "probe codes": "probe/codes_accuracy",
           "probe pixels": "probe/pixels_accuracy", "probe pca": "probe/pca_accuracy",
           "knn codes": "knn/codes_accuracy", "knn pixels": "knn/pixels_accuracy", "knn pca": "knn/pca_accuracy",
           "seconds": "seconds/total"}


@dataclass
class Options:
    """What to measure and how (the command line's options)."""

    checkpoint: str = "best"
    device: str = "auto"
    threads: int | str = "auto"  # torch's CPU threads: auto (timed on the first run's model) | N
    iw_samples: int | None = None  # None: DEFAULT_IW_SAMPLES where the model has a likelihood
    noise: str = "run"  # run | none | binomial | gaussian
    noise_level: float | None = None  # p or sigma; None: the noise's own
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
    check_options(opts)
    runs, skipped = open_runs(paths, opts)
    check_likelihood(runs, opts)
    start = time.perf_counter()
    import sklearn.linear_model  # noqa: F401 - imported once here, so no run's timing includes it
    import torchmetrics  # noqa: F401

    log.info("loaded torchmetrics and scikit-learn in %.1f s", time.perf_counter() - start)
    results = []
    for i, run in enumerate(runs, 1):
        log.info("evaluating %s (%d/%d)", run.run_dir, i, len(runs))
        result = evaluate(run, opts)
        write_run_outputs(run, result)
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


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's RNG seeded for one section, and put back afterwards."""
    import torch

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


# --- the sections ----------------------------------------------------------------------------

def reconstruction(run: TrainedRun, data: ImageData, batch: int, opts: Options) -> dict[str, Any]:
    """The training loss terms, MSE, PSNR (``aecli.metrics.reconstruction``, which also gives a
    VAE's -ELBO) and SSIM of the test split's reconstructions."""

    with seeded(opts.seed, run.device):  # a VAE's loss terms sample z
        out: dict[str, Any] = {f"test/{k}": v for k, v in
                               metrics.reconstruction(run.model, data, data.test, run.recon, batch).items()}
    out["test/ssim"] = metrics.ssim(run.model, data, data.test, run.recon, batch)
    out["ssim_window"] = f"gaussian, sigma {metrics.ssim_sigma(*data.shape[1:]):.2f}"
    return out


def likelihood(run: TrainedRun, data: ImageData, opts: Options, notes: list[str]) -> dict[str, Any]:
    """The importance-weighted bound on -log p(x), nats per image (models with a likelihood)."""

    k = DEFAULT_IW_SAMPLES if opts.iw_samples is None else opts.iw_samples
    if k == 0:
        return {}
    if not has_likelihood(run):
        if opts.iw_samples is not None or "VAE metric" not in why_no_likelihood(run):
            notes.append(f"no likelihood bound: {why_no_likelihood(run)}")
        return {}
    with seeded(opts.seed, run.device):
        bound = metrics.neg_log_likelihood(run.model, data, data.test, run.recon, k, opts.progress)
    return {"test/iw_bound_nats_per_image": bound, "iw_samples": k}


def denoising(run: TrainedRun, data: ImageData, batch: int, noise: Any, opts: Options,
              notes: list[str]) -> dict[str, Any]:
    """PSNR of the corrupted test images and of their reconstructions."""

    if noise is None:
        notes.append("no denoising measured: " + ("--noise none" if opts.noise == "none" else
                     "the run trained without noise (pass --noise binomial or --noise gaussian to measure it)"))
        return {}
    with seeded(opts.seed, run.device):
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
    codes = probes.Features(probes.codes(run.model, data, data.train, train_idx, batch),
                            probes.codes(run.model, data, data.test, test_idx, batch))
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
        with stage(f"probes on PCA-{codes.dims} of the pixels"):
            opts.cache[pca_key] = probes.score(probes.pca(pixels, codes.dims, opts.seed), y_train, y_test, k,
                                               opts.seed)
    scores["pixels"], scores["pca"] = opts.cache[pixels_key], opts.cache[pca_key]
    out: dict[str, Any] = {}
    for name, s in scores.items():
        out.update({f"probe/{name}_accuracy": s["probe"], f"knn/{name}_accuracy": s["knn"], f"dims/{name}": s["dims"]})
    unconverged = [name for name, s in scores.items() if not s["probe_converged"]]
    if unconverged:
        notes.append(f"the linear probe stopped at {probes.PROBE_MAX_ITER} lbfgs iterations before converging on "
                     f"{', '.join(unconverged)}: the accuracy of that early-stopped fit")
    out.update({"probe_train_images": len(train_idx), "test_images": len(test_idx), "knn_k": k,
                "chance_accuracy": float(np.bincount(y_test).max() / len(y_test))})
    return out


# --- opening runs, and the checks before any work --------------------------------------------

def check_options(opts: Options) -> None:
    """Numbers out of range are refused before any run is opened."""
    for flag, value, ok, must in (("--iw-samples", opts.iw_samples, lambda v: v is None or v >= 0, ">= 0"),
                                  ("--probe-images", opts.probe_images, lambda v: v >= 0, ">= 0"),
                                  ("--knn", opts.knn_k, lambda v: v >= 1, ">= 1"),
                                  ("--batch-size", opts.batch_size, lambda v: v is None or v >= 1, ">= 1"),
                                  ("--noise-level", opts.noise_level, lambda v: v is None or v >= 0, ">= 0")):
        if not ok(value):
            raise ConfigError(flag, f"{value} is not {must}", f"pass {flag} with a value {must}, or leave it out")
    opts.threads = parse_threads(opts.threads)


def open_runs(paths: Sequence[str | Path], opts: Options) -> tuple[list[TrainedRun], list[str]]:
    """Every run under ``paths``, opened. A run dir named on the command line must open; a job
    of a multirun dir that cannot (it failed before its first checkpoint) is skipped and named."""

    runs, skipped = [], []
    for path in paths:
        found = find_runs([path])
        for run_dir in found:
            try:
                runs.append(open_run(run_dir, opts.checkpoint, opts.device))
            except ConfigError as e:
                if found == [Path(path)]:
                    raise _as_flag(e) from None
                skipped.append(f"{run_dir.name} ({e.problem})")
    if not runs:
        raise ConfigError("RUN_DIR", f"no job under {', '.join(map(str, paths))} has a checkpoint "
                          f"({'; '.join(skipped[:3])})", "pass a run (or sweep) whose jobs trained at least one epoch")
    for s in skipped:
        log.warning("skipped %s", s)
    for run in runs:
        eval_noise(run, opts)  # a bad --noise-level is refused now, not after the first run
    set_threads(runs[0], opts.threads)
    return runs, skipped


def _as_flag(error: ConfigError) -> ConfigError:
    """The device errors of ``open_run`` name the training config's key: name the flag here."""
    if error.key == "device":
        return ConfigError("--device", error.problem, "pass --device cpu (or --device auto)")
    return error


def has_likelihood(run: TrainedRun, with_loss: Any = None) -> bool:
    """Whether the run's model gives a likelihood bound with its loss (or ``with_loss``), asked
    of the model on one blank image."""
    import torch

    with torch.no_grad():
        x = torch.zeros(1, *run.model.input_shape, device=run.device)
        return run.model.neg_log_likelihood_bound(x, with_loss or run.recon, 1) is not None


def why_no_likelihood(run: TrainedRun) -> str:
    """Why ``has_likelihood(run)`` is False: the model has none, or its loss is no likelihood."""

    if not has_likelihood(run, BinaryCrossEntropy()):
        return (f"the importance-weighted bound is a VAE metric; {type(run.model).__name__} defines no likelihood "
                "(no prior over its codes)")
    return (f"it needs a likelihood loss (loss=bce: -log p(x|z) in nats); this run trained with "
            f"loss={run.recon.name}")


def check_likelihood(runs: Sequence[TrainedRun], opts: Options) -> None:
    """``--iw-samples`` asked for explicitly needs at least one run with a likelihood (the
    others of a sweep are noted and skipped)."""
    if opts.iw_samples in (None, 0) or any(has_likelihood(r) for r in runs):
        return
    raise ConfigError("--iw-samples", f"{runs[0].run_dir}: {why_no_likelihood(runs[0])}",
                      "drop --iw-samples for this run, or evaluate a run trained with model=vae (and loss=bce)")


def eval_noise(run: TrainedRun, opts: Options) -> Any:
    """The noise the denoising section applies, or None: the run's own (``--noise run``) or
    the named kind, at ``--noise-level`` if given (the range checks of ``aecli.config``)."""
    from omegaconf import OmegaConf


    if opts.noise == "none":
        return None
    cfg = run.cfg.noise if opts.noise == "run" else OmegaConf.structured(config.SCHEMAS["noise"][opts.noise])
    if opts.noise_level is not None:
        level_key = next((k for k in NOISE_LEVEL_KEYS if k in cfg), None)
        if level_key is None:
            raise ConfigError("--noise-level", f"the noise {cfg.get('_target_')} has no level",
                              "pass --noise binomial or --noise gaussian with --noise-level")
        cfg = OmegaConf.merge(cfg, {level_key: opts.noise_level})
        key, ok, must_be, _ = next(r for r in config.RANGES if r[0] == f"noise.{level_key}")
        if not ok(opts.noise_level):
            raise ConfigError("--noise-level", f"{opts.noise_level} is not a {key} {must_be}",
                              f"pass a --noise-level {must_be}")
    noise = build(OmegaConf.create({"noise": cfg}), "noise")
    return noise if noise.corrupts else None


# --- outputs ---------------------------------------------------------------------------------

def write_run_outputs(run: TrainedRun, result: dict[str, Any]) -> None:
    """``eval.json`` (atomic) and the metrics as TensorBoard scalars ``eval/<key>`` at the
    checkpoint's step, into the run dir. The scalars go to their own event file (suffix
    ``.eval``), which replaces the one of an earlier evaluation, as ``eval.json`` does."""
    from torch.utils.tensorboard import SummaryWriter


    rundir.write_json(run.run_dir / "eval.json", result)
    earlier = list(run.run_dir.glob(f"events.out.tfevents.*{EVENTS_SUFFIX}"))
    writer = SummaryWriter(log_dir=str(run.run_dir), filename_suffix=EVENTS_SUFFIX)
    for key, value in result.items():
        if key.startswith(TB_PREFIXES) and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(f"eval/{key}", value, result["step"])
    writer.close()
    for path in earlier:
        path.unlink(missing_ok=True)


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
    text = (f"# Evaluation of {len(runs)} runs\n\n{report.markdown(rows)}\n{legend(results, skipped)}"
            + (f"\n## Codes vs pixels vs PCA\n\n{representations}" if representations else "")
            + (f"\nNotes:\n{notes}" if notes else ""))
    (out / "eval.md").write_text(text)
    report.write_csv(rows, out / "eval.csv")
    log.info("wrote %s, %s", out / "eval.md", out / "eval.csv")


def representation_table(names: Sequence[str], results: Sequence[dict[str, Any]]) -> str:
    """Linear-probe and k-NN accuracy of each run's codes next to PCA (as many dims) and the
    pixels: one row per run that has them ("" if none has)."""
    have = [(n, r) for n, r in zip(names, results) if "probe/codes_accuracy" in r]
    if not have:
        return ""
    k = have[0][1]["knn_k"]
    head = "| run | code dims | probe: codes | probe: PCA | probe: pixels | " + " | ".join(
        f"{k}-NN: {rep}" for rep in ("codes", "PCA", "pixels")) + " |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in have:
        accuracies = [r[f"{kind}/{rep}_accuracy"] for kind in ("probe", "knn") for rep in ("codes", "pca", "pixels")]
        lines.append(f"| {name} | {r['dims/codes']} | " + " | ".join(f"{a:.3f}" for a in accuracies) + " |")
    return "\n".join(lines) + "\n"


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
    lines = [head, "", "| test metric | value |", "|---|---|"]
    lines += [f"| {k.removeprefix('test/')} | {v:.5g} |" for k, v in result.items() if k.startswith("test/")]
    if "denoise_noise" in result:
        lines.append(f"| denoising noise | {result['denoise_noise']} |")
    if "probe/codes_accuracy" in result:
        lines += ["", f"| representation | dims | linear probe | {result['knn_k']}-NN |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {result[f'dims/{name}']} | {result[f'probe/{name}_accuracy']:.3f} | "
                  f"{result[f'knn/{name}_accuracy']:.3f} |" for name in ("codes", "pixels", "pca")]
    lines += ["", legend([result])] + [f"note: {n}" for n in result["notes"]]
    lines.append(f"took {result['seconds/total']:.1f} s")
    return "\n".join(lines)


# --- the command line ------------------------------------------------------------------------

def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Options]:
    p = argparse.ArgumentParser(prog="python -m aecli.evaluate", description=__doc__.split("\n\n")[0].split(": ")[0]
                                + ": reconstruction, SSIM, likelihood bounds, denoising, and codes vs pixels vs PCA.")
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="a run dir, or a multirun dir (every job in it)")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which checkpoint (default: best)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="default: auto")
    add_threads(p)
    p.add_argument("--iw-samples", type=int, default=None, metavar="K",
                   help=f"importance samples for the VAE's -log p(x) bound (default {DEFAULT_IW_SAMPLES}; 0: skip)")
    p.add_argument("--noise", default="run", choices=("run", "none", "binomial", "gaussian"),
                   help="the corruption for the denoising PSNRs (default: the run's own noise)")
    p.add_argument("--noise-level", type=float, default=None, metavar="L", help="masking p or Gaussian sigma")
    p.add_argument("--probe-images", type=int, default=DEFAULT_PROBE_IMAGES, metavar="N",
                   help=f"train images the probes are fit on (default {DEFAULT_PROBE_IMAGES:,}; 0: no probes)")
    p.add_argument("--knn", type=int, default=5, metavar="K", help="neighbours of the k-NN vote (default 5)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's trainer.eval_batch_size")
    p.add_argument("--seed", type=int, default=0, help="seeds the noise and the VAE's samples (default 0)")
    p.add_argument("--data-root", default=None, help="where the run's dataset lies now, if it moved")
    p.add_argument("--out", type=Path, default=None,
                   help="where several runs' eval.md / eval.csv go (default: the runs' common parent dir)")
    a = p.parse_args(argv)
    opts = Options(checkpoint=a.checkpoint, device=a.device, threads=a.threads, iw_samples=a.iw_samples, noise=a.noise,
                   noise_level=a.noise_level, batch_size=a.batch_size, probe_images=a.probe_images, knn_k=a.knn,
                   seed=a.seed, data_root=a.data_root)
    return a, opts


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aecli.evaluate`` / ``aecli-evaluate``: 0, or 1 with one message."""
    args, opts = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        results = evaluate_paths(args.run_dirs, opts, args.out)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    if len(results) == 1:
        print(run_table(results[0]))
    else:
        out = args.out or common_parent([Path(r["run_dir"]) for r in results])
        print((out / "eval.md").read_text())
        print("wrote " + ", ".join(str(out / f) for f in FILES))
    return 0
