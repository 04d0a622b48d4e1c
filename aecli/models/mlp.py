"""Fully-connected autoencoder (``model=ae``; ``model=dae`` is the same network on corrupted inputs)."""
from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from aecli.config import MLPAutoencoderConfig
from aecli.models.base import Autoencoder, mlp

D = MLPAutoencoderConfig()  # the declared defaults, for __init__'s own


class MLPAutoencoder(Autoencoder):
    """``input -> hidden_dims (ReLU) -> latent_dim -> reversed hidden_dims (ReLU) -> input``.

    The code layer is linear; the output is logits (the loss picks the output activation).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden_dims: Sequence[int] = tuple(D.hidden_dims),
        latent_dim: int = D.latent_dim,
        latent_activation: bool = D.latent_activation,
    ) -> None:
        super().__init__(input_shape)
        self.latent_dim = int(latent_dim)
        n_in = math.prod(self.input_shape)
        dims = [n_in, *hidden_dims, self.latent_dim]
        self.encoder = mlp(dims, last_activation=latent_activation)
        self.decoder = mlp(dims[::-1])

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x.flatten(1))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z).view(-1, *self.input_shape)
