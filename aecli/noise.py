"""Input corruption for denoising training: none, binomial masking, additive Gaussian.

Each noise is a small callable chosen by the ``noise`` config group through ``_target_``.
Noise is applied to batches already on the training device, during training only. A noise has
a ``level`` (p or sigma), ``corrupts`` (whether it changes its input at all) and ``at_level``
(the same kind at another level: a stack's per-layer levels). Only torch's own random ops are
used, so a CUDA graph can capture them. Any class with these members is a ``Noise`` (a
protocol): a user's own, named with ``noise._target_=my_pkg.MyNoise``, trains like these.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # tensor methods only: importing the noises costs no torch import
    from torch import Tensor


@runtime_checkable
class Noise(Protocol):
    """What the trainer and the use commands ask of a noise."""

    @property
    def level(self) -> float:
        """Its strength (p, sigma; 0 for none): what a stack's per-layer levels replace."""

    @property
    def corrupts(self) -> bool:
        """Whether it changes its input at all."""

    def __call__(self, x: Tensor) -> Tensor:
        """``x`` corrupted (a new tensor, or ``x`` itself when it does not corrupt)."""

    def at_level(self, level: float, clip: bool = True) -> Noise:
        """The same kind of noise at ``level``; ``clip``: keep the result in [0, 1] if it can leave it."""


class NoNoise:
    """Identity corruption (plain autoencoder)."""

    level: float = 0.0
    corrupts = False

    def __call__(self, x: Tensor) -> Tensor:
        return x

    def at_level(self, level: float, clip: bool = True) -> NoNoise:
        return self

    def __repr__(self) -> str:
        return "NoNoise()"


class MaskingNoise:
    """Binomial masking noise: each input value is set to 0 with probability ``p``."""

    def __init__(self, p: float = 0.25) -> None:  # defaults: aecli.config's schemas (a test compares)
        self.p = float(p)

    @property
    def level(self) -> float:
        return self.p

    @property
    def corrupts(self) -> bool:
        return self.p > 0.0

    def __call__(self, x: Tensor) -> Tensor:
        if self.p == 0.0:
            return x
        keep = x.new_empty_strided(x.size(), x.stride()).bernoulli_(1.0 - self.p)  # torch.empty_like(x)
        return x * keep

    def at_level(self, level: float, clip: bool = True) -> MaskingNoise:
        """The same noise with masking probability ``level`` (stacked DAE per-layer levels);
        ``clip`` has no effect: masking never leaves the data range."""
        return MaskingNoise(level)

    def __repr__(self) -> str:
        return f"MaskingNoise(p={self.p})"


class GaussianNoise:
    """Additive isotropic Gaussian noise ``x + sigma * N(0, 1)``.

    With ``clip=True`` the result is clamped to the data range [0, 1] (images only: a stacked
    AE's hidden codes are not clipped).
    """

    def __init__(self, sigma: float = 0.3, clip: bool = True) -> None:  # as aecli.config's schema (a test compares)
        self.sigma = float(sigma)
        self.clip = bool(clip)

    @property
    def level(self) -> float:
        return self.sigma

    @property
    def corrupts(self) -> bool:
        return self.sigma > 0.0

    def __call__(self, x: Tensor) -> Tensor:
        if self.sigma == 0.0:
            return x
        noisy = x + self.sigma * x.new_empty_strided(x.size(), x.stride()).normal_()  # torch.randn_like(x)
        return noisy.clamp_(0.0, 1.0) if self.clip else noisy

    def at_level(self, level: float, clip: bool = True) -> GaussianNoise:
        """The same noise with ``sigma=level``; clipping only if this noise clips and ``clip``."""
        return GaussianNoise(level, self.clip and clip)

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma}, clip={self.clip})"

