"""Packed sweeps (``hydra/launcher=packed``): members trained side by side equal their separate
runs, diverge alone, resume exactly after a kill, and leave run dirs every command opens; the
launcher packs what can pack and says why the rest runs alone."""
from __future__ import annotations

import json
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import pytest

from aecli import cli
from aecli.errors import RunFailed
from aecli.threads import cores_available
from aecli.training.packed import train_pack
from aecli.training.packing import pack_key
from aecli.training.plan import prepare
from aecli.training.run import RunResult, run

from .conftest import make_cfg, popen_cli, quick_cfg, read_events, read_metrics, run_cli

TOLERANCE = 1e-5  # relative, on the final test loss: fp32 sums in another order (batched kernels)

# per model: what the two members share, and what each sets for itself
CASES = {
    "ae": ((), ("seed=0", "optim.lr=1e-3"), ("seed=1", "optim.lr=3e-3")),
    "dae": ((), ("seed=0", "noise.p=0.1"), ("seed=1", "noise.p=0.4", "optim.weight_decay=1e-4")),
    "conv": (("loss=mse",), ("seed=0",), ("seed=1", "optim.lr=3e-3")),
    "vae": (("model.kl_schedule=linear",), ("seed=0", "model.beta=0.5", "model.kl_warmup_steps=5"),
            ("seed=1", "model.beta=2", "model.kl_warmup_steps=20")),
}


def pack(cfgs, root: Path, name: str = "pack") -> list:
    plans = [prepare(cfg, root / f"{name}{i}") for i, cfg in enumerate(cfgs)]
    return train_pack(plans, [nullcontext] * len(plans), [{}] * len(plans))


def loss_key(result: RunResult) -> str:
    return next(k for k in result.metrics if k.startswith("test/loss_"))


@pytest.mark.parametrize("model", CASES)
def test_each_member_equals_its_separate_run(model, tmp_path):
    shared, *members = CASES[model]
    cfgs = [quick_cfg(f"model={model}", *shared, *m) for m in members]
    packed = pack(cfgs, tmp_path)
    for i, cfg in enumerate(cfgs):
        alone = run(cfg, tmp_path / f"alone{i}")
        key = loss_key(alone)
        assert packed[i].status == "completed" and packed[i].metrics["steps"] == alone.metrics["steps"] == 20
        assert packed[i].metrics[key] == pytest.approx(alone.metrics[key], rel=TOLERANCE), (model, i)
        assert packed[i].metrics["val/" + key[5:]] == pytest.approx(alone.metrics["val/" + key[5:]], rel=TOLERANCE)
    assert packed[0].metrics[key] != pytest.approx(packed[1].metrics[key], rel=1e-3)  # two different runs


def test_a_diverging_member_fails_alone_and_the_other_trains_on(tmp_path):
    cfgs = [quick_cfg("seed=0"), quick_cfg("seed=1", "optim.lr=1e12")]
    good, bad = pack(cfgs, tmp_path)
    assert isinstance(bad, RunFailed) and bad.key == "trainer.on_nan" and "non-finite loss" in bad.problem
    alone = run(cfgs[0], tmp_path / "alone")
    assert good.status == "completed" and good.metrics["steps"] == 20
    assert good.metrics["test/loss_per_pixel"] == pytest.approx(alone.metrics["test/loss_per_pixel"], rel=TOLERANCE)
    assert not (tmp_path / "pack1" / "metrics.json").exists()


def test_a_member_refused_while_building_leaves_the_others_to_train(tmp_path):
    cfgs = [quick_cfg("seed=0"), quick_cfg("seed=1", "objective=val/no_such_metric")]
    good, refused = pack(cfgs, tmp_path)
    assert good.status == "completed" and read_metrics(tmp_path / "pack0")["steps"] == 20
    assert getattr(refused, "key", None) == "objective"


def test_a_member_writes_what_a_separate_run_writes(tmp_path):
    cfgs = [quick_cfg("seed=0"), quick_cfg("seed=1")]
    pack(cfgs, tmp_path)
    run(cfgs[0], tmp_path / "alone")
    member, alone = tmp_path / "pack0", tmp_path / "alone"
    names = {p.relative_to(member).as_posix() for p in member.rglob("*") if "events" not in p.name}
    assert names == {p.relative_to(alone).as_posix() for p in alone.rglob("*") if "events" not in p.name}
    ours, theirs = read_events(member), read_events(alone)
    assert ours.Tags()["scalars"] == theirs.Tags()["scalars"]
    assert [e.step for e in ours.Scalars("val/psnr_db")] == [e.step for e in theirs.Scalars("val/psnr_db")] == [10, 20]
    assert [e.value for e in ours.Scalars("val/psnr_db")] == pytest.approx(
        [e.value for e in theirs.Scalars("val/psnr_db")], rel=TOLERANCE)


def test_every_use_command_opens_a_member(tmp_path, capsys):
    cfgs = [quick_cfg("model=vae", "seed=0"), quick_cfg("model=vae", "seed=1", "model.beta=2")]
    pack(cfgs, tmp_path)
    member, out = str(tmp_path / "pack1"), str(tmp_path / "out")
    for args in (["encode", member], ["map", member, "--method", "pca"], ["search", member, "--query", "5"],
                 ["denoise", member, "--synthetic", "--noise", "gaussian"], ["sample", member, "--n", "4"],
                 ["score", member, "test"],
                 ["finetune", member, "--labels-per-class", "5", "--seeds", "1"], ["evaluate", member]):
        assert cli.main([*args, *(["--out", out] if args[0] != "evaluate" else [])]) == 0, args
    evaluated = json.loads((tmp_path / "pack1" / "eval.json").read_text())
    assert evaluated["checkpoint"] == "best.pt" and evaluated["step"] == read_metrics(tmp_path / "pack1")["best_step"]


@pytest.mark.parametrize("overrides, why", [
    (("model=stacked",), "layer-wise pre-training"),
    (("model=vqvae",), "codebook"),
    (("trainer.precision=16",), "gradient scaler"),
    (("trainer.compile=true",), "torch.compile"),
    (("trainer.on_nan=skip_batch",), "on_nan=skip_batch"),
    (("resume=/some/run",), "resume=auto"),
])
def test_what_cannot_pack_says_why(overrides, why):
    key, reason = pack_key(make_cfg(*overrides))
    assert key is None and why in reason


def test_members_differ_only_in_what_each_can_hold():
    base = pack_key(make_cfg("model=vae"))[0]
    assert base is not None
    for free in ("seed=3", "optim.lr=0.01", "optim.weight_decay=0.1", "model.beta=4", "model.kl_warmup_steps=7",
                 "noise=gaussian"):
        assert pack_key(make_cfg("model=vae", free))[0] == base, free
    for shape in ("model.latent_dim=8", "trainer.batch_size=64", "trainer.epochs=3", "loss=mse", "model=ae",
                  "model.kl_schedule=cyclical", "dataset.classes=[0,1]"):
        assert pack_key(make_cfg("model=vae", shape))[0] != base, shape


SWEEP = ("optim.lr=1e-3,3e-3", "seed=0,1", "trainer.epochs=60", "trainer.progress=log", "hydra/launcher=packed")


def finals(sweep: Path) -> dict[str, tuple[float, int]]:
    return {d.name: (read_metrics(d)["test/loss_per_pixel"], read_metrics(d)["steps"])
            for d in sorted(sweep.iterdir()) if d.is_dir()}


def wait_for_checkpoints(sweep: Path, proc, count: int = 4) -> None:
    deadline = time.time() + 120
    while len(list(sweep.glob("*/checkpoints/last.pt"))) < count and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epochs


@pytest.mark.integration
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_packed_sweep_continues_exactly_with_the_printed_command(how, tmp_path):
    whole = run_cli("-m", *SWEEP, f"hydra.sweep.dir={tmp_path / 'whole'}", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    proc = popen_cli("-m", *SWEEP, f"hydra.sweep.dir={tmp_path / 'cut'}", cwd=tmp_path)
    wait_for_checkpoints(tmp_path / "cut", proc)
    proc.send_signal(how)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (143 if how == signal.SIGTERM else -9), err[-2000:]
    statuses = {json.loads(p.read_text())["status"] for p in (tmp_path / "cut").glob("*/job_status.json")}
    if how == signal.SIGTERM:
        assert statuses == {"STOPPED"}
        command = err.split("Continue with:\n", 1)[1].strip().split()
        assert command[:4] == ["python", "-m", "aecli.train", "-m"] and "resume=auto" in command
        args = command[4:]
    else:
        assert statuses == {"RUNNING"}
        args = [*SWEEP, f"hydra.sweep.dir={tmp_path / 'cut'}", "resume=auto"]
    again = run_cli("-m", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from step" in again.stderr
    assert finals(tmp_path / "cut") == finals(tmp_path / "whole")  # bit for bit


@pytest.mark.integration
def test_a_mixed_sweep_packs_what_it_can_and_the_report_sees_every_job(tmp_path):
    out = run_cli("-m", "model=ae,stacked", "seed=0,1", "trainer.epochs=2", "hydra/launcher=packed",
                  f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    said = out.stdout + out.stderr  # Hydra's launcher lines go to stdout
    assert "1 pack(s) of 2 job(s), 2 alone" in said
    assert said.count("does not pack: its layer-wise pre-training") == 2
    jobs = sorted(d for d in (tmp_path / "sweep").iterdir() if d.is_dir())
    assert len(jobs) == 4
    for d in jobs:
        assert json.loads((d / "job_status.json").read_text())["status"] == "COMPLETED"
        assert (d / ".hydra" / "overrides.yaml").is_file() and (d / "checkpoints" / "best.pt").is_file()
        assert f"[job {d.name.split('_')[0]}]" in (d / "train.log").read_text()
    report = run_cli(str(tmp_path / "sweep"), cwd=tmp_path, module="aecli.report")
    assert report.returncode == 0, report.stderr
    import csv

    rows = list(csv.DictReader((tmp_path / "sweep" / "report.csv").open()))
    assert sorted(r["job"] for r in rows) == ["0", "1", "2", "3"]
    assert all(float(r["test/mse_per_pixel"]) < 0.1 for r in rows)


def test_packs_hold_at_most_pack_size_and_a_lone_job_says_why():
    from aecli.training.packing import Job, group

    jobs = [Job(i, [f"seed={i}"], make_cfg(f"seed={i}", "trainer.pack_size=2")) for i in range(5)]
    jobs.append(Job(5, ["model=conv"], make_cfg("model=conv", "trainer.pack_size=2")))
    packs, alone = group(jobs)
    assert [[j.idx for j in p] for p in packs] == [[0, 1], [2, 3]]
    assert sorted((j.idx, why) for j, why in alone) == [
        (4, "the one left over after packs of trainer.pack_size=2"),
        (5, "no other job of the sweep shares its model, data, loss, batch size and schedule")]


def test_the_launcher_takes_the_configs_the_sweepers_check_composed():
    """Hydra's sweeper composes each job to check the batch; the launcher must not compose it again."""
    from hydra.types import HydraContext
    from omegaconf import OmegaConf

    from aecli.training.packing import load_job
    from hydra_plugins.aecli_packed_launcher.packed_launcher import PackedLauncher

    class Loader:
        calls = 0

        def load_sweep_config(self, master_config, sweep_overrides):
            self.calls += 1
            return OmegaConf.create({"hydra": {"job": {}}, "overrides": list(sweep_overrides)})

    loader, master = Loader(), OmegaConf.create({})
    context = HydraContext(config_loader=loader, callbacks=None)  # type: ignore[arg-type]
    PackedLauncher().setup(hydra_context=context, task_function=lambda cfg: None, config=master)
    batch = [["seed=0"], ["seed=1"]]
    for overrides in batch:  # the sweeper's validate_batch_is_legal
        context.config_loader.load_sweep_config(master, overrides)
    jobs = [load_job(context, master, k, o) for k, o in enumerate(batch)]
    jobs.append(load_job(context, master, 2, ["seed=2"]))  # one the check did not compose: composed now
    assert loader.calls == 3
    assert [list(j.cfg.overrides) for j in jobs] == [*batch, ["seed=2"]]
    assert [j.cfg.hydra.job.num for j in jobs] == [0, 1, 2]


@pytest.mark.integration
def test_packs_run_side_by_side_in_worker_processes_with_n_jobs(tmp_path):
    """hydra.launcher.n_jobs=2: two packs at once, each in a process of its own, one thread each."""
    out = run_cli("-m", "seed=0,1,2,3", "trainer.epochs=2", "trainer.pack_size=2", "hydra/launcher=packed",
                  "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    said = out.stdout + out.stderr
    assert out.returncode == 0, said[-3000:]
    assert "2 pack(s) of 2+2 job(s), 0 alone; 2 at once" in said
    jobs = sorted(d for d in (tmp_path / "sweep").iterdir() if d.is_dir())
    assert [json.loads((d / "job_status.json").read_text())["status"] for d in jobs] == ["COMPLETED"] * 4
    share = max(cores_available() // 2, 1)  # the cores shared by 2 packs at once
    assert all(1 <= read_metrics(d)["torch_threads"] <= share for d in jobs)
    alone = run(quick_cfg("seed=3", "trainer.num_threads=1"), tmp_path / "alone")
    assert read_metrics(jobs[3])["test/loss_per_pixel"] == pytest.approx(alone.metrics["test/loss_per_pixel"],
                                                                         rel=TOLERANCE)


def test_a_member_whose_disk_is_full_fails_alone(tmp_path, monkeypatch):
    """One member's checkpoint cannot be written (a full disk there): it fails with the message a
    separate run gives, and the other member trains on to its end."""
    import errno

    from aecli.store import checkpoint

    save = checkpoint.save

    def full_for_member_1(state, *paths):
        if any("pack1" in str(p) for p in paths):
            raise OSError(errno.ENOSPC, "No space left on device", str(paths[0]))
        save(state, *paths)

    monkeypatch.setattr(checkpoint, "save", full_for_member_1)
    good, full = pack([quick_cfg("seed=0"), quick_cfg("seed=1")], tmp_path)
    assert good.status == "completed" and read_metrics(tmp_path / "pack0")["steps"] == 20
    assert isinstance(full, RunFailed) and "No space left on device" in full.problem
    assert not (tmp_path / "pack1" / "metrics.json").exists()
