"""What ``sim2real export`` and ``predict`` ship: an exported task model or generator, opened whole.

:func:`open_task_model` reads ``models/task/<variant>/model.pt`` (:func:`pipeline.task.export.load_task_model`)
and :func:`open_generator_model` ``models/gan/generator.pt`` (:func:`pipeline.gan.export.open_generator`);
a file that is not one (missing, a folder, the other kind of export, a checkpoint) is one
:class:`~pipeline.checkpoint.CheckpointError` line naming it and saying what was expected. The task
kind says what an exported file runs (:meth:`~pipeline.task.kind.TaskKind.shipped_module`) and
returns; the generator's module is the generator itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from pipeline.checkpoint import CheckpointError, load_weights_only
from pipeline.gan.export import blob_problem, open_generator
from pipeline.messages import printable
from pipeline.task.export import load_task_model
from pipeline.task.kind import TaskKind
from pipeline.task.kinds import kind_of_meta

EXPECTED_TASK_MODEL = ("expected a task model exported by train_task (models/task/<variant>/model.pt): a torch file "
                       "with keys config, state_dict, meta, its meta holding classes, image_size, channels")
REQUIRED_META = ("classes", "image_size", "channels")


@dataclass
class Shippable:
    """A loaded model (eval mode) and what its exported files are: their names, input and outputs."""

    name: str                      # stem of the exported files: "model" or "generator"
    source: Path                   # the .pt file it was loaded from
    model: nn.Module               # the network as the pipeline runs it
    module: nn.Module              # what an exported file runs (a batch, or one image when per_image)
    meta: dict[str, Any]
    outputs: list[dict[str, Any]]  # the module's outputs in order: name, shape, dtype, meaning
    per_image: bool                # the module takes one image (C, H, W), not a batch (N, C, H, W), and
                                   # returns rows (detections) whose order among tied scores is arbitrary
    kind: Optional[TaskKind]       # None for the generator

    @property
    def channels(self) -> int:
        return int(self.meta["channels"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def what(self) -> str:
        """``classification``, ``detection`` or ``generator``."""
        return self.kind.name if self.kind is not None else "generator"


def open_task_model(path: str | Path, device: torch.device | str = "cpu") -> Shippable:
    """The task model exported at ``path``, on ``device``, or a one-line :class:`CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a file; {EXPECTED_TASK_MODEL}")
    blob = _load(path, EXPECTED_TASK_MODEL)
    if blob_problem(blob) is None:
        raise CheckpointError(f"{path}: is an exported generator, not a task model (export it with --generator); "
                              f"{EXPECTED_TASK_MODEL}")
    if not isinstance(blob, dict) or not isinstance(blob.get("meta"), dict) \
            or any(k not in blob["meta"] for k in REQUIRED_META):
        keys = sorted(map(str, blob)) if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(f"{path}: not an exported task model (found {printable(keys, 120)}); "
                              f"{EXPECTED_TASK_MODEL}")
    try:
        model, meta = load_task_model(path, device)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {EXPECTED_TASK_MODEL}") from None
    except (TypeError, KeyError, ValueError, RuntimeError) as exc:  # config and weights that do not fit
        reason = printable(str(exc).strip().splitlines()[0] if str(exc).strip() else "", 160)
        raise CheckpointError(f"{path}: its config and weights do not rebuild a task model "
                              f"({type(exc).__name__}: {reason}); {EXPECTED_TASK_MODEL}") from None
    kind = kind_of_meta(meta)
    return Shippable("model", path, model, kind.shipped_module(model).eval(), meta, kind.shipped_outputs(meta),
                     kind.ships_per_image, kind)


def open_generator_model(path: str | Path, device: torch.device | str = "cpu") -> Shippable:
    """The generator exported at ``path`` (:func:`pipeline.gan.export.open_generator`'s one-line errors)."""
    path = Path(path)
    generator, meta = open_generator(path, torch.device(device))
    channels, size = int(generator.config["out_channels"]), int(meta["image_size"])
    outputs = [{"name": "images", "shape": ["batch", channels, size, size], "dtype": "float32",
                "meaning": "the translated images in [-1, 1] (tanh); as uint8 pixels: round((y + 1) * 127.5), "
                           "clipped to 0..255 (pipeline/data/manifest.py:to_uint8)"}]
    return Shippable("generator", path, generator, generator, dict(meta), outputs, False, None)


def _load(path: Path, expected: str) -> Any:
    """``path`` loaded weights-only; a missing, unreadable or refused file names what was expected."""
    try:
        return load_weights_only(path)
    except CheckpointError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise CheckpointError(f"{path}: {reason}; {expected}") from None
