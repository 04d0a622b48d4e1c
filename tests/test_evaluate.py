"""``aecli.use.evaluate`` on runs trained in-process on the bundled digits: numbers that can fail
(probe accuracy above chance, IW bound below -ELBO, PSNR gained by a denoiser, SSIM in
[0, 1]), the files it writes read back, and its refusals."""
import csv
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from aecli import cli, metrics
from aecli.cli import noise_option
from aecli.models.base import Autoencoder
from aecli.use import evaluate
from aecli.use.trained import open_run

from .conftest import read_events, snapshot


@pytest.fixture(scope="module")
def runs(trained_runs, tmp_path_factory) -> dict[str, Path]:
    """ae, dae (binomial p=0.25) and vae (bce) trained on the digits (the session's, copied: these
    tests write eval.json and TensorBoard files into the run dirs)."""
    root = tmp_path_factory.mktemp("runs")
    return {name: Path(shutil.copytree(path, root / name)) for name, path in trained_runs.items()}


@pytest.fixture(scope="module")
def results(runs) -> dict[str, dict]:
    """One evaluate call over all three runs (the pixel and PCA baselines computed once)."""
    found = evaluate.evaluate_paths([runs["ae"], runs["dae"], runs["vae"]], evaluate.Options(progress=False))
    return {Path(r["run_dir"]).name: r for r in found}


def test_codes_pixels_and_pca_all_beat_chance(results):
    for name, r in results.items():
        chance = r["chance_accuracy"]
        assert 0.09 < chance < 0.15  # ten classes, nearly balanced
        for rep in ("codes", "pixels", "pca"):
            assert r[f"probe/{rep}_accuracy"] > 5 * chance, (name, rep, r)
            assert r[f"knn/{rep}_accuracy"] > 5 * chance, (name, rep, r)
        assert r["dims/codes"] == r["dims/pca"] == (20 if name == "vae" else 16)
        assert r["dims/pixels"] == 64 and r["probe_train_images"] == 1258 and r["test_images"] == 359
    # the baselines do not depend on the model: the same numbers for every run
    assert len({r["probe/pixels_accuracy"] for r in results.values()}) == 1
    assert results["ae"]["knn/pca_accuracy"] == results["dae"]["knn/pca_accuracy"]


def test_iw_bound_is_at_most_the_negative_elbo(results, runs):
    r = results["vae"]
    neg_elbo, iw = r["test/neg_elbo_nats_per_image"], r["test/iw_bound_nats_per_image"]
    assert r["iw_samples"] == evaluate.DEFAULT_IW_SAMPLES
    assert 0 < iw < neg_elbo - 0.05, r  # tighter by a margin, not by rounding
    assert r["test/neg_elbo_nats_per_image"] == pytest.approx(r["test/recon_per_image"] + r["test/kl_per_image"])
    # k = 1 is the single-sample -ELBO; more samples tighten the bound
    trained = open_run(runs["vae"], device="cpu")
    data = trained.data()
    torch.manual_seed(0)
    by_k = {k: metrics.neg_log_likelihood(trained.model, data, data.test, trained.recon, k, progress=False)
            for k in (1, 10, 500)}
    assert by_k[1] == pytest.approx(neg_elbo, abs=0.5)
    assert by_k[500] < by_k[10] < by_k[1]
    assert "no likelihood bound" not in " ".join(results["ae"]["notes"])  # a plain AE: silently none
    assert "test/iw_bound_nats_per_image" not in results["ae"]


def test_a_trained_dae_gains_psnr_over_its_noisy_input(results):
    dae = results["dae"]
    assert dae["denoise_noise"] == "MaskingNoise(p=0.25)"
    assert dae["test/denoised_psnr_db"] > dae["test/noisy_input_psnr_db"] + 2.0, dae
    # runs trained without noise measure no denoising unless asked, and say so
    assert "test/denoised_psnr_db" not in results["ae"]
    assert any("trained without noise" in n for n in results["ae"]["notes"])


def test_ssim_lies_in_the_unit_interval_and_ranks_reconstructions(results, runs):
    for r in results.values():
        assert 0.0 < r["test/ssim"] < 1.0
    assert results["ae"]["test/ssim"] > results["vae"]["test/ssim"]  # the AE reconstructs far better (PSNR too)
    data = open_run(runs["ae"], device="cpu").data()

    class Echo(Autoencoder):  # reconstruct = the input: SSIM exactly 1
        def __init__(self):
            super().__init__((1, 8, 8))
            self.w = torch.nn.Parameter(torch.zeros(1))

        def reconstruct(self, x, recon):
            return x

    class Blank(Echo):  # a grey image whatever the input: structure lost
        def reconstruct(self, x, recon):
            return torch.full_like(x, 0.5)

    assert metrics.ssim(Echo(), data, data.test, None, 128) == pytest.approx(1.0, abs=1e-5)
    assert abs(metrics.ssim(Blank(), data, data.test, None, 128)) < 0.05
    assert metrics.ssim_sigma(8, 8) == pytest.approx(0.545, abs=1e-3) and metrics.ssim_sigma(28, 28) == 1.5


def test_eval_json_and_tensorboard_scalars_are_written_and_read_back(results, runs):
    run_dir = runs["vae"]
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved == json.loads(json.dumps(results["vae"]))
    assert saved["checkpoint"] == "best.pt" and saved["ssim_window"] == "gaussian, sigma 0.55"
    events = read_events(run_dir)
    for key in ("test/psnr_db", "test/ssim", "test/iw_bound_nats_per_image", "probe/codes_accuracy",
                "knn/pca_accuracy"):
        (point,) = events.Scalars(f"eval/{key}")  # one point: a re-evaluation replaces it
        assert point.step == saved["step"] and point.value == pytest.approx(saved[key], rel=1e-6)
    assert "eval/dims/codes" not in events.Tags()["scalars"]  # settings are not plotted


def test_several_runs_make_one_table_in_their_common_parent(results, runs):
    parent = runs["ae"].parent
    rows = list(csv.DictReader((parent / "eval.csv").open()))
    assert [r["run"] for r in rows] == ["ae", "dae", "vae"]
    assert float(rows[1]["denoised psnr"]) == pytest.approx(results["dae"]["test/denoised_psnr_db"])
    assert rows[0]["iw bound nats"] == "" and float(rows[2]["iw bound nats"]) > 0
    md = (parent / "eval.md").read_text()
    assert "| run | model | train noise | mse/px |" in md and "5-NN accuracy; fit on 1258 train images" in md
    # compact: the probe and k-NN columns only in the representations table, 4 significant digits
    header = md.split("\n\n")[1].splitlines()[0]
    assert "probe" not in header and "knn" not in header and header.count("|") <= 12
    assert f"| {results['ae']['test/mse_per_pixel']:.4g} |" in md and "probe codes" in rows[0]
    # the statistics of the codes in a table of their own: the VAE's active units, none for the AEs
    codes = md.split("## Codes\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert codes[0] == "| run | active units |" and codes[2] == "| ae |  |"
    assert codes[4] == f"| vae | {results['vae']['test/active_units']:.4g} |"


def test_a_dataset_without_labels_gets_reconstruction_only(runs):
    trained = open_run(runs["ae"], device="cpu")
    trained._data = replace(trained.data(), labels=None, classes=None)
    r = evaluate.evaluate(trained, evaluate.Options(progress=False))
    assert "test/psnr_db" in r and not any(k.startswith(("probe/", "knn/")) for k in r)
    assert any("no labels" in n and "reconstruction only" in n for n in r["notes"])


def test_noise_can_be_chosen_and_bad_levels_are_refused(runs, capsys):
    trained = open_run(runs["ae"], device="cpu")
    opts = evaluate.Options(noise=noise_option("gaussian:0.2"), probe_images=0, progress=False)
    r = evaluate.evaluate(trained, opts)
    assert r["denoise_noise"] == "GaussianNoise(sigma=0.2, clip=True)"
    assert r["test/noisy_input_psnr_db"] == pytest.approx(15.4, abs=1.0)  # ~ -10 log10(0.2^2) minus clipping
    before = snapshot(runs["ae"])
    assert cli.main(["evaluate", str(runs["ae"]), "--noise", "binomial:1.5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("aecli: error: --noise: p=1.5 is out of range") and "[0, 1)" in err and "fix:" in err
    assert snapshot(runs["ae"]) == before  # refused before anything was written


def test_iw_bound_on_a_plain_ae_is_refused_as_a_vae_metric(runs, capsys):
    before = snapshot(runs["ae"])
    assert cli.main(["evaluate", str(runs["ae"]), "--iw-samples", "100"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("aecli: error: --iw-samples:") and "is a VAE metric" in err and "model=vae" in err
    assert snapshot(runs["ae"]) == before


def test_a_run_without_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    assert cli.main(["evaluate", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("aecli: error: RUN:") and "holds no checkpoints/" in err and "fix:" in err


@pytest.mark.integration
def test_cli_refuses_a_dir_that_is_not_a_run(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("not a run")
    proc = subprocess.run([sys.executable, "-m", "aecli.evaluate", str(tmp_path / "notes")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"aecli: error: RUN: {tmp_path / 'notes'} is not a run dir")
    assert "fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "notes"]


def test_out_means_write_the_outputs_into_dir(runs, tmp_path, capsys):
    """--out DIR as in every command: the outputs go there and the run dirs stay as they were."""
    before = {name: snapshot(runs[name]) for name in ("ae", "dae")}
    fast = ["--probe-images", "0", "--iw-samples", "0", "--device", "cpu"]
    assert cli.main(["evaluate", str(runs["ae"]), "--out", str(tmp_path / "one"), *fast]) == 0
    one = json.loads((tmp_path / "one" / "eval.json").read_text())
    assert one["run_dir"] == str(runs["ae"].absolute()) and one["test/psnr_db"] > 10
    assert list((tmp_path / "one").glob("events.out.tfevents.*.eval"))
    assert cli.main(["evaluate", str(runs["ae"]), str(runs["dae"]), "--out", str(tmp_path / "two"), *fast]) == 0
    assert json.loads((tmp_path / "two" / "dae" / "eval.json").read_text())["test/psnr_db"] > 10
    assert (tmp_path / "two" / "ae" / "eval.json").is_file() and (tmp_path / "two" / "eval.md").is_file()
    assert {name: snapshot(runs[name]) for name in ("ae", "dae")} == before
    capsys.readouterr()


def test_evaluate_agrees_with_metrics_json_or_says_why(results, runs):
    for name in ("ae", "vae"):
        recorded = json.loads((runs[name] / "metrics.json").read_text())
        r = results[name]
        # the same model, the same pass: the deterministic metrics agree
        assert r["test/mse_per_pixel"] == pytest.approx(recorded["test/mse_per_pixel"], rel=1e-9)
        losses = [k for k in r if k.startswith("test/loss_")]
        differ = [k for k in losses if r[k] != pytest.approx(recorded[k], rel=1e-6)]
        explained = [n for n in r["notes"] if "in metrics.json" in n and "each pass differs" in n]
        # a VAE's loss samples z: both passes seed it with the run's seed (0 here), so they agree;
        # with another --seed they would differ, and the note says why
        assert not differ and not explained
    assert not [n for n in results["ae"]["notes"] if "in metrics.json" in n]
