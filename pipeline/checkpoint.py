"""Full-state, atomic, resumable checkpoints.

A checkpoint holds everything needed to continue exactly: networks, optimisers, schedulers, any
extra state (an image pool), the RNG states, epoch and step, plus the fingerprint of the params that
produced it. Files are written to a temporary name and renamed, and loaded with
``torch.load(weights_only=True)``, so only tensors and plain containers are stored.
A checkpoint made with other params is never silently reused: it is moved aside with a warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from pipeline.reproducibility import rng_state, set_rng_state

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"


class CheckpointError(ValueError):
    """An unreadable or incompatible checkpoint; the message names the file."""


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_weights_only(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CheckpointError(f"{path}: not a readable sim2real checkpoint ({exc.__class__.__name__}: {exc})") from None


class Checkpointer:
    """Keeps ``<folder>/last.pt`` for one training run identified by ``fingerprint``."""

    def __init__(self, folder: str | Path, fingerprint: str):
        self.folder, self.fingerprint = Path(folder), fingerprint
        self.path = self.folder / CHECKPOINT_NAME

    def save(self, state: dict[str, Any]) -> None:
        save_atomic({**state, "fingerprint": self.fingerprint, "rng": rng_state()}, self.path)

    def resume(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The last state of this run (RNG restored), or None when there is none to reuse."""
        if not self.path.exists():
            return None
        state = load_weights_only(self.path, map_location)
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            stale = self.path.with_name(f"stale-{state.get('fingerprint', 'unknown') if isinstance(state, dict) else 'unknown'}.pt")
            os.replace(self.path, stale)
            log.warning("%s was made with other params (fingerprint %s, now %s); moved to %s and starting afresh",
                        self.path, state.get("fingerprint") if isinstance(state, dict) else None,
                        self.fingerprint, stale.name)
            return None
        set_rng_state(state["rng"])
        log.info("resuming from %s (epoch %s)", self.path, state.get("epoch"))
        return state
