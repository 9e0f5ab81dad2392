"""Balance diagnostics of a CycleGAN, computed each epoch on fixed, seeded image subsets.

Every number answers one question about the balance between generators and discriminators:

* ``d_real/acc_real``, ``d_real/acc_fake`` (and ``d_source/...``): how often each discriminator
  calls a real image real and a translated one fake. A sample's score is the mean of its patch
  logits, called real above 0.5 (lsgan, halfway between the targets 0 and 1) or above 0 (vanilla).
  Both near 1: the discriminator wins; both near 0.5: it is fooled or has given up.
* ``d_real/grad_norm_mean|max|frac_gt1``: the critic's input-gradient norms at the points where the
  Lipschitz penalty looks (pairs from ``lipschitz_pairs``), per sample the root-mean-square over
  its patch logits of ``||grad D_p||`` (estimated as in ``interpolate_gradient_norms``): the very
  quantity the penalty wants at most 1.
  Computed here even when the penalty is off, so runs with and without it compare.
* ``task/acc_source_val`` vs ``task/acc_translated_val``: accuracy of the frozen task model on
  source/val and on its translation; a drop means G changes the digit (``task/map50_*``, its mAP@.5,
  for detection: G moves, removes or changes objects).
* One-sided GANs (``gan.structure: one_sided``) have no F and no D_source: their ``d_source/*``
  numbers are left out and the sample grid has four rows.
* ``copy/l1_source_translated``: mean |x - G(x)| on source/val; near 0 means G copies its input.
* ``gap/fd_*`` and ``gap/pad_*``: Fréchet distance and proxy A-distance to real target images in
  the task model's feature space, for G(source/val) and (baseline) raw source/val.

What a label, a score and a feature are comes from the task kind (:mod:`pipeline.task.kinds`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.data.manifest import to_uint8
from pipeline.gan.losses import interpolate_gradient_norms, lipschitz_pairs, similarity_loss
from pipeline.io import image_grid
from pipeline.metrics.domain_gap import frechet_distance, proxy_a_distance
from pipeline.task.kinds import TaskKind

EVAL_BATCH = 256
GRID_COLUMNS = 8


def load_subset(dataset: Dataset, count: int, generator: torch.Generator, kind: TaskKind) -> tuple[torch.Tensor, Any]:
    """``count`` images (all when fewer) drawn without replacement by ``generator``: (images, labels),
    batched as the task ``kind`` collates them."""
    order = torch.randperm(len(dataset), generator=generator)[:count].tolist()
    return kind.collate([dataset[i] for i in order])


def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: int = EVAL_BATCH) -> torch.Tensor:
    return torch.cat([fn(x[i:i + size]) for i in range(0, len(x), size)])


def critic_scores(critic: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One score per sample: the mean of the discriminator's patch logits."""
    return batched(lambda b: critic(b).flatten(1).mean(dim=1), x)


def gradient_norms(critic: nn.Module, a: torch.Tensor, b: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample RMS per-patch ``||grad D_p(xhat)||`` (what the Lipschitz penalty constrains, see
    :func:`interpolate_gradient_norms`) at the points the penalty looks at, in batches; the larger
    set is trimmed to the size of the smaller one."""
    n = min(len(a), len(b))
    return torch.cat([interpolate_gradient_norms(critic, a[i:i + EVAL_BATCH], b[i:i + EVAL_BATCH], generator)
                      for i in range(0, n, EVAL_BATCH)])


def _seeded(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


class BalanceDiagnostics:
    """Holds the fixed subsets and the baseline numbers; :meth:`evaluate` measures the current nets.

    ``kind`` is the task kind of the frozen ``task_model`` (:func:`pipeline.task.kinds.task_kind`).
    ``source_val`` must be labelled; ``target`` is read without labels. Subsets are chosen once from
    ``seed``, so every epoch (and a resumed run) measures the same images.
    """

    def __init__(self, task_model: nn.Module, kind: TaskKind, source_val: Dataset, target: Dataset, mode: str,
                 interpolation: str, samples: int, seed: int, device: torch.device):
        self.task_model, self.mode, self.interpolation, self.kind = task_model, mode, interpolation, kind
        self.threshold = 0.5 if mode == "lsgan" else 0.0
        self.seed, self.device = seed, device
        source, labels = load_subset(source_val, samples, _seeded(seed), kind)
        real, _ = load_subset(target, samples, _seeded(seed + 1), kind)
        self.source, self.labels, self.real = source.to(device), kind.to_device(labels, device), real.to(device)
        with torch.no_grad():
            self.real_features = self.features(self.real)
            source_features = self.features(self.source)
            self.baseline = {
                f"task/{kind.short_score}_source_val": self.task_accuracy(self.source),
                "gap/fd_source_real": frechet_distance(source_features, self.real_features),
                "gap/pad_source_real": proxy_a_distance(source_features, self.real_features, seed=seed),
            }

    # -- measurements --------------------------------------------------------------------------

    def features(self, x: torch.Tensor) -> np.ndarray:
        return batched(lambda b: self.kind.gap_features(self.task_model, b), x).double().cpu().numpy()

    def task_accuracy(self, x: torch.Tensor) -> float:
        """The frozen task model's score on ``x`` with the labels of the source subset."""
        return self.kind.task_score(self.task_model, x, self.labels)

    def discriminator_accuracy(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        return {"acc_real": float((critic_scores(critic, real) > self.threshold).float().mean()),
                "acc_fake": float((critic_scores(critic, fake) <= self.threshold).float().mean())}

    def gradient_statistics(self, critic: nn.Module, source: torch.Tensor, translated: torch.Tensor,
                            real: torch.Tensor) -> dict[str, float]:
        a, b = lipschitz_pairs(self.interpolation, source, translated, real)
        with torch.enable_grad():
            norms = gradient_norms(critic, a, b, _seeded(self.seed + 2))
        return {"grad_norm_mean": float(norms.mean()), "grad_norm_max": float(norms.max()),
                "grad_norm_frac_gt1": float((norms > 1).float().mean())}

    def evaluate(self, G: nn.Module, F: Optional[nn.Module], D_real: nn.Module,
                 D_source: Optional[nn.Module]) -> dict[str, float]:
        """All diagnostics for the current (plain, unwrapped) networks; their train/eval mode is kept.
        ``F`` and ``D_source`` are None for a one-sided GAN (no ``d_source/*`` numbers then)."""
        modes = [(m, m.training) for m in (G, F, D_real, D_source) if m is not None]
        for m, _ in modes:
            m.eval()
        try:
            with torch.no_grad():
                translated = batched(G, self.source)
                metrics = dict(self.baseline)
                metrics[f"task/{self.kind.short_score}_translated_val"] = self.task_accuracy(translated)
                metrics["copy/l1_source_translated"] = float(similarity_loss(self.source, translated))
                translated_features = self.features(translated)
                metrics["gap/fd_translated_real"] = frechet_distance(translated_features, self.real_features)
                metrics["gap/pad_translated_real"] = proxy_a_distance(translated_features, self.real_features,
                                                                      seed=self.seed)
                sides = {"d_real": (D_real, self.real, translated, self.source)}
                if F is not None and D_source is not None:
                    sides["d_source"] = (D_source, self.source, batched(F, self.real), self.real)
                for name, (critic, real, fake, _) in sides.items():
                    metrics.update({f"{name}/{k}": v for k, v in self.discriminator_accuracy(critic, real, fake).items()})
            for name, (critic, real, fake, origin) in sides.items():
                stats = self.gradient_statistics(critic, origin, fake, real)
                metrics.update({f"{name}/{k}": v for k, v in stats.items()})
        finally:
            for m, training in modes:
                m.train(training)
        return metrics

    def sample_grid(self, G: nn.Module, F: Optional[nn.Module], columns: int = GRID_COLUMNS,
                    scale: int = 1) -> np.ndarray:
        """Rows: source | G(source) | F(G(source)) | real | F(real) | G(F(real)), as one uint8 image;
        without F (one-sided): source | G(source) | real | G(real)."""
        x, y = self.source[:columns], self.real[:columns]
        with torch.no_grad():
            gx = G(x)
            if F is None:
                rows = [x, gx, y, G(y)]
            else:
                fy = F(y)
                rows = [x, gx, F(gx), y, fy, G(fy)]
        return image_grid([to_uint8(r) for r in rows], scale=scale)
