"""A tiny full ``dvc repro`` of every stage in a temporary git repository."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import deep_update, dvc_env, make_project_copy

DVC = str(Path(sys.executable).parent / "dvc")

TINY = {
    "data": {"image_size": 16, "render": {"train_count": 60, "val_count": 30}},
    "gan": {"generator": {"width": 4, "blocks": 1}, "discriminator": {"width": 4, "layers": 2},
            "batch_size": 4, "epochs": 1, "decay_epochs": 1, "steps_per_epoch": 2, "pool_size": 4,
            "diagnostics_samples": 24},
    "task": {"width": 4, "steps": 4, "eval_every": 2, "batch_size": 32},
    "variants": {"randomized_st": {"steps": 4}},
}


@pytest.mark.slow
def test_tiny_dvc_repro_of_all_stages(tmp_path, default_raw):
    repo = make_project_copy(tmp_path / "repo", deep_update(default_raw, TINY))
    run = subprocess.run([DVC, "repro"], cwd=repo, env=dvc_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    for stage in ("prepare", "train_task@source_only", "train_gan", "translate", "train_task@translated",
                  "train_task@dann", "train_task@target_oracle", "evaluate@translated", "report"):
        assert f"Running stage '{stage}'" in run.stdout
    # report ran last, after every evaluate stage
    assert run.stdout.rindex("Running stage 'report'") > max(
        run.stdout.rindex(f"Running stage 'evaluate@{v}'") for v in default_raw["variants"])

    summary = json.loads((repo / "reports/summary.json").read_text())
    pick = summary.pop("pick")                  # the variant to choose without real labels
    assert set(summary) >= set(default_raw["variants"])
    for row in summary.values():
        assert 0.0 <= row["accuracy"] <= 1.0
    assert pick["variant"] is None or pick["variant"] in summary
    assert summary["source_only"]["gap_closed"] == 0.0 and summary["target_oracle"]["gap_closed"] == 1.0
    assert (repo / "models/gan/generator.pt").exists() and (repo / "reports/summary.png").exists()
    assert len((repo / "data/translated/source/train/manifest.csv").read_text().splitlines()) == 61

    again = subprocess.run([DVC, "repro"], cwd=repo, env=dvc_env(), capture_output=True, text=True)
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout[-3000:]
