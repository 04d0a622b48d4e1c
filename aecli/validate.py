"""Range checks on the composed config, run before torch is even imported.

Hydra already rejects unknown groups, options and keys; this catches values of the right type
but the wrong range, with the key and a fix in one message (``ConfigError``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from aecli.errors import ConfigError

# key, test, what the value must be, an example fix. Keys absent from the config are skipped.
RULES: list[tuple[str, Callable[[Any], bool], str, str]] = [
    ("noise.p", lambda v: 0.0 <= v < 1.0, "in [0, 1)", "noise.p=0.25"),
    ("noise.sigma", lambda v: v >= 0.0, ">= 0", "noise.sigma=0.3"),
    ("model.latent_dim", lambda v: v >= 1, ">= 1", "model.latent_dim=16"),
    ("model.beta", lambda v: v >= 0.0, ">= 0", "model.beta=1.0"),
    ("model.pretrain_epochs", lambda v: v >= 0, ">= 0", "model.pretrain_epochs=2"),
    ("trainer.epochs", lambda v: v >= 1, ">= 1", "trainer.epochs=10"),
    ("trainer.batch_size", lambda v: v >= 1, ">= 1", "trainer.batch_size=128"),
    ("trainer.eval_batch_size", lambda v: v >= 1, ">= 1", "trainer.eval_batch_size=1024"),
    ("trainer.log_every_n_steps", lambda v: v >= 1, ">= 1", "trainer.log_every_n_steps=50"),
    ("trainer.grid_images", lambda v: v >= 1, ">= 1", "trainer.grid_images=8"),
    ("trainer.checkpoint_every_n_steps", lambda v: v >= 1, ">= 1 (or null)", "trainer.checkpoint_every_n_steps=500"),
    ("optim.lr", lambda v: v > 0.0, "> 0", "optim.lr=1e-3"),
    ("optim.weight_decay", lambda v: v >= 0.0, ">= 0", "optim.weight_decay=0"),
]

CHOICES: dict[str, tuple] = {
    "trainer.on_nan": ("stop", "skip_batch"),
    "trainer.progress": ("auto", "bar", "log"),
    "trainer.precision": ("32", "bf16", "16"),
    "trainer.compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "trainer.channels_last": ("auto", True, False),
    "trainer.cudnn_benchmark": ("auto", True, False),
    "optim.fused": ("auto", True, False),
}

NUMBER_LISTS = ("model.hidden_dims", "model.channels")


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` for the first out-of-range value."""
    for key, ok, must_be, fix in RULES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"{value!r} is not a number", f"use e.g. {fix}")
        if not ok(value):
            raise ConfigError(key, f"{value} is out of range: it must be {must_be}", f"use e.g. {fix}")
    for key in NUMBER_LISTS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not all(isinstance(v, int) and v >= 1 for v in value):
            raise ConfigError(key, f"{list(value)} must be a list of whole numbers >= 1", f"use e.g. {key}=[256,128]")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if key == "trainer.precision" and value is not None:
            value = str(value)  # 32 and 16 arrive as numbers from YAML and the command line
        if value is not None and value not in allowed:
            raise ConfigError(key, f"{value!r} is not one of {', '.join(map(str, allowed))}",
                              f"use e.g. {key}={allowed[0]}")
    threads = OmegaConf.select(cfg, "trainer.num_threads", default=None)
    if threads not in (None, "auto") and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError("trainer.num_threads", f"{threads!r} is neither auto nor a whole number >= 1",
                          "use trainer.num_threads=auto (cores / jobs running at once) or e.g. trainer.num_threads=4")
    if cfg.get("seed") is not None and not isinstance(cfg.seed, int):
        raise ConfigError("seed", f"{cfg.seed!r} is not a whole number", "use e.g. seed=0")
