"""Vector-quantised VAEs (van den Oord et al. 2017): ``model=vqvae`` (MLP: ``codes`` code vectors
per input, any input shape) and ``model=conv_vqvae`` (a code per position of the last feature
map). The encoder's outputs snap to their nearest of ``codebook_size`` learned code vectors;
gradients pass the snap straight through to the encoder."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from aecli.config import ConvVQVAEConfig, VQVAEConfig
from aecli.losses import ReconstructionLoss
from aecli.models.base import Autoencoder, image_shape, mlp
from aecli.models.conv import ConvAutoencoder

DEAD_SHARE = 0.1  # a code used less than this fraction of an even share (rows / codes) restarts
EPS = 1e-5  # the EMA codebook's Laplace smoothing of the counts


def _world_mean(t: Tensor) -> Tensor:
    """``t`` averaged over the ranks of a distributed run (itself otherwise), so every rank
    keeps the same codebook statistics."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


class Quantizer(nn.Module):
    """A codebook of ``size`` x ``dim``: rows snap to their nearest code (squared distance).

    Trained by the codebook loss ||sg(z_e) - e||^2, or with ``ema`` as moving averages (decay
    ``decay``) of the encoder outputs assigned to each code. With ``restarts``, a code whose
    moving-average share of the rows falls below ``DEAD_SHARE`` of an even share is moved to a random encoder output
    of the current batch (global RNG: seeded by the run, saved with it, drawn inside CUDA graphs).
    Every update is in place on buffers (or the codebook parameter) without data-dependent
    branches, so a CUDA graph can replay it; the buffers are part of the model's state."""

    codebook: Tensor  # a parameter, or with ema a buffer
    usage: Tensor
    cluster_size: Tensor
    embed_sum: Tensor

    def __init__(self, size: int, dim: int, ema: bool, decay: float, restarts: bool) -> None:
        super().__init__()
        self.size, self.dim, self.ema, self.decay, self.restarts = size, dim, ema, decay, restarts
        init = torch.empty(size, dim).uniform_(-1.0 / size, 1.0 / size)
        if ema:
            self.register_buffer("codebook", init)
            self.register_buffer("cluster_size", torch.zeros(size))
            self.register_buffer("embed_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("usage", torch.zeros(size))  # moving average of each code's share of the rows

    def indices(self, rows: Tensor) -> Tensor:
        """The nearest code of each row of ``rows`` (M, dim)."""
        with torch.no_grad():
            book = self.codebook.detach()
            dist_sq = rows.detach().pow(2).sum(1, keepdim=True) - 2 * rows.detach() @ book.T + book.pow(2).sum(1)
            return dist_sq.argmin(1)

    def forward(self, rows: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Quantised rows (straight-through gradients), their code indices, and the loss terms."""
        training = self.training and torch.is_grad_enabled()  # a training step (not validation)
        if training and self.restarts:
            self._restart(rows.detach())
        idx = self.indices(rows)
        quantised = self.codebook[idx]
        terms = {"commitment": (rows - quantised.detach()).pow(2).mean()}
        if not self.ema:
            terms["codebook"] = (rows.detach() - quantised).pow(2).mean()
        if training:
            self._update(rows.detach(), idx)
        return rows + (quantised - rows).detach(), idx, terms

    @torch.no_grad()
    def _update(self, rows: Tensor, idx: Tensor) -> None:
        # scatter, not one_hot: one_hot checks the indices' range on the host (a sync no graph captures)
        onehot = rows.new_zeros(rows.shape[0], self.size).scatter_(1, idx.unsqueeze(1), 1.0)
        counts = _world_mean(onehot.sum(0))
        self.usage.mul_(self.decay).add_(counts / rows.shape[0], alpha=1 - self.decay)
        if not self.ema:
            return
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(_world_mean(onehot.T @ rows), alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + EPS) / (n + self.size * EPS) * n
        self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(1))

    @torch.no_grad()
    def _restart(self, rows: Tensor) -> None:
        picks = rows[torch.randint(0, rows.shape[0], (self.size,), device=rows.device)]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(picks, 0)  # every rank restarts to the same codes
        even = 1.0 / self.size
        dead = (self.usage < DEAD_SHARE * even).unsqueeze(1)
        self.codebook.copy_(torch.where(dead, picks, self.codebook))
        # a restarted code gets twice the threshold: unused, it restarts again after ~70 steps (decay 0.99)
        self.usage.copy_(torch.where(dead.squeeze(1), torch.full_like(self.usage, 2 * DEAD_SHARE * even), self.usage))
        if self.ema:
            self.embed_sum.copy_(torch.where(dead, picks, self.embed_sum))
            self.cluster_size.copy_(torch.where(dead.squeeze(1), torch.ones_like(self.usage), self.cluster_size))


class VectorQuantized(Autoencoder):
    """What both VQ-VAEs share: a ``Quantizer``; the subclass maps inputs to rows of code vectors
    (``rows``, (N x codes, code_dim)) and codes back (``decode`` of (N, latent_dim)). The code of an
    input (``encode``) is its quantised vectors, flattened; ``code_indices`` their codebook indices.
    Loss: reconstruction (per pixel) + the codebook loss (not with ``ema``) + ``beta`` x the
    commitment loss ||z_e - sg(e)||^2, both per number of the code vectors."""

    packs = False
    why_no_pack = "its codebook is updated outside autograd (EMA, dead-code restarts) after each batch"

    why_no_prior = ("a VQ-VAE needs a learned prior over its code indices, e.g. a PixelCNN as in van den Oord "
                    "et al. 2017, and aecli does not train one")

    def _init_codebook(self, codebook_size: int, code_dim: int, beta: float, ema: bool, decay: float,
                   restarts: bool) -> None:
        self.beta = float(beta)
        self.code_dim = int(code_dim)
        self.quantizer = Quantizer(int(codebook_size), self.code_dim, bool(ema), float(decay), bool(restarts))

    def rows(self, x: Tensor) -> Tensor:
        """The encoder's outputs for ``x`` as rows of code vectors, (N x codes, code_dim)."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        rows = self.rows(x)
        return self.quantizer.codebook[self.quantizer.indices(rows)].reshape(x.shape[0], -1)

    def code_indices(self, x: Tensor) -> Tensor:
        """The codebook index of each code vector of each input, (N, codes)."""
        return self.quantizer.indices(self.rows(x)).view(x.shape[0], -1)

    def loss(self, x_in: Tensor, target: Tensor, recon: ReconstructionLoss) -> dict[str, Tensor]:
        quantised, _, terms = self.quantizer(self.rows(x_in))
        rec = recon.elementwise(self.decode(quantised.reshape(x_in.shape[0], -1)), target).mean()
        loss = rec + self.beta * terms["commitment"] + terms.get("codebook", 0.0)
        return {"loss": loss, "recon": rec, **terms}

    def code_sums(self, x: Tensor) -> dict[str, Tensor]:
        idx = self.quantizer.indices(self.rows(x))
        return {"counts": torch.bincount(idx, minlength=self.quantizer.size)}

    def code_metrics(self, sums: dict[str, Tensor], n: int) -> dict[str, float]:
        """``codebook_perplexity``: exp of the entropy of the codes' use (K if all are used evenly);
        ``codes_used``: the fraction of the codebook used at least once."""
        p = sums["counts"] / sums["counts"].sum().clamp(min=1)
        entropy = -(p * torch.log(p.clamp(min=1e-12))).sum()
        return {"codebook_perplexity": entropy.exp().item(), "codes_used": (sums["counts"] > 0).double().mean().item()}


D = VQVAEConfig()  # the declared defaults, for __init__'s own


class VQVAE(VectorQuantized):
    """The MLP VQ-VAE: ``input (flattened) -> hidden_dims (ReLU) -> codes x code_dim`` quantised
    vector by vector, then the mirrored decoder; any input shape."""

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden_dims: Sequence[int] = tuple(D.hidden_dims),
        codes: int = D.codes,
        codebook_size: int = D.codebook_size,
        code_dim: int = D.code_dim,
        beta: float = D.beta,
        ema: bool = D.ema,
        decay: float = D.decay,
        restarts: bool = D.restarts,
    ) -> None:
        super().__init__(input_shape)
        self._init_codebook(codebook_size, code_dim, beta, ema, decay, restarts)
        self.latent_dim = int(codes) * self.code_dim
        dims = [math.prod(self.input_shape), *hidden_dims, self.latent_dim]
        self.encoder = mlp(dims)
        self.decoder = mlp(dims[::-1])

    def rows(self, x: Tensor) -> Tensor:
        return self.encoder(x.flatten(1)).reshape(-1, self.code_dim)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z).view(-1, *self.input_shape)


C = ConvVQVAEConfig()


class ConvVQVAE(VectorQuantized, ConvAutoencoder):
    """The conv VQ-VAE: ``model=conv``'s stride-2 convs, a 1x1 conv to ``code_dim`` channels, one
    code per position of the last feature map (latent_dim: positions x code_dim, stored position
    by position), a 1x1 conv back and ``model=conv``'s decoder; any size the conv layout allows."""

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int] = tuple(C.channels),
        codebook_size: int = C.codebook_size,
        code_dim: int = C.code_dim,
        beta: float = C.beta,
        ema: bool = C.ema,
        decay: float = C.decay,
        restarts: bool = C.restarts,
    ) -> None:
        ConvAutoencoder.__init__(self, image_shape(input_shape, "model=conv_vqvae"), channels, latent_dim=1)
        self._init_codebook(codebook_size, code_dim, beta, ema, decay, restarts)
        self.map_size = self.feature_shape[1:]
        self.latent_dim = self.code_dim * math.prod(self.map_size)
        self.to_latent = nn.Conv2d(self.feature_shape[0], self.code_dim, 1)  # type: ignore[assignment]
        self.from_latent = nn.Conv2d(self.code_dim, self.feature_shape[0], 1)  # type: ignore[assignment]

    def rows(self, x: Tensor) -> Tensor:
        return self.to_latent(self.features(x)).permute(0, 2, 3, 1).reshape(-1, self.code_dim)

    def decode(self, z: Tensor) -> Tensor:
        z = z.reshape(-1, *self.map_size, self.code_dim).permute(0, 3, 1, 2)
        return self.from_features(torch.relu(self.from_latent(z)))
