"""``aecli denoise RUN INPUT_DIR OUTPUT_DIR``: the user's own images through the model,
each converted to the model's channels and size (as a folder dataset is read) and written back
as a PNG of the input's own size under the same relative name (``a.jpg`` -> ``a.png``; ``a.jpg.png``
where ``a.png`` is there too), plus a before/after sheet. Files without an image extension are
left out (counted once); image files that cannot be read are named in a warning and skipped.

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
from aecli.config import noise_name
from aecli.data import ImageData
from aecli.errors import ConfigError
from aecli.figures import grid_figure, save_figure
from aecli.store import rundir
from aecli.store.atomic import atomic_write
from aecli.use import commandline as commands
from aecli.use import inference
from aecli.use.trained import TrainedRun

GRID_IMAGES = 8
SHEET_IMAGES = 16  # images on the before/after sheet of a folder


def recipe(args: argparse.Namespace) -> None:
    run = commands.open_run(args)
    if args.synthetic:
        synthetic(run, commands.noise(run, args.noise), args)
    else:
        folder(run, Path(args.input_dir), Path(args.output_dir))


def folder(run: TrainedRun, input_dir: Path, output_dir: Path) -> None:
    """Every readable image under ``input_dir``, denoised, as a PNG of its own size under
    ``output_dir``, and one before/after sheet of the first ``SHEET_IMAGES``."""
    if output_dir.resolve() == input_dir.resolve():
        raise ConfigError("OUTPUT_DIR", f"{output_dir} is INPUT_DIR: the results would replace your images",
                          "pass another folder for the results")
    files = inference.image_files(input_dir, "INPUT_DIR", skip=output_dir)
    kept, images = inference.read_images(files, run.model.input_shape)
    if not kept:
        raise ConfigError("INPUT_DIR", f"no readable image in {input_dir} ({len(files)} image files)",
                          "pass a folder that holds PNG, JPEG, ... images")
    targets = output_names(kept, input_dir, output_dir)
    sheet = output_dir / "denoise_before_after.png"
    if sheet in targets.values():
        sheet = output_dir / "denoise_before_after_sheet.png"
    existing = sum(t.exists() for t in [*targets.values(), sheet])
    with torch.no_grad():
        out = torch.cat([run.model.reconstruct(x, run.recon)
                         for x in inference.float_batches(run, images.to(run.device), 1.0, "denoising")]).cpu()
    sizes = [write_at_size(image, file, targets[file]) for file, image in zip(kept, out)]
    n = min(SHEET_IMAGES, len(kept))
    c, h, w = run.model.input_shape
    save_figure(grid_figure([images[:n], out[:n]], f"{commands.run_title(run)} on {input_dir}: your images as "
                            f"the model takes them ({w}x{h}, {'grey' if c == 1 else 'RGB'}), denoised; the first "
                            f"{n} of {len(kept)}", row_labels=["input", "denoised"],
                            captions=[[f.name[:14] for f in kept[:n]], [""] * n]), sheet)
    resized = sum(s != (w, h) for s in sizes)
    print(f"wrote {len(kept)} images to {output_dir}, each at its input's size"
          + (f" ({resized} resized back from the model's {w}x{h})" if resized else "")
          + f", and the before/after sheet {sheet}"
          + (f"; skipped {len(files) - len(kept)} unreadable file(s), named above" if len(files) > len(kept) else "")
          + (f"; replaced {existing} file(s) already there" if existing else ""))


def output_names(files: list[Path], input_dir: Path, output_dir: Path) -> dict[Path, Path]:
    """Each input's PNG under ``output_dir`` at its relative path: ``a.jpg`` -> ``a.png``, or
    ``a.jpg.png`` where another input has the same stem (``a.png``, which keeps its name): two
    inputs never map to one output."""
    stems: dict[Path, int] = {}
    for f in files:
        stems[f.relative_to(input_dir).with_suffix("")] = stems.get(f.relative_to(input_dir).with_suffix(""), 0) + 1
    out = {}
    for f in files:
        rel = f.relative_to(input_dir)
        alone = stems[rel.with_suffix("")] == 1 or rel.suffix.lower() == ".png"
        out[f] = output_dir / (rel.with_suffix(".png") if alone else f"{rel}.png")
    if len(set(out.values())) < len(out):  # e.g. a.jpg, a.png and a.jpg.png side by side
        raise ConfigError("INPUT_DIR", f"{input_dir} holds files whose results would share one name",
                          "rename the files that differ only in their extension")
    return out


def write_at_size(image: torch.Tensor, source: Path, target: Path) -> tuple[int, int]:
    """``image`` (C, H, W in [0, 1]) as a PNG at ``target``, resized to the size of the image file
    ``source`` (the model works at one size); the size it had."""
    from PIL import Image

    with Image.open(source) as original:
        size = original.size
    array = (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    result = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if result.size != size:
        result = result.resize(size, Image.Resampling.BICUBIC)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda f: result.save(f, format="PNG"))
    return size


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
    named = noise_name(noise)
    stem = f"denoise_synthetic_{named.replace(':', '')}_seed{args.seed}"
    grid, record = out / f"{stem}.png", out / f"{stem}.json"
    rows = grid_rows(run, data, noise, args.seed)
    save_figure(grid_figure(rows, f"{commands.run_title(run)}: the first {len(rows[0])} test images, corrupted "
                            f"with {named} (seed {args.seed}) and denoised; PSNR over the {len(data.test)} test "
                            f"images: noisy {psnr['noisy']:.2f} dB, denoised {psnr['denoised']:.2f} dB",
                            row_labels=["clean", f"corrupted ({named})", "denoised"]), grid)
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

