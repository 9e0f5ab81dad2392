"""GAN loss terms, the Lipschitz penalty and the image pool."""

import math

import pytest
import torch
from torch import nn

from pipeline.gan.losses import (adversarial_loss, cycle_loss, discriminator_loss, freeze,
                                 identity_loss, lipschitz_pairs, lipschitz_penalty,
                                 similarity_loss, task_loss)
from pipeline.gan.networks import PatchDiscriminator
from pipeline.gan.pool import ImagePool


# ---- adversarial terms ----------------------------------------------------------------------

def test_adversarial_loss_lsgan_values():
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    assert adversarial_loss(logits, True, "lsgan").item() == pytest.approx((1 + 0 + 1 + 4) / 4)
    assert adversarial_loss(logits, False, "lsgan").item() == pytest.approx((0 + 1 + 4 + 1) / 4)


def test_adversarial_loss_vanilla_values():
    logits = torch.zeros(2, 1, 3, 3)
    assert adversarial_loss(logits, True, "vanilla").item() == pytest.approx(math.log(2))
    assert adversarial_loss(logits, False, "vanilla").item() == pytest.approx(math.log(2))
    big = torch.full((1, 1, 2, 2), 3.0)
    assert adversarial_loss(big, True, "vanilla").item() == pytest.approx(math.log1p(math.exp(-3)))
    assert adversarial_loss(big, False, "vanilla").item() == pytest.approx(math.log1p(math.exp(3)))


def test_discriminator_loss_values():
    real, fake = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    assert discriminator_loss(real, fake, "lsgan").item() == 0.0
    assert discriminator_loss(fake, real, "lsgan").item() == pytest.approx(1.0)
    assert discriminator_loss(fake, fake, "vanilla").item() == pytest.approx(math.log(2))


def test_adversarial_loss_rejects_unknown_mode():
    with pytest.raises(ValueError, match="wgan"):
        adversarial_loss(torch.zeros(1), True, "wgan")


# ---- reconstruction terms -------------------------------------------------------------------

def test_cycle_and_identity_l1():
    x = torch.zeros(1, 1, 2, 2)
    y = torch.tensor([[[[1.0, -1.0], [0.0, 2.0]]]])
    assert cycle_loss(x, y).item() == pytest.approx(1.0)
    assert identity_loss(y, y).item() == 0.0
    with pytest.raises(ValueError):
        cycle_loss(x, torch.zeros(1, 3, 2, 2))


def test_similarity_zero_for_identity_and_positive_otherwise():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8)
    assert similarity_loss(x, nn.Identity()(x)).item() == 0.0
    assert similarity_loss(x, nn.Conv2d(3, 3, 1)(x)).item() > 0


def test_similarity_across_channel_counts():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 8, 8)
    assert similarity_loss(x, x.repeat(1, 3, 1, 1)).item() == pytest.approx(0.0, abs=1e-6)
    assert similarity_loss(x, torch.rand(2, 3, 8, 8)).item() > 0


# ---- task term ------------------------------------------------------------------------------

def test_task_loss_moves_generator_and_leaves_task_model_alone():
    torch.manual_seed(0)
    gen = nn.Conv2d(3, 3, 1)
    task = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))
    freeze(task)
    assert not task.training and not any(p.requires_grad for p in task.parameters())
    task_before = [p.clone() for p in task.parameters()]
    gen_before = [p.clone() for p in gen.parameters()]

    x, labels = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    loss = task_loss(task, x, gen(x), labels)
    expected = (nn.functional.cross_entropy(task(x), labels)
                + nn.functional.cross_entropy(task(gen(x)), labels))
    assert loss.item() == pytest.approx(expected.item())

    loss.backward()
    with torch.no_grad():  # one plain SGD step (torch.optim's first use costs ~1 s of imports)
        for p in gen.parameters():
            p -= 0.5 * p.grad
    assert any(not torch.equal(a, b) for a, b in zip(gen_before, gen.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(task_before, task.parameters()))
    assert all(p.grad is None for p in task.parameters())


# ---- Lipschitz penalty ----------------------------------------------------------------------

def _linear_critic(features: int, norm: float) -> nn.Module:
    critic = nn.Sequential(nn.Flatten(), nn.Linear(features, 1))
    with torch.no_grad():
        weight = critic[1].weight
        weight.mul_(norm / weight.norm())
    return critic


def test_lipschitz_penalty_zero_for_1_lipschitz_critic():
    torch.manual_seed(0)
    real, fake = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    penalty, norms = lipschitz_penalty(_linear_critic(48, 0.5), real, fake)
    assert penalty.item() == 0.0
    assert torch.allclose(norms, torch.full((4,), 0.5))


def test_lipschitz_penalty_positive_for_steep_critic():
    torch.manual_seed(0)
    real, fake = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    penalty, norms = lipschitz_penalty(_linear_critic(48, 3.0), real, fake)
    assert penalty.item() == pytest.approx(4.0, rel=1e-5)  # (3 - 1)^2
    assert torch.allclose(norms, torch.full((4,), 3.0))


def _mean_map_norms(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
    """The previous definition: the gradient norm of the MEAN of the patch map, per sample."""
    n = min(len(real), len(fake))
    a = torch.rand(n, generator=generator).view(n, *([1] * (real.dim() - 1)))
    xhat = (a * real[:n] + (1 - a) * fake[:n]).requires_grad_(True)
    (grads,) = torch.autograd.grad(critic(xhat).reshape(n, -1).mean(dim=1).sum(), xhat)
    return grads.reshape(n, -1).norm(2, dim=1)


def _conv_critic(in_channels: int, kernel: int, stride: int, norm: float) -> nn.Conv2d:
    """A linear conv critic without bias whose kernel has Frobenius norm ``norm``: every patch
    logit is ``<w, x_p>``, so every patch's input gradient is ``w`` placed at that patch."""
    critic = nn.Conv2d(in_channels, 1, kernel, stride=stride, bias=False)
    with torch.no_grad():
        critic.weight.mul_(norm / critic.weight.norm())
    return critic


class _Masked(nn.Module):
    """x -> conv(x * mask): patch p's input gradient is ``w * mask_p``, one norm per patch."""

    def __init__(self, mask: torch.Tensor, conv: nn.Conv2d):
        super().__init__()
        self.register_buffer("mask", mask)
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x * self.mask)


def test_lipschitz_penalty_is_per_patch_on_disjoint_patches():
    # 1x1 conv on a 4x4 map: P = 16 disjoint patches, each with gradient norm |w| exactly. The
    # Rademacher estimate is exact here for every draw; the old mean-map norm was |w| / sqrt(P).
    torch.manual_seed(0)
    real, fake = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    steep = _conv_critic(3, 1, 1, 3.0)
    penalty, norms = lipschitz_penalty(steep, real, fake, torch.Generator().manual_seed(0))
    assert torch.allclose(norms, torch.full((3,), 3.0))
    assert penalty.item() == pytest.approx(4.0, rel=1e-5)  # (3 - 1)^2
    old = _mean_map_norms(steep, real, fake, torch.Generator().manual_seed(0))
    assert torch.allclose(old, torch.full((3,), 0.75))  # the bug: 3 / sqrt(16)
    assert torch.allclose(norms, math.sqrt(16) * old)

    # |w| = 1.5 > 1 in every patch: the old mean-map norm (0.375) never fired, the new one does
    penalty, norms = lipschitz_penalty(_conv_critic(3, 1, 1, 1.5), real, fake)
    assert torch.allclose(norms, torch.full((3,), 1.5))
    assert penalty.item() == pytest.approx(0.25, rel=1e-5)

    penalty, norms = lipschitz_penalty(_conv_critic(3, 1, 1, 0.9), real, fake)
    assert torch.allclose(norms, torch.full((3,), 0.9)) and penalty.item() == 0.0


def test_lipschitz_norm_is_rms_of_unequal_disjoint_patch_norms():
    # 2x2 stride-2 conv on 4x4: P = 4 disjoint 2x2 patches; a mask scales each patch, so patch p's
    # gradient norm is ||w * mask_p|| = scale_p * ||w||, and the estimate is exact for every draw.
    torch.manual_seed(0)
    scales = torch.tensor([[0.2, 0.5], [0.7, 1.0]])
    mask = scales.repeat_interleave(2, 0).repeat_interleave(2, 1).view(1, 1, 4, 4)
    real, fake = torch.randn(6, 1, 4, 4), torch.randn(6, 1, 4, 4)
    for weight_norm in (1.0, 5.5):  # every patch <= 1, then every patch > 1 (smallest 1.1)
        critic = _Masked(mask, _conv_critic(1, 2, 2, weight_norm))
        rms = (weight_norm * scales).pow(2).mean().sqrt().item()
        penalty, norms = lipschitz_penalty(critic, real, fake, torch.Generator().manual_seed(3))
        assert torch.allclose(norms, torch.full((6,), rms))
        if weight_norm == 1.0:
            assert penalty.item() == 0.0
        else:
            assert penalty.item() == pytest.approx((rms - 1) ** 2, rel=1e-5) and penalty.item() > 0


def test_lipschitz_norm_unbiased_on_overlapping_patches():
    # 3x3 conv on 6x6: P = 16 overlapping patches, each of gradient norm |w| = 2. The cross terms
    # <g_p, g_q> make single draws noisy, but E[r_hat^2] = mean_p ||g_p||^2 = 4.
    torch.manual_seed(0)
    critic = _conv_critic(1, 3, 1, 2.0)
    real, fake = torch.randn(4000, 1, 6, 6), torch.randn(4000, 1, 6, 6)
    _, norms = lipschitz_penalty(critic, real, fake, torch.Generator().manual_seed(0))
    assert norms.std() > 0.05  # a real estimator: the draws differ
    assert norms.pow(2).mean().item() == pytest.approx(4.0, rel=0.03)


def test_lipschitz_norm_matches_exact_per_patch_rms_on_patch_discriminator():
    # real == fake pins xhat, so each copy of the image is one independent draw of the estimate;
    # compare with the exact RMS over P separate backward passes.
    torch.manual_seed(0)
    disc = PatchDiscriminator(1, width=16, layers=2)
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    xhat = x.clone().requires_grad_(True)
    logits = disc(xhat).flatten()
    assert logits.numel() == 36
    exact = torch.stack([torch.autograd.grad(logit, xhat, retain_graph=True)[0].norm()
                         for logit in logits])
    batch = x.repeat(64, 1, 1, 1)
    _, norms = lipschitz_penalty(disc, batch, batch, torch.Generator().manual_seed(0))
    assert norms.pow(2).mean().item() == pytest.approx(exact.pow(2).mean().item(), rel=0.05)
    old = _mean_map_norms(disc, x, x, torch.Generator().manual_seed(0))
    assert norms.mean().item() > 0.9 * math.sqrt(36) * old.item()  # old was >= sqrt(P) too small


def test_lipschitz_norm_of_single_patch_equals_previous_formula():
    # A 1x1 map (and a plain per-sample critic): bit-identical to the old definition, no extra draw.
    torch.manual_seed(0)
    disc = PatchDiscriminator(3, width=4, layers=2)
    real, fake = torch.rand(3, 3, 12, 12), torch.rand(3, 3, 12, 12)
    assert disc(real).shape == (3, 1, 1, 1)
    for critic in (disc, _linear_critic(3 * 12 * 12, 2.0)):
        new_rng, old_rng = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        _, norms = lipschitz_penalty(critic, real, fake, new_rng)
        assert torch.equal(norms, _mean_map_norms(critic, real, fake, old_rng))
        assert torch.equal(new_rng.get_state(), old_rng.get_state())


def test_lipschitz_draws_come_only_from_the_passed_generator():
    torch.manual_seed(0)
    critic = _conv_critic(1, 3, 1, 2.0)
    real, fake = torch.randn(8, 1, 6, 6), torch.randn(8, 1, 6, 6)
    global_state = torch.get_rng_state()
    first = lipschitz_penalty(critic, real, fake, torch.Generator().manual_seed(7))[1]
    second = lipschitz_penalty(critic, real, fake, torch.Generator().manual_seed(7))[1]
    other = lipschitz_penalty(critic, real, fake, torch.Generator().manual_seed(8))[1]
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_lipschitz_penalty_gradient_reaches_only_critic():
    torch.manual_seed(0)
    gen = nn.Conv2d(3, 3, 1)
    critic = _linear_critic(48, 3.0)
    real = torch.randn(5, 3, 4, 4)
    fake = gen(torch.randn(3, 3, 4, 4))  # smaller batch: trimmed to 3
    penalty, norms = lipschitz_penalty(critic, real, fake)
    assert norms.shape == (3,) and not norms.requires_grad
    penalty.backward()
    assert critic[1].weight.grad is not None and critic[1].weight.grad.abs().sum() > 0
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in gen.parameters())


def test_lipschitz_penalty_with_patch_discriminator_is_reproducible():
    torch.manual_seed(0)
    disc = PatchDiscriminator(3, width=4, layers=2)
    real, fake = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    first, _ = lipschitz_penalty(disc, real, fake, generator=torch.Generator().manual_seed(1))
    second, _ = lipschitz_penalty(disc, real, fake, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(first) and first.item() == second.item()
    first.backward()
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.weight.grad is not None for m in convs)


def test_lipschitz_pairs():
    source, translated, real = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    assert lipschitz_pairs("real_fake", source, translated, real) == (real, translated)
    assert lipschitz_pairs("source_translated", source, translated, real) == (source, translated)
    with pytest.raises(ValueError):
        lipschitz_pairs("other", source, translated, real)


# ---- image pool -----------------------------------------------------------------------------

def test_pool_size_zero_is_passthrough():
    images = torch.randn(3, 1, 4, 4)
    pool = ImagePool(0)
    assert torch.equal(pool.query(images), images)
    assert len(pool) == 0


def test_pool_fills_then_mixes():
    torch.manual_seed(0)
    pool = ImagePool(4, seed=0)
    first = torch.randn(4, 1, 2, 2)
    assert torch.equal(pool.query(first), first)
    outputs = torch.cat([pool.query(torch.randn(4, 1, 2, 2)) for _ in range(5)])
    assert outputs.shape == (20, 1, 2, 2)
    assert any(torch.equal(o, f) for o in outputs for f in first)  # old images come back
    assert len(pool) == 4


def test_pool_state_round_trip_continues_identically():
    torch.manual_seed(0)
    batches = [torch.randn(3, 1, 2, 2) for _ in range(8)]
    original = ImagePool(4, seed=0)
    for batch in batches[:4]:
        original.query(batch)
    state = original.state_dict()
    assert all(t.device.type == "cpu" for t in state["images"])

    resumed = ImagePool(4, seed=123)
    resumed.load_state_dict(state)
    state["images"][0].add_(100.0)  # the saved state must not alias the pools' buffers
    for batch in batches[4:]:
        assert torch.equal(original.query(batch), resumed.query(batch))
