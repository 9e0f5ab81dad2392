"""The on-disk contract: a folder of images plus ``manifest.csv`` with ``path,label``.

Paths are relative to the manifest; ``label`` is a class name from ``data.classes`` (empty for an
unlabelled image). A folder that holds a ``HELDOUT`` marker is a held-out test split: its labels are
read only through :func:`heldout_test_set`, which only the evaluate stage calls. The guard sits in
:func:`read_manifest` itself, and a manifest read without labels drops them (every entry has
``label=None``), so no other code path holds the test labels in memory.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.data.images import load_image

MANIFEST_NAME = "manifest.csv"
HELDOUT_MARKER = "HELDOUT"
#: One word saying where a split's labels come from: ``synthetic`` (rendered, the simulator's own),
#: ``real`` (real images labelled by people: using them to train is not unsupervised adaptation) or
#: ``none`` (no labels). prepare writes it into every split it makes; translate carries it over, and a
#: copy of the folder carries it along. A split without it has labels of unknown origin.
LABEL_ORIGIN_FILE = "LABEL_ORIGIN"
LABEL_ORIGINS = ("synthetic", "real", "none")


class ManifestError(ValueError):
    """A manifest that breaks the contract; the message names the file and the row."""


class HeldOutLabelsError(PermissionError):
    """Raised when code other than evaluation asks for the labels of a held-out test split."""


@dataclass(frozen=True)
class Entry:
    path: Path            # absolute path of the image
    label: Optional[int]  # class index, None when unlabelled


def read_manifest(csv_path: str | Path, classes: Sequence[str], require_labels: bool = False,
                  root: str | Path | None = None, labels: bool = True,
                  _allow_heldout: bool = False) -> list[Entry]:
    """Parse a ``path,label`` CSV; paths are relative to its folder and may not escape ``root``.

    ``labels=False`` does not read the label column: every entry has ``label=None``.
    ``require_labels`` makes an unlabelled row an error (it implies ``labels``). Asking for the labels
    of a held-out split (its folder holds ``HELDOUT``) raises :class:`HeldOutLabelsError`; only
    :func:`heldout_test_set` may read them.
    """
    csv_path = Path(csv_path)
    if require_labels and not labels:
        raise ValueError("read_manifest: require_labels=True needs labels=True")
    if labels and not _allow_heldout and (is_heldout(csv_path.parent) or is_heldout(csv_path.resolve().parent)):
        raise HeldOutLabelsError(
            f"{csv_path}: manifest of a held-out test split (its folder holds {HELDOUT_MARKER}); its labels are "
            f"read by the evaluate stage only; open it without labels")
    base = csv_path.parent.resolve()
    root = Path(root).resolve() if root is not None else base
    index = {name: i for i, name in enumerate(classes)}
    if not csv_path.is_file():
        raise ManifestError(f"{csv_path}: manifest not found")
    entries: list[Entry] = []
    # utf-8-sig: a spreadsheet's export starts with a byte-order mark; newline="" lets csv take CRLF too
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = _header(csv_path, reader)
        if "path" not in header:
            raise ManifestError(f"{csv_path}: expected a header with columns 'path,label', got {header}")
        for line, row in enumerate(_rows(csv_path, reader), start=2):
            rel = (row.get("path") or "").strip()
            if not rel:
                raise ManifestError(f"{csv_path}:{line}: empty path")
            full = (base / rel).resolve()
            if not full.is_relative_to(root):
                raise ManifestError(f"{csv_path}:{line}: path {rel!r} escapes the manifest's root {root}")
            name = (row.get("label") or "").strip() if labels else ""
            if not name:
                if require_labels:
                    raise ManifestError(f"{csv_path}:{line}: missing label for {rel!r}")
                entries.append(Entry(full, None))
                continue
            if name not in index:
                raise ManifestError(f"{csv_path}:{line}: label {name!r} is not in data.classes {list(classes)}")
            entries.append(Entry(full, index[name]))
    if not entries:
        raise ManifestError(f"{csv_path}: manifest lists no images")
    return entries


def _header(csv_path: Path, reader: csv.DictReader) -> list[str]:
    """The column names of ``reader`` with surrounding spaces stripped (``path, label`` as typed by hand
    is the same header), or a :class:`ManifestError` when the file is not UTF-8 text."""
    try:
        names = reader.fieldnames
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{csv_path}: not UTF-8 text ({exc}); save the CSV as UTF-8") from None
    reader.fieldnames = [name.strip() for name in names or []]
    return list(reader.fieldnames)


def _rows(csv_path: Path, reader: csv.DictReader) -> Iterator[dict]:
    """The rows of ``reader``; a line that is not UTF-8 text is a :class:`ManifestError` naming the file."""
    try:
        yield from reader
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{csv_path}: not UTF-8 text ({exc}); save the CSV as UTF-8") from None


def is_heldout(folder: str | Path) -> bool:
    """True when ``folder`` is a held-out test split (it holds the ``HELDOUT`` marker)."""
    return (Path(folder) / HELDOUT_MARKER).exists()


def write_label_origin(folder: str | Path, origin: str) -> Path:
    """Mark ``folder`` as a split whose labels are ``origin`` (one of :data:`LABEL_ORIGINS`)."""
    if origin not in LABEL_ORIGINS:
        raise ValueError(f"label origin: expected one of {', '.join(LABEL_ORIGINS)}, got {origin!r}")
    path = Path(folder) / LABEL_ORIGIN_FILE
    path.write_text(origin + "\n")
    return path


def label_origin(folder: str | Path) -> Optional[str]:
    """Where the labels of the split ``folder`` come from (:data:`LABEL_ORIGINS`), or None when the
    folder has no readable mark (not made by prepare or translate: unknown, so never assumed synthetic)."""
    path = Path(folder) / LABEL_ORIGIN_FILE
    try:
        word = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return word if word in LABEL_ORIGINS else None


def write_manifest(folder: str | Path, rows: Iterable[tuple[str, str]]) -> Path:
    """Write ``folder/manifest.csv`` from ``(relative path, class name or '')`` rows."""
    path = Path(folder) / MANIFEST_NAME
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


def manifest_rows(folder: str | Path) -> int:
    """The number of images ``folder/manifest.csv`` lists (0 when it has none or is missing), without
    reading a label: an optional split (``target/labelled``, ``target/pick``) may be empty."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return 0
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return max(0, sum(1 for row in csv.reader(fh) if row) - 1)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` uint8 -> ``(C, H, W)`` float in [-1, 1], the one convention of every network here;
    a batch ``(N, H, W, C)`` gives ``(N, C, H, W)``. A read-only input (a decoded cache) is copied
    rather than shared, which torch would warn about."""
    chw = np.require(np.moveaxis(image, -1, -3), requirements=("C_CONTIGUOUS", "WRITEABLE"))
    return torch.from_numpy(chw).float().div_(127.5).sub_(1.0)


def to_uint8(batch: torch.Tensor) -> np.ndarray:
    """``(N, C, H, W)`` in [-1, 1] -> ``(N, H, W, C)`` uint8."""
    arr = ((batch.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


class ImageSet(Dataset):
    """A prepared split: ``(image tensor, label)``, label -1 when unused.

    ``labels=False`` drops the labels when reading the manifest: every entry has ``label=None`` and
    every item -1 (the unlabelled use of a target split). Asking for the labels of a held-out split
    raises :class:`HeldOutLabelsError`; see :func:`heldout_test_set`.
    ``transform`` maps a ``(H, W, C)`` uint8 array to another (albumentations augmentations).
    Images are decoded from disk at each access, or once for all by :meth:`preload`.
    """

    def __init__(self, folder: str | Path, classes: Sequence[str], channels: int, size: int,
                 labels: bool = True, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 _allow_heldout: bool = False):
        self.folder = Path(folder)
        self.entries = read_manifest(self.folder / MANIFEST_NAME, classes, require_labels=labels, labels=labels,
                                     _allow_heldout=_allow_heldout)
        self.classes = list(classes)
        self.channels, self.size, self.labels, self.transform = channels, size, labels, transform
        self._decoded: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.entries)

    def nbytes(self) -> int:
        """Memory the decoded split takes: ``len * size * size * channels`` bytes of uint8."""
        return len(self) * self.size * self.size * self.channels

    def preload(self, max_bytes: int) -> bool:
        """Decode every image once into one uint8 array when it takes at most ``max_bytes``; returns
        whether it did (otherwise images keep streaming from disk, so memory stays bounded)."""
        if self._decoded is None and self.nbytes() <= max_bytes:
            self._decoded = np.stack([load_image(e.path, self.channels, self.size) for e in self.entries])
        return self._decoded is not None

    def image(self, i: int) -> np.ndarray:
        """The ``i``-th image as ``(H, W, C)`` uint8, not transformed."""
        if self._decoded is not None:
            return self._decoded[i]
        return load_image(self.entries[i].path, self.channels, self.size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.image(i)
        if self.transform is not None:
            image = self.transform(image)
        return to_tensor(image), self.label(i)

    def label(self, i: int) -> int:
        """The class index of item ``i``, -1 when unlabelled."""
        label = self.entries[i].label
        return label if label is not None else -1

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``indices`` stacked: ``(N, C, H, W)`` images and ``(N,)`` labels, what stacking
        ``self[i]`` gives. A preloaded split without a transform is sliced and converted in one go
        (no per-image work: the GAN's data path); otherwise item by item."""
        labels = torch.tensor([self.label(i) for i in indices])
        if self._decoded is None or self.transform is not None:
            return torch.stack([self[i][0] for i in indices]), labels
        return to_tensor(self._decoded[np.asarray(indices, dtype=np.int64)]), labels

    def targets(self) -> list[int]:
        if not self.labels:
            raise HeldOutLabelsError(f"{self.folder}: opened without labels")
        return [e.label for e in self.entries]


def preload_within(sets: Iterable[Optional[ImageSet]], max_bytes: int) -> None:
    """Decode the sets into memory in order, as long as together they fit ``max_bytes``; a set that
    does not fit streams from disk (``None`` entries are skipped)."""
    for images in sets:
        if images is not None and images.preload(max_bytes):
            max_bytes -= images.nbytes()


class Views(Dataset):
    """Several augmented views of each image of ``images``: item ``i`` is ``(V, C, H, W)`` and -1 (this
    is how methods see unlabelled real images), or with ``labelled`` the image's label (other views of
    a labelled batch).

    ``transforms`` maps a view name to its transform (None: the image as it is); the views come in
    that order.
    """

    def __init__(self, images: ImageSet, transforms: dict[str, Optional[Callable[[np.ndarray], np.ndarray]]],
                 labelled: bool = False):
        self.images, self.names, self.transforms = images, list(transforms), list(transforms.values())
        self.labelled = labelled

    @property
    def folder(self) -> Path:
        return self.images.folder

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images.image(i)
        views = [to_tensor(t(image) if t is not None else image) for t in self.transforms]
        return torch.stack(views), self.images.label(i) if self.labelled else -1


def heldout_test_set(folder: str | Path, classes: Sequence[str], channels: int, size: int,
                     dataset_type: type = ImageSet) -> Dataset:
    """The labelled held-out test split, opened as ``dataset_type`` (the task kind's split: an
    :class:`ImageSet` or a detection set, same arguments). Only the evaluate stage may call this (a
    test enforces it)."""
    return dataset_type(folder, classes, channels, size, labels=True, _allow_heldout=True)
