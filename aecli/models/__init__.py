"""The classic autoencoders. Each is built by ``hydra.utils.instantiate(cfg.model, input_shape=...)``.

Every module of this package is imported here, so a class declared in it (``aecli.declare``)
is a ``model`` option: adding a model is one module (``_target_: aecli.models.<module>.<Class>``)
plus one YAML file in conf/model/. The names below are the targets of aecli's own models
(and of old checkpoints).
"""
import importlib
import pkgutil

from aecli.models.base import Autoencoder, HasLikelihoodBound, HasPrior, Phase, PretrainsInStages, likelihood_bound
from aecli.models.conv import ConvAutoencoder
from aecli.models.conv_vae import ConvVAE
from aecli.models.mlp import MLPAutoencoder
from aecli.models.stacked import StackedAutoencoder
from aecli.models.vae import VAE

__all__ = ["Autoencoder", "ConvAutoencoder", "ConvVAE", "HasLikelihoodBound", "HasPrior", "MLPAutoencoder", "Phase",
           "PretrainsInStages", "StackedAutoencoder", "VAE", "likelihood_bound"]

for _module in pkgutil.iter_modules(__path__):  # the modules not named above declare on import too
    importlib.import_module(f"{__name__}.{_module.name}")
