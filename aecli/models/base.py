"""What every aecli model is: an encoder, a decoder, and a loss on (input, target) batches."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from aecli.losses import ReconstructionLoss


def mlp(dims: Sequence[int], last_activation: bool = False) -> nn.Sequential:
    """Linear layers ``dims[0] -> ... -> dims[-1]`` with ReLU between them (and after the last
    one when ``last_activation``)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    """Base class: ``forward(x)`` returns decoder logits shaped like ``x``.

    ``loss_unit`` names the reduction of the training loss so metrics carry their unit:
    ``per_pixel`` (mean over pixels and batch) or ``per_image`` (sum over pixels, mean over batch).
    """

    loss_unit = "per_pixel"

    def __init__(self, input_shape: Sequence[int]) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)

    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def loss(self, x_in: Tensor, target: Tensor, recon: ReconstructionLoss) -> dict[str, Tensor]:
        """Training loss terms for a batch; ``loss`` is what is minimised."""
        return {"loss": recon.elementwise(self(x_in), target).mean()}
