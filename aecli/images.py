"""Image grids for TensorBoard and PNG files, built with plain tensor ops (torchvision's ``make_grid`` would
cost a 1.3 s import for ten lines of work)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from aecli.store.atomic import atomic_write


def image_grid(rows: list[Tensor], small: int = 28, upscale_to: int = 56, pad: int = 1) -> Tensor:
    """Lay out equally sized image batches (N, C, H, W), one batch per row, as one (C, H', W')
    image in [0, 1]. Images under ``small`` pixels are upscaled (nearest neighbour) to about
    ``upscale_to`` pixels, so 8x8 digits stay readable; a grey border separates the tiles."""
    x = torch.stack([r.detach().float().clamp(0.0, 1.0) for r in rows])  # R, N, C, H, W
    n_rows, n, c, h, w = x.shape
    scale = math.ceil(upscale_to / min(h, w)) if min(h, w) < small else 1
    if scale > 1:
        x = x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    x = F.pad(x, (pad, pad, pad, pad), value=0.5)
    hh, ww = x.shape[-2:]
    return x.permute(2, 0, 3, 1, 4).reshape(c, n_rows * hh, n * ww).cpu()


def save_png(grid: Tensor, path) -> None:
    """Write a (C, H, W) image in [0, 1] (``image_grid``'s output) as an 8-bit PNG file."""
    from PIL import Image

    array = (grid.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    atomic_write(path, lambda f: image.save(f, format="PNG"))
