"""prepare run through DVC in a temporary git repository: works, and a second repro is a no-op."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import dvc_env, make_project_copy

DVC = str(Path(sys.executable).parent / "dvc")


@pytest.mark.slow
def test_dvc_repro_prepare_then_noop(tmp_path, tiny_raw):
    repo = make_project_copy(tmp_path / "repo", tiny_raw)
    first = subprocess.run([DVC, "repro", "prepare"], cwd=repo, env=dvc_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (repo / "data/prepared/source/train/manifest.csv").exists()
    assert (repo / "reports/prepare/stats.json").exists() and (repo / "dvc.lock").exists()
    second = subprocess.run([DVC, "repro", "prepare"], cwd=repo, env=dvc_env(), capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert "didn't change" in second.stdout and "Running stage" not in second.stdout
    status = subprocess.run([DVC, "status", "prepare"], cwd=repo, env=dvc_env(), capture_output=True, text=True)
    assert "up to date" in status.stdout
