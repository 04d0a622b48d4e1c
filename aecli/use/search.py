"""``aecli search RUN --query INDEX|IMAGE_FILE --k 8``: the test images whose codes are
closest to the query's by cosine similarity (the way documents are retrieved by their codes),
as a PNG row: the query, then its neighbours, nearest first. On vectors (a table, a corpus) a
table of the neighbours (name or first words, label, similarity) and its CSV; a corpus also takes
``--query-text "..."`` or ``--query-file doc.txt``, vectorised with the run's vocabulary.

``--measure``: precision@k by label over the whole test split (each test item the query, the
others the gallery) for three representations of the same items: the model's codes, the raw
pixels (a corpus: TF-IDF cosine), and PCA of them down to the code's size (a corpus: LSA; fitted
on the train split); and the precision-recall curve over the fraction retrieved (PNG).

``--gallery PATH``: the user's own collection instead of the test split (``aecli.use.gallery``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from aecli.data import ImageData
from aecli.data.vectors import tfidf, vectorize
from aecli.errors import ConfigError
from aecli.figures import grid_figure, save_figure
from aecli.store import rundir
from aecli.store.atomic import atomic_write
from aecli.use import commandline as commands
from aecli.use import gallery, inference, probes, tables
from aecli.use.trained import TrainedRun


def recipe(args: argparse.Namespace) -> None:
    run = commands.open_run(args)
    if getattr(args, "gallery", None) is not None:
        return search_gallery(run, args)
    data = run.data(args.data_root)
    if args.measure:
        return measure(run, data, args)
    n = check_k(args.k, len(data.test))
    gallery = inference.codes(run, data.test, data.max_value)
    query = find_query(run, data, args, n)
    code = gallery[query.index] if query.index is not None else run.model.encode(query.item)[0].detach()
    similarity = F.cosine_similarity(gallery, code[None], dim=1)
    if query.index is not None:
        similarity[query.index] = -torch.inf  # the query itself is not its own neighbour
    best = similarity.topk(args.k)
    names = data.names["test"] if data.names else None
    print(neighbours_table(best.indices.cpu(), best.values.cpu(), data.labels, data.classes, query.index, names))
    out = commands.out_dir(args, run)
    if data.images:
        path = out / f"search_{query.name}_k{args.k}.png"
        neighbours = data.as_float(inference.pick(data.test, best.indices, run.device))
        what = f"test image {query.index}" if query.index is not None else query.name
        fig = figure(run, torch.cat([query.item, neighbours]), what, best.indices.cpu(), best.values.cpu(), data,
                     query.index)
        save_figure(fig, path)
    else:
        path = out / f"search_{query.name}_k{args.k}.csv"
        tables.write_csv([{"rank": r + 1, "test_index": int(i), "name": names[int(i)] if names else "",
                           "label": commands.class_name(data.classes, int(data.labels["test"][i]))
                           if data.labels is not None else "",
                           "cosine_similarity": f"{float(v):.4f}"}
                          for r, (i, v) in enumerate(zip(best.indices.cpu(), best.values.cpu()))], path)
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


@dataclass
class Query:
    """What to search for: a test item (``index``) or the user's own (an image, a text), as the model takes it."""

    item: Tensor  # (1, ...) on the run's device
    index: int | None
    name: str


def find_query(run: TrainedRun, data: ImageData, args: argparse.Namespace, n: int) -> Query:
    """The query that ``--query`` (a test index, or an image file), ``--query-text`` or ``--query-file`` names."""
    if args.query is not None and args.query.isdigit():
        index = commands.test_index(args.query, n, "--query")
        return Query(data.as_float(inference.pick(data.test, [index], run.device)), index, f"test{index}")
    return own_query(run, args, f"an index from 0 to {n - 1}")


def own_query(run: TrainedRun, args: argparse.Namespace, index_fix: str) -> Query:
    """The user's own query as the model takes it: ``--query-text`` / ``--query-file`` (a corpus run:
    vectorised with its vocabulary), or ``--query IMAGE_FILE`` (an image run)."""
    fitted = run.state.get("data_transform")
    kind = fitted["kind"] if fitted else "image"
    text, file_arg = getattr(args, "query_text", None), getattr(args, "query_file", None)
    if file_arg is not None or text is not None:
        key = "--query-text" if text is not None else "--query-file"
        if kind != "text":
            raise ConfigError(key, f"this run's items are {kind}s, not documents", f"pass --query with {index_fix}")
        if file_arg is not None:
            file = Path(file_arg)
            if not file.is_file():
                raise ConfigError(key, f"no file at {file}", "pass a text file")
            text, name = file.read_text(encoding="utf-8", errors="replace"), commands.source_tag(file)
        else:
            name = "text"
        vector = torch.from_numpy(vectorize(fitted, [text])).to(run.device)
        if not vector.any():
            raise ConfigError(key, "none of its words is in the run's vocabulary", "use words of the corpus")
        return Query(vector, None, name)
    own = " or --query IMAGE_FILE" if kind == "image" else ' or --query-text "..." / --query-file doc.txt' \
        if kind == "text" else ""
    if args.query is None:
        raise ConfigError("--query", "no query given", f"pass --query with {index_fix}{own}")
    file = Path(args.query)
    if kind != "image" or not file.is_file():
        raise ConfigError("--query", f"{args.query!r} is neither an index nor an image file" if kind == "image"
                          else f"{args.query!r} is not an index", f"pass {index_fix}{own}")
    image = inference.read_image(file, run.model.input_shape, "--query").to(run.device)
    return Query(image, None, commands.source_tag(file))


def search_gallery(run: TrainedRun, args: argparse.Namespace) -> None:
    """``--gallery PATH``: the user's own collection, encoded once (cached by content), searched exactly."""
    found = gallery.encoded(run, Path(args.gallery), Path(args.out) if args.out is not None else None)
    n = len(found.names)
    if not 1 <= args.k < n:
        raise ConfigError("--k", f"{args.k} neighbours out of a gallery of {n} items", f"pass --k from 1 to {n - 1}")
    print(f"gallery: {n} items, codes {'read from' if found.cached else 'written to'} {found.cache}")
    if args.query is not None and args.query.isdigit():
        index = commands.test_index(args.query, n, "--query")
        query, code = Query(found.codes[index : index + 1], index, f"item{index}"), found.codes[index]
    else:
        query = own_query(run, args, f"a gallery item's index, 0 to {n - 1}")
        code = run.model.encode(query.item)[0].detach()
    similarity, indices = gallery.nearest(found.codes, code, args.k + (query.index is not None))
    keep = indices != (query.index if query.index is not None else -1)  # the query itself is not its own neighbour
    similarity, indices = similarity[keep][: args.k].cpu(), indices[keep][: args.k].cpu()
    rows = [{"rank": r + 1, "item": int(i), "name": found.names[int(i)], "cosine_similarity": f"{float(v):.4f}"}
            for r, (i, v) in enumerate(zip(indices, similarity))]
    print(commands.table([list(r.values()) for r in rows], list(rows[0])))
    path = commands.out_dir(args, run) / f"search_gallery_{query.name}.csv"
    tables.write_csv(rows, path)
    commands.wrote(path)



def check_k(k: int, n: int) -> int:
    """``n`` (the test split's size) if ``k`` neighbours can be found among ``n - 1`` others."""
    if not 1 <= k < n:
        raise ConfigError("--k", f"{k} neighbours out of a gallery of {n - 1} test images",
                          f"pass --k from 1 to {n - 1}")
    return n


def neighbours_table(indices: Tensor, similarity: Tensor, labels: dict[str, Tensor] | None,
                     classes: list[str] | None, query: int | None, names: list[str] | None = None) -> str:
    """The neighbours (test index, name: a document's file or first words, label, cosine
    similarity), and how many share the query's label."""
    name = (lambda k: commands.class_name(classes, k))  # noqa: E731
    rows = [[r + 1, int(i), *([names[int(i)]] if names else []), name(int(labels["test"][i])) if labels else "",
             f"{s:.3f}"] for r, (i, s) in enumerate(zip(indices, similarity))]
    text = commands.table(rows, ["rank", "test index", *(["name"] if names else []), "label", "cosine similarity"])
    if labels is not None and query is not None:
        same = int((labels["test"][indices] == labels["test"][query]).sum())
        text += f"\n{same} of {len(indices)} share the query's label ({name(int(labels['test'][query]))})"
    return text


def measure(run: TrainedRun, data: ImageData, args: argparse.Namespace) -> None:
    """Precision@k by label of the codes, the raw items (pixels; features; a corpus's TF-IDF) and the
    linear baseline at the code's size (PCA; a corpus's LSA); a table, a JSON file, and a
    precision-recall curve over the fraction of items retrieved (``search_precision_recall.png``)."""
    if data.labels is None:
        raise ConfigError("--measure", "this run's dataset has no labels, so precision by label cannot be measured",
                          "train on a labelled dataset (digits, mnist, ..., a folder with one sub-folder per class)")
    check_k(args.k, len(data.test))
    labels = data.labels["test"].to(run.device)
    dim = run.model.latent_dim
    every = {split: torch.arange(len(data.split(split))) for split in ("train", "test")}
    raw = probes.Features(*(probes.pixels(data, data.split(s), every[s], inference.BATCH) for s in every))
    base_name, base = probes.baseline(data, raw, dim, seed=args.seed)  # fit on the train split, as evaluate's
    raw_name = "TF-IDF" if data.kind == "text" else "pixels" if data.images else "raw features"
    raw_test = tfidf(data.transform, raw.test) if data.kind == "text" else raw.test
    features = {f"codes ({dim})": inference.codes(run, data.test, data.max_value),
                f"{raw_name} ({raw.dims})": torch.from_numpy(raw_test),
                f"{base_name}{'' if base_name == 'LSA' else ' of the ' + raw_name} ({base.dims})":
                    torch.from_numpy(base.test)}
    features = {name: f.to(run.device, torch.float32) for name, f in features.items()}
    scores = {name: precision_at_k(f, labels, args.k) for name, f in features.items()}
    counts = torch.bincount(labels).double()
    chance = float((counts * (counts - 1)).sum() / (len(labels) * (len(labels) - 1)))  # a random other item
    rows = [[name, f"{p:.3f}"] for name, p in scores.items()]
    rows.append(["chance (a random other test item)", f"{chance:.3f}"])
    print(f"precision@{args.k} by label, {len(labels)} test items, cosine similarity:")
    print(commands.table(rows, ["representation", f"precision@{args.k}"]))
    out = commands.out_dir(args, run)
    curves = {name: precision_recall(f, labels) for name, f in features.items()}
    plot = out / "search_precision_recall.png"
    plot_precision_recall(curves, chance, plot)
    path = out / f"search_precision_at_{args.k}.json"
    rundir.write_json(path, {"k": args.k, "test_items": len(labels), "precision_at_k": scores, "chance": chance,
                             "precision_recall": curves})
    commands.wrote(path, plot)


FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # of the other items, retrieved


@torch.no_grad()
def precision_recall(features: Tensor, labels: Tensor, chunk: int = 256) -> dict[str, list[float]]:
    """Mean precision and recall by label when each item retrieves its nearest ``f`` of the
    others (cosine similarity), for each ``f`` in ``FRACTIONS`` (at least one item): the curve of
    Hinton & Salakhutdinov (2006), Fig. 4."""
    unit = F.normalize(features.flatten(1), dim=1)
    n = len(unit)
    ranks = sorted({max(1, round(f * (n - 1))) for f in FRACTIONS})
    relevant = (torch.bincount(labels, minlength=int(labels.max()) + 1)[labels] - 1).clamp(min=1).double()
    precision, recall = torch.zeros(len(ranks), dtype=torch.float64), torch.zeros(len(ranks), dtype=torch.float64)
    for start in range(0, n, chunk):
        sims = unit[start : start + chunk] @ unit.T
        rows = torch.arange(sims.shape[0], device=sims.device)
        sims[rows, rows + start] = -torch.inf  # not itself
        order = sims.argsort(dim=1, descending=True)[:, : n - 1]
        hits = (labels[order] == labels[start : start + chunk, None]).cumsum(1).double().cpu()
        for j, r in enumerate(ranks):
            precision[j] += (hits[:, r - 1] / r).sum()
            recall[j] += (hits[:, r - 1] / relevant[start : start + chunk].cpu()).sum()
    return {"fraction": [r / (n - 1) for r in ranks], "precision": (precision / n).tolist(),
            "recall": (recall / n).tolist()}


def plot_precision_recall(curves: dict[str, dict[str, list[float]]], chance: float, path: Path) -> None:
    """Precision against recall, one line per representation, the chance level dotted."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name, c in curves.items():
        ax.plot(c["recall"], c["precision"], marker="o", markersize=3, label=name)
    ax.axhline(chance, linestyle=":", color="grey", label="chance")
    ax.set(xscale="log", xlabel="recall (fraction of same-label items retrieved)", ylabel="precision",
           title="retrieval by cosine similarity, test split", ylim=(0, 1.02))
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


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

