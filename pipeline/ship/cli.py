"""The ``sim2real`` command: ``export``, ``predict`` and ``translate`` (``sim2real-translate`` as well).

Every refusal (a missing or wrong model file, a folder without images, an export that does not match
PyTorch) is one ``error:`` line naming the file or option, with exit status 2 (:func:`pipeline.cli.run`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from pipeline import cli
from pipeline.ship.defaults import BATCH_SIZE, CHECK_COUNT, CHECK_IMAGES, FORMAT_NAMES

EXPORT_HELP = """\
Export a task model (models/task/<variant>/model.pt) or the generator (models/gan/generator.pt) as
TorchScript (<name>.torchscript.pt) and ONNX (<name>.onnx) files in --out, each with a JSON file
beside it (<file>.json) saying the preprocessing a caller must apply and what the outputs are. Each
export is first run on the first --check-count images of --check-images (opened without labels) and
compared with the PyTorch model; one that differs by more than 1e-4 is refused and nothing is written.
A detector is exported per image: one image in, its boxes, scores and labels out."""

PREDICT_HELP = """\
Predict every image of a folder (recursively; a prepared split in its manifest's order) or of a
manifest CSV (path[,label]: its labels are not read) with a task model. Images are decoded as
prepare decodes them. A classifier writes a CSV (path, predicted, confidence, prob_<class> per class);
a detector writes a COCO results JSON (image_id, file_name, category_id, category, bbox [x, y, w, h]
in pixels of the original image, score)."""

TRANSLATE_HELP = "translate synthetic images with the exported generator (what sim2real-translate does)"


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``sim2real``: the command line entry point (``[project.scripts]``). ``sim2real translate ...`` is
    ``sim2real-translate ...``: the same parser and code (:func:`pipeline.gan.translate.main`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["translate"]:
        from pipeline.gan.translate import main as translate

        translate(args[1:])
        return
    cli.run(_main, args)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sim2real", description="Ship a model trained by the sim2real pipeline.")
    commands = ap.add_subparsers(dest="command", required=True, metavar="{export,predict,translate}")

    export = commands.add_parser("export", help="TorchScript and ONNX files of a task model or the generator",
                                 description=EXPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="an exported task model, e.g. models/task/<variant>/model.pt")
    which.add_argument("--generator", help="the exported generator, e.g. models/gan/generator.pt")
    export.add_argument("--out", required=True, help="the folder to write the exported files into")
    export.add_argument("--format", nargs="+", choices=FORMAT_NAMES, default=list(FORMAT_NAMES),
                        help="the formats to write (default: all)")
    export.add_argument("--check-images", default=str(CHECK_IMAGES),
                        help="real images to check each export on (default: %(default)s)")
    export.add_argument("--check-count", type=int, default=CHECK_COUNT,
                        help="how many of them, the first ones (default: %(default)s)")

    predict = commands.add_parser("predict", help="a task model's predictions for a folder of images",
                                  description=PREDICT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_argument("--model", required=True, help="an exported task model, e.g. models/task/<variant>/model.pt")
    predict.add_argument("--images", required=True, help="a folder of images, a prepared split or a manifest CSV")
    predict.add_argument("--out", required=True, help="the file to write: .csv (classifier) or .json (detector)")
    predict.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="images per batch (default: %(default)s)")
    predict.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))

    commands.add_parser("translate", help=TRANSLATE_HELP, add_help=False)   # main() hands it to sim2real-translate
    return ap


def _main(argv: Sequence[str]) -> None:
    args = parser().parse_args(argv)
    {"export": _export, "predict": _predict}[args.command](args)


def _export(args: argparse.Namespace) -> None:
    from pipeline.ship.export import export_model
    from pipeline.ship.shippable import open_generator_model, open_task_model

    shipped = open_task_model(args.model) if args.model else open_generator_model(args.generator)
    export_model(shipped, args.out, args.format, args.check_images, args.check_count)   # logs each file


def _predict(args: argparse.Namespace) -> None:
    from pipeline.ship.predict import predict_images

    predict_images(args.model, args.images, args.out, args.batch_size, args.device)   # logs what it wrote


if __name__ == "__main__":
    main()
