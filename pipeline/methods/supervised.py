"""Supervised training on the labelled set alone: ``L = CE(h(f(x)), y)``.

Every non-adapting variant uses it: source_only, translated, domain randomisation (the strong
``augment`` pipeline on the renders) and the target oracle.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from pipeline.methods import register
from pipeline.methods.base import Method, StepBatch, StepOutput


@register
class Supervised(Method):
    name = "supervised"

    def loss(self, net: nn.Module, batch: StepBatch, progress: float) -> StepOutput:
        _, logits = net(batch.x)
        ce = F.cross_entropy(logits, batch.y)
        return StepOutput(ce, logits, {"task": ce})
