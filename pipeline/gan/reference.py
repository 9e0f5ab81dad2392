"""The textbook CycleGAN iteration, written plainly: the yardstick of :class:`pipeline.gan.cycle_gan.CycleGan`.

One training iteration in the order of the public CycleGAN code (Zhu et al. 2017,
junyanz/pytorch-CycleGAN-and-pix2pix, ``CycleGANModel.optimize_parameters``), re-written here from
that behaviour, one network call per image batch:

1. forward: ``G(x)``, ``F(G(x))``, ``F(y)``, ``G(F(y))``;
2. generators (critics frozen): ``G(y)``, ``F(x)`` for identity, ``D_real(G(x))``,
   ``D_source(F(y))``, the weighted sum of every term, one backward, one Adam step;
3. critics: for each one, ``D(real)`` and ``D(pooled fake)`` in two calls, ``0.5 * (real + fake)``
   and its own backward; then one Adam step for both.

The balancing terms of sim2real (similarity, task, Lipschitz penalty) are added in the most direct
way when their weight is > 0, so :class:`ReferenceCycleGan` with the same weights is the
straightforward version of the optimised iteration: ``tests/test_gan_iteration.py`` checks that both
compute the same losses and gradients, and ``bench/bench_gan.py`` times them side by side. With the
balancing weights at 0 it is the textbook CycleGAN iteration.

The networks are the caller's (the same classes as the trainer's); only the iteration differs.
The terms are listed here again on purpose (``duplicates`` reports the shape): an independent,
plain write-up is what makes it a yardstick.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.config import GanParams
from pipeline.gan.losses import (adversarial_loss, cycle_loss, identity_loss, lipschitz_pairs, lipschitz_penalty,
                                 similarity_loss, task_loss)
from pipeline.gan.pool import ImagePool
from pipeline.gan.cycle_gan import GENERATOR_TERMS


class ReferenceCycleGan:
    """Networks ``nets`` (with ``G``, ``F``, ``D_real``, ``D_source``), Adam optimisers and pools.

    ``pool_seeds`` and ``lipschitz_rng`` let a test draw exactly what the optimised trainer draws.
    """

    def __init__(self, gan: GanParams, nets: Any, task_model: nn.Module, pool_seeds: tuple[int, int] = (0, 1),
                 lipschitz_rng: torch.Generator | None = None):
        self.gan, self.w, self.nets, self.task_model = gan, gan.weights, nets, task_model
        self.opt_G = torch.optim.Adam([*nets.G.parameters(), *nets.F.parameters()], lr=gan.lr, betas=gan.betas)
        self.opt_D = torch.optim.Adam([*nets.D_real.parameters(), *nets.D_source.parameters()], lr=gan.lr,
                                      betas=gan.betas)
        self.pool_real, self.pool_source = ImagePool(gan.pool_size, pool_seeds[0]), ImagePool(gan.pool_size, pool_seeds[1])
        self.lipschitz_rng = lipschitz_rng

    def train_step(self, x: torch.Tensor, labels: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        n, w, mode = self.nets, self.w, self.gan.mode
        # 1. forward
        fake_y = n.G(x)
        rec_x = n.F(fake_y)
        fake_x = n.F(y)
        rec_y = n.G(fake_x)

        # 2. generators, critics frozen
        for d in (n.D_real, n.D_source):
            d.requires_grad_(False)
        self.opt_G.zero_grad()
        terms: dict[str, torch.Tensor] = {}
        if w.identity:
            terms["identity_real"] = identity_loss(y, n.G(y))
            terms["identity_source"] = identity_loss(x, n.F(x))
        if w.adversarial:
            terms["adv_g"] = adversarial_loss(n.D_real(fake_y), True, mode)
            terms["adv_f"] = adversarial_loss(n.D_source(fake_x), True, mode)
        if w.cycle:
            terms["cycle_source"] = cycle_loss(x, rec_x)
            terms["cycle_real"] = cycle_loss(y, rec_y)
        if w.similarity:
            terms["similarity"] = similarity_loss(x, fake_y)
        if w.task:
            terms["task"] = task_loss(self.task_model, x, fake_y, labels)
        g_total = sum(getattr(w, GENERATOR_TERMS[k]) * v for k, v in terms.items())
        g_total.backward()
        self.opt_G.step()

        # 3. critics, each with its own backward
        for d in (n.D_real, n.D_source):
            d.requires_grad_(True)
        self.opt_D.zero_grad()
        terms["d_real"] = self._critic(n.D_real, y, self.pool_real.query(fake_y))
        terms["d_source"] = self._critic(n.D_source, x, self.pool_source.query(fake_x))
        d_total = terms["d_real"].detach() + terms["d_source"].detach()
        if w.lipschitz:
            for key, critic, source, translated, real in (("lp_real", n.D_real, x, fake_y, y),
                                                          ("lp_source", n.D_source, y, fake_x, x)):
                a, b = lipschitz_pairs(self.gan.lipschitz_interpolation, source, translated, real)
                penalty, _ = lipschitz_penalty(critic, a, b, self.lipschitz_rng)
                (w.lipschitz * penalty).backward()
                terms[key] = penalty
                d_total = d_total + w.lipschitz * penalty.detach()
        self.opt_D.step()
        terms["g_total"], terms["d_total"] = g_total, d_total
        return {k: v.detach() for k, v in terms.items()}

    def _critic(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        loss = 0.5 * (adversarial_loss(critic(real), True, self.gan.mode)
                      + adversarial_loss(critic(fake.detach()), False, self.gan.mode))
        loss.backward()
        return loss


def translate_one_by_one(generator: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Textbook inference: one image per call under ``torch.no_grad`` (the public code's test script)."""
    with torch.no_grad():
        return torch.cat([generator(image[None]) for image in images])
