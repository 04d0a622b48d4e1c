"""Noise statistics: masking removes a fraction p, Gaussian adds noise of std sigma."""
import pytest
import torch

from aecli.noise import GaussianNoise, MaskingNoise, NoNoise


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_masking_zeroes_fraction_p(p):
    torch.manual_seed(0)
    x = torch.rand(200_000) * 0.9 + 0.1  # no zeros to start with
    y = MaskingNoise(p)(x)
    assert (y == 0).float().mean().item() == pytest.approx(p, abs=0.005)
    kept = y != 0
    assert torch.equal(y[kept], x[kept])  # survivors are untouched, not rescaled


@pytest.mark.parametrize("sigma", [0.1, 0.5])
def test_gaussian_residual_has_std_sigma(sigma):
    torch.manual_seed(0)
    x = torch.rand(200_000)
    residual = GaussianNoise(sigma, clip=False)(x) - x
    assert residual.mean().item() == pytest.approx(0.0, abs=0.01)
    assert residual.std().item() == pytest.approx(sigma, rel=0.01)


def test_gaussian_clip_keeps_data_range():
    torch.manual_seed(0)
    y = GaussianNoise(1.0, clip=True)(torch.rand(10_000))
    assert y.min().item() >= 0.0 and y.max().item() <= 1.0
    assert (y == 1.0).any() and (y == 0.0).any()


def test_no_noise_is_identity_and_levels_change():
    assert not NoNoise().corrupts and MaskingNoise(0.1).corrupts and not MaskingNoise(0.0).corrupts
    assert GaussianNoise(0.2).corrupts and not GaussianNoise(0.0).corrupts
    x = torch.rand(5)
    assert NoNoise()(x) is x
    assert MaskingNoise(0.1).at_level(0.3).p == 0.3
    g = GaussianNoise(0.2, clip=True).at_level(0.4, clip=False)
    assert (g.sigma, g.clip) == (0.4, False)
