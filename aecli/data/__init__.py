"""The data wing: where images come from (``sources``), how files are decoded (``decode``) and
cached (``cache``); tables and documents as vectors (``vectors``). The dataset loaders are the
``_target_`` of the ``dataset`` config group (``aecli.data.load_digits`` ...), so they are named
here. They are looked up on first use (PEP 562), not imported by this package: the wing's modules
import each other, and a package that imported them all would sit in the middle of every such import."""
from importlib import import_module
from typing import Any

_WHERE = {name: "sources" for name in ("ImageData", "ImageFiles", "batches", "keep_classes", "load_digits",
                                       "load_folder", "load_sample_patches", "load_torchvision", "n_classes")}
_WHERE.update({"load_table": "vectors", "load_text": "vectors"})

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'aecli.data' has no attribute {name!r}")
    return getattr(import_module(f"aecli.data.{_WHERE[name]}"), name)
