"""Picking the training device from the ``device`` config group."""
from __future__ import annotations

import torch

from aecli.errors import ConfigError


def resolve_device(name: str, index: int | None = None, flag: str | None = None) -> torch.device:
    """``auto`` takes CUDA, then MPS, then the CPU; ``cuda``/``mps`` must be available. A refusal
    names the config key ``device`` (training), or ``flag`` (a command's ``--device``)."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    key, said = (flag, f"{flag} {name}") if flag else ("device", f"device={name}")
    use = (lambda value: f"use {flag} {value}") if flag else (lambda value: f"use device={value}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(key, f"{said} but no CUDA GPU is usable (torch {torch.__version__}, {build})",
                          f"{use('cpu')} (or {use('auto')[4:]} to take a GPU only when there is one)")
    if name == "mps" and not mps_ok:
        raise ConfigError(key, f"{said} but Apple's MPS backend is not available here",
                          f"{use('cpu')} (or {use('auto')[4:]})")
    if name == "cuda" and index is not None:
        if not 0 <= index < torch.cuda.device_count():
            raise ConfigError("device.index", f"GPU {index} does not exist ({torch.cuda.device_count()} visible)",
                              f"use device.index between 0 and {torch.cuda.device_count() - 1}")
        return torch.device("cuda", index)
    return torch.device(name)
