"""Sweeps with Hydra's plugins (joblib, submitit_local, Optuna), job status files and
``aecli.use.report``. Each real sweep runs once per module, on 1-epoch digits runs."""
import csv
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from aecli import cli
from aecli.config import check
from aecli.errors import ConfigError
from aecli.training.app import picklable
from aecli.training.placement import cores_available, gpu_for_job, jobs_at_once, threads_per_job
from aecli.use import report

from .conftest import make_cfg, read_events, read_metrics, run_cli

TINY = ("trainer.epochs=1", "trainer.progress=log")
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
SUBMITIT = "hydra_plugins.hydra_submitit_launcher.submitit_launcher."
# a user's model config with a typo: it passes the config check and fails inside the job
BROKEN_MODEL = "_target_: aecli.models.MLPAutoencoder\nhidden_dims: [32]\nlatent_dim: 4\nno_such_argument: 1\n"


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name.split("_")[0]))


def statuses(sweep: Path) -> dict[str, dict]:
    return {p.name: json.loads((p / "job_status.json").read_text()) for p in job_dirs(sweep)}


# --- how jobs share a machine: pure functions ---------------------------------------------

def test_jobs_at_once_follows_the_launcher_config():
    assert jobs_at_once(None, 8) == 1
    assert jobs_at_once({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 8) == 1
    assert jobs_at_once({"_target_": JOBLIB, "n_jobs": 2}, 8) == 2
    assert jobs_at_once({"_target_": JOBLIB, "n_jobs": -1}, 8) == 8  # joblib: -1 = all cores
    assert jobs_at_once({"_target_": JOBLIB, "n_jobs": -2}, 8) == 7
    assert jobs_at_once({"_target_": JOBLIB, "n_jobs": -20}, 8) == 1
    assert jobs_at_once({"_target_": SUBMITIT + "LocalLauncher", "cpus_per_task": None}, 8) == 8
    assert jobs_at_once({"_target_": SUBMITIT + "LocalLauncher", "cpus_per_task": 4}, 16) == 4
    assert jobs_at_once({"_target_": SUBMITIT + "SlurmLauncher", "cpus_per_task": 4}, 16) == 1  # own allocation


def test_threads_per_job_divides_the_cores():
    assert threads_per_job("auto", 8, 2) == 4
    assert threads_per_job("auto", 8, 3) == 2
    assert threads_per_job("auto", 2, 4) == 1  # at least one
    assert threads_per_job("auto", 8, 1) is None  # alone on the machine: torch's default
    assert threads_per_job(3, 8, 2) == 3  # a number wins
    assert threads_per_job(None, 8, 2) is None


def test_gpu_for_job_spreads_multirun_jobs_over_gpus():
    assert [gpu_for_job(None, n, 4) for n in range(6)] == [0, 1, 2, 3, 0, 1]
    assert gpu_for_job(2, 5, 4) == 2  # an explicit device.index wins
    assert gpu_for_job(None, None, 4) is None  # a single run: the current GPU
    assert gpu_for_job(None, 3, 1) is None and gpu_for_job(None, 3, 0) is None


def test_num_threads_is_auto_a_whole_number_or_null():
    assert make_cfg().trainer.num_threads == "auto"
    for ok in ("auto", "4", "null"):
        check(make_cfg(f"trainer.num_threads={ok}"))
    for bad in ("0", "many", "1.5", "true"):
        with pytest.raises(ConfigError, match="trainer.num_threads"):
            check(make_cfg(f"trainer.num_threads={bad}"))


def test_errors_travel_back_from_parallel_jobs():
    """A failed job's exception travels back to the sweep as a pickle (joblib, submitit): one
    that cannot would break the whole pool, so the task swaps it for a plain RuntimeError."""

    class Unpicklable(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a} {b}")

    assert not picklable(Unpicklable("x", "y"))
    error = pickle.loads(pickle.dumps(ConfigError("k", "bad", "fix it")))  # ours pickles as it is
    assert (error.key, error.problem, error.fix) == ("k", "bad", "fix it")


# --- joblib: jobs in parallel, two of them failing -----------------------------------------

@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("joblib")
    (tmp / "extra" / "model").mkdir(parents=True)
    (tmp / "extra" / "model" / "broken.yaml").write_text(BROKEN_MODEL)
    sweep = tmp / "sweep"
    proc = run_cli("-m", "model=ae,vae,broken", "noise=none,gaussian", *TINY, "hydra/launcher=joblib",
                   "hydra.launcher.n_jobs=2", f"hydra.searchpath=[file://{tmp / 'extra'}]",
                   f"hydra.sweep.dir={sweep}", cwd=tmp)
    return sweep, proc


@pytest.mark.integration
def test_joblib_sweep_runs_every_job_and_records_the_failed_ones(joblib_sweep):
    sweep, proc = joblib_sweep
    # Hydra raises the first failure after the whole batch: exit 1, with our one-line error
    assert proc.returncode == 1, proc.stderr
    assert "aecli: error: model: cannot build" in proc.stderr
    jobs = job_dirs(sweep)
    assert len(jobs) == 6
    done = [p for p in jobs if (p / "metrics.json").is_file()]
    assert [p.name.split("_", 1)[1] for p in done] == [
        "model=ae,noise=none,trainer.epochs=1", "model=ae,noise=gaussian,trainer.epochs=1",
        "model=vae,noise=none,trainer.epochs=1", "model=vae,noise=gaussian,trainer.epochs=1"]
    status = statuses(sweep)
    failed = {name for name, s in status.items() if s["status"] == "FAILED"}
    assert failed == {"4_model=broken,noise=none,trainer.epochs=1", "5_model=broken,noise=gaussian,trainer.epochs=1"}
    for name in failed:
        assert "no_such_argument" in status[name]["error"] and status[name]["return_value"] is None
    for p in done:
        assert status[p.name]["status"] == "COMPLETED"
        metrics = read_metrics(p)
        unit = "per_image" if "model=vae" in p.name else "per_pixel"
        assert status[p.name]["return_value"] == metrics[f"val/loss_{unit}"]
        # two jobs at a time share the cores instead of each taking all of them: auto times counts up to the share
        share = max(cores_available() // 2, 1)
        assert 1 <= metrics["torch_threads"] <= share
        log = (p / "train.log").read_text()
        assert f"torch threads: {metrics['torch_threads']} (trainer.num_threads=auto; " in log
        assert f"auto: {metrics['torch_threads']}, the " + ("only candidate" if share == 1 else "fastest") in log


@pytest.mark.integration
def test_report_on_the_joblib_sweep(joblib_sweep):
    sweep, _ = joblib_sweep
    proc = subprocess.run([sys.executable, "-m", "aecli.report", str(sweep)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ") and not line.startswith("| job")]
    assert len(table) == 6
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    # done jobs first, best test MSE per pixel first (comparable across models); then the failed ones
    assert [c[3] for c in cells] == ["done"] * 4 + ["failed"] * 2
    assert {c[5] for c in cells[:4]} == {"val/loss_per_image", "val/loss_per_pixel"}  # the objective's key
    assert {c[1] for c in cells[4:]} == {"broken"}
    assert all("no_such_argument" in c[-1] for c in cells[4:])
    assert (sweep / "report.md").read_text().count("| failed |") == 2

    with (sweep / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["done"] * 4 + ["failed"] * 2
    for r in rows[:4]:
        assert float(r["objective"]) == json.loads((sweep / r["dir"] / "job_status.json").read_text())["return_value"]
        assert float(r["test/mse_per_pixel"]) == read_metrics(sweep / r["dir"])["test/mse_per_pixel"]
    mse = [float(r["test/mse_per_pixel"]) for r in rows[:4]]
    assert mse == sorted(mse)

    png = Image.open(sweep / "report.png")
    assert png.format == "PNG" and png.size == (1000, 600)
    assert len(png.convert("RGB").getcolors(maxcolors=100_000)) > 50  # drawn on, not blank


# --- Optuna -------------------------------------------------------------------------------

@pytest.mark.integration
def test_optuna_search_returns_the_best_trial_and_survives_a_failed_one(tmp_path):
    sweep = tmp_path / "sweep"
    # the YAML's search space, with latent_dim narrowed to (2, 0): the seeded TPE draws 0 (out
    # of range, so that trial fails inside the job) for the 3rd trial only
    proc = run_cli("-m", "hparams_search=vae_optuna", "hydra.sweeper.n_trials=3", *TINY, "trainer.epochs=3",
                   "model.latent_dim=choice(2,0)", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    jobs = job_dirs(sweep)
    assert len(jobs) == 3
    for p in jobs:  # the search config selects the VAE
        assert yaml.safe_load((p / ".hydra" / "config.yaml").read_text())["model"]["_target_"] == "aecli.models.VAE"
    status = [json.loads((p / "job_status.json").read_text()) for p in jobs]
    assert [s["status"] for s in status] == ["COMPLETED", "COMPLETED", "FAILED"]
    assert "model.latent_dim: 0 is out of range" in status[2]["error"]

    # each trial's model is its best epoch by the search's objective (the -ELBO, not the trial's
    # beta-weighted loss), and the trial returns that epoch's value
    for p, job_status in zip(jobs[:2], status[:2]):
        per_epoch = read_events(p).Scalars("val/neg_elbo_nats_per_image")
        best = min(per_epoch, key=lambda e: e.value)
        metrics = read_metrics(p)
        assert (len(per_epoch), metrics["best_step"], metrics["objective"]) == (3, best.step,
                                                                               "val/neg_elbo_nats_per_image")
        assert job_status["return_value"] == metrics["best_value"] == pytest.approx(best.value, rel=1e-6)

    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    values = [read_metrics(p)["val/neg_elbo_nats_per_image"] for p in jobs[:2]]  # the search's objective
    assert results["best_value"] == min(values) == min(s["return_value"] for s in status[:2])
    best = results["best_params"]
    assert set(best) == {"optim.lr", "model.latent_dim", "model.beta"}
    assert 1e-4 <= best["optim.lr"] <= 1e-2 and 0.5 <= best["model.beta"] <= 4.0 and best["model.latent_dim"] == 2


# --- submitit (local) ---------------------------------------------------------------------

@pytest.mark.integration
def test_submitit_local_runs_two_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "model=ae,conv", *TINY, "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    jobs = job_dirs(sweep)
    assert [p.name for p in jobs] == ["0_model=ae,trainer.epochs=1", "1_model=conv,trainer.epochs=1"]
    for p in jobs:
        assert read_metrics(p)["epochs"] == 1
        assert json.loads((p / "job_status.json").read_text())["status"] == "COMPLETED"
        # submitit_local runs all jobs at once and says nothing about cores: one thread each
        assert read_metrics(p)["torch_threads"] == 1
    assert (sweep / ".submitit").is_dir()  # submitit's own pickles and logs


# --- the report on hand-made sweep dirs (no training) -------------------------------------

def fake_job(sweep: Path, num: int, overrides: list[str], status: str | None, metrics: dict | None) -> None:
    job = sweep / f"{num}_{','.join(overrides)}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    if status:
        (job / "job_status.json").write_text(json.dumps({"status": status, "error": None, "return_value": None}))
    if metrics:
        (job / "metrics.json").write_text(json.dumps(metrics))


def test_report_lists_running_jobs_and_plots_values_per_key(tmp_path):
    def metrics(loss):
        return {"val/loss_per_pixel": loss, "test/mse_per_pixel": loss, "test/psnr_db": 10.0, "epochs": 1,
                "images_per_sec": 1e5}

    fake_job(tmp_path, 0, ["optim.lr=0.001", "model=ae"], "COMPLETED", metrics(0.03))
    fake_job(tmp_path, 1, ["optim.lr=0.01", "model=ae"], "COMPLETED", metrics(0.02))
    fake_job(tmp_path, 2, ["optim.lr=0.1", "model=ae"], "RUNNING", None)
    fake_job(tmp_path, 3, ["optim.lr=0.0001", "model=ae"], None, metrics(0.05))  # before job_status.json
    text = report.report(tmp_path)
    assert "4 jobs" in text and "3 done, 1 running (or killed)" in text
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert list(rows[0])[:3] == ["job", "optim.lr", "status"]  # only the swept key (model is the same)
    assert [(r["job"], r["status"]) for r in rows] == [("1", "done"), ("0", "done"), ("3", "done"),
                                                       ("2", "running (or killed)")]
    assert [r["job"] for r in report.sort_rows([report.row(report.read_job(p), ["optim.lr"])
                                                for p in job_dirs(tmp_path)], "-optim.lr")] == [1, 0, 3, 2]
    assert Image.open(tmp_path / "report.png").size == (1000, 600)


def test_report_refuses_a_dir_without_jobs(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 1
    assert "aecli: error: SWEEP_DIR:" in capsys.readouterr().err
    fake_job(tmp_path / "multirun" / "d" / "t", 0, ["model=ae"], "COMPLETED", {"val/loss_per_pixel": 0.1})
    assert cli.main(["report", str(tmp_path / "multirun")]) == 1  # a date dir's parent: the sweep is further down
    err = capsys.readouterr().err
    assert "holds no job dirs" in err and str(tmp_path / "multirun" / "d" / "t") in err and "fix:" in err
    fake_job(tmp_path, 0, ["model=ae"], "COMPLETED", {"val/loss_per_pixel": 0.1})
    assert cli.main(["report", str(tmp_path), "--sort", "nonsense"]) == 1
    assert "aecli: error: --sort:" in capsys.readouterr().err
