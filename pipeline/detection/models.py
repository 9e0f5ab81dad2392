"""Small CPU-friendly detectors: torchvision's FCOS or RetinaNet on a backbone written here.

Images are what every network of the project takes: float ``(N, C, H, W)`` in [-1, 1], square,
``H = data.image_size``. Targets are dicts ``{"boxes": (K, 4) float32 xyxy pixels, "labels": (K,) int64}``
with labels ``0..num_classes-1`` used as they are (both heads are sigmoid classifiers, one logit per
class, so there is no background class to reserve); ``K = 0`` is allowed.

Architecture, for an image of ``S`` pixels (``S = 32`` below):

* **body**: ``n = log2(S / 4)`` stages (3 at 32 px, 4 at 64, 5 at 128), each ``conv3x3/2-BN-ReLU,
  conv3x3-BN-ReLU``, of widths ``width * (1, 2, 4, 4, ...)`` (capped at ``4 * width``). Its last two
  stages are ``C_fine`` (stride ``S/8``, an 8x8 map) and ``C_top`` (stride ``S/4``, 4x4): the grids do
  not depend on ``S`` because the objects scale with the image (about 0.2-0.6 of it), so an object
  always covers 2-5 cells of ``C_fine``.
* **FPN** (Lin et al. 2017) over ``C_fine`` and ``C_top``: 1x1 laterals, nearest top-down upsampling,
  3x3 output convs, ``2 * width`` channels.
* **RetinaNet** uses both levels: anchors of sizes ``S * (0.2, 0.29)`` on ``P_fine`` and
  ``S * (0.42, 0.6)`` on ``P_top`` (four sizes spaced geometrically over the object range), aspect
  ratios h/w 0.5, 1, 2.
* **FCOS** uses ``P_fine`` alone, its anchor point size equal to the stride ``S/8``. FCOS gives a point
  of level ``l`` the objects whose largest point-to-side distance lies in ``(4 a_l, 8 a_l)`` (``a_l``: the
  level's anchor size, ``a_l = 2 a_{l-1}``): with ``a_fine = S/8`` every object of the image falls on
  the fine level (distances < ``S``), so a coarser FCOS level would only ever see negatives. ``C_top``
  still reaches the head through the FPN's top-down path.
* **heads**: torchvision's, with two conv layers per branch instead of four and GroupNorm sized for
  the narrow channels (torchvision's FCOS head hard-codes ``GroupNorm(32, C)``); FCOS's box distances
  start at one anchor size instead of 0 (torchvision's ``relu(conv)`` with a zero bias left half of them
  without gradient: the GIoU loss stalled near 0.5 on the tests' toy set).
* **transform**: torchvision's ``GeneralizedRCNNTransform`` is replaced by :class:`_PassThrough`: no
  normalisation (the images are already in [-1, 1]) and no resizing (a same-size image would still go
  through a bilinear interpolation per image); an image of the wrong size is an error, not resized.

The build arguments are kept in ``model.sim2real_config``; :func:`detector_from_config` rebuilds the
(untrained) model for a saved state dict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections import OrderedDict
from functools import partial
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from pipeline.config import DetectorParams

Target = dict[str, torch.Tensor]

ARCHITECTURES = ("fcos", "retinanet")
OBJECT_SCALE = (0.2, 0.6)          # smallest and largest object side the anchors cover, as a fraction of S
ASPECT_RATIOS = (0.5, 1.0, 2.0)    # RetinaNet anchor height / width
TOP_GRID = 4                       # the body's last stage is a TOP_GRID x TOP_GRID map
MAX_WIDTH_FACTOR = 4               # body stage widths: width * min(2**i, MAX_WIDTH_FACTOR)
FPN_WIDTH_FACTOR = 2               # FPN and head channels: FPN_WIDTH_FACTOR * width
HEAD_CONVS = 2                     # conv layers per head branch (torchvision's default: 4)
GROUP_NORM_CHANNELS = 8            # channels per GroupNorm group in the heads
FCOS_DISTANCE_INIT = 1.0           # initial FCOS box side distances, in anchor sizes (see _fcos)


# ------------------------------------------------------------------------------------------------
# Backbone
# ------------------------------------------------------------------------------------------------


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def num_stages(image_size: int) -> int:
    """Body stages for ``S``-pixel images: ``round(log2(S / 4))``, at least 3, so that the last stage
    is about 4x4; ``S`` must be a multiple of ``2**stages`` (every stride-2 stage halves it exactly)."""
    if image_size < 8 * TOP_GRID:
        raise ValueError(f"data.image_size: a detector needs images of at least {8 * TOP_GRID} px, got {image_size}")
    stages = max(3, round(math.log2(image_size / TOP_GRID)))
    if image_size % 2 ** stages:
        raise ValueError(f"data.image_size: a detector on {image_size} px images has {stages} stride-2 stages, "
                         f"so the size must be a multiple of {2 ** stages}")
    return stages


class Body(nn.Module):
    """Conv-BN-ReLU stages, each halving the resolution; returns ``[C_fine, C_top]``, its last two maps."""

    def __init__(self, in_channels: int, width: int, stages: int):
        super().__init__()
        widths = [width * min(2 ** i, MAX_WIDTH_FACTOR) for i in range(stages)]
        blocks, previous = [], in_channels
        for w in widths:
            blocks.append(nn.Sequential(*_conv_bn_relu(previous, w, stride=2), *_conv_bn_relu(w, w)))
            previous = w
        self.stages = nn.ModuleList(blocks)
        self.level_channels = widths[-2:]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps[-2:]


class TopDownFPN(nn.Module):
    """A feature pyramid over the body's maps ``C_0`` (finest) .. ``C_L`` (top):

    ``L_L = lat_L(C_L)``, ``L_i = lat_i(C_i) + up(L_{i+1})`` (1x1 laterals, nearest upsampling), and
    ``P_i = out_i(L_i)`` (3x3) for the ``outputs`` finest levels only, so that no parameter goes unused.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, outputs: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, kernel_size=1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(outputs))
        for conv in [*self.lateral, *self.output]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        inner = self.lateral[-1](maps[-1])
        merged = [inner]
        for i in range(len(maps) - 2, -1, -1):
            inner = self.lateral[i](maps[i]) + F.interpolate(inner, size=maps[i].shape[-2:], mode="nearest")
            merged.insert(0, inner)
        return [conv(level) for conv, level in zip(self.output, merged)]


class PyramidBackbone(nn.Module):
    """Body plus FPN; returns the ``OrderedDict`` of pyramid levels torchvision's detectors expect."""

    def __init__(self, in_channels: int, width: int, image_size: int, outputs: int):
        super().__init__()
        self.body = Body(in_channels, width, num_stages(image_size))
        self.out_channels = FPN_WIDTH_FACTOR * width
        self.fpn = TopDownFPN(self.body.level_channels, self.out_channels, outputs)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict((str(i), level) for i, level in enumerate(self.fpn(self.body(x))))


class _PassThrough(GeneralizedRCNNTransform):
    """torchvision's detection transform without normalisation and resizing: it only batches the
    images (padding to ``size_divisible``, a no-op for the sizes :func:`num_stages` accepts) and
    checks their size. Inputs are already in [-1, 1]; an image of the wrong size raises."""

    def __init__(self, image_size: int, channels: int, size_divisible: int):
        super().__init__(image_size, image_size, [0.0] * channels, [1.0] * channels, size_divisible=size_divisible)
        self.image_size = image_size

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if not image.is_floating_point():
            raise TypeError(f"a detector takes float images in [-1, 1], got {image.dtype}")
        return image

    def resize(self, image: torch.Tensor, target: Target | None = None) -> tuple[torch.Tensor, Target | None]:
        if tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"this detector was built for {self.image_size}x{self.image_size} images, "
                             f"got {tuple(image.shape[-2:])}")
        return image, target


# ------------------------------------------------------------------------------------------------
# Detectors
# ------------------------------------------------------------------------------------------------


def _group_norm(channels: int) -> partial:
    return partial(nn.GroupNorm, max(1, channels // GROUP_NORM_CHANNELS))


def retinanet_anchor_sizes(image_size: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Four sizes ``S * lo * (hi / lo) ** (k / 3)``, k = 0..3, over ``OBJECT_SCALE = (lo, hi)``: two on
    the fine level, two on the top level (torchvision rounds the half-sides to whole pixels)."""
    lo, hi = OBJECT_SCALE
    sizes = [image_size * lo * (hi / lo) ** (k / 3) for k in range(4)]
    return (sizes[0], sizes[1]), (sizes[2], sizes[3])


def _fcos(params: DetectorParams, num_classes: int, image_size: int, backbone: PyramidBackbone) -> FCOS:
    channels, fine_stride = backbone.out_channels, image_size // (2 * TOP_GRID)
    head = FCOSHead(channels, 1, num_classes, num_convs=0)
    head.classification_head = FCOSClassificationHead(channels, 1, num_classes, HEAD_CONVS,
                                                      norm_layer=_group_norm(channels))
    head.regression_head = FCOSRegressionHead(channels, 1, HEAD_CONVS, norm_layer=_group_norm(channels))
    # torchvision regresses relu(conv) from a zero bias: a distance starting negative gets no gradient;
    # start every distance at one anchor size (targets are 0.5-3 of it), where all the ReLUs are live.
    nn.init.constant_(head.regression_head.bbox_reg.bias, FCOS_DISTANCE_INIT)
    anchors = AnchorGenerator(((fine_stride,),), ((1.0,),))
    return FCOS(backbone, num_classes, anchor_generator=anchors, head=head, **_detector_kwargs(params, image_size))


def _retinanet(params: DetectorParams, num_classes: int, image_size: int, backbone: PyramidBackbone) -> RetinaNet:
    anchors = AnchorGenerator(retinanet_anchor_sizes(image_size), (ASPECT_RATIOS,) * 2)
    channels = backbone.out_channels
    head = RetinaNetHead(channels, anchors.num_anchors_per_location()[0], num_classes,
                         norm_layer=_group_norm(channels))
    for branch in (head.classification_head, head.regression_head):
        branch.conv = nn.Sequential(*list(branch.conv)[:HEAD_CONVS])
    return RetinaNet(backbone, num_classes, anchor_generator=anchors, head=head,
                     **_detector_kwargs(params, image_size))


def _detector_kwargs(params: DetectorParams, image_size: int) -> dict[str, Any]:
    return {"min_size": image_size, "max_size": image_size, "image_mean": [0.0], "image_std": [1.0],
            "score_thresh": params.score_threshold, "nms_thresh": params.nms_threshold,
            "detections_per_img": params.detections_per_image}


def build_detector(params: DetectorParams, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """An untrained FCOS or RetinaNet (``params.architecture``) for ``image_size``-pixel images of
    ``in_channels`` channels and ``num_classes`` classes; nothing is downloaded (no pretrained weights)."""
    if params.architecture not in ARCHITECTURES:
        raise ValueError(f"task.detector.architecture: {params.architecture!r} is not one of {ARCHITECTURES}")
    if params.width < 1 or num_classes < 1 or in_channels < 1:
        raise ValueError(f"a detector needs width, num_classes and in_channels >= 1, got "
                         f"{params.width}, {num_classes}, {in_channels}")
    outputs = 1 if params.architecture == "fcos" else 2
    backbone = PyramidBackbone(in_channels, params.width, image_size, outputs)
    build = _fcos if params.architecture == "fcos" else _retinanet
    model = build(params, num_classes, image_size, backbone)
    model.transform = _PassThrough(image_size, in_channels, size_divisible=2 ** num_stages(image_size))
    model.sim2real_config = {"detector": dataclasses.asdict(params), "in_channels": in_channels,
                             "num_classes": num_classes, "image_size": image_size}
    return model


def detector_from_config(cfg: Mapping[str, Any]) -> nn.Module:
    """Rebuild an (untrained) detector from its ``sim2real_config``; load the weights afterwards."""
    return build_detector(DetectorParams(**cfg["detector"]), int(cfg["in_channels"]), int(cfg["num_classes"]),
                          int(cfg["image_size"]))


# ------------------------------------------------------------------------------------------------
# Losses, features, predictions
# ------------------------------------------------------------------------------------------------


def _modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(m, m.training) for m in model.modules()]


def _restore_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    for module, training in modes:
        module.training = training


@contextlib.contextmanager
def _loss_mode(model: nn.Module) -> Iterator[None]:
    """torchvision returns losses only when the detector itself is in training mode; set that flag
    alone (the submodules, BatchNorm included, keep theirs) for the duration."""
    was = model.training
    model.training = True
    try:
        yield
    finally:
        model.training = was


def detection_losses(model: nn.Module, images: torch.Tensor, targets: Sequence[Target]) -> dict[str, torch.Tensor]:
    """The detector's losses on ``images (N, C, H, W)``: FCOS ``classification`` (focal),
    ``bbox_regression`` (GIoU) and ``bbox_ctrness`` (BCE); RetinaNet ``classification`` (focal) and
    ``bbox_regression`` (L1). BatchNorm behaves as its modules' modes say (batch statistics in train
    mode); a model in eval mode still returns losses, with frozen statistics."""
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    with _loss_mode(model):
        return model(list(images), list(targets))


def _feature_module(model: nn.Module) -> nn.Module:
    return model.backbone.body.stages[-1]


def losses_and_features(model: nn.Module, images: torch.Tensor,
                        targets: Sequence[Target]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """:func:`detection_losses` plus, from the same forward pass (a forward hook), the map an image-level
    domain classifier sees: ``C_top``, the body's last stage, ``(N, feature_channels(model), 4, 4)``.

    Why that level: Domain Adaptive Faster R-CNN (Chen et al. 2018) puts its image-level classifier on
    the backbone's final conv map (VGG16 conv5, the input of the RPN). ``C_top`` is its counterpart
    here: the deepest, most semantic map, from which every pyramid level is derived (``P_top`` directly,
    ``P_fine`` through the top-down path), so a reversed domain gradient on it reaches every stage of
    the body; at 4x4 locations the domain classifier stays cheap. The tensor is part of the graph
    (not detached), so gradients from a domain loss on it flow into the backbone.
    """
    captured: list[torch.Tensor] = []
    handle = _feature_module(model).register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        losses = detection_losses(model, images, targets)
    finally:
        handle.remove()
    return losses, captured[-1]


def feature_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``C_top`` of unlabelled ``images`` (the body alone, in the model's current mode): the map
    :func:`losses_and_features` returns. The detector's transform is the identity, so the body sees the
    same tensor as in a full forward."""
    return model.backbone.body(images)[-1]


def feature_channels(model: nn.Module) -> int:
    """``D``, the channels of the maps of :func:`feature_maps`."""
    return int(model.backbone.body.level_channels[-1])


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Training mode with every BatchNorm in eval mode and no parameter requiring grad; the modules'
    modes and the parameters' ``requires_grad`` are restored on exit."""
    modes, flags = _modes(model), [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.train()
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        _restore_modes(modes)
        for p, flag in flags:
            p.requires_grad_(flag)


def frozen_detection_loss(model: nn.Module, images: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """``sum_k L_k(T(images), targets)`` of :func:`detection_losses` with T frozen: BatchNorm uses (and
    keeps) its running statistics and the graph holds no parameter, so a backward pass reaches
    ``images`` (the GAN's task loss on ``x`` and ``G(x)``) and never T's weights."""
    with _frozen(model):
        losses = detection_losses(model, images, targets)
    return sum(losses.values())


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> list[dict[str, torch.Tensor]]:
    """Detections per image (``boxes`` xyxy pixels, ``scores``, ``labels``, on the CPU), computed in eval
    mode without gradients, ``batch_size`` images at a time; the modules' modes are restored."""
    modes = _modes(model)
    device = next(model.parameters()).device
    out: list[dict[str, torch.Tensor]] = []
    try:
        model.eval()
        with torch.no_grad():
            for chunk in images.split(batch_size):
                out += [{k: v.cpu() for k, v in d.items()} for d in model(list(chunk.to(device)))]
    finally:
        _restore_modes(modes)
    return out
