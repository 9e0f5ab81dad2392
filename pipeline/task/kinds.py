"""Task kinds: what the downstream model does (``task.kind``: classification or detection).

The training loop (:mod:`pipeline.task.train`), the methods (:mod:`pipeline.methods`), the GAN's task
loss and the evaluation ask the kind for everything that depends on what a label is, so that neither
a method nor the loop forks per kind (classification | detection):

* the model: a small CNN or timm classifier | a torchvision FCOS or RetinaNet (``task.detector``);
* the label of an image: a class index | ``{"boxes": (K, 4) xyxy pixels, "labels": (K,)}``;
* a prepared split: images + ``manifest.csv`` | the same + a COCO ``annotations.json``;
* the supervised loss: ``CE(h(f(x)), y)`` | the detector's own losses (focal, box, centerness);
* features for DANN: the pooled penultimate features, one vector per image | the backbone map, one
  vector per location (the image-level adaptation of Domain Adaptive Faster R-CNN, Chen et al. 2018);
* the source-val score: accuracy | COCO mAP@.5.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.config import AugmentStep, ConfigError, Params
from pipeline.data.sampling import stack_items


@dataclass
class Supervised:
    """One supervised forward: the loss, its named unweighted terms, the outputs (logits or None)
    and, when asked for, one feature vector per row for a feature-level method of each domain."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    outputs: Optional[torch.Tensor]
    source_features: Optional[torch.Tensor] = None
    target_features: Optional[torch.Tensor] = None


class TaskKind:
    """The interface; see the module docstring for what each kind does."""

    name: ClassVar[str] = ""
    score_name: ClassVar[str] = ""          # the history column of the source-val score
    short_score: ClassVar[str] = ""         # the same score in the GAN's diagnostics (task/<short>_source_val)
    train_accuracy: ClassVar[bool] = False  # whether training batches give an accuracy

    def build_model(self, params: Params) -> nn.Module:
        raise NotImplementedError

    def from_config(self, config: dict[str, Any]) -> nn.Module:
        """An untrained model rebuilt from its ``sim2real_config`` (load the weights afterwards)."""
        raise NotImplementedError

    def network(self, model: nn.Module) -> nn.Module:
        """The module a method calls (the loop DDP-wraps it)."""
        raise NotImplementedError

    def feature_dim(self, model: nn.Module) -> int:
        raise NotImplementedError

    def dataset(self, folder: str | Path, params: Params, labels: bool = True, transform=None) -> Dataset:
        raise NotImplementedError

    def build_augment(self, steps: Sequence[AugmentStep], seed: int, key: str):
        raise NotImplementedError

    def view_transform(self, augment, steps: Sequence[AugmentStep], seed: int,
                       key: str) -> Optional[Callable[[np.ndarray], np.ndarray]]:
        """The transform of a view of unlabelled real images, given the pipeline ``augment`` built from
        ``steps`` for labelled images: the same object (one random stream for both)."""
        return augment

    #: ``[(image, target), ...] -> batch``; stacking by default (which lets an in-memory split hand
    #: over a whole batch at once, see :meth:`pipeline.data.sampling.DomainSampler.load`)
    collate = staticmethod(stack_items)

    def to_device(self, y: Any, device: torch.device) -> Any:
        return y.to(device)

    def supervised(self, net: nn.Module, x: torch.Tensor, y: Any,
                   target: Optional[torch.Tensor] = None) -> Supervised:
        """The supervised loss of ``(x, y)``; with ``target`` (unlabelled real images) also the feature
        vectors of both domains for a feature-level method."""
        raise NotImplementedError

    def correct(self, outputs: Optional[torch.Tensor], y: Any) -> Optional[int]:
        """Correct predictions in a training batch (train accuracy), or None when the kind has none."""
        return None

    def val_score(self, model: nn.Module, dataset: Dataset, device: torch.device) -> float:
        raise NotImplementedError

    def batchnorm_module(self, model: nn.Module) -> nn.Module:
        """The part of the model whose BatchNorm statistics AdaBN re-estimates (``target_bn``)."""
        return model

    def label_free(self, model: nn.Module, real: Dataset, val: Dataset, device: torch.device,
                   seed: int) -> dict[str, float]:
        raise NotImplementedError

    # -- what the GAN asks of the frozen task model T ----------------------------------------------

    def gan_task_loss(self, model: nn.Module, x: torch.Tensor, g_x: torch.Tensor, y: Any) -> torch.Tensor:
        """Label preservation through the frozen ``model``: its loss on ``x`` plus its loss on ``G(x)``
        with the labels of ``x`` (only ``g_x`` receives gradients)."""
        raise NotImplementedError

    def gap_features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One feature vector per image ``(N, D)``, where the GAN's domain-gap diagnostics are measured."""
        raise NotImplementedError

    def encoder_layers(self, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        """The model's feature maps, shallow to deep, with gradients to ``x`` (the GAN's perceptual loss)."""
        raise NotImplementedError

    def task_score(self, model: nn.Module, x: torch.Tensor, y: Any) -> float:
        """The frozen model's score on a labelled batch (accuracy, mAP@.5): does G keep the labels?"""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# Classification
# ------------------------------------------------------------------------------------------------


class FeaturesAndLogits(nn.Module):
    """``x -> (f(x), h(f(x)))`` so one (DDP-wrapped) forward serves the task and any feature-level loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from pipeline.task.models import classify_features, extract_features

        features = extract_features(self.model, x)
        return features, classify_features(self.model, features)


@torch.inference_mode()
def accuracy(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (switched to eval mode and back) over ``dataset``."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


class Classification(TaskKind):
    name = "classification"
    score_name = "source_val_acc"
    short_score = "acc"
    train_accuracy = True

    def build_model(self, params: Params) -> nn.Module:
        from pipeline.task.models import build_task_model

        try:
            return build_task_model(params.task.model, params.data.channels, len(params.data.classes),
                                    params.task.width)
        except ValueError as exc:  # an unknown architecture; the message names task.model
            raise ConfigError(str(exc)) from None

    def from_config(self, config):
        from pipeline.task.models import model_from_config

        return model_from_config(config)

    def network(self, model: nn.Module) -> nn.Module:
        return FeaturesAndLogits(model)

    def feature_dim(self, model: nn.Module) -> int:
        from pipeline.task.models import feature_dim

        return feature_dim(model)

    def dataset(self, folder, params, labels=True, transform=None):
        from pipeline.data.manifest import ImageSet

        d = params.data
        return ImageSet(folder, d.classes, d.channels, d.image_size, labels=labels, transform=transform)

    def build_augment(self, steps, seed, key):
        from pipeline.data.augment import build_augment

        return build_augment(steps, seed, key=key)

    def supervised(self, net, x, y, target=None):
        """``L = CE(h(f(x)), y)``; with ``target``, source and target go through the network as one
        batch (BatchNorm sees both domains, as in TLlib's DANN)."""
        n = len(x)
        features, logits = net(x if target is None else torch.cat([x, target]))
        ce = F.cross_entropy(logits[:n], y)
        if target is None:
            return Supervised(ce, {"task": ce}, logits)
        return Supervised(ce, {"task": ce}, logits[:n], features[:n], features[n:])

    def correct(self, outputs, y):
        return int((outputs.detach().argmax(1) == y).sum())

    def val_score(self, model, dataset, device):
        return accuracy(model, dataset, device)

    def label_free(self, model, real, val, device, seed):
        from pipeline.metrics.label_free import label_free_scores

        return label_free_scores(copy.deepcopy(model).to(device), real, val, device, seed)

    def gan_task_loss(self, model, x, g_x, y):
        from pipeline.gan.losses import task_loss

        return task_loss(model, x, g_x, y)

    def gap_features(self, model, x):
        from pipeline.task.models import extract_features

        return extract_features(model, x)

    def encoder_layers(self, model, x):
        from pipeline.task.models import intermediate_features

        return intermediate_features(model, x)

    def task_score(self, model, x, y, batch_size: int = 256):
        logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        return float((logits.argmax(dim=1) == y).float().mean())


# ------------------------------------------------------------------------------------------------
# Detection
# ------------------------------------------------------------------------------------------------


class DetectorNet(nn.Module):
    """``(x, targets) -> (losses, feature map)`` in one forward; ``x -> feature map`` without targets."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, targets: Optional[list[dict[str, torch.Tensor]]] = None):
        from pipeline.detection.models import feature_maps, losses_and_features

        if targets is None:
            return feature_maps(self.model, x)
        return losses_and_features(self.model, x, targets)


def _location_vectors(maps: torch.Tensor) -> torch.Tensor:
    """``(N, D, h, w) -> (N*h*w, D)``: one vector per feature-map location (an image-level domain
    classifier applied at every location, as in Domain Adaptive Faster R-CNN)."""
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


class Detection(TaskKind):
    name = "detection"
    score_name = "source_val_map50"
    short_score = "map50"

    def build_model(self, params: Params) -> nn.Module:
        from pipeline.detection.models import build_detector

        d = params.data
        model = build_detector(params.task.detector, d.channels, len(d.classes), d.image_size)
        model.sim2real_config = {**model.sim2real_config, "kind": self.name}
        return model

    def from_config(self, config):
        from pipeline.detection.models import detector_from_config

        model = detector_from_config(config)
        model.sim2real_config = {**model.sim2real_config, "kind": self.name}
        return model

    def network(self, model):
        return DetectorNet(model)

    def feature_dim(self, model):
        from pipeline.detection.models import feature_channels

        return feature_channels(model)

    def dataset(self, folder, params, labels=True, transform=None):
        from pipeline.data.detection_set import DetectionSet

        d = params.data
        return DetectionSet(folder, d.classes, d.channels, d.image_size, labels=labels, transform=transform)

    def build_augment(self, steps, seed, key):
        from pipeline.data.detection_set import build_box_augment

        return build_box_augment(steps, seed, key=key)

    def view_transform(self, augment, steps, seed, key):
        """Only the photometric steps of the pipeline (albumentations' image-only transforms): a view
        of an unlabelled real image keeps every pixel where it is, so boxes predicted on one view
        (self-training's pseudo-boxes) hold on every other."""
        import albumentations as A

        from pipeline.data.augment import build_augment

        photometric = [s for s in steps if isinstance(getattr(A, s.name, None), type)
                       and issubclass(getattr(A, s.name), A.ImageOnlyTransform)]
        return build_augment(photometric, seed, key=key)

    def collate(self, items):
        from pipeline.data.detection_set import collate_detection

        return collate_detection(items)

    def to_device(self, y, device):
        return [{k: v.to(device) for k, v in t.items()} for t in y]

    def supervised(self, net, x, y, target=None):
        """``L = sum of the detector's losses`` on the labelled batch; with ``target`` also the backbone
        maps of both domains as per-location vectors (the target batch goes through the backbone only)."""
        losses, maps = net(x, y)
        loss = sum(losses.values())
        if target is None:
            return Supervised(loss, dict(losses), None)
        return Supervised(loss, dict(losses), None, _location_vectors(maps), _location_vectors(net(target)))

    def val_score(self, model, dataset, device):
        from pipeline.detection.evaluate import detection_scores

        return detection_scores(model, dataset, device)["map50"]

    def batchnorm_module(self, model):
        return model.backbone

    def label_free(self, model, real, val, device, seed):
        from pipeline.detection.evaluate import detection_label_free

        return detection_label_free(model, real, val, device)

    def gan_task_loss(self, model, x, g_x, y):
        """``L_det(T(x), boxes) + L_det(T(G(x)), boxes)``: the detection form of the classification task
        loss, with BatchNorm statistics and weights of T frozen (the first term is a constant)."""
        from pipeline.detection.models import frozen_detection_loss

        with torch.no_grad():
            source_term = frozen_detection_loss(model, x, y)
        return source_term + frozen_detection_loss(model, g_x, y)

    def gap_features(self, model, x):
        """The backbone map averaged over locations."""
        from pipeline.detection.models import feature_maps

        was_training = model.training
        model.eval()
        try:
            return feature_maps(model, x).mean(dim=(2, 3))
        finally:
            model.train(was_training)

    def encoder_layers(self, model, x):
        """The levels the backbone's body returns (its last two maps), shallow to deep."""
        return list(model.backbone.body(x))

    def task_score(self, model, x, y):
        from pipeline.detection.models import predict
        from pipeline.metrics.detection import coco_map

        classes = [str(i) for i in range(model.sim2real_config["num_classes"])]
        cpu = [{k: v.cpu() for k, v in t.items()} for t in y]
        return float(coco_map(predict(model, x), cpu, classes)["map50"])


KINDS: dict[str, TaskKind] = {"classification": Classification(), "detection": Detection()}


def task_kind(params: Params) -> TaskKind:
    """The kind named by ``task.kind``."""
    return KINDS[params.task.kind]


def kind_of_config(config: dict[str, Any]) -> TaskKind:
    """The kind of an exported model, from its build config (older exports are classifiers)."""
    return KINDS[config.get("kind", "classification")]
