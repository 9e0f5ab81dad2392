"""DVC stage ``prepare``: params.yaml -> data/prepared/{source,target}/... + reports/prepare/."""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

from pipeline import cli
from pipeline.config import flatten, load_params
from pipeline.io import save_png, write_json
from pipeline.provenance import execution, provenance
from pipeline.task.kinds import task_kind
from pipeline.tracking import stage_run

log = logging.getLogger("stages.prepare")


def main(argv: Sequence[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m stages.prepare", description=cli.help_text(__doc__))
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="data/prepared")
    ap.add_argument("--reports", default="reports/prepare")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    with stage_run("prepare", params) as tracker:
        record = provenance(params, "prepare", ("seed", "data", "task"))
        stats, preview = task_kind(params).prepare(params, args.out, record)
        tracker.log_dict(execution(record), "provenance.json")
        write_json(f"{args.reports}/stats.json", stats)
        save_png(preview, f"{args.reports}/samples.png")
        tracker.log_metrics({k.replace("/", "."): v for k, v in flatten(stats["splits"]).items()
                             if isinstance(v, (int, float))})
        tracker.log_metrics({k: stats[k] for k in ("skipped_bad_images", "heldout_duplicates")})
        tracker.log_artifact(f"{args.reports}/samples.png")
        tracker.log_artifact(f"{args.reports}/stats.json")
    for split, s in stats["splits"].items():
        log.info("%-13s %5d images  %s", split, s["count"], s["per_class"])


if __name__ == "__main__":
    cli.run(main)
