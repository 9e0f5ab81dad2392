"""Train the GAN once per ablation; print its diagnostics and the translated variant's result side by side.

    .venv/bin/python scripts/ablate_gan.py                       # balance set: full, no LP, no task, neither
    .venv/bin/python scripts/ablate_gan.py --only no_lipschitz --out runs/ablations
    make ablate-family   # = scripts/scenarios.py --only builtin grey photo --stage train_task@source_only, then
    .venv/bin/python scripts/ablate_gan.py --family --dev-read \\
        --workspace runs/scenarios/builtin runs/scenarios/grey runs/scenarios/photo   # docs/results.md

Each ablation is a workspace's ``params.yaml`` with some keys changed (:data:`ABLATIONS`), run
through the ordinary stages into ``<workspace>/<out>/<name>/`` (own checkpoints, models and
reports; the DVC outputs are left alone): train_gan, translate and train_task@translated, one after
another, never in parallel, with MLflow tracking off. A workspace is the project folder or a
scenario's (``scripts/scenarios.py --stage train_task@source_only`` makes one) with
``data/prepared`` and ``models/task/source_only/model.pt``; a scenario's copy of the code is
brought up to date first (``scripts/scenarios.py``'s ``sync_code``), so the stages run this code.

Without ``--only`` or ``--family`` it runs the balance set (:data:`BALANCE`); ``--family`` runs the
translation family (f-constancy, perceptual similarity, one-sided SimGAN and DistanceGAN against the
default CycleGAN).

What it prints never needs the held-out test split, which it never opens (it does not run the
evaluate stage): the GAN's own diagnostics (``reports/gan/metrics.json``: task accuracy on G(x),
FD and PAD to the real images, ...), the GAN's training speed (source images/s over the epochs), the
label-free scores of the translated variant, and with ``--dev-read`` a DEV READ: the translated
variant's accuracy on the workspace's labelled real *training* split (``data/prepared/target/train``,
what target_oracle trains on; a user without real labels cannot run this). Defaults are changed only
on the mean and the worst scenario of such reads, never on one scenario and never on test accuracy.
``<out>/ablation.json`` keeps every number of every ablation run in that workspace so far; the
last table has, per ablation, the dev accuracy per workspace with their mean and worst.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from dev_read import dev_accuracy, with_override   # scripts/ is on the path of a script run from it
from scenarios import ROOT, sync_code
from pipeline.config import load_params
from pipeline.io import write_json
from pipeline.report import LABEL_FREE_KEYS, collect_label_free

#: name -> the dotted params keys it changes (``{}``: the workspace's params as they are)
ABLATIONS = {
    "full": {},
    "no_lipschitz": {"gan.weights.lipschitz": 0.0},
    "no_task": {"gan.weights.task": 0.0},
    "no_lipschitz_no_task": {"gan.weights.lipschitz": 0.0, "gan.weights.task": 0.0},
    # the translation family (issue 23); weights set so that each term, on a source batch against a
    # noisy (sigma 0.3) copy of it, is about as large as the similarity term at weight 1
    "constancy": {"gan.weights.constancy": 1.0},
    "perceptual": {"gan.weights.similarity": 0.0, "gan.weights.perceptual": 0.2},
    "simgan": {"gan.structure": "one_sided", "gan.weights.cycle": 0.0},
    "distancegan": {"gan.structure": "one_sided", "gan.weights.cycle": 0.0, "gan.weights.distance": 0.5},
}
BALANCE = ("full", "no_lipschitz", "no_task", "no_lipschitz_no_task")
FAMILY = ("full", "constancy", "perceptual", "simgan", "distancegan")
COLUMNS = ("d_real/acc_real", "d_real/acc_fake", "d_source/acc_real", "d_source/acc_fake",
           "d_real/grad_norm_mean", "d_real/grad_norm_frac_gt1", "task/acc_translated_val",
           "copy/l1_source_translated", "gap/fd_translated_real", "gap/pad_translated_real",
           "gan/images_per_second", *(f"translated/{key}" for key in LABEL_FREE_KEYS))
DEV = "translated/dev_accuracy"


def run(name: str, overrides: dict[str, object], workspace: Path, out: Path, dev_read: bool) -> dict:
    """Train the GAN, translate and train ``translated`` with ``overrides`` into ``<out>/<name>/``."""
    raw = yaml.safe_load((workspace / "params.yaml").read_text())
    for key, value in overrides.items():
        raw = with_override(raw, key, value)
    folder = (out / name).resolve()
    translated = {split: folder / "translated" / split for split in ("train", "val")}
    raw["variants"]["translated"].update(train=str(translated["train"]), val=str(translated["val"]))
    folder.mkdir(parents=True, exist_ok=True)
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))

    def stage(stage_name: str, *args: str) -> None:
        subprocess.run([sys.executable, "-m", f"stages.{stage_name}", "--params", str(params), *args],
                       cwd=workspace, check=True, env={**os.environ, "SIM2REAL_TRACKING": "off"})

    stage("train_gan", "--models", str(folder / "gan"), "--checkpoints", str(folder / "checkpoints" / "gan"),
          "--reports", str(folder / "reports" / "gan"))
    stage("translate", "--generator", str(folder / "gan" / "generator.pt"),
          "--input", "data/prepared/source/train", "data/prepared/source/val",
          "--output", str(translated["train"]), str(translated["val"]))
    stage("train_task", "--variant", "translated", "--models", str(folder / "task"),
          "--checkpoints", str(folder / "checkpoints" / "task"), "--reports", str(folder / "reports" / "train"))
    metrics = json.loads((folder / "reports" / "gan" / "metrics.json").read_text())
    gan = load_params(params).gan
    result = {**metrics, "gan/images_per_second": images_per_second(folder / "reports" / "gan" / "history.csv",
                                                                     gan.steps_per_epoch * gan.batch_size),
              **label_free(folder / "reports" / "train")}
    if dev_read:
        result[DEV] = dev_accuracy(workspace, params, folder / "task" / "translated" / "model.pt")
    return result


def images_per_second(history: Path, images_per_epoch: int) -> float:
    """Source images per second of GAN training, over all epochs (``time/epoch_seconds`` times the
    training loop alone, not the diagnostics)."""
    with history.open() as f:
        seconds = [float(row["time/epoch_seconds"]) for row in csv.DictReader(f)]
    return images_per_epoch * len(seconds) / sum(seconds)


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
    """One workspace: a row per metric, a column per ablation."""
    lines = ["| metric | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    keys = ("gap/fd_source_real", "gap/pad_source_real", *COLUMNS)
    if any(DEV in r for r in results.values()):
        keys += (DEV,)
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(cell(r.get(key)) for r in results.values()) + " |")
    return "\n".join(lines)


def dev_table(results: dict[str, dict[str, dict]]) -> str:
    """Across workspaces: per ablation, the dev accuracy in each, its mean and its worst, and the
    mean GAN images/s."""
    workspaces = list(results)
    names = [n for n in results[workspaces[0]] if all(n in results[w] for w in workspaces)]
    lines = ["| ablation | " + " | ".join(Path(w).name for w in workspaces) + " | mean | worst | GAN images/s |",
             "|---" * (len(workspaces) + 4) + "|"]
    for name in names:
        dev = [results[w][name].get(DEV) for w in workspaces]
        speed = statistics.mean(results[w][name]["gan/images_per_second"] for w in workspaces)
        summary = (f"{statistics.mean(dev):.3f} | {min(dev):.3f}" if all(v is not None for v in dev) else "n/a | n/a")
        lines.append(f"| {name} | " + " | ".join(cell(v) for v in dev) + f" | {summary} | {speed:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, nargs="+", default=[Path(".")],
                    help="project folders with data/prepared and the source-only model (default: here)")
    ap.add_argument("--out", type=Path, default=Path("runs/ablations"), help="relative to each workspace")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--only", nargs="+", choices=sorted(ABLATIONS), help="these ablations")
    group.add_argument("--family", action="store_true", help=f"the translation family: {', '.join(FAMILY)}")
    ap.add_argument("--seed", type=int, default=None,
                    help="the GAN's and the translated variant's seed (default: the workspace's); runs go to "
                         "<name>-seedN/ (the frozen source-only model stays the workspace's)")
    ap.add_argument("--dev-read", action="store_true",
                    help="also score on the labelled real TRAINING split (a dev read; never the test split)")
    args = ap.parse_args(argv)
    names = args.only or (FAMILY if args.family else BALANCE)
    results: dict[str, dict[str, dict]] = {}
    for workspace in args.workspace:
        workspace = workspace.resolve()
        if workspace != ROOT and (workspace / "pipeline").is_dir():
            sync_code(workspace)
        out = workspace / args.out
        results[str(workspace)] = {}
        for name in names:
            overrides, label = ABLATIONS[name], name
            if args.seed is not None:
                overrides, label = {**overrides, "seed": args.seed}, f"{name}-seed{args.seed}"
            results[str(workspace)][label] = run(label, overrides, workspace, out, args.dev_read)
            record = out / "ablation.json"   # every ablation run here so far, this one updated
            kept = json.loads(record.read_text()) if record.is_file() else {}
            write_json(record, {**kept, label: results[str(workspace)][label]})
            print(f"{workspace.name} {label}: done", flush=True)
        print(f"\n## {workspace}\n\n{table(results[str(workspace)])}\n", flush=True)
    if args.dev_read:
        print("DEV READ (accuracy of the translated variant on the real TRAINING labels; the test split is never read)")
        print(dev_table(results))


if __name__ == "__main__":
    main()
