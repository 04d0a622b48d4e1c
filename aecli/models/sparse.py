"""Sparse autoencoder (``model=sparse``): the MLP autoencoder with a penalty that keeps most code
units near zero for each input: an L1 penalty on ReLU codes, or (``sparsity=kl``) Ng's KL
sparsity target on sigmoid codes, KL(rho || mean activation of each unit over the batch)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from aecli.config import SparseAutoencoderConfig, Sparsity
from aecli.losses import ReconstructionLoss
from aecli.models.base import Autoencoder, mlp

D = SparseAutoencoderConfig()  # the declared defaults, for __init__'s own
NEAR_ZERO = 0.01  # a code unit below this counts as silent (the near_zero_fraction metric)


def bernoulli_kl(rho: float, rho_hat: Tensor) -> Tensor:
    """KL(Bernoulli(rho) || Bernoulli(rho_hat)) elementwise, in nats (``rho_hat`` kept off 0 and 1)."""
    rho_hat = rho_hat.clamp(1e-6, 1 - 1e-6)
    return rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))


class SparseAutoencoder(Autoencoder):
    """``input -> hidden_dims (ReLU) -> latent_dim code -> mirrored decoder``; the code is ReLU
    (``l1``) or sigmoid (``kl``). Loss: reconstruction + ``sparsity_weight`` x the penalty's mean
    over code units (l1: mean |code|; kl: KL(target || the unit's mean activation))."""

    pack_scalars = ("sparsity_weight", "target")

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden_dims: Sequence[int] = tuple(D.hidden_dims),
        latent_dim: int = D.latent_dim,
        sparsity: Sparsity | str = D.sparsity,
        sparsity_weight: float = D.sparsity_weight,
        target: float = D.target,
    ) -> None:
        super().__init__(input_shape)
        self.latent_dim = int(latent_dim)
        self.sparsity = Sparsity(getattr(sparsity, "value", sparsity))
        self.sparsity_weight, self.target = float(sparsity_weight), float(target)
        dims = [math.prod(self.input_shape), *hidden_dims, self.latent_dim]
        self.encoder = mlp(dims)
        self.code_activation = nn.ReLU() if self.sparsity is Sparsity.l1 else nn.Sigmoid()
        self.decoder = mlp(dims[::-1])

    def encode(self, x: Tensor) -> Tensor:
        return self.code_activation(self.encoder(x.flatten(1)))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z).view(-1, *self.input_shape)

    def penalty(self, code: Tensor) -> Tensor:
        """The sparsity penalty of a batch's codes, a mean over code units."""
        if self.sparsity is Sparsity.l1:
            return code.abs().mean()
        return bernoulli_kl(self.target, code.mean(0)).mean()

    def loss(self, x_in: Tensor, target: Tensor, recon: ReconstructionLoss) -> dict[str, Tensor]:
        code = self.encode(x_in)
        rec = recon.elementwise(self.decode(code), target).mean()
        sparsity = self.penalty(code)
        return {"loss": rec + self.sparsity_weight * sparsity, "recon": rec, "sparsity": sparsity}

    def code_sums(self, x: Tensor) -> dict[str, Tensor]:
        code = self.encode(x)
        return {"activation": code.mean(1).sum(), "near_zero": (code.abs() < NEAR_ZERO).float().mean(1).sum()}

    def code_metrics(self, sums: dict[str, Tensor], n: int) -> dict[str, float]:
        """``mean_activation`` of the code units, and the ``near_zero_fraction`` of them below 0.01."""
        return {"mean_activation": sums["activation"].item() / n, "near_zero_fraction": sums["near_zero"].item() / n}
