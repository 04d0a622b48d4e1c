"""``aecli encode RUN [--split test]``: every image's code (a VAE's posterior mean; a VQ-VAE's
quantised vectors and their codebook indices) and label as one ``.npz``, and the same codes in
TensorBoard's projector (label metadata, image sprites), to explore with PCA, t-SNE or UMAP there."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from aecli.data import ImageData
from aecli.models import HasDiscreteCodes
from aecli.store.atomic import atomic_write
from aecli.use import commandline as commands
from aecli.use import inference
from aecli.use.trained import TrainedRun

SPLITS = ("train", "val", "test")
PROJECTOR_MAX = 10_000  # points in the projector: its sprite sheet must stay under 8192 px a side


def recipe(args: argparse.Namespace) -> None:
    run = commands.open_run(args)
    data = run.data(args.data_root)
    names = SPLITS if args.split == "all" else (args.split,)
    codes = torch.cat([inference.codes(run, data.split(s), data.max_value) for s in names]).cpu()
    split = np.concatenate([np.full(len(data.split(s)), s) for s in names])
    index = np.concatenate([np.arange(len(data.split(s))) for s in names])
    arrays = {"codes": codes.numpy(), "split": split, "index": index}
    if isinstance(run.model, HasDiscreteCodes):  # a VQ-VAE: its code is these codebook entries
        arrays["code_indices"] = torch.cat([inference.code_indices(run, data.split(s), data.max_value)
                                            for s in names]).numpy()
    if data.labels is not None:
        arrays["labels"] = torch.cat([data.labels[s] for s in names]).numpy()
    if data.classes is not None:
        arrays["classes"] = np.array(data.classes)
    out = commands.out_dir(args, run)
    path = out / f"codes_{args.split}.npz"
    # mypy matches **arrays against savez's allow_pickle: bool too; each key here names an array
    atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]
    projector(out, run, data, arrays, f"codes_{args.split}")
    step = run.state["step"]
    commands.wrote(path, out / "projector_config.pbtxt")
    # TensorBoard names the projector's folder by the step: say so, or it looks like litter
    print(f"the projector's files (codes, labels, image sprite) are in {out / f'{step:05d}'}/ "
          f"(named by TensorBoard after the checkpoint's step, {step})")
    print(f"{len(codes)} codes of size {codes.shape[1]}; see them with: tensorboard --logdir {out} (PROJECTOR tab)")
    if "code_indices" in arrays:
        print(f"and each code's {arrays['code_indices'].shape[1]} codebook indices (code_indices; the codes are "
              "those codebook rows)")


def projector(out: Path, run: TrainedRun, data: ImageData, arrays: dict[str, np.ndarray], tag: str) -> None:
    """The codes in TensorBoard's projector: label and split per point, each image as its sprite
    (at most ``PROJECTOR_MAX`` points, evenly spread over the splits)."""
    from torch.utils.tensorboard import SummaryWriter

    n = len(arrays["codes"])
    keep = np.linspace(0, n - 1, min(n, PROJECTOR_MAX)).round().astype(int)
    cpu = torch.device("cpu")
    # vectors (a table row, a document) have no picture to show: the points go without sprites
    raw = torch.cat([inference.pick(data.split(s), arrays["index"][keep][arrays["split"][keep] == s], cpu)
                     for s in dict.fromkeys(arrays["split"])]) if data.images else None
    metadata: list[list[str]] | list[str]  # per point: [label, split], or its split alone
    if "labels" in arrays:
        named = arrays["classes"][arrays["labels"]] if "classes" in arrays else arrays["labels"]
        metadata, header = [[str(lab), s] for lab, s in zip(named[keep], arrays["split"][keep])], ["label", "split"]
    else:
        metadata, header = [str(s) for s in arrays["split"][keep]], None
    with SummaryWriter(log_dir=str(out)) as writer:
        writer.add_embedding(torch.from_numpy(arrays["codes"][keep]), metadata=metadata,
                             label_img=None if raw is None else data.as_float(raw),
                             global_step=run.state["step"], tag=tag, metadata_header=header)

