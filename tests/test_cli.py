"""The CLI as a user runs it (a subprocess, its run dir, TensorBoard events read back), and the
run as a library function: hooks, a custom model, max_steps, stopping without SystemExit."""
import io
import json

import pytest
import torch
from PIL import Image

from aecli.store.checkpoint import load_model, read
from aecli.training.hooks import Hook
from aecli.training.run import run

from .conftest import quick_cfg, read_events, read_metrics, run_cli, without_timing


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """``python -m aecli.train model=vae noise=gaussian trainer.epochs=2``, once for the module."""
    tmp = tmp_path_factory.mktemp("cli")
    run_dir = tmp / "run"
    proc = run_cli("model=vae", "noise=gaussian", "trainer.epochs=2", "trainer.log_every_n_steps=5",
                   f"hydra.run.dir={run_dir}", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc


@pytest.mark.integration
def test_cli_logs_one_line_per_epoch_and_records_the_job(vae_run):
    run_dir, proc = vae_run
    assert "epoch 1/2" in proc.stdout and "epoch 2/2" in proc.stdout  # not a terminal: log lines, no bar
    assert json.loads((run_dir / "job_status.json").read_text())["status"] == "COMPLETED"
    assert "epoch 2/2" in (run_dir / "train.log").read_text()
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()


@pytest.mark.integration
def test_cli_writes_scalars_against_the_global_step(vae_run):
    events = read_events(vae_run[0])
    scalars = events.Tags()["scalars"]
    for tag in ["train_epoch/loss_per_image", "train_epoch/recon_per_image", "train_epoch/kl_per_image",
                "val/loss_per_image", "val/psnr_db", "val/neg_elbo_nats_per_image", "perf/images_per_sec",
                "train_step/loss_per_image"]:
        assert tag in scalars, tag
    assert [e.step for e in events.Scalars("val/loss_per_image")] == [10, 20]  # 10 steps per epoch
    assert [e.step for e in events.Scalars("train_step/loss_per_image")] == [5, 10, 15, 20]
    assert [e.value for e in events.Scalars("epoch")] == [1, 2]


@pytest.mark.integration
def test_cli_writes_image_grids_and_png_files(vae_run):
    run_dir = vae_run[0]
    events = read_events(run_dir)
    grid = events.Images("reconstruction/clean_corrupted_reconstructed")
    assert [g.step for g in grid] == [10, 20]
    png = Image.open(io.BytesIO(grid[-1].encoded_image_string))
    # 3 rows (clean | corrupted | reconstructed) x 8 images of 8x8 digits upscaled 7x, 1px borders
    assert png.size == (8 * 58, 3 * 58)
    assert "samples/prior" in events.Tags()["images"]
    # the run dir's PNGs: titled figures, tiles upscaled to >= 64 px, rows labelled (left margin)
    for name, rows in (("reconstruction.png", 3), ("samples.png", 2)):
        image = Image.open(run_dir / name)
        assert image.size[0] > 8 * 64 and image.size[1] > rows * 64
        assert len(image.convert("L").getcolors(maxcolors=100_000)) > 20  # drawn on, not blank


@pytest.mark.integration
def test_cli_writes_metrics_of_the_best_model(vae_run):
    run_dir = vae_run[0]
    metrics = read_metrics(run_dir)
    for key in ["train/loss_per_image", "val/loss_per_image", "test/loss_per_image", "test/mse_per_pixel",
                "test/psnr_db", "test/neg_elbo_nats_per_image", "train_epoch/loss_per_image"]:
        assert key in metrics, key
    assert metrics["test/neg_elbo_nats_per_image"] == pytest.approx(
        metrics["test/recon_per_image"] + metrics["test/kl_per_image"])
    assert metrics["checkpoint"] == "best.pt" and metrics["best_step"] == read(run_dir, name="best.pt")["step"]
    assert metrics["steps"] == 20 and metrics["epochs"] == 2 and 0 < metrics["first_step_seconds"] < 120


@pytest.mark.integration
def test_a_model_comes_back_from_the_run_dir_alone(vae_run):
    run_dir = vae_run[0]
    for name in ("last.pt", "best.pt"):
        state = read(run_dir / "checkpoints" / name)
        assert state["config"]["model"]["_target_"] == "aecli.models.VAE"
    model = load_model(run_dir)
    assert model.training is False
    x = torch.rand(4, 1, 8, 8)
    assert model(x).shape == x.shape


@pytest.mark.integration
def test_multirun_gives_each_job_its_own_run_dir(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "model=ae,conv", "trainer.epochs=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0_model=ae,trainer.epochs=1", "1_model=conv,trainer.epochs=1"]  # named by overrides
    for job in jobs:
        assert read_metrics(sweep / job)["epochs"] == 1
        assert json.loads((sweep / job / "job_status.json").read_text())["status"] == "COMPLETED"
        assert read_events(sweep / job).Tags()["images"]


def test_same_config_and_seed_give_the_same_metrics(tmp_path):
    for sub in ("a", "b"):
        run(quick_cfg("model=conv", "noise=binomial", "seed=3"), tmp_path / sub)
    assert without_timing(read_metrics(tmp_path / "a")) == without_timing(read_metrics(tmp_path / "b"))
    run(quick_cfg("model=conv", "noise=binomial", "seed=4"), tmp_path / "c")
    assert read_metrics(tmp_path / "c")["test/loss_per_pixel"] != read_metrics(tmp_path / "a")["test/loss_per_pixel"]


def test_hparams_are_written_once_for_the_hparams_tab(tmp_path):
    run(quick_cfg("model=ae", "noise=binomial"), tmp_path, choices={"model": "ae", "noise": "binomial"})
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = read_events(tmp_path)
    session = events.SummaryMetadata("_hparams_/session_start_info")
    info = plugin_data_pb2.HParamsPluginData.FromString(session.plugin_data.content).session_start_info
    assert info.hparams["choice/model"].string_value == "ae"
    assert info.hparams["noise.p"].number_value == 0.25
    assert [e.step for e in events.Scalars("hparam/test_psnr_db")] == [21]  # one step after the last one


class Recorder(Hook):
    """A user's hook: records what it saw, and can end training."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[str] = []
        self.stop_at = stop_at

    def on_fit_start(self, run):
        self.calls.append("fit_start")

    def on_step_end(self, run, terms):
        self.calls.append(f"step {run.state.step}: {sorted(terms)}")
        if run.state.step == self.stop_at:
            run.stop_requested = "user"

    def on_epoch_end(self, run, result, val):
        self.calls.append(f"epoch {run.state.epoch} val {val is not None}")

    def on_fit_end(self, run, metrics):
        self.calls.append(f"fit_end {metrics['steps']}")


def test_user_hooks_see_every_event_and_can_stop_the_run_without_system_exit(tmp_path):
    hook = Recorder()
    result = run(quick_cfg("model=vae", "trainer.epochs=1"), tmp_path / "a", extra_hooks=[hook])
    assert hook.calls[0] == "fit_start" and hook.calls[-1] == "fit_end 10"
    assert hook.calls[1] == "step 1: ['kl', 'loss', 'recon']" and "epoch 1 val True" in hook.calls
    stopper = Recorder(stop_at=5)
    result = run(quick_cfg("trainer.epochs=1"), tmp_path / "b", extra_hooks=[stopper])
    assert (result.status, result.step, result.signal) == ("stopped", 5, "user")
    assert read(tmp_path / "b")["step"] == 5 and not (tmp_path / "b" / "metrics.json").exists()


def test_hooks_from_the_config(tmp_path):
    """A hook named in the config fires (every step, every epoch, start and end), sees the final
    metrics, and its state travels in the checkpoint."""
    cfg = quick_cfg("trainer.epochs=2", "+callbacks.count._target_=tests.custom.CallCounter")
    result = run(cfg, tmp_path)
    steps = read(tmp_path)["step"]
    assert steps == 20  # 10 steps per digits epoch
    calls = {"fit_start": 1, "step_end": steps, "epoch_end": 2, "fit_end": 1}
    assert result.metrics["hook_calls"] == calls
    assert read(tmp_path)["hooks"]["call_counter"] == {"calls": {k: v for k, v in calls.items() if k != "fit_end"}}


def test_a_custom_model_gets_grids_samples_metrics_and_exact_resume(tmp_path):
    custom = ("model._target_=tests.custom.TinyVAE", "loss=bce", "trainer.epochs=3", "trainer.num_threads=1")
    whole = run(quick_cfg(*custom), tmp_path / "whole")
    events = read_events(tmp_path / "whole")
    assert {"samples/prior", "reconstruction/clean_reconstructed"} <= set(events.Tags()["images"])
    assert (tmp_path / "whole" / "samples.png").is_file()
    assert "test/neg_elbo_nats_per_image" in whole.metrics
    first = run(quick_cfg(*custom, "trainer.max_steps=15"), tmp_path / "split")  # ends mid-epoch 2
    assert first.status == "completed" and read(tmp_path / "split")["epoch_state"]["batch"] == 5
    rest = run(quick_cfg(*custom, f"resume={tmp_path / 'split'}"), tmp_path / "split")
    assert without_timing(rest.metrics) == without_timing(whole.metrics)
