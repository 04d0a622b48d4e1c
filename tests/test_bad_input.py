"""Bad input: one message naming the key and the fix, non-zero exit, nothing earlier touched."""
import pytest
import torch

from aecli.data import load_digits
from aecli.errors import ConfigError
from aecli.trainer import run

from .conftest import quick_cfg, run_cli, snapshot


def bright_digits(**kwargs):
    """A custom dataset loader whose pixels reach 2.0 (for the loss=bce range check)."""
    data = load_digits(**kwargs)
    data.max_value = 8.0
    return data


@pytest.mark.parametrize("overrides,key", [
    (["model=dae", "noise.p=1.0"], "noise.p"),
    (["model=dae", "noise.p=-0.1"], "noise.p"),
    (["noise=gaussian", "noise.sigma=-0.5"], "noise.sigma"),
    (["model.latent_dim=0"], "model.latent_dim"),
    (["trainer.epochs=0"], "trainer.epochs"),
    (["trainer.batch_size=0"], "trainer.batch_size"),
    (["optim.lr=0"], "optim.lr"),
    (["dataset=folder", "dataset.root=/no/such/folder"], "dataset.root"),
    (["dataset=mnist", "dataset.download=false", "dataset.root=ROOT"], "dataset.root"),
])
def test_bad_value_exits_with_one_message_naming_the_key(overrides, key, tmp_path):
    overrides = [o.replace("ROOT", str(tmp_path / "data")) for o in overrides]
    proc = run_cli(*overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 1
    assert f"aecli: error: {key}:" in proc.stderr and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any training


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused(tmp_path):
    proc = run_cli("device=cuda", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 1
    assert "aecli: error: device:" in proc.stderr and "device=cpu" in proc.stderr


def test_bce_on_data_outside_unit_range_is_refused(tmp_path):
    cfg = quick_cfg("loss=bce", "dataset._target_=tests.test_bad_input.bright_digits")
    with pytest.raises(ConfigError) as e:
        run(cfg, tmp_path)
    assert e.value.key == "loss" and "loss=mse" in e.value.fix
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_option_lists_the_available_ones(tmp_path):
    proc = run_cli("model=transformer", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Could not find 'model/transformer'" in proc.stderr and "vae" in proc.stderr


def test_an_existing_run_dir_is_never_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    first = run_cli("trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = snapshot(run_dir)
    again = run_cli("trainer.epochs=1", "seed=7", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert again.returncode == 1
    assert "aecli: error: hydra.run.dir:" in again.stderr and "resume=auto" in again.stderr
    assert snapshot(run_dir) == before
