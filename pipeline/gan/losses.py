"""Loss terms of the translation GAN, as small pure functions.

Each function computes one term; the trainer calls a term only when its weight is > 0. Notation:
``G`` translates synthetic (source) images ``x`` to the real domain, ``F`` translates back, ``D`` is
a discriminator / critic and ``T`` a frozen task model.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

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


def constancy_loss(encoder: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   g_x: torch.Tensor) -> torch.Tensor:
    """DTN's f-constancy (Taigman et al. 2017): mean over the batch and the D feature dimensions of
    (f(x) - f(G(x)))^2, i.e. (1 / (N D)) * sum_i ||f(x_i) - f(G(x_i))||_2^2, with ``g_x = G(x)``.

    ``f`` (``encoder``) is a fixed network returning one feature vector per image (here the frozen
    source-only task model's penultimate features): the translated image must mean the same to it,
    label-free. f(x) does not depend on G and is computed under ``torch.no_grad``; the caller
    freezes f (:func:`freeze`), so only ``g_x`` receives gradients. (DTN's other term, L_TID =
    d(y, G(y)) on real images, is :func:`identity_loss`.)
    """
    with torch.no_grad():
        f_x = encoder(x)
    f_gx = encoder(g_x)
    _check_same_shape("constancy_loss", f_x, f_gx)
    return F.mse_loss(f_gx, f_x)


def perceptual_loss(layers: Callable[[torch.Tensor], Sequence[torch.Tensor]], x: torch.Tensor,
                    g_x: torch.Tensor) -> torch.Tensor:
    """Perceptual similarity (Johnson et al. 2016's feature reconstruction loss) between x and G(x):

        sum_j (1 / (C_j H_j W_j)) * ||phi_j(x) - phi_j(G(x))||_2^2,   averaged over the batch,

    where ``phi_j`` are the maps that ``layers`` returns (shallow to deep) of a fixed network, here
    the frozen task model (no pretrained weights can be downloaded). It asks G to keep what that
    network sees (edges, strokes, parts) rather than every pixel: a softer cousin of
    :func:`similarity_loss`, beside it or instead of it. phi(x) is computed under ``torch.no_grad``;
    only ``g_x`` receives gradients once the network is frozen.
    """
    with torch.no_grad():
        phi_x = list(layers(x))
    phi_gx = list(layers(g_x))
    if len(phi_x) != len(phi_gx) or not phi_x:
        raise ValueError(f"perceptual_loss: expected the same non-empty list of maps for x and G(x), "
                         f"got {len(phi_x)} and {len(phi_gx)}")
    total = g_x.new_zeros(())
    for a, b in zip(phi_x, phi_gx):
        _check_same_shape("perceptual_loss", a, b)
        total = total + F.mse_loss(b, a)
    return total


def _standardised(d: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(d - mean(d)) / (std(d) + eps) over all entries (population std)."""
    return (d - d.mean()) / (d.std(unbiased=False) + eps) if d.numel() > 1 else torch.zeros_like(d)


def pairwise_l1(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between every pair i < j of the batch: a vector of N (N - 1) / 2."""
    n = x.shape[0]
    flat = x.reshape(n, -1)
    i, j = torch.triu_indices(n, n, offset=1, device=x.device)
    return (flat[i] - flat[j]).abs().mean(dim=1)


def distance_loss(x: torch.Tensor, g_x: torch.Tensor) -> torch.Tensor:
    """DistanceGAN (Benaim & Wolf 2017): G keeps the pairwise distances of the source batch,

        mean_{i<j} | (d(x_i, x_j) - mu_x) / sigma_x - (d(G(x_i), G(x_j)) - mu_G) / sigma_G |,

    with ``d`` the mean absolute pixel difference and mu, sigma the mean and (population) standard
    deviation of each side's N (N - 1) / 2 distances in this batch. The paper estimates mu and sigma
    once per domain on the training sets; batch statistics need no pass over the data and make the
    term scale-free: G may change the contrast, not which images are alike. A one-sided constraint:
    no F and no cycle needed. Needs a batch of at least 3 (2 images give one pair: the term is 0).
    """
    _check_same_shape("distance_loss", x[:, :1], g_x[:, :1])
    return (_standardised(pairwise_l1(x)) - _standardised(pairwise_l1(g_x))).abs().mean()


def self_distance_loss(x: torch.Tensor, g_x: torch.Tensor) -> torch.Tensor:
    """DistanceGAN's self-distance: the distance between the left and the right half of each image,

        mean_i | (d(L(x_i), R(x_i)) - mu_x) / sigma_x - (d(L(G(x_i)), R(G(x_i))) - mu_G) / sigma_G |,

    ``d`` the mean absolute difference, ``L`` / ``R`` the left / right ``floor(W / 2)`` columns, mu
    and sigma over the batch of each side. It works from one image per sample (no pairs).
    """
    _check_same_shape("self_distance_loss", x[:, :1], g_x[:, :1])

    def halves(t: torch.Tensor) -> torch.Tensor:
        half = t.shape[-1] // 2
        return (t[..., :half] - t[..., t.shape[-1] - half:]).abs().flatten(1).mean(dim=1)
    return (_standardised(halves(x)) - _standardised(halves(g_x))).abs().mean()


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
