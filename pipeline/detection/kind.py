"""The detection kind: boxes per image, COCO mAP, a torchvision FCOS or RetinaNet.

Everything :class:`~pipeline.task.kind.TaskKind` asks of a detector lives here or in the modules it
names: the model (:mod:`pipeline.detection.models`), the data (a COCO split,
:class:`~pipeline.data.detection_set.DetectionSet`), prepare (:mod:`pipeline.data.prepare_detection`),
the scores and the evaluate stage's report (:mod:`pipeline.detection.evaluate`) and the report
stage's comparison (:mod:`pipeline.detection.report`, named, imported on use). Self-training learns from pseudo-boxes: the
detections of the weak view scoring at least ``box_threshold``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from pipeline.config import Params
from pipeline.data.augment import build_augment
from pipeline.data.detection_set import DetectionSet, build_box_augment, collate_detection
from pipeline.task.models import unwrap
from pipeline.detection.evaluate import detection_label_free, detection_scores, evaluate_detector
from pipeline.detection.models import (build_detector, detector_from_config, feature_channels, feature_maps,
                                       frozen_detection_loss, losses_and_features, predict)
from pipeline.metrics.detection import coco_map
from pipeline.task.kind import Supervised, TaskKind



def pseudo_boxes(detections: dict[str, torch.Tensor], threshold: float,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """The detections scoring at least ``threshold`` as a training target (copies made outside inference
    mode, so autograd may save them)."""
    keep = detections["scores"] >= threshold
    return {key: detections[key][keep].clone().to(device) for key in ("boxes", "labels")}


class DetectorNet(nn.Module):
    """``(x, targets) -> (losses, feature map)`` in one forward; ``x -> feature map`` without targets."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, targets: Optional[list[dict[str, torch.Tensor]]] = None):
        if targets is None:
            return feature_maps(self.model, x)
        return losses_and_features(self.model, x, targets)


class OneImageDetector(nn.Module):
    """``image (C, H, W) -> (boxes (D, 4) xyxy pixels, scores (D,), labels (D,))``: the detector as an
    exported file runs it (torchvision's detectors take a list of images and return dicts)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        found = self.model([image])[0]
        return found["boxes"], found["scores"], found["labels"]


def _location_vectors(maps: torch.Tensor) -> torch.Tensor:
    """``(N, D, h, w) -> (N*h*w, D)``: one vector per feature-map location (an image-level domain
    classifier applied at every location, as in Domain Adaptive Faster R-CNN)."""
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


class Detection(TaskKind):
    name = "detection"
    score_name = "source_val_map50"
    short_score = "map50"
    served_output = "detections"
    ships_per_image = True
    dataset_type = DetectionSet
    prepare_with = "pipeline.data.prepare_detection:prepare_detection"
    report_with = "pipeline.detection.report:report_stage"

    def evaluate(self, model, meta, params, variant, test_set, out_dir, tracker, device):
        return evaluate_detector(model, meta, variant, test_set, out_dir, tracker, device)

    def shipped_module(self, model):
        return OneImageDetector(model)

    def shipped_outputs(self, meta):
        size = meta["image_size"]
        return [{"name": "boxes", "shape": ["detections", 4], "dtype": "float32",
                 "meaning": f"x1, y1, x2, y2 in pixels of the {size}x{size} input (times width / {size} and "
                            f"height / {size}: pixels of the original image)"},
                {"name": "scores", "shape": ["detections"], "dtype": "float32",
                 "meaning": "confidence in [0, 1], after the score threshold and non-maximum suppression"},
                {"name": "labels", "shape": ["detections"], "dtype": "int64", "meaning": "index into classes"}]

    def predictions(self, model, x):
        return [{"boxes": d["boxes"].numpy(), "scores": d["scores"].numpy(), "labels": d["labels"].numpy()}
                for d in predict(model, x)]

    def pseudo_targets(self, net, images, threshold):
        """The detections of ``images`` scoring at least ``threshold``, as box targets (copies made
        outside inference mode, so autograd may save them)."""
        detections = predict(unwrap(net).model, images)
        return [pseudo_boxes(d, threshold, images.device) for d in detections]

    def target_size(self, target):
        return len(target["boxes"])

    def build_model(self, params: Params) -> nn.Module:
        d = params.data
        model = build_detector(params.task.detector, d.channels, len(d.classes), d.image_size)
        model.sim2real_config = {**model.sim2real_config, "kind": self.name}
        return model

    def from_config(self, config):
        model = detector_from_config(config)
        model.sim2real_config = {**model.sim2real_config, "kind": self.name}
        return model

    def network(self, model):
        return DetectorNet(model)

    def feature_dim(self, model):
        return feature_channels(model)

    def build_augment(self, steps, seed, key):
        return build_box_augment(steps, seed, key=key)

    def view_transform(self, augment, steps, seed, key):
        """Only the photometric steps of the pipeline (albumentations' image-only transforms): a view
        of an unlabelled real image keeps every pixel where it is, so boxes predicted on one view
        (self-training's pseudo-boxes) hold on every other."""
        import albumentations as A   # imported on use, as everywhere (slow to import)

        photometric = [s for s in steps if isinstance(getattr(A, s.name, None), type)
                       and issubclass(getattr(A, s.name), A.ImageOnlyTransform)]
        return build_augment(photometric, seed, key=key)

    def collate(self, items):
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
        return detection_scores(model, dataset, device)["map50"]

    def batchnorm_module(self, model):
        return model.backbone

    def label_free(self, model, real, val, device, seed):
        return detection_label_free(model, real, val, device)

    def gan_task_loss(self, model, x, g_x, y):
        """``L_det(T(x), boxes) + L_det(T(G(x)), boxes)``: the detection form of the classification task
        loss, with BatchNorm statistics and weights of T frozen (the first term is a constant)."""
        with torch.no_grad():
            source_term = frozen_detection_loss(model, x, y)
        return source_term + frozen_detection_loss(model, g_x, y)

    def gap_features(self, model, x):
        """The backbone map averaged over locations."""
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
        classes = [str(i) for i in range(model.sim2real_config["num_classes"])]
        cpu = [{k: v.cpu() for k, v in t.items()} for t in y]
        return float(coco_map(predict(model, x), cpu, classes)["map50"])
