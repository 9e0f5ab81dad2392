"""Against a real ``mlflow server`` (what the UI reads): a finished pipeline's parent run, a logged model;
and against a server that does not answer: a stage fails at once, naming the URI."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.config import parse_params
from pipeline.tracking import TrackingServerError, check_server, end_pipeline_run, stage_run

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


def track_on_server(url: str, folder: Path, monkeypatch) -> None:
    """Stages in ``folder`` log to the server at ``url`` (tracking on, one experiment and DVC run name)."""
    for key, value in {**QUIET, "MLFLOW_TRACKING_URI": url, "SIM2REAL_TRACKING": "on",
                       "MLFLOW_EXPERIMENT_NAME": "server-exp", "DVC_EXP_NAME": "server-run"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(folder)


@pytest.mark.slow
def test_finished_pipeline_on_a_real_server(mlflow_server, tmp_path, default_raw, monkeypatch):
    from mlflow.tracking import MlflowClient

    track_on_server(mlflow_server, tmp_path, monkeypatch)
    params = parse_params(default_raw)
    check_server(mlflow_server)                 # a server that answers passes the probe stages make
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


@pytest.mark.slow
def test_logged_model_loads_back_from_a_real_server(mlflow_server, tmp_path, default_raw, monkeypatch):
    """The pyfunc model (weights file + loader code) goes through the server's artifact proxy and back."""
    import mlflow.pyfunc
    import numpy as np
    import torch

    from pipeline.task.export import load_task_model, save_task_model
    from pipeline.task.mlflow_model import task_model_spec
    from pipeline.task.models import build_task_model

    track_on_server(mlflow_server, tmp_path, monkeypatch)
    meta = {"kind": "classification", "classes": ["a", "b"], "image_size": 16, "channels": 1, "variant": "dann"}
    save_task_model(tmp_path / "model.pt", build_task_model("small_cnn", 1, 2, width=4), meta)
    with stage_run("train_task", parse_params(default_raw), variant="dann") as tracker:
        uri = tracker.log_model(task_model_spec(tmp_path / "model.pt", meta), "task_dann")
    x = np.linspace(-1, 1, 2 * 16 * 16, dtype=np.float32).reshape(2, 1, 16, 16)
    with torch.no_grad():
        expected = load_task_model(tmp_path / "model.pt")[0](torch.from_numpy(x)).numpy()
    assert np.array_equal(mlflow.pyfunc.load_model(uri).predict(x), expected)


def test_stage_fails_at_once_when_no_server_answers(tmp_path, default_raw):
    """MLflow retries a silent server for minutes; the stage says so in one line and exits 2 instead."""
    import yaml

    from conftest import REPO

    uri = f"http://127.0.0.1:{_free_port()}"        # bound, then released: nothing listens there
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_raw))
    env = {**os.environ, **QUIET, "MLFLOW_TRACKING_URI": uri, "SIM2REAL_TRACKING": "on",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "stages.prepare", "--params", "params.yaml", "--out", "prepared",
                           "--reports", "reports"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert errors[0].startswith(f"error: MLFLOW_TRACKING_URI={uri}: no MLflow server answers (")
    assert "refused" in errors[0] and errors[0].endswith("start it, unset the variable, or set SIM2REAL_TRACKING=off")
    assert not (tmp_path / "prepared").exists()


def test_server_that_accepts_but_never_answers_is_refused_within_the_timeout():
    """A port that accepts connections but sends nothing (a hung server) is refused after ``timeout``."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(TrackingServerError, match=rf"^MLFLOW_TRACKING_URI={uri}: no MLflow server answers \(timed out\)"):
            check_server(uri, timeout=0.5)


def _serve_once(listener: socket.socket, reply: bytes) -> threading.Thread:
    """Accept one connection on ``listener`` in a thread, send ``reply`` and close."""
    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(reply)
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_port_that_answers_without_http_is_refused_in_one_line():
    """Something else listening (not an HTTP server) is a TrackingServerError, not a traceback."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        _serve_once(listener, b"SSH-2.0-OpenSSH_9.6\r\n")
        with pytest.raises(TrackingServerError, match=rf"^MLFLOW_TRACKING_URI={uri}: no MLflow server answers \("):
            check_server(uri, timeout=5)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_server_with_an_untrusted_certificate_counts_as_answering(tmp_path):
    """MLflow checks a server's certificate with its own settings (MLFLOW_TRACKING_INSECURE_TLS, a CA
    path); the probe only asks whether a server is there, so a self-signed one passes."""
    import ssl

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    plain = socket.socket()
    plain.bind(("127.0.0.1", 0))
    plain.listen()
    port = plain.getsockname()[1]
    with context.wrap_socket(plain, server_side=True) as listener:     # takes over the plain socket
        _serve_once(listener, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
        check_server(f"https://127.0.0.1:{port}", timeout=5)
