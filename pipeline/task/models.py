"""Task classifiers: a small CPU-friendly CNN and any timm architecture, behind one interface.

Every model returned by :func:`build_task_model` works with :func:`extract_features`,
:func:`classify_features` and :func:`feature_dim`, so DANN and the GAN's task loss can split a
model into feature extractor and classifier head without caring which kind it is. The build
arguments are kept in ``model.sim2real_config`` so a saved state dict can be rebuilt with
:func:`model_from_config`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

SMALL_CNN = "small_cnn"


def unwrap(model: nn.Module) -> nn.Module:
    """The network itself: DistributedDataParallel holds it as ``.module``; any other model is returned as is."""
    return model.module if hasattr(model, "module") else model


def _conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """Three conv blocks (width, 2*width, 4*width), global average pooling, dropout, linear head.

    Sized for 32x32 inputs on CPU; any input of at least 16x16 works thanks to the adaptive pool.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.3):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_block(in_channels, width),
            nn.MaxPool2d(2),
            *_conv_block(width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.num_features = 4 * width
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features, shape ``(N, num_features)``."""
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits from pooled features, shape ``(N, num_classes)``."""
        return self.head(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_task_model(name: str, in_channels: int, num_classes: int, width: int = 32) -> nn.Module:
    """Build ``small_cnn`` or any timm architecture (always randomly initialised, never downloaded).

    ``width`` only applies to ``small_cnn``. Raises :class:`ValueError` naming ``task.model`` when
    ``name`` is neither ``small_cnn`` nor a timm model.
    """
    if name == SMALL_CNN:
        model: nn.Module = SmallCNN(in_channels, num_classes, width=width)
    else:
        import timm  # only here: importing it costs every stage ~2 s

        if not timm.is_model(name):
            raise ValueError(
                f"task.model: unknown model {name!r}; use {SMALL_CNN!r} or a timm architecture "
                "name (see timm.list_models())"
            )
        model = timm.create_model(
            name, pretrained=False, in_chans=in_channels, num_classes=num_classes
        )
    model.sim2real_config = {
        "name": name,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "width": width,
    }
    return model


def model_from_config(cfg: Mapping[str, Any]) -> nn.Module:
    """Rebuild an (untrained) model from a ``sim2real_config`` dict; load the weights afterwards."""
    return build_task_model(
        cfg["name"], int(cfg["in_channels"]), int(cfg["num_classes"]), int(cfg.get("width", 32))
    )


def extract_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features ``(N, D)``: the input of the classifier layer."""
    if isinstance(model, SmallCNN):
        return model.forward_features(x)
    return model.forward_head(model.forward_features(x), pre_logits=True)


def intermediate_features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The model's feature maps from shallow to deep (what a perceptual loss compares):
    ``small_cnn``: the output of each conv block (after its ReLU); a timm model: its
    ``forward_intermediates`` (its last map when it has none)."""
    if isinstance(model, SmallCNN):
        maps, h = [], x
        for layer in model.features:
            h = layer(h)
            if isinstance(layer, nn.ReLU):
                maps.append(h)
        return maps
    if hasattr(model, "forward_intermediates"):
        return list(model.forward_intermediates(x, intermediates_only=True))
    return [model.forward_features(x)]


def classify_features(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Logits from features produced by :func:`extract_features`."""
    if isinstance(model, SmallCNN):
        return model.forward_head(features)
    return model.get_classifier()(features)


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The linear layer that maps :func:`extract_features` to the logits (``target_head`` replaces it)."""
    head = model.head if isinstance(model, SmallCNN) else model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"target_head: the classifier of {type(model).__name__} is a "
                         f"{type(head).__name__}, not one linear layer; use target_head: false")
    return head


def feature_dim(model: nn.Module) -> int:
    """Size ``D`` of the features returned by :func:`extract_features`."""
    return int(model.num_features)
