"""Run the whole pipeline for several seeds and print mean ± std of each variant's test metrics.

    .venv/bin/python scripts/seeds.py --seeds 0 1 2            # runs, then prints the table
    .venv/bin/python scripts/seeds.py --collect-only            # table from the saved summaries only

For each seed, one after another (never in parallel: two CPU-bound trainings slow each other down
far more than twice), it runs ``dvc exp run -S seed=<s>`` in the workspace and copies
``reports/summary.json`` to ``<out>/seed-<s>.json``. Each run is also an ordinary DVC experiment
(``dvc exp show``) and an MLflow parent run. Afterwards the workspace holds the last seed's
experiment: ``dvc exp apply`` another one, or restore params.yaml and ``dvc repro``, to go back.

Standard deviations are sample standard deviations (``ddof = 1``); with one seed they are 0.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

METRICS = ("accuracy", "macro_f1", "gap_closed")
SUMMARY = Path("reports/summary.json")
NOT_VARIANTS = {"pick"}       # summary.json's label-free pick (pipeline.report.PICK_KEY), not a variant


def run_seed(seed: int, out: Path) -> Path:
    """One full pipeline execution as a DVC experiment; returns the copy of its summary."""
    subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-S", f"seed={seed}", "-m", f"seeds.py: seed {seed}"], check=True)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"seed-{seed}.json"
    shutil.copyfile(SUMMARY, target)
    return target


def load_summaries(out: Path) -> dict[int, dict]:
    return {int(p.stem.removeprefix("seed-")): json.loads(p.read_text()) for p in sorted(out.glob("seed-*.json"))}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def aggregate(summaries: Mapping[int, Mapping[str, Mapping[str, float | None]]]) -> dict[str, dict[str, dict]]:
    """``{seed: {variant: {metric: value}}}`` -> ``{variant: {metric: {mean, std, n}}}``.

    Missing or ``None`` values (a variant absent for a seed, gap closed without an oracle) are left
    out of that metric's statistics; ``n`` says how many seeds contributed.
    """
    variants = list(dict.fromkeys(v for summary in summaries.values() for v in summary if v not in NOT_VARIANTS))
    table: dict[str, dict[str, dict]] = {}
    for variant in variants:
        table[variant] = {}
        for metric in METRICS:
            values = [s[variant][metric] for s in summaries.values()
                      if variant in s and s[variant].get(metric) is not None]
            if values:
                mean, std = _mean_std(values)
                table[variant][metric] = {"mean": mean, "std": std, "n": len(values)}
    return table


def format_table(table: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Markdown table, one row per variant, ``mean ± std`` per metric."""
    lines = ["| variant | " + " | ".join(METRICS) + " | seeds |", "|---|" + "---:|" * len(METRICS) + "---:|"]
    for variant, stats in table.items():
        cells = [f"{stats[m]['mean']:.4f} ± {stats[m]['std']:.4f}" if m in stats else "n/a" for m in METRICS]
        n = max((s["n"] for s in stats.values()), default=0)
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/seeds"))
    ap.add_argument("--collect-only", action="store_true", help="skip the runs; aggregate <out>/seed-*.json")
    args = ap.parse_args(argv)
    if not args.collect_only:
        for seed in args.seeds:
            print(f"== seed {seed}", file=sys.stderr, flush=True)
            run_seed(seed, args.out)
    summaries = load_summaries(args.out)
    if not args.collect_only:
        summaries = {s: summaries[s] for s in args.seeds}
    if not summaries:
        sys.exit(f"error: no seed-*.json in {args.out}")
    print(format_table(aggregate(summaries)))


if __name__ == "__main__":
    main()
