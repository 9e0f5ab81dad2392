"""Evaluate an exported task model on the held-out real test split.

This is the only module that reads the labels of ``target/test`` (through
:func:`~pipeline.data.manifest.heldout_test_set`; a test scans the sources to keep it so). Nothing it
computes feeds back into training or model selection.

Besides accuracy and macro-F1 it measures how far the variant's training images are from the real
test images *as the model sees them*: the proxy A-distance ``PAD = 2 (1 - 2 err)`` of a linear domain
classifier on the model's penultimate features (0: indistinguishable, 2: separable).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.config import Params
from pipeline.data.manifest import HELDOUT_MARKER, ImageSet, heldout_test_set, is_heldout
from pipeline.data.sampling import subsample
from pipeline.io import atomic_file, write_json
from pipeline.metrics.classification import classification_report, plot_confusion_matrix
from pipeline.metrics.domain_gap import proxy_a_distance
from pipeline.task.export import MODEL_FILE, check_model_matches, load_task_model
from pipeline.task.models import classify_features, extract_features

log = logging.getLogger(__name__)

TARGET_TEST = Path("data/prepared/target/test")
PAD_SAMPLES = 1000
BATCH_SIZE = 256


@dataclass
class Outputs:
    """Per-image predictions and penultimate features of one pass over a dataset."""

    predicted: np.ndarray   # (N,) class indices
    labels: np.ndarray      # (N,) class indices, -1 when unlabelled
    features: np.ndarray    # (N, D)
    probabilities: Optional[np.ndarray] = None   # (N, K) softmax of the logits


@torch.inference_mode()
def predict(model: nn.Module, dataset: Dataset, device: torch.device | str = "cpu",
            batch_size: int = BATCH_SIZE) -> Outputs:
    """Batched forward pass in eval mode: ``features = f(x)``, ``predicted = argmax h(features)``,
    ``probabilities = softmax h(features)``."""
    model.eval()
    preds, labels, feats, probs = [], [], [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        f = extract_features(model, x.to(device))
        logits = classify_features(model, f)
        preds.append(logits.argmax(1).cpu().numpy())
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        feats.append(f.float().cpu().numpy())
        labels.append(np.asarray(y))
    return Outputs(np.concatenate(preds), np.concatenate(labels), np.concatenate(feats), np.concatenate(probs))


def check_heldout(test_dir: str | Path) -> Path:
    """``test_dir`` when it is a held-out test split (prepare marked it with ``HELDOUT``), else a one-line
    :class:`~pipeline.cli.UserError` naming it: scoring a training or validation folder would report a
    number that looks like the test result but is not."""
    from pipeline.cli import UserError

    folder = Path(test_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: test folder not found; expected the held-out test split made by the "
                        f"prepare stage ({TARGET_TEST})")
    if not is_heldout(folder):
        raise UserError(f"{folder}: not a held-out test split (it holds no {HELDOUT_MARKER} marker); the evaluate "
                        f"stage scores only the test split made by the prepare stage ({TARGET_TEST}), never a "
                        f"folder used for training or validation")
    return folder


def write_predictions(path: str | Path, actual: Sequence[int], predicted: Sequence[int],
                      classes: Sequence[str]) -> None:
    """``actual,predicted`` as class names, one row per test image (DVC's confusion template); written
    atomically (:func:`~pipeline.io.atomic_file`)."""
    with atomic_file(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["actual", "predicted"])
        writer.writerows((classes[a], classes[p]) for a, p in zip(actual, predicted))


def evaluate_variant(params: Params, variant: str, model_dir: str | Path, out_dir: str | Path, tracker,
                     test_dir: str | Path = TARGET_TEST, device: torch.device | str = "cpu",
                     pad_samples: int = PAD_SAMPLES) -> dict[str, Any]:
    """Score ``<model_dir>/model.pt`` on the real test split; write metrics.json, predictions.csv and
    confusion.png to ``out_dir``, mirror them to ``tracker`` and return the metrics. ``test_dir`` must be
    a held-out split (:func:`check_heldout`), for classification and detection alike."""
    check_heldout(test_dir)
    model_path = Path(model_dir) / MODEL_FILE
    model, meta = load_task_model(model_path, device)
    check_model_matches(meta, params, model_path)
    classes, d = list(params.data.classes), params.data
    if meta.get("kind", "classification") == "detection":
        from pipeline.data.detection_set import DetectionSet
        from pipeline.detection.evaluate import evaluate_detector

        test_set = DetectionSet(test_dir, classes, d.channels, d.image_size, _allow_heldout=True)
        return evaluate_detector(model, meta, variant, test_set, out_dir, tracker, device)

    test = predict(model, heldout_test_set(test_dir, classes, d.channels, d.image_size), device)
    train_images = ImageSet(params.variant(variant).train, classes, d.channels, d.image_size, labels=False)
    train = predict(model, subsample(train_images, pad_samples, params.seed), device)

    report = classification_report(test.labels, test.predicted, classes)
    metrics = {
        "variant": variant,
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "per_class_accuracy": report["per_class_accuracy"],
        "n": report["n"],
        "proxy_a_distance": proxy_a_distance(train.features, test.features, seed=params.seed),
        "uses_target_labels": meta.get("uses_target_labels"),   # None: unknown, never picked
        "selected_epoch": meta.get("selected_epoch"),
    }

    out = Path(out_dir)
    write_json(out / "metrics.json", metrics)
    write_predictions(out / "predictions.csv", test.labels, test.predicted, classes)
    plot_confusion_matrix(report["confusion_matrix"], classes, out / "confusion.png",
                          title=f"{variant}: accuracy {report['accuracy']:.3f} on real test")
    _log(tracker, metrics, out)
    log.info("%s: accuracy %.4f  macro-F1 %.4f  PAD %.3f  (n=%d)", variant, metrics["accuracy"],
             metrics["macro_f1"], metrics["proxy_a_distance"], metrics["n"])
    return metrics


def _log(tracker, metrics: dict[str, Any], out: Path) -> None:
    scalars = {k: metrics[k] for k in ("accuracy", "macro_f1", "proxy_a_distance", "n")}
    scalars.update({f"class_acc.{name}": acc for name, acc in metrics["per_class_accuracy"].items()})
    tracker.log_metrics(scalars)
    tracker.set_tags({"uses_target_labels": metrics["uses_target_labels"]})
    for name in ("metrics.json", "predictions.csv", "confusion.png"):
        tracker.log_artifact(out / name)
