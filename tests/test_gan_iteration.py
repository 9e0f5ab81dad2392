"""The optimised CycleGAN iteration computes what the textbook one computes.

:class:`pipeline.gan.cycle_gan.CycleGan` batches network calls and runs each critic once over real
and pooled fake images; :class:`pipeline.gan.reference.ReferenceCycleGan` makes one call per batch in
the public CycleGAN code's order. From the same weights, pools and random generators both must give
the same loss terms, the same gradients of every network and, over several steps, the same weights.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from pipeline.config import DiscriminatorParams, GanParams, GeneratorParams, LossWeights
from pipeline.gan.reference import ReferenceCycleGan, translate_one_by_one
from pipeline.gan.cycle_gan import CycleGan, Precision
from pipeline.reproducibility import derive_seed, seeded_generator
from pipeline.task.kinds import KINDS
from pipeline.task.models import build_task_model

SEED = 3
PLAIN = {"similarity": 0.0, "task": 0.0, "lipschitz": 0.0}


def pair(weights: dict[str, float], channels: int = 1, pool_size: int = 4) -> tuple[CycleGan, ReferenceCycleGan]:
    gan = GanParams(generator=GeneratorParams(8, 2, 2), discriminator=DiscriminatorParams(8, 2), batch_size=4,
                    pool_size=pool_size, weights=dataclasses.replace(LossWeights(), **weights))
    torch.manual_seed(0)
    task = build_task_model("small_cnn", channels, 10, width=8)
    fast = CycleGan(gan, channels, task, KINDS["classification"], Precision(torch.device("cpu")), seed=SEED)
    reference = ReferenceCycleGan(gan, copy.deepcopy(fast.nets), fast.task_model,
                                  pool_seeds=(derive_seed(SEED, "pool_real", 0), derive_seed(SEED, "pool_source", 0)),
                                  lipschitz_rng=seeded_generator(SEED, "lipschitz", 0))
    return fast, reference


def batches(steps: int, channels: int = 1, n: int = 4):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        yield (torch.rand(n, channels, 16, 16, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g),
               torch.rand(n, channels, 16, 16, generator=g) * 2 - 1)


def assert_same_grads(fast: CycleGan, reference: ReferenceCycleGan) -> None:
    """Equal up to float rounding, measured against each network's largest gradient: a bias right
    before instance norm has a gradient that is exactly 0 in exact arithmetic, pure rounding here."""
    for name, net in fast.nets.items():
        other = dict(getattr(reference.nets, name).named_parameters())
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        scale = max((float(g.abs().max()) for g in grads), default=0.0)
        for pname, p in net.named_parameters():
            q = other[pname]
            assert (p.grad is None) == (q.grad is None), f"{name}.{pname}"
            if p.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * scale, msg=f"grad of {name}.{pname}")


@pytest.mark.parametrize("weights, channels", [({}, 1), (PLAIN, 1), ({"identity": 0.0}, 1),
                                               ({"lipschitz": 0.0, "task": 0.0}, 1), ({}, 3)],
                         ids=["all terms", "plain CycleGAN", "no identity", "similarity only", "all terms, RGB"])
def test_one_step_same_losses_and_gradients(weights, channels):
    fast, reference = pair(weights, channels=channels)
    x, labels, y = next(batches(1, channels=channels))
    a, b = fast.train_step(x, labels, y), reference.train_step(x, labels, y)
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert_same_grads(fast, reference)


def test_several_steps_same_weights_with_a_full_pool():
    """Past the pool's fill, pooled fakes are a random mix of old and new: both draw the same."""
    fast, reference = pair({}, pool_size=6)
    for x, labels, y in batches(4):
        a, b = fast.train_step(x, labels, y), reference.train_step(x, labels, y)
        torch.testing.assert_close(a["d_total"], b["d_total"], rtol=1e-4, atol=1e-6)
    assert_same_grads(fast, reference)
    # Same networks: compared by what they compute (Adam turns the rounding noise in the exactly-zero
    # gradient of a bias before instance norm into lr-sized steps that change no output).
    probe = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(9)) * 2 - 1
    with torch.no_grad():
        for name, net in fast.nets.items():
            torch.testing.assert_close(net(probe), getattr(reference.nets, name)(probe), rtol=1e-4, atol=1e-4,
                                       msg=f"{name} after 4 steps")


def test_a_changed_iteration_is_caught():
    """The comparison is sensitive: dropping one identity term shows in the losses and gradients."""
    fast, reference = pair({})
    reference.w = dataclasses.replace(reference.w, identity=0.0)
    x, labels, y = next(batches(1))
    a, b = fast.train_step(x, labels, y), reference.train_step(x, labels, y)
    assert not torch.allclose(a["g_total"], b["g_total"])
    with pytest.raises(AssertionError):
        assert_same_grads(fast, reference)


def test_batched_translation_equals_one_by_one():
    fast, _ = pair(PLAIN, channels=3)
    G = fast.nets.G.eval()
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    with torch.inference_mode():
        batched = G(x)
    torch.testing.assert_close(batched, translate_one_by_one(G, x), rtol=1e-5, atol=1e-6)
