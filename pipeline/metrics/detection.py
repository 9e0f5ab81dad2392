"""COCO mAP of box detections, computed by pycocotools' ``COCOeval`` on datasets built in memory.

Boxes come in torchvision's convention, ``xyxy`` pixels, and are converted to COCO's ``[x, y, w, h]``
(``w = x2 - x1``, ``h = y2 - y1``; area ``w * h``) before evaluation. Class index ``c`` (0-based, as the
detectors predict it) is COCO category ``c + 1``; annotation ids start at 1 (``COCOeval`` treats a
matched id of 0 as "unmatched").

The scores are COCO's, with up to 100 detections per image and all object areas:

* ``map``: AP averaged over the IoU thresholds 0.50, 0.55, ..., 0.95 and over the classes with at least
  one ground-truth box, each AP being the mean interpolated precision at 101 recall points;
* ``map50`` / ``map75``: the same at IoU 0.5 / 0.75 alone;
* ``per_class``: each class's AP@[.5:.95], ``None`` for a class without ground truth (its AP is
  undefined, and it does not enter ``map``).

With no ground-truth box at all, every mean is undefined; it is reported as 0.0 (``objects`` is 0).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

import numpy as np

MAX_DETECTIONS = 100   # COCO's maxDets for the AP scores


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``(K, 4)`` ``[x1, y1, x2, y2]`` -> ``[x1, y1, x2 - x1, y2 - y1]``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _annotations(items: Sequence[dict], with_scores: bool) -> list[dict]:
    """COCO annotation records of per-image dicts ``{"boxes", "labels"[, "scores"]}``."""
    records: list[dict] = []
    for image_id, item in enumerate(items):
        boxes = xyxy_to_xywh(_numpy(item["boxes"]))
        labels = _numpy(item["labels"]).reshape(-1)
        scores = _numpy(item["scores"]).reshape(-1) if with_scores else None
        for j, (box, label) in enumerate(zip(boxes, labels)):
            record = {"id": len(records) + 1, "image_id": image_id, "category_id": int(label) + 1,
                      "bbox": [float(v) for v in box], "area": float(box[2] * box[3]), "iscrowd": 0}
            if with_scores:
                record["score"] = float(scores[j])
            records.append(record)
    return records


def _coco(images: list[dict], categories: list[dict], annotations: list[dict]):
    """A pycocotools ``COCO`` object built from in-memory records (its index prints are silenced)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _mean_valid(precision: np.ndarray) -> float | None:
    """Mean of the entries > -1 (COCOeval marks the undefined ones -1); None when there is none."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else None


def coco_map(predictions: Sequence[dict], targets: Sequence[dict], classes: Sequence[str]) -> dict[str, Any]:
    """COCO mAP of ``predictions`` (per image: ``boxes`` xyxy, ``scores``, ``labels``) against ``targets``
    (per image: ``boxes`` xyxy, ``labels``), both lists aligned by image; labels index ``classes``.

    Returns ``{"map", "map50", "map75", "per_class": {name: AP or None}, "images", "objects"}``.
    """
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    images = [{"id": i} for i in range(len(targets))]
    categories = [{"id": c + 1, "name": str(name)} for c, name in enumerate(classes)]
    truth = _annotations(targets, with_scores=False)
    per_class: dict[str, float | None] = {str(name): None for name in classes}
    out = {"map": 0.0, "map50": 0.0, "map75": 0.0, "per_class": per_class, "images": len(targets),
           "objects": len(truth)}
    if not truth:
        return out
    gt = _coco(images, categories, truth)
    dt = _coco(images, categories, _annotations(predictions, with_scores=True))
    evaluator = COCOeval(gt, dt, iouType="bbox")
    evaluator.params.imgIds = [image["id"] for image in images]
    evaluator.params.catIds = [category["id"] for category in categories]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    # precision: (IoU thresholds, recall points, classes, area ranges, maxDets); area "all", 100 detections
    precision = evaluator.eval["precision"][:, :, :, 0, evaluator.params.maxDets.index(MAX_DETECTIONS)]
    thresholds = evaluator.params.iouThrs
    at = {iou: int(np.argmin(np.abs(thresholds - iou))) for iou in (0.5, 0.75)}
    out["map"] = _mean_valid(precision) or 0.0
    out["map50"] = _mean_valid(precision[at[0.5]]) or 0.0
    out["map75"] = _mean_valid(precision[at[0.75]]) or 0.0
    for c, name in enumerate(classes):
        per_class[str(name)] = _mean_valid(precision[:, :, c])
    return out
