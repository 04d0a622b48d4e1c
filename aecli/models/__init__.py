"""The classic autoencoders. Each is built by ``hydra.utils.instantiate(cfg.model, input_shape=...)``."""
from aecli.models.base import Autoencoder, HasLikelihoodBound, HasPrior, Phase, PretrainsInStages, likelihood_bound
from aecli.models.conv import ConvAutoencoder
from aecli.models.conv_vae import ConvVAE
from aecli.models.mlp import MLPAutoencoder
from aecli.models.stacked import StackedAutoencoder
from aecli.models.vae import VAE

__all__ = ["Autoencoder", "ConvAutoencoder", "ConvVAE", "HasLikelihoodBound", "HasPrior", "MLPAutoencoder", "Phase",
           "PretrainsInStages", "StackedAutoencoder", "VAE", "likelihood_bound"]
