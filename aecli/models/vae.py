"""Variational autoencoders, Kingma & Welling 2014: what every Gaussian VAE shares
(``GaussianVAE``), and the MLP one (``model=vae``). The convolutional one: ``conv_vae.py``."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from aecli.config import VAEConfig
from aecli.losses import ReconstructionLoss
from aecli.models.base import Autoencoder, mlp


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, in nats (closed form)."""
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


class GaussianVAE(Autoencoder):
    """Gaussian encoder q(z|x) = N(mu, diag(exp(logvar))), decoder logits p(x|z), N(0, I) prior.

    Loss per image: reconstruction summed over pixels + ``beta`` x KL (both in nats with
    ``loss=bce``); both terms are returned so they can be logged separately. A subclass gives
    ``encode_stats`` (mean and log-variance) and ``decode``.
    """

    loss_unit = "per_image"

    def __init__(self, input_shape: Sequence[int], latent_dim: int, beta: float) -> None:
        super().__init__(input_shape)
        self.latent_dim = int(latent_dim)
        self.beta = float(beta)

    def encode_stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z|x)."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        return self.encode_stats(x)[0]

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
        return mu + torch.randn_like(mu) * (0.5 * logvar).exp()

    def forward(self, x: Tensor) -> Tensor:
        mu, logvar = self.encode_stats(x)
        return self.decode(self.reparameterize(mu, logvar))

    def loss(self, x_in: Tensor, target: Tensor, recon: ReconstructionLoss) -> dict[str, Tensor]:
        mu, logvar = self.encode_stats(x_in)
        logits = self.decode(self.reparameterize(mu, logvar))
        rec = recon.elementwise(logits, target).flatten(1).sum(1).mean()
        kl = kl_to_standard_normal(mu, logvar).mean()
        return {"loss": rec + self.beta * kl, "recon": rec, "kl": kl}

    def sample_latents(self, n: int, generator: torch.Generator) -> Tensor:
        """Codes from the prior N(0, I)."""
        return torch.randn(n, self.latent_dim, generator=generator)

    def neg_log_likelihood_bound(self, x: Tensor, recon: ReconstructionLoss, k: int) -> Tensor | None:
        """-log of the mean of ``k`` importance weights p(x, z_i) / q(z_i | x), z_i ~ q(z | x):
        an upper bound on -log p(x) in nats per image that tightens as ``k`` grows and is, in
        expectation, never above the negative ELBO (Burda et al. 2016, "Importance Weighted
        Autoencoders", eq. 8 and theorem 1). Needs a likelihood loss (bce); all k samples of
        the batch are decoded at once, so the caller sizes the batch (N x k decoded images)."""
        if not recon.log_likelihood:
            return None
        mu, logvar = self.encode_stats(x)
        eps = torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)
        z = mu + eps * (0.5 * logvar).exp()  # (k, N, latent_dim)
        half_log_2pi = 0.5 * math.log(2 * math.pi)
        log_q = -(0.5 * eps.pow(2) + 0.5 * logvar + half_log_2pi).sum(-1)  # log N(z; mu, sigma)
        log_prior = -(0.5 * z.pow(2) + half_log_2pi).sum(-1)  # log N(z; 0, I)
        logits = self.decode(z.flatten(0, 1))  # (k N, C, H, W)
        target = x.unsqueeze(0).expand(k, *x.shape).flatten(0, 1)
        log_px_z = -recon.elementwise(logits, target).flatten(1).sum(1).view(k, -1)
        log_w = (log_px_z + log_prior - log_q).double()
        return math.log(k) - torch.logsumexp(log_w, dim=0)

    def extra_metrics(self, means: dict[str, float], recon: ReconstructionLoss) -> dict[str, float]:
        """With a likelihood loss (bce) recon + KL is the negative ELBO, in nats per image."""
        if not recon.log_likelihood or "recon" not in means or "kl" not in means:
            return {}
        return {"neg_elbo_nats_per_image": means["recon"] + means["kl"]}


D = VAEConfig()  # the declared defaults, for __init__'s own


class VAE(GaussianVAE):
    """The MLP VAE: ``hidden_dims`` ReLU layers to the mean and log-variance, mirrored back."""

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden_dims: Sequence[int] = tuple(D.hidden_dims),
        latent_dim: int = D.latent_dim,
        beta: float = D.beta,
    ) -> None:
        super().__init__(input_shape, latent_dim, beta)
        n_in = math.prod(self.input_shape)
        self.encoder = mlp([n_in, *hidden_dims], last_activation=True)
        self.to_stats = nn.Linear(hidden_dims[-1] if hidden_dims else n_in, 2 * self.latent_dim)
        self.decoder = mlp([self.latent_dim, *reversed(hidden_dims), n_in])

    def encode_stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.to_stats(self.encoder(x.flatten(1))).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z).view(-1, *self.input_shape)
