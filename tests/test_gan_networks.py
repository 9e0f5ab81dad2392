"""Shapes, configuration round trip and initialisation of the CycleGAN networks."""

import pytest
import torch
from torch import nn

from pipeline.gan.networks import (PatchDiscriminator, ResnetGenerator, count_parameters,
                                   init_weights, receptive_field)


@pytest.mark.parametrize("channels", [(1, 1), (3, 3), (1, 3)])
@pytest.mark.parametrize("size", [16, 32, 64])
@pytest.mark.parametrize("downsamplings", [1, 2])
def test_generator_output_shape(channels, size, downsamplings):
    torch.manual_seed(0)
    c_in, c_out = channels
    net = ResnetGenerator(c_in, c_out, width=4, blocks=1, downsamplings=downsamplings)
    y = net(torch.randn(2, c_in, size, size))
    assert y.shape == (2, c_out, size, size)
    assert y.abs().max() <= 1.0


def test_generator_non_square_input():
    torch.manual_seed(0)
    net = ResnetGenerator(3, 3, width=4, blocks=1)
    assert net(torch.randn(1, 3, 16, 32)).shape == (1, 3, 16, 32)


def test_generator_rejects_indivisible_size():
    net = ResnetGenerator(3, 3, width=4, blocks=1, downsamplings=2)
    with pytest.raises(ValueError, match="30x30"):
        net(torch.randn(1, 3, 30, 30))


def test_from_config_round_trip():
    torch.manual_seed(0)
    net = ResnetGenerator(1, 3, width=4, blocks=2, downsamplings=1)
    assert isinstance(net.config, dict)
    rebuilt = ResnetGenerator.from_config(dict(net.config))
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(net(x), rebuilt(x))

    disc = PatchDiscriminator(3, width=4, layers=3)
    rebuilt_disc = PatchDiscriminator.from_config(disc.config)
    rebuilt_disc.load_state_dict(disc.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(disc(x), rebuilt_disc(x))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size, layers", [(16, 2), (32, 2), (32, 3), (64, 2), (64, 3)])
def test_discriminator_output_shape(channels, size, layers):
    torch.manual_seed(0)
    disc = PatchDiscriminator(channels, width=4, layers=layers)
    out = disc(torch.randn(2, channels, size, size))
    assert out.shape[:2] == (2, 1)
    assert out.shape[2:] == disc.output_size(size, size)
    assert min(out.shape[2:]) >= 1


def test_discriminator_rejects_too_small_input():
    disc = PatchDiscriminator(3, width=4, layers=3)
    with pytest.raises(ValueError, match="too small"):
        disc(torch.randn(1, 3, 16, 16))


def test_discriminator_has_no_batchnorm():
    disc = PatchDiscriminator(3, width=4, layers=3)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in disc.modules())
    assert any(isinstance(m, nn.InstanceNorm2d) for m in disc.modules())


def test_receptive_field():
    assert receptive_field(3) == 70
    assert receptive_field(2) == 34
    assert receptive_field(1) == 16
    assert PatchDiscriminator(3, width=4, layers=3).receptive_field == 70


def test_init_weights_statistics():
    torch.manual_seed(0)
    net = ResnetGenerator(3, 3, width=16, blocks=2)
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert abs(weights.std().item() - 0.02) < 0.002
    assert abs(weights.mean().item()) < 0.002
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs)
    norms = [m for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]
    scales = torch.cat([m.weight.flatten() for m in norms])
    assert abs(scales.mean().item() - 1.0) < 0.01
    assert all(torch.count_nonzero(m.bias) == 0 for m in norms)

    linear = init_weights(nn.Linear(200, 200), std=0.1)
    assert abs(linear.weight.std().item() - 0.1) < 0.01


def test_count_parameters():
    layer = nn.Linear(3, 2)
    assert count_parameters(layer) == 8
    layer.bias.requires_grad_(False)
    assert count_parameters(layer, trainable_only=True) == 6
