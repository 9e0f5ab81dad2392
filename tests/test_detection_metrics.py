"""COCO mAP of box detections (pycocotools on in-memory datasets): known cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.metrics.detection import coco_map, xyxy_to_xywh

CLASSES = ["square", "cross", "ring"]


def target(boxes, labels) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def prediction(boxes, labels, scores) -> dict:
    return {**target(boxes, labels), "scores": torch.tensor(scores, dtype=torch.float32)}


def no_prediction() -> dict:
    return prediction([], [], [])


def iou(a, b) -> float:
    """IoU of two xyxy boxes: ``|a ∩ b| / (|a| + |b| - |a ∩ b|)``."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


TARGETS = [target([[2, 3, 12, 15], [16, 16, 30, 28]], [0, 1]), target([[5, 5, 20, 25]], [0]), target([], [])]


def test_perfect_predictions_score_one_everywhere():
    predictions = [prediction(t["boxes"].tolist(), t["labels"].tolist(), [0.9] * len(t["labels"])) for t in TARGETS]
    scores = coco_map(predictions, TARGETS, CLASSES[:2])
    assert scores["map"] == pytest.approx(1.0)
    assert scores["map50"] == pytest.approx(1.0)
    assert scores["map75"] == pytest.approx(1.0)
    assert scores["per_class"] == {"square": pytest.approx(1.0), "cross": pytest.approx(1.0)}
    assert scores["images"] == 3 and scores["objects"] == 3


def test_a_shifted_box_passes_exactly_the_iou_thresholds_below_its_iou():
    truth, shifted = [4.0, 4.0, 14.0, 14.0], [6.3, 4.0, 16.3, 14.0]
    overlap = iou(truth, shifted)
    assert 0.6 < overlap < 0.65
    passed = int((np.linspace(0.5, 0.95, 10) <= overlap).sum())
    assert passed == 3
    scores = coco_map([prediction([shifted], [0], [0.8])], [target([truth], [0])], CLASSES[:1])
    assert scores["map50"] == pytest.approx(1.0)
    assert scores["map75"] == pytest.approx(0.0)
    assert scores["map"] == pytest.approx(passed / 10)
    assert scores["per_class"]["square"] == pytest.approx(passed / 10)


def test_a_box_of_the_wrong_class_scores_zero():
    scores = coco_map([prediction([[2, 3, 12, 15]], [1], [0.9])], [target([[2, 3, 12, 15]], [0])], CLASSES[:2])
    assert scores["map"] == 0.0 and scores["map50"] == 0.0 and scores["map75"] == 0.0
    assert scores["per_class"] == {"square": 0.0, "cross": None}


def test_no_predictions_score_zero():
    scores = coco_map([no_prediction() for _ in TARGETS], TARGETS, CLASSES[:2])
    assert scores["map"] == 0.0 and scores["map50"] == 0.0 and scores["map75"] == 0.0
    assert scores["per_class"] == {"square": 0.0, "cross": 0.0}


def test_a_class_without_ground_truth_reports_none_and_stays_out_of_the_mean():
    predictions = [prediction(t["boxes"].tolist(), t["labels"].tolist(), [0.9] * len(t["labels"])) for t in TARGETS]
    predictions[2] = prediction([[1, 1, 9, 9]], [2], [0.7])   # a "ring" where there is none
    scores = coco_map(predictions, TARGETS, CLASSES)
    assert scores["per_class"]["ring"] is None
    assert scores["map"] == pytest.approx(1.0)


def test_an_image_without_predictions_among_others_costs_its_recall():
    predictions = [prediction(TARGETS[0]["boxes"].tolist(), [0, 1], [0.9, 0.9]), no_prediction(), no_prediction()]
    scores = coco_map(predictions, TARGETS, CLASSES[:2])
    assert scores["per_class"]["cross"] == pytest.approx(1.0)
    assert scores["per_class"]["square"] == pytest.approx(0.5, abs=0.01)   # recall 1/2 at precision 1


def test_no_ground_truth_at_all_reports_zero_objects():
    scores = coco_map([prediction([[1, 1, 9, 9]], [0], [0.7])], [target([], [])], CLASSES[:1])
    assert scores["objects"] == 0 and scores["map"] == 0.0 and scores["per_class"] == {"square": None}


def test_xyxy_boxes_become_coco_xywh():
    assert xyxy_to_xywh(np.array([[2.0, 3.0, 12.0, 15.0]])).tolist() == [[2.0, 3.0, 10.0, 12.0]]


def test_mismatched_lists_are_an_error():
    with pytest.raises(ValueError):
        coco_map([no_prediction()], TARGETS, CLASSES)
