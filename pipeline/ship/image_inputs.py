"""The images ``sim2real export`` checks with and ``sim2real predict`` reads, decoded as prepare does.

A source is one of:

* a folder holding ``manifest.csv`` (a prepared split): its images in the manifest's order;
* any other folder: every image file below it (recursively, sorted, hidden files and folders skipped);
* a manifest CSV file ``path[,label]``: its images in order, paths relative to the CSV;
* one image file.

Labels are never read (manifests are opened with ``labels=False``), so a held-out test split opens
like any folder. Each image is decoded by :func:`pipeline.data.images.load_image` to the model's
channels and size (EXIF orientation, alpha on black, grey or RGB, bilinear resize to a square) and
scaled by :func:`pipeline.data.manifest.to_tensor` to float32 in [-1, 1]: the tensor prepare's output
gives every stage, so a prepared split predicts exactly as the evaluate stage scored it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from pipeline.cli import UserError
from pipeline.data.images import IMAGE_EXTENSIONS, is_image_file, load_image
from pipeline.data.manifest import MANIFEST_NAME, read_manifest, to_tensor

EXPECTED_SOURCE = "expected a folder of images, a prepared split (with manifest.csv) or a manifest CSV (path[,label])"


def image_files(source: str | Path) -> tuple[list[Path], Path]:
    """The image files of ``source`` in order and the folder their names are relative to; a missing
    source or one without images is a one-line :class:`~pipeline.cli.UserError` naming it."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return _manifest_files(source), source.parent
    if source.is_file() and is_image_file(source):
        return [source], source.parent
    if not source.exists():
        raise UserError(f"{source}: not found; {EXPECTED_SOURCE}")
    if not source.is_dir():
        raise UserError(f"{source}: not an image file (one of {', '.join(IMAGE_EXTENSIONS)}); {EXPECTED_SOURCE}")
    if (source / MANIFEST_NAME).is_file():
        return _manifest_files(source / MANIFEST_NAME), source
    files = sorted(p for p in source.rglob("*") if p.is_file() and is_image_file(p)
                   and not any(part.startswith(".") for part in p.relative_to(source).parts))
    if not files:
        raise UserError(f"{source}: holds no image files ({', '.join(IMAGE_EXTENSIONS)}), in it or below it; "
                        f"{EXPECTED_SOURCE}")
    return files, source


def _manifest_files(csv_path: Path) -> list[Path]:
    """The images a manifest lists, its label column unread (a held-out split's manifest opens too)."""
    return [entry.path for entry in read_manifest(csv_path, (), labels=False)]


class ImageFiles(Dataset):
    """``(image tensor (C, H, W) in [-1, 1], index)`` for each file of a source (:func:`image_files`)."""

    def __init__(self, source: str | Path, channels: int, size: int, limit: int | None = None):
        files, self.root = image_files(source)
        self.files = files[:limit] if limit is not None else files
        self.source, self.channels, self.size = Path(source), channels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return to_tensor(load_image(self.files[i], self.channels, self.size)), i

    def name(self, i: int) -> str:
        """The ``i``-th file's path relative to the source's folder (its absolute path when outside it)."""
        path, root = self.files[i].resolve(), self.root.resolve()
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)

    def batch(self) -> torch.Tensor:
        """Every image, stacked ``(N, C, H, W)`` (for the export check's few images)."""
        return torch.stack([self[i][0] for i in range(len(self))])
