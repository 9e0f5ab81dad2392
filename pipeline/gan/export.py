"""The exported generator: one file that translates synthetic images with nothing else.

``generator.pt`` = ``{"config": ResnetGenerator config, "state_dict": CPU weights, "meta": {...}}``,
loaded with ``torch.load(weights_only=True)``. ``meta`` holds what a user of the file needs to feed
it: ``image_size``, ``channels``, ``classes`` and ``value_range`` (inputs and outputs in [-1, 1]),
plus where it came from (``params_hash``, ``fingerprint``, ``task_model_sha256``, ``epochs``).
:func:`open_generator` loads it for users and says in one line what a wrong file is instead (a
task model, a training checkpoint, a bare state dict, not a torch file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from pipeline.checkpoint import CheckpointError, load_weights_only, save_atomic
from pipeline.gan.networks import ResnetGenerator
from pipeline.messages import key_list, plural, printable

GENERATOR_FILE = "generator.pt"
REQUIRED_META = ("image_size", "channels", "classes")
GENERATOR_KEYS = ("config", "state_dict", "meta")
TASK_MODEL_CONFIG_KEYS = {"name", "num_classes"}  # what pipeline.task.export writes and a generator lacks
EXPECTED_GENERATOR = (f"expected a generator exported by train_gan (models/gan/generator.pt): a torch file with keys "
                      f"{', '.join(GENERATOR_KEYS)}, its meta holding {', '.join(REQUIRED_META)}")




def export_generator(path: str | Path, generator: nn.Module, meta: dict[str, Any]) -> None:
    """Write ``generator`` (a plain, unwrapped :class:`ResnetGenerator`) and ``meta`` atomically."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"export_generator: meta lacks {missing}")
    state = {k: v.detach().cpu().clone() for k, v in generator.state_dict().items()}
    save_atomic({"config": dict(generator.config), "state_dict": state, "meta": dict(meta)}, path)


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[ResnetGenerator, dict[str, Any]]:
    """Rebuild the exported generator in eval mode on ``device``; returns ``(generator, meta)``."""
    return _rebuild(path, load_weights_only(path), device)


def _rebuild(path: str | Path, blob: Any, device: str | torch.device) -> tuple[ResnetGenerator, dict[str, Any]]:
    """The generator and meta held by ``blob``, the loaded contents of ``path``."""
    if not isinstance(blob, dict) or not set(GENERATOR_KEYS) <= set(blob):
        raise CheckpointError(f"{path}: not an exported sim2real generator (expected config, state_dict, meta)")
    missing = [k for k in REQUIRED_META if k not in blob["meta"]]
    if missing:
        raise CheckpointError(f"{path}: generator meta lacks {missing}")
    generator = ResnetGenerator.from_config(blob["config"])
    generator.load_state_dict(blob["state_dict"])
    return generator.to(device).eval(), blob["meta"]


def open_generator(path: str | Path, device: torch.device) -> tuple[ResnetGenerator, dict[str, Any]]:
    """:func:`load_generator` (reading the file once), but a file that is not an exported generator is
    one :class:`CheckpointError` line saying what the file is and what was expected."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a file; {EXPECTED_GENERATOR}")
    try:
        blob = load_weights_only(path)
    except CheckpointError as exc:  # missing, unreadable, or refused: keep its reason, say what is expected
        reason = str(exc).removeprefix(f"{path}: ").rsplit("; expected ", 1)[0]
        raise CheckpointError(f"{path}: {reason}; {EXPECTED_GENERATOR}") from None
    problem = blob_problem(blob)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}; {EXPECTED_GENERATOR}")
    try:
        return _rebuild(path, blob, device)
    except CheckpointError:
        raise
    except (TypeError, KeyError, ValueError, RuntimeError) as exc:  # config or weights that do not fit
        reason = printable(str(exc).strip().splitlines()[0] if str(exc).strip() else "", 160)
        raise CheckpointError(f"{path}: its config and weights do not rebuild a ResnetGenerator "
                              f"({type(exc).__name__}: {reason}); {EXPECTED_GENERATOR}") from None


def blob_problem(blob: Any) -> Optional[str]:
    """What a loaded torch file holds when it is not an exported generator; None when it looks like one."""
    if not isinstance(blob, dict):
        return f"holds a {type(blob).__name__}, not a dict"
    keys = key_list(blob)
    if {"fingerprint", "rng"} <= set(blob):
        return f"looks like a training checkpoint to resume from, not an exported model (keys: {keys})"
    if blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        return f"looks like a bare state_dict ({plural(len(blob), 'tensor')}) without config and meta (keys: {keys})"
    missing = [k for k in GENERATOR_KEYS if k not in blob]
    if missing:
        return f"is a dict without {', '.join(missing)} (keys: {keys})"
    config, meta = blob["config"], blob["meta"]
    if not isinstance(config, dict) or not isinstance(meta, dict):
        return f"has a config or meta that is not a dict ({type(config).__name__}, {type(meta).__name__})"
    if TASK_MODEL_CONFIG_KEYS & set(config) or "variant" in meta:
        variant = f"; meta variant: {printable(meta['variant'])}" if "variant" in meta else ""
        return f"looks like a task model checkpoint (keys: {keys}; config keys: {key_list(config)}{variant})"
    lacking = [k for k in REQUIRED_META if k not in meta]
    if lacking:
        return f"is an export whose meta lacks {', '.join(lacking)} (meta keys: {key_list(meta)})"
    sizes = {k: meta[k] for k in ("image_size", "channels")}
    if not all(type(v) is int and v > 0 for v in sizes.values()):
        return f"has a meta whose image_size and channels are not positive integers ({printable(sizes)})"
    return None
