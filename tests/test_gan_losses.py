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


def test_lipschitz_penalty_means_over_patch_map():
    # A 1x1 conv critic on an HxW map: critic value = mean_p w.x_p, gradient norm = |w| / sqrt(HW).
    torch.manual_seed(0)
    critic = nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        critic.weight.mul_(8.0 / critic.weight.norm())
    real, fake = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    penalty, norms = lipschitz_penalty(critic, real, fake)
    assert torch.allclose(norms, torch.full((2,), 8.0 / 4.0))
    assert penalty.item() == pytest.approx(1.0, rel=1e-5)


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
