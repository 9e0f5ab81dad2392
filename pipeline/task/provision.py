"""The frozen source-only task model T: the exported file when provided, else trained as train_task@source_only would.

The GAN's task, constancy and perceptual terms and its diagnostics read T.
:func:`ensure_task_model` gives the file to use (training the fallback when ``train_task@source_only``
has not run); :func:`load_frozen_task_model` loads it frozen, refusing a model whose classes, input
shape or task kind differ from params.yaml (:func:`pipeline.task.export.check_model_matches`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from pipeline.config import Params
from pipeline.distributed import Runtime, barrier
from pipeline.gan.losses import freeze
from pipeline.reproducibility import file_sha256
from pipeline.task.export import check_model_matches, load_task_model, save_task_model

log = logging.getLogger(__name__)

#: what to run when T is missing or does not fit params.yaml
TASK_MODEL_HINT = "run `dvc repro train_task@source_only` (or `python -m stages.train_task --variant source_only`) first"


def ensure_task_model(path: str | Path, params: Params, runtime: Runtime, fallback_dir: str | Path,
                      prepared: str | Path = "data/prepared") -> Path:
    """``path`` when it exists; else the source-only task model trained here, as
    ``train_task@source_only`` would train it (same params, same seed), kept in ``fallback_dir``.

    The fallback serves a standalone ``python -m stages.train_gan``; under DVC the file is a dependency.
    Training resumes from (or, when finished, just reloads) its own checkpoint in ``fallback_dir``;
    ``model.pt`` is rewritten only when the weights changed, so its hash, part of the GAN's
    checkpoint fingerprint, stays put across reruns.
    """
    # imported here: only the fallback trains, and the training loop is the heavy import
    from pipeline.task.train import train_task_model
    from pipeline.tracking import NullTracker

    path, fallback_dir = Path(path), Path(fallback_dir)
    if path.is_file():
        return path
    cached = fallback_dir / "model.pt"
    log.warning("%s is missing: using the source-only task model trained here (as `dvc repro "
                "train_task@source_only` would), in %s", path, cached)
    result = train_task_model(params, "source_only", runtime, NullTracker(), checkpoint_dir=fallback_dir,
                              reports_dir=fallback_dir, prepared=prepared, log=log)
    if runtime.is_main and not _same_weights(cached, result.model):
        save_task_model(cached, result.model, result.meta)
    barrier(runtime)
    return cached


def _same_weights(path: Path, model: nn.Module) -> bool:
    if not path.is_file():
        return False
    try:
        saved = load_task_model(path)[0].state_dict()
    except Exception:  # an unreadable file is simply rewritten
        return False
    current = model.state_dict()
    return saved.keys() == current.keys() and all(torch.equal(saved[k], current[k].cpu()) for k in saved)


def load_frozen_task_model(path: str | Path, params: Params, device: torch.device) -> tuple[nn.Module, str]:
    """The source-only task model T, frozen, and the SHA-256 of its file; checks it fits the data."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the frozen source-only task model is missing; the GAN's task loss "
                                f"and diagnostics need it: {TASK_MODEL_HINT}")
    model, meta = load_task_model(path, device)
    check_model_matches(meta, params, path, hint=TASK_MODEL_HINT)
    return freeze(model), file_sha256(path)
