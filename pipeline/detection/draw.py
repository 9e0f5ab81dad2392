"""A PNG grid of images with their ground-truth boxes (green) and confident detections (red, labelled
with class name and score), drawn with OpenCV.

Layout: tiles of ``H * scale`` pixels (nearest-neighbour upscaling, so small canvases stay sharp and
the labels legible), ``columns`` per row (fewer when there are fewer images), separated and framed by
``PAD`` pixels of dark grey: the picture is ``rows * (H * scale + PAD) + PAD`` high and
``cols * (W * scale + PAD) + PAD`` wide.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

PAD = 4
MIN_TILE = 128                   # default scale: the smallest integer bringing a tile to this size
TRUTH_BGR = (0, 200, 0)          # green
PREDICTION_BGR = (0, 0, 255)     # red
BACKGROUND_GREY = 40
FONT_SCALE = 0.35


def default_scale(height: int) -> int:
    """``ceil(MIN_TILE / height)``, at least 1."""
    return max(1, math.ceil(MIN_TILE / max(1, height)))


def _tile(image: np.ndarray, scale: int) -> np.ndarray:
    """``(H, W, C)`` uint8 with C = 1 or 3 (RGB) -> ``(H * scale, W * scale, 3)`` BGR."""
    import cv2

    image = np.ascontiguousarray(image)
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return cv2.resize(bgr, (image.shape[1] * scale, image.shape[0] * scale), interpolation=cv2.INTER_NEAREST)


def _pixel_box(box: Sequence[float], scale: int) -> tuple[tuple[int, int], tuple[int, int]]:
    x1, y1, x2, y2 = (float(v) * scale for v in box)
    return (int(round(x1)), int(round(y1))), (int(round(x2)) - 1, int(round(y2)) - 1)


def _label(canvas: np.ndarray, text: str, corner: tuple[int, int]) -> None:
    """White text on a red band just above ``corner`` (inside the box when there is no room above)."""
    import cv2

    (w, h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, FONT_SCALE, 1)
    x, y = corner
    top = y - h - baseline - 1 if y - h - baseline - 1 >= 0 else y
    cv2.rectangle(canvas, (x, top), (x + w + 1, top + h + baseline + 1), PREDICTION_BGR, thickness=-1)
    cv2.putText(canvas, text, (x + 1, top + h), cv2.FONT_HERSHEY_SIMPLEX, FONT_SCALE, (255, 255, 255), 1,
                cv2.LINE_AA)


def _draw_tile(image: np.ndarray, prediction: dict, target: dict, classes: Sequence[str], scale: int,
               score_threshold: float) -> np.ndarray:
    import cv2

    tile = _tile(image, scale)
    for box in np.asarray(target["boxes"]).reshape(-1, 4):
        cv2.rectangle(tile, *_pixel_box(box, scale), TRUTH_BGR, thickness=1)
    scores = np.asarray(prediction["scores"]).reshape(-1)
    boxes = np.asarray(prediction["boxes"]).reshape(-1, 4)
    labels = np.asarray(prediction["labels"]).reshape(-1)
    for j in np.argsort(scores):   # the most confident drawn last, on top
        if scores[j] < score_threshold:
            continue
        corner, far = _pixel_box(boxes[j], scale)
        cv2.rectangle(tile, corner, far, PREDICTION_BGR, thickness=1)
        name = classes[int(labels[j])] if 0 <= int(labels[j]) < len(classes) else str(int(labels[j]))
        _label(tile, f"{name} {scores[j]:.2f}", corner)
    return tile


def draw_detections(images_uint8: np.ndarray, predictions: Sequence[dict], targets: Sequence[dict],
                    classes: Sequence[str], path: str | Path, columns: int = 8, score_threshold: float = 0.5,
                    scale: int | None = None) -> Path:
    """Write the grid of ``images_uint8 (N, H, W, C)`` (C = 1 or 3) with ``targets``' boxes and the
    ``predictions`` scoring at least ``score_threshold`` to the PNG ``path``; returns ``path``.
    ``scale`` (integer upscaling) defaults to :func:`default_scale` of the image height."""
    import cv2

    images = np.asarray(images_uint8)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"draw_detections needs (N, H, W, C) images with N >= 1, got shape {images.shape}")
    if not len(images) == len(predictions) == len(targets):
        raise ValueError(f"{len(images)} images, {len(predictions)} predictions, {len(targets)} targets")
    scale = default_scale(images.shape[1]) if scale is None else int(scale)
    tiles = [_draw_tile(image, _cpu(p), _cpu(t), classes, scale, score_threshold)
             for image, p, t in zip(images, predictions, targets)]
    cols = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    th, tw = tiles[0].shape[:2]
    canvas = np.full((rows * (th + PAD) + PAD, cols * (tw + PAD) + PAD, 3), BACKGROUND_GREY, np.uint8)
    for i, tile in enumerate(tiles):
        y, x = PAD + (i // cols) * (th + PAD), PAD + (i % cols) * (tw + PAD)
        canvas[y:y + th, x:x + tw] = tile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"could not write {path}")
    return path


def _cpu(item: dict) -> dict:
    """Tensors of a prediction or target dict as numpy arrays."""
    return {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in item.items()}
