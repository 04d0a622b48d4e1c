"""Generated vector data with known answers: a topic-mixture corpus and a table with planted
anomalies (no download, a few KB)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def topic_corpus(folder: Path, topics: int = 4, per_topic: int = 60, words: int = 40, seed: int = 0,
                 own: float = 0.7, other: float = 0.0, topic_words: int = 25) -> Path:
    """``folder/topic<t>/<n>.txt``: each document's words drawn with probability ``own`` from its
    topic's ``topic_words`` words, ``other`` from one other topic's (picked per document), and the
    rest from 40 words every topic shares; within a topic the words are Zipf-distributed; 'the',
    'and' (stop words) sprinkled in."""
    rng = np.random.default_rng(seed)
    vocab = [[f"t{t}w{i}" for i in range(topic_words)] for t in range(topics)]
    zipf = 1.0 / np.arange(1, topic_words + 1)
    zipf /= zipf.sum()
    shared = [f"common{i}" for i in range(40)]
    for t in range(topics):
        (folder / f"topic{t}").mkdir(parents=True, exist_ok=True)
        for n in range(per_topic):
            second = int(rng.choice([u for u in range(topics) if u != t]))
            draw = rng.random(words)
            picks = [vocab[t][rng.choice(topic_words, p=zipf)] if d < own
                     else vocab[second][rng.choice(topic_words, p=zipf)] if d < own + other
                     else shared[rng.integers(len(shared))] for d in draw]
            (folder / f"topic{t}" / f"{n:04d}.txt").write_text("the " + " and ".join(picks) + "\n")
    return folder


def anomaly_table(path: Path, normal: int = 400, anomalies: int = 40, dims: int = 12, seed: int = 0) -> Path:
    """A CSV whose normal rows lie near a 3-D subspace of ``dims`` columns (plus a categorical
    column) and whose planted anomalies do not; ``label`` is normal or anomaly."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(3, dims))
    rows = rng.normal(size=(normal, 3)) @ basis + 0.05 * rng.normal(size=(normal, dims))
    odd = rng.normal(size=(anomalies, dims)) * rows.std(0)
    frame = pd.DataFrame(np.concatenate([rows, odd]), columns=[f"x{i}" for i in range(dims)])
    frame["colour"] = rng.choice(["red", "green"], size=len(frame))
    frame["label"] = ["normal"] * normal + ["anomaly"] * anomalies
    frame.to_csv(path, index=False)
    return path
