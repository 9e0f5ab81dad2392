"""DVC stage ``translate``: data/prepared/source/train through models/gan/generator.pt.

Writes ``data/translated/source/train`` (PNGs, ``manifest.csv`` with the labels kept, and
``provenance.json``) atomically: an interrupted run leaves no half-written folder.
"""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

from pipeline import cli
from pipeline.config import load_params
from pipeline.gan.translate import translate_folder
from pipeline.provenance import provenance
from pipeline.tracking import stage_run

log = logging.getLogger("stages.translate")


def main(argv: Sequence[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m stages.translate", description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--generator", default="models/gan/generator.pt")
    ap.add_argument("--input", default="data/prepared/source/train")
    ap.add_argument("--output", default="data/translated/source/train")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = ap.parse_args(argv)

    params = load_params(args.params)
    with stage_run("translate", params) as tracker:
        tracker.log_dataset(args.input, context="input")
        record = provenance(params, "translate", ("translate",), generator=args.generator, input=args.input)
        summary = translate_folder(args.generator, args.input, args.output, params.translate.batch_size,
                                   args.device, provenance=record)
        tracker.log_metrics({"images": summary["images"], "images_per_second": summary["images_per_second"],
                             "seconds": summary["seconds"]})
        tracker.set_tags({"generator_params_hash": summary["generator_params_hash"]})
    log.info("translated %d images into %s in %.1fs (%.0f images/s)", summary["images"], args.output,
             summary["seconds"], summary["images_per_second"])


if __name__ == "__main__":
    cli.run(main)
