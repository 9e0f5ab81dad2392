"""Loss terms of the translation GAN, as small pure functions.

Each function computes one term; the trainer calls a term only when its weight is > 0. Notation:
``G`` translates synthetic (source) images ``x`` to the real domain, ``F`` translates back, ``D`` is
a discriminator / critic and ``T`` a frozen task model.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

ADVERSARIAL_MODES = ("lsgan", "vanilla")
LIPSCHITZ_MODES = ("real_fake", "source_translated")


def adversarial_loss(logits: torch.Tensor, target_is_real: bool, mode: str) -> torch.Tensor:
    """GAN loss of a (patch) logit map against an all-real or all-fake target ``t`` (1 or 0).

    ``lsgan``:   mean((D - t)^2)
    ``vanilla``: mean(BCE(sigmoid(D), t)) = mean(softplus(D) - t * D)

    The mean runs over the patch map and the batch.
    """
    target = torch.full_like(logits, 1.0 if target_is_real else 0.0)
    if mode == "lsgan":
        return F.mse_loss(logits, target)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, target)
    raise ValueError(f"unknown adversarial mode {mode!r}; expected one of {ADVERSARIAL_MODES}")


def discriminator_loss(d_real_logits: torch.Tensor, d_fake_logits: torch.Tensor,
                       mode: str) -> torch.Tensor:
    """0.5 * (adv(D(real), real) + adv(D(fake), fake)); the caller detaches the fakes."""
    return 0.5 * (adversarial_loss(d_real_logits, True, mode)
                  + adversarial_loss(d_fake_logits, False, mode))


def _check_same_shape(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")


def cycle_loss(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Cycle consistency: mean |x - F(G(x))| (L1), with ``x_rec = F(G(x))``."""
    _check_same_shape("cycle_loss", x, x_rec)
    return F.l1_loss(x_rec, x)


def identity_loss(y: torch.Tensor, g_y: torch.Tensor) -> torch.Tensor:
    """Identity: mean |y - G(y)| (L1) for a target-domain image ``y``, with ``g_y = G(y)``."""
    _check_same_shape("identity_loss", y, g_y)
    return F.l1_loss(g_y, y)


def similarity_loss(x: torch.Tensor, g_x: torch.Tensor) -> torch.Tensor:
    """SimGAN self-regularisation on synthetic images: mean |x - G(x)| (L1); 0 when G is identity.

    When the channel counts differ (e.g. grey synthetic to RGB real), both sides are averaged over
    channels first: mean |mean_c(x) - mean_c(G(x))|. For a 1-channel ``x`` that compares ``x`` to
    the grey level of ``G(x)``, so a G that copies ``x`` into every channel scores 0 (up to float
    rounding of the channel mean) while colour is left free.
    """
    if x.shape != g_x.shape:
        if x.shape[:1] + x.shape[2:] != g_x.shape[:1] + g_x.shape[2:]:
            raise ValueError(f"similarity_loss: shapes differ beyond the channel dimension, "
                             f"{tuple(x.shape)} vs {tuple(g_x.shape)}")
        x, g_x = x.mean(dim=1, keepdim=True), g_x.mean(dim=1, keepdim=True)
    return F.l1_loss(g_x, x)


def freeze(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode with ``requires_grad=False`` on every parameter; return it.

    A later ``.train()`` on a parent module would undo the eval mode: call this again after it.
    """
    module.eval()
    module.requires_grad_(False)
    return module


def task_loss(task_model: nn.Module, x: torch.Tensor, g_x: torch.Tensor,
              labels: torch.Tensor) -> torch.Tensor:
    """Label preservation through a frozen task model T: CE(T(x), t) + CE(T(G(x)), t).

    The caller must freeze T first (:func:`freeze`: ``eval()`` and ``requires_grad_(False)``), so
    that only ``g_x`` receives gradients and T's weights and batch-norm statistics stay unchanged.
    T(x) does not depend on G and is evaluated under ``torch.no_grad``; it only adds a constant.
    Both ``x`` and ``g_x`` must be valid inputs to T.
    """
    with torch.no_grad():
        source_term = F.cross_entropy(task_model(x), labels)
    return source_term + F.cross_entropy(task_model(g_x), labels)


def lipschitz_pairs(mode: str, source: torch.Tensor, translated: torch.Tensor,
                    real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two batches that :func:`lipschitz_penalty` interpolates between.

    ``real_fake``:         (real, G(x)), the usual WGAN-LP choice;
    ``source_translated``: (x, G(x)), penalising the critic along the translation path.
    """
    if mode == "real_fake":
        return real, translated
    if mode == "source_translated":
        return source, translated
    raise ValueError(f"unknown Lipschitz mode {mode!r}; expected one of {LIPSCHITZ_MODES}")


def lipschitz_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                      generator: Optional[torch.Generator] = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One-sided Lipschitz penalty (WGAN-LP, Petzka et al. 2018), per patch of a PatchGAN critic.

    A PatchGAN critic returns ``P`` logits ``D_1 .. D_P`` per sample (``P = h * w`` of its logit
    map; ``P = 1`` for a critic with one output per sample). Each logit is a critic of its own
    patch, so the Lipschitz constraint is ``||grad_xhat D_p(xhat)||_2 <= 1`` for every ``p``. With
    ``g_p = grad_xhat D_p(xhat)`` and ``J`` the ``P x dim(x)`` Jacobian whose rows are the ``g_p``,
    what is penalised is each sample's root-mean-square per-patch norm

        r(xhat) = sqrt((1/P) * sum_p ||g_p||_2^2) = ||J||_F / sqrt(P),
        penalty = mean over the batch of max(0, r_hat(xhat) - 1)^2,
        xhat    = a * real + (1 - a) * fake,  a ~ U[0, 1] per sample,

    where ``r_hat`` is the one-backward-pass estimate of ``r`` from
    :func:`interpolate_gradient_norms` (``r_hat^2`` is unbiased for ``r^2``; exact for ``P = 1``
    and for patches with disjoint receptive fields). So ``r <= 1`` bounds the MEAN SQUARE of the
    per-patch norms, not their maximum: enforcing every patch separately would need ``P``
    backward passes (on ``PatchDiscriminator(1, 16, 2)`` at 32x32 the largest per-patch norm is
    about 1.25 ``r`` at initialisation). For ``P = 1``, ``r`` is exactly the old per-sample
    ``||grad_xhat D(xhat)||``.

    Not the gradient of the mean of the map: ``||grad mean_p D_p|| = ||sum_p g_p|| / P`` is about
    ``r / sqrt(P)`` when the ``g_p`` are (nearly) orthogonal and even smaller when they partly
    cancel, so a penalty on it almost never fires on a large map.

    ``a`` (and the projection signs) are drawn from ``generator`` (the global RNG if None). Both
    inputs are detached, so the penalty's gradient reaches only the critic. If the batch sizes
    differ, both are trimmed to the smaller one. The critic must keep samples independent (no
    batch norm).

    The same function gives the variant that interpolates between a source image and its
    translation: call it with ``real=x, fake=G(x)`` (see :func:`lipschitz_pairs`).

    Returns ``(penalty, grad_norms)``; ``grad_norms`` is the detached per-sample ``r_hat`` that the
    penalty constrains, for logging.
    """
    norms = interpolate_gradient_norms(critic, real, fake, generator, create_graph=True)
    penalty = F.relu(norms - 1).pow(2).mean()
    return penalty, norms.detach()


def interpolate_gradient_norms(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                               generator: Optional[torch.Generator] = None,
                               create_graph: bool = False) -> torch.Tensor:
    """Per-sample RMS per-patch gradient norm ``r_hat`` at ``xhat = a * real + (1 - a) * fake``.

    ``a ~ U[0, 1]`` per sample. With the notation of :func:`lipschitz_penalty`, one backward pass
    with a Rademacher vector ``v`` in ``{-1, +1}^P`` per sample gives

        r_hat = ||J^T v||_2 / sqrt(P),   J^T v = grad_xhat sum_p v_p D_p(xhat).

    Since ``E[v_p v_q] = 1 if p == q else 0``, ``E||J^T v||^2 = sum_p ||g_p||^2 = ||J||_F^2``, so
    ``r_hat^2`` is an unbiased estimate of ``r^2 = mean_p ||g_p||^2`` (Hutchinson's estimator).
    With signs rather than Gaussian entries,

        ||J^T v||^2 = sum_p ||g_p||^2 + sum_{p != q} v_p v_q <g_p, g_q>,

    so ``r_hat = r`` exactly when the patch gradients are orthogonal (e.g. disjoint receptive
    fields) and the noise comes only from overlapping patches (about 5% relative standard deviation
    per sample on ``PatchDiscriminator(1, 16, 2)`` at 32x32). For ``P = 1`` nothing is drawn and
    ``r_hat = ||grad_xhat D(xhat)||_2`` exactly, the plain per-sample norm.

    ``a`` and then ``v`` come from ``generator`` (the global RNG if None), so the result is
    reproducible and resumable from the generator's state. Both inputs are detached and trimmed
    to the smaller batch. ``create_graph=True`` keeps the graph so a penalty on the norms can be
    back-propagated into the critic (the training step); the diagnostics only read the norms.
    """
    n = min(real.shape[0], fake.shape[0])
    real, fake = real[:n].detach(), fake[:n].detach()
    _check_same_shape("lipschitz_penalty", real, fake)
    rng_device = generator.device if generator is not None else real.device
    a = torch.rand(n, generator=generator, device=rng_device).to(real.device, real.dtype)
    a = a.view(n, *([1] * (real.dim() - 1)))
    xhat = (a * real + (1 - a) * fake).requires_grad_(True)
    scores = critic(xhat).reshape(n, -1)  # (n, P) patch logits
    patches = scores.shape[1]
    if patches == 1:
        signs = torch.ones_like(scores)
    else:
        signs = torch.randint(0, 2, scores.shape, generator=generator, device=rng_device)
        signs = (2 * signs - 1).to(scores.device, scores.dtype)
    (grads,) = torch.autograd.grad(scores, xhat, grad_outputs=signs, create_graph=create_graph)
    return grads.reshape(n, -1).norm(2, dim=1) / math.sqrt(patches)
