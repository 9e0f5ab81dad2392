"""Seeded, resumable batches: the order of every batch is a function of (seed, name, epoch, step)."""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from pipeline.reproducibility import seeded_generator


class DomainSampler:
    """Batches of one split in an order fixed by ``(seed, name, epoch)``.

    Epoch ``e`` walks through fresh seeded permutations of the split (as many as its
    ``steps * batch_size`` draws need), so the batch of any ``(epoch, step)`` is known without state
    and a resumed run reads exactly the images an uninterrupted one would. Under torchrun every
    rank takes its share ``[rank::world]`` of each global batch.
    """

    def __init__(self, dataset: Dataset, name: str, batch_size: int, steps: int, seed: int,
                 rank: int = 0, world: int = 1, collate: Optional[Callable[[list], tuple]] = None):
        self.dataset, self.name, self.batch_size, self.steps = dataset, name, batch_size, steps
        self.seed, self.rank, self.world = seed, rank, world
        self.collate = collate or stack_items

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """``(steps, batch_size // world)`` dataset indices for this rank in ``epoch``."""
        need, n = self.steps * self.batch_size, len(self.dataset)
        perms = [torch.randperm(n, generator=seeded_generator(self.seed, self.name, epoch, k))
                 for k in range(math.ceil(need / n))]
        return torch.cat(perms)[:need].view(self.steps, self.batch_size)[:, self.rank::self.world]

    def load(self, indices: torch.Tensor) -> tuple:
        """The items at ``indices``, collated (default: stacked images and a tensor of labels). A
        dataset with its own ``batch(indices)`` (an in-memory :class:`~pipeline.data.manifest.ImageSet`)
        is asked for the whole batch at once when no other collate was given."""
        if self.collate is stack_items and hasattr(self.dataset, "batch"):
            return self.dataset.batch(indices.tolist())
        return self.collate([self.dataset[i] for i in indices.tolist()])


def stack_items(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(image, label), ...] -> (images (N, C, H, W), labels (N,))``."""
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])


def subsample(dataset: Dataset, limit: int, seed: int) -> Dataset:
    """At most ``limit`` items, drawn without replacement by a generator seeded with ``seed`` (the
    dataset itself when it has no more)."""
    if len(dataset) <= limit:
        return dataset
    index = np.sort(np.random.default_rng(seed).choice(len(dataset), limit, replace=False))
    return Subset(dataset, index.tolist())
