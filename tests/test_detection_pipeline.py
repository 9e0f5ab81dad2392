"""Object detection end to end: the README's one change (``task.kind: detection``) on tiny budgets,
through a real ``dvc repro`` of every stage, then what a user reads: mAP per variant, plots, status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import dvc_env, make_project_copy, tiny_budget

DVC = str(Path(sys.executable).parent / "dvc")

TINY_DETECTION = {
    "data": {"image_size": 32, "scene": {"train_count": 24, "val_count": 12, "real_train_count": 16,
                                         "real_test_count": 12}},
    "gan": {"generator": {"width": 4, "blocks": 1}, "discriminator": {"width": 4, "layers": 2},
            "batch_size": 4, "epochs": 1, "decay_epochs": 1, "steps_per_epoch": 2, "pool_size": 4,
            "diagnostics_samples": 8},
    "task": {"kind": "detection", "steps": 4, "eval_every": 2, "batch_size": 8, "detector": {"width": 4}},
}


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DVC, *args], cwd=repo, env=dvc_env(), capture_output=True, text=True)


@pytest.mark.slow
def test_tiny_detection_dvc_repro(tmp_path, default_raw):
    raw = tiny_budget(default_raw, TINY_DETECTION)
    repo = make_project_copy(tmp_path / "repo", raw)
    run = _dvc(repo, "repro")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    for variant in raw["variants"]:
        assert f"Running stage 'evaluate@{variant}'" in run.stdout

    # prepare wrote COCO splits with boxes at the prepared size; the test split is held out
    prepared = repo / "data/prepared"
    for split in ("source/train", "source/val", "target/train", "target/test"):
        coco = json.loads((prepared / split / "annotations.json").read_text())
        assert coco["images"] and coco["annotations"], split
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 32.01 and y + h <= 32.01
    assert (prepared / "target/test/HELDOUT").exists()
    # translation keeps every image name, and with it every box
    source = json.loads((prepared / "source/train/annotations.json").read_text())
    translated = json.loads((repo / "data/translated/source/train/annotations.json").read_text())
    assert translated["annotations"] == source["annotations"] and translated["images"] == source["images"]

    summary = json.loads((repo / "reports/summary.json").read_text())
    pick = summary.pop("pick")
    assert set(summary) == set(raw["variants"])
    for row in summary.values():
        assert 0.0 <= row["map50"] <= 1.0 and 0.0 <= row["map"] <= row["map50"] + 1e-9
        assert row["source_val_map50"] is not None and row["target_confidence"] is not None
    assert pick["variant"] in summary and pick["variant"] != "target_oracle"
    evaluated = json.loads((repo / "reports/eval/dann/metrics.json").read_text())
    assert set(evaluated["per_class_ap"]) == set(raw["data"]["classes"])
    header = (repo / "reports/eval/dann/predictions.csv").read_text().splitlines()[0]
    assert header == "actual,predicted"
    assert (repo / "reports/eval/dann/detections.png").read_bytes().startswith(b"\x89PNG")
    gan = json.loads((repo / "reports/gan/metrics.json").read_text())
    assert any(key.startswith("task/map50") for key in json.dumps(gan).split('"'))

    assert "Running stage" not in _dvc(repo, "repro").stdout
    plots = _dvc(repo, "plots", "show", "--json")
    assert plots.returncode == 0, plots.stderr[-2000:]
    shown = json.loads(plots.stdout)["data"]
    for name in ("reports/scores.csv", "reports/train/dann/history.csv", "reports/summary.png"):
        assert any(name in key for key in shown), (name, list(shown))
