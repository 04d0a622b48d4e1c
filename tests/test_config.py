"""Every option of every config group composes and builds (Hydra's compose API)."""
from pathlib import Path

import pytest
from hydra.utils import instantiate

import aecli
from aecli.data import ImageData
from aecli.losses import BCELoss, MSELoss
from aecli.noise import GaussianNoise, MaskingNoise, NoNoise

from .conftest import make_cfg

CONF = Path(aecli.__file__).resolve().parent.parent / "conf"
GROUPS = ["model", "noise", "loss", "dataset", "device", "experiment"]


def options(group: str) -> list[str]:
    from importlib.resources import files

    return sorted(p.name[:-5] for p in files("aecli.conf").joinpath(group).iterdir() if p.name.endswith(".yaml"))


def test_groups_have_the_documented_options():
    assert options("model") == ["ae", "conv", "dae", "stacked", "vae"]
    assert options("noise") == ["binomial", "gaussian", "none"]
    assert options("loss") == ["bce", "mse"]
    assert options("dataset") == ["cifar10", "digits", "fashion_mnist", "folder", "kmnist", "mnist"]
    assert options("device") == ["auto", "cpu", "cuda", "mps"]
    assert {"mnist_vae", "keras_ae", "stacked_dae"} <= set(options("experiment"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    cfg = make_cfg(f"{group}={option}")
    assert isinstance(cfg.seed, int)
    if group == "experiment":
        assert cfg.dataset._target_ and cfg.model._target_
    for key in ("model", "noise", "loss"):
        assert "_target_" in cfg[key]
    assert cfg.device.name in {"auto", "cpu", "cuda", "mps"}


@pytest.mark.parametrize("model", options("model"))
def test_every_model_config_instantiates(model):
    cfg = make_cfg(f"model={model}")
    net = instantiate(cfg.model, input_shape=(1, 28, 28))
    assert net.latent_dim == cfg.model.latent_dim


def test_noise_and_loss_configs_instantiate():
    assert isinstance(instantiate(make_cfg("noise=none").noise), NoNoise)
    assert isinstance(instantiate(make_cfg("noise=binomial", "noise.p=0.3").noise), MaskingNoise)
    g = instantiate(make_cfg("noise=gaussian", "noise.sigma=0.5").noise)
    assert isinstance(g, GaussianNoise) and g.sigma == 0.5
    assert isinstance(instantiate(make_cfg("loss=mse").loss), MSELoss)
    assert isinstance(instantiate(make_cfg("loss=bce").loss), BCELoss)


def test_model_defaults_pick_noise_and_loss_but_the_command_line_wins():
    assert make_cfg("model=dae").noise._target_.endswith("MaskingNoise")
    assert make_cfg("model=dae", "noise=gaussian").noise._target_.endswith("GaussianNoise")
    assert make_cfg("model=dae", "noise=none").noise._target_.endswith("NoNoise")
    assert make_cfg("model=ae").noise._target_.endswith("NoNoise")
    assert make_cfg("model=vae").loss._target_.endswith("BCELoss")
    assert make_cfg("model=vae", "loss=mse").loss._target_.endswith("MSELoss")
    assert make_cfg().loss._target_.endswith("MSELoss")


def test_experiments_reproduce_the_published_setups():
    vae = make_cfg("experiment=mnist_vae")
    assert vae.model._target_.endswith("VAE") and vae.loss._target_.endswith("BCELoss")
    assert (list(vae.model.hidden_dims), vae.model.latent_dim) == ([400], 20)
    assert (vae.trainer.batch_size, vae.trainer.epochs, vae.optim.lr) == (128, 10, 1e-3)
    assert vae.dataset.name == "mnist"
    keras = make_cfg("experiment=keras_ae")
    assert (list(keras.model.hidden_dims), keras.model.latent_dim) == ([], 32)
    sdae = make_cfg("experiment=stacked_dae")
    assert list(sdae.model.pretrain_noise_levels) == [0.1, 0.2, 0.3]
    assert sdae.noise._target_.endswith("MaskingNoise")
    # a recipe is a starting point: the command line still overrides it
    assert make_cfg("experiment=mnist_vae", "dataset=digits").dataset._target_.endswith("load_digits")


def test_default_dataset_is_the_bundled_digits():
    data = instantiate(make_cfg().dataset)
    assert isinstance(data, ImageData)
    assert data.shape == (1, 8, 8)
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert data.train.dtype.is_floating_point is False
    floats = data.as_float(data.train)
    assert floats.min().item() == 0.0 and floats.max().item() == 1.0
    # the split is fixed by split_seed, not by the run's seed
    again = instantiate(make_cfg("seed=5").dataset)
    assert (again.test == data.test).all()
