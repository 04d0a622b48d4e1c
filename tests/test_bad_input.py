"""Bad input on the command line, as a new user types it: one message naming the key and the fix,
exit status 1, no traceback, no Hydra wrapping, and no run dir left behind."""
import pytest
import torch

from aecli.data import load_digits
from aecli.errors import ConfigError
from aecli.training.run import run

from .conftest import quick_cfg, run_cli

HYDRA_NOISE = ("Traceback", "Error executing job", "HYDRA_FULL_ERROR", "weights_only", "To append to your config")


def bright_digits(**kwargs):
    """A custom dataset loader whose pixels reach 2.0 (for the loss=bce range check)."""
    data = load_digits(**kwargs)
    data.max_value = 8.0
    return data


@pytest.mark.integration
@pytest.mark.parametrize("overrides,key,words", [
    (["model.hidden_dims=256"], "model.hidden_dims", "ListConfig"),  # composition (the typed schema)
    (["+trainer.epoch=5"], "trainer.epoch", "did you mean trainer.epochs"),
    (["model=stacked", "noise=binomial", "model.pretrain_noise_levels=[0.1,0.2,1.5]"], "model.pretrain_noise_levels",
     "1.5 is not a masking probability"),
    (["model=stacked", "model.pretrain_noise_levels=[0.1,0.2,0.3]"], "model.pretrain_noise_levels", "noise to scale"),
    (["dataset=folder"], "dataset.root", "has no value"),
    (["resume=/no/such/dir"], "resume", "/no/such/dir does not exist"),
    (["resume=NOT_A_CHECKPOINT"], "resume", "is not a checkpoint"),
    (["dataset=mnist", "dataset.download=false", "dataset.root=ROOT"], "dataset.root", "is not under"),  # building
])
def test_bad_input_is_one_message_and_leaves_nothing_behind(overrides, key, words, tmp_path):
    not_a_checkpoint = tmp_path / "notes.txt"
    not_a_checkpoint.write_text("hello")
    overrides = [o.replace("ROOT", str(tmp_path / "data")).replace("NOT_A_CHECKPOINT", str(not_a_checkpoint))
                 for o in overrides]
    proc = run_cli(*overrides, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"aecli: error: {key}: ") and words in proc.stderr and "\n  fix: " in proc.stderr
    assert not any(noise in proc.stderr for noise in HYDRA_NOISE), proc.stderr
    assert proc.stderr.count("aecli: error:") == 1
    assert not (tmp_path / "outputs").exists()  # a refused run leaves no run dir behind
    assert "does not exist/checkpoints" not in proc.stderr  # the path is not doubled


@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused(tmp_path):
    proc = run_cli("device=cuda", cwd=tmp_path)
    assert proc.returncode == 1
    assert "aecli: error: device:" in proc.stderr and "device=cpu" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_bce_on_data_outside_unit_range_is_refused(tmp_path):
    cfg = quick_cfg("loss=bce", "dataset._target_=tests.test_bad_input.bright_digits")
    with pytest.raises(ConfigError) as e:
        run(cfg, tmp_path / "run")
    assert e.value.key == "loss" and "loss=mse" in e.value.fix
    assert not (tmp_path / "run").exists()  # the dir this refused run made is gone again


@pytest.mark.integration
def test_unknown_option_lists_the_available_ones(tmp_path):
    proc = run_cli("model=transformer", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("aecli: error: model: there is no option 'transformer' "
                                  "(options: ae, contractive, conv, conv_vae, ")
    assert "Traceback" not in proc.stderr
