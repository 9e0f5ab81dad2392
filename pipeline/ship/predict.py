"""``sim2real predict``: a task model's predictions for a folder of images, written to one file.

The images (:mod:`pipeline.ship.image_inputs`: a folder, recursively, a prepared split in its
manifest's order, or a manifest CSV whose labels are not read) are decoded as prepare does and run
through the model in batches (the task kind's :meth:`~pipeline.task.kind.TaskKind.predictions`), so
the prepared test split, opened without labels, gets the very classes the evaluate stage scored.
What is written depends on what the model returns (its kind's ``served_output``):

* logits (a classifier): a CSV, one row per image: ``path,predicted,confidence,prob_<class>...``
  (``path`` relative to the folder or the manifest's folder, ``confidence`` the top probability,
  the probabilities the softmax of the logits, in the order of the model's classes);
* detections (a detector): a COCO results JSON, one entry per detection: ``image_id`` (1-based, in
  the images' order: the ids prepare gives a split's ``annotations.json``), ``file_name``,
  ``category_id`` (1-based in the model's classes, as in the project's COCO files), ``category``,
  ``bbox`` ``[x, y, w, h]`` in pixels of the ORIGINAL image (the model's boxes, found on the image
  stretched to its square input, scaled back by width / size and height / size), ``score``.

The file is written atomically: a failure (a corrupt image, an interruption) leaves no partial file.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.cli import UserError
from pipeline.data.images import upright_size
from pipeline.distributed import resolve_device
from pipeline.io import atomic_file
from pipeline.ship.defaults import BATCH_SIZE
from pipeline.ship.image_inputs import ImageFiles
from pipeline.ship.shippable import open_task_model

log = logging.getLogger(__name__)

Batches = Iterator[tuple[list[int], list[dict[str, np.ndarray]]]]


def predict_images(model_file: str | Path, images: str | Path, out: str | Path, batch_size: int = BATCH_SIZE,
                   device: str = "auto") -> dict[str, Any]:
    """Predict every image of ``images`` with the task model ``model_file``; write ``out`` (CSV or
    COCO JSON, as the model's kind returns classes or boxes); returns a summary."""
    out = Path(out)
    if batch_size < 1:
        raise UserError(f"--batch-size: expected a number >= 1, got {batch_size}")
    if out.is_dir():
        raise UserError(f"{out}: is a folder; --out expects the file to write")
    if out.resolve() == Path(images).resolve():
        raise UserError(f"{out}: is the --images manifest; --out expects another file to write")
    shipped = open_task_model(model_file, resolve_device(device, "--device"))
    if shipped.kind.served_output not in WRITERS:
        raise UserError(f"{model_file}: predict writes classes or boxes, not what a {shipped.what} model returns "
                        f"({shipped.kind.served_output})")
    suffix, write = WRITERS[shipped.kind.served_output]
    if out.suffix.lower() != suffix:
        raise UserError(f"{out}: a {shipped.what} model's predictions are written as {suffix}; name --out *{suffix}")
    inputs = ImageFiles(images, shipped.channels, shipped.image_size)
    started = time.perf_counter()
    with atomic_file(out, "w", newline="") as fh:
        count = write(fh, inputs, batches(shipped.kind.predictions, shipped.model, inputs, batch_size),
                      list(shipped.meta["classes"]))
    seconds = time.perf_counter() - started
    log.info("%s: %d images predicted into %s (%.0f images/s)", model_file, len(inputs), out,
             len(inputs) / max(seconds, 1e-9))
    return {"images": len(inputs), "rows": count, "out": str(out), "seconds": round(seconds, 3)}


def batches(predict: Callable, model: torch.nn.Module, inputs: ImageFiles, batch_size: int) -> Batches:
    """``(indices, per-image predictions)`` for each batch of ``inputs``, in order."""
    device = next(model.parameters()).device
    for x, index in DataLoader(inputs, batch_size=batch_size, shuffle=False, num_workers=0):
        yield index.tolist(), predict(model, x.to(device))


def write_class_table(fh, inputs: ImageFiles, results: Batches, classes: Sequence[str]) -> int:
    """``path,predicted,confidence,prob_<class>...``: one row per image; returns the rows written."""
    writer = csv.writer(fh)
    writer.writerow(["path", "predicted", "confidence", *(f"prob_{name}" for name in classes)])
    rows = 0
    for index, predictions in results:
        for i, prediction in zip(index, predictions):
            logits = torch.from_numpy(prediction["logits"]).double()
            probabilities = torch.softmax(logits, dim=0).numpy()
            best = int(logits.argmax())   # the class the evaluate stage takes: argmax of the logits
            writer.writerow([inputs.name(i), classes[best], f"{probabilities[best]:.6f}",
                             *(f"{p:.6f}" for p in probabilities)])
            rows += 1
    return rows


def write_coco_results(fh, inputs: ImageFiles, results: Batches, classes: Sequence[str]) -> int:
    """A COCO results list, boxes in the original images' pixels; returns the detections written."""
    entries = []
    for index, predictions in results:
        for i, found in zip(index, predictions):
            width, height = upright_size(inputs.files[i])
            scale = np.array([width, height, width, height], np.float64) / inputs.size
            for box, score, label in zip(found["boxes"], found["scores"], found["labels"]):
                x1, y1, x2, y2 = (np.asarray(box, np.float64) * scale).tolist()
                bbox = [round(v, 3) for v in (x1, y1, x2 - x1, y2 - y1)]
                entries.append({"image_id": i + 1, "file_name": inputs.name(i), "category_id": int(label) + 1,
                                "category": classes[int(label)], "bbox": bbox, "score": round(float(score), 6)})
    fh.write(json.dumps(entries, indent=1) + "\n")
    return len(entries)


#: What a model's kind returns (``served_output``) -> the file suffix and the writer.
WRITERS: dict[str, tuple[str, Callable[..., int]]] = {
    "logits": (".csv", write_class_table),
    "detections": (".json", write_coco_results),
}
