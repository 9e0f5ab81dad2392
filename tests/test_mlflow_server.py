"""Against a real ``mlflow server`` (what the UI reads): a finished pipeline's parent run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.config import parse_params
from pipeline.tracking import end_pipeline_run, stage_run

QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_answering(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Poll ``<url>/health`` until it answers 200; fail early when the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (it forks workers), SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@pytest.fixture
def mlflow_server(tmp_path):
    """The venv's ``mlflow server`` on a free local port with one worker; yields its URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", str(tmp_path / "server-artifacts")]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **QUIET}, start_new_session=True)
    try:
        _wait_until_answering(url, proc, log)
        yield url
    finally:
        _stop(proc)


@pytest.mark.slow
def test_finished_pipeline_on_a_real_server(mlflow_server, tmp_path, default_raw, monkeypatch):
    from mlflow.tracking import MlflowClient

    for key, value in {**QUIET, "MLFLOW_TRACKING_URI": mlflow_server, "SIM2REAL_TRACKING": "on",
                       "MLFLOW_EXPERIMENT_NAME": "server-exp", "DVC_EXP_NAME": "server-run"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    params = parse_params(default_raw)
    with stage_run("prepare", params) as tracker:
        tracker.log_metrics({"count": 3.0})
    assert end_pipeline_run(params) == tracker.parent_run_id

    client = MlflowClient(mlflow_server)
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.end_time >= parent.info.start_time
    assert parent.data.params["gan.weights.cycle"] == "10.0"
    assert parent.data.tags["mlflow.source.type"] == "LOCAL"
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    child = client.get_run(tracker.run_id)
    assert child.info.status == "FINISHED" and child.data.metrics["count"] == 3.0
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
