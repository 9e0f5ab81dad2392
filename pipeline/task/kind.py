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
* the source-val score: accuracy | COCO mAP@.5;
* prepare: class folders or manifests | COCO files or the built-in scenes;
* the evaluate stage's report of one variant, and the report stage's comparison and pick;
* capabilities a method or the loop asks about: class probabilities per image (self-training's
  thresholded pseudo-labels and clusters), a linear head to replace by class prototypes;
* what a shipped file runs and returns (``sim2real export`` / ``predict``): a batch to logits | one
  image to boxes, scores and labels.

This module is the interface; each kind is one module (:mod:`pipeline.task.classification`,
:mod:`pipeline.detection.kind`) registered in :mod:`pipeline.task.kinds`. No other module compares
``task.kind`` with a kind's name: it asks the kind.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.config import AugmentStep, Params
from pipeline.data.sampling import stack_items


def resolve(reference: str) -> Callable[..., Any]:
    """The function a ``"package.module:function"`` reference names, imported now."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


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
    class_probabilities: ClassVar[bool] = False   # one class distribution per image (thresholded pseudo-labels)
    prototype_head: ClassVar[bool] = False  # a linear head that class prototypes may replace (target_head)
    served_output: ClassVar[str] = ""       # what a served model returns per batch (MLflow signature)
    dataset_type: ClassVar[type] = Dataset  # a prepared split: (folder, classes, channels, size, labels, transform)

    # -- the stages' kind-specific parts ------------------------------------------------------------
    # prepare and report are named as "module:function" and imported on use: the training stages import
    # the kind, and a change to the report (or to prepare) must not make DVC rerun them.
    # tests/test_dvc_deps.py counts these modules among the prepare and report stages' dependencies.
    prepare_with: ClassVar[str] = ""   # f(params, out, record) -> (stats, preview)
    report_with: ClassVar[str] = ""    # f(params, eval_dir, out_dir, tracker, train_dir) -> summary (.pick)

    def prepare(self, params: Params, out: str | Path, record: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
        """The prepare stage: the user's data (or the built-in scenario) into ``out``; ``(stats, preview)``."""
        return resolve(self.prepare_with)(params, out, record)

    def evaluate(self, model: nn.Module, meta: dict[str, Any], params: Params, variant: str, test_set: Dataset,
                 out_dir: str | Path, tracker, device: torch.device | str) -> dict[str, Any]:
        """The evaluate stage's scores of one exported model on the held-out real test split (opened,
        labels and all, by :mod:`pipeline.task.evaluate`, the one module allowed to): writes
        metrics.json, predictions.csv and figures to ``out_dir``, mirrors them to ``tracker``."""
        raise NotImplementedError

    def write_report(self, params: Params, eval_dir: str | Path, out_dir: str | Path, tracker,
                     train_dir: str | Path) -> Any:
        """The report stage: every variant compared, the pick made; returns the summary (``.pick``)."""
        return resolve(self.report_with)(params, eval_dir, out_dir, tracker, train_dir)

    def served_width(self, meta: dict[str, Any]) -> int:
        """Columns of a served model's output (0: not a fixed-width array)."""
        return 0

    # -- shipping a model outside the pipeline (sim2real export / predict: pipeline/ship) -----------
    ships_per_image: ClassVar[bool] = False  # an exported file takes one image (C, H, W), not a batch

    def shipped_module(self, model: nn.Module) -> nn.Module:
        """What an exported file (TorchScript, ONNX) runs: float32 images in [-1, 1], a batch
        ``(N, C, H, W)`` or, when :attr:`ships_per_image`, one image ``(C, H, W)``, to the tensors
        :meth:`shipped_outputs` names, in that order (a lone tensor when it names one)."""
        raise NotImplementedError

    def shipped_outputs(self, meta: dict[str, Any]) -> list[dict[str, Any]]:
        """The exported file's outputs in order, each ``{"name", "shape", "dtype", "meaning"}`` (written
        into the JSON beside the file, for its callers)."""
        raise NotImplementedError

    def predictions(self, model: nn.Module, x: torch.Tensor) -> list[dict[str, np.ndarray]]:
        """Per-image outputs (named as in :meth:`shipped_outputs`) of ``model`` on the batch ``x``, in
        eval mode without gradients: what ``sim2real predict`` writes."""
        raise NotImplementedError

    def pseudo_targets(self, net: nn.Module, images: torch.Tensor, threshold: float) -> list[Any]:
        """Training targets from the model's own confident predictions on ``images`` (self-training of a
        kind without class probabilities), one per image, each possibly empty."""
        raise NotImplementedError

    def target_size(self, target: Any) -> int:
        """How many objects a (pseudo-)target holds (0: nothing to learn from)."""
        raise NotImplementedError

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
        """A prepared split of this kind (``labels=False``: its labels unread; ``transform``: augmentation)."""
        d = params.data
        return self.dataset_type(folder, d.classes, d.channels, d.image_size, labels=labels, transform=transform)

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
