"""Image grids as figures a person reads without the README: a title (what, which model and run,
which split or noise), a label left of each row, a caption under each tile, a frame around the
tiles to mark (a query, the real images at the ends of a walk) and, for a grid over a plane,
axes with their values. Tiles are upscaled (nearest neighbour, no blur) to at least ``MIN_TILE``
pixels, so 8x8 digits stay readable.

``grid_figure`` builds a matplotlib ``Figure`` (tests read its texts); ``save_figure`` writes it
as a PNG through ``aecli.store.atomic.atomic_write``. The plain tensor grids that TensorBoard
shows stay ``aecli.images.image_grid``."""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from aecli.images import image_grid
from aecli.store.atomic import atomic_write

MIN_TILE = 64  # pixels a tile side is upscaled to, at least
DPI = 100
PAD = 2  # grey pixels around each tile
FONT = 9  # points; at DPI 100 a line is about 15 px
LINE_PX = 15
TITLE_CHAR_PX = 8  # the widest a title character takes on average at FONT + 1 points (measured: ~7.4)
MARK_COLOUR = "tab:red"


@dataclass(frozen=True)
class Axes:
    """Axes over a grid of decoded codes: each axis's name and the value at each column / row."""

    xlabel: str
    xvalues: Sequence[float]
    ylabel: str
    yvalues: Sequence[float]  # top row first


def tile_scale(h: int, w: int, min_tile: int = MIN_TILE) -> int:
    """The whole-number factor that brings an h x w image to at least ``min_tile`` a side."""
    return max(1, -(-min_tile // min(h, w)))


def grid_figure(rows: Sequence[Tensor], title: str, row_labels: Sequence[str] | None = None,
                captions: Sequence[Sequence[str]] | None = None, marked: Sequence[tuple[int, int]] = (),
                axes: Axes | None = None, min_tile: int = MIN_TILE) -> Any:
    """A figure of equally sized image batches (N, C, H, W) in [0, 1], one batch per row:
    ``title`` on top (wrapped to the width), ``row_labels`` on the left, ``captions[r][i]`` under
    tile i of row r (a few short lines), a frame around each (row, column) in ``marked``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    h, w = rows[0].shape[-2:]
    scale = tile_scale(h, w, min_tile)
    tile_h, tile_w = h * scale + 2 * PAD, w * scale + 2 * PAD
    cap_lines = max((c.count("\n") + 1 for row in captions or [] for c in row), default=0)
    gap = cap_lines * LINE_PX + (6 if cap_lines else 0)
    image = stacked_rows(rows, gap, min_tile)
    img_h, img_w = image.shape[:2]
    left = (max(len(s) for s in row_labels) * 7 + 16) if row_labels else 10
    left = max(left, 70) if axes else left
    wrap = max(30, (img_w + left) // TITLE_CHAR_PX)
    title_lines = textwrap.wrap(title, wrap)
    if len(title_lines) > 3:  # a narrow strip: a wider figure instead of a tall title
        wrap = max(wrap, len(title) // 3 + 10)
        title_lines = textwrap.wrap(title, wrap)
    top = len(title_lines) * (LINE_PX + 3) + 14
    bottom = 80 if axes else 10  # rotated tick values and the axis name
    fig_w = max(img_w + left + 20, max(map(len, title_lines)) * TITLE_CHAR_PX + 20)
    fig_h = img_h + top + bottom
    fig = Figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI)
    ax = fig.add_axes((left / fig_w, bottom / fig_h, img_w / fig_w, img_h / fig_h))
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
    fig.suptitle("\n".join(title_lines), fontsize=FONT + 1, y=1 - 6 / fig_h, va="top")
    step = tile_h + gap
    centres_y = [r * step + tile_h / 2 for r in range(len(rows))]
    centres_x = [i * tile_w + tile_w / 2 for i in range(rows[0].shape[0])]
    if axes is not None:
        ax.set_xticks(centres_x, [f"{v:.2g}" for v in axes.xvalues], fontsize=FONT - 1, rotation=90)
        ax.set_yticks(centres_y, [f"{v:.2g}" for v in axes.yvalues], fontsize=FONT - 1)
        ax.set_xlabel(axes.xlabel, fontsize=FONT)
        ax.set_ylabel(axes.ylabel, fontsize=FONT)
    else:
        ax.set_xticks([])
        ax.set_yticks(centres_y if row_labels else [], list(row_labels or []), fontsize=FONT)
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
    for r, row in enumerate(captions or []):
        for i, text in enumerate(row):
            ax.text(centres_x[i], r * step + tile_h + 3, text, ha="center", va="top", fontsize=FONT - 1,
                    linespacing=1.1)
    for r, i in marked:
        ax.add_patch(Rectangle((i * tile_w, r * step), tile_w - 1, tile_h - 1, fill=False,
                               edgecolor=MARK_COLOUR, linewidth=2.5))
    return fig


def stacked_rows(rows: Sequence[Tensor], gap: int, min_tile: int) -> np.ndarray:
    """The rows' image grids one under the other, ``gap`` white pixels under each (room for the
    captions); (H, W) for grey images, (H, W, C) for colour."""
    strips = []
    for batch in rows:
        grid = image_grid([batch], small=min_tile, upscale_to=min_tile, pad=PAD).permute(1, 2, 0).numpy()
        strips.append(grid)
        if gap:
            strips.append(np.ones((gap, grid.shape[1], grid.shape[2]), dtype=grid.dtype))
    image = np.concatenate(strips)
    return image[..., 0] if image.shape[-1] == 1 else image


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` as a PNG at its own pixel size (no tight cropping), atomically."""
    atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=DPI))


def as_rows(images: Tensor, cols: int | None = None) -> list[Tensor]:
    """Images in a near-square grid of ``cols`` columns (the last row padded with black)."""
    cols = cols or int(np.ceil(np.sqrt(len(images))))
    pad = -len(images) % cols
    images = torch.cat([images, images.new_zeros(pad, *images.shape[1:])])
    return list(images.split(cols))


def texts(fig: Any) -> list[str]:
    """Every text a figure shows (title, tick labels, captions, axis labels): what tests read."""
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [t.get_text() for t in ax.texts]
        out += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        out += [ax.get_xlabel(), ax.get_ylabel(), ax.get_title()]
    return [t for t in out if t]
