"""Tables and documents as vectors (dataset=table, dataset=text): transforms fitted on the train
split and stored as data, models trained on (D,) inputs, and the use commands on them, on
generated data with known answers (planted anomalies, known topics)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from aecli import cli
from aecli.components import load_data
from aecli.data.vectors import load_table, load_text, seal
from aecli.errors import ConfigError
from aecli.losses import Multinomial
from aecli.store import checkpoint
from aecli.training.build import build_parts
from aecli.training.run import run as train
from aecli.use import gallery
from aecli.use.trained import open_run

from .conftest import make_cfg
from .vector_data import anomaly_table, topic_corpus

NORMAL = 1  # class id of "normal" (classes sorted: anomaly, normal)


def quick(*overrides: str):
    return make_cfg("trainer.progress=log", "trainer.num_threads=1", "trainer.batch_size=32", *overrides)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return topic_corpus(tmp_path_factory.mktemp("corpus") / "docs")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return anomaly_table(tmp_path_factory.mktemp("table") / "rows.csv")


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, corpus):
    run_dir = tmp_path_factory.mktemp("text") / "run"
    train(quick("dataset=text", f"dataset.path={corpus}", "model=ae", "loss=multinomial", "model.latent_dim=10",
                "trainer.epochs=15"), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def anomaly_run(tmp_path_factory, table):
    run_dir = tmp_path_factory.mktemp("anomaly") / "run"
    train(quick("dataset=table", f"dataset.path={table}", "dataset.label_column=label", "dataset.categorical=[colour]",
                f"dataset.classes=[{NORMAL}]", "model=ae", "model.latent_dim=3", "model.hidden_dims=[32]",
                "trainer.epochs=40"), run_dir)
    return run_dir


# --- loaders -----------------------------------------------------------------------------------

def test_table_scaler_is_fitted_on_the_train_split_and_one_hot_codes_named_columns(table):
    data = load_table(str(table), label_column="label", categorical=["colour"])
    assert data.shape == (14,) and data.train.dtype == torch.float32 and not data.images
    assert data.features[-2:] == ["colour=green", "colour=red"]
    assert torch.allclose(data.train.mean(0), torch.zeros(14), atol=1e-5)
    assert torch.allclose(data.train.std(0, unbiased=False), torch.ones(14), atol=1e-4)
    assert not torch.allclose(data.test.mean(0), torch.zeros(14), atol=1e-3)  # not fitted on test
    assert data.classes == ["anomaly", "normal"] and len(data.labels["test"]) == len(data.test)
    again = load_table(str(table), label_column="label", categorical=["colour"], fitted=data.transform)
    assert torch.equal(again.test, data.test)


def test_table_refuses_text_columns_and_missing_values_by_name(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"a": [1.0, 2.0, None, 4.0, 5.0], "b": ["x", "y", "x", "y", "x"]}).to_csv(path, index=False)
    with pytest.raises(ConfigError) as e:
        load_table(str(path))
    assert e.value.key == "dataset.categorical" and "'b'" in e.value.problem
    with pytest.raises(ConfigError) as e:
        load_table(str(path), categorical=["b"])
    assert e.value.key == "dataset.missing" and "row 3" in e.value.problem and "'a'" in e.value.problem
    filled = load_table(str(path), categorical=["b"], missing="mean", scale="none")
    assert not torch.isnan(torch.cat([filled.train, filled.val, filled.test])).any()
    assert len(load_table(str(path), categorical=["b"], missing="drop").train) + 2 == 4


def test_text_vocabulary_comes_from_the_train_split_without_stop_words(corpus):
    data = load_text(str(corpus), representation="binary")
    vocabulary = data.transform["vocabulary"]
    assert "the" not in vocabulary and "t0w1" in vocabulary and data.shape == (len(vocabulary),)
    assert set(data.train.unique().tolist()) <= {0.0, 1.0}
    assert data.classes == ["topic0", "topic1", "topic2", "topic3"] and data.names["test"][0].endswith(".txt")
    tfidf = load_text(str(corpus), representation="tfidf")
    assert torch.allclose(tfidf.train.norm(dim=1), torch.ones(len(tfidf.train)), atol=1e-5)


def test_conv_models_refuse_vectors_with_one_message(table):
    for model in ("conv", "conv_vae", "conv_vqvae"):
        with pytest.raises(ConfigError) as e:
            build_parts(quick("dataset=table", f"dataset.path={table}", "dataset.label_column=label",
                              "dataset.categorical=[colour]", f"model={model}", "loss=mse"))
        assert e.value.key == "model" and "vectors of 14 features" in e.value.problem and "model=ae" in e.value.fix


def test_bce_on_word_counts_is_refused_with_the_representation_as_fix(corpus):
    with pytest.raises(ConfigError) as e:
        build_parts(quick("dataset=text", f"dataset.path={corpus}", "model=ae", "loss=bce"))
    assert e.value.key == "loss" and "dataset.representation=binary" in e.value.fix


@pytest.mark.parametrize("model", ["vae", "stacked", "dae", "sparse", "contractive", "vqvae"])
def test_the_other_vector_models_train_on_documents(model, corpus, tmp_path):
    size = "model.codes=2" if model == "vqvae" else "model.latent_dim=4"  # a VQ-VAE: codes x code_dim
    result = train(quick("dataset=text", f"dataset.path={corpus}", f"model={model}", "loss=bce",
                         "dataset.representation=binary", "trainer.epochs=1", size,
                         *(["model.pretrain_epochs=1"] if model == "stacked" else [])), tmp_path / "run")
    assert result.status == "completed" and math.isfinite(result.objective)
    assert (tmp_path / "run" / "reconstruction_words.md").read_text().count("|") > 12


def test_multinomial_loss_is_nats_per_word():
    counts = torch.tensor([[2.0, 0.0, 1.0, 1.0]])
    nats, words = Multinomial().nats_per_word(torch.zeros(1, 4), counts)  # uniform: log 4 per word
    assert words.item() == 4 and math.isclose(nats.item() / words.item(), math.log(4), rel_tol=1e-6)


# --- trained on vectors ------------------------------------------------------------------------

def test_codes_retrieve_same_topic_documents_far_above_chance(text_run, corpus, tmp_path, capsys):
    metrics = json.loads((text_run / "metrics.json").read_text())
    assert "test/recon_nats_per_word" in metrics and metrics["test/perplexity"] > 1
    vocabulary = json.loads((text_run / "vocabulary.json").read_text())["vocabulary"]
    assert "t2w3" in vocabulary
    assert cli.main(["search", str(text_run), "--measure", "--k", "10", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "search_precision_at_10.json").read_text())
    scores = record["precision_at_k"]
    assert set(scores) == {"codes (10)", f"TF-IDF ({len(vocabulary)})", "LSA (10)"}
    assert scores["codes (10)"] > 2 * record["chance"]
    assert (tmp_path / "search_precision_recall.png").stat().st_size > 10_000
    assert cli.main(["search", str(text_run), "--query-text", "t3w1 t3w2 t3w7 t3w9", "--k", "5",
                     "--out", str(tmp_path)]) == 0
    [found] = tmp_path.glob("search_text_k*.csv")
    rows = found.read_text().splitlines()[1:]
    assert len(rows) == 5 and sum("topic3" in r for r in rows) >= 4


def test_anomaly_scores_find_the_planted_rows_and_name_columns(anomaly_run, tmp_path, capsys):
    assert (anomaly_run / "feature_errors.png").stat().st_size > 5_000
    assert cli.main(["score", str(anomaly_run), "test", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "scores_test_auc.json").read_text())
    assert record["held_out_classes"] == ["anomaly"] and record["roc_auc"] > 0.9
    assert record["roc_auc"] >= record["pca_roc_auc"] - 0.02
    first = (tmp_path / "scores_test.csv").read_text().splitlines()[1]
    assert "%" in first and "x" in first  # its top contributing columns


def test_score_a_table_file_ranks_the_planted_rows_first(anomaly_run, table, tmp_path):
    assert cli.main(["score", str(anomaly_run), str(table), "--out", str(tmp_path)]) == 0
    [found] = tmp_path.glob("scores_file_rows-*.csv")
    rows = list(pd.read_csv(found).itertuples())
    assert len(rows) == 440
    top = sorted(rows, key=lambda r: -r.error)[:40]
    assert sum(int(r.item.split()[1]) > 400 for r in top) >= 28  # rows 401-440 are planted; chance: ~4


def test_encode_and_map_documents(text_run, tmp_path):
    assert cli.main(["encode", str(text_run), "--out", str(tmp_path)]) == 0
    arrays = np.load(tmp_path / "codes_test.npz")
    assert arrays["codes"].shape[1] == 10 and len(arrays["codes"]) == len(arrays["labels"])
    assert cli.main(["map", str(text_run), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "map_pca.png").stat().st_size > 10_000


def test_evaluate_on_vectors_skips_ssim_and_probes_codes(text_run, tmp_path):
    assert cli.main(["evaluate", str(text_run), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert "test/ssim" not in result and result["probe/codes_accuracy"] > 0.5
    assert any("LSA" in n for n in result["notes"])


def test_the_stored_transform_is_used_even_if_the_data_changed(anomaly_run, table, tmp_path):
    opened = open_run(anomaly_run, device="cpu")
    before = opened.data().test.clone()
    frame = pd.read_csv(table)
    frame[[c for c in frame.columns if c.startswith("x")]] *= 3.0  # a refit would scale differently
    moved = tmp_path / "rows.csv"
    frame.to_csv(moved, index=False)
    after = open_run(anomaly_run, device="cpu").data(str(moved)).test
    shift, divide = (torch.tensor(opened.data().transform[k][:12]) for k in ("shift", "divide"))
    assert torch.allclose(after[:, :12], 3 * before[:, :12] + 2 * shift / divide, atol=1e-4)  # (3x - s) / d


def test_a_tampered_vocabulary_or_scaler_is_refused(text_run, anomaly_run, tmp_path):
    original = (text_run / "vocabulary.json").read_text()
    copy = json.loads(original)
    copy["vocabulary"][0], copy["vocabulary"][1] = copy["vocabulary"][1], copy["vocabulary"][0]
    (text_run / "vocabulary.json").write_text(json.dumps(seal(copy)))  # even resealed: not the checkpoint's
    try:
        with pytest.raises(ConfigError) as e:
            open_run(text_run, device="cpu").data()
        assert "vocabulary.json" in e.value.problem
    finally:
        (text_run / "vocabulary.json").write_text(original)
    state = checkpoint.read(anomaly_run / "checkpoints" / "best.pt", key="RUN")
    bad = dict(state["data_transform"], shift=[s + 1.0 for s in state["data_transform"]["shift"]])
    with pytest.raises(ConfigError) as e:
        load_data(open_run(anomaly_run, device="cpu").cfg, bad)
    assert "changed after training" in e.value.problem


def test_the_transform_survives_resume(tmp_path, table):
    run_dir = tmp_path / "run"
    overrides = ("dataset=table", f"dataset.path={table}", "dataset.label_column=label",
                 "dataset.categorical=[colour]", "model=ae", "model.latent_dim=3", "trainer.epochs=2")
    train(quick(*overrides, "trainer.max_steps=3"), run_dir)
    scaler = json.loads((run_dir / "scaler.json").read_text())
    frame = pd.read_csv(table)
    frame["x0"] += 100.0  # the file changed: a refit would give another scaler
    frame.to_csv(table.parent / "changed.csv", index=False)
    train(quick(*overrides[:1], f"dataset.path={table.parent / 'changed.csv'}", *overrides[2:],
                f"resume={run_dir}"), run_dir)
    assert json.loads((run_dir / "scaler.json").read_text()) == scaler
    state = checkpoint.read(run_dir / "checkpoints" / "last.pt")
    assert state["data_transform"] == scaler and state["step"] > 3
    assert np.isclose(state["data_transform"]["shift"][0], scaler["shift"][0])


def test_chunked_exact_search_is_the_full_product_topk():
    codes = torch.nn.functional.normalize(torch.randn(1000, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    query = torch.randn(8, generator=torch.Generator().manual_seed(1))
    values, indices = gallery.nearest(codes, query, 7, chunk=64)
    full = (codes @ torch.nn.functional.normalize(query, dim=0)).topk(7)
    assert torch.equal(indices, full.indices) and torch.allclose(values, full.values)


def test_a_gallery_is_encoded_once_and_cached_by_content(text_run, corpus, tmp_path, capsys):
    own = tmp_path / "mine"
    own.mkdir()
    for t in (0, 3):
        for f in sorted((corpus / f"topic{t}").glob("*.txt"))[:10]:
            (own / f"{t}_{f.name}").write_text(f.read_text())
    args = ["search", str(text_run), "--gallery", str(own), "--k", "5", "--out", str(tmp_path / "out")]
    assert cli.main([*args, "--query-text", "t3w0 t3w1 t3w2"]) == 0
    assert "codes written to" in capsys.readouterr().out
    rows = pd.read_csv(tmp_path / "out" / "search_gallery_text.csv")
    assert (rows["name"].str.startswith("3_")).sum() >= 4
    assert cli.main([*args, "--query", "0"]) == 0
    assert "codes read from" in capsys.readouterr().out
    (own / "0_extra.txt").write_text("t0w1 t0w2 t0w3\n")  # new content: encoded again
    assert cli.main([*args, "--query", "0"]) == 0
    assert "codes written to" in capsys.readouterr().out
    assert len(list((tmp_path / "out").glob("codes-*.npz"))) == 2
