"""``aecli map RUN --method pca|tsne|code``: the test split's codes in 2-D, one dot per
image coloured by its label: PCA (linear), t-SNE (keeps neighbours together), or the codes
themselves (a ``latent_dim=2`` model). A PNG, and the same figure in TensorBoard."""
from __future__ import annotations

import argparse
import textwrap

import numpy as np

from aecli.errors import ConfigError
from aecli.figures import save_figure
from aecli.use import commandline as commands
from aecli.use import inference

FIGSIZE, DPI = (8.0, 6.5), 100  # map_METHOD.png is 800 x 650 pixels
TITLE_CHARS = 80  # a title line that fits the plot's width
AXES = {"pca": "principal component", "tsne": "t-SNE dimension", "code": "code number"}
TITLES = {"pca": "PCA of the codes", "tsne": "t-SNE of the codes", "code": "the codes (latent_dim=2)"}


def recipe(args: argparse.Namespace) -> None:
    run = commands.open_run(args)
    dim = run.model.latent_dim
    if args.method == "code" and dim != 2:
        raise ConfigError("--method", f"code draws the codes themselves: it needs latent_dim=2 (this run's is {dim})",
                          "use --method pca or --method tsne, or train with model.latent_dim=2")
    if dim < 2:
        raise ConfigError("--method", f"a {dim}-number code has no 2-D map", "train with model.latent_dim >= 2")
    data = run.data(args.data_root)
    codes = inference.codes(run, data.test, data.max_value).cpu().numpy()
    with commands.stage(f"{TITLES[args.method]} ({len(codes):,} images)"):
        xy = to_2d(codes, args.method, args.seed)
    labels = data.labels["test"].numpy() if data.labels is not None else None
    fig = scatter(xy, labels, data.classes, f"{commands.run_title(run)}: {TITLES[args.method]}, "
                  f"{len(codes)} test images, one dot each", AXES[args.method])
    out = commands.out_dir(args, run)
    path = out / f"map_{args.method}.png"
    save_figure(fig, path)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(out)) as writer:
        writer.add_figure(f"map/{args.method}", fig, global_step=run.state["step"])  # closes the figure
    commands.wrote(path)


def to_2d(codes: np.ndarray, method: str, seed: int) -> np.ndarray:
    """(N, 2) points for (N, D) codes by scikit-learn's PCA or t-SNE, or the codes as they are."""
    if method == "code":
        return codes
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(codes)
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(codes) - 1) / 3)  # t-SNE needs perplexity < N
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(codes)


def scatter(xy: np.ndarray, labels: np.ndarray | None, classes: list[str] | None, title: str,
            axis: str = "dimension"):
    """A matplotlib figure: one colour per label, with a legend (grey dots without labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=8, c="0.4", alpha=0.8)
    else:
        cmap = plt.get_cmap("tab10" if labels.max() < 10 else "tab20")
        for k in np.unique(labels):
            at = labels == k
            name = commands.class_name(classes, int(k))
            ax.scatter(xy[at, 0], xy[at, 1], s=8, color=cmap(int(k) % cmap.N), alpha=0.8, label=name)
        ax.legend(title="label", loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2, frameon=False)
    ax.set_title("\n".join(textwrap.wrap(title, TITLE_CHARS)))
    ax.set_xlabel(f"{axis} 1")
    ax.set_ylabel(f"{axis} 2")
    return fig

