"""Supervised training on the labelled set alone: ``L = CE(h(f(x)), y)`` (the detector's own losses
for detection).

Every non-adapting variant uses it: source_only, translated, domain randomisation (the strong
``augment`` pipeline on the renders) and the target oracle. With a few labelled real images in every
step (``labelled_batch > 0``: ``x_r``, ``y_r``) the two labelled sets are one batch,

    L = CE(h(f([x, x_r])), [y, y_r])

the "source + target labels" baseline of every semi-supervised domain-adaptation paper (S+T in
Saito et al. 2019).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.methods.base import Method, StepBatch, StepOutput
from pipeline.methods.registry import register


@register
class Supervised(Method):
    name = "supervised"
    reads_labelled_real = True

    def loss(self, net: nn.Module, batch: StepBatch, progress: float) -> StepOutput:
        if batch.labelled_real is None:
            out = self.ctx.kind.supervised(net, batch.x, batch.y)
            return StepOutput(out.loss, out.outputs, out.terms)
        x_r, y_r = batch.labelled_real
        out = self.ctx.kind.supervised(net, torch.cat([batch.x, x_r]), torch.cat([batch.y, y_r]))
        n = len(batch.x)
        real = F.cross_entropy(out.outputs[n:].detach(), y_r)     # logged only: the real rows' share of the loss
        return StepOutput(out.loss, out.outputs[:n], {**out.terms, "labelled_real": real})
