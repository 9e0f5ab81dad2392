"""DVC stage ``translate``: the labelled renders through models/gan/generator.pt.

Each ``--input`` folder is translated into the ``--output`` at the same position: by default
``data/prepared/source/{train,val}`` into ``data/translated/source/{train,val}`` (the validation
renders too, so a variant trained on translated images is validated in its own domain). Each output
holds PNGs, ``manifest.csv`` with the labels kept, the labels' origin and ``provenance.json``, and is
written atomically: an interrupted run leaves no half-written folder.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from pipeline import cli
from pipeline.config import load_params
from pipeline.gan.translate import translate_folder
from pipeline.provenance import provenance
from pipeline.tracking import stage_run

log = logging.getLogger("stages.translate")


def main(argv: Sequence[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m stages.translate", description=cli.help_text(__doc__))
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--generator", default="models/gan/generator.pt")
    ap.add_argument("--input", nargs="+", default=["data/prepared/source/train", "data/prepared/source/val"])
    ap.add_argument("--output", nargs="+", default=["data/translated/source/train", "data/translated/source/val"])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = ap.parse_args(argv)
    if len(args.input) != len(args.output):
        ap.error(f"--input names {len(args.input)} folder(s) and --output {len(args.output)}: give one output per input")

    params = load_params(args.params)
    with stage_run("translate", params) as tracker:
        for source, output in zip(args.input, args.output):
            tracker.log_dataset(source, context="input")
            record = provenance(params, "translate", ("translate",), generator=args.generator, input=source)
            summary = translate_folder(args.generator, source, output, params.translate.batch_size,
                                       args.device, provenance=record)
            split = Path(output).name              # train, val: one set of metrics per folder
            tracker.log_metrics({f"{split}.{key}": summary[key] for key in ("images", "images_per_second", "seconds")})
            tracker.set_tags({"generator_params_hash": summary["generator_params_hash"]})
            log.info("translated %d images into %s in %.1fs (%.0f images/s)", summary["images"], output,
                     summary["seconds"], summary["images_per_second"])


if __name__ == "__main__":
    cli.run(main)
