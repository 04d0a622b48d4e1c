"""The model contract: what every aecli model is, and what the trainer, the metrics and the
commands that use a trained model ask of it. A custom model (``model._target_=my_pkg.MyAE``)
subclasses ``Autoencoder`` (the core: ``encode``, ``decode``, ``loss``, ``latent_dim``,
``loss_unit``, ``reconstruct``) and adds the capabilities that apply, each a protocol callers
ask with ``isinstance``: ``HasPrior``, ``HasLikelihoodBound``, ``PretrainsInStages``. Nothing
probes a model by calling it; the trainer never checks a model's class.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from aecli.errors import ConfigError
from aecli.losses import ReconstructionLoss
from aecli.noise import Noise


def mlp(dims: Sequence[int], last_activation: bool = False) -> nn.Sequential:
    """Linear layers ``dims[0] -> ... -> dims[-1]`` with ReLU between them (and after the last
    one when ``last_activation``)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def image_shape(input_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    """``input_shape`` as (channels, height, width); a model that needs images refuses vectors
    (tables, documents: ``(D,)``) with this one message."""
    if len(input_shape) != 3:
        raise ConfigError("model", f"{model} needs images (channels, height, width), but this dataset's items "
                          f"are vectors of {input_shape[0] if input_shape else 0} features",
                          "use model=ae, model=dae, model=vae, model=stacked, model=sparse, model=contractive or "
                          "model=vqvae for tables and text")
    c, h, w = (int(s) for s in input_shape)
    return c, h, w


@dataclass
class Phase:
    """One thing being trained: the whole model (the main phase), or a stage a model asks for
    before its end-to-end training (``PretrainsInStages``: the greedy layer-wise pre-training of
    a stack). ``module``'s own parameters are trained on ``inputs(clean batch)`` corrupted by
    ``noise``, with ``module.loss``, for ``epochs``; the trainer gives it its ``optimizer``."""

    name: str  # TensorBoard prefix: "train", "pretrain/layer0"
    module: nn.Module  # .loss(x_in, target, recon) -> terms; .parameters(): what is trained
    noise: Callable[[Tensor], Tensor]
    epochs: int
    unit: str  # the loss's reduction, named in every loss tag
    inputs: Callable[[Tensor], Tensor] | None = None  # clean batch -> what the module sees (no gradient)
    main: bool = False  # validated, imaged, best-checkpointed (the end-to-end phase)
    optimizer: torch.optim.Optimizer | None = None  # set by the trainer


class Autoencoder(nn.Module):
    """Base class: ``encode`` to a ``latent_dim`` code, ``decode`` to logits shaped like the input.

    ``loss_unit`` names the reduction of the training loss so metrics carry their unit:
    ``per_pixel`` (mean over pixels and batch) or ``per_image`` (sum over pixels, mean over batch).
    ``prefers_channels_last``: NHWC batches are faster for this model on CUDA (conv models).
    ``why_no_prior``: what ``aecli sample`` says where the model has no prior.
    ``packs``: copies of the model can train side by side as one batched model (a packed sweep,
    ``hydra/launcher=packed``: ``torch.func.vmap`` over the members); ``why_no_pack`` says why not.
    ``pack_scalars``: float attributes, named as the model's config keys, in which the members of
    one pack may differ (each member's value reaches its copy as a tensor).
    """

    loss_unit = "per_pixel"
    prefers_channels_last = False
    latent_dim: int
    # why there are no prior samples (a model with a prior is ``HasPrior``): for the message
    why_no_prior = "an autoencoder's codes follow no known distribution"
    packs: ClassVar[bool] = True
    why_no_pack: ClassVar[str] = ""
    pack_scalars: ClassVar[tuple[str, ...]] = ()

    def __init__(self, input_shape: Sequence[int]) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)

    def encode(self, x: Tensor) -> Tensor:
        """The code of a batch: deterministic (a VAE's posterior mean), shape (N, latent_dim)."""
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        """Decoder logits for codes; ``recon.output`` turns them into images."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def loss(self, x_in: Tensor, target: Tensor, recon: ReconstructionLoss) -> dict[str, Tensor]:
        """Training loss terms for a batch; ``loss`` is what is minimised."""
        return {"loss": recon.elementwise(self(x_in), target).mean()}

    def draw_normal(self, like: Tensor) -> Tensor:
        """N(0, 1) numbers shaped like ``like``: the one place a model's training loss draws random
        numbers, so a packed sweep can hand each member the draws its own run would make."""
        return torch.randn_like(like)

    def reconstruct(self, x: Tensor, recon: ReconstructionLoss) -> Tensor:
        """What a user means by the reconstruction of ``x``: its code, decoded, as an image."""
        return recon.output(self.decode(self.encode(x)))



# --- capabilities: a model declares one by having its members; callers ask isinstance ------

@runtime_checkable
class HasPrior(Protocol):
    """A model with a prior over its codes: samples are decoded prior draws."""

    def sample_latents(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` codes drawn from the prior, shape (n, latent_dim), on the CPU."""


@runtime_checkable
class HasLikelihoodBound(Protocol):
    """A model that bounds -log p(x) (a VAE). The bound is a likelihood only with a loss that is
    one (``needs_likelihood_loss``: the loss's ``log_likelihood``)."""

    def neg_log_likelihood_bound(self, x: Tensor, recon: ReconstructionLoss, k: int) -> Tensor:
        """Per image, an upper bound on -log p(x) in nats from ``k`` importance samples (the
        bound of Burda et al. 2016; ``k = 1`` is the negative ELBO), shape (N,)."""

    def extra_metrics(self, means: dict[str, float], recon: ReconstructionLoss) -> dict[str, float]:
        """Metrics derived from the mean loss terms of an evaluation pass (keys name units; a
        VAE with bce: -ELBO in nats per image)."""


@runtime_checkable
class MeasuresCodes(Protocol):
    """A model with statistics of its codes worth watching (sparsity, a Jacobian's norm, codebook
    use, a VAE's active units): gathered over a split batch by batch, reported with the
    reconstruction metrics (``val/...`` every epoch, ``test/...`` in evaluate)."""

    def code_sums(self, x: Tensor) -> dict[str, Tensor]:
        """Sums over the batch ``x`` (tensors of any shape) that add up across batches."""

    def code_metrics(self, sums: dict[str, Tensor], n: int) -> dict[str, float]:
        """The metrics from the sums of ``code_sums`` over ``n`` images."""


@runtime_checkable
class HasDiscreteCodes(Protocol):
    """A model whose code is made of codebook entries (a VQ-VAE): ``encode`` gives their vectors,
    this their indices."""

    def code_indices(self, x: Tensor) -> Tensor:
        """The codebook index of each code vector of each input, (N, codes), int64."""


@runtime_checkable
class PretrainsInStages(Protocol):
    """A model trained in stages before its end-to-end training (a greedy stack)."""

    def pretraining_stages(self, noise: Noise) -> list[Phase]:
        """The phases to train before the end-to-end phase, in order."""


def likelihood_bound(model: object, recon: ReconstructionLoss) -> str | None:
    """None if ``model`` gives a likelihood bound with ``recon``, else why not (for a message)."""
    if not isinstance(model, HasLikelihoodBound):
        return (f"the importance-weighted bound is a VAE metric; {type(model).__name__} defines no likelihood "
                "(no prior over its codes)")
    if not recon.log_likelihood:
        return f"it needs a likelihood loss (loss=bce: -log p(x|z) in nats); this run trained with loss={recon.name}"
    return None
