"""DEV READ: train variants with params overrides and score them on the real *training* labels.

    .venv/bin/python scripts/dev_read.py --workspace /tmp/grey --variant randomized_st \\
        --set variants.randomized_st.params.threshold=0.7 --set variants.randomized_st.params.threshold=0.5

This is how a default of this project is chosen: on several scenarios (their mean and worst), with
the accuracy on each scenario's labelled real *training* split (``data/prepared/target/train``, the
split target_oracle trains on), never on the held-out test split, which nothing here opens. A user
without real labels cannot run it; it is a development tool, and what it prints is a dev read.

``--workspace`` is a project folder whose ``data/prepared`` exists (``dvc repro prepare`` ran there,
with the scenario's params.yaml: ``scripts/scenarios.py --stage prepare`` makes one per scenario). Each
``--set dotted.key=value`` (value parsed as YAML; several assignments joined by ``;``) is one
configuration, trained after the baseline (the workspace's params.yaml as it is) into
``<workspace>/dev_read/<n>/``, away from the DVC outputs; runs go one after another. One line per
configuration: the dev accuracy, the label-free scores and the training time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

TRAIN_SPLIT = "data/prepared/target/train"


def with_override(raw: dict, dotted: str, value) -> dict:
    """A copy of ``raw`` with ``dotted`` (``a.b.c``) set to ``value`` (missing levels are created)."""
    out = json.loads(json.dumps(raw))
    node = out
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return out


def dev_accuracy(workspace: Path, params_file: Path, model_file: Path) -> float:
    """Accuracy of the exported model on the labelled real *training* split (the dev read)."""
    import torch

    from pipeline.config import load_params
    from pipeline.data.manifest import ImageSet
    from pipeline.task.export import load_task_model
    from pipeline.task.classification import accuracy

    params = load_params(params_file)
    d = params.data
    dev = ImageSet(workspace / TRAIN_SPLIT, d.classes, d.channels, d.image_size)   # labels: refused if held out
    model, _ = load_task_model(model_file)
    return accuracy(model, dev, torch.device("cpu"))


def run(workspace: Path, variant: str, name: str, raw: dict) -> dict:
    """Train ``variant`` with the params ``raw`` into ``dev_read/<name>/`` and score it."""
    folder = workspace / "dev_read" / name
    folder.mkdir(parents=True, exist_ok=True)
    params_file = folder / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stages.train_task", "--variant", variant, "--params", str(params_file),
                    "--models", str(folder / "models"), "--checkpoints", str(folder / "checkpoints"),
                    "--reports", str(folder / "reports")], cwd=workspace, check=True,
                   env={**os.environ, "SIM2REAL_TRACKING": "off"})
    seconds = time.perf_counter() - started
    metrics = json.loads((folder / "reports" / variant / "metrics.json").read_text())
    return {"dev_accuracy": dev_accuracy(workspace, params_file, folder / "models" / variant / "model.pt"),
            "seconds": round(seconds), **metrics.get("label_free", {})}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, required=True, help="a project folder with data/prepared")
    ap.add_argument("--variant", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one configuration each")
    ap.add_argument("--no-baseline", action="store_true", help="skip the workspace's params.yaml as it is")
    args = ap.parse_args(argv)
    workspace = args.workspace.resolve()
    raw = yaml.safe_load((workspace / "params.yaml").read_text())
    configs = [] if args.no_baseline else [("baseline", raw)]
    for i, item in enumerate(args.set, start=1):
        config, names = raw, []
        for assignment in item.split(";"):
            key, _, value = assignment.strip().partition("=")
            config = with_override(config, key, yaml.safe_load(value))
            names.append(f"{key.split('.')[-1]}-{value}")
        configs.append((f"{i}-{'-'.join(names)}"[:80], config))
    print(f"DEV READ on {workspace / TRAIN_SPLIT} (real training labels; the test split is never read)")
    for name, config in configs:
        result = run(workspace, args.variant, name, config)
        print(f"{args.variant} {name}: dev accuracy {result['dev_accuracy']:.4f}  "
              + "  ".join(f"{k} {v:.4g}" for k, v in result.items() if k != "dev_accuracy" and v is not None),
              flush=True)


if __name__ == "__main__":
    main()
