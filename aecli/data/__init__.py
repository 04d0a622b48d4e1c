"""The data wing: where images come from (``sources``), how files are decoded (``decode``) and
cached (``cache``); tables and documents as vectors (``vectors``). The dataset loaders are the
``_target_`` of the ``dataset`` config group (``aecli.data.load_digits`` ...), so they are named here."""
from aecli.data.sources import (
    ImageData,
    ImageFiles,
    batches,
    keep_classes,
    load_digits,
    load_folder,
    load_sample_patches,
    load_torchvision,
    n_classes,
)
from aecli.data.vectors import load_table, load_text

__all__ = ["ImageData", "ImageFiles", "batches", "keep_classes", "load_digits", "load_folder",
           "load_sample_patches", "load_table", "load_text", "load_torchvision", "n_classes"]
