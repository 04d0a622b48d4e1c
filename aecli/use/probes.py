"""Representation quality: how easily the labels can be read off a representation of the images.

Three representations of the same images are compared: the model's codes (``model.encode``: a
VAE's posterior mean, by ``aecli.use.inference.codes``), the raw pixels, and PCA of the pixels
with as many dimensions as the code. Each is scored two ways, both fit on (a subset of) the
train split and scored on the whole test split:

- linear probe: scikit-learn's ``LogisticRegression`` on standardised features (codes and
  pixels have very different scales; lbfgs converges on standardised ones);
- k-NN: ``KNeighborsClassifier`` (k nearest train images by Euclidean distance, majority vote)
  on the representation as it is: retrieval in the model's own geometry, where a VAE's
  collapsed dimensions (near-constant) weigh nothing instead of being blown up to unit variance.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from aecli.data import ImageData, batches
from aecli.data.vectors import tfidf

REPRESENTATIONS = ("codes", "pixels", "pca")
# lbfgs iterations of the probe: scikit-learn's default. Measured on Fashion-MNIST pixels
# (10,000 train images, 784 dims): 100 iterations 0.809 test accuracy in 2-4 s, 300 iterations
# 0.802 in 6-60 s (this VM's timings swing), so the probe is the early-stopped fit, said so.
# aecli.use.finetune's few-label references use it too: on digits with 1, 5 and 10 labels per
# class (10 seeds each) every pixel fit converges within 100, at the accuracy 2,000 gave.
PROBE_MAX_ITER = 100


@dataclass
class Features:
    """One representation of the probe's train images and of the test images."""

    train: np.ndarray
    test: np.ndarray

    @property
    def dims(self) -> int:
        return int(self.train.shape[1])


def pixels(data: ImageData, raw: Tensor, indices: Tensor, batch_size: int) -> np.ndarray:
    """The images ``indices`` of ``raw`` as flat float32 rows in [0, 1]."""
    device = raw.device if isinstance(raw, Tensor) else torch.device("cpu")
    out = [data.as_float(b).flatten(1).cpu() for _, b in batches(raw, batch_size, indices.to(device))]
    return torch.cat(out).numpy()


def pca(pixel_features: Features, dims: int, seed: int) -> Features:
    """PCA with ``dims`` components, fit on the train pixels (scikit-learn)."""
    from sklearn.decomposition import PCA

    n = min(dims, *pixel_features.train.shape)
    fit = PCA(n_components=n, random_state=seed).fit(pixel_features.train)
    return Features(fit.transform(pixel_features.train), fit.transform(pixel_features.test))


def lsa(features: Features, fitted: dict, dims: int, seed: int) -> Features:
    """Latent semantic analysis: truncated SVD with ``dims`` components of the TF-IDF rows
    (``features`` in the corpus's own representation), fit on the train rows."""
    from sklearn.decomposition import TruncatedSVD

    train, test = tfidf(fitted, features.train), tfidf(fitted, features.test)
    n = max(1, min(dims, train.shape[1] - 1, train.shape[0] - 1))
    fit = TruncatedSVD(n_components=n, random_state=seed).fit(train)
    return Features(fit.transform(train), fit.transform(test))


def baseline(data: ImageData, raw: Features, dims: int, seed: int) -> tuple[str, Features]:
    """The linear baseline at the code's size: LSA of a corpus, PCA of anything else."""
    if data.kind == "text":
        return "LSA", lsa(raw, data.transform, dims, seed)
    return "PCA", pca(raw, dims, seed)


def linear_probe(features: Features, y_train: np.ndarray, y_test: np.ndarray, seed: int) -> tuple[float, bool]:
    """Test accuracy of a logistic regression on standardised features, and whether lbfgs
    converged within ``PROBE_MAX_ITER`` iterations."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=PROBE_MAX_ITER, random_state=seed))
    # one thread: lbfgs's small matrix products gain nothing from more, and its OpenMP and BLAS
    # threads contend: 1.3 vs 2.6 s on 10,000 Fashion-MNIST pixel rows, 0.15 vs 0.8 s on codes
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
        warnings.simplefilter("always", ConvergenceWarning)
        probe.fit(features.train, y_train)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return float(probe.score(features.test, y_test)), converged


def knn(features: Features, y_train: np.ndarray, y_test: np.ndarray, k: int) -> float:
    """Test accuracy of a ``k``-nearest-neighbour vote (Euclidean, brute force: exact, and the
    fastest way for dense features of this size)."""
    from sklearn.neighbors import KNeighborsClassifier

    return float(KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(features.train, y_train)
                 .score(features.test, y_test))


def probe_subset(n_train: int, max_images: int | None, seed: int) -> Tensor:
    """Indices of the train images the probes are fit on: all of them, or ``max_images`` drawn
    at random (seeded), in order."""
    if max_images is None or max_images >= n_train:
        return torch.arange(n_train)
    return torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))[:max_images].sort().values


def score(features: Features, y_train: np.ndarray, y_test: np.ndarray, k: int, seed: int) -> dict[str, float | bool]:
    """Probe and k-NN accuracy of one representation."""
    accuracy, converged = linear_probe(features, y_train, y_test, seed)
    return {"probe": accuracy, "probe_converged": converged, "knn": knn(features, y_train, y_test, k),
            "dims": features.dims}
