"""The on-disk contract of a detection split: a folder of images plus ``annotations.json`` in COCO format.

In memory a box is ``xyxy`` in pixels (float32 ``(K, 4)``) and its label the index of its class in
``data.classes`` (int64 ``(K,)``). On disk, COCO: ``bbox`` is ``[x, y, w, h]`` in pixels, category ids
are ``1..K`` in ``data.classes`` order and category names are the class names, so a file made by other
tools is matched by name. :func:`read_coco` validates everything; a :class:`CocoError` names the JSON
file and the entry at fault. A prepared split also holds ``manifest.csv`` with empty labels, so code
that only needs the images (``ImageSet(labels=False)``) works on it unchanged.

The held-out guard of :mod:`pipeline.data.manifest` holds here too: the boxes of a folder that holds
the ``HELDOUT`` marker are read by the evaluate stage only.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from PIL import Image

from pipeline.data.manifest import HELDOUT_MARKER, HeldOutLabelsError, is_heldout, write_manifest
from pipeline.io import write_json

ANNOTATIONS_NAME = "annotations.json"
BOX_TOLERANCE = 0.5  # pixels a box may stick out of its image (rounding); such a box is clipped

log = logging.getLogger(__name__)


class CocoError(ValueError):
    """A COCO file that breaks the contract; the message names the file and the entry."""


@dataclass(frozen=True)
class BoxImage:
    path: Path           # absolute path of the image
    width: int           # as declared in the JSON
    height: int
    boxes: np.ndarray    # (K, 4) float32 xyxy, pixels of the declared size
    labels: np.ndarray   # (K,) int64 class indices


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


def read_coco(json_path: str | Path, classes: Sequence[str], images_root: str | Path | None = None,
              labels: bool = True, require_annotations: bool = True, _allow_heldout: bool = False) -> list[BoxImage]:
    """Parse and validate a COCO file; one :class:`BoxImage` per image entry, in the file's order.

    ``file_name`` paths are relative to ``images_root`` (default: the JSON's folder) and may not escape
    it. ``labels=False`` does not read the annotations at all (every image has no boxes; the
    ``annotations`` and ``categories`` keys are optional then). Boxes that stick out of their image by
    at most half a pixel are clipped, ``iscrowd`` annotations skipped. Asking for the boxes of a held-out
    split raises :class:`HeldOutLabelsError`.
    """
    json_path = Path(json_path)
    if labels and not _allow_heldout:
        _refuse_heldout(json_path)
    data = _load_json(json_path)
    _require_keys(json_path, data, ("images", "annotations", "categories") if labels else ("images",))
    root = Path(images_root).resolve() if images_root is not None else json_path.parent.resolve()
    images = _read_images(json_path, data["images"], root)
    if not labels:
        return [_box_image(entry, [], []) for entry in images.values()]
    category_to_label = _read_categories(json_path, data["categories"], classes)
    return _attach_annotations(json_path, data["annotations"], images, category_to_label, require_annotations)


def _refuse_heldout(json_path: Path) -> None:
    if is_heldout(json_path.parent) or is_heldout(json_path.resolve().parent):
        raise HeldOutLabelsError(
            f"{json_path}: annotations of a held-out test split (its folder holds {HELDOUT_MARKER}); its boxes are "
            f"read by the evaluate stage only; open it without labels")


def _load_json(json_path: Path) -> Any:
    """The parsed JSON file; a byte-order mark, as some Windows tools write, is allowed."""
    try:
        return json.loads(json_path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise CocoError(f"{json_path}: COCO annotations file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CocoError(f"{json_path}: not a readable JSON file ({exc.__class__.__name__}: {exc})") from None


def _require_keys(json_path: Path, data: Any, keys: Sequence[str]) -> None:
    if not isinstance(data, dict):
        raise CocoError(f"{json_path}: expected a JSON object with keys {list(keys)}, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise CocoError(f"{json_path}: missing top-level key(s) {missing}; a COCO file needs {list(keys)}")
    for key in keys:
        if not isinstance(data[key], list):
            raise CocoError(f"{json_path}: '{key}' must be a list, got {type(data[key]).__name__}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_images(json_path: Path, entries: list, root: Path) -> dict[int, dict]:
    """``image id -> {"path", "file_name", "width", "height"}``, in the file's order."""
    images: dict[int, dict] = {}
    for i, entry in enumerate(entries):
        where = f"{json_path}: images[{i}]"
        if not isinstance(entry, dict) or any(k not in entry for k in ("id", "file_name", "width", "height")):
            raise CocoError(f"{where}: an image entry needs id, file_name, width and height, got {entry!r}")
        image_id, name, width, height = entry["id"], entry["file_name"], entry["width"], entry["height"]
        if not _is_int(image_id) or not isinstance(name, str) or not name:
            raise CocoError(f"{where}: id must be an integer and file_name a non-empty string, got {entry!r}")
        if not (_is_int(width) and _is_int(height) and width > 0 and height > 0):
            raise CocoError(f"{where} (image id {image_id}, {name!r}): width and height must be positive integers, "
                            f"got {width!r} x {height!r}")
        if image_id in images:
            raise CocoError(f"{where}: duplicate image id {image_id} ({name!r} and {images[image_id]['file_name']!r})")
        images[image_id] = {"path": _image_path(where, root, name, image_id), "file_name": name,
                            "width": width, "height": height}
    return images


def _image_path(where: str, root: Path, name: str, image_id: int) -> Path:
    full = (root / name).resolve()
    if not full.is_relative_to(root):
        raise CocoError(f"{where}: file_name {name!r} (image id {image_id}) escapes the images root {root}")
    if not full.is_file():
        raise CocoError(f"{where}: image file {name!r} (image id {image_id}) not found under {root}")
    return full


def _read_categories(json_path: Path, entries: list, classes: Sequence[str]) -> dict[int, int]:
    """``category id -> class index``, matched by name against ``data.classes``."""
    index = {name: i for i, name in enumerate(classes)}
    mapping: dict[int, int] = {}
    for i, entry in enumerate(entries):
        where = f"{json_path}: categories[{i}]"
        if not isinstance(entry, dict) or not _is_int(entry.get("id")) or not isinstance(entry.get("name"), str):
            raise CocoError(f"{where}: a category needs an integer id and a name, got {entry!r}")
        if entry["id"] in mapping:
            raise CocoError(f"{where}: duplicate category id {entry['id']}")
        if entry["name"] not in index:
            raise CocoError(f"{where}: category id {entry['id']} name {entry['name']!r} is not in data.classes "
                            f"{list(classes)}")
        mapping[entry["id"]] = index[entry["name"]]
    return mapping


def _attach_annotations(json_path: Path, entries: list, images: dict[int, dict], category_to_label: dict[int, int],
                        require_annotations: bool) -> list[BoxImage]:
    """One :class:`BoxImage` per image with its validated, clipped boxes; ``iscrowd`` ones skipped."""
    if not entries and require_annotations:
        raise CocoError(f"{json_path}: no annotations; expected a labelled COCO file")
    boxes: dict[int, list] = {image_id: [] for image_id in images}
    labels: dict[int, list] = {image_id: [] for image_id in images}
    crowd = 0
    for i, entry in enumerate(entries):
        where = f"{json_path}: annotations[{i}] (annotation id {entry.get('id') if isinstance(entry, dict) else None})"
        image_id, label = _check_annotation(where, entry, images, category_to_label)
        if entry.get("iscrowd", 0):
            crowd += 1
            continue
        boxes[image_id].append(_checked_box(where, entry["bbox"], images[image_id]))
        labels[image_id].append(label)
    if crowd:
        log.warning("%s: skipped %d iscrowd annotation(s); crowd regions are not boxes to detect", json_path, crowd)
    return [_box_image(entry, boxes[image_id], labels[image_id]) for image_id, entry in images.items()]


def _check_annotation(where: str, entry: Any, images: dict[int, dict], category_to_label: dict[int, int]):
    """``(image id, class index)`` of a valid annotation entry."""
    if not isinstance(entry, dict) or any(k not in entry for k in ("image_id", "category_id", "bbox")):
        raise CocoError(f"{where}: an annotation needs image_id, category_id and bbox, got {entry!r}")
    if not _is_int(entry["image_id"]) or entry["image_id"] not in images:
        raise CocoError(f"{where}: image_id {entry['image_id']!r} is not a declared image")
    if not _is_int(entry["category_id"]) or entry["category_id"] not in category_to_label:
        raise CocoError(f"{where}: category_id {entry['category_id']!r} is not a declared category "
                        f"(declared: {sorted(category_to_label)})")
    return entry["image_id"], category_to_label[entry["category_id"]]


def _box_problem(x: float, y: float, w: float, h: float, width: int, height: int) -> Optional[str]:
    """Why the ``xywh`` box cannot belong to a ``width`` x ``height`` image, or None when it can."""
    if w <= 0 or h <= 0:
        return "has a non-positive size"
    tol = BOX_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return "lies outside its image"
    return None


def _checked_box(where: str, bbox: Any, image: dict) -> list[float]:
    """The validated COCO ``bbox`` as an ``xyxy`` box clipped to its image."""
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise CocoError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    width, height = image["width"], image["height"]
    problem = _box_problem(*bbox, width, height)
    if problem:
        raise CocoError(f"{where}: bbox {bbox} {problem} (image {image['file_name']!r}, {width}x{height})")
    x, y, w, h = bbox
    return [max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)]


def _box_image(entry: dict, boxes: list, labels: list) -> BoxImage:
    return BoxImage(entry["path"], entry["width"], entry["height"],
                    np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64).reshape(-1))


def resize_boxes(boxes: np.ndarray, width: int, height: int, size: int) -> np.ndarray:
    """Scale ``xyxy`` boxes of a ``width`` x ``height`` image to the ``size`` x ``size`` square it is
    stretched to (as the classification path stretches every image)."""
    scale = np.array([size / width, size / height, size / width, size / height], np.float32)
    return (np.asarray(boxes, np.float32).reshape(-1, 4) * scale).astype(np.float32)


def is_labelled(folder: str | Path) -> bool:
    """Whether ``folder`` holds a labelled detection split: ``annotations.json`` not marked unlabelled."""
    path = Path(folder) / ANNOTATIONS_NAME
    if not path.is_file():
        return False
    data = _load_json(path)
    info = data.get("info") if isinstance(data, dict) else None
    return not (isinstance(info, dict) and info.get("labelled") is False)


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def write_detection_split(folder: str | Path, items: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                          classes: Sequence[str], labelled: bool = True, image_ext: str = ".png") -> int:
    """Write ``(name, (size, size, C) uint8 image, (K, 4) xyxy boxes, (K,) labels)`` items as
    ``folder/<name><ext>``, then ``annotations.json`` and ``manifest.csv`` (empty labels); returns the
    number of images. ``labelled=False`` writes no annotations and marks the file ``info.labelled: false``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, (name, image, boxes, labels) in enumerate(items, start=1):
        file_name = f"{name}{image_ext}"
        _save_image(image, folder / file_name)
        height, width = image.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        if labelled:
            annotations += _annotations(images[-1], boxes, labels, len(classes), len(annotations) + 1)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
    write_json(folder / ANNOTATIONS_NAME, {"info": {"labelled": labelled}, "images": images,
                                           "annotations": annotations, "categories": categories})
    write_manifest(folder, [(entry["file_name"], "") for entry in images])
    return len(images)


def _save_image(image: np.ndarray, path: Path) -> None:
    """``(H, W, 1)`` (saved as mode L) or ``(H, W, 3)`` uint8 -> an image file of ``path``'s format."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"{path}: expected an (H, W, 1|3) uint8 image, got {image.shape} {image.dtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(path)


def _annotations(image: dict, boxes: np.ndarray, labels: np.ndarray, num_classes: int, first_id: int) -> list[dict]:
    """The COCO annotations of one image entry; a box or label that could not be read back is a ValueError."""
    file_name = image["file_name"]
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    if len(boxes) != len(labels):
        raise ValueError(f"{file_name}: {len(boxes)} boxes but {len(labels)} labels")
    out = []
    for k, ((x0, y0, x1, y1), label) in enumerate(zip(boxes, labels)):
        bbox = [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)]
        if not 0 <= int(label) < num_classes:
            raise ValueError(f"{file_name}: box {k} has label {label}, not a class index in [0, {num_classes})")
        finite = all(map(math.isfinite, bbox))
        problem = _box_problem(*bbox, image["width"], image["height"]) if finite else "is not finite"
        if problem:
            raise ValueError(f"{file_name}: box {k} {[x0, y0, x1, y1]} {problem} ({image['width']}x{image['height']})")
        out.append({"id": first_id + k, "image_id": image["id"], "category_id": int(label) + 1, "bbox": bbox,
                    "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0})
    return out
