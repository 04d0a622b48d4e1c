"""A user's own model, as ``model._target_=tests.custom.TinyVAE`` selects it: it implements the
model contract (aecli.models.base) and nothing else, and must get what aecli's own models get."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from aecli.models import Autoencoder


class TinyVAE(Autoencoder):
    """A one-layer Gaussian VAE, written from the contract alone."""

    loss_unit = "per_image"

    def __init__(self, input_shape, hidden_dims=(32,), latent_dim=4, latent_activation=False) -> None:
        super().__init__(input_shape)
        self.latent_dim = latent_dim
        n = math.prod(self.input_shape)
        self.enc = nn.Linear(n, 2 * latent_dim)
        self.dec = nn.Linear(latent_dim, n)

    def encode(self, x: Tensor) -> Tensor:
        return self.enc(x.flatten(1)).chunk(2, dim=1)[0]

    def decode(self, z: Tensor) -> Tensor:
        return self.dec(z).view(-1, *self.input_shape)

    def loss(self, x_in, target, recon):
        mu, logvar = self.enc(x_in.flatten(1)).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = recon.elementwise(self.decode(z), target).flatten(1).sum(1).mean()
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
        return {"loss": rec + kl, "recon": rec, "kl": kl}

    def sample_latents(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, self.latent_dim, generator=generator)

    def extra_metrics(self, means, recon):
        return {"neg_elbo_nats_per_image": means["recon"] + means["kl"]} if recon.log_likelihood else {}
