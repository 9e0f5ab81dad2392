"""Label-free model-selection scores: how a model behaves on real images whose labels nobody has.

A user without labelled real images still has to choose a variant. These scores use only the
model's softmax outputs on the unlabelled real training images (``data/prepared/target/train``),
plus its accuracy on the labelled *synthetic* validation split. No real label is read.

All functions take an ``(N, K)`` array (numpy or torch) of softmax probabilities; entropies are in
nats (natural logarithm), with ``0 log 0 = 0``.

- :func:`mean_entropy`: average prediction entropy; low = confident (but a collapsed model is confident too).
- :func:`information_maximization`: confident *and* diverse predictions score high; collapse scores 0.
- :func:`soft_neighborhood_density`: SND, how densely the predictions cluster.
- :func:`scores_from_predictions`: all of them for one model's outputs, as stored under
  ``"label_free"`` in ``reports/train/<variant>/metrics.json``.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from scipy.special import entr, log_softmax

SND_TEMPERATURE = 0.05     # Saito et al. (2021), the value used throughout their paper
SND_MAX_SAMPLES = 1000     # the similarity matrix is N x N: subsample beyond this
LIMIT = 1000               # target images scored per model (pipeline.task.classification.label_free_scores)


def _as_probs(probs: Any, name: str = "probs") -> np.ndarray:
    if hasattr(probs, "detach"):                      # a torch tensor
        probs = probs.detach().float().cpu().numpy()
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name}: expected a (N, K) array of probabilities with N >= 1, got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name}: probabilities must be finite and non-negative")
    return arr


def _row_entropy(p: np.ndarray) -> np.ndarray:
    """``H(p_i) = -sum_k p_ik log p_ik`` per row (``0 log 0 = 0``)."""
    return entr(p).sum(axis=1)


def mean_entropy(probs: Any) -> float:
    """Mean prediction entropy ``(1/N) sum_i H(p_i)``, ``H(p) = -sum_k p_k log p_k`` (nats).

    0 when every prediction is one-hot, ``log K`` when every prediction is uniform. Lower means more
    confident. Entropy minimisation as an unsupervised criterion goes back to Grandvalet & Bengio,
    "Semi-supervised learning by entropy minimization" (NeurIPS 2004); on its own it also rewards a
    model that puts every image in one class, hence :func:`information_maximization`.
    """
    return float(_row_entropy(_as_probs(probs)).mean())


def information_maximization(probs: Any) -> float:
    """Information maximisation ``IM = H(mean_i p_i) - mean_i H(p_i)`` (nats).

    The mutual information between an image and its predicted class under the model's own
    predictive distribution: high when each prediction is confident (small second term) AND the
    predictions are spread over the classes (large first term). It lies in ``[0, log K]``:
    ``log K`` for one-hot predictions spread evenly over the ``K`` classes, 0 for uniform
    predictions and for a model that gives every image the same distribution (collapse).

    Krause, Perona & Gomes, "Discriminative clustering by regularized information maximization"
    (NeurIPS 2010); Shi & Sha, "Information-theoretical learning of discriminative clusters for
    unsupervised domain adaptation" (ICML 2012); the objective of SHOT (Liang, Hu & Feng, "Do we
    really need to access the source data?", ICML 2020).
    """
    p = _as_probs(probs)
    marginal = p.mean(axis=0, keepdims=True)
    return float(_row_entropy(marginal)[0] - _row_entropy(p).mean())


def soft_neighborhood_density(probs: Any, temperature: float = SND_TEMPERATURE,
                              max_samples: int = SND_MAX_SAMPLES, seed: int = 0) -> float:
    """Soft neighbourhood density (SND); higher is better.

    With ``P`` the probability vectors L2-normalised row-wise, ``S = P P^T`` their cosine
    similarities with the diagonal (each image with itself) removed, and
    ``A_ij = exp(S_ij / t) / sum_{l != i} exp(S_il / t)`` the row-softmax at temperature ``t``,

        ``SND = (1/N) sum_i H(A_i) = -(1/N) sum_i sum_{j != i} A_ij log A_ij``.

    High when every image has many close neighbours (predictions that form dense clusters), low
    when neighbourhoods are sparse (scattered, noisy predictions). Caveat: a fully collapsed model
    (every image the same prediction) has the largest possible SND, ``log(N - 1)``; use it together
    with a collapse check such as the largest predicted-class share.

    At most ``max_samples`` rows are used (drawn without replacement by a generator seeded with
    ``seed``): the matrix is ``N x N``. Needs ``N >= 2``.

    Saito, Kim, Teterwak, Sclaroff, Darrell & Saenko, "Tune it the right way: unsupervised
    validation of domain adaptation via soft neighborhood density" (ICCV 2021); ``t = 0.05`` as there.
    """
    p = _as_probs(probs)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(p) > max_samples:
        p = p[np.sort(np.random.default_rng(seed).choice(len(p), max_samples, replace=False))]
    if len(p) < 2:
        raise ValueError("soft_neighborhood_density needs at least 2 predictions (each needs a neighbour)")
    norms = np.linalg.norm(p, axis=1, keepdims=True)
    unit = p / np.maximum(norms, 1e-12)
    logits = unit @ unit.T / temperature
    np.fill_diagonal(logits, -np.inf)                  # an image is not its own neighbour
    neighbours = np.exp(log_softmax(logits, axis=1))   # the diagonal gets weight 0
    return float(_row_entropy(neighbours).mean())


def batch_nuclear_norm(probs: Any) -> float:
    """BNM ``= ||P||_* / N``: the nuclear norm (sum of singular values) of the ``(N, K)`` prediction
    matrix over ``N``; higher is better.

    The nuclear norm is large when the predictions are confident (rows near one-hot) *and* diverse
    (many classes in use: the matrix has high rank); a collapsed model has rank one. Cui et al.,
    "Towards discriminability and diversity: batch nuclear-norm maximization under label
    insufficient situations" (CVPR 2020); as a validator, Musgrave, Belongie & Lim (2022).
    """
    p = _as_probs(probs)
    return float(np.linalg.svd(p, compute_uv=False).sum() / len(p))


def class_ami(features: Any, predicted: Any, num_classes: int, seed: int = 0) -> float:
    """ClassAMI: the adjusted mutual information between the model's predicted classes and a k-means
    clustering (``K`` clusters) of its L2-normalised features of the same images; higher is better.

    High when the classes the model predicts are the clusters its own features form (the classifier
    cuts the feature space where the data is sparse), near 0 when the two are unrelated. Musgrave,
    Belongie & Lim (2022) (there on source and target features; here on the target images only).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score

    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    clusters = KMeans(n_clusters=min(num_classes, len(f)), n_init=3, random_state=seed).fit_predict(f)
    return float(adjusted_mutual_info_score(clusters, np.asarray(predicted).ravel()))


def class_share_max(predicted: Any, num_classes: Optional[int] = None) -> float:
    """The largest share of images predicted as one class (``1/K`` when balanced, 1 when collapsed)."""
    pred = np.asarray(predicted, dtype=int).ravel()
    if pred.size == 0:
        raise ValueError("class_share_max: no predictions")
    return float(np.bincount(pred, minlength=num_classes or 0).max() / pred.size)


def scores_from_predictions(probs: Any, predicted: Any, features: Any, source_val_acc: float, seed: int,
                            limit: int = LIMIT) -> dict[str, Any]:
    """Label-free scores of one model from its outputs on the unlabelled real images, as written under
    ``"label_free"`` in the train metrics (``target_predicted`` beside it):

    - ``source_val_acc``: as given (accuracy on the labelled synthetic validation split);
    - ``target_entropy``, ``target_im``, ``target_snd``: :func:`mean_entropy`,
      :func:`information_maximization` and :func:`soft_neighborhood_density` of ``probs`` (N, K);
    - ``target_class_share_max``: :func:`class_share_max` of ``predicted`` (a collapse indicator);
    - ``target_bnm``, ``target_class_ami``: :func:`batch_nuclear_norm` and :func:`class_ami` (with the
      penultimate ``features``, N x D);
    - ``target_predicted``: ``predicted`` as a list (the same seeded sample for every variant of a run,
      so the report can compare their predictions).
    """
    predicted = np.asarray(predicted)
    k = np.asarray(probs).shape[1]
    return {
        "source_val_acc": source_val_acc,
        "target_entropy": mean_entropy(probs),
        "target_im": information_maximization(probs),
        "target_snd": soft_neighborhood_density(probs, max_samples=limit, seed=seed),
        "target_class_share_max": class_share_max(predicted, k),
        "target_bnm": batch_nuclear_norm(probs),
        "target_class_ami": class_ami(features, predicted, k, seed),
        "target_predicted": predicted.astype(int).tolist(),
    }
