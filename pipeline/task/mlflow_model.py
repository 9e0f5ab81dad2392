"""What an MLflow model of this project is: the exported weights file plus a pyfunc loader, no pickled code.

A task model (``model.pt``, :mod:`pipeline.task.export`) or the generator (``generator.pt``,
:mod:`pipeline.gan.export`) is logged by :meth:`pipeline.tracking.Tracker.log_model` as an MLflow
*models-from-code* pyfunc:

* the weights file itself as the model's one artifact: state dict + build config + meta, which
  ``torch.load(weights_only=True)`` reads without running pickled code, like every model file here;
* :data:`LOADER` (``mlflow_pyfunc.py``), the code MLflow runs on ``mlflow.pyfunc.load_model``: it
  rebuilds the network with the installed ``sim2real`` package, so the model directory holds no
  ``python_model.pkl`` and no pickled ``nn.Module``;
* requirements pinned to the versions that logged it (:func:`requirements`), a signature (a float32
  batch ``(-1, C, H, W)`` in; logits ``(-1, K)``, translated images, or one row per detection out) and
  an input example in the pipeline's value range [-1, 1] (:func:`pipeline.data.manifest.to_tensor`).

:func:`check_images` is the check the loaded model applies to every batch: a wrong shape or a value
outside [-1, 1] (uint8 pixels, a [0, 1] tensor) is one :class:`ModelInputError` line, never logits.
Nothing here imports MLflow at import time: with tracking off a stage never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from pipeline.checkpoint import load_weights_only
from pipeline.cli import UserError
from pipeline.task.kinds import kind_of_meta

LOADER = Path(__file__).with_name("mlflow_pyfunc.py")
TASK_ARTIFACT = "task_model"        # the artifact key tells the loader which export it holds
GENERATOR_ARTIFACT = "generator"
VALUE_RANGE = (-1.0, 1.0)
PINNED = ("torch", "torchvision", "timm", "sim2real")
EXAMPLE_BATCH = 2
#: One row per detection: the image's index in the batch, the class (index and name), score and the
#: box in pixels (xyxy), as :func:`pipeline.detection.models.predict` gives them.
DETECTION_COLUMNS = (("image", "long"), ("label", "long"), ("class", "string"), ("score", "float"),
                     ("x1", "float"), ("y1", "float"), ("x2", "float"), ("y2", "float"))


class ModelInputError(ValueError):
    """A batch a logged model refuses; the message says what was expected and what came."""


@dataclass(frozen=True)
class ModelSpec:
    """How to log one exported file: which loader rebuilds it, the input it takes, the output it gives.

    ``output`` is ``logits`` (``out_channels`` = K classes), ``image`` (``out_channels`` channels,
    the generator) or ``detections`` (a table, :data:`DETECTION_COLUMNS`).
    """

    file: Path
    artifact: str
    channels: int
    image_size: int
    output: str
    out_channels: int = 0

    @property
    def loader(self) -> Path:
        return LOADER

    def artifacts(self) -> dict[str, str]:
        return {self.artifact: str(self.file)}

    def input_shape(self) -> tuple[int, int, int, int]:
        return (-1, self.channels, self.image_size, self.image_size)

    def signature(self):
        """The MLflow signature: MLflow itself refuses a batch of another shape or dtype."""
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema, TensorSpec

        inputs = Schema([TensorSpec(np.dtype(np.float32), self.input_shape())])   # unnamed: predict gets the array
        if self.output == "detections":
            outputs = Schema([ColSpec(kind, name) for name, kind in DETECTION_COLUMNS])
        elif self.output == "logits":
            outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, self.out_channels), "logits")])
        else:
            shape = (-1, self.out_channels, self.image_size, self.image_size)
            outputs = Schema([TensorSpec(np.dtype(np.float32), shape, "images")])
        return ModelSignature(inputs=inputs, outputs=outputs)

    def input_example(self) -> np.ndarray:
        """:data:`EXAMPLE_BATCH` images in [-1, 1], on a grid of 0.5 so the JSON copy stays short."""
        rng = np.random.default_rng(0)
        shape = (EXAMPLE_BATCH, self.channels, self.image_size, self.image_size)
        return (rng.integers(-2, 3, size=shape) / 2).astype(np.float32)

    def requirements(self) -> list[str]:
        return requirements()


def task_model_spec(path: str | Path, meta: Mapping[str, Any]) -> ModelSpec:
    """The spec of a task model exported to ``path`` with ``meta`` (:func:`pipeline.task.export.save_task_model`)."""
    kind = kind_of_meta(meta)
    return ModelSpec(Path(path), TASK_ARTIFACT, int(meta["channels"]), int(meta["image_size"]),
                     kind.served_output, kind.served_width(meta))


def generator_spec(path: str | Path) -> ModelSpec:
    """The spec of the generator exported to ``path`` (:func:`pipeline.gan.export.export_generator`);
    reads the file (weights only) for its channels and size."""
    blob = load_weights_only(path)
    config, meta = blob["config"], blob["meta"]
    return ModelSpec(Path(path), GENERATOR_ARTIFACT, int(config["in_channels"]), int(meta["image_size"]),
                     "image", int(config["out_channels"]))


def requirements() -> list[str]:
    """:data:`PINNED` at the versions installed here (local builds such as ``+cu130`` dropped): the
    loader runs this package's code, so the model is served with the code and libraries that logged it."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in PINNED:
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            raise UserError(f"{package}: not installed as a package; a logged MLflow model pins it "
                            f"(install the project with `pip install -e .`)") from None
    return pins


def check_images(batch: Any, channels: int, image_size: int) -> torch.Tensor:
    """``batch`` as a float32 tensor after checking it is ``(N, channels, image_size, image_size)``,
    floating point, finite and in [-1, 1]; else one :class:`ModelInputError` line saying so."""
    array = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
    expected = (f"expected a float32 batch (N, {channels}, {image_size}, {image_size}) with values in [-1, 1] "
                f"(images as pipeline.data.manifest.to_tensor makes them: uint8 / 127.5 - 1)")
    if array.ndim != 4 or array.shape[1:] != (channels, image_size, image_size):
        raise ModelInputError(f"model input: {expected}, got shape {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ModelInputError(f"model input: {expected}, got dtype {array.dtype}")
    if array.size and not np.isfinite(array).all():
        raise ModelInputError(f"model input: {expected}, got NaN or infinite values")
    low, high = (float(array.min()), float(array.max())) if array.size else VALUE_RANGE
    if low < VALUE_RANGE[0] or high > VALUE_RANGE[1]:
        raise ModelInputError(f"model input: {expected}, got values in [{low:.4g}, {high:.4g}]")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
