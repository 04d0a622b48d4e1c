"""The speed knobs and the streaming path compute the same training as the plain path."""
import pytest
import torch

from aecli.training.run import run
from aecli.training.step import optimizer_for

from .conftest import quick_cfg, read_events, read_metrics
from .test_data import make_folder


def loss_curve(run_dir, unit="per_pixel"):
    return [e.value for e in read_events(run_dir).Scalars(f"train_step/loss_{unit}")]


@pytest.mark.parametrize("precision", ["bf16", "16"])
def test_reduced_precision_trains_on_cpu_close_to_fp32(precision, tmp_path):
    run(quick_cfg("trainer.precision=32"), tmp_path / "fp32")
    run(quick_cfg(f"trainer.precision={precision}"), tmp_path / precision)
    fp32, low = loss_curve(tmp_path / "fp32"), loss_curve(tmp_path / precision)
    assert low[-1] < 0.9 * low[0]  # it trains
    assert low != fp32  # autocast really ran in the lower precision ...
    assert low[-1] == pytest.approx(fp32[-1], rel=0.05)  # ... and lands where fp32 does


def test_fused_and_foreach_adam_agree(tmp_path):
    run(quick_cfg("model=vae", "optim.fused=true"), tmp_path / "fused")
    run(quick_cfg("model=vae", "optim.fused=false"), tmp_path / "foreach")
    assert loss_curve(tmp_path / "fused", "per_image") == pytest.approx(loss_curve(tmp_path / "foreach", "per_image"),
                                                                        rel=1e-4)


def test_optimizer_picks_fused_where_available():
    opt = optimizer_for([torch.nn.Parameter(torch.zeros(3))], 1e-3, 0.0, "auto", torch.device("cpu"))
    assert opt.defaults["fused"] is True  # torch >= 2.4 (pyproject) has the fused CPU kernel


def test_streamed_folder_trains_exactly_like_the_in_memory_one(tmp_path):
    make_folder(tmp_path / "imgs", n=40, mode="L")
    common = ("dataset=folder", f"dataset.root={tmp_path / 'imgs'}", "dataset.image_size=12", "dataset.channels=1",
              "trainer.batch_size=8", "model=conv")
    run(quick_cfg(*common), tmp_path / "memory")
    run(quick_cfg(*common, "dataset.max_memory_mb=0", "dataset.num_workers=1"), tmp_path / "stream")
    memory, stream = read_metrics(tmp_path / "memory"), read_metrics(tmp_path / "stream")
    for key in ("train/loss_per_pixel", "val/loss_per_pixel", "test/psnr_db"):
        assert stream[key] == pytest.approx(memory[key], rel=1e-6)
    curve = loss_curve(tmp_path / "stream")
    assert curve[-1] < curve[0]


@pytest.mark.slow
def test_compiled_step_matches_eager(tmp_path):
    run(quick_cfg("model=ae"), tmp_path / "eager")
    run(quick_cfg("model=ae", "trainer.compile=true"), tmp_path / "compiled")
    assert loss_curve(tmp_path / "compiled") == pytest.approx(loss_curve(tmp_path / "eager"), rel=1e-3)


def test_channels_last_conv_trains_like_the_default_layout(tmp_path):
    run(quick_cfg("model=conv", "trainer.channels_last=true"), tmp_path / "nhwc")
    run(quick_cfg("model=conv", "trainer.channels_last=false"), tmp_path / "nchw")
    assert loss_curve(tmp_path / "nhwc") == pytest.approx(loss_curve(tmp_path / "nchw"), rel=1e-4)


def test_set_memory_layout_converts_conv_models_only_where_asked():
    from aecli.models import ConvAutoencoder
    from aecli.training.build import set_memory_layout

    model = ConvAutoencoder((1, 12, 12), channels=[4, 8], latent_dim=4)
    cpu = torch.device("cpu")
    assert set_memory_layout(model, quick_cfg().trainer, cpu) is None  # auto: CUDA only
    weight = model.down[1].weight  # (8, 4, 3, 3): the layouts differ
    assert not weight.is_contiguous(memory_format=torch.channels_last)
    to_layout = set_memory_layout(model, quick_cfg("trainer.channels_last=true").trainer, cpu)
    assert model.down[1].weight.is_contiguous(memory_format=torch.channels_last)
    assert to_layout(torch.rand(2, 3, 12, 12)).is_contiguous(memory_format=torch.channels_last)
