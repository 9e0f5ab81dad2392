"""DVC stage ``train_gan``: the balanced CycleGAN between data/prepared/source and target/train.

Reads the frozen source-only task model ``models/task/source_only/model.pt`` (trained here as a
fallback when it is missing), trains G (source -> real), F (real -> source) and two PatchGAN
discriminators, and writes ``models/gan/{generator.pt,provenance.json}`` (rank 0),
``reports/gan/{history.csv,metrics.json,samples.png}``. A rerun after an interruption resumes from
``checkpoints/gan/last.pt``. Launch with ``torchrun`` for DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from pipeline import cli
from pipeline.config import load_params
from pipeline.distributed import init_runtime, shutdown
from pipeline.gan.trainer import GanPaths, train_gan
from pipeline.task.mlflow_model import generator_spec
from pipeline.tracking import stage_run

log = logging.getLogger("stages.train_gan")


def main(argv: Sequence[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m stages.train_gan", description=cli.help_text(__doc__))
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--task-model", default="models/task/source_only/model.pt")
    ap.add_argument("--models", default="models/gan")
    ap.add_argument("--checkpoints", default="checkpoints/gan")
    ap.add_argument("--reports", default="reports/gan")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    paths = GanPaths(Path(args.checkpoints), Path(args.models), Path(args.reports))
    runtime = init_runtime(params.gan.device, "gan.device")
    try:
        with stage_run("train_gan", params) as tracker:
            tracker.log_dataset(f"{args.prepared}/source/train", context="train")
            tracker.log_dataset(f"{args.prepared}/target/train", context="target")
            result = train_gan(params, args.prepared, args.task_model, paths, tracker, runtime)
            if runtime.is_main and result["generator"] is not None:
                tracker.set_tags({"fingerprint": result["fingerprint"],
                                  "resumed_from_epoch": result["resumed_from_epoch"]})
                for name in ("history.csv", "metrics.json", "samples.png"):
                    tracker.log_artifact(paths.reports / name)
                for name in ("generator.pt", "provenance.json"):
                    tracker.log_artifact(paths.models / name, "model")
                tracker.log_model(generator_spec(result["generator"]), "generator")
                log.info("generator written to %s", result["generator"])
    finally:
        shutdown(runtime)


if __name__ == "__main__":
    cli.run(main)
