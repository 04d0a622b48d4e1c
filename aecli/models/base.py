"""The model contract: what every aecli model is, and what the trainer, the metrics and the
commands that use a trained model ask of it. A custom model (``model._target_=my_pkg.MyAE``)
subclasses ``Autoencoder`` and overrides what applies; the trainer never checks a model's class.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aecli.losses import ReconstructionLoss


def mlp(dims: Sequence[int], last_activation: bool = False) -> nn.Sequential:
    """Linear layers ``dims[0] -> ... -> dims[-1]`` with ReLU between them (and after the last
    one when ``last_activation``)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@dataclass
class Stage:
    """A training phase that a model asks for before its end-to-end training (the greedy
    layer-wise pre-training of a stack): ``module``'s own parameters are trained on
    ``inputs(clean batch)`` corrupted by ``noise``, with ``module.loss``, for ``epochs``."""

    name: str  # TensorBoard prefix, e.g. "pretrain/layer0"
    module: nn.Module  # .loss(x_in, target, recon) -> terms; .parameters(): what is trained
    noise: Callable[[Tensor], Tensor]
    inputs: Callable[[Tensor], Tensor]  # clean batch -> what the module sees (no gradient)
    epochs: int
    unit: str  # the loss's reduction, named in its TensorBoard tags


class Autoencoder(nn.Module):
    """Base class: ``encode`` to a ``latent_dim`` code, ``decode`` to logits shaped like the input.

    ``loss_unit`` names the reduction of the training loss so metrics carry their unit:
    ``per_pixel`` (mean over pixels and batch) or ``per_image`` (sum over pixels, mean over batch).
    ``prefers_channels_last``: NHWC batches are faster for this model on CUDA (conv models).
    """

    loss_unit = "per_pixel"
    prefers_channels_last = False
    latent_dim: int

    def __init__(self, input_shape: Sequence[int]) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)

    def encode(self, x: Tensor) -> Tensor:
        """The code of a batch: deterministic (a VAE's posterior mean), shape (N, latent_dim)."""
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        """Decoder logits for codes; ``recon.output`` turns them into images."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def loss(self, x_in: Tensor, target: Tensor, recon: ReconstructionLoss) -> dict[str, Tensor]:
        """Training loss terms for a batch; ``loss`` is what is minimised."""
        return {"loss": recon.elementwise(self(x_in), target).mean()}

    def reconstruct(self, x: Tensor, recon: ReconstructionLoss) -> Tensor:
        """What a user means by the reconstruction of ``x``: its code, decoded, as an image."""
        return recon.output(self.decode(self.encode(x)))

    def pretraining_stages(self, noise: Callable[[Tensor], Tensor]) -> list[Stage]:
        """Phases to train before the end-to-end phase, in order (none by default)."""
        return []

    def sample_latents(self, n: int, generator: torch.Generator) -> Tensor | None:
        """``n`` codes drawn from the model's prior, to decode into samples; None for a model
        without a prior (a plain autoencoder's codes follow no known distribution)."""
        return None

    def extra_metrics(self, means: dict[str, float], recon: ReconstructionLoss) -> dict[str, float]:
        """Metrics derived from the mean loss terms of an evaluation pass (keys name units)."""
        return {}

    def neg_log_likelihood_bound(self, x: Tensor, recon: ReconstructionLoss, k: int) -> Tensor | None:
        """Per image, an upper bound on -log p(x) in nats from ``k`` importance samples (the
        bound of Burda et al. 2016; ``k = 1`` is the negative ELBO), shape (N,). None: the model
        (or this loss) defines no likelihood, as for every autoencoder without a prior."""
        return None
