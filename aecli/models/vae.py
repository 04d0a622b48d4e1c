"""Variational autoencoders, Kingma & Welling 2014: what every Gaussian VAE shares
(``GaussianVAE``), and the MLP one (``model=vae``). The convolutional one: ``conv_vae.py``."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from aecli.config import KLSchedule, VAEConfig
from aecli.losses import ReconstructionLoss
from aecli.models.base import Autoencoder, mlp


def kl_per_unit(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) of each code unit, in nats (closed form), shape of ``mu``."""
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, in nats (closed form)."""
    return kl_per_unit(mu, logvar).sum(dim=1)


class GaussianVAE(Autoencoder):
    """Gaussian encoder q(z|x) = N(mu, diag(exp(logvar))), decoder logits p(x|z), N(0, I) prior.

    Loss per image: reconstruction summed over pixels + ``beta`` x KL (both in nats with
    ``loss=bce``); both terms are returned so they can be logged separately. A subclass gives
    ``encode_stats`` (mean and log-variance) and ``decode``.

    Against posterior collapse: the KL's weight can follow ``kl_schedule`` over the training
    steps (a linear warm-up, or cyclical: the warm-up again every ``kl_cycle_steps``), and
    ``free_bits`` nats per code unit (the batch's mean KL of each unit) cost nothing. The step
    count is a buffer (``kl_steps``) the loss advances when it trains, so the schedule runs
    inside a CUDA graph and a resumed run continues it exactly; ``code_metrics`` reports the
    active units (Burda et al. 2016), the units whose posterior mean varies with x.
    """

    loss_unit = "per_image"
    kl_steps: Tensor  # a buffer: the training steps taken
    ACTIVE_UNIT_VARIANCE = 0.01  # Burda et al. 2016: Cov_x(E_q[z_u]) above this makes unit u active
    pack_scalars = ("beta", "kl_warmup_steps", "kl_cycle_steps")

    def __init__(self, input_shape: Sequence[int], latent_dim: int, beta: float,
                 kl_schedule: KLSchedule | str = KLSchedule.constant, kl_warmup_steps: int = 1000,
                 kl_cycle_steps: int = 4000, free_bits: float = 0.0) -> None:
        super().__init__(input_shape)
        self.latent_dim = int(latent_dim)
        self.beta = float(beta)
        self.kl_schedule = KLSchedule(getattr(kl_schedule, "value", kl_schedule))
        self.kl_warmup_steps, self.kl_cycle_steps = int(kl_warmup_steps), int(kl_cycle_steps)
        self.free_bits = float(free_bits)
        self.register_buffer("kl_steps", torch.zeros((), dtype=torch.long))  # training steps taken

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        # checkpoints written before the KL schedule have no step count: they start at 0
        state_dict.setdefault(prefix + "kl_steps", torch.zeros((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def kl_weight(self) -> Tensor | float:
        """The KL's weight at the current step: ``beta``, or beta times the schedule's ramp while
        training (validation and evaluation measure the loss with the full ``beta``, so epochs
        compare)."""
        if self.kl_schedule is KLSchedule.constant or not self.training:
            return self.beta
        t = self.kl_steps.float()  # (the lengths: ints, or a packed member's float tensors; the same quotient)
        if self.kl_schedule is KLSchedule.cyclical:
            t = torch.remainder(t, self.kl_cycle_steps)  # the step within its cycle
        return self.beta * torch.clamp(t / self.kl_warmup_steps, max=1.0)

    def encode_stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z|x)."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        return self.encode_stats(x)[0]

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        return mu + self.draw_normal(mu) * (0.5 * logvar).exp()

    def forward(self, x: Tensor) -> Tensor:
        mu, logvar = self.encode_stats(x)
        return self.decode(self.reparameterize(mu, logvar))

    def loss(self, x_in: Tensor, target: Tensor, recon: ReconstructionLoss) -> dict[str, Tensor]:
        mu, logvar = self.encode_stats(x_in)
        logits = self.decode(self.reparameterize(mu, logvar))
        rec = recon.elementwise(logits, target).flatten(1).sum(1).mean()
        kl_units = kl_per_unit(mu, logvar).mean(0)  # the batch's mean KL of each code unit
        kl = kl_units.sum()
        penalty = kl_units.clamp(min=self.free_bits).sum() if self.free_bits > 0 else kl
        weight = self.kl_weight()
        if self.training and torch.is_grad_enabled():  # a training step (not validation, nor a probe)
            self.kl_steps.add_(1)
        terms = {"loss": rec + weight * penalty, "recon": rec, "kl": kl}
        if self.kl_schedule is not KLSchedule.constant and self.training:
            terms["kl_weight"] = torch.as_tensor(weight, device=kl.device).detach()
        return terms

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

    def code_sums(self, x: Tensor) -> dict[str, Tensor]:
        """Sums of the posterior means and their squares, per unit (for their variance over x)."""
        mu = self.encode(x).double()
        return {"mu": mu.sum(0), "mu_sq": mu.pow(2).sum(0)}

    def code_metrics(self, sums: dict[str, Tensor], n: int) -> dict[str, float]:
        """``active_units``: how many units' posterior mean varies over x by more than 0.01."""
        variance = sums["mu_sq"] / n - (sums["mu"] / n).pow(2)
        return {"active_units": float((variance > self.ACTIVE_UNIT_VARIANCE).sum().item())}


D = VAEConfig()  # the declared defaults, for __init__'s own


class VAE(GaussianVAE):
    """The MLP VAE: ``hidden_dims`` ReLU layers to the mean and log-variance, mirrored back."""

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden_dims: Sequence[int] = tuple(D.hidden_dims),
        latent_dim: int = D.latent_dim,
        beta: float = D.beta,
        kl_schedule: KLSchedule | str = D.kl_schedule,
        kl_warmup_steps: int = D.kl_warmup_steps,
        kl_cycle_steps: int = D.kl_cycle_steps,
        free_bits: float = D.free_bits,
    ) -> None:
        super().__init__(input_shape, latent_dim, beta, kl_schedule, kl_warmup_steps, kl_cycle_steps, free_bits)
        n_in = math.prod(self.input_shape)
        self.encoder = mlp([n_in, *hidden_dims], last_activation=True)
        self.to_stats = nn.Linear(hidden_dims[-1] if hidden_dims else n_in, 2 * self.latent_dim)
        self.decoder = mlp([self.latent_dim, *reversed(hidden_dims), n_in])

    def encode_stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.to_stats(self.encoder(x.flatten(1))).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z).view(-1, *self.input_shape)
