"""Class prototypes of the unlabelled real images: clustering in feature space seeded by the model.

Real images of one class usually sit close together in a network's feature space even where the
classifier head, trained on synthetic images, draws the class borders in the wrong places. Clustering
the real features, with one cluster per class seeded by the model's own predictions, moves the
borders to where the real images are (SHOT, Liang, Hu & Feng 2020, "Do we really need to access
the source data?", Sec. 3.2; T3A, Iwasawa & Matsuo 2021, "Test-time classifier adjustment").

With L2-normalised features ``f_i`` of the real images and the model's class probabilities ``p_ik``:

    c_k    = normalise( sum_i p_ik f_i )                 soft seeds: the model's view of class k
    l_i    = argmax_k  cos(f_i, c_k)                     assignment
    c_k    = normalise( sum_{i: l_i = k} f_i )           hard update (spherical k-means), repeated

:func:`cluster_labels` returns the final ``l`` (self-training's pseudo-labels) and ``c``.
:func:`fit_prototype_head` makes them the classifier: the head's rows become ``s * c_k`` and its
bias 0, with ``s`` chosen so that the mean prediction entropy on the real images stays what the old
head gave (the head changes which class an image gets, not how confident the model is overall; the
label-free scores compare variants at their own confidence). Then
``argmax_k h(f) = argmax_k c_k . f = argmax_k cos(f, c_k)`` (``|f|`` is common to all ``k``): the
exported model classifies a real image by its nearest prototype, with no change to the network's
shape. Classification only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


def cluster_labels(features: torch.Tensor, probs: torch.Tensor, iterations: int = 5,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels (N,), centroids (K, D))`` by the formulas of the module docstring.

    ``features`` ``(N, D)`` need not be normalised; ``probs`` ``(N, K)`` seed the ``K`` centroids.
    ``iterations`` hard updates follow the soft seeding (0: assign to the soft seeds). A class no image
    is assigned to keeps its previous centroid, so every class stays a candidate.
    """
    if features.ndim != 2 or probs.ndim != 2 or len(features) != len(probs):
        raise ValueError(f"cluster_labels: expected features (N, D) and probs (N, K), got "
                         f"{tuple(features.shape)} and {tuple(probs.shape)}")
    f = F.normalize(features.float(), dim=1)
    centroids = F.normalize(probs.float().t() @ f, dim=1)
    labels = (f @ centroids.t()).argmax(1)
    for _ in range(iterations):
        sums = F.one_hot(labels, probs.shape[1]).float().t() @ f
        filled = sums.norm(dim=1) > 0
        centroids = torch.where(filled[:, None], F.normalize(sums, dim=1), centroids)
        labels = (f @ centroids.t()).argmax(1)
    return labels, centroids


@torch.no_grad()
def features_and_probs(net: nn.Module, images: Dataset, device: torch.device | str = "cpu",
                       batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, class probabilities)`` of every image, in order, with ``net`` (``x -> (f, logits)``)
    in eval mode; every submodule gets its own mode back after (a wrapper built for the call may be
    in another mode than the model it wraps)."""
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    feats, probs = [], []
    try:
        if hasattr(images, "batch"):    # an in-memory ImageSet slices whole batches
            batches = (images.batch(list(range(s, min(s + batch_size, len(images)))))
                       for s in range(0, len(images), batch_size))
        else:
            batches = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=0)
        for x, _ in batches:
            f, logits = net(x.to(device))
            feats.append(f.flatten(1).float().cpu())
            probs.append(logits.float().softmax(1).cpu())
    finally:
        for m, training in modes:
            m.training = training
    return torch.cat(feats), torch.cat(probs)


def mean_entropy(probs: torch.Tensor) -> float:
    """``mean_i -sum_k p_ik log p_ik``."""
    return float(-(probs * probs.clamp_min(1e-12).log()).sum(1).mean())


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
