"""aecli's entrypoint: ``python -m aecli.train [group=option ...] [key=value ...]``.

Hydra composes ``conf/train.yaml`` with the chosen options of each group (model, noise, loss,
dataset, device, experiment), this module checks the values, and ``aecli.trainer.run`` trains.
torch is imported only inside the task, so ``--help`` and tab completion stay fast.
"""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from aecli.validate import check_config


@hydra.main(version_base="1.3", config_path="pkg://aecli.conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train one configuration; return its final validation loss (the value sweepers minimise)."""
    check_config(cfg)
    from hydra.core.hydra_config import HydraConfig

    from aecli.trainer import run

    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and v is not None}
    return run(cfg, Path(hc.runtime.output_dir), choices)


if __name__ == "__main__":
    main()
