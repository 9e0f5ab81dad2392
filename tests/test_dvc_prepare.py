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


@pytest.mark.slow
def test_temp_experiment_logs_into_the_workspace_store(tmp_path, tiny_raw):
    """``dvc exp run --temp`` runs the stage in a copy under .dvc/tmp/exps that DVC deletes: its MLflow
    run must land in the workspace's mlflow.db (the default store), not vanish with the copy."""
    from mlflow.tracking import MlflowClient

    repo = make_project_copy(tmp_path / "repo", tiny_raw)
    env = {**dvc_env(), "SIM2REAL_TRACKING": "on", "MLFLOW_EXPERIMENT_NAME": "temp-exp"}
    env.pop("MLFLOW_TRACKING_URI", None)
    run = subprocess.run([DVC, "exp", "run", "--temp", "-n", "tmp-one", "prepare"], cwd=repo, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (repo / "mlflow.db").is_file()
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("temp-exp").experiment_id])
    assert {r.info.run_name for r in runs} >= {"prepare"}
    assert {r.data.tags.get("sim2real.pipeline_key") for r in runs} == {"dvc-exp:tmp-one"}
