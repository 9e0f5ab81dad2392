"""Dev check for refactors: the same seeds give the same numbers.

Runs ``dvc repro`` on tiny budgets for both task kinds (classification with every shipped variant plus
the two few-labels variants; detection with every shipped variant) in throw-away copies of the
project, then writes every number the reports hold (``reports/**/*.json`` and ``*.csv``, timings
left out) to one JSON file. Run it before and after a change and compare:

    python scripts/same_numbers.py --out runs/same_numbers/before.json
    ... change the code ...
    python scripts/same_numbers.py --out runs/same_numbers/after.json
    python scripts/same_numbers.py --compare runs/same_numbers/before.json runs/same_numbers/after.json

One torch thread, tracking off: a few minutes on a 2-core CPU. It reads no real test label that the
pipeline's own report does not already read.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("pyproject.toml", "dvc.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore")
PROJECT_DIRS = ("pipeline", "stages")
TIMING_WORDS = ("time", "seconds", "elapsed", "per_s", "images_s", "duration", "started", "date")

TINY_GAN = {"generator": {"width": 4, "blocks": 1}, "discriminator": {"width": 4, "layers": 2},
            "batch_size": 4, "epochs": 1, "decay_epochs": 1, "steps_per_epoch": 2, "pool_size": 4,
            "diagnostics_samples": 8}
FEW_LABELS = {
    "few_labels": {"method": "supervised", "train": "data/prepared/source/train", "augment": "strong",
                   "labelled_batch": 4, "target_bn": True},
    "few_labels_st": {"method": "self_training", "train": "data/prepared/source/train", "augment": "strong",
                      "params": {"weak": "default", "strong": "strong", "threshold": 0.7, "ramp": 0.3,
                                 "target_ratio": 0.5, "seeds": "source"},
                      "target_bn": True, "target_head": True, "labelled_batch": 4},
}
SCENARIOS = {
    "classification": {
        "data": {"image_size": 16, "render": {"train_count": 60, "val_count": 30},
                 "target": {"labelled_per_class": 2}},
        "gan": TINY_GAN,
        "task": {"width": 4, "steps": 6, "eval_every": 3, "batch_size": 32},
    },
    "detection": {
        "data": {"image_size": 32, "scene": {"train_count": 24, "val_count": 12, "real_train_count": 16,
                                             "real_test_count": 12}},
        "gan": TINY_GAN,
        "task": {"kind": "detection", "steps": 4, "eval_every": 2, "batch_size": 8, "detector": {"width": 4}},
    },
}


def deep_update(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_params(kind: str) -> dict:
    raw = deep_update(yaml.safe_load((REPO / "params.yaml").read_text()), SCENARIOS[kind])
    if kind == "classification":
        raw["variants"].update(copy.deepcopy(FEW_LABELS))
    for variant in raw["variants"].values():
        variant.pop("steps", None)            # the tiny task.steps is every variant's budget
    return raw


def make_project(dest: Path, raw: dict) -> None:
    for name in PROJECT_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    for name in PROJECT_DIRS:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=dest, check=True)


def is_timing(key: str) -> bool:
    return any(word in key.lower() for word in TIMING_WORDS)


def numbers(value, prefix: str, out: dict) -> None:
    """Every number (and string) under ``value``, keyed by its path, timings left out."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not is_timing(str(key)):
                numbers(item, f"{prefix}.{key}", out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            numbers(item, f"{prefix}[{i}]", out)
    elif isinstance(value, (int, float, str, bool)) or value is None:
        out[prefix] = value


def read_reports(reports: Path) -> dict:
    out: dict = {}
    for path in sorted(reports.rglob("*")):
        name = str(path.relative_to(reports))
        if path.suffix == ".json":
            numbers(json.loads(path.read_text()), name, out)
        elif path.suffix == ".csv":
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
            numbers(rows, name, out)
    return out


def run_kind(kind: str, workdir: Path) -> dict:
    repo = workdir / kind
    make_project(repo, tiny_params(kind))
    env = dict(os.environ, OMP_NUM_THREADS="1", SIM2REAL_TRACKING="off", NO_ALBUMENTATIONS_UPDATE="1",
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    dvc = str(Path(sys.executable).parent / "dvc")
    run = subprocess.run([dvc, "repro"], cwd=repo, env=env, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"dvc repro failed for {kind}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return read_reports(repo / "reports")


def compare(before: dict, after: dict, tolerance: float) -> int:
    """Print every difference; returns how many."""
    differences = 0
    for kind in sorted(set(before) | set(after)):
        a, b = before.get(kind, {}), after.get(kind, {})
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key, "<missing>"), b.get(key, "<missing>")
            same = x == y or (isinstance(x, float) and isinstance(y, float)
                              and (math.isclose(x, y, rel_tol=0, abs_tol=tolerance)
                                   or (math.isnan(x) and math.isnan(y))))
            if not same:
                differences += 1
                print(f"{kind}: {key}: {x!r} -> {y!r}")
    total = sum(len(v) for v in after.values())
    print(f"{differences} difference(s) in {total} values")
    return differences


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the numbers here")
    parser.add_argument("--kinds", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--tolerance", type=float, default=0.0, help="absolute tolerance for floats")
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (json.loads(p.read_text()) for p in args.compare)
        return 1 if compare(before, after, args.tolerance) else 0
    if args.out is None:
        parser.error("--out is needed (or --compare BEFORE AFTER)")
    with tempfile.TemporaryDirectory(prefix="same_numbers_") as tmp:
        result = {kind: run_kind(kind, Path(tmp)) for kind in args.kinds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"{sum(len(v) for v in result.values())} values -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
