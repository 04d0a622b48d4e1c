"""One owner of each piece of a run's state: the step owns the epoch's sums (and hands out
copies), the epoch state keeps the position, the hooks' context is built by keyword, and a
resume is a plan that ``prepare`` makes once and ``run`` follows."""
from __future__ import annotations

import logging

import pytest
import torch

from aecli.store.checkpoint import read
from aecli.training.build import build_parts, make_step, new_state
from aecli.training.hooks import Hooks, Run
from aecli.training.plan import prepare
from aecli.training.run import run
from aecli.training.state import EpochState

from .conftest import make_cfg, quick_cfg


@pytest.fixture(scope="module")
def built():
    cfg = quick_cfg("model=ae")
    parts = build_parts(cfg)
    return cfg, parts, new_state(parts, cfg)


def test_the_step_owns_the_epoch_sums_and_hands_out_copies(built):
    cfg, parts, state = built
    step = make_step(state.phases[-1], parts, state, cfg)
    # a resumed partial epoch carries its sums so far until the step takes them over
    es = EpochState(perm=torch.arange(len(parts.data.train)), carried={"loss": torch.tensor(5.0)})
    step.begin_epoch(es, 0)
    assert es.carried is None and not hasattr(es, "sums")
    terms = step(parts.data.train[:8], 1)
    expected = 5.0 + 8 * terms["loss"].item()
    totals = step.totals()
    assert totals["loss"].item() == pytest.approx(expected)
    totals["loss"] += 100.0  # a reader cannot change the step's sums
    assert step.totals()["loss"].item() == pytest.approx(expected)
    step.begin_epoch(EpochState(perm=es.perm), 8)  # the next epoch starts from nothing
    assert step.totals() == {}


def test_the_hook_context_is_slim_and_built_by_keyword(built, tmp_path):
    cfg, parts, state = built
    fields = dict(cfg=cfg, run_dir=tmp_path, state=state, data=parts.data, recon=parts.recon, noise=parts.noise,
                  hooks=Hooks([]))
    with pytest.raises(TypeError):
        Run(*fields.values())
    run = Run(**fields)
    # what follows from the config and the state is derived, not passed (and cannot disagree)
    assert run.model is state.model and run.batch_size == cfg.trainer.batch_size
    assert run.device == next(state.model.parameters()).device and run.config["model"] == dict(cfg.model)
    assert run.phase is None and run.epoch_sums() == {}


def test_a_resume_is_a_plan_that_trains_the_stored_config_and_says_what_the_command_changed(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run(make_cfg("model=ae", "trainer.epochs=1", "trainer.progress=log"), run_dir)
    cfg = make_cfg("model=ae", "trainer.epochs=2", "trainer.progress=log", "resume=auto")
    plan = prepare(cfg, run_dir)
    assert plan.resuming and plan.resume_from["step"] == 10
    assert plan.changed == ("trainer.epochs: 1 -> 2",)  # the one key the command changed (it may)
    assert plan.cfg.trainer.epochs == 2 and plan.cfg.model == read(run_dir)["config"]["model"]
    with pytest.raises(ValueError, match="the plan is for"):
        run(cfg, tmp_path / "elsewhere", plan=plan)
    with caplog.at_level(logging.INFO, logger="aecli"):
        result = run(cfg, run_dir, plan=plan)
    assert result.status == "completed" and result.step == 20
    assert "resuming from step 10 (phase 0, epoch 1): training the checkpoint's config; from this command: " \
           "trainer.epochs: 1 -> 2" in caplog.text


def test_a_resumed_writer_sorts_after_every_earlier_event_file(tmp_path):
    """TensorBoard purges only events of files that sort before the resumed run's: an earlier
    process that started in this same second with a larger pid must not sort after it (its
    events past the resumed step would come back as duplicates)."""
    import socket
    import time

    from aecli.training import tensorboard as tb

    earlier = tmp_path / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.99999999.0"
    earlier.write_bytes(b"")
    writer = tb.open_writer(tmp_path, resumed_step=10)
    writer.close()
    files = sorted(p.name for p in tmp_path.glob("events.out.tfevents.*"))
    assert files[0] == earlier.name and len(files) == 2


def test_a_resume_with_auto_threads_keeps_the_count_of_the_run_it_continues(tmp_path):
    """num_threads=auto times the count afresh in each process; a resume keeps the checkpoint's
    (another count sums in another order), so it continues exactly."""
    run_dir = tmp_path / "run"
    run(make_cfg("model=ae", "trainer.epochs=1", "trainer.progress=log", "trainer.num_threads=1"), run_dir)
    torch.set_num_threads(2)
    resumed = run(make_cfg("model=ae", "trainer.epochs=2", "trainer.progress=log", f"resume={run_dir}"), run_dir)
    assert resumed.metrics["torch_threads"] == 1 and torch.get_num_threads() == 1
