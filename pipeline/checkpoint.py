"""Full-state, atomic, resumable checkpoints.

A checkpoint holds everything needed to continue exactly: networks, optimisers, schedulers, any
extra state (an image pool), the RNG states, epoch and step, plus the fingerprint of the params that
produced it. Files are written to a temporary name and renamed, and loaded with
``torch.load(weights_only=True)``, so only tensors and plain containers are stored.
A checkpoint made with other params is never silently reused: it is moved aside to
``stale-<fingerprint>.pt`` with a warning. Only the :data:`KEEP_STALE` most recently moved aside are
kept in a folder; older ones are deleted, and the log names each file deleted.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from pipeline.io import atomic_file
from pipeline.reproducibility import rng_state, set_rng_state

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
STALE_PATTERN = "stale-*.pt"
KEEP_STALE = 3   # checkpoints of other params kept beside last.pt (the most recently moved aside)


class CheckpointError(ValueError):
    """An unreadable or incompatible checkpoint; the message names the file."""


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file, fsync, then rename over ``path`` (:func:`pipeline.io.atomic_file`):
    a failed save leaves no temporary file and the previous ``path`` intact."""
    with atomic_file(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


# What torch's weights-only unpickler says when a pickle asks for something beyond tensors and plain
# containers (a class, a function to call); the first group, when present, names the global.
_UNSAFE_PICKLE = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)|unrecognized function|"
                            r"Can only create new object|Can only build")


def _reason(exc: BaseException, limit: int = 160) -> str:
    """One short line saying why torch could not read a file (torch's own texts run over many lines).

    For torch's weights-only refusals the unpickler's own paragraph is kept ("Unsupported operand
    149"), not the advice around it; otherwise the first sentence of the first line.
    """
    text = str(exc).strip()
    if isinstance(exc, EOFError):
        return "the file ends early"
    if text.startswith("Weights only load failed"):
        inner = [part.strip() for part in text.split("\n\n")[1:]
                 if part.strip() and not part.strip().startswith("Check the documentation")]
        text = inner[0] if inner else text
    first = text.splitlines()[0].split(". ")[0].rstrip(".") if text else "no details"
    return first if len(first) <= limit else first[:limit - 3] + "..."


def unsafe_pickle_refusal(path: Path, exc: BaseException) -> str | None:
    """The one-line refusal when ``exc`` is torch refusing a pickled object that is not data, else None."""
    if not isinstance(exc, pickle.UnpicklingError):
        return None
    found = _UNSAFE_PICKLE.search(str(exc))
    if found is None:
        return None
    what = f" ({found.group(1)})" if found.group(1) else ""
    return (f"{path}: refused to load: the file holds pickled Python objects other than tensors and plain "
            f"containers{what}, which could run code when loaded; expected a sim2real checkpoint or model "
            f"written by this pipeline")


def unreadable_refusal(path: Path, exc: BaseException) -> str:
    """The one-line message for a file torch cannot read: truncated, corrupt, or not a torch file."""
    return (f"{path}: not a readable sim2real checkpoint: the file is truncated, corrupt or not written by "
            f"torch.save ({exc.__class__.__name__}: {_reason(exc)}); expected a checkpoint or model written by "
            f"this pipeline")


def load_weights_only(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a file written by :func:`save_atomic`: tensors and plain containers, nothing that runs code.

    Every file a user passes (checkpoints, task models, generators) is read through here. A pickle
    that would import or call anything else is refused with one line saying so; a truncated or
    corrupt file gets another. Both raise :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():  # torch's advice on foreign pickle protocols; the refusal says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        message = unsafe_pickle_refusal(path, exc) or unreadable_refusal(path, exc)
        raise CheckpointError(message) from None


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
            self._move_aside(state.get("fingerprint") if isinstance(state, dict) else None)
            return None
        set_rng_state(state["rng"])
        log.info("resuming from %s (epoch %s)", self.path, state.get("epoch"))
        return state

    def _move_aside(self, fingerprint: str | None) -> Path:
        """Rename ``last.pt`` (made with params ``fingerprint``) to ``stale-<fingerprint>.pt``, then prune
        the folder to the :data:`KEEP_STALE` most recently moved aside."""
        stale = self.path.with_name(f"stale-{fingerprint or 'unknown'}.pt")
        os.replace(self.path, stale)
        os.utime(stale)   # its age is now when it was moved aside, which the pruning goes by
        log.warning("%s was made with other params (fingerprint %s, now %s); moved to %s and starting afresh",
                    self.path, fingerprint, self.fingerprint, stale.name)
        prune_stale(self.folder)
        return stale


def prune_stale(folder: str | Path, keep: int = KEEP_STALE) -> list[Path]:
    """Delete all but the ``keep`` newest (by modification time) ``stale-*.pt`` of ``folder``, so
    checkpoints of abandoned params do not pile up without limit; logs and returns what was deleted."""
    stale = sorted(Path(folder).glob(STALE_PATTERN), key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
    removed = stale[keep:]
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        log.warning("removed %d older checkpoint(s) of other params from %s (the newest %d are kept): %s",
                    len(removed), folder, keep, ", ".join(p.name for p in removed))
    return removed
