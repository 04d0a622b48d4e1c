"""The config: every group option composes against the typed schema; wrong types, unknown keys
and out-of-range values are refused with one message naming the key (in-process: Hydra's
compose API, ``aecli.config.check`` and ``explain``)."""
from importlib.resources import files

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from aecli.components import load_data
from aecli.config import check, explain
from aecli.data import ImageData
from aecli.errors import ConfigError
from aecli.losses import BinaryCrossEntropy, SquaredError
from aecli.noise import GaussianNoise, MaskingNoise, NoNoise
from aecli.training.placement import threads_per_job

from .conftest import make_cfg

GROUPS = ["model", "noise", "loss", "dataset", "device", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.name[:-5] for p in files("aecli.conf").joinpath(group).iterdir() if p.name.endswith(".yaml"))


def refusal(*overrides: str) -> ConfigError:
    """The ConfigError for ``overrides``, found at composition (explained) or by ``check``."""
    try:
        cfg = make_cfg(*overrides)
    except Exception as e:  # noqa: BLE001 - Hydra's and OmegaConf's composition errors
        error = explain(e)
        assert error is not None, f"not explained: {e!r}"
        return error
    with pytest.raises(ConfigError) as e:
        check(cfg)
    return e.value


def test_groups_have_the_documented_options():
    assert options("model") == ["ae", "contractive", "conv", "conv_vae", "conv_vqvae", "dae", "sparse", "stacked",
                                "vae", "vqvae"]
    assert options("noise") == ["binomial", "gaussian", "none"]
    assert options("loss") == ["bce", "mse", "multinomial"]
    assert options("dataset") == ["cifar10", "digits", "fashion_mnist", "folder", "kmnist", "mnist", "photos", "table",
                                  "text"]
    assert options("device") == ["auto", "cpu", "cuda", "mps"]
    assert {"mnist_vae", "keras_ae", "stacked_dae"} <= set(options("experiment"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)
                                          if (g, o) not in (("dataset", "folder"), ("dataset", "table"),
                                                            ("dataset", "text"))])  # their path is required
def test_every_option_composes_and_passes_the_checks(group, option):
    """The option's own values land in the composed config (its keys, under its package), and the
    group options it selects (``override /noise: binomial``) are in force, as composed alone."""
    cfg = make_cfg(f"{group}={option}")
    check(cfg)
    text = files("aecli.conf").joinpath(group, f"{option}.yaml").read_text()
    node = OmegaConf.to_container(OmegaConf.create(text)) or {}  # OmegaConf's YAML: 1e-3 is a number
    prefix = "" if text.startswith("# @package _global_") else f"{group}."
    for key, value in _leaves({k: v for k, v in node.items() if k != "defaults"}, prefix):
        got = OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(cfg, key)}), enum_to_str=True)["v"]
        assert got == value, key
    selected = [d for d in node.get("defaults", []) if isinstance(d, dict)]
    for entry in selected:
        (target, choice), = entry.items()
        other = target.removeprefix("override ").strip("/")
        if other in GROUPS and not any(k.startswith(f"{other}.") for k, _ in _leaves(node, "")):
            assert cfg[other] == make_cfg(f"{other}={choice}")[other], (other, choice)


def _leaves(node, prefix: str):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("model", options("model"))
def test_every_model_config_builds_a_model_of_its_latent_size(model):
    cfg = make_cfg(f"model={model}")
    net = instantiate(cfg.model, input_shape=(3, 32, 32))
    # VQ-VAEs: codes x code_dim; the conv one a code per position of its 8x8 map
    declared = {"vqvae": cfg.model.get("codes", 0) * cfg.model.get("code_dim", 0),
                "conv_vqvae": 8 * 8 * cfg.model.get("code_dim", 0)}.get(model)
    assert net.latent_dim == (declared or cfg.model.latent_dim)
    assert net.latent_dim == {"vae": 20, "conv_vae": 128, "sparse": 64, "contractive": 64, "vqvae": 64,
                              "conv_vqvae": 1024}.get(model, 16)


def test_noise_and_loss_configs_build_what_they_name():
    assert isinstance(instantiate(make_cfg("noise=none").noise), NoNoise)
    masking = instantiate(make_cfg("noise=binomial", "noise.p=0.3").noise)
    assert isinstance(masking, MaskingNoise) and masking.p == 0.3
    g = instantiate(make_cfg("noise=gaussian", "noise.sigma=0.5").noise)
    assert isinstance(g, GaussianNoise) and g.sigma == 0.5 and g.clip is True
    assert isinstance(instantiate(make_cfg("loss=mse").loss), SquaredError)
    assert isinstance(instantiate(make_cfg("loss=bce").loss), BinaryCrossEntropy)


def test_model_defaults_pick_noise_and_loss_but_the_command_line_wins():
    assert make_cfg("model=dae").noise._target_.endswith("MaskingNoise")
    assert make_cfg("model=dae", "noise=gaussian").noise._target_.endswith("GaussianNoise")
    assert make_cfg("model=dae", "noise=none").noise._target_.endswith("NoNoise")
    assert make_cfg("model=ae").noise._target_.endswith("NoNoise")
    assert make_cfg("model=vae").loss._target_.endswith("BinaryCrossEntropy")
    assert make_cfg("model=vae", "loss=mse").loss._target_.endswith("SquaredError")
    assert make_cfg().loss._target_.endswith("SquaredError")


def test_experiments_reproduce_the_published_setups():
    vae = make_cfg("experiment=mnist_vae")
    assert vae.model._target_.endswith("VAE") and vae.loss._target_.endswith("BinaryCrossEntropy")
    assert (list(vae.model.hidden_dims), vae.model.latent_dim) == ([400], 20)
    assert (vae.trainer.batch_size, vae.trainer.epochs, vae.optim.lr, vae.seed) == (128, 10, 1e-3, 1)
    assert vae.dataset.name == "mnist"
    keras = make_cfg("experiment=keras_ae")
    assert (list(keras.model.hidden_dims), keras.model.latent_dim, keras.trainer.batch_size) == ([], 32, 256)
    sdae = make_cfg("experiment=stacked_dae")
    assert list(sdae.model.pretrain_noise_levels) == [0.1, 0.2, 0.3]
    assert sdae.noise.p == 0.1
    # a recipe is a starting point: the command line still overrides it
    assert make_cfg("experiment=mnist_vae", "dataset=digits").dataset._target_.endswith("load_digits")


def test_default_dataset_is_the_bundled_digits_with_labels():
    data = load_data(make_cfg())
    assert isinstance(data, ImageData)
    assert data.shape == (1, 8, 8)
    assert (len(data.train), len(data.val), len(data.test)) == (1258, 180, 359)
    assert data.train.dtype.is_floating_point is False
    floats = data.as_float(data.train)
    assert floats.min().item() == 0.0 and floats.max().item() == 1.0
    assert data.labels["test"].shape == (359,) and set(data.labels["train"].tolist()) == set(range(10))
    again = load_data(make_cfg("seed=5"))  # the split is fixed by split_seed, not the run's seed
    assert (again.test == data.test).all() and (again.labels["test"] == data.labels["test"]).all()


@pytest.mark.parametrize("overrides,key,words", [
    # the typed schema, at composition
    (["+trainer.epoch=5"], "trainer.epoch", "did you mean trainer.epochs"),
    (["trainer.epoch=5"], "trainer.epoch", "no such key"),
    (["+model.hiden_dims=[3]"], "model.hiden_dims", "did you mean model.hidden_dims"),
    (["model.hidden_dims=256"], "model.hidden_dims", "not a ListConfig"),
    (["trainer.epochs=abc"], "trainer.epochs", "could not be converted"),
    (["trainer.precision=8"], "trainer.precision", "expected one of"),
    (["device.name=gpu"], "device.name", "expected one of"),
    (["seed=1.5"], "seed", "could not be converted"),
    (["noise.p=0.3"], "noise.p", "no such key"),  # noise=none has no p
    # ranges and cross-field rules (aecli.config.check)
    (["model=dae", "noise.p=1.0"], "noise.p", "out of range"),
    (["noise=gaussian", "noise.sigma=-0.5"], "noise.sigma", "out of range"),
    (["model.latent_dim=0"], "model.latent_dim", "out of range"),
    (["trainer.epochs=0"], "trainer.epochs", "out of range"),
    (["trainer.max_steps=0"], "trainer.max_steps", "out of range"),
    (["optim.lr=0"], "optim.lr", "out of range"),
    (["model.hidden_dims=[256,0]"], "model.hidden_dims", "whole numbers >= 1"),
    (["trainer.num_threads=many"], "trainer.num_threads", "neither auto nor"),
    (["trainer.channels_last=maybe"], "trainer.channels_last", "not auto, true or false"),
    (["trainer.compile_mode=reduce-overhead"], "trainer.compile_mode", "cuda_graph"),
    (["dataset=folder"], "dataset.root", "has no value"),
    (["model=stacked", "noise=binomial", "model.pretrain_noise_levels=[0.1,0.2,1.5]"], "model.pretrain_noise_levels",
     "1.5 is not a masking probability"),
    (["model=stacked", "model.pretrain_noise_levels=[0.1,0.2,0.3]"], "model.pretrain_noise_levels",
     "need a noise to scale"),
    (["model=stacked", "noise=gaussian", "model.pretrain_noise_levels=[0.1]"], "model.pretrain_noise_levels",
     "1 levels for 3 layers"),
    (["model=transformer"], "model", "no option 'transformer' (options: ae, contractive, conv, conv_vae, "
     "conv_vqvae, dae, sparse, stacked, vae, vqvae)"),
])
def test_a_bad_config_is_one_message_naming_the_key(overrides, key, words):
    error = refusal(*overrides)
    assert error.key == key, str(error)
    assert words in error.problem + error.fix, str(error)
    assert str(error).startswith(f"aecli: error: {key}: ") and "\n  fix: " in str(error)
    assert "+" not in error.fix.split("=")[0]  # never Hydra's advice to append a key that does not exist


@pytest.mark.parametrize("ok, two_jobs_on_4_cores, alone", [("auto", 2, None), ("4", 4, 4), ("null", None, None)])
def test_num_threads_is_auto_a_whole_number_or_null(ok, two_jobs_on_4_cores, alone):
    """Each accepted value means what the docs say: auto shares the cores between the jobs that
    run at once (alone: torch's default, then timed on the CPU), a number is taken as is, null
    leaves torch's default."""
    cfg = make_cfg(f"trainer.num_threads={ok}")
    check(cfg)
    assert threads_per_job(cfg.trainer.num_threads, cores=4, jobs=2) == two_jobs_on_4_cores
    assert threads_per_job(cfg.trainer.num_threads, cores=4, jobs=1) == alone
