"""DVC stage ``report``: compare every evaluated variant in ``reports/summary.{json,md,png}``.

The ``<variant>.accuracy`` / ``.macro_f1`` / ``.gap_closed`` metrics also go to the MLflow parent
run of this pipeline execution, so ``mlflow.search_runs`` shows all variants side by side.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from pipeline import cli
from pipeline.config import load_params
from pipeline.provenance import provenance
from pipeline.report import EVAL_DIR, OUT_DIR, write_report
from pipeline.tracking import stage_run


def main(argv: Sequence[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--eval", default=str(EVAL_DIR))
    ap.add_argument("--out", default=str(OUT_DIR))
    args = ap.parse_args(argv)

    params = load_params(args.params)
    with stage_run("report", params) as tracker:
        write_report(args.eval, args.out, tracker, order=list(params.variants))
        tracker.log_dict(provenance(params, "report", ("variants",)), "provenance.json")
    print((Path(args.out) / "summary.md").read_text(), end="")


if __name__ == "__main__":
    cli.run(main)
