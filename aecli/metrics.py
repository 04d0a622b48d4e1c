"""Metrics of a model on a split, each one batched pass on the training device: reconstruction
(loss terms, MSE, PSNR; every epoch and in ``metrics.json``), and what ``aecli.use.evaluate`` adds:
SSIM, denoising PSNR, and a VAE's importance-weighted bound on -log p(x)."""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor

from aecli.data import ImageData, ImageFiles, batches
from aecli.losses import ModelsWords, ReconstructionLoss
from aecli.models import Autoencoder, HasLikelihoodBound, MeasuresCodes, likelihood_bound


def psnr_db(mse: float, data_range: float = 1.0) -> float:
    """10 log10(range^2 / mse); inf for a perfect reconstruction, nan for a non-finite mse."""
    if not math.isfinite(mse):
        return math.nan
    return math.inf if mse <= 0.0 else 10.0 * math.log10(data_range**2 / mse)


@torch.no_grad()
def reconstruction(model: Autoencoder, data: ImageData, raw: Tensor | ImageFiles, recon: ReconstructionLoss,
                   batch_size: int) -> dict[str, float]:
    """Mean loss terms on clean inputs (training units: ``loss_<unit>``, ...), per-pixel MSE of
    the reconstruction (``model.reconstruct``: a VAE decodes its mean code), PSNR (dB, data in
    [0, 1]), what ``model.extra_metrics`` derives (a VAE with bce: -ELBO in nats per image), and
    the statistics of the codes of a model that ``MeasuresCodes`` (active units, sparsity, ...).
    The model is put back in training mode afterwards if it was in it."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums: dict[str, Tensor] = {}
    code_sums: dict[str, Tensor] = {}
    squared_error = torch.zeros((), device=device, dtype=torch.float64)
    nats_words = torch.zeros(2, device=device, dtype=torch.float64)  # word models: -log p, words
    for _, b in batches(raw, batch_size, torch.arange(len(raw), device=device)):
        x = data.as_float(b)
        for k, v in model.loss(x, x, recon).items():
            sums[k] = sums[k] + v.double() * x.shape[0] if k in sums else v.double() * x.shape[0]
        squared_error += (model.reconstruct(x, recon) - x).double().pow(2).sum()
        if isinstance(recon, ModelsWords):
            nats_words += torch.stack(recon.nats_per_word(model.decode(model.encode(x)), x)).double()
        if isinstance(model, MeasuresCodes):
            for k, v in model.code_sums(x).items():
                code_sums[k] = code_sums[k] + v.double() if k in code_sums else v.double()
    model.train(was_training)
    n = len(raw)
    means = {k: v.item() / n for k, v in sums.items()}
    out = {f"{k}_{model.loss_unit}": v for k, v in means.items()}
    out["mse_per_pixel"] = squared_error.item() / math.prod(raw.shape[1:]) / n
    out["psnr_db"] = psnr_db(out["mse_per_pixel"])
    if isinstance(recon, ModelsWords):  # the document model's unit: nats per word of the mean code
        out["recon_nats_per_word"] = nats_words[0].item() / max(nats_words[1].item(), 1.0)
        out["perplexity"] = math.exp(min(out["recon_nats_per_word"], 700.0))
    if isinstance(model, HasLikelihoodBound):
        out.update(model.extra_metrics(means, recon))
    if isinstance(model, MeasuresCodes):
        out.update(model.code_metrics(code_sums, n))
    return out


def ssim_sigma(height: int, width: int) -> float:
    """The Gaussian window of SSIM for images this size. Wang et al. (2004) use sigma 1.5 (an
    11x11 window); on smaller images (under 22 px, twice that window) the window shrinks with
    the image: sigma = 1.5 x side / 22, at least 0.3 (a 3x3 window). For the 8x8 digits that is
    sigma 0.55 (a 5x5 window whose weight sits in its central 3x3), about a stroke's width;
    an 11x11 window would see mostly the reflected border."""
    return max(0.3, 1.5 * min(1.0, min(height, width) / 22))


@torch.no_grad()
def ssim(model: Autoencoder, data: ImageData, raw: Tensor | ImageFiles, recon: ReconstructionLoss,
         batch_size: int) -> float:
    """Mean SSIM (torchmetrics' ``structural_similarity_index_measure``, per image, data range
    1) between the images of ``raw`` and their reconstructions; window: ``ssim_sigma``."""
    from torchmetrics.functional.image import (
        structural_similarity_index_measure as ssim_fn,
    )

    device = next(model.parameters()).device
    sigma = ssim_sigma(*data.shape[1:])
    total = torch.zeros((), device=device, dtype=torch.float64)
    # SSIM's window is a one-channel conv2d, which torch's oneDNN path runs 3.5x slower than its
    # native one on the CPU (0.49 vs 0.14 s for 1,024 MNIST-size images, 11x11 window): off here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the flags' notice about Intel GPUs' TF32
        with torch.backends.mkldnn.flags(enabled=False):
            for _, b in batches(raw, batch_size, torch.arange(len(raw), device=device)):
                x = data.as_float(b)
                # a tensor: torchmetrics' stubs add the tuple that return_full_image=True gives
                per_image = cast(Tensor, ssim_fn(model.reconstruct(x, recon), x, sigma=sigma, data_range=1.0,
                                                 reduction="none"))
                total += per_image.double().sum()
    return total.item() / len(raw)


@torch.no_grad()
def denoising(model: Autoencoder, data: ImageData, raw: Tensor | ImageFiles, recon: ReconstructionLoss,
              noise: Callable[[Tensor], Tensor], batch_size: int) -> dict[str, float]:
    """What a denoiser buys: the PSNR (dB) of the corrupted images ``noise(x)`` against the
    clean ones, and of the reconstructions of the corrupted images against the clean ones.
    Draws from torch's global RNG: seed it for the same corruption every time."""
    device = next(model.parameters()).device
    noisy_se = torch.zeros((), device=device, dtype=torch.float64)
    denoised_se = torch.zeros((), device=device, dtype=torch.float64)
    for _, b in batches(raw, batch_size, torch.arange(len(raw), device=device)):
        x = data.as_float(b)
        x_noisy = noise(x.clone())
        noisy_se += (x_noisy - x).double().pow(2).sum()
        denoised_se += (model.reconstruct(x_noisy, recon) - x).double().pow(2).sum()
    n = len(raw) * math.prod(data.shape)
    return {"noisy_input_psnr_db": psnr_db(noisy_se.item() / n), "denoised_psnr_db": psnr_db(denoised_se.item() / n)}


# A call of neg_log_likelihood_bound decodes images x samples at once: at most this many pixels
# (64 MB of float32 per tensor): 262 digits or 21 MNIST images per call with k = 1000.
IW_PIXELS_PER_CALL = 2**24


@torch.no_grad()
def neg_log_likelihood(model: Autoencoder, data: ImageData, raw: Tensor | ImageFiles, recon: ReconstructionLoss,
                       k: int, progress: bool | None = None) -> float | None:
    """The mean of ``model.neg_log_likelihood_bound`` over ``raw`` with ``k`` importance samples
    (nats per image), or None when the model defines no likelihood with ``recon``
    (``aecli.models.likelihood_bound`` says why). ``progress``: a tqdm bar
    (None: only on a terminal). Draws from torch's global RNG."""
    from tqdm.auto import tqdm

    if not isinstance(model, HasLikelihoodBound) or likelihood_bound(model, recon) is not None:
        return None
    device = next(model.parameters()).device
    per_call = max(1, IW_PIXELS_PER_CALL // (k * math.prod(data.shape)))
    total = torch.zeros((), device=device, dtype=torch.float64)
    with tqdm(total=len(raw), desc=f"IW bound, k={k}", unit="img", disable=None if progress is None else not progress,
              leave=False) as bar:
        for _, b in batches(raw, per_call, torch.arange(len(raw), device=device)):
            bound = model.neg_log_likelihood_bound(data.as_float(b), recon, k)
            total += bound.double().sum()
            bar.update(len(b))
    return total.item() / len(raw)
