"""Scores of a detector: COCO mAP on a labelled split, label-free scores on unlabelled real images,
and the evaluate stage's report for ``task.kind: detection``.

As for classification, only the evaluate stage reads the held-out real test boxes (it opens the test
split in :mod:`pipeline.task.evaluate` and hands it to the kind, which calls :func:`evaluate_detector`); nothing computed
here feeds back into training.

Besides COCO mAP (:func:`pipeline.metrics.detection.coco_map`) the evaluation writes a detection
confusion matrix: each ground-truth box is matched to the unmatched prediction (score >= 0.5) of
highest IoU >= 0.5, whatever its class; a matched pair counts (actual class, predicted class), an
unmatched ground-truth box (actual, ``background``) and an unmatched prediction (``background``,
predicted). It is the same ``actual,predicted`` table as classification's, so DVC's confusion plot
and the report read it the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from pipeline.io import write_json

log = logging.getLogger(__name__)

BACKGROUND = "background"
MATCH_IOU = 0.5
CONFIDENT = 0.5           # a prediction at or above this score counts in the confusion matrix
LABEL_FREE_LIMIT = 1000   # real images scored per model by detection_label_free
BATCH_SIZE = 128


def _images_and_targets(dataset: Dataset) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([image for image, _ in items]), [target for _, target in items]


def predictions_on(model: nn.Module, dataset: Dataset, device: torch.device | str = "cpu"):
    """``(images, targets, predictions)`` of the whole (unaugmented) ``dataset``."""
    from pipeline.detection.models import predict

    images, targets = _images_and_targets(dataset)
    model = model.to(device)
    return images, targets, predict(model, images.to(device), batch_size=BATCH_SIZE)


def detection_scores(model: nn.Module, dataset: Dataset, device: torch.device | str = "cpu") -> dict[str, Any]:
    """COCO mAP of ``model`` on a labelled split (``map``, ``map50``, ``map75``, ``per_class``)."""
    from pipeline.metrics.detection import coco_map

    _, targets, predictions = predictions_on(model, dataset, device)
    return coco_map(predictions, targets, list(dataset.classes))


def detection_label_free(model: nn.Module, real: Dataset, val: Dataset, device: torch.device | str = "cpu",
                         limit: int = LABEL_FREE_LIMIT) -> dict[str, float]:
    """Scores that need no real label: mAP@.5 on the labelled synthetic validation split, and on (at
    most ``limit``) unlabelled real training images the mean confidence ``mean_i max_j s_ij`` (the top
    detection score per image, 0 for an image without detections) and the mean number of detections
    scoring at least 0.5."""
    if len(real) > limit:
        real = Subset(real, np.linspace(0, len(real) - 1, limit).round().astype(int).tolist())
    _, _, predictions = predictions_on(model, real, device)
    top = [float(p["scores"].max()) if len(p["scores"]) else 0.0 for p in predictions]
    confident = [int((p["scores"] >= CONFIDENT).sum()) for p in predictions]
    return {"source_val_map50": detection_scores(model, val, device)["map50"],
            "target_confidence": float(np.mean(top)), "target_detections": float(np.mean(confident))}


def confusion_pairs(predictions: Sequence[dict], targets: Sequence[dict], classes: Sequence[str]) -> list[tuple[str, str]]:
    """``(actual, predicted)`` class names per box, ``background`` for a miss or a false detection
    (the matching rule is in the module docstring)."""
    from torchvision.ops import box_iou     # imported here: torchvision takes about a second, classification never needs it

    pairs: list[tuple[str, str]] = []
    for pred, target in zip(predictions, targets):
        keep = pred["scores"].numpy() >= CONFIDENT
        p_boxes, p_labels = pred["boxes"].numpy()[keep], pred["labels"].numpy()[keep]
        t_boxes, t_labels = target["boxes"].numpy(), target["labels"].numpy()
        used = np.zeros(len(p_boxes), bool)
        iou = box_iou(torch.from_numpy(t_boxes), torch.from_numpy(p_boxes)).numpy()   # rows: ground truth
        for g in range(len(t_boxes)):
            candidates = np.where(~used & (iou[g] >= MATCH_IOU))[0]
            if len(candidates):
                j = candidates[np.argmax(iou[g, candidates])]
                used[j] = True
                pairs.append((classes[t_labels[g]], classes[p_labels[j]]))
            else:
                pairs.append((classes[t_labels[g]], BACKGROUND))
        pairs += [(BACKGROUND, classes[p_labels[j]]) for j in np.where(~used)[0]]
    return pairs


def evaluate_detector(model: nn.Module, meta: dict[str, Any], variant: str, test: Dataset, out_dir: str | Path,
                      tracker, device: torch.device | str = "cpu") -> dict[str, Any]:
    """COCO mAP on the real test split, the confusion table and figure, a grid of detections; written
    to ``out_dir`` (metrics.json, predictions.csv, confusion.png, detections.png) and mirrored to MLflow."""
    from pipeline.data.manifest import to_uint8
    from pipeline.detection.draw import draw_detections
    from pipeline.metrics.classification import classification_report, plot_confusion_matrix, write_predictions
    from pipeline.metrics.detection import coco_map

    classes = list(test.classes)
    images, targets, predictions = predictions_on(model, test, device)
    scores = coco_map(predictions, targets, classes)
    metrics = {"variant": variant, "map50": scores["map50"], "map": scores["map"], "map75": scores["map75"],
               "per_class_ap": scores["per_class"], "n": len(test), "objects": scores["objects"],
               "uses_target_labels": meta.get("uses_target_labels"),   # None: unknown, never picked
               "selected_epoch": meta.get("selected_epoch")}
    out = Path(out_dir)
    write_json(out / "metrics.json", metrics)
    names = classes + [BACKGROUND]
    index = {name: i for i, name in enumerate(names)}
    pairs = confusion_pairs(predictions, targets, classes)
    actual, predicted = [index[a] for a, _ in pairs], [index[p] for _, p in pairs]
    write_predictions(out / "predictions.csv", actual, predicted, names)
    plot_confusion_matrix(classification_report(actual, predicted, names)["confusion_matrix"], names,
                          out / "confusion.png",
                          title=f"{variant}: mAP@.5 {scores['map50']:.3f} on real test (boxes matched at IoU 0.5)")
    shown = min(32, len(test))
    draw_detections(to_uint8(images[:shown]), predictions[:shown], targets[:shown], classes, out / "detections.png")
    tracker.log_metrics({"map50": metrics["map50"], "map": metrics["map"], "map75": metrics["map75"],
                         "n": metrics["n"],
                         **{f"class_ap.{k}": v for k, v in scores["per_class"].items() if v is not None}})
    tracker.set_tags({"uses_target_labels": metrics["uses_target_labels"]})
    for name in ("metrics.json", "predictions.csv", "confusion.png", "detections.png"):
        tracker.log_artifact(out / name)
    log.info("%s: mAP@.5 %.4f  mAP@[.5:.95] %.4f  (n=%d images, %d objects)", variant, metrics["map50"],
             metrics["map"], metrics["n"], metrics["objects"])
    return metrics
