"""prepare for ``task.kind: detection``: COCO input or the built-in scenes -> the canonical layout.

The same four splits as classification (``source/{train,val}``, ``target/{train,test}``), each a folder
of PNGs with a COCO ``annotations.json`` beside them (boxes in pixels of the prepared
``data.image_size`` square) and a ``manifest.csv`` of the images (for code that needs the images
only). Images are stretched to the square as in classification and their boxes scaled with them.
``target/train`` keeps its boxes when the input has them (only target_oracle learns from them);
``target/test`` holds the ``HELDOUT`` marker. Everything is written into a temporary folder that
replaces ``<out>`` only when every split is complete.

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
from typing import Iterable, Iterator

import cv2
import numpy as np
from PIL import Image

from pipeline.config import Params
from pipeline.data.coco import BoxImage, CocoError, read_coco, resize_boxes, write_detection_split
from pipeline.data.images import BadImageError, load_image
from pipeline.data.manifest import HELDOUT_MARKER
from pipeline.data.prepare import PrepareError, scan_flat_folder
from pipeline.io import atomic_directory, image_grid

log = logging.getLogger(__name__)

Item = tuple[np.ndarray, np.ndarray, np.ndarray]      # image (S, S, C) uint8, boxes (K, 4) xyxy, labels (K,)


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


def _decoded(records: Iterable[BoxImage], params: Params, skipped: Counter) -> Iterator[Item]:
    """Decode, check and resize each COCO image with its boxes; a declared size that differs from the
    file's is an error (the boxes would land in the wrong place)."""
    for r in records:
        image = _load(r.path, params, skipped)
        if image is None:
            continue
        with Image.open(r.path) as img:
            actual = img.size
        if actual != (r.width, r.height):
            raise CocoError(f"{r.path}: the annotations declare {r.width}x{r.height} pixels but the image is "
                            f"{actual[0]}x{actual[1]}; fix width/height in the COCO file")
        yield image, resize_boxes(r.boxes, r.width, r.height, params.data.image_size), r.labels


def _unlabelled(folder: Path, params: Params, skipped: Counter) -> Iterator[Item]:
    for e in scan_flat_folder(folder):
        image = _load(e.path, params, skipped)
        if image is not None:
            yield image, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)


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


def _splits(params: Params, skipped: Counter) -> Iterator[tuple[str, Iterable[Item], bool]]:
    """``(split, items, labelled)`` for the four splits, in order."""
    from pipeline.data.scenes import real_scenes, rendered_scenes

    d, seed, sp = params.data, params.seed, params.data.scene
    size, ch = d.image_size, d.channels
    if d.source.format == "digits":
        yield "source/train", rendered_scenes(sp.train_count, seed, "train", d.render, sp, size, ch), True
        yield "source/val", rendered_scenes(sp.val_count, seed, "val", d.render, sp, size, ch), True
        yield "target/train", real_scenes(sp.real_train_count, seed, "train", sp, size, ch), True
        yield "target/test", real_scenes(sp.real_test_count, seed, "test", sp, size, ch), True
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


def prepare_detection(params: Params, out_dir: str | Path) -> tuple[dict, np.ndarray]:
    """Write the four detection splits into ``out_dir`` atomically; per-split statistics and a preview
    grid with the boxes (row 1: source/train, row 2: target/train)."""
    d = params.data
    skipped: Counter = Counter()
    stats: dict = {"splits": {}}
    previews: dict[str, list[np.ndarray]] = {}
    with atomic_directory(out_dir) as tmp:
        for split, items, labelled in _splits(params, skipped):
            recorder = _Recorder(items, list(d.classes))
            write_detection_split(tmp / split, recorder, d.classes, labelled=labelled)
            if recorder.images == 0:
                raise PrepareError(f"{split}: split would be empty")
            stats["splits"][split] = {**recorder.stats(), "labelled": labelled}
            previews[split] = recorder.preview
        missing = [c for c in d.classes if c not in stats["splits"]["source/train"]["per_class"]]
        if missing:
            raise PrepareError(f"source/train: class(es) {missing} of data.classes have no annotated object")
        (tmp / "target/test" / HELDOUT_MARKER).write_text(
            "Held-out real test split: its boxes are read only by the evaluate stage.\n")
    stats["skipped_bad_images"] = skipped["bad"]
    stats["image_size"], stats["channels"], stats["kind"] = d.image_size, d.channels, "detection"
    preview = image_grid([np.stack(previews["source/train"]), np.stack(previews["target/train"])])
    return stats, preview

