"""Contractive autoencoder (``model=contractive``, Rifai et al. 2011): the MLP autoencoder with
sigmoid codes, penalised by the squared Frobenius norm of the encoder's Jacobian, so the code
moves little when the input moves off the data."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from aecli.config import ContractiveAutoencoderConfig
from aecli.losses import ReconstructionLoss
from aecli.models.base import Autoencoder, mlp

D = ContractiveAutoencoderConfig()  # the declared defaults, for __init__'s own
METRIC_PROJECTIONS = 16  # random projections per image of the reported norm (deeper encoders)


class ContractiveAutoencoder(Autoencoder):
    """``input -> hidden_dims (ReLU) -> latent_dim (sigmoid) -> mirrored decoder``. Loss:
    reconstruction (per pixel) + ``contraction_weight`` x ||d code / d input||_F^2 per image.

    With one encoder layer (``hidden_dims=[]``) the norm has a closed form, sum_j (h_j (1 -
    h_j))^2 ||W_j||^2; deeper encoders use an unbiased estimate, E_u ||u^T J||^2 over standard
    normal ``u`` in code space (a vector-Jacobian product, ``torch.func.vjp``), averaged over
    ``projections`` draws per image."""

    pack_scalars = ("contraction_weight",)

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden_dims: Sequence[int] = tuple(D.hidden_dims),
        latent_dim: int = D.latent_dim,
        contraction_weight: float = D.contraction_weight,
        projections: int = D.projections,
    ) -> None:
        super().__init__(input_shape)
        self.latent_dim = int(latent_dim)
        self.contraction_weight, self.projections = float(contraction_weight), int(projections)
        dims = [math.prod(self.input_shape), *hidden_dims, self.latent_dim]
        self.encoder = mlp(dims)
        self.decoder = mlp(dims[::-1])

    def encode(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.encoder(x.flatten(1)))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z).view(-1, *self.input_shape)

    def jacobian_norm_sq(self, x: Tensor, projections: int | None = None) -> tuple[Tensor, Tensor]:
        """The code of ``x`` and ||d code / d x||_F^2 per image (N,): exact for one layer, else
        the random-projection estimate over ``projections`` draws (default: the model's)."""
        if len(self.encoder) == 1:
            h = self.encode(x)
            first = self.encoder[0]
            assert isinstance(first, nn.Linear)  # mlp's one layer
            w_sq = first.weight.pow(2).sum(1)  # ||W_j||^2 per code unit
            return h, (h * (1 - h)).pow(2) @ w_sq
        with torch.enable_grad():  # also under no_grad (validation): the estimate needs the vjp
            # two values without has_aux: torch annotates vjp with both shapes, not overloaded on has_aux
            h, pullback = cast("tuple[Tensor, Callable[..., tuple[Tensor]]]", torch.func.vjp(self.encode, x))
            total = x.new_zeros(x.shape[0])
            for _ in range(projections or self.projections):
                (g,) = pullback(self.draw_normal(h))
                total = total + g.flatten(1).pow(2).sum(1)
        return h, total / (projections or self.projections)

    def loss(self, x_in: Tensor, target: Tensor, recon: ReconstructionLoss) -> dict[str, Tensor]:
        code, norm_sq = self.jacobian_norm_sq(x_in)
        rec = recon.elementwise(self.decode(code), target).mean()
        contraction = norm_sq.mean()
        return {"loss": rec + self.contraction_weight * contraction, "recon": rec, "contraction": contraction}

    def code_sums(self, x: Tensor) -> dict[str, Tensor]:
        return {"jacobian": self.jacobian_norm_sq(x, METRIC_PROJECTIONS)[1].detach().sum()}

    def code_metrics(self, sums: dict[str, Tensor], n: int) -> dict[str, float]:
        """``jacobian_frobenius_sq``: the mean ||d code / d input||_F^2 per image."""
        return {"jacobian_frobenius_sq": sums["jacobian"].item() / n}


def exact_jacobian_norm_sq(encode: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """||d encode / d x||_F^2 per image from the full Jacobian (small models: tests, comparisons)."""
    def one(xi: Tensor) -> Tensor:
        return encode(xi.unsqueeze(0)).squeeze(0)

    jac = torch.func.vmap(torch.func.jacrev(one))(x)
    return jac.flatten(1).pow(2).sum(1)
