"""Every model trains (loss falls); shapes; the VAE's KL; stacked pre-training and its noise levels."""

import pytest
import torch
from hydra.utils import instantiate
from torch.distributions import Normal, kl_divergence

from aecli.losses import BCEWithLogitsFloat32CPU, BinaryCrossEntropy, SquaredError
from aecli.models import VAE, ConvAutoencoder, StackedAutoencoder
from aecli.models.vae import kl_to_standard_normal
from aecli.training.run import run

from .conftest import quick_cfg, read_events, read_metrics

MODELS = ["ae", "dae", "conv", "vae", "stacked"]


# each model with the noise it picks, and the other noises where a model treats noise its own way
@pytest.mark.parametrize("model,noise", [(m, None) for m in MODELS] + [
    ("conv", "gaussian"), ("vae", "binomial"), ("stacked", "gaussian"), ("ae", "gaussian")])
def test_every_model_trains(model, noise, tmp_path):
    cfg = quick_cfg(f"model={model}", *([f"noise={noise}"] if noise else []))
    result = run(cfg, tmp_path)
    unit = "per_image" if model == "vae" else "per_pixel"
    events = read_events(tmp_path)
    first_steps = [e.value for e in events.Scalars(f"train_step/loss_{unit}")][:2]
    epochs = events.Scalars(f"train_epoch/loss_{unit}")
    assert len(epochs) == 2
    # the second epoch's mean loss is well below the loss of the first steps
    assert epochs[-1].value < 0.9 * min(first_steps)
    metrics = read_metrics(tmp_path)
    assert result.status == "completed" and metrics[f"val/loss_{unit}"] == pytest.approx(result.objective)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values() if isinstance(v, float))


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 7, 11), (3, 5, 5)])
def test_conv_reconstructs_any_input_size(shape):
    model = ConvAutoencoder(shape, channels=(8, 16), latent_dim=4)
    x = torch.rand(3, *shape)
    assert model.encode(x).shape == (3, 4)
    assert model(x).shape == x.shape


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_models_take_their_input_shape_from_the_data(name, shape):
    model = instantiate(quick_cfg(f"model={name}").model, input_shape=shape)
    x = torch.rand(2, *shape)
    assert model(x).shape == x.shape
    assert model.encode(x).shape == (2, model.latent_dim)
    assert model.reconstruct(x, BinaryCrossEntropy()).shape == x.shape


def test_vae_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(64, 20), torch.randn(64, 20)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(kl_to_standard_normal(mu, logvar), expected, rtol=1e-5, atol=1e-5)


def test_vae_loss_is_recon_sum_plus_beta_kl_and_its_neg_elbo_is_recon_plus_kl():
    torch.manual_seed(0)
    model = VAE((1, 8, 8), hidden_dims=(16,), latent_dim=3, beta=0.5)
    x = torch.rand(10, 1, 8, 8)
    terms = model.loss(x, x, BinaryCrossEntropy())
    assert terms["loss"].item() == pytest.approx(terms["recon"].item() + 0.5 * terms["kl"].item(), rel=1e-6)
    assert terms["recon"].item() > 64 * 0.5  # summed over 64 pixels: far above a per-pixel mean
    means = {"recon": 40.0, "kl": 3.0, "loss": 41.5}
    assert model.extra_metrics(means, BinaryCrossEntropy()) == {"neg_elbo_nats_per_image": 43.0}
    assert model.extra_metrics(means, SquaredError()) == {}  # squared error is no likelihood
    assert model.sample_latents(5, torch.Generator().manual_seed(0)).shape == (5, 3)


def test_stacked_stages_train_their_own_layer_with_their_own_noise_level(tmp_path):
    cfg = quick_cfg("model=stacked", "model.pretrain_epochs=2", "trainer.epochs=1", "noise=binomial",
                    "model.pretrain_noise_levels=[0.1,0.2,0.3]")
    model = instantiate(cfg.model, input_shape=(1, 8, 8))
    stages = model.pretraining_stages(instantiate(cfg.noise))
    assert [s.noise.p for s in stages] == [0.1, 0.2, 0.3]  # the configured levels, layer by layer
    assert [s.name for s in stages] == ["pretrain/layer0", "pretrain/layer1", "pretrain/layer2"]
    layer1 = stages[1].module
    assert {id(p) for p in layer1.parameters()} == {id(p) for p in [*model.enc[1].parameters(),
                                                                     *model.dec[1].parameters()]}
    assert stages[1].inputs(torch.rand(4, 1, 8, 8)).shape == (4, 256)
    default = StackedAutoencoder((1, 8, 8), hidden_dims=(32, 16), latent_dim=8)
    assert [s.noise.p for s in default.pretraining_stages(instantiate(cfg.noise))] == [0.25, 0.25, 0.25]

    run(cfg, tmp_path)
    events = read_events(tmp_path)
    tags = events.Tags()["scalars"]
    for k in range(3):
        values = [e.value for e in events.Scalars(f"pretrain/layer{k}_step/loss_per_unit")]
        assert len(values) > 5 and values[-1] < values[0], f"layer {k} pre-training did not reduce its loss"
        assert f"pretrain/layer{k}/loss_per_unit" in tags
    assert "train_epoch/loss_per_pixel" in tags


def test_losses_elementwise():
    logits, target = torch.zeros(2, 3), torch.ones(2, 3)
    assert torch.allclose(BinaryCrossEntropy().elementwise(logits, target), torch.full((2, 3), 0.6931), atol=1e-4)
    assert torch.equal(SquaredError().elementwise(logits, target), torch.ones(2, 3))
    assert torch.equal(BinaryCrossEntropy().output(logits), torch.full((2, 3), 0.5))


def test_cpu_bce_matches_torch_in_value_and_gradient():
    """The fp32 CPU BCE (aecli.losses.BCEWithLogitsFloat32CPU) is torch's, computed faster."""
    torch.manual_seed(0)
    logits = (torch.randn(64, 1, 28, 28) * 8).requires_grad_()
    target = torch.rand(64, 1, 28, 28)
    ours = BinaryCrossEntropy().elementwise(logits, target)
    theirs = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)
    g_ours, = torch.autograd.grad(ours.sum(), logits)
    g_theirs, = torch.autograd.grad(theirs.sum(), logits)
    assert torch.allclose(g_ours, g_theirs, atol=1e-6)
    x = torch.randn(3, 4, dtype=torch.double, requires_grad=True)
    t = torch.rand(3, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(BCEWithLogitsFloat32CPU.apply, (x, t))
