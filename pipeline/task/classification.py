"""The classification kind: a class index per image, accuracy, softmax-based label-free scores.

Everything :class:`~pipeline.task.kind.TaskKind` asks of a classifier lives here: the model
(:mod:`pipeline.task.models`), the data (an :class:`~pipeline.data.manifest.ImageSet`), the loss
``CE(h(f(x)), y)``, batched predictions (:func:`predict`), the evaluate stage's report of one
variant (:func:`evaluate_classifier`: accuracy, macro-F1, the confusion matrix and the proxy
A-distance ``PAD = 2 (1 - 2 err)`` of a linear domain classifier on the penultimate features) and the
report stage's comparison (:mod:`pipeline.report`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.config import ConfigError, Params
from pipeline.data.augment import build_augment
from pipeline.data.manifest import ImageSet
from pipeline.data.sampling import subsample
from pipeline.gan.losses import task_loss
from pipeline.io import write_json
from pipeline.metrics.classification import classification_report, plot_confusion_matrix, write_predictions
from pipeline.metrics.domain_gap import proxy_a_distance
from pipeline.metrics.label_free import LIMIT, scores_from_predictions
from pipeline.task.kind import Supervised, TaskKind
from pipeline.task.models import (build_task_model, classify_features, extract_features, feature_dim,
                                  intermediate_features, model_from_config)

log = logging.getLogger(__name__)

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




class FeaturesAndLogits(nn.Module):
    """``x -> (f(x), h(f(x)))`` so one (DDP-wrapped) forward serves the task and any feature-level loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    class_probabilities = True
    prototype_head = True
    served_output = "logits"
    dataset_type = ImageSet
    prepare_with = "pipeline.data.prepare:prepare"
    report_with = "pipeline.report:report_stage"

    def evaluate(self, model, meta, params, variant, test_set, out_dir, tracker, device):
        return evaluate_classifier(model, meta, params, variant, test_set, out_dir, tracker, device)

    def served_width(self, meta):
        return len(meta["classes"])

    def shipped_module(self, model):
        return model

    def shipped_outputs(self, meta):
        return [{"name": "logits", "shape": ["batch", len(meta["classes"])], "dtype": "float32",
                 "meaning": "one score per class, in the order of classes; softmax over the last axis gives "
                            "the class probabilities, argmax the predicted class"}]

    @torch.inference_mode()
    def predictions(self, model, x):
        model.eval()
        logits = classify_features(model, extract_features(model, x)).float().cpu().numpy()  # as predict() does
        return [{"logits": row} for row in logits]

    def build_model(self, params: Params) -> nn.Module:
        try:
            return build_task_model(params.task.model, params.data.channels, len(params.data.classes),
                                    params.task.width)
        except ValueError as exc:  # an unknown architecture; the message names task.model
            raise ConfigError(str(exc)) from None

    def from_config(self, config):
        return model_from_config(config)

    def network(self, model: nn.Module) -> nn.Module:
        return FeaturesAndLogits(model)

    def feature_dim(self, model: nn.Module) -> int:
        return feature_dim(model)

    def build_augment(self, steps, seed, key):
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
        return label_free_scores(copy.deepcopy(model).to(device), real, val, device, seed)

    def gan_task_loss(self, model, x, g_x, y):
        return task_loss(model, x, g_x, y)

    def gap_features(self, model, x):
        return extract_features(model, x)

    def encoder_layers(self, model, x):
        return intermediate_features(model, x)

    def task_score(self, model, x, y, batch_size: int = 256):
        logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        return float((logits.argmax(dim=1) == y).float().mean())


def evaluate_classifier(model: nn.Module, meta: dict[str, Any], params: Params, variant: str, test_set: Dataset,
                        out_dir: str | Path, tracker, device: torch.device | str = "cpu",
                        pad_samples: int = PAD_SAMPLES) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class accuracy and the proxy A-distance (PAD, between the variant's
    training images and the test images, on the penultimate features) of ``model`` on ``test_set`` (the
    held-out split, opened by :mod:`pipeline.task.evaluate`); writes metrics.json, predictions.csv and
    confusion.png to ``out_dir`` and mirrors them to ``tracker``."""
    classes, d = list(params.data.classes), params.data
    test = predict(model, test_set, device)
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


def label_free_scores(model, target_set, source_val_set, device, seed: int, limit: int = LIMIT) -> dict[str, Any]:
    """Label-free scores of ``model``, as written under ``"label_free"`` in the train metrics.

    - ``source_val_acc``: accuracy on ``source_val_set`` (the labelled synthetic validation split, all of it);
    - the scores of :func:`pipeline.metrics.label_free.scores_from_predictions` on the softmax outputs
      on ``target_set`` (the real training images, opened with ``labels=False``).

    At most ``limit`` target images are scored, drawn by a generator seeded with ``seed``. The forward
    passes run in eval mode, without gradients; the model's train/eval mode is restored afterwards.
    """
    if len(target_set) < 2:
        raise ValueError(f"label-free scores need at least 2 target images, got {len(target_set)}")
    if len(source_val_set) < 1:
        raise ValueError("label-free scores need a non-empty source validation split")
    was_training = model.training
    try:
        target = predict(model, subsample(target_set, limit, seed), device)
        source = predict(model, source_val_set, device)
    finally:
        model.train(was_training)
    if (target.labels != -1).any():
        raise ValueError("label_free_scores: target_set must be opened without labels (labels=False)")
    return scores_from_predictions(target.probabilities, target.predicted, target.features,
                                   float((source.predicted == source.labels).mean()), seed, limit)
