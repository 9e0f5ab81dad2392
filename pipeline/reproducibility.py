"""Seeds, random-generator states and content hashes: what makes a run repeatable and identifiable."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def derive_seed(*parts: Any) -> int:
    """An independent 63-bit seed for any tuple of plain values, e.g. ``(seed, "pool_real", rank)``."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seeded_generator(*parts: Any) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``parts``."""
    generator = torch.Generator()
    generator.manual_seed(derive_seed(*parts))
    return generator


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states as ``weights_only``-loadable values."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_digest(roots: Iterable[str | Path], pattern: str = "*") -> str:
    """sha256 over every file matching ``pattern`` under ``roots``: its name relative to its root and its bytes.

    Training checkpoints use it to tell whether their code and data changed since they were written.
    Reading the files once costs less than one training epoch, which reads them all too.
    """
    digest = hashlib.sha256()
    for i, root in enumerate(Path(r) for r in roots):
        for path in sorted(p for p in root.rglob(pattern) if p.is_file() and "__pycache__" not in p.parts):
            digest.update(f"{i}:{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


#: The packages of this project; a training checkpoint is valid only for the code they hold.
CODE_PACKAGES = ("pipeline", "stages")


def code_roots() -> list[Path]:
    """The folders of :data:`CODE_PACKAGES`, wherever they are imported from (a checkout or a copy)."""
    import importlib.util

    return [Path(importlib.util.find_spec(name).origin).parent for name in CODE_PACKAGES]


def code_files() -> list[Path]:
    """Every Python source file a stage can import from this project (what :func:`code_digest` hashes)."""
    return sorted(p for root in code_roots() for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def code_digest() -> str:
    """Hash of every Python file of the project's packages.

    Training checkpoints are keyed by it, so a change anywhere in the code a stage imports (the
    package is hashed whole, which covers lazy imports too) never resumes a state made by other code.
    """
    return content_digest(code_roots(), "*.py")
