"""DEV READ: how well each label-free pick rule chooses, measured on the scenario suite.

    .venv/bin/python scripts/pick_rules.py                      # after scripts/scenarios.py
    .venv/bin/python scripts/pick_rules.py --out runs/scenarios

For every scenario workspace the suite ran, every rule of :data:`pipeline.selection.RULES` picks a
variant from the label-free scores alone (the report's own code: the same candidates, health checks
and tie-break). The pick is then scored with the scenario's labelled real *training* split
(``data/prepared/target/train``, the dev read ``scripts/scenarios.py`` stored), never the test split:

- hit: the rule chose the variant with the best dev accuracy among the variants it could choose from
  (those without real labels);
- regret: that best dev accuracy minus the chosen one's (0 on a hit);
- below source-only: the chosen variant's dev accuracy is more than 0.02 under source_only's.

The rule the report ships (:data:`pipeline.selection.PICK_RULE_NAME`) is the one with the best hit
rate and mean regret here, with no scenario below source-only; this script is how it was chosen.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from pipeline.report import Row, collect_label_free, collect_training_record, label_use, pick_variant
from pipeline.selection import BASELINE, RULES

ROOT = Path(__file__).resolve().parents[1]
SLACK = 0.02


def rows_of(workspace: Path) -> tuple[list[Row], dict[str, float], int]:
    """The report's rows of one scenario, the dev accuracy of each variant and the number of classes."""
    card = json.loads((workspace / "scorecard.json").read_text())
    variants = list(card["variants"])
    label_free = collect_label_free(variants, workspace / "reports" / "train")
    records = collect_training_record(variants, workspace / "reports" / "train")
    rows = [Row(v, card["variants"][v]["accuracy"], card["variants"][v]["macro_f1"],
                label_use(card["variants"][v].get("uses_target_labels")),
                **label_free.get(v, {}), **records.get(v, {})) for v in variants]
    dev = {v: card["variants"][v]["dev_accuracy"] for v in variants if "dev_accuracy" in card["variants"][v]}
    return rows, dev, n_classes(workspace)


def n_classes(workspace: Path) -> int:
    import yaml

    return len(yaml.safe_load((workspace / "params.yaml").read_text())["data"]["classes"])


def evaluate(scenarios: dict[str, tuple[list[Row], dict[str, float], int]], rule: str) -> dict:
    """Per scenario ``(chosen, dev accuracy, best, regret)`` and the totals of one rule."""
    per, hits, regrets, below = {}, 0, [], []
    for name, (rows, dev, k) in scenarios.items():
        chosen, _ = pick_variant(rows, k, rule)
        chosen = chosen or BASELINE                 # no pick: the user keeps the renders-only model
        fair = {r.variant: dev[r.variant] for r in rows if r.uses_target_labels is False and r.variant in dev}
        best = max(fair, key=fair.get)
        regret = fair[best] - fair[chosen]
        hits += regret <= 1e-9
        regrets.append(regret)
        if fair[chosen] < fair[BASELINE] - SLACK:
            below.append(name)
        per[name] = {"chosen": chosen, "dev": fair[chosen], "best": best, "best_dev": fair[best], "regret": regret}
    return {"scenarios": per, "hit_rate": hits / len(scenarios), "mean_regret": sum(regrets) / len(regrets),
            "worst_regret": max(regrets), "below_source_only": below}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "scenarios", help="the suite's folder")
    args = ap.parse_args(argv)
    scenarios = {p.parent.name: rows_of(p.parent) for p in sorted(args.out.glob("*/scorecard.json"))}
    if not scenarios:
        sys.exit(f"error: no */scorecard.json under {args.out}; run scripts/scenarios.py first")
    print(f"DEV READ on the real training labels of {len(scenarios)} scenario(s): {', '.join(scenarios)}")
    names = list(scenarios)
    print("| rule | hit rate | mean regret | worst regret | below source-only | " + " | ".join(names) + " |")
    print("|---|---:|---:|---:|---|" + "---|" * len(names))
    for rule in RULES:
        r = evaluate(scenarios, rule)
        cells = [f"{r['scenarios'][n]['chosen']} {r['scenarios'][n]['dev']:.3f}" for n in names]
        print(f"| {rule} | {r['hit_rate']:.0%} | {r['mean_regret']:.3f} | {r['worst_regret']:.3f} | "
              f"{', '.join(r['below_source_only']) or 'none'} | " + " | ".join(cells) + " |")
    best = evaluate(scenarios, next(iter(RULES)))["scenarios"]
    print("| (best by dev accuracy) | | | | | " + " | ".join(f"{best[n]['best']} {best[n]['best_dev']:.3f}" for n in names) + " |")


if __name__ == "__main__":
    main()
