"""Distances between two domains' feature sets ``(N, D)``: Fréchet distance and proxy A-distance.

Both are computed in the feature space of the frozen task network (no downloaded Inception
weights), so they measure the gap as the classifier sees it.
"""

from __future__ import annotations

import warnings

import numpy as np


def _as_features(feats: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(feats, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ValueError(f"{name}: expected a (N, D) array with N >= 2, got shape {arr.shape}")
    return arr


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    ``FD = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``

    computed in the frozen task network's feature space (the FID formula without Inception).
    When the matrix square root is singular or not finite, ``eps * I`` is added to both covariances.
    """
    from scipy import linalg     # SciPy and scikit-learn are imported where used: every stage loads this module

    a = _as_features(feats_a, "feats_a")
    b = _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
    if caught or not np.isfinite(covmean).all():
        offset = eps * np.eye(cov_a.shape[0])
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)

    diff = mu_a - mu_b
    fd = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean)
    return float(max(fd, 0.0))


def proxy_a_distance(feats_a: np.ndarray, feats_b: np.ndarray, seed: int = 0) -> float:
    """Proxy A-distance ``PAD = 2 (1 - 2 err)``, clamped to [0, 2] (Ben-David et al., 2007).

    ``err`` is the held-out error of a linear domain classifier (standardisation + logistic
    regression) that tells set ``a`` from set ``b``. The larger set is subsampled to the size of
    the smaller one, then a shuffled, stratified half trains the classifier and the other half
    tests it. PAD is 0 for indistinguishable domains and 2 for perfectly separable ones.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a = _as_features(feats_a, "feats_a")
    b = _as_features(feats_b, "feats_b")
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b))
    a = a[rng.choice(len(a), n, replace=False)]
    b = b[rng.choice(len(b), n, replace=False)]

    x = np.concatenate([a, b])
    y = np.concatenate([np.zeros(n, dtype=int), np.ones(n, dtype=int)])
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.5, shuffle=True, stratify=y, random_state=seed
    )
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(x_train, y_train)
    err = 1.0 - clf.score(x_test, y_test)
    return float(np.clip(2.0 * (1.0 - 2.0 * err), 0.0, 2.0))
