"""The CLI as a user runs it: a subprocess, its run dir, TensorBoard events read back."""
import io

import pytest
import torch
from PIL import Image

from aecli.checkpoint import load_checkpoint, load_model
from aecli.trainer import run

from .conftest import quick_cfg, read_events, read_metrics, run_cli


def test_cli_run_writes_events_images_checkpoints_and_metrics(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("model=vae", "noise=gaussian", "trainer.epochs=2", "trainer.log_every_n_steps=5",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # one log line per epoch when stdout is not a terminal
    assert "epoch 1/2" in proc.stdout and "epoch 2/2" in proc.stdout

    events = read_events(run_dir)
    scalars = events.Tags()["scalars"]
    for tag in ["train/loss_per_image", "train/recon_per_image", "train/kl_per_image", "val/loss_per_image",
                "val/psnr_db", "perf/images_per_sec", "train_step/loss_per_image"]:
        assert tag in scalars, tag
    # every scalar and image is logged against the global step (10 steps per epoch here)
    assert [e.step for e in events.Scalars("val/loss_per_image")] == [10, 20]
    assert [e.value for e in events.Scalars("epoch")] == [1, 2]
    images = events.Tags()["images"]
    grid = events.Images("reconstruction/clean_corrupted_reconstructed")
    assert [g.step for g in grid] == [10, 20]
    png = Image.open(io.BytesIO(grid[-1].encoded_image_string))
    # 3 rows (clean | corrupted | reconstructed) x 8 images of 8x8 digits upscaled 7x, 1px borders
    assert png.size == (8 * 58, 3 * 58)
    assert "samples/prior" in images

    metrics = read_metrics(run_dir)
    for key in ["train/loss_per_image", "val/loss_per_image", "test/loss_per_image", "test/mse_per_pixel",
                "test/psnr_db", "test/neg_elbo_nats_per_image", "test/kl_per_image"]:
        assert key in metrics, key
    assert metrics["test/neg_elbo_nats_per_image"] == pytest.approx(
        metrics["test/recon_per_image"] + metrics["test/kl_per_image"])

    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(run_dir / "checkpoints" / name)
        assert state["config"]["model"]["_target_"] == "aecli.models.VAE"
        assert {"model", "optimizer", "epoch"} <= set(state)
    assert load_checkpoint(run_dir)["epoch"] == 2
    # the model is rebuilt from the run dir alone and reconstructs as well as during training
    model = load_model(run_dir, "last.pt")
    assert model.training is False
    x = torch.rand(4, 1, 8, 8)
    assert model(x).shape == x.shape


def test_same_config_and_seed_give_the_same_metrics(tmp_path):
    for sub in ("a", "b"):
        run(quick_cfg("model=conv", "noise=binomial", "seed=3"), tmp_path / sub)
    assert read_metrics(tmp_path / "a") == {**read_metrics(tmp_path / "b"),
                                            "images_per_sec": read_metrics(tmp_path / "a")["images_per_sec"]}
    run(quick_cfg("model=conv", "noise=binomial", "seed=4"), tmp_path / "c")
    assert read_metrics(tmp_path / "c")["test/loss_per_pixel"] != read_metrics(tmp_path / "a")["test/loss_per_pixel"]


def test_hparams_are_written_for_the_hparams_tab(tmp_path):
    run(quick_cfg("model=ae", "noise=binomial"), tmp_path, {"model": "ae", "noise": "binomial"})
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = read_events(tmp_path)
    session = events.SummaryMetadata("_hparams_/session_start_info")
    info = plugin_data_pb2.HParamsPluginData.FromString(session.plugin_data.content).session_start_info
    assert info.hparams["choice/model"].string_value == "ae"
    assert info.hparams["noise.p"].number_value == 0.25
    assert "hparam/test_psnr_db" in events.Tags()["scalars"]


def test_multirun_gives_each_job_its_own_run_dir(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "model=ae,conv", "trainer.epochs=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0_model=ae,trainer.epochs=1", "1_model=conv,trainer.epochs=1"]  # named by overrides
    for job in jobs:
        assert read_metrics(sweep / job)["epochs"] == 1
        assert read_events(sweep / job).Tags()["images"]
