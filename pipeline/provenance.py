"""What produced an output: recorded next to it as ``provenance.json``."""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from pathlib import Path

from pipeline.config import Params
from pipeline.io import write_json
from pipeline.tracking import git_commit


def provenance(params: Params, stage: str, sections: tuple[str, ...], **extra) -> dict:
    """Stage, the params sections it read and their hash, git commit, versions, command and time."""
    import torch

    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("sim2real")
    except PackageNotFoundError:
        own = "unknown"
    return {
        "stage": stage,
        "params_sections": list(sections),
        "params_hash": params.fingerprint(*sections),
        "params": {k: params.raw.get(k) for k in sections},
        "git_commit": git_commit(),
        "sim2real": own,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def write_provenance(folder: str | Path, record: dict) -> None:
    write_json(Path(folder) / "provenance.json", record)
