"""DVC stage ``evaluate@<variant>``: score the exported model on the held-out real test split.

Writes ``reports/eval/<variant>/{metrics.json,predictions.csv,confusion.png}``; the provenance
record goes to the MLflow run ``evaluate@<variant>``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from pipeline import cli
from pipeline.config import load_params
from pipeline.distributed import resolve_device
from pipeline.provenance import execution, provenance
from pipeline.task.evaluate import TARGET_TEST, check_heldout, evaluate_variant
from pipeline.tracking import stage_run


def main(argv: Sequence[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m stages.evaluate", description=cli.help_text(__doc__))
    ap.add_argument("--variant", required=True, help="a key of 'variants' in params.yaml")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--models", default="models/task")
    ap.add_argument("--test", default=str(TARGET_TEST),
                    help="the held-out test split made by prepare (a folder holding the HELDOUT marker)")
    ap.add_argument("--reports", default="reports/eval")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    params.variant(args.variant)
    check_heldout(args.test)   # before a tracking run is opened for a request that is refused
    device = resolve_device(params.task.device, "task.device")
    with stage_run("evaluate", params, args.variant) as tracker:
        tracker.log_dataset(args.test, context="test")
        evaluate_variant(params, args.variant, Path(args.models) / args.variant,
                         Path(args.reports) / args.variant, tracker, test_dir=args.test, device=device)
        tracker.log_dict(execution(provenance(params, "evaluate", ("seed", "data"), variant=args.variant)), "provenance.json")


if __name__ == "__main__":
    cli.run(main)
