"""The pyfunc loader MLflow runs to load a model that :meth:`pipeline.tracking.Tracker.log_model` logged.

Logged as *models-from-code* (``python_model=<this file>``): MLflow copies this file into the model
directory and executes it on ``mlflow.pyfunc.load_model``; :func:`mlflow.models.set_model` hands it an
:class:`ExportedModel`, whose ``load_context`` rebuilds the network from the weights file logged as
its artifact (``torch.load(weights_only=True)``), so loading never unpickles a Python object.

The pipeline never imports this file (executing it registers a model with MLflow as a side effect);
:mod:`pipeline.task.mlflow_model` describes what gets logged and holds the input check.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import mlflow
import numpy as np
import torch
from torch import nn

from pipeline.task.mlflow_model import DETECTION_COLUMNS, GENERATOR_ARTIFACT, TASK_ARTIFACT, check_images

Predictor = Callable[[Any], Any]


class ExportedModel(mlflow.pyfunc.PythonModel):
    """``predict(batch)`` for a float32 batch ``(N, C, H, W)`` in [-1, 1]: a classifier's logits
    ``(N, K)``, a detector's detections (a DataFrame, one row each), or the generator's translated
    images ``(N, C, H, W)``. Any other batch raises :class:`pipeline.task.mlflow_model.ModelInputError`."""

    def load_context(self, context) -> None:
        self._predict = load_predictor(context.artifacts)

    def predict(self, context, model_input: np.ndarray, params=None):   # ndarray: MLflow infers nothing from it
        return self._predict(model_input)


def load_predictor(artifacts: dict[str, str]) -> Predictor:
    """The predict function of the export in ``artifacts`` (its key says whether a task model or the generator)."""
    if TASK_ARTIFACT in artifacts:
        return _task_predictor(artifacts[TASK_ARTIFACT])
    if GENERATOR_ARTIFACT in artifacts:
        return _generator_predictor(artifacts[GENERATOR_ARTIFACT])
    raise ValueError(f"logged model artifacts {sorted(artifacts)}: expected {TASK_ARTIFACT!r} or {GENERATOR_ARTIFACT!r}")


def _task_predictor(path: str) -> Predictor:
    from pipeline.task.export import load_task_model
    from pipeline.task.kinds import kind_of_meta

    model, meta = load_task_model(path)
    geometry = (int(meta["channels"]), int(meta["image_size"]))
    if kind_of_meta(meta).served_output == "detections":
        return partial(_detections, model, geometry, list(meta["classes"]))
    return partial(_forward, model, geometry)


def _generator_predictor(path: str) -> Predictor:
    from pipeline.gan.export import load_generator

    generator, meta = load_generator(path)
    return partial(_forward, generator, (int(generator.config["in_channels"]), int(meta["image_size"])))


def _forward(model: nn.Module, geometry: tuple[int, int], batch: Any) -> np.ndarray:
    """The model's output (logits or images) for the checked ``batch``, as float32 numpy."""
    x = check_images(batch, *geometry)
    with torch.no_grad():
        return model(x).float().numpy()


def _detections(model: nn.Module, geometry: tuple[int, int], classes: Sequence[str], batch: Any):
    """One row per detection (:data:`DETECTION_COLUMNS`) for the checked ``batch``."""
    import pandas as pd

    from pipeline.detection.models import predict

    rows = [(i, int(label), classes[int(label)], float(score), *map(float, box))
            for i, found in enumerate(predict(model, check_images(batch, *geometry)))
            for box, score, label in zip(found["boxes"].tolist(), found["scores"].tolist(), found["labels"].tolist())]
    frame = pd.DataFrame(rows, columns=[name for name, _ in DETECTION_COLUMNS])
    return frame.astype({"image": "int64", "label": "int64", "score": "float32", "x1": "float32",
                         "y1": "float32", "x2": "float32", "y2": "float32"})


mlflow.models.set_model(ExportedModel())
