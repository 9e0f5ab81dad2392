"""DVC stage ``report``: compare every evaluated variant in ``reports/summary.{json,md,png}``.

It also reads the label-free scores in ``reports/train/<variant>/metrics.json`` and marks the variant
to pick without real labels (:mod:`pipeline.selection`). The ``<variant>.<metric>``
metrics also go to the MLflow parent run of this pipeline execution, so ``mlflow.search_runs``
shows all variants side by side; the pick is the tag ``sim2real.pick`` there and on the report run, and
the registry alias ``champion`` on the registered version of the pick's model (on none without a pick).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from pipeline import cli
from pipeline.config import load_params
from pipeline.provenance import execution, provenance
from pipeline.report import EVAL_DIR, OUT_DIR, TRAIN_DIR
from pipeline.task.kinds import task_kind
from pipeline.tracking import end_pipeline_run, stage_run


def main(argv: Sequence[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m stages.report", description=cli.help_text(__doc__))
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--eval", default=str(EVAL_DIR))
    ap.add_argument("--train", default=str(TRAIN_DIR), help="folder of <variant>/metrics.json with label-free scores")
    ap.add_argument("--out", default=str(OUT_DIR))
    args = ap.parse_args(argv)

    params = load_params(args.params)
    with stage_run("report", params) as tracker:
        summary = task_kind(params).write_report(params, args.eval, args.out, tracker, args.train)
        versions = tracker.register_pipeline_models()  # "which model do I ship": stable names in the registry,
        tracker.set_champion(summary.pick, versions)    # and the alias `champion` on the pick's version
        tracker.log_dict(execution(provenance(params, "report", ("variants", "data", "task"))), "provenance.json")
    end_pipeline_run(params)                   # the report is the pipeline's last stage
    print((Path(args.out) / "summary.md").read_text(), end="")


if __name__ == "__main__":
    cli.run(main)
