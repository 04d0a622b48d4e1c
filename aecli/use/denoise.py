"""``aecli denoise RUN INPUT_DIR OUTPUT_DIR``: the user's own images through the model,
each converted to the model's channels and size (as a folder dataset is read) and written back
as a PNG of that size under the same relative name. Files that are no readable image are named
in a warning and skipped.

``aecli denoise RUN --synthetic [--noise binomial:0.5]``: the test split corrupted with
the run's noise (or ``--noise``), denoised; the PSNR of the noisy input and of the model's
output against the clean images, and a clean | noisy | denoised grid.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from aecli import metrics
from aecli.data import ImageData
from aecli.errors import ConfigError
from aecli.images import image_grid, save_png
from aecli.store import rundir
from aecli.use import commandline as commands
from aecli.use import inference
from aecli.use.trained import TrainedRun

GRID_IMAGES = 8


def recipe(args: argparse.Namespace) -> None:
    run = commands.open_run(args)
    if args.synthetic:
        synthetic(run, commands.noise(run, args.noise), args)
    else:
        folder(run, Path(args.input_dir), Path(args.output_dir))


def folder(run: TrainedRun, input_dir: Path, output_dir: Path) -> None:
    """Every readable image under ``input_dir``, denoised, as PNG under ``output_dir``."""
    if output_dir.resolve() == input_dir.resolve():
        raise ConfigError("OUTPUT_DIR", f"{output_dir} is INPUT_DIR: the results would replace your images",
                          "pass another folder for the results")
    files = inference.image_files(input_dir, "INPUT_DIR", skip=output_dir)
    kept, images = inference.read_images(files, run.model.input_shape)
    if not kept:
        raise ConfigError("INPUT_DIR", f"no readable image in {input_dir} ({len(files)} files)",
                          "pass a folder that holds PNG, JPEG, ... images")
    with torch.no_grad():
        out = torch.cat([run.model.reconstruct(x, run.recon)
                         for x in inference.float_batches(run, images.to(run.device), 1.0, "denoising")])
    for file, image in zip(kept, out.cpu()):
        target = output_dir / file.relative_to(input_dir).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        save_png(image, target)
    c, h, w = run.model.input_shape
    print(f"wrote {len(kept)} images ({w}x{h}, {'grey' if c == 1 else 'RGB'}) to {output_dir}"
          + (f"; skipped {len(files) - len(kept)} unreadable file(s), named above" if len(files) > len(kept) else ""))


@torch.no_grad()
def synthetic(run: TrainedRun, noise: Any, args: argparse.Namespace) -> None:
    """PSNR of noisy and denoised test images against the clean ones (``aecli.metrics``, as
    ``aecli.use.evaluate`` measures them), and a grid of the first test images."""
    if not noise.corrupts:
        raise ConfigError("--noise", f"this run trained without noise ({noise!r}), so there is none to apply",
                          "pass the noise to remove: --noise binomial:0.25 or --noise gaussian:0.3")
    data = run.data(args.data_root)
    with inference.seeded(args.seed, run.device):  # the same corruption every time
        measured = metrics.denoising(run.model, data, data.test, run.recon, noise, inference.BATCH)
    with inference.seeded(args.seed, run.device):  # a VAE's loss terms sample z
        clean = metrics.reconstruction(run.model, data, data.test, run.recon, inference.BATCH)["psnr_db"]
    psnr = {"noisy": measured["noisy_input_psnr_db"], "denoised": measured["denoised_psnr_db"],
            "clean input, reconstructed": clean}
    out = commands.out_dir(args, run)
    grid, record = out / "denoise_synthetic.png", out / "denoise_synthetic.json"
    save_png(image_grid(grid_rows(run, data, noise, args.seed)), grid)
    rundir.write_json(record, {"noise": repr(noise), "test_images": len(data.test), "seed": args.seed,
                               "psnr_db": psnr})
    print(f"{noise!r} on the {len(data.test)} test images, PSNR against the clean images:")
    print(commands.table([[name, f"{v:.2f}"] for name, v in psnr.items()], ["images", "PSNR (dB)"]))
    print(f"denoising gains {psnr['denoised'] - psnr['noisy']:+.2f} dB")
    commands.wrote(grid, record)


def grid_rows(run: TrainedRun, data: ImageData, noise: Any, seed: int) -> list[torch.Tensor]:
    """The first GRID_IMAGES test images: clean, corrupted (seeded), denoised."""
    with inference.seeded(seed, run.device):
        clean = data.as_float(inference.pick(data.test, range(min(GRID_IMAGES, len(data.test))), run.device))
        noisy = noise(clean.clone())
    return [clean, noisy, run.model.reconstruct(noisy, run.recon)]

