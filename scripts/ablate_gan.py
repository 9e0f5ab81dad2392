"""Train the GAN once per ablation; print its balance diagnostics and the downstream result side by side.

    .venv/bin/python scripts/ablate_gan.py                       # default set: full, no LP, no task, neither
    .venv/bin/python scripts/ablate_gan.py --only no_lipschitz --out runs/ablations

Each ablation is ``params.yaml`` with some ``gan.weights`` set to 0, run through the ordinary stages
into ``<out>/<name>/`` (own checkpoints, models and reports; the DVC outputs are left alone):
train_gan, translate, train_task@translated and evaluate@translated. The test accuracy is reported,
never used to choose anything. Runs go one after another, never in parallel. Needs
``data/prepared`` and ``models/task/source_only/model.pt`` (``dvc repro train_task@source_only``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ABLATIONS = {
    "full": {},
    "no_lipschitz": {"lipschitz": 0.0},
    "no_task": {"task": 0.0},
    "no_lipschitz_no_task": {"lipschitz": 0.0, "task": 0.0},
}
COLUMNS = ("d_real/acc_real", "d_real/acc_fake", "d_source/acc_real", "d_source/acc_fake",
           "d_real/grad_norm_mean", "d_real/grad_norm_frac_gt1", "task/acc_translated_val",
           "copy/l1_source_translated", "gap/fd_translated_real", "gap/pad_translated_real",
           "time/epoch_seconds", "translated/test_accuracy")


def run(name: str, weights: dict[str, float], params: Path, out: Path) -> dict:
    raw = yaml.safe_load(params.read_text())
    raw["gan"]["weights"].update(weights)
    folder = out / name
    raw["variants"]["translated"]["train"] = str(folder / "translated")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    def stage(name: str, *args: str) -> None:
        subprocess.run([sys.executable, "-m", f"stages.{name}", "--params", str(folder / "params.yaml"), *args],
                       check=True)

    stage("train_gan", "--models", str(folder / "gan"), "--checkpoints", str(folder / "checkpoints" / "gan"),
          "--reports", str(folder / "reports" / "gan"))
    stage("translate", "--generator", str(folder / "gan" / "generator.pt"), "--output", str(folder / "translated"))
    stage("train_task", "--variant", "translated", "--models", str(folder / "task"),
          "--checkpoints", str(folder / "checkpoints" / "task"), "--reports", str(folder / "reports" / "train"))
    stage("evaluate", "--variant", "translated", "--models", str(folder / "task"),
          "--reports", str(folder / "reports" / "eval"))
    metrics = json.loads((folder / "reports" / "gan" / "metrics.json").read_text())
    evaluation = json.loads((folder / "reports" / "eval" / "translated" / "metrics.json").read_text())
    return {**metrics, "translated/test_accuracy": evaluation["accuracy"]}


def table(results: dict[str, dict]) -> str:
    lines = ["| metric | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for key in ("gap/fd_source_real", "gap/pad_source_real", *COLUMNS):
        lines.append(f"| {key} | " + " | ".join(f"{r.get(key, float('nan')):.3f}" for r in results.values()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, default=Path("runs/ablations"))
    ap.add_argument("--only", nargs="*", choices=sorted(ABLATIONS), help="a subset of the ablations")
    args = ap.parse_args(argv)
    names = args.only or list(ABLATIONS)
    results = {name: run(name, ABLATIONS[name], args.params, args.out) for name in names}
    print(table(results))


if __name__ == "__main__":
    main()
