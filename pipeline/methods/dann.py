"""DANN (Ganin & Lempitsky 2015; Ganin et al. JMLR 2016): domain-adversarial training through a
gradient reversal layer.

    L = CE(h(f(x_s)), y_s) + trade_off * L_d(D(GRL_lambda(f(x_s))), D(GRL_lambda(f(x_t))))

with ``lambda_p = 2 / (1 + exp(-gamma p)) - 1`` and, when ``annealed_lr``, the paper's
``lr_p = lr0 / (1 + alpha p) ** beta`` (progress ``p`` in [0, 1)). See :mod:`pipeline.task.dann` for
``L_d`` and the discriminator. Where we differ from the paper, and why:

* the real batch is augmented like the labelled one (the same ``augment`` pipeline), so the
  discriminator cannot tell the domains apart by augmentation artefacts alone;
* source and target go through the network as one batch, so BatchNorm sees both domains (as in
  TLlib's implementation);
* detection: the discriminator classifies every location of the backbone map (the image-level
  component of Domain Adaptive Faster R-CNN, Chen et al. 2018); the target batch passes through the
  backbone only (it has no boxes); the loss is the detector's own plus the domain term;
* Adam instead of SGD with momentum (``task.optimizer``), as for every other variant; the annealed
  rule then starts from Adam's ``lr0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from torch import nn

from pipeline.methods.base import Method, MethodContext, StepBatch, StepOutput, check_fields
from pipeline.methods.registry import register
from pipeline.task.dann import DomainDiscriminator, domain_adversarial_loss
from pipeline.task.grl import dann_lambda, dann_lr


@dataclass(frozen=True)
class DannParams:
    gamma: float = 10.0        # GRL weight ramp
    alpha: float = 10.0        # annealed learning rate
    beta: float = 0.75
    annealed_lr: bool = True   # false: the task's schedule (task.schedule)
    trade_off: float = 1.0     # weight of the domain loss
    hidden: int = 256          # discriminator width

    def __post_init__(self) -> None:
        """Refuse values that break the schedules: a negative ``gamma`` reverses the ramp (and overflows
        ``exp``), ``alpha < 0`` or ``beta < 0`` make the annealed rate grow (``alpha < -1`` even makes it
        complex); NaN and infinity fail every check."""
        check_fields((name, ok, f"{expected}, got {getattr(self, name)!r}") for name, ok, expected in (
            ("gamma", _finite(self.gamma) and self.gamma >= 0, "a finite non-negative number"),
            ("alpha", _finite(self.alpha) and self.alpha >= 0, "a finite non-negative number"),
            ("beta", _finite(self.beta) and self.beta >= 0, "a finite non-negative number"),
            ("trade_off", _finite(self.trade_off) and self.trade_off >= 0, "a finite non-negative number"),
            ("hidden", isinstance(self.hidden, int) and self.hidden > 0, "a positive integer")))


def _finite(value: float) -> bool:
    """A real number that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and math.isfinite(value)


@register
class Dann(Method):
    name = "dann"
    Params = DannParams

    def __init__(self, params: DannParams, ctx: MethodContext):
        super().__init__(params, ctx)
        self.discriminator = DomainDiscriminator(ctx.feature_dim, params.hidden).to(ctx.device)
        self.trained_discriminator = ctx.wrap(self.discriminator)

    @classmethod
    def target_views_of(cls, params: DannParams) -> dict[str, Optional[str]]:
        return {"target": None}

    def modules(self) -> dict[str, nn.Module]:
        return {"discriminator": self.discriminator}

    def loss(self, net: nn.Module, batch: StepBatch, progress: float) -> StepOutput:
        out = self.ctx.kind.supervised(net, batch.x, batch.y, batch.target["target"])
        lambd = dann_lambda(progress, self.params.gamma)
        self.trained_discriminator.train()
        domain, accuracy = domain_adversarial_loss(self.trained_discriminator, out.source_features,
                                                   out.target_features, lambd)
        return StepOutput(out.loss + self.params.trade_off * domain, out.outputs, {**out.terms, "domain": domain},
                          {"lambda": lambd, "domain_acc": accuracy})

    def learning_rate(self, lr0: float, progress: float) -> Optional[float]:
        if not self.params.annealed_lr:
            return None
        return dann_lr(progress, lr0, self.params.alpha, self.params.beta)
