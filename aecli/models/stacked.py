"""Stacked (denoising) autoencoder (``model=stacked``), greedy layer-wise (Bengio et al. 2007,
Vincent et al. 2010): layer k is first trained as a shallow autoencoder on the codes of the
frozen layers below it, then the whole stack is fine-tuned end to end."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from aecli.config import StackedAutoencoderConfig
from aecli.losses import ReconstructionLoss
from aecli.models.base import Autoencoder, Phase
from aecli.noise import Noise

D = StackedAutoencoderConfig()  # the declared defaults, for __init__'s own


class StackedAutoencoder(Autoencoder):
    """``input -> hidden_dims -> latent_dim`` encoder (ReLU between layers, linear code) and a
    mirrored decoder. ``pretrain_epochs`` epochs per layer; ``pretrain_noise_levels`` optionally
    gives each layer its own noise level (masking p or Gaussian sigma), else the selected
    ``noise`` is used as is."""

    packs = False
    why_no_pack = "its layer-wise pre-training trains another module in each phase"

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden_dims: Sequence[int] = tuple(D.hidden_dims),
        latent_dim: int = D.latent_dim,
        pretrain_epochs: int = D.pretrain_epochs,
        pretrain_noise_levels: Sequence[float] | None = D.pretrain_noise_levels,
    ) -> None:
        super().__init__(input_shape)
        self.latent_dim = int(latent_dim)
        self.pretrain_epochs = int(pretrain_epochs)
        dims = [math.prod(self.input_shape), *hidden_dims, self.latent_dim]
        self.enc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.dec = nn.ModuleList(nn.Linear(b, a) for a, b in zip(dims[:-1], dims[1:]))
        if pretrain_noise_levels is not None and len(pretrain_noise_levels) != len(self.enc):
            raise ValueError(
                f"model.pretrain_noise_levels has {len(pretrain_noise_levels)} entries but the "
                f"stack has {len(self.enc)} layers (hidden_dims + latent_dim)"
            )
        self.pretrain_noise_levels = None if pretrain_noise_levels is None else list(pretrain_noise_levels)

    def encode(self, x: Tensor, depth: int | None = None) -> Tensor:
        """Code after the first ``depth`` layers (all of them by default)."""
        h = x.flatten(1)
        n = len(self.enc)
        for i, layer in enumerate(self.enc[: n if depth is None else depth]):
            h = layer(h)
            if i < n - 1:
                h = torch.relu(h)
        return h

    def decode(self, z: Tensor) -> Tensor:
        h = z
        for i in reversed(range(len(self.dec))):
            h = self.dec[i](h)
            if i > 0:
                h = torch.relu(h)
        return h.view(-1, *self.input_shape)

    def pretraining_stages(self, noise: Noise) -> list[Phase]:
        """The greedy pre-training stages, bottom layer first, each with the noise it trains
        with: ``pretrain_noise_levels[k]`` (else the run's noise level) at layer k; only the
        image layer's Gaussian noise is clipped to [0, 1]."""
        out = []
        for k in range(len(self.enc)):
            level = None if self.pretrain_noise_levels is None else self.pretrain_noise_levels[k]
            stage_noise = noise if level is None and k == 0 else noise.at_level(
                noise.level if level is None else level, clip=(k == 0))
            layer = LayerStage(self, k)
            out.append(Phase(f"pretrain/layer{k}", layer, stage_noise, self.pretrain_epochs, layer.loss_unit,
                             layer.inputs))
        return out


class LayerStage(nn.Module):
    """Layer k of a stack as a shallow autoencoder over the codes of layers < k.

    Only layer k's encoder and decoder are registered here, so an optimizer over
    ``stage.parameters()`` leaves the lower layers frozen.
    """

    loss_unit = "per_unit"

    def __init__(self, stack: StackedAutoencoder, k: int) -> None:
        super().__init__()
        self.k = k
        self.is_top = k == len(stack.enc) - 1
        self.enc = stack.enc[k]
        self.dec = stack.dec[k]
        self._stack = [stack]  # a list, so the stack's parameters are not registered here

    @torch.no_grad()
    def inputs(self, x: Tensor) -> Tensor:
        """What layer k sees: the clean codes of the frozen layers below it."""
        return self._stack[0].encode(x, depth=self.k)

    def loss(self, c_in: Tensor, target: Tensor, recon: ReconstructionLoss) -> dict[str, Tensor]:
        h = self.enc(c_in)
        if not self.is_top:
            h = torch.relu(h)
        out = self.dec(h)
        if self.k == 0:  # the image layer uses the configured reconstruction loss
            return {"loss": recon.elementwise(out, target.flatten(1)).mean()}
        # hidden codes are ReLU outputs, unbounded: squared error, as in the full decoder
        return {"loss": (torch.relu(out) - target).pow(2).mean()}
