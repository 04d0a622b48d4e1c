"""model=conv_vae on dataset=photos (scikit-learn's two sample photos, offline)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aecli.data import load_sample_patches
from aecli.errors import ConfigError
from aecli.losses import BinaryCrossEntropy
from aecli.models import ConvVAE
from aecli.training.run import run
from tests.conftest import make_cfg, read_events, read_metrics

# 32 px patches, a narrow conv VAE, batches of 32 (many small steps learn fastest per image)
SMALL = ("model=conv_vae", "dataset=photos", "model.channels=[8,16,32,64]", "model.latent_dim=16",
         "trainer.batch_size=32", "optim.lr=3e-3", "trainer.progress=log", "trainer.log_every_n_steps=1",
         "trainer.num_threads=1")  # one thread: on a busy machine two spin-wait for each other (20x slower)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """600 patches (480 train: 15 steps an epoch), 4 epochs."""
    run_dir = tmp_path_factory.mktemp("conv_vae") / "run"
    run(make_cfg(*SMALL, "dataset.patches=600", "trainer.epochs=4"), run_dir)
    return run_dir


def test_photo_patches_are_seeded_colour_crops_with_labels():
    data = load_sample_patches(patch_size=32, patches=300)
    assert data.shape == (3, 32, 32) and data.train.dtype == torch.uint8
    assert (len(data.train), len(data.val), len(data.test)) == (240, 30, 30)
    assert data.classes == ["china", "flower"] and set(data.labels["train"].tolist()) == {0, 1}
    assert data.train.float().std() > 20  # real photo content, not blank
    assert not torch.equal(data.train[:, 0], data.train[:, 2])  # colour, not grey
    assert torch.equal(load_sample_patches(patch_size=32, patches=300).test, data.test)
    assert not torch.equal(load_sample_patches(patch_size=32, patches=300, split_seed=1).test, data.test)
    with pytest.raises(ConfigError, match="dataset.patch_size"):
        load_sample_patches(patch_size=214)


def test_conv_vae_trains_on_photos(trained):
    losses = [e.value for e in read_events(trained).Scalars("train_epoch/loss_per_image")]
    assert len(losses) == 4 and losses[-1] < 0.9 * losses[0]
    m = read_metrics(trained)
    assert m["test/psnr_db"] > 13.0  # untrained: 8.7 dB; the mean training patch: 10.3 dB
    assert m["test/neg_elbo_nats_per_image"] == pytest.approx(m["test/recon_per_image"] + m["test/kl_per_image"],
                                                              rel=1e-4)
    assert m["test/kl_per_image"] > 1.0  # the code carries information


def test_the_run_opens_for_use(trained):
    from aecli.use.trained import open_run

    done = open_run(trained, device="cpu")
    data = done.data()
    assert type(done.model).__name__ == "ConvVAE" and data.classes == ["china", "flower"]
    x = data.as_float(data.test[:4])
    assert done.model.reconstruct(x, done.recon).shape == x.shape


def test_prior_samples_are_written(trained):
    img = np.asarray(Image.open(trained / "samples.png"))
    assert img.ndim == 3 and img.shape[2] in (3, 4) and img.shape[0] >= 32 and img[..., :3].std() > 5


def test_resume_continues_exactly(tmp_path):
    """1 epoch, then resumed to 2, ends where 2 epochs straight end (BatchNorm's running
    statistics are in the checkpoint)."""
    from aecli.training.hooks import Hook

    class Steps(Hook):
        count = 0

        def on_step_end(self, run, terms) -> None:
            Steps.count += 1

    tiny = (*SMALL, "dataset.patches=200", "dataset.patch_size=16", "model.channels=[8,16,32]")  # 5 steps an epoch
    run(make_cfg(*tiny, "trainer.epochs=2"), tmp_path / "straight")
    run(make_cfg(*tiny, "trainer.epochs=1"), tmp_path / "resumed")
    run(make_cfg(*tiny, "trainer.epochs=2", f"resume={tmp_path / 'resumed'}"), tmp_path / "resumed",
        extra_hooks=[Steps()])
    a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert Steps.count == 5 and b["steps"] == a["steps"] == 10  # the second epoch alone was trained
    assert b["test/loss_per_image"] == pytest.approx(a["test/loss_per_image"], rel=1e-5)
    assert b["test/psnr_db"] == pytest.approx(a["test/psnr_db"], rel=1e-5)


@pytest.mark.parametrize("size", [32, 47, 64, 128])
def test_image_sizes(size):
    model = ConvVAE((3, size, size), channels=(8, 16, 32, 64), latent_dim=8)
    x = torch.rand(2, 3, size, size)
    assert model(x).shape == x.shape
    assert model.sample_latents(5, torch.Generator().manual_seed(0)).shape == (5, 8)
    assert model.loss_unit == "per_image" and model.prefers_channels_last
    terms = model.loss(x, x, BinaryCrossEntropy())
    assert set(terms) == {"loss", "recon", "kl"}


def test_the_default_layers_fit_the_image_size_and_named_ones_that_do_not_say_so():
    for shape, layers in (((1, 8, 8), 2), ((1, 28, 28), 3), ((3, 32, 32), 4), ((3, 64, 64), 4)):
        model = ConvVAE(shape, latent_dim=4)
        assert len(model.down) == layers, shape
        assert model(torch.rand(2, *shape)).shape == (2, *shape)
    with pytest.raises(ConfigError) as e:
        ConvVAE((1, 8, 8), channels=(32, 64, 128, 256))  # 4 layers need 32 px
    assert e.value.key == "model.channels" and "model.channels=[32,64]" in e.value.fix
