"""MLflow tracking: one parent run per pipeline execution, one child run per stage (and variant).

* Store: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo>/mlflow.db`` with artifacts under
  ``<repo>/mlartifacts``. The experiment is ``MLFLOW_EXPERIMENT_NAME`` if set, else one per scenario.
* Parent key: ``DVC_EXP_NAME`` when DVC runs an experiment, else git commit + params hash; stages of
  the same execution find the same parent run through the tag ``sim2real.pipeline_key``.
* Creating a fresh SQLite store races when several processes do it at once, so store creation,
  experiment and parent lookup happen under an exclusive file lock.
* Only rank 0 of a distributed job logs; other ranks get a :class:`NullTracker`.
* The parent run holds every param; a child run only what is specific to it (:func:`stage_params`).
  The parent ends with :func:`end_pipeline_run` (the last stage calls it), FAILED as soon as a stage
  fails, and goes back to RUNNING when a stage of the same pipeline key starts again.
* Runs carry MLflow's standard source, user and git tags, so the UI fills "Source" and "User";
  :meth:`Tracker.log_dataset` fills "Datasets"; :meth:`Tracker.register_pipeline_models` registers
  the models of a finished pipeline under stable names (:func:`registered_model_name`).

DVC's ``metrics.json`` files stay the source of truth; MLflow mirrors them for comparison.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import getpass
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.config import Params, flatten

PIPELINE_KEY_TAG = "sim2real.pipeline_key"
ROLE_TAG = "sim2real.role"
PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"     # without it MLflow 3's UI opens the GenAI view
EXPERIMENT_KIND = "custom_model_development"
DATASET_CONTEXT_TAG = "mlflow.data.context"
TERMINATED = ("FINISHED", "FAILED", "KILLED")
#: The params sections a stage without a variant reads; its child run logs only these (the parent
#: run holds them all). A stage with a variant logs the variant's entry instead.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare": ("seed", "data"),
    "train_gan": ("seed", "gan"),
    "translate": ("translate",),
    "report": (),
}
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


def _git(root: Path, *args: str) -> str:
    """stdout of ``git <args>`` in ``root``; raises on a failing command."""
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()


def git_commit(root: Path | None = None) -> str:
    """``<sha>`` or ``<sha>-dirty``; ``unknown`` outside git or before the first commit."""
    root = root or repo_root()
    try:
        sha = _git(root, "rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    try:
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        dirty = ""
    return f"{sha}-dirty" if dirty else sha


def entry_point() -> str:
    """What started this process: the module of ``python -m stages.train_task``, else ``sys.argv[0]``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return spec.name
    return (sys.argv[0] if sys.argv and sys.argv[0] else "") or "python"


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):   # no login name and no passwd entry (some containers)
        return "unknown"


def source_tags(commit: str) -> dict[str, str]:
    """MLflow's standard tags for "Source", "User" and the commit; ``commit`` as from :func:`git_commit`."""
    tags = {"mlflow.source.name": entry_point(), "mlflow.source.type": "LOCAL", "mlflow.user": current_user()}
    sha = commit.removesuffix("-dirty")
    if sha != "unknown":
        tags["mlflow.source.git.commit"] = sha
    return tags


def store_root() -> Path:
    """Where the default store lives: the project's workspace.

    ``dvc exp run --temp`` and queued experiments run each stage in a copy under
    ``.dvc/tmp/exps/``, which DVC deletes afterwards; DVC then points ``DVC_ROOT`` at the workspace
    that owns the copy (for plain ``dvc repro`` it is the workspace itself), so runs land in the
    project's ``mlflow.db``, not in the copy.
    """
    return Path(os.environ.get("DVC_ROOT") or repo_root())


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_root() / 'mlflow.db'}"


def experiment_name(params: Params) -> str:
    scenario = "digits" if params.data.source.format == "digits" else "custom"
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"sim2real-{scenario}"


def pipeline_key(params: Params, commit: str | None = None) -> str:
    """``dvc-exp:<name>`` under ``dvc exp run``, else ``<commit>:<params hash>``."""
    exp = os.environ.get("DVC_EXP_NAME")
    return f"dvc-exp:{exp}" if exp else f"{commit or git_commit()}:{params.fingerprint()}"


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def tracking_enabled() -> bool:
    """Rank 0, and tracking not switched off with ``SIM2REAL_TRACKING=off``."""
    return is_rank_zero() and os.environ.get("SIM2REAL_TRACKING", "on").lower() != "off"


def stage_params(stage: str, params: Params, variant: str | None = None) -> dict[str, Any]:
    """The params a child run logs: its variant's entry as ``variant.*`` (defaults filled in), else
    the sections of :data:`STAGE_SECTIONS` (none for a stage it does not list)."""
    if variant:
        parsed = params.variants.get(variant)
        entry = dataclasses.asdict(parsed) if parsed else params.raw.get("variants", {}).get(variant, {})
        return flatten(entry, "variant")
    return flatten({k: params.raw[k] for k in STAGE_SECTIONS.get(stage, ()) if k in params.raw})


def folder_digest(path: str | Path) -> str:
    """16 hex digits of sha256 over the relative names and bytes of every file under ``path``
    (sorted, so stable); a single file hashes its bytes."""
    from pipeline.reproducibility import content_digest, file_sha256

    path = Path(path)
    if path.is_file():
        return file_sha256(path)[:16]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such data set folder")
    return content_digest([path])


def registered_model_name(experiment: str, suffix: str) -> str:
    """``sim2real-<experiment>-<suffix>`` (no doubled ``sim2real-``), with ``/`` and ``:`` replaced."""
    prefix = experiment if experiment.startswith("sim2real") else f"sim2real-{experiment}"
    return re.sub(r"[/:]", "_", f"{prefix}-{suffix}")


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
        _log_params(self.client, run_id or self.run_id, params)

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

    def log_dataset(self, path: str | Path, name: str | None = None, digest: str | None = None,
                    context: str = "train", run_id: str | None = None) -> None:
        """Record the data set folder ``path`` as an input of the run ("Datasets" in the UI).

        ``name`` defaults to the path relative to the repository, ``digest`` to :func:`folder_digest`;
        ``context`` (train, validation, test, ...) is the ``mlflow.data.context`` input tag.
        """
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        folder = Path(path)
        dataset = MetaDataset(_local_source(folder), name=name or _dataset_name(folder),
                              digest=digest or folder_digest(folder))
        entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(DATASET_CONTEXT_TAG, context)])
        self.client.log_inputs(run_id or self.run_id, datasets=[entry])

    def log_model(self, model, name: str, pip_requirements: list[str] | None = None) -> str:
        """Pickle flavour with explicit requirements (0.2 s, against ~12 s for pt2, which also needs an
        input example); returns the model URI, which ``mlflow.pytorch.load_model`` loads back. Any
        ``nn.Module`` of this project works (task models, the plain ``ResnetGenerator``)."""
        import mlflow
        import mlflow.pytorch

        mlflow.set_tracking_uri(self.uri)
        reqs = pip_requirements or _default_requirements()
        with mlflow.start_run(run_id=self.run_id, nested=True), _quiet_pickle_warning():
            info = mlflow.pytorch.log_model(model, name=name, serialization_format="pickle", pip_requirements=reqs)
        return info.model_uri

    def register_model(self, model_uri: str, name: str, tags: dict[str, Any] | None = None):
        """A new version of the registered model ``name`` (created when missing) from ``model_uri``
        (``models:/<model id>`` as :meth:`log_model` returns, or ``runs:/...``); returns the ModelVersion."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        return mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()})

    def register_pipeline_models(self) -> dict[str, str]:
        """Register the newest model of every finished child run of this pipeline execution.

        Names come from :func:`registered_model_name` with the child's variant (or, without one, the
        logged model's name: ``generator``) as suffix, e.g. ``sim2real-digits-dann`` and
        ``sim2real-digits-generator``. A model registered before is not registered again, so a rerun
        adds no duplicate version. Returns ``{registered name: version}``.
        """
        experiment_id = self.client.get_run(self.parent_run_id).info.experiment_id
        experiment = self.client.get_experiment(experiment_id).name
        versions = {}
        for suffix, model, child in self._pipeline_models(experiment_id):
            name = registered_model_name(experiment, suffix)
            versions[name] = self._register_once(model, name, child)
        return versions

    def _pipeline_models(self, experiment_id: str) -> Iterator[tuple[str, Any, Any]]:
        """``(suffix, logged model, child run)`` of the newest model per suffix, finished children only."""
        children = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1000)
        seen = set()
        for child in children:
            models = self.client.search_logged_models(
                experiment_ids=[experiment_id], filter_string=f"source_run_id = '{child.info.run_id}'",
                order_by=[{"field_name": "creation_timestamp", "ascending": False}])
            for model in models:
                suffix = child.data.tags.get("variant") or model.name
                if suffix not in seen:
                    seen.add(suffix)
                    yield suffix, model, child

    def _register_once(self, model, name: str, child) -> str:
        """The version of ``name`` holding ``model``, registering it when it is not there yet."""
        source = f"models:/{model.model_id}"
        existing = self.client.search_model_versions(f"name = '{name}' and run_id = '{child.info.run_id}'")
        for version in existing:
            if version.source == source:
                return str(version.version)
        tags = {k: child.data.tags[k] for k in ("stage", "variant", PIPELINE_KEY_TAG) if k in child.data.tags}
        return str(self.register_model(source, name, tags).version)


def _log_params(client, run_id: str, params: dict[str, Any]) -> None:
    """``params`` in batches of 100 (MLflow's limit), keys through :func:`mlflow_key`."""
    from mlflow.entities import Param

    items = [Param(mlflow_key(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def _local_source(folder: Path):
    """MLflow's ``LocalArtifactDatasetSource`` for ``folder`` (registered under its source type ``local``)."""
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.filesystem_dataset_source import FileSystemDatasetSource

    source = next(s for s in get_registered_sources()
                  if issubclass(s, FileSystemDatasetSource) and s._get_source_type() == "local")
    return source(str(folder.resolve()))


def _dataset_name(folder: Path) -> str:
    """``folder`` relative to the repository (``data/prepared/source/train``), else its absolute path."""
    path = folder.resolve()
    root = repo_root().resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


@contextlib.contextmanager
def _quiet_pickle_warning() -> Iterator[None]:
    """Drop mlflow.pytorch's one 389-character warning per model about the pickle format, and only it:
    we choose pickle on purpose (pt2 needs an input example and takes ~12 s) and load with the
    matching mlflow.pytorch.load_model."""
    import logging

    class _NoPickleWarning(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Pickle or CloudPickle format" not in record.getMessage()

    logger, quiet = logging.getLogger("mlflow.pytorch"), _NoPickleWarning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _default_requirements() -> list[str]:
    import torch
    import torchvision

    return [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
            "timm", "sim2real"]


def _ensure_experiment(client, name: str) -> str:
    """The id of experiment ``name``, created when missing; either way tagged as a classic ML experiment."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=_artifact_location(),
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def _artifact_location() -> str | None:
    """``<repo>/mlartifacts`` for the default SQLite store; the server's default otherwise."""
    if tracking_uri().startswith("sqlite:///") and not os.environ.get("MLFLOW_TRACKING_URI"):
        return (store_root() / "mlartifacts").resolve().as_uri()
    return None


def _find_parent(client, experiment_id: str, key: str):
    """The newest parent run of pipeline ``key``, or None."""
    escaped = key.replace("'", "\\'")
    found = client.search_runs([experiment_id], filter_string=f"tags.`{PIPELINE_KEY_TAG}` = '{escaped}' and tags.`{ROLE_TAG}` = 'pipeline'",
                               max_results=1, order_by=["attributes.start_time DESC"])
    return found[0] if found else None


def _create_parent(client, experiment_id: str, key: str, params: Params, commit: str) -> str:
    """A new parent run holding every param (once: MLflow params cannot change)."""
    tags = {PIPELINE_KEY_TAG: key, ROLE_TAG: "pipeline", "git_commit": commit, **source_tags(commit)}
    run = client.create_run(experiment_id, run_name=f"pipeline {key[:24]}", tags=tags)
    _log_params(client, run.info.run_id, flatten(params.raw))
    return run.info.run_id


def _open_parent(client, experiment_id: str, key: str, params: Params, commit: str) -> str:
    """The parent run of ``key``, created when missing and set back to RUNNING when a former
    execution terminated it, so its final status is the one of the latest execution."""
    parent = _find_parent(client, experiment_id, key)
    if parent is None:
        return _create_parent(client, experiment_id, key, params, commit)
    if parent.info.status in TERMINATED:
        client.update_run(parent.info.run_id, status="RUNNING")
    return parent.info.run_id


def _child_tags(stage: str, params: Params, variant: str | None, extra_tags: dict[str, Any] | None,
                parent: str, key: str, commit: str) -> dict[str, str]:
    tags = {PARENT_TAG: parent, "stage": stage, "git_commit": commit, "params_hash": params.fingerprint(),
            PIPELINE_KEY_TAG: key, **source_tags(commit)}
    if variant:
        tags["variant"] = variant
    tags.update({k: str(v) for k, v in (extra_tags or {}).items()})
    return tags


def _open_stage_run(stage: str, params: Params, variant: str | None, extra_tags: dict[str, Any] | None) -> Tracker:
    """Experiment, parent and a new child run (under the store lock), the child's params logged."""
    from mlflow.tracking import MlflowClient

    uri, commit = tracking_uri(), git_commit()
    key = pipeline_key(params, commit)
    with _store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        experiment_id = _ensure_experiment(client, experiment_name(params))
        parent = _open_parent(client, experiment_id, key, params, commit)
        tags = _child_tags(stage, params, variant, extra_tags, parent, key, commit)
        run = client.create_run(experiment_id, run_name=f"{stage}@{variant}" if variant else stage, tags=tags)
    tracker = Tracker(client, run.info.run_id, parent, uri)
    tracker.log_params(stage_params(stage, params, variant))
    return tracker


@contextlib.contextmanager
def stage_run(stage: str, params: Params, variant: str | None = None,
              extra_tags: dict[str, Any] | None = None) -> Iterator[Tracker | NullTracker]:
    """Open the child run of ``stage`` (and ``variant``) under this execution's parent run.

    The run ends FINISHED on success and FAILED when the body raises; a failure marks the parent
    run FAILED too. The parent itself ends with :func:`end_pipeline_run`.
    """
    if not tracking_enabled():
        yield NullTracker()
        return
    tracker = _open_stage_run(stage, params, variant, extra_tags)
    try:
        yield tracker
    except BaseException:
        tracker.client.set_terminated(tracker.run_id, status="FAILED")
        tracker.client.set_terminated(tracker.parent_run_id, status="FAILED")
        raise
    tracker.client.set_terminated(tracker.run_id, status="FINISHED")


def end_pipeline_run(params: Params, status: str = "FINISHED") -> str | None:
    """End this execution's parent run with ``status`` (the last stage calls it once it succeeded).

    Returns the parent's run id, or None when tracking is off or no stage opened a parent.
    """
    if not tracking_enabled():
        return None
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    with _store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(experiment_name(params))
        parent = _find_parent(client, experiment.experiment_id, pipeline_key(params)) if experiment else None
        if parent is None:
            return None
        client.set_terminated(parent.info.run_id, status=status)
    return parent.info.run_id
