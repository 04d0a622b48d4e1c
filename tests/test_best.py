"""The best model is the one with the best ``objective``: best.pt, metrics.json and the value
returned to sweepers all follow it, and the reading side agrees with what the writer recorded."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from aecli.errors import ConfigError
from aecli.store.checkpoint import best_state, load_model, read
from aecli.training.best import BestModel
from aecli.training.hooks import Hook
from aecli.training.run import run

from .conftest import make_cfg, read_metrics


class Validations(Hook):
    """Every validation of the run: (step, metrics)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, dict[str, float]]] = []

    def on_epoch_end(self, run, result, val) -> None:
        if val is not None:
            self.seen.append((run.state.step, dict(val)))


def test_the_best_model_is_the_one_with_the_best_objective_not_the_best_loss(tmp_path):
    # beta far from 1: the training loss (recon + 0.05 KL) and the -ELBO (recon + KL) disagree
    # on which epoch is best (the test checks that they do)
    validations = Validations()
    result = run(make_cfg("model=vae", "model.beta=0.05", "trainer.epochs=4", "trainer.progress=log",
                          "objective=val/neg_elbo_nats_per_image"), tmp_path, extra_hooks=[validations])
    steps = [step for step, _ in validations.seen]
    elbo = [val["neg_elbo_nats_per_image"] for _, val in validations.seen]
    loss = [val["loss_per_image"] for _, val in validations.seen]
    best = steps[elbo.index(min(elbo))]
    assert best != steps[loss.index(min(loss))], "the setting must make the two choices differ"

    metrics = read_metrics(tmp_path)
    assert (metrics["best_step"], metrics["objective"], metrics["best_value"]) == \
        (best, "val/neg_elbo_nats_per_image", min(elbo))
    # the best model's metrics.json numbers are that epoch's (validation is seeded: same model,
    # same numbers), and so is what the sweeper gets
    assert metrics["val/neg_elbo_nats_per_image"] == min(elbo) == result.objective
    # the writer's record (last.pt) and the reading side agree on where the best model is
    assert read(tmp_path / "checkpoints" / "last.pt")["best_step"] == best
    state, file = best_state(tmp_path / "checkpoints" / "best.pt", key="path")
    assert (file.name, state["step"]) == ("best.pt", best)
    model = load_model(tmp_path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state["model"].items())


@pytest.mark.parametrize("objective,problem", [
    ("val/nope", "val/nope is not a validation metric of this run"),
    ("test/mse_per_pixel", "test/mse_per_pixel is not a validation metric, so it cannot choose"),
])
def test_an_objective_that_validation_does_not_measure_is_refused_before_training(tmp_path, objective, problem):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as e:
        run(make_cfg("model=ae", "trainer.epochs=1", "trainer.progress=log", f"objective={objective}"), run_dir)
    assert e.value.key == "objective" and problem in e.value.problem
    assert "val/mse_per_pixel" in e.value.fix
    assert not run_dir.exists()  # refused before anything was written


def test_psnr_is_maximised_every_other_metric_minimised():
    def choose(objective: str, values: list[float]) -> int | None:
        best, state = BestModel(objective, "per_pixel"), SimpleNamespace(best_step=None, best_val=math.inf, step=0)
        for value in values:
            state.step += 10
            best.update(state, {"loss_per_pixel": value, "psnr_db": value, "mse_per_pixel": value})
        return state.best_step

    assert choose("val/psnr_db", [20.0, 25.0, 22.0]) == 20
    assert choose("val/mse_per_pixel", [0.03, 0.01, 0.02]) == 20
    assert choose(None, [0.03, 0.04, 0.02]) == 30
    assert choose(None, [math.nan, 0.04]) == 20  # a nan is never the best
