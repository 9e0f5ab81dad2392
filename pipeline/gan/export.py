"""The exported generator: one file that translates synthetic images with nothing else.

``generator.pt`` = ``{"config": ResnetGenerator config, "state_dict": CPU weights, "meta": {...}}``,
loaded with ``torch.load(weights_only=True)``. ``meta`` holds what a user of the file needs to feed
it: ``image_size``, ``channels``, ``classes`` and ``value_range`` (inputs and outputs in [-1, 1]),
plus where it came from (``params_hash``, ``fingerprint``, ``task_model_sha256``, ``epochs``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.checkpoint import CheckpointError, load_weights_only, save_atomic
from pipeline.gan.networks import ResnetGenerator

GENERATOR_FILE = "generator.pt"
REQUIRED_META = ("image_size", "channels", "classes")


def export_generator(path: str | Path, generator: nn.Module, meta: dict[str, Any]) -> None:
    """Write ``generator`` (a plain, unwrapped :class:`ResnetGenerator`) and ``meta`` atomically."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"export_generator: meta lacks {missing}")
    state = {k: v.detach().cpu().clone() for k, v in generator.state_dict().items()}
    save_atomic({"config": dict(generator.config), "state_dict": state, "meta": dict(meta)}, path)


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[ResnetGenerator, dict[str, Any]]:
    """Rebuild the exported generator in eval mode on ``device``; returns ``(generator, meta)``."""
    blob = load_weights_only(path)
    if not isinstance(blob, dict) or not {"config", "state_dict", "meta"} <= set(blob):
        raise CheckpointError(f"{path}: not an exported sim2real generator (expected config, state_dict, meta)")
    missing = [k for k in REQUIRED_META if k not in blob["meta"]]
    if missing:
        raise CheckpointError(f"{path}: generator meta lacks {missing}")
    generator = ResnetGenerator.from_config(blob["config"])
    generator.load_state_dict(blob["state_dict"])
    return generator.to(device).eval(), blob["meta"]
