"""The exported task model: one file that rebuilds the network with nothing else.

``model.pt`` = ``{"config": build config, "state_dict": weights, "meta": {classes, image_size,
channels, variant, ...}}``, loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.checkpoint import CheckpointError, load_weights_only, save_atomic
from pipeline.config import Params
from pipeline.task.kinds import LEGACY_KIND, kind_of_config

MODEL_FILE = "model.pt"


def save_task_model(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_atomic({"config": dict(model.sim2real_config), "state_dict": state, "meta": meta}, path)


def load_task_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the exported model in eval mode on ``device``; returns ``(model, meta)``."""
    blob = load_weights_only(path)
    if not isinstance(blob, dict) or not {"config", "state_dict", "meta"} <= set(blob):
        raise CheckpointError(f"{path}: not an exported sim2real task model (expected config, state_dict, meta)")
    model = kind_of_config(blob["config"]).from_config(blob["config"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval(), blob["meta"]


def check_model_matches(meta: dict[str, Any], params: Params, path: Path,
                        hint: str = "retrain it (dvc repro)") -> None:
    """The model must speak the configured classes, input shape and task kind, else its numbers mean
    nothing: a :class:`CheckpointError` names the file and the params.yaml key, then ``hint`` (what to run)."""
    expected = {"classes": list(params.data.classes), "channels": params.data.channels,
                "image_size": params.data.image_size, "kind": params.task.kind}
    for key, want in expected.items():
        have = meta.get(key, LEGACY_KIND if key == "kind" else None)   # older exports are classifiers
        if key == "classes" and have is not None:
            have = list(have)
        if have != want:
            section = "task" if key == "kind" else "data"
            raise CheckpointError(f"{path}: model was trained with {key}={have!r} but params.yaml has "
                                  f"{section}.{key}={want!r}; {hint}")
