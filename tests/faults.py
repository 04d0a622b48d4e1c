"""Faults that tests plug in through aecli's own ``_target_`` mechanism."""
from __future__ import annotations

import torch
from torch import Tensor


class NaNNoise:
    """Clean inputs, except that the listed calls (1-based) return all-NaN batches."""

    level = 0.0

    def __init__(self, nan_calls: list[int]) -> None:
        self.nan_calls = set(nan_calls)
        self.calls = 0

    def __call__(self, x: Tensor) -> Tensor:
        self.calls += 1
        return torch.full_like(x, float("nan")) if self.calls in self.nan_calls else x

    def at_level(self, level: float, clip: bool = True) -> "NaNNoise":
        return self
