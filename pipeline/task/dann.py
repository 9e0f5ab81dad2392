"""DANN: a domain discriminator trained against the task features through a gradient reversal."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.task.grl import grad_reverse


class DomainDiscriminator(nn.Module):
    """MLP ``features -> 1 logit`` (source = 1, target = 0): two Linear-BN-ReLU layers then Linear."""

    def __init__(self, in_features: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Domain logits, shape ``(N,)``."""
        return self.net(features).squeeze(-1)


def domain_adversarial_loss(
    discriminator: nn.Module,
    f_source: torch.Tensor,
    f_target: torch.Tensor,
    lambd: float,
) -> tuple[torch.Tensor, float]:
    """Domain loss and discriminator accuracy for one source and one target batch.

    ``L_d = -E_s[log D(f)] - E_t[log(1 - D(f))]``, each expectation the mean over its own batch
    (so both domains weigh the same whatever the batch sizes), halved. The features pass through
    :func:`grad_reverse`: minimising ``L_d`` trains the discriminator, while the feature extractor
    receives ``-lambda * dL_d/df`` and so learns to make the domains indistinguishable.

    Source and target go through the discriminator together (one batch), so BatchNorm layers see
    both domains. Returns ``(loss, accuracy)``; accuracy is a detached float in [0, 1], the mean
    of the two per-domain accuracies.
    """
    # One forward pass over both domains: with BatchNorm in the discriminator, separate passes
    # would normalise each domain by its own batch statistics and erase the mean shift.
    logits = discriminator(grad_reverse(torch.cat([f_source, f_target]), lambd))
    logits_s, logits_t = logits[: len(f_source)], logits[len(f_source) :]
    loss_s = F.binary_cross_entropy_with_logits(logits_s, torch.ones_like(logits_s))
    loss_t = F.binary_cross_entropy_with_logits(logits_t, torch.zeros_like(logits_t))
    loss = 0.5 * (loss_s + loss_t)
    with torch.no_grad():
        acc_s = (logits_s > 0).float().mean()
        acc_t = (logits_t <= 0).float().mean()
        accuracy = float(0.5 * (acc_s + acc_t))
    return loss, accuracy
