"""The report's fixes for comparing runs fairly: default sort by test MSE, the sweep's order,
log axes for log-scale searches, what a date dir left out, eval.json columns, the objective
key; the VAE search's beta-independent objective; sweep jobs' log lines carrying their number."""
import csv
import json
import math
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from aecli import cli
from aecli.training.run import run
from aecli.use import report

from .conftest import make_cfg, run_cli


def fake_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None, status: str = "COMPLETED",
             objective: str | None = None, evaluation: dict | None = None, sweeper_params: dict | None = None) -> Path:
    """A job dir as Hydra and aecli leave it (no training)."""
    job = sweep / f"{num}_{','.join(overrides)}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    hydra = {"hydra": {"job": {"num": num}, "sweeper": {"params": sweeper_params},
                       "overrides": {"task": overrides}}}
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"objective": objective, "seed": 0}))
    (job / "job_status.json").write_text(json.dumps({"status": status, "error": None, "return_value": None}))
    if metrics:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if evaluation:
        (job / "eval.json").write_text(json.dumps(evaluation))
    return job


def ae_metrics(mse: float) -> dict:
    return {"val/loss_per_pixel": mse, "test/mse_per_pixel": mse, "test/psnr_db": -10 * math.log10(mse),
            "epochs": 1, "images_per_sec": 1e4}


def vae_metrics(mse: float, neg_elbo: float) -> dict:
    return {"val/loss_per_image": neg_elbo + 1, "val/neg_elbo_nats_per_image": neg_elbo, "test/mse_per_pixel": mse,
            "test/psnr_db": -10 * math.log10(mse), "epochs": 1, "images_per_sec": 1e4}


def test_default_sort_is_test_mse_and_jobs_keep_the_sweep_order(tmp_path):
    # VAE objectives (nats per image) are tens of nats, AE ones ~0.01: sorting by the objective's
    # unit string put the VAEs first; the test MSE compares every model
    models = ["vae", "ae", "conv", "vae", "ae", "dae", "stacked", "conv", "dae", "stacked", "ae"]
    mses = [0.05, 0.010, 0.008, 0.04, 0.012, 0.02, 0.015, 0.009, 0.018, 0.016, 0.011]
    for num, (model, mse) in enumerate(zip(models, mses)):
        fake_job(tmp_path, num, [f"model={model}", f"seed={num}"],
                 vae_metrics(mse, 30.0) if model == "vae" else ae_metrics(mse))
    jobs = report.read_sweep(tmp_path)
    assert [j.num for j in jobs] == list(range(11))  # 10_... does not come before 2_...
    report.report(tmp_path)
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [float(r["test/mse_per_pixel"]) for r in rows] == sorted(mses)
    assert rows[0]["job"] == "2" and rows[-1]["model"] == "vae"
    # the plot's categories appear in the order the sweep listed them
    xs, names, log = report.x_axis(jobs, "model", set())
    assert names == ["vae", "ae", "conv", "dae", "stacked"] and xs[:3] == [0.0, 1.0, 2.0] and not log
    assert Image.open(tmp_path / "report.png").size == (1000, 600)


def test_evaluate_report_and_open_run_find_the_same_job_dirs(tmp_path):
    """One job-dir finder: a sweep whose hydra.sweep.subdir names jobs without their number is
    the same list of jobs to evaluate and to report; a dir that is no job is neither; a use
    command given the sweep dir names one of its jobs."""
    from aecli.errors import ConfigError
    from aecli.store import rundir
    from aecli.use.trained import find_runs, open_run

    jobs = [fake_job(tmp_path, num, [f"optim.lr={lr}"], {"val/loss_per_pixel": lr}) for num, lr in enumerate((3, 1))]
    for job in jobs:  # hydra.sweep.subdir=${hydra.job.override_dirname}: no number in the name
        job.rename(tmp_path / job.name.split("_", 1)[1])
    (tmp_path / "plots" / ".hydra").mkdir(parents=True)  # not a job: no overrides.yaml
    found = rundir.job_dirs(tmp_path)
    assert [d.name for d in found] == ["optim.lr=1", "optim.lr=3"]
    assert find_runs([tmp_path]) == found
    assert [j.dir for j in report.read_sweep(tmp_path)] == found
    with pytest.raises(ConfigError, match=r"(?s)is a sweep \(multirun\) dir of 2 job.*e\.g\. .*optim\.lr=1"):
        open_run(tmp_path)


def test_one_table_writer_for_markdown_and_csv(tmp_path):
    """The commands' tables, report's and evaluate's are written by aecli.use.tables: cells are
    escaped and None is empty everywhere, and the CSV holds the same rows in full."""
    from aecli.use import commandline, tables

    records = [{"run": "a|b", "mse": 0.0123456, "note": None}, {"run": "c", "mse": 2.5, "note": "x " * 100}]
    lines = tables.markdown_records(records, ["run", "mse", "note"]).splitlines()
    assert lines[:3] == ["| run | mse | note |", "|---|---|---|", "| a\\|b | 0.012346 |  |"]
    assert lines[3].endswith("x x… |") and len(lines[3]) < 200
    tables.write_csv(records, tmp_path / "t.csv")
    with (tmp_path / "t.csv").open() as f:
        assert list(csv.DictReader(f)) == [{k: "" if v is None else str(v) for k, v in r.items()} for r in records]
    assert commandline.table([["a|b", None]], ["x", "y"]) == "| x | y |\n|---|---:|\n| a\\|b |  |"


def test_log_axis_for_keys_searched_on_a_log_scale(tmp_path):
    params = {"optim.lr": "tag(log, interval(1e-4, 1e-2))", "model.beta": "interval(0.5, 4.0)",
              "model.latent_dim": "choice(2, 4, 8)"}
    for num, (lr, beta, dim) in enumerate([(2e-4, 0.6, 2), (9e-4, 3.0, 8), (1.5e-3, 1.2, 4)]):
        fake_job(tmp_path, num, [f"optim.lr={lr}", f"model.beta={beta}", f"model.latent_dim={dim}"],
                 vae_metrics(0.05, 30.0 - num), objective="val/neg_elbo_nats_per_image", sweeper_params=params)
    jobs = report.read_sweep(tmp_path)
    log_keys = report.log_scaled_keys(tmp_path, jobs)  # the Optuna sweeper: from a job's hydra.yaml
    assert log_keys == {"optim.lr"}
    assert report.x_axis(jobs, "optim.lr", log_keys)[2]  # 7.5x apart, but searched on a log scale
    assert not report.x_axis(jobs, "model.beta", log_keys)[2]
    assert not report.x_axis(jobs, "optim.lr", set())[2]
    # the basic sweeper's multirun.yaml: a command-line tag(log, ...) sweep counts too
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(
        {"hydra": {"sweeper": {"params": None}, "overrides": {"task": ["model.beta=tag(log, choice(0.6,3.0,1.2))"]}}}))
    assert report.log_scaled_keys(tmp_path, jobs) == {"optim.lr", "model.beta"}
    # values spanning 100x are plotted on a log axis whatever the search said
    wide = [report.Job(Path(f"/x/{i}"), i, {"optim.lr": lr}, report.DONE) for i, lr in enumerate(["1e-4", "1e-2"])]
    assert report.x_axis(wide, "optim.lr", set())[2]


def test_objective_is_the_configured_key_and_groups_the_objective_sort(tmp_path):
    fake_job(tmp_path, 0, ["model.beta=0.5"], vae_metrics(0.05, 31.0), objective="val/neg_elbo_nats_per_image")
    fake_job(tmp_path, 1, ["model.beta=2.0"], vae_metrics(0.06, 29.0), objective="val/neg_elbo_nats_per_image")
    fake_job(tmp_path, 2, ["model.beta=1.0"], ae_metrics(0.01))  # objective null: val/loss_per_pixel
    text = report.report(tmp_path, sort="objective")
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [(r["job"], r["objective key"], float(r["objective"])) for r in rows] == [
        ("2", "val/loss_per_pixel", 0.01), ("1", "val/neg_elbo_nats_per_image", 29.0),
        ("0", "val/neg_elbo_nats_per_image", 31.0)]
    assert "(val/loss_per_pixel, val/neg_elbo_nats_per_image)" in text


def test_a_date_dir_names_its_sweeps_and_what_was_left_out(tmp_path, capsys):
    for t in range(7):
        fake_job(tmp_path / "date" / f"12-00-0{t}", 0, ["model=ae"], ae_metrics(0.01))
    assert cli.main(["report", str(tmp_path / "date")]) == 1
    err = capsys.readouterr().err
    assert "holds no job dirs" in err and "it holds 7 sweep(s), newest first:" in err
    assert str(tmp_path / "date" / "12-00-06") in err and "(and 2 older, not named)" in err
    assert str(tmp_path / "date" / "12-00-01") not in err
    # a dir with job dirs of its own and sweeps below: the jobs are reported, the sweeps named as left out
    fake_job(tmp_path / "date", 0, ["model=vae"], vae_metrics(0.05, 30.0))
    text = report.report(tmp_path / "date")
    assert text.startswith(f"1 jobs in {tmp_path / 'date'}: 1 done; left out: 7 sweep(s), newest first: ")


def test_eval_columns_come_from_eval_json(tmp_path):
    evaluation = {"test/ssim": 0.81, "test/denoised_psnr_db": 17.5, "probe/codes_accuracy": 0.93,
                  "knn/codes_accuracy": 0.95}
    fake_job(tmp_path, 0, ["model=ae"], ae_metrics(0.01), evaluation=evaluation)
    fake_job(tmp_path, 1, ["model=dae"], ae_metrics(0.02))  # not evaluated: empty cells
    text = report.report(tmp_path)
    rows = {r["job"]: r for r in csv.DictReader((tmp_path / "report.csv").open())}
    assert (float(rows["0"]["ssim"]), float(rows["0"]["probe codes"])) == (0.81, 0.93)
    assert rows["1"]["ssim"] == "" and "iw bound nats" not in rows["0"]  # no job has one: no column
    assert "from each job's eval.json" in text
    plain = tmp_path / "plain"
    fake_job(plain, 0, ["model=ae"], ae_metrics(0.01))
    report.report(plain)
    assert "ssim" not in next(csv.DictReader((plain / "report.csv").open()))


def test_vae_search_objective_is_the_elbo_at_beta_one(tmp_path):
    """hparams_search=vae_optuna returns val -ELBO = recon + KL, whatever beta the trial used."""
    cfg = make_cfg("hparams_search=vae_optuna", "model.beta=0.5", "trainer.epochs=2", "trainer.progress=log")
    assert cfg.objective == "val/neg_elbo_nats_per_image" and cfg.loss._target_.endswith("BinaryCrossEntropy")
    result = run(cfg, tmp_path / "run")
    m = result.metrics
    assert result.objective == m["val/neg_elbo_nats_per_image"]
    assert m["val/neg_elbo_nats_per_image"] == pytest.approx(m["val/recon_per_image"] + m["val/kl_per_image"])
    # the training loss counts only beta x KL: with beta = 0.5 it flatters the trial by KL / 2
    assert m["val/loss_per_image"] == pytest.approx(m["val/recon_per_image"] + 0.5 * m["val/kl_per_image"])
    assert m["val/kl_per_image"] > 0.1 and m["val/loss_per_image"] < result.objective


# joblib runs the jobs in parallel (the case the prefix is for) but starts worker processes
# (~10-25 s here); the basic launcher runs them one after another, through the same job logging
@pytest.mark.integration
@pytest.mark.parametrize("launcher", ["basic", pytest.param("joblib", marks=pytest.mark.slow)])
def test_sweep_jobs_log_lines_carry_their_number_single_runs_do_not(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    parallel = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    proc = run_cli("-m", "model=ae,vae", "trainer.epochs=1", "trainer.progress=log", *parallel,
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for num in (0, 1):
        (log,) = sweep.glob(f"{num}_*/train.log")
        lines = log.read_text().splitlines()
        # each line names its module's logger (logging.getLogger(__name__), below "aecli")
        assert len(lines) >= 3 and all(re.search(rf"\]\[job {num}\]\[aecli(\.\w+)+\]\[INFO\] - ", line)
                                       for line in lines), lines
    assert "[job 0][aecli." in proc.stdout and "[job 1][aecli." in proc.stdout  # the terminal too
    if launcher == "joblib":
        return
    single = tmp_path / "single"
    proc = run_cli("trainer.epochs=1", "trainer.progress=log", f"hydra.run.dir={single}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (single / "train.log").read_text()
    assert "[job" not in text and "][aecli.training.run][INFO] - run dir: " in text


def test_single_runs_gathered_in_one_dir_get_their_defaults_and_numbers(tmp_path):
    """The README's one-model-per-command recipe copied into one dir: single runs (Hydra's job
    num '???'), the default model without a model override, one run with a noise override."""
    specs = [([], "ae"), (["model=vae"], "vae"), (["model=dae", "noise=gaussian"], "dae"), (["model=conv"], "conv")]
    for i, (overrides, choice) in enumerate(specs):
        job = fake_job(tmp_path, i, overrides, vae_metrics(0.02 + i / 100, 30.0) if choice == "vae"
                       else ae_metrics(0.02 + i / 100))
        hydra = {"hydra": {"job": {"num": "???"}, "runtime": {"choices": {"model": choice, "noise": (
            "gaussian" if "noise=gaussian" in overrides else "binomial" if choice == "dae" else "none")}}}}
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    report.report(tmp_path)  # no KeyError: 'noise' (only one job overrode it)
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [(r["job"], r["model"], r["noise"]) for r in rows] == [
        ("0", "ae", "none"), ("1", "vae", "none"), ("2", "dae", "gaussian"), ("3", "conv", "none")]
    assert Image.open(tmp_path / "report.png").size == (1000, 600)
