"""``sim2real export``: a task model or the generator as TorchScript and ONNX files, checked first.

For each format the model is exported in memory (:mod:`pipeline.ship.formats`), run as exported
on the first ``check_count`` images of ``check_images`` (default the prepared real training
images, opened without labels) and compared with the PyTorch model on the same tensors: an export
whose largest absolute difference exceeds :data:`TOLERANCE` (or whose outputs have other shapes, such
as another number of detections) is refused with one line giving the number. Only when every asked
format passed are the files written into ``out_dir``: ``<name><suffix>`` and beside it
``<name><suffix>.json``, the preprocessing a caller must apply (:mod:`pipeline.ship.contract`). Each
file is written to a temporary name and renamed at the end, so a failed export leaves ``out_dir``
as it was; other files in it (the generator's exports beside a task model's) are kept.

A caller must open the model first (:func:`pipeline.ship.shippable.open_task_model` or
:func:`~pipeline.ship.shippable.open_generator_model`, on the CPU: the exported files are CPU files).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pipeline.cli import UserError
from pipeline.io import disk_full_names, temporary_name
from pipeline.messages import printable
from pipeline.ship.contract import input_name, preprocessing
from pipeline.ship.defaults import CHECK_COUNT, CHECK_IMAGES, TOLERANCE
from pipeline.ship.formats import FORMATS, Format, as_arrays
from pipeline.ship.image_inputs import ImageFiles
from pipeline.ship.shippable import Shippable

log = logging.getLogger(__name__)

TRACE_BATCH = 2          # the example a batched model is traced on; the check runs all images in one batch

Outputs = list[tuple[np.ndarray, ...]]   # one tuple of arrays per call (the whole batch, or one image)


class ExportError(UserError):
    """An export that could not be produced or did not match the PyTorch model; nothing was written."""


def export_model(shippable: Shippable, out_dir: str | Path, formats: Sequence[str] = tuple(FORMATS),
                 check_images: str | Path = CHECK_IMAGES,
                 check_count: int = CHECK_COUNT) -> list[dict[str, Any]]:
    """Export ``shippable`` in each of ``formats`` into ``out_dir`` once every export matched PyTorch on
    the first ``check_count`` images of ``check_images``; returns one summary per format (file, the
    largest absolute difference, seconds)."""
    out_dir = Path(out_dir)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserError(f"--format: expected some of {', '.join(FORMATS)}, got {', '.join(unknown) or 'none'}")
    if check_count < 1:
        raise UserError(f"--check-count: expected a number of images >= 1, got {check_count}")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: is a file; --out expects a folder to write the exported files into")
    if not Path(check_images).exists():
        raise UserError(f"{check_images}: not found; --check-images expects real images to check each export on "
                        f"(default {CHECK_IMAGES}, made by the prepare stage)")
    images = ImageFiles(check_images, shippable.channels, shippable.image_size, limit=check_count)
    x = images.batch()
    reference = run_calls(lambda t: as_arrays(shippable.module(t)), x, shippable.per_image)
    files: dict[Path, bytes] = {}
    summaries = []
    for name in dict.fromkeys(formats):
        fmt = FORMATS[name]
        started = time.perf_counter()
        data, runner = produce(fmt, shippable, x)
        diff = compare(fmt, shippable, reference, run_calls(runner, x, shippable.per_image), images)
        seconds = round(time.perf_counter() - started, 3)
        file_name = shippable.name + fmt.suffix
        check = {"images": len(images), "source": str(check_images), "max_abs_diff": diff, "tolerance": TOLERANCE}
        contract = preprocessing(shippable, fmt.name, file_name, check)
        files[out_dir / file_name] = data
        files[out_dir / f"{file_name}.json"] = (json.dumps(contract, indent=2) + "\n").encode()
        summaries.append({"file": str(out_dir / file_name), "format": fmt.name, "max_abs_diff": diff,
                          "images": len(images), "seconds": seconds})
        log.info("%s: %s export matches PyTorch on %d images of %s (max |diff| %.3g) in %.1f s",
                 shippable.source, fmt.label, len(images), check_images, diff, seconds)
    write_all(files, out_dir)
    return summaries


def run_calls(run: Callable[[torch.Tensor], tuple[np.ndarray, ...]], x: torch.Tensor, per_image: bool) -> Outputs:
    """``run`` on the whole batch ``x``, or on each of its images when the model takes one at a time."""
    with torch.no_grad():
        return [run(image) for image in x] if per_image else [run(x)]


def produce(fmt: Format, shippable: Shippable, x: torch.Tensor) -> tuple[bytes, Callable]:
    """The ``fmt`` export of ``shippable`` as bytes and the runner loaded back from them, or an
    :class:`ExportError` saying why it cannot be made."""
    example = x[0] if shippable.per_image else x[:TRACE_BATCH]
    names = [o["name"] for o in shippable.outputs]
    try:
        return fmt.build(shippable.module, example, input_name(shippable), names, shippable.per_image)
    except Exception as exc:   # tracers and exporters fail in many types; the first line says why
        reason = printable(str(exc).strip().splitlines()[0] if str(exc).strip() else "", 200)
        raise ExportError(f"{shippable.source}: cannot export this {shippable.what} model to {fmt.label} "
                          f"({type(exc).__name__}: {reason}); nothing was written") from exc


def compare(fmt: Format, shippable: Shippable, reference: Outputs, exported: Outputs, images: ImageFiles) -> float:
    """The largest absolute difference between the PyTorch and the exported outputs; an
    :class:`ExportError` when it exceeds :data:`TOLERANCE` or the shapes differ."""
    where = f"on the first {len(images)} images of {images.source}"
    names = [o["name"] for o in shippable.outputs]
    largest = 0.0
    for call, (want, got) in enumerate(zip(reference, exported)):
        image = f" for {images.name(call)}" if shippable.per_image else ""
        if len(want) != len(got):
            raise ExportError(f"{shippable.source}: the {fmt.label} export returns {len(got)} outputs, the PyTorch "
                              f"model {len(want)}{image}; nothing was written")
        for name, a, b in zip(names, want, got):
            if a.shape != b.shape:
                raise ExportError(f"{shippable.source}: the {fmt.label} export's {name} has shape {b.shape}, the "
                                  f"PyTorch model's {a.shape}{image} {where}; nothing was written")
        diff = max((float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max(initial=0))
                    for a, b in zip(want, got)), default=0.0)
        if diff > TOLERANCE and shippable.per_image:
            diff = min(diff, matched_diff(want, got))
        largest = max(largest, diff)
    if not largest <= TOLERANCE:   # NaN fails too
        raise ExportError(f"{shippable.source}: the {fmt.label} export differs from the PyTorch model by up to "
                          f"{largest:.3g} {where} (tolerance {TOLERANCE:g}); nothing was written")
    return largest


def matched_diff(want: tuple[np.ndarray, ...], got: tuple[np.ndarray, ...]) -> float:
    """The largest difference once each row of ``got`` (a detection: its box, score and label) is paired
    with its nearest row of ``want``: detections come sorted by score, and two whose scores tie within
    float error may come in either order. Pairs are taken closest first."""
    rows = len(want[0]) if want else 0
    if rows == 0 or any(len(a) != rows for a in (*want, *got)):
        return float("inf")
    a, b = (np.concatenate([o.reshape(rows, -1).astype(np.float64) for o in side], axis=1) for side in (want, got))
    cost = np.abs(a[:, None, :] - b[None, :, :]).max(axis=2)
    worst = 0.0
    for _ in range(rows):
        i, j = np.unravel_index(np.argmin(cost), cost.shape)
        worst = max(worst, float(cost[i, j]))
        cost[i, :], cost[:, j] = np.inf, np.inf
    return worst


def write_all(files: dict[Path, bytes], out_dir: Path) -> None:
    """Write every file to its temporary name, then rename them all; on any failure the temporary
    files are removed and the folder keeps what it held (a full disk is one line naming ``out_dir``)."""
    written: list[Path] = []
    with disk_full_names(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            for path, data in files.items():
                written.append(temporary_name(path))
                temporary_name(path).write_bytes(data)
            for path in files:
                os.replace(temporary_name(path), path)
        except BaseException:
            for tmp in written:
                tmp.unlink(missing_ok=True)
            raise
