"""CUDA checks (``pytest -m gpu``; scripts/gpu_check.sh runs them on a GPU machine). Skipped
where CUDA is absent, CI included. Tolerances are stated per test: GPU kernels (atomic adds in
some backward passes, TF32-free fp32 matmuls in another order) do not give bit-equal results
across paths, only across runs of one path."""
from __future__ import annotations

import json
import signal

import pytest
import torch

from aecli.errors import RunFailed
from aecli.noise import GaussianNoise, MaskingNoise
from aecli.training.hooks import Hook
from aecli.training.run import run

from .conftest import make_cfg, popen_cli, read_events, read_metrics, without_timing
from .faults import MARKER
from .test_data import make_folder

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
QUICK = ("device=cuda", "trainer.epochs=2", "trainer.progress=log", "trainer.log_every_n_steps=1")


def cuda_cfg(*overrides: str):
    return make_cfg(*QUICK, *overrides)


def step_losses(run_dir, unit="per_pixel"):
    return [e.value for e in read_events(run_dir).Scalars(f"train_step/loss_{unit}")]


@pytest.mark.parametrize("model", ["ae", "dae", "conv", "vae", "stacked"])
@pytest.mark.parametrize("graph", [True, False], ids=["graph", "eager"])
def test_every_model_trains_on_cuda(tmp_path, model, graph):
    extra = ["model.pretrain_epochs=1"] if model == "stacked" else []
    result = run(cuda_cfg(f"model={model}", f"trainer.cuda_graph={str(graph).lower()}", *extra), tmp_path)
    unit = "per_image" if model == "vae" else "per_pixel"
    losses = step_losses(tmp_path, unit)
    assert result.status == "completed" and losses[-1] < 0.9 * losses[0]
    assert all(v == v for v in result.metrics.values() if isinstance(v, float))


@pytest.mark.parametrize("model", ["ae", "conv"])
def test_graph_and_eager_steps_agree(tmp_path, model):
    """Without randomness in the step (no noise, no sampling) the replayed graph computes what
    the eager step computes: per-step losses within 1e-4 (relative)."""
    run(cuda_cfg(f"model={model}", "noise=none", "trainer.cuda_graph=true"), tmp_path / "graph")
    run(cuda_cfg(f"model={model}", "noise=none", "trainer.cuda_graph=false"), tmp_path / "eager")
    assert step_losses(tmp_path / "graph") == pytest.approx(step_losses(tmp_path / "eager"), rel=1e-4)


def test_graph_vae_lands_where_eager_does(tmp_path):
    """The VAE samples inside the graph from another random stream: the losses differ step by
    step, the trained models agree within 2% of the test loss."""
    graph = run(cuda_cfg("model=vae", "trainer.epochs=10", "trainer.cuda_graph=true"), tmp_path / "graph")
    eager = run(cuda_cfg("model=vae", "trainer.epochs=10", "trainer.cuda_graph=false"), tmp_path / "eager")
    key = "test/loss_per_image"
    assert graph.metrics[key] == pytest.approx(eager.metrics[key], rel=0.02)


@pytest.mark.parametrize("precision", ["bf16", "16"])
def test_reduced_precision_with_graphs(tmp_path, precision):
    run(cuda_cfg("model=vae", "trainer.cuda_graph=true"), tmp_path / "fp32")
    run(cuda_cfg("model=vae", "trainer.cuda_graph=true", f"trainer.precision={precision}"), tmp_path / precision)
    fp32, low = step_losses(tmp_path / "fp32", "per_image"), step_losses(tmp_path / precision, "per_image")
    assert low[-1] < 0.9 * low[0] and low[-1] == pytest.approx(fp32[-1], rel=0.05)


def test_channels_last_conv_on_cuda(tmp_path):
    run(cuda_cfg("model=conv", "trainer.channels_last=true", "noise=none"), tmp_path / "nhwc")
    run(cuda_cfg("model=conv", "trainer.channels_last=false", "noise=none"), tmp_path / "nchw")
    assert step_losses(tmp_path / "nhwc") == pytest.approx(step_losses(tmp_path / "nchw"), rel=1e-3)


def test_streamed_folder_with_pinned_memory_trains_like_the_in_memory_one(tmp_path):
    make_folder(tmp_path / "imgs", n=40, mode="L")
    common = ("dataset=folder", f"dataset.root={tmp_path / 'imgs'}", "dataset.image_size=12", "dataset.channels=1",
              "trainer.batch_size=8", "model=conv", "noise=none")
    memory = run(cuda_cfg(*common), tmp_path / "memory")
    stream = run(cuda_cfg(*common, "dataset.max_memory_mb=0", "dataset.num_workers=1"), tmp_path / "stream")
    for key in ("train/loss_per_pixel", "val/loss_per_pixel", "test/psnr_db"):
        assert stream.metrics[key] == pytest.approx(memory.metrics[key], rel=1e-4)


def test_graph_resume_matches_the_uninterrupted_run(tmp_path):
    overrides = ("model=vae", "noise=binomial", "trainer.epochs=3", "trainer.cuda_graph=true")
    whole = run(cuda_cfg(*overrides), tmp_path / "whole")
    run(cuda_cfg(*overrides, "trainer.max_steps=15"), tmp_path / "split")  # stops mid-epoch 2
    rest = run(cuda_cfg(*overrides, f"resume={tmp_path / 'split'}"), tmp_path / "split")
    for key, value in without_timing(whole.metrics).items():
        if isinstance(value, float):
            assert rest.metrics[key] == pytest.approx(value, rel=1e-5), key


class PoisonAt(Hook):
    """Sets every weight to NaN after step ``step``: the next step's loss is not finite."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, run, terms):
        if run.state.step == self.step:
            with torch.no_grad():
                for p in run.model.parameters():
                    p.fill_(float("nan"))


def test_on_nan_stop_names_the_first_bad_step_inside_the_graph(tmp_path):
    with pytest.raises(RunFailed, match="non-finite loss at step 8"):
        run(cuda_cfg("trainer.cuda_graph=true", "trainer.log_every_n_steps=5"), tmp_path, extra_hooks=[PoisonAt(7)])


@pytest.mark.parametrize("noise", [MaskingNoise(0.25), GaussianNoise(0.5, clip=False)], ids=["masking", "gaussian"])
def test_noise_inside_a_graph_is_fresh_each_replay_with_the_right_statistics(noise):
    x = torch.full((200_000,), 0.5, device="cuda")
    static_out = torch.empty_like(x)
    graph = torch.cuda.CUDAGraph()
    noise(x)  # warm up
    with torch.cuda.graph(graph):
        static_out.copy_(noise(x))
    draws = []
    for _ in range(3):
        graph.replay()
        draws.append(static_out.clone())
    assert not torch.equal(draws[0], draws[1])  # a new draw each replay
    for y in draws:
        if isinstance(noise, MaskingNoise):
            assert (y == 0).float().mean().item() == pytest.approx(0.25, abs=0.005)
        else:
            assert (y - x).std().item() == pytest.approx(0.5, rel=0.01)


def test_sigterm_on_cuda_writes_a_checkpoint_that_resumes(tmp_path):
    run_dir = tmp_path / "run"
    args = ("device=cuda", "model=vae", "trainer.epochs=2", "trainer.progress=log",
            "+callbacks.pause._target_=tests.faults.PauseAt", "+callbacks.pause.step=13")
    proc = popen_cli(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path, gpu=True)
    for line in proc.stderr:
        if MARKER in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, out + err
    assert json.loads((run_dir / "job_status.json").read_text())["status"] == "STOPPED"
    again = popen_cli(f"resume={run_dir}", cwd=tmp_path, gpu=True)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, out + err
    assert read_metrics(run_dir)["steps"] == 20


def test_conv_vae_with_batchnorm_trains_in_a_graph(tmp_path):
    """BatchNorm's running statistics are updated inside the graph too."""
    result = run(make_cfg("device=cuda", "model=conv_vae", "dataset=photos", "trainer.epochs=3", "trainer.progress=log",
                          "trainer.cuda_graph=true"), tmp_path)
    losses = [e.value for e in read_events(tmp_path).Scalars("train_epoch/loss_per_image")]
    assert losses[-1] < 0.95 * losses[0] and result.metrics["test/psnr_db"] > 13


def test_two_processes_on_one_gpu_train_what_one_process_trains(tmp_path):
    import subprocess
    import sys

    from .conftest import cli_env

    same = ("device=cuda", "model=ae", "noise=none", "trainer.epochs=2", "trainer.log_every_n_steps=1",
            "trainer.progress=log")
    one = run(make_cfg(*same, "trainer.batch_size=64"), tmp_path / "one")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "aecli.train", *same, "trainer.batch_size=32", f"hydra.run.dir={tmp_path / 'two'}"]
    proc = subprocess.run(command, cwd=tmp_path, env=cli_env(gpu=True), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    two = read_metrics(tmp_path / "two")
    assert "rank 0 of 2 (gloo)" in (tmp_path / "two" / "train.log").read_text()  # NCCL wants a GPU per rank
    assert step_losses(tmp_path / "two") == pytest.approx(step_losses(tmp_path / "one"), rel=1e-4)
    assert two["test/psnr_db"] == pytest.approx(one.metrics["test/psnr_db"], rel=1e-4)
