"""Benchmark: does a train_task stage's time grow with the number of unlabelled real images?

    .venv/bin/python bench/bench_real_set_size.py --prepared runs/scenarios/builtin/data/prepared

Takes a prepared project (``dvc repro prepare`` ran there: the built-in scenario's workspace of
``scripts/scenarios.py`` is one) and writes, in a scratch folder, a real training set ``factor``
times larger (every real image again, each copy shifted by a different one-pixel offset so no two are
equal). It then runs ``python -m stages.train_task`` for each variant that reads the real images
(clustering, AdaBN, prototypes, label-free scores), first on the real set as it is, then on the
larger one, with the same params (``--steps`` overrides the variants' budgets to keep the benchmark
short: fixed costs weigh more at fewer steps, so the ratio printed is an upper bound of the ratio
at the default budget). Prints the wall seconds of each run and their ratio; the project's target
is a ratio within 1.3 at 10x. Runs one after another (never two trainings at once).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def larger_real_set(src: Path, dst: Path, factor: int) -> int:
    """``dst``: the images of ``src`` (a prepared target/train) ``factor`` times, copy ``k`` rolled by a
    one-pixel offset of its own; the manifest and LABEL_ORIGIN mark follow. Returns the image count."""
    lines = (src / "manifest.csv").read_text().splitlines()
    header, rows = lines[0], [line.split(",") for line in lines[1:] if line]
    (dst / "images").mkdir(parents=True)
    shutil.copyfile(src / "LABEL_ORIGIN", dst / "LABEL_ORIGIN")
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1, 2)][:factor]
    out = [header]
    for k, (dy, dx) in enumerate(offsets):
        for path, label in rows:
            image = cv2.imread(str(src / path), cv2.IMREAD_UNCHANGED)
            name = f"images/{k}_{Path(path).name}"
            cv2.imwrite(str(dst / name), np.roll(image, (dy, dx), axis=(0, 1)))
            out.append(f"{name},{label}")
    (dst / "manifest.csv").write_text("\n".join(out) + "\n")
    return len(out) - 1


def workspace(root: Path, prepared: Path, target_train: Path, params: dict) -> Path:
    """A project folder whose data/prepared is ``prepared`` with ``target/train`` replaced."""
    data = root / "data" / "prepared"
    (data / "target").mkdir(parents=True)
    os.symlink(prepared.resolve() / "source", data / "source")
    os.symlink(target_train.resolve(), data / "target" / "train")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def train_seconds(root: Path, variant: str) -> float:
    env = {**os.environ, "SIM2REAL_TRACKING": "off", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stages.train_task", "--variant", variant, "--params", "params.yaml",
                    "--prepared", "data/prepared", "--models", "models", "--checkpoints", "checkpoints",
                    "--reports", "reports"], cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", type=Path, required=True, help="a project's data/prepared folder")
    ap.add_argument("--params", type=Path, default=None, help="its params.yaml (default: beside data/)")
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--variants", nargs="+", default=["randomized_st", "dann"])
    args = ap.parse_args()
    params = yaml.safe_load((args.params or args.prepared.parents[1] / "params.yaml").read_text())
    for v in args.variants:
        params["variants"][v]["steps"] = args.steps
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        n = larger_real_set(args.prepared / "target" / "train", scratch / "larger", args.factor)
        base = len((args.prepared / "target" / "train" / "manifest.csv").read_text().splitlines()) - 1
        print(f"real training images: {base} and {n} ({args.factor}x); {args.steps} steps per variant")
        for variant in args.variants:
            times = []
            for name, target in (("1x", args.prepared / "target" / "train"), (f"{args.factor}x", scratch / "larger")):
                root = workspace(scratch / f"{variant}-{name}", args.prepared, target, params)
                times.append(train_seconds(root, variant))
            print(f"{variant}: {times[0]:.1f} s at 1x, {times[1]:.1f} s at {args.factor}x, ratio {times[1] / times[0]:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
