"""MLflow tracking: one parent run per pipeline execution, one child run per stage (and variant).

* Store: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo>/mlflow.db`` with artifacts under
  ``<repo>/mlartifacts``. The experiment is ``MLFLOW_EXPERIMENT_NAME`` if set, else one per scenario.
* Parent key: ``DVC_EXP_NAME`` when DVC runs an experiment, else git commit + params hash; stages of
  the same execution find the same parent run through the tag ``sim2real.pipeline_key``.
* Creating a fresh SQLite store races when several processes do it at once, so store creation,
  experiment and parent lookup happen under an exclusive file lock, one per store (:func:`store_lock_path`).
* A tracking server (``http(s)://``) is probed before a run opens (:func:`check_server`): one that does
  not answer is one ``error:`` line naming the URI, not minutes of MLflow's retries.
* Only rank 0 of a distributed job logs; other ranks get a :class:`NullTracker`.
* The parent run holds every param; a child run only what is specific to it (:func:`stage_params`).
  The parent ends with :func:`end_pipeline_run` (the last stage calls it), FAILED as soon as a stage
  fails, and goes back to RUNNING when a stage of the same pipeline key starts again.
* Runs carry MLflow's standard source, user and git tags, so the UI fills "Source" and "User";
  :meth:`Tracker.log_dataset` fills "Datasets"; :meth:`Tracker.log_model` logs an exported model as
  a pyfunc without pickled code (:mod:`pipeline.task.mlflow_model`); :meth:`Tracker.register_pipeline_models`
  registers the models of a finished pipeline under stable names (:func:`registered_model_name`) and
  :meth:`Tracker.set_champion` gives the report's pick the registry alias ``champion``.

DVC's ``metrics.json`` files stay the source of truth; MLflow mirrors them for comparison.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import getpass
import hashlib
import http.client
import logging
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.cli import UserError
from pipeline.config import Params, flatten

log = logging.getLogger(__name__)

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
SERVER_PROBE_TIMEOUT_S = 5.0                  # how long a tracking server may take to answer /health
CHAMPION = "champion"                         # registry alias of the version the report picks
EXPERIMENT_TAG = "sim2real.experiment"        # registered-model tag: the experiment that registered it


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


class TrackingServerError(UserError):
    """``MLFLOW_TRACKING_URI`` names a server that does not answer."""


def check_server(uri: str, timeout: float = SERVER_PROBE_TIMEOUT_S) -> None:
    """Raise :class:`TrackingServerError` unless an http(s) ``uri`` answers ``GET /health`` within
    ``timeout`` seconds; other stores (SQLite, files, databases) pass unchecked.

    Why: MLflow retries a request to a silent server for minutes, so a stage would hang instead of
    failing. Any HTTP answer below 500 counts as a server (one behind a login may refuse /health);
    5xx is what MLflow would retry on, so it fails here too. A certificate this probe does not trust
    counts as an answer: MLflow checks it with its own settings (``MLFLOW_TRACKING_INSECURE_TLS``, ...).
    """
    if not uri.startswith(("http://", "https://")):
        return
    health = f"{uri.rstrip('/')}/health"
    try:
        urllib.request.urlopen(health, timeout=timeout).close()
        return
    except urllib.error.HTTPError as exc:
        if exc.code < 500:
            return
        reason = f"HTTP {exc.code} from {health}"
    except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, timed out, bad host or URL, not HTTP
        cause = getattr(exc, "reason", exc)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return
        reason = str(cause) or type(cause).__name__
    raise TrackingServerError(f"MLFLOW_TRACKING_URI={uri}: no MLflow server answers ({reason}); start it, "
                              f"unset the variable, or set SIM2REAL_TRACKING=off")


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
    the sections of :data:`STAGE_SECTIONS` (none for a stage it does not list); a training stage adds
    the step counts it runs with, ``budget`` applied, as ``effective.*`` (``effective.steps``,
    ``effective.eval_every``, ``effective.gan.steps_per_epoch``, ...)."""
    if variant:
        parsed = params.variants.get(variant)
        entry = dataclasses.asdict(parsed) if parsed else params.raw.get("variants", {}).get(variant, {})
        logged = flatten(entry, "variant")
        if stage == "train_task" and parsed:
            logged.update(flatten(params.effective_task(variant), "effective"))
        return logged
    logged = flatten({k: params.raw[k] for k in STAGE_SECTIONS.get(stage, ()) if k in params.raw})
    if stage == "train_gan":
        logged.update(flatten(params.effective_gan(), "effective"))
    return logged


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


def store_lock_path(uri: str) -> Path:
    """The lock file of the store ``uri``: ``<db>.lock`` beside a SQLite file, else
    ``<tmp>/sim2real-mlflow-<hash of the URI>.lock``, so stages logging to different servers never
    wait for each other (a trailing ``/`` names the same server)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).with_suffix(".lock")
    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"sim2real-mlflow-{digest}.lock"


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Exclusive lock of the store ``uri`` (:func:`store_lock_path`) across processes."""
    lock_path = store_lock_path(uri)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
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

    def log_model(self, spec, name: str) -> str:
        """Log ``spec`` (a :class:`pipeline.task.mlflow_model.ModelSpec`: an exported weights file, its
        signature, input example and pinned requirements) as the MLflow model ``name``; returns its URI
        (``models:/<model id>``), which ``mlflow.pyfunc.load_model`` loads without unpickling anything.

        A models-from-code pyfunc (``python_model`` is the path of ``spec.loader``), not
        ``mlflow.pytorch``: that flavour pickles the ``nn.Module`` (code that runs on load), while the
        weights file loads with ``torch.load(weights_only=True)`` like every model file here.
        """
        import mlflow
        import mlflow.pyfunc

        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=self.run_id, nested=True):
            info = mlflow.pyfunc.log_model(name=name, python_model=str(spec.loader), artifacts=spec.artifacts(),
                                           signature=spec.signature(), input_example=spec.input_example(),
                                           pip_requirements=spec.requirements())
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
        experiment_id, experiment = self._experiment()
        versions = {}
        for suffix, model, child in self._pipeline_models(experiment_id):
            name = registered_model_name(experiment, suffix)
            versions[name] = self._register_once(model, name, child)
            self.client.set_registered_model_tag(name, EXPERIMENT_TAG, experiment)
        return versions

    def set_champion(self, variant: str | None, versions: dict[str, str]) -> str | None:
        """Give the registry alias ``champion`` to the registered version of ``variant``'s model (the
        report's pick) and take it from every other model of this experiment, so one version answers
        "which model do I ship"; with no pick (``None``) no version keeps it.

        ``versions`` is what :meth:`register_pipeline_models` returned. Returns ``"<name>/<version>"``
        of the champion, or None (no pick, or the pick has no model registered by this pipeline).
        """
        experiment = self._experiment()[1]
        name = registered_model_name(experiment, variant) if variant else None
        version = versions.get(name) if name else None
        for model in self._experiment_models(experiment):
            if CHAMPION in model.aliases and (model.name, str(model.aliases[CHAMPION])) != (name, version):
                self.client.delete_registered_model_alias(model.name, CHAMPION)
        if version is None:
            if variant:
                log.warning("the pick %s has no model registered by this pipeline; no version is %s", variant, CHAMPION)
            return None
        self.client.set_registered_model_alias(name, CHAMPION, version)
        return f"{name}/{version}"

    def _experiment(self) -> tuple[str, str]:
        """``(id, name)`` of this pipeline's experiment."""
        experiment_id = self.client.get_run(self.parent_run_id).info.experiment_id
        return experiment_id, self.client.get_experiment(experiment_id).name

    def _experiment_models(self, experiment: str) -> list:
        """The registered models that :meth:`register_pipeline_models` tagged with ``experiment``."""
        escaped = experiment.replace("'", "\\'")
        return self.client.search_registered_models(filter_string=f"tags.`{EXPERIMENT_TAG}` = '{escaped}'",
                                                    max_results=1000)

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
    check_server(uri)
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
    check_server(uri)
    with _store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(experiment_name(params))
        parent = _find_parent(client, experiment.experiment_id, pipeline_key(params)) if experiment else None
        if parent is None:
            return None
        client.set_terminated(parent.info.run_id, status=status)
    return parent.info.run_id
