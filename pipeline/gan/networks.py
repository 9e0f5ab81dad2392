"""CycleGAN networks: the ResNet generator, the PatchGAN discriminator and weight initialisation.

Both networks use instance normalisation only (never batch norm): the discriminator doubles as the
critic of a per-sample gradient penalty, which needs every sample's output to depend on that sample
alone. Each network keeps its constructor arguments in ``self.config`` (a plain dict) so an exported
checkpoint can rebuild it with ``from_config``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
             nn.ConvTranspose3d, nn.Linear)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def init_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    """Initialise ``module`` in place as in pix2pix/CycleGAN and return it.

    Conv, transposed-conv and linear weights ~ N(0, std), their biases 0; affine normalisation
    layers get weight ~ N(1, std) and bias 0.
    """
    for m in module.modules():
        if isinstance(m, _WEIGHTED):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _NORMS):
            if getattr(m, "weight", None) is not None:
                nn.init.normal_(m.weight, 1.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    return module


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``module`` (only those requiring grad if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _check_positive(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class ResidualBlock(nn.Module):
    """Two reflection-padded 3x3 convs with instance norm, added to the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """The CycleGAN ResNet generator (Johnson et al.), output in [-1, 1].

    c7s1-``width``, ``downsamplings`` stride-2 3x3 convs doubling the channels, ``blocks`` residual
    blocks, mirrored stride-2 transposed convs, c7s1-``out_channels`` + tanh. Inputs must have
    height and width divisible by ``2 ** downsamplings``.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 16, blocks: int = 3,
                 downsamplings: int = 2) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels, 1)
        _check_positive("out_channels", out_channels, 1)
        _check_positive("width", width, 1)
        _check_positive("blocks", blocks, 0)
        _check_positive("downsamplings", downsamplings, 0)
        self.config: dict[str, Any] = dict(in_channels=in_channels, out_channels=out_channels,
                                           width=width, blocks=blocks, downsamplings=downsamplings)
        self.factor = 2 ** downsamplings

        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, width, 7),
            nn.InstanceNorm2d(width, affine=True),
            nn.ReLU(inplace=True),
        ]
        channels = width
        for _ in range(downsamplings):
            layers += [
                nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1),
                nn.InstanceNorm2d(channels * 2, affine=True),
                nn.ReLU(inplace=True),
            ]
            channels *= 2
        layers += [ResidualBlock(channels) for _ in range(blocks)]
        for _ in range(downsamplings):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 3, stride=2, padding=1,
                                   output_padding=1),
                nn.InstanceNorm2d(channels // 2, affine=True),
                nn.ReLU(inplace=True),
            ]
            channels //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(channels, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_weights(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ResnetGenerator":
        """Rebuild a generator from its ``config`` dict (weights are freshly initialised)."""
        return cls(**dict(config))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % self.factor or width % self.factor:
            raise ValueError(
                f"input size {height}x{width} is not divisible by 2**downsamplings = {self.factor}")
        return self.model(x)


def receptive_field(layers: int) -> int:
    """Receptive field, in input pixels, of one output logit of ``PatchDiscriminator(layers=...)``.

    Walking back from the output: the two stride-1 4x4 convs give 4 then 7 pixels, and each of the
    ``layers`` stride-2 4x4 convs maps ``r`` to ``2 * (r - 1) + 4``. ``layers=3`` gives the classic
    70x70 PatchGAN; ``layers=2`` gives 34.
    """
    _check_positive("layers", layers, 1)
    field = 1
    for stride in [1, 1] + [2] * layers:  # from the output back to the input
        field = (field - 1) * stride + 4
    return field


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix ``NLayerDiscriminator``) with instance norm.

    ``layers`` stride-2 4x4 convs (the first without normalisation, channels doubling from
    ``width`` up to ``8 * width``), one stride-1 4x4 conv, then a stride-1 4x4 conv to one channel.
    All convs use padding 1 and LeakyReLU(0.2). The output is an ``(N, 1, h, w)`` map of logits, one
    per overlapping patch of :func:`receptive_field` pixels. There is no batch norm, so each
    sample's output depends on that sample alone (required by the gradient penalty).
    """

    def __init__(self, in_channels: int, width: int = 16, layers: int = 2) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels, 1)
        _check_positive("width", width, 1)
        _check_positive("layers", layers, 1)
        self.config: dict[str, Any] = dict(in_channels=in_channels, width=width, layers=layers)

        modules: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = width
        for n in range(1, layers + 1):
            out = width * min(2 ** n, 8)
            stride = 2 if n < layers else 1
            modules += [
                nn.Conv2d(channels, out, 4, stride=stride, padding=1),
                nn.InstanceNorm2d(out, affine=True),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out
        modules.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*modules)
        init_weights(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "PatchDiscriminator":
        """Rebuild a discriminator from its ``config`` dict (weights are freshly initialised)."""
        return cls(**dict(config))

    @property
    def receptive_field(self) -> int:
        """Receptive field of one output logit, in input pixels."""
        return receptive_field(self.config["layers"])

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the logit map for an input of ``height`` x ``width``.

        Raises ValueError if the input is too small: the map must be at least 1x1 and the last
        instance-normalised feature map must hold more than one pixel.
        """
        h, w = height, width
        layers = self.config["layers"]
        for _ in range(layers):  # stride-2 convs: floor((n + 2 - 4) / 2) + 1
            h, w = (h - 2) // 2 + 1, (w - 2) // 2 + 1
        h, w = h - 1, w - 1  # stride-1 normalised conv; the final conv removes one more pixel
        if h < 2 or w < 2:
            raise ValueError(f"input size {height}x{width} is too small for a PatchDiscriminator "
                             f"with layers={layers}")
        return h - 1, w - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.output_size(*x.shape[-2:])
        return self.model(x)
