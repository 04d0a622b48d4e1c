"""The training run behind ``python -m aecli.train``, top to bottom.

setup (device, seed, data, model) -> [stacked: greedy layer-wise pre-training] -> epochs of
training + validation, TensorBoard scalars and image grids, checkpoints -> test metrics,
``metrics.json`` and HParams. Batches are sliced from dataset tensors that live on the training
device; losses are summed on the device and read back only when logged.
"""
from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from aecli.checkpoint import check_fresh_run_dir, save_checkpoint
from aecli.data import ImageData, batches
from aecli.device import resolve_device
from aecli.errors import ConfigError
from aecli.images import image_grid
from aecli.losses import BCELoss, ReconstructionLoss
from aecli.models import VAE, Autoencoder, StackedAutoencoder
from aecli.noise import NoNoise, Noise

log = logging.getLogger("aecli")


def build(cfg: DictConfig, group: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(cfg[group])``, with config mistakes re-worded for the user
    (Hydra's own message hides the cause behind 'see chained exception above')."""
    try:
        return instantiate(cfg[group], **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        target = OmegaConf.select(cfg, f"{group}._target_")
        raise ConfigError(group, f"cannot build {target}: {cause or e}",
                          f"check the keys of conf/{group}/ against {target}'s arguments") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


@dataclass
class Phase:
    """One thing being trained: the whole model, or one layer of a stack during pre-training."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    noise: Noise
    tag: str  # TensorBoard prefix
    unit: str  # the loss's reduction, named in every loss tag
    prepare: Callable[[Tensor], Tensor] | None = None  # clean batch -> what the module sees


def make_optimizer(params, cfg: DictConfig, device: torch.device) -> torch.optim.Optimizer:
    # foreach=True: one multi-tensor kernel per step instead of a Python loop over parameters.
    return torch.optim.Adam(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, foreach=True)


def train_epoch(
    phase: Phase,
    data: ImageData,
    recon: ReconstructionLoss,
    batch_size: int,
    writer: SummaryWriter,
    step: int,
    log_every: int,
    progress: bool,
    desc: str,
) -> tuple[dict[str, float], int, float]:
    """Train ``phase`` for one pass over the training set.

    Returns the epoch's mean loss terms, the global step after it, and images per second.
    """
    from tqdm.auto import tqdm

    module = phase.module
    module.train()
    perm = torch.randperm(len(data.train), device=data.train.device)
    n_batches = math.ceil(len(perm) / batch_size)
    sums: dict[str, Tensor] = {}
    window: dict[str, Tensor] = {}
    seen, window_steps = 0, 0
    bar = tqdm(total=n_batches, desc=desc, leave=False, disable=not progress, file=sys.stderr)
    t0 = time.perf_counter()
    for _, raw in batches(data.train, batch_size, perm):
        x = data.as_float(raw)
        if phase.prepare is not None:
            x = phase.prepare(x)
        terms = module.loss(phase.noise(x), x, recon)
        phase.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        phase.optimizer.step()
        n = x.shape[0]
        for k, v in terms.items():
            v = v.detach()
            sums[k] = sums[k] + v * n if k in sums else v * n
            window[k] = window[k] + v if k in window else v
        seen += n
        step += 1
        window_steps += 1
        if step % log_every == 0:  # the only host-device sync inside an epoch
            values = {k: v.item() / window_steps for k, v in window.items()}
            for k, v in values.items():
                writer.add_scalar(f"{phase.tag}_step/{k}_{phase.unit}", v, step)
            bar.set_postfix(loss=f"{values['loss']:.4g}", img_s=f"{seen / (time.perf_counter() - t0):,.0f}")
            window, window_steps = {}, 0
        bar.update(1)
    means = {k: v.item() / seen for k, v in sums.items()}  # syncs, so the timing below is honest
    elapsed = time.perf_counter() - t0
    bar.close()
    return means, step, seen / elapsed


@torch.no_grad()
def evaluate(model: Autoencoder, data: ImageData, raw: Tensor, recon: ReconstructionLoss,
             batch_size: int) -> dict[str, float]:
    """Mean loss terms (training units), per-pixel MSE of the reconstruction, PSNR (dB, data
    range 1), and for a VAE trained with BCE the negative ELBO in nats per image."""
    model.eval()
    sums: dict[str, Tensor] = {}
    squared_error = torch.zeros((), device=raw.device)
    for start in range(0, len(raw), batch_size):
        x = data.as_float(raw[start : start + batch_size])
        for k, v in model.loss(x, x, recon).items():
            sums[k] = sums[k] + v * x.shape[0] if k in sums else v * x.shape[0]
        # the reconstruction a user means: decode the code (a VAE's mean code, no sampling)
        squared_error += (recon.output(model.decode(model.encode(x))) - x).pow(2).sum()
    model.train()
    n = len(raw)
    unit = model.loss_unit
    out = {f"{k}_{unit}": v.item() / n for k, v in sums.items()}
    mse = squared_error.item() / raw[0].numel() / n
    out["mse_per_pixel"] = mse
    out["psnr_db"] = 10.0 * math.log10(1.0 / max(mse, 1e-12))
    if isinstance(model, VAE) and isinstance(recon, BCELoss):
        out["neg_elbo_nats_per_image"] = out["recon_per_image"] + out["kl_per_image"]
    return out


def hparams_of(cfg: DictConfig, choices: dict[str, str]) -> dict[str, Any]:
    """Flat scalar hyperparameters for TensorBoard's HParams tab."""
    flat: dict[str, Any] = {f"choice/{k}": v for k, v in choices.items()}
    container = OmegaConf.to_container(cfg, resolve=True)

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k != "_target_":
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (bool, int, float, str)):
            flat[prefix] = node
        else:
            flat[prefix] = str(node)

    walk("", {k: container[k] for k in ("model", "noise", "optim", "trainer", "seed") if k in container})
    return flat


def run(cfg: DictConfig, run_dir: Path, choices: dict[str, str] | None = None) -> float:
    """Train as ``cfg`` says, writing everything into ``run_dir``; return the final val loss."""
    run_dir = Path(run_dir)
    check_fresh_run_dir(run_dir, cfg.get("resume"))
    device = resolve_device(cfg.device.name, cfg.device.get("index"))
    if cfg.trainer.get("num_threads"):
        torch.set_num_threads(int(cfg.trainer.num_threads))
    seed_everything(cfg.seed)

    data: ImageData = build(cfg, "dataset")
    recon: ReconstructionLoss = build(cfg, "loss")
    top = float(data.train.max()) / data.max_value
    if isinstance(recon, BCELoss) and top > 1.0:
        raise ConfigError("loss", f"loss=bce needs data in [0, 1], but this dataset reaches {top:.3g}",
                          "use loss=mse, or a dataset whose pixels lie in [0, 1]")
    data = data.to(device)
    model: Autoencoder = build(cfg, "model", input_shape=data.shape).to(device)
    noise: Noise = build(cfg, "noise")
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(run_dir))
    tc = cfg.trainer
    progress = tc.progress == "bar" or (tc.progress == "auto" and sys.stderr.isatty())
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s (%s parameters) on %s; data %s: %d train / %d val / %d test; noise %r; loss %s",
             type(model).__name__, f"{n_params:,}", device, "x".join(map(str, data.shape)),
             len(data.train), len(data.val), len(data.test), noise, recon.name)

    # A fixed validation batch (and its corruption, drawn once) for the image grids.
    grid_clean = data.as_float(data.val[: tc.grid_images])
    grid_noisy = noise(grid_clean.clone())
    prior_z = torch.randn(16, model.latent_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(device) \
        if isinstance(model, VAE) else None

    step = 0
    if isinstance(model, StackedAutoencoder):
        for stage, stage_noise in model.stages(noise):
            phase = Phase(stage, make_optimizer(stage.parameters(), cfg, device), stage_noise,
                          tag=f"pretrain/layer{stage.k}", unit=stage.loss_unit, prepare=stage.inputs)
            for e in range(model.pretrain_epochs):
                means, step, ips = train_epoch(phase, data, recon, tc.batch_size, writer, step,
                                               tc.log_every_n_steps, progress, f"layer {stage.k} ep {e + 1}")
                writer.add_scalar(f"pretrain/layer{stage.k}/loss_{stage.loss_unit}", means["loss"], step)
                log.info("pretrain layer %d/%d epoch %d/%d: loss_%s %.5g (%r), %s img/s", stage.k + 1,
                         len(model.enc), e + 1, model.pretrain_epochs, stage.loss_unit, means["loss"],
                         stage_noise, f"{ips:,.0f}")

    unit = model.loss_unit
    phase = Phase(model, make_optimizer(model.parameters(), cfg, device), noise, tag="train", unit=unit)
    best_val = math.inf
    val: dict[str, float] = {}
    for epoch in range(1, tc.epochs + 1):
        t0 = time.perf_counter()
        means, step, ips = train_epoch(phase, data, recon, tc.batch_size, writer, step,
                                       tc.log_every_n_steps, progress, f"epoch {epoch}/{tc.epochs}")
        val = evaluate(model, data, data.val, recon, tc.eval_batch_size)
        for k, v in means.items():
            writer.add_scalar(f"train/{k}_{unit}", v, epoch)
        for k, v in val.items():
            writer.add_scalar(f"val/{k}", v, epoch)
        writer.add_scalar("perf/images_per_sec", ips, epoch)
        write_images(writer, model, recon, grid_clean, grid_noisy, noise, prior_z, epoch)

        state = {"model": model.state_dict(), "optimizer": phase.optimizer.state_dict(), "epoch": epoch,
                 "step": step, "val": val, "best_val": min(best_val, val[f"loss_{unit}"]),
                 "input_shape": list(data.shape), "config": OmegaConf.to_container(cfg, resolve=True)}
        save_checkpoint(state, ckpt_dir / "last.pt")
        if val[f"loss_{unit}"] < best_val:
            best_val = val[f"loss_{unit}"]
            save_checkpoint(state, ckpt_dir / "best.pt")
        log.info("epoch %d/%d step %d: train loss_%s %.5g | val loss_%s %.5g, psnr %.2f dB | %s img/s, %.1fs",
                 epoch, tc.epochs, step, unit, means["loss"], unit, val[f"loss_{unit}"], val["psnr_db"],
                 f"{ips:,.0f}", time.perf_counter() - t0)

    train_final = evaluate(model, data, data.train, recon, tc.eval_batch_size)
    test = evaluate(model, data, data.test, recon, tc.eval_batch_size)
    metrics = {f"{split}/{k}": v for split, d in (("train", train_final), ("val", val), ("test", test))
               for k, v in d.items()}
    metrics.update({"epochs": tc.epochs, "steps": step, "images_per_sec": ips, "best_val_loss": best_val})
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    writer.add_hparams(hparams_of(cfg, choices or {}),
                       {f"hparam/{k.replace('/', '_')}": v for k, v in metrics.items() if "/" in k},
                       run_name=".", global_step=tc.epochs)
    writer.close()
    log.info("test: %s", ", ".join(f"{k} {v:.5g}" for k, v in test.items()))
    log.info("run dir: %s", run_dir)
    return val[f"loss_{unit}"]


@torch.no_grad()
def write_images(writer: SummaryWriter, model: Autoencoder, recon: ReconstructionLoss, clean: Tensor,
                 noisy: Tensor, noise: Noise, prior_z: Tensor | None, epoch: int) -> None:
    """clean | corrupted (when there is noise) | reconstruction of what the model was fed;
    for a VAE also decoded samples from the prior (the same latent codes every epoch)."""
    model.eval()
    shown = noisy if not isinstance(noise, NoNoise) else clean
    rows = [clean] + ([noisy] if shown is noisy else []) + [recon.output(model.decode(model.encode(shown)))]
    writer.add_image("reconstruction/" + ("clean_corrupted_reconstructed" if shown is noisy
                                          else "clean_reconstructed"), image_grid(rows), epoch)
    if prior_z is not None:
        samples = recon.output(model.decode(prior_z))
        writer.add_image("samples/prior", image_grid([samples[:8], samples[8:]]), epoch)
    model.train()
