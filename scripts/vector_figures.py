"""The figures of docs/vectors.md, offline, through the CLI as a user runs it:

1. retrieval: a generated 20-topic corpus (documents mix their own topic, a second one and
   shared words); an autoencoder (loss=multinomial on word counts) at 10 and 32 dims;
   precision@10 of its codes vs TF-IDF cosine vs LSA at the same dims (``aecli search --measure``);
2. anomalies: scikit-learn's breast-cancer table written to CSV, trained on the benign rows
   (``dataset.classes``); ROC-AUC of the AE's reconstruction error vs PCA's at the code's size
   (``aecli score RUN test``);
3. speed: encoding 100k table rows, and exact cosine search of one query's top 10 among 100k and
   1M codes by chunked matrix products (CPU); ``aecli search --gallery`` end to end on tables of
   100k and 1M rows (first call and cached), with the peak memory.

    python scripts/vector_figures.py OUT_DIR [--quick]
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.vector_data import topic_corpus  # noqa: E402 - the generator the tests use


def aecli(*args: str, module: str = "aecli.cli") -> None:
    subprocess.run([sys.executable, "-m", module, *args], check=True, cwd=REPO)


def retrieval(out: Path, epochs: int) -> dict:
    corpus = topic_corpus(out / "corpus", topics=20, per_topic=200, words=60, own=0.35, other=0.25, topic_words=50)
    results = {}
    for dims in (10, 32):
        run = out / f"text_{dims}"
        if not (run / "metrics.json").exists():
            aecli("dataset=text", f"dataset.path={corpus}", "model=ae", "loss=multinomial", "model.hidden_dims=[256]",
                  f"model.latent_dim={dims}", f"trainer.epochs={epochs}", "trainer.batch_size=64",
                  "trainer.progress=log", "device=cpu", f"hydra.run.dir={run}", module="aecli.train")
        aecli("search", str(run), "--measure", "--k", "10", "--out", str(run))
        results[dims] = json.loads((run / "search_precision_at_10.json").read_text())
    return results


def anomalies(out: Path, epochs: int) -> dict:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame["diagnosis"] = np.where(frame.pop("target") == 1, "benign", "malignant")
    table = out / "breast_cancer.csv"
    frame.to_csv(table, index=False)
    results = {}
    for dims in (2, 4):
        run = out / f"cancer_{dims}"
        if not (run / "metrics.json").exists():
            aecli("dataset=table", f"dataset.path={table}", "dataset.label_column=diagnosis", "dataset.classes=[0]",
                  "model=ae", "model.hidden_dims=[64]", f"model.latent_dim={dims}", f"trainer.epochs={epochs}",
                  "trainer.batch_size=32", "trainer.progress=log", "device=cpu", f"hydra.run.dir={run}",
                  module="aecli.train")
        aecli("score", str(run), "test", "--out", str(run))
        results[dims] = json.loads((run / "scores_test_auc.json").read_text())
    return results


def speed(out: Path) -> dict:
    """Seconds to encode 100k rows through a trained table model, and to search 100k / 1M codes."""
    from aecli.use import gallery, inference
    from aecli.use.trained import open_run

    run = open_run(out / "cancer_4", device="cpu")
    rows = torch.randn(100_000, run.model.input_shape[0])
    start = time.perf_counter()
    inference.codes(run, rows, 1.0)
    result = {"encode_100k_rows_s": round(time.perf_counter() - start, 3)}
    for n in (100_000, 1_000_000):
        codes = torch.nn.functional.normalize(torch.randn(n, 32), dim=1)
        start = time.perf_counter()
        values, _ = gallery.nearest(codes, torch.randn(32), 10)  # what aecli search --gallery runs
        result[f"search_{n}_codes_s"] = round(time.perf_counter() - start, 4)
        result[f"gallery_{n}_mb"] = round(codes.numel() * 4 / 2**20, 1)
        assert len(values) == 10
    return result


def gallery_speed(out: Path, sizes: tuple[int, ...]) -> dict:
    """``aecli search RUN --gallery rows.csv --query 0`` on tables of ``sizes`` rows (the
    breast-cancer columns, resampled with noise): wall seconds of the first call (read, hash,
    encode, cache, search) and the second (cache hit), and the peak memory of the process."""
    import resource

    import pandas as pd

    frame = pd.read_csv(out / "breast_cancer.csv")
    rng = np.random.default_rng(0)
    result = {}
    for n in sizes:
        table = out / f"gallery_{n}.csv"
        if not table.exists():
            rows = frame.iloc[rng.integers(len(frame), size=n)].reset_index(drop=True)
            numeric = [c for c in rows.columns if c != "diagnosis"]
            rows[numeric] *= rng.normal(1.0, 0.02, size=(n, len(numeric)))
            rows.to_csv(table, index=False)
        for attempt in ("first", "cached"):
            start = time.perf_counter()
            aecli("search", str(out / "cancer_4"), "--gallery", str(table), "--query", "0", "--k", "10",
                  "--out", str(out / f"gallery_{n}_out"), "--device", "cpu")
            result[f"gallery_{n}_{attempt}_s"] = round(time.perf_counter() - start, 2)
        result[f"gallery_{n}_peak_rss_mb_so_far"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    return result


def main(out: str, quick: bool = False) -> None:
    folder = Path(out).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    figures = {"retrieval": retrieval(folder, 5 if quick else 40), "anomalies": anomalies(folder, 5 if quick else 150)}
    figures["speed"] = speed(folder) | gallery_speed(folder, (10_000,) if quick else (100_000, 1_000_000))
    (folder / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    for dims, r in figures["retrieval"].items():
        print(f"{dims} dims: precision@10 " + ", ".join(f"{k} {v:.3f}" for k, v in r["precision_at_k"].items())
              + f"; chance {r['chance']:.3f}")
    for dims, r in figures["anomalies"].items():
        print(f"{dims} dims: anomaly ROC-AUC AE {r['roc_auc']:.3f}, PCA {r['pca_roc_auc']:.3f}")
    print(figures["speed"])


if __name__ == "__main__":
    main(sys.argv[1], "--quick" in sys.argv)
