"""Supervised training on the labelled set alone: ``L = CE(h(f(x)), y)`` (the detector's own losses
for detection).

Every non-adapting variant uses it: source_only, translated, domain randomisation (the strong
``augment`` pipeline on the renders) and the target oracle.
"""

from __future__ import annotations

from torch import nn

from pipeline.methods import register
from pipeline.methods.base import Method, StepBatch, StepOutput


@register
class Supervised(Method):
    name = "supervised"

    def loss(self, net: nn.Module, batch: StepBatch, progress: float) -> StepOutput:
        out = self.ctx.kind.supervised(net, batch.x, batch.y)
        return StepOutput(out.loss, out.outputs, out.terms)
