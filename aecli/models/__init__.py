"""The classic autoencoders. Each is built by ``hydra.utils.instantiate(cfg.model, input_shape=...)``."""
from aecli.models.base import (
           Autoencoder,
           HasDiscreteCodes,
           HasLikelihoodBound,
           HasPrior,
           MeasuresCodes,
           Phase,
           PretrainsInStages,
           likelihood_bound,
)
from aecli.models.contractive import ContractiveAutoencoder
from aecli.models.conv import ConvAutoencoder
from aecli.models.conv_vae import ConvVAE
from aecli.models.mlp import MLPAutoencoder
from aecli.models.sparse import SparseAutoencoder
from aecli.models.stacked import StackedAutoencoder
from aecli.models.vae import VAE
from aecli.models.vqvae import VQVAE, ConvVQVAE

__all__ = ["Autoencoder", "ContractiveAutoencoder", "ConvAutoencoder", "ConvVAE", "ConvVQVAE", "HasDiscreteCodes",
           "HasLikelihoodBound", "HasPrior", "MLPAutoencoder", "MeasuresCodes", "Phase", "PretrainsInStages",
           "SparseAutoencoder", "StackedAutoencoder", "VAE", "VQVAE", "likelihood_bound"]
