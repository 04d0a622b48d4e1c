"""Reconstruction losses, chosen by the ``loss`` config group.

Models output logits-like tensors shaped like their input. A loss says how those become images
(``output``) and how far they are from the target, per element (``elementwise``); the model
decides the reduction: per-pixel mean (ae, dae, conv, stacked) or per-image sum (vae).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


class MSELoss:
    """Squared error on a linear output."""

    name = "mse"

    def output(self, logits: Tensor) -> Tensor:
        return logits

    def elementwise(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(logits, target, reduction="none")


class BCELoss:
    """Bernoulli cross-entropy on a sigmoid output; targets must lie in [0, 1].

    Computed from logits (``binary_cross_entropy_with_logits``) for numerical stability;
    summed over pixels it is a negative log-likelihood in nats.
    """

    name = "bce"

    def output(self, logits: Tensor) -> Tensor:
        return logits.sigmoid()

    def elementwise(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


ReconstructionLoss = MSELoss | BCELoss
