"""The README's "Your own data" example, as written, through every stage with MLflow tracking on.

User folders are made on the fly: RGB and grey images of odd, non-square sizes, three classes with
non-digit names, a flat unlabelled real folder and a labelled real test folder. Only the training
budgets are shrunk; the data and variants sections are the README's own.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, dvc_env, make_project_copy, tiny_budget

DVC = str(Path(sys.executable).parent / "dvc")
README_ROOTS = {"/data/sim_renders": "sim_renders", "/data/real_unlabelled": "real_unlabelled",
                "/data/real_test": "real_test"}
TINY_BUDGETS = {
    "gan": {"generator": {"width": 4, "blocks": 1}, "discriminator": {"width": 4, "layers": 2},
            "batch_size": 4, "epochs": 1, "decay_epochs": 1, "steps_per_epoch": 2, "pool_size": 4,
            "diagnostics_samples": 12},
    "task": {"width": 4, "steps": 4, "eval_every": 2, "batch_size": 16},
}
SIZES = [(37, 23), (23, 41), (51, 29), (64, 17), (19, 19)]


def readme_own_data_block() -> dict:
    """The YAML example of the README's "Your own data" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Your own data"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "README: no yaml example under 'Your own data'"
    return yaml.safe_load(block.group(1))


def _image(path: Path, rng: np.random.Generator, label: int, mode: str, size: tuple[int, int]) -> None:
    """A coloured blob whose position depends on the class, on a noisy background."""
    w, h = size
    arr = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    cx = int((label + 0.5) / 3 * w)
    arr[:, max(0, cx - w // 8):cx + w // 8] = (200, 80 + 60 * label, 40)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).convert(mode).save(path)


def make_user_folders(root: Path, classes: list[str]) -> None:
    rng = np.random.default_rng(0)
    modes = ["RGB", "L", "RGBA", "P"]
    for i in range(30):                     # labelled simulator output: <root>/<class>/<image>
        label = i % len(classes)
        _image(root / "sim_renders" / classes[label] / f"render_{i}.png", rng, label, modes[i % 2],
               SIZES[i % len(SIZES)])
    for i in range(18):                     # flat, unlabelled real images, mixed formats
        ext = ".jpg" if i % 3 == 0 else ".png"
        mode = "RGB" if ext == ".jpg" else modes[i % len(modes)]
        _image(root / "real_unlabelled" / f"IMG_{i:03d}{ext}", rng, i % len(classes), mode, SIZES[(i + 2) % len(SIZES)])
    for i in range(12):                     # small labelled real test set (imagefolder)
        label = i % len(classes)
        _image(root / "real_test" / classes[label] / f"t{i}.png", rng, label, modes[(i + 1) % 2], SIZES[(i + 3) % len(SIZES)])


def test_readme_example_keeps_the_shipped_variants_but_the_oracle(default_raw):
    """A user following the README gets the shipped adaptation variants, not an older copy of them."""
    shipped = {name: v for name, v in default_raw["variants"].items() if name != "target_oracle"}
    assert readme_own_data_block()["variants"] == shipped


@pytest.mark.slow
def test_readme_own_data_example_runs_every_stage_with_mlflow(tmp_path, default_raw):
    from mlflow.tracking import MlflowClient

    example = readme_own_data_block()
    users = tmp_path / "user"
    make_user_folders(users, example["data"]["classes"])
    text = yaml.safe_dump(example)
    for readme_path, name in README_ROOTS.items():
        assert readme_path in text, f"README example no longer names {readme_path}"
        text = text.replace(readme_path, str(users / name))
    raw = {**default_raw, **yaml.safe_load(text)}          # the user replaces the sections the README shows
    repo = make_project_copy(tmp_path / "repo", tiny_budget(raw, TINY_BUDGETS))

    env = {**dvc_env(), "SIM2REAL_TRACKING": "on"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    run = subprocess.run([DVC, "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    variants = list(example["variants"])
    for stage in ["prepare", "train_gan", "translate", "report"] + [f"{s}@{v}" for v in variants
                                                                     for s in ("train_task", "evaluate")]:
        assert f"Running stage '{stage}'" in run.stdout, stage

    stats = json.loads((repo / "reports/prepare/stats.json").read_text())
    assert stats["channels"] == 3 and stats["image_size"] == 64
    assert stats["splits"]["target/train"]["count"] == 18
    assert stats["splits"]["target/test"]["per_class"] == {"car": 4, "pedestrian": 4, "sign": 4}
    summary = json.loads((repo / "reports/summary.json").read_text())
    summary.pop("pick")                         # the variant to choose without real labels
    assert set(summary) == set(variants)
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in summary.values())
    assert "gap closed needs the target_oracle" in (repo / "reports/summary.md").read_text()

    # MLflow: the default store in the project, one finished child run per stage and variant.
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sim2real-custom")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    stages = {"prepare", "train_gan", "translate", "report"} | {f"{s}@{v}" for v in variants
                                                                for s in ("train_task", "evaluate")}
    assert stages <= set(runs), sorted(runs)
    assert all(runs[name].info.status == "FINISHED" for name in stages)
    assert runs["prepare"].data.metrics["target.train.per_class._unlabelled_"] == 18
    assert "accuracy" in runs["evaluate@translated"].data.metrics
    assert {"class_acc.car", "class_acc.pedestrian", "class_acc.sign"} <= set(runs["evaluate@dann"].data.metrics)

    status = subprocess.run([DVC, "status"], cwd=repo, env=env, capture_output=True, text=True)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout
