"""Crash-safe writing: files and whole folders appear complete or not at all."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

#: The errors that mean "no room left to write": the disk is full, or the user's quota is spent.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(OSError):
    """A write failed for want of space; the message names the file or folder that could not be written
    and says what was kept. Still an :class:`OSError` (with the original ``errno``) for callers that
    catch those; the stages report it as one line."""

    def __str__(self) -> str:
        return str(self.strerror)


def disk_full_message(final: Path, exc: OSError, existed: bool) -> str:
    """One line for a write of ``final`` that ran out of space: what, why, and what is left."""
    reason = exc.strerror or os.strerror(exc.errno or errno.ENOSPC)
    kept = "the previous version is kept unchanged" if existed else "nothing was written"
    return (f"{final}: cannot write it: the disk is full or the quota is spent ({reason}); {kept}; "
            f"free some space and run again")


@contextlib.contextmanager
def disk_full_names(final: Path) -> Iterator[None]:
    """Turn a disk-full :class:`OSError` raised inside the block into a :class:`DiskFullError` naming
    ``final``. Nested writes each rename it, so the outermost (the file or folder the user asked for)
    is the one named, not a temporary file inside it."""
    existed = final.exists()
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        raise DiskFullError(exc.errno, disk_full_message(final, exc, existed)) from exc


def temporary_name(path: Path) -> Path:
    """``.<name>.tmp`` beside ``path``: where :func:`atomic_file` writes before the rename."""
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", **open_args: Any) -> Iterator[IO]:
    """Yield the open temporary file ``.<name>.tmp``; when the block ends normally it is renamed over
    ``path``, so readers see the old file or the new one, never a part.

    On any failure (the writer raising, a full disk, the rename itself failing) the temporary file is
    removed and ``path`` keeps its previous content; a full disk becomes a :class:`DiskFullError`
    naming ``path``. ``mode`` is a writing mode of :func:`open` (``"w"`` or ``"wb"``).
    """
    path = Path(path)
    tmp = temporary_name(path)
    with disk_full_names(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, mode, **open_args) as fh:
                yield fh
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):  # the original error is the one to report
                tmp.unlink(missing_ok=True)
            raise


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
    """Write JSON atomically (:func:`atomic_file`); data that cannot be serialised leaves ``path`` as it was."""
    with atomic_file(path) as fh:
        fh.write(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as fh:
        fh.write(text)


def remove_leftovers(final: str | Path) -> list[Path]:
    """Delete the ``.<name>.tmp-*`` and ``.<name>.old`` siblings of ``final`` that a killed
    :func:`atomic_directory` left behind, and the ``.<name>.tmp`` of a killed :func:`atomic_file`;
    returns what was removed."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    leftovers = (f".{final.name}.old", temporary_name(final).name)
    stale = [p for p in final.parent.iterdir()
             if p.name.startswith(f".{final.name}.tmp-") or p.name in leftovers]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final``, on error it is removed.

    An interrupted or failed run therefore leaves ``final`` as it was (or absent), never half-written;
    that holds when the final rename fails too (the previous ``final`` is put back). A full disk, in
    the block or in the rename, becomes a :class:`DiskFullError` naming ``final``.
    A run killed outright (``kill -9``) cannot clean up after itself: the temporary and ``.old``
    siblings it left are removed by the next call for the same ``final`` (stages never run in parallel).
    """
    final = Path(final)
    with disk_full_names(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
            yield tmp
            _swap_in(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already when the swap succeeded


def _swap_in(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` to ``final``, the previous ``final`` going through ``.<name>.old``;
    when the rename fails the previous ``final`` is put back before the error goes on."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    existed = final.exists()
    if existed:
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if existed:
            os.replace(old, final)
        raise
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

    arr = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
    with atomic_file(path, "wb") as fh:
        Image.fromarray(arr).save(fh, format="PNG")


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
