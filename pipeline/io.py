"""Crash-safe writing: files and whole folders appear complete or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")
    os.replace(tmp, path)


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def remove_leftovers(final: str | Path) -> list[Path]:
    """Delete the ``.<name>.tmp-*`` and ``.<name>.old`` siblings of ``final`` that a killed
    :func:`atomic_directory` left behind; returns what was removed."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    stale = [p for p in final.parent.iterdir()
             if p.name.startswith(f".{final.name}.tmp-") or p.name == f".{final.name}.old"]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final``, on error it is removed.

    An interrupted or failed run therefore leaves ``final`` as it was (or absent), never half-written.
    A run killed outright (``kill -9``) cannot clean up after itself: the temporary and ``.old``
    siblings it left are removed by the next call for the same ``final`` (stages never run in parallel).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_table(path: str | Path, rows: list[dict[str, Any]], first: str = "epoch") -> None:
    """CSV with one row per dict, column ``first`` leading (the x axis of ``dvc plots``), then every
    other key in the order first seen; missing values are left empty."""
    import csv
    import io

    columns = [first] + list(dict.fromkeys(k for row in rows for k in row if k != first))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def save_png(image: np.ndarray, path: str | Path) -> None:
    """``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` uint8 -> PNG, atomically."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(arr).save(tmp, format="PNG")
    os.replace(tmp, path)


def image_grid(rows: list[np.ndarray], pad: int = 2, scale: int = 1) -> np.ndarray:
    """Stack rows of ``(N, H, W, C)`` uint8 images into one grid image (RGB when any row has 3 channels)."""
    channels = max(r.shape[-1] for r in rows)
    n = max(len(r) for r in rows)
    h, w = rows[0].shape[1:3]
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, channels), 128, np.uint8)
    for i, row in enumerate(rows):
        if row.shape[-1] != channels:
            row = np.repeat(row, channels, axis=-1)
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y:y + h, x:x + w] = img
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid
