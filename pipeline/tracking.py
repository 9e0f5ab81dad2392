"""MLflow tracking: one parent run per pipeline execution, one child run per stage (and variant).

* Store: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo>/mlflow.db`` with artifacts under
  ``<repo>/mlartifacts``. The experiment is ``MLFLOW_EXPERIMENT_NAME`` if set, else one per scenario.
* Parent key: ``DVC_EXP_NAME`` when DVC runs an experiment, else git commit + params hash; stages of
  the same execution find the same parent run through the tag ``sim2real.pipeline_key``.
* Creating a fresh SQLite store races when several processes do it at once, so store creation,
  experiment and parent lookup happen under an exclusive file lock.
* Only rank 0 of a distributed job logs; other ranks get a :class:`NullTracker`.

DVC's ``metrics.json`` files stay the source of truth; MLflow mirrors them for comparison.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.config import Params, flatten

PIPELINE_KEY_TAG = "sim2real.pipeline_key"
MAX_PARAM_LENGTH = 6000
MAX_KEY_LENGTH = 250                          # MLflow's limit for metric, param and tag keys
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /]")  # MLflow accepts letters, digits, _ . - space / (and : off Windows)


def mlflow_key(name: Any) -> str:
    """A metric, param or tag key that MLflow accepts, derived from any ``name``.

    Keys come from user data too (class names, ``<unlabelled>`` counts), so every key the
    :class:`Tracker` writes passes through here: characters MLflow refuses become ``_``, and path-like
    parts it refuses (empty, ``.``, ``..``, a leading ``/``) are dropped or renamed, so
    ``per_class.<unlabelled>`` -> ``per_class._unlabelled_`` and ``a//../b`` -> ``a/__/b``.
    """
    text = _BAD_KEY_CHARS.sub("_", str(name))
    parts = ["__" if part == ".." else part for part in text.split("/") if part not in ("", ".")]
    return ("/".join(parts) or "_")[:MAX_KEY_LENGTH]


def repo_root() -> Path:
    """Stages run from the repository root (DVC guarantees it); everything is relative to it."""
    return Path.cwd()


def git_commit(root: Path | None = None) -> str:
    """``<sha>`` or ``<sha>-dirty``; ``unknown`` outside git or before the first commit."""
    root = root or repo_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def experiment_name(params: Params) -> str:
    scenario = "digits" if params.data.source.format == "digits" else "custom"
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"sim2real-{scenario}"


def pipeline_key(params: Params) -> str:
    exp = os.environ.get("DVC_EXP_NAME")
    return f"dvc-exp:{exp}" if exp else f"{git_commit()}:{params.fingerprint()}"


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    if uri.startswith("sqlite:///"):
        lock_path = Path(uri[len("sqlite:///"):]).with_suffix(".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
    else:
        lock_path = Path(tempfile.gettempdir()) / "sim2real-mlflow.lock"
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class NullTracker:
    """Same interface, logs nothing (non-zero ranks, or tracking switched off)."""

    run_id = None
    parent_run_id = None

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class Tracker:
    """A child run of the pipeline's parent run; all writes go through one MlflowClient."""

    def __init__(self, client, run_id: str, parent_run_id: str, uri: str):
        self.client, self.run_id, self.parent_run_id, self.uri = client, run_id, parent_run_id, uri

    def log_params(self, params: dict[str, Any], run_id: str | None = None) -> None:
        from mlflow.entities import Param

        items = [Param(mlflow_key(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id or self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, run_id: str | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(mlflow_key(k), float(v), now, step or 0) for k, v in metrics.items()
                 if v is not None and np.isfinite(float(v))]
        if items:
            self.client.log_batch(run_id or self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, Any], run_id: str | None = None) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id or self.run_id, mlflow_key(k), str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None, run_id: str | None = None) -> None:
        self.client.log_artifact(run_id or self.run_id, str(path), artifact_path)

    def log_image(self, image: np.ndarray, name: str, run_id: str | None = None) -> None:
        self.client.log_image(run_id or self.run_id, image, artifact_file=name)

    def log_dict(self, data: dict, name: str, run_id: str | None = None) -> None:
        self.client.log_dict(run_id or self.run_id, data, name)

    def log_model(self, model, name: str, pip_requirements: list[str] | None = None) -> str:
        """Pickle flavour with explicit requirements (0.2 s, against ~12 s for pt2, which also needs an
        input example); returns the model URI, which ``mlflow.pytorch.load_model`` loads back."""
        import mlflow
        import mlflow.pytorch

        mlflow.set_tracking_uri(self.uri)
        reqs = pip_requirements or _default_requirements()
        with mlflow.start_run(run_id=self.run_id, nested=True):
            info = mlflow.pytorch.log_model(model, name=name, serialization_format="pickle", pip_requirements=reqs)
        return info.model_uri


def _default_requirements() -> list[str]:
    import torch
    import torchvision

    return [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
            "timm", "sim2real"]


def _ensure_experiment(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = tracking_uri()
    artifacts = None
    if uri.startswith("sqlite:///") and not os.environ.get("MLFLOW_TRACKING_URI"):
        artifacts = (repo_root() / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=artifacts)


def _parent_run(client, experiment_id: str, key: str, params: Params) -> str:
    escaped = key.replace("'", "\\'")
    found = client.search_runs([experiment_id], filter_string=f"tags.`{PIPELINE_KEY_TAG}` = '{escaped}' and tags.`sim2real.role` = 'pipeline'",
                               max_results=1, order_by=["attributes.start_time DESC"])
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"pipeline {key[:24]}",
                            tags={PIPELINE_KEY_TAG: key, "sim2real.role": "pipeline", "git_commit": git_commit()})
    return run.info.run_id


@contextlib.contextmanager
def stage_run(stage: str, params: Params, variant: str | None = None,
              extra_tags: dict[str, Any] | None = None) -> Iterator[Tracker | NullTracker]:
    """Open the child run of ``stage`` (and ``variant``) under this execution's parent run.

    The run ends FINISHED on success and FAILED when the body raises.
    """
    if not is_rank_zero() or os.environ.get("SIM2REAL_TRACKING", "on").lower() == "off":
        yield NullTracker()
        return
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    with _store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        experiment_id = _ensure_experiment(client, experiment_name(params))
        parent = _parent_run(client, experiment_id, pipeline_key(params), params)
        tags = {"mlflow.parentRunId": parent, "stage": stage, "git_commit": git_commit(),
                "params_hash": params.fingerprint(), PIPELINE_KEY_TAG: pipeline_key(params)}
        if variant:
            tags["variant"] = variant
        tags.update({k: str(v) for k, v in (extra_tags or {}).items()})
        name = f"{stage}@{variant}" if variant else stage
        run = client.create_run(experiment_id, run_name=name, tags=tags)
    tracker = Tracker(client, run.info.run_id, parent, uri)
    tracker.log_params(flatten({k: v for k, v in params.raw.items()}))
    tracker.log_params({"git_commit": git_commit()})
    try:
        yield tracker
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")
