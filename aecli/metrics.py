"""Reconstruction metrics of a model on a split: one batched pass on the training device."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from aecli.data import ImageData, batches
from aecli.losses import ReconstructionLoss


def psnr_db(mse: float, data_range: float = 1.0) -> float:
    """10 log10(range^2 / mse); inf for a perfect reconstruction, nan for a non-finite mse."""
    if not math.isfinite(mse):
        return math.nan
    return math.inf if mse <= 0.0 else 10.0 * math.log10(data_range**2 / mse)


@torch.no_grad()
def reconstruction(model: nn.Module, data: ImageData, raw: Tensor, recon: ReconstructionLoss,
                   batch_size: int) -> dict[str, float]:
    """Mean loss terms on clean inputs (training units: ``loss_<unit>``, ...), per-pixel MSE of
    the reconstruction (``model.reconstruct``: a VAE decodes its mean code), PSNR (dB, data in
    [0, 1]), and what ``model.extra_metrics`` derives (a VAE with bce: -ELBO in nats per image).
    The model is put back in training mode afterwards if it was in it."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums: dict[str, Tensor] = {}
    squared_error = torch.zeros((), device=device, dtype=torch.float64)
    for _, b in batches(raw, batch_size, torch.arange(len(raw), device=device)):
        x = data.as_float(b)
        for k, v in model.loss(x, x, recon).items():
            sums[k] = sums[k] + v.double() * x.shape[0] if k in sums else v.double() * x.shape[0]
        squared_error += (model.reconstruct(x, recon) - x).double().pow(2).sum()
    model.train(was_training)
    n = len(raw)
    means = {k: v.item() / n for k, v in sums.items()}
    out = {f"{k}_{model.loss_unit}": v for k, v in means.items()}
    out["mse_per_pixel"] = squared_error.item() / math.prod(raw.shape[1:]) / n
    out["psnr_db"] = psnr_db(out["mse_per_pixel"])
    out.update(model.extra_metrics(means, recon))
    return out
