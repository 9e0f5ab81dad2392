"""prepare for ``task.kind: detection``: COCO input or the built-in scenes -> the canonical layout.

The same four splits as classification (``source/{train,val}``, ``target/{train,test}``), each a folder
of PNGs with a COCO ``annotations.json`` beside them (boxes in pixels of the prepared
``data.image_size`` square) and a ``manifest.csv`` of the images (for code that needs the images
only). Images are stretched to the square as in classification and their boxes scaled with them.
``target/train`` keeps its boxes when the input has them (only target_oracle learns from them);
``target/test`` holds the ``HELDOUT`` marker; every split a ``LABEL_ORIGIN`` mark. A training image
whose decoded pixels equal a test image's is refused, as in classification. Everything is written into a
temporary folder that replaces ``<out>`` only when every split is complete.

Inputs (``data.source.format`` / ``data.target.format``):

* ``digits``: the built-in scenes (:mod:`pipeline.data.scenes`), both sides;
* ``coco``: ``root`` is a COCO JSON file, image paths relative to its folder; the source is split into
  train/val by ``val_fraction``, the target into train/test by ``test_fraction`` unless ``test_root``
  (another COCO JSON) gives the test set;
* ``folder`` (target only): a flat folder of unlabelled real images plus a COCO ``test_root``.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Optional

import cv2
import numpy as np

from pipeline.config import Params
from pipeline.data.coco import BoxImage, CocoError, read_coco, resize_boxes, write_detection_split
from pipeline.data.images import BadImageError, load_image, upright_size
from pipeline.data.manifest import HELDOUT_MARKER, write_label_origin
from pipeline.data.prepare import (CORE_SPLITS, OPTIONAL_SPLITS, HeldOutGuard, PrepareError, heldout_first, label_origin_of,
                                   scan_flat_folder, write_empty_split)
from pipeline.io import atomic_directory, image_grid, write_json

log = logging.getLogger(__name__)

Item = tuple[np.ndarray, np.ndarray, np.ndarray]      # image (S, S, C) uint8, boxes (K, 4) xyxy, labels (K,)
Named = tuple[np.ndarray, np.ndarray, np.ndarray, str]  # an item and the input it came from


def _load(path: Path, params: Params, skipped: Counter) -> np.ndarray | None:
    """The image at ``path`` at the prepared size; None when it is bad and ``data.skip_bad_images``."""
    d = params.data
    try:
        return load_image(path, d.channels, d.image_size, d.max_image_pixels)
    except BadImageError as exc:
        if not d.skip_bad_images:
            raise BadImageError(f"{exc} (set data.skip_bad_images: true to skip such files)") from None
        skipped["bad"] += 1
        log.warning("skipping bad image: %s", exc)
        return None


def _check_size(r: BoxImage) -> None:
    """The declared size must be the image's size as shown upright (its EXIF orientation applied, as
    :func:`load_image` does): otherwise the boxes would land in the wrong place."""
    width, height = upright_size(r.path)
    if (width, height) == (r.width, r.height):
        return
    turned = (" once turned upright by its EXIF orientation tag, as prepare does; give the upright size and "
              "boxes in upright pixels" if (height, width) == (r.width, r.height) else "; fix width/height")
    raise CocoError(f"{r.path}: the annotations declare {r.width}x{r.height} pixels but the image is "
                    f"{width}x{height}{turned} in the COCO file")


def _decoded(records: Iterable[BoxImage], params: Params, skipped: Counter) -> Iterator[Named]:
    """Decode, check and resize each COCO image with its boxes; a declared size that differs from the
    file's is an error (the boxes would land in the wrong place)."""
    for r in records:
        image = _load(r.path, params, skipped)
        if image is None:
            continue
        _check_size(r)
        yield image, resize_boxes(r.boxes, r.width, r.height, params.data.image_size), r.labels, str(r.path)


def _unlabelled(folder: Path, params: Params, skipped: Counter) -> Iterator[Named]:
    for e in scan_flat_folder(folder):
        image = _load(e.path, params, skipped)
        if image is not None:
            yield image, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), str(e.path)


def _numbered(items: Iterable[Item], what: str) -> Iterator[Named]:
    """The items of a built-in generator, named ``<what> <index>``."""
    for i, (image, boxes, labels) in enumerate(items):
        yield image, boxes, labels, f"{what} {i}"


def _guarded(items: Iterable[Named], split: str, guard: HeldOutGuard) -> Iterator[Item]:
    """The items of ``split``, each shown to ``guard`` (which refuses training copies of test images)."""
    for image, boxes, labels, name in items:
        guard.record(split, image, name)
        yield image, boxes, labels


def _split(records: list[BoxImage], fraction: float, seed: int, what: str) -> tuple[list[BoxImage], list[BoxImage]]:
    """A seeded ``(kept, held)`` split of images, ``round(fraction * n)`` (at least 1) held."""
    if len(records) < 2:
        raise PrepareError(f"{what}: {len(records)} annotated image(s); a split needs at least 2")
    order = np.random.default_rng(seed).permutation(len(records))
    n_held = min(max(1, int(round(fraction * len(records)))), len(records) - 1)
    held = sorted(order[:n_held].tolist())
    kept = sorted(order[n_held:].tolist())
    return [records[i] for i in kept], [records[i] for i in held]


def _coco(path: str, params: Params) -> list[BoxImage]:
    if not Path(path).is_file():
        raise PrepareError(f"{path}: expected a COCO JSON file (images, annotations, categories)")
    return read_coco(path, params.data.classes)


def _splits(params: Params, skipped: Counter) -> Iterator[tuple[str, Iterable[Named], bool]]:
    """``(split, items, labelled)`` for the four splits, in order."""
    from pipeline.data.scenes import real_scenes, rendered_scenes

    d, seed, sp = params.data, params.seed, params.data.scene
    size, ch = d.image_size, d.channels
    if d.source.format == "digits":
        yield "source/train", _numbered(rendered_scenes(sp.train_count, seed, "train", d.render, sp, size, ch),
                                        "rendered source/train scene"), True
        yield "source/val", _numbered(rendered_scenes(sp.val_count, seed, "val", d.render, sp, size, ch),
                                      "rendered source/val scene"), True
        yield "target/train", _numbered(real_scenes(sp.real_train_count, seed, "train", sp, size, ch),
                                        "real target/train scene"), True
        yield "target/test", _numbered(real_scenes(sp.real_test_count, seed, "test", sp, size, ch),
                                       "real target/test scene"), True
        return
    train, val = _split(_coco(d.source.root, params), d.source.val_fraction, seed, d.source.root)
    yield "source/train", _decoded(train, params, skipped), True
    yield "source/val", _decoded(val, params, skipped), True
    t = d.target
    if t.format == "folder":
        yield "target/train", _unlabelled(Path(t.root), params, skipped), False
        yield "target/test", _decoded(_coco(t.test_root, params), params, skipped), True
        return
    records = _coco(t.root, params)
    if t.test_root:
        yield "target/train", _decoded(records, params, skipped), True
        yield "target/test", _decoded(_coco(t.test_root, params), params, skipped), True
        return
    train, test = _split(records, t.test_fraction, seed + 1, t.root)
    yield "target/train", _decoded(train, params, skipped), True
    yield "target/test", _decoded(test, params, skipped), True


class _Recorder:
    """Passes items through while counting objects per class and keeping a few for the preview."""

    def __init__(self, items: Iterable[Item], classes: list[str]):
        self.items, self.classes = items, classes
        self.images, self.objects, self.preview = 0, Counter(), []

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        for image, boxes, labels in self.items:
            if len(self.preview) < 12:
                self.preview.append(draw_boxes(image, boxes))
            self.objects.update(self.classes[int(k)] for k in labels)
            yield f"{self.images:06d}", image, boxes, labels
            self.images += 1

    def stats(self) -> dict:
        return {"count": self.images, "objects": sum(self.objects.values()),
                "per_class": dict(sorted(self.objects.items()))}


def draw_boxes(image: np.ndarray, boxes: np.ndarray, scale: int = 3) -> np.ndarray:
    """An RGB copy of ``image`` upscaled ``scale`` times with ``boxes`` drawn in green (preview only)."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    big = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST).copy()
    for x0, y0, x1, y1 in np.asarray(boxes).reshape(-1, 4) * scale:
        cv2.rectangle(big, (int(x0), int(y0)), (int(round(x1)) - 1, int(round(y1)) - 1), (0, 255, 0), 1)
    return big


def prepare_detection(params: Params, out_dir: str | Path,
                      provenance: Optional[dict] = None) -> tuple[dict, np.ndarray]:
    """Write the four detection splits (and the two optional ones of classification, empty) into ``out_dir`` atomically, each with its ``LABEL_ORIGIN``;
    ``provenance.json`` inside it when ``provenance`` is given; per-split statistics (with
    ``heldout_duplicates``, 0: a training copy of a test image is refused)
    and a preview grid with the boxes (row 1: source/train, row 2: target/train)."""
    d = params.data
    skipped: Counter = Counter()
    guard = HeldOutGuard()
    stats: dict = {"splits": {}}
    previews: dict[str, list[np.ndarray]] = {}
    with atomic_directory(out_dir) as tmp:
        for split, items, labelled in heldout_first(_splits(params, skipped)):
            recorder = _Recorder(_guarded(items, split, guard), list(d.classes))
            write_detection_split(tmp / split, recorder, d.classes, labelled=labelled)
            if recorder.images == 0:
                raise PrepareError(f"{split}: split would be empty")
            write_label_origin(tmp / split, label_origin_of(split, labelled))
            stats["splits"][split] = {**recorder.stats(), "labelled": labelled}
            previews[split] = recorder.preview
        stats["heldout_duplicates"] = guard.verdict()
        stats["splits"] = {split: stats["splits"][split] for split in CORE_SPLITS}
        for split in OPTIONAL_SPLITS:      # labelled real images are for classification: empty here
            write_empty_split(tmp / split)
        missing = [c for c in d.classes if c not in stats["splits"]["source/train"]["per_class"]]
        if missing:
            raise PrepareError(f"source/train: class(es) {missing} of data.classes have no annotated object")
        (tmp / "target/test" / HELDOUT_MARKER).write_text(
            "Held-out real test split: its boxes are read only by the evaluate stage.\n")
        if provenance is not None:      # inside the atomic folder: the data never appears without its record
            write_json(tmp / "provenance.json", provenance)
    stats["skipped_bad_images"] = skipped["bad"]
    stats["image_size"], stats["channels"], stats["kind"] = d.image_size, d.channels, "detection"
    preview = image_grid([np.stack(previews["source/train"]), np.stack(previews["target/train"])])
    return stats, preview

