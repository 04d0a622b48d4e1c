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

from aecli.data import ImageData, vectors
from aecli.errors import ConfigError
from aecli.store import rundir
from aecli.use import commandline as commands
from aecli.use import inference, tables

SHOWN = 5  # highest errors printed


def recipe(args: argparse.Namespace) -> None:
    run = commands.open_run(args)
    fitted, data = run.state.get("data_transform"), None
    if args.input == "test":
        data = run.data(args.data_root)
        items, max_value, features, stem = data.test, data.max_value, data.features, "test"
        names = data.names["test"] if data.names else [f"test {i}" for i in range(len(items))]
        columns: dict[str, list[Any]] = {"index": list(range(len(items)))}
        if data.files is not None:  # a folder dataset: where each test image came from
            columns["file"] = [str(f) for f in data.files["test"]]
        if data.labels is not None:
            columns["label"] = data.labels["test"].tolist()
            columns["class"] = [commands.class_name(data.classes, k) for k in columns["label"]]
    elif fitted is not None:  # a table's rows, a corpus's documents, through the run's own transform
        source = Path(args.input)
        names, items = vectors.read_items(fitted, source, run.cfg.dataset.get("text_column", "text"))
        items, max_value, stem = items.to(run.device), 1.0, f"file_{commands.source_tag(source)}"
        features, columns = fitted.get("features") or fitted.get("vocabulary"), {"item": names}
    else:
        folder = Path(args.input)  # aecli.cli checked that it exists
        if not folder.is_dir():
            raise ConfigError("INPUT", f"{folder} is not a folder", "pass a folder of images, or test")
        files, images = inference.read_images(inference.image_files(folder, "INPUT"), run.model.input_shape)
        if not files:
            raise ConfigError("INPUT", f"no readable image in {folder}",
                              "pass a folder that holds PNG, JPEG, ... images")
        items, max_value, features, stem = images.to(run.device), 1.0, None, folder.name or "images"
        names = [str(f) for f in files]
        columns, stem = {"file": names}, f"folder_{commands.source_tag(folder)}"
    per_feature = None if fitted is None else inference.feature_errors(run, items, max_value)
    error = inference.errors(run, items, max_value) if per_feature is None else per_feature.mean(1)
    if per_feature is not None:
        columns["top_features"] = top_features(per_feature, features)
    columns["error"] = [f"{e:.6g}" for e in error.tolist()]
    out = commands.out_dir(args, run)
    path = out / f"scores_{stem}.csv"
    tables.write_csv([dict(zip(columns, values)) for values in zip(*columns.values())], path)
    order = error.argsort(descending=True)[:SHOWN]
    what = "images, mean squared error per pixel" if per_feature is None else "items, mean squared error per feature"
    print(f"{len(error)} {what}: mean {error.mean():.4g}; highest: "
          + ", ".join(f"{names[i]} ({error[i]:.4g}" + (f": {columns['top_features'][i]}" if per_feature is not None
                                                       else "") + ")" for i in order.tolist()))
    written = [path]
    classes = run.cfg.dataset.get("classes")
    if data is not None and classes is not None and data.labels is not None:
        baseline = None if data.images else pca_errors(data, run.model.latent_dim)
        written.append(held_out_auc(error, data, list(classes), out, baseline))
    commands.wrote(*written)


TOP_FEATURES = 3  # the features named per item: where its reconstruction error comes from


def top_features(per_feature: Tensor, features: list[str] | None) -> list[str]:
    """Per item, the ``TOP_FEATURES`` features (columns, words) with the largest squared
    error, with their share of the item's error: why it scores high."""
    share = per_feature / per_feature.sum(1, keepdim=True).clamp(min=1e-12)
    top = share.topk(min(TOP_FEATURES, share.shape[1]), dim=1)
    name = (lambda j: features[j] if features else f"feature {j}")  # noqa: E731
    return ["; ".join(f"{name(j)} {100 * v:.0f}%" for j, v in zip(idx.tolist(), val.tolist()))
            for idx, val in zip(top.indices, top.values)]


def pca_errors(data: ImageData, dims: int) -> Tensor:
    """The baseline of vectors' anomaly scores: each test item's squared error per feature
    after PCA with ``dims`` components (the code's size), fit on the train split."""
    from sklearn.decomposition import PCA

    train, test = data.train.cpu().numpy(), data.test.cpu().numpy()
    fit = PCA(n_components=min(dims, *train.shape), random_state=0).fit(train)
    rebuilt = fit.inverse_transform(fit.transform(test))
    return torch.from_numpy(((rebuilt - test) ** 2).mean(1))


def held_out_auc(error: Tensor, data: ImageData, classes: list[int], out: Path,
                 baseline: Tensor | None = None) -> Path:
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
    if baseline is not None and 0 < held_out.sum() < len(error):
        record["pca_roc_auc"] = float(roc_auc_score(held_out.numpy(), baseline.numpy()))
    print(f"held-out classes {', '.join(missing)} ({record['held_out_images']} test images) against the trained "
          f"ones ({record['trained_images']}): ROC-AUC {auc:.3f}; mean error {record['mean_error_held_out']:.4g} "
          f"vs {record['mean_error_trained']:.4g}")
    if "pca_roc_auc" in record:
        print(f"PCA's reconstruction error at the code's size, fit on the same train rows: ROC-AUC "
              f"{record['pca_roc_auc']:.3f}")
    path = out / "scores_test_auc.json"
    rundir.write_json(path, record)
    return path


