"""The classifier as class prototypes of the unlabelled real images (T3A, Iwasawa & Matsuo 2021,
"Test-time classifier adjustment"; the clusters of :mod:`pipeline.task.clustering`).

:func:`fit_prototype_head` makes the cluster centroids ``c_k`` the classifier: the head's rows become
``s * c_k`` and its bias 0, with ``s`` chosen so that the mean prediction entropy on the real images
stays what the old head gave (the head changes which class an image gets, not how confident the
model is overall; the label-free scores compare variants at their own confidence). Then
``argmax_k h(f) = argmax_k c_k . f = argmax_k cos(f, c_k)`` (``|f|`` is common to all ``k``): the
exported model classifies a real image by its nearest prototype, with no change to the network's
shape. Classification only.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.metrics.label_free import mean_entropy
from pipeline.task.clustering import cluster_labels, features_and_probs


def matching_scale(logits: torch.Tensor, entropy: float, steps: int = 60) -> float:
    """The ``s > 0`` with ``mean_entropy(softmax(s * logits)) = entropy``, by bisection on ``log s``
    (the entropy of ``softmax(s z)`` falls as ``s`` grows); clipped to ``[1e-3, 1e4]``."""
    lo, hi = -3.0, 4.0      # log10 s
    for _ in range(steps):
        mid = (lo + hi) / 2
        if mean_entropy((10 ** mid * logits).softmax(1)) > entropy:
            lo = mid
        else:
            hi = mid
    return 10 ** ((lo + hi) / 2)


@torch.no_grad()
def fit_prototype_head(net: nn.Module, head: nn.Linear, images: Dataset, device: torch.device | str = "cpu",
                       iterations: int = 5) -> dict[str, float]:
    """Make ``head`` (the last layer of ``net``, ``x -> (features, logits)``) the prototypes of
    ``images`` (module docstring), in place.

    Returns what changed: ``changed`` (share of the images whose predicted class moved) and
    ``cluster_share_min`` / ``cluster_share_max`` (the smallest and largest cluster's share).
    """
    features, probs = features_and_probs(net, images, device)
    labels, centroids = cluster_labels(features, probs, iterations)
    scale = matching_scale(features @ centroids.t(), mean_entropy(probs))
    head.weight.copy_((scale * centroids).to(head.weight))
    if head.bias is not None:
        head.bias.zero_()
    shares = torch.bincount(labels, minlength=probs.shape[1]).float() / len(labels)
    return {"changed": float((labels != probs.argmax(1)).float().mean()),
            "cluster_share_min": float(shares.min()), "cluster_share_max": float(shares.max())}
