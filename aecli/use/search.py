"""``aecli search RUN --query INDEX|IMAGE_FILE --k 8``: the test images whose codes are
closest to the query's by cosine similarity (the way documents are retrieved by their codes),
as a PNG row: the query, then its neighbours, nearest first.

``--measure``: precision@k by label over the whole test split (each test image the query, the
others the gallery) for three representations of the same images: the model's codes, the raw
pixels, and PCA of the pixels down to the code's size (fitted on the train split).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from aecli.data import ImageData
from aecli.errors import ConfigError
from aecli.figures import grid_figure, save_figure
from aecli.store import rundir
from aecli.use import commandline as commands
from aecli.use import inference, probes
from aecli.use.trained import TrainedRun


def recipe(args: argparse.Namespace) -> None:
    run = commands.open_run(args)
    data = run.data(args.data_root)
    if args.measure:
        return measure(run, data, args)
    n = check_k(args.k, len(data.test))
    if args.query is None:
        raise ConfigError("--query", "no query given", "pass --query INDEX (a test image) or --query IMAGE_FILE")
    gallery = inference.codes(run, data.test, data.max_value)
    if args.query.isdigit():
        index = commands.test_index(args.query, n, "--query")
        image = data.as_float(inference.pick(data.test, [index], run.device))
        code, name = gallery[index], f"test{index}"
        what = f"test image {index}"
    else:
        file = Path(args.query)
        if not file.is_file():
            raise ConfigError("--query", f"{args.query!r} is neither a test index nor an image file",
                              f"pass an index from 0 to {n - 1}, or the path of an image file")
        index, image = None, inference.read_image(file, run.model.input_shape, "--query").to(run.device)
        code, name = run.model.encode(image)[0].detach(), commands.source_tag(file)
        what = str(file)
    similarity = F.cosine_similarity(gallery, code[None], dim=1)
    if index is not None:
        similarity[index] = -torch.inf  # the query itself is not its own neighbour
    best = similarity.topk(args.k)
    path = commands.out_dir(args, run) / f"search_{name}_k{args.k}.png"
    neighbours = data.as_float(inference.pick(data.test, best.indices, run.device))
    fig = figure(run, torch.cat([image, neighbours]), what, best.indices.cpu(), best.values.cpu(), data, index)
    save_figure(fig, path)
    print(neighbours_table(best.indices.cpu(), best.values.cpu(), data.labels, data.classes, index))
    commands.wrote(path)


def figure(run: TrainedRun, images: Tensor, what: str, indices: Tensor, similarity: Tensor, data: ImageData,
           query: int | None) -> Any:
    """The query (framed) and its neighbours, each captioned with its rank, test index,
    similarity and label."""
    label = (lambda i: f"'{commands.class_name(data.classes, int(data.labels['test'][i]))}'" if data.labels is not None  # noqa: E731
             else "")
    first = f"query\n{'test ' + str(query) if query is not None else 'your image'}\n" + (
        label(query) if query is not None else "")
    captions = [first] + [f"#{r + 1}\ntest {int(i)}\nsim {float(s):.3f}\n{label(int(i))}"
                          for r, (i, s) in enumerate(zip(indices, similarity))]
    title = (f"{commands.run_title(run)}: the {len(indices)} test images whose codes are nearest to {what}'s "
             "(cosine similarity), nearest first; the query is framed")
    return grid_figure([images], title, captions=[captions], marked=[(0, 0)])


def check_k(k: int, n: int) -> int:
    """``n`` (the test split's size) if ``k`` neighbours can be found among ``n - 1`` others."""
    if not 1 <= k < n:
        raise ConfigError("--k", f"{k} neighbours out of a gallery of {n - 1} test images",
                          f"pass --k from 1 to {n - 1}")
    return n


def neighbours_table(indices: Tensor, similarity: Tensor, labels: dict[str, Tensor] | None,
                     classes: list[str] | None, query: int | None) -> str:
    """The neighbours (test index, label, cosine similarity), and how many share the query's label."""
    name = (lambda k: commands.class_name(classes, k))  # noqa: E731
    rows = [[r + 1, int(i), name(int(labels["test"][i])) if labels else "", f"{s:.3f}"]
            for r, (i, s) in enumerate(zip(indices, similarity))]
    text = commands.table(rows, ["rank", "test index", "label", "cosine similarity"])
    if labels is not None and query is not None:
        same = int((labels["test"][indices] == labels["test"][query]).sum())
        text += f"\n{same} of {len(indices)} share the query's label ({name(int(labels['test'][query]))})"
    return text


def measure(run: TrainedRun, data: ImageData, args: argparse.Namespace) -> None:
    """Precision@k by label of codes, pixels and PCA of the pixels; a table and a JSON file."""
    if data.labels is None:
        raise ConfigError("--measure", "this run's dataset has no labels, so precision by label cannot be measured",
                          "train on a labelled dataset (digits, mnist, ..., a folder with one sub-folder per class)")
    check_k(args.k, len(data.test))
    labels = data.labels["test"].to(run.device)
    dim = run.model.latent_dim
    every = {split: torch.arange(len(data.split(split))) for split in ("train", "test")}
    pixels = probes.Features(*(probes.pixels(data, data.split(s), every[s], inference.BATCH) for s in every))
    pca = probes.pca(pixels, dim, seed=args.seed)  # fit on the train pixels, as aecli.use.evaluate's baseline
    features = {f"codes ({dim})": inference.codes(run, data.test, data.max_value),
                f"pixels ({pixels.dims})": torch.from_numpy(pixels.test),
                f"PCA of the pixels ({pca.dims})": torch.from_numpy(pca.test)}
    scores = {name: precision_at_k(f.to(run.device, torch.float32), labels, args.k) for name, f in features.items()}
    counts = torch.bincount(labels).double()
    chance = float((counts * (counts - 1)).sum() / (len(labels) * (len(labels) - 1)))  # a random other image
    rows = [[name, f"{p:.3f}"] for name, p in scores.items()]
    rows.append(["chance (a random other test image)", f"{chance:.3f}"])
    print(f"precision@{args.k} by label, {len(labels)} test images, cosine similarity:")
    print(commands.table(rows, ["representation", f"precision@{args.k}"]))
    path = commands.out_dir(args, run) / f"search_precision_at_{args.k}.json"
    rundir.write_json(path, {"k": args.k, "test_images": len(labels), "precision_at_k": scores, "chance": chance})
    commands.wrote(path)


@torch.no_grad()
def precision_at_k(features: Tensor, labels: Tensor, k: int, chunk: int = 1024) -> float:
    """The mean fraction of each row's ``k`` nearest other rows (cosine similarity) that share its
    label. Rows are compared ``chunk`` at a time: the full similarity matrix of a 10,000-image
    test split would take 400 MB."""
    unit = F.normalize(features.flatten(1), dim=1)
    hits = 0
    for start in commands.progress(range(0, len(unit), chunk), -(-len(unit) // chunk), "precision@k"):
        sims = unit[start : start + chunk] @ unit.T
        rows = torch.arange(sims.shape[0], device=sims.device)
        sims[rows, rows + start] = -torch.inf  # not itself
        top = sims.topk(k, dim=1).indices
        hits += int((labels[top] == labels[start : start + chunk, None]).sum())
    return hits / (len(unit) * k)

