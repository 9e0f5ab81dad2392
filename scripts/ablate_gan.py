"""Train the GAN once per ablation; print its balance diagnostics and the downstream result side by side.

    .venv/bin/python scripts/ablate_gan.py                       # default set: full, no LP, no task, neither
    .venv/bin/python scripts/ablate_gan.py --only no_lipschitz --out runs/ablations

Each ablation is ``params.yaml`` with some ``gan.weights`` set to 0, run through the ordinary stages
into ``<out>/<name>/`` (own checkpoints, models and reports; the DVC outputs are left alone):
train_gan, translate and train_task@translated. Runs go one after another, never in parallel. Needs
``data/prepared`` and ``models/task/source_only/model.pt`` (``dvc repro train_task@source_only``).

This is a tuning tool, so it never looks at the held-out test split: it does not run the evaluate
stage. Next to the GAN's own diagnostics (``<out>/<name>/reports/gan/metrics.json``) it prints only
scores that need no real label, the ``label_free`` block train_task writes to
``<out>/<name>/reports/train/translated/metrics.json``: accuracy on the synthetic validation split
(``source_val_acc``) and, on the unlabelled real training images, ``target_entropy``, ``target_im``,
``target_snd`` and ``target_class_share_max``. The test accuracy of a chosen setting is measured
once, afterwards, by the ordinary pipeline (``dvc repro``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.report import LABEL_FREE_KEYS, collect_label_free

ABLATIONS = {
    "full": {},
    "no_lipschitz": {"lipschitz": 0.0},
    "no_task": {"task": 0.0},
    "no_lipschitz_no_task": {"lipschitz": 0.0, "task": 0.0},
}
COLUMNS = ("d_real/acc_real", "d_real/acc_fake", "d_source/acc_real", "d_source/acc_fake",
           "d_real/grad_norm_mean", "d_real/grad_norm_frac_gt1", "task/acc_translated_val",
           "copy/l1_source_translated", "gap/fd_translated_real", "gap/pad_translated_real",
           "time/epoch_seconds", *(f"translated/{key}" for key in LABEL_FREE_KEYS))


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
    metrics = json.loads((folder / "reports" / "gan" / "metrics.json").read_text())
    return {**metrics, **label_free(folder / "reports" / "train")}


def label_free(train_reports: Path) -> dict[str, float | None]:
    """The label-free scores of the translated variant (``<train_reports>/translated/metrics.json``'s
    ``label_free`` block), keyed ``translated/<score>``; exits naming the file when the block is missing."""
    scores = collect_label_free(["translated"], train_reports).get("translated")
    if scores is None:
        sys.exit(f"error: {train_reports / 'translated' / 'metrics.json'}: missing or without a \"label_free\" "
                 f"block; expected the metrics train_task writes")
    return {f"translated/{key}": value for key, value in scores.items()}


def cell(value: object) -> str:
    """A number to three decimals; a missing or non-numeric score as ``n/a``."""
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


def table(results: dict[str, dict]) -> str:
    lines = ["| metric | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for key in ("gap/fd_source_real", "gap/pad_source_real", *COLUMNS):
        lines.append(f"| {key} | " + " | ".join(cell(r.get(key)) for r in results.values()) + " |")
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
