"""The rest of the family: sparse, contractive and vector-quantised autoencoders, and the VAE's KL
schedules against posterior collapse. Each claim is a number that could come out otherwise."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch.utils._python_dispatch import TorchDispatchMode

from aecli import cli
from aecli.errors import ConfigError
from aecli.losses import BinaryCrossEntropy, SquaredError
from aecli.models import VAE, VQVAE, ContractiveAutoencoder, HasPrior, MeasuresCodes, SparseAutoencoder
from aecli.models.contractive import exact_jacobian_norm_sq
from aecli.models.sparse import NEAR_ZERO
from aecli.training.build import build_parts, new_state
from aecli.training.graph_step import EagerReplay, GraphStep
from aecli.training.hooks import Hook
from aecli.training.run import run
from aecli.training.state import EpochState
from aecli.training.step import Step
from aecli.use import evaluate, sample
from aecli.use.trained import open_run

from .conftest import make_cfg, quick_cfg, read_events, read_metrics, without_timing
from .test_ddp import finish, torchrun

NEW = {"sparse": ["mean_activation", "near_zero_fraction"], "contractive": ["jacobian_frobenius_sq"],
       "vqvae": ["codebook_perplexity", "codes_used"], "conv_vqvae": ["codebook_perplexity", "codes_used"]}


@pytest.mark.parametrize("model,extra", [
    ("sparse", []), ("sparse", ["model.sparsity=kl", "noise=gaussian", "loss=bce"]),
    ("contractive", []), ("contractive", ["model.hidden_dims=[32]", "noise=binomial", "loss=bce"]),
    ("vqvae", []), ("vqvae", ["model.ema=true", "noise=binomial", "loss=bce"]),
    ("conv_vqvae", ["model.ema=true"]), ("conv_vqvae", ["noise=gaussian", "loss=bce", "trainer.epochs=4"]),
])
def test_each_new_model_trains_with_the_noises_and_losses_and_reports_its_code_metrics(model, extra, tmp_path):
    result = run(quick_cfg(f"model={model}", *extra), tmp_path)
    # the reconstruction term: a VQ-VAE's total loss first rises while its codebook catches up
    steps = [e.value for e in read_events(tmp_path).Scalars("train_step/recon_per_pixel")]
    assert result.status == "completed" and sum(steps[-3:]) < 0.95 * sum(steps[:3])
    metrics = read_metrics(tmp_path)
    for key in NEW[model]:
        assert math.isfinite(metrics[f"val/{key}"]) and math.isfinite(metrics[f"test/{key}"]), key


@pytest.mark.parametrize("hidden", [(), (24,)], ids=["one sigmoid layer (closed form)", "deeper (estimate)"])
def test_the_contraction_penalty_is_the_exact_jacobian_norm_in_expectation(hidden):
    torch.manual_seed(0)
    model = ContractiveAutoencoder((1, 6, 6), hidden_dims=hidden, latent_dim=5, projections=1)
    x = torch.rand(4, 1, 6, 6)
    exact = exact_jacobian_norm_sq(model.encode, x)
    draws = 1 if not hidden else 3000
    estimate = torch.stack([model.jacobian_norm_sq(x)[1] for _ in range(draws)]).mean(0)
    torch.testing.assert_close(estimate, exact, rtol=0.05 if hidden else 1e-5, atol=1e-6)
    if hidden:  # one draw is noisy: the test would catch an estimator that is exact by accident
        assert not torch.allclose(model.jacobian_norm_sq(x)[1], exact, rtol=0.01)


def _val(cfg_overrides: list[str], tmp_path, name: str) -> tuple[dict, object]:
    result = run(make_cfg(*cfg_overrides, "trainer.progress=log", "noise=none"), tmp_path / name)
    return result.metrics, open_run(tmp_path / name, device="cpu")


def test_the_sparse_codes_are_sparser_than_the_aes_at_equal_reconstruction(tmp_path):
    ae, ae_run = _val(["model=ae", "model.latent_dim=64", "model.latent_activation=true", "trainer.epochs=8"],
                      tmp_path, "ae")
    sparse, _ = _val(["model=sparse", "model.sparsity_weight=0.03", "trainer.epochs=8"], tmp_path, "sparse")
    assert sparse["val/mse_per_pixel"] < 1.15 * ae["val/mse_per_pixel"]  # about as good
    data = ae_run.data()
    with torch.no_grad():
        codes = ae_run.model.encode(data.as_float(data.val))
    ae_silent, ae_mean = (codes.abs() < NEAR_ZERO).float().mean().item(), codes.mean().item()
    assert sparse["val/near_zero_fraction"] > ae_silent + 0.1, (sparse["val/near_zero_fraction"], ae_silent)
    assert sparse["val/mean_activation"] < 0.6 * ae_mean, (sparse["val/mean_activation"], ae_mean)


def test_the_contractive_jacobian_is_smaller_than_the_plain_aes(tmp_path):
    plain, _ = _val(["model=contractive", "model.contraction_weight=0", "trainer.epochs=8"], tmp_path, "plain")
    cae, _ = _val(["model=contractive", "trainer.epochs=8"], tmp_path, "cae")  # the default weight
    assert cae["test/jacobian_frobenius_sq"] < 0.5 * plain["test/jacobian_frobenius_sq"]
    assert cae["val/mse_per_pixel"] < 1.5 * plain["val/mse_per_pixel"]


def test_dead_code_restarts_use_far_more_of_the_codebook(tmp_path):
    with_, _ = _val(["model=vqvae", "trainer.epochs=6"], tmp_path, "restarts")
    without, _ = _val(["model=vqvae", "model.restarts=false", "trainer.epochs=6"], tmp_path, "none")
    assert with_["val/codebook_perplexity"] > 3 * without["val/codebook_perplexity"]
    assert with_["val/codes_used"] > 3 * without["val/codes_used"]
    assert with_["val/mse_per_pixel"] < without["val/mse_per_pixel"]


def test_a_cyclical_kl_schedule_keeps_units_active_where_constant_beta_collapses(tmp_path):
    common = ["model=vae", "model.beta=3", "trainer.epochs=20"]
    constant, _ = _val(common, tmp_path, "constant")
    cyclical, _ = _val([*common, "model.kl_schedule=cyclical", "model.kl_warmup_steps=50",
                        "model.kl_cycle_steps=100"], tmp_path, "cyclical")
    assert constant["val/active_units"] <= 1 and constant["test/active_units"] <= 1
    assert cyclical["val/active_units"] >= 4


def test_the_kl_weight_follows_its_schedule_counting_training_steps_only():
    x = torch.rand(8, 1, 4, 4)
    bce = BinaryCrossEntropy()
    linear = VAE((1, 4, 4), hidden_dims=(8,), latent_dim=2, beta=2.0, kl_schedule="linear", kl_warmup_steps=4)
    cyclical = VAE((1, 4, 4), hidden_dims=(8,), latent_dim=2, beta=2.0, kl_schedule="cyclical",
                   kl_warmup_steps=2, kl_cycle_steps=3)
    seen = {"linear": [], "cyclical": []}
    for _ in range(6):
        for name, model in (("linear", linear), ("cyclical", cyclical)):
            seen[name].append(model.loss(x, x, bce)["kl_weight"].item())
    assert seen["linear"] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert seen["cyclical"] == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]
    with torch.no_grad():
        linear.loss(x, x, bce)  # a probe, not a step
    linear.eval()
    terms = linear.loss(x, x, bce)  # validation: the full beta, and no step
    assert int(linear.kl_steps) == 6 and "kl_weight" not in terms
    torch.testing.assert_close(terms["loss"], terms["recon"] + 2.0 * terms["kl"])


def test_free_bits_leave_the_kl_below_them_unpenalised():
    model = VAE((1, 4, 4), hidden_dims=(8,), latent_dim=3, free_bits=0.5)
    model.encode_stats = lambda x: (torch.zeros(len(x), 3), torch.zeros(len(x), 3))  # KL 0 per unit
    x = torch.rand(4, 1, 4, 4)
    terms = model.loss(x, x, BinaryCrossEntropy())
    assert terms["kl"].item() == 0.0
    torch.testing.assert_close(terms["loss"], terms["recon"] + 1.5)  # 3 units x 0.5 nats


def test_a_vae_checkpoint_from_before_the_schedules_loads():
    model = VAE((1, 4, 4), hidden_dims=(8,), latent_dim=2)
    old = {k: v for k, v in model.state_dict().items() if k != "kl_steps"}
    model.kl_steps.fill_(7)
    model.load_state_dict(old)
    assert int(model.kl_steps) == 0


@pytest.mark.parametrize("overrides", [
    ("model=vqvae", "model.ema=true", "noise=binomial"),
    ("model=vae", "model.kl_schedule=cyclical", "model.kl_warmup_steps=5", "model.kl_cycle_steps=7"),
], ids=["vqvae-ema-restarts", "vae-cyclical"])
def test_resume_continues_the_codebook_and_the_schedule_exactly(overrides, tmp_path):
    common = (*overrides, "trainer.epochs=3", "trainer.progress=log")
    whole = run(make_cfg(*common), tmp_path / "whole")
    run(make_cfg(*common, "trainer.max_steps=15"), tmp_path / "split")  # stops mid-epoch 2
    rest = run(make_cfg(*common, f"resume={tmp_path / 'split'}"), tmp_path / "split")
    for key, value in without_timing(whole.metrics).items():
        if isinstance(value, float):
            assert rest.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_evaluate_reports_the_code_metrics_and_sample_says_a_vqvae_needs_a_learned_prior(tmp_path):
    run(quick_cfg("model=vqvae"), tmp_path / "vq")
    run(quick_cfg("model=vae"), tmp_path / "vae")
    vq = open_run(tmp_path / "vq", device="cpu")
    result = evaluate.evaluate(vq, evaluate.Options(device="cpu", probe_images=0, progress=False))
    assert 1 <= result["test/codebook_perplexity"] <= 256 and 0 < result["test/codes_used"] <= 1
    vae = evaluate.evaluate(open_run(tmp_path / "vae", device="cpu"),
                            evaluate.Options(device="cpu", probe_images=0, progress=False, iw_samples=0))
    assert 0 <= vae["test/active_units"] <= 20
    assert not isinstance(vq.model, HasPrior)
    with pytest.raises(ConfigError, match="a VQ-VAE needs a learned prior over its code indices"):
        sample.prior_samples(vq, 4, 0)
    idx = vq.model.code_indices(torch.rand(3, 1, 8, 8))
    assert idx.shape == (3, 4) and idx.dtype == torch.long
    # the code is the quantised vectors: each is a codebook row
    x = torch.rand(3, 1, 8, 8)
    codes = vq.model.encode(x).view(-1, vq.model.code_dim)
    assert torch.equal(codes, vq.model.quantizer.codebook[vq.model.code_indices(x).flatten()])
    # aecli encode writes the indices too: the codes are those codebook rows
    assert cli.main(["encode", str(tmp_path / "vq"), "--out", str(tmp_path / "enc")]) == 0
    arrays = np.load(tmp_path / "enc" / "codes_test.npz")
    indices = torch.from_numpy(arrays["code_indices"])
    assert indices.shape == (359, 4) and indices.dtype == torch.int64 and len(indices.unique()) > 1
    assert torch.equal(torch.from_numpy(arrays["codes"]).view(-1, vq.model.code_dim),
                       vq.model.quantizer.codebook[indices.flatten()])
    assert cli.main(["encode", str(tmp_path / "vae"), "--out", str(tmp_path / "enc_vae")]) == 0
    assert "code_indices" not in np.load(tmp_path / "enc_vae" / "codes_test.npz")


def test_each_new_model_has_only_its_capabilities():
    shape = (1, 8, 8)
    for name in NEW:
        model = instantiate(quick_cfg(f"model={name}").model, input_shape=shape)
        assert isinstance(model, MeasuresCodes) and not isinstance(model, HasPrior), name
    assert isinstance(VAE(shape), MeasuresCodes)
    assert isinstance(SparseAutoencoder(shape), MeasuresCodes) and isinstance(VQVAE(shape), MeasuresCodes)


def test_vq_models_take_any_input_shape():
    for shape in [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 7, 11), (20,)]:
        model = instantiate(quick_cfg("model=vqvae").model, input_shape=shape)
        assert model(torch.rand(2, *shape)).shape == (2, *shape)
    for shape in [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 7, 11)]:
        model = instantiate(quick_cfg("model=conv_vqvae").model, input_shape=shape)
        x = torch.rand(2, *shape)
        assert model(x).shape == x.shape and model.encode(x).shape == (2, model.latent_dim)


# --- CUDA graphs, on the CPU: an eager stand-in for what a graph needs ------------------------

class NoHostSync(TorchDispatchMode):
    """Fails on the ops a CUDA graph cannot capture: reading a value back to the host (.item(),
    bool(tensor)) and ops whose output size depends on the data."""

    SYNCS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "equal")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        assert name not in self.SYNCS, f"{name} syncs with the host: a CUDA graph cannot capture it"
        return func(*args, **(kwargs or {}))


GRAPHED = [("vqvae", {"ema": True}), ("vqvae", {}), ("conv_vqvae", {"ema": True}), ("sparse", {"sparsity": "kl"}),
           ("contractive", {"hidden_dims": [16]}), ("vae", {"kl_schedule": "cyclical", "free_bits": 0.1})]


@pytest.mark.parametrize("name,extra", GRAPHED)
def test_a_training_step_of_the_model_has_no_host_sync(name, extra):
    """A CUDA graph records no host sync: the model's part of the step (the argmin, the EMA
    updates, the restarts, the schedule) has none (the trainer's graph uses capturable Adam)."""
    torch.manual_seed(0)
    model = instantiate(quick_cfg(f"model={name}").model, input_shape=(1, 8, 8), **extra)
    x = torch.rand(16, 1, 8, 8)
    for _ in range(3):
        with NoHostSync():
            model.loss(x, x, SquaredError())["loss"].backward()


@pytest.mark.parametrize("name,extra", GRAPHED)
def test_the_graph_step_trains_the_new_models_exactly_like_the_eager_step(name, extra):
    """On the graph step's stand-in (``EagerReplay``): the same losses, weights and buffers (codebook,
    EMA statistics, usage, the KL step count) as the eager step: the warm-up steps and the
    recording leave no trace in the model's buffers."""
    overrides = [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}".replace(" ", "") for k, v in extra.items()]
    cfg = quick_cfg(f"model={name}", "noise=gaussian", *overrides)
    steps = []
    for kind in (Step, GraphStep):
        torch.manual_seed(0)
        parts = build_parts(cfg)
        state = new_state(parts, cfg)
        phase = state.phases[-1]
        args = (phase, parts.recon, parts.precision, state.scaler, parts.data.as_float)
        steps.append(GraphStep(*args, recorder=EagerReplay) if kind is GraphStep else Step(*args))
    eager, graph = steps
    for e in range(2):
        perm = torch.randperm(len(parts.data.train), generator=torch.Generator().manual_seed(e))
        losses = []
        for step in (eager, graph):
            torch.manual_seed(10 + e)
            step.begin_epoch(EpochState(perm=perm), e * 10)
            losses.append([float(step(parts.data.train[perm[i:i + 128]], e * 10 + i // 128 + 1)["loss"])
                           for i in range(0, len(perm), 128)])
        assert losses[0] == losses[1]
    trained = [step.phase.module.state_dict() for step in (eager, graph)]
    for key, value in trained[0].items():
        assert torch.equal(value, trained[1][key]), key


# --- DDP -------------------------------------------------------------------------------------

class StatePerRank(Hook):
    """Saves each rank's model state (parameters and buffers) after each epoch into ``folder``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_epoch_end(self, run, result, val) -> None:
        torch.save(run.model.state_dict(), f"{self.folder}/rank{run.world.rank}_epoch{run.state.epoch}.pt")


@pytest.mark.integration
def test_every_rank_keeps_the_same_codebook_with_ema_and_restarts(tmp_path):
    code, out = finish(torchrun("model=vqvae", "model.ema=true", "trainer.epochs=2", "trainer.batch_size=32",
                                "trainer.progress=log", "+callbacks.ranks._target_=tests.test_family.StatePerRank",
                                f"+callbacks.ranks.folder={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}",
                                cwd=tmp_path))
    assert code == 0, out
    saved = sorted(tmp_path.glob("rank0_epoch*.pt"))
    assert saved
    for path in saved:
        zero, one = torch.load(path), torch.load(str(path).replace("rank0", "rank1"))
        for key, value in zero.items():
            assert torch.equal(value, one[key]), key
    assert math.isfinite(read_metrics(tmp_path / "run")["val/codebook_perplexity"])
