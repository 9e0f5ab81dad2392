"""DVC stage ``train_task@<variant>``: train the variant's task model by its method (supervised, dann,
self_training or any registered one), then AdaBN and the prototype head when the variant asks.

Writes ``models/task/<variant>/{model.pt,provenance.json}`` (atomically, rank 0), the per-round
``reports/train/<variant>/history.csv`` and ``metrics.json``, and resumes from
``checkpoints/task/<variant>/last.pt`` when interrupted. Launch with ``torchrun`` for
DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from pipeline import cli
from pipeline.config import load_params
from pipeline.distributed import init_runtime, shutdown
from pipeline.io import atomic_directory
from pipeline.provenance import execution, provenance, write_provenance
from pipeline.task.train import FINGERPRINT_SECTIONS, export_task_model, train_task_model
from pipeline.tracking import stage_run

log = logging.getLogger("stages.train_task")


def main(argv: Sequence[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m stages.train_task", description=cli.help_text(__doc__))
    ap.add_argument("--variant", required=True, help="a key of 'variants' in params.yaml")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", default="data/prepared", help="prepare's output (source/val, target/train)")
    ap.add_argument("--models", default="models/task")
    ap.add_argument("--checkpoints", default="checkpoints/task")
    ap.add_argument("--reports", default="reports/train")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    variant = params.variant(args.variant)
    runtime = init_runtime(params.task.device, "task.device")
    try:
        with stage_run("train_task", params, args.variant, {"method": variant.method}) as tracker:
            tracker.log_dataset(variant.train, context="train")
            tracker.log_dataset(f"{args.prepared}/source/val", context="validation")
            tracker.log_dataset(f"{args.prepared}/target/train", context="target")
            result = train_task_model(params, args.variant, runtime, tracker,
                                      checkpoint_dir=Path(args.checkpoints) / args.variant,
                                      reports_dir=Path(args.reports) / args.variant, prepared=args.prepared, log=log)
            if runtime.is_main:
                with atomic_directory(Path(args.models) / args.variant) as tmp:
                    export_task_model(result, tmp, tracker)
                    record = provenance(params, "train_task", FINGERPRINT_SECTIONS + ("variants",), variant=args.variant,
                                        effective=params.effective_task(args.variant))
                    write_provenance(tmp, record)
                tracker.log_dict(execution(record), "provenance.json")
                tracker.log_artifact(Path(args.reports) / args.variant / "history.csv")
    finally:
        shutdown(runtime)


if __name__ == "__main__":
    cli.run(main)
