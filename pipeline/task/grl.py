"""Gradient reversal layer and the DANN schedules (Ganin & Lempitsky, 2015)."""

from __future__ import annotations

import math

import torch


class GradientReverse(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``-lambda`` in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = float(lambd)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return -ctx.lambd * grad_output, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """``y = x`` forward, ``dL/dx = -lambd * dL/dy`` backward."""
    return GradientReverse.apply(x, lambd)


def dann_lambda(p: float, gamma: float = 10.0) -> float:
    """Adaptation weight ramp ``lambda(p) = 2 / (1 + exp(-gamma * p)) - 1``.

    ``p`` in [0, 1] is the training progress (current iteration / total iterations); lambda is 0
    at p = 0 and tends to 1, which keeps the noisy early discriminator from disturbing the features.
    """
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


def dann_lr(p: float, lr0: float, alpha: float = 10.0, beta: float = 0.75) -> float:
    """Annealed learning rate ``lr(p) = lr0 / (1 + alpha * p) ** beta`` for progress ``p`` in [0, 1]."""
    return lr0 / (1.0 + alpha * p) ** beta
