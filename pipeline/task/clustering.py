"""Clustering the unlabelled real images in feature space, seeded by the model's predictions.

Real images of one class usually sit close together in a network's feature space even where the
classifier head, trained on synthetic images, draws the class borders in the wrong places (SHOT,
Liang, Hu & Feng 2020, "Do we really need to access the source data?", Sec. 3.2). With
L2-normalised features ``f_i`` of the real images and the model's class probabilities ``p_ik``:

    q_ik   = normalise_k( p_ik / mean_j p_jk )           distribution alignment to a uniform class prior
                                                        (AdaMatch's, with the set's own mean)
    c_k    = normalise( sum_i q_ik f_i )                 soft seeds: the model's view of class k
    l_i    = argmax_k  cos(f_i, c_k)                     assignment
    c_k    = normalise( sum_{i: l_i = k} f_i )           hard update (spherical k-means), repeated

Self-training teaches ``l`` as pseudo-labels; :mod:`pipeline.task.prototypes` makes ``c`` the
classifier. Both seed by the same rule (aligned, unless self-training's ``alignment`` is off), so a
model that favours a few classes on the real images gives every class a seed all the same. This module imports nothing from the project, so the methods that use it keep a small
import closure (and with it every stage's DVC code deps).
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


def align_distribution(probs: torch.Tensor, running_mean: torch.Tensor) -> torch.Tensor:
    """``normalise(p * prior / running_mean)`` with a uniform prior (AdaMatch's distribution alignment);
    ``running_mean`` is the mean prediction it corrects for (``(K,)``)."""
    prior = torch.full_like(running_mean, 1.0 / len(running_mean))
    aligned = probs * (prior / running_mean.clamp_min(1e-6))
    return aligned / aligned.sum(dim=1, keepdim=True)


def cluster_labels(features: torch.Tensor, probs: torch.Tensor, iterations: int = 5, align: bool = True,
                   init: Optional[torch.Tensor] = None,
                   anchors: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels (N,), centroids (K, D))`` by the formulas of the module docstring.

    ``features`` ``(N, D)`` need not be normalised; ``probs`` ``(N, K)`` seed the ``K`` centroids, aligned
    to a uniform class prior first unless ``align`` is False. ``init`` ``(K, D)``, when given, are the
    seeds instead (e.g. the labelled renders' class means, as CAN seeds its target clusters).
    ``anchors`` ``(features (M, D), classes (M,))``: labelled images of the clustered domain (seeded
    and constrained k-means, Basu et al. 2002): a class they hold is seeded by their normalised mean
    (over ``init``), and each stays assigned to its own class in every update:

        c_k = normalise( sum_{i: l_i = k} f_i + sum_{j: y_j = k} a_j )

    ``iterations`` hard updates follow the seeding (0: assign to the seeds). A class no image is
    assigned to keeps its previous centroid, so every class stays a candidate.
    """
    if features.ndim != 2 or probs.ndim != 2 or len(features) != len(probs):
        raise ValueError(f"cluster_labels: expected features (N, D) and probs (N, K), got "
                         f"{tuple(features.shape)} and {tuple(probs.shape)}")
    f = F.normalize(features.float(), dim=1)
    k = probs.shape[1]
    if init is not None:
        centroids = F.normalize(init.float(), dim=1)
    else:
        seeds = align_distribution(probs.float(), probs.float().mean(0)) if align else probs.float()
        centroids = F.normalize(seeds.t() @ f, dim=1)
    anchor_sums = torch.zeros_like(centroids)
    if anchors is not None:
        a, y = F.normalize(anchors[0].float(), dim=1), anchors[1].long()
        anchor_sums = F.one_hot(y, k).float().t() @ a
        held = anchor_sums.norm(dim=1) > 0
        centroids = torch.where(held[:, None], F.normalize(anchor_sums, dim=1), centroids)
    labels = (f @ centroids.t()).argmax(1)
    for _ in range(iterations):
        sums = F.one_hot(labels, k).float().t() @ f + anchor_sums
        filled = sums.norm(dim=1) > 0
        centroids = torch.where(filled[:, None], F.normalize(sums, dim=1), centroids)
        labels = (f @ centroids.t()).argmax(1)
    return labels, centroids


def ordered_batches(images: Dataset, batch_size: int = 256) -> Iterator[torch.Tensor]:
    """The images of ``images`` in order, as batches of at most ``batch_size`` (an in-memory ImageSet
    slices whole batches at once; any other dataset goes through a DataLoader); labels are dropped."""
    if hasattr(images, "batch"):
        for start in range(0, len(images), batch_size):
            yield images.batch(list(range(start, min(start + batch_size, len(images)))))[0]
    else:
        for x, _ in DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=0):
            yield x


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
        for x in ordered_batches(images, batch_size):
            f, logits = net(x.to(device))
            feats.append(f.flatten(1).float().cpu())
            probs.append(logits.float().softmax(1).cpu())
    finally:
        for m, training in modes:
            m.training = training
    return torch.cat(feats), torch.cat(probs)
