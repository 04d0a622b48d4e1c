"""aecli's entrypoint: ``python -m aecli.train [group=option ...] [key=value ...]``.

Hydra composes ``conf/train.yaml`` with the chosen options of each group (model, noise, loss,
dataset, device, experiment), this module checks the values, and ``aecli.trainer.run`` trains.
torch is imported only inside the task, so ``--help`` and tab completion stay fast.
"""
from __future__ import annotations

import math
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from aecli.validate import check_config


def run_dir_of(resume: str | None, default: str) -> str:
    """The dir a run writes into: for ``resume=PATH`` the resumed run's own dir (so it goes on
    where it stopped), else ``default``. The resolver ``aecli_run_dir`` in ``hydra.run.dir``."""
    if resume is None or resume == "auto":
        return default
    p = Path(resume).expanduser()
    if p.suffix == ".pt":
        p = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    return str(p)


OmegaConf.register_new_resolver("aecli_run_dir", run_dir_of, replace=True)


@hydra.main(version_base="1.3", config_path="pkg://aecli.conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train one configuration; return its final validation loss (the value sweepers minimise)."""
    check_config(cfg)
    from hydra.core.hydra_config import HydraConfig

    from aecli.sweep import job_slot
    from aecli.trainer import run

    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and v is not None}
    val_loss = run(cfg, Path(hc.runtime.output_dir), choices, job_slot())
    if not math.isfinite(val_loss):  # a NaN objective would stop an Optuna search: fail this job instead
        raise FloatingPointError(f"the final validation loss is {val_loss}")
    return val_loss


if __name__ == "__main__":
    main()
