"""``aecli score RUN INPUT``: each image's reconstruction error (mean squared error per
pixel, data in [0, 1]) as a CSV, highest first on screen. An autoencoder reconstructs what it
was trained on best, so a high error marks an image unlike the training data: anomaly detection.

INPUT is a folder of images, or ``test`` for the run's test split: ``scores_test.csv`` (index,
file for a folder dataset, label, class, error), or ``scores_folder_NAME-HASH.csv`` (file, error;
HASH tells folders of one name apart, so a folder named ``test`` never replaces the test split's). A run trained with
``dataset.classes`` (train and val hold only those classes, test holds all) gets the measured
version: the ROC-AUC with which the error separates the held-out classes from the trained ones
(0.5: no better than chance; 1: every held-out image scores above every trained one).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aecli.data import ImageData
from aecli.errors import ConfigError
from aecli.store import rundir
from aecli.use import commandline as commands
from aecli.use import inference, tables

SHOWN = 5  # highest errors printed


def recipe(args: argparse.Namespace) -> None:
    run = commands.open_run(args)
    if args.input == "test":
        data = run.data(args.data_root)
        error = inference.errors(run, data.test, data.max_value)
        names = [f"test {i}" for i in range(len(error))]
        columns: dict[str, list[Any]] = {"index": list(range(len(error)))}
        if data.files is not None:  # a folder dataset: where each test image came from
            columns["file"] = [str(f) for f in data.files["test"]]
        if data.labels is not None:
            columns["label"] = data.labels["test"].tolist()
            columns["class"] = [commands.class_name(data.classes, k) for k in columns["label"]]
        stem = "test"
    else:
        folder = Path(args.input)  # aecli.cli checked that it is one
        files, images = inference.read_images(inference.image_files(folder, "INPUT"), run.model.input_shape)
        if not files:
            raise ConfigError("INPUT", f"no readable image in {folder}",
                              "pass a folder that holds PNG, JPEG, ... images")
        error = inference.errors(run, images.to(run.device), 1.0)
        names = [str(f) for f in files]
        columns, stem = {"file": names}, f"folder_{commands.source_tag(folder)}"
    columns["error"] = [f"{e:.6g}" for e in error.tolist()]
    out = commands.out_dir(args, run)
    path = out / f"scores_{stem}.csv"
    tables.write_csv([dict(zip(columns, values)) for values in zip(*columns.values())], path)
    order = error.argsort(descending=True)[:SHOWN]
    print(f"{len(error)} images, mean squared error per pixel: mean {error.mean():.4g}; highest: "
          + ", ".join(f"{names[i]} ({error[i]:.4g})" for i in order.tolist()))
    written = [path]
    classes = run.cfg.dataset.get("classes")
    if args.input == "test" and classes is not None and data.labels is not None:
        written.append(held_out_auc(error, data, list(classes), out))
    commands.wrote(*written)


def held_out_auc(error: Tensor, data: ImageData, classes: list[int], out: Path) -> Path:
    """Print and record how well the error separates the test images of classes left out of
    training (``dataset.classes``) from those of the trained classes: ROC-AUC."""
    from sklearn.metrics import roc_auc_score

    held_out = ~torch.isin(data.labels["test"], torch.tensor(classes))
    name = (lambda k: commands.class_name(data.classes, k))  # noqa: E731
    missing = sorted({name(int(k)) for k in data.labels["test"][held_out]})
    auc = float(roc_auc_score(held_out.numpy(), error.numpy())) if 0 < held_out.sum() < len(error) else float("nan")
    record = {"trained_classes": classes, "held_out_classes": missing, "held_out_images": int(held_out.sum()),
              "trained_images": int((~held_out).sum()), "roc_auc": auc,
              "mean_error_held_out": float(error[held_out].mean()),
              "mean_error_trained": float(error[~held_out].mean())}
    print(f"held-out classes {', '.join(missing)} ({record['held_out_images']} test images) against the trained "
          f"ones ({record['trained_images']}): ROC-AUC {auc:.3f}; mean error {record['mean_error_held_out']:.4g} "
          f"vs {record['mean_error_trained']:.4g}")
    path = out / "scores_test_auc.json"
    rundir.write_json(path, record)
    return path


