"""Options of the use commands that the other files leave out: evaluate's ``--checkpoint last``
and a sweep with a failed job, ``map --method tsne``, ``denoise --synthetic`` with Gaussian
noise, and the ``--device`` refusals; on the session's trained runs (in-process, ``cli.main``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from aecli import cli
from aecli.store.checkpoint import read
from aecli.use import inference
from aecli.use import map as map_
from aecli.use.trained import open_run


def test_evaluate_last_checkpoint_measures_the_last_model(trained_runs, tmp_path):
    """``--checkpoint last``: eval.json names last.pt and its step, and its test loss is the last
    model's (the best model's differs whenever the last epoch was not the best)."""
    run_dir = trained_runs["ae"]
    assert cli.main(["evaluate", str(run_dir), "--checkpoint", "last", "--out", str(tmp_path / "last"),
                     "--device", "cpu"]) == 0
    assert cli.main(["evaluate", str(run_dir), "--out", str(tmp_path / "best"), "--device", "cpu"]) == 0
    last, best = (json.loads((tmp_path / w / "eval.json").read_text()) for w in ("last", "best"))
    state = read(run_dir / "checkpoints" / "last.pt")
    assert last["checkpoint"] == "last.pt" and last["step"] == state["step"]
    assert best["step"] == state["best_step"]
    if state["best_step"] != state["step"]:
        assert last["test/loss_per_pixel"] != best["test/loss_per_pixel"]


def test_evaluate_a_sweep_with_a_failed_job_measures_the_others_and_names_it(trained_runs, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for num, (name, source) in enumerate((("ae", trained_runs["ae"]), ("vae", trained_runs["vae"]))):
        job = shutil.copytree(source, sweep / f"{num}_model={name}")
        (job / ".hydra").mkdir(exist_ok=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- model={name}\n")
    failed = sweep / "2_model=broken"
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "overrides.yaml").write_text("- model=broken\n")
    (failed / "job_status.json").write_text('{"status": "FAILED", "error": "ConfigError: model: no such option"}')
    assert cli.main(["evaluate", str(sweep), "--device", "cpu"]) == 0
    for job in ("0_model=ae", "1_model=vae"):
        assert json.loads((sweep / job / "eval.json").read_text())["test/psnr_db"] > 10
    assert not (failed / "eval.json").exists()
    table = (sweep / "eval.md").read_text()
    assert "2_model=broken" in table  # named, with why it was skipped
    assert "0_model=ae" in table and "1_model=vae" in table


def test_tsne_map_keeps_classes_together(trained_runs, tmp_path):
    """t-SNE of the ae's codes: a 5-NN classifier on the 2-D points (fitted on half the test
    images, scored on the other half) is far above chance, and the PNG is written."""
    run = open_run(trained_runs["ae"], device="cpu")
    data = run.data()
    codes = inference.codes(run, data.test, data.max_value).numpy()
    xy = map_.to_2d(codes, "tsne", seed=0)
    labels = data.labels["test"].numpy()
    assert xy.shape == (len(codes), 2) and np.isfinite(xy).all()
    half = len(xy) // 2
    accuracy = KNeighborsClassifier(5).fit(xy[:half], labels[:half]).score(xy[half:], labels[half:])
    assert accuracy > 0.6  # chance: ~0.1
    assert cli.main(["map", str(trained_runs["ae"]), "--method", "tsne", "--out", str(tmp_path),
                     "--device", "cpu"]) == 0
    assert (tmp_path / "map_tsne.png").stat().st_size > 10_000


def test_denoise_synthetic_with_gaussian_noise_gains_psnr(trained_runs, tmp_path):
    """A DAE trained with masking noise still removes some Gaussian noise (sigma 0.3)."""
    assert cli.main(["denoise", str(trained_runs["dae"]), "--synthetic", "--noise", "gaussian:0.3",
                     "--out", str(tmp_path), "--device", "cpu"]) == 0
    record, = [json.loads(p.read_text()) for p in tmp_path.glob("denoise_synthetic*.json")]
    assert "GaussianNoise" in record["noise"] and "0.3" in record["noise"]
    assert record["psnr_db"]["denoised"] > record["psnr_db"]["noisy"] + 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="refusals of a device this machine lacks")
@pytest.mark.parametrize("command", [["evaluate"], ["encode"], ["sample", "--n", "4"]])
def test_a_device_that_is_not_there_is_one_message(trained_runs, tmp_path, capsys, command):
    run_dir = str(trained_runs["vae"])
    before = sorted(p.name for p in Path(run_dir).iterdir())
    code = cli.main([command[0], run_dir, *command[1:], "--device", "cuda", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "--device" in err and "no CUDA GPU" in err and "Traceback" not in err
    assert "fix: " in err and len(err.strip().splitlines()) == 2
    assert sorted(p.name for p in Path(run_dir).iterdir()) == before and not any(tmp_path.iterdir())
