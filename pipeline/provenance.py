"""What produced an output: recorded next to it as ``provenance.json``.

Outputs that feed other stages (prepared data, models, the translated set) are DVC dependencies of
those stages, so what is written next to them must be a function of the stage's inputs only: the
params it read, the code (:func:`~pipeline.reproducibility.code_digest`) and the package versions.
Facts that change from one execution to the next (git commit, command line, time) would make DVC
rerun every downstream stage (a rerun of source_only would retrain the GAN); they go to MLflow
(:func:`execution`, logged as the run's ``provenance.json`` and tags) instead.
"""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from pathlib import Path

from pipeline.config import Params
from pipeline.io import write_json
from pipeline.reproducibility import code_digest


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def provenance(params: Params, stage: str, sections: tuple[str, ...], **extra) -> dict:
    """Stage, the params sections it read and their hash, the code digest and package versions.

    Deterministic: the same inputs give the same record (``extra`` must be, too: input hashes and
    paths, never durations or timings).
    """
    import torch

    return {
        "stage": stage,
        "params_sections": list(sections),
        "params_hash": params.fingerprint(*sections),
        "params": {k: params.raw.get(k) for k in sections},
        "code_digest": code_digest(),
        "sim2real": _version("sim2real"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **extra,
    }


def execution(record: dict) -> dict:
    """``record`` plus what is true of this execution only: git commit, command line, UTC time, CPU settings."""
    from pipeline.cpu import describe
    from pipeline.tracking import git_commit

    return {**record, "git_commit": git_commit(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "cpu": describe()}


def write_provenance(folder: str | Path, record: dict) -> None:
    write_json(Path(folder) / "provenance.json", record)
