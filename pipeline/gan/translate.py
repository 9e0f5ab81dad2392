"""Translate a folder of synthetic images with an exported generator (``models/gan/generator.pt``).

The input is either a prepared split (a folder with ``manifest.csv``; its labels are kept) or any
folder of images without a manifest (every image file below it, in sorted order, unlabelled).
Images are decoded to the generator's channels and size (and inverted, when the generator learnt from
renders prepare inverted to the real images' ink polarity and the input is not a prepared split: see
:mod:`pipeline.data.polarity`), streamed through it in batches under
``torch.inference_mode`` and written as PNGs plus a ``manifest.csv`` (``path,label,source``) into
a temporary sibling folder that replaces the output only when everything succeeded, with a
``translation.json`` marker (what was translated, with which generator). Memory does not grow with the number of images.
A detection split's boxes (COCO ``annotations.json`` beside the images) are carried over unchanged:
the generator keeps every pixel where it is, and the image names stay the same.

Nothing the tool did not write is ever replaced: an output that is, lies inside or holds the input
is refused, and so is an existing output folder other than an empty one or an earlier translation
(its marker or ``path,label,source`` manifest, and no file that manifest does not list). A file that
is not an exported generator (a task model, a training checkpoint, not a torch file) is named as such.
Every refusal is one ``error:`` line and exit status 2.

Command line (also installed as ``sim2real-translate``)::

    python -m pipeline.gan.translate --generator models/gan/generator.pt --input DIR --output DIR \\
        [--batch-size 256] [--device auto] [--workers 0]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.checkpoint import CheckpointError
from pipeline.cli import UserError, help_text
from pipeline.data.images import BadImageError, is_image_file, load_image
from pipeline.data.manifest import (MANIFEST_NAME, ImageSet, ManifestError, label_origin, read_manifest, to_tensor,
                                    to_uint8, write_label_origin)
from pipeline.data.polarity import invert
from pipeline.distributed import resolve_device
from pipeline.gan.export import open_generator
from pipeline.gan.output_folder import (ANNOTATIONS_NAME, MANIFEST_COLUMNS, PROVENANCE_NAME, TOOL,
                                        TRANSLATION_MARKER, check_input_folder, check_paths, check_replaceable)
from pipeline.io import atomic_directory, save_png, write_json

log = logging.getLogger(__name__)

class TranslationInputs(Dataset):
    """``(image tensor, index)`` for each input image; :meth:`describe` gives its output row."""

    def __init__(self, files: list[Path], labels: list[str], root: Path, channels: int, size: int):
        self.files, self.labels, self.root = files, labels, root
        self.channels, self.size = channels, size
        self.outputs = output_names(files, root)
        self.invert = False     # decode each image as its negative (raw renders for a generator of inverted ones)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = load_image(self.files[i], self.channels, self.size)
        return to_tensor(invert(image) if self.invert else image), i

    def describe(self, i: int) -> tuple[str, str, str]:
        """``(output path, label, input path)``, paths relative to their folders."""
        return self.outputs[i], self.labels[i], relative(self.files[i], self.root)

    @classmethod
    def from_folder(cls, folder: str | Path, classes: Sequence[str], channels: int, size: int) -> "TranslationInputs":
        """A folder with ``manifest.csv`` (labels kept when every row has one), or a plain image folder."""
        folder = Path(folder)
        check_input_folder(folder)
        if (folder / MANIFEST_NAME).is_file():
            return cls._from_manifest(folder, classes, channels, size)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p)
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        if not files:
            raise FileNotFoundError(f"{folder}: no image files (and no {MANIFEST_NAME}) found")
        return cls(files, [""] * len(files), folder, channels, size)

    @classmethod
    def _from_manifest(cls, folder: Path, classes: Sequence[str], channels: int, size: int) -> "TranslationInputs":
        entries = read_manifest(folder / MANIFEST_NAME, classes)
        labelled = all(e.label is not None for e in entries)
        if not labelled and any(e.label is not None for e in entries):
            log.warning("%s: some rows have no label; translating the folder as unlabelled", folder)
        # ImageSet enforces the contract (held-out splits never give their labels away).
        dataset = ImageSet(folder, classes, channels, size, labels=labelled)
        labels = [classes[e.label] if labelled else "" for e in dataset.entries]
        return cls([e.path for e in dataset.entries], labels, folder.resolve(), channels, size)


def relative(path: Path, root: Path) -> str:
    path, root = Path(path).resolve(), Path(root).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name


def output_names(files: list[Path], root: Path) -> list[str]:
    """Each input's path relative to ``root`` with a ``.png`` suffix; a clash is an error naming both."""
    seen: dict[str, Path] = {}
    names = []
    for f in files:
        name = Path(relative(f, root)).with_suffix(".png").as_posix()
        if name in seen:
            raise ValueError(f"{f} and {seen[name]} would both be written as {name}; rename one of them")
        seen[name] = f
        names.append(name)
    return names


def translate_folder(generator_file: str | Path, input_folder: str | Path, out_dir: str | Path,
                     batch_size: int = 256, device: str = "auto", workers: int = 0,
                     provenance: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Translate every image of ``input_folder`` into ``out_dir`` (replaced atomically).

    Writes PNGs (same relative paths, ``.png``), ``manifest.csv`` with ``path,label,source`` (labels
    kept from a labelled manifest, empty otherwise), the :data:`TRANSLATION_MARKER` and, when given,
    ``provenance.json``. On any error (a bad image, an interruption) ``out_dir`` is left as it was.
    Raises :class:`TranslateError` before anything is written when ``out_dir`` is, holds or lies in
    the input, or is an existing folder this tool did not write. Returns a summary.
    """
    input_folder, out_dir = Path(input_folder), Path(out_dir)
    check_input_folder(input_folder)
    check_paths(input_folder, out_dir)
    check_replaceable(out_dir)
    dev = resolve_device(device)
    generator, meta = open_generator(generator_file, dev)
    channels, size = int(meta["channels"]), int(meta["image_size"])
    inputs = TranslationInputs.from_folder(input_folder, meta["classes"], channels, size)
    # The generator learnt from renders as prepare wrote them: inverted where the real images' ink
    # polarity is the other way. A prepared split (it carries prepare's LABEL_ORIGIN mark) already is.
    inputs.invert = bool(meta.get("source_inverted")) and label_origin(input_folder) is None
    if inputs.invert:
        log.info("%s: inverting the images before translating them (the generator learnt from inverted renders)",
                 input_folder)
    loader = DataLoader(inputs, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=dev.type == "cuda")
    started = time.perf_counter()
    with atomic_directory(out_dir) as tmp:
        write_translations(generator, loader, inputs, tmp)
        boxes = carry_annotations(input_folder, inputs, tmp)
        carry_label_origin(input_folder, any(inputs.labels) or boxes, tmp)
        seconds = time.perf_counter() - started
        # What is written is a function of the inputs only (the folder is a DVC dependency of
        # train_task@translated); timings go to the returned summary, for logs and MLflow.
        record = {"images": len(inputs), "labelled": any(inputs.labels) or boxes,
                  "input": str(input_folder), "output": str(out_dir), "generator": str(generator_file),
                  "generator_params_hash": meta.get("params_hash"), "channels": channels, "image_size": size,
                  "inputs_inverted": inputs.invert}
        write_json(tmp / TRANSLATION_MARKER, {"written_by": TOOL, **record})
        if provenance is not None:
            write_json(tmp / PROVENANCE_NAME, {**provenance, "translation": record})
    return {**record, "seconds": round(seconds, 3), "images_per_second": round(len(inputs) / max(seconds, 1e-9), 1)}


def carry_annotations(input_folder: Path, inputs: TranslationInputs, out: Path) -> bool:
    """Copy ``annotations.json`` (the boxes of a detection split) into ``out`` when the input has one
    and is not a held-out split, after checking each image it names was translated under the same
    name. Returns whether it did."""
    from pipeline.data.manifest import is_heldout

    source = input_folder / ANNOTATIONS_NAME
    if not source.is_file() or is_heldout(input_folder) or is_heldout(input_folder.resolve()):
        return False
    blob = json.loads(source.read_text())
    written = set(inputs.outputs)
    missing = [im.get("file_name") for im in blob.get("images", []) if im.get("file_name") not in written]
    if missing:
        raise ValueError(f"{source}: names images that were not translated under the same name, e.g. {missing[:3]}")
    write_json(out / ANNOTATIONS_NAME, blob)
    return True


def carry_label_origin(input_folder: Path, labelled: bool, out: Path) -> Optional[str]:
    """Mark ``out`` with where its labels come from: the input's mark when the labels were kept (a
    translated real image keeps a real label: a variant training on it uses target labels), ``none``
    when nothing was labelled; no mark when the input's origin is unknown. Returns the origin written."""
    origin = label_origin(input_folder) if labelled else "none"
    if origin is not None:
        write_label_origin(out, origin)
    return origin


def write_translations(generator: torch.nn.Module, loader: DataLoader, inputs: TranslationInputs, folder: Path) -> None:
    """Stream batches through ``generator``; each image is written as soon as it is translated."""
    device = next(generator.parameters()).device
    with (folder / MANIFEST_NAME).open("w", newline="") as fh, torch.inference_mode():
        rows = csv.writer(fh)
        rows.writerow(MANIFEST_COLUMNS)
        for x, index in loader:
            images = to_uint8(generator(x.to(device, non_blocking=True)))
            for image, i in zip(images, index.tolist()):
                name, label, source = inputs.describe(i)
                save_png(image, folder / name)
                rows.writerow([name, label, source])


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``sim2real-translate``: translate any folder of new simulator renders."""
    from pipeline import cli

    cli.run(_cli, argv)


def _cli(argv: Sequence[str]) -> None:
    ap = argparse.ArgumentParser(prog="sim2real-translate", description=help_text(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="models/gan/generator.pt", help="an exported generator.pt")
    ap.add_argument("--input", required=True, help="a folder with manifest.csv, or any folder of images")
    ap.add_argument("--output", required=True, help="the folder to write (replaced atomically); an existing one "
                    "must be empty or an earlier output of this tool, and outside the input")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes decoding images")
    args = ap.parse_args(argv)
    if args.batch_size <= 0:
        ap.error("--batch-size must be positive")
    record = {"command": " ".join(sys.argv), "generator": args.generator, "input": args.input,
              "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        summary = translate_folder(args.generator, args.input, args.output, args.batch_size, args.device,
                                   args.workers, provenance=record)
    except (BadImageError, ManifestError, CheckpointError, UserError):
        raise  # reported by cli.run: one line, exit 2 (a wrong generator file, paths it refuses)
    except ValueError as exc:  # a device that is not there, two inputs with one output name
        ap.exit(2, f"error: {exc}\n")
    log.info("translated %d images into %s (%.0f images/s)", summary["images"], args.output,
             summary["images_per_second"])


if __name__ == "__main__":
    main()
