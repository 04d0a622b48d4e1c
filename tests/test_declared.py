"""One declaration per component (``aecli.declare``): the schema's defaults are the YAML's and the
constructor's, its bounds are the checks'; capabilities are protocols asked with ``isinstance``,
never probed; a user's own model, noise and loss (tests/custom.py) train, resume and evaluate."""
import inspect
import math
from importlib.resources import files
from pathlib import Path

import pytest
from hydra.utils import get_method
from omegaconf import MISSING, OmegaConf

from aecli import config
from aecli.components import build
from aecli.errors import ConfigError
from aecli.losses import BinaryCrossEntropy, ReconstructionLoss, SquaredError
from aecli.models import (
    VAE,
    Autoencoder,
    HasLikelihoodBound,
    HasPrior,
    MLPAutoencoder,
    Phase,
    PretrainsInStages,
    StackedAutoencoder,
    likelihood_bound,
)
from aecli.noise import Noise
from aecli.store import checkpoint
from aecli.training.run import run
from aecli.use import evaluate, sample
from aecli.use.trained import open_run

from .conftest import make_cfg, quick_cfg, without_timing
from .custom import AbsoluteError, SaltNoise, TinyVAE
from .test_config import refusal


def option_files() -> list[tuple[str, str]]:
    return [(g, p.name[:-5]) for g in ("model", "noise", "loss", "dataset")
            for p in files("aecli.conf").joinpath(g).iterdir() if p.name.endswith(".yaml")]


# Options that are presets of another option's schema, and the keys they set on purpose.
PRESETS = {("dataset", "cifar10"): {"name"}, ("dataset", "fashion_mnist"): {"name"}, ("dataset", "kmnist"): {"name"}}


@pytest.mark.parametrize("group,option", option_files())
def test_every_default_agrees_between_schema_yaml_and_constructor(group, option):
    """The composed option, its schema and its class's (or loader's) signature: one default each."""
    node = make_cfg(f"{group}={option}", *(["dataset.root=x"] if option == "folder" else []))[group]
    schema = OmegaConf.get_type(node)
    assert schema in config.SCHEMAS[group].values(), f"{group}={option} is not on a declared schema"
    declared = OmegaConf.to_container(OmegaConf.structured(schema), enum_to_str=True)
    composed = OmegaConf.to_container(node, enum_to_str=True)
    params = inspect.signature(get_method(composed["_target_"])).parameters
    for key, default in declared.items():
        if key == "_target_" or default == MISSING or (group, key) == ("dataset", "classes"):
            continue  # dataset.classes is applied by aecli.components.load_data, not the loader
        if key not in PRESETS.get((group, option), ()):
            assert composed[key] == default, f"conf/{group}/{option}.yaml: {key}={composed[key]!r}, not {default!r}"
        assert key in params, f"{composed['_target_']} takes no {key}"
        own = params[key].default
        if own is inspect.Parameter.empty:
            continue  # the config's default is the only one
        own = list(own) if isinstance(own, tuple) else getattr(own, "name", own)
        assert own == default, f"{composed['_target_']}({key}={own!r}) but the schema says {default!r}"


def test_the_checkpoint_allow_list_is_what_the_components_declare():
    allowed = checkpoint.allowed_targets()
    assert allowed["model"] == {"aecli.models.MLPAutoencoder", "aecli.models.ConvAutoencoder", "aecli.models.VAE",
                                "aecli.models.StackedAutoencoder", "aecli.models.ConvVAE",
                                "aecli.models.SparseAutoencoder", "aecli.models.ContractiveAutoencoder",
                                "aecli.models.VQVAE", "aecli.models.ConvVQVAE"}
    assert allowed["noise"] == {"aecli.noise.NoNoise", "aecli.noise.MaskingNoise", "aecli.noise.GaussianNoise"}
    assert allowed["loss"] == {"aecli.losses.SquaredError", "aecli.losses.BinaryCrossEntropy",
                               "aecli.losses.Multinomial"}
    assert {"aecli.data.load_digits", "aecli.data.load_table", "aecli.data.load_text"} <= allowed["dataset"]


@pytest.mark.parametrize("override,key,suggested", [
    ("trainer.epoch=5", "trainer.epoch", "trainer.epochs"),
    ("+trainer.epoch=5", "trainer.epoch", "trainer.epochs"),
    ("model.latentdim=4", "model.latentdim", "model.latent_dim"),
    ("+model.latentdim=4", "model.latentdim", "model.latent_dim"),
])
def test_an_unknown_key_gets_did_you_mean_with_or_without_plus(override, key, suggested):
    error = refusal(override)
    assert error.key == key and f"did you mean {suggested}?" in error.problem and suggested in error.fix


def test_ranges_come_from_the_one_declaration():
    assert config.bounds("noise.p").text == "in [0, 1)" and config.bounds("noise.sigma").text == ">= 0"
    assert config.bounds("model.latent_dim").text == ">= 1" and config.bounds("trainer.epochs").ok(1)
    assert config.bounds("trainer.max_steps").text == ">= 1 (or null: no limit)"
    error = refusal("noise=binomial", "noise.p=1.0")
    assert error.key == "noise.p" and "in [0, 1)" in error.problem and "noise.p=0.25" in error.fix
    assert refusal("model=stacked", "model.pretrain_epochs=-1").key == "model.pretrain_epochs"
    assert refusal("dataset.val_fraction=1.5").key == "dataset.val_fraction"


def test_capabilities_are_protocols():
    ae, vae = MLPAutoencoder((1, 8, 8)), VAE((1, 8, 8))
    stack = StackedAutoencoder((1, 8, 8), hidden_dims=[8], latent_dim=4)
    assert not isinstance(ae, HasPrior) and not isinstance(ae, HasLikelihoodBound)
    assert isinstance(vae, HasPrior) and isinstance(vae, HasLikelihoodBound)
    assert isinstance(stack, PretrainsInStages) and not isinstance(vae, PretrainsInStages)
    assert all(isinstance(s, Phase) for s in stack.pretraining_stages(SaltNoise()))  # one record for a phase
    assert likelihood_bound(vae, BinaryCrossEntropy()) is None
    assert "likelihood loss" in likelihood_bound(vae, SquaredError())
    assert "defines no likelihood" in likelihood_bound(ae, BinaryCrossEntropy())
    assert isinstance(SaltNoise(), Noise) and isinstance(AbsoluteError(), ReconstructionLoss)


class NeverCalled(Autoencoder):
    """Has a likelihood bound and a prior, and fails if either is called to find out."""

    latent_dim = 2

    def neg_log_likelihood_bound(self, x, recon, k):
        raise AssertionError("probed")

    def extra_metrics(self, means, recon):
        return {}

    def sample_latents(self, n, generator):
        raise AssertionError("probed")


def test_callers_ask_the_protocol_and_never_run_the_model_to_find_out():
    model = NeverCalled((1, 8, 8))
    assert likelihood_bound(model, BinaryCrossEntropy()) is None  # asked, not called
    runs = [type("Run", (), {"model": model, "recon": BinaryCrossEntropy(), "run_dir": "r"})()]
    evaluate.check_likelihood(runs, evaluate.Options(iw_samples=5))  # has one: no refusal, nothing called
    ae_run = type("Run", (), {"model": MLPAutoencoder((1, 8, 8)), "recon": SquaredError()})()
    with pytest.raises(ConfigError, match="no prior"):
        sample.prior_samples(ae_run, 4, seed=0)


def test_a_custom_model_gets_only_the_keys_given():
    """model._target_ on the ae option: the ae keys (hidden_dims, latent_dim=16, ...) stay out."""
    cfg = make_cfg("model._target_=tests.custom.TinyVAE")
    assert build(cfg, "model", input_shape=(1, 8, 8)).latent_dim == 4  # its own default
    assert config.plain(cfg)["model"] == {"_target_": "tests.custom.TinyVAE"}  # what the checkpoint keeps
    given = make_cfg("model._target_=tests.custom.TinyVAE", "model.latent_dim=3")
    assert build(given, "model", input_shape=(1, 8, 8)).latent_dim == 3
    assert isinstance(build(given, "model", input_shape=(1, 8, 8)), TinyVAE)


def test_a_users_own_noise_and_loss_train_resume_and_evaluate(tmp_path):
    own = ("noise._target_=tests.custom.SaltNoise", "+noise.p=0.1", "loss._target_=tests.custom.AbsoluteError",
           "trainer.epochs=2")
    whole = run(quick_cfg(*own), tmp_path / "whole")
    assert whole.status == "completed" and "val/loss_per_pixel" in whole.metrics
    first = run(quick_cfg(*own, "trainer.max_steps=15"), tmp_path / "split")  # ends mid-epoch 2 (10 per epoch)
    assert first.status == "completed"
    rest = run(quick_cfg(*own, f"resume={tmp_path / 'split'}"), tmp_path / "split")
    assert without_timing(rest.metrics) == without_timing(whole.metrics)  # resumed exactly
    trusted = ("tests.custom.SaltNoise", "tests.custom.AbsoluteError")
    trained = open_run(tmp_path / "whole", device="cpu", trusted_targets=trusted)
    assert isinstance(trained.noise, SaltNoise) and trained.noise.p == 0.1 and trained.recon.name == "l1"
    result = evaluate.evaluate(trained, evaluate.Options(device="cpu", probe_images=0, progress=False))
    assert result["loss"] == "l1" and result["test/loss_per_pixel"] > 0
    # its own noise measured: salt on 10% of the pixels of [0, 1] images costs PSNR, finitely
    assert 5 < result["test/noisy_input_psnr_db"] < 30 and math.isfinite(result["test/denoised_psnr_db"])
    assert result["denoise_noise"].startswith("<tests.custom.SaltNoise")
    with pytest.raises(ConfigError, match="not one of aecli's own"):
        open_run(tmp_path / "whole", device="cpu")  # a file naming code is refused unless trusted


def test_the_documented_key_table_is_the_declarations():
    readme = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    block = readme.split("checked by tests/test_declared.py -->\n", 1)[1].split("<!-- key-table end -->", 1)[0]
    assert block == config.key_table(), "regenerate the table in docs/configuration.md: print(aecli.config.key_table())"


def test_train_yaml_restates_the_trainer_and_optim_defaults_exactly():
    """conf/train.yaml documents every top-level key with its value: the schema's own."""
    cfg = make_cfg("dataset=mnist")  # the digits option sets a longer schedule on purpose
    for group in ("optim", "trainer"):
        schema = OmegaConf.get_type(cfg[group])
        declared = OmegaConf.to_container(OmegaConf.structured(schema), enum_to_str=True)
        assert OmegaConf.to_container(cfg[group], enum_to_str=True) == declared, group
    assert (cfg.seed, cfg.resume, cfg.objective) == (0, None, None)
