"""Convolutional VAE (``model=conv_vae``) for colour images: the AntixK/PyTorch-VAE ``VanillaVAE``
layout (stride-2 convs with BatchNorm and LeakyReLU, ConvTranspose decoder), on aecli's
Gaussian VAE (same loss, prior samples and metrics as ``model=vae``)."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import cast

from torch import Tensor, nn

from aecli.config import ConvVAEConfig, KLSchedule
from aecli.errors import ConfigError
from aecli.models.base import image_shape
from aecli.models.vae import GaussianVAE


def _block(conv: nn.Module, channels: int) -> nn.ModuleList:
    return nn.ModuleList([conv, nn.BatchNorm2d(channels), nn.LeakyReLU()])


D = ConvVAEConfig()  # the declared defaults, for __init__'s own
DEFAULT_CHANNELS = (32, 64, 128, 256)  # channels=None: as many of these as the image size takes


class ConvVAE(GaussianVAE):
    """Each entry of ``channels`` is a stride-2 3x3 conv + BatchNorm + LeakyReLU, halving height
    and width; a linear layer maps the last feature map to the mean and log-variance of
    ``latent_dim`` codes. The decoder mirrors it with stride-2 ConvTranspose layers back to the
    input size (exact for any size, odd ones too), then a 3x3 conv to the image's channels
    (logits). AntixK's 64x64 CelebA setting: ``channels=[32,64,128,256,512]``, ``latent_dim=128``.

    Images must be at least ``2 ** (len(channels) + 1)`` pixels high and wide, so the last
    feature map is at least 2x2: on a 1x1 map BatchNorm has one value per channel and image,
    and a training batch of one image fails. The default (``channels=None``) is the first of
    ``[32, 64, 128, 256]`` that the image size takes: 4 layers from 32 px, 3 for 28 px MNIST.
    """

    prefers_channels_last = True  # tensor cores want NHWC (CUDA)

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int] | None = D.channels,
        latent_dim: int = D.latent_dim,
        beta: float = D.beta,
        kl_schedule: KLSchedule | str = D.kl_schedule,
        kl_warmup_steps: int = D.kl_warmup_steps,
        kl_cycle_steps: int = D.kl_cycle_steps,
        free_bits: float = D.free_bits,
    ) -> None:
        super().__init__(image_shape(input_shape, "model=conv_vae"), latent_dim, beta, kl_schedule, kl_warmup_steps,
                         kl_cycle_steps, free_bits)
        c_in, height, width = self.input_shape
        if channels is None:  # as many of the default layers as the image size takes
            channels = DEFAULT_CHANNELS[:max(1, _layers_that_fit(height, width))]
        _check_size(height, width, len(channels))
        chans = [c_in, *channels]
        self.down = nn.ModuleList(_block(nn.Conv2d(a, b, 3, stride=2, padding=1), b)
                                  for a, b in pairwise(chans))
        self.sizes = [(height, width)]  # every feature map's size, for the decoder to restore
        for _ in channels:
            h, w = self.sizes[-1]
            self.sizes.append(((h + 1) // 2, (w + 1) // 2))
        self.feature_shape = (channels[-1], *self.sizes[-1])
        n_feat = math.prod(self.feature_shape)
        self.to_stats = nn.Linear(n_feat, 2 * self.latent_dim)
        self.from_latent = nn.Linear(self.latent_dim, n_feat)
        # up[i] maps channels[-1-i] back to channels[-2-i]; the last one stays at channels[0]
        outs = [*reversed(channels[:-1]), channels[0]]
        self.up = nn.ModuleList(_block(nn.ConvTranspose2d(a, b, 3, stride=2, padding=1), b)
                                for a, b in zip(reversed(channels), outs))
        self.to_image = nn.Conv2d(channels[0], c_in, 3, padding=1)

    def encode_stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # each item a (conv, norm, act) block; torch's stubs type a ModuleList's items as Module
        for conv, norm, act in cast("Iterable[nn.ModuleList]", self.down):
            x = act(norm(conv(x)))
        mu, logvar = self.to_stats(x.flatten(1)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        h = self.from_latent(z).view(-1, *self.feature_shape)
        for (deconv, norm, act), size in zip(cast("Iterable[nn.ModuleList]", self.up), self.sizes[-2::-1]):
            h = act(norm(deconv(h, output_size=size)))
        return self.to_image(h)


def _check_size(height: int, width: int, layers: int) -> None:
    smallest = 2 ** (layers + 1)
    if min(height, width) >= smallest:
        return
    fits = _layers_that_fit(height, width)
    if fits < 1:
        raise ConfigError("model", f"{height}x{width} images are too small for the conv VAE (4x4 at least)",
                          "use model=vae (an MLP VAE) for such small images, or larger images")
    example = "[" + ",".join(str(32 * 2**i) for i in range(fits)) + "]"
    raise ConfigError("model.channels", f"{layers} stride-2 layers need images of at least {smallest}x{smallest} "
                      f"(the last feature map at least 2x2 for BatchNorm); these are {height}x{width}",
                      f"use at most {fits} layer(s) for {height}x{width} images, e.g. model.channels={example}, "
                      f"or larger images (dataset.image_size={smallest} for a folder)")


def _layers_that_fit(height: int, width: int) -> int:
    """Stride-2 layers that leave a feature map of at least 2x2."""
    return int(math.log2(max(min(height, width), 1))) - 1
