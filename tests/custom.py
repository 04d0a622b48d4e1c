"""A user's own model, noise and loss, as ``model._target_=tests.custom.TinyVAE``,
``noise._target_=tests.custom.SaltNoise`` and ``loss._target_=tests.custom.AbsoluteError`` select
them: each implements aecli's contract (the model core and its capabilities, ``aecli.noise.Noise``,
``aecli.losses.ReconstructionLoss``) and nothing else, and must get what aecli's own get. None
accepts keys it has no use for: a custom class receives only the keys the user gave."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from aecli.models import Autoencoder
from aecli.training.hooks import EpochResult, Hook, Run


class TinyVAE(Autoencoder):
    """A one-layer Gaussian VAE, written from the contract alone: it has a prior (``HasPrior``)
    and a likelihood bound (``HasLikelihoodBound``, the single-sample one: k is ignored)."""

    loss_unit = "per_image"

    def __init__(self, input_shape, latent_dim=4) -> None:
        super().__init__(input_shape)
        self.latent_dim = latent_dim
        n = math.prod(self.input_shape)
        self.enc = nn.Linear(n, 2 * latent_dim)
        self.dec = nn.Linear(latent_dim, n)

    def encode(self, x: Tensor) -> Tensor:
        return self.enc(x.flatten(1)).chunk(2, dim=1)[0]

    def decode(self, z: Tensor) -> Tensor:
        return self.dec(z).view(-1, *self.input_shape)

    def terms(self, x_in, target, recon):
        """Per image: the reconstruction term and the KL term."""
        mu, logvar = self.enc(x_in.flatten(1)).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = recon.elementwise(self.decode(z), target).flatten(1).sum(1)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
        return rec, kl

    def loss(self, x_in, target, recon):
        rec, kl = (t.mean() for t in self.terms(x_in, target, recon))
        return {"loss": rec + kl, "recon": rec, "kl": kl}

    def neg_log_likelihood_bound(self, x, recon, k):
        rec, kl = self.terms(x, x, recon)
        return rec + kl

    def sample_latents(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, self.latent_dim, generator=generator)

    def extra_metrics(self, means, recon):
        return {"neg_elbo_nats_per_image": means["recon"] + means["kl"]} if recon.log_likelihood else {}


class SaltNoise:
    """Sets each value to 1 with probability ``p`` (a noise aecli does not ship)."""

    def __init__(self, p: float = 0.2) -> None:
        self.p = p

    @property
    def level(self) -> float:
        return self.p

    @property
    def corrupts(self) -> bool:
        return self.p > 0

    def __call__(self, x: Tensor) -> Tensor:
        return torch.where(torch.rand_like(x) < self.p, torch.ones_like(x), x)

    def at_level(self, level: float, clip: bool = True) -> SaltNoise:
        return SaltNoise(level)


class AbsoluteError:
    """L1 on a linear output (a loss aecli does not ship)."""

    name = "l1"
    log_likelihood = False
    needs_unit_range = False

    def output(self, logits: Tensor) -> Tensor:
        return logits

    def elementwise(self, logits: Tensor, target: Tensor) -> Tensor:
        return (logits - target).abs()


class CallCounter(Hook):
    """Counts the hook calls it gets and keeps the counts in checkpoints (``state_key``): a hook
    named in the config (``+callbacks.count._target_=tests.custom.CallCounter``) that can be seen
    to fire."""

    state_key = "call_counter"

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def on_fit_start(self, run: Run) -> None:
        self._count("fit_start")

    def on_step_end(self, run: Run, terms: dict[str, Tensor] | None) -> None:
        self._count("step_end")

    def on_epoch_end(self, run: Run, result: EpochResult, val: dict[str, float] | None) -> None:
        self._count("epoch_end")

    def on_fit_end(self, run: Run, metrics: dict[str, Any]) -> None:
        self._count("fit_end")
        metrics["hook_calls"] = dict(self.calls)

    def state_dict(self) -> dict[str, Any]:
        return {"calls": dict(self.calls)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = dict(state["calls"])
