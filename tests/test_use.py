"""Commands that put a trained run to work (encode, map, search, denoise, sample, score,
finetune) on the bundled digits, with numbers that fail when the work is wrong: search beats
chance, denoising gains PSNR, held-out classes score higher, interpolation ends where the
reconstructions are, PNGs have the stated size and are not blank."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from aecli import cli
from aecli.data import keep_classes, load_digits
from aecli.errors import ConfigError
from aecli.training.run import run as train
from aecli.use import finetune, sample
from aecli.use.trained import open_run

from .conftest import make_cfg, run_cli

MIN_TILE = 64  # an 8x8 digit in a figure: upscaled 8x to 64 pixels at least
HELD_OUT = 9  # the class dataset.classes leaves out of training


def trained(tmp_path_factory, name: str, *overrides: str):
    run_dir = tmp_path_factory.mktemp(name) / "run"
    # one thread: these tiny steps are ~30x slower on two threads when other processes load the cores
    train(make_cfg("trainer.progress=log", "trainer.num_threads=1", *overrides), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def dae(tmp_path_factory):
    return trained(tmp_path_factory, "dae", "model=dae", "trainer.epochs=30")


@pytest.fixture(scope="module")
def vae2(tmp_path_factory):
    return trained(tmp_path_factory, "vae", "model=vae", "model.latent_dim=2", "trainer.epochs=20")


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    kept = ",".join(str(k) for k in range(10) if k != HELD_OUT)
    return trained(tmp_path_factory, "held", f"dataset.classes=[{kept}]", "trainer.epochs=30")


def save_digit(image: torch.Tensor, path, size: int = 8, mode: str = "L") -> None:
    """A digits image (values 0..16) as an 8-bit image file of ``size`` x ``size`` pixels."""
    grey = (image[0].numpy().astype(np.float64) * 255 / 16).round().astype(np.uint8)
    Image.fromarray(grey).resize((size, size)).convert(mode).save(path)


def png(path, rows: int, cols: int) -> np.ndarray:
    """The PNG at ``path`` as an array, checked to hold rows x cols tiles of at least MIN_TILE
    pixels (plus the title, labels and captions around them) and not to be blank."""
    image = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    assert image.shape[0] > rows * MIN_TILE and image.shape[1] > cols * MIN_TILE, image.shape
    assert image.std() > 20, "blank image"
    return image


@pytest.fixture
def drawn(monkeypatch):
    """The texts of every matplotlib figure saved while the test runs (title, labels, captions), in order."""
    from matplotlib.figure import Figure

    from aecli.figures import texts

    seen, real = [], Figure.savefig
    flat = (lambda t: [" ".join(t[0].split()), *t[1:]] if t else t)  # noqa: E731 - the title unwrapped
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: seen.append(flat(texts(self))) or real(self, *a, **k))
    return seen


def test_encode_writes_codes_labels_and_a_projector_entry(dae, tmp_path, capsys):
    assert cli.main(["encode", str(dae), "--split", "all", "--out", str(tmp_path)]) == 0
    step = open_run(dae, device="cpu").state["step"]
    assert f"the projector's files (codes, labels, image sprite) are in {tmp_path / f'{step:05d}'}/" \
        in capsys.readouterr().out and (tmp_path / f"{step:05d}").is_dir()
    arrays = np.load(tmp_path / "codes_all.npz")
    digits = load_digits()
    assert arrays["codes"].shape == (1797, 16) and np.isfinite(arrays["codes"]).all()
    assert (arrays["labels"] == torch.cat([digits.labels[s] for s in ("train", "val", "test")]).numpy()).all()
    assert [int((arrays["split"] == s).sum()) for s in ("train", "val", "test")] == [1258, 180, 359]
    assert list(arrays["classes"]) == [str(k) for k in range(10)]
    # the test codes are the model's own
    model = open_run(dae, device="cpu").model
    test = arrays["split"] == "test"
    with torch.no_grad():
        expected = model.encode(digits.as_float(digits.test)).numpy()
    assert np.allclose(arrays["codes"][test], expected, atol=1e-5)
    assert "sprite" in (tmp_path / "projector_config.pbtxt").read_text()
    assert len(list(tmp_path.rglob("sprite.png"))) == 1 and len(list(tmp_path.rglob("metadata.tsv"))) == 1


def test_map_pca_and_code_pngs_and_code_needs_latent_dim_2(dae, vae2, tmp_path, capsys):
    assert cli.main(["map", str(dae), "--method", "pca", "--out", str(tmp_path)]) == 0
    assert cli.main(["map", str(vae2), "--method", "code", "--out", str(tmp_path)]) == 0
    for name in ("map_pca.png", "map_code.png"):
        image = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        assert image.shape == (650, 800, 3)
        # coloured dots: many pixels far from grey
        assert (image.max(axis=2).astype(int) - image.min(axis=2) > 80).sum() > 1000
    assert list(tmp_path.glob("events.out.tfevents.*"))
    capsys.readouterr()
    assert cli.main(["map", str(dae), "--method", "code", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("aecli: error: --method:") and "latent_dim=2" in err and "16" in err
    assert not (tmp_path / "x").exists()


def test_search_precision_of_codes_is_far_above_chance(dae, tmp_path):
    assert cli.main(["search", str(dae), "--measure", "--k", "8", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "search_precision_at_8.json").read_text())
    precision = record["precision_at_k"]
    assert set(precision) == {"codes (16)", "pixels (64)", "PCA of the pixels (16)"}
    assert 0.09 < record["chance"] < 0.11  # ten classes of about equal size
    assert precision["codes (16)"] > 0.7 > 5 * record["chance"]
    assert all(0.7 < p <= 1.0 for p in precision.values())


def test_search_by_index_and_by_file_write_the_query_then_its_neighbours(dae, tmp_path, capsys, drawn):
    assert cli.main(["search", str(dae), "--query", "5", "--k", "4", "--out", str(tmp_path)]) == 0
    png(tmp_path / "search_test5_k4.png", 1, 5)
    table = capsys.readouterr().out
    assert "share the query's label" in table and table.count("\n| ") == 4  # a row per neighbour
    title, query, *neighbours = drawn[0]
    assert f"MLPAutoencoder trained on binomial:0.25 noise ({dae.parent.name}/{dae.name})" in title
    assert "test image 5" in title and "framed" in title
    assert query == "query\ntest 5\n'8'"  # the query's label, under it
    assert len(neighbours) == 4 and all(n.startswith(f"#{r + 1}\ntest ") and "sim 0." in n and "'" in n
                                        for r, n in enumerate(neighbours))
    digits = load_digits()
    save_digit(digits.test[5], tmp_path / "q.png")
    assert cli.main(["search", str(dae), "--query", str(tmp_path / "q.png"), "--k", "4", "--out", str(tmp_path)]) == 0
    # test image 5 read from a file: its nearest test image is itself, then the neighbours found by index
    assert "| 1 | 5 | 8 | 1.000 |" in capsys.readouterr().out
    [by_file] = tmp_path.glob("search_q-*_k4.png")  # named by the file (and a hash of its path)
    png(by_file, 1, 5)
    assert drawn[1][1] == "query\nyour image\n" and drawn[1][2].startswith("#1\ntest 5\nsim 1.000")


def test_denoising_a_trained_dae_gains_psnr(dae, tmp_path, drawn):
    assert cli.main(["denoise", str(dae), "--synthetic", "--out", str(tmp_path)]) == 0
    psnr = json.loads((tmp_path / "denoise_synthetic_binomial0.25_seed0.json").read_text())["psnr_db"]
    assert psnr["denoised"] > psnr["noisy"] + 2.0
    png(tmp_path / "denoise_synthetic_binomial0.25_seed0.png", 3, 8)
    title, *rows = drawn[0]
    assert rows == ["clean", "corrupted (binomial:0.25)", "denoised"]
    assert "corrupted with binomial:0.25 (seed 0)" in title and "PSNR" in title and "MLPAutoencoder" in title


def test_denoise_synthetic_names_its_noise_so_two_noises_are_two_files(dae, tmp_path):
    for noise in ("binomial:0.5", "gaussian:0.3"):
        assert cli.main(["denoise", str(dae), "--synthetic", "--noise", noise, "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("denoise_synthetic_*.json")) == [
        "denoise_synthetic_binomial0.5_seed0.json", "denoise_synthetic_gaussian0.3_seed0.json"]
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("denoise_synthetic_*.json"))]
    assert "MaskingNoise(p=0.5)" in records[0]["noise"] and "GaussianNoise" in records[1]["noise"]


def test_denoise_synthetic_is_evaluates_measurement(dae, tmp_path, monkeypatch):
    """One implementation of denoising PSNR: ``aecli.metrics.denoising``, the numbers
    ``aecli.use.evaluate`` reports for the same noise and seed."""
    from aecli import metrics
    from aecli.use import evaluate

    calls, real_denoising = [], metrics.denoising
    monkeypatch.setattr(metrics, "denoising", lambda *a, **k: calls.append(a) or real_denoising(*a, **k))
    assert cli.main(["denoise", str(dae), "--synthetic", "--seed", "3", "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert len(calls) == 1
    psnr = json.loads((tmp_path / "denoise_synthetic_binomial0.25_seed3.json").read_text())["psnr_db"]
    result = evaluate.evaluate(open_run(dae, device="cpu"), evaluate.Options(seed=3, probe_images=0, iw_samples=0))
    assert psnr["noisy"] == pytest.approx(result["test/noisy_input_psnr_db"], rel=1e-9)
    assert psnr["denoised"] == pytest.approx(result["test/denoised_psnr_db"], rel=1e-9)
    assert psnr["clean input, reconstructed"] == pytest.approx(result["test/psnr_db"], rel=1e-9)


def test_use_commands_feed_the_model_what_training_fed_it(dae):
    """One way from raw images to the model: the use commands' batches are ImageData.as_float's
    inputs bit for bit (x * (1/255), not x / 255: they differ in the last bit for half the
    values), and evaluate's codes are inference.codes, by index."""
    from aecli.data import ImageData
    from aecli.use import inference

    run = open_run(dae, device="cpu")
    raw = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8)
    data = ImageData(raw, raw, raw, max_value=255.0)
    assert torch.equal(torch.cat(list(inference.float_batches(run, raw, 255.0, "test", batch=3))), data.as_float(raw))
    with torch.no_grad():
        expected = run.model.encode(data.as_float(raw[[3, 1]]))
    assert torch.equal(inference.codes(run, raw, 255.0, torch.tensor([3, 1]), batch=2), expected)


def test_denoise_own_images_skips_and_names_unreadable_files(dae, tmp_path, capsys, drawn):
    inp, out = tmp_path / "in", tmp_path / "out"
    (inp / "sub").mkdir(parents=True)
    digits = load_digits()
    for i, name in enumerate(("a.png", "a.jpg", "sub/b.jpg")):
        save_digit(digits.test[i], inp / name, size=40, mode="RGB")
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    for i in range(3):
        (inp / f"notes{i}.txt").write_text("no image")
    assert cli.main(["denoise", str(dae), str(inp), str(out)]) == 0
    # a.png and a.jpg: two inputs, two outputs; and one before/after sheet
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == [
        "a.jpg.png", "a.png", "denoise_before_after.png", "sub/b.png"]
    assert Image.open(out / "a.png").size == (40, 40) and Image.open(out / "a.png").mode == "L"  # the input's size
    assert np.asarray(Image.open(out / "a.png")).std() > 20
    assert not np.array_equal(np.asarray(Image.open(out / "a.png")), np.asarray(Image.open(out / "a.jpg.png")))
    png(out / "denoise_before_after.png", 2, 3)
    assert {"input", "denoised", "a.jpg", "a.png"} <= set(drawn[0])  # row labels, file names under the tiles
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "skipped" in captured.err
    # the files that are no images: left out in one line, not one warning each
    assert "left out 3 file(s)" in captured.err and "notes" not in captured.err
    assert "wrote 3 images" in captured.out and "resized back from the model's 8x8" in captured.out
    assert cli.main(["denoise", str(dae), str(inp), str(inp)]) == 1  # would overwrite the user's images
    assert "OUTPUT_DIR" in capsys.readouterr().err


def test_own_image_folders_are_listed_as_folder_datasets_are(tmp_path, monkeypatch):
    """One lister of image folders (aecli.data.sources.image_files): a folder dataset takes the
    image extensions; so do denoise and score (counting the other files once, naming the image
    files they cannot read), both without hidden files and, for denoise, without its own output
    folder inside the input."""
    from aecli.data import sources
    from aecli.use import inference

    for name in ("a.png", "notes.txt", ".hidden/x.png", ".y.png", "out/y.png", "sub/b.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    calls, real = [], sources.image_files
    monkeypatch.setattr(sources, "image_files", lambda *a, **k: calls.append(a) or real(*a, **k))
    listed = inference.image_files(tmp_path, "INPUT_DIR", skip=tmp_path / "out")
    assert [str(p.relative_to(tmp_path)) for p in listed] == ["a.png", "sub/b.jpg"] and len(calls) == 2
    assert [str(p.relative_to(tmp_path)) for p in real(tmp_path)] == ["a.png", "out/y.png", "sub/b.jpg"]
    with pytest.raises(ConfigError, match="INPUT_DIR: no folder at"):
        inference.image_files(tmp_path / "nowhere", "INPUT_DIR")


def test_interpolation_ends_decode_to_the_two_reconstructions(dae):
    run = open_run(dae, device="cpu")
    data = run.data()
    a, b = data.as_float(data.test[[3, 7]])
    walk = sample.walk(run, a, b, 6)
    with torch.no_grad():
        ends = run.model.reconstruct(torch.stack([a, b]), run.recon)
    assert walk.shape == (6, 1, 8, 8)
    assert torch.allclose(walk[0], ends[0], atol=1e-5) and torch.allclose(walk[-1], ends[1], atol=1e-5)
    assert (walk[1:-1] - walk[0]).abs().mean() > 0.01  # it does move


def test_sample_prior_manifold_interpolate(vae2, dae, tmp_path, capsys, drawn):
    assert cli.main(["sample", str(vae2), "--n", "16", "--out", str(tmp_path)]) == 0
    png(tmp_path / "sample_prior_n16_seed0.png", 4, 4)
    assert "16 images decoded from codes drawn from the prior" in drawn[0][0]
    assert cli.main(["sample", str(vae2), "--manifold", "--side", "5", "--out", str(tmp_path)]) == 0
    png(tmp_path / "sample_manifold_side5.png", 5, 5)
    rows, values = sample.manifold(open_run(vae2, device="cpu"), 5)
    assert (rows[0][0] - rows[-1][-1]).abs().mean() > 0.02  # opposite corners differ
    assert "code number 1" in drawn[1] and "code number 2" in drawn[1]  # the axes, with their values
    assert f"{values[0]:.2g}" in drawn[1] and f"{values[-1]:.2g}" in drawn[1]
    assert cli.main(["sample", str(dae), "--interpolate", "3", "7", "--steps", "4", "--out", str(tmp_path)]) == 0
    png(tmp_path / "sample_interpolate_3_7_steps4.png", 1, 6)
    # the real images at the ends are told apart from the walk's decoded points
    assert drawn[2][1:] == ["test 3\n(input)", "t=0.00", "t=0.33", "t=0.67", "t=1.00", "test 7\n(input)"]
    capsys.readouterr()
    assert cli.main(["sample", str(dae), "--n", "4", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no prior" in err and "--interpolate" in err
    assert cli.main(["sample", str(dae), "--interpolate", "3", "359", "--out", str(tmp_path)]) == 1
    assert "359 is out of range" in capsys.readouterr().err


def test_reconstruction_error_separates_a_held_out_class(held_out, tmp_path):
    assert cli.main(["score", str(held_out), "test", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "scores_test_auc.json").read_text())
    assert record["held_out_classes"] == [str(HELD_OUT)]
    assert record["roc_auc"] > 0.6 and record["mean_error_held_out"] > record["mean_error_trained"]
    with open(tmp_path / "scores_test.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 359 and set(rows[0]) == {"index", "label", "class", "error"}
    assert all(r["class"] == r["label"] for r in rows)  # digits' class names are their digits
    assert sum(int(r["label"]) == HELD_OUT for r in rows) == record["held_out_images"] > 20


def test_score_of_an_image_folder(dae, tmp_path):
    (tmp_path / "imgs").mkdir()
    digits = load_digits()
    save_digit(digits.test[0], tmp_path / "imgs" / "digit.png")
    noise = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "imgs" / "noise.png")
    assert cli.main(["score", str(dae), str(tmp_path / "imgs"), "--out", str(tmp_path)]) == 0
    [scores] = tmp_path.glob("scores_folder_imgs-*.csv")
    with open(scores) as f:
        error = {r["file"].rsplit("/", 1)[1]: float(r["error"]) for r in csv.DictReader(f)}
    assert error["noise.png"] > 3 * error["digit.png"]


def test_scoring_a_folder_named_test_keeps_the_test_splits_scores(dae, tmp_path, monkeypatch):
    (tmp_path / "test").mkdir()
    save_digit(load_digits().test[0], tmp_path / "test" / "digit.png")
    assert cli.main(["score", str(dae), "test", "--out", str(tmp_path)]) == 0
    split = (tmp_path / "scores_test.csv").read_text()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["score", str(dae), "./test", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "scores_test.csv").read_text() == split  # not replaced
    [folder] = tmp_path.glob("scores_folder_test-*.csv")
    assert next(csv.reader(folder.open())) == ["file", "error"]


def test_finetune_reports_accuracies_above_chance(dae, tmp_path, capsys, monkeypatch):
    from aecli.use import probes

    probed, real_probe = [], probes.linear_probe  # the one linear probe (evaluate's), with its one cap
    monkeypatch.setattr(probes, "linear_probe", lambda *a: probed.append(a[0].dims) or real_probe(*a))
    argv = [str(dae), "--labels-per-class", "5", "--steps", "60", "--seeds", "1", "--out", str(tmp_path)]
    assert cli.main(["finetune", *argv]) == 0
    assert probed == [16, 64]  # the codes, then the pixels
    record = json.loads((tmp_path / "finetune_5_per_class.json").read_text())
    assert record["probe_max_iter"] == probes.PROBE_MAX_ITER and record["probe_unconverged"] == []
    assert record["labelled_images"] == 50
    accuracy = {k: v[0] for k, v in record["test_accuracy"].items()}
    assert set(accuracy) == {*finetune.TRAINED, *finetune.PROBES}
    assert all(0.3 < a <= 1.0 for a in accuracy.values()), accuracy  # chance: 0.1
    assert "pre-trained encoder, fine-tuned" in capsys.readouterr().out


def test_dataset_classes_keeps_train_and_val_only():
    data = keep_classes(load_digits(), [0, 1, 2])
    for split in ("train", "val"):
        assert set(data.labels[split].tolist()) == {0, 1, 2}
        assert len(data.split(split)) == len(data.labels[split])
    assert set(data.labels["test"].tolist()) == set(range(10)) and len(data.test) == 359
    with pytest.raises(ConfigError, match=r"dataset.classes: 10 is not a class of this dataset \(ids 0..9"):
        keep_classes(load_digits(), [0, 10])


def test_bad_input_gives_one_message(dae, tmp_path, capsys):
    assert cli.main(["search", str(tmp_path), "--query", "0"]) == 1
    assert capsys.readouterr().err.startswith(f"aecli: error: RUN: {tmp_path} holds no checkpoints/")
    assert cli.main(["search", str(dae), "--query", "359"]) == 1
    assert "--query: 359 is out of range: the test split has 359 images" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not an image")
    assert cli.main(["search", str(dae), "--query", str(tmp_path / "notes.txt")]) == 1
    assert f"cannot read {tmp_path / 'notes.txt'} as an image" in capsys.readouterr().err


def test_measure_on_an_unlabelled_dataset_is_refused(tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    digits = load_digits()
    for i in range(30):
        save_digit(digits.train[i], flat / f"{i}.png")
    run_dir = tmp_path / "run"
    train(make_cfg("dataset=folder", f"dataset.root={flat}", "dataset.image_size=8", "dataset.channels=1",
                   "trainer.epochs=1", "trainer.progress=log", "trainer.num_threads=1"), run_dir)
    capsys.readouterr()
    assert cli.main(["search", str(run_dir), "--measure"]) == 1
    assert capsys.readouterr().err.startswith("aecli: error: --measure: this run's dataset has no labels")
    assert not list(run_dir.glob("search_*"))


@pytest.mark.integration
def test_not_a_run_dir_exits_1_with_one_message(tmp_path):
    result = run_cli(str(tmp_path / "nowhere"), cwd=tmp_path, module="aecli.encode")  # the shim
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines()[0] == f"aecli: error: RUN: {tmp_path / 'nowhere'} does not exist"
    assert len(result.stderr.strip().splitlines()) == 2 and "fix:" in result.stderr



def test_a_moved_dataset_is_found_with_data_root(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    digits = load_digits()
    for i in range(40):
        save_digit(digits.train[i], images / f"{i}.png")
    run_dir = tmp_path / "run"
    train(make_cfg("dataset=folder", f"dataset.root={images}", "dataset.image_size=8", "dataset.channels=1",
                   "trainer.epochs=1", "trainer.progress=log", "trainer.num_threads=1"), run_dir)
    expected = (run_dir / "scores_test.csv")
    test_files = open_run(run_dir, device="cpu").data().files["test"]
    images.rename(tmp_path / "moved")
    capsys.readouterr()
    assert cli.main(["score", str(run_dir), "test"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("aecli: error: --data-root: no folder at") and "--data-root DIR" in err[1]
    assert not expected.exists()
    assert cli.main(["score", str(run_dir), "test", "--data-root", str(tmp_path / "moved")]) == 0
    rows = list(csv.DictReader(expected.open()))
    assert len(rows) == len(open_run(run_dir, device="cpu").data(str(tmp_path / "moved")).test) > 0
    assert [r["file"] for r in rows] == [str(f).replace(str(images), str(tmp_path / "moved")) for f in test_files]


def test_a_run_still_training_is_warned_and_not_written_into(vae2, tmp_path, capsys):
    import fcntl
    import os
    import shutil

    run_dir = tmp_path / "run"  # a copy: this process holds the lock of the runs it trained
    shutil.copytree(vae2, run_dir)
    fd = os.open(run_dir / ".aecli.lock", os.O_RDWR)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": 4242, "host": "box", "started": "now"}).encode(), 0)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a training process holds it
    try:
        before = sorted(p.name for p in run_dir.iterdir())
        assert cli.main(["sample", str(run_dir), "--n", "4"]) == 1
        err = capsys.readouterr().err
        assert "still training (pid 4242 on box" in err and "aecli: error: --out:" in err and "--out DIR" in err
        assert cli.main(["evaluate", str(run_dir), "--iw-samples", "0", "--probe-images", "0"]) == 1
        assert "aecli: error: --out:" in capsys.readouterr().err
        assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing written into the run dir
        assert cli.main(["sample", str(run_dir), "--n", "4", "--out", str(tmp_path / "out")]) == 0
        assert "aecli: warning:" in capsys.readouterr().err
        assert (tmp_path / "out" / "sample_prior_n4_seed0.png").is_file()
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert cli.main(["sample", str(run_dir), "--n", "4", "--out", str(tmp_path / "out")]) == 0
    assert "warning" not in capsys.readouterr().err  # a finished run: no word


def test_a_damaged_best_checkpoint_points_to_last(dae, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(dae, run_dir)
    best = run_dir / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    assert cli.main(["sample", str(run_dir), "--interpolate", "1", "2", "--out", str(tmp_path)]) == 1
    fix = capsys.readouterr().err.splitlines()[1]
    assert "--checkpoint last" in fix and "last.pt" in fix and "e.g. checkpoints/best.pt" not in fix
    assert cli.main(["sample", str(run_dir), "--interpolate", "1", "2", "--checkpoint", "last",
                     "--out", str(tmp_path)]) == 0


def test_the_runs_pngs_are_titled_figures_and_metrics_record_the_world_size(dae, vae2):
    assert json.loads((dae / "metrics.json").read_text())["world_size"] == 1
    recon = png(dae / "reconstruction.png", 3, 8)
    assert recon.shape[1] > 8 * MIN_TILE + 100  # room for the row labels on the left
    png(vae2 / "samples.png", 2, 8)


def test_map_has_axes_and_a_title_naming_the_run(dae, tmp_path, drawn):
    assert cli.main(["map", str(dae), "--method", "pca", "--out", str(tmp_path)]) == 0
    assert "principal component 1" in drawn[0] and "principal component 2" in drawn[0]
    title = next(t for t in drawn[0] if "PCA" in t)
    assert max(map(len, title.splitlines())) <= 80  # wrapped to fit the width
    assert f"({dae.parent.name}/{dae.name}): PCA of the codes, 359 test images" in " ".join(title.split())


def test_finetune_leaves_out_test_classes_without_train_labels(held_out, tmp_path, capsys):
    argv = [str(held_out), "--labels-per-class", "3", "--steps", "5", "--seeds", "1", "--out", str(tmp_path)]
    assert cli.main(["finetune", *argv]) == 0
    out = capsys.readouterr().out
    n_held = int((load_digits().labels["test"] == HELD_OUT).sum())
    assert f"note: class(es) {HELD_OUT} have no train images in this run (dataset.classes): their {n_held}" in out
    record = json.loads((tmp_path / "finetune_3_per_class.json").read_text())
    assert record["test_images"] == 359 - n_held
