"""prepare: turn any supported input into the canonical layout of six splits.

``<out>/source/{train,val}``, ``<out>/target/{train,test}`` and ``<out>/target/{labelled,pick}`` (a few
labelled real images to train and to choose with: empty unless the user gives them), each a folder of PNGs plus
``manifest.csv`` and a ``LABEL_ORIGIN`` mark (:func:`label_origin_of`). Everything is written into a
temporary folder that replaces ``<out>`` only when every image has been decoded and written, so a failed
or interrupted run leaves nothing half-written. A training image whose decoded pixels equal those of a
held-out test image is refused (:class:`HeldOutGuard`).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from itertools import islice
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from pipeline.config import DataParams, Params, trains_on_target, unlabelled_target_refusal
from pipeline.data.digits import real_digits, rendered_digits
from pipeline.data.images import BadImageError, load_image
from pipeline.data.manifest import HELDOUT_MARKER, Entry, read_manifest, write_label_origin, write_manifest
from pipeline.data.polarity import POLARITY_FILE, SAMPLE, invert, opposite, polarity
from pipeline.io import atomic_directory, image_grid, save_png, write_json

log = logging.getLogger(__name__)

CORE_SPLITS = ("source/train", "source/val", "target/train", "target/test")
OPTIONAL_SPLITS = ("target/labelled", "target/pick")   # empty unless the user gives a few labelled real images
SPLITS = CORE_SPLITS + OPTIONAL_SPLITS
TEST_SPLIT = "target/test"

#: One image on its way to a split: ``(image (S, S, C) uint8, class index or None, the input it came from)``.
Item = tuple[np.ndarray, Optional[int], str]


class PrepareError(ValueError):
    """Input that cannot be prepared; the message names the folder, file or class."""


# ------------------------------------------------------------------------------------------------
# Reading user data
# ------------------------------------------------------------------------------------------------


def _listing(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def scan_imagefolder(root: Path, classes: Sequence[str]) -> list[Entry]:
    """``root/<class>/<image>``; every visible file in a class folder is taken as an image."""
    if not root.is_dir():
        raise PrepareError(f"{root}: expected a folder with one sub-folder per class")
    index = {c: i for i, c in enumerate(classes)}
    entries: list[Entry] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in index:
            raise PrepareError(f"{sub}: class folder {sub.name!r} is not in data.classes {list(classes)}")
        files = _listing(sub)
        if not files:
            raise PrepareError(f"{sub}: class {sub.name!r} has no images")
        entries += [Entry(f.resolve(), index[sub.name]) for f in files]
    if not entries:
        raise PrepareError(f"{root}: no class sub-folders with images found (expected {list(classes)})")
    return entries


def scan_flat_folder(root: Path) -> list[Entry]:
    if not root.is_dir():
        raise PrepareError(f"{root}: expected a folder of images")
    files = _listing(root)
    if not files:
        raise PrepareError(f"{root}: folder has no images")
    return [Entry(f.resolve(), None) for f in files]


def scan_labelled(path: str, fmt: str, classes: Sequence[str], unlabelled_ok: bool = False) -> list[Entry]:
    """A labelled set: an imagefolder folder, or a manifest CSV (every row labelled).

    ``unlabelled_ok`` also takes a manifest whose label column is empty in every row (unlabelled real
    images, like a flat folder); one labelled in some rows only is refused, naming the counts.
    """
    p = Path(path)
    if fmt == "manifest" or (fmt == "folder" and p.is_file()):
        if not p.is_file():
            raise PrepareError(f"{p}: expected a manifest CSV file with columns path,label")
        if not unlabelled_ok:
            return read_manifest(p, classes, require_labels=True)
        entries = read_manifest(p, classes)
        labelled = sum(e.label is not None for e in entries)
        if 0 < labelled < len(entries):
            raise PrepareError(f"{p}: {labelled} of {len(entries)} rows have a label; expected a label in every row "
                               f"(labelled real images) or in none (unlabelled real images)")
        return entries
    return scan_imagefolder(p, classes)


# ------------------------------------------------------------------------------------------------
# Splitting
# ------------------------------------------------------------------------------------------------


def stratified_split(labels: Sequence[int], fraction: float, seed: int, what: str) -> tuple[list[int], list[int]]:
    """Indices ``(kept, held)``: per class a seeded ``round(fraction * n)`` (at least 1) go to ``held``."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    kept, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            raise PrepareError(f"{what}: class index {int(c)} has {len(idx)} image(s); a split needs at least 2")
        idx = rng.permutation(idx)
        n_held = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1)
        held += idx[:n_held].tolist()
        kept += idx[n_held:].tolist()
    return sorted(kept), sorted(held)


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


@dataclass
class SplitWriter:
    """Writes ``images/NNNNNN.png`` plus the manifest of one split."""

    folder: Path
    classes: Sequence[str]
    rows: list[tuple[str, str]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    preview: list[np.ndarray] = field(default_factory=list)

    def add(self, image: np.ndarray, label: Optional[int]) -> None:
        rel = f"images/{len(self.rows):06d}.png"
        save_png(image, self.folder / rel)
        name = self.classes[label] if label is not None else ""
        self.rows.append((rel, name))
        self.counts[name or "<unlabelled>"] += 1
        if len(self.preview) < 16:
            self.preview.append(image)

    def close(self, optional: bool = False) -> dict:
        if not self.rows and not optional:
            raise PrepareError(f"{self.folder.name}: split would be empty")
        self.folder.mkdir(parents=True, exist_ok=True)
        write_manifest(self.folder, self.rows)
        return {"count": len(self.rows), "per_class": dict(sorted(self.counts.items()))}


class Decoder:
    """Decodes user images to the configured shape; bad files raise, or are skipped and counted.

    A bad file is anything :func:`load_image` refuses: corrupt, empty, not an image, or larger than
    ``data.max_image_pixels`` (refused from its header, before decoding).
    """

    def __init__(self, data: DataParams):
        self.data, self.skipped = data, 0

    def __call__(self, entries: Iterable[Entry]) -> Iterator[Item]:
        for e in entries:
            try:
                image = load_image(e.path, self.data.channels, self.data.image_size, self.data.max_image_pixels)
                yield image, e.label, str(e.path)
            except BadImageError as exc:
                if not self.data.skip_bad_images:
                    raise BadImageError(f"{exc} (set data.skip_bad_images: true to skip such files)") from None
                self.skipped += 1
                log.warning("skipping bad image: %s", exc)


# ------------------------------------------------------------------------------------------------
# Held-out test images and label origins
# ------------------------------------------------------------------------------------------------


def pixel_digest(image: np.ndarray) -> bytes:
    """A digest of the decoded pixels and their shape: the same for a file copied under another name
    (or re-saved losslessly), since prepare compares images as they are written, not as files."""
    pixels = np.ascontiguousarray(image)
    return hashlib.blake2b(repr(pixels.shape).encode() + pixels.tobytes(), digest_size=16).digest()


class HeldOutGuard:
    """Finds training images that are pixel-identical copies of held-out test images.

    A real test image copied (renamed) into a training folder is learnt and then scored on, so the
    evaluation no longer measures how a model does on images it has not seen. The test split must be
    recorded first; every image of another split is then looked up, and :meth:`verdict` refuses when
    any was a copy. It keeps one small digest per test image, not the images.
    """

    def __init__(self) -> None:
        self.test: dict[bytes, str] = {}                 # digest -> the first test input with those pixels
        self.copies: list[tuple[str, str, str]] = []     # (test input, training split, training input)

    def record(self, split: str, image: np.ndarray, name: str) -> None:
        """Note ``image`` (from input ``name``) of ``split``: a test image, or a training one to look up."""
        digest = pixel_digest(image)
        if split == TEST_SPLIT:
            self.test.setdefault(digest, name)
        elif digest in self.test:
            self.copies.append((self.test[digest], split, name))

    def verdict(self) -> int:
        """0 when no training image copies a test image; otherwise a :class:`PrepareError` naming how many
        do and the first pair of input files."""
        if not self.copies:
            return 0
        test_name, split, name = self.copies[0]
        raise PrepareError(
            f"{len(self.copies)} training image(s) are pixel-identical to held-out test images, which would put "
            f"the test set into training; the first: {name} (in {split}) is a copy of the test image {test_name}; "
            f"remove the copies from the training data (or the images from the test set) and run prepare again")


def write_empty_split(folder: Path) -> None:
    """An optional split with no image (a manifest with its header only, ``LABEL_ORIGIN`` none), so that
    every prepared layout has the same folders (DVC stages depend on them)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder, [])
    write_label_origin(folder, "none")


def label_origin_of(split: str, labelled: bool) -> str:
    """The ``LABEL_ORIGIN`` of a prepared split: the source's labels are the simulator's (``synthetic``);
    a target split's are ``real`` when its images carry labels (or boxes) and ``none`` when they do not."""
    if split.startswith("source/"):
        return "synthetic"
    return "real" if labelled else "none"


def _check_unlabelled_target(params: Params) -> None:
    """Refuse a variant that trains on ``target/train``, whose real images have no labels here (an
    unlabelled manifest; params.yaml's checks already refuse it for a flat folder)."""
    for name, v in params.variants.items():
        if trains_on_target(v):
            raise PrepareError(unlabelled_target_refusal(name, v, f"data.target.root {params.data.target.root!r} "
                                                         "lists none", "label the real training images"))


def _check_target_classes(source_labels: Iterable[int], target_labels: Iterable[Optional[int]],
                          classes: Sequence[str], where: str) -> None:
    have = set(source_labels)
    for t in sorted({t for t in target_labels if t is not None}):
        if t not in have:
            raise PrepareError(f"{where}: class {classes[t]!r} appears in the target but the source has no image of it")


def _numbered(pairs: Iterable[tuple[np.ndarray, int]], what: str) -> Iterator[Item]:
    """The ``(image, label)`` pairs of a built-in generator as items named ``<what> <index>``."""
    for i, (image, label) in enumerate(pairs):
        yield image, label, f"{what} {i}"


def _source_splits(params: Params, dec: Decoder) -> Iterator[tuple[str, Iterable]]:
    d, seed = params.data, params.seed
    if d.source.format == "digits":
        r = d.render
        yield "source/train", _numbered(rendered_digits(r.train_count, seed, "train", r, d.image_size, d.channels),
                                        "rendered source/train image")
        yield "source/val", _numbered(rendered_digits(r.val_count, seed, "val", r, d.image_size, d.channels),
                                      "rendered source/val image")
        return
    entries = scan_labelled(d.source.root, d.source.format, d.classes)
    missing = [c for i, c in enumerate(d.classes) if i not in {e.label for e in entries}]
    if missing:
        raise PrepareError(f"{d.source.root}: class(es) {missing} of data.classes have no source image")
    train, val = stratified_split([e.label for e in entries], d.source.val_fraction, seed, d.source.root)
    yield "source/train", dec(entries[i] for i in train)
    yield "source/val", dec(entries[i] for i in val)


def _target_splits(params: Params, dec: Decoder) -> Iterator[tuple[str, Iterable]]:
    """``target/train`` and ``target/test``, then ``target/labelled`` and ``target/pick`` (empty unless
    the user gives a few labelled real images: :func:`labelled_real`)."""
    d, seed, t = params.data, params.seed, params.data.target
    if t.format == "digits":
        images, labels = real_digits(d.image_size, d.channels)
        train, test = stratified_split(labels.tolist(), t.test_fraction, seed + 1, "load_digits")
        item = lambda i: (images[i], int(labels[i]), f"load_digits scan {i}")  # noqa: E731
        yield "target/train", (item(i) for i in train)
        yield "target/test", (item(i) for i in test)
        if t.labelled_root:
            yield from _labelled_root_splits(params, dec)
            return
        fit, pick = labelled_real(params, [int(labels[i]) for i in train], "load_digits")
        yield "target/labelled", (item(train[i]) for i in fit)
        yield "target/pick", (item(train[i]) for i in pick)
        return
    if t.format == "folder":
        train_entries = scan_flat_folder(Path(t.root))
    else:  # with a separate test set the training images need no labels (a manifest may leave them out)
        train_entries = scan_labelled(t.root, t.format, d.classes, unlabelled_ok=bool(t.test_root))
        if all(e.label is None for e in train_entries):
            _check_unlabelled_target(params)
    if t.test_root:
        test_entries = scan_labelled(t.test_root, "imagefolder" if Path(t.test_root).is_dir() else "manifest",
                                     d.classes)
        train = list(range(len(train_entries)))
    else:
        train, test = stratified_split([e.label for e in train_entries], t.test_fraction, seed + 1, t.root)
        test_entries = [train_entries[i] for i in test]
    train_entries = [train_entries[i] for i in train]
    yield "target/train", dec(train_entries)
    yield "target/test", dec(test_entries)
    if t.labelled_root:
        yield from _labelled_root_splits(params, dec)
        return
    fit, pick = labelled_real(params, [e.label for e in train_entries], t.root)
    yield "target/labelled", dec(train_entries[i] for i in fit)
    yield "target/pick", dec(train_entries[i] for i in pick)


def _labelled_root_splits(params: Params, dec: Decoder) -> Iterator[tuple[str, Iterable]]:
    """``target/labelled`` and ``target/pick`` from ``data.target.labelled_root`` (an imagefolder folder or
    a manifest CSV of a few labelled real images), whatever the target's own format."""
    root, classes = params.data.target.labelled_root, params.data.classes
    pool = scan_labelled(root, "imagefolder" if Path(root).is_dir() else "manifest", classes)
    fit, pick = labelled_real(params, [e.label for e in pool], root)
    yield "target/labelled", dec(pool[i] for i in fit)
    yield "target/pick", dec(pool[i] for i in pick)


def labelled_real(params: Params, labels: Sequence[Optional[int]], where: str) -> tuple[list[int], list[int]]:
    """Indices into ``labels`` of the few labelled real images, ``(fit, pick)``: ``fit`` for the variants
    that train on them (``target/labelled``), ``pick`` kept for the report to choose a variant with
    (``target/pick``). With ``data.target.labelled_per_class: k`` (``labels``: the real training split's),
    ``k`` images per class are drawn, seeded; with ``labelled_root`` (``labels``: its own), all of them.
    Per class, ``floor(pick_fraction * n)`` go to ``pick`` (k = 5: 2, so 3 per class train), at most
    ``n - 1``. Both empty when the user gives no labelled real images."""
    t, seed = params.data.target, params.seed
    if not (t.labelled_per_class or t.labelled_root):
        return [], []
    if any(label is None for label in labels):
        raise PrepareError(f"data.target.labelled_per_class: {where}: the real training images have no labels to "
                           f"draw from; give data.target.labelled_root (a few labelled real images) instead")
    rng = np.random.default_rng(seed + 2)
    labels = np.asarray(labels)
    fit, pick = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if t.labelled_per_class:
            if len(idx) < t.labelled_per_class:
                raise PrepareError(f"data.target.labelled_per_class: {where}: class {params.data.classes[int(c)]!r} has "
                                   f"{len(idx)} real training image(s), fewer than the {t.labelled_per_class} asked for")
            idx = idx[:t.labelled_per_class]
        n_pick = min(int(t.pick_fraction * len(idx)), len(idx) - 1)
        pick += idx[:n_pick].tolist()
        fit += idx[n_pick:].tolist()
    return sorted(fit), sorted(pick)


def match_polarity(params: Params) -> dict:
    """The ink polarity of a sample of source/train and of target/train images (never target/test) and
    whether prepare writes the renders inverted (:mod:`pipeline.data.polarity`; ``data.polarity: keep``
    measures nothing and inverts nothing)."""
    if params.data.polarity == "keep":
        return {"mode": "keep", "inverted_source": False}
    probe = Decoder(params.data)    # its own count: a bad file is counted once, by the writing pass
    sides = {}
    for split, items in (*_source_splits(params, probe), *_target_splits(params, probe)):
        if split in ("source/train", "target/train"):
            sides[split] = polarity(image for image, _, _ in islice(items, SAMPLE))
    source, target = sides["source/train"], sides["target/train"]
    return {"mode": "match", "source": round(source, 4), "target": round(target, 4),
            "inverted_source": opposite(source, target)}


def heldout_first(splits: Iterable[tuple]) -> list[tuple]:
    """``(split name, ...)`` tuples with the held-out test split first (its pixels must be known before
    any training image is checked against them), the others in their given order."""
    return sorted(splits, key=lambda s: s[0] != TEST_SPLIT)


def prepare(params: Params, out_dir: str | Path,
            provenance: Optional[dict] = None) -> tuple[dict, np.ndarray]:
    """Write the six canonical splits into ``out_dir`` atomically, each with its ``LABEL_ORIGIN``.

    ``provenance``, when given, is written as ``provenance.json`` inside the folder before it appears.
    Returns per-split statistics (with ``heldout_duplicates``, 0: a training image that copies a test
    image is refused) and a preview grid (row 1: source/train, row 2: target/train).
    """
    d = params.data
    dec = Decoder(d)
    guard = HeldOutGuard()
    stats: dict = {"splits": {}, "polarity": match_polarity(params)}
    flip = stats["polarity"]["inverted_source"]
    previews: dict[str, list[np.ndarray]] = {}
    with atomic_directory(out_dir) as tmp:
        for split, items in heldout_first([*_source_splits(params, dec), *_target_splits(params, dec)]):
            writer = SplitWriter(tmp / split, d.classes)
            labels = []
            for image, label, name in items:
                guard.record(split, image, name)   # as decoded: a copy is a copy whether the renders are inverted
                if flip and split.startswith("source/"):
                    image = invert(image)
                writer.add(image, label)
                labels.append(label)
            stats["splits"][split] = writer.close(optional=split in OPTIONAL_SPLITS)
            stats["splits"][split]["_labels"] = labels
            previews[split] = writer.preview
            write_label_origin(tmp / split, label_origin_of(split, any(label is not None for label in labels)))
        stats["heldout_duplicates"] = guard.verdict()
        stats["splits"] = {split: stats["splits"][split] for split in SPLITS}
        source_labels = stats["splits"]["source/train"]["_labels"] + stats["splits"]["source/val"]["_labels"]
        for split in ("target/train", "target/test", *OPTIONAL_SPLITS):
            _check_target_classes(source_labels, stats["splits"][split]["_labels"], d.classes, split)
        (tmp / "target/test" / HELDOUT_MARKER).write_text(
            "Held-out real test split: its labels are read only by the evaluate stage.\n")
        write_json(tmp / POLARITY_FILE, stats["polarity"])
        if provenance is not None:      # inside the atomic folder: the data never appears without its record
            write_json(tmp / "provenance.json", provenance)
    for s in stats["splits"].values():
        s.pop("_labels")
    stats["skipped_bad_images"] = dec.skipped
    stats["image_size"], stats["channels"] = d.image_size, d.channels
    preview = image_grid([np.stack(previews["source/train"]), np.stack(previews["target/train"])], scale=3)
    return stats, preview
