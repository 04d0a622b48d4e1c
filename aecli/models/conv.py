"""Convolutional autoencoder (``model=conv``): strided Conv2d encoder, ConvTranspose2d decoder."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from aecli.config import ConvAutoencoderConfig
from aecli.models.base import Autoencoder, image_shape

D = ConvAutoencoderConfig()  # the declared defaults, for __init__'s own


class ConvAutoencoder(Autoencoder):
    """Each entry of ``channels`` is a stride-2 3x3 conv (halving height and width) with ReLU;
    a linear layer maps the last feature map to ``latent_dim`` and back. The decoder mirrors
    the encoder and restores the exact sizes of every feature map, so any input size works
    (8x8 digits, 28x28 MNIST, 32x32 CIFAR, odd sizes)."""

    prefers_channels_last = True  # tensor cores want NHWC (CUDA; no gain measured on the CPU)

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int] = tuple(D.channels),
        latent_dim: int = D.latent_dim,
    ) -> None:
        super().__init__(image_shape(input_shape, "model=conv"))
        self.latent_dim = int(latent_dim)
        c_in = self.input_shape[0]
        chans = [c_in, *channels]
        self.down = nn.ModuleList(
            nn.Conv2d(a, b, kernel_size=3, stride=2, padding=1) for a, b in zip(chans[:-1], chans[1:])
        )
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(b, a, kernel_size=3, stride=2, padding=1)
            for a, b in reversed(list(zip(chans[:-1], chans[1:])))
        )
        # Record every feature map's size once, so the decoder can ask ConvTranspose2d for it.
        sizes = [tuple(self.input_shape[1:])]
        with torch.no_grad():
            h = torch.zeros(1, *self.input_shape)
            for conv in self.down:
                h = conv(h)
                sizes.append(tuple(h.shape[-2:]))
        self.sizes = sizes
        self.feature_shape = tuple(h.shape[1:])
        n_feat = math.prod(self.feature_shape)
        self.to_latent = nn.Linear(n_feat, self.latent_dim)
        self.from_latent = nn.Linear(self.latent_dim, n_feat)

    def encode(self, x: Tensor) -> Tensor:
        return self.to_latent(self.features(x).flatten(1))

    def decode(self, z: Tensor) -> Tensor:
        return self.from_features(torch.relu(self.from_latent(z)).view(-1, *self.feature_shape))

    def features(self, x: Tensor) -> Tensor:
        """The last feature map of the encoder's convs, shape (N, *feature_shape)."""
        for conv in self.down:
            x = torch.relu(conv(x))
        return x

    def from_features(self, h: Tensor) -> Tensor:
        """The decoder's convs from a last feature map back to logits shaped like the input."""
        for i, (deconv, size) in enumerate(zip(self.up, self.sizes[-2::-1])):
            h = deconv(h, output_size=size)
            if i < len(self.up) - 1:
                h = torch.relu(h)
        return h
