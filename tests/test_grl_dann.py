"""Gradient reversal, DANN schedules and the domain-adversarial loss on a toy 2-D problem."""

import math

import pytest
import torch

from pipeline.task.dann import DomainDiscriminator, domain_adversarial_loss
from pipeline.task.grl import dann_lambda, dann_lr, grad_reverse


@pytest.mark.parametrize("lambd", [0.5, 2.0])
def test_grad_reverse_is_identity_forward_and_negates_backward(lambd):
    torch.manual_seed(0)
    x = torch.randn(4, 3, requires_grad=True)
    upstream = torch.randn(4, 3)
    y = grad_reverse(x, lambd)
    assert torch.equal(y, x)
    (grad,) = torch.autograd.grad(y, x, grad_outputs=upstream)
    assert torch.allclose(grad, -lambd * upstream)


def test_dann_lambda_schedule():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0, 10.0) == pytest.approx(2.0 / (1.0 + math.exp(-10.0)) - 1.0)
    values = [dann_lambda(p / 20) for p in range(21)]
    assert all(b > a for a, b in zip(values, values[1:]))
    assert values[-1] < 1.0


def test_dann_lr_schedule():
    assert dann_lr(0.0, 0.01) == 0.01
    assert dann_lr(1.0, 0.01, 10.0, 0.75) == pytest.approx(0.01 / 11**0.75)


def test_domain_loss_weighs_domains_equally():
    torch.manual_seed(0)
    disc = DomainDiscriminator(2, hidden=8).eval()
    f_s, f_t = torch.randn(3, 2), torch.randn(17, 2)
    loss, acc = domain_adversarial_loss(disc, f_s, f_t, 1.0)
    with torch.no_grad():
        p_s, p_t = torch.sigmoid(disc(f_s)), torch.sigmoid(disc(f_t))
    expected = 0.5 * (-torch.log(p_s).mean() - torch.log(1 - p_t).mean())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert acc == pytest.approx(0.5 * ((p_s > 0.5).float().mean() + (p_t <= 0.5).float().mean()).item())
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0


def _sample(shift, n=128):
    return torch.randn(n, 2) + shift, torch.randn(n, 2)


def _evaluate(disc, shift, translation):
    disc.eval()
    with torch.no_grad():
        f_s, f_t = _sample(shift, 1000)
        loss, acc = domain_adversarial_loss(disc, f_s + translation, f_t, 1.0)
    disc.train()
    return loss.item(), acc


def test_dann_aligns_features_on_a_toy_problem():
    # "DANN's domain loss falls as features align", read sensibly: the *domain gap* of the features
    # falls. A discriminator trained on fixed, shifted features separates the domains (low loss).
    # When a learnable feature map (a translation of the source features) is trained through the
    # gradient reversal together with the discriminator, the domain means meet, and the
    # discriminator is pushed back to chance: accuracy ~0.5 and its loss rises towards log 2.
    torch.manual_seed(0)
    shift = torch.tensor([3.0, 3.0])
    no_translation = torch.zeros(2)
    disc = DomainDiscriminator(2, hidden=32)

    # (a) discriminator against fixed features
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-2)
    for _ in range(100):
        loss, _ = domain_adversarial_loss(disc, *_sample(shift), lambd=1.0)
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
    loss_fixed, acc_fixed = _evaluate(disc, shift, no_translation)
    assert loss_fixed < 0.2
    assert acc_fixed > 0.9

    # (b) feature map and discriminator trained jointly through the GRL
    translation = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([*disc.parameters(), translation], lr=1e-2)
    for _ in range(300):
        f_s, f_t = _sample(shift)
        loss, _ = domain_adversarial_loss(disc, f_s + translation, f_t, lambd=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    translation = translation.detach()

    gap_before = shift.norm().item()
    gap_after = (shift + translation).norm().item()
    assert gap_after < 0.1 * gap_before
    loss_aligned, acc_aligned = _evaluate(disc, shift, translation)
    assert abs(acc_aligned - 0.5) < 0.15
    assert loss_aligned > 0.6 > loss_fixed
    assert loss_aligned == pytest.approx(math.log(2), abs=0.05)


@pytest.mark.parametrize("field, value, expected", [
    ("gamma", -1.0, "non-negative"),
    ("gamma", float("nan"), "finite"),
    ("alpha", -2.0, "non-negative"),          # (1 + alpha p) < 0 late in training: a complex learning rate
    ("alpha", float("inf"), "finite"),
    ("beta", -0.75, "non-negative"),
    ("beta", float("nan"), "finite"),
    ("trade_off", float("inf"), "finite"),
    ("hidden", 0, "a positive integer"),
])
def test_bad_dann_params_are_refused_naming_the_key(default_raw, field, value, expected):
    """Every numeric DANN field is checked when params.yaml is parsed, so a bad value stops the stage
    with the key instead of a complex or NaN learning rate mid-training."""
    from conftest import deep_update
    from pipeline.config import ConfigError, parse_params

    raw = deep_update(default_raw, {"variants": {"dann": {"params": {field: value}}}})
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    message = str(err.value)
    assert f"variants.dann.params.{field}: expected" in message and expected in message and "\n" not in message


def test_good_dann_params_parse_and_keep_a_real_learning_rate(default_raw):
    from conftest import deep_update
    from pipeline import methods
    from pipeline.config import parse_params

    raw = deep_update(default_raw, {"variants": {"dann": {"params": {"gamma": 0, "alpha": 0, "beta": 2.5}}}})
    params = methods.parse_params("dann", parse_params(raw).variant("dann").params, "variants.dann.params")
    assert (params.gamma, params.alpha, params.beta) == (0.0, 0.0, 2.5)
    assert isinstance(dann_lr(0.99, 1e-3, params.alpha, params.beta), float)
